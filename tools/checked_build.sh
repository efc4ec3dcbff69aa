#!/usr/bin/env bash
# Checked build: compile lenet_fast with Cython bounds/wraparound/initialisation checks, -O1 -g,
# assertions and AddressSanitizer (setup.py: LENET_FAST_DEBUG=1, LENET_FAST_SANITIZE=address) in a
# temporary copy of the source tree, then run the tests that drive the kernels (by file and marker,
# see KERNEL_TESTS) and a short predict fuzzing run against it.  The in-place build of the working
# tree is not touched.
#
# ASan is loaded into the (uninstrumented) CPython with LD_PRELOAD; leak detection is off because
# CPython's own allocations at exit are reported as leaks.  Set LENET_FAST_SANITIZE= (empty) for a
# bounds-checked build without ASan, with -fstack-protector-strong -D_FORTIFY_SOURCE=2 instead.
#
# Usage: tools/checked_build.sh [extra pytest arguments]
# Environment: LENET_FAST_FUZZ_SECONDS (default 20) for the fuzzing run; KEEP_CHECKED_BUILD=1
# keeps the temporary directory.  Runs as root on a fresh clone in well under 10 minutes on 2 CPUs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SANITIZE="${LENET_FAST_SANITIZE-address}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lenet_fast_checked.XXXXXX")"
if [ "${KEEP_CHECKED_BUILD:-0}" = 1 ]; then
    echo "checked build kept in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

# The sources (tracked, plus untracked files not ignored: works on a clone and in a work tree);
# never the compiled modules or generated C of the main build.
cd "$ROOT"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | grep -zv -e '\.so$' -e '^src/.*\.c$' -e '^build/' \
        | xargs -0 -I{} cp --parents -- {} "$WORK" 2> /dev/null || true
else
    cp -r setup.py pyproject.toml src lenet_fast tests "$WORK"
    find "$WORK" \( -name '*.so' -o -path "$WORK/src/*.c" \) -delete
fi
cd "$WORK"
test -f setup.py -a -d src -a -d tests

echo "== building the checked variant in $WORK (LENET_FAST_DEBUG=1 LENET_FAST_SANITIZE=$SANITIZE)"
started=$SECONDS
export LENET_FAST_DEBUG=1
if [ "$SANITIZE" = address ]; then
    export LENET_FAST_SANITIZE=address
    LIBASAN="$(${CC:-gcc} -print-file-name=libasan.so)"
    test -f "$LIBASAN" || { echo "libasan.so not found (install gcc's libasan)"; exit 1; }
else
    unset LENET_FAST_SANITIZE
    export CFLAGS="${CFLAGS:-} -fstack-protector-strong -D_FORTIFY_SOURCE=2"
    LIBASAN=""
fi
"$PYTHON" setup.py -q build_ext --inplace -j 2 > build.log 2>&1 || { tail -50 build.log; exit 1; }
echo "   built in $((SECONDS - started)) s"
if [ -n "$LIBASAN" ]; then  # the kernels really are instrumented
    for module in lenet_fast/_kernels_*.so; do
        symbols="$(nm -D "$module")"  # (not piped into grep -q: SIGPIPE under pipefail)
        grep -q __asan_report_load <<< "$symbols" || { echo "$module: not built with ASan"; exit 1; }
    done
fi

run() {
    if [ -n "$LIBASAN" ]; then
        # verify_asan_link_order=0: libasan is preloaded into a Python that was not built with it.
        LD_PRELOAD="$LIBASAN" \
        ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0:halt_on_error=1" \
            "$@"
    else
        "$@"
    fi
}

# Make sure the tests import this build and that it is the checked one.
PYTHONPATH="$WORK" run "$PYTHON" - <<'PY'
import lenet_fast, os
assert os.path.dirname(lenet_fast.__file__).startswith(os.environ["PYTHONPATH"]), lenet_fast.__file__
print("   testing", lenet_fast.__file__, "levels", lenet_fast._dispatch.built_levels())
PY

# The tests that run the compiled kernels, selected by file (the kernel tests, and the model,
# thread and hostile-file tests that drive the kernels through the API) and by marker: the
# `memory` tests are left out, since ASan's shadow memory and quarantine make RSS meaningless,
# and so are the `slow` (rebuilds) and `fuzz` (run below, against this build) tests.  Kernel test
# files added later (tests/test_kernels*.py, tests/test_microkernels*.py) are picked up by name.
shopt -s nullglob
KERNEL_TESTS=(tests/test_kernels*.py tests/test_microkernels*.py tests/test_model.py
              tests/test_threads.py tests/test_hostile_files.py)
shopt -u nullglob
echo "== kernel tests against the checked build: ${KERNEL_TESTS[*]}"
started=$SECONDS
PYTHONPATH="$WORK" LENET_FAST_SAFETY_SECONDS=1 run "$PYTHON" -m pytest -q -p no:cacheprovider \
    "${KERNEL_TESTS[@]}" -m "not memory and not slow and not fuzz" "$@"
echo "   tests took $((SECONDS - started)) s"

echo "== fuzzing predict against the checked build for ${LENET_FAST_FUZZ_SECONDS:-20} s"
PYTHONPATH="$WORK" LENET_FAST_FUZZ_ENGINE=builtin LENET_FAST_FUZZ_ARTIFACTS="$WORK" \
    run "$PYTHON" tests/fuzz/fuzz_predict.py
echo "checked build: all passed"
