"""The public `LeNet` class: load weights, validate inputs once, hand contiguous float32 batches to
the compiled engine of the ISA level chosen at import (``lenet_fast._dispatch``).

Everything user-facing is checked here, with messages that name the argument, what was expected
and what was found; the kernels then trust their input.  Inputs that need converting (float16/64,
non-contiguous or byte-swapped views) are converted in chunks, so a million-image batch never
needs a second full-size copy.
"""

from __future__ import annotations

import errno
import os
import threading
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _architecture, _dispatch, _preprocessing, _weights
from ._architecture import ARCHITECTURE_OPTIONS, DEFAULT_ARCHITECTURE, GEOMETRY_OPTIONS
from ._architecture import OPTIONS as _ALLOWED
from ._summary import ModelSummary

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._architecture import Sizes

# What a weight file that does not state its architecture is assumed to be, by layout (origin):
# the PyTorch tutorial's CIFAR-10 `Net` has ReLU after every layer but the last; everything else
# gets this package's defaults (the design source's).  Either way it is announced.
ASSUMED_ARCHITECTURES = {
    "PyTorch tutorial": {
        "conv_activation": "relu",
        "fc_activation": "relu",
        "output_activation": "identity",
        "pool": "max",
    },
    "canonical": DEFAULT_ARCHITECTURE,
    # Caffe's LeNet: no activation after the convolutions, ReLU after ip1, softmax ("prob").
    "Caffe": {
        "conv_activation": "identity",
        "fc_activation": "relu",
        "output_activation": "softmax",
        "pool": "max",
    },
}
_SAVED_GUESS = "saved guess"
_ASSUMED_BATCHNORM_EPS = "assumed_batchnorm_eps"  # metadata: BatchNorms folded with a guessed eps
_ORIGINS = {
    "PyTorch tutorial": "the PyTorch tutorial layout's architecture",
    "canonical": "lenet_fast's defaults for its own layout",
    "Caffe": "Caffe's LeNet (the ip1/ip2 names)",
    _SAVED_GUESS: "values that were already assumed, not stated, when this file was "
    "written by save_npz",
}
_FLOAT32 = np.dtype(np.float32)  # native float32 (a byte-swapped one is a different dtype object)
_CONVERSION_CHUNK = 4096  # images converted to float32 at a time
_CHUNK_PER_THREAD = 512  # at most this many images per thread per kernel call (Ctrl-C)
_IMAGES_PER_THREAD = 4  # a batch of n uses at most n // 4 threads (see kernels.pxi.tp)
MAX_THREADS = 256  # a larger num_threads is refused (ValueError), never clipped
_OVERLAP_WORK = 1 << 16  # effort np.shares_memory may spend deciding whether out overlaps x


def _activation_code(kernels, name):
    return getattr(kernels, f"ACT_{name.upper()}")


def _allowed(option):
    return _architecture.allowed_text(option)


def _option_text(option, value):
    """A value as a user would type it: input_size 28 for (28, 28), "28x32" otherwise."""
    if option == "input_size":
        height, width = value
        return str(height) if height == width else f"({height}, {width})"
    return repr(value)


def _flag_text(option, value):
    if option == "input_size":
        height, width = value
        return f"--input-size {height}" if height == width else f"--input-size {height}x{width}"
    return f"--{option.replace('_', '-')} {value}"


def _stored_architecture(metadata, explicit):
    """The architecture a file stores, checked: a dict of known options with allowed values
    (a value the caller overrides explicitly is not used, so it is not held against the file)."""
    stored = metadata.get("architecture", {})
    if not isinstance(stored, dict):
        raise _weights.MetadataError(
            f"metadata['architecture'] must be a dict; got {type(stored).__name__}"
        )
    checked = {}
    for option, value in stored.items():
        if option not in ARCHITECTURE_OPTIONS:
            raise _weights.MetadataError(
                f"metadata['architecture'] has an unknown option {option!r} (known: "
                f"{', '.join(ARCHITECTURE_OPTIONS)})"
            )
        if explicit.get(option) is not None:
            continue
        if option in GEOMETRY_OPTIONS:
            try:
                checked[option] = _architecture.check_option(option, value)
            except ValueError:
                raise _weights.MetadataError(
                    f"metadata['architecture']['{option}'] must be {_allowed(option)}; "
                    f"got {value!r}"
                ) from None
        elif not isinstance(value, str) or value not in _ALLOWED[option]:
            raise _weights.MetadataError(
                f"metadata['architecture']['{option}'] must be one of {_allowed(option)}; "
                f"got {value!r}"
            )
        else:
            checked[option] = value
    return checked


class ArchitectureWarning(UserWarning):
    """The weights did not state an activation, the pooling, (where their shapes allow
    several) the geometry or the eps of their BatchNorm layers, so lenet_fast assumed it.

    Raised (as a warning) by `LeNet.from_npz` and `LeNet.from_state_dict` when neither the call
    nor the file states every option; the message names the assumed values and how to state them.

    Parameters
    ----------
    message : str
        The warning's text.
    assumed : dict of str to str, optional
        The options that were assumed, with the values used.

    Attributes
    ----------
    assumed : dict of str to str
        The options that were assumed, with the values used.
    """

    def __init__(self, message, assumed=None):
        super().__init__(message)
        self.assumed = dict(assumed or {})


def _stored_guess(metadata, explicit):
    """The options a file's `save_npz` recorded as assumed (``metadata['assumed_architecture']``,
    a list of option names), with the values stored for them; options the caller states now
    are no longer a guess."""
    names = metadata.get("assumed_architecture", [])
    if not isinstance(names, list) or not all(name in ARCHITECTURE_OPTIONS for name in names):
        raise _weights.MetadataError(
            f"metadata['assumed_architecture'] must be a list of option names "
            f"({', '.join(ARCHITECTURE_OPTIONS)}); got {names!r}"
        )
    stored = metadata.get("architecture", {})
    missing = [name for name in names if name not in stored]
    if missing:
        raise _weights.MetadataError(
            f"metadata['assumed_architecture'] names {', '.join(missing)}, which "
            f"metadata['architecture'] does not hold"
        )
    return {
        name: (
            _architecture.check_option(name, stored[name])
            if name in GEOMETRY_OPTIONS
            else stored[name]
        )
        for name in names
        if explicit.get(name) is None
    }


def _assumed_batchnorm_eps(weights, metadata, stated):
    """(eps, recorded): the eps the weights' BatchNorms were folded with where it was assumed
    (None: no BatchNorm, or its eps is stated), and whether a file recorded that guess.
    Either `canonicalize` folded them just now with the default, or a file `save_npz` wrote
    records that an assumed eps was folded in earlier (``metadata['assumed_batchnorm_eps']``):
    then a `stated` eps must be that value, since a folded BatchNorm cannot be refolded."""
    folded_now = getattr(weights, "assumed_batchnorm_eps", None)
    if folded_now is not None:
        return folded_now, False
    if _ASSUMED_BATCHNORM_EPS not in metadata:
        if stated is not None and not getattr(weights, "batchnorm", None):
            raise ValueError(
                f"batchnorm_eps={stated!r} was given, but these weights hold no BatchNorm layer "
                f"to fold it into (expected running_mean/running_var entries; a file save_npz "
                f"wrote holds its BatchNorms folded already): leave batchnorm_eps out"
            )
        return None, False
    try:
        recorded = _weights.check_batchnorm_eps(metadata[_ASSUMED_BATCHNORM_EPS])
    except ValueError as exc:
        raise _weights.MetadataError(f"metadata['{_ASSUMED_BATCHNORM_EPS}']: {exc}") from None
    if stated is None:
        return recorded, True
    if float(stated) != recorded:  # (stated was checked by canonicalize)
        raise ValueError(
            f"batchnorm_eps={stated!r}, but this file's BatchNorm layers were folded into its "
            f"weights with an assumed eps of {recorded!r} when it was written; a folded "
            f"BatchNorm cannot be refolded: load the original state_dict with "
            f"batchnorm_eps={stated!r}"
        )
    return None, False


