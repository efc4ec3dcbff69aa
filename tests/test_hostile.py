"""Regression tests of issue 9: hostile files and careless commands lose nothing, allocate little
and never hang.  One section per numbered item of the issue; every crafted file is generated here
and is small.  Peak memory is measured in a fresh interpreter (VmHWM), so this process's own
allocations do not blur it.
"""

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

import lenet_fast
from lenet_fast import LeNet, WeightFileError, cli, datasets
from lenet_fast._weights import MAX_METADATA_BYTES, MAX_PARAMETERS, canonical_shapes

PACKAGE_PARENT = str(Path(lenet_fast.__file__).resolve().parents[1])
PEAK_LIMIT_MB = 300
SAMPLE_IMAGES = datasets._data_file("fashion-mnist-sample-images-idx3-ubyte.gz")


def make_weights(seed=0, **dimensions):
    rng = np.random.default_rng(seed)
    return {key: (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)
            for key, shape in canonical_shapes(**dimensions).items()}


@pytest.fixture(scope="module")
def model():
    return LeNet(make_weights(), num_threads=2)


def child_environment(extra=None):
    return {**os.environ, "PYTHONPATH": PACKAGE_PARENT + os.pathsep +
            os.environ.get("PYTHONPATH", ""), **(extra or {})}


def run_child(code, timeout=120, env=None):
    """Run `code` in a fresh interpreter; return the JSON object it reports, with ``peak_mb``:
    the child's peak RSS in MiB.  That is VmHWM, the high-water mark of the child's own address
    space: ``ru_maxrss`` would also count the parent's (Linux carries it over fork and exec)."""
    wrapper = textwrap.dedent("""
        import json, sys
        import numpy, lenet_fast
        def report(**values):
            with open("/proc/self/status") as status:
                peak = next(line for line in status if line.startswith("VmHWM:"))
            values["peak_mb"] = int(peak.split()[1]) / 1024
            print(json.dumps(values))
    """) + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                            timeout=timeout, env=child_environment(env))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(*args, expect=None, timeout=120, env=None):
    result = subprocess.run([sys.executable, "-m", "lenet_fast", *map(str, args)],
                            capture_output=True, text=True, timeout=timeout,
                            env=child_environment(env))
    assert "Traceback" not in result.stderr, result.stderr
    if expect is not None:
        assert result.returncode == expect, result.stderr
    return result


def leftovers(folder):
    return sorted(path.name for path in Path(folder).iterdir() if path.name.endswith(".part"))


