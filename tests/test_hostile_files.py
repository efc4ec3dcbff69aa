"""Hostile files: crafted .npz archives and members, .npy and PNG files that claim huge sizes,
FIFOs, IDX headers, ONNX graphs (malformed, huge, external data outside the folder) and metadata.
Each is refused with a clear error, cheaply (peak memory measured in a fresh interpreter, VmHWM:
`factories.run_python`), never unpickled, never hung on.  Every crafted file is generated here
and is small.  (Careless commands -- outputs onto inputs, Ctrl-C -- are in test_cli.py.)
"""

import gzip
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

import lenet_fast
from factories import (
    exact,
    normal_weights,
    run_python,
    starts,
    traced_peak,
    unit_normal_weights,
)
from factories import normal_images as images
from lenet_fast import LeNet, WeightFileError, datasets
from lenet_fast._weights import (
    MAX_METADATA_BYTES,
    MAX_PARAMETERS,
    canonical_shapes,
    load_npz,
    save_npz,
)

PACKAGE_PARENT = str(Path(lenet_fast.__file__).resolve().parents[1])
PEAK_LIMIT_MB = 300
SAMPLE_IMAGES = datasets._data_file("fashion-mnist-sample-images-idx3-ubyte.gz")


def child_environment(extra=None):
    return {
        **os.environ,
        "PYTHONPATH": PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(extra or {}),
    }


def run_cli(*args, expect=None, timeout=120, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "lenet_fast", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_environment(env),
    )
    assert "Traceback" not in result.stderr, result.stderr
    if expect is not None:
        assert result.returncode == expect, result.stderr
    return result


# ---------------------------------------------------------------------------------------------
# 1, 2: data loss and misleading output
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 3, 18: small .npz files that claimed huge allocations
# ---------------------------------------------------------------------------------------------


def npz_with_member(path, name, member_bytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in normal_weights().items():
            value = np.zeros_like(value)
            buffer = io.BytesIO()
            npy_format.write_array(buffer, value)
            archive.writestr(
                f"{key}.npy", member_bytes if f"{key}.npy" == name else buffer.getvalue()
            )


@pytest.mark.memory
def test_npy_v2_header_length_claiming_1_gib(tmp_path):
    path = tmp_path / "bomb.npz"
    member = b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30) + b"{" + b" " * 1000
    npz_with_member(path, "conv1.weight.npy", member)
    assert path.stat().st_size < 4000
    result = run_python(f"""
        from lenet_fast import LeNet, WeightFileError
        try:
            LeNet.from_npz({str(path)!r})
        except WeightFileError as exc:
            report(error=str(exc))
    """)
    assert result["error"].endswith(
        "'conv1.weight.npy': expected a .npy header of at most "
        "10,000 bytes, found a header length field of 1,073,741,824"
    )
    assert result["peak_mb"] < PEAK_LIMIT_MB


def largest_widths_npz(path, conv2_channels):
    """A compressed .npz of zeros, float64, with conv2 as wide as one member may be."""
    shapes = canonical_shapes(
        conv1_channels=4096,
        conv2_channels=conv2_channels,
        conv3_channels=4096,
        fc1_units=4096,
        n_classes=1000,
    )
    np.savez_compressed(path, **{key: np.zeros(shape) for key, shape in shapes.items()})
    return sum(int(np.prod(shape)) for shape in shapes.values())


@pytest.mark.memory
def test_compressed_zeros_at_the_largest_widths_are_refused_cheaply(tmp_path):
    path = tmp_path / "zeros.npz"
    parameters = largest_widths_npz(path, 160)
    assert parameters > MAX_PARAMETERS and path.stat().st_size < 600_000
    result = run_python(f"""
        from lenet_fast import LeNet, WeightFileError
        try:
            LeNet.from_npz({str(path)!r})
        except WeightFileError as exc:
            report(error=str(exc))
    """)
    assert result["error"] == (
        f"{path}: expected at most {MAX_PARAMETERS:,} parameters in all, "
        f"found {parameters:,} (widths 1-4096-160-4096-4096-1000)"
    )
    assert result["peak_mb"] < PEAK_LIMIT_MB


