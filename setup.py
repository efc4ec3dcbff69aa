"""Build the lenet_fast kernels.

One kernel source (``src/kernels.pxi`` and the files it includes, generated from the ``src/*.tp``
templates and the block-size table ``src/block_sizes.py``) is compiled several times, once per
instruction-set level, into separate extension modules
(``lenet_fast._kernels_generic``, ``_kernels_avx2``, ``_kernels_avx512``).  A small detector module,
``lenet_fast._cpu_features``, is compiled for the baseline ISA and picks one of them at import
(``lenet_fast/_dispatch.py``).

Which levels are built depends on the architecture the *compiler* targets, not on the machine
running the build (a cross build for aarch64 on an x86-64 host must not get AVX flags): x86-64
gets generic, AVX2+FMA and AVX-512; every other target (aarch64, where GCC's vector extensions
become NEON; ppc64le; ...) gets the generic level only.  The target is, in this order:
``LENET_FAST_TARGET_ARCH`` when set; what ``$CC $CFLAGS $ARCHFLAGS -dumpmachine`` prints;
``sysconfig.get_platform()`` (which honours ``_PYTHON_HOST_PLATFORM``).

The build needs a GCC-compatible C compiler (GCC or Clang: vector extensions,
``__builtin_cpu_supports``, ``__atomic`` builtins, pthreads); with MSVC it stops before compiling
anything and says so.  Nothing is probed or generated until ``build_ext`` runs, so ``sdist`` and
metadata queries need no compiler.

Environment variables read here:

``LENET_FAST_DEBUG=1``
    Checked build: adds ``-O1 -g -UNDEBUG -fno-omit-frame-pointer`` after the release flags (so
    ``-std=gnu11 -fno-math-errno -ffp-contract=off`` stay; the later ``-O1`` wins over ``-O3``),
    and turns on Cython's bounds/wraparound/initialisation checks (they guard the Python-facing
    code; the kernels use raw pointers, which ``LENET_FAST_SANITIZE=address`` checks instead).
``LENET_FAST_SANITIZE=address``
    Adds AddressSanitizer (``-fsanitize=address``, compile and link); used with
    ``LENET_FAST_DEBUG=1`` by ``tools/checked_build.sh``, which preloads libasan into Python.
``LENET_FAST_TARGET_ARCH``
    Override the detected target architecture (``x86_64``, ``aarch64``, ...).
``CC``, ``CFLAGS``, ``ARCHFLAGS``, ``CPPFLAGS``, ``LDFLAGS``
    The compiler and its flags, as distutils uses them; also used to find the target
    architecture (``-dumpmachine``).

The kernels' threads come from their own pthread pool (``src/parallel.h``): no OpenMP flag or
runtime is used.  The build writes ``lenet_fast/_build_info.json`` next to the extension modules:
the target it detected, how, and the ISA levels built.
Every ``src/*.tp`` template is rendered (``x.pxi.tp`` -> ``x.pxi``) when ``build_ext`` runs,
never when this file is imported.
"""

import json
import os
import shlex
import subprocess
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"

DEBUG = os.environ.get("LENET_FAST_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("LENET_FAST_SANITIZE", "")

MSVC_UNSUPPORTED = (
    "lenet_fast cannot be built with Microsoft Visual C++ (MSVC): its kernels use GCC/Clang vector "
    "extensions, __builtin_cpu_supports, __atomic builtins and pthreads, which MSVC does not "
    "provide. Build with a GCC-compatible compiler instead: MinGW-w64 GCC "
    "(`python setup.py build_ext --compiler=mingw32`, from an MSYS2 shell) or use WSL, where "
    "`pip install .` builds with Linux GCC."
)

_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "arm64": "aarch64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "win32": "x86",
}


def compiler_command():
    """The C compiler as distutils runs it, with the flags that may choose its target."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return (
        shlex.split(cc)
        + shlex.split(os.environ.get("CFLAGS", ""))
        + shlex.split(os.environ.get("ARCHFLAGS", ""))
    )


def normalise_arch(name):
    name = name.strip().lower()
    return _ARCH_ALIASES.get(name, name)


def target_architecture():
    """Return ``(architecture, how it was found)`` for the compiler's target (see the module doc)."""
    override = os.environ.get("LENET_FAST_TARGET_ARCH", "").strip()
    if override:
        return normalise_arch(override), f"LENET_FAST_TARGET_ARCH={override}"
    command = compiler_command()
    if sum(flag == "-arch" for flag in command) > 1:  # macOS universal2: one object, two targets
        return "universal", f"several -arch flags in {' '.join(command)}"
    try:
        result = subprocess.run(
            command + ["-dumpmachine"], capture_output=True, text=True, timeout=60
        )
        triplet = result.stdout.strip()
        if result.returncode == 0 and triplet:
            return normalise_arch(triplet.split("-")[0]), f"{command[0]} -dumpmachine: {triplet}"
    except (OSError, subprocess.SubprocessError):
        pass
    host_platform = sysconfig.get_platform()
    return normalise_arch(host_platform.rsplit("-", 1)[-1]), f"sysconfig platform {host_platform}"


TARGET_ARCH, TARGET_FOUND_BY = target_architecture()

