"""conv2 by Winograd's F(2x2, 5x5) against the direct convolution: speed and accuracy.

Speed: for each named member (random weights, `bench.kernels_peak.MEMBERS`) and batch size, two
engines of the same weights -- ``conv2_algorithm`` "direct" and "winograd" -- run
``Engine.forward`` on one thread, alternating in every repeat; the median microseconds per image
and their ratio are printed.

Accuracy: the two shipped trained models (``LeNet.pretrained``: "mnist" and "fashion-mnist") on
the shipped 1,000 Fashion-MNIST images (their stored preprocessing applied), their logits (the
output activation left out, so that no softmax hides an error) against
``lenet_fast.reference.forward`` in float64: the largest absolute difference per algorithm.

Run from the repository root: ``python -m bench.conv2 [--repeats 7] [--level avx2]``.
"""

import argparse
import os
import statistics
import time

import numpy as np

from bench.kernels_peak import MEMBERS, build_engine
from lenet_fast import LeNet, _dispatch, reference
from lenet_fast.datasets import load_sample

ALGORITHMS = ("direct", "winograd")
BATCHES = (1, 64)


def speed(kernels, members, batches, repeats):
    """Print the median us per image of each algorithm, and direct / Winograd."""
    print("| member | batch | direct us/image | Winograd us/image | speed-up |")
    print("|---|--:|--:|--:|--:|")
    rng = np.random.default_rng(1)
    for name in members:
        member = MEMBERS[name]
        engines = {
            algorithm: build_engine(kernels, member, conv2_algorithm=algorithm)
            for algorithm in ALGORITHMS
        }
        for batch in batches:
            images = rng.random((batch, 1, *member["image"]), dtype=np.float32)
            scores = np.empty((batch, engines["direct"].n_classes), np.float32)
            calls = max(1, 4000 // batch)
            samples = {algorithm: [] for algorithm in ALGORITHMS}
            for repeat in range(repeats):
                for algorithm in ALGORITHMS if repeat % 2 == 0 else ALGORITHMS[::-1]:
                    started = time.perf_counter()
                    for _ in range(calls):
                        engines[algorithm].forward(images, scores, 1, True)
                    elapsed = time.perf_counter() - started
                    samples[algorithm].append(elapsed / calls / batch * 1e6)
            direct, winograd = (statistics.median(samples[name]) for name in ALGORITHMS)
            print(
                f"| {name} | {batch} | {direct:.2f} | {winograd:.2f} | {direct / winograd:.2f}x |"
            )


def accuracy(kernels):
    """Print the largest |logit - float64 logit| of each algorithm on the shipped models."""
    pixels, _ = load_sample()
    codes = {
        "relu": kernels.ACT_RELU,
        "sigmoid": kernels.ACT_SIGMOID,
        "tanh": kernels.ACT_TANH,
        "identity": kernels.ACT_IDENTITY,
    }
    print("\n| model | largest logit | direct, max abs error | Winograd, max abs error |")
    print("|---|--:|--:|--:|")
    for name in ("mnist", "fashion-mnist"):
        model = LeNet.pretrained(name)
        step = model.metadata["preprocessing"]
        x = (pixels[:, None] / step["scale"] - step["mean"]) / step["std"]
        x = np.ascontiguousarray(x, np.float32)  # 28x28: the engine pads by step["pad"]
        options, sizes = model.architecture, model.sizes
        weights = {
            key: np.ascontiguousarray(value, np.float32) for key, value in model.weights.items()
        }
        expected = reference.forward(
            x.astype(np.float64),
            weights,
            input_size=x.shape[2:],
            conv1_padding=step["pad"] + options["conv1_padding"],
            conv2_padding=options["conv2_padding"],
            conv_activation=options["conv_activation"],
            fc_activation=options["fc_activation"],
            output_activation="identity",
            pool=options["pool"],
        )
        errors = {}
        for algorithm in ALGORITHMS:
            engine = kernels.Engine(
                weights,
                {
                    "plane": sizes.plane,
                    "conv2_padding": sizes.conv2_padding,
                    "conv2_algorithm": algorithm,
                },
                codes[options["conv_activation"]],
                codes[options["fc_activation"]],
                kernels.ACT_IDENTITY,
                kernels.POOL_MAX if options["pool"] == "max" else kernels.POOL_AVG,
            )
            scores = np.empty((len(x), engine.n_classes), np.float32)
            engine.forward(x, scores, 1, True)
            errors[algorithm] = np.max(np.abs(scores - expected))
        print(
            f"| {name} | {np.max(np.abs(expected)):.1f} | {errors['direct']:.2e} | "
            f"{errors['winograd']:.2e} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--level", default=None, help="ISA level (default: this CPU's best)")
    parser.add_argument("--members", nargs="*", default=list(MEMBERS))
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    args = parser.parse_args(argv)
    kernels = _dispatch.load_kernels(args.level) if args.level else _dispatch.kernels
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"ISA level {kernels.ISA}; one thread; median of {args.repeats}; load average {load}\n")
    speed(kernels, args.members, args.batches, args.repeats)
    accuracy(kernels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
