"""Run-time choice of the kernel module, and the thread-count default.

The kernels are compiled several times (see ``setup.py``): ``_kernels_avx512``, ``_kernels_avx2``
and ``_kernels_generic``.  ``_cpu_features`` (compiled for the baseline ISA, so it runs anywhere)
says which of them this CPU can execute; at import we load the best one, once per process.
``LENET_FAST_ISA=generic|avx2|avx512`` forces a level; forcing one the CPU lacks is an
``ImportError`` rather than an illegal-instruction crash later.
"""

import importlib
import importlib.util
import json
import os

_NOT_BUILT = (
    "lenet_fast has no compiled kernels here ({where}): install the package with `pip install .` "
    "rather than importing the source folder, or build in place with "
    "`python setup.py build_ext --inplace`"
)



def _installed_copy_shadowed():
    """Where an installed lenet_fast lies that this (unbuilt) folder hides on sys.path, or None."""
    import importlib.machinery
    import sys

    here = os.path.realpath(os.path.dirname(os.path.dirname(__file__)))
    others = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec(__package__, others)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    built = importlib.machinery.PathFinder.find_spec("_cpu_features", [folder])
    return folder if built is not None else None


try:
    from . import _cpu_features
except ImportError as exc:  # the source folder itself, never built
    _installed = _installed_copy_shadowed()
    if _installed is not None:
        raise ImportError(
            f"the lenet_fast source folder {os.path.dirname(os.path.dirname(__file__))} (current "
            f"directory or sys.path) shadows the installed lenet_fast in {_installed}: run from "
            f"another directory") from None     # not Python's misleading "circular import"
    raise ImportError(_NOT_BUILT.format(where=f"no lenet_fast._cpu_features next to {__file__}")) from exc

LEVELS = ("avx512", "avx2", "generic")
ISA_ENVIRONMENT_VARIABLE = "LENET_FAST_ISA"


def built_levels():
    """Kernel levels compiled into this installation, best first."""
    return tuple(
        level for level in LEVELS
        if importlib.util.find_spec(f"lenet_fast._kernels_{level}") is not None
    )


def usable_levels():
    """Levels both built here and supported by this CPU, best first."""
    supported = _cpu_features.supported_levels()
    return tuple(level for level in built_levels() if level in supported)


def load_kernels(level):
    """Import the kernel module of ``level`` after checking that this CPU can run it.

    Raises
    ------
    ValueError
        ``level`` is not one of ``LEVELS``.
    ImportError
        The level was not built here, or this CPU (or its operating system) lacks the instructions.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown ISA level {level!r}: expected one of {', '.join(LEVELS)}")
    if level not in built_levels():
        raise ImportError(
            f"lenet_fast was built without the {level!r} kernels on this platform "
            f"(built: {', '.join(built_levels())})"
        )
    if level not in _cpu_features.supported_levels():
        raise ImportError(
            f"{ISA_ENVIRONMENT_VARIABLE}={level} but this CPU does not support {level} "
            f"(it supports: {', '.join(_cpu_features.supported_levels())})"
        )
    return importlib.import_module(f"lenet_fast._kernels_{level}")


def _select_kernels():
    forced = os.environ.get(ISA_ENVIRONMENT_VARIABLE, "").strip().lower()
    if forced:
        if forced not in LEVELS:
            raise ImportError(
                f"{ISA_ENVIRONMENT_VARIABLE}={forced!r} is not a level: expected one of "
                f"{', '.join(LEVELS)}"
            )
        return load_kernels(forced)
    usable = usable_levels()
    if not usable:
        raise ImportError(_NOT_BUILT.format(where=f"no lenet_fast._kernels_* module next to {__file__}"))
    return load_kernels(usable[0])


_forked_child = False


def _note_fork():
    global _forked_child
    _forked_child = True


def in_forked_child():
    """True in a process made by ``fork()`` after lenet_fast was imported: kernels then run on one
    thread, because GNU OpenMP cannot start threads in a child whose parent already used them."""
    return _forked_child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def no_openmp_reason():
    """None when the kernels were built with OpenMP; otherwise why they were not (they then run on
    one thread whatever ``num_threads`` says), as recorded by ``setup.py``."""
    if kernels.HAVE_OPENMP:
        return None
    try:
        with open(os.path.join(os.path.dirname(__file__), "_build_info.json")) as file:
            reason = json.load(file).get("no_openmp_reason")
    except (OSError, ValueError, AttributeError):
        reason = None
    return reason or "the kernels were built without OpenMP (the build recorded no reason)"


def default_num_threads():
    """Threads a model uses by default: 1 when the kernels have no OpenMP (`no_openmp_reason`),
    else ``OMP_NUM_THREADS`` when set, else the CPUs this process may run on (its affinity mask),
    else ``os.cpu_count()``."""
    if not kernels.HAVE_OPENMP:
        return 1
    requested = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# GNU OpenMP reads its wait policy once, when it is loaded (with the first kernel module, unless
# another library loaded it earlier).  Its default keeps idle threads spinning for milliseconds
# after each parallel region, stealing a core from the calling thread and from other programs;
# fully passive waiting makes every call pay a thread wake-up (measured: 2 threads on a batch of
# 64 only 1.2-1.6x one thread).  A short spin (about 0.3 ms here) keeps back-to-back calls at
# 1.9-2x and costs ~1 ms of CPU after the last call.  A user's own setting wins.
# The variable is removed again once the kernels (and with them libgomp) are loaded, so that it
# does not leak into subprocesses or other OpenMP runtimes loaded later.
_SPIN_COUNT = "10000"
_set_spin_count = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if _set_spin_count:
    os.environ["GOMP_SPINCOUNT"] = _SPIN_COUNT
try:
    kernels = _select_kernels()
finally:
    if _set_spin_count:
        del os.environ["GOMP_SPINCOUNT"]
openmp_wait = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
               "GOMP_SPINCOUNT": _SPIN_COUNT if _set_spin_count else os.environ.get("GOMP_SPINCOUNT")}
