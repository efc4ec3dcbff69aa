"""``python bench/report.py``: lenet_fast against its peers, measured fairly.

This lives in the repository's ``bench/``, not in the installed package (the peers are optional,
heavy packages; scikit-learn keeps its benchmarks out of its wheel the same way).

Design, in three layers:

* **Peers.**  A `Peer` is a name, a version string, a thread count and two callables on a
  float32 (N, 1, 32, 32) batch: ``run`` (the timed call, returning labels, the argmax computed
  inside the engine) and ``scores`` (the (N, n_classes) outputs).  `build_peers` makes
  lenet_fast plus every peer whose package is importable, all from one weight dict: ONNX Runtime
  and OpenVINO run the graph of the library's own builder (`lenet_fast.onnx.build_model_proto`) with an
  ArgMax ``labels`` output added, PyTorch runs an eager ``nn.Sequential``, NumPy runs
  ``lenet_fast.reference``.  Each peer is checked against lenet_fast when it is built, so a
  benchmark can never compare two different networks.  Every engine gets the same thread count
  through its own knob (ORT intra-op threads, OpenVINO ``INFERENCE_NUM_THREADS``,
  ``torch.set_num_threads``, threadpoolctl for NumPy's BLAS).  onnx, onnxruntime, openvino and
  torch are imported inside the functions that need them: importing this module needs none of
  them, and a missing one is skipped with its reason.
* **Measurement** (`run_report`).  Every engine lives in this one process.  Each repeat visits
  every (batch, threads) configuration and, inside it, every engine in turn, the order rotating
  from one repeat to the next, so a burst of machine noise hits all engines alike.  Between two
  engines the process sleeps `SETTLE_SECONDS`: worker threads keep spinning after a call and
  were measured to steal the second core from the next engine.  ONNX Runtime's and PyTorch's
  settle within 50 ms; OpenBLAS's (NumPy's BLAS, 2 threads) spin about 0.1 s -- after it,
  lenet_fast at 2 threads lost half its throughput with a 50 ms pause, nothing with 150 ms.  One
  measurement runs enough calls to last at least `MIN_MEASUREMENT_SECONDS`; the median over
  repeats is reported.  "% of FMA peak" relates the useful work (416,520 multiply-adds = 833,040
  FLOP per image) to the FMA-chain throughput of one core at lenet_fast's ISA level
  (``_dispatch.kernels.measure_fma_peak``), times the thread count.  "First call" (import,
  ``LeNet.from_npz`` and one ``predict``) is timed in fresh subprocesses (`measure_first_call`).
* **Report** (`main`): the machine header (CPU, ISA, FMA peaks, package versions, load average),
  the markdown table (`format_table`), the first-call times and the load average afterwards;
  optionally a JSON file and a log-log plot (matplotlib).
"""

import argparse
import contextlib
import dataclasses
import importlib.metadata
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

import lenet_fast
from lenet_fast import LeNet, __version__, _dispatch, cli, reference, show_config
from lenet_fast.onnx import INPUT_NAME, OUTPUT_NAME
from tests.factories import random_images, random_weights

ENGINES = ("lenet_fast", "onnxruntime", "openvino", "torch", "numpy")
TOLERANCE = 1e-4
# PyTorch eager and the float64 NumPy reference are 10-50x slower than the compiled engines:
# benchmark them on small batches only, so a run stays within minutes.
MAX_BATCH = {"torch": 1024, "numpy": 1024}
# The network's multiply-adds (lenet5), 2 FLOP each: the useful work every engine does.
# lenet_fast computes conv2 by Winograd's F(2x2, 5x5) with fewer (LeNet.summary()), so its
# share of the peak can pass 100 %.
FLOP_PER_IMAGE = 2 * 416_520
MIN_MEASUREMENT_SECONDS = 0.1
SETTLE_SECONDS = 0.15  # lets the previous engine's spinning worker threads go to sleep
DEFAULT_BATCHES = (1, 64, 256, 1024, 16384)
DEFAULT_THREADS = (1, 2)
DEFAULT_REPEATS = 7
BASELINE = "onnxruntime"
PACKAGES = ("numpy", "onnx", "onnxruntime", "openvino", "torch", "threadpoolctl")
LABELS_OUTPUT = "labels"
PROGRAM = "bench/report.py"
# The directory holding the imported lenet_fast, so the first-call subprocesses import this copy
# (a ``python -c`` child puts its working directory first on sys.path, which may hold another).
_PACKAGE_PARENT = str(Path(lenet_fast.__file__).resolve().parents[1])

