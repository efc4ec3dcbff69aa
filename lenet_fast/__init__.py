"""lenet_fast: LeNet-5 inference on the CPU with compiled SIMD kernels behind a NumPy API.

>>> from lenet_fast import LeNet
>>> labels = LeNet.from_npz("lenet.npz").predict(batch)   # doctest: +SKIP

Layout of the package: ``_model`` (the `LeNet` class: validation, options), ``_weights`` (weight
layouts and safe ``.npz`` I/O), ``_dispatch`` (which compiled kernel module runs: AVX-512, AVX2
or generic, chosen at import), ``reference`` (plain NumPy forward pass, the ground truth), and
the compiled ``_kernels_*`` modules built from ``src/``.
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
from ._model import MAX_THREADS, ArchitectureWarning, LeNet
from ._summary import LayerSummary, ModelSummary
from ._torch import TorchImportError
from ._weights import WeightFileError
from .onnx import ONNXImportError
from ._config import show_config
from ._version import __version__

__all__ = ["ArchitectureWarning", "LeNet", "LayerSummary", "MAX_THREADS", "ModelSummary",
           "ONNXImportError", "TorchImportError", "WeightFileError", "show_config"]
