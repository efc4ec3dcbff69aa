"""Reliability and security evidence (issue 5): hostile files, hostile inputs, concurrency, memory.

What tests/test_weights.py already proves about hostile .npz files (object members, truncated and
corrupt zips, bad headers, absurd header shapes, mismatched-size zip bombs, duplicates, metadata)
is not repeated here.  Memory is measured in a fresh subprocess (peak RSS from ``ru_maxrss``,
current RSS from /proc), so the test process's own allocations do not blur the numbers.
Durations of the long-running checks scale with ``LENET_FAST_SAFETY_SECONDS`` (default 3).
"""

import gzip
import io
import json
import mmap
import os
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

import lenet_fast
from lenet_fast import LeNet, WeightFileError, reference
from lenet_fast._weights import canonical_shapes, load_npz
from test_weights import CreatesMarkerWhenUnpickled

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SECONDS = float(os.environ.get("LENET_FAST_SAFETY_SECONDS", "3"))
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(lenet_fast.__file__)))
LANES = lenet_fast._dispatch.kernels.LANES
BAD_INPUT = "contains NaN or infinity; pass check_finite=False to skip this check"


def make_weights(in_channels=1, conv1=6, conv2=16, conv3=120, fc1=84, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    shapes = canonical_shapes(in_channels=in_channels, conv1_channels=conv1, conv2_channels=conv2,
                              conv3_channels=conv3, fc1_units=fc1, n_classes=n_classes)
    # Scaled like a trained net (fan-in) so that outputs vary between images.
    return {key: (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)
            for key, shape in shapes.items()}


def images(n, in_channels=1, size=32, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, in_channels, size, size)).astype(dtype)


@pytest.fixture(scope="module")
def model():
    return LeNet(make_weights(), num_threads=2)


