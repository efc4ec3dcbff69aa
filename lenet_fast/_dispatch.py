"""Run-time choice of the kernel module, and the thread-count default.

The kernels are compiled several times (see ``setup.py``): ``_kernels_avx512``, ``_kernels_avx2``
and ``_kernels_generic``.  ``_cpu_features`` (compiled for the baseline ISA, so it runs anywhere)
says which of them this CPU can execute; at import we load the best one, once per process.
``LENET_FAST_ISA=generic|avx2|avx512`` forces a level; forcing one the CPU lacks is an
``ImportError`` rather than an illegal-instruction crash later.
"""

import importlib
import importlib.util
import os
from types import ModuleType

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
            f"another directory"
        ) from None  # not Python's misleading "circular import"
    raise ImportError(
        _NOT_BUILT.format(where=f"no lenet_fast._cpu_features next to {__file__}")
    ) from exc

LEVELS = ("avx512", "avx2", "generic")
ISA_ENVIRONMENT_VARIABLE = "LENET_FAST_ISA"


def built_levels() -> tuple[str, ...]:
    """Kernel levels compiled into this installation, best first.

    Returns
    -------
    tuple of str
        Some of `LEVELS`, in their order.
    """
    return tuple(
        level
        for level in LEVELS
        if importlib.util.find_spec(f"lenet_fast._kernels_{level}") is not None
    )


def usable_levels() -> tuple[str, ...]:
    """Levels both built here and supported by this CPU, best first.

    Returns
    -------
    tuple of str
        Some of `LEVELS`, in their order; the first is the one imported by default.
    """
    supported = _cpu_features.supported_levels()
    return tuple(level for level in built_levels() if level in supported)


def load_kernels(level: str) -> ModuleType:
    """Import the kernel module of ``level`` after checking that this CPU can run it.

    Parameters
    ----------
    level : {"avx512", "avx2", "generic"}
        One of `LEVELS`.

    Returns
    -------
    module
        ``lenet_fast._kernels_<level>``.

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
        raise ImportError(
            _NOT_BUILT.format(where=f"no lenet_fast._kernels_* module next to {__file__}")
        )
    return load_kernels(usable[0])


def _read_first_line(path):
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.readline().strip()
    except OSError:
        return None


def _quota_cpus(quota, period):
    """CPUs granted by a CFS bandwidth quota (microseconds per period), rounded up; None when
    unlimited or unreadable."""
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None  # "max" (v2) or -1 (v1): no limit
    return max(1, -(-quota // period))


def _cgroup_folders(root, relative):
    """`root`/`relative` and its ancestors up to `root` (a limit set on any of them applies)."""
    parts = [part for part in relative.split("/") if part and part not in (".", "..")]
    return [os.path.join(root, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def cgroup_cpu_limit(
    root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup"
) -> int | None:
    """CPUs this process's cgroup CPU quota allows (rounded up), or None without a quota.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000") and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, in the process's own cgroup (from
    ``self_cgroup``) and every ancestor, and returns the smallest limit found, as loky (which
    scikit-learn uses) does.

    Parameters
    ----------
    root : str, default "/sys/fs/cgroup"
        Where the cgroup file systems are mounted (another folder in tests).
    self_cgroup : str, default "/proc/self/cgroup"
        The file naming this process's cgroups (another file in tests).

    Returns
    -------
    int or None
        The smallest limit found, at least 1; None when no quota applies.
    """
    v2_path, v1_path = "/", None
    try:
        with open(self_cgroup, encoding="ascii", errors="replace") as file:
            entries = file.read().splitlines()
    except OSError:
        entries = []
    for entry in entries:  # "hierarchy-id:controllers:path"
        hierarchy, _, rest = entry.strip().partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = (controllers, path)
    limits = []
    for folder in _cgroup_folders(root, v2_path):
        cpu_max = _read_first_line(os.path.join(folder, "cpu.max"))
        if cpu_max:
            limits.append(_quota_cpus(*(cpu_max.split() + [None, None])[:2]))
    v1_roots = [os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct")]
    if v1_path is not None:
        v1_roots.insert(0, os.path.join(root, v1_path[0]))
    for v1_root in dict.fromkeys(v1_roots):
        for folder in _cgroup_folders(v1_root, v1_path[1] if v1_path else "/"):
            limits.append(
                _quota_cpus(
                    _read_first_line(os.path.join(folder, "cpu.cfs_quota_us")),
                    _read_first_line(os.path.join(folder, "cpu.cfs_period_us")),
                )
            )
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process can actually use.

    Returns
    -------
    int
        Its affinity mask (``os.sched_getaffinity``, else ``os.cpu_count()``), capped by its
        cgroup CPU quota (`cgroup_cpu_limit`); at least 1.
    """
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def default_num_threads() -> int:
    """Threads a model uses by default.

    Returns
    -------
    int
        ``OMP_NUM_THREADS`` when set to a positive integer (the convention of the numerical
        Python stack), else `usable_cpus` (affinity mask and cgroup CPU quota).
    """
    requested = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    return usable_cpus()


kernels = _select_kernels()


_OPENMP_RUNTIMES = ("libgomp", "libiomp5", "libomp")


def loaded_openmp_runtimes() -> tuple[str, ...]:
    """File names of the OpenMP runtimes loaded in this process.

    lenet_fast's kernels do not use OpenMP, but another library's OpenMP threads may spin on
    the cores they need.

    Returns
    -------
    tuple of str
        From ``/proc/self/maps``, sorted; empty where that file does not exist.
    """
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return ()
    return tuple(
        sorted(
            os.path.basename(path)
            for path in paths
            if os.path.basename(path).startswith(_OPENMP_RUNTIMES)
        )
    )
