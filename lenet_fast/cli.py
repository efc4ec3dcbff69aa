"""The ``lenet-fast`` command line (also ``python -m lenet_fast``).

Subcommands: demo, predict, evaluate, info, convert.  (The benchmark against ONNX Runtime, OpenVINO and PyTorch is
``python bench/report.py`` in the repository: it is not part of the installed package.)

Design: each subcommand is one ``_command_*`` function taking the parsed arguments and returning
an exit status; `main` parses, dispatches, and turns every expected failure (a missing or
malformed file, a wrong shape, a missing optional package) into one line on stderr and exit
status 1 -- never a traceback.  Inputs are opened as an `_ImageSource` (IDX or ``.npy`` file, one
image, a folder of images, or a folder of class subfolders) that yields bounded chunks, and
outputs are written chunk by chunk (CSV rows, or a memory-mapped ``.npy``), so `predict` and
`evaluate` run in bounded memory on inputs of any size.  Optional packages (Pillow for images,
matplotlib for plots) are imported only by the commands that need them.

Nothing is lost and nothing half-written is left: every output file is written to a temporary
file in its destination folder and renamed into place only when the command succeeds (removed on
an error or Ctrl-C); an output that is one of the inputs (also through a link) is refused before
anything is read; CSV for standard output goes to a temporary file first and is copied to
standard output only once every image has been classified.  Sizes a file claims (.npy headers,
IDX dimensions, image dimensions) are checked before memory is reserved for them, and strings
from files (class names, metadata, file names) are printed with control characters escaped.
"""

import argparse
import contextlib
import csv
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from types import ModuleType

import numpy as np
from numpy.lib import format as npy_format

from . import _weights, datasets
from ._architecture import GEOMETRY_OPTIONS, PADDINGS
from ._architecture import OPTIONS as _ARCHITECTURE_OPTIONS
from ._config import show_config
from ._model import ArchitectureWarning, LeNet
from ._version import __version__

CHUNK_IMAGES = 4096  # images per chunk read, predicted and written
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # model files read with LeNet.from_keras
_TORCH_SUFFIXES = (".pt", ".pth")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_SIZES = ((28, 28), (32, 32))
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
MAX_PLOTTED_MISTAKES = 24
_DEMO_EXAMPLES = 8
_DEMO_MIN_SECONDS = 0.5
_PROGRAM = "lenet-fast"
_MODEL_HELP = (
    "a .npz file, an .onnx graph (needs onnx), a Keras .keras/.h5/.hdf5 model (needs "
    "h5py), or a pretrained name (fashion-mnist, mnist)"
)
_INPUT_FORMATS = (
    "Input: an image file, or a folder of images (PNG, JPEG, BMP, GIF, WebP, TIFF; 28 x 28 or "
    "32 x 32), is read as grayscale, so it suits 1-channel models only.  IDX files and images "
    "(like uint8 .npy files) hold uint8 pixels, which need a model with stored preprocessing "
    "(e.g. the pretrained fashion-mnist and mnist); a float .npy file is taken as normalised "
    "images and works with any model."
)


class CommandError(Exception):
    """An expected failure, reported as one line on stderr."""


def printable(text: object) -> str:
    """`text` with control and other non-printable characters escaped (``\\x1b``).

    A string from an untrusted file then cannot drive the terminal (escape sequences, bidi
    overrides).

    Parameters
    ----------
    text : object
        Converted with ``str`` first.

    Returns
    -------
    str
        `text` itself when it is printable.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _regular_file(path):
    """Raise CommandError unless `path` is a regular file (a FIFO would block for ever)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise CommandError(
            f"{printable(path)}: expected a regular file, found a FIFO, device or socket"
        )


def _open_npy(path):
    """A read-only memory map of a ``.npy`` file, checked from its header first: numeric dtype,
    a header within numpy's limit, and a file size matching the shape it declares."""
    _regular_file(path)
    where = printable(path)
    with open(path, "rb") as file:
        try:
            version = npy_format.read_magic(file)
        except ValueError as exc:
            raise CommandError(
                f"{where}: not a .npy file (expected the \\x93NUMPY magic; {exc})"
            ) from exc
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise CommandError(f"{where}: unsupported .npy format version {version}")
        try:
            shape, fortran_order, dtype = _weights._read_npy_header(
                file, (1, 0) if version == (1, 0) else (2, 0), where
            )
        except _weights.WeightFileError:
            raise
        except _weights._ARCHIVE_ERRORS as exc:
            raise CommandError(
                f"{where}: unreadable .npy header ({type(exc).__name__}: {exc})"
            ) from exc
        offset = file.tell()
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise CommandError(
            f"{where}: expected a plain numeric array, found dtype {dtype} (Python "
            f"objects are never unpickled)"
        )
    data_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = os.path.getsize(path)
    if size != offset + data_bytes:
        problem = "truncated file" if size < offset + data_bytes else "trailing bytes"
        raise CommandError(
            f"{where}: its header declares {dtype} {shape} ({data_bytes:,} bytes "
            f"after the {offset}-byte header); the file has {size:,} bytes "
            f"({problem})"
        )
    if data_bytes == 0:
        return np.empty(shape, dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C"
    )


