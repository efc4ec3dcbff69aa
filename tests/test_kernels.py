"""The compiled kernels of every ISA level this machine runs, against the float64 NumPy reference.

The engine has two paths (images in the vector lanes for groups of VLEN images, and one image at
a time for batch 1 and small batch tails) that must give the same bits; batch sizes below are
chosen so that every level (VLEN 16, 8 and 4) runs full groups, padded tail groups and one-image
tails.  ``level`` is parametrised over the usable levels by conftest.py.
"""

import functools
import itertools

import numpy as np
import pytest

from factories import model_at_level, random_weights
from lenet_fast import LeNet, _dispatch, reference

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
OPTIONS = ("conv_activation", "fc_activation", "output_activation", "pool")
DEFAULT = ("relu", "sigmoid", "sigmoid", "max")
WIDTHS = {
    "default": (6, 16, 120, 84, 10),
    "odd": (7, 13, 50, 33, 5),
    "ones": (1, 1, 1, 1, 1),
    "wide": (20, 40, 200, 100, 20),
    # One-image workspace larger than the engine's 64 KiB stack buffer: batch 1 takes the heap path.
    "conv1-64": (64, 16, 32, 24, 10),
}
BATCH_SIZES = (0, 1, 2, 7, 15, 16, 17, 31, 33, 64, 100)


def architecture(options):
    return dict(zip(OPTIONS, options))


def model(level, options=DEFAULT, in_channels=1, widths=WIDTHS["default"], seed=0):
    plain = LeNet(random_weights(seed, in_channels, widths), **architecture(options))
    return model_at_level(plain, level)


@functools.cache
def images(n, in_channels, size, seed=1, scale=1.0):
    x = (
        np.random.default_rng(seed)
        .normal(0, scale, (n, in_channels, size, size))
        .astype(np.float32)
    )
    x.setflags(write=False)
    return x


@functools.cache
def expected(options, n, in_channels, size, widths=WIDTHS["default"], seed=0):
    """Reference outputs, computed once per configuration and shared by every level."""
    result = reference.forward(
        images(n, in_channels, size),
        random_weights(seed, in_channels, widths),
        **architecture(options),
    )
    result.setflags(write=False)
    return result


def engine_forward(model, x, num_threads):
    """The engine with exactly `num_threads` threads: LeNet.forward gives small batches one thread
    (n // 32), which would leave the threaded split of a small batch untested."""
    scores = np.empty((len(x), model.n_classes), np.float32)
    assert (
        model._engine.forward(np.ascontiguousarray(x, np.float32), scores, num_threads, True) == -1
    )
    return scores


# ---------------------------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", reference.POOLS)
@pytest.mark.parametrize("output_activation", reference.OUTPUT_ACTIVATIONS)
@pytest.mark.parametrize("fc_activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("conv_activation", reference.ACTIVATIONS)
def test_every_option_combination_matches_reference(
    level, conv_activation, fc_activation, output_activation, pool
):
    options = (conv_activation, fc_activation, output_activation, pool)
    # 21 images: AVX-512 runs a group of 16 + 5 one-image tails, AVX2 two groups (the second
    # padded), generic five groups + one tail; image 0 alone runs the batch-1 path.
    for in_channels, size in ((1, 32), (3, 28)):
        lenet = model(level, options, in_channels, WIDTHS["odd"])
        want = expected(options, 21, in_channels, size, WIDTHS["odd"])
        np.testing.assert_allclose(lenet.forward(images(21, in_channels, size)), want, **TOLERANCE)
        np.testing.assert_allclose(
            lenet.forward(images(21, in_channels, size)[:1]), want[:1], **TOLERANCE
        )


@pytest.mark.parametrize(
    "options", [DEFAULT, ("tanh", "relu", "softmax", "avg")], ids=["default", "tanh-avg-softmax"]
)
@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("widths", WIDTHS.values(), ids=WIDTHS.keys())
def test_widths_channels_sizes_batch_sizes_and_threads(level, widths, in_channels, size, options):
    lenet = model(level, options, in_channels, widths)
    x = images(100, in_channels, size)
    want = expected(options, 100, in_channels, size, widths)
    for n, threads in itertools.product(BATCH_SIZES, (1, 2)):
        result = lenet.forward(x[:n], num_threads=threads)
        assert result.shape == (n, widths[-1]) and result.dtype == np.float32
        np.testing.assert_allclose(
            result, want[:n], **TOLERANCE, err_msg=f"n={n} threads={threads}"
        )


@pytest.mark.parametrize("output_activation", ["sigmoid", "softmax", "tanh", "identity"])
@pytest.mark.parametrize("conv_activation", ["relu", "sigmoid", "tanh"])
def test_large_magnitudes_saturate_like_reference(level, conv_activation, output_activation):
    # Large values come from biases, not from huge weights: a sum of huge terms that cancels is
    # ill-conditioned in float32 whatever computes it (PyTorch misses 1e-5 there too).
    weights = random_weights(3)
    weights["conv1.bias"] = np.where(np.arange(6) % 2, 12.0, -12.0).astype(np.float32)
    weights["fc2.weight"] *= 3
    weights["fc2.bias"] = (
        np.random.default_rng(3).permutation(np.linspace(-50, 50, 10)).astype(np.float32)
    )
    options = (conv_activation, "tanh", output_activation, "max")
    x = images(37, 1, 32, scale=3.0)
    want, layers = reference.forward(x, weights, **architecture(options), return_intermediates=True)
    conv1 = reference.conv2d_valid(x, weights["conv1.weight"], weights["conv1.bias"])
    logits = reference.dense(layers["fc1"], weights["fc2.weight"], weights["fc2.bias"])
    assert np.median(np.abs(conv1)) > 8, "conv1 sigmoid/tanh should saturate"
    assert 40 < np.abs(logits).max() < 100 and (logits < -20).any() and (logits > 20).any()
    lenet = model_at_level(LeNet(weights, **architecture(options)), level)
    result = lenet.forward(x)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, want, **TOLERANCE)
    np.testing.assert_allclose(lenet.forward(x[5:6]), want[5:6], **TOLERANCE)


