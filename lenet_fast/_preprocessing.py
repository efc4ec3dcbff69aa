"""What a model file says about its inputs and outputs: how raw pixels become the network's input,
and the names of its classes.

Design: both live in the model's JSON metadata (``save_npz`` stores it in ``__lenet_fast__``)::

    "preprocessing": {"scale": 255.0, "mean": 0.286, "std": 0.353, "pad": 2}
    "classes": ["T-shirt/top", "Trouser", ...]

and are checked once, when the model is built, by `Preprocessing.from_metadata` and
`class_names`; a model without them is valid and then takes only float input.  uint8 images are
turned into float32 ``(x / scale - mean) / std`` -- the same operations, in the same order and
precision, as the training recipe (``lenet_fast.train``) -- one chunk at a time by `LeNet._run`,
so memory stays bounded.  ``pad`` records that 28 x 28 images are zero-padded by 2 pixels *after*
normalisation, which the engine does itself; it is stored so the file describes the whole input
pipeline.
"""

import math
from dataclasses import dataclass

import numpy as np

from ._weights import MetadataError

_ENGINE_PAD = 2  # 28 x 28 input is zero-padded to 32 x 32 by the engine


@dataclass(frozen=True)
class Preprocessing:
    """The transform from uint8 pixels to network input: ``(x / scale - mean) / std``.

    Attributes
    ----------
    scale : float
        Divides the raw pixel values (255 maps them to [0, 1]).
    mean, std : float
        Normalisation after scaling.
    pad : int
        Zero padding of 28 x 28 images after normalisation (always 2: the engine's).
    """

    scale: float
    mean: float
    std: float
    pad: int = _ENGINE_PAD

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Preprocessing | None":
        """The preprocessing stored in a model's metadata, or None if there is none.

        Parameters
        ----------
        metadata : dict
            A model's metadata (``LeNet.metadata``, or what a weight file stores).

        Returns
        -------
        Preprocessing or None
            None when `metadata` has no ``"preprocessing"`` entry.

        Raises
        ------
        MetadataError
            (a ``ValueError``) if ``metadata["preprocessing"]`` is not a dict of finite numbers
            with positive
            ``scale`` and ``std`` and ``pad`` equal to 2; the message names the field.
        """
        stored = metadata.get("preprocessing")
        if stored is None:
            return None
        if (
            not isinstance(stored, dict)
            or set(stored) - {"scale", "mean", "std", "pad"}
            or not {"scale", "mean", "std"} <= set(stored)
        ):
            found = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
            raise MetadataError(
                f"metadata['preprocessing'] must be a dict with keys scale, mean, "
                f"std and optionally pad; got {found}"
            )
        values = {}
        for key in ("scale", "mean", "std"):
            value = stored[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(_as_float(value))
                or (key != "mean" and value <= 0)
            ):
                rule = "a finite number" if key == "mean" else "a positive finite number"
                raise MetadataError(
                    f"metadata['preprocessing']['{key}'] must be {rule}; got {value!r}"
                )
            values[key] = float(value)
        pad = stored.get("pad", _ENGINE_PAD)
        if pad != _ENGINE_PAD or isinstance(pad, bool):
            raise MetadataError(
                f"metadata['preprocessing']['pad'] must be {_ENGINE_PAD} (the "
                f"engine pads 28 x 28 input by 2); got {pad!r}"
            )
        preprocessing = cls(pad=_ENGINE_PAD, **values)
        # Applied in float32, so checked in float32: a std of 1e-60 is 0 there, 1e-40 overflows.
        with np.errstate(all="ignore"):
            extremes = preprocessing.apply(np.array([0, 255], dtype=np.uint8))
            small = {
                key: value
                for key, value in values.items()
                if key != "mean" and not np.float32(value) >= np.finfo(np.float32).tiny
            }
        if small or not np.isfinite(extremes).all():
            raise MetadataError(
                f"metadata['preprocessing'] must map pixels 0..255 to finite float32 values; "
                f"scale {values['scale']!r}, mean {values['mean']!r}, std {values['std']!r} give "
                f"{extremes[0]} and {extremes[1]}"
            )
        return preprocessing

    def to_metadata(self) -> dict:
        """The dict stored under ``metadata["preprocessing"]``.

        Returns
        -------
        dict
            ``scale``, ``mean``, ``std`` and ``pad``, JSON-serialisable.
        """
        return {"scale": self.scale, "mean": self.mean, "std": self.std, "pad": self.pad}

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Normalise uint8 pixels into a new C-contiguous float32 array of the same shape.

        Parameters
        ----------
        pixels : ndarray of uint8
            Raw pixels, any shape.

        Returns
        -------
        ndarray of float32
            ``(pixels / scale - mean) / std``, computed in float32.
        """
        result = np.empty(pixels.shape, dtype=np.float32)
        np.divide(pixels, np.float32(self.scale), out=result, dtype=np.float32)
        result -= np.float32(self.mean)
        result /= np.float32(self.std)
        return result


def _as_float(number):
    """float(number), or inf for an integer too large for a float (JSON allows any size)."""
    try:
        return float(number)
    except OverflowError:
        return math.inf


def class_names(metadata: dict, n_classes: int) -> list[str] | None:
    """The class names stored in a model's metadata (a list of str), or None if there are none.

    Parameters
    ----------
    metadata : dict
        A model's metadata.
    n_classes : int
        The model's number of outputs: the list must hold one name per output.

    Returns
    -------
    list of str or None
        A copy of the stored list; None when `metadata` has no ``"classes"`` entry.

    Raises
    ------
    MetadataError
        (a ``ValueError``) if ``metadata["classes"]`` is not a list of `n_classes` strings.
    """
    names = metadata.get("classes")
    if names is None:
        return None
    if (
        not isinstance(names, list)
        or len(names) != n_classes
        or not all(isinstance(name, str) for name in names)
    ):
        found = f"{len(names)} entries" if isinstance(names, list) else type(names).__name__
        raise MetadataError(
            f"metadata['classes'] must be a list of {n_classes} strings (one per "
            f"output); got {found}"
        )
    return list(names)