def _resolve_architecture(explicit, stored, layout=None, assumed_values=None):
    """Explicit arguments beat the file's stored architecture, which beats what is assumed for
    the weights' layout (`ASSUMED_ARCHITECTURES`, else the defaults).

    Returns
    -------
    architecture, assumed : dict, dict
        Every option's value; the options neither stated, with their assumed values.
    """
    architecture, assumed = {}, {}
    defaults = {
        **ASSUMED_ARCHITECTURES.get(layout, DEFAULT_ARCHITECTURE),
        **{option: value for option, value in (assumed_values or {}).items() if option in _ALLOWED},
    }
    for option, default in defaults.items():
        value = explicit.get(option)
        if value is not None and value not in _ALLOWED[option]:
            raise ValueError(f"{option} must be one of {_allowed(option)}; got {value!r}")
        if value is None and option not in stored:
            assumed[option] = default
        architecture[option] = stored.get(option, default) if value is None else value
    return architecture, assumed


def _warn_assumed(assumed, layout, source, stacklevel):
    """Announce an assumed architecture (one `ArchitectureWarning`, one line of text)."""
    if not assumed:
        return
    values = ", ".join(
        f"{option}={_option_text(option, value)}" for option, value in assumed.items()
    )
    flags = " ".join(_flag_text(option, value) for option, value in assumed.items())
    origin = _ORIGINS.get(
        layout, "lenet_fast's defaults (the layout does not tell the model's origin)"
    )
    architecture_options = set(assumed) - {"batchnorm_eps"}
    if architecture_options and architecture_options <= set(GEOMETRY_OPTIONS):
        origin = (
            "fc1's inputs fit several geometries; the most common one was taken: input "
            "28 before 32, unpadded before padded"
        )
    elif architecture_options & set(GEOMETRY_OPTIONS):
        origin += "; the geometry: fc1's inputs fit several, the most common one was taken"
    if "batchnorm_eps" in assumed and layout != _SAVED_GUESS:
        batchnorm = (
            "a state_dict does not store a BatchNorm's eps: PyTorch's default; nor whether it "
            "came before the activation, which is assumed -- LeNet.from_torch reads both"
        )
        origin = f"{origin}; batchnorm_eps: {batchnorm}" if architecture_options else batchnorm
    message = (
        f"{source + ': ' if source else ''}neither the call nor the weights state "
        f"{', '.join(assumed)}, so lenet_fast assumed {values} ({origin}); if the model was "
        f"trained with anything else, its outputs and labels are wrong. State it: pass the "
        f"options (e.g. {values}; on the "
        f"command line {flags}), or write a file that states it (LeNet.from_torch(net)"
        f".save_npz(path), save_npz of a model loaded with the options stated, or lenet-fast "
        f"convert), which loads with no warning"
    )
    warnings.warn(ArchitectureWarning(message, assumed), stacklevel=stacklevel + 1)


def _check_explicit(explicit):
    """Check the options a caller passes (None: not stated)."""
    for option, value in explicit.items():
        if value is not None:
            _architecture.check_option(option, value)


def _check_num_threads(value, argument="num_threads"):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be a positive integer or None; got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be >= 1; got {value}")
    if value > MAX_THREADS:
        raise ValueError(
            f"{argument} must be at most {MAX_THREADS} (lenet_fast.MAX_THREADS); got {value}"
        )
    return int(value)


# Shared with lenet_fast.dask, which validates what it is given exactly as LeNet does.
check_num_threads = _check_num_threads


def check_images(model: LeNet, images: ArrayLike) -> tuple[np.ndarray, int]:
    """`model`'s validation of `images` (shape, dtype), as `LeNet.predict` does it.

    Shared with `lenet_fast.dask`, which checks each block as the model would.

    Parameters
    ----------
    model : LeNet
        The model that will run on the images.
    images : array_like
        The batch, as given to `LeNet.predict`.

    Returns
    -------
    images : ndarray
        The batch as an (N, C, H, W) array (not yet converted to float32).
    n : int
        The number of images.

    Raises
    ------
    ValueError
        If the images' shape or dtype is not one the model takes (the message says which).
    """
    return model._as_images(images)


_thread_start_lock = threading.Lock()
_threads_known_to_start = 1


def _ensure_threads_can_start(count):
    """Raise OSError if this process cannot start `count` - 1 more threads right now.

    The kernels' thread pool would quietly run on fewer threads than asked for (GNU OpenMP,
    which the kernels used before, ended the whole process).  So before the kernels first use
    `count` threads, as many are started (and joined) here, and a process that cannot start
    them gets an exception it can handle.  The pool keeps its threads between calls, so each
    larger count is probed only once.
    """
    global _threads_known_to_start
    if count <= _threads_known_to_start:
        return
    with _thread_start_lock:
        release = threading.Event()
        started = []
        try:
            for _ in range(count - 1):
                thread = threading.Thread(target=release.wait, daemon=True)
                thread.start()
                started.append(thread)
        except RuntimeError as exc:
            raise OSError(
                errno.EAGAIN,
                f"could not start {count} threads ({exc}: the memory or "
                f"process limit is too low); pass a smaller num_threads "
                f"(this process started {len(started) + 1})",
            ) from None
        finally:
            release.set()
            for thread in started:
                thread.join()
        _threads_known_to_start = max(_threads_known_to_start, count)


