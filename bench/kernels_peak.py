"""The compiled engine's speed on every named member of the LeNet family, as a share of the
measured FMA peak.

For each member (lenet5, mnist-unpadded, caffe, keras-same: the family table of
FAMILY_CONTRACT / issue 12, random weights of the member's shapes), batch size (1, 64, 1024,
16384) and thread count (1, 2), the script times ``Engine.forward`` directly (no Python model
around it), interleaving every configuration in each repeat and taking medians, and prints
images per second and the share of the FMA peak reached:

    % of peak = multiply-adds per image x images per second / (peak FMA rate per thread x threads)

(the network's multiply-adds: conv2 runs as Winograd's F(2x2, 5x5), which issues fewer -- see
``LeNet.summary()`` -- so the share can pass 100 %), where the peak is ``measure_fma_peak`` of
the same ISA level (best of 5; a register-resident
loop of the FMA instruction the kernels use), measured at the start of every repeat; each share
is the median over repeats of (rate in that repeat / peak in that repeat).  A second share
divides by the CPU time the process used instead of the wall clock (against the best peak per
CPU second, ``measure_fma_peak(cpu_time=True)``), which time slices lost to other processes do
not inflate (on a shared, loaded machine the wall-clock share reads low).  The last column is
microseconds per call.  The load average is printed before and after: on a shared machine a
second thread often has no core of its own, so compare ratios from one run, not numbers from
different runs.

Run from the repository root: ``python -m bench.kernels_peak [--repeats 7] [--level avx2]``.
"""

import argparse
import os
import statistics
import time

import numpy as np

from lenet_fast import _dispatch

# name: input channels 1; plane (conv1's input after its padding), image size given, conv2
# padding, conv widths, conv3 width (or None: flatten), dense widths, activations, pool.
MEMBERS = {
    "lenet5": {
        "plane": (32, 32),
        "image": (28, 28),
        "conv2_padding": 0,
        "c1": 6,
        "c2": 16,
        "conv3": 120,
        "dense": (84, 10),
        "activations": ("relu", "sigmoid", "sigmoid"),
        "pool": "max",
    },
    "mnist-unpadded": {
        "plane": (28, 28),
        "image": (28, 28),
        "conv2_padding": 0,
        "c1": 6,
        "c2": 16,
        "conv3": None,
        "dense": (120, 84, 10),
        "activations": ("relu", "relu", "identity"),
        "pool": "max",
    },
    "caffe": {
        "plane": (28, 28),
        "image": (28, 28),
        "conv2_padding": 0,
        "c1": 20,
        "c2": 50,
        "conv3": None,
        "dense": (500, 10),
        "activations": ("identity", "relu", "softmax"),
        "pool": "max",
    },
    "keras-same": {
        "plane": (32, 32),
        "image": (28, 28),
        "conv2_padding": 0,
        "c1": 6,
        "c2": 16,
        "conv3": None,
        "dense": (120, 84, 10),
        "activations": ("tanh", "tanh", "softmax"),
        "pool": "avg",
    },
}
BATCHES = (1, 64, 1024, 16384)
THREADS = (1, 2)