# Compiler flags of each ISA level.  -ffp-contract=off: every fused multiply-add is written
# explicitly, so the compiler may not invent others (that would change bits between the paths).
# Never -ffast-math: it breaks NaN handling in max pooling and may set flush-to-zero process-wide.
ISA_FLAGS = {"generic": []}
if TARGET_ARCH == "x86_64":
    ISA_FLAGS["avx2"] = ["-mavx2", "-mfma"]
    ISA_FLAGS["avx512"] = ["-mavx512f", "-mavx2", "-mfma", "-mprefer-vector-width=512"]


def generate_from_templates():
    """Render every ``src/*.tp`` Tempita template next to itself (``x.pxi.tp`` -> ``x.pxi``,
    ``block_sizes.h.tp`` -> ``block_sizes.h``), with the block-size table of
    ``src/block_sizes.py`` in their namespace (``BLOCKS``, ``FAMILIES``, ``largest``)."""
    import runpy

    from Cython.Tempita import Template

    table = runpy.run_path(str(SRC / "block_sizes.py"))
    namespace = {name: table[name] for name in ("BLOCKS", "FAMILIES", "largest")}
    for template_path in sorted(SRC.glob("*.tp")):
        output_path = template_path.with_suffix("")
        rendered = Template(template_path.read_text(), name=str(template_path)).substitute(
            namespace
        )
        note = f"Generated from {template_path.name} by setup.py -- do not edit; edit the template."
        header = f"/* {note} */\n" if output_path.suffix == ".h" else f"# {note}\n"
        text = header + rendered
        if not output_path.exists() or output_path.read_text() != text:
            output_path.write_text(text)


# Every source a kernel module is built from besides its .pyx: a change to any of them rebuilds it
# (Cython tracks the includes it reads, but the C compile step only looks at `depends`).  Sources
# only -- the templates, not what they render: setuptools also puts `depends` into the sdist.
KERNEL_DEPENDS = sorted(
    [f"src/{name}" for name in ("simd.h", "parallel.h", "block_sizes.py")]
    + [f"src/{path.name}" for path in SRC.glob("*.tp")]
)


def common_flags(debug=DEBUG, sanitize=SANITIZE):
    """``(compile flags, link flags)`` of every extension: the release flags, then what the
    checked build (`debug`) and AddressSanitizer (``sanitize == "address"``) add to them."""
    compile_flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11"]
    link_flags = []
    if debug:  # added after the release flags: the later -O1 wins over -O3
        compile_flags += ["-O1", "-g", "-UNDEBUG", "-fno-omit-frame-pointer"]
    if sanitize == "address":
        compile_flags += ["-fsanitize=address"]
        link_flags += ["-fsanitize=address"]
    return compile_flags, link_flags


def declared_extensions():
    """The extension modules, with their sources and ISA flags (completed by `BuildKernels`)."""
    modules = [Extension("lenet_fast._cpu_features", sources=["src/_cpu_features.pyx"])]
    for level, isa_flags in ISA_FLAGS.items():
        modules.append(
            Extension(
                f"lenet_fast._kernels_{level}",
                sources=[f"src/_kernels_{level}.pyx"],
                define_macros=[(f"LENET_ISA_{level.upper()}", "1")],
                extra_compile_args=list(isa_flags),
                depends=KERNEL_DEPENDS,
            )
        )
    return modules


class BuildKernels(build_ext):
    """build_ext that first refuses MSVC, then renders the templates, cythonizes, and records the
    target it built for in ``lenet_fast/_build_info.json``."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            raise SystemExit(f"error: {MSVC_UNSUPPORTED}")
        import numpy as np
        from Cython.Build import cythonize

        generate_from_templates()
        common_compile, common_link = common_flags()
        for extension in self.extensions:
            extension.include_dirs = [str(SRC), np.get_include()]
            extension.extra_compile_args = common_compile + extension.extra_compile_args
            extension.extra_link_args = list(common_link)
            if extension.name.startswith("lenet_fast._kernels_"):
                extension.define_macros.append(("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"))
        directives = {
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "cdivision": not DEBUG,
            "embedsignature": True,
        }
        # cythonize returns new Extension objects; build_ext already annotated ours (finalize_options),
        # so only their sources change: .pyx -> the generated .c.
        cythonized = cythonize(
            self.extensions,
            compiler_directives=directives,
            include_path=[str(SRC)],
            force=self.force,
        )
        sources = {extension.name: extension.sources for extension in cythonized}
        for extension in self.extensions:
            extension.sources = sources[extension.name]
        self.write_build_info()
        super().build_extensions()

    def build_info_path(self):
        return Path(self.get_ext_fullpath("lenet_fast._cpu_features")).parent / "_build_info.json"

    def write_build_info(self):
        path = self.build_info_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "target_arch": TARGET_ARCH,
            "target_found_by": TARGET_FOUND_BY,
            "isa_levels": list(ISA_FLAGS),
        }
        path.write_text(json.dumps(info, indent=1) + "\n")

    def copy_extensions_to_source(self):
        """``--inplace``: setuptools builds in build_lib, then copies the modules into the source
        tree; the build record goes with them."""
        super().copy_extensions_to_source()
        self.inplace = 0
        built = self.build_info_path()
        self.inplace = 1
        self.copy_file(str(built), str(self.build_info_path()))


if __name__ == "__main__":  # (setuptools' build backend runs this file as __main__ too)
    setup(ext_modules=declared_extensions(), cmdclass={"build_ext": BuildKernels})