@pytest.mark.memory
def test_the_largest_accepted_model_loads_within_the_memory_bound(tmp_path):
    path = tmp_path / "largest.npz"
    shapes = canonical_shapes(
        conv1_channels=1000, conv2_channels=100, conv3_channels=1000, fc1_units=2000, n_classes=500
    )
    parameters = sum(int(np.prod(shape)) for shape in shapes.values())
    assert 0.9 * MAX_PARAMETERS < parameters <= MAX_PARAMETERS
    np.savez_compressed(path, **{key: np.zeros(shape) for key, shape in shapes.items()})
    result = run_python(f"""
        from lenet_fast import LeNet
        report(classes=LeNet.from_npz({str(path)!r}).n_classes)
    """)
    assert result["classes"] == 500
    assert result["peak_mb"] < PEAK_LIMIT_MB


def test_parameter_cap_applies_to_in_memory_weights_too():
    shapes = canonical_shapes(
        conv1_channels=4096, conv2_channels=100, conv3_channels=4096, fc1_units=4096
    )
    fake = {
        key: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, [0] * len(shape))
        for key, shape in shapes.items()
    }
    with pytest.raises(WeightFileError, match="parameters in all"):
        LeNet(fake)


# ---------------------------------------------------------------------------------------------
# 5, 6, 7: CLI inputs that claimed huge sizes or blocked
# ---------------------------------------------------------------------------------------------


def test_npy_claiming_a_billion_empty_images(tmp_path):
    path = tmp_path / "empty.npy"
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 0)}
    with open(path, "wb") as file:
        npy_format.write_array_header_1_0(file, header)
    assert path.stat().st_size == 128
    started = time.perf_counter()
    result = run_cli("predict", "mnist", path, expect=1)
    assert time.perf_counter() - started < 60
    assert (
        "expected a .npy file of images" in result.stderr and "(1000000000, 28, 0)" in result.stderr
    )


