"""CPU feature detection for the run-time choice of a kernel module (compiled for the baseline ISA).

``supported_levels()`` lists the instruction-set levels of lenet_fast's kernel modules that this
CPU and operating system can execute, best first.  ``lenet_fast._dispatch`` uses it at import.
"""

cdef extern from "cpu_features.h":
    int lenet_cpu_has_avx2_fma() nogil
    int lenet_cpu_has_avx512() nogil
    int LENET_CPU_IS_X86


def supported_levels():
    """Return the kernel levels this CPU can run, best first, e.g. ``("avx512", "avx2", "generic")``."""
    levels = []
    if lenet_cpu_has_avx512():
        levels.append("avx512")
    if lenet_cpu_has_avx2_fma():
        levels.append("avx2")
    levels.append("generic")
    return tuple(levels)


def is_x86():
    """True when this build targets x86 (where the AVX2 and AVX-512 modules exist)."""
    return bool(LENET_CPU_IS_X86)
