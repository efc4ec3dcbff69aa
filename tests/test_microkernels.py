"""The compiled engine for the whole LeNet family, at every usable ISA level (``level`` is
parametrised by conftest.py), against ``lenet_fast.reference.forward`` (float64 NumPy).

* every register-block size of every micro-kernel family (the table in src/block_sizes.py, as
  the level reports it in ``BLOCK_SIZES``), deterministically: a layer of b channels or outputs,
  b up to the level's largest block and one past it (two blocks), runs in one block of b;
* every named member of the family (lenet5, mnist-unpadded, caffe, keras-same) and further
  geometries (conv2 padding 2, non-square planes, images 4 smaller than the plane);
* bitwise-identical outputs across batch size, position in the batch and thread count for
  every member (the lane-group path and the one-image path agree to the bit), with conv2 by
  Winograd's F(2x2, 5x5) and by the direct convolution;
* the engine's checks of what it is given.
"""

import functools

import numpy as np
import pytest

from factories import random_weights
from lenet_fast import _dispatch, reference
from lenet_fast._architecture import MEMBERS, canonical_shapes

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
CODES = {
    "identity": "ACT_IDENTITY",
    "relu": "ACT_RELU",
    "sigmoid": "ACT_SIGMOID",
    "tanh": "ACT_TANH",
    "softmax": "ACT_SOFTMAX",
    "log_softmax": "ACT_LOG_SOFTMAX",
}


def engine(
    kernels,
    weights,
    plane,
    conv2_padding,
    conv_activation="relu",
    fc_activation="sigmoid",
    output_activation="sigmoid",
    pool="max",
    conv2_one_image=None,
    conv2_algorithm=None,
):
    code = {name: getattr(kernels, attribute) for name, attribute in CODES.items()}
    return kernels.Engine(
        weights,
        {
            "plane": plane,
            "conv2_padding": conv2_padding,
            "conv2_one_image": conv2_one_image,
            "conv2_algorithm": conv2_algorithm,
        },
        code[conv_activation],
        code[fc_activation],
        code[output_activation],
        kernels.POOL_MAX if pool == "max" else kernels.POOL_AVG,
    )


def spec_engine(kernels, spec, weights, **conv2):
    """The engine of an engine spec (`conv2`: conv2_algorithm / conv2_one_image)."""
    return engine(kernels, weights, spec["plane"], spec["conv2_padding"], **options(spec), **conv2)


def run(engine_, images, num_threads=1):
    scores = np.empty((len(images), engine_.n_classes), np.float32)
    assert engine_.forward(images, scores, num_threads, True) == -1
    return scores


@functools.cache
def images(n, in_channels, rows, columns, seed=1):
    x = np.random.default_rng(seed).normal(0, 1, (n, in_channels, rows, columns))
    x = x.astype(np.float32)
    x.setflags(write=False)
    return x


def options(member):
    return {
        key: member[key]
        for key in ("conv_activation", "fc_activation", "output_activation", "pool")
    }


def engine_spec(member):
    """A named member as the engine sees it: conv1's plane after its padding, conv2's padding,
    widths (conv3 None for a flatten) and options."""
    side = member.input_size + 2 * member.conv1_padding
    return dict(
        plane=(side, side),
        conv2_padding=member.conv2_padding,
        c1=member.conv1_channels,
        c2=member.conv2_channels,
        conv3=member.conv3_channels or None,
        dense=member.dense_units,
        **member.architecture,
    )


SPECS = {name: engine_spec(member) for name, member in MEMBERS.items()}


