"""Every named member of the LeNet family: lenet_fast against ONNX Runtime, and % of the FMA peak.

Design: for each member (`lenet_fast._architecture.MEMBERS`: ``lenet5``, ``mnist-unpadded``,
``caffe``, ``keras-same``) one set of random weights becomes one ONNX graph
(`lenet_fast.onnx.build_model_proto`); lenet_fast loads that graph (`LeNet.from_onnx`) and ONNX
Runtime runs it, so both compute the same network from the same weights -- checked on a batch
before anything is timed.  (``keras-same`` flattens a 5x5 map into a first dense layer with the
convolutions' activation, so lenet_fast reads that layer as conv3, the same function, as it does
for every such graph.)  Both engines live in this one process and compute the (N, n_classes)
scores of the same float32 images at the member's input size.  Each repeat visits every (batch,
threads) configuration and, inside it, both engines, the order alternating from one repeat to the
next, with a short pause between engines (worker threads keep spinning after a call); one
measurement runs enough calls to last `--min-seconds`; the median over repeats is reported.

"% of FMA peak" relates lenet_fast's useful work (the member's multiply-adds per image from
`lenet_fast._architecture.sizes`, 2 FLOP each) to one core's measured FMA throughput at
lenet_fast's ISA level (the engine's ``measure_fma_peak``, best of 5 x 0.2 s) times the thread
count.  conv2 runs as Winograd's F(2x2, 5x5) (fewer multiply-adds than the network's, see
``LeNet.summary()``), so this share of useful work can pass 100 %; "executed" relates the
multiply-adds the engine actually issues (``summary().executed_multiply_adds``) to the same peak:
how busy the FMA units are.  The load average is printed before and after: the numbers are only
as quiet as the machine was.

Run from the repository root: ``python -m bench.family [--members caffe ...] [--repeats 5]``.
"""

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

import lenet_fast
from bench.peers import calls_lasting, cpu_model, measure_fma_peak, seconds_per_call
from lenet_fast import LeNet, _architecture, _dispatch
from lenet_fast.onnx import INPUT_NAME, OUTPUT_NAME, build_model_proto

BATCHES = (1, 64, 1024, 16384)
THREADS = (1, 2)
SETTLE_SECONDS = 0.05  # between engines: the other engine's worker threads stop spinning
TOLERANCE = 1e-4


def member_weights(member, seed=0):
    """Random weights of a member (uniform, PyTorch's default initialisation bound)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in member.shapes().items():
        fan_in = math.prod(shape[1:]) if key.endswith(".weight") else shape[0]
        bound = 1 / math.sqrt(fan_in)
        weights[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return weights


def onnxruntime_session(proto, threads):
    """An ONNX Runtime session of `proto` on `threads` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def engines_for(name, threads, seed=0):
    """The member's multiply-adds per image (the network's and those lenet_fast executes), its
    input size and, per thread count, the two engines as ``{engine: callable(images) ->
    scores}``, checked to agree first."""
    member = _architecture.MEMBERS[name]
    weights = member_weights(member, seed)
    proto = build_model_proto(weights, {**member.architecture, **member.geometry})
    sizes = _architecture.sizes(
        {key: value.shape for key, value in weights.items()}, **member.geometry
    )
    model = LeNet.from_onnx(proto)
    engines = {}
    check = np.random.default_rng(seed + 1).random(
        (33, sizes.in_channels, *sizes.input_size), dtype=np.float32
    )
    for count in threads:
        session = onnxruntime_session(proto, count)
        pair = {
            "lenet_fast": lambda x, count=count: model.forward(x, num_threads=count),
            "onnxruntime": lambda x, session=session: session.run([OUTPUT_NAME], {INPUT_NAME: x})[
                0
            ],
        }
        difference = np.max(np.abs(pair["lenet_fast"](check) - pair["onnxruntime"](check)))
        if not difference <= TOLERANCE:
            raise RuntimeError(
                f"{name}: lenet_fast and ONNX Runtime differ by {difference} on "
                f"{count} threads: not the same network"
            )
        engines[count] = pair
    executed = model.summary().executed_multiply_adds
    return (sizes.multiply_adds, executed), sizes.in_channels, sizes.input_size, engines


