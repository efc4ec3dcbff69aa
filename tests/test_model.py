"""The LeNet API: loading PyTorch models, saving, options, input validation (shapes, dtypes,
non-finite values, every memory layout), out=, empty batches, the thread option, large batches
in chunks, Ctrl-C, pickling and copies.  Concurrency is in test_threads.py, memory in
test_memory.py."""

import copy
import multiprocessing
import pickle
import re

import numpy as np
import pytest

import lenet_fast
from factories import (
    LAYOUTS,
    exact,
    member_weights,
    model_at_level,
    normal_weights,
    random_images,
    random_weights,
    read_only,
    run_python,
    save_like_users,
    torch_lenets,
)
from factories import normal_images as images
from lenet_fast import LeNet, _dispatch, reference
from lenet_fast._architecture import DEFAULT_GEOMETRY, MEMBERS

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
FLOAT_ONLY = (
    "x must hold floating-point images (a model without stored preprocessing needs float "
    "input: the normalised tensor it was trained on); got "
)
SHAPES_1 = "(N, 1, 32, 32) or (N, 1, 28, 28), or (N, 32, 32) / (N, 28, 28)"
LANES = _dispatch.kernels.LANES
BAD_INPUT = "contains NaN or infinity; pass check_finite=False to skip this check"


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def model():
    return LeNet(random_weights(), conv_activation="tanh", output_activation="softmax")


@pytest.fixture(scope="module")
def plain_model():
    """Default options, two threads, weights scaled like a trained net."""
    return LeNet(normal_weights(), num_threads=2)


@pytest.fixture
def classified_model():
    """tanh, relu, softmax, average pooling, one thread, class names."""
    return LeNet(
        random_weights(gain=3, bias_bound=None),
        conv_activation="tanh",
        fc_activation="relu",
        output_activation="softmax",
        pool="avg",
        num_threads=1,
        metadata={"classes": [str(k) for k in range(10)]},
    )


# ---------------------------------------------------------------------------------------------
# PyTorch models, saved as users save them
# ---------------------------------------------------------------------------------------------

PYTORCH_MODELS = {
    "table": (lambda: torch_lenets().TableNet(), {}, 1, 32),
    "tutorial": (
        lambda: torch_lenets().TutorialNet(),
        {"fc_activation": "relu", "output_activation": "identity"},
        1,
        32,
    ),
    "sequential": (
        lambda: torch_lenets().sequential_conv3(),
        {
            "conv_activation": "tanh",
            "pool": "avg",
            "fc_activation": "tanh",
            "output_activation": "softmax",
        },
        1,
        32,
    ),
    "table-3-channels": (lambda: torch_lenets().TableNet(in_channels=3), {}, 3, 32),
    "table-28x28-padding-2": (lambda: torch_lenets().TableNet(conv1_padding=2), {}, 1, 28),
}