def spec_weights(seed, in_channels, plane, conv2_padding, c1, c2, conv3, dense, **_):
    """Uniform weights of an engine spec (PyTorch's default scale, biases within 0.1)."""
    pool1 = [(side - 4) // 2 for side in plane]
    pool2 = [(side + 2 * conv2_padding - 4) // 2 for side in pool1]
    shapes = canonical_shapes(
        in_channels, c1, c2, conv3 or 0, dense, features=None if conv3 else c2 * pool2[0] * pool2[1]
    )
    return random_weights(seed, shapes=shapes)


def reference_scores(x, weights, spec):
    """lenet_fast.reference.forward of the engine spec: images of the plane's size, or 4 smaller
    (conv1 padded by 2, as the engine pads them)."""
    rows, columns = x.shape[2:]
    padding = (spec["plane"][0] - rows) // 2
    return reference.forward(
        x,
        weights,
        input_size=(rows, columns),
        conv1_padding=padding,
        conv2_padding=spec["conv2_padding"],
        **options(spec),
    )


def check_against_reference(kernels, spec, in_channels=1, image_size=None, seed=0, n=None, **conv2):
    """Build the engine of `spec` (`conv2`: conv2_algorithm / conv2_one_image), run a batch
    with full lane groups, a padded tail group and one-image tails (and batch 1), compare with
    the NumPy forward; the one-image path must give the lane path's bits."""
    weights = spec_weights(seed, in_channels, **spec)
    lanes = kernels.LANES
    n = n or 2 * lanes + lanes // 2 + 1
    rows, columns = image_size or spec["plane"]
    x = images(n, in_channels, rows, columns)
    eng = spec_engine(kernels, spec, weights, **conv2)
    expected = reference_scores(x, weights, spec)
    got = run(eng, x)
    np.testing.assert_allclose(got, expected, **TOLERANCE)
    np.testing.assert_array_equal(run(eng, x[:1]), got[:1])
    np.testing.assert_array_equal(run(eng, x[lanes - 1 : lanes + 1]), got[lanes - 1 : lanes + 1])
    return eng, x, got


# ---------------------------------------------------------------------------------------------
# Block sizes: every micro-kernel at every block size the level uses
# ---------------------------------------------------------------------------------------------

SMALL_PLANE = (16, 16)  # conv1 12x12 -> pool1 6x6 -> conv2 2x2 -> pool2 1x1: fast


def small_spec(c1=2, c2=3, dense=(5, 4), conv3=None, plane=SMALL_PLANE, conv2_padding=0):
    return {
        "plane": plane,
        "conv2_padding": conv2_padding,
        "c1": c1,
        "c2": c2,
        "conv3": conv3,
        "dense": dense,
        "conv_activation": "tanh",
        "fc_activation": "sigmoid",
        "output_activation": "identity",
        "pool": "max",
    }


def test_block_sizes_come_from_the_table(level):
    kernels = _dispatch.load_kernels(level)
    import runpy
    from pathlib import Path

    table = Path(__file__).resolve().parent.parent / "src" / "block_sizes.py"
    if not table.exists():
        pytest.skip("no source tree next to the tests")
    assert kernels.BLOCK_SIZES == runpy.run_path(str(table))["BLOCKS"][level]


def test_conv5x5_pool2_broadcast_every_block_size(level):
    """conv1 (both paths) and direct conv2 (lane-group path) with b output channels: one block
    of b for b <= the level's largest, two blocks after."""
    kernels = _dispatch.load_kernels(level)
    for b in range(1, kernels.BLOCK_SIZES["conv_channels"] + 2):
        check_against_reference(
            kernels, small_spec(c1=b, c2=b), in_channels=3, conv2_algorithm="direct"
        )


def test_conv5x5_pool2_channels_in_lanes_every_block_size(level):
    """Direct conv2 of the one-image path with v vectors of channels (v * LANES, and a partial
    vector), for one and two pooled windows at a time (pool2 1x1, 1x2 and 2x2)."""
    kernels = _dispatch.load_kernels(level)
    lanes = kernels.LANES
    direct = {"conv2_algorithm": "direct", "conv2_one_image": "channels"}
    for v in range(1, kernels.BLOCK_SIZES["conv_channel_vectors"] + 2):
        for plane in ((16, 16), (16, 20), (20, 20)):
            check_against_reference(kernels, small_spec(c2=v * lanes, plane=plane), **direct)
        check_against_reference(kernels, small_spec(c2=v * lanes - 1), **direct)


def test_winograd_matrices_give_the_convolution():
    """F(2, 5) as the Engine builds it (float64): A^T ((G g) * (B^T d)) is the valid correlation
    of a 6-vector with a 5-tap filter, and nested, F(2x2, 5x5) of a 6x6 window; B^T is the
    table winograd.pxi writes out."""
    kernels = _dispatch.load_kernels("generic")
    a_t, g, b_t = kernels.winograd_matrices()
    assert kernels.WINOGRAD_POINTS == (0.0, 1.0, -1.0, 2.0, -0.5)
    np.testing.assert_array_equal(
        b_t,
        [
            [1, 1.5, -2, -1.5, 1, 0],
            [0, -1, -2.5, -0.5, 1, 0],
            [0, 1, 0.5, -2.5, 1, 0],
            [0, -0.5, -1, 0.5, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 1, 1.5, -2, -1.5, 1],
        ],
    )
    np.testing.assert_array_equal(a_t, [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -0.5, 1]])
    rng = np.random.default_rng(0)
    d, taps = rng.normal(size=6), rng.normal(size=5)
    np.testing.assert_allclose(
        a_t @ ((g @ taps) * (b_t @ d)), [d[i : i + 5] @ taps for i in range(2)], rtol=1e-13
    )
    window, kernel = rng.normal(size=(6, 6)), rng.normal(size=(5, 5))
    direct = [[np.sum(window[i : i + 5, j : j + 5] * kernel) for j in range(2)] for i in range(2)]
    winograd = a_t @ ((g @ kernel @ g.T) * (b_t @ window @ b_t.T)) @ a_t.T
    np.testing.assert_allclose(winograd, direct, rtol=1e-12)


# pool2 sizes whose positions leave every tail of winograd_channels_in_lanes_block's four tiles
# (1 to 5 positions) and more than a chunk of VLEN positions (25)
WINOGRAD_PLANES = ((16, 16), (16, 20), (16, 24), (20, 20), (16, 28), (28, 28))


def test_conv2_winograd_every_block_size(level):
    """Winograd conv2 with b output channels, b = 1 .. one past the level's largest
    dense_broadcast block (its products run there), both paths; and every one-image variant:
    positions in the lanes (blocks of channels as in the lane path) and channels in the lanes
    (v vectors of channels and a partial one, every tail of four tiles)."""
    kernels = _dispatch.load_kernels(level)
    lanes = kernels.LANES
    for b in range(1, kernels.BLOCK_SIZES["dense_outputs"] + 2):
        for lanes_hold in ("positions", "channels"):
            check_against_reference(
                kernels,
                small_spec(c1=3, c2=b, plane=(20, 20)),
                conv2_algorithm="winograd",
                conv2_one_image=lanes_hold,
            )
    for c2 in (lanes - 1, lanes, 2 * lanes + 1):
        for plane in WINOGRAD_PLANES:
            for lanes_hold in ("positions", "channels"):
                check_against_reference(
                    kernels,
                    small_spec(c1=2, c2=c2, plane=plane),
                    n=lanes + 2,
                    conv2_algorithm="winograd",
                    conv2_one_image=lanes_hold,
                )


def test_winograd_products_come_in_an_even_number_of_blocks(level):
    """Where some block size allows it, so that two threads share batch 1's conv2 evenly
    (Caffe's 50 channels: 4 blocks of 12-13, not 3 of 16-17)."""
    kernels = _dispatch.load_kernels(level)
    largest = kernels.BLOCK_SIZES["dense_outputs"]
    for channels in range(1, 40 * largest):
        block = kernels._winograd_block(channels)
        count = -(-channels // block)
        assert block <= largest
        if channels <= largest:
            assert count == 1
        elif any(-(-channels // size) % 2 == 0 for size in range(1, largest + 1)):
            assert count % 2 == 0, (channels, block)  # (145 on 8: every size gives odd counts)


def test_conv2_algorithm_is_winograd_where_it_takes_fewer_operations(level):
    """At the levels with fused multiply-adds; the generic level stays direct (accuracy)."""
    kernels = _dispatch.load_kernels(level)
    for name, spec in SPECS.items():
        eng = engine(kernels, spec_weights(0, 1, **spec), spec["plane"], spec["conv2_padding"])
        assert eng.conv2_algorithm == ("direct" if level == "generic" else "winograd"), name
    tiny = small_spec(c1=1, c2=1)
    eng = engine(kernels, spec_weights(0, 1, **tiny), tiny["plane"], 0)
    assert eng.conv2_algorithm == "direct"  # 36 + 120 + 16 multiply-adds against 100
    with pytest.raises(ValueError, match="conv2_algorithm must be"):
        engine(kernels, spec_weights(0, 1, **tiny), tiny["plane"], 0, conv2_algorithm="fft")


def test_dense_broadcast_every_block_size(level):
    kernels = _dispatch.load_kernels(level)
    for b in range(1, kernels.BLOCK_SIZES["dense_outputs"] + 2):
        check_against_reference(kernels, small_spec(dense=(b, b)))


def test_dense_outputs_in_lanes_every_block_size(level):
    kernels = _dispatch.load_kernels(level)
    lanes = kernels.LANES
    for v in range(1, kernels.BLOCK_SIZES["dense_output_vectors"] + 2):
        check_against_reference(kernels, small_spec(dense=(v * lanes, v * lanes - 1)))


# The vectorised activations against float64, over every range of inputs: (abs, rel) bounds.
# tanh is a 7/8 rational with a clamp (src/simd.h), sigmoid 1 / (1 + exp(-x)) with a degree-6 exp.
ACTIVATION_BOUNDS = {"tanh": (6e-7, 6e-7), "sigmoid": (1.5e-7, 3e-7)}


def activation_inputs():
    """Dense steps over [-12, 12], a geometric sweep from the smallest subnormal to 1e30, both
    signs, and the odd lengths that leave a tail shorter than a vector."""
    linear = np.linspace(-12, 12, 480_001, dtype=np.float32)
    geometric = np.geomspace(1e-45, 1e30, 200_001).astype(np.float32)
    return np.concatenate([linear, geometric, -geometric, [np.float32(0.5)]])


@pytest.mark.parametrize("name", sorted(ACTIVATION_BOUNDS))
def test_activation_accuracy(level, name):
    kernels = _dispatch.load_kernels(level)
    x = activation_inputs()
    got = x.copy()
    kernels.activate_values(got, getattr(kernels, CODES[name]))
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        expected = np.tanh(x64) if name == "tanh" else 1 / (1 + np.exp(-x64))
    error = np.abs(got - expected)
    absolute, relative = ACTIVATION_BOUNDS[name]
    assert error.max() <= absolute, (name, x[np.argmax(error)], error.max())
    normal = np.abs(expected) > 1e-37
    worst = np.argmax(error[normal] / np.abs(expected[normal]))
    assert error[normal][worst] <= relative * abs(expected[normal][worst]), (name, x[normal][worst])
    assert np.all(got[x == 0] == 0) if name == "tanh" else np.all(got[x == 0] == 0.5)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "identity"])
def test_activation_special_values(level, name):
    kernels = _dispatch.load_kernels(level)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 3e38, -3e38, 1.0], np.float32)
    got = x.copy()
    kernels.activate_values(got, getattr(kernels, CODES[name]))
    assert np.isnan(got[0])  # NaN stays NaN: the engine reports it, never hides it
    expected = {
        "relu": [np.inf, 0, 0, 3e38, 0, 1],
        "identity": [np.inf, -np.inf, 0, 3e38, -3e38, 1],
        "sigmoid": [1, 0, 0.5, 1, 0, 1 / (1 + np.exp(-1.0))],
        "tanh": [1, -1, 0, 1, -1, np.tanh(1.0)],
    }[name]
    np.testing.assert_allclose(got[1:], np.array(expected, np.float32), rtol=1e-6, atol=6e-7)
    with pytest.raises(ValueError, match="float32"):
        kernels.activate_values(x.astype(np.float64), kernels.ACT_TANH)
    with pytest.raises(ValueError, match="activation code"):
        kernels.activate_values(x, 99)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "identity"])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pointwise_activations_and_pools(level, name, pool):
    kernels = _dispatch.load_kernels(level)
    spec = small_spec(c1=3, c2=5, dense=(7, 6))
    spec.update(conv_activation=name, fc_activation=name, output_activation="softmax", pool=pool)
    check_against_reference(kernels, spec)


