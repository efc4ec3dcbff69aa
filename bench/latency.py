"""Batch-1 latency: one image through `LeNet.predict` / `LeNet.forward`, end to end, per member.

Design: for each named member (`lenet_fast._architecture.MEMBERS`, random weights of
`bench.family.member_weights`) one model on one thread; the calls timed are what a user writes
(``model.predict(x)`` with ``x`` of shape (1, C, H, W) float32, a new output array each call, the
input and output checks included) and, for comparison, the compiled engine alone (the same call
minus lenet_fast's Python layer).  Each repeat times every (member, call) in turn for
`--calls` calls; the median over repeats is printed in microseconds per call, with the best
repeat beside it.  The issue's target: ``lenet5`` ``predict`` at most 12 us on one thread.

Run from the repository root: ``python -m bench.latency [--members lenet5 caffe] [--repeats 15]``.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import lenet_fast
from bench.family import member_weights
from bench.peers import cpu_model
from lenet_fast import LeNet, _architecture, _dispatch


def calls_for(name, seed=0):
    """``{call: callable()}`` of one member on one thread: predict, forward, engine."""
    member = _architecture.MEMBERS[name]
    weights = member_weights(member, seed)
    model = LeNet.from_state_dict(weights, **member.architecture, **member.geometry, num_threads=1)
    size = model.architecture["input_size"]
    x = np.random.default_rng(seed + 1).random((1, model.in_channels, *size), dtype=np.float32)
    labels = np.empty(1, np.int64)
    engine = model._engine  # the compiled engine alone, for the Python layer's share
    return {
        "predict": lambda: model.predict(x),
        "forward": lambda: model.forward(x),
        "engine": lambda: engine.predict(x, labels, 1, True),
    }


def measure(members, repeats, calls):
    """Median and best microseconds per call of every (member, call)."""
    runs = {name: calls_for(name) for name in members}
    samples = {}
    for _ in range(repeats):
        for name, pair in runs.items():
            for call, run in pair.items():
                run()
                start = time.perf_counter()
                for _ in range(calls):
                    run()
                elapsed = (time.perf_counter() - start) / calls * 1e6
                samples.setdefault((name, call), []).append(elapsed)
    return {key: (statistics.median(values), min(values)) for key, values in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--members", nargs="+", default=list(_architecture.MEMBERS), choices=_architecture.MEMBERS
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"lenet_fast {lenet_fast.__version__}, {_dispatch.kernels.ISA}, {cpu_model()}; "
        f"{args.repeats} repeats x {args.calls} calls; load average before: {load}"
    )
    results = measure(args.members, args.repeats, args.calls)
    print("\n| member | predict (us) | forward (us) | engine alone (us) |")
    print("|---|--:|--:|--:|")
    for name in args.members:
        cells = [
            f"{results[name, call][0]:.1f} (best {results[name, call][1]:.1f})"
            for call in ("predict", "forward", "engine")
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nload average after: {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