@pytest.mark.parametrize("name", PYTORCH_MODELS)
def test_pytorch_models_through_npz_and_state_dict(torch, tmp_path, level, name):
    build, options, in_channels, size = PYTORCH_MODELS[name]
    torch.manual_seed(11)
    module = build().eval()
    save_like_users(module, tmp_path / "model.npz")
    x = torch.randn(37, in_channels, size, size, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = module(x).numpy()
    for lenet in (
        LeNet.from_npz(tmp_path / "model.npz", **options),
        LeNet.from_state_dict(module.state_dict(), **options),
    ):
        assert lenet.architecture == {
            **lenet_fast._model.DEFAULT_ARCHITECTURE,
            **DEFAULT_GEOMETRY,
            **options,
        }
        lenet = model_at_level(lenet, level)
        np.testing.assert_allclose(lenet.forward(x.numpy()), expected, **TOLERANCE)
        np.testing.assert_allclose(lenet.forward(x.numpy()[:1]), expected[:1], **TOLERANCE)
        np.testing.assert_array_equal(lenet.predict(x.numpy()), expected.argmax(axis=1))


# ---------------------------------------------------------------------------------------------
# save_npz and the architecture options
# ---------------------------------------------------------------------------------------------


def test_save_npz_round_trip_restores_everything_and_is_byte_stable(tmp_path):
    options = {
        "conv_activation": "sigmoid",
        "fc_activation": "identity",
        "output_activation": "tanh",
        "pool": "avg",
    }
    metadata = {"run": [1, "a"], "note": "é", "numbers": [1, 2.5]}
    original = LeNet(random_weights(2, 3, (7, 13, 50, 33, 5)), metadata=metadata, **options)
    original.save_npz(tmp_path / "first.npz")
    loaded = LeNet.from_npz(tmp_path / "first.npz")
    assert loaded.architecture == {**options, **DEFAULT_GEOMETRY}
    assert loaded.metadata == metadata
    assert loaded.dimensions == original.dimensions
    for key, value in original.weights.items():
        np.testing.assert_array_equal(loaded.weights[key], value)
    x = images(20, 3, 28)
    np.testing.assert_array_equal(loaded.forward(x), original.forward(x))
    loaded.save_npz(tmp_path / "second.npz")
    assert (tmp_path / "first.npz").read_bytes() == (tmp_path / "second.npz").read_bytes()


def test_option_precedence_explicit_then_stored_then_default(tmp_path):
    from lenet_fast import _weights

    weights = random_weights(3)
    _weights.save_npz(
        tmp_path / "partial.npz",
        weights,
        {"architecture": {"conv_activation": "tanh", "pool": "avg"}},
    )
    x = images(9)

    stored = LeNet.from_npz(tmp_path / "partial.npz")
    assert stored.architecture == {
        "conv_activation": "tanh",
        "fc_activation": "sigmoid",
        "output_activation": "sigmoid",
        "pool": "avg",
        **DEFAULT_GEOMETRY,
    }
    explicit = LeNet.from_npz(tmp_path / "partial.npz", pool="max", output_activation="softmax")
    assert explicit.architecture == {
        "conv_activation": "tanh",
        "fc_activation": "sigmoid",
        "output_activation": "softmax",
        "pool": "max",
        **DEFAULT_GEOMETRY,
    }
    for lenet in (stored, explicit):
        np.testing.assert_allclose(
            lenet.forward(x), reference.forward(x, weights, **lenet.architecture), **TOLERANCE
        )

    save_like_users_weights = dict(weights)
    np.savez(tmp_path / "plain.npz", **save_like_users_weights)
    assert LeNet.from_npz(tmp_path / "plain.npz").architecture == {
        **lenet_fast._model.DEFAULT_ARCHITECTURE,
        **DEFAULT_GEOMETRY,
    }
    assert (
        LeNet.from_state_dict(weights, fc_activation="relu").architecture["fc_activation"] == "relu"
    )


def test_unknown_option_values_are_rejected(tmp_path):
    from lenet_fast import _weights

    names = "'relu', 'sigmoid', 'tanh', 'identity'"
    with pytest.raises(ValueError, match=exact("pool must be one of 'max', 'avg'; got 'min'")):
        LeNet(random_weights(), pool="min")
    with pytest.raises(
        ValueError, match=exact(f"conv_activation must be one of {names}; got 'softmax'")
    ):
        LeNet.from_state_dict(random_weights(), conv_activation="softmax")
    _weights.save_npz(
        tmp_path / "bad.npz", random_weights(), {"architecture": {"fc_activation": "gelu"}}
    )
    with pytest.raises(
        ValueError,
        match=exact(
            f"{tmp_path / 'bad.npz'}: '__lenet_fast__.npy': metadata['architecture']['fc_activation'] "
            f"must be one of {names}; got 'gelu'"
        ),
    ):
        LeNet.from_npz(tmp_path / "bad.npz")
    assert (
        LeNet.from_npz(tmp_path / "bad.npz", fc_activation="relu").architecture["fc_activation"]
        == "relu"
    )


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "found"),
    [
        (np.zeros((2, 1, 32, 32), np.int32), "integer dtype int32"),
        (np.zeros((2, 1, 32, 32), np.uint8), "integer dtype uint8"),
        (np.zeros((2, 1, 32, 32), bool), "boolean dtype bool"),
        (np.zeros((2, 1, 32, 32), np.complex64), "complex dtype complex64"),
        (np.zeros((2, 1, 32, 32), object), "non-numeric dtype object"),
        ([[[[1]]]], "integer dtype int64"),
        ("images", "non-numeric dtype <U6"),
        (np.zeros((1, 1, 32, 32), "U1"), "non-numeric dtype <U1"),
    ],
    ids=["int32", "uint8", "bool", "complex", "object", "int-list", "str", "str-array"],
)
def test_non_float_input_is_a_type_error(model, x, found):
    for method in (model.forward, model.predict):
        with pytest.raises(TypeError, match=exact(FLOAT_ONLY + found)):
            method(x)


@pytest.mark.parametrize(
    "shape",
    [
        (2, 1, 30, 30),
        (2, 1, 32, 28),
        (2, 3, 32, 32),
        (2, 2, 28, 28),
        (32, 32),
        (2, 1, 1, 32, 32),
        (1024,),
        (),
        (2, 30, 30),
        (2, 1, 32, 32, 1),
        (1, 2, 1, 32, 32),
        (1, 1, 0, 0),
        (1, 1, 64, 64),
        (1, 1, 32),
    ],  # (1, 1, 32): once reported as (1, 1, 1, 32), after the channel axis was added
)
def test_wrong_shapes_are_value_errors(model, shape):
    x = np.zeros(shape, np.float32)
    for method in (model.forward, model.predict):
        with pytest.raises(ValueError, match=exact(f"x must have shape {SHAPES_1}; got {shape}")):
            method(x)