def measure(engines, images_by_batch, repeats, min_seconds):
    """Median seconds per call of every (batch, threads, engine)."""
    calls, samples = {}, {}
    for batch, images in images_by_batch.items():
        for threads, pair in engines.items():
            for engine, run in pair.items():
                calls[batch, threads, engine] = calls_lasting(run, images, min_seconds)
                time.sleep(SETTLE_SECONDS)
    for repeat in range(repeats):
        for batch, images in images_by_batch.items():
            for threads, pair in engines.items():
                order = list(pair) if repeat % 2 == 0 else list(pair)[::-1]
                for engine in order:
                    time.sleep(SETTLE_SECONDS)
                    key = (batch, threads, engine)
                    samples.setdefault(key, []).append(
                        seconds_per_call(pair[engine], images, calls[key])
                    )
    return {key: statistics.median(values) for key, values in samples.items()}


def load_average(when):
    return f"load average (1, 5, 15 min) {when}: " + ", ".join(
        f"{load:.2f}" for load in os.getloadavg()
    )


def report(members, batches, threads, repeats, min_seconds, out=sys.stdout):
    """Measure and print one markdown table per member; return the rows."""
    import onnxruntime

    peak = measure_fma_peak()
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); lenet_fast "
        f"{lenet_fast.__version__} at ISA level {_dispatch.kernels.__name__.rsplit('_', 1)[-1]}; "
        f"ONNX Runtime {onnxruntime.__version__}",
        file=out,
    )
    print(f"FMA peak of one core: {peak:.1f} GFLOP/s (best of 5 x 0.2 s)", file=out)
    print(load_average("before"), file=out)
    rows = []
    for name in members:
        (multiply_adds, executed), channels, (height, width), engines = engines_for(name, threads)
        rng = np.random.default_rng(2)
        images = {
            batch: rng.random((batch, channels, height, width), dtype=np.float32)
            for batch in batches
        }
        medians = measure(engines, images, repeats, min_seconds)
        print(
            f"\n{name}: {channels}x{height}x{width} input, {multiply_adds:,} multiply-adds per "
            f"image, {executed:,} executed (median of {repeats})\n",
            file=out,
        )
        print(
            "| batch | threads | lenet_fast images/s | ONNX Runtime images/s | ratio | "
            "% of FMA peak | executed |",
            file=out,
        )
        print("|---:|---:|---:|---:|---:|---:|---:|", file=out)
        for batch in batches:
            for count in threads:
                ours = batch / medians[batch, count, "lenet_fast"]
                theirs = batch / medians[batch, count, "onnxruntime"]
                percent = 100 * ours * 2 * multiply_adds / (count * peak * 1e9)
                rows.append(
                    {
                        "member": name,
                        "batch": batch,
                        "threads": count,
                        "lenet_fast": ours,
                        "onnxruntime": theirs,
                        "ratio": ours / theirs,
                        "percent_of_fma_peak": percent,
                        "executed_percent_of_fma_peak": percent * executed / multiply_adds,
                    }
                )
                print(
                    f"| {batch} | {count} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x "
                    f"| {percent:.1f}% | {percent * executed / multiply_adds:.1f}% |",
                    file=out,
                )
    print("\n" + load_average("after"), file=out)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--members",
        nargs="+",
        choices=list(_architecture.MEMBERS),
        default=list(_architecture.MEMBERS),
    )
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--min-seconds", type=float, default=0.2, help="length of one measurement (default 0.2 s)"
    )
    arguments = parser.parse_args(argv)
    return report(
        arguments.members,
        arguments.batches,
        arguments.threads,
        arguments.repeats,
        arguments.min_seconds,
    )


if __name__ == "__main__":
    main()