_FIRST_CALL_SCRIPT = """
import sys, time
import numpy as np
started = time.perf_counter()
from lenet_fast import LeNet
imported = time.perf_counter()
LeNet.from_npz(sys.argv[1]).predict(np.zeros((1, 1, 32, 32), np.float32))
print(imported - started, time.perf_counter() - imported)
"""


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peer:
    """One engine, bound to a model and a thread count.

    Attributes
    ----------
    name : str
        One of `ENGINES`.
    version : str
        The engine's version, with notes (ISA level, BLAS thread control).
    threads : int
        Threads the engine may use.
    run : callable
        float32 (N, C, 32, 32) images -> (N,) integer labels; the timed call.
    scores : callable
        float32 (N, C, 32, 32) images -> (N, n_classes) float32 network outputs.
    """

    name: str
    version: str
    threads: int
    run: Callable[[np.ndarray], np.ndarray]
    scores: Callable[[np.ndarray], np.ndarray]


def is_benchmarked_at(engine, batch):
    """Whether `engine` is fast enough to be benchmarked at batch size `batch`.

    Parameters
    ----------
    engine : str
        One of `ENGINES`.
    batch : int
        Images per call.

    Returns
    -------
    bool
        False for PyTorch and NumPy above their `MAX_BATCH`, True otherwise.
    """
    return batch <= MAX_BATCH.get(engine, batch)


def _onnx_model_with_labels(model):
    """`model`'s graph (`lenet_fast.onnx.build_model_proto`, no file), plus an ArgMax ``labels``
    output.

    ArgMax takes the first index on ties, like lenet_fast, so ONNX Runtime and OpenVINO compute
    labels inside the engine, as lenet_fast's ``predict`` does.
    """
    import onnx
    from onnx import TensorProto, helper

    from lenet_fast.onnx import build_model_proto

    onnx_model = build_model_proto(model.weights, model.architecture)
    onnx_model.graph.node.append(
        helper.make_node(
            "ArgMax", [OUTPUT_NAME], [LABELS_OUTPUT], name="argmax", axis=1, keepdims=0
        )
    )
    onnx_model.graph.output.append(
        helper.make_tensor_value_info(LABELS_OUTPUT, TensorProto.INT64, ["N"])
    )
    onnx.checker.check_model(onnx_model)
    return onnx_model


def _lenet_fast_peer(model, threads):
    return Peer(
        "lenet_fast",
        f"{__version__} ({model.isa})",
        threads,
        lambda x: model.predict(x, num_threads=threads),
        lambda x: model.forward(x, num_threads=threads),
    )


