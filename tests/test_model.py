"""The LeNet API: loading PyTorch models, saving, options, input validation and conversion, out=,
threads, pickling, concurrency and memory."""

import copy
import json
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from lenet_fast import LeNet, _dispatch, reference
from lenet_fast._architecture import DEFAULT_GEOMETRY

from conftest import build_model_at_level, make_random_weights
from test_reference import save_like_users, sequential_model, table_model, tutorial_model

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
FLOAT_ONLY = ("x must hold floating-point images (a model without stored preprocessing needs float "
              "input: the normalised tensor it was trained on); got ")
SHAPES_1 = "(N, 1, 32, 32) or (N, 1, 28, 28), or (N, 32, 32) / (N, 28, 28)"


def exact(message):
    return f"^{re.escape(message)}$"


def images(n, in_channels=1, size=32, seed=1):
    return np.random.default_rng(seed).normal(size=(n, in_channels, size, size)).astype(np.float32)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def model():
    return LeNet(make_random_weights(), conv_activation="tanh", output_activation="softmax")


# ---------------------------------------------------------------------------------------------
# PyTorch models, saved as users save them
# ---------------------------------------------------------------------------------------------

PYTORCH_MODELS = {
    "table": (table_model, {}, 1, 32),
    "tutorial": (tutorial_model, {"fc_activation": "relu", "output_activation": "identity"}, 1, 32),
    "sequential": (sequential_model, {"conv_activation": "tanh", "pool": "avg", "fc_activation": "tanh",
                                      "output_activation": "softmax"}, 1, 32),
    "table-3-channels": (lambda torch: table_model(torch, in_channels=3), {}, 3, 32),
    "table-28x28-padding-2": (lambda torch: table_model(torch, conv1_padding=2), {}, 1, 28),
}


