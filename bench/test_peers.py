"""`bench.peers` in seconds: every installed peer computes lenet_fast's network, a peer
that does not is rejected, a missing one is skipped with its reason, the table is the expected
markdown, and a tiny ``main`` run prints it; importing the module pulls in no peer package."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from bench import peers as benchmark
from lenet_fast import LeNet, cli
from tests.factories import random_weights

TINY_WIDTHS = (2, 3, 8, 5, 4)  # conv1, conv2, conv3, fc1 channels; classes
REPOSITORY = str(Path(__file__).resolve().parents[1])
PEER_PACKAGES = ("onnx", "onnxruntime", "openvino", "torch", "matplotlib")


@pytest.fixture(scope="module")
def tiny_weights():
    return random_weights(seed=7, widths=TINY_WIDTHS)


@pytest.fixture(scope="module")
def tiny_peers(tiny_weights):
    return benchmark.build_peers(tiny_weights, threads=2)


def test_import_needs_no_peer_package():
    code = (
        "import sys, bench.peers; "
        f"print(sorted(name for name in {PEER_PACKAGES!r} if name in sys.modules))"
    )
    path = os.pathsep.join([str(Path(lenet_fast.__file__).resolve().parents[1]), REPOSITORY])
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "engine", [engine for engine in benchmark.ENGINES if engine != "lenet_fast"]
)
def test_installed_peer_computes_lenet_fast_network(tiny_weights, tiny_peers, engine):
    peers, skipped = tiny_peers
    if engine in skipped:
        pytest.skip(f"{engine}: {skipped[engine]}")
    model = LeNet.from_state_dict(tiny_weights)
    images = benchmark.random_images(33, seed=99)
    expected = model.forward(images)
    scores = np.asarray(peers[engine].scores(images))
    assert scores.shape == (33, TINY_WIDTHS[-1])
    np.testing.assert_allclose(scores, expected, rtol=0, atol=benchmark.TOLERANCE)
    top_two = np.sort(expected, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > benchmark.TOLERANCE
    labels = np.asarray(peers[engine].run(images))
    assert labels.shape == (33,)
    np.testing.assert_array_equal(labels[clear], model.predict(images)[clear])
    assert peers[engine].threads == 2


def test_peer_of_another_network_is_rejected(tiny_weights, monkeypatch):
    other = {key: value * np.float32(1.5) for key, value in tiny_weights.items()}
    build_numpy_peer = benchmark._numpy_peer
    monkeypatch.setattr(
        benchmark, "_numpy_peer", lambda model, threads: build_numpy_peer(LeNet(other), threads)
    )
    with pytest.raises(AssertionError, match=r"numpy \(1 threads\) disagrees with lenet_fast"):
        benchmark.build_peers(tiny_weights, threads=1, engines=("numpy",))


def test_missing_peer_is_skipped_with_its_reason(tiny_weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes ``import torch`` fail
    peers, skipped = benchmark.build_peers(tiny_weights, threads=1, engines=("torch", "numpy"))
    assert list(peers) == ["lenet_fast", "numpy"]
    assert skipped == {"torch": "torch is not installed"}


def test_unknown_engine_is_rejected(tiny_weights):
    with pytest.raises(
        ValueError, match="unknown engine.s. tensorflow: expected some of lenet_fast, onnxruntime"
    ):
        benchmark.build_peers(tiny_weights, threads=1, engines=("tensorflow",))


def test_format_table():
    rows = [
        {
            "engine": "lenet_fast",
            "batch": 1024,
            "threads": 2,
            "us_per_call": 12345.678,
            "images_per_second": 82945.3,
            "vs_onnxruntime": 2.345,
            "percent_of_fma_peak": 55.55,
        },
        {
            "engine": "onnxruntime",
            "batch": 1024,
            "threads": 2,
            "us_per_call": 28950.0,
            "images_per_second": 35371.3,
            "vs_onnxruntime": 1.0,
            "percent_of_fma_peak": 23.7,
        },
        {
            "engine": "numpy",
            "batch": 1,
            "threads": 1,
            "us_per_call": 5.0,
            "images_per_second": 200000.0,
            "vs_onnxruntime": None,
            "percent_of_fma_peak": 0.04,
        },
    ]
    assert benchmark.format_table(rows) == "\n".join(
        [
            "| engine | batch | threads | µs/call | images/s | vs ONNX Runtime | % of FMA peak |",
            "|---|--:|--:|--:|--:|--:|--:|",
            "| lenet_fast | 1024 | 2 | 12,345.7 | 82,945 | 2.35× | 55.5% |",
            "| onnxruntime | 1024 | 2 | 28,950.0 | 35,371 | 1.00× | 23.7% |",
            "| numpy | 1 | 1 | 5.0 | 200,000 | n/a | 0.0% |",
        ]
    )


def test_main_prints_the_table(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("PIL.Image")
    path = tmp_path / "report.json"
    plot = tmp_path / "out.png"
    assert (
        benchmark.main(
            [
                "--batches",
                "1,4",
                "--threads",
                "1",
                "--repeats",
                "1",
                "--json",
                str(path),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    output = capsys.readouterr().out
    assert (
        "| engine | batch | threads | µs/call | images/s | vs ONNX Runtime | % of FMA peak |"
        in output
    )
    assert f"plot written to {plot}" in output
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with image.open(plot) as opened:
        opened.verify()
        assert opened.format == "PNG"
    for engine in ("lenet_fast", "onnxruntime"):
        for batch in (1, 4):
            assert f"| {engine} | {batch} | 1 | " in output
    assert "| onnxruntime | 1 | 1 | " in output and " | 1.00× | " in output
    assert "Load average (1, 5, 15 min) before measuring: " in output
    assert "Load average (1, 5, 15 min) after measuring: " in output
    assert "First call (fresh process, median of 5): import lenet_fast " in output
    report = json.loads(path.read_text())
    assert {(row["engine"], row["batch"], row["threads"]) for row in report["rows"]} >= {
        ("lenet_fast", 1, 1),
        ("lenet_fast", 4, 1),
        ("onnxruntime", 1, 1),
        ("onnxruntime", 4, 1),
    }
    assert all(row["images_per_second"] > 0 for row in report["rows"])
    assert benchmark.format_table(report["rows"]) in output


def test_plot_without_matplotlib_fails_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert benchmark.main(["--plot", str(tmp_path / "out.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "bench/report.py: error: --plot needs matplotlib: pip install 'lenet_fast[plot]'\n"
    )
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "option, path, message",
    [
        ("--json", "missing/x.json", "No such file or directory"),
        ("--plot", "x", "expected a file name ending in .png, .pdf, .svg"),
    ],
)
def test_destinations_checked_before_measuring(
    tmp_path, monkeypatch, capsys, option, path, message
):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(benchmark, "measure_fma_peak", lambda: pytest.fail("measured"))
    assert benchmark.main([option, str(tmp_path / path)]) == 1
    assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.rglob("*")) == []


def test_skip_reasons_of_every_thread_count_are_printed_once(tiny_weights, monkeypatch, capsys):
    reasons = {
        1: {"torch": "torch is not installed", "openvino": "openvino is not installed"},
        2: {"torch": "torch is not installed", "onnxruntime": "onnxruntime is broken"},
    }

    def build_lenet_fast_only(weights, threads, engines):
        model = LeNet.from_state_dict(weights)
        return {"lenet_fast": benchmark._lenet_fast_peer(model, threads)}, reasons[threads]

    monkeypatch.setattr(benchmark, "build_peers", build_lenet_fast_only)
    monkeypatch.setattr(benchmark, "SETTLE_SECONDS", 0)
    rows = benchmark.run_report((1,), (1, 2), 1, fma_peak_gflops=1.0, min_measurement_seconds=1e-4)
    assert [(row["engine"], row["threads"]) for row in rows] == [
        ("lenet_fast", 1),
        ("lenet_fast", 2),
    ]
    assert capsys.readouterr().err.splitlines() == [
        "skipping torch: torch is not installed",
        "skipping openvino: openvino is not installed",
        "skipping onnxruntime: onnxruntime is broken",
    ]


def test_plot_imports_pyplot_through_the_public_cli_helper(monkeypatch):
    def no_pyplot():
        raise ImportError("no pyplot here")

    monkeypatch.setattr(cli, "import_pyplot", no_pyplot)
    with pytest.raises(ImportError, match="no pyplot here"):
        benchmark.plot_throughput([], "unused.png", "title")


def test_bench_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: bench/report.py ")
    for option in ("--batches", "--threads", "--repeats", "--json", "--plot"):
        assert option in help_text


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--batches", "0,4"],
            "argument --batches: expected comma-separated positive integers, got '0,4'",
        ),
        (
            ["--threads", "two"],
            "argument --threads: expected comma-separated positive integers, got 'two'",
        ),
        (["--repeats", "0"], "argument --repeats: expected at least 1, got 0"),
    ],
)
def test_bad_arguments_are_usage_errors(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(arguments)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"bench/report.py: error: {message}"


def test_the_installed_package_has_no_benchmark(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError):
        __import__("lenet_fast.benchmark")