# ---------------------------------------------------------------------------------------------
# 1, 2: data loss and misleading output
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("through", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused_before_reading(tmp_path, through):
    images = np.zeros((10, 28, 28), np.uint8)
    np.save(tmp_path / "same.npy", images)
    before = (tmp_path / "same.npy").read_bytes()
    out = tmp_path / "same.npy"
    if through == "symlink":
        out = tmp_path / "link.npy"
        out.symlink_to(tmp_path / "same.npy")
    elif through == "hard link":
        out = tmp_path / "hard.npy"
        os.link(tmp_path / "same.npy", out)
    result = run_cli("predict", "mnist", tmp_path / "same.npy", "--out", out, expect=1)
    assert "is the input" in result.stderr and "refusing to overwrite it" in result.stderr
    assert (tmp_path / "same.npy").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_convert_onto_its_input_is_refused(tmp_path):
    LeNet.pretrained("mnist").save_npz(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    result = run_cli("convert", tmp_path / "m.npz", tmp_path / "m.npz", expect=1)
    assert "is the input" in result.stderr
    assert (tmp_path / "m.npz").read_bytes() == before


def test_model_file_as_output_is_refused(tmp_path):
    LeNet.pretrained("mnist").save_npz(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "m.csv").symlink_to(tmp_path / "m.npz")
    run_cli("predict", tmp_path / "m.npz", tmp_path / "x.npy", "--out", tmp_path / "m.csv",
            expect=1)
    assert (tmp_path / "m.npz").read_bytes() == before


@pytest.mark.parametrize("out", ["x.npy", "x.csv", None])
def test_a_bad_image_part_way_leaves_no_output(tmp_path, out, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        Image.new("L", (28, 28), color=index).save(folder / f"{index}.png")
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "x.npy").write_bytes(b"old contents")
    arguments = ["predict", "mnist", str(folder)] + (["--out", str(tmp_path / out)] if out else [])
    assert cli.main(arguments) == 1
    captured = capsys.readouterr()
    assert "3.png: not a readable image" in captured.err
    assert captured.out == ""                     # not even the CSV header
    assert (tmp_path / "x.npy").read_bytes() == b"old contents"
    assert not (tmp_path / "x.csv").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("out", ["x.npy", "x.csv", None])
def test_ctrl_c_part_way_leaves_no_output(tmp_path, out, monkeypatch, capsys):
    np.save(tmp_path / "in.npy", np.zeros((3 * cli.CHUNK_IMAGES, 28, 28), np.uint8))
    calls = []
    original = LeNet.predict

    def interrupted(self, images, **options):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images, **options)

    monkeypatch.setattr(LeNet, "predict", interrupted)
    arguments = ["predict", "mnist", str(tmp_path / "in.npy"), "--quiet"]
    assert cli.main(arguments + (["--out", str(tmp_path / out)] if out else [])) == 130
    assert calls == [cli.CHUNK_IMAGES, cli.CHUNK_IMAGES]
    assert capsys.readouterr().out == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.npy"]


def test_successful_outputs_replace_the_destination_atomically(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((5, 28, 28), np.uint8))
    (tmp_path / "x.npy").write_bytes(b"old")
    assert cli.main(["predict", "mnist", str(tmp_path / "in.npy"), "--out",
                     str(tmp_path / "x.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "x.npy").shape == (5,)
    assert oct((tmp_path / "x.npy").stat().st_mode & 0o777) != oct(0o600)   # not mkstemp's mode
    assert leftovers(tmp_path) == []
    assert cli.main(["predict", "mnist", str(tmp_path / "in.npy")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_outputs_get_the_umask_without_changing_it(tmp_path, monkeypatch, umask):
    """The temporary file gets the mode open() would give (0o666 less the umask), and the
    process umask is never set for a moment to read it: that would apply to files other
    threads create meanwhile."""
    previous = os.umask(umask)
    try:
        changes = []
        real_umask = os.umask
        monkeypatch.setattr(os, "umask", lambda mask: changes.append(mask) or real_umask(mask))
        LeNet.pretrained("mnist").save_npz(tmp_path / "m.npz")
        np.save(tmp_path / "in.npy", np.zeros((2, 28, 28), np.uint8))
        assert cli.main(["predict", "mnist", str(tmp_path / "in.npy"), "--out",
                         str(tmp_path / "x.csv"), "--quiet"]) == 0
        monkeypatch.undo()
    finally:
        os.umask(previous)
    assert changes == []
    for name in ("m.npz", "x.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert leftovers(tmp_path) == []


class HalfWriter:
    """A file whose write stores half the data, then fails as a full disk would."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(data[:len(data) // 2])
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def test_save_npz_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    from lenet_fast import _weights

    model = LeNet(make_weights())
    (tmp_path / "m.npz").write_bytes(b"old")
    monkeypatch.setattr(_weights, "open", lambda path, mode="r": HalfWriter(open(path, mode)),
                        raising=False)
    with pytest.raises(OSError, match="No space left"):
        model.save_npz(tmp_path / "m.npz")
    monkeypatch.undo()
    assert (tmp_path / "m.npz").read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    model.save_npz(tmp_path / "m.npz")
    assert LeNet.from_npz(tmp_path / "m.npz").n_classes == 10


def test_output_into_a_missing_folder_fails_before_the_work(tmp_path, monkeypatch):
    monkeypatch.setattr(LeNet, "predict", lambda *a, **k: pytest.fail("predicted"))
    assert cli.main(["predict", "mnist", SAMPLE_IMAGES, "--out",
                     str(tmp_path / "no" / "x.csv")]) == 1


# ---------------------------------------------------------------------------------------------
# 3, 18: small .npz files that claimed huge allocations
# ---------------------------------------------------------------------------------------------

def npz_with_member(path, name, member_bytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in make_weights().items():
            value = np.zeros_like(value)
            buffer = io.BytesIO()
            npy_format.write_array(buffer, value)
            archive.writestr(f"{key}.npy", member_bytes if f"{key}.npy" == name
                             else buffer.getvalue())


def test_npy_v2_header_length_claiming_1_gib(tmp_path):
    path = tmp_path / "bomb.npz"
    member = b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30) + b"{" + b" " * 1000
    npz_with_member(path, "conv1.weight.npy", member)
    assert path.stat().st_size < 4000
    result = run_child(f"""
        from lenet_fast import LeNet, WeightFileError
        try:
            LeNet.from_npz({str(path)!r})
        except WeightFileError as exc:
            report(error=str(exc))
    """)
    assert result["error"].endswith("'conv1.weight.npy': expected a .npy header of at most "
                                    "10,000 bytes, found a header length field of 1,073,741,824")
    assert result["peak_mb"] < PEAK_LIMIT_MB


def largest_widths_npz(path, conv2_channels):
    """A compressed .npz of zeros, float64, with conv2 as wide as one member may be."""
    shapes = canonical_shapes(conv1_channels=4096, conv2_channels=conv2_channels,
                              conv3_channels=4096, fc1_units=4096, n_classes=1000)
    np.savez_compressed(path, **{key: np.zeros(shape) for key, shape in shapes.items()})
    return sum(int(np.prod(shape)) for shape in shapes.values())


def test_compressed_zeros_at_the_largest_widths_are_refused_cheaply(tmp_path):
    path = tmp_path / "zeros.npz"
    parameters = largest_widths_npz(path, 160)
    assert parameters > MAX_PARAMETERS and path.stat().st_size < 600_000
    result = run_child(f"""
        from lenet_fast import LeNet, WeightFileError
        try:
            LeNet.from_npz({str(path)!r})
        except WeightFileError as exc:
            report(error=str(exc))
    """)
    assert result["error"] == (f"{path}: expected at most {MAX_PARAMETERS:,} parameters in all, "
                               f"found {parameters:,} (widths 1-4096-160-4096-4096-1000)")
    assert result["peak_mb"] < PEAK_LIMIT_MB


def test_the_largest_accepted_model_loads_within_the_memory_bound(tmp_path):
    path = tmp_path / "largest.npz"
    shapes = canonical_shapes(conv1_channels=1000, conv2_channels=100, conv3_channels=1000,
                              fc1_units=2000, n_classes=500)
    parameters = sum(int(np.prod(shape)) for shape in shapes.values())
    assert 0.9 * MAX_PARAMETERS < parameters <= MAX_PARAMETERS
    np.savez_compressed(path, **{key: np.zeros(shape) for key, shape in shapes.items()})
    result = run_child(f"""
        from lenet_fast import LeNet
        report(classes=LeNet.from_npz({str(path)!r}).n_classes)
    """)
    assert result["classes"] == 500
    assert result["peak_mb"] < PEAK_LIMIT_MB


def test_parameter_cap_applies_to_in_memory_weights_too():
    shapes = canonical_shapes(conv1_channels=4096, conv2_channels=100, conv3_channels=4096,
                              fc1_units=4096)
    fake = {key: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, [0] * len(shape))
            for key, shape in shapes.items()}
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
    assert "expected a .npy file of images" in result.stderr and "(1000000000, 28, 0)" in \
        result.stderr


def png_claiming(width, height):
    """A tiny PNG whose header declares `width` x `height` (its pixel data is never decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [12000, 50000])
def test_huge_png_is_rejected_from_its_header(tmp_path, size):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(size, size))
    result = run_child(f"""
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

def test_num_threads_above_the_cap_is_refused(model):
    assert lenet_fast.MAX_THREADS == 256
    with pytest.raises(ValueError, match=r"^num_threads must be at most 256 "
                                         r"\(lenet_fast.MAX_THREADS\); got 1000$"):
        model.predict(np.zeros((1, 32, 32), np.float32), num_threads=1000)
    with pytest.raises(ValueError, match="at most 256"):
        LeNet(make_weights(), num_threads=257)


def test_threads_that_cannot_start_are_an_exception_not_an_exit():
    result = run_child("""
        import resource
        import numpy as np
        from lenet_fast import LeNet
        from lenet_fast._weights import canonical_shapes
        weights = {key: np.full(shape, 0.01, np.float32)
                   for key, shape in canonical_shapes().items()}
        model = LeNet(weights)
        x = np.zeros((256 * 32, 1, 32, 32), np.float32)
        limit = 600 * 2**20 + int(open("/proc/self/statm").read().split()[0]) * 4096
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            model.predict(x, num_threads=256)
            report(outcome="ran")
        except OSError as exc:
            report(outcome="refused", error=str(exc))
    """)
    assert result["outcome"] == "refused"       # before: GNU OpenMP ended the process
    assert "could not start 256 threads" in result["error"]


# ---------------------------------------------------------------------------------------------
# 4, 9, 10: ONNX
# ---------------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lenet_fast.onnx import ONNXImportError  # noqa: E402


def identity_chain_model(length, unused_constants=0):
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"id{i}")
             for i in range(length)]
    nodes += [helper.make_node("Constant", [], [f"c{i}"], name=f"c{i}",
                               value=numpy_helper.from_array(np.zeros(1, np.float32)))
              for i in range(unused_constants)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info(f"t{length}", TensorProto.FLOAT, [1, 10])])
    return helper.make_model(graph)


@pytest.mark.parametrize("length, constants", [(8000, 0), (1, 16000)])
def test_onnx_import_is_linear_in_the_node_count(length, constants):
    proto = identity_chain_model(length, constants)
    started = time.perf_counter()
    with pytest.raises(ONNXImportError, match="expected 5 weighted layers"):
        LeNet.from_onnx(proto)
    # Quadratic import took 36 s (8,000 nodes) and 10 s (16,000 constants); linear takes ~0.1 s.
    assert time.perf_counter() - started < 5


@pytest.fixture(scope="module")
def lenet_onnx():
    from lenet_fast.onnx import to_onnx
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.onnx")
        to_onnx(LeNet(make_weights()), path)
        return onnx.load(path)


def named(proto, kind, name):
    items = proto.graph.node if kind == "node" else proto.graph.initializer
    return next(item for item in items if item.name == name)


def copy(proto):
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    return result


@pytest.mark.parametrize("mutate, message", [
    (lambda m: named(m, "node", "fc1").input.pop(),
     None),   # a Gemm without its bias is fine (zero bias)
    (lambda m: (named(m, "node", "fc1").input.pop(), named(m, "node", "fc1").input.pop()),
     "unsupported Gemm node 'fc1': expected a weight as input 1, found none"),
    (lambda m: named(m, "initializer", "conv2.weight").dims.__delitem__(slice(1, 4)),
     "initializer 'conv2.weight': malformed tensor"),
    (lambda m: named(m, "initializer", "conv2.weight").CopyFrom(
        numpy_helper.from_array(np.zeros(16 * 6 * 25, np.float32), "conv2.weight")),
     "unsupported Conv node 'conv2': expected a 4-D weight 'conv2.weight', found shape (2400,)"),
    (lambda m: setattr(named(m, "initializer", "fc2.bias"), "data_type", 999),
     "initializer 'fc2.bias': malformed tensor"),
    (lambda m: setattr(named(m, "initializer", "fc2.weight"), "raw_data",
                       named(m, "initializer", "fc2.weight").raw_data[:-4]),
     "initializer 'fc2.weight': malformed tensor"),
    (lambda m: named(m, "initializer", "fc2.weight").dims.extend([1 << 20, 1 << 20]),
     "initializer 'fc2.weight': expected at most 16,777,216 elements"),
    (lambda m: named(m, "initializer", "conv3.bias").CopyFrom(
        numpy_helper.from_array(np.zeros(7, np.float32), "conv3.bias")),
     "'conv3.bias': expected shape (120,), found (7,)"),
])
def test_malformed_onnx_raises_onnx_import_error_naming_file_and_place(
        lenet_onnx, tmp_path, mutate, message):
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
    from lenet_fast.onnx import to_onnx

    to_onnx(LeNet(make_weights()), tmp_path / "m.onnx")
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


@pytest.mark.parametrize("location", ["./x/../../secret.bin", "../secret.bin", "link.bin",
                                      "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(bytes(40))
    path = external_model(tmp_path, location)
    (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ONNXImportError, match="initializer 'fc2.bias': external data location "
                                              ".* is not a file inside the model's folder"):
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
    weights = make_weights(n_classes=10_000)
    LeNet(weights, metadata={"classes": names}).save_npz(tmp_path / "m.npz")
    assert LeNet.from_npz(tmp_path / "m.npz").classes == names
    with pytest.raises(ValueError, match=f"at most {MAX_METADATA_BYTES:,} bytes as JSON"):
        LeNet(weights, metadata={"notes": "x" * MAX_METADATA_BYTES}).save_npz(tmp_path / "n.npz")
    assert not (tmp_path / "n.npz").exists()


@pytest.mark.parametrize("std", [1e-60, 1e-40])
def test_preprocessing_that_underflows_in_float32_is_refused_at_load(tmp_path, std):
    metadata = {"preprocessing": {"scale": 255.0, "mean": 0.5, "std": std}}
    np.savez(tmp_path / "m.npz", **make_weights(),
             __lenet_fast__=np.frombuffer(json.dumps(metadata).encode(), np.uint8))
    with pytest.raises(WeightFileError, match="must map pixels 0..255 to finite float32 values"):
        LeNet.from_npz(tmp_path / "m.npz")


def test_nan_outputs_from_finite_input_never_become_labels(model):
    x = np.zeros((40, 1, 32, 32), np.float32)
    x[7] = np.finfo(np.float32).max
    x[9, 0, ::2] = -np.finfo(np.float32).max
    x[9, 0, 1::2] = np.finfo(np.float32).max
    scores = model.forward(x, check_finite=False)
    nan_rows = np.flatnonzero(np.isnan(scores).any(axis=1))
    assert len(nan_rows)
    first = nan_rows[0]
    for method in (model.predict, model.forward):
        with pytest.raises(ValueError, match=rf"^x\[{first}\] gives NaN outputs although it is "
                                             rf"finite"):
            method(x)
    labels = model.predict(x, check_finite=False)
    assert (labels[nan_rows] == -1).all()
    clean = np.setdiff1d(np.arange(40), nan_rows)
    np.testing.assert_array_equal(labels[clean], scores[clean].argmax(axis=1))


# ---------------------------------------------------------------------------------------------
# 14, 16: untrusted strings on the terminal; odd metadata
# ---------------------------------------------------------------------------------------------

def test_control_characters_from_files_are_escaped(tmp_path):
    names = [f"\x1b]0;pwned\x07class{k}\x1b[2J" for k in range(10)]
    metadata = {"classes": names, "provenance": ["a", "\x1b[31mred"], "note": "\u202eevil"}
    LeNet(make_weights(), metadata=metadata).save_npz(tmp_path / "m.npz")
    info = run_cli("info", tmp_path / "m.npz", expect=0).stdout
    assert "\x1b" not in info and "\x07" not in info and "\u202e" not in info
    assert "\\x1b]0;pwned\\x07class0\\x1b[2J" in info and "\\u202eevil" in info
    assert "provenance" in info and "\\x1b[31mred" in info
    bad_name = "\x1b[2Jimage.png"
    (tmp_path / "images").mkdir()
    from PIL import Image
    Image.new("L", (28, 28)).save(tmp_path / "images" / bad_name)
    csv_text = run_cli("predict", "mnist", tmp_path / "images", expect=0).stdout
    assert "\x1b" not in csv_text and "\\x1b[2Jimage.png" in csv_text
    error = run_cli("predict", "mnist", tmp_path / "\x1b[2Jmissing.npy", expect=1).stderr
    assert "\x1b" not in error


def test_invalid_isa_variable_is_one_line_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "lenet_fast", "info", "mnist"],
                            capture_output=True, text=True, timeout=120,
                            env=child_environment({"LENET_FAST_ISA": "sse"}))
    assert result.returncode == 1
    assert result.stderr.startswith("lenet-fast: error: LENET_FAST_ISA='sse' is not a level")
    assert len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# 15, 17: Ctrl-C during a large batch; out= overlapping the input
# ---------------------------------------------------------------------------------------------

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


def test_contiguous_float32_batches_run_in_chunks_with_identical_bits(model):
    x = np.random.default_rng(3).normal(size=(9000, 1, 28, 28)).astype(np.float32)
    whole = model.forward(x)
    recorder = RecordingEngine(model._engine)
    chunked = LeNet(make_weights(), num_threads=2)
    chunked._engine = recorder
    np.testing.assert_array_equal(chunked.forward(x), whole)
    assert recorder.sizes == [1024] * 8 + [808]        # 512 images per thread, 2 threads
    recorder.sizes.clear()
    chunked.num_threads = 16
    np.testing.assert_array_equal(chunked.forward(x), whole)
    assert recorder.sizes == [4096, 4096, 808]
    singles = np.concatenate([model.forward(x[i:i + 1]) for i in range(0, 9000, 997)])
    np.testing.assert_array_equal(singles, whole[::997])


def test_ctrl_c_stops_a_large_float32_batch_within_a_chunk():
    result = run_child("""
        import _thread, threading, time
        import numpy as np
        from lenet_fast import LeNet
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
    """, timeout=300)
    assert result["outcome"] == "interrupted"
    # One chunk at most (1024 images on 2 threads: 0.02-0.07 s measured), whatever N is.
    assert result["late"] < max(0.1, 2 * result["chunk_seconds"])


def test_out_overlapping_the_input_is_refused(model):
    buffer = np.zeros(4 * 1024 + 100, np.float32)
    x = buffer[:4 * 1024].reshape(4, 1, 32, 32)
    with pytest.raises(ValueError, match="^out overlaps the input x"):
        model.forward(x, out=buffer[4 * 1024 - 40:4 * 1024].reshape(4, 10))
    raw = np.zeros(4 * 1024 * 4 + 100, np.uint8)
    pixels = raw[:4 * 1024].reshape(4, 32, 32)
    with pytest.raises(ValueError, match="^out overlaps the input x"):
        LeNet.pretrained("mnist").predict(pixels, out=raw[:32].view(np.int64))
    # Separate parts of one buffer are fine.
    out = buffer[4 * 1024:4 * 1024 + 40].reshape(4, 10)
    np.testing.assert_array_equal(model.forward(x, out=out), model.forward(x.copy()))


# ---------------------------------------------------------------------------------------------
# CLI friction
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".gif", ".webp"])
def test_a_single_image_file_and_other_formats_as_input(tmp_path, suffix):
    from PIL import Image

    images, _ = datasets.load_sample()
    path = tmp_path / f"digit{suffix}"
    Image.fromarray(images[0]).save(path)
    rows = run_cli("predict", "fashion-mnist", path, expect=0).stdout.splitlines()
    assert rows[1].startswith(f"digit{suffix},")
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / f"a{suffix}")
    (folder / "notes.txt").write_text("not an image")
    result = run_cli("predict", "fashion-mnist", folder, expect=0)
    assert result.stdout.splitlines()[1].startswith(f"a{suffix},")
    assert "skipped 1 entries that are not images" in result.stderr and "notes.txt" in \
        result.stderr


@pytest.mark.parametrize("content, message", [
    (b"1 2 3\n4 5 6\n", "not a .npy file"),
    (None, "expected a plain numeric array, found dtype object"),
    (b"truncate", "(truncated file)"),
])
def test_npy_problems_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if content is None:
        np.save(path, np.array([None, 1], dtype=object), allow_pickle=True)
    elif content == b"truncate":
        np.save(path, np.zeros((3, 28, 28), np.uint8))
        path.write_bytes(path.read_bytes()[:-10])
    else:
        path.write_bytes(content)
    result = run_cli("predict", "mnist", path, expect=1)
    assert f"{path}: " in result.stderr and message in result.stderr
    assert "allow_pickle" not in result.stderr


def test_plot_destination_checked_before_the_work(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(LeNet, "predict", lambda *a, **k: pytest.fail("predicted"))
    labels = datasets._data_file("fashion-mnist-sample-labels-idx1-ubyte.gz")
    for plot, message in ((tmp_path / "x", "expected a file name ending in .png, .pdf, .svg"),
                          (tmp_path / "missing" / "x.png", "No such file or directory")):
        assert cli.main(["evaluate", "fashion-mnist", SAMPLE_IMAGES, labels, "--plot",
                         str(plot)]) == 1
        assert message in capsys.readouterr().err


def test_idx_reader_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "images.idx")
    with pytest.raises(datasets.DataFileError, match="expected a regular file, found a FIFO"):
        datasets.read_idx(tmp_path / "images.idx")


def test_version_plural_usage_and_empty_evaluation(tmp_path):
    assert run_cli("--version", expect=0).stdout.strip() == f"lenet-fast {lenet_fast.__version__}"
    usage = run_cli("predict", "mnist", "x.idx", "--bogus", expect=2).stderr
    assert usage.startswith("usage: lenet-fast predict ")
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(0, np.int64))
    result = run_cli("evaluate", "mnist", tmp_path / "none.npy", tmp_path / "labels.npy",
                     expect=1)
    assert "nothing to evaluate" in result.stderr


def test_demo_says_1_thread():
    output = run_cli("demo", expect=0, env={"OMP_NUM_THREADS": "1"}).stdout
    assert "1 thread," in output and "1 threads" not in output


def test_evaluate_class_subfolders(tmp_path):
    from PIL import Image

    images, labels = datasets.load_sample()
    classes = LeNet.pretrained("fashion-mnist").classes
    for index in range(40):
        folder = tmp_path / "root" / classes[labels[index]].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    output = run_cli("evaluate", "fashion-mnist", tmp_path / "root", expect=0).stdout
    assert "/40 correct)" in output
    (tmp_path / "root" / "Spaceship").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "root" / "Spaceship" / "0.png")
    result = run_cli("evaluate", "fashion-mnist", tmp_path / "root", expect=1)
    assert "class folders Spaceship match none of the model's classes" in result.stderr


def test_source_folder_shadowing_an_installed_copy_says_so(tmp_path):
    source = tmp_path / "src" / "lenet_fast"
    source.mkdir(parents=True)
    package = Path(lenet_fast.__file__).parent
    for path in package.glob("*.py"):
        (source / path.name).write_text(path.read_text())
    result = subprocess.run([sys.executable, "-c", "import lenet_fast"], cwd=source.parent,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": PACKAGE_PARENT})
    assert "shadows the installed lenet_fast in" in result.stderr
    assert "run from another directory" in result.stderr
    assert "circular import" not in result.stderr