def test_three_channel_model_names_its_shapes():
    lenet = LeNet(random_weights(0, 3))
    message = "x must have shape (N, 3, 32, 32) or (N, 3, 28, 28); got "
    for shape in [(2, 1, 32, 32), (2, 32, 32), (2, 3, 30, 30)]:
        with pytest.raises(ValueError, match=exact(message + str(shape))):
            lenet.forward(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("n", "threads", "dtype"),
    [(5, 1, np.float32), (40, 1, np.float32), (100, 2, np.float32), (40, 1, np.float64)],
)
def test_non_finite_input_names_the_first_bad_image(level, bad, n, threads, dtype):
    lenet = model_at_level(LeNet(random_weights()), level)
    x = images(n, size=28).astype(dtype)
    x[3, 0, 27, 27] = bad
    x[n - 1, 0, 0, 0] = np.nan
    message = "x[3] contains NaN or infinity; pass check_finite=False to skip this check"
    for method in (lenet.forward, lenet.predict):
        with pytest.raises(ValueError, match=exact(message)):
            method(x, num_threads=threads)
    last_only = images(n, size=28).astype(dtype)
    last_only[n - 1, 0, 14, 0] = bad
    with pytest.raises(ValueError, match=exact(message.replace("[3]", f"[{n - 1}]"))):
        lenet.forward(last_only, num_threads=threads)


@pytest.mark.parametrize("output_activation", ["sigmoid", "softmax"])
def test_check_finite_false_leaves_other_images_unaffected(level, output_activation):
    lenet = model_at_level(LeNet(random_weights(), output_activation=output_activation), level)
    clean = images(45)
    expected = lenet.forward(clean)
    dirty = clean.copy()
    bad = [0, 3, 17, 33, 44]  # in full groups, a padded group and one-image tails
    dirty[0, 0, 5, 5] = np.nan
    dirty[3, 0, 0, 0] = np.inf
    dirty[17, 0, 31, 31] = -np.inf
    dirty[33] = np.nan
    dirty[44, 0, 16, 16] = np.inf
    for threads in (1, 2):
        for n in (45, 36, 1):
            result = lenet.forward(dirty[:n], check_finite=False, num_threads=threads)
            good = [i for i in range(n) if i not in bad]
            np.testing.assert_array_equal(result[good], expected[good])
            labels = lenet.predict(dirty[:n], check_finite=False, num_threads=threads)
            np.testing.assert_array_equal(labels[good], expected[good].argmax(axis=1))
            # Bad images: float32 scores and a label in range, or -1 where a score is NaN: a
            # NaN never becomes a label.
            assert result.shape == (n, 10) and result.dtype == np.float32
            nan_rows = np.isnan(result).any(axis=1)
            assert labels.dtype == np.int64 and (labels[nan_rows] == -1).all()
            assert ((0 <= labels[~nan_rows]) & (labels[~nan_rows] < 10)).all()
    assert np.isnan(lenet.forward(dirty[33:34], check_finite=False)).all()


# ---------------------------------------------------------------------------------------------
# Input conversions
# ---------------------------------------------------------------------------------------------


def test_float16_and_negative_strides_convert_their_values(model):
    x = images(21)
    half = x.astype(np.float16)
    np.testing.assert_array_equal(model.forward(half), model.forward(half.astype(np.float32)))
    for view in (x[::-1], x[:, :, ::-1, ::-1], x[::-3]):
        np.testing.assert_array_equal(
            model.forward(view), model.forward(np.ascontiguousarray(view))
        )


def test_large_converted_batch_matches_float32(model):
    x = images(64, size=28, seed=3)
    big = np.concatenate([x] * 80).astype(np.float64)  # 5120 images: two conversion chunks
    expected = np.concatenate([model.forward(x)] * 80)
    np.testing.assert_array_equal(model.forward(big), expected)
    np.testing.assert_array_equal(model.predict(big[::-1]), expected.argmax(axis=1)[::-1])


# ---------------------------------------------------------------------------------------------
# out=, empty batches, threads
# ---------------------------------------------------------------------------------------------


def test_out_arguments_are_filled_and_returned(model):
    x = images(21)
    scores = np.full((21, 10), -7, np.float32)
    assert model.forward(x, out=scores) is scores
    np.testing.assert_array_equal(scores, model.forward(x))
    labels = np.full(21, -7, np.int64)
    assert model.predict(x, out=labels) is labels
    np.testing.assert_array_equal(labels, model.forward(x).argmax(axis=1))