def shapes_and_macs(member):
    """The canonical weight shapes of a member and its multiply-adds per image."""
    rows, columns = member["plane"]
    c1, c2 = member["c1"], member["c2"]
    conv1 = (rows - 4, columns - 4)
    pool1 = (conv1[0] // 2, conv1[1] // 2)
    p2 = member["conv2_padding"]
    conv2 = (pool1[0] + 2 * p2 - 4, pool1[1] + 2 * p2 - 4)
    shapes = {"conv1": (c1, 1, 5, 5), "conv2": (c2, c1, 5, 5)}
    macs = c1 * 25 * conv1[0] * conv1[1] + c2 * c1 * 25 * conv2[0] * conv2[1]
    features = c2 * (conv2[0] // 2) * (conv2[1] // 2)
    if member["conv3"]:
        shapes["conv3"] = (member["conv3"], c2, 5, 5)
        macs += member["conv3"] * features
        features = member["conv3"]
    for index, width in enumerate(member["dense"]):
        shapes[f"fc{index + 1}"] = (width, features)
        macs += width * features
        features = width
    return shapes, macs


def build_engine(kernels, member, seed=0, conv2_algorithm=None):
    """The Engine of a member with uniform random weights (conv2_algorithm: None for the
    engine's choice, "direct" or "winograd")."""
    shapes, _ = shapes_and_macs(member)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in shapes.items():
        bound = 1 / np.sqrt(np.prod(shape[1:]))
        weights[f"{name}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{name}.bias"] = rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32)
    code = {
        "identity": kernels.ACT_IDENTITY,
        "relu": kernels.ACT_RELU,
        "sigmoid": kernels.ACT_SIGMOID,
        "tanh": kernels.ACT_TANH,
        "softmax": kernels.ACT_SOFTMAX,
    }
    conv, fc, output = (code[name] for name in member["activations"])
    pool = kernels.POOL_MAX if member["pool"] == "max" else kernels.POOL_AVG
    return kernels.Engine(
        weights,
        {
            "plane": member["plane"],
            "conv2_padding": member["conv2_padding"],
            "conv2_algorithm": conv2_algorithm,
        },
        conv,
        fc,
        output,
        pool,
    )


def time_calls(engine, images, scores, threads, budget=0.05):
    """(wall seconds, CPU seconds of this process) per call, over as many calls as fit in about
    `budget` s (at least one)."""
    calls = 0
    wall = time.perf_counter()
    cpu = time.process_time()
    while True:
        engine.forward(images, scores, threads, True)
        calls += 1
        elapsed = time.perf_counter() - wall
        if elapsed >= budget:
            return elapsed / calls, (time.process_time() - cpu) / calls


def fma_peak(kernels, seconds=0.1):
    """(GFLOP/s by the wall clock, GFLOP/s per CPU second) of measure_fma_peak's loop."""
    return kernels.measure_fma_peak(seconds), kernels.measure_fma_peak(seconds, cpu_time=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--level", default=None, help="ISA level (default: this CPU's best)")
    parser.add_argument("--members", nargs="*", default=list(MEMBERS))
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument("--threads", nargs="*", type=int, default=list(THREADS))
    args = parser.parse_args(argv)
    kernels = _dispatch.load_kernels(args.level) if args.level else _dispatch.kernels
    print(f"ISA level {kernels.ISA}; load average before: {os.getloadavg()}")
    rng = np.random.default_rng(1)
    configurations = []
    for name in args.members:
        member = MEMBERS[name]
        engine = build_engine(kernels, member)
        _, macs = shapes_and_macs(member)
        for batch in args.batches:
            images = rng.normal(0, 1, (batch, 1) + member["image"]).astype(np.float32)
            scores = np.empty((batch, engine.n_classes), np.float32)
            for threads in args.threads:
                configurations.append((name, macs, batch, threads, engine, images, scores))
    samples = {index: [] for index in range(len(configurations))}
    peaks = []
    for repeat in range(args.repeats):
        peaks.append(fma_peak(kernels))
        order = list(range(len(configurations)))
        if repeat % 2:
            order.reverse()
        for index in order:
            _, _, batch, threads, engine, images, scores = configurations[index]
            budget = 0.05 if batch < 16384 else 0.0  # one call of 16384 is already long
            samples[index].append(time_calls(engine, images, scores, threads, budget))
    print(f"load average after: {os.getloadavg()}")
    peak_cpu = max(cpu for _, cpu in peaks)
    print(
        f"measured FMA peak per thread: {statistics.median(wall for wall, _ in peaks):.1f} "
        f"GFLOP/s by the wall clock (median of {len(peaks)}), {peak_cpu:.1f} per CPU second "
        f"(best of {len(peaks)})"
    )
    print(
        "% of peak: multiply-adds x images/s / (FMA peak x threads).  'wall': by the wall "
        "clock, against the peak measured in the same repeat, median over repeats.  'CPU': "
        "per CPU second the process used (robust to time slices lost to other processes; "
        "with 2 threads it also counts a helper's spinning), against the best CPU-time peak"
    )
    print(
        f"{'member':<15} {'MACs/image':>10} {'batch':>6} {'thr':>3} {'images/s':>10} "
        f"{'% peak wall':>11} {'% peak CPU':>10} {'us/call':>9}"
    )
    for index, (name, macs, batch, threads, *_rest) in enumerate(configurations):
        pairs = list(zip(samples[index], peaks))
        wall = statistics.median(wall for (wall, _), _ in pairs)
        share_wall = statistics.median(
            200.0 * macs * batch / seconds / (peak * 1e9 * threads)
            for (seconds, _), (peak, _) in pairs
        )
        cpu = statistics.median(cpu for (_, cpu), _ in pairs)
        share_cpu = 200.0 * macs * batch / cpu / (peak_cpu * 1e9)
        print(
            f"{name:<15} {macs:>10,} {batch:>6} {threads:>3} {batch / wall:>10,.0f} "
            f"{share_wall:>10.1f}% {share_cpu:>9.1f}% {wall * 1e6:>9.1f}"
        )


if __name__ == "__main__":
    main()
