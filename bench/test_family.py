"""`bench.family` runs: a tiny run prints a table per member (no timing assertion: the numbers
belong in its report)."""

import os
import re
import subprocess
import sys
from pathlib import Path


def test_family_benchmark_prints_a_table_per_member():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.family",
            "--members",
            "caffe",
            "mnist-unpadded",
            "--batches",
            "1",
            "3",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--min-seconds",
            "0.001",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        },
    )
    assert result.returncode == 0, result.stderr
    # conv2 by Winograd: 16 windows x (36 x 20 x 50 + 120 x 20 + 16 x 50) multiply-adds
    # instead of 1,600,000
    assert (
        "caffe: 1x28x28 input, 2,293,000 multiply-adds per image, 1,320,200 executed"
        in result.stdout
    )
    assert "mnist-unpadded: 1x28x28 input, 281,640 multiply-adds per image" in result.stdout
    rows = re.findall(
        r"^\| (\d+) \| 1 \| [\d,]+ \| [\d,]+ \| [\d.]+x \| [\d.]+% \| [\d.]+% \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert rows == ["1", "3", "1", "3"], result.stdout


def test_latency_benchmark_prints_every_call_of_every_member(capsys):
    from bench import latency

    assert latency.main(["--members", "lenet5", "caffe", "--repeats", "1", "--calls", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert set(rows) == {"member", "lenet5", "caffe"}
    for name in ("lenet5", "caffe"):
        assert len(re.findall(r"\d+\.\d \(best \d+\.\d\)", rows[name])) == 3, rows[name]


def test_conv2_benchmark_times_both_algorithms_and_measures_their_error(capsys):
    from bench import conv2

    assert conv2.main(["--members", "lenet5", "--batches", "1", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| lenet5 \| (\d+) \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out, re.MULTILINE)
    assert rows == ["1", "3"], out
    errors = re.findall(
        r"^\| (mnist|fashion-mnist) \| [\d.]+ \| ([\d.e+-]+) \| ([\d.e+-]+) \|$", out, re.MULTILINE
    )
    assert [name for name, _, _ in errors] == ["mnist", "fashion-mnist"], out
    for _, direct, winograd in errors:  # float32 logits against float64: small, never zero
        assert 0 < float(direct) < 1e-4 and 0 < float(winograd) < 1e-4