class _CountingEngine:
    """An Engine whose direct calls are recorded: (method, images shape, answered, threads)."""

    def __init__(self, engine):
        self._engine = engine
        self.calls = []

    def __getattr__(self, name):
        attribute = getattr(self._engine, name)
        if not name.endswith("_direct"):
            return attribute

        def call(images, check_finite, num_threads=1):
            result = attribute(images, check_finite, num_threads)
            self.calls.append((name, images.shape, result is not None, num_threads))
            return result

        return call


@pytest.mark.parametrize(
    ("make_x", "num_threads", "expected"),
    [
        (lambda: images(1, size=32), None, [True]),
        (lambda: images(1, size=28), 1, [True]),
        (lambda: images(5, size=28)[:, 0], 2, [True]),  # (N, H, W); 5 images run on 1 thread
        (lambda: images(512, size=32), 1, [True]),
        (lambda: images(513, size=32), 1, []),  # more than one kernel call
        (lambda: images(64, size=28), 2, []),  # two threads, not yet known to start
        (lambda: images(3, size=32).astype(np.float64), 1, [False]),  # converted
        (lambda: images(6, size=32)[::2], 1, [False]),  # not contiguous
        (lambda: images(2, size=32).astype(">f4"), 1, [False]),  # byte-swapped
        (lambda: images(2, size=30), 1, []),  # a shape the general path refuses
        (lambda: list(images(1, size=32)), 1, []),
    ],
)
@pytest.mark.parametrize("method", ["forward", "predict"])
def test_direct_engine_calls_take_the_common_case_with_the_same_bits(
    model, make_x, num_threads, expected, method, monkeypatch
):
    """The common call (ready float32, one kernel call, on the caller or on threads known to
    start) goes to the engine in one step; everything else, and every refusal, takes the
    general path, with the same results."""
    monkeypatch.setattr(lenet_fast._model, "_threads_known_to_start", 1)
    x = make_x()
    counting = _CountingEngine(model._engine)
    model._engine = counting
    if expected == [] and np.asarray(x).shape[-1] == 30:
        with pytest.raises(ValueError, match="x must have shape"):
            getattr(model, method)(x, num_threads=num_threads)
        assert counting.calls == []
        return
    result = getattr(model, method)(x, num_threads=num_threads)
    assert [answered for _, _, answered, _ in counting.calls] == expected
    assert all(name == f"{method}_direct" for name, _, _, _ in counting.calls)
    n = len(x)
    general = np.empty((n, 10) if method == "forward" else n, result.dtype)
    getattr(model, method)(x, num_threads=num_threads, out=general)  # out= is never direct
    assert len(counting.calls) == len(expected)
    np.testing.assert_array_equal(result, general)
    assert result.flags.c_contiguous and result.flags.writeable and result.base is None


@pytest.mark.parametrize("method", ["forward", "predict"])
def test_direct_engine_calls_run_on_threads_known_to_start(model, method):
    """Once the process has started two threads, a ready batch of one kernel call on two
    threads goes to the engine in one step too, and so does batch 1 of Caffe's LeNet (its
    layers split across the threads), with the general path's bits."""
    lenet_fast._model._ensure_threads_can_start(2)
    caffe = MEMBERS["caffe"]
    large = LeNet(member_weights(caffe), **caffe.architecture, **caffe.geometry)
    assert large._engine.one_image_threads > 1
    for net, x in ((model, images(64, size=28)), (large, images(1, size=28))):
        counting = net._engine = _CountingEngine(net._engine)
        result = getattr(net, method)(x, num_threads=2)
        general = np.empty((len(x), 10) if method == "forward" else len(x), result.dtype)
        getattr(net, method)(x, num_threads=2, out=general)
        np.testing.assert_array_equal(result, general)
        assert [(answered, threads) for _, _, answered, threads in counting.calls] == [(True, 2)]


def test_the_engine_refuses_arrays_it_would_misread(model):
    """Byte-swapped or unaligned arrays never reach the kernels, whichever entry point."""
    x = images(2, size=32)
    swapped = x.astype(">f4")
    unaligned = np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1).reshape(x.shape)
    engine = model._engine
    for bad in (swapped, unaligned):
        assert engine.forward_direct(bad, True) is None
        assert engine.predict_direct(bad, True) is None
        with pytest.raises(ValueError, match="aligned C-contiguous native float32"):
            engine.forward(bad, np.empty((2, 10), np.float32))
    with pytest.raises(ValueError, match="C-contiguous native float32 array of shape"):
        engine.forward(x, np.empty((2, 10), ">f4"))
    with pytest.raises(ValueError, match="C-contiguous native int64 array of shape"):
        engine.predict(x, np.empty(2, ">i8"))
    np.testing.assert_array_equal(model.forward(swapped), model.forward(x))
    np.testing.assert_array_equal(model.predict(unaligned), model.predict(x))


