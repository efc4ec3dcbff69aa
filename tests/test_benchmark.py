"""`lenet_fast.benchmark` in seconds: every installed peer computes lenet_fast's network, a peer
that does not is rejected, a missing one is skipped with its reason, the table is the expected
markdown, and a tiny ``main`` run prints it; importing the module pulls in no peer package."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_random_weights
from lenet_fast import LeNet, benchmark, cli

TINY_WIDTHS = (2, 3, 8, 5, 4)      # conv1, conv2, conv3, fc1 channels; classes
PEER_PACKAGES = ("onnx", "onnxruntime", "openvino", "torch", "matplotlib")


@pytest.fixture(scope="module")
def tiny_weights():
    return make_random_weights(seed=7, widths=TINY_WIDTHS)


@pytest.fixture(scope="module")
def tiny_peers(tiny_weights):
    return benchmark.build_peers(tiny_weights, threads=2)


def test_import_needs_no_peer_package():
    code = ("import sys, lenet_fast.benchmark; "
            f"print(sorted(name for name in {PEER_PACKAGES!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("engine", [engine for engine in benchmark.ENGINES
                                    if engine != "lenet_fast"])
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
    monkeypatch.setattr(benchmark, "_numpy_peer",
                        lambda model, threads: build_numpy_peer(LeNet(other), threads))
    with pytest.raises(AssertionError, match=r"numpy \(1 threads\) disagrees with lenet_fast"):
        benchmark.build_peers(tiny_weights, threads=1, engines=("numpy",))


def test_missing_peer_is_skipped_with_its_reason(tiny_weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)     # makes ``import torch`` fail
    peers, skipped = benchmark.build_peers(tiny_weights, threads=1, engines=("torch", "numpy"))
    assert list(peers) == ["lenet_fast", "numpy"]
    assert skipped == {"torch": "torch is not installed"}


def test_unknown_engine_is_rejected(tiny_weights):
    with pytest.raises(ValueError, match="unknown engine.s. tensorflow: expected some of "
                                         "lenet_fast, onnxruntime"):
        benchmark.build_peers(tiny_weights, threads=1, engines=("tensorflow",))


def test_format_table():
    rows = [
        {"engine": "lenet_fast", "batch": 1024, "threads": 2, "us_per_call": 12345.678,
         "images_per_second": 82945.3, "vs_onnxruntime": 2.345, "percent_of_fma_peak": 55.55},
        {"engine": "onnxruntime", "batch": 1024, "threads": 2, "us_per_call": 28950.0,
         "images_per_second": 35371.3, "vs_onnxruntime": 1.0, "percent_of_fma_peak": 23.7},
        {"engine": "numpy", "batch": 1, "threads": 1, "us_per_call": 5.0,
         "images_per_second": 200000.0, "vs_onnxruntime": None, "percent_of_fma_peak": 0.04},
    ]
    assert benchmark.format_table(rows) == "\n".join([
        "| engine | batch | threads | µs/call | images/s | vs ONNX Runtime | % of FMA peak |",
        "|---|--:|--:|--:|--:|--:|--:|",
        "| lenet_fast | 1024 | 2 | 12,345.7 | 82,945 | 2.35× | 55.5% |",
        "| onnxruntime | 1024 | 2 | 28,950.0 | 35,371 | 1.00× | 23.7% |",
        "| numpy | 1 | 1 | 5.0 | 200,000 | n/a | 0.0% |",
    ])


def test_main_prints_the_table(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "report.json"
    assert benchmark.main(["--batches", "1,4", "--threads", "1", "--repeats", "1",
                           "--json", str(path)]) == 0
    output = capsys.readouterr().out
    for engine in ("lenet_fast", "onnxruntime"):
        for batch in (1, 4):
            assert f"| {engine} | {batch} | 1 | " in output
    assert "| onnxruntime | 1 | 1 | " in output and " | 1.00× | " in output
    assert "Load average (1, 5, 15 min) before measuring: " in output
    assert "Load average (1, 5, 15 min) after measuring: " in output
    assert "First call (fresh process, median of 5): import lenet_fast " in output
    report = json.loads(path.read_text())
    assert {(row["engine"], row["batch"], row["threads"]) for row in report["rows"]} >= {
        ("lenet_fast", 1, 1), ("lenet_fast", 4, 1), ("onnxruntime", 1, 1), ("onnxruntime", 4, 1)}
    assert all(row["images_per_second"] > 0 for row in report["rows"])
    assert benchmark.format_table(report["rows"]) in output


def test_plot_without_matplotlib_fails_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["bench", "--plot", str(tmp_path / "out.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("lenet-fast: error: --plot needs matplotlib: "
                            "pip install 'lenet_fast[plot]'\n")
    assert not (tmp_path / "out.png").exists()


def test_skip_reasons_of_every_thread_count_are_printed_once(tiny_weights, monkeypatch,
                                                            capsys):
    reasons = {1: {"torch": "torch is not installed", "openvino": "openvino is not installed"},
               2: {"torch": "torch is not installed", "onnxruntime": "onnxruntime is broken"}}

    def build_lenet_fast_only(weights, threads, engines):
        model = LeNet.from_state_dict(weights)
        return {"lenet_fast": benchmark._lenet_fast_peer(model, threads)}, reasons[threads]

    monkeypatch.setattr(benchmark, "build_peers", build_lenet_fast_only)
    monkeypatch.setattr(benchmark, "SETTLE_SECONDS", 0)
    rows = benchmark.run_report((1,), (1, 2), 1, fma_peak_gflops=1.0,
                                min_measurement_seconds=1e-4)
    assert [(row["engine"], row["threads"]) for row in rows] == [("lenet_fast", 1),
                                                                 ("lenet_fast", 2)]
    assert capsys.readouterr().err.splitlines() == [
        "skipping torch: torch is not installed", "skipping openvino: openvino is not installed",
        "skipping onnxruntime: onnxruntime is broken"]


def test_plot_imports_pyplot_through_the_public_cli_helper(monkeypatch):
    def no_pyplot():
        raise ImportError("no pyplot here")

    monkeypatch.setattr(cli, "import_pyplot", no_pyplot)
    with pytest.raises(ImportError, match="no pyplot here"):
        benchmark.plot_throughput([], "unused.png", "title")


def test_bench_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: lenet-fast bench ")
    for option in ("--batches", "--threads", "--repeats", "--json", "--plot"):
        assert option in help_text


@pytest.mark.parametrize("entry_point", [benchmark.main,
                                         lambda arguments: cli.main(["bench", *arguments])],
                         ids=["benchmark.main", "lenet-fast bench"])
@pytest.mark.parametrize("arguments, message", [
    (["--batches", "0,4"], "argument --batches: expected comma-separated positive integers, "
                           "got '0,4'"),
    (["--threads", "two"], "argument --threads: expected comma-separated positive integers, "
                           "got 'two'"),
    (["--repeats", "0"], "argument --repeats: expected at least 1, got 0"),
])
def test_bad_arguments_are_usage_errors(entry_point, arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry_point(arguments)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"lenet-fast bench: error: {message}"