# ---------------------------------------------------------------------------------------------
# The family's members and geometries
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
@pytest.mark.parametrize("member", MEMBERS)
def test_named_member_matches_reference(level, member, algorithm):
    kernels = _dispatch.load_kernels(level)
    spec = SPECS[member]
    check_against_reference(kernels, spec, conv2_algorithm=algorithm)
    if member in ("lenet5", "keras-same"):  # 28x28 images, zero-padded by 2 inside
        check_against_reference(kernels, spec, image_size=(28, 28), conv2_algorithm=algorithm)


@pytest.mark.parametrize(
    "geometry",
    [
        {"plane": (24, 24), "conv2_padding": 2, "c1": 6, "c2": 16, "conv3": 120, "dense": (84, 10)},
        {
            "plane": (32, 32),
            "conv2_padding": 2,
            "c1": 6,
            "c2": 16,
            "conv3": None,
            "dense": (30, 10),
        },
        {"plane": (24, 36), "conv2_padding": 0, "c1": 5, "c2": 9, "conv3": None, "dense": (12,)},
        {
            "plane": (36, 28),
            "conv2_padding": 2,
            "c1": 4,
            "c2": 7,
            "conv3": None,
            "dense": (20, 11, 3),
        },
        {"plane": (12, 12), "conv2_padding": 2, "c1": 3, "c2": 4, "conv3": None, "dense": (5,)},
    ],
    ids=["24-same-conv3", "32-same-flatten", "24x36", "36x28-same-3-dense", "12-smallest"],
)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_geometries_match_reference(level, geometry, in_channels):
    kernels = _dispatch.load_kernels(level)
    spec = dict(
        geometry,
        conv_activation="relu",
        fc_activation="tanh",
        output_activation="softmax",
        pool="avg",
    )
    check_against_reference(kernels, spec, in_channels)
    rows, columns = spec["plane"]
    check_against_reference(kernels, spec, in_channels, image_size=(rows - 4, columns - 4))


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
@pytest.mark.parametrize("smaller", [0, 4], ids=["plane", "padded-by-2"])
@pytest.mark.parametrize("member", MEMBERS)
def test_member_bits_do_not_depend_on_batch_size_position_or_threads(
    level, member, smaller, algorithm
):
    kernels = _dispatch.load_kernels(level)
    spec = SPECS[member]
    weights = spec_weights(3, 1, **spec)
    eng = spec_engine(kernels, spec, weights, conv2_algorithm=algorithm)
    lanes = kernels.LANES
    n = 3 * lanes + 3
    rows, columns = spec["plane"]
    x = images(n, 1, rows - smaller, columns - smaller, seed=5)
    alone = np.concatenate([run(eng, x[i : i + 1]) for i in range(n)])
    for num_threads in (1, 2, 3):
        np.testing.assert_array_equal(run(eng, x, num_threads), alone)
    for start, stop in ((1, n), (lanes - 1, 2 * lanes + 2), (2, 5), (0, lanes)):
        np.testing.assert_array_equal(
            run(eng, np.ascontiguousarray(x[start:stop])), alone[start:stop]
        )
    labels = np.empty(n, np.int64)
    assert eng.predict(x, labels, 2, True) == -1
    np.testing.assert_array_equal(labels, alone.argmax(axis=1))


