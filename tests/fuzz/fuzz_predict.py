"""Fuzz target: bytes -> an array of any dtype, shape, strides and alignment -> LeNet.predict and
LeNet.forward with fuzzed options.

Every call must either raise TypeError or ValueError (wrong dtype, shape, option, or a NaN/inf
in the input or the outputs with check_finite) or return the right shape, dtype and values: the
same bits as the call on ``np.ascontiguousarray(x, dtype=np.float32)``, and label -1 exactly
where an image's outputs are NaN.  Anything else (another exception, a crash, a
wrong answer) is a bug.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness
import numpy as np

with _harness.instrumented_imports():
    from lenet_fast import LeNet
    from lenet_fast._weights import canonical_shapes


def _weights(in_channels, conv1, conv2, conv3, fc1, n_classes):
    rng = np.random.default_rng(0)
    shapes = canonical_shapes(
        in_channels=in_channels,
        conv1_channels=conv1,
        conv2_channels=conv2,
        conv3_channels=conv3,
        fc1_units=fc1,
        n_classes=n_classes,
    )
    return {
        key: (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        for key, shape in shapes.items()
    }


MODELS = [
    LeNet(_weights(1, 6, 16, 120, 84, 10), num_threads=2),
    LeNet(_weights(3, 4, 7, 9, 5, 3), pool="avg", output_activation="softmax", num_threads=2),
]
DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    ">f4",
    ">f8",
    np.uint8,
    np.int32,
    np.int64,
    bool,
    np.complex64,
    object,
    "U3",
    "V4",
    [("a", np.float32)],
]
SIZES = [0, 1, 2, 3, 5, 17, 28, 32, 33]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45, 65504.0, 1e30]
NUM_THREADS = [None, None, 1, 2, 3, 64, 0, -1, 2.0, True, "2"]


def build_array(reader, in_channels):
    """An array, built from the fuzz bytes, that is often (but not always) a valid batch."""
    valid = reader.integer(0, 3) > 0
    if valid:
        n = reader.choice([0, 1, 2, 3, 15, 16, 17, 33])
        size = reader.choice([28, 32])
        shape = (
            [n, size, size] if in_channels == 1 and reader.flag() else [n, in_channels, size, size]
        )
    else:
        shape = [reader.choice(SIZES) for _ in range(reader.integer(0, 5))]
    dtype = np.dtype(
        reader.choice(DTYPES[:3]) if valid and reader.integer(0, 3) else reader.choice(DTYPES)
    )
    count = int(np.prod(shape)) if shape else 1
    if count > 64 * 3 * 32 * 32:  # keep inputs small
        shape, count = [1, in_channels, 32, 32], in_channels * 32 * 32
    values = np.random.default_rng(reader.integer(0, 2**16)).normal(size=count) * reader.choice(
        [1.0, 1e-3, 1e3]
    )
    for _ in range(reader.integer(0, 3) if count else 0):  # special values at fuzzed positions
        values[reader.integer(0, max(0, count - 1))] = reader.choice(SPECIAL)
    with np.errstate(all="ignore"):
        if dtype.kind in "fc":
            array = values.astype(dtype)
        elif dtype.kind in "iub":
            array = np.nan_to_num(values, posinf=0, neginf=0).astype(dtype)
        elif dtype.kind == "O":
            array = values.astype(object)
        else:
            array = np.zeros(count, dtype)
    array = array.reshape(shape)
    transform = reader.integer(0, 7)
    if transform == 1 and array.ndim:  # negative strides
        array = array[::-1] if array.ndim == 1 else array[::-1, ..., ::-1]
    elif transform == 2 and array.ndim >= 2:  # transposed copy viewed back in order
        axes = list(range(array.ndim))[::-1]
        array = np.ascontiguousarray(array.transpose(axes)).transpose(axes)
    elif transform == 3 and array.ndim and array.dtype.kind == "f":  # unaligned
        raw = b"\0" + array.tobytes()
        array = np.frombuffer(raw, dtype=array.dtype, offset=1).reshape(array.shape)
    elif transform == 4 and array.ndim and array.shape[0] == 1:  # stride-0 batch
        array = np.broadcast_to(array, (reader.choice([2, 17, 300]),) + array.shape[1:])
    elif transform == 5 and array.ndim:  # every other image of a larger array
        array = np.repeat(array, 2, axis=0)[::2]
    elif transform == 6:
        array = np.asfortranarray(array)
    if reader.flag() and array.flags.writeable:
        array.setflags(write=False)
    return array


def test_one_input(data):
    reader = _harness.ByteReader(data)
    model = reader.choice(MODELS)
    x = build_array(reader, model.in_channels)
    options = {"check_finite": reader.integer(0, 3) > 0}
    threads = reader.choice(NUM_THREADS)
    if threads is not None:
        options["num_threads"] = threads
    try:
        labels = model.predict(x, **options)
        scores = model.forward(x, **options)
    except (TypeError, ValueError):
        return
    n = x.shape[0]
    assert labels.shape == (n,) and labels.dtype == np.int64, (labels.shape, labels.dtype)
    assert scores.shape == (n, model.n_classes) and scores.dtype == np.float32
    nan_rows = np.isnan(scores).any(axis=1)
    assert not (options["check_finite"] and nan_rows.any()), "a NaN output was returned"
    assert (labels[nan_rows] == -1).all(), "a NaN output became a label"
    assert ((labels[~nan_rows] >= 0) & (labels[~nan_rows] < model.n_classes)).all()
    with np.errstate(all="ignore"):
        contiguous = np.ascontiguousarray(x, dtype=np.float32)
    if contiguous.ndim == 3:
        contiguous = contiguous[:, None]
    expected = model.forward(contiguous, check_finite=False, num_threads=1)
    assert np.array_equal(scores, expected, equal_nan=True), (
        "scores differ from the contiguous input's"
    )
    if options["check_finite"]:
        assert np.isfinite(contiguous).all(), "check_finite let a NaN or infinity through"


if __name__ == "__main__":
    _harness.run(test_one_input, "predict")