@pytest.mark.parametrize("method", ["forward", "predict"])
def test_direct_engine_calls_leave_bad_values_to_the_general_path(model, method):
    x = images(3, size=32)
    x[2, 0, 5, 5] = np.nan
    counting = _CountingEngine(model._engine)
    model._engine = counting
    with pytest.raises(ValueError, match=re.escape(f"x[2] {BAD_INPUT}")):
        getattr(model, method)(x, num_threads=1)
    assert [answered for _, _, answered, _ in counting.calls] == [False]
    unchecked = getattr(model, method)(x, num_threads=1, check_finite=False)
    assert [answered for _, _, answered, _ in counting.calls] == [False, True]
    if method == "forward":
        assert np.isnan(unchecked[2]).all() and np.isfinite(unchecked[:2]).all()
    else:
        assert unchecked[2] == -1 and (unchecked[:2] >= 0).all()
    relu = LeNet(normal_weights())  # ReLU does not saturate as tanh does
    counting = relu._engine = _CountingEngine(relu._engine)
    huge = np.zeros((1, 1, 32, 32), np.float32)  # finite, but the outputs overflow to NaN
    huge[0, 0, ::2] = -np.finfo(np.float32).max
    huge[0, 0, 1::2] = np.finfo(np.float32).max
    assert np.isnan(relu.forward(huge, check_finite=False)).all()
    with pytest.raises(ValueError, match=re.escape("x[0] gives NaN outputs")):
        getattr(relu, method)(huge, num_threads=1)
    assert [answered for _, _, answered, _ in counting.calls] == [True, False]


@pytest.mark.parametrize(
    ("method", "out", "found"),
    [
        ("forward", np.empty((21, 9), np.float32), "float32 (21, 9)"),
        ("forward", np.empty((20, 10), np.float32), "float32 (20, 10)"),
        ("forward", np.empty((21, 10), np.float64), "float64 (21, 10)"),
        ("forward", np.empty((10, 21), np.float32).T, "float32 (21, 10)"),
        ("forward", read_only(np.empty((21, 10), np.float32)), "float32 (21, 10)"),
        ("forward", [[0.0] * 10] * 21, "list"),
        ("predict", np.empty(21, np.int32), "int32 (21,)"),
        ("predict", np.empty((21, 1), np.int64), "int64 (21, 1)"),
        ("predict", np.empty(42, np.int64)[::2], "int64 (21,)"),
    ],
)
def test_wrong_out_arguments_are_rejected(model, method, out, found):
    shape, dtype = ((21, 10), "float32") if method == "forward" else ((21,), "int64")
    message = f"out must be a writeable C-contiguous {dtype} array of shape {shape}; got {found}"
    with pytest.raises(ValueError, match=exact(message)):
        getattr(model, method)(images(21), out=out)


@pytest.mark.parametrize("shape", [(0, 1, 32, 32), (0, 1, 28, 28), (0, 28, 28), (0, 32, 32)])
def test_empty_batches(model, shape):
    x = np.empty(shape, np.float32)
    scores = model.forward(x)
    assert scores.shape == (0, 10) and scores.dtype == np.float32
    labels = model.predict(x)
    assert labels.shape == (0,) and labels.dtype == np.int64
    assert model.forward(x.astype(np.float64)).shape == (0, 10)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "num_threads must be >= 1; got 0"),
        (-1, ValueError, "num_threads must be >= 1; got -1"),
        (1.5, TypeError, "num_threads must be a positive integer or None; got 1.5"),
        (True, TypeError, "num_threads must be a positive integer or None; got True"),
        ("2", TypeError, "num_threads must be a positive integer or None; got '2'"),
    ],
)
def test_num_threads_validation(model, value, error, message):
    with pytest.raises(error, match=exact(message)):
        LeNet(random_weights(), num_threads=value)
    with pytest.raises(error, match=exact(message)):
        model.forward(images(2), num_threads=value)
    with pytest.raises(error, match=exact(message)):
        model.predict(images(2), num_threads=value)
    model.num_threads = 3
    with pytest.raises(error, match=exact(message)):
        model.num_threads = value
    assert model.num_threads == 3


def test_num_threads_default_and_setter(model):
    assert model.num_threads == _dispatch.default_num_threads()
    assert LeNet(random_weights(), num_threads=np.int64(2)).num_threads == 2
    model.num_threads = 5
    assert model.num_threads == 5 and type(model.num_threads) is int
    assert "num_threads=5" in repr(model)
    x = images(100)
    np.testing.assert_array_equal(model.forward(x), model.forward(x, num_threads=1))
    model.num_threads = None
    assert model.num_threads == _dispatch.default_num_threads()


