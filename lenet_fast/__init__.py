"""LeNet inference (the LeNet-5 family) on the CPU with compiled SIMD kernels behind a NumPy API.

>>> from lenet_fast import LeNet
>>> labels = LeNet.from_npz("lenet.npz").predict(batch)   # doctest: +SKIP

Where each concern lives (public modules first):

- ``lenet_fast`` (this file): the public names, re-exported; `show_config`.
- `datasets`: IDX files (read, write), Fashion-MNIST, the MNIST sample, the bundled sample.
- `onnx`, `keras`: reading and writing ONNX graphs, reading Keras models (``LeNet.from_onnx``,
  ``to_onnx``, ``from_keras`` compose them).
- `dask`: lazy inference over Dask arrays and on ``dask.distributed`` clusters.
- `reference`: the plain NumPy forward pass, the ground truth the kernels are tested against.
- `cli` (and ``__main__``): the ``lenet-fast`` command line.
- `train`: ``python -m lenet_fast.train``, the PyTorch recipe that wrote the shipped models.
- ``_architecture``: the family's vocabulary: option names, allowed values and defaults, the
  geometry options, the named members, and every size worked out from weight shapes (`sizes`).
- ``_model``: the `LeNet` class (options, validation, threads, saving, pickling).
- ``_weights``: weight layouts, canonical shapes and safe ``.npz`` reading and writing.
- ``_torch``: reading PyTorch modules and state dicts (``LeNet.from_torch``).
- ``_summary``: the layer table (`ModelSummary`, `LayerSummary`).
- ``_preprocessing``: stored uint8 normalisation and class names in a model's metadata.
- ``_pretrained``: the registry of the shipped models in ``lenet_fast/data``.
- ``_dispatch``: which compiled kernel module runs (AVX-512, AVX2 or generic, chosen at
  import; ``LENET_FAST_ISA``), usable CPUs and the default thread count.
- ``_config``: `show_config`; ``_version``: the version.
- ``_cpu_features`` and ``_kernels_{generic,avx2,avx512}``: compiled from ``src/`` (see
  setup.py): CPU detection, and the kernels with their thread pool.

The benchmarks against other engines live in the repository's ``bench/``, not in the package.
"""

import os as _os
import sys as _sys


def _started_as_command_line():
    """True while ``lenet-fast`` or ``python -m lenet_fast`` is starting."""
    arguments = list(getattr(_sys, "orig_argv", _sys.argv))
    if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "lenet-fast":
        return True
    return "-m" in arguments[:-1] and arguments[arguments.index("-m") + 1] == "lenet_fast"


try:
    from . import _dispatch
except ImportError as _exc:
    # The command line cannot catch an error of its own package's import: report it here as
    # the command line reports every error, one line and exit status 1, not a traceback.
    if _started_as_command_line():
        print(f"lenet-fast: error: {_exc}", file=_sys.stderr)
        raise SystemExit(1) from None
    raise
from ._config import show_config
from ._model import MAX_THREADS, ArchitectureWarning, LeNet
from ._summary import LayerSummary, ModelSummary
from ._torch import TorchImportError
from ._version import __version__
from ._weights import WeightFileError
from .onnx import ONNXImportError

__all__ = [
    "ArchitectureWarning",
    "LeNet",
    "LayerSummary",
    "MAX_THREADS",
    "ModelSummary",
    "ONNXImportError",
    "TorchImportError",
    "WeightFileError",
    "show_config",
]
