#!/usr/bin/env bash
# arm64 check: cross-compile lenet_fast for aarch64 (the generic kernel level, which GCC's vector
# extensions turn into NEON) and run the kernel, model and reference tests (and the activation
# accuracy tests) under qemu-aarch64
# against the NumPy reference, on an aarch64 CPython with an aarch64 NumPy.
#
# Nothing is installed into the system: the aarch64 Python (Debian's python3.11 arm64 packages,
# fetched with `apt-get download` from a private arm64 package list and unpacked with `dpkg -x`)
# and NumPy + pytest (aarch64 wheels from PyPI, `pip install --target`) go into a work folder.
# setup.py is not told the target: it finds it from the compiler (`aarch64-linux-gnu-gcc
# -dumpmachine`), and the script checks that it built the generic level only, for aarch64.
#
# Needs (Debian): gcc-aarch64-linux-gnu qemu-user, and network access to Debian and PyPI.
# Usage: tools/aarch64_check.sh [extra pytest arguments]
# Environment: PYTHON (host Python with Cython, setuptools, numpy; default python3),
#   AARCH64_PYTHON_VERSION (Debian's Python, default 3.11), AARCH64_NUMPY (pip requirement,
#   default: the host's NumPy version), KEEP_AARCH64_CHECK=1 keeps the work folder.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PYVER="${AARCH64_PYTHON_VERSION:-3.11}"
CROSS_CC="${AARCH64_CC:-aarch64-linux-gnu-gcc}"
started_all=$SECONDS

for tool in "$CROSS_CC" qemu-aarch64 apt-get dpkg; do
    command -v "$tool" > /dev/null || {
        echo "aarch64 check: $tool not found (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)"
        exit 1
    }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lenet_fast_aarch64.XXXXXX")"
if [ "${KEEP_AARCH64_CHECK:-0}" = 1 ]; then
    echo "aarch64 work folder kept in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
SYSROOT="$WORK/sysroot"
SITE="$WORK/site-packages"
mkdir -p "$SYSROOT" "$SITE" "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/debs"

echo "== aarch64 Python $PYVER from Debian (arm64 packages, unpacked into $SYSROOT)"
started=$SECONDS
# A private package list for arm64 only: the system's apt configuration is left untouched.
APT_OPTIONS=(-o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
             -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
             -o APT::Sandbox::User=root)
apt-get "${APT_OPTIONS[@]}" -qq update
# The interpreter, its standard library and headers, and the shared libraries they (and NumPy's
# C++ code) load.
PACKAGES=(python$PYVER-minimal libpython$PYVER-minimal libpython$PYVER-stdlib libpython$PYVER-dev
          libc6 libgcc-s1 libstdc++6 libgomp1 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libcrypt1
          libuuid1)
(cd "$WORK/debs" && apt-get "${APT_OPTIONS[@]}" -qq download "${PACKAGES[@]}" 2> /dev/null)
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
TARGET_PYTHON="$SYSROOT/usr/bin/python$PYVER"
# Run as `qemu-aarch64 -L sysroot`; argv[0] (-0) is this wrapper, so sys.executable is too and the
# tests' subprocesses also run under qemu.  QEMU_LD_PREFIX: the sysroot's loader and libraries.
cat > "$SYSROOT/usr/bin/python-aarch64" <<EOF
#!/bin/sh
QEMU_LD_PREFIX="$SYSROOT" exec qemu-aarch64 -0 "\$0" "$TARGET_PYTHON" "\$@"
EOF
chmod +x "$SYSROOT/usr/bin/python-aarch64"
RUN="$SYSROOT/usr/bin/python-aarch64"
"$RUN" -c "import platform, sys; assert platform.machine() == 'aarch64', platform.machine(); print('  ', sys.version.split()[0], platform.machine(), sys.executable)"

