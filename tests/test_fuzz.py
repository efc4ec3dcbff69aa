"""Run the fuzz targets of tests/fuzz/ for a bounded time each, in a subprocess, and fail on any
crash, unexpected exception, hang or runaway memory they find.

``LENET_FAST_FUZZ_SECONDS`` (default 2 here, so that the README's test command stays short; the
targets run alone default to 20) sets the time per target; 0 runs only the seed corpus.  A long
campaign: ``LENET_FAST_FUZZ_SECONDS=600 pytest -m fuzz``.  Every test here is marked ``fuzz``.
The targets use atheris (coverage-guided libFuzzer) when it is installed, else a built-in
mutational fuzzer (see tests/fuzz/_harness.py).  A failing input is written to the test's
temporary directory and named in the failure message; reproduce it with
``python tests/fuzz/fuzz_<target>.py <input>``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lenet_fast

FUZZ = Path(__file__).resolve().parent / "fuzz"
SECONDS = float(os.environ.get("LENET_FAST_FUZZ_SECONDS", "2"))
TARGETS = ["npz", "idx", "predict", "onnx", "image"]
PACKAGE_PARENT = str(Path(lenet_fast.__file__).resolve().parent.parent)
OPTIONAL_DEPENDENCY = {"onnx": "onnx", "image": "PIL.Image"}  # skip like the other optional tests

pytestmark = pytest.mark.fuzz


def run_target(target, arguments, tmp_path, seconds):
    if target in OPTIONAL_DEPENDENCY:
        pytest.importorskip(OPTIONAL_DEPENDENCY[target])
    environment = {
        **os.environ,
        "LENET_FAST_FUZZ_SECONDS": str(seconds),
        "LENET_FAST_FUZZ_ARTIFACTS": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]),
    }
    try:
        result = subprocess.run(
            [sys.executable, str(FUZZ / f"fuzz_{target}.py"), *arguments],
            capture_output=True,
            text=True,
            env=environment,
            cwd=tmp_path,
            timeout=seconds * 2 + 120,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fuzz_{target}.py did not finish: {exc}")
    output = "\n".join(
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not line.startswith(("INFO: Instrumenting", "#")) and "# Uses:" not in line
    )
    artifacts = sorted(
        path.name
        for path in tmp_path.iterdir()
        if path.name.startswith(("crash-", "timeout-", "oom-", "leak-"))
    )
    assert result.returncode == 0, (
        f"fuzz_{target}.py exited {result.returncode}; failing inputs in {tmp_path}: {artifacts}\n"
        + output[-6000:]
    )


@pytest.mark.parametrize("target", TARGETS)
def test_seed_corpus_runs_clean(target, tmp_path):
    seeds = sorted(str(path) for path in (FUZZ / "corpus" / target).iterdir())
    assert seeds
    run_target(target, seeds, tmp_path, 0)


@pytest.mark.skipif(SECONDS <= 0, reason="LENET_FAST_FUZZ_SECONDS=0")
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(target, tmp_path):
    run_target(target, [], tmp_path, SECONDS)
