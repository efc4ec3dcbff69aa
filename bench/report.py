"""One markdown table comparing lenet_fast with its peers, measured fairly on this machine.

Methodology: every engine lives in this one process, built from the same weights (checked equal,
see `peers.build_peers`) and limited to the same thread count.  Each repeat visits every
(batch, threads) configuration and, inside it, every engine in turn (the order rotates from one
repeat to the next), so a burst of machine noise hits all engines alike.  One measurement runs
enough calls to last at least `MIN_MEASUREMENT_SECONDS`; the table shows the median over repeats.
"% of FMA peak" relates the useful work (416,520 multiply-adds = 833,040 FLOP per image) to
the FMA-chain throughput of one core at lenet_fast's ISA level, times the thread count.
"First call" (import, ``LeNet.from_npz`` and one ``predict``) is timed in fresh subprocesses.

Usage: ``python bench/report.py [--batches 1,64,256,1024,16384] [--threads 1,2] [--repeats 7]
[--json out.json] [--plot throughput.png]``.  `run_report` and `format_table` are importable.
"""

import argparse
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
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python bench/report.py``: make the repository importable
    sys.path.insert(0, str(REPOSITORY))

import lenet_fast  # noqa: E402
from bench.peers import (  # noqa: E402
    ENGINES, build_peers, is_benchmarked_at, random_images, random_weights,
)
from lenet_fast import LeNet, _dispatch  # noqa: E402

FLOP_PER_IMAGE = 2 * 416_520
MIN_MEASUREMENT_SECONDS = 0.1
SETTLE_SECONDS = 0.005      # lets the previous engine's spinning worker threads go to sleep
DEFAULT_BATCHES = (1, 64, 256, 1024, 16384)
DEFAULT_THREADS = (1, 2)
DEFAULT_REPEATS = 7
BASELINE = "onnxruntime"
PACKAGES = ("numpy", "onnx", "onnxruntime", "openvino", "torch", "threadpoolctl")

_FIRST_CALL_SCRIPT = """
import sys, time
import numpy as np
started = time.perf_counter()
from lenet_fast import LeNet
imported = time.perf_counter()
LeNet.from_npz(sys.argv[1]).predict(np.zeros((1, 1, 32, 32), np.float32))
print(imported - started, time.perf_counter() - imported)
"""


def cpu_model():
    """The CPU's marketing name from ``/proc/cpuinfo``, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_fma_peak(tries=5, seconds=0.2):
    """Best of `tries` FMA-chain measurements on one core at lenet_fast's ISA level, in GFLOP/s."""
    return max(_dispatch.kernels.measure_fma_peak(seconds) for _ in range(tries))