def _onnxruntime_peer(onnx_model, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(
        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return Peer(
        "onnxruntime",
        onnxruntime.__version__,
        threads,
        lambda x: session.run([LABELS_OUTPUT], {INPUT_NAME: x})[0],
        lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0],
    )


def _openvino_peer(onnx_model, threads):
    import openvino

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "lenet5.onnx")
        with open(path, "wb") as file:
            file.write(onnx_model.SerializeToString())
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
        compiled = openvino.Core().compile_model(
            path,
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
    request = compiled.create_infer_request()

    def output(x, name):
        return request.infer({INPUT_NAME: x}, share_inputs=True)[compiled.output(name)]

    return Peer(
        "openvino",
        openvino.__version__.split("-")[0],
        threads,
        lambda x: output(x, LABELS_OUTPUT),
        lambda x: output(x, OUTPUT_NAME).copy(),
    )


def _torch_peer(weights, threads):
    import torch
    from torch import nn

    conv = {layer: weights[f"{layer}.weight"].shape for layer in ("conv1", "conv2", "conv3")}
    fc = {layer: weights[f"{layer}.weight"].shape for layer in ("fc1", "fc2")}
    module = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(conv["conv1"][1], conv["conv1"][0], 5)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(conv["conv2"][1], conv["conv2"][0], 5)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(conv["conv3"][1], conv["conv3"][0], 5)),
                ("relu3", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(fc["fc1"][1], fc["fc1"][0])),
                ("sigmoid1", nn.Sigmoid()),
                ("fc2", nn.Linear(fc["fc2"][1], fc["fc2"][0])),
                ("sigmoid2", nn.Sigmoid()),
            ]
        )
    )
    module.load_state_dict(
        {name: torch.from_numpy(np.array(value, np.float32)) for name, value in weights.items()}
    )
    module.eval()

    def infer(x):
        # The thread count is process-wide in PyTorch: set it only when it changes.
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return Peer(
        "torch",
        torch.__version__,
        threads,
        lambda x: infer(x).argmax(1).numpy(),
        lambda x: infer(x).numpy(),
    )


def _numpy_peer(model, threads):
    try:
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas")

        def limit_blas():
            return blas.limit(limits=threads)

        version = f"{np.__version__} (BLAS threads = {threads}, threadpoolctl)"
    except ImportError:
        limit_blas = contextlib.nullcontext
        version = f"{np.__version__} (BLAS threads uncontrolled: threadpoolctl missing)"

    weights, architecture = model.weights, model.architecture

    def scores(x):
        with limit_blas():
            return reference.forward(x, weights, **architecture)

    return Peer("numpy", version, threads, lambda x: scores(x).argmax(1), scores)