class LeNet:
    """Inference of a LeNet of the family on the CPU with compiled SIMD kernels.

    The network: input C x H x W -> conv1 5x5 (padding 0 or 2) -> 2x2 pool -> conv2 5x5 (padding
    0 or 2) -> 2x2 pool -> conv3 5x5 (1 x 1 output; only after a 5 x 5 pool2) or a flatten ->
    one to three dense layers (see `lenet_fast._architecture`).  Today's LeNet-5 (32 x 32 input,
    or 28 x 28 zero-padded by 2; conv3, fc1, fc2) is one member; the unpadded MNIST LeNet and
    Caffe's LeNet (28 x 28) are others.  Channel widths, input channels, class count and the
    layers present come from the weights.

    Parameters
    ----------
    weights : mapping of str to array_like
        Weights in any layout `from_state_dict` accepts.  The architecture is what the
        arguments say (their defaults included); `from_npz`, `from_state_dict` and
        `from_torch` instead read or announce it.
    conv_activation : {"relu", "sigmoid", "tanh", "identity"}, optional
        Applied after conv1, conv2 and conv3 (before pooling); default "relu".
    fc_activation : {"relu", "sigmoid", "tanh", "identity"}, optional
        Applied after fc1; default "sigmoid".
    output_activation : str, optional
        Applied after the last dense layer: "sigmoid" (the default), "relu", "tanh",
        "identity", "softmax" (normalises over the classes) or "log_softmax" (its logarithm;
        PyTorch's MNIST examples end with it).
    pool : {"max", "avg"}, optional
        Default "max".  (The defaults are `lenet_fast._architecture.DEFAULT_ARCHITECTURE`.)
    input_size : int or (int, int), optional
        The images the network takes (before conv1's padding).  Default: worked out from the
        weights (with conv3, 32; without, from fc1's inputs); where several sizes fit, the most
        common is taken and announced with an `ArchitectureWarning`.
    conv1_padding, conv2_padding : {0, 2}, optional
        Zero padding of conv1 / conv2 (2 is Keras' ``"same"``); default as for `input_size`.
        2x2, stride-2 pooling after conv1 and conv2.
    num_threads : int, optional
        Threads for large batches, 1 to `MAX_THREADS` (256; more is refused with a
        ``ValueError``); default: ``OMP_NUM_THREADS`` or the CPUs this process may use.
    key_map : mapping, optional
        Maps canonical names (``"conv1.weight"`` or a layer ``"conv1"``) to the names in `weights`.
    strict : bool, default True
        Reject keys that the recognised layout does not use.
    metadata : dict, optional
        Extra JSON-serialisable information saved with the model by `save_npz`.
    batchnorm_eps : float, default 1e-5
        The eps of BatchNorm layers in `weights` (folded into the layer each follows);
        PyTorch's default.

    Examples
    --------
    >>> model = LeNet.from_npz("lenet.npz")            # doctest: +SKIP
    >>> labels = model.predict(images)                 # doctest: +SKIP
    """

    def __init__(
        self,
        weights: Mapping[str, ArrayLike],
        *,
        conv_activation: str | None = None,
        fc_activation: str | None = None,
        output_activation: str | None = None,
        pool: str | None = None,
        input_size: int | tuple[int, int] | None = None,
        conv1_padding: int | None = None,
        conv2_padding: int | None = None,
        num_threads: int | None = None,
        key_map: Mapping[str, str] | None = None,
        strict: bool = True,
        metadata: dict[str, Any] | None = None,
        batchnorm_eps: float = _weights.BATCHNORM_EPS,
    ) -> None:
        # None: the default of `lenet_fast._architecture.DEFAULT_ARCHITECTURE` (stated by the
        # call, so never announced as assumed).
        architecture, _ = _resolve_architecture(
            {
                "conv_activation": conv_activation,
                "fc_activation": fc_activation,
                "output_activation": output_activation,
                "pool": pool,
            },
            {},
        )
        weights = _weights.canonicalize(
            weights,
            key_map=key_map,
            strict=strict,
            input_size=input_size,
            conv1_padding=conv1_padding,
            conv2_padding=conv2_padding,
            conv_activation=architecture["conv_activation"],
            fc_activation=architecture["fc_activation"],
            batchnorm_eps=batchnorm_eps,
        )
        self._setup(
            weights,
            {**architecture, **weights.sizes.geometry},
            num_threads,
            metadata or {},
            assumed=weights.assumed_geometry,
        )
        _warn_assumed(weights.assumed_geometry, weights.layout, None, stacklevel=2)

    def _setup(self, weights, architecture, num_threads, metadata, kernels=None, assumed=None):
        geometry = _architecture.normalize_geometry(
            {option: architecture[option] for option in GEOMETRY_OPTIONS if option in architecture}
        )
        sizes = getattr(weights, "sizes", None)
        if sizes is None or sizes.geometry != geometry:
            keys = [key for key in _architecture.CANONICAL_KEYS if key in weights]
            sizes = _architecture.sizes({key: np.shape(weights[key]) for key in keys}, **geometry)
        weights = {key: weights[key] for key in sizes.keys}  # a plain dict, canonical order
        for array in weights.values():
            array.setflags(write=False)
        self._weights = weights
        self._sizes = sizes
        self._architecture = {
            **{option: architecture[option] for option in _ALLOWED},
            **sizes.geometry,
        }
        self._assumed = dict(assumed or {})
        self._dimensions = sizes.dimensions
        # _as_images' fast path: the (C, H, W) of images that need no reshaping, and the (H, W)
        # of (N, H, W) images when C is 1; the engine's direct calls take both.
        channels, accepted = sizes.dimensions["in_channels"], sizes.accepted_input_sizes
        self._image_shapes = frozenset((channels, *size) for size in accepted)
        self._plane_shapes = frozenset(accepted if channels == 1 else ())
        self._direct_shapes = self._image_shapes | self._plane_shapes
        self._metadata = {
            key: value
            for key, value in metadata.items()
            if key not in ("architecture", "assumed_architecture", _ASSUMED_BATCHNORM_EPS)
        }
        self._preprocessing = _preprocessing.Preprocessing.from_metadata(self._metadata)
        self._classes = _preprocessing.class_names(self._metadata, self._dimensions["n_classes"])
        self.num_threads = num_threads
        self._kernels = kernels or _dispatch.kernels
        k = self._kernels
        self._engine = k.Engine(
            weights,
            {"plane": sizes.plane, "conv2_padding": sizes.conv2_padding},
            _activation_code(k, architecture["conv_activation"]),
            _activation_code(k, architecture["fc_activation"]),
            _activation_code(k, architecture["output_activation"]),
            k.POOL_MAX if architecture["pool"] == "max" else k.POOL_AVG,
        )
        self._one_image_threads = self._engine.one_image_threads

    # ------------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_npz(
        cls,
        path: str | os.PathLike[str],
        *,
        conv_activation: str | None = None,
        fc_activation: str | None = None,
        output_activation: str | None = None,
        pool: str | None = None,
        input_size: int | tuple[int, int] | None = None,
        conv1_padding: int | None = None,
        conv2_padding: int | None = None,
        key_map: Mapping[str, str] | None = None,
        strict: bool = True,
        batchnorm_eps: float | None = None,
        num_threads: int | None = None,
    ) -> LeNet:
        """Load a model from a ``.npz`` weight file (never unpickles).

        Parameters
        ----------
        path : str or path-like
            A file written by `save_npz`, or ``np.savez`` of a PyTorch ``state_dict`` (the table
            model, the PyTorch tutorial model, or a numbered ``nn.Sequential``), BatchNorm
            layers included (folded into the layer each follows, in float64).
        conv_activation, fc_activation, output_activation, pool : str, optional
            Override the architecture stored in the file.  An option that neither these nor
            the file state is assumed from the layout (the PyTorch tutorial layout: relu, relu,
            identity, max; otherwise the defaults relu, sigmoid, sigmoid, max) and announced
            with one `ArchitectureWarning`; `model.assumed_architecture` lists it.
        input_size, conv1_padding, conv2_padding : optional
            The geometry (see `LeNet`), overriding what the file stores; what neither states
            is worked out from the weights (announced where several geometries fit).
        key_map : mapping, optional
            Canonical name -> name in the file, for any other naming.
        strict : bool, default True
            Reject keys that the recognised layout does not use.  With False, only bookkeeping
            (``num_batches_tracked``, counters) is ignored: parameters that change the outputs
            (weights, BatchNorm statistics no layer can take) are always refused.
        batchnorm_eps : float, optional
            The eps of the file's BatchNorm layers (a ``state_dict`` does not store it).  Not
            given, PyTorch's default 1e-5 is assumed and announced like the options above.  For
            a file `save_npz` wrote from a model whose eps was assumed (its BatchNorms are
            folded already), stating that same value confirms it; another is refused.
        num_threads : int, optional
            See `LeNet`.

        Returns
        -------
        LeNet
            The model, with the file's metadata (``metadata``) and its stored architecture.

        Raises
        ------
        lenet_fast.WeightFileError
            (a ``ValueError``) for a file that is unreadable, unsafe, incomplete or not a LeNet;
            the message names the file, the member and the problem.  Array shapes and dtypes
            are checked from the ``.npy`` headers before any array data is read.
        FileNotFoundError
            If `path` does not exist.
        ValueError
            If an option is not one of its allowed values, `batchnorm_eps` is not a finite
            number >= 0, contradicts the eps the file's BatchNorms were folded with or is
            given for weights without BatchNorm, or
            `num_threads` is out of range.

        Warns
        -----
        ArchitectureWarning
            If an option was assumed (see above): the message names the values and how to
            state them (pass them, or save the model with `save_npz`).

        Examples
        --------
        >>> model = LeNet.from_npz("lenet.npz")             # doctest: +SKIP
        >>> model.architecture["conv_activation"]           # doctest: +SKIP
        'relu'
        """
        explicit = {
            "conv_activation": conv_activation,
            "fc_activation": fc_activation,
            "output_activation": output_activation,
            "pool": pool,
            "input_size": input_size,
            "conv1_padding": conv1_padding,
            "conv2_padding": conv2_padding,
        }
        _check_explicit(explicit)
        geometry = {option: explicit[option] for option in GEOMETRY_OPTIONS}

        def load(conv_activation, fc_activation):
            return _weights.load_npz(
                path,
                key_map=key_map,
                strict=strict,
                batchnorm_eps=batchnorm_eps,
                **geometry,
                conv_activation=conv_activation,
                fc_activation=fc_activation,
            )

        weights, metadata = load(conv_activation, fc_activation)
        try:
            return cls._from_canonical(
                weights,
                metadata,
                num_threads,
                explicit,
                source=str(path),
                reload=lambda conv, fc: load(conv, fc)[0],
                batchnorm_eps=batchnorm_eps,
            )
        except _weights.MetadataError as exc:
            raise _weights.WeightFileError(f"{path}: '{_weights.METADATA_KEY}.npy': {exc}") from exc

    @classmethod
    def pretrained(cls, name: str, *, num_threads: int | None = None) -> LeNet:
        """Load a model trained by ``lenet_fast.train`` and shipped with the package.

        The file stores its preprocessing (so uint8 images can be passed as they are), its
        class names (`classes`) and its provenance (``metadata["provenance"]``).

        Parameters
        ----------
        name : {"fashion-mnist", "mnist"}
            ``"fashion-mnist"``: the ten Fashion-MNIST garment classes; ``"mnist"``: digits.
        num_threads : int, optional
            See `LeNet`.

        Returns
        -------
        LeNet
            The model, with its `classes`, preprocessing and ``metadata["provenance"]``.

        Raises
        ------
        ValueError
            If `name` is not one of the shipped models (the message lists them).

        Examples
        --------
        >>> from lenet_fast.datasets import load_sample
        >>> images, labels = load_sample()
        >>> model = LeNet.pretrained("fashion-mnist")
        >>> model.classes[model.predict(images[:1])[0]]
        'Ankle boot'
        """
        from ._pretrained import pretrained_path

        return cls.from_npz(pretrained_path(name), num_threads=num_threads)

    @classmethod
    def from_state_dict(
        cls,
        mapping: Mapping[str, Any],
        *,
        conv_activation: str | None = None,
        fc_activation: str | None = None,
        output_activation: str | None = None,
        pool: str | None = None,
        input_size: int | tuple[int, int] | None = None,
        conv1_padding: int | None = None,
        conv2_padding: int | None = None,
        key_map: Mapping[str, str] | None = None,
        strict: bool = True,
        batchnorm_eps: float | None = None,
        num_threads: int | None = None,
    ) -> LeNet:
        """Build a model from a mapping of names to arrays (e.g. a PyTorch ``state_dict``).

        Accepts the same layouts and options (geometry included) as `from_npz`, and assumes
        and announces (`ArchitectureWarning`) what they do not state in the same way; tensors with
        ``.detach()`` / ``__array__`` are converted with NumPy.  For a PyTorch model,
        `from_torch` reads the architecture from the module itself.

        Parameters
        ----------
        mapping : mapping of str to array_like
            Names to arrays (NumPy arrays, PyTorch tensors, anything with ``__array__``) in
            any layout `lenet_fast._weights.canonicalize` recognises: canonical names, the
            PyTorch tutorial's, Caffe's, numbered ``nn.Sequential`` exports, also behind a
            prefix that every key shares (``module.`` from ``nn.DataParallel``, ``_orig_mod.``
            from ``torch.compile``); BatchNorm parameters are folded into the layer each
            follows.
        conv_activation, fc_activation, output_activation, pool : str, optional
            The architecture; an option not given is assumed from the layout and announced
            (see `from_npz`).
        input_size : int or (int, int), optional
            The images the network takes; default: worked out from the weights (see `LeNet`).
        conv1_padding, conv2_padding : {0, 2}, optional
            Zero padding of conv1 / conv2; default as for `input_size`.
        key_map : mapping of str to str, optional
            Canonical name (``"conv1.weight"``) or layer (``"conv1"``) -> name in `mapping`.
        strict : bool, default True
            Reject keys that the recognised layout does not use (bookkeeping such as
            ``num_batches_tracked`` is ignored with False; parameters never are).
        batchnorm_eps : float, optional
            The eps of the mapping's BatchNorm layers; not given: PyTorch's default 1e-5,
            assumed and announced (see `from_npz`).
        num_threads : int, optional
            See `LeNet`.

        Returns
        -------
        LeNet
            The model; `assumed_architecture` lists what was assumed.

        Raises
        ------
        lenet_fast.WeightFileError
            (a ``ValueError``) naming the key and the problem: no layout or several match,
            missing or (with `strict`) unused keys, a shape that does not fit, an array that is
            not floating point or not finite, or a geometry no member of the family has.
        ValueError
            If an option is not one of its allowed values, `batchnorm_eps` is not a finite
            number >= 0 or is given for a mapping without BatchNorm, or `num_threads` is out of
            range.

        Warns
        -----
        ArchitectureWarning
            If an option was assumed: the message names the values and how to state them.

        Examples
        --------
        >>> import torch                                                # doctest: +SKIP
        >>> model = LeNet.from_state_dict(torch.load("net.pt"), conv_activation="relu",
        ...                               fc_activation="relu", output_activation="identity",
        ...                               pool="max")                   # doctest: +SKIP
        """
        explicit = {
            "conv_activation": conv_activation,
            "fc_activation": fc_activation,
            "output_activation": output_activation,
            "pool": pool,
            "input_size": input_size,
            "conv1_padding": conv1_padding,
            "conv2_padding": conv2_padding,
        }
        _check_explicit(explicit)

        def load(conv_activation, fc_activation):
            return _weights.canonicalize(
                mapping,
                key_map=key_map,
                strict=strict,
                input_size=input_size,
                conv1_padding=conv1_padding,
                conv2_padding=conv2_padding,
                conv_activation=conv_activation,
                fc_activation=fc_activation,
                batchnorm_eps=batchnorm_eps,
            )

        return cls._from_canonical(
            load(conv_activation, fc_activation),
            {},
            num_threads,
            explicit,
            reload=load,
            batchnorm_eps=batchnorm_eps,
        )

    @classmethod
    def from_onnx(
        cls,
        path_or_model: str | os.PathLike[str] | bytes | Any,
        *,
        conv_activation: str | None = None,
        fc_activation: str | None = None,
        output_activation: str | None = None,
        pool: str | None = None,
        num_threads: int | None = None,
    ) -> LeNet:
        """Build a model from a LeNet-family ONNX graph (e.g. from ``torch.onnx.export``).

        Needs the ``onnx`` package (``pip install lenet_fast[onnx]``).  The architecture and
        geometry are read from the graph by `lenet_fast.onnx.read_graph`, which lists what is
        accepted.

        Parameters
        ----------
        path_or_model : str, path-like, bytes or onnx.ModelProto
            The graph: a file, its serialized bytes (as ``onnxruntime.InferenceSession`` also
            takes) or a loaded model.
        conv_activation, fc_activation, output_activation, pool : str, optional
            Override what the graph says (then the model no longer computes the graph's
            function).
        num_threads : int, optional
            See `LeNet`.

        Returns
        -------
        LeNet
            With the graph's activations, pooling and geometry as its `architecture`.

        Raises
        ------
        lenet_fast.ONNXImportError
            (a ``ValueError``) naming the file and the first unsupported node; see
            `lenet_fast.onnx.read_graph`.
        FileNotFoundError
            If the path does not exist.
        TypeError
            If `path_or_model` is not a path, bytes or an ``onnx.ModelProto``.
        ImportError
            If the ``onnx`` package is not installed.

        Examples
        --------
        >>> model = LeNet.from_onnx("lenet.onnx")             # doctest: +SKIP
        """
        from .onnx import read_graph

        if num_threads is not None:
            _check_num_threads(num_threads)
        weights, architecture = read_graph(path_or_model)
        explicit = {
            "conv_activation": conv_activation,
            "fc_activation": fc_activation,
            "output_activation": output_activation,
            "pool": pool,
        }
        return cls._from_canonical(weights, {"architecture": architecture}, num_threads, explicit)

    @classmethod
    def from_keras(cls, path: str | os.PathLike[str], *, num_threads: int | None = None) -> LeNet:
        """Build a model from a Keras LeNet saved by ``model.save`` (``.keras`` or ``.h5``).

        Needs ``h5py`` (``pip install "lenet_fast[keras]"``), not Keras.  The file is read as
        data by `lenet_fast.keras.read_model` (which lists what is accepted): the architecture
        from its config, the weights converted from channels-last.  The model takes
        (N, C, H, W) images: transpose Keras's channels-last batches with
        ``x.transpose(0, 3, 1, 2)`` (or pass (N, H, W) for one channel).

        Parameters
        ----------
        path : str or path-like
            A Keras 3 ``.keras`` archive or a Keras 2/3 ``.h5`` file (recognised by content).
        num_threads : int, optional
            See `LeNet`.

        Returns
        -------
        LeNet
            With the file's activations, pooling and geometry as its `architecture`;
            ``metadata["provenance"]`` records the Keras version, the model name and its input
            shape.

        Raises
        ------
        lenet_fast.WeightFileError
            (a ``ValueError``) naming the file and the layer, for a file or model the engine
            cannot run; see `lenet_fast.keras.read_model`.
        ImportError
            If ``h5py`` is not installed.
        ValueError
            If `num_threads` is out of range.
        FileNotFoundError
            If `path` does not exist.
        TypeError
            If `path` is not a str or path-like.

        Examples
        --------
        >>> model = LeNet.from_keras("lenet.keras")                 # doctest: +SKIP
        >>> labels = model.predict(images_nhwc.transpose(0, 3, 1, 2))  # doctest: +SKIP
        """
        from .keras import read_model

        if num_threads is not None:
            _check_num_threads(num_threads)
        weights, architecture, provenance = read_model(path)
        metadata = {"architecture": architecture, "provenance": provenance}
        return cls._from_canonical(weights, metadata, num_threads, {})

    @classmethod
    def from_torch(
        cls, module: Any, *, example_input: Any = None, num_threads: int | None = None
    ) -> LeNet:
        """Build a model from a PyTorch ``nn.Module``, reading its architecture from its graph.

        The module's ``forward`` is captured with ``torch.fx`` symbolic tracing (in eval mode;
        the module's training flags are left as they were), or, where fx cannot trace it
        (Python control flow on shapes), with ``torch.export`` on `example_input` (default:
        two zero images), and matched against the network:
        Conv2d and Linear layers; ReLU, sigmoid, tanh, softmax, log-softmax or no activation
        (as modules, ``F.relu``/``torch.relu``-style functions or tensor methods); 2x2 max or
        average pooling; flatten (``nn.Flatten``, ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``,
        ``x.view(-1, 400)``); a first reshape of flat or (N, H, W) images
        (``x.view(-1, 1, 28, 28)``, ``x.unsqueeze(1)``: the model then takes (N, 28, 28)
        images); dropout (ignored, as in eval mode); BatchNorm1d/2d directly after
        a layer, folded into it (in float64, then float32).  This covers the PyTorch tutorial's
        ``Net``, the network of this package's table and numbered ``nn.Sequential`` models such
        as d2l's (sigmoid, average pooling, conv1 padded by 2 for 28x28 input).  The file
        `save_npz` then writes states the architecture, so it loads with no warning.

        A TorchScript module (``torch.jit.script``, ``torch.jit.trace``, ``torch.jit.load``),
        which fx cannot trace, is exported in memory with ``torch.onnx.export`` and read by
        `lenet_fast.onnx.read_graph` (needs the ``onnx`` package); its input size is the one of
        28x28 and 32x32 it runs on (else pass `example_input`), and the converted model is
        checked against the module on those images.

        Parameters
        ----------
        module : torch.nn.Module or torch.jit.ScriptModule
            The network; it is not modified.
        example_input : array_like or torch.Tensor, optional
            Images of shape (N, C, 32, 32) or (N, C, 28, 28) (any size for a TorchScript
            module); when given, the module (in eval
            mode) and the new model are run on them and must agree to 1e-4 (and torch.export,
            if needed, traces with them).
        num_threads : int, optional
            See `LeNet`.

        Returns
        -------
        LeNet
            Its ``architecture`` read from the module's graph (so `save_npz` states it) and
            ``metadata["converted_from"]`` naming the module's class.

        Raises
        ------
        lenet_fast.TorchImportError
            (a ``ValueError``) naming the module (or function) and the op the engine cannot
            compute: another layer type or function, strides, dilation, groups, padding other
            than 2 on conv1, a pooling other than 2x2/2, a branch, other than five weighted
            layers, a BatchNorm that does not directly follow a layer, different activations
            after the three convolutions, input sizes other than 32x32 (or 28x28 with conv1
            padded by 2), or a forward that neither torch.fx nor torch.export can capture.
        TypeError, ValueError
            If `module` is not an ``nn.Module``, or `example_input` does not hold real numbers
            in the shape the first Conv2d takes, (N, C, 32, 32) or, padded by 2,
            (N, C, 28, 28) (checked before the module is run).
        ImportError
            If PyTorch is not installed.

        Examples
        --------
        >>> LeNet.from_torch(net).save_npz("lenet.npz")     # doctest: +SKIP
        """
        from ._torch import read_module, verify_conversion

        weights, metadata, example_input = read_module(module, example_input=example_input)
        model = cls._from_canonical(weights, metadata, num_threads, {})
        if example_input is not None:
            verify_conversion(module, model, example_input)
        return model

    @classmethod
    def _from_canonical(
        cls, weights, metadata, num_threads, explicit, source=None, reload=None, batchnorm_eps=None
    ):
        """A model from canonical weights; an option neither `explicit` nor stored in
        `metadata` is assumed from the weights' layout and announced (`ArchitectureWarning`,
        pointing at the caller of the public constructor two frames up).

        The geometry is the explicit one, else the stored one, else what `canonicalize` worked
        out (its guesses among several geometries are announced too).  Where `canonicalize` read
        a dense fc1 as conv3 but the resolved conv and dense activations differ, `reload(conv,
        fc)` canonicalizes again with them stated (a flatten and fc1 then)."""
        layout = getattr(weights, "layout", None)
        stored = _stored_architecture(metadata, explicit)
        recorded_guess = _stored_guess(metadata, explicit)
        if recorded_guess:
            # save_npz of a model whose architecture was assumed: the guess stays a guess.
            layout = _SAVED_GUESS
            stored = {
                option: value for option, value in stored.items() if option not in recorded_guess
            }
        architecture, assumed = _resolve_architecture(
            explicit, stored, layout, assumed_values=recorded_guess
        )
        if (
            getattr(weights, "folded_into_conv3", False)
            and reload is not None
            and architecture["conv_activation"] != architecture["fc_activation"]
        ):
            weights = reload(architecture["conv_activation"], architecture["fc_activation"])
        sizes = getattr(weights, "sizes", None)
        geometry = dict(sizes.geometry) if sizes is not None else {}
        for option in GEOMETRY_OPTIONS:
            value = explicit.get(option)
            value = stored.get(option, recorded_guess.get(option)) if value is None else value
            if value is not None:
                geometry[option] = _architecture.check_option(option, value)
        for option, value in {**getattr(weights, "assumed_geometry", {}), **recorded_guess}.items():
            if option in GEOMETRY_OPTIONS and explicit.get(option) is None and option not in stored:
                assumed[option] = geometry.get(option, value)
        eps, recorded = _assumed_batchnorm_eps(weights, metadata, batchnorm_eps)
        if eps is not None:
            assumed["batchnorm_eps"] = eps
            if recorded:
                layout = _SAVED_GUESS
        model = cls.__new__(cls)
        try:
            model._setup(
                weights, {**architecture, **geometry}, num_threads, metadata, assumed=assumed
            )
        except _architecture.ArchitectureError as exc:
            raise _weights.WeightFileError(f"{source}: {exc}" if source else str(exc)) from None
        _warn_assumed(assumed, layout, source, stacklevel=3)
        return model

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Write the weights and the architecture (and any metadata) to a ``.npz`` file.

        The file is deterministic (the same model gives the same bytes) and
        ``LeNet.from_npz(path)`` restores this model with no further arguments.  Options that
        were assumed when this model was loaded (`assumed_architecture`) are saved as assumed:
        loading the file announces them again with an `ArchitectureWarning`, so a guess never
        becomes a statement by a round trip.

        Parameters
        ----------
        path : str or path-like
            Destination, written as given (no ``.npz`` suffix is added) and atomically: a
            temporary file beside it is renamed over it once complete, so `path` is never left
            half-written.

        Raises
        ------
        OSError
            If the file cannot be written (`path` is then left as it was).

        See Also
        --------
        from_npz : Loads the file back.

        Examples
        --------
        >>> model.save_npz("lenet.npz")                       # doctest: +SKIP
        >>> LeNet.from_npz("lenet.npz").architecture == model.architecture  # doctest: +SKIP
        True
        """
        metadata = dict(self._metadata)
        metadata["architecture"] = _architecture.geometry_for_json(self._architecture)
        options = sorted(option for option in self._assumed if option != "batchnorm_eps")
        if options:
            # Options that were assumed at load time are recorded as such, so the file warns
            # again when loaded instead of turning a guess into a statement.
            metadata["assumed_architecture"] = options
        if "batchnorm_eps" in self._assumed:
            # The BatchNorms are folded into the weights now; the eps they were folded with
            # stays a guess the same way.
            metadata[_ASSUMED_BATCHNORM_EPS] = self._assumed["batchnorm_eps"]
        _weights.save_npz(path, self._weights, metadata)

    def to_onnx(self, path: str | os.PathLike[str]) -> None:
        """Write the network as an ONNX graph (opset 17) that ONNX Runtime runs to the same
        outputs.  Needs the ``onnx`` package.

        Parameters
        ----------
        path : str or path-like
            Destination ``.onnx`` file, written atomically; see
            `lenet_fast.onnx.build_model_proto` for the graph.

        Raises
        ------
        ImportError
            If the ``onnx`` package is not installed.
        OSError
            If the file cannot be written (`path` is then left as it was).

        Examples
        --------
        >>> model.to_onnx("lenet.onnx")                       # doctest: +SKIP
        >>> LeNet.from_onnx("lenet.onnx").architecture == model.architecture  # doctest: +SKIP
        True
        """
        from .onnx import build_model_proto, save_model

        save_model(build_model_proto(self.weights, self.architecture), path)

    # ------------------------------------------------------------------------------------------
    # Properties (documented like attributes, with no Returns section: numpydoc's AST check
    # cannot tell a property from a method, hence the RT01 exemptions)
    # ------------------------------------------------------------------------------------------

    @property
    def num_threads(self) -> int:  # numpydoc ignore=RT01
        """Threads used for large batches (an int >= 1); settable."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:  # numpydoc ignore=GL08
        self._num_threads_set = value is not None
        self._num_threads = (
            _dispatch.default_num_threads() if value is None else _check_num_threads(value)
        )

    @property
    def architecture(self) -> dict[str, Any]:  # numpydoc ignore=RT01
        """The activations, pooling and geometry in use, as a dict (a copy): ``conv_activation``,
        ``fc_activation``, ``output_activation``, ``pool``, ``input_size`` ((H, W) of the
        images the network takes), ``conv1_padding``, ``conv2_padding`` (0 or 2)."""
        return dict(self._architecture)

    @property
    def sizes(self) -> Sizes:  # numpydoc ignore=RT01
        """Every size of the network (`lenet_fast._architecture.Sizes`: widths, stage sizes,
        ``plane``, ``multiply_adds`` per image ...)."""
        return self._sizes

    @property
    def assumed_architecture(self) -> dict[str, Any]:  # numpydoc ignore=RT01
        """The options of `architecture` that were assumed because neither the call nor the
        weight file stated them (a dict, empty when everything was stated); loading announced
        them with an `ArchitectureWarning`.  `save_npz` records them as assumed, so the file
        announces them again when loaded."""
        return dict(self._assumed)

    @property
    def dimensions(self) -> dict[str, int]:  # numpydoc ignore=RT01
        """Input channels, layer widths and class count read from the weights (a copy):
        ``in_channels``, ``conv1_channels``, ``conv2_channels``, ``conv3_channels`` (with
        conv3), ``fc1_units`` ... (hidden dense layers), ``n_classes``."""
        return dict(self._dimensions)

    @property
    def n_classes(self) -> int:  # numpydoc ignore=RT01
        """The number of outputs (classes) per image."""
        return self._dimensions["n_classes"]

    @property
    def in_channels(self) -> int:  # numpydoc ignore=RT01
        """The number of input channels (1 or 3)."""
        return self._dimensions["in_channels"]

    @property
    def weights(self) -> dict[str, np.ndarray]:  # numpydoc ignore=RT01
        """The canonical float32 weights (read-only arrays)."""
        return dict(self._weights)

    @property
    def classes(self) -> list[str] | None:  # numpydoc ignore=RT01
        """The class names stored with the model (a list of str, one per output), or None."""
        return None if self._classes is None else list(self._classes)

    @property
    def metadata(self) -> dict[str, Any]:  # numpydoc ignore=RT01
        """Extra information stored with the model (a copy)."""
        return dict(self._metadata)

    @property
    def isa(self) -> str:  # numpydoc ignore=RT01
        """The instruction-set level of the kernels this model runs on."""
        return self._kernels.ISA

    def with_isa(self, isa: str) -> LeNet:
        """This model on the kernels of another instruction-set level.

        The level is picked once per process (the best this CPU runs, or the
        ``LENET_FAST_ISA`` environment variable); this gives one model another, e.g. to compare
        levels or to get the ``generic`` level's rounding (no fused multiply-add).

        Parameters
        ----------
        isa : {"avx512", "avx2", "generic"}
            A level built here that this CPU runs (``lenet_fast.show_config()`` lists them).

        Returns
        -------
        LeNet
            A new model with the same weights, architecture, threads and metadata.  Its outputs
            agree with this model's to float32 rounding (the levels differ in fused
            multiply-adds and vector width), and are bitwise reproducible at its level.

        Raises
        ------
        ValueError
            If `isa` is not a level's name.
        ImportError
            If the level was not built here, or this CPU lacks its instructions.

        Examples
        --------
        >>> from lenet_fast import LeNet
        >>> model = LeNet.pretrained("fashion-mnist")
        >>> model.with_isa("generic").isa
        'generic'
        """
        kernels = _dispatch.load_kernels(isa)
        copy = LeNet.__new__(LeNet)
        copy._setup(
            dict(self._weights),
            self._architecture,
            self._num_threads if self._num_threads_set else None,
            self._metadata,
            kernels=kernels,
            assumed=self._assumed,
        )
        return copy

    def summary(self) -> ModelSummary:
        """Per-layer output shape, parameters, connections and multiply-adds.

        Returns
        -------
        ModelSummary
            ``str()`` of it is a readable table; ``summary()["conv1"].connections`` etc.

        Examples
        --------
        >>> print(LeNet.pretrained("mnist").summary())      # doctest: +SKIP
        """
        return ModelSummary(
            self._sizes,
            self._architecture,
            self._assumed,
            self._engine.conv2_algorithm,
            self._engine.conv2_multiply_adds,
        )

    def __repr__(self):
        widths = "-".join(map(str, self._dimensions.values()))
        a = self._architecture
        height, width = a["input_size"]
        geometry = (
            ""
            if self._sizes.geometry == _architecture.DEFAULT_GEOMETRY
            else (
                f", input={height}x{width}, conv1_padding={a['conv1_padding']}, "
                f"conv2_padding={a['conv2_padding']}"
            )
        )
        return (
            f"LeNet({widths}{geometry}, conv={a['conv_activation']}, fc={a['fc_activation']}, "
            f"output={a['output_activation']}, pool={a['pool']}, isa={self.isa}, "
            f"num_threads={self._num_threads})"
        )

    def __getstate__(self):
        return {
            "weights": self._weights,
            "architecture": self._architecture,
            "metadata": self._metadata,
            "assumed": self._assumed,
            # A default stays a default: the unpickling process resolves its own.
            "num_threads": self._num_threads if self._num_threads_set else None,
        }

    def __setstate__(self, state):
        weights = {
            key: np.array(value, dtype=np.float32) for key, value in state["weights"].items()
        }
        self._setup(
            weights,
            state["architecture"],
            state["num_threads"],
            state["metadata"],
            assumed=state.get("assumed"),
        )

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------

    def forward(
        self,
        x: ArrayLike,
        *,
        num_threads: int | None = None,
        check_finite: bool = True,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Network outputs (after the output activation) for a batch of images.

        Parameters
        ----------
        x : array_like of float, shape (N, C, H, W), or (N, H, W) when C = 1
            Normalised images, as the model was trained on, of the model's input size
            (``architecture["input_size"]``; a 32 x 32 unpadded model also takes 28 x 28
            images, zero-padded by 2 on each side).  float32 C-contiguous input is used
            without a copy; float16/float64 and non-contiguous views are converted.  uint8
            pixels are accepted when the model stores its preprocessing (pretrained models do)
            and are normalised with it, in chunks; float input is always taken as already
            normalised.
        num_threads : int, optional
            Threads for this call (default: ``self.num_threads``).  Small batches use fewer.
        check_finite : bool, default True
            Raise on NaN or infinite input, and on finite input whose outputs come out NaN
            (values so far outside the normalised range that the network overflows).  With
            False neither is checked and such images give unspecified (possibly NaN) outputs
            for themselves only; other images are unaffected.
        out : ndarray of float32, shape (N, n_classes), optional
            Where to write the result (C-contiguous; it must not overlap `x`).

        Returns
        -------
        ndarray of float32, shape (N, n_classes)
            The scores of each image (probabilities with a softmax output, their logarithms
            with log_softmax); `out` when given.

        Raises
        ------
        TypeError
            For boolean, complex or non-numeric input, or integer input other than uint8 on a
            model with stored preprocessing.
        ValueError
            For a wrong shape, an `out` that overlaps `x`, or a NaN/infinity in the input or
            the outputs (naming the first bad image).
        OSError
            If the threads cannot be started (e.g. under a low memory limit).
        KeyboardInterrupt
            Ctrl-C stops the call within one chunk of at most 512 images per thread (tens of
            milliseconds); nothing is returned.
        """
        threads = self._direct_threads(x, num_threads) if out is None else 0
        if threads:  # batch 1's latency is made of this
            scores = self._engine.forward_direct(x, check_finite, threads)
            if scores is not None:
                return scores
        images, n = self._as_images(x)
        scores = self._output(out, (n, self.n_classes), np.float32, x)
        self._run(self._engine.forward, images, scores, num_threads, check_finite)
        return scores

    __call__ = forward

    def predict(
        self,
        x: ArrayLike,
        *,
        num_threads: int | None = None,
        check_finite: bool = True,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predicted class of each image: the argmax of `forward` (lowest index on ties).

        A NaN output never becomes a label: with `check_finite` it raises ``ValueError``,
        without it the image's label is -1.

        Parameters
        ----------
        x : array_like of float, shape (N, C, H, W), or (N, H, W) when C = 1
            Normalised images (or uint8 pixels for a model with stored preprocessing), as for
            `forward`.
        num_threads : int, optional
            Threads for this call (default: ``self.num_threads``).
        check_finite : bool, default True
            Raise on NaN or infinite input, and on NaN outputs (see `forward`).
        out : ndarray of int64, shape (N,), optional
            Where to write the labels (C-contiguous).

        Returns
        -------
        ndarray of int64, shape (N,)
            Labels in ``[0, n_classes)``; -1 for an image with NaN outputs (only with
            ``check_finite=False``).
        """
        threads = self._direct_threads(x, num_threads) if out is None else 0
        if threads:
            labels = self._engine.predict_direct(x, check_finite, threads)
            if labels is not None:
                return labels
        images, n = self._as_images(x)
        labels = self._output(out, (n,), np.int64, x)
        self._run(self._engine.predict, images, labels, num_threads, check_finite)
        return labels

    def _as_images(self, x):
        """Validate `x`; return it as an (N, C, H, W) array (not yet converted) and N."""
        if type(x) is np.ndarray and x.dtype.kind == "f":  # batch 1's latency is made of this
            if x.shape[1:] in self._image_shapes:
                return x, x.shape[0]
            if x.shape[1:] in self._plane_shapes:
                return x[:, None], x.shape[0]
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        kind = x.dtype.kind
        if kind != "f" and not (x.dtype == np.uint8 and self._preprocessing is not None):
            what = (
                "boolean"
                if kind == "b"
                else {"i": "integer", "u": "integer", "c": "complex"}.get(kind, "non-numeric")
            )
            if self._preprocessing is None:
                expected = (
                    "floating-point images (a model without stored preprocessing needs "
                    "float input: the normalised tensor it was trained on)"
                )
            else:
                expected = "floating-point (normalised) images or uint8 pixels"
            raise TypeError(f"x must hold {expected}; got {what} dtype {x.dtype}")
        c = self._dimensions["in_channels"]
        images = x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]) if x.ndim == 3 and c == 1 else x
        accepted = self._sizes.accepted_input_sizes
        if images.ndim != 4 or images.shape[1] != c or tuple(images.shape[2:]) not in accepted:
            text = " or ".join(f"(N, {c}, {h}, {w})" for h, w in accepted)
            if c == 1:
                text += ", or " + " / ".join(f"(N, {h}, {w})" for h, w in accepted)
            raise ValueError(f"x must have shape {text}; got {x.shape}")
        return images, images.shape[0]

    @staticmethod
    def _output(out, shape, dtype, x):
        if out is None:
            return np.empty(shape, dtype=dtype)
        if (
            not isinstance(out, np.ndarray)
            or out.shape != shape
            or out.dtype != dtype
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            found = (
                f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            )
            raise ValueError(
                f"out must be a writeable C-contiguous {np.dtype(dtype)} array of "
                f"shape {shape}; got {found}"
            )
        if isinstance(x, np.ndarray) and np.may_share_memory(out, x):
            try:
                overlap = np.shares_memory(out, x, max_work=_OVERLAP_WORK)
            except getattr(np, "exceptions", np).TooHardError:  # numpy < 1.25: np.TooHardError
                overlap = True
            if overlap:
                raise ValueError(
                    "out overlaps the input x (the results would overwrite images "
                    "not yet read); pass a separate array"
                )
        return out

    def _direct_threads(self, x, num_threads):
        """The threads of the engine's direct call for `x`, or 0 where it cannot take it: an
        array of an accepted shape whose batch `_run` would run in one kernel call, on threads
        this process is known to start (float32, contiguity and alignment are the engine's to
        check).  Batch 1 of a large model on several threads (its layers split) goes there too."""
        if (
            type(x) is not np.ndarray
            or x.shape[1:] not in self._direct_shapes
            or not 0 < x.shape[0] <= _CHUNK_PER_THREAD
        ):
            return 0
        threads = self._threads_for(x.shape[0], num_threads)
        return threads if threads <= _threads_known_to_start else 0

    def _threads_for(self, n, num_threads):
        """The threads a batch of n images runs on (num_threads, default self.num_threads)."""
        threads = self._num_threads if num_threads is None else _check_num_threads(num_threads)
        if threads > 1:
            if n == 1:  # a large model splits its one image's layers (the engine's rule)
                return min(threads, self._one_image_threads)
            return max(1, min(threads, n // _IMAGES_PER_THREAD))
        return threads

    def _run(self, kernel, images, result, num_threads, check_finite):
        n = images.shape[0]
        if n == 0:
            return
        threads = self._threads_for(n, num_threads)
        if threads > 1:
            _ensure_threads_can_start(threads)
        flags = images.flags
        ready = images.dtype is _FLOAT32 and flags.c_contiguous and flags.aligned
        # Chunks even for input that needs no conversion: Python acts on signals between kernel
        # calls, so Ctrl-C stops a batch of any size within one chunk's time (512 images per
        # thread: 20-40 ms; each call costs only a parallel-region start, a few microseconds).
        chunk = min(_CONVERSION_CHUNK, _CHUNK_PER_THREAD * threads)
        if ready and n <= chunk:  # one call, no slicing: what batch 1's latency is made of
            self._raise_if_bad(kernel(images, result, threads, check_finite), 0)
            if check_finite:
                self._raise_if_nan_output(result, 0)
            return
        for start in range(0, n, chunk):
            block = images[start : start + chunk]
            if not ready:
                block = (
                    self._preprocessing.apply(block)
                    if block.dtype == np.uint8
                    else np.require(block, np.float32, ("C_CONTIGUOUS", "ALIGNED"))
                )
            part = result[start : start + chunk]
            bad = kernel(block, part, threads, check_finite)
            self._raise_if_bad(bad, start)
            if check_finite:
                self._raise_if_nan_output(part, start)

    @staticmethod
    def _raise_if_bad(bad, offset):
        if bad >= 0:
            raise ValueError(
                f"x[{offset + bad}] contains NaN or infinity; pass check_finite=False to skip "
                f"this check"
            )

    def _raise_if_nan_output(self, part, offset):
        first = self._kernels.first_nan_output(part)  # labels: -1 marks NaN scores
        if first >= 0:
            raise ValueError(
                f"x[{offset + first}] gives NaN outputs although it is finite: its values overflow "
                f"inside the network (expected normalised images); pass check_finite=False to get "
                f"NaN scores and label -1 instead"
            )
