"""The pretrained models shipped in ``lenet_fast/data``: their names and where their files are.

`LeNet.pretrained`, the command line and `lenet_fast.datasets` (which re-exports `PRETRAINED` and
`pretrained_path`) read the registry from here; this module imports nothing from the package.
"""

import importlib.resources
import os

PRETRAINED = ("fashion-mnist", "mnist")


def data_file(name: str) -> str:
    """Path of a file shipped in ``lenet_fast/data``.

    Parameters
    ----------
    name : str
        The file's name in ``lenet_fast/data``.

    Returns
    -------
    str
        Its path in the installed package.
    """
    return os.fspath(importlib.resources.files("lenet_fast") / "data" / name)


def pretrained_path(name: str) -> str:
    """Path of the shipped ``.npz`` of a pretrained model.

    Parameters
    ----------
    name : {"fashion-mnist", "mnist"}
        One of `PRETRAINED`.

    Returns
    -------
    str
        The path of ``<name>.npz`` in the installed package.

    Raises
    ------
    ValueError
        If `name` is not one of `PRETRAINED`.
    """
    if name not in PRETRAINED:
        raise ValueError(
            f"unknown pretrained model {name!r}; expected one of {', '.join(map(repr, PRETRAINED))}"
        )
    return data_file(f"{name}.npz")