ONE_IMAGE_CONV2 = {
    **{name: SPECS[name] for name in ("caffe", "mnist-unpadded", "lenet5")},
    # conv2 padded by 2 (the windows read pool1's zero border), positions in a partial chunk
    "same-odd": small_spec(c1=5, c2=19, plane=(20, 28), conv2_padding=2, dense=(7,)),
    # pooled 1 x 16 and 16 x 1: a pool1 phase row wider than a vector (split lane by lane),
    # and a chunk of positions spanning more than two vectors (gathered lane by lane); caffe,
    # mnist-unpadded and lenet5 take the permutes (gather_conv2_windows)
    "wide-pool2": small_spec(c1=3, c2=5, plane=(16, 76), dense=(6,)),
    "tall-pool2": small_spec(c1=3, c2=5, plane=(76, 16), dense=(6,)),
    "log-softmax": {
        **small_spec(c1=4, c2=18, plane=(28, 28), dense=(9, 11)),
        "output_activation": "log_softmax",
    },
    "conv3-avg-softmax": {
        **small_spec(c1=3, c2=21, conv3=33, plane=(32, 32)),
        "pool": "avg",
        "output_activation": "softmax",
    },
}


CONV2_VARIANTS = [
    (algorithm, lanes)
    for algorithm in ("winograd", "direct")
    for lanes in ("channels", "positions")
]