@pytest.mark.parametrize("name", PYTORCH_MODELS)
def test_pytorch_models_through_npz_and_state_dict(torch, tmp_path, level, name):
    build, options, in_channels, size = PYTORCH_MODELS[name]
    torch.manual_seed(11)
    module = build(torch).eval()
    save_like_users(module, tmp_path / "model.npz")
    x = torch.randn(37, in_channels, size, size, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = module(x).numpy()
    for lenet in (LeNet.from_npz(tmp_path / "model.npz", **options),
                  LeNet.from_state_dict(module.state_dict(), **options)):
        assert lenet.architecture == {**lenet_fast._model.DEFAULT_ARCHITECTURE, **DEFAULT_GEOMETRY, **options}
        lenet = build_model_at_level(lenet, level)
        np.testing.assert_allclose(lenet.forward(x.numpy()), expected, **TOLERANCE)
        np.testing.assert_allclose(lenet.forward(x.numpy()[:1]), expected[:1], **TOLERANCE)
        np.testing.assert_array_equal(lenet.predict(x.numpy()), expected.argmax(axis=1))


# ---------------------------------------------------------------------------------------------
# save_npz and the architecture options
# ---------------------------------------------------------------------------------------------

def test_save_npz_round_trip_restores_everything_and_is_byte_stable(tmp_path):
    options = {"conv_activation": "sigmoid", "fc_activation": "identity",
               "output_activation": "tanh", "pool": "avg"}
    original = LeNet(make_random_weights(2, 3, (7, 13, 50, 33, 5)), metadata={"run": [1, "a"]}, **options)
    original.save_npz(tmp_path / "first.npz")
    loaded = LeNet.from_npz(tmp_path / "first.npz")
    assert loaded.architecture == {**options, **DEFAULT_GEOMETRY}
    assert loaded.metadata == {"run": [1, "a"]}
    assert loaded.dimensions == original.dimensions
    for key, value in original.weights.items():
        np.testing.assert_array_equal(loaded.weights[key], value)
    x = images(20, 3, 28)
    np.testing.assert_array_equal(loaded.forward(x), original.forward(x))
    loaded.save_npz(tmp_path / "second.npz")
    assert (tmp_path / "first.npz").read_bytes() == (tmp_path / "second.npz").read_bytes()


def test_option_precedence_explicit_then_stored_then_default(tmp_path):
    from lenet_fast import _weights

    weights = make_random_weights(3)
    _weights.save_npz(tmp_path / "partial.npz", weights,
                      {"architecture": {"conv_activation": "tanh", "pool": "avg"}})
    x = images(9)

    stored = LeNet.from_npz(tmp_path / "partial.npz")
    assert stored.architecture == {"conv_activation": "tanh", "fc_activation": "sigmoid",
                                   "output_activation": "sigmoid", "pool": "avg", **DEFAULT_GEOMETRY}
    explicit = LeNet.from_npz(tmp_path / "partial.npz", pool="max", output_activation="softmax")
    assert explicit.architecture == {"conv_activation": "tanh", "fc_activation": "sigmoid",
                                     "output_activation": "softmax", "pool": "max", **DEFAULT_GEOMETRY}
    for lenet in (stored, explicit):
        np.testing.assert_allclose(lenet.forward(x), reference.forward(x, weights, **lenet.architecture),
                                   **TOLERANCE)

    save_like_users_weights = {key: value for key, value in weights.items()}
    np.savez(tmp_path / "plain.npz", **save_like_users_weights)
    assert LeNet.from_npz(tmp_path / "plain.npz").architecture == {**lenet_fast._model.DEFAULT_ARCHITECTURE,
                                                                   **DEFAULT_GEOMETRY}
    assert LeNet.from_state_dict(weights, fc_activation="relu").architecture["fc_activation"] == "relu"


def test_unknown_option_values_are_rejected(tmp_path):
    from lenet_fast import _weights

    names = "'relu', 'sigmoid', 'tanh', 'identity'"
    with pytest.raises(ValueError, match=exact(f"pool must be one of 'max', 'avg'; got 'min'")):
        LeNet(make_random_weights(), pool="min")
    with pytest.raises(ValueError, match=exact(f"conv_activation must be one of {names}; got 'softmax'")):
        LeNet.from_state_dict(make_random_weights(), conv_activation="softmax")
    _weights.save_npz(tmp_path / "bad.npz", make_random_weights(), {"architecture": {"fc_activation": "gelu"}})
    with pytest.raises(ValueError, match=exact(
            f"{tmp_path / 'bad.npz'}: '__lenet_fast__.npy': metadata['architecture']['fc_activation'] "
            f"must be one of {names}; got 'gelu'")):
        LeNet.from_npz(tmp_path / "bad.npz")
    assert LeNet.from_npz(tmp_path / "bad.npz", fc_activation="relu").architecture["fc_activation"] == "relu"


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
    ],
    ids=["int32", "uint8", "bool", "complex", "object", "int-list", "str"],
)
def test_non_float_input_is_a_type_error(model, x, found):
    for method in (model.forward, model.predict):
        with pytest.raises(TypeError, match=exact(FLOAT_ONLY + found)):
            method(x)


@pytest.mark.parametrize(
    "shape",
    [(2, 1, 30, 30), (2, 1, 32, 28), (2, 3, 32, 32), (2, 2, 28, 28), (32, 32), (2, 1, 1, 32, 32),
     (1024,), ()],
)
def test_wrong_shapes_are_value_errors(model, shape):
    x = np.zeros(shape, np.float32)
    for method in (model.forward, model.predict):
        with pytest.raises(ValueError, match=exact(f"x must have shape {SHAPES_1}; got {shape}")):
            method(x)


def test_three_channel_model_names_its_shapes():
    lenet = LeNet(make_random_weights(0, 3))
    message = "x must have shape (N, 3, 32, 32) or (N, 3, 28, 28); got "
    for shape in [(2, 1, 32, 32), (2, 32, 32), (2, 3, 30, 30)]:
        with pytest.raises(ValueError, match=exact(message + str(shape))):
            lenet.forward(np.zeros(shape, np.float32))