# ---------------------------------------------------------------------------------------------
# Determinism: the two paths, batch positions, threads; agreement between levels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "in_channels", "size", "widths"),
    [
        (("relu", "sigmoid", "softmax", "max"), 1, 32, WIDTHS["default"]),
        (("tanh", "tanh", "sigmoid", "avg"), 3, 28, WIDTHS["odd"]),
    ],
    ids=["1x32-default", "3x28-odd"],
)
def test_each_image_gives_the_same_bits_alone_in_any_batch_at_any_thread_count(
    level, options, in_channels, size, widths
):
    lenet = model(level, options, in_channels, widths)
    x = images(70, in_channels, size, seed=5)
    alone = np.concatenate([lenet.forward(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(
        alone, reference.forward(x, lenet.weights, **lenet.architecture), **TOLERANCE
    )
    for n in range(1, 71):
        # Rotations put each image at many positions (in a full group, a padded tail group or a
        # one-image tail) across the batch sizes.
        for shift in sorted({0, 70 - n, (13 * n) % 70}):
            order = (shift + np.arange(n)) % 70
            batch = x[order]
            for threads in (1, 2):
                result = engine_forward(lenet, batch, threads)
                if not np.array_equal(result, alone[order]):
                    bad = np.flatnonzero((result != alone[order]).any(axis=1))
                    pytest.fail(
                        f"n={n} shift={shift} threads={threads}: batch positions {bad} "
                        f"differ from the images computed alone"
                    )
    # The public API with 2 threads (n >= 64 uses them) agrees too.
    np.testing.assert_array_equal(lenet.forward(x, num_threads=2), alone)
    np.testing.assert_array_equal(lenet.predict(x, num_threads=2), np.argmax(alone, axis=1))


@pytest.mark.parametrize("output_activation", ["softmax", "identity"])
def test_levels_agree(output_activation):
    kernel_levels = _dispatch.usable_levels()
    if len(kernel_levels) < 2:
        pytest.skip(f"only one usable kernel level on this machine: {kernel_levels}")
    options = ("relu", "tanh", output_activation, "max")
    x = images(45, 3, 32, seed=6)
    results = {
        level: model(level, options, 3, WIDTHS["wide"]).forward(x) for level in kernel_levels
    }
    first = kernel_levels[0]
    for level in kernel_levels[1:]:
        np.testing.assert_allclose(results[level], results[first], **TOLERANCE, err_msg=level)


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 21, 100])
def test_predict_is_argmax_of_forward_lowest_index_on_ties(level, n):
    weights = random_weights(4)
    # Classes 2, 5 and 8 share one dominating row: always a three-way tie, won by class 2.
    weights["fc2.weight"][[2, 5, 8]] = weights["fc2.weight"][2]
    weights["fc2.bias"][[2, 5, 8]] = 3.0
    tied = model_at_level(LeNet(weights, output_activation="identity"), level)
    x = images(100, 1, 28, seed=7)[:n]
    scores = tied.forward(x)
    np.testing.assert_array_equal(scores[:, 2], scores[:, 5])
    np.testing.assert_array_equal(scores[:, 2], scores[:, 8])
    assert (scores[:, 2] == scores.max(axis=1)).all()
    np.testing.assert_array_equal(tied.predict(x), np.full(n, 2))

    # Saturated sigmoid outputs: many classes reach exactly 1.0 in float32.
    weights = random_weights(4)
    weights["fc2.weight"] *= 200
    saturated = model_at_level(LeNet(weights), level)
    scores = saturated.forward(x)
    assert ((scores == 1.0).sum(axis=1) >= 2).any()
    labels = saturated.predict(x)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=1))

    # No ties: predict agrees with the reference's argmax.
    plain = model(level, ("relu", "sigmoid", "identity", "max"), seed=4)
    want = reference.forward(x, plain.weights, **plain.architecture)
    np.testing.assert_array_equal(plain.predict(x), np.argmax(want, axis=1))
    np.testing.assert_array_equal(plain.predict(x), np.argmax(plain.forward(x), axis=1))