@pytest.mark.parametrize("name", ONE_IMAGE_CONV2)
def test_one_image_conv2_with_channels_or_positions_in_the_lanes_gives_the_same_bits(level, name):
    """conv2 of the one-image path puts output channels or pooled positions in the lanes
    (whichever leaves fewer empty); either way every image's scores are the lane path's bits,
    for each conv2 algorithm (Winograd and direct agree to the reference's tolerance)."""
    kernels = _dispatch.load_kernels(level)
    spec = ONE_IMAGE_CONV2[name]
    weights = spec_weights(4, 1, **spec)
    n = kernels.LANES + 3  # one lane group, then three single images
    x = images(n, 1, *spec["plane"], seed=6)
    reference = reference_scores(x, weights, spec)
    for algorithm in ("winograd", "direct"):
        engines = {
            lanes: spec_engine(
                kernels, spec, weights, conv2_one_image=lanes, conv2_algorithm=algorithm
            )
            for lanes in ("channels", "positions")
        }
        assert {
            key: (value.conv2_algorithm, value.conv2_one_image) for key, value in engines.items()
        } == {
            "channels": (algorithm, "channels"),
            "positions": (algorithm, "positions"),
        }
        expected = run(engines["channels"], x)
        np.testing.assert_allclose(expected, reference, **TOLERANCE)
        for eng in engines.values():
            np.testing.assert_array_equal(run(eng, x), expected)
            alone = np.concatenate([run(eng, x[i : i + 1]) for i in range(n)])
            np.testing.assert_array_equal(alone, expected)