MEMORY_HELPERS = """
import json, os, resource, sys
import numpy as np
from test_safety import make_weights, images
from lenet_fast import LeNet

def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def run_python(code, timeout=120, env=None):
    """Run `code` after `MEMORY_HELPERS` in a fresh interpreter that imports the same lenet_fast
    as this process; return the JSON object it prints on its last line of stdout."""
    code = MEMORY_HELPERS + textwrap.dedent(code)
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT, os.path.dirname(__file__), environment.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=timeout, env=environment)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])



linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, ru_maxrss in KiB")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def test_pickled_npy_file_is_rejected_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "unpickled.marker"
    payload = np.empty(3, dtype=object)
    payload[...] = CreatesMarkerWhenUnpickled(marker)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(CreatesMarkerWhenUnpickled(marker)))
    for name in ("evil.npy", "evil.pkl"):
        with pytest.raises(WeightFileError, match="^" + re.escape(
            f"{tmp_path / name}: expected a .npz (zip) archive, found an unreadable file (BadZipFile: ")):
            LeNet.from_npz(tmp_path / name)
    assert not marker.exists()


def write_npz(path, arrays, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            npy_format.write_array(member, np.asarray(value), allow_pickle=False)
            archive.writestr(f"{key}.npy", member.getvalue())


@linux_only
def test_declared_shape_too_large_for_the_model_is_rejected_from_the_header(tmp_path):
    # A 0.4 MB file whose conv1.weight is a consistent, deflated 128 MiB float64 array of a shape
    # no LeNet can use: rejected from the header without reading or allocating the data.
    path = tmp_path / "large.npz"
    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (4096, 4096, 1, 1)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in make_weights().items():
            if key != "conv1.weight":
                member = io.BytesIO()
                npy_format.write_array(member, value)
                archive.writestr(f"{key}.npy", member.getvalue())
        with archive.open("conv1.weight.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(128):
                member.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    result = run_python(f"""
        import time
        from lenet_fast import WeightFileError
        before = peak_mb()
        started = time.perf_counter()
        try:
            LeNet.from_npz({str(path)!r})
            message = None
        except WeightFileError as exc:
            message = str(exc)
        print(json.dumps({{"message": message, "grew": peak_mb() - before,
                          "seconds": time.perf_counter() - started}}))
    """)
    assert result["message"] == (f"{path}: 'conv1.weight': expected shape (conv1_channels, "
                                 "in_channels, 5, 5), found (4096, 4096, 1, 1)")
    assert result["grew"] < 16, result
    assert result["seconds"] < 1.0, result


def test_mismatched_member_dtype_is_rejected_from_the_header(tmp_path):
    weights = make_weights()
    path = tmp_path / "ints.npz"
    write_npz(path, {**weights, "fc2.weight": weights["fc2.weight"].astype(np.int32)})
    with pytest.raises(WeightFileError, match=(
        r"'fc2\.weight': expected floating point \(float16, float32 or float64\), found dtype int32$"
    )):
        load_npz(path)


def npy_with_header_text(text, data=b""):
    padding = (-(10 + len(text) + 1)) % 64
    return (b"\x93NUMPY\x01\x00" + (len(text) + padding + 1).to_bytes(2, "little") + text
            + b" " * padding + b"\n" + data)


@pytest.mark.parametrize(("header", "problem"), [
    # Found by tests/fuzz/fuzz_npz.py: numpy's header parser raised tokenize.TokenError.
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1,", "unreadable .npy member (TokenError: "),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 5, 5)} ]", "unreadable .npy member (TokenError: "),
    (b"(" * 4000 + b")" * 4000, "unreadable .npy member ("),
    # Longer than numpy's own limit for untrusted headers: refused before it is read.
    (b"(" * 5000 + b")" * 5000, "expected a .npy header of at most 10,000 bytes, found a header "
                                "length field of 10,038"),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 5, 5)} x",
     "unreadable .npy member (ValueError: "),
    (b"{'descr': 'xyz', 'fortran_order': False, 'shape': (6, 1, 5, 5)}", "unreadable .npy member (ValueError: "),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-6, -1, 5, 5)}",
     "expected a LeNet-5 array shape (at most 4 axes of at most 100000), found (-6, -1, 5, 5)"),
])
def test_unparseable_npy_headers_raise_weight_file_error(tmp_path, header, problem):
    path = tmp_path / "header.npz"
    members = {f"{key}.npy": io.BytesIO() for key in make_weights()}
    for key, value in make_weights().items():
        npy_format.write_array(members[f"{key}.npy"], value)
    with zipfile.ZipFile(path, "w") as archive:
        for name, member in members.items():
            content = npy_with_header_text(header) if name == "conv1.weight.npy" else member.getvalue()
            archive.writestr(name, content)
    with pytest.raises(WeightFileError, match="^" + re.escape(f"{path}: 'conv1.weight.npy': {problem}")):
        load_npz(path)


@pytest.mark.parametrize("dense_conv3", [False, True])
def test_fortran_order_and_big_endian_members_load_exactly_through_lenet(tmp_path, dense_conv3):
    weights = make_weights(in_channels=3)
    hostile = {key: np.asfortranarray(value).astype(">f4" if index % 2 else ">f8", order="K")
               for index, (key, value) in enumerate(weights.items())}
    if dense_conv3:
        hostile["conv3.weight"] = np.asfortranarray(weights["conv3.weight"].reshape(120, -1))
    write_npz(tmp_path / "odd.npz", hostile)
    loaded = LeNet.from_npz(tmp_path / "odd.npz")
    for key, value in loaded.weights.items():
        assert value.dtype == np.dtype(np.float32) and value.dtype.isnative and value.flags.c_contiguous
        np.testing.assert_array_equal(value, weights[key], err_msg=key)
    x = images(20, in_channels=3)
    np.testing.assert_array_equal(loaded.forward(x), LeNet(weights).forward(x))


def test_model_save_load_save_is_byte_for_byte_stable(tmp_path):
    model = LeNet(make_weights(), conv_activation="tanh", pool="avg", output_activation="softmax",
                  metadata={"note": "é", "numbers": [1, 2.5]})
    model.save_npz(tmp_path / "first.npz")
    loaded = LeNet.from_npz(tmp_path / "first.npz")
    loaded.save_npz(tmp_path / "second.npz")
    assert (tmp_path / "first.npz").read_bytes() == (tmp_path / "second.npz").read_bytes()
    assert loaded.architecture == model.architecture
    x = images(9)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


# IDX files: tests/test_datasets.py covers bad magic, lying dimensions, truncation and trailing
# data; here only the peak RSS of a huge declared size, measured outside the test process.

try:
    from lenet_fast import datasets
except ImportError:  # written concurrently; the IDX tests run once it exists
    datasets = None
needs_datasets = pytest.mark.skipif(datasets is None, reason="lenet_fast.datasets is not there yet")


def idx_header(code, shape):
    return bytes([0, 0, code, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()


@linux_only
@needs_datasets
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gzip"])
def test_idx_huge_declared_size_is_rejected_without_allocating(tmp_path, compressed):
    # 2**32-1 x 2**32-1 x 255 float64 declared; a few bytes of data present.
    content = idx_header(0x0E, (2**32 - 1, 2**32 - 1, 255)) + bytes(64)
    path = tmp_path / "huge.idx"
    path.write_bytes(gzip.compress(content) if compressed else content)
    result = run_python(f"""
        from lenet_fast import datasets
        before = peak_mb()
        try:
            datasets.read_idx({str(path)!r})
            message = None
        except datasets.DataFileError as exc:
            message = str(exc)
        print(json.dumps({{"message": message, "grew": peak_mb() - before}}))
    """)
    assert result["message"] and result["message"].startswith(f"{path}: header declares ")
    assert result["grew"] < 16, result


@needs_datasets
def test_idx_zero_sized_items_cannot_make_chunks_loop_for_ever(tmp_path):
    # Found by tests/fuzz/fuzz_idx.py: 167772160 x 0 x 5 int16 declares no data bytes.
    path = tmp_path / "zero-items.idx"
    path.write_bytes(idx_header(0x0B, (167772160, 0, 5)))
    started = time.perf_counter()
    try:
        with datasets.IdxReader(path) as reader:
            for _ in reader.chunks(1):
                assert time.perf_counter() - started < 2, "still yielding empty chunks after 2 s"
    except datasets.DataFileError:
        pass


# ---------------------------------------------------------------------------------------------
# Inputs: non-finite values
# ---------------------------------------------------------------------------------------------

def bad_input_message(index):
    return rf"^x\[{index}\] {BAD_INPUT.replace('.', '[.]')}$"


@pytest.mark.parametrize(("n", "bad", "threads"), [
    (1, [0], 1),                                      # batch 1 (stack workspace path)
    (2 * LANES, [LANES + 3, LANES + 9], 1),           # inside the second lane group
    (3 * LANES + 5, [3 * LANES + 4], 1),              # in the tail, one image at a time
    (3 * LANES + LANES - 1, [3 * LANES + 2], 1),      # in a partial lane group tail
    (64 * LANES, [40 * LANES + 1, 60 * LANES], 2),    # two threads, both find one
    (64 * LANES, [5, 63 * LANES], 2),                 # first thread's is first
    (64 * LANES + 3, [64 * LANES + 2], 2),            # two threads, in the tail
])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_the_first_bad_image(model, n, bad, threads, value):
    x = images(n)
    for index in bad:
        x[index, 0, 7 * index % 32, 11 * index % 32] = value
    for _ in range(5 if threads > 1 else 1):  # the index comes from an atomic min across threads
        with pytest.raises(ValueError, match=bad_input_message(min(bad))):
            model.predict(x, num_threads=threads)
        with pytest.raises(ValueError, match=bad_input_message(min(bad))):
            model.forward(x, num_threads=threads)


def test_non_finite_input_index_in_converted_chunks(model):
    x = images(9000, dtype=np.float64)  # converted to float32 in chunks of at most 4096 images
    x[8999, 0, 31, 31] = np.nan
    x[5000, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=bad_input_message(5000)):
        model.predict(x)
    halves = images(3, dtype=np.float16)
    halves[2, 0, 0, 0] = np.float16(np.inf)
    with pytest.raises(ValueError, match=bad_input_message(2)):
        model.predict(halves)


@pytest.mark.parametrize("n", [1, LANES + 3, 8 * LANES + 1])
@pytest.mark.parametrize("output_activation", ["sigmoid", "softmax"])
def test_check_finite_false_only_affects_the_bad_images(n, output_activation):
    model = LeNet(make_weights(), output_activation=output_activation, num_threads=2)
    x = images(n)
    clean_scores, clean_labels = model.forward(x), model.predict(x)
    bad = sorted({0, n // 2, n - 1})
    for value in (np.nan, np.inf, -np.inf):
        poisoned = x.copy()
        poisoned[bad, 0, 3, 4] = value
        scores = model.forward(poisoned, check_finite=False)
        labels = model.predict(poisoned, check_finite=False)
        good = np.setdiff1d(np.arange(n), bad)
        np.testing.assert_array_equal(scores[good], clean_scores[good])
        np.testing.assert_array_equal(labels[good], clean_labels[good])
        # Bad images: some float32 (NaN, or a finite/infinite value), and a label in range,
        # or -1 where a score is NaN: a NaN never becomes a label.
        assert scores.shape == (n, 10) and scores.dtype == np.float32
        nan_rows = np.isnan(scores).any(axis=1)
        assert labels.dtype == np.int64 and (labels[nan_rows] == -1).all()
        assert ((0 <= labels[~nan_rows]) & (labels[~nan_rows] < 10)).all()


# ---------------------------------------------------------------------------------------------
# Inputs: shapes, dtypes and memory layouts
# ---------------------------------------------------------------------------------------------

def unaligned_float32(array):
    data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
    view = np.frombuffer(b"\0" + data, dtype=np.float32, offset=1).reshape(array.shape)
    assert not view.flags.writeable and (array.size == 0 or not view.flags.aligned)
    return view


def read_only(array):
    array = array.copy()
    array.setflags(write=False)
    return array


LAYOUTS = {
    "negative-strides": lambda x: x[::-1, :, ::-1, ::-1],
    "read-only": read_only,
    "offset-view": lambda x: np.pad(x, ((2, 1), (0, 0), (3, 0), (0, 5)))[2:-1, :, 3:, :-5],
    "every-other-image": lambda x: np.repeat(x, 2, axis=0)[::2],
    "fortran-order": np.asfortranarray,
    "unaligned-float32": unaligned_float32,
    "big-endian": lambda x: x.astype(">f4"),
    "float64": lambda x: x.astype(np.float64),
    "float16": lambda x: x.astype(np.float16),
    "channels-last-transposed": lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
    "nested-list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", [32, 28])
def test_every_layout_gives_the_contiguous_result(model, layout, size):
    x = images(2 * LANES + 3, size=size)
    view = LAYOUTS[layout](x)
    expected = np.ascontiguousarray(np.asarray(view, dtype=np.float32))
    np.testing.assert_array_equal(model.forward(view), model.forward(expected))
    np.testing.assert_array_equal(model.predict(view), model.predict(expected))
    if layout == "read-only":
        assert not view.flags.writeable  # and untouched
        np.testing.assert_array_equal(view, x)


def test_memmap_input(model, tmp_path):
    x = images(LANES + 5)
    stored = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    stored[...] = x
    stored.flush()
    del stored
    for mode in ("r", "c"):
        mapped = np.load(tmp_path / "x.npy", mmap_mode=mode)
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(model.predict(mapped), model.predict(x))
    offset_map = np.memmap(tmp_path / "x.npy", dtype=np.float32, mode="r", offset=128 + 4096,
                           shape=(LANES + 4, 1, 32, 32))  # starts at image 1
    np.testing.assert_array_equal(model.forward(offset_map), model.forward(x[1:]))


def test_empty_batch(model):
    for shape in [(0, 1, 32, 32), (0, 1, 28, 28), (0, 32, 32)]:
        x = np.zeros(shape, np.float32)
        labels, scores = model.predict(x), model.forward(x)
        assert labels.shape == (0,) and labels.dtype == np.int64
        assert scores.shape == (0, 10) and scores.dtype == np.float32


@pytest.mark.parametrize("shape", [
    (1, 1, 1, 32, 32), (2, 1, 32, 32, 1), (1, 2, 1, 32, 32), (32, 32), (),
    (1, 1, 32),  # once reported as (1, 1, 1, 32), after the channel axis was added
    (1, 3, 32, 32), (1, 1, 32, 28), (1, 1, 30, 30), (1, 1, 0, 0), (1, 1, 64, 64),
])
def test_wrong_shapes_raise_a_clear_value_error(model, shape):
    with pytest.raises(ValueError, match=rf"^x must have shape \(N, 1, 32, 32\) or \(N, 1, 28, 28\), "
                                         rf"or \(N, 32, 32\) / \(N, 28, 28\); got {re_tuple(shape)}$"):
        model.predict(np.zeros(shape, np.float32))


def re_tuple(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize(("value", "what"), [
    (np.zeros((1, 1, 32, 32), np.int32), "integer dtype int32"),
    (np.zeros((1, 1, 32, 32), np.uint8), "integer dtype uint8"),
    (np.zeros((1, 1, 32, 32), bool), "boolean dtype bool"),
    (np.zeros((1, 1, 32, 32), np.complex64), "complex dtype complex64"),
    (np.zeros((1, 1, 32, 32), object), "non-numeric dtype object"),
    (np.zeros((1, 1, 32, 32), "U1"), "non-numeric dtype <U1"),
    ("not an image", "non-numeric dtype <U12"),
])
def test_wrong_dtypes_raise_a_clear_type_error(model, value, what):
    with pytest.raises(TypeError, match=rf"; got {what}$"):
        model.predict(value)


@linux_only
def test_huge_broadcast_batch_is_converted_in_bounded_memory():
    # 100,000 images as a stride-0 view of one image: 400 MB if copied at once.
    result = run_python("""
        model = LeNet(make_weights(), num_threads=2)
        one = images(1)
        expected = model.forward(one)
        model.predict(np.broadcast_to(one, (5000, 1, 32, 32)))  # warm-up: workspaces, chunk
        before = peak_mb()
        huge = np.broadcast_to(one, (100_000, 1, 32, 32))
        scores = model.forward(huge)
        print(json.dumps({"grew": peak_mb() - before, "equal": bool((scores == expected).all())}))
    """)
    assert result["equal"]
    assert result["grew"] < 4 + 40, result  # the 4 MB of scores plus slack; never 400 MB


@linux_only
def test_million_image_predict_peak_memory_is_output_plus_workspace():
    # 1,000,000 zero images (4 GB) as a read-only anonymous mapping: its pages are the shared
    # zero page, so they cost no RSS and any copy of the input would show in the peak.
    result = run_python("""
        import mmap
        n = 1_000_000
        buffer = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ)
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
        x = np.frombuffer(buffer, dtype=np.float32).reshape(n, 1, 32, 32)
        model = LeNet(make_weights(), num_threads=2)
        expected = model.predict(x[:1])[0]
        model.predict(x[:4096])  # warm-up: per-thread workspaces
        before = peak_mb()
        labels = model.predict(x)
        print(json.dumps({"grew": peak_mb() - before, "equal": bool((labels == expected).all()),
                          "input_mb": x.nbytes / 2**20}))
    """, timeout=300)
    assert result["equal"]
    assert result["grew"] < 8 + 24, result  # 8 MB of int64 labels, small slack


# ---------------------------------------------------------------------------------------------
# Property-based: the kernels against the NumPy reference
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity"]


CASES = st.fixed_dictionaries({
    "in_channels": st.sampled_from([1, 3]),
    "widths": st.fixed_dictionaries({
        "conv1": st.integers(1, 9), "conv2": st.integers(1, 20), "conv3": st.integers(1, 40),
        "fc1": st.integers(1, 40), "n_classes": st.integers(1, 20)}),
    "options": st.fixed_dictionaries({
        "conv_activation": st.sampled_from(ACTIVATIONS), "fc_activation": st.sampled_from(ACTIVATIONS),
        "output_activation": st.sampled_from(ACTIVATIONS + ["softmax"]),
        "pool": st.sampled_from(["max", "avg"])}),
    "n": st.sampled_from([0, 1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + LANES // 2, 70]),
    "size": st.sampled_from([32, 28]),
    "scale": st.sampled_from([0.0, 1e-3, 1.0, 30.0]),
    "layout": st.sampled_from(sorted(set(LAYOUTS) - {"nested-list"})),
    "threads": st.integers(1, 3),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CASES)
def test_kernels_match_the_reference(case):
    weights = make_weights(case["in_channels"], seed=case["seed"], **case["widths"])
    model = LeNet(weights, num_threads=case["threads"], **case["options"])
    x = (np.random.default_rng(case["seed"]).normal(
        size=(case["n"], case["in_channels"], case["size"], case["size"])) * case["scale"]
    ).astype(np.float32)
    view = LAYOUTS[case["layout"]](x)
    scores, labels = model.forward(view), model.predict(view)
    n_classes = case["widths"]["n_classes"]
    assert scores.shape == (case["n"], n_classes) and scores.dtype == np.float32
    assert labels.shape == (case["n"],) and labels.dtype == np.int64
    if case["n"] == 0:
        return
    x_as_float32 = np.asarray(view, dtype=np.float32)  # float16 layouts round the input
    expected = reference.forward(x_as_float32, weights, **case["options"])
    tolerance = 2e-5 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(scores, expected, rtol=2e-4, atol=tolerance)
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=1))
    # Determinism: the same image gives the same bits in any batch, position and thread count.
    np.testing.assert_array_equal(model.forward(x_as_float32[-1:], num_threads=1), scores[-1:])


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------

def hammer(models, batches, seconds, workers=8):
    """Call predict and forward from `workers` Python threads for `seconds`; return the number of
    calls and every mismatch with the single-threaded results."""
    expected = [[(m.predict(b, num_threads=1), m.forward(b, num_threads=1)) for b in batches]
                for m in models]
    mismatches, calls, errors = [], [0] * workers, []
    start = threading.Barrier(workers)

    def work(worker):
        try:
            rng = np.random.default_rng(worker)
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                which = rng.integers(len(models))
                index = rng.integers(len(batches))
                model, batch = models[which], batches[index]
                labels = model.predict(batch)
                scores = model.forward(batch, num_threads=int(rng.integers(1, 4)))
                want_labels, want_scores = expected[which][index]
                if not (np.array_equal(labels, want_labels) and np.array_equal(scores, want_scores)):
                    mismatches.append((worker, which, index))
                calls[worker] += 1
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return sum(calls), mismatches


BATCH_SIZES = [1, 3, LANES, LANES + 5, 100, 257]


def test_eight_threads_share_one_model():
    model = LeNet(make_weights(), num_threads=2)
    batches = [images(n, seed=n) for n in BATCH_SIZES]
    calls, mismatches = hammer([model], batches, SECONDS)
    assert not mismatches
    assert calls > 8


def test_eight_threads_on_different_models():
    models = [
        LeNet(make_weights(seed=1), num_threads=2),
        LeNet(make_weights(conv1=3, conv2=40, conv3=17, fc1=200, n_classes=3, seed=2), pool="avg",
              output_activation="softmax", num_threads=2),
        LeNet(make_weights(conv1=20, conv2=5, conv3=300, fc1=7, n_classes=31, seed=3),
              conv_activation="tanh", fc_activation="relu", num_threads=1),
        LeNet(make_weights(seed=4), conv_activation="sigmoid", output_activation="identity", num_threads=3),
    ]
    batches = [images(n, seed=n) for n in BATCH_SIZES]
    calls, mismatches = hammer(models, batches, SECONDS)
    assert not mismatches
    assert calls > 8


# ---------------------------------------------------------------------------------------------
# Memory: leaks
# ---------------------------------------------------------------------------------------------

@linux_only
def test_no_leak_over_100000_predict_calls():
    result = run_python("""
        model = LeNet(make_weights(), num_threads=2)
        one, batch = images(1), images(32)
        scores = np.empty((32, 10), np.float32)
        def calls(count):
            for i in range(count):
                if i % 10 == 9:
                    model.predict(batch)
                    model.forward(batch, out=scores)
                else:
                    model.predict(one)
        calls(5_000)
        before = rss_mb()
        calls(95_000)
        print(json.dumps({"grew": rss_mb() - before}))
    """, timeout=300)
    assert result["grew"] < 20, result


@linux_only
def test_no_leak_over_1000_load_free_cycles(tmp_path):
    LeNet(make_weights(conv1=20, conv3=300, fc1=200)).save_npz(tmp_path / "model.npz")
    result = run_python(f"""
        import gc
        x = images(40)
        def cycles(count):
            for _ in range(count):
                model = LeNet.from_npz({str(tmp_path / "model.npz")!r}, num_threads=2)
                model.predict(x)
                del model
        cycles(50)
        gc.collect()
        before = rss_mb()
        cycles(950)
        gc.collect()
        print(json.dumps({{"grew": rss_mb() - before}}))
    """, timeout=300)
    assert result["grew"] < 20, result


def test_thread_workspaces_are_freed_when_threads_exit():
    # Each new OS thread gets its own cached workspace; 200 short-lived threads must not keep 200.
    result = run_python("""
        import threading
        model = LeNet(make_weights(conv1=64, conv2=64), num_threads=1)
        x = images(40)
        def burst(count):
            for _ in range(count):
                thread = threading.Thread(target=model.predict, args=(x,))
                thread.start()
                thread.join()
        burst(20)
        before = rss_mb()
        burst(200)
        print(json.dumps({"grew": rss_mb() - before}))
    """)
    assert result["grew"] < 20, result


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def _child_predicts(path, queue):
    model = LeNet.from_npz(path, num_threads=2)
    queue.put(model.predict(images(300, seed=7)).tolist())


@pytest.mark.parametrize("method", [
    # Found here: GNU libgomp cannot start a thread team in a child forked after the parent ran
    # one, so predict hung in GOMP_parallel until forked children were made to run serially.
    pytest.param("fork", marks=pytest.mark.skipif(sys.platform != "linux", reason="fork: Linux")),
    "spawn",
])
def test_child_process_loads_and_predicts_after_a_multithreaded_predict(tmp_path, method):
    import multiprocessing

    model = LeNet(make_weights(), num_threads=2)
    model.save_npz(tmp_path / "model.npz")
    expected = model.predict(images(300, seed=7), num_threads=2).tolist()  # OpenMP team started
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_child_predicts, args=(str(tmp_path / "model.npz"), queue))
    child.start()
    try:
        result = queue.get(timeout=30)
    except Exception:  # noqa: BLE001 -- queue.Empty: the child hung or died
        result = None
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    assert result == expected, f"{method} child hung or died (exit code {child.exitcode})"