def _check_against(peer, expected_scores, expected_labels, images):
    """Raise AssertionError if `peer` does not compute the network lenet_fast computes."""
    scores = np.asarray(peer.scores(images))
    difference = (
        np.max(np.abs(scores - expected_scores))
        if scores.shape == expected_scores.shape
        else np.inf
    )
    if not difference <= TOLERANCE:
        raise AssertionError(
            f"{peer.name} ({peer.threads} threads) disagrees with lenet_fast: "
            f"scores of shape {scores.shape} (expected "
            f"{expected_scores.shape}), max |score difference| = "
            f"{difference:.3g} > {TOLERANCE}"
        )
    # Labels must match except where two classes are within the tolerance of each other.
    top_two = np.sort(expected_scores, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > TOLERANCE
    labels = np.asarray(peer.run(images))
    if labels.shape != expected_labels.shape or np.any(labels[clear] != expected_labels[clear]):
        raise AssertionError(
            f"{peer.name} ({peer.threads} threads) predicts other labels than lenet_fast"
        )


def build_peers(weights, threads, engines=ENGINES):
    """Build every available engine for `weights`, each checked against lenet_fast.

    Parameters
    ----------
    weights : dict of str to ndarray
        Canonical LeNet-5 weights (see `random_weights`).
    threads : int
        Threads every engine may use.
    engines : iterable of str, default `ENGINES`
        Which engines to build (lenet_fast is always built: it is the yardstick).

    Returns
    -------
    peers : dict of str to Peer
        Engine name to peer, lenet_fast first.
    skipped : dict of str to str
        Engine name to the reason it was skipped (its package is not installed).

    Raises
    ------
    ValueError
        If `engines` names an unknown engine.
    AssertionError
        If an engine's scores differ from lenet_fast's by more than `TOLERANCE`, or its labels
        differ where the decision is clear.

    Examples
    --------
    >>> peers, skipped = build_peers(random_weights(), threads=1)      # doctest: +SKIP
    >>> peers["onnxruntime"].run(random_images(4))                      # doctest: +SKIP
    array([3, 3, 3, 3])
    """
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(
            f"unknown engine(s) {', '.join(sorted(unknown))}: expected some of {', '.join(ENGINES)}"
        )
    model = LeNet(weights)  # the defaults, stated: no ArchitectureWarning
    peers = {"lenet_fast": _lenet_fast_peer(model, threads)}
    skipped = {}
    onnx_model = None
    for engine in engines:
        try:
            if engine in ("onnxruntime", "openvino") and onnx_model is None:
                onnx_model = _onnx_model_with_labels(model)
            if engine == "onnxruntime":
                peers[engine] = _onnxruntime_peer(onnx_model, threads)
            elif engine == "openvino":
                peers[engine] = _openvino_peer(onnx_model, threads)
            elif engine == "torch":
                peers[engine] = _torch_peer(model.weights, threads)
            elif engine == "numpy":
                peers[engine] = _numpy_peer(model, threads)
        except ImportError as error:
            skipped[engine] = f"{error.name or error} is not installed"

    images = random_images(64, seed=12345)
    expected_scores = peers["lenet_fast"].scores(images)
    expected_labels = peers["lenet_fast"].run(images)
    for peer in peers.values():
        _check_against(peer, expected_scores, expected_labels, images)
        _check_against(peer, expected_scores[:1], expected_labels[:1], images[:1])
    return peers, skipped


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def cpu_model():
    """The CPU's marketing name from ``/proc/cpuinfo``, else what `platform` knows.

    Returns
    -------
    str
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def measure_fma_peak(tries=5, seconds=0.2):
    """One core's FMA throughput at lenet_fast's ISA level, best of `tries` measurements.

    Parameters
    ----------
    tries : int, default 5
        Measurements; the best is returned (anything else running only slows one down).
    seconds : float, default 0.2
        Length of each measurement.

    Returns
    -------
    float
        GFLOP/s (2 FLOP per lane per fused multiply-add).
    """
    return max(_dispatch.kernels.measure_fma_peak(seconds) for _ in range(tries))


def measure_concurrent_fma_peak(threads, seconds=0.5):
    """Total FMA throughput of `threads` FMA chains run at once, one per Python thread.

    The kernel releases the GIL, so this shows whether the CPUs the OS reports really add up
    right now: SMT siblings, a shared host core or another busy process all show up here.

    Parameters
    ----------
    threads : int
        Chains run at once.
    seconds : float, default 0.5
        Length of the measurement.

    Returns
    -------
    float
        GFLOP/s summed over the threads.
    """
    results = []
    workers = [
        threading.Thread(target=lambda: results.append(_dispatch.kernels.measure_fma_peak(seconds)))
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(results)


def seconds_per_call(run, images, calls):
    """Mean wall seconds of `calls` calls of ``run(images)``."""
    start = time.perf_counter()
    for _ in range(calls):
        run(images)
    return (time.perf_counter() - start) / calls


def calls_lasting(run, images, min_seconds):
    """Warm `run` up and return how many calls last at least `min_seconds`."""
    calls = 1
    while (elapsed := calls * seconds_per_call(run, images, calls)) < min_seconds / 10:
        calls *= 4
    return max(1, math.ceil(calls * min_seconds / elapsed))


def run_report(
    batches=DEFAULT_BATCHES,
    threads=DEFAULT_THREADS,
    repeats=DEFAULT_REPEATS,
    *,
    engines=ENGINES,
    fma_peak_gflops=None,
    seed=0,
    min_measurement_seconds=MIN_MEASUREMENT_SECONDS,
):
    """Measure every available engine at every batch size and thread count.

    Parameters
    ----------
    batches : sequence of int
        Images per call.  PyTorch and NumPy are skipped above `MAX_BATCH`.
    threads : sequence of int
        Thread counts; every engine gets the same count in a configuration.
    repeats : int
        Measurements per (engine, batch, threads); the median is reported.
    engines : sequence of str, default `ENGINES`
        Engines to compare; those whose package is missing are left out (with a message on
        stderr).
    fma_peak_gflops : float, optional
        One core's FMA peak; measured with `measure_fma_peak` when not given.
    seed : int, default 0
        Seed of the weights and images.
    min_measurement_seconds : float, default `MIN_MEASUREMENT_SECONDS`
        Each measurement repeats the call until it lasts at least this long.

    Returns
    -------
    list of dict
        One row per (batch, threads, engine), sorted that way, with keys ``engine``,
        ``version``, ``batch``, ``threads``, ``us_per_call``, ``images_per_second``,
        ``vs_onnxruntime`` (throughput ratio, None without ONNX Runtime) and
        ``percent_of_fma_peak``.

    Raises
    ------
    AssertionError
        If a peer does not compute lenet_fast's network (see `build_peers`).
    """
    fma_peak_gflops = fma_peak_gflops or measure_fma_peak()
    weights = random_weights(seed)
    images = random_images(max(batches), seed=seed + 1)
    peers = {}
    skipped = {}  # (engine, reason) -> None: each reason once, of any thread count
    for count in threads:
        peers[count], skipped_at_count = build_peers(weights, count, engines)
        skipped.update(dict.fromkeys(skipped_at_count.items()))
    for engine, reason in skipped:
        print(f"skipping {engine}: {reason}", file=sys.stderr)

    configurations = [
        (batch, count, peer)
        for batch, count in itertools.product(batches, threads)
        for peer in peers[count].values()
        if is_benchmarked_at(peer.name, batch)
    ]
    calls = {
        (batch, count, peer.name): calls_lasting(peer.run, images[:batch], min_measurement_seconds)
        for batch, count, peer in configurations
    }
    samples = {key: [] for key in calls}
    for repeat in range(repeats):
        for batch, count in itertools.product(batches, threads):
            group = [peer for b, c, peer in configurations if (b, c) == (batch, count)]
            shift = repeat % len(group)
            for peer in group[shift:] + group[:shift]:
                key = batch, count, peer.name
                time.sleep(SETTLE_SECONDS)
                samples[key].append(seconds_per_call(peer.run, images[:batch], calls[key]))

    rows = []
    for (batch, count, name), seconds in samples.items():
        seconds = statistics.median(seconds)
        rows.append(
            {
                "engine": name,
                "version": peers[count][name].version,
                "batch": batch,
                "threads": count,
                "us_per_call": seconds * 1e6,
                "images_per_second": batch / seconds,
                "percent_of_fma_peak": 100
                * batch
                / seconds
                * FLOP_PER_IMAGE
                / (count * fma_peak_gflops * 1e9),
            }
        )
    baseline = {
        (row["batch"], row["threads"]): row["images_per_second"]
        for row in rows
        if row["engine"] == BASELINE
    }
    for row in rows:
        reference_throughput = baseline.get((row["batch"], row["threads"]))
        row["vs_onnxruntime"] = (
            row["images_per_second"] / reference_throughput if reference_throughput else None
        )
    return rows


def measure_first_call(weights=None, runs=5):
    """Median time of ``import lenet_fast`` and of ``LeNet.from_npz`` + one ``predict``.

    Each run is a fresh Python process (cold imports; the weight file's pages aside, cold
    caches) importing this copy of lenet_fast and loading a model saved from `weights`.

    Parameters
    ----------
    weights : dict of str to ndarray, optional
        Canonical weights; default ``random_weights(0)``.
    runs : int, default 5
        Fresh processes; the medians are returned.

    Returns
    -------
    dict
        ``import_ms`` and ``load_and_first_predict_ms``, medians over `runs`.

    Raises
    ------
    subprocess.CalledProcessError
        If a subprocess fails.
    """
    weights = random_weights(0) if weights is None else weights
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [_PACKAGE_PARENT, environment.get("PYTHONPATH")])
    )
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "lenet5.npz")
        LeNet(weights).save_npz(path)
        timings = [
            [
                float(value)
                for value in subprocess.run(
                    [sys.executable, "-c", _FIRST_CALL_SCRIPT, path],
                    env=environment,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()
            ]
            for _ in range(runs)
        ]
    import_seconds, load_seconds = zip(*timings)
    return {
        "import_ms": 1e3 * statistics.median(import_seconds),
        "load_and_first_predict_ms": 1e3 * statistics.median(load_seconds),
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def format_table(rows):
    """The rows of `run_report` as one markdown table.

    Parameters
    ----------
    rows : list of dict
        As `run_report` returns them (``vs_onnxruntime`` may be None: shown as n/a).

    Returns
    -------
    str
        The table, one line per row after the header, no trailing newline.

    Examples
    --------
    >>> print(format_table([{"engine": "lenet_fast", "batch": 64, "threads": 1,
    ...                      "us_per_call": 1234.5, "images_per_second": 51843.0,
    ...                      "vs_onnxruntime": 1.5, "percent_of_fma_peak": 43.21}]))
    | engine | batch | threads | µs/call | images/s | vs ONNX Runtime | % of FMA peak |
    |---|--:|--:|--:|--:|--:|--:|
    | lenet_fast | 64 | 1 | 1,234.5 | 51,843 | 1.50× | 43.2% |
    """
    lines = [
        "| engine | batch | threads | µs/call | images/s | vs ONNX Runtime | % of FMA peak |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        ratio = row["vs_onnxruntime"]
        lines.append(
            f"| {row['engine']} | {row['batch']} | {row['threads']} | {row['us_per_call']:,.1f} "
            f"| {row['images_per_second']:,.0f} | {'n/a' if ratio is None else f'{ratio:.2f}×'} "
            f"| {row['percent_of_fma_peak']:.1f}% |"
        )
    return "\n".join(lines)


def _load_average(when):
    return f"Load average (1, 5, 15 min) {when} measuring: " + ", ".join(
        f"{load:.2f}" for load in os.getloadavg()
    )


def machine_description(fma_peak_gflops, threads=DEFAULT_THREADS):
    """Header lines: CPU, kernel level, FMA peaks, package versions, current load.

    Parameters
    ----------
    fma_peak_gflops : float
        One core's FMA peak (see `measure_fma_peak`).
    threads : sequence of int, default `DEFAULT_THREADS`
        The largest count is used to measure the concurrent FMA throughput.

    Returns
    -------
    list of str
    """

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    config = show_config(print_out=False)
    return [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {platform.platform()})",
        f"lenet_fast {config['version']}: ISA level {config['isa']} "
        f"({config['vector_lanes']} lanes; threads: lenet_fast pool, spin "
        f"{config['spin_microseconds']} µs)",
        f"FMA peak of one core at {config['isa']}: {fma_peak_gflops:.1f} GFLOP/s "
        f"(best of 5 × 0.2 s); {max(threads)} threads at once: "
        f"{measure_concurrent_fma_peak(max(threads)):.1f} GFLOP/s in total",
        "Peers: "
        + ", ".join(f"{package} {version(package)}" for package in PACKAGES)
        + f", Python {platform.python_version()}",
        _load_average("before"),
    ]


def plot_throughput(rows, path, title, file_format="png"):
    """Draw images/s against batch size (log-log), one line per engine and thread count.

    Parameters
    ----------
    rows : list of dict
        As `run_report` returns them.
    path : str or path-like
        The image file to write (PNG by its suffix).
    title : str

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    pyplot = cli.import_pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 5))
    engines = list(dict.fromkeys(row["engine"] for row in rows))
    for engine, threads in sorted({(row["engine"], row["threads"]) for row in rows}):
        points = sorted(
            (row["batch"], row["images_per_second"])
            for row in rows
            if (row["engine"], row["threads"]) == (engine, threads)
        )
        axes.plot(
            *zip(*points),
            marker="o",
            color=f"C{engines.index(engine)}",
            linestyle=["-", "--", ":", "-."][(threads - 1) % 4],
            label=f"{engine}, {threads} thread{'s' if threads > 1 else ''}",
        )
    axes.set(
        xscale="log",
        yscale="log",
        xlabel="batch size (images per call)",
        ylabel="images / s (median)",
        title=title,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120, format=file_format)
    pyplot.close(figure)