# ---------------------------------------------------------------------------------------------
# Pickling, threads, memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "duplicate",
    [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy, copy.copy],
    ids=["pickle", "deepcopy", "copy"],
)
def test_pickle_and_copies(duplicate):
    metadata = {"note": "x", "classes": list("abcde")}
    original = LeNet(
        random_weights(5, 3, (7, 13, 50, 33, 5)),
        pool="avg",
        output_activation="softmax",
        num_threads=1,
        metadata=metadata,
    )
    clone = duplicate(original)
    assert clone.architecture == original.architecture
    assert clone.metadata == metadata and clone.num_threads == 1
    assert clone.classes == original.classes == list("abcde")
    assert clone.isa == _dispatch.kernels.ISA
    for key, value in original.weights.items():
        np.testing.assert_array_equal(clone.weights[key], value)
        assert not clone.weights[key].flags.writeable
    x = images(21, 3, 28)
    np.testing.assert_array_equal(clone.forward(x), original.forward(x))
    np.testing.assert_array_equal(clone.predict(x), original.predict(x))


@pytest.mark.parametrize(
    "metadata, problem",
    [
        ({"architecture": ["relu"]}, "metadata['architecture'] must be a dict; got list"),
        (
            {"architecture": {"pool": "median"}},
            "metadata['architecture']['pool'] must be one of 'max', 'avg'; got 'median'",
        ),
        (
            {"architecture": {"dropout": "yes"}},
            "metadata['architecture'] has an unknown option 'dropout'",
        ),
        (
            {"preprocessing": {"scale": 10**400, "mean": 0, "std": 1}},
            "metadata['preprocessing']['scale'] must be a positive finite number",
        ),
        ({"classes": ["a", "b"]}, "metadata['classes'] must be a list of 10 strings"),
    ],
)
def test_unusable_stored_metadata_is_a_weight_file_error_naming_the_file(
    tmp_path, metadata, problem
):
    from lenet_fast import WeightFileError
    from lenet_fast._weights import save_npz

    path = tmp_path / "model.npz"
    save_npz(path, random_weights(2), metadata)
    with pytest.raises(
        WeightFileError, match="^" + re.escape(f"{path}: '__lenet_fast__.npy': {problem}")
    ):
        LeNet.from_npz(path)


def test_pickled_model_keeps_a_default_thread_count_a_default(monkeypatch):
    default = pickle.dumps(LeNet(random_weights(2)))
    explicit = pickle.dumps(LeNet(random_weights(2), num_threads=1))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pickle.loads(default).num_threads == 3
    assert pickle.loads(explicit).num_threads == 1


# ---------------------------------------------------------------------------------------------
# Inputs: non-finite values at every lane position and thread split
# ---------------------------------------------------------------------------------------------


def bad_input_message(index):
    return rf"^x\[{index}\] {BAD_INPUT.replace('.', '[.]')}$"


@pytest.mark.parametrize(
    ("n", "bad", "threads"),
    [
        (1, [0], 1),  # batch 1 (stack workspace path)
        (2 * LANES, [LANES + 1, 2 * LANES - 1], 1),  # inside the second lane group (any width)
        (3 * LANES + 5, [3 * LANES + 4], 1),  # in the tail, one image at a time
        (3 * LANES + LANES - 1, [3 * LANES + 2], 1),  # in a partial lane group tail
        (64 * LANES, [40 * LANES + 1, 60 * LANES], 2),  # two threads, both find one
        (64 * LANES, [5, 63 * LANES], 2),  # first thread's is first
        (64 * LANES + 3, [64 * LANES + 2], 2),  # two threads, in the tail
    ],
)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_at_every_lane_position_and_thread_split(
    plain_model, n, bad, threads, value
):
    model = plain_model
    x = images(n)
    for index in bad:
        x[index, 0, 7 * index % 32, 11 * index % 32] = value
    for _ in range(5 if threads > 1 else 1):  # the index comes from an atomic min across threads
        with pytest.raises(ValueError, match=bad_input_message(min(bad))):
            model.predict(x, num_threads=threads)
        with pytest.raises(ValueError, match=bad_input_message(min(bad))):
            model.forward(x, num_threads=threads)


def test_non_finite_input_index_in_converted_chunks(plain_model):
    model = plain_model
    x = images(9000, dtype=np.float64)  # converted to float32 in chunks of at most 4096 images
    x[8999, 0, 31, 31] = np.nan
    x[5000, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=bad_input_message(5000)):
        model.predict(x)
    halves = images(3, dtype=np.float16)
    halves[2, 0, 0, 0] = np.float16(np.inf)
    with pytest.raises(ValueError, match=bad_input_message(2)):
        model.predict(halves)


