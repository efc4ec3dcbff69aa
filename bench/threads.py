"""Thread scaling of lenet_fast against ONNX Runtime, on a quiet machine and beside a busy neighbour.

Design: `bench.peers.run_report` does the measuring (both engines in this process, same
weights and images, each repeat visiting every (batch, threads) configuration and the engines in
a rotating order, a settle pause between engines, medians over repeats).  This script picks the
configurations -- threads 1, 2, 4, ... up to the CPUs this process may use, batches 1, 16, 64,
256, 1024, 16384 -- and prints one table per mode:

* ``quiet``: the machine as it is (its load average is printed before and after: on a shared
  machine "quiet" means "no neighbour started by us");
* ``busy``: a neighbour process started here, spinning on the last usable CPU (pinned to it, like
  ``taskset -c N python -c 'while True: pass'``), and stopped when the measurement ends, even on
  an error or Ctrl-C.  lenet_fast's process itself stays unpinned.

Each cell reads ``lenet_fast / ONNX Runtime`` in thousands of images per second, then lenet_fast's
ratio to ONNX Runtime; the last columns give lenet_fast's speed-up of the most threads over one
thread.  Run from the repository root: ``python -m bench.threads [--mode both] [--repeats 7]``.
"""

import argparse
import contextlib
import os
import subprocess
import sys
import time

import lenet_fast
from bench import peers as benchmark
from lenet_fast import _dispatch

BATCHES = (1, 16, 64, 256, 1024, 16384)
BUSY_LOOP = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def thread_counts(cpus):
    """1, 2, 4, ... and `cpus` itself."""
    counts = []
    count = 1
    while count < cpus:
        counts.append(count)
        count *= 2
    return tuple(counts + [cpus])


@contextlib.contextmanager
def busy_neighbour(cpu):
    """A process spinning on `cpu` for the duration of the block."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)])
    try:
        time.sleep(0.5)  # let it start and the scheduler place it
        if process.poll() is not None:
            raise RuntimeError(f"the busy neighbour exited with status {process.returncode}")
        yield process
    finally:
        process.kill()
        process.wait()


def load_average():
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def format_scaling_table(rows, threads):
    """Markdown: a row per batch, a column per thread count, then lenet_fast's scaling."""
    cell = {(row["engine"], row["batch"], row["threads"]): row for row in rows}
    header = ["batch"] + [f"{count} thr" for count in threads]
    header += [f"lenet_fast {threads[-1]}/1 thr"] if len(threads) > 1 else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for batch in sorted({row["batch"] for row in rows}):
        values = [f"{batch:,}"]
        for count in threads:
            ours = cell.get(("lenet_fast", batch, count))
            peer = cell.get(("onnxruntime", batch, count))
            text = f"{ours['images_per_second'] / 1e3:,.0f}k" if ours else "-"
            if peer:
                text += f" / {peer['images_per_second'] / 1e3:,.0f}k"
                if ours:
                    text += f" ({ours['images_per_second'] / peer['images_per_second']:.2f}x)"
            values.append(text)
        if len(threads) > 1:
            one = cell.get(("lenet_fast", batch, 1))
            most = cell.get(("lenet_fast", batch, threads[-1]))
            values.append(
                f"{most['images_per_second'] / one['images_per_second']:.2f}x"
                if one and most
                else "-"
            )
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def cores_available(threads):
    """FMA throughput of `threads` threads at once over that of one thread measured just before:
    below `threads` when the machine is busy (shared VMs, other processes), a limit no
    threading scheme can beat."""
    one = benchmark.measure_concurrent_fma_peak(1)
    return benchmark.measure_concurrent_fma_peak(threads) / one


def measure(mode, batches, threads, repeats, fma_peak):
    before = load_average()
    available = {}
    if mode == "busy":
        cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        with busy_neighbour(cpu):
            available = {count: cores_available(count) for count in threads[1:]}
            rows = benchmark.run_report(
                batches,
                threads,
                repeats,
                engines=("lenet_fast", "onnxruntime"),
                fma_peak_gflops=fma_peak,
            )
        title = f"busy neighbour: a spinning process pinned to CPU {cpu}"
    else:
        rows = benchmark.run_report(
            batches,
            threads,
            repeats,
            engines=("lenet_fast", "onnxruntime"),
            fma_peak_gflops=fma_peak,
        )
        available = {count: cores_available(count) for count in threads[1:]}
        title = "quiet: no neighbour started by the benchmark"
    one_image = [
        row
        for row in rows
        if row["engine"] == "lenet_fast" and row["batch"] == 1 and row["threads"] == 1
    ]
    print(f"### {title}")
    print(
        f"load average (1/5/15 min) before {before}, after {load_average()}; "
        f"median of {repeats} measurements; thousands of images/s, lenet_fast / ONNX Runtime "
        f"(ratio)"
    )
    if available:
        print(
            "FMA throughput of N threads at once / one thread (the cores this process really "
            "gets): "
            + ", ".join(f"{count} threads {value:.2f}x" for count, value in available.items())
        )
    if one_image:
        print(f"lenet_fast batch 1 on one thread: {one_image[0]['us_per_call']:.1f} µs per call")
    print()
    print(format_scaling_table(rows, threads))
    print(flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("quiet", "busy", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--batches",
        type=lambda text: tuple(map(int, text.split(","))),
        default=BATCHES,
        help="comma-separated batch sizes",
    )
    parser.add_argument(
        "--threads",
        type=lambda text: tuple(map(int, text.split(","))),
        default=None,
        help="comma-separated thread counts (default: 1, 2, 4, ... up to the usable CPUs)",
    )
    args = parser.parse_args(argv)
    threads = args.threads or thread_counts(_dispatch.usable_cpus())
    fma_peak = benchmark.measure_fma_peak()
    config = lenet_fast.show_config(False)
    print(
        f"CPU: {benchmark.cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{config['usable_cpus']} usable; lenet_fast {config['version']} ({config['isa']}, "
        f"pool spin {config['spin_microseconds']} µs); FMA peak of one core "
        f"{fma_peak:.0f} GFLOP/s"
    )
    print()
    for mode in ("quiet", "busy") if args.mode == "both" else (args.mode,):
        measure(mode, args.batches, threads, args.repeats, fma_peak)


if __name__ == "__main__":
    main()
