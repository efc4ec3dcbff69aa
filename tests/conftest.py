"""What every test needs before it runs (weights, images and PyTorch models: ``factories.py``).

* a guard: the tests need the compiled kernels, so importing ``lenet_fast`` from a source tree that
  was never built stops the session with the command that fixes it;
* the ``level`` parameter: every ISA level this machine can run (tests that take a ``level``
  argument run once per level);
* subprocesses that tests start import the same ``lenet_fast`` as the tests, and the session
  runs in an empty working directory.

Where each concern is tested: test_kernels (compiled kernels against the reference, determinism),
test_microkernels (the Engine of every family member and geometry, every micro-kernel block
size, the Engine's own checks), test_reference (the NumPy reference against loops and PyTorch),
test_dispatch (choice of kernel level, qemu), test_architecture (the family: named members,
geometry inferred, stated or refused, sizes, through the model API), test_model (the LeNet API:
options, inputs, out=, pickling), test_weights (weight layouts and .npz files),
test_hostile_files (crafted files: npz, IDX, ONNX, images), test_threads (thread counts, the
pool, concurrent callers, processes), test_memory (bounded memory, leaks), test_cli (the command
line), test_datasets, test_pretrained (the shipped models), test_torch, test_onnx, test_keras,
test_dask (interop, each for the whole family), test_packaging (builds, sdist, README example),
test_fuzz (fuzz targets); bench/test_peers.py and bench/test_family.py (the benchmarks run).
Markers: slow, fuzz, memory (pyproject.toml).  The README's command runs them on two workers
(pytest-xdist ``-n 2``): tests write only under ``tmp_path`` and measure memory in their own
subprocesses, so they are independent of each other.
"""

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import pytest

_BUILD_HINT = (
    "the compiled kernels are missing: run `pip install .` (or, for development, "
    "`python setup.py build_ext --inplace`) before running the tests"
)


def _compiled_kernel_files(package_dir):
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(
        path.name for path in Path(package_dir).glob("_kernels_*") if path.name.endswith(suffixes)
    )


def _import_lenet_fast():
    spec = importlib.util.find_spec("lenet_fast")
    if spec is None:
        pytest.exit(f"lenet_fast is not importable: {_BUILD_HINT}", returncode=4)
    package_dir = Path(spec.origin).parent
    try:
        from lenet_fast import _dispatch
    except Exception as exc:  # ImportError, or whatever a half-built tree raises
        if not _compiled_kernel_files(package_dir):
            pytest.exit(
                f"lenet_fast was imported from {package_dir}, which has no compiled "
                f"_kernels_* modules ({type(exc).__name__}: {exc}); {_BUILD_HINT}",
                returncode=4,
            )
        raise
    if not _dispatch.built_levels():
        pytest.exit(
            f"lenet_fast was imported from {package_dir}, which has no compiled "
            f"_kernels_* modules; {_BUILD_HINT}",
            returncode=4,
        )
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


def pytest_collection_finish(session):
    """Put the folder of the package under test first on ``sys.path``.

    Collecting ``bench/`` (a package) puts the repository root on ``sys.path``; processes started
    with the ``spawn`` method (``multiprocessing``, Dask's local cluster) copy ``sys.path`` and
    could then import the uncompiled source folder instead of the package under test.
    """
    under_test = str(Path(importlib.util.find_spec("lenet_fast").origin).resolve().parents[1])
    sys.path.insert(0, under_test)


@pytest.fixture(autouse=True, scope="session")
def _neutral_working_directory(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("working-directory"))
    yield
    os.chdir(previous)


KERNEL_LEVELS = _dispatch.usable_levels()


def pytest_generate_tests(metafunc):
    """A test argument named ``level`` runs once per usable ISA level (unless parametrised)."""
    explicit = set()
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        explicit.update(name.strip() for name in names.split(",")) if isinstance(
            names, str
        ) else explicit.update(names)
    if "level" in metafunc.fixturenames and "level" not in explicit:
        metafunc.parametrize("level", KERNEL_LEVELS)