def test_wrong_3d_shape_error_names_the_shape_passed(model):
    with pytest.raises(ValueError, match=exact(f"x must have shape {SHAPES_1}; got (2, 30, 30)")):
        model.forward(np.zeros((2, 30, 30), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("n", "threads", "dtype"),
                         [(5, 1, np.float32), (40, 1, np.float32), (100, 2, np.float32), (40, 1, np.float64)])
def test_non_finite_input_names_the_first_bad_image(level, bad, n, threads, dtype):
    lenet = build_model_at_level(LeNet(make_random_weights()), level)
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


def test_non_finite_index_counts_across_conversion_chunks(model):
    x = np.zeros((5000, 28, 28), np.float64)   # converted in chunks of at most 4096 images
    x[4500, 3, 3] = np.inf
    x[4501, 3, 3] = np.nan
    with pytest.raises(ValueError, match=exact(
            "x[4500] contains NaN or infinity; pass check_finite=False to skip this check")):
        model.predict(x)


def test_check_finite_false_leaves_other_images_unaffected(level):
    lenet = build_model_at_level(LeNet(make_random_weights(), output_activation="softmax"), level)
    clean = images(45)
    expected = lenet.forward(clean)
    dirty = clean.copy()
    bad = [0, 3, 17, 33, 44]     # in full groups, a padded group and one-image tails
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
    assert np.isnan(lenet.forward(dirty[33:34], check_finite=False)).all()


# ---------------------------------------------------------------------------------------------
# Input conversions
# ---------------------------------------------------------------------------------------------

def unaligned(x):
    buffer = np.empty(x.nbytes + 1, np.uint8)
    view = buffer[1:].view(np.float32).reshape(x.shape)
    view[...] = x
    assert not view.flags.aligned
    return view


def read_only(x):
    x = x.copy()
    x.setflags(write=False)
    return x


CONVERSIONS = {
    "float64": lambda x: x.astype(np.float64),
    "longdouble": lambda x: x.astype(np.longdouble),
    "fortran": np.asfortranarray,
    "every-other-image": lambda x: np.repeat(x, 2, axis=0)[::2],
    "channel-last-transposed": lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
    "read-only": read_only,
    "big-endian": lambda x: x.astype(">f4"),
    "unaligned": unaligned,
    "list": lambda x: x.tolist(),
    "n-h-w": lambda x: x[:, 0],
}


@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("conversion", CONVERSIONS)
def test_input_conversions_give_the_float32_results(model, conversion, size):
    x = images(21, size=size)
    converted = CONVERSIONS[conversion](x)
    np.testing.assert_array_equal(model.forward(converted), model.forward(x))
    np.testing.assert_array_equal(model.predict(converted), model.predict(x))
    np.testing.assert_array_equal(x, images(21, size=size))   # the input is not modified


def test_float16_and_negative_strides_convert_their_values(model):
    x = images(21)
    half = x.astype(np.float16)
    np.testing.assert_array_equal(model.forward(half), model.forward(half.astype(np.float32)))
    for view in (x[::-1], x[:, :, ::-1, ::-1], x[::-3]):
        np.testing.assert_array_equal(model.forward(view), model.forward(np.ascontiguousarray(view)))


def test_large_converted_batch_matches_float32(model):
    x = images(64, size=28, seed=3)
    big = np.concatenate([x] * 80).astype(np.float64)   # 5120 images: two conversion chunks
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


@pytest.mark.parametrize("shape", [(0, 1, 32, 32), (0, 1, 28, 28), (0, 28, 28)])
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
        LeNet(make_random_weights(), num_threads=value)
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
    assert LeNet(make_random_weights(), num_threads=np.int64(2)).num_threads == 2
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

@pytest.mark.parametrize("duplicate", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy, copy.copy],
                         ids=["pickle", "deepcopy", "copy"])
def test_pickle_and_copies(duplicate):
    original = LeNet(make_random_weights(5, 3, (7, 13, 50, 33, 5)), pool="avg", output_activation="softmax",
                     num_threads=1, metadata={"note": "x"})
    clone = duplicate(original)
    assert clone.architecture == original.architecture
    assert clone.metadata == {"note": "x"} and clone.num_threads == 1
    assert clone.isa == _dispatch.kernels.ISA
    for key, value in original.weights.items():
        np.testing.assert_array_equal(clone.weights[key], value)
        assert not clone.weights[key].flags.writeable
    x = images(21, 3, 28)
    np.testing.assert_array_equal(clone.forward(x), original.forward(x))
    np.testing.assert_array_equal(clone.predict(x), original.predict(x))


