"""Build the lenet_fast kernels.

One kernel source (``src/kernels.pxi``, generated from ``src/kernels.pxi.tp``) is compiled several
times, once per instruction-set level, into separate extension modules
(``lenet_fast._kernels_generic``, ``_kernels_avx2``, ``_kernels_avx512``).  A small detector module,
``lenet_fast._cpu_features``, is compiled for the baseline ISA and picks one of them at import
(``lenet_fast/_dispatch.py``).  Only the generic level is built on non-x86 machines.

Environment variables read here:

``LENET_FAST_DEBUG=1``
    Checked build: ``-O1 -g``, assertions on, Cython's bounds/wraparound/initialisation checks on
    (they guard the Python-facing code; the kernels use raw pointers, which
    ``LENET_FAST_SANITIZE=address`` -- AddressSanitizer -- checks instead).

The build needs GCC or Clang (vector extensions, ``__builtin_cpu_supports``, pthreads).
``LENET_FAST_NO_OPENMP=1``
    Build without OpenMP even when the compiler supports it (kernels then run serially).
"""

import os
import platform
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from Cython.Tempita import Template
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"

DEBUG = os.environ.get("LENET_FAST_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("LENET_FAST_SANITIZE", "")

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# Compiler flags of each ISA level.  -ffp-contract=off: every fused multiply-add is written
# explicitly, so the compiler may not invent others (that would change bits between the paths).
# Never -ffast-math: it breaks NaN handling in max pooling and may set flush-to-zero process-wide.
ISA_FLAGS = {"generic": []}
if IS_X86_64:
    ISA_FLAGS["avx2"] = ["-mavx2", "-mfma"]
    ISA_FLAGS["avx512"] = ["-mavx512f", "-mavx2", "-mfma", "-mprefer-vector-width=512"]


def generate_from_templates():
    """Render every ``src/*.tp`` Tempita template next to itself (``x.pxi.tp`` -> ``x.pxi``)."""
    for template_path in SRC.glob("*.tp"):
        output_path = template_path.with_suffix("")
        rendered = Template(template_path.read_text(), name=str(template_path)).substitute()
        header = (
            f"# Generated from {template_path.name} by setup.py -- do not edit; edit the template.\n"
        )
        text = header + rendered
        if not output_path.exists() or output_path.read_text() != text:
            output_path.write_text(text)


def compiler_accepts(flags):
    """True when the C compiler builds and links a tiny program with ``flags``."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text(
            "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\n"
            "return n>0?0:1;}\n"
        )
        command = cc.split() + [str(source), "-o", str(Path(tmp) / "probe")] + flags
        try:
            result = subprocess.run(command, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def openmp_flags():
    if os.environ.get("LENET_FAST_NO_OPENMP", "") not in ("", "0"):
        return []
    if compiler_accepts(["-fopenmp"]):
        return ["-fopenmp"]
    warnings.warn("the C compiler does not support OpenMP: lenet_fast kernels will run on one thread")
    return []


def extensions():
    generate_from_templates()
    openmp = openmp_flags()
    common_compile = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11"]
    common_link = []
    if DEBUG:
        common_compile = ["-O1", "-g", "-ffp-contract=off", "-UNDEBUG", "-fno-omit-frame-pointer"]
    if SANITIZE == "address":
        common_compile += ["-fsanitize=address"]
        common_link += ["-fsanitize=address"]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    include_dirs = [str(SRC), np.get_include()]

    modules = [
        Extension(
            "lenet_fast._cpu_features",
            sources=["src/_cpu_features.pyx"],
            include_dirs=include_dirs,
            extra_compile_args=common_compile,
            extra_link_args=common_link,
        )
    ]
    for level, isa_flags in ISA_FLAGS.items():
        modules.append(
            Extension(
                f"lenet_fast._kernels_{level}",
                sources=[f"src/_kernels_{level}.pyx"],
                include_dirs=include_dirs,
                define_macros=macros + [(f"LENET_ISA_{level.upper()}", "1")],
                extra_compile_args=common_compile + isa_flags + openmp,
                extra_link_args=common_link + openmp,
            )
        )
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "embedsignature": True,
    }
    return cythonize(
        modules,
        compiler_directives=directives,
        include_path=[str(SRC)],
    )


setup(ext_modules=extensions())