NUMPY_REQUIREMENT="${AARCH64_NUMPY:-numpy==$("$PYTHON" -c 'import numpy; print(numpy.__version__)')}"
echo "== $NUMPY_REQUIREMENT and pytest for aarch64 (wheels from PyPI)"
"$PYTHON" -m pip install -q --disable-pip-version-check --target "$SITE" --only-binary=:all: \
    --implementation cp --python-version "$PYVER" \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 "$NUMPY_REQUIREMENT" pytest
PYTHONPATH="$SITE" "$RUN" -c "import numpy; print('   numpy', numpy.__version__, 'on', __import__('platform').machine())"
echo "   prepared in $((SECONDS - started)) s"

echo "== cross-compiling lenet_fast with $CROSS_CC"
started=$SECONDS
cd "$ROOT"
bash "$ROOT/tools/copy_sources.sh" "$WORK/src"
cd "$WORK/src"
EXT_SUFFIX="$(PYTHONPATH= "$RUN" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
# The target's headers come first (CFLAGS precede the include directories distutils adds for the
# host Python and NumPy; Debian's pyconfig.h includes <aarch64-linux-gnu/python3.x/pyconfig.h>,
# and the sysroot's usr/include holds nothing but Python's headers).  No -m flags: the generic level is GCC vector extensions = NEON.
CC="$CROSS_CC" LDSHARED="$CROSS_CC -shared" SETUPTOOLS_EXT_SUFFIX="$EXT_SUFFIX" \
CFLAGS="-I$SYSROOT/usr/include/python$PYVER -I$SYSROOT/usr/include -I$SITE/numpy/_core/include" \
    "$PYTHON" setup.py -q build_ext --inplace -j 2 > build.log 2>&1 || { tail -50 build.log; exit 1; }
echo "   built in $((SECONDS - started)) s"
"$PYTHON" - "$EXT_SUFFIX" <<'PY'
import json, pathlib, sys
suffix = sys.argv[1]
info = json.loads(pathlib.Path("lenet_fast/_build_info.json").read_text())
print("   build record:", info)
assert info["target_arch"] == "aarch64" and info["isa_levels"] == ["generic"], info
assert "-dumpmachine" in info["target_found_by"], info
modules = sorted(path.name for path in pathlib.Path("lenet_fast").glob("_*.so"))
assert modules == sorted(f"{name}{suffix}" for name in ("_cpu_features", "_kernels_generic")), modules
for name in modules:  # ELF e_machine 183 = EM_AARCH64
    data = pathlib.Path("lenet_fast", name).read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183, name
PY

echo "== kernel, model and reference tests under qemu-aarch64"
started=$SECONDS
PYTHONPATH="$WORK/src:$SITE" "$RUN" - <<'PY'
import lenet_fast, platform
config = lenet_fast.show_config(False)
assert platform.machine() == "aarch64" and config["isa"] == "generic", config
print("   lenet_fast", lenet_fast.__version__, "on", platform.machine(), "- isa", config["isa"],
      "- lanes", config["vector_lanes"], "- threading", config["threading"].split(":")[0],
      "- threads", config["default_num_threads"])
PY
# Left out: the million-image memory test (a 1.2-million-image run in a subprocess with a 120 s
# limit: under emulation it measures qemu, not the kernels, whose bits the other tests check).
TIMES="$WORK/times"
TIMEFORMAT="%R %U %S"
{ time PYTHONPATH="$WORK/src:$SITE" "$RUN" -m pytest -q -p no:cacheprovider \
    tests/test_kernels.py tests/test_model.py tests/test_reference.py \
    tests/test_microkernels.py::test_activation_accuracy \
    tests/test_microkernels.py::test_activation_special_values \
    -m "not memory" "$@" 2>&3
} 3>&2 2> "$TIMES"
read -r wall user system < "$TIMES"
echo "   tests took $((SECONDS - started)) s (pytest under qemu: ${wall} s wall, ${user} s user + ${system} s system CPU)"
echo "aarch64 check: all passed in $((SECONDS - started_all)) s"