def _positive_integers(text):
    try:
        values = tuple(int(value) for value in text.split(",") if value.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return values


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="lenet_fast against ONNX Runtime, OpenVINO, PyTorch and NumPy: one "
        "markdown table, measured in one process with the same weights and threads.",
    )
    parser.add_argument(
        "--batches",
        type=_positive_integers,
        default=DEFAULT_BATCHES,
        help="comma-separated batch sizes (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_integers,
        default=DEFAULT_THREADS,
        help="comma-separated thread counts (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help="measurements per cell; the median is shown (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write header, rows and first call")
    parser.add_argument(
        "--plot", metavar="FILE", help="draw images/s against batch size (needs matplotlib)"
    )
    return parser


def main(argv=None):
    """Measure, then print the header, the markdown table and the first-call times.

    Parameters
    ----------
    argv : list of str, optional
        ``[--batches 1,64,256,1024,16384] [--threads 1,2] [--repeats 7] [--json FILE]
        [--plot FILE]``; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0; 1 (after one line on stderr, before measuring anything) if ``--plot`` is given and
        matplotlib is not installed, or a ``--json`` or ``--plot`` destination cannot be
        written (its folder is missing, or the plot's suffix is not .png, .pdf or .svg).
        Both files are written atomically: to a temporary file in their folder, renamed into
        place at the end, removed on an error or Ctrl-C.

    Raises
    ------
    SystemExit
        On a usage error (status 2), as `argparse` does.

    Examples
    --------
    >>> main(["--batches", "1,64", "--threads", "1", "--repeats", "3"])   # doctest: +SKIP
    """
    arguments = _parser().parse_args(argv)
    if arguments.repeats < 1:
        _parser().error(f"argument --repeats: expected at least 1, got {arguments.repeats}")
    try:
        if arguments.plot:
            cli.import_pyplot()  # fail now, not after minutes of measuring
            if os.path.splitext(arguments.plot)[1].lower() not in cli.PLOT_SUFFIXES:
                raise cli.CommandError(
                    f"--plot {arguments.plot}: expected a file name ending in "
                    f"{', '.join(cli.PLOT_SUFFIXES)}"
                )
        # Destinations are checked (and written atomically) before minutes of measuring.
        destinations = {
            option: cli._Destination(path, f"--{option}")
            for option, path in (("json", arguments.json), ("plot", arguments.plot))
            if path
        }
    except (cli.CommandError, OSError, ImportError) as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 1
    try:
        _measure_and_report(arguments, destinations)
    finally:
        for destination in destinations.values():
            destination.discard()  # a no-op after commit
    return 0


def _measure_and_report(arguments, destinations):
    fma_peak = measure_fma_peak()
    header = machine_description(fma_peak, arguments.threads)
    print("\n".join(header) + "\n", flush=True)
    rows = run_report(
        arguments.batches, arguments.threads, arguments.repeats, fma_peak_gflops=fma_peak
    )
    print(format_table(rows))
    first_call = measure_first_call()
    footer = [
        "",
        f"Median of {arguments.repeats} interleaved repeats, each ≥ {MIN_MEASUREMENT_SECONDS} s, "
        f"{SETTLE_SECONDS * 1e3:.0f} ms pause between engines; "
        "vs ONNX Runtime = images/s ÷ ONNX Runtime's at the same batch and threads "
        "(> 1: faster); % of FMA peak = images/s × 833,040 FLOP / (threads × one-core peak).",
        f"First call (fresh process, median of 5): import lenet_fast "
        f"{first_call['import_ms']:.1f} ms; LeNet.from_npz + first predict "
        f"{first_call['load_and_first_predict_ms']:.1f} ms.",
        _load_average("after"),
    ]
    print("\n".join(footer), flush=True)
    if "json" in destinations:
        with open(destinations["json"].temporary, "w") as file:
            json.dump(
                {
                    "header": header,
                    "fma_peak_gflops": fma_peak,
                    "rows": rows,
                    "first_call": first_call,
                    "footer": footer,
                },
                file,
                indent=2,
            )
        destinations["json"].commit()
    if "plot" in destinations:
        plot_throughput(
            rows,
            destinations["plot"].temporary,
            f"LeNet-5 inference on {cpu_model()}",
            file_format=os.path.splitext(arguments.plot)[1].lower().lstrip("."),
        )
        destinations["plot"].commit()
        print(f"plot written to {arguments.plot}")