def test_memmap_input(plain_model, tmp_path):
    model = plain_model
    x = images(LANES + 5)
    stored = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape
    )
    stored[...] = x
    stored.flush()
    del stored
    for mode in ("r", "c"):
        mapped = np.load(tmp_path / "x.npy", mmap_mode=mode)
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(model.predict(mapped), model.predict(x))
    offset_map = np.memmap(
        tmp_path / "x.npy",
        dtype=np.float32,
        mode="r",
        offset=128 + 4096,
        shape=(LANES + 4, 1, 32, 32),
    )  # starts at image 1
    np.testing.assert_array_equal(model.forward(offset_map), model.forward(x[1:]))


# ---------------------------------------------------------------------------------------------
# Pickling and copies
# ---------------------------------------------------------------------------------------------


def test_pickle_holds_little_more_than_the_weights(classified_model):
    model = classified_model
    weight_bytes = sum(array.nbytes for array in model.weights.values())
    size = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    assert weight_bytes < size < weight_bytes + 4096, (size, weight_bytes)


def _predict_forward_repr(requests, results):
    """Run in a spawned child: the unpickled model's labels, scores and repr."""
    model, images = requests.get()
    results.put((model.predict(images), model.forward(images), repr(model)))


def test_unpickled_in_a_spawned_process_predicts_the_same(classified_model):
    model, images = classified_model, random_images(500)
    # spawn: a fresh interpreter that re-imports lenet_fast, rebuilds the kernels and workspaces.
    # One Process and queues read with a timeout (not a Pool, whose apply() waits forever when its
    # worker dies): a child that cannot start fails the test instead of stalling it.  The model
    # goes through a queue, not the Process arguments, so starting the child sends little.
    context = multiprocessing.get_context("spawn")
    requests, results = context.Queue(), context.Queue()
    child = context.Process(target=_predict_forward_repr, args=(requests, results))
    child.start()
    requests.put((model, images))
    try:
        result = results.get(timeout=120)
    except Exception:  # noqa: BLE001 -- queue.Empty: the child hung or died
        result = None
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    assert result is not None, f"the spawned child hung or died (exit code {child.exitcode})"
    labels, scores, child_repr = result
    np.testing.assert_array_equal(labels, model.predict(images))
    np.testing.assert_array_equal(scores, model.forward(images))
    assert child_repr == repr(model)


def test_deepcopy_is_independent_and_equal(classified_model):
    model, images = classified_model, random_images(500)
    duplicate = copy.deepcopy(model)
    assert duplicate is not model and repr(duplicate) == repr(model)
    for key, value in model.weights.items():
        assert duplicate.weights[key] is not value
        np.testing.assert_array_equal(duplicate.weights[key], value, err_msg=key)
    duplicate.num_threads = 2
    assert model.num_threads == 1
    np.testing.assert_array_equal(duplicate.forward(images), model.forward(images))
    np.testing.assert_array_equal(copy.copy(model).predict(images), model.predict(images))


# ---------------------------------------------------------------------------------------------
# Large batches: chunks, Ctrl-C, out= overlapping the input
# ---------------------------------------------------------------------------------------------


def test_nan_outputs_from_finite_input_never_become_labels(plain_model):
    model = plain_model
    x = np.zeros((40, 1, 32, 32), np.float32)
    x[7] = np.finfo(np.float32).max
    x[9, 0, ::2] = -np.finfo(np.float32).max
    x[9, 0, 1::2] = np.finfo(np.float32).max
    scores = model.forward(x, check_finite=False)
    nan_rows = np.flatnonzero(np.isnan(scores).any(axis=1))
    assert len(nan_rows)
    first = nan_rows[0]
    for method in (model.predict, model.forward):
        with pytest.raises(
            ValueError,
            match=rf"^x\[{first}\] gives NaN outputs although it is "
            rf"finite",
        ):
            method(x)
    labels = model.predict(x, check_finite=False)
    assert (labels[nan_rows] == -1).all()
    clean = np.setdiff1d(np.arange(40), nan_rows)
    np.testing.assert_array_equal(labels[clean], scores[clean].argmax(axis=1))


class RecordingEngine:
    """Stands in for the compiled engine, recording the batch size of every kernel call."""

    def __init__(self, engine):
        self.engine, self.sizes = engine, []

    def forward(self, images, *rest):
        self.sizes.append(len(images))
        return self.engine.forward(images, *rest)

    def predict(self, images, *rest):
        self.sizes.append(len(images))
        return self.engine.predict(images, *rest)


