"""`show_config`: what this installation runs -- kernel level, threading, thread defaults.

It reads `_dispatch` (which compiled kernels were chosen) and `_version`; it lives here, not in
the package's ``__init__``, so that the command line imports it without importing upward.
"""

import os

from . import _dispatch
from ._version import __version__


def show_config(print_out: bool = True) -> dict:
    """Report the kernel level chosen at import, the threading in effect, and thread defaults.

    Parameters
    ----------
    print_out : bool, default True
        Print a readable report as well as returning it.

    Returns
    -------
    dict
        ``isa`` (the level in use), ``usable_isas`` (levels this CPU runs, best first),
        ``built_isas``, ``forced_isa`` (``LENET_FAST_ISA`` or None), ``vector_lanes``,
        ``threading`` (what runs the threads), ``spin_microseconds`` (how long an idle pool
        thread spins before sleeping: ``LENET_FAST_SPIN_US``, read when the first batch runs on
        several threads, and always in effect since the pool is lenet_fast's own),
        ``openmp_runtimes_loaded`` (OpenMP runtimes other libraries loaded into this process:
        their threads may spin on the same cores), ``usable_cpus`` (affinity mask capped by the
        cgroup CPU quota), ``cgroup_cpu_limit`` (None without a quota), ``pool_jobs`` (jobs run
        with helpers, jobs run on the caller alone while the pool backed off, jobs after which it
        backed off: helpers that lose their core make the pool back off),
        ``default_num_threads``, ``version``.
    """
    kernels = _dispatch.kernels
    config = {
        "version": __version__,
        "isa": kernels.ISA,
        "usable_isas": _dispatch.usable_levels(),
        "built_isas": _dispatch.built_levels(),
        "forced_isa": os.environ.get(_dispatch.ISA_ENVIRONMENT_VARIABLE) or None,
        "vector_lanes": kernels.LANES,
        "threading": kernels.THREADING,
        "spin_microseconds": kernels.pool_spin_us(),
        "pool_jobs": kernels.pool_statistics(),
        "openmp_runtimes_loaded": _dispatch.loaded_openmp_runtimes(),
        "usable_cpus": _dispatch.usable_cpus(),
        "cgroup_cpu_limit": _dispatch.cgroup_cpu_limit(),
        "default_num_threads": _dispatch.default_num_threads(),
    }
    if print_out:
        width = max(map(len, config))
        for key, value in config.items():
            if isinstance(value, tuple):
                value = ", ".join(value) or "none"
            print(f"{key.ljust(width)}  {value}")
    return config
