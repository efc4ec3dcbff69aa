"""Fixtures shared by the kernel, model and dispatch tests.

* a guard: the tests need the compiled kernels, so importing ``lenet_fast`` from a source tree that
  was never built stops the session with the command that fixes it;
* ``random_weights``: seeded canonical weights of any widths, 1 or 3 input channels;
* ``kernel_levels`` and the ``level`` parameter: every ISA level this machine can run (tests that
  take a ``level`` argument run once per level);
* ``model_at_level``: the same model on the kernels of another level;
* subprocesses that tests start import the same ``lenet_fast`` as the tests.
"""

import importlib.machinery
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest

_BUILD_HINT = (
    "the compiled kernels are missing: run `pip install .` (or, for development, "
    "`python setup.py build_ext --inplace`) before running the tests"
)


def _compiled_kernel_files(package_dir):
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(path.name for path in Path(package_dir).glob("_kernels_*")
                  if path.name.endswith(suffixes))


def _import_lenet_fast():
    spec = importlib.util.find_spec("lenet_fast")
    if spec is None:
        pytest.exit(f"lenet_fast is not importable: {_BUILD_HINT}", returncode=4)
    package_dir = Path(spec.origin).parent
    try:
        from lenet_fast import _dispatch
    except Exception as exc:  # ImportError, or whatever a half-built tree raises
        if not _compiled_kernel_files(package_dir):
            pytest.exit(f"lenet_fast was imported from {package_dir}, which has no compiled "
                        f"_kernels_* modules ({type(exc).__name__}: {exc}); {_BUILD_HINT}",
                        returncode=4)
        raise
    if not _dispatch.built_levels():
        pytest.exit(f"lenet_fast was imported from {package_dir}, which has no compiled "
                    f"_kernels_* modules; {_BUILD_HINT}", returncode=4)
    return _dispatch


_dispatch = _import_lenet_fast()


def _subprocesses_import_this_lenet_fast():
    """Tests start ``python -c`` / ``-m`` subprocesses, and those put their working directory
    first on ``sys.path``: from the repository root they would import the uncompiled source folder
    instead of the package under test.  So subprocesses get the package's parent folder first on
    PYTHONPATH, and the session runs in an empty folder (see `_neutral_working_directory`)."""
    package_parent = str(Path(importlib.util.find_spec("lenet_fast").origin).resolve().parents[1])
    existing = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = package_parent + (os.pathsep + existing if existing else "")


_subprocesses_import_this_lenet_fast()


@pytest.fixture(autouse=True, scope="session")
def _neutral_working_directory(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("working-directory"))
    yield
    os.chdir(previous)

from lenet_fast import LeNet  # noqa: E402  (after the guard, which explains a failed import)
from lenet_fast._weights import LAYERS, canonical_shapes  # noqa: E402

KERNEL_LEVELS = _dispatch.usable_levels()
DEFAULT_WIDTHS = (6, 16, 120, 84, 10)  # conv1, conv2, conv3, fc1 channels; classes


def make_random_weights(seed=0, in_channels=1, widths=DEFAULT_WIDTHS):
    """Canonical float32 weights, uniform in +-1/sqrt(fan_in) (PyTorch's default scale), so that
    every activation stays in its interesting range; biases in +-0.1."""
    conv1, conv2, conv3, fc1, n_classes = widths
    shapes = canonical_shapes(in_channels=in_channels, conv1_channels=conv1, conv2_channels=conv2,
                              conv3_channels=conv3, fc1_units=fc1, n_classes=n_classes)
    rng = np.random.default_rng(seed)
    weights = {}
    for layer in LAYERS:
        shape = shapes[f"{layer}.weight"]
        bound = 1 / math.sqrt(math.prod(shape[1:]))
        weights[f"{layer}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{layer}.bias"] = rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32)
    return weights


def build_model_at_level(model, level):
    """`model`'s weights, architecture, threads and metadata on the kernels of `level`."""
    kernels = _dispatch.load_kernels(level)
    copy = LeNet.__new__(LeNet)
    copy._setup({key: np.array(value) for key, value in model.weights.items()},
                model.architecture, model.num_threads, model.metadata, kernels=kernels)
    assert copy.isa == level
    return copy


def pytest_generate_tests(metafunc):
    """A test argument named ``level`` runs once per usable ISA level (unless parametrised)."""
    explicit = set()
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        explicit.update(name.strip() for name in names.split(",")) if isinstance(names, str) \
            else explicit.update(names)
    if "level" in metafunc.fixturenames and "level" not in explicit:
        metafunc.parametrize("level", KERNEL_LEVELS)


@pytest.fixture
def random_weights():
    """``random_weights(seed=0, in_channels=1, widths=(6, 16, 120, 84, 10))`` -> weights dict."""
    return make_random_weights


@pytest.fixture
def kernel_levels():
    """ISA levels built here and supported by this CPU, best first."""
    return KERNEL_LEVELS


@pytest.fixture
def model_at_level():
    """``model_at_level(model, level)`` -> the same LeNet running the kernels of `level`."""
    return build_model_at_level