def test_contiguous_float32_batches_run_in_chunks_with_identical_bits(plain_model):
    model = plain_model
    x = np.random.default_rng(3).normal(size=(9000, 1, 28, 28)).astype(np.float32)
    whole = model.forward(x)
    recorder = RecordingEngine(model._engine)
    chunked = LeNet(normal_weights(), num_threads=2)
    chunked._engine = recorder
    np.testing.assert_array_equal(chunked.forward(x), whole)
    assert recorder.sizes == [1024] * 8 + [808]  # 512 images per thread, 2 threads
    recorder.sizes.clear()
    chunked.num_threads = 16
    np.testing.assert_array_equal(chunked.forward(x), whole)
    assert recorder.sizes == [4096, 4096, 808]
    singles = np.concatenate([model.forward(x[i : i + 1]) for i in range(0, 9000, 997)])
    np.testing.assert_array_equal(singles, whole[::997])


def test_ctrl_c_stops_a_large_float32_batch_within_a_chunk():
    result = run_python(
        """
        import _thread, signal, threading, time
        import numpy as np
        from lenet_fast import LeNet
        # Python's own Ctrl-C handler, even where the parent ignores SIGINT (a background job of
        # a shell without job control does, and a child inherits that: interrupt_main() then
        # does nothing).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        model = LeNet.pretrained("mnist", num_threads=2)
        x = np.zeros((120_000, 1, 28, 28), np.float32)
        model.forward(x[:4096])
        started = time.perf_counter()
        model.forward(x[:8192])
        chunk_seconds = (time.perf_counter() - started) / 8
        fired = []
        def interrupt():
            fired.append(time.perf_counter())
            _thread.interrupt_main()
        threading.Timer(0.3, interrupt).start()
        try:
            model.forward(x)
            report(outcome="finished")
        except KeyboardInterrupt:
            report(outcome="interrupted", late=time.perf_counter() - fired[0],
                   chunk_seconds=chunk_seconds)
    """,
        timeout=300,
    )
    assert result["outcome"] == "interrupted"
    # One chunk at most (1024 images on 2 threads: 0.02-0.07 s measured), whatever N is.
    assert result["late"] < max(0.1, 2 * result["chunk_seconds"])


def test_out_overlapping_the_input_is_refused(plain_model):
    model = plain_model
    buffer = np.zeros(4 * 1024 + 100, np.float32)
    x = buffer[: 4 * 1024].reshape(4, 1, 32, 32)
    with pytest.raises(ValueError, match="^out overlaps the input x"):
        model.forward(x, out=buffer[4 * 1024 - 40 : 4 * 1024].reshape(4, 10))
    raw = np.zeros(4 * 1024 * 4 + 100, np.uint8)
    pixels = raw[: 4 * 1024].reshape(4, 32, 32)
    with pytest.raises(ValueError, match="^out overlaps the input x"):
        LeNet.pretrained("mnist").predict(pixels, out=raw[:32].view(np.int64))
    # Separate parts of one buffer are fine.
    out = buffer[4 * 1024 : 4 * 1024 + 40].reshape(4, 10)
    np.testing.assert_array_equal(model.forward(x, out=out), model.forward(x.copy()))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", [32, 28])
def test_every_layout_and_dtype_gives_the_float32_result(plain_model, layout, size):
    x = images(2 * LANES + 3, size=size)
    view = LAYOUTS[layout](x)
    expected = np.ascontiguousarray(np.asarray(view, dtype=np.float32))
    np.testing.assert_array_equal(plain_model.forward(view), plain_model.forward(expected))
    np.testing.assert_array_equal(plain_model.predict(view), plain_model.predict(expected))
    np.testing.assert_array_equal(x, images(2 * LANES + 3, size=size))  # the input is not modified
    if layout == "read-only":
        assert not view.flags.writeable


def test_with_isa_runs_the_same_model_on_another_level(plain_model, monkeypatch):
    x = images(2 * LANES + 3)
    expected = plain_model.forward(x)
    for level in _dispatch.usable_levels():
        other = plain_model.with_isa(level)
        assert other.isa == level
        assert other.architecture == plain_model.architecture
        assert other.num_threads == plain_model.num_threads
        assert other.metadata == plain_model.metadata
        np.testing.assert_allclose(other.forward(x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(other.forward(x), other.with_isa(level).forward(x))
    assert plain_model.isa == _dispatch.kernels.ISA  # the model itself is unchanged
    with pytest.raises(ValueError, match="unknown ISA level 'sse9'"):
        plain_model.with_isa("sse9")
    monkeypatch.setattr(_dispatch, "built_levels", lambda: ("generic",))
    with pytest.raises(ImportError, match="built without the 'avx2' kernels"):
        plain_model.with_isa("avx2")