def measure_concurrent_fma_peak(threads, seconds=0.5):
    """Total GFLOP/s of `threads` FMA chains run at once, one per Python thread.

    The kernel releases the GIL, so this shows whether the CPUs the OS reports really add up
    right now: SMT siblings, a shared host core or another busy process all show up here.
    """
    results = []
    workers = [threading.Thread(
        target=lambda: results.append(_dispatch.kernels.measure_fma_peak(seconds)))
        for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(results)


def _seconds_per_call(run, images, calls):
    start = time.perf_counter()
    for _ in range(calls):
        run(images)
    return (time.perf_counter() - start) / calls


def _calls_per_measurement(run, images):
    """Warm `run` up and return how many calls last at least `MIN_MEASUREMENT_SECONDS`."""
    calls = 1
    while (elapsed := calls * _seconds_per_call(run, images, calls)) < MIN_MEASUREMENT_SECONDS / 10:
        calls *= 4
    return max(1, math.ceil(calls * MIN_MEASUREMENT_SECONDS / elapsed))


def run_report(batches=DEFAULT_BATCHES, threads=DEFAULT_THREADS, repeats=DEFAULT_REPEATS, *,
               engines=ENGINES, fma_peak_gflops=None, seed=0):
    """Measure every available engine at every batch size and thread count.

    Parameters
    ----------
    batches : sequence of int
        Images per call.  PyTorch and NumPy are skipped above ``peers.MAX_BATCH``.
    threads : sequence of int
        Thread counts; every engine gets the same count in a configuration.
    repeats : int
        Measurements per (engine, batch, threads); the median is reported.
    engines : sequence of str, default ``peers.ENGINES``
        Engines to compare; those whose package is missing are left out (with a message on
        stderr).
    fma_peak_gflops : float, optional
        One core's FMA peak; measured with `measure_fma_peak` when not given.
    seed : int, default 0
        Seed of the weights and images.

    Returns
    -------
    list of dict
        One row per (batch, threads, engine), sorted that way, with keys ``engine``,
        ``version``, ``batch``, ``threads``, ``us_per_call``, ``images_per_second``,
        ``vs_onnxruntime`` (throughput ratio, None without ONNX Runtime) and
        ``percent_of_fma_peak``.
    """
    fma_peak_gflops = fma_peak_gflops or measure_fma_peak()
    weights = random_weights(seed)
    images = random_images(max(batches), seed=seed + 1)
    peers = {}
    for count in threads:
        peers[count], skipped = build_peers(weights, count, engines)
    for engine, reason in skipped.items():
        print(f"skipping {engine}: {reason}", file=sys.stderr)

    configurations = [
        (batch, count, peer)
        for batch, count in itertools.product(batches, threads)
        for peer in peers[count].values() if is_benchmarked_at(peer.name, batch)
    ]
    calls = {(batch, count, peer.name): _calls_per_measurement(peer.run, images[:batch])
             for batch, count, peer in configurations}
    samples = {key: [] for key in calls}
    for repeat in range(repeats):
        for batch, count in itertools.product(batches, threads):
            group = [peer for b, c, peer in configurations if (b, c) == (batch, count)]
            shift = repeat % len(group)
            for peer in group[shift:] + group[:shift]:
                key = batch, count, peer.name
                time.sleep(SETTLE_SECONDS)
                samples[key].append(_seconds_per_call(peer.run, images[:batch], calls[key]))

    rows = []
    for (batch, count, name), seconds in samples.items():
        seconds = statistics.median(seconds)
        rows.append({
            "engine": name, "version": peers[count][name].version, "batch": batch,
            "threads": count, "us_per_call": seconds * 1e6, "images_per_second": batch / seconds,
            "percent_of_fma_peak":
                100 * batch / seconds * FLOP_PER_IMAGE / (count * fma_peak_gflops * 1e9),
        })
    baseline = {(row["batch"], row["threads"]): row["images_per_second"]
                for row in rows if row["engine"] == BASELINE}
    for row in rows:
        reference = baseline.get((row["batch"], row["threads"]))
        row["vs_onnxruntime"] = row["images_per_second"] / reference if reference else None
    return rows


def format_table(rows):
    """The rows of `run_report` as one markdown table (a string, no trailing newline)."""
    lines = ["| engine | batch | threads | µs/call | images/s | vs ONNX Runtime | % of FMA peak |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        ratio = row["vs_onnxruntime"]
        lines.append(
            f"| {row['engine']} | {row['batch']} | {row['threads']} | {row['us_per_call']:,.1f} "
            f"| {row['images_per_second']:,.0f} | {'n/a' if ratio is None else f'{ratio:.2f}×'} "
            f"| {row['percent_of_fma_peak']:.1f}% |")
    return "\n".join(lines)


def measure_first_call(weights, runs=5):
    """Median time of ``import lenet_fast`` and of ``LeNet.from_npz`` + one ``predict``.

    Each run is a fresh Python process (cold imports, cold caches of the weight file's pages
    aside), loading a model saved from `weights`.

    Returns
    -------
    dict
        ``import_ms`` and ``load_and_first_predict_ms``, medians over `runs`.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "lenet5.npz")
        LeNet.from_state_dict(weights).save_npz(path)
        timings = [
            [float(value) for value in subprocess.run(
                [sys.executable, "-c", _FIRST_CALL_SCRIPT, path], env=environment, check=True,
                capture_output=True, text=True).stdout.split()]
            for _ in range(runs)
        ]
    import_seconds, load_seconds = zip(*timings)
    return {"import_ms": 1e3 * statistics.median(import_seconds),
            "load_and_first_predict_ms": 1e3 * statistics.median(load_seconds)}


def machine_description(fma_peak_gflops, threads=DEFAULT_THREADS):
    """Header lines: CPU, kernel level, FMA peaks, package versions, current load."""
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    config = lenet_fast.show_config(print_out=False)
    return [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {platform.platform()})",
        f"lenet_fast {config['version']}: ISA level {config['isa']} "
        f"({config['vector_lanes']} lanes, OpenMP {config['openmp']})",
        f"FMA peak of one core at {config['isa']}: {fma_peak_gflops:.1f} GFLOP/s "
        f"(best of 5 × 0.2 s); {max(threads)} threads at once: "
        f"{measure_concurrent_fma_peak(max(threads)):.1f} GFLOP/s in total",
        "Peers: " + ", ".join(f"{package} {version(package)}" for package in PACKAGES)
        + f", Python {platform.python_version()}",
        "Load average (1, 5, 15 min) before measuring: "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg()),
    ]


def plot_throughput(rows, path, title):
    """Draw images/s against batch size (log-log), one line per engine and thread count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed; no plot drawn", file=sys.stderr)
        return
    figure, axes = pyplot.subplots(figsize=(8, 5))
    engines = list(dict.fromkeys(row["engine"] for row in rows))
    for engine, threads in sorted({(row["engine"], row["threads"]) for row in rows}):
        points = sorted((row["batch"], row["images_per_second"]) for row in rows
                        if (row["engine"], row["threads"]) == (engine, threads))
        axes.plot(*zip(*points), marker="o", color=f"C{engines.index(engine)}",
                  linestyle=["-", "--", ":", "-."][(threads - 1) % 4],
                  label=f"{engine}, {threads} thread{'s' if threads > 1 else ''}")
    axes.set(xscale="log", yscale="log", xlabel="batch size (images per call)",
             ylabel="images / s (median)", title=title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}", file=sys.stderr)


def _integers(text):
    return tuple(int(value) for value in text.split(",") if value.strip())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=_integers, default=DEFAULT_BATCHES,
                        help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--threads", type=_integers, default=DEFAULT_THREADS,
                        help="comma-separated thread counts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="measurements per cell; the median is shown (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write header, rows and first call")
    parser.add_argument("--plot", metavar="PATH", help="draw images/s against batch size")
    arguments = parser.parse_args(argv)

    fma_peak = measure_fma_peak()
    header = machine_description(fma_peak, arguments.threads)
    print("\n".join(header) + "\n", flush=True)
    rows = run_report(arguments.batches, arguments.threads, arguments.repeats,
                      fma_peak_gflops=fma_peak)
    print(format_table(rows))
    first_call = measure_first_call(random_weights(0))
    footer = [
        "",
        f"Median of {arguments.repeats} interleaved repeats, each ≥ {MIN_MEASUREMENT_SECONDS} s; "
        "vs ONNX Runtime = images/s ÷ ONNX Runtime's at the same batch and threads "
        "(> 1: faster); % of FMA peak = images/s × 833,040 FLOP / (threads × one-core peak).",
        f"First call (fresh process, median of 5): import lenet_fast "
        f"{first_call['import_ms']:.1f} ms; LeNet.from_npz + first predict "
        f"{first_call['load_and_first_predict_ms']:.1f} ms.",
        "Load average (1, 5, 15 min) after measuring: "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg()),
    ]
    print("\n".join(footer))
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump({"header": header, "fma_peak_gflops": fma_peak, "rows": rows,
                       "first_call": first_call, "footer": footer}, file, indent=2)
    if arguments.plot:
        plot_throughput(rows, arguments.plot, f"LeNet-5 inference on {cpu_model()}")


if __name__ == "__main__":
    main()
