#!/usr/bin/env bash
# sdist check: build the source distribution, unpack it in a temporary folder, install it (a
# source build: needs a C compiler) into a fresh venv with pytest and hypothesis only, and run
# the test suite's fast part from the unpacked folder: everything not marked `slow`; the tests of
# optional dependencies (torch, ONNX, dask, matplotlib, ...) skip, as they would for a user
# without them.  Proves that the sdist alone builds and carries everything the suite needs.
#
# Usage: tools/sdist_check.sh [path of an existing sdist] [-- extra pytest arguments]
# Environment: PYTHON (default python3); KEEP_SDIST_CHECK=1 keeps the work folder.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lenet_fast_sdist.XXXXXX")"
if [ "${KEEP_SDIST_CHECK:-0}" = 1 ]; then
    echo "sdist check kept in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
SDIST=""
if [ $# -gt 0 ] && [ "$1" != -- ]; then SDIST="$(realpath "$1")"; shift; fi
[ "${1:-}" = -- ] && shift
started_all=$SECONDS
PIP_QUIET=(-q --disable-pip-version-check)

echo "== a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
VENV_PYTHON="$WORK/venv/bin/python"
if [ -z "$SDIST" ]; then
    echo "== building the sdist"
    "$VENV_PYTHON" -m pip install "${PIP_QUIET[@]}" build
    bash "$ROOT/tools/copy_sources.sh" "$WORK/source"
    "$VENV_PYTHON" -m build --sdist --outdir "$WORK/dist" "$WORK/source" > "$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log"; exit 1; }
    SDIST="$(ls "$WORK"/dist/lenet_fast-*.tar.gz)"
fi
echo "   $(basename "$SDIST")"

echo "== unpacking and installing it"
started=$SECONDS
mkdir "$WORK/unpacked"
tar -xzf "$SDIST" -C "$WORK/unpacked"
UNPACKED="$(ls -d "$WORK"/unpacked/lenet_fast-*)"
cd "$UNPACKED"
"$VENV_PYTHON" -m pip install "${PIP_QUIET[@]}" . pytest hypothesis > "$WORK/install.log" 2>&1 \
    || { tail -40 "$WORK/install.log"; exit 1; }
echo "   built and installed in $((SECONDS - started)) s"

echo "== the suite's fast part (-m 'not slow'), from $UNPACKED"
started=$SECONDS
# `pytest` (not `python -m pytest`, which would put the unpacked, uncompiled folder first on
# sys.path): the tests import the installed package, as the README says.
"$WORK/venv/bin/pytest" -q -p no:cacheprovider -m "not slow" "$@"
cd "$WORK"  # (from the unpacked folder, `python -` would import its uncompiled lenet_fast)
"$VENV_PYTHON" - <<'PY'
import lenet_fast, pathlib
assert "site-packages" in lenet_fast.__file__, lenet_fast.__file__
print("   tested", pathlib.Path(lenet_fast.__file__).parent)
PY
echo "   tests took $((SECONDS - started)) s"
echo "sdist check: all passed in $((SECONDS - started_all)) s"