def test_concurrent_calls_from_python_threads_match_single_threaded():
    lenet = LeNet(make_random_weights(6), output_activation="softmax")
    batches = [images(n, size=28, seed=n) for n in (1, 7, 21, 33, 100)]
    expected = [lenet.forward(x) for x in batches]
    failures, calls = [], [0] * 8
    deadline = time.monotonic() + 2.0

    def worker(index):
        try:
            while time.monotonic() < deadline:
                for j in range(len(batches)):
                    k = (j + index) % len(batches)
                    if index % 2:
                        if not np.array_equal(lenet.forward(batches[k], num_threads=2), expected[k]):
                            failures.append(f"thread {index}: forward of batch {k} differs")
                    elif not np.array_equal(lenet.predict(batches[k]), expected[k].argmax(axis=1)):
                        failures.append(f"thread {index}: predict of batch {k} differs")
                    calls[index] += 1
        except Exception as exc:   # reported in the main thread
            failures.append(f"thread {index}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert min(calls) >= len(batches)


MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np
from lenet_fast import LeNet

rng = np.random.default_rng(0)
weights = {key: np.asarray(value, np.float32) for key, value in np.load(sys.argv[1]).items()}
model = LeNet(weights)
model.predict(np.zeros((300, 1, 28, 28), np.float32))   # threads and workspaces exist now

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

result = {}
# float32 C-contiguous (the fast path).  np.zeros pages are mapped to the shared zero page when
# read, so the 3 GB input itself does not enter the resident set; the output is touched first.
x = np.zeros((1_000_000, 1, 28, 28), np.float32)
labels = np.full(1_000_000, -1, np.int64)
before = peak_mb()
model.predict(x, out=labels)
result["float32"] = peak_mb() - before
result["float32_labels"] = sorted(set(labels.tolist()))
# A zero-stride float64 view of 200,000 images: converted to float32 in chunks.
image = rng.normal(size=(1, 1, 28, 28))
before = peak_mb()
labels = model.predict(np.broadcast_to(image, (200_000, 1, 28, 28)))
result["converted"] = peak_mb() - before - labels.nbytes / 2**20
result["converted_labels"] = sorted(set(labels.tolist()))
result["zero_label"] = int(model.predict(np.zeros((1, 28, 28), np.float32))[0])
result["image_label"] = int(model.predict(image)[0])
print(json.dumps(result))
"""


def test_million_image_predict_runs_in_bounded_memory(tmp_path):
    np.savez(tmp_path / "weights.npz", **make_random_weights(7))
    package_root = str(Path(lenet_fast.__file__).resolve().parent.parent)
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), str(tmp_path / "weights.npz")],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": package_root},
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["float32"] < 64, f"peak RSS grew by {result['float32']:.0f} MB"
    assert result["converted"] < 64, f"peak RSS grew by {result['converted']:.0f} MB"
    assert result["float32_labels"] == [result["zero_label"]]
    assert result["converted_labels"] == [result["image_label"]]


@pytest.mark.parametrize("metadata, problem", [
    ({"architecture": ["relu"]}, "metadata['architecture'] must be a dict; got list"),
    ({"architecture": {"pool": "median"}},
     "metadata['architecture']['pool'] must be one of 'max', 'avg'; got 'median'"),
    ({"architecture": {"dropout": "yes"}}, "metadata['architecture'] has an unknown option 'dropout'"),
    ({"preprocessing": {"scale": 10 ** 400, "mean": 0, "std": 1}},
     "metadata['preprocessing']['scale'] must be a positive finite number"),
    ({"classes": ["a", "b"]}, "metadata['classes'] must be a list of 10 strings"),
])
def test_unusable_stored_metadata_is_a_weight_file_error_naming_the_file(tmp_path, metadata, problem):
    from lenet_fast import WeightFileError
    from lenet_fast._weights import save_npz

    path = tmp_path / "model.npz"
    save_npz(path, make_random_weights(2), metadata)
    with pytest.raises(WeightFileError, match="^" + re.escape(f"{path}: '__lenet_fast__.npy': {problem}")):
        LeNet.from_npz(path)


def test_pickled_model_keeps_a_default_thread_count_a_default(monkeypatch):
    default = pickle.dumps(LeNet(make_random_weights(2)))
    explicit = pickle.dumps(LeNet(make_random_weights(2), num_threads=1))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pickle.loads(default).num_threads == 3
    assert pickle.loads(explicit).num_threads == 1