class _Destination:
    """An output file written atomically: to a temporary file in the destination's folder
    (`temporary`), renamed to `path` by `commit`, removed by `discard`."""

    def __init__(self, path, option):
        self.path = path
        if os.path.isdir(path):
            raise CommandError(f"{option} {printable(path)}: is a folder; expected a file name")
        self.temporary = _weights.temporary_file_beside(path)

    def commit(self):
        _weights.replace_durably(self.temporary)

    def discard(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temporary)


def _refuse_overwriting(output, inputs, option):
    """Refuse an output path that is one of the inputs (the same file, also through a link)."""
    if output is None or not os.path.exists(output):
        return
    for path in inputs:
        if path is not None and os.path.exists(path) and os.path.samefile(output, path):
            raise CommandError(
                f"{option} {printable(output)}: is the input {printable(path)}; "
                f"refusing to overwrite it"
            )


# ---------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------


def load_model(spec: str, architecture: dict | None = None) -> LeNet:
    """A `LeNet` from a model file (see `read_model_file`) or a pretrained name (a file of that
    name wins).

    An `ArchitectureWarning` (the file does not state an option) is printed as one line on
    stderr.

    Parameters
    ----------
    spec : str
        A model file, or a pretrained name (``fashion-mnist``, ``mnist``); a file of that name
        wins.
    architecture : dict, optional
        ``conv_activation`` ... ``pool`` (None for unstated): overrides the file's.

    Returns
    -------
    LeNet
        The model, with `architecture` applied.

    Raises
    ------
    CommandError
        If `spec` is neither a file nor a pretrained name.
    """
    architecture = {key: value for key, value in (architecture or {}).items() if value is not None}
    with _caught_architecture_warnings() as caught:
        if os.path.isfile(spec):  # not isdir: a folder named like a model must not hide it
            model = read_model_file(spec, architecture)
        elif spec in datasets.PRETRAINED:
            if "batchnorm_eps" in architecture:
                raise CommandError(
                    f"{spec}: --batchnorm-eps is for state_dicts with BatchNorm layers; a "
                    f"pretrained model holds none"
                )
            model = LeNet.pretrained(spec)
            if architecture:
                model = LeNet(
                    model.weights, **{**model.architecture, **architecture}, metadata=model.metadata
                )
        else:
            raise CommandError(
                f"model {spec!r}: no such file, and not a pretrained model name "
                f"(expected one of {', '.join(datasets.PRETRAINED)})"
            )
    for message in caught:
        print(f"{_PROGRAM}: warning: {printable(' '.join(str(message).split()))}", file=sys.stderr)
    return model


