"""Throughput from one thread to threads to a Dask cluster, for README.md's "Scaling out" section.

Design: the same model (`tests.factories.random_weights`) and the same number of float32
32x32 images in three settings -- `LeNet.predict` with 1 thread, with 2 threads, and
`lenet_fast.dask.predict` on a ``dask.distributed.LocalCluster`` of 2 single-thread worker
processes.  The cluster's images are generated and persisted on the workers before timing, so
all three settings time inference on images already in memory (plus, for Dask, scheduling and
collecting the labels).  Each setting is timed `--repeats` times after one warm-up; the median
is reported with the machine's CPU and its load average, since shared machines vary.

Run from the repository root: ``python -m bench.scaling [--images 100000] [--repeats 5]``.
"""

import argparse
import os
import statistics
import time

import numpy as np

import lenet_fast
from bench.peers import cpu_model
from lenet_fast import LeNet
from tests.factories import random_weights


def median_seconds(run, repeats):
    run()  # warm-up: thread pools, workspaces, worker imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=12_500, help="images per Dask block")
    args = parser.parse_args()

    import dask.array as da
    import distributed

    from lenet_fast import dask as lenet_dask

    model = LeNet(random_weights())
    n = args.images
    images = np.random.default_rng(1).standard_normal((n, 1, 32, 32), dtype=np.float32)
    results = []
    load_before = os.getloadavg()
    for threads in (1, 2):
        seconds, times = median_seconds(
            lambda threads=threads: model.predict(images, num_threads=threads), args.repeats
        )
        results.append((f"one process, {threads} thread{'s' * (threads > 1)}", seconds, times))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        distributed_images = (
            da.random.default_rng(1)
            .standard_normal((n, 1, 32, 32), chunks=args.chunk, dtype=np.float32)
            .persist()
        )
        distributed.wait(distributed_images)
        labels = lenet_dask.predict(model, distributed_images)
        seconds, times = median_seconds(lambda: client.compute(labels, sync=True), args.repeats)
        results.append(("Dask LocalCluster, 2 worker processes x 1 thread", seconds, times))
    load_after = os.getloadavg()

    print(
        f"lenet_fast {lenet_fast.__version__}, kernels {model.isa}; {cpu_model()}; "
        f"{os.cpu_count()} logical CPUs"
    )
    print(
        f"{n} float32 32x32 images, median of {args.repeats} runs; load average "
        f"(1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}"
    )
    print()
    print("| setting | median time (s) | images/s | all runs (s) |")
    print("|---|---:|---:|---|")
    for name, seconds, times in results:
        runs = ", ".join(f"{t:.3f}" for t in times)
        print(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {runs} |")


if __name__ == "__main__":
    main()