# ---------------------------------------------------------------------------------------------
# Layer sizes and summary()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_channels", "size"), [(1, 32), (3, 28)])
def test_layer_output_sizes_match_reference_intermediates_and_summary(in_channels, size):
    widths = WIDTHS["odd"]
    weights = random_weights(0, in_channels, widths)
    _, layers = reference.forward(images(2, in_channels, size), weights, return_intermediates=True)
    c1, c2, c3, f1, k = widths
    assert {name: value.shape[1:] for name, value in layers.items()} == {
        "conv1": (c1, 28, 28),
        "pool1": (c1, 14, 14),
        "conv2": (c2, 10, 10),
        "pool2": (c2, 5, 5),
        "conv3": (c3, 1, 1),
        "fc1": (f1,),
        "fc2": (k,),
    }
    summary = LeNet(weights).summary()
    for name, value in layers.items():
        assert summary[name].output_shape == value.shape[1:], name
    assert summary.total_parameters == sum(value.size for value in weights.values())


def test_summary_counts_of_the_default_model():
    summary = LeNet(random_weights()).summary()
    assert [layer.name for layer in summary.layers] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "conv3",
        "fc1",
        "fc2",
    ]
    assert (summary["conv1"].parameters, summary["conv1"].connections) == (156, 122_304)
    assert summary["pool1"].connections == 5_880
    assert summary["pool1"].parameters == 0 and summary["pool1"].multiply_adds == 0
    assert summary.total_multiply_adds == 416_520
    assert summary.total_parameters == 61_706
    # Each layer's multiply-adds: one per weight use.
    assert [layer.multiply_adds for layer in summary.layers] == [
        6 * 28 * 28 * 25,
        0,
        16 * 10 * 10 * 6 * 25,
        0,
        120 * 16 * 25,
        120 * 84,
        84 * 10,
    ]
    text = str(summary)
    assert "122,304" in text and "5,880" in text and "416,520" in text


def test_summary_counts_follow_the_widths():
    c1, c2, c3, f1, k = WIDTHS["odd"]
    summary = LeNet(random_weights(0, 3, WIDTHS["odd"])).summary()
    assert summary["conv1"].parameters == (3 * 25 + 1) * c1
    assert summary["conv1"].connections == (3 * 25 + 1) * c1 * 28 * 28
    assert summary["pool2"].connections == 5 * c2 * 5 * 5
    assert summary["conv3"].multiply_adds == c2 * 25 * c3
    assert summary["fc2"].parameters == (f1 + 1) * k
    assert summary.total_multiply_adds == (
        3 * 25 * c1 * 28 * 28 + c1 * 25 * c2 * 10 * 10 + c2 * 25 * c3 + c3 * f1 + f1 * k
    )


@pytest.mark.parametrize("n", [1, 5, 300])
def test_first_nan_output_finds_the_first_image_with_a_nan_score_or_label(level, n):
    kernels = _dispatch.load_kernels(level)
    scores = np.zeros((n, 10), dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    assert kernels.first_nan_output(scores) == kernels.first_nan_output(labels) == -1
    scores[:, 3] = np.inf  # infinite scores are not NaN
    assert kernels.first_nan_output(scores) == -1
    for first, later in [(n - 1, None), (0, n - 1), (n // 2, n - 1)]:
        scores[:] = 0.0
        labels[:] = 0
        for index, column in [(later, 0), (first, 9)]:
            if index is not None:
                scores[index, column] = np.nan
                labels[index] = -1
        assert kernels.first_nan_output(scores) == first
        assert kernels.first_nan_output(labels) == first
    for wrong in (scores[:, ::2], scores.astype(np.float64), labels.astype(np.int32), scores[0]):
        with pytest.raises(ValueError, match="outputs must"):
            kernels.first_nan_output(wrong)