def read_model_file(path: str, architecture: dict) -> LeNet:
    """The model in the file `path`, by the reader its suffix names (case-insensitive).

    ``.onnx``: `LeNet.from_onnx`; ``.keras``, ``.h5``, ``.hdf5``: `LeNet.from_keras` (which
    tells a Keras 3 archive from an HDF5 file by content); ``.pt``/``.pth`` refused (they need
    ``lenet-fast convert --torch``); anything else `LeNet.from_npz`.

    Parameters
    ----------
    path : str
        The model file.
    architecture : dict
        Options with a value: override what the file states, for every format.

    Returns
    -------
    LeNet
        Read by the reader of its suffix.

    Raises
    ------
    CommandError
        For a PyTorch file.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _TORCH_SUFFIXES:
        raise CommandError(
            f"{path}: a PyTorch file; pass --torch to lenet-fast convert to read "
            f"it with torch.load(weights_only=True) into a .npz"
        )
    if "batchnorm_eps" in architecture and (suffix == ".onnx" or suffix in KERAS_SUFFIXES):
        raise CommandError(
            f"{path}: --batchnorm-eps is for state_dicts, which do not store it; an ONNX or "
            f"Keras file stores each BatchNorm's epsilon, and it is read from there"
        )
    if suffix == ".onnx":
        geometry = {
            option: value for option, value in architecture.items() if option in GEOMETRY_OPTIONS
        }
        model = LeNet.from_onnx(
            path,
            **{
                option: value
                for option, value in architecture.items()
                if option not in GEOMETRY_OPTIONS
            },
        )
        if geometry:
            model = LeNet(
                model.weights, **{**model.architecture, **geometry}, metadata=model.metadata
            )
        return model
    if suffix in KERAS_SUFFIXES:
        model = LeNet.from_keras(path)
        if architecture:
            model = LeNet(
                model.weights, **{**model.architecture, **architecture}, metadata=model.metadata
            )
        return model
    return LeNet.from_npz(path, **architecture)


@contextlib.contextmanager
def _caught_architecture_warnings():
    """Collect the `ArchitectureWarning`s raised inside the block into the list it yields (filled
    when the block ends); other warnings go on as usual."""
    caught = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always", ArchitectureWarning)
        yield caught
    for warning in recorded:
        if issubclass(warning.category, ArchitectureWarning):
            caught.append(warning.message)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def _architecture_arguments(args):
    return {
        option: getattr(args, option)
        for option in (*_ARCHITECTURE_OPTIONS, *GEOMETRY_OPTIONS, "batchnorm_eps")
    }


def _batchnorm_eps(text):
    """``--batchnorm-eps``: a finite number >= 0."""
    try:
        return _weights.check_batchnorm_eps(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a finite number >= 0 (e.g. 1e-5 or 0.001), found {text!r}"
        ) from None


def _input_size(text):
    """``--input-size``: 28, 28x32, 28,32 or (28, 32) -> (height, width)."""
    parts = [part for part in re.split(r"[x,()\s]+", text.strip().lower()) if part]
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a size such as 28 or 28x32, found {text!r}")
    return (sides[0], sides[-1])


class _ImageSource:
    """Images of an IDX file, a ``.npy`` file, one image file, a folder of images, or a folder of
    class subfolders (``root/<class>/<image>``), read `CHUNK_IMAGES` at a time.

    Attributes: ``len()``; `name` (an image's file name, or its index); ``class_folders`` (for
    the class-subfolder layout: each image's folder name, else None).  A context manager: an IDX
    file stays open until `close` (or the end of the ``with`` block), whether or not `chunks`
    ran to its end.  Every size the input declares is checked before anything is read.
    """

    def __init__(self, path, quiet=True):
        self.path = path
        self.class_folders = None
        self._files = None
        self._folder = path
        self._idx = None
        if os.path.isdir(path):
            self._list_folder(path, quiet)
            self._count = len(self._files)
            return
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or folder")
        _regular_file(path)
        if path.lower().endswith(IMAGE_SUFFIXES):
            self._folder, self._files = os.path.dirname(path), [os.path.basename(path)]
            self._count = 1
        elif path.lower().endswith(".npy"):
            self._array = _open_npy(path)
            self._check_image_shape(self._array.shape, "a .npy file of images")
            self._count = len(self._array)
        else:
            self._idx = datasets.IdxReader(path)
            try:
                self._check_image_shape(self._idx.shape, "an IDX file of images")
            except CommandError:
                self._idx.close()
                raise
            self._count = len(self._idx)

    def _check_image_shape(self, shape, what):
        if (
            len(shape) not in (3, 4)
            or tuple(shape[-2:]) not in IMAGE_SIZES
            or (len(shape) == 4 and not 1 <= shape[1] <= 3)
        ):
            raise CommandError(
                f"{printable(self.path)}: expected {what} (3 or 4 dimensions: N, "
                f"[channels,] 28 x 28 or 32 x 32 pixels); found shape {shape}"
            )

    def _list_folder(self, path, quiet):
        entries = sorted(os.listdir(path))
        images = [name for name in entries if name.lower().endswith(IMAGE_SUFFIXES)]
        folders = [name for name in entries if os.path.isdir(os.path.join(path, name))]
        if not images and folders:  # torchvision's ImageFolder layout: root/<class>/<image>
            self._files, self.class_folders, others = [], [], []
            for folder in folders:
                for name in sorted(os.listdir(os.path.join(path, folder))):
                    if name.lower().endswith(IMAGE_SUFFIXES):
                        self._files.append(os.path.join(folder, name))
                        self.class_folders.append(folder)
                    else:
                        others.append(os.path.join(folder, name))
        else:
            self._files = images
            others = [name for name in entries if name not in images]
        if not self._files:
            raise CommandError(
                f"{printable(path)}: folder holds no images "
                f"({'/'.join(IMAGE_SUFFIXES)}), directly or in class subfolders"
            )
        if others and not quiet:
            listed = ", ".join(map(printable, others[:5])) + (", ..." if len(others) > 5 else "")
            print(
                f"{_PROGRAM}: note: skipped {len(others):,} entries that are not images "
                f"({'/'.join(IMAGE_SUFFIXES)}): {listed}",
                file=sys.stderr,
            )

    def __len__(self):
        return self._count

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._idx is not None:
            self._idx.close()

    def name(self, index):
        """The name of image `index`: its file name (relative to the folder), or the index."""
        return self._files[index] if self._files is not None else str(index)

    def chunks(self):
        if self._idx is not None:
            yield from self._idx.chunks(CHUNK_IMAGES)
        elif self._files is not None:
            for start in range(0, self._count, CHUNK_IMAGES):
                yield self._read_images(self._files[start : start + CHUNK_IMAGES])
        else:
            for start in range(0, self._count, CHUNK_IMAGES):
                yield np.array(self._array[start : start + CHUNK_IMAGES])

    def _read_images(self, names):
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImportError(
                "reading images needs Pillow: pip install 'lenet_fast[images]'"
            ) from exc
        pixels = []
        for name in names:
            array = read_image(os.path.join(self._folder, name), Image)
            if pixels and array.shape != pixels[0].shape:
                raise CommandError(
                    f"{printable(os.path.join(self._folder, name))}: expected a "
                    f"{' x '.join(map(str, pixels[0].shape))} image like the "
                    f"images before it; found {array.shape[1]} x {array.shape[0]}"
                )
            pixels.append(array)
        return np.stack(pixels)


def read_image(path: str, image_module: ModuleType | None = None) -> np.ndarray:
    """One 28 x 28 or 32 x 32 image file as a 2-D uint8 array of grayscale pixels.

    The dimensions are read from the image header and checked before any pixel is decoded, and
    a FIFO or device is refused without blocking, so a small hostile file cannot make this take
    much memory or time.

    Parameters
    ----------
    path : str
        Any format Pillow reads (PNG, JPEG, BMP, GIF, WebP, TIFF ...).
    image_module : module, optional
        ``PIL.Image`` (imported when not given).

    Returns
    -------
    ndarray of uint8, shape (28, 28) or (32, 32)
        Grayscale pixels (colour images are converted with Pillow's "L" mode).

    Raises
    ------
    CommandError
        For anything but a readable 28 x 28 or 32 x 32 image in a regular file; the message
        names the file.
    """
    if image_module is None:
        from PIL import Image as image_module
    where = printable(path)
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise CommandError(f"{where}: expected an image file, found a FIFO, device or socket")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
                with image_module.open(stream) as image:
                    width, height = image.size
                    if (height, width) not in IMAGE_SIZES:
                        raise CommandError(
                            f"{where}: expected a 28 x 28 or 32 x 32 image; "
                            f"found {width} x {height}"
                        )
                    array = np.asarray(image.convert("L"))
        except CommandError:
            raise
        except image_module.DecompressionBombError as exc:  # from the header alone
            raise CommandError(
                f"{where}: expected a 28 x 28 or 32 x 32 image; found a far larger one ({exc})"
            ) from exc
        except Exception as exc:  # Pillow's decoders raise many types on corrupt data
            raise CommandError(
                f"{where}: not a readable image ({type(exc).__name__}: {printable(exc)})"
            ) from exc
    if array.shape not in IMAGE_SIZES:  # a decoder that disagrees with its own header
        raise CommandError(
            f"{where}: expected a 28 x 28 or 32 x 32 image; decoded "
            f"{array.shape[1]} x {array.shape[0]}"
        )
    return array


def _read_labels(path, count):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    _regular_file(path)
    labels = np.array(_open_npy(path)) if path.lower().endswith(".npy") else datasets.read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CommandError(
            f"{path}: expected a 1-D array of integer labels; found {labels.dtype} {labels.shape}"
        )
    if len(labels) != count:
        raise CommandError(f"{path}: expected {count} labels (one per image); found {len(labels)}")
    return labels.astype(np.int64)


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total, quiet):
        self.total = total
        self.enabled = not quiet and total > 0 and sys.stderr.isatty()

    def update(self, done):
        if self.enabled:
            filled = 30 * done // self.total
            sys.stderr.write(
                f"\r|{'#' * filled}{'.' * (30 - filled)}| {done:,}/{self.total:,} images"
            )
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def _predict_chunks(model, source, scores, quiet):
    """Yield (start, images, labels, outputs or None) for each chunk of `source`."""
    progress = _Progress(len(source), quiet)
    start = 0
    try:
        for images in source.chunks():
            if scores:
                outputs = model.forward(images)
                labels = outputs.argmax(axis=1)
            else:
                outputs, labels = None, model.predict(images)
            yield start, images, labels, outputs
            start += len(images)
            progress.update(start)
    finally:
        progress.close()


def _class_name(model, label):
    return model.classes[label] if model.classes else str(label)


def _plural(count, noun):
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _command_demo(args):
    model = LeNet.pretrained("fashion-mnist")
    images, labels = datasets.load_sample()
    predicted = model.predict(images)
    correct = int(np.sum(predicted == labels))
    print("lenet-fast demo: the shipped Fashion-MNIST LeNet-5 on the bundled sample,")
    print(
        f"the first {len(images):,} Fashion-MNIST test images (Xiao et al. 2017, Zalando "
        f"Research, MIT license)"
    )
    print(f"model: {model!r}")
    print(f"accuracy: {correct / len(images):.4f} ({correct:,}/{len(images):,} correct)", end="")
    full = model.metadata.get("provenance", {}).get("test_accuracy")
    print(f"; on the full 10,000-image test set: {full:.4f}" if full is not None else "")
    print()
    print(f"{'image':>5}  {'true class':<12} predicted")
    for i in range(_DEMO_EXAMPLES):
        mark = "" if predicted[i] == labels[i] else "  <- wrong"
        print(
            f"{i:>5}  {printable(model.classes[labels[i]]):<12} "
            f"{printable(model.classes[predicted[i]])}{mark}"
        )
    print()
    best, runs, spent = float("inf"), 0, 0.0
    while spent < _DEMO_MIN_SECONDS or runs < 3:
        started = time.perf_counter()
        model.predict(images)
        elapsed = time.perf_counter() - started
        best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
    print(
        f"throughput: {len(images) / best:,.0f} images/s (uint8 in, labels out; batch of "
        f"{len(images):,}, {_plural(model.num_threads, 'thread')}, {model.isa} kernels, best "
        f"of {runs} runs)"
    )
    return 0


def _open_output(path, count, model, scores, source):
    """A writer with write(start, labels, outputs), commit() (on success) and discard()."""
    if path is not None and path.lower().endswith(".npy"):
        return _NpyWriter(path, count, model, scores)
    if path is None or path.lower().endswith(".csv"):
        return _CsvWriter(path, model, scores, source)
    raise CommandError(f"--out {printable(path)}: expected a file name ending in .csv or .npy")


class _CsvWriter:
    """CSV rows into a temporary file: renamed to `path` by `commit`, or, with no path, copied to
    standard output by `commit` -- so nothing reaches its destination before the whole input is
    classified.  On standard output, names from files are written with control characters
    escaped."""

    def __init__(self, path, model, scores, source):
        if path is None:
            self._destination = None
            self._file = tempfile.TemporaryFile("w+", newline="")
        else:
            self._destination = _Destination(path, "--out")
            self._file = open(self._destination.temporary, "w", newline="")
        self._text = str if path is not None else printable
        self._writer = csv.writer(self._file)
        self._model, self._source = model, source
        header = ["input", "label"] + (["class"] if model.classes else [])
        if scores:
            header += [f"score_{_class_name(model, k)}" for k in range(model.n_classes)]
        self._writer.writerow(list(map(self._text, header)))

    def write(self, start, labels, outputs):
        for i, label in enumerate(labels):
            row = [self._text(self._source.name(start + i)), int(label)]
            if self._model.classes:
                row.append(self._text(self._model.classes[label]))
            if outputs is not None:
                row += [f"{value:.6g}" for value in outputs[i]]
            self._writer.writerow(row)

    def commit(self):
        if self._destination is None:
            self._file.seek(0)
            shutil.copyfileobj(self._file, sys.stdout)
            sys.stdout.flush()
            self._file.close()
        else:
            self._file.close()
            self._destination.commit()

    def discard(self):
        self._file.close()
        if self._destination is not None:
            self._destination.discard()


class _NpyWriter:
    """Labels, int64 (N,); with scores, the outputs, float32 (N, n_classes), whose argmax along
    axis 1 are the labels.  Written into a temporary file renamed to `path` by `commit`."""

    def __init__(self, path, count, model, scores):
        self._destination = _Destination(path, "--out")
        shape = (count, model.n_classes) if scores else (count,)
        try:
            self._array = np.lib.format.open_memmap(
                self._destination.temporary,
                mode="w+",
                dtype=np.float32 if scores else np.int64,
                shape=shape,
            )
        except BaseException:
            self._destination.discard()
            raise

    def write(self, start, labels, outputs):
        values = labels if outputs is None else outputs
        self._array[start : start + len(values)] = values

    def commit(self):
        self._array.flush()
        del self._array
        self._destination.commit()

    def discard(self):
        self._array = None
        self._destination.discard()


def _command_predict(args):
    _refuse_overwriting(args.out, [args.input, args.model], "--out")
    model = load_model(args.model, _architecture_arguments(args))
    with _ImageSource(args.input, args.quiet) as source:
        writer = _open_output(args.out, len(source), model, args.scores, source)
        try:
            for start, _, labels, outputs in _predict_chunks(
                model, source, args.scores, args.quiet
            ):
                writer.write(start, labels, outputs)
            writer.commit()
        except BaseException:
            writer.discard()
            raise
    if args.out is not None and not args.quiet:
        print(
            f"wrote {'scores' if args.scores else 'labels'} of "
            f"{_plural(len(source), 'image')} to {printable(args.out)}",
            file=sys.stderr,
        )
    return 0


def _folder_labels(model, folders, root):
    """Class indices of the images of a root/<class>/<image> folder, matched by folder name
    against the model's class names (ignoring case; a "/" in a class name may be written "_"
    or "-"), or, for a model without class names, folder names 0 .. n_classes - 1."""
    names = model.classes or [str(k) for k in range(model.n_classes)]
    index = {}
    for k, name in enumerate(names):
        for variant in (name, name.replace("/", "_"), name.replace("/", "-")):
            index.setdefault(variant.casefold(), k)
    unknown = sorted({folder for folder in folders if folder.casefold() not in index})
    if unknown:
        raise CommandError(
            f"{printable(root)}: class folders {', '.join(map(printable, unknown))} "
            f"match none of the model's classes "
            f"({', '.join(map(printable, names))})"
        )
    return np.array([index[folder.casefold()] for folder in folders], dtype=np.int64)


def _command_evaluate(args):
    _refuse_overwriting(args.plot, [args.images, args.labels, args.model], "--plot")
    plot = _plot_destination(args.plot) if args.plot else None  # fail before the work
    try:
        return _evaluate(args, plot)
    except BaseException:
        if plot is not None:
            plot.discard()
        raise


def _plot_destination(path):
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in PLOT_SUFFIXES:
        raise CommandError(
            f"--plot {printable(path)}: expected a file name ending in {', '.join(PLOT_SUFFIXES)}"
        )
    import_pyplot()
    return _Destination(path, "--plot")


def _evaluate(args, plot):
    model = load_model(args.model, _architecture_arguments(args))
    with _ImageSource(args.images, args.quiet) as source:
        if args.labels is not None:
            labels = _read_labels(args.labels, len(source))
            labels_name = args.labels
        elif source.class_folders is not None:
            labels = _folder_labels(model, source.class_folders, args.images)
            labels_name = f"the class folders of {args.images}"
        else:
            raise CommandError(
                f"{printable(args.images)}: expected LABELS, or a folder of class "
                f"subfolders (root/<class>/<image>) to take them from"
            )
        k = model.n_classes
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise CommandError(
                f"{printable(labels_name)}: labels must lie in 0..{k - 1} for "
                f"this {k}-class model; found {labels.min()}..{labels.max()}"
            )
        if len(source) == 0:
            raise CommandError(
                f"{printable(args.images)}: nothing to evaluate (it holds no images)"
            )
        confusion = np.zeros((k, k), dtype=np.int64)
        mistakes = []  # (index, image, true, predicted), the first few
        for start, images, predicted, _ in _predict_chunks(model, source, False, args.quiet):
            truth = labels[start : start + len(predicted)]
            np.add.at(confusion, (truth, predicted), 1)
            for i in np.flatnonzero(truth != predicted)[: MAX_PLOTTED_MISTAKES - len(mistakes)]:
                # A copy: a view would keep the whole CHUNK_IMAGES-image chunk alive.
                mistakes.append((start + i, images[i].copy(), truth[i], predicted[i]))
    names = [printable(_class_name(model, c)) for c in range(k)]
    total, correct = confusion.sum(), np.trace(confusion)
    print(f"accuracy: {correct / max(total, 1):.4f} ({correct:,}/{total:,} correct)")
    print("\nper-class accuracy:")
    width = max(map(len, names))
    for c in range(k):
        count = confusion[c].sum()
        value = f"{confusion[c, c] / count:.4f}" if count else "   n/a"
        print(f"  {c:>3}  {names[c]:<{width}}  {value}  ({confusion[c, c]:,}/{count:,})")
    print("\nconfusion matrix (rows: true class, columns: predicted class):")
    cell = max(5, len(f"{confusion.max():,}") + 1)
    print("     " + "".join(f"{c:>{cell}}" for c in range(k)))
    for c in range(k):
        print(f"  {c:>3}" + "".join(f"{value:>{cell},}" for value in confusion[c]))
    if plot is not None:
        _plot_confusion(
            plot.temporary,
            confusion,
            names,
            mistakes,
            model,
            os.path.splitext(plot.path)[1].lower().lstrip("."),
        )
        plot.commit()
        print(f"\nwrote {printable(plot.path)}")
    return 0


def import_pyplot() -> ModuleType:
    """Import matplotlib's pyplot on the non-interactive Agg backend, for ``--plot`` options.

    Returns
    -------
    module
        ``matplotlib.pyplot``.

    Raises
    ------
    ImportError
        If matplotlib is not installed; the message names the extra that installs it.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'lenet_fast[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _plot_confusion(path, confusion, names, mistakes, model, file_format="png"):
    pyplot = import_pyplot()
    figure = pyplot.figure(figsize=(15, 7), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=(1.1, 1))
    axes = left.subplots()
    axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    total = confusion.sum()
    axes.set_title(
        f"confusion matrix: accuracy {np.trace(confusion) / max(total, 1):.4f} on {total:,} images"
    )
    threshold = confusion.max() / 2
    for (row, column), value in np.ndenumerate(confusion):
        axes.text(
            column,
            row,
            f"{value}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > threshold else "black",
        )
    columns = 6
    rows = max(1, -(-len(mistakes) // columns))
    grid = right.subplots(rows, columns, squeeze=False)
    right.suptitle(
        f"first {len(mistakes)} misclassified images (true -> predicted)"
        if mistakes
        else "no misclassified images"
    )
    for axes_index, axes in enumerate(grid.flat):
        axes.axis("off")
        if axes_index < len(mistakes):
            index, image, truth, predicted = mistakes[axes_index]
            axes.imshow(
                np.asarray(image).reshape(image.shape[-2:])
                if image.ndim == 2 or image.shape[0] == 1
                else np.moveaxis(image, 0, -1),
                cmap="gray",
            )
            axes.set_title(
                f"#{index}\n{printable(_class_name(model, truth))} -> "
                f"{printable(_class_name(model, predicted))}",
                fontsize=7,
            )
    figure.savefig(path, dpi=100, format=file_format)
    pyplot.close(figure)


def _command_info(args):
    model = load_model(args.model, _architecture_arguments(args))
    summary = model.summary()
    dims = model.dimensions
    architecture = model.architecture
    metadata = model.metadata
    config = show_config(False)
    rows = [
        ("model", printable(args.model)),
        (
            "architecture",
            f"conv {architecture['conv_activation']}, fc1 "
            f"{architecture['fc_activation']}, output "
            f"{architecture['output_activation']}, {architecture['pool']} pooling"
            + (
                f" (assumed: {', '.join(model.assumed_architecture)})"
                if model.assumed_architecture
                else ""
            ),
        ),
        (
            "geometry",
            f"input {'x'.join(map(str, architecture['input_size']))}, conv1 padding "
            f"{architecture['conv1_padding']}, conv2 padding "
            f"{architecture['conv2_padding']}, "
            f"{'conv3' if model.sizes.has_conv3 else 'flatten'} -> "
            f"{len(model.sizes.dense_units)} dense",
        ),
        ("widths", "-".join(str(size) for size in dims.values())),
        ("parameters", f"{summary.total_parameters:,}"),
        (
            "FLOPs per image",
            f"{2 * summary.total_multiply_adds:,} ({summary.total_multiply_adds:,} multiply-adds)",
        ),
    ]
    preprocessing = metadata.get("preprocessing")
    rows.append(
        (
            "preprocessing",
            f"uint8 x -> (x / {preprocessing['scale']:g} - {preprocessing['mean']:g}) / "
            f"{preprocessing['std']:g}; 28 x 28 zero-padded by {preprocessing.get('pad', 2)}"
            if preprocessing
            else "none stored: the model takes normalised float input only",
        )
    )
    rows.append(("classes", ", ".join(model.classes) if model.classes else "none stored"))
    provenance = metadata.get("provenance", {})
    if isinstance(provenance, dict):
        for key, value in sorted(provenance.items()):
            rows.append((f"provenance.{key}", str(value)))
    else:  # free-form metadata: shown as it is
        rows.append(("provenance", str(provenance)))
    for key, value in sorted(metadata.items()):
        if key not in ("preprocessing", "classes", "provenance"):
            rows.append((f"metadata.{key}", str(value)))
    rows += [
        ("ISA", f"{config['isa']} (usable: {', '.join(config['usable_isas'])})"),
        ("threads", f"{model.num_threads} (usable CPUs: {config['usable_cpus']})"),
    ]
    rows = [(printable(name), printable(value)) for name, value in rows]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()
    print(summary)
    return 0


def _is_torchscript_archive(path):
    """Whether `path` is a zip archive with TorchScript code in it (``<name>/code/...``), as
    ``torch.jit.save`` writes; ``torch.save`` archives hold data only.  Reads the zip's
    directory, nothing else."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in f"/{name}" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _read_convert_input(args, architecture):
    """The model in INPUT: any file `read_model_file` reads (a bare or lenet_fast .npz, an .onnx
    graph, a Keras .keras/.h5 model), or (--torch) a PyTorch state_dict file read with
    torch.load(weights_only=True)."""
    path = args.input
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if args.torch:
        try:
            import torch
        except ImportError as exc:
            raise ImportError("--torch needs PyTorch: pip install torch") from exc
        if _is_torchscript_archive(path):
            raise CommandError(
                f"{path}: a TorchScript archive (torch.jit.save), which holds code; lenet-fast "
                f"runs no code from a file. If you trust it, convert it in Python: "
                f"LeNet.from_torch(torch.jit.load(path)).save_npz(...)"
            )
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError for anything but plain tensors, ...
            raise CommandError(
                f"{path}: not a PyTorch state_dict file torch.load can read with "
                f"weights_only=True ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]})"
            ) from exc
        for key in ("state_dict", "model_state_dict", "model"):  # a training checkpoint
            if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                loaded = loaded[key]
        if not isinstance(loaded, dict):
            raise CommandError(
                f"{path}: expected a state_dict (a dict of tensors); found {type(loaded).__name__}"
            )
        return LeNet.from_state_dict(loaded, **architecture)
    return read_model_file(path, architecture)


def _parse_preprocessing(text):
    values = {"scale": 255.0, "mean": 0.0, "std": 1.0}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in values or not value:
            raise CommandError(
                f"--preprocessing {text!r}: expected comma-separated scale=..., "
                f"mean=..., std=... (e.g. mean=0.1307,std=0.3081; scale "
                f"defaults to 255); found {part.strip()!r}"
            )
        try:
            values[key] = float(value)
        except ValueError as exc:
            raise CommandError(f"--preprocessing: {key} must be a number; found {value!r}") from exc
    return values


def _parse_classes(text):
    """Class names: a UTF-8 text file of one per line (at most the metadata size a model file
    may hold), or comma-separated."""
    if os.path.isfile(text):
        with open(text, "rb") as file:
            data = file.read(_weights.MAX_METADATA_BYTES + 1)
        if len(data) > _weights.MAX_METADATA_BYTES:
            raise CommandError(
                f"--classes {printable(text)}: expected a text file of at most "
                f"{_weights.MAX_METADATA_BYTES:,} bytes (one class name per line)"
            )
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise CommandError(
                f"--classes {printable(text)}: expected UTF-8 text (one class name per line); {exc}"
            ) from exc
        return [line.strip() for line in lines if line.strip()]
    return [name.strip() for name in text.split(",")]


def _command_convert(args):
    if not args.output.lower().endswith(".npz"):
        raise CommandError(f"{args.output}: expected an output file name ending in .npz")
    _refuse_overwriting(args.output, [args.input], "OUTPUT")
    architecture = {
        key: value for key, value in _architecture_arguments(args).items() if value is not None
    }
    with _caught_architecture_warnings():
        model = _read_convert_input(args, architecture)
    assumed = model.assumed_architecture
    if assumed:
        # Writing a guess into a self-describing file would make it silent from then on.
        flags = " ".join(
            f"--{option.replace('_', '-')} {value}" for option, value in assumed.items()
        )
        raise CommandError(
            f"{args.input} does not state {', '.join(assumed)}, and a converted "
            f"file must not store a guess: pass {flags} (what lenet_fast would "
            f"assume for this layout) or the values the model was trained with"
        )
    metadata = model.metadata
    if args.classes is not None:
        metadata["classes"] = _parse_classes(args.classes)
    if args.preprocessing is not None:
        metadata["preprocessing"] = _parse_preprocessing(args.preprocessing)
    model = LeNet(model.weights, **model.architecture, metadata=metadata)
    model.save_npz(args.output)  # atomic: a temporary file in the same folder, renamed
    if not args.quiet:
        a = model.architecture
        print(
            f"wrote {args.output}: {model!r}; conv {a['conv_activation']}, fc "
            f"{a['fc_activation']}, output {a['output_activation']}, {a['pool']} pooling"
            + (f"; {len(model.classes)} class names" if model.classes else "")
            + (
                "; preprocessing stored (uint8 input accepted)"
                if "preprocessing" in metadata
                else ""
            ),
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(
        prog=_PROGRAM, description="LeNet-5 inference on the CPU: pretrained models, data, tools."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="classify the bundled Fashion-MNIST sample with the shipped "
        "model: accuracy, examples, throughput",
    )
    predict = commands.add_parser("predict", help="predict labels of images", epilog=_INPUT_FORMATS)
    predict.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    predict.add_argument(
        "input",
        metavar="INPUT",
        help="an IDX file (.gz or raw), a .npy file, an image file, or a folder of images",
    )
    predict.add_argument(
        "--out",
        metavar="FILE",
        help="write to FILE: .csv (with class names) or .npy, only once every "
        "image is classified (nothing is left on an error or Ctrl-C); "
        "default: CSV on standard output, also written at the end",
    )
    predict.add_argument(
        "--scores",
        action="store_true",
        help="write the network outputs too (in .npy: the outputs only)",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and confusion matrix on labelled images",
        epilog=_INPUT_FORMATS,
    )
    evaluate.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    evaluate.add_argument(
        "images",
        metavar="IMAGES",
        help="as INPUT of predict, or a folder of class subfolders "
        "(root/<class>/<image>, torchvision's ImageFolder layout)",
    )
    evaluate.add_argument(
        "labels",
        metavar="LABELS",
        nargs="?",
        help="an IDX or .npy file of labels; default: the class folder names, "
        "matched against the model's class names",
    )
    evaluate.add_argument(
        "--plot",
        metavar="FILE",
        help="save the confusion matrix and misclassified images (.png, .pdf or .svg)",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    info = commands.add_parser(
        "info", help="architecture, size, preprocessing and provenance of a model"
    )
    info.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    convert = commands.add_parser(
        "convert",
        help="turn a bare state_dict .npz, an .onnx graph, a Keras .keras/.h5 model "
        "or (--torch) a PyTorch .pt/.pth state_dict into a self-describing "
        "lenet_fast .npz",
        description="Write a lenet_fast .npz that states its architecture (and optionally its "
        "class names and preprocessing), so that it loads with no warning and "
        "classifies images from the command line.  Bare weights do not say which "
        "activations the model used: state them with the options below (convert "
        "refuses to store a guess).",
    )
    convert.add_argument(
        "input",
        metavar="INPUT",
        help="a .npz (np.savez of a state_dict, or a lenet_fast file), an .onnx "
        "file, a Keras .keras/.h5 model (read with h5py), or with --torch "
        "a .pt/.pth state_dict",
    )
    convert.add_argument("output", metavar="OUTPUT.npz")
    convert.add_argument(
        "--torch",
        action="store_true",
        help="INPUT is a PyTorch file: read with torch.load(weights_only=True)",
    )
    convert.add_argument(
        "--classes",
        metavar="NAMES",
        help="class names: comma-separated, or a text file with one per line",
    )
    convert.add_argument(
        "--preprocessing",
        metavar="SPEC",
        help="how uint8 pixels become the input: (x / scale - mean) / std, "
        "given as scale=255,mean=0.1307,std=0.3081 (scale defaults to "
        "255, mean to 0, std to 1)",
    )
    convert.add_argument("--quiet", action="store_true", help="no summary line")
    for subcommand in (predict, evaluate, info, convert):
        group = subcommand.add_argument_group(
            "architecture (for weight files that do not state it; beats what the file says)"
        )
        for option, choices in _ARCHITECTURE_OPTIONS.items():
            group.add_argument(
                f"--{option.replace('_', '-')}",
                dest=option,
                choices=choices,
                metavar="{" + ",".join(choices) + "}",
            )
        group.add_argument(
            "--input-size",
            dest="input_size",
            type=_input_size,
            metavar="SIZE",
            help="image size the network takes: 28, 32 or HxW (default: from "
            "the file, else inferred from the weights' shapes)",
        )
        for option in ("conv1_padding", "conv2_padding"):
            group.add_argument(
                f"--{option.replace('_', '-')}",
                dest=option,
                type=int,
                choices=PADDINGS,
                metavar="{0,2}",
                help=f"zero padding of {option[:5]} (0, or 2 for 'same')",
            )
        group.add_argument(
            "--batchnorm-eps",
            dest="batchnorm_eps",
            type=_batchnorm_eps,
            metavar="EPS",
            help="eps of the BatchNorm layers of a state_dict, which does not store it "
            "(default: PyTorch's 1e-5, announced as assumed)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lenet-fast`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error (reported as one line on stderr), 2 on a
        usage error.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, whose usage line names it
        subcommands = next(
            action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        )
        subcommands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    commands = {
        "demo": _command_demo,
        "predict": _command_predict,
        "evaluate": _command_evaluate,
        "info": _command_info,
        "convert": _command_convert,
    }
    try:
        return commands[args.command](args)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`): not an error
        return 0
    except KeyboardInterrupt:
        return 130
    except (CommandError, OSError, ValueError, TypeError, ImportError, MemoryError) as exc:
        print(f"{_PROGRAM}: error: {_describe(exc)}", file=sys.stderr)
        return 1


def _describe(exc):
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return printable(f"{exc.filename}: {exc.strerror}")
    return printable(" ".join(str(exc).split()) or type(exc).__name__)