def test_one_image_conv2_lanes_follow_the_empty_lane_count(level):
    kernels = _dispatch.load_kernels(level)
    lanes = kernels.LANES

    def chosen(name):
        spec = SPECS[name]
        weights = spec_weights(0, 1, **spec)
        return engine(kernels, weights, spec["plane"], spec["conv2_padding"]).conv2_one_image

    # Caffe: 50 channels over 4 x 4 pooled positions
    caffe = (
        "positions" if -(-16 // lanes) * lanes * 50 < -(-50 // lanes) * lanes * 16 else "channels"
    )
    assert chosen("caffe") == caffe
    assert chosen("lenet5") == "channels"  # 16 channels fill whole vectors; 25 positions do not
    with pytest.raises(ValueError, match="conv2_one_image must be"):
        engine(kernels, spec_weights(0, 1, **SPECS["lenet5"]), (32, 32), 0, conv2_one_image="x")


@pytest.mark.parametrize("name", ONE_IMAGE_CONV2)
def test_batch_one_split_across_threads_gives_the_same_bits(level, name):
    """Batch 1 of a large model shares the blocks of conv1, conv2 and the first dense layer with
    the pool;
    forced here on every geometry (split_one_image_from = 0), with either conv2 layout and
    either conv2 algorithm."""
    kernels = _dispatch.load_kernels(level)
    spec = ONE_IMAGE_CONV2[name]
    weights = spec_weights(7, 1, **spec)
    x = images(3, 1, *spec["plane"], seed=8)
    for algorithm, lanes in CONV2_VARIANTS:
        eng = spec_engine(kernels, spec, weights, conv2_one_image=lanes, conv2_algorithm=algorithm)
        alone = [run(eng, x[i : i + 1]) for i in range(len(x))]
        eng.split_one_image_from = 0
        assert eng.one_image_threads >= 1
        before = kernels.pool_statistics()
        for num_threads in (2, 3, 8):
            for _ in range(4):
                for i in range(len(x)):
                    np.testing.assert_array_equal(run(eng, x[i : i + 1], num_threads), alone[i])
        after = kernels.pool_statistics()
        if eng.one_image_threads > 1:  # jobs were posted (or run alone while backing off)
            assert sum(after.values()) > sum(before.values())
        np.testing.assert_array_equal(np.concatenate(alone), run(eng, x, 2))


def test_batch_one_splits_only_large_models(level):
    kernels = _dispatch.load_kernels(level)

    def member_engine(name):
        spec = SPECS[name]
        return engine(kernels, spec_weights(0, 1, **spec), spec["plane"], spec["conv2_padding"])

    caffe, lenet5 = member_engine("caffe"), member_engine("lenet5")
    # conv1: 25 x 20 x (24 x 24); conv2: 20 x 25 x 50 x (8 x 8); fc1: 800 x 500
    assert caffe.split_multiply_adds == 25 * 20 * 576 + 20 * 25 * 50 * 64 + 800 * 500
    assert caffe.split_multiply_adds >= caffe.split_one_image_from > lenet5.split_multiply_adds
    assert caffe.one_image_threads > 1
    assert lenet5.one_image_threads == 1
    caffe.split_one_image_from = caffe.split_multiply_adds + 1
    assert caffe.one_image_threads == 1


def test_levels_agree_on_every_member():
    """Different ISA levels round differently (FMA or not), but all match the reference."""
    for spec in SPECS.values():
        results = [
            check_against_reference(_dispatch.load_kernels(level), spec, n=5)[2]
            for level in _dispatch.usable_levels()
        ]
        for other in results[1:]:
            np.testing.assert_allclose(other, results[0], **TOLERANCE)


# ---------------------------------------------------------------------------------------------
# What the engine refuses
# ---------------------------------------------------------------------------------------------


def test_engine_refuses_inconsistent_geometry_and_weights(level):
    kernels = _dispatch.load_kernels(level)
    spec = SPECS["mnist-unpadded"]
    weights = spec_weights(0, 1, **spec)
    with pytest.raises(ValueError, match="plane must be even"):
        engine(kernels, weights, (29, 28), 0)
    with pytest.raises(ValueError, match="conv2's output must be even"):
        engine(kernels, weights, (30, 28), 0)
    with pytest.raises(ValueError, match="conv2_padding must be 0 or 2"):
        engine(kernels, weights, (28, 28), 1)
    with pytest.raises(ValueError, match="geometry must be a dict"):
        kernels.Engine(weights, {"plane": (28, 28)}, 1, 1, 1, 0)
    with pytest.raises(
        ValueError, match=r"fc1.weight: expected shape \(\*, 400\), found \(120, 256\)"
    ):
        engine(kernels, weights, (32, 32), 0)  # 400 features there
    with pytest.raises(ValueError, match="conv3 needs a 5x5 pool2"):
        engine(
            kernels,
            dict(
                weights,
                **{
                    "conv3.weight": np.zeros((8, 16, 5, 5), np.float32),
                    "conv3.bias": np.zeros(8, np.float32),
                },
            ),
            (28, 28),
            0,
        )
    gap = {key: value for key, value in weights.items() if not key.startswith("fc2")}
    with pytest.raises(ValueError, match="without gaps"):
        engine(kernels, gap, (28, 28), 0)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        engine(
            kernels,
            dict(weights, **{"conv1.bias": weights["conv1.bias"].astype(np.float64)}),
            (28, 28),
            0,
        )
    with pytest.raises(ValueError, match="output activation code"):
        kernels.Engine(weights, {"plane": (28, 28), "conv2_padding": 0}, 1, 1, 9, 0)
    with pytest.raises(ValueError, match="conv/fc activation codes"):
        kernels.Engine(
            weights, {"plane": (28, 28), "conv2_padding": 0}, kernels.ACT_SOFTMAX, 1, 1, 0
        )
    eng = engine(kernels, weights, (28, 28), 0)
    with pytest.raises(
        ValueError,
        match=r"images must have shape \(N, 1, 28, 28\) or "
        r"\(N, 1, 24, 24\)",
    ):
        run(eng, images(2, 1, 32, 32))


def test_engine_refuses_a_workspace_the_kernels_cannot_index(level):
    kernels = _dispatch.load_kernels(level)
    spec = {
        "plane": (4096, 4096),
        "conv2_padding": 0,
        "c1": 1,
        "c2": 1,
        "conv3": None,
        "dense": (1,),
    }
    weights = spec_weights(0, 20, **spec)  # 20 x 4096 x 4096 x VLEN >= 2**30 floats
    with pytest.raises(ValueError, match="needs a workspace of"):
        engine(kernels, weights, (4096, 4096), 0)
    with pytest.raises(ValueError, match="plane must be even sizes from 6 to 4096"):
        engine(kernels, weights, (4098, 4096), 0)