def png_claiming(width, height):
    """A tiny PNG whose header declares `width` x `height` (its pixel data is never decoded)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


@pytest.mark.memory
@pytest.mark.parametrize("size", [12000, 50000])
def test_huge_png_is_rejected_from_its_header(tmp_path, size):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(size, size))
    result = run_python(f"""
        from lenet_fast import cli
        try:
            cli.read_image({str(path)!r})
        except cli.CommandError as exc:
            report(error=str(exc))
    """)
    assert result["error"].startswith(f"{path}: expected a 28 x 28 or 32 x 32 image; found ")
    assert f"{size} x {size}" in result["error"] or f"({size * size} pixels)" in result["error"]
    assert result["peak_mb"] < PEAK_LIMIT_MB
    run_cli("predict", "mnist", path, expect=1)


def test_a_fifo_named_like_an_image_does_not_hang(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    os.mkfifo(folder / "x.png")
    result = run_cli("predict", "mnist", folder, expect=1, timeout=60)
    assert "x.png: expected an image file, found a FIFO, device or socket" in result.stderr
    os.mkfifo(tmp_path / "in.npy")
    result = run_cli("predict", "mnist", tmp_path / "in.npy", expect=1, timeout=60)
    assert "expected a regular file, found a FIFO" in result.stderr


# ---------------------------------------------------------------------------------------------
# 8: threads
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 4, 9, 10: ONNX
# ---------------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lenet_fast.onnx import ONNXImportError  # noqa: E402


def identity_chain_model(length, unused_constants=0):
    nodes = [
        helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"id{i}") for i in range(length)
    ]
    nodes += [
        helper.make_node(
            "Constant",
            [],
            [f"c{i}"],
            name=f"c{i}",
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        )
        for i in range(unused_constants)
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info(f"t{length}", TensorProto.FLOAT, [1, 10])],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize("length, constants", [(8000, 0), (1, 16000)])
def test_onnx_import_is_linear_in_the_node_count(length, constants):
    proto = identity_chain_model(length, constants)
    started = time.perf_counter()
    with pytest.raises(ONNXImportError, match="expected two or three Conv layers"):
        LeNet.from_onnx(proto)
    # Quadratic import took 36 s (8,000 nodes) and 10 s (16,000 constants); linear takes ~0.1 s.
    assert time.perf_counter() - started < 5


@pytest.fixture(scope="module")
def lenet_onnx():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.onnx")
        LeNet(normal_weights()).to_onnx(path)
        return onnx.load(path)


def named(proto, kind, name):
    items = proto.graph.node if kind == "node" else proto.graph.initializer
    return next(item for item in items if item.name == name)


def copy(proto):
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    return result


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda m: named(m, "node", "fc1").input.pop(),
            None,
        ),  # a Gemm without its bias is fine (zero bias)
        (
            lambda m: (named(m, "node", "fc1").input.pop(), named(m, "node", "fc1").input.pop()),
            "unsupported Gemm node 'fc1': expected a weight as input 1, found none",
        ),
        (
            lambda m: named(m, "initializer", "conv2.weight").dims.__delitem__(slice(1, 4)),
            "initializer 'conv2.weight': malformed tensor",
        ),
        (
            lambda m: named(m, "initializer", "conv2.weight").CopyFrom(
                numpy_helper.from_array(np.zeros(16 * 6 * 25, np.float32), "conv2.weight")
            ),
            "unsupported Conv node 'conv2': expected a 4-D weight 'conv2.weight', found shape (2400,)",
        ),
        (
            lambda m: setattr(named(m, "initializer", "fc2.bias"), "data_type", 999),
            "initializer 'fc2.bias': malformed tensor",
        ),
        (
            lambda m: setattr(
                named(m, "initializer", "fc2.weight"),
                "raw_data",
                named(m, "initializer", "fc2.weight").raw_data[:-4],
            ),
            "initializer 'fc2.weight': malformed tensor",
        ),
        (
            lambda m: named(m, "initializer", "fc2.weight").dims.extend([1 << 20, 1 << 20]),
            "initializer 'fc2.weight': expected at most 16,777,216 elements",
        ),
        (
            lambda m: named(m, "initializer", "conv3.bias").CopyFrom(
                numpy_helper.from_array(np.zeros(7, np.float32), "conv3.bias")
            ),
            "'conv3.bias': expected shape (120,), found (7,)",
        ),
    ],
)
def test_malformed_onnx_raises_onnx_import_error_naming_file_and_place(
    lenet_onnx, tmp_path, mutate, message
):
    proto = copy(lenet_onnx)
    mutate(proto)
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    if message is None:
        LeNet.from_onnx(path)
        return
    with pytest.raises(ONNXImportError) as info:
        LeNet.from_onnx(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    with pytest.raises(ValueError):
        LeNet.from_onnx(proto)
    assert lenet_fast.ONNXImportError is ONNXImportError


def external_model(tmp_path, location):
    """The model with fc2.bias stored as external data at `location` (not checked by onnx)."""
    LeNet(normal_weights()).to_onnx(tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    tensor = named(proto, "initializer", "fc2.bias")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "40")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "model").mkdir(exist_ok=True)
    path = tmp_path / "model" / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = external_model(tmp_path, "bias.bin")
    (tmp_path / "model" / "bias.bin").write_bytes(np.arange(10, dtype="<f4").tobytes())
    np.testing.assert_array_equal(LeNet.from_onnx(path).weights["fc2.bias"], np.arange(10))


@pytest.mark.parametrize(
    "location", ["./x/../../secret.bin", "../secret.bin", "link.bin", "/etc/passwd"]
)
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(bytes(40))
    path = external_model(tmp_path, location)
    (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(
        ONNXImportError,
        match="initializer 'fc2.bias': external data location "
        ".* is not a file inside the model's folder",
    ):
        LeNet.from_onnx(path)


def test_external_data_of_the_wrong_length_is_refused(tmp_path):
    path = external_model(tmp_path, "bias.bin")
    (tmp_path / "model" / "bias.bin").write_bytes(bytes(12))
    with pytest.raises(ONNXImportError, match="does not hold dims"):
        LeNet.from_onnx(path)


def test_onnx_minimum_version_has_its_own_path_check():
    # The repository's pyproject.toml (next to tests/), not the installed package's parent folder.
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"onnx>=1.15"' not in text and '"onnx>=1.17"' in text


# ---------------------------------------------------------------------------------------------
# 11, 12, 13: what saves must load; checks in the precision used; NaN never becomes a label
# ---------------------------------------------------------------------------------------------


def test_large_metadata_that_saves_also_loads(tmp_path):
    names = [f"class number {k}" for k in range(10_000)]
    weights = normal_weights(n_classes=10_000)
    LeNet(weights, metadata={"classes": names}).save_npz(tmp_path / "m.npz")
    assert LeNet.from_npz(tmp_path / "m.npz").classes == names
    with pytest.raises(ValueError, match=f"at most {MAX_METADATA_BYTES:,} bytes as JSON"):
        LeNet(weights, metadata={"notes": "x" * MAX_METADATA_BYTES}).save_npz(tmp_path / "n.npz")
    assert not (tmp_path / "n.npz").exists()


@pytest.mark.parametrize("std", [1e-60, 1e-40])
def test_preprocessing_that_underflows_in_float32_is_refused_at_load(tmp_path, std):
    metadata = {"preprocessing": {"scale": 255.0, "mean": 0.5, "std": std}}
    np.savez(
        tmp_path / "m.npz",
        **normal_weights(),
        __lenet_fast__=np.frombuffer(json.dumps(metadata).encode(), np.uint8),
    )
    with pytest.raises(WeightFileError, match="must map pixels 0..255 to finite float32 values"):
        LeNet.from_npz(tmp_path / "m.npz")


# ---------------------------------------------------------------------------------------------
# 14, 16: untrusted strings on the terminal; odd metadata
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 15, 17: Ctrl-C during a large batch; out= overlapping the input
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# CLI friction
# ---------------------------------------------------------------------------------------------


def test_idx_reader_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "images.idx")
    with pytest.raises(datasets.DataFileError, match="expected a regular file, found a FIFO"):
        datasets.read_idx(tmp_path / "images.idx")


# ---------------------------------------------------------------------------------------------
# Crafted .npz members
# ---------------------------------------------------------------------------------------------


def test_pickled_npy_file_is_rejected_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "unpickled.marker"
    payload = np.empty(3, dtype=object)
    payload[...] = CreatesMarkerWhenUnpickled(marker)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(CreatesMarkerWhenUnpickled(marker)))
    for name in ("evil.npy", "evil.pkl"):
        with pytest.raises(
            WeightFileError,
            match="^"
            + re.escape(
                f"{tmp_path / name}: expected a .npz (zip) archive, found an unreadable file (BadZipFile: "
            ),
        ):
            LeNet.from_npz(tmp_path / name)
    assert not marker.exists()


@pytest.mark.memory
def test_declared_shape_too_large_for_the_model_is_rejected_from_the_header(tmp_path):
    # A 0.4 MB file whose conv1.weight is a consistent, deflated 128 MiB float64 array of a shape
    # no LeNet can use: rejected from the header without reading or allocating the data.
    path = tmp_path / "large.npz"
    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (4096, 4096, 1, 1)}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in normal_weights().items():
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
    assert result["message"] == (
        f"{path}: 'conv1.weight': expected shape (conv1_channels, "
        "in_channels, 5, 5), found (4096, 4096, 1, 1)"
    )
    assert result["grew"] < 16, result
    assert result["seconds"] < 1.0, result


def test_mismatched_member_dtype_is_rejected_from_the_header(tmp_path):
    weights = normal_weights()
    path = tmp_path / "ints.npz"
    write_npz(path, {**weights, "fc2.weight": weights["fc2.weight"].astype(np.int32)})
    with pytest.raises(
        WeightFileError,
        match=(
            r"'fc2\.weight': expected floating point \(float16, float32 or float64\), found dtype int32$"
        ),
    ):
        load_npz(path)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        # Found by tests/fuzz/fuzz_npz.py: numpy's header parser raised tokenize.TokenError.
        (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1,",
            "unreadable .npy member (TokenError: ",
        ),
        (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 5, 5)} ]",
            "unreadable .npy member (TokenError: ",
        ),
        (b"(" * 4000 + b")" * 4000, "unreadable .npy member ("),
        # Longer than numpy's own limit for untrusted headers: refused before it is read.
        (
            b"(" * 5000 + b")" * 5000,
            "expected a .npy header of at most 10,000 bytes, found a header length field of 10,038",
        ),
        (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 5, 5)} x",
            "unreadable .npy member (ValueError: ",
        ),
        (
            b"{'descr': 'xyz', 'fortran_order': False, 'shape': (6, 1, 5, 5)}",
            "unreadable .npy member (ValueError: ",
        ),
        (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (-6, -1, 5, 5)}",
            "expected a LeNet-5 array shape (at most 4 axes of at most 100000), found (-6, -1, 5, 5)",
        ),
    ],
)
def test_unparseable_npy_headers_raise_weight_file_error(tmp_path, header, problem):
    path = tmp_path / "header.npz"
    members = {f"{key}.npy": io.BytesIO() for key in normal_weights()}
    for key, value in normal_weights().items():
        npy_format.write_array(members[f"{key}.npy"], value)
    with zipfile.ZipFile(path, "w") as archive:
        for name, member in members.items():
            content = (
                npy_with_header_text(header) if name == "conv1.weight.npy" else member.getvalue()
            )
            archive.writestr(name, content)
    with pytest.raises(
        WeightFileError, match="^" + re.escape(f"{path}: 'conv1.weight.npy': {problem}")
    ):
        load_npz(path)


@pytest.mark.parametrize("dense_conv3", [False, True])
def test_fortran_order_and_big_endian_members_load_exactly_through_lenet(tmp_path, dense_conv3):
    weights = normal_weights(in_channels=3)
    hostile = {
        key: np.asfortranarray(value).astype(">f4" if index % 2 else ">f8", order="K")
        for index, (key, value) in enumerate(weights.items())
    }
    if dense_conv3:
        hostile["conv3.weight"] = np.asfortranarray(weights["conv3.weight"].reshape(120, -1))
    write_npz(tmp_path / "odd.npz", hostile)
    loaded = LeNet.from_npz(tmp_path / "odd.npz")
    for key, value in loaded.weights.items():
        assert (
            value.dtype == np.dtype(np.float32)
            and value.dtype.isnative
            and value.flags.c_contiguous
        )
        np.testing.assert_array_equal(value, weights[key], err_msg=key)
    x = images(20, in_channels=3)
    np.testing.assert_array_equal(loaded.forward(x), LeNet(weights).forward(x))


# ---------------------------------------------------------------------------------------------
# IDX files: tests/test_datasets.py covers bad magic, lying dimensions, truncation and trailing data
# ---------------------------------------------------------------------------------------------


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


def write_npz(path, arrays):
    """An .npz of `arrays` written member by member, whatever their dtype."""
    write_zip(path, {f"{key}.npy": npy_bytes(np.asarray(value)) for key, value in arrays.items()})


def npy_with_header_text(text, data=b""):
    padding = (-(10 + len(text) + 1)) % 64
    return (
        b"\x93NUMPY\x01\x00"
        + (len(text) + padding + 1).to_bytes(2, "little")
        + text
        + b" " * padding
        + b"\n"
        + data
    )


def idx_header(code, shape):
    return bytes([0, 0, code, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()


@pytest.mark.memory
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


# ---------------------------------------------------------------------------------------------
# Crafted .npz archives and members
# ---------------------------------------------------------------------------------------------


class CreatesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_never_loaded(tmp_path):
    marker = tmp_path / "unpickled.marker"
    payload = np.empty((6, 1, 5, 5), dtype=object)
    payload[...] = CreatesMarkerWhenUnpickled(marker)
    np.savez(tmp_path / "evil.npz", **{**unit_normal_weights(), "conv1.weight": payload})
    with pytest.raises(
        WeightFileError,
        match=exact(
            f"{tmp_path / 'evil.npz'}: 'conv1.weight.npy': expected a numeric array, found dtype object "
            "holding Python objects (never unpickled)"
        ),
    ):
        load_npz(tmp_path / "evil.npz")
    assert not marker.exists()


def test_missing_file_and_non_zip_files(tmp_path):
    absent = str(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match=exact(f"weight file {absent!r} does not exist")):
        load_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    unreadable = "expected a .npz (zip) archive, found an unreadable file"
    with pytest.raises(
        WeightFileError, match=starts(f"{tmp_path / 'text.npz'}: {unreadable} (BadZipFile: ")
    ):
        load_npz(tmp_path / "text.npz")
    with pytest.raises(
        WeightFileError, match=starts(f"{tmp_path}: {unreadable} (IsADirectoryError: ")
    ):
        load_npz(tmp_path)


def test_truncated_and_corrupt_archives(tmp_path):
    save_npz(tmp_path / "good.npz", unit_normal_weights())
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        WeightFileError,
        match=starts(
            f"{tmp_path / 'truncated.npz'}: expected a .npz (zip) archive, found an unreadable file (BadZipFile: "
        ),
    ):
        load_npz(tmp_path / "truncated.npz")
    corrupt = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("conv2.weight.npy")
    data_start = info.header_offset + 30 + len(info.filename) + 200  # inside the array data
    corrupt[data_start] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    with pytest.raises(
        WeightFileError,
        match=starts(
            f"{tmp_path / 'corrupt.npz'}: 'conv2.weight.npy': unreadable .npy member (BadZipFile: Bad CRC-32"
        ),
    ):
        load_npz(tmp_path / "corrupt.npz")


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def npy_bytes(array, version=None):
    buffer = io.BytesIO()
    npy_format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def npy_header_only(shape, descr="<f4"):
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def members_with(**replacements):
    members = {f"{key}.npy": npy_bytes(value) for key, value in unit_normal_weights().items()}
    return {**members, **replacements}


def test_non_npy_member_and_bad_headers(tmp_path):
    path = tmp_path / "weights.npz"
    write_zip(path, members_with(**{"README.txt": b"hello"}))
    with pytest.raises(
        WeightFileError,
        match=exact(
            f"{path}: 'README.txt': expected only .npy array members; this name does not end in .npy"
        ),
    ):
        load_npz(path)
    write_zip(path, members_with(**{"conv1.weight.npy": b"garbage that is not an npy file"}))
    with pytest.raises(
        WeightFileError,
        match=starts(f"{path}: 'conv1.weight.npy': unreadable .npy member (ValueError"),
    ):
        load_npz(path)
    write_zip(
        path,
        members_with(**{"conv1.weight.npy": npy_bytes(np.zeros((6, 1, 5, 5), np.float32), (3, 0))}),
    )
    with pytest.raises(
        WeightFileError,
        match=exact(
            f"{path}: 'conv1.weight.npy': expected .npy format version 1.0 or 2.0, found 3.0"
        ),
    ):
        load_npz(path)
    write_zip(
        path, members_with(**{"fc1.bias.npy": npy_bytes(np.zeros(84, np.float32), version=(2, 0))})
    )
    assert load_npz(path)[0]["fc1.bias"].shape == (84,)
    write_zip(
        path, members_with(**{"fc1.bias.npy": npy_bytes(np.zeros(84, np.float32)) + b"trailing"})
    )
    with pytest.raises(
        WeightFileError,
        match=exact(
            f"{path}: 'fc1.bias.npy': the zip directory declares 472 uncompressed bytes, "
            "the .npy header of a float32 array of shape (84,) implies 464"
        ),
    ):
        load_npz(path)
    write_zip(path, members_with(**{"fc1.bias.npy": npy_bytes(np.zeros(84, np.int64))}))
    with pytest.raises(
        WeightFileError,
        match=exact(
            f"{path}: 'fc1.bias': expected floating point (float16, float32 or float64), found dtype int64"
        ),
    ):
        load_npz(path)


IMPOSSIBLE_SHAPE = "expected a LeNet-5 array shape (at most 4 axes of at most 100000)"


def test_duplicate_members_are_rejected(tmp_path):
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in [
            *members_with().items(),
            ("fc2.bias.npy", npy_bytes(np.ones(10, np.float32))),
        ]:
            archive.writestr(name, data)
    with pytest.raises(
        WeightFileError,
        match=exact(f"{path}: 'fc2.bias.npy': expected unique member names, found a duplicate"),
    ):
        load_npz(path)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((5000, 5000), "expected at most 16777216 elements, found 25000000 (shape (5000, 5000))"),
        ((10**15,), f"{IMPOSSIBLE_SHAPE}, found (1000000000000000,)"),
        ((1, 1, 1, 1, 1), f"{IMPOSSIBLE_SHAPE}, found (1, 1, 1, 1, 1)"),
    ],
)
def test_absurd_header_shapes_are_rejected_before_allocation(tmp_path, shape, message):
    path = tmp_path / "absurd.npz"
    write_zip(path, members_with(**{"conv1.weight.npy": npy_header_only(shape)}))
    with (
        traced_peak() as peak,
        pytest.raises(WeightFileError, match=exact(f"{path}: 'conv1.weight.npy': {message}")),
    ):
        load_npz(path)
    assert peak[0] < 4 * 2**20


def test_zip_bomb_is_rejected_quickly_with_little_memory(tmp_path):
    path = tmp_path / "bomb.npz"
    header = npy_header_only((6, 1, 5, 5))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in unit_normal_weights().items():
            if key != "conv1.weight":
                archive.writestr(f"{key}.npy", npy_bytes(value))
        with archive.open("conv1.weight.npy", "w", force_zip64=True) as member:
            member.write(header)
            zeros = bytes(2**20)
            for _ in range(128):
                member.write(zeros)
    assert path.stat().st_size < 2**20  # 128 MiB of zeros compress to almost nothing
    started = time.perf_counter()
    with (
        traced_peak() as peak,
        pytest.raises(
            WeightFileError,
            match=exact(
                f"{path}: 'conv1.weight.npy': the zip directory declares {len(header) + 2**27} uncompressed bytes, "
                f"the .npy header of a float32 array of shape (6, 1, 5, 5) implies {len(header) + 600}"
            ),
        ),
    ):
        load_npz(path)
    assert time.perf_counter() - started < 1.0
    assert peak[0] < 4 * 2**20


def test_metadata_member_errors(tmp_path):
    path = tmp_path / "meta.npz"
    invalid = "expected UTF-8 JSON metadata, found invalid data"
    for payload, message in [
        (np.frombuffer(b"{not json", np.uint8), f"{invalid} (Expecting property name"),
        (np.frombuffer(b"\xff\xfe", np.uint8), f"{invalid} ('utf-8' codec can't decode"),
        (np.frombuffer(b"[1, 2]", np.uint8), "expected a JSON object, found a JSON list"),
        (
            np.zeros(3, np.float32),
            "expected a 1-D uint8 array of UTF-8 JSON, found dtype float32 with shape (3,)",
        ),
    ]:
        write_zip(path, members_with(**{"__lenet_fast__.npy": npy_bytes(payload)}))
        with pytest.raises(
            WeightFileError, match=starts(f"{path}: '__lenet_fast__.npy': {message}")
        ):
            load_npz(path)


def test_metadata_member_is_checked_from_its_header_before_any_data_is_read(tmp_path):
    # 800 MB of zeros declared as a 4-item bytes array: compresses to ~1 MB.
    path = tmp_path / "metadata-bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in unit_normal_weights().items():
            with archive.open(f"{key}.npy", "w") as member:
                npy_format.write_array(member, value)
        header = io.BytesIO()
        npy_format.write_array_header_1_0(
            header, {"descr": "|S200000000", "fortran_order": False, "shape": (4,)}
        )
        with archive.open("__lenet_fast__.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 24)
            for _ in range(800_000_000 // len(chunk)):
                member.write(chunk)
    with (
        traced_peak() as peak,
        pytest.raises(WeightFileError, match=starts(f"{path}: '__lenet_fast__.npy': expected")),
    ):
        load_npz(path)
    assert peak[0] < 16 * 2**20
