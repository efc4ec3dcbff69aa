"""Turn whatever weights users have into canonical LeNet-5 weights; read and write our .npz files.

Design: `canonicalize` is the one gate every weight set passes.  It first maps the user's key
names onto the ten canonical ones (a ``key_map``, or one of three recognised layouts: canonical
names, the PyTorch tutorial model, numbered ``nn.Sequential`` exports), then converts each array
to float32, native byte order, C-contiguous, and checks that the shapes fit together as one
network.  Every problem raises `WeightFileError`, whose message names the file, the key or
member, what was expected and what was found.

`load_npz` never unpickles and never trusts sizes: it reads the zip directory itself, parses
each ``.npy`` header (rejecting object dtypes and shapes no LeNet can have) and checks that the
directory's uncompressed size agrees with the header; the ten members' dtypes and shapes are then
checked against each other, as one network, from their headers alone, before any array data is
read, so a small file cannot make it allocate more than the network it declares.
Members are read lazily, only when `canonicalize` asks for them.  `save_npz` writes an
uncompressed archive that is byte-for-byte deterministic (fixed member order, timestamps and
permissions; little-endian arrays), so that save, load, save gives identical files.
"""

import contextlib
import errno
import functools
import io
import json
import lzma
import math
import os
import re
import secrets
import tokenize
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np
from numpy.lib import format as npy_format

from . import _architecture
from ._architecture import CANONICAL_KEYS as FAMILY_KEYS
from ._architecture import DENSE_LAYERS, MAX_CLASSES, MAX_WIDTH
from ._architecture import LAYERS as FAMILY_LAYERS

# The layers and keys of the family's `lenet5` member (today's LeNet-5: conv3, fc1, fc2); the
# whole family's are `_architecture.LAYERS` / `_architecture.CANONICAL_KEYS`.
LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")
CANONICAL_KEYS = tuple(
    f"{layer}.{parameter}" for layer in LAYERS for parameter in ("weight", "bias")
)
METADATA_KEY = "__lenet_fast__"
DIMENSIONS = (
    "in_channels",
    "conv1_channels",
    "conv2_channels",
    "conv3_channels",
    "fc1_units",
    "n_classes",
)

MAX_ELEMENTS = 1 << 24
MAX_METADATA_BYTES = 1 << 20
MAX_PARAMETERS = 1 << 23  # all ten arrays together: 32 MiB as float32
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own limit for untrusted .npy headers
_KERNEL = 5

# Each canonical array's shape in terms of the network's dimensions; the first occurrence of a
# dimension binds it, later ones must agree.
_SHAPES = {
    "conv1.weight": ("conv1_channels", "in_channels", _KERNEL, _KERNEL),
    "conv1.bias": ("conv1_channels",),
    "conv2.weight": ("conv2_channels", "conv1_channels", _KERNEL, _KERNEL),
    "conv2.bias": ("conv2_channels",),
    "conv3.weight": ("conv3_channels", "conv2_channels", _KERNEL, _KERNEL),
    "conv3.bias": ("conv3_channels",),
    "fc1.weight": ("fc1_units", "conv3_channels"),
    "fc1.bias": ("fc1_units",),
    "fc2.weight": ("n_classes", "fc1_units"),
    "fc2.bias": ("n_classes",),
}

DEFAULT_DIMENSIONS = {
    "in_channels": 1,
    "conv1_channels": 6,
    "conv2_channels": 16,
    "conv3_channels": 120,
    "fc1_units": 84,
    "n_classes": 10,
}


def canonical_shapes(**dimensions):
    """The shape of every canonical array, in canonical key order.

    Parameters
    ----------
    **dimensions : int
        Any of `DIMENSIONS` (``in_channels``, ``conv1_channels``, ..., ``n_classes``); the others
        take the reference model's values (`DEFAULT_DIMENSIONS`).

    Returns
    -------
    dict of str to tuple of int
        Canonical key -> shape for today's LeNet-5 layers (conv1, conv2, conv3, fc1, fc2).

    Raises
    ------
    TypeError
        If a keyword is not one of `DIMENSIONS`.

    Examples
    --------
    >>> canonical_shapes(n_classes=5)["fc2.weight"]
    (5, 84)
    """
    unknown = set(dimensions) - set(DIMENSIONS)
    if unknown:
        raise TypeError(
            f"unknown dimensions {sorted(unknown)}; expected some of {list(DIMENSIONS)}"
        )
    sizes = {**DEFAULT_DIMENSIONS, **dimensions}
    return {
        key: tuple(sizes[symbol] if isinstance(symbol, str) else symbol for symbol in symbols)
        for key, symbols in _SHAPES.items()
    }


# The PyTorch tutorial model: conv3 is the dense layer fc1 over the flattened 16x5x5 features.
_TUTORIAL_LAYERS = {"conv1": "conv1", "conv2": "conv2", "conv3": "fc1", "fc1": "fc2", "fc2": "fc3"}
# Caffe's LeNet (its MNIST example; TensorRT's MNIST sample) as named in Caffe: ip = inner product.
_CAFFE_LAYERS = {"conv1": "conv1", "conv2": "conv2", "fc1": "ip1", "fc2": "ip2"}
_NUMBERED_KEY = re.compile(r"^(?:(?P<container>.+)\.)?(?P<index>\d+)\.(?P<parameter>weight|bias)$")
_FLOAT_SIZES = (2, 4, 8)
_MAX_LISTED_KEYS = 30
_MAX_ARCHIVE_MEMBERS = 1000
# What zipfile, zlib, lzma and numpy's .npy header parser raise on bad bytes (the header parser
# tokenizes and literal-evaluates the header text: TokenError, SyntaxError, RecursionError).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    tokenize.TokenError,
    SyntaxError,
)


class WeightFileError(ValueError):
    """A weight file or weight mapping that cannot be used: unreadable, unsafe, or not a LeNet.

    The message names the file (when there is one), the key or archive member, the problem, and
    the expected and found values.
    """


class MetadataError(ValueError):
    """Metadata (architecture, preprocessing, class names) that lenet_fast cannot use.  Loading a
    file turns it into a `WeightFileError` naming the file and the metadata member."""


def _where(source, key=None):
    """The start of an error message: the file and the quoted key, as far as they are known."""
    parts = [str(source)] if source is not None else []
    if key is not None:
        parts.append(repr(key))
    return ": ".join(parts)


def _error(where, problem):
    return WeightFileError(f"{where}: {problem}" if where else problem)


def _key_list(keys):
    keys = sorted(keys)
    listed = ", ".join(keys[:_MAX_LISTED_KEYS]) or "(none)"
    return listed + (
        f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    )


# ---------------------------------------------------------------------------------------------
# Layouts: each proposes a {canonical key: user's key} assignment for the layers it has.
# ---------------------------------------------------------------------------------------------


def _layer_assignment(layer_names):
    """{canonical key: user's key} for {canonical layer: user's layer prefix}, in canonical order."""
    return {
        f"{layer}.{parameter}": f"{layer_names[layer]}.{parameter}"
        for layer in FAMILY_LAYERS
        if layer in layer_names
        for parameter in ("weight", "bias")
    }


def _present_layers(layer_names, present):
    """The canonical layers whose weight or bias is among the keys (conv1, conv2 and fc1 always:
    a LeNet without them is incomplete)."""
    return {
        layer: name
        for layer, name in layer_names.items()
        if layer in ("conv1", "conv2", "fc1")
        or f"{name}.weight" in present
        or f"{name}.bias" in present
    }


def _sequential_assignment(names, shape_of):
    """Map numbered keys (``0.weight``, ``net.3.bias``, ``classifier.1.weight``) onto the
    layers, in order of container first appearance then numeric index: the first two are conv1
    and conv2, a third with a 4-D weight is conv3, the rest fc1, fc2, fc3.  None unless there
    are 3 to 6 numbered layers of which 1 to 3 are dense."""
    containers, layers = {}, set()
    for name in names:
        match = _NUMBERED_KEY.match(name)
        if match:
            container = match["container"] or ""
            containers.setdefault(container, len(containers))
            layers.add((containers[container], int(match["index"]), container, match["index"]))
    if not 3 <= len(layers) <= 6:
        return None
    prefixes = [
        f"{container}.{index}" if container else index for *_, container, index in sorted(layers)
    ]
    third = shape_of(f"{prefixes[2]}.weight")
    convs = ["conv1", "conv2"] + (["conv3"] if third is not None and len(third) == 4 else [])
    dense = len(prefixes) - len(convs)
    if not 1 <= dense <= len(DENSE_LAYERS):
        return None
    return _layer_assignment(dict(zip(convs + list(DENSE_LAYERS[:dense]), prefixes)))


def _numbered_layers(names):
    """How many numbered layers (``0.weight``, ``net.3.bias`` ...) the keys hold."""
    return len(
        {
            match["container"] and match["container"] + "." + match["index"] or match["index"]
            for match in map(_NUMBERED_KEY.match, names)
            if match
        }
    )


def _key_map_assignment(key_map, source, present):
    unknown = [name for name in key_map if name not in FAMILY_KEYS and name not in FAMILY_LAYERS]
    if unknown:
        raise _error(
            _where(source),
            f"key_map has unknown entries {_key_list(map(str, unknown))}; expected canonical "
            f"parameter names ({_key_list(FAMILY_KEYS)}) or layer names ({', '.join(FAMILY_LAYERS)})",
        )
    non_strings = {name: target for name, target in key_map.items() if not isinstance(target, str)}
    if non_strings:
        raise _error(_where(source), f"expected key_map values to be strings, found {non_strings}")
    assignment = {}
    for key in FAMILY_KEYS:
        layer, parameter = key.split(".")
        if key in key_map:
            assignment[key] = key_map[key]
        elif layer in key_map:
            assignment[key] = f"{key_map[layer]}.{parameter}"
        else:
            assignment[key] = key
    layers = {
        layer
        for layer in FAMILY_LAYERS
        if layer in ("conv1", "conv2", "fc1")
        or layer in key_map
        or f"{layer}.weight" in key_map
        or f"{layer}.bias" in key_map
        or assignment[f"{layer}.weight"] in present
        or assignment[f"{layer}.bias"] in present
    }
    return {key: name for key, name in assignment.items() if key.split(".")[0] in layers}


def _wrapper_prefix(names):
    """The dotted prefix every key shares ahead of its layer name: ``module.`` (a model saved
    from ``nn.DataParallel`` or ``DistributedDataParallel``), ``_orig_mod.`` (from
    ``torch.compile``), ``model.`` (a training wrapper), or "" when there is none."""
    split = [name.split(".") for name in names]
    prefix = []
    # Each key keeps at least "layer.parameter" after the prefix.
    while split and all(len(parts) > len(prefix) + 2 for parts in split):
        part = split[0][len(prefix)]
        if any(parts[len(prefix)] != part for parts in split):
            break
        prefix.append(part)
    return "".join(f"{part}." for part in prefix)


def _choose_assignment(names, key_map, source, shape_of, optional_biases=False):
    """Pick the one layout whose keys are all present, or explain why there is none; with
    `optional_biases`, a layer may lack its bias (a BatchNorm may follow it).  The named
    layouts are also found behind a prefix that every key shares (`_wrapper_prefix`)."""
    present = set(names)
    if key_map is not None:
        candidates = {"key_map": _key_map_assignment(key_map, source, present)}
    else:
        wrapper = _wrapper_prefix(names)
        canonical = _present_layers({layer: wrapper + layer for layer in FAMILY_LAYERS}, present)
        # conv1, conv2, fc1, fc2, fc3 without conv3: the PyTorch tutorial's names (and the
        # PyTorch MNIST LeNet's); fc1 becomes conv3 below where it is one.
        tutorial = set(canonical) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
        candidates = {"PyTorch tutorial" if tutorial else "canonical": _layer_assignment(canonical)}
        if any(name.startswith((f"{wrapper}ip1.", f"{wrapper}ip2.")) for name in names):
            candidates["Caffe"] = _layer_assignment(
                {layer: wrapper + name for layer, name in _CAFFE_LAYERS.items()}
            )
        candidates["nn.Sequential"] = _sequential_assignment(names, shape_of)
        candidates = {layout: keys for layout, keys in candidates.items() if keys is not None}
    complete = [
        layout
        for layout, keys in candidates.items()
        if present.issuperset(
            name for key, name in keys.items() if not (optional_biases and key.endswith(".bias"))
        )
    ]
    if len(complete) == 1:
        return complete[0], candidates[complete[0]]
    found = f"found keys: {_key_list(names)}"
    if complete:
        raise _error(
            _where(source),
            f"the keys match several layouts ({', '.join(complete)}); pass key_map to choose; {found}",
        )
    closest = max(
        candidates, key=lambda layout: len(present.intersection(candidates[layout].values()))
    )
    expected = candidates[closest].values()
    numbered = _numbered_layers(names) if key_map is None else 0
    if numbered and "nn.Sequential" not in candidates and present.isdisjoint(expected):
        raise _error(
            _where(source),
            f"an nn.Sequential export with {numbered} numbered layers does not fit: expected 3 "
            f"to 6 (conv1, conv2, an optional conv3 with a 4-D weight, then one to three dense "
            f"layers); {found}",
        )
    if key_map is None and all(re.fullmatch(r"arr_\d+", name) for name in names):
        raise _error(
            _where(source),
            f"the arrays have no names ({found}: np.savez of a list, such as "
            f"list(net.parameters()) or a Keras model's get_weights()), so which layer each "
            f"belongs to, and in which layout, is unknown; save them by name "
            f"(np.savez(path, **net.state_dict())), load the PyTorch module with "
            f"LeNet.from_torch or the Keras file with LeNet.from_keras, or pass key_map "
            f"({{'conv1.weight': 'arr_0', ...}}, for PyTorch's (out, in, height, width) layout)",
        )
    if present.isdisjoint(expected):
        raise _error(
            _where(source),
            f"no known weight layout matches; {found}; expected keys: {_key_list(CANONICAL_KEYS)} "
            f"(conv3 optional, fc2 and fc3 optional; or the PyTorch layout conv1, conv2, fc1, fc2, "
            f"fc3, Caffe's conv1, conv2, ip1, ip2, or an nn.Sequential export with 3 to 6 "
            f"numbered layers), or pass key_map",
        )
    raise _error(
        _where(source),
        f"incomplete weights for the {closest} layout: missing {_key_list(set(expected) - present)}; "
        f"{found}; expected keys: {_key_list(expected)}",
    )


def _fold_dense_into_conv3(assignment, shape_of, activations, stated_geometry):
    """The assignment with fc1 read as conv3 (fc2, fc3 as fc1, fc2) where that computes the
    same: no conv3, three dense layers, fc1 over exactly conv2's channels x 5 x 5 features, a
    geometry with a 5x5 pool2, and the conv and first dense activations not stated to differ
    (conv3's output gets the conv activation, fc1's the dense one).  This keeps the PyTorch
    tutorial's model a LeNet-5 with conv3, as it always was here."""
    if "conv3.weight" in assignment or "fc3.weight" not in assignment:
        return assignment, False
    conv_activation, fc_activation = activations
    if (
        conv_activation is not None
        and fc_activation is not None
        and conv_activation != fc_activation
    ):
        return assignment, False
    conv2, fc1 = shape_of(assignment["conv2.weight"]), shape_of(assignment["fc1.weight"])
    if not conv2 or fc1 is None or len(fc1) != 2 or fc1[1] != conv2[0] * _KERNEL**2:
        return assignment, False
    try:
        geometry, _ = _architecture.infer_geometry(conv2[0], fc1[1], False, stated_geometry)
    except ValueError:
        return assignment, False
    if _architecture.stage_sizes(geometry)["pool2"] != (_KERNEL, _KERNEL):
        return assignment, False
    moved = {"conv3": "fc1", "fc1": "fc2", "fc2": "fc3"}
    folded = {
        key: name for key, name in assignment.items() if key.split(".")[0] in ("conv1", "conv2")
    }
    for layer, source_layer in moved.items():
        for parameter in ("weight", "bias"):
            folded[f"{layer}.{parameter}"] = assignment[f"{source_layer}.{parameter}"]
    return {key: folded[key] for key in FAMILY_KEYS if key in folded}, True


# ---------------------------------------------------------------------------------------------
# Arrays and shapes
# ---------------------------------------------------------------------------------------------


def _check_float_dtype(dtype, where):
    if dtype.kind != "f" or dtype.itemsize not in _FLOAT_SIZES:
        raise _error(
            where, f"expected floating point (float16, float32 or float64), found dtype {dtype}"
        )


def _to_float32(value, where, dtype=np.float32):
    try:
        if hasattr(value, "detach"):  # torch.Tensor, possibly on a GPU or requiring grad
            value = value.detach().cpu()
        elif hasattr(value, "numpy"):
            value = value.numpy()
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _error(where, f"cannot be converted to a NumPy array ({exc})") from exc
    _check_float_dtype(array.dtype, where)
    with np.errstate(
        over="ignore"
    ):  # float64 beyond float32 range becomes inf, reported just below
        converted = np.array(array, dtype=dtype, order="C")
    non_finite = converted.size - np.count_nonzero(np.isfinite(converted))
    if non_finite:
        raise _error(
            where, f"expected finite values, found {non_finite} non-finite (NaN or inf) values"
        )
    return converted


def _symbolic_shapes(layers):
    """Each canonical array's shape in terms of the network's dimensions, for these layers; the
    first occurrence of a dimension binds it, later ones must agree."""
    symbols = {
        "conv1.weight": ("conv1_channels", "in_channels", _KERNEL, _KERNEL),
        "conv1.bias": ("conv1_channels",),
        "conv2.weight": ("conv2_channels", "conv1_channels", _KERNEL, _KERNEL),
        "conv2.bias": ("conv2_channels",),
    }
    inputs = "features"
    if "conv3" in layers:
        symbols["conv3.weight"] = ("conv3_channels", "conv2_channels", _KERNEL, _KERNEL)
        symbols["conv3.bias"] = ("conv3_channels",)
        inputs = "conv3_channels"
    dense = [layer for layer in DENSE_LAYERS if layer in layers]
    for position, layer in enumerate(dense):
        outputs = "n_classes" if position == len(dense) - 1 else f"{layer}_units"
        symbols[f"{layer}.weight"] = (outputs, inputs)
        symbols[f"{layer}.bias"] = (outputs,)
        inputs = outputs
    return symbols


def _layers_of(keys):
    return [layer for layer in FAMILY_LAYERS if f"{layer}.weight" in keys]


def _bind_dimensions(shapes, describe, where=None):
    """Check the shapes against each other and return the network's dimensions (in_channels,
    conv widths, hidden dense widths, n_classes; ``features``, fc1's inputs after a flatten, is
    checked against the geometry by `_architecture.sizes`)."""
    dimensions = {}
    layers = _layers_of(shapes)
    dense = [layer for layer in layers if layer in DENSE_LAYERS]
    if dense != list(DENSE_LAYERS[: len(dense)]):
        raise _error(
            where,
            f"dense layers {', '.join(dense)}: expected consecutive layers fc1, "
            f"fc2, fc3 (fc2 only with fc1, fc3 only with fc2)",
        )
    symbolic = _symbolic_shapes(layers)
    for key, symbols in symbolic.items():
        shape = tuple(shapes[key])
        expected = tuple(dimensions.get(symbol, symbol) for symbol in symbols)
        if len(shape) != len(expected) or any(
            isinstance(want, int) and want != got for want, got in zip(expected, shape)
        ):
            expected_text = ", ".join(map(str, expected)) + ("," if len(expected) == 1 else "")
            raise _error(describe(key), f"expected shape ({expected_text}), found {shape}")
        for axis, symbol in enumerate(expected):
            if isinstance(symbol, int):
                continue
            size = dimensions[symbol] = shape[axis]
            if symbol == "in_channels":
                allowed, valid = "1 or 3", size in (1, 3)
            elif symbol == "features":
                allowed, valid = f"1 to {MAX_ELEMENTS}", 1 <= size <= MAX_ELEMENTS
            else:
                limit = MAX_CLASSES if symbol == "n_classes" else MAX_WIDTH
                allowed, valid = f"1 to {limit}", 1 <= size <= limit
            if not valid:
                raise _error(
                    describe(key),
                    f"expected {symbol} {allowed}, found {size} (axis {axis} of shape {shape})",
                )
    order = (
        "in_channels",
        "conv1_channels",
        "conv2_channels",
        "conv3_channels",
        "fc1_units",
        "fc2_units",
        "n_classes",
    )
    dimensions = {name: dimensions[name] for name in order if name in dimensions}
    parameters = sum(math.prod(shapes[key]) for key in symbolic)
    if parameters > MAX_PARAMETERS:
        raise _error(
            where,
            f"expected at most {MAX_PARAMETERS:,} parameters in all, found {parameters:,} "
            f"(widths {'-'.join(str(size) for size in dimensions.values())})",
        )
    return dimensions


def _shape_reader(mapping, assignment=None):
    """shape_of(user key) -> tuple or None, without converting (.npy headers for archives)."""

    def shape_of(name):
        if name not in mapping:
            return None
        if _reads_headers(mapping):
            return tuple(mapping.header(name)[0])
        shape = getattr(mapping[name], "shape", None)
        if shape is None:
            try:
                shape = np.shape(mapping[name])
            except (TypeError, ValueError):
                return None
        try:
            return tuple(int(size) for size in shape)
        except (TypeError, ValueError):
            return None

    return shape_of


class _PruningApplied(Mapping):
    """`mapping` with each pruned weight as the module computes with it: a state_dict saved
    after ``torch.nn.utils.prune`` (and before ``prune.remove``) holds ``X.weight_orig`` and
    ``X.weight_mask`` instead of ``X.weight = weight_orig * weight_mask`` (one float32 product,
    as PyTorch's).  `pruned` is {``X.weight``: (``X.weight_orig``, ``X.weight_mask``)}."""

    def __init__(self, mapping, pruned, source):
        self._mapping, self._pruned, self._source = mapping, pruned, source
        hidden = {name for pair in pruned.values() for name in pair}
        self._keys = [name for name in mapping if name not in hidden] + list(pruned)
        self._key_set = set(self._keys)
        self.reads_on_access = _reads_headers(mapping)

    def _check(self, weight, shapes, dtypes):
        original, mask = self._pruned[weight]
        for name, dtype in zip((original, mask), dtypes):
            _check_float_dtype(dtype, _where(self._source, name))
        if shapes[0] != shapes[1]:
            raise _error(
                _where(self._source, mask),
                f"expected the shape of {original!r}, {tuple(shapes[0])}, found {tuple(shapes[1])}",
            )

    def header(self, key):
        if key not in self._pruned:
            return self._mapping.header(key)
        headers = [self._mapping.header(name) for name in self._pruned[key]]
        self._check(key, *zip(*headers))
        return headers[0][0], np.dtype(np.float32)

    def __getitem__(self, key):
        if key not in self._pruned:
            return self._mapping[key]
        original, mask = (
            _to_float32(self._mapping[name], _where(self._source, name))
            for name in self._pruned[key]
        )
        self._check(key, (original.shape, mask.shape), (original.dtype, mask.dtype))
        return original * mask

    def __contains__(self, key):
        return key in self._key_set

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def _apply_pruning(mapping, source):
    """`mapping`, or a `_PruningApplied` view of it where it holds pruned weights."""
    pruned = {}
    for name in mapping:
        if isinstance(name, str) and name.endswith(".weight_orig"):
            weight = name.removesuffix("_orig")
            if f"{weight}_mask" in mapping and weight not in mapping:
                pruned[weight] = (name, f"{weight}_mask")
    return _PruningApplied(mapping, pruned, source) if pruned else mapping


def canonicalize(
    mapping,
    *,
    key_map=None,
    strict=True,
    source=None,
    input_size=None,
    conv1_padding=None,
    conv2_padding=None,
    conv_activation=None,
    fc_activation=None,
    batchnorm_eps=None,
):
    """Convert a mapping of named arrays into canonical, validated weights of a LeNet of the family.

    Parameters
    ----------
    mapping : mapping of str to array_like
        NumPy arrays, PyTorch tensors, or anything with ``.numpy()`` or ``__array__``.  Recognised
        layouts: canonical names (``conv1.weight`` ... ``fc2.bias``: layers conv1, conv2, an
        optional conv3, fc1, optional fc2 and fc3, the ``state_dict`` of a model with layers of
        those names); the PyTorch names conv1, conv2, fc1, fc2, fc3 (the PyTorch tutorial model,
        where fc1 over 16x5x5 features is conv3 flattened in (channel, row, column) order, and
        the PyTorch MNIST LeNet on unpadded 28x28 input, fc1 over 16x4x4); Caffe's names conv1,
        conv2, ip1, ip2; and numbered ``nn.Sequential`` exports (``0.weight``, ``net.3.bias``,
        ``features.0.weight`` ... ``classifier.1.bias``) with 3 to 6 layers (two convolutions,
        a third one if its weight is 4-D, then 1 to 3 dense layers).  The named layouts are
        also found behind a prefix every key shares (``module.conv1.weight`` from
        ``nn.DataParallel``, ``_orig_mod.`` from ``torch.compile``).  A pruned weight
        (``X.weight_orig`` and ``X.weight_mask``, from ``torch.nn.utils.prune``) is read as
        their product, as the pruned module computes.  conv3 may be a 2-D dense
        weight of shape (conv3_channels, conv2_channels * 25) in every layout.
    key_map : mapping of str to str, optional
        Canonical names to the mapping's names, per parameter (``{"conv1.weight": "c1.w"}``) or
        per layer (``{"conv1": "features.c1"}`` for ``features.c1.weight`` and ``.bias``); a
        parameter entry wins over its layer's entry, and uncovered parameters keep their
        canonical name.  Disables layout detection.
    strict : bool, default True
        Reject keys the chosen layout does not use.  The metadata key ``__lenet_fast__`` is
        always ignored.
    source : str or os.PathLike, optional
        The file the mapping came from, named in error messages.
    input_size, conv1_padding, conv2_padding : optional
        The geometry, where the caller (or the file) states it; see
        `lenet_fast._architecture.infer_geometry` for how the rest is inferred from fc1's
        inputs.  Options guessed among several possibilities are listed in the result's
        ``assumed_geometry`` (the model announces them).
    conv_activation, fc_activation : str, optional
        Where known: when both are given and differ, a dense fc1 over conv2's channels x 5 x 5
        is kept as fc1 after a flatten instead of being read as conv3.
    batchnorm_eps : float, optional
        The eps of the mapping's BatchNorm layers, where the caller knows it (a ``state_dict``
        does not store it).  None: PyTorch's default, 1e-5, recorded in the result's
        ``assumed_batchnorm_eps`` when a BatchNorm was folded with it (the model announces it).

    Returns
    -------
    CanonicalWeights
        A dict of the network's canonical keys in order, each a new float32, native byte order,
        C-contiguous array with shape ``conv1.weight`` (c1, C, 5, 5), ``conv1.bias`` (c1,),
        ``conv2.weight`` (c2, c1, 5, 5), optional ``conv3.weight`` (c3, c2, 5, 5), ``fc1.weight``
        (u1, c3 or the flattened features), optional ``fc2.weight`` / ``fc3.weight`` and matching
        biases; ``.sizes`` holds every size (`lenet_fast._architecture.Sizes`).

    Raises
    ------
    WeightFileError
        If no layout matches or several do, keys are missing or (with `strict`) unused, an array
        is not floating point (float16, float32 or float64), a shape does not fit, C is not 1 or
        3, a width exceeds 4096 or n_classes 100000, the arrays hold more than
        `MAX_PARAMETERS` (2**23) values together, an array holds NaN or inf, or the geometry
        does not fit (an odd convolution output, conv3 after a pool2 that is not 5x5, fc1's
        inputs that no geometry gives).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    ...     torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    ...     torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(),
    ...     torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    >>> canonicalize(model.state_dict())["conv3.weight"].shape
    (120, 16, 5, 5)
    """
    mapping = _apply_pruning(mapping, source)
    names = [name for name in mapping if name != METADATA_KEY]
    non_strings = [name for name in names if not isinstance(name, str)]
    if non_strings:
        raise _error(
            _where(source), f"expected string keys, found {_key_list(map(repr, non_strings))}"
        )
    stated = {
        option: value
        for option, value in (
            ("input_size", input_size),
            ("conv1_padding", conv1_padding),
            ("conv2_padding", conv2_padding),
        )
        if value is not None
    }
    try:
        stated = {
            option: _architecture.check_option(option, value) for option, value in stated.items()
        }
    except ValueError as exc:
        raise _error(_where(source), str(exc)) from None
    eps = BATCHNORM_EPS if batchnorm_eps is None else check_batchnorm_eps(batchnorm_eps)
    shape_of = _shape_reader(mapping)
    batchnorms = _batchnorm_groups(names)
    batchnorm_keys = {key for group in batchnorms.values() for key in group.values()}
    layout, assignment = _choose_assignment(
        [name for name in names if name not in batchnorm_keys],
        key_map,
        source,
        shape_of,
        bool(batchnorms),
    )
    _refuse_unused(set(names) - set(assignment.values()) - batchnorm_keys, strict, source)
    assignment, folded_into_conv3 = _fold_dense_into_conv3(
        assignment, shape_of, (conv_activation, fc_activation), stated
    )
    keys = list(assignment)

    def describe(key):
        name = assignment[key]
        return _where(source, name) + ("" if name == key else f" (used as {key})")

    absent = [key for key in keys if assignment[key] not in mapping]  # biases, see above

    def header(key):
        if key in absent:  # a missing bias: as many zeros as the layer has outputs
            shape, _ = mapping.header(assignment[key.replace("bias", "weight")])
            return shape[:1], np.dtype(np.float32)
        return mapping.header(assignment[key])

    if _reads_headers(mapping):
        # Check dtypes and shapes from the .npy headers before any array data is read, so that a
        # small file cannot make us allocate an array no LeNet of these dimensions can have.
        headers = {key: header(key) for key in keys}
        for key, (_, dtype) in headers.items():
            _check_float_dtype(dtype, describe(key))
        _bind_dimensions(
            _dense_conv3_as_4d({key: shape for key, (shape, _) in headers.items()}),
            describe,
            _where(source),
        )
    weights = {
        key: _to_float32(mapping[assignment[key]], describe(key))
        for key in keys
        if key not in absent
    }
    for key in absent:
        weights[key] = np.zeros(weights[key.replace("bias", "weight")].shape[:1], np.float32)
    weights = {key: weights[key] for key in keys}
    folded = _fold_batchnorms(mapping, names, batchnorms, assignment, weights, absent, source, eps)
    unfolded = [assignment[key] for key in absent if key.split(".")[0] not in folded]
    if unfolded:
        raise _error(
            _where(source),
            f"missing {_key_list(unfolded)} (a layer without a bias is "
            f"only accepted when a BatchNorm follows it)",
        )
    if "conv3.weight" in weights:
        conv3_shape = _dense_conv3_as_4d({key: array.shape for key, array in weights.items()})[
            "conv3.weight"
        ]
        weights["conv3.weight"] = weights["conv3.weight"].reshape(conv3_shape)
    shapes = {key: array.shape for key, array in weights.items()}
    dimensions = _bind_dimensions(shapes, describe, _where(source))
    try:
        geometry, assumed = _architecture.infer_geometry(
            dimensions["conv2_channels"], shapes["fc1.weight"][1], "conv3.weight" in shapes, stated
        )
        sizes = _architecture.sizes(shapes, **geometry)
    except ValueError as exc:
        raise _error(_where(source), str(exc)) from None
    return CanonicalWeights(
        weights,
        layout=layout,
        batchnorm=folded,
        sizes=sizes,
        assumed_geometry=assumed,
        folded_into_conv3=folded_into_conv3,
        assumed_batchnorm_eps=eps if folded and batchnorm_eps is None else None,
    )


class CanonicalWeights(dict):
    """The canonical arrays (a dict), with what `canonicalize` found out about them.

    Parameters
    ----------
    weights : mapping of str to ndarray
        The canonical arrays, in canonical order.
    layout, batchnorm, sizes, assumed_geometry, folded_into_conv3, assumed_batchnorm_eps : optional
        The attributes above (``batchnorm`` and ``assumed_geometry`` are copied; None: empty).

    Attributes
    ----------
    layout : str or None
        The recognised layout: ``"canonical"``, ``"PyTorch tutorial"``, ``"Caffe"``,
        ``"nn.Sequential"`` or ``"key_map"`` (None when not known).
    batchnorm : dict of str to str
        Canonical layer -> the BatchNorm (its key prefix) folded into it.
    sizes : lenet_fast._architecture.Sizes or None
        Every size of the network (geometry included).
    assumed_geometry : dict
        Geometry options that were guessed among several possibilities (empty: none).
    folded_into_conv3 : bool
        Whether the mapping's first dense layer was read as conv3 (see `canonicalize`).
    assumed_batchnorm_eps : float or None
        The eps BatchNorm layers were folded with when the caller did not state it (None: no
        BatchNorm, or its eps was stated).
    """

    def __init__(
        self,
        weights,
        *,
        layout=None,
        batchnorm=None,
        sizes=None,
        assumed_geometry=None,
        folded_into_conv3=False,
        assumed_batchnorm_eps=None,
    ):
        super().__init__(weights)
        self.layout = layout
        self.batchnorm = dict(batchnorm or {})
        self.sizes = sizes
        self.assumed_geometry = dict(assumed_geometry or {})
        self.folded_into_conv3 = folded_into_conv3
        self.assumed_batchnorm_eps = assumed_batchnorm_eps


# ---------------------------------------------------------------------------------------------
# Unused keys and BatchNorm
# ---------------------------------------------------------------------------------------------

# Keys that hold numbers a network computes with: never dropped, even with strict=False.
_ARITHMETIC_KEY = re.compile(
    r"(?:^|[._])(?:weight|bias|running_mean|running_var|weight_orig|"
    r"weight_g|weight_v|in_proj_weight|in_proj_bias)$"
)
_BATCHNORM_PARAMETERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BATCHNORM_WORDS = re.compile(r"batch_?norm|bn|norm", re.IGNORECASE)
BATCHNORM_EPS = 1e-5  # PyTorch's default; a state_dict does not store a BatchNorm's eps


def check_batchnorm_eps(value):
    """Check a BatchNorm eps stated by a caller or recorded in a file.

    Parameters
    ----------
    value : object
        The stated eps.

    Returns
    -------
    float
        `value` as a float.

    Raises
    ------
    ValueError
        If `value` is not a number (a bool or a string is not), or not finite and >= 0.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"batchnorm_eps must be a number; got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"batchnorm_eps must be finite and >= 0; got {value!r}")
    return value


def _refuse_unused(unused, strict, source):
    """Keys the layout does not use: parameters are always refused (dropping them would change
    the outputs); other keys (counters, bookkeeping) are refused unless strict is False."""
    arithmetic = sorted(name for name in unused if _ARITHMETIC_KEY.search(name))
    if arithmetic:
        raise _error(
            _where(source),
            f"keys {_key_list(arithmetic)} hold parameters that no layer of the matched layout "
            f"uses; ignoring them would change the outputs, so the weights are refused (a "
            f"LeNet here is conv1, conv2, an optional conv3, then one to three dense layers, "
            f"each optionally followed by a BatchNorm)",
        )
    if strict and unused:
        raise _error(
            _where(source),
            f"unexpected keys {_key_list(unused)} (not used by the matched layout; "
            f"pass strict=False to ignore them)",
        )


def _batchnorm_groups(names):
    """{prefix: {parameter: key}} for every group of keys with a ``running_mean`` or
    ``running_var`` (a BatchNorm's state), e.g. ``bn1.weight`` ... ``bn1.num_batches_tracked``."""
    groups = {}
    for name in names:
        prefix, _, parameter = name.rpartition(".")
        if parameter in ("running_mean", "running_var"):
            groups.setdefault(prefix, {})
    for name in names:
        prefix, _, parameter = name.rpartition(".")
        if prefix in groups and parameter in _BATCHNORM_PARAMETERS:
            groups[prefix][parameter] = name
    return groups


def _layer_prefix(assignment, layer):
    return assignment[f"{layer}.weight"].removesuffix(".weight")


def _name_hint(batchnorm, layer_prefix):
    """Whether a BatchNorm's name points at a layer: ``conv1_bn``, ``bn_conv1`` or ``conv1.bn``
    for ``conv1``; ``bn1`` for a layer whose name ends in 1."""
    stripped = _BATCHNORM_WORDS.sub("", batchnorm).strip("._")
    number = stripped.rpartition(".")[2]  # module.bn1 (behind a wrapper prefix) -> 1
    layer_name = layer_prefix.rpartition(".")[2]
    return stripped in (layer_prefix, layer_name) or (
        number.isdigit() and re.fullmatch(rf"\D*{number}", layer_name) is not None
    )


def _attach_batchnorms(batchnorms, names, assignment, widths, features, source):
    """Decide which layer each BatchNorm follows: the one layer with as many outputs as the
    BatchNorm has features; among several, the one its name points at, else the nearest one
    before it in key order (a state_dict lists modules in the order they were defined)."""
    position = {name: index for index, name in enumerate(names)}
    attached = {}
    for prefix, group in batchnorms.items():
        where = _where(source, prefix)
        candidates = [
            layer for layer in widths if widths[layer] == features[prefix] and layer not in attached
        ]
        if len(candidates) > 1:
            named = [
                layer
                for layer in candidates
                if _name_hint(prefix, _layer_prefix(assignment, layer))
            ]
            before = [
                layer
                for layer in candidates
                if position[assignment[f"{layer}.weight"]] < position[group["running_mean"]]
            ]
            candidates = named[-1:] or before[-1:] or candidates
        if not candidates:
            outputs = ", ".join(f"{layer} {width}" for layer, width in widths.items())
            raise _error(
                where,
                f"BatchNorm {prefix!r} has {features[prefix]} features, but no "
                f"layer without a BatchNorm has {features[prefix]} outputs "
                f"(outputs: {outputs}); "
                f"it cannot be folded, so the weights are refused",
            )
        attached[candidates[0]] = prefix
    return attached


def _fold_batchnorms(mapping, names, batchnorms, assignment, weights, absent, source, eps):
    """Fold each BatchNorm into the layer it follows (see `fold_batchnorm`) with this `eps`, in
    place in `weights`; return {layer: BatchNorm prefix}."""
    if not batchnorms:
        return {}
    widths = {layer: weights[f"{layer}.weight"].shape[0] for layer in _layers_of(weights)}
    arrays = {}
    for prefix, group in batchnorms.items():
        missing = [
            parameter for parameter in ("running_mean", "running_var") if parameter not in group
        ]
        if missing:
            raise _error(
                _where(source, prefix),
                f"BatchNorm {prefix!r} has no {prefix}.{missing[0]}; a BatchNorm needs "
                f"running_mean and running_var (weight and bias are optional)",
            )
        for parameter in ("weight", "bias", "running_mean", "running_var"):
            if parameter in group:
                key = group[parameter]
                if _reads_headers(mapping):
                    shape, dtype = mapping.header(key)
                    _check_float_dtype(dtype, _where(source, key))
                    if len(shape) != 1 or shape[0] > MAX_WIDTH:
                        raise _error(
                            _where(source, key),
                            f"expected a BatchNorm vector of at most "
                            f"{MAX_WIDTH} values, found shape {shape}",
                        )
                arrays[key] = _to_float32(mapping[key], _where(source, key), np.float64)
    features = {prefix: arrays[group["running_mean"]].size for prefix, group in batchnorms.items()}
    attached = _attach_batchnorms(batchnorms, names, assignment, widths, features, source)
    for layer, prefix in attached.items():
        group = batchnorms[prefix]
        where = _where(source, prefix)
        raw = {
            parameter: None
            if f"{layer}.{parameter}" in absent
            else _to_float32(
                mapping[assignment[f"{layer}.{parameter}"]],
                _where(source, assignment[f"{layer}.{parameter}"]),
                np.float64,
            )
            for parameter in ("weight", "bias")
        }
        try:
            weights[f"{layer}.weight"], weights[f"{layer}.bias"] = fold_batchnorm(
                raw["weight"],
                raw["bias"],
                arrays.get(group.get("weight")),
                arrays.get(group.get("bias")),
                arrays[group["running_mean"]],
                arrays[group["running_var"]],
                eps,
            )
        except ValueError as exc:
            raise _error(
                where,
                f"cannot fold BatchNorm {prefix!r} into "
                f"{_layer_prefix(assignment, layer)!r}: {exc}",
            ) from exc
    return attached


def fold_batchnorm(weight, bias, gamma, beta, mean, var, eps=BATCHNORM_EPS, axis=0):
    """Fold an inference-mode batch normalisation that follows a layer into the layer itself.

    The layer computes ``z = W x + b`` (or a convolution); the BatchNorm then computes
    ``gamma * (z - mean) / sqrt(var + eps) + beta`` per output feature.  Both together equal one
    layer with ``W' = W * s`` (``s = gamma / sqrt(var + eps)`` along the output axis) and
    ``b' = (b - mean) * s + beta``.  The arithmetic is done in float64 and rounded once to
    float32, so the folded layer matches the two-step computation to float32 precision.

    Parameters
    ----------
    weight : array_like
        The layer's weight; its `axis` indexes the output features (0 for PyTorch's Conv2d and
        Linear; -1 for a Keras Dense kernel of shape (inputs, outputs) or a Conv2D kernel).
    bias : array_like or None
        The layer's bias (None: zeros).
    gamma, beta : array_like or None
        The BatchNorm's scale and shift (None: ones and zeros, as for ``affine=False`` or
        Keras's ``scale=False`` / ``center=False``).
    mean, var : array_like
        The running statistics.
    eps : float, default 1e-5
        Added to `var` (PyTorch's default 1e-5; Keras's is 1e-3).
    axis : int, default 0
        The output-feature axis of `weight`.

    Returns
    -------
    weight, bias : ndarray of float32
        The folded layer.

    Raises
    ------
    ValueError
        If the vectors' lengths differ from the number of output features, ``var + eps`` is not
        positive, or a folded value is not finite in float32.

    Examples
    --------
    >>> w, b = fold_batchnorm(np.ones((2, 3)), np.zeros(2), [2.0, 1.0], [0.0, 1.0], [0.0, 0.0],
    ...                       [1.0, 3.0], eps=0.0)
    >>> w.tolist(), b.tolist()
    ([[2.0, 2.0, 2.0], [0.5773502588272095, 0.5773502588272095, 0.5773502588272095]], [0.0, 1.0])
    """
    weight = np.asarray(weight, dtype=np.float64)
    axis = axis % weight.ndim
    features = weight.shape[axis]
    bias = _batchnorm_vector(bias, 0.0, "bias", features)
    scale, shift = batchnorm_affine(gamma, beta, mean, var, eps, features)
    shape = [1] * weight.ndim
    shape[axis] = features
    folded_weight = weight * scale.reshape(shape)
    folded_bias = bias * scale + shift
    with np.errstate(over="ignore"):
        results = (
            np.ascontiguousarray(folded_weight, dtype=np.float32),
            np.ascontiguousarray(folded_bias, dtype=np.float32),
        )
    if not all(np.isfinite(result).all() for result in results):
        raise ValueError("the folded weights are not finite in float32")
    return results


def _batchnorm_vector(value, default, name, features):
    if value is None:
        return np.full(features, default, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64).reshape(-1)
    if value.shape != (features,):
        raise ValueError(
            f"expected {name} of length {features} (the layer's outputs), found {value.size}"
        )
    return value


def batchnorm_affine(gamma, beta, mean, var, eps, features):
    """An inference batch normalisation as ``x * scale + shift`` per feature, in float64.

    Parameters
    ----------
    gamma, beta : array_like or None
        The scale and shift parameters (None: ones and zeros).
    mean, var : array_like
        The running statistics.
    eps : float
        Added to `var`.
    features : int
        The number of features every vector must have.

    Returns
    -------
    scale, shift : ndarray of float64
        ``gamma / sqrt(var + eps)`` and ``beta - mean * scale``.

    Raises
    ------
    ValueError
        For a vector not of length `features`, or ``var + eps`` not positive.
    """
    gamma = _batchnorm_vector(gamma, 1.0, "gamma (weight)", features)
    beta = _batchnorm_vector(beta, 0.0, "beta (bias)", features)
    mean = _batchnorm_vector(mean, 0.0, "running_mean", features)
    var = _batchnorm_vector(var, 1.0, "running_var", features)
    denominator = var + float(eps)
    if not np.all(denominator > 0):
        raise ValueError(f"expected running_var + eps > 0, found {float(denominator.min())!r}")
    scale = gamma / np.sqrt(denominator)
    return scale, beta - mean * scale


def fold_input_affine(weight, bias, scale, shift, axis, channel_of_input=None, out_axis=-1):
    """A layer reading ``x * scale + shift`` (per input channel) as one reading x, in float64.

    ``W' = W * scale`` along the input axis and ``b' = b + sum(W * shift)`` over every input:
    exact for a dense layer and a convolution without padding (a padded one would pad the
    shifted input with zeros; the caller refuses a shift there).

    Parameters
    ----------
    weight : array_like
        The layer's weight, its `axis` indexing the inputs and `out_axis` the outputs: a Keras
        Conv2D kernel (5, 5, in, out) has axis 2 and out_axis -1, a PyTorch Conv2d weight
        (out, in, 5, 5) axis 1 and out_axis 0.
    bias : array_like or None
        The layer's bias (None: zeros).
    scale, shift : ndarray
        Per input channel.
    axis : int
        The input axis of `weight`.
    channel_of_input : ndarray of int, optional
        For a dense layer after a flatten: the channel of each input feature.  Without it, a
        weight with more inputs than `scale` has channels reads a flatten of (C, H, W)
        (channel-major: PyTorch's and ONNX's order).
    out_axis : int, default -1
        The output axis of `weight`.

    Returns
    -------
    weight, bias : ndarray of float64
        Left unrounded, so that a fold on the output side rounds once.

    Raises
    ------
    ValueError
        If the inputs are not a whole number of maps per channel.
    """
    weight = np.asarray(weight, dtype=np.float64)
    inputs, channels = weight.shape[axis], scale.size
    if channel_of_input is None and inputs != channels:
        if inputs % channels:
            raise ValueError(f"its {inputs} inputs are not {channels} channels' maps")
        channel_of_input = np.repeat(np.arange(channels), inputs // channels)
    if channel_of_input is not None:
        scale, shift = scale[channel_of_input], shift[channel_of_input]
    shape = [1] * weight.ndim
    shape[axis] = weight.shape[axis]
    outputs = weight.shape[out_axis]
    bias = np.zeros(outputs) if bias is None else np.asarray(bias, dtype=np.float64)
    shifted = np.moveaxis(weight * shift.reshape(shape), out_axis, -1).reshape(-1, outputs)
    return weight * scale.reshape(shape), bias + shifted.sum(axis=0)


def _dense_conv3_as_4d(shapes):
    """The shapes with a dense conv3 weight (c3, c2 * 25) read as (c3, c2, 5, 5): flattened from
    (channel, row, column), like torch.flatten of NCHW features."""
    if "conv3.weight" not in shapes:
        return shapes
    conv3_shape, conv2_channels = tuple(shapes["conv3.weight"]), tuple(shapes["conv2.weight"])[:1]
    if (
        len(conv3_shape) == 2
        and conv2_channels
        and conv3_shape[1] == conv2_channels[0] * _KERNEL**2
    ):
        shapes = {**shapes, "conv3.weight": (conv3_shape[0], conv2_channels[0], _KERNEL, _KERNEL)}
    return shapes


def infer_dimensions(weights):
    """Read the network's dimensions off canonical weights, checking that they fit together
    (the geometry is not checked here: `canonicalize` returns every size, `.sizes`).

    Parameters
    ----------
    weights : mapping of str to ndarray
        Canonical weights, e.g. from `canonicalize` or `load_npz`.

    Returns
    -------
    dict of str to int
        ``in_channels``, ``conv1_channels``, ``conv2_channels``, ``conv3_channels`` (with
        conv3), ``fc1_units`` ... (the hidden dense layers) and ``n_classes``.

    Raises
    ------
    WeightFileError
        If a canonical key is missing or a shape does not fit.

    Examples
    --------
    >>> shapes = {"conv1.weight": (6, 1, 5, 5), "conv1.bias": (6,), "conv2.weight": (16, 6, 5, 5),
    ...           "conv2.bias": (16,), "conv3.weight": (120, 16, 5, 5), "conv3.bias": (120,),
    ...           "fc1.weight": (84, 120), "fc1.bias": (84,), "fc2.weight": (10, 84), "fc2.bias": (10,)}
    >>> infer_dimensions({key: np.zeros(shape, np.float32) for key, shape in shapes.items()})["n_classes"]
    10
    """
    layers = [
        layer
        for layer in FAMILY_LAYERS
        if layer in ("conv1", "conv2", "fc1")
        or f"{layer}.weight" in weights
        or f"{layer}.bias" in weights
    ]
    expected = [f"{layer}.{parameter}" for layer in layers for parameter in ("weight", "bias")]
    missing = [key for key in expected if key not in weights]
    if missing:
        raise WeightFileError(
            f"weights is missing {_key_list(missing)}; expected keys: {_key_list(expected)}"
        )
    shapes = {key: np.shape(weights[key]) for key in expected}
    return _bind_dimensions(shapes, functools.partial(_where, None))


# ---------------------------------------------------------------------------------------------
# .npz files
# ---------------------------------------------------------------------------------------------

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_MEMBER_PERMISSIONS = 0o644 << 16


def _check_npy_header(shape, dtype, where, max_axis=MAX_CLASSES):
    if dtype.hasobject:
        raise _error(
            where,
            f"expected a numeric array, found dtype {dtype} holding Python objects (never unpickled)",
        )
    if len(shape) > 4 or any(not 0 <= size <= max_axis for size in shape):
        raise _error(
            where,
            f"expected a LeNet-5 array shape (at most 4 axes of at most {max_axis}), found {shape}",
        )
    if math.prod(shape) > MAX_ELEMENTS:
        raise _error(
            where,
            f"expected at most {MAX_ELEMENTS} elements, found {math.prod(shape)} (shape {shape})",
        )
    if math.prod(shape) * dtype.itemsize > MAX_ELEMENTS * 8:
        raise _error(
            where, f"expected at most {MAX_ELEMENTS * 8} bytes of data, found {dtype} x {shape}"
        )


def _read_npy_header(stream, version, where):
    """The (shape, fortran_order, dtype) of a .npy header whose magic was just read: the header
    length field is checked before the header is read (numpy reads all it declares, up to 4 GiB)."""
    length_field = stream.read(2 if version == (1, 0) else 4)
    length = int.from_bytes(length_field, "little")
    if len(length_field) not in (2, 4) or length > MAX_NPY_HEADER_BYTES:
        raise _error(
            where,
            f"expected a .npy header of at most {MAX_NPY_HEADER_BYTES:,} bytes, "
            f"found a header length field of {length:,}",
        )
    header = stream.read(length)
    if len(header) != length:
        raise _error(where, f"truncated: expected a {length}-byte .npy header, found {len(header)}")
    parse = (
        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    )
    return parse(io.BytesIO(length_field + header))


def _read_member(archive, info, source, header_only=False):
    """Read one .npy member, checking its header and its declared size before reading its data;
    with `header_only`, return its (shape, dtype) without reading the data."""
    where = _where(source, info.filename)
    try:
        with archive.open(info) as stream:
            version = npy_format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise _error(
                    where,
                    f"expected .npy format version 1.0 or 2.0, found {version[0]}.{version[1]}",
                )
            shape, fortran_order, dtype = _read_npy_header(stream, version, where)
            _check_npy_header(
                shape,
                dtype,
                where,
                MAX_METADATA_BYTES if info.filename == f"{METADATA_KEY}.npy" else MAX_CLASSES,
            )
            data_size = math.prod(shape) * dtype.itemsize
            member_size = stream.tell() + data_size
            if info.file_size != member_size:
                raise _error(
                    where,
                    f"the zip directory declares {info.file_size} uncompressed bytes, "
                    f"the .npy header of a {dtype} array of shape {shape} implies {member_size}",
                )
            if header_only:
                return shape, dtype
            data = stream.read(data_size)
            if len(data) != data_size:
                raise _error(
                    where, f"truncated: expected {data_size} bytes of array data, found {len(data)}"
                )
            return np.frombuffer(data, dtype=dtype).reshape(
                shape, order="F" if fortran_order else "C"
            )
    except WeightFileError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise _error(where, f"unreadable .npy member ({type(exc).__name__}: {exc})") from exc


def _reads_headers(mapping):
    """Whether `mapping` reads arrays on access and has ``header(key)`` -> (shape, dtype), so
    that shapes and dtypes are checked before any array data is read."""
    return getattr(mapping, "reads_on_access", False)


class _ArchiveMembers(Mapping):
    """The arrays of an open .npz archive by key (member name without .npy), read on access."""

    reads_on_access = True

    def __init__(self, archive, source):
        self._archive, self._source, self._members = archive, source, {}
        members = archive.infolist()
        if len(members) > _MAX_ARCHIVE_MEMBERS:
            raise _error(
                _where(source),
                f"expected at most {_MAX_ARCHIVE_MEMBERS} members, found {len(members)}",
            )
        for info in members:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise _error(
                    _where(source, info.filename),
                    "expected only .npy array members; this name does not end in .npy",
                )
            key = info.filename.removesuffix(".npy")
            if key in self._members:
                raise _error(
                    _where(source, info.filename), "expected unique member names, found a duplicate"
                )
            self._members[key] = info

    def __getitem__(self, key):
        return _read_member(self._archive, self._members[key], self._source)

    def header(self, key):
        """The (shape, dtype) of a member, from its checked .npy header (no data is read)."""
        return _read_member(self._archive, self._members[key], self._source, header_only=True)

    def __contains__(self, key):
        # Mapping's default would read (and check) the member's data just to answer "is it there".
        return key in self._members

    def __iter__(self):
        return iter(self._members)

    def __len__(self):
        return len(self._members)


def _read_metadata(members, source):
    where = _where(source, f"{METADATA_KEY}.npy")
    shape, dtype = members.header(METADATA_KEY)  # checked before any data is read
    if dtype != np.uint8 or len(shape) != 1:
        raise _error(
            where,
            f"expected a 1-D uint8 array of UTF-8 JSON, found dtype {dtype} with shape {shape}",
        )
    if shape[0] > MAX_METADATA_BYTES:
        raise _error(
            where, f"expected at most {MAX_METADATA_BYTES} bytes of JSON, found {shape[0]}"
        )
    array = members[METADATA_KEY]
    try:
        metadata = json.loads(array.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _error(where, f"expected UTF-8 JSON metadata, found invalid data ({exc})") from exc
    if not isinstance(metadata, dict):
        raise _error(where, f"expected a JSON object, found a JSON {type(metadata).__name__}")
    return metadata


def _stated_options(metadata, explicit, source):
    """The geometry and activations for `canonicalize`: the caller's, else the file's."""
    stored = metadata.get("architecture", {})
    stored = stored if isinstance(stored, dict) else {}  # the model reports a malformed one
    options = {}
    for option in _architecture.GEOMETRY_OPTIONS + ("conv_activation", "fc_activation"):
        value = explicit.get(option)
        if value is None and stored.get(option) is not None:
            value = stored[option]
            if option in _architecture.GEOMETRY_OPTIONS:
                try:
                    value = _architecture.check_option(option, value)
                except ValueError as exc:
                    raise _error(
                        _where(source, f"{METADATA_KEY}.npy"),
                        f"metadata['architecture']['{option}']: {exc}",
                    ) from None
        options[option] = value
    return options


def load_npz(path, *, key_map=None, strict=True, batchnorm_eps=None, **options):
    """Load LeNet-5 weights from a ``.npz`` file safely: nothing is ever unpickled.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` file written by `save_npz`, ``numpy.savez`` or ``numpy.savez_compressed``.
    key_map : mapping of str to str, optional
        Passed to `canonicalize`.
    strict : bool, default True
        Passed to `canonicalize`: reject arrays the matched layout does not use.
    batchnorm_eps : float, optional
        Passed to `canonicalize`: the eps of BatchNorm layers stored unfolded in the file.
    **options
        ``input_size``, ``conv1_padding``, ``conv2_padding``, ``conv_activation``,
        ``fc_activation`` (None: not stated), passed to `canonicalize`; an option the call does
        not state is taken from the file's ``metadata['architecture']`` where it states it.

    Returns
    -------
    weights : dict of str to ndarray
        Canonical weights, as `canonicalize` returns them.
    metadata : dict
        The JSON object stored in the ``__lenet_fast__.npy`` member, or ``{}`` if there is none.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    WeightFileError
        If the file is not a readable zip archive; a member is not a ``.npy`` array, is
        truncated, corrupt, holds Python objects, declares a size its header disagrees with, or
        has a shape no LeNet-5 can have (more than 4 axes, an axis over 100000 or more than 2**24
        elements), or a header over 10,000 bytes; the metadata is over 1 MiB or not a JSON
        object; or `canonicalize` rejects the weights (also beyond 2**23 parameters in all).
        All of these are checked from the headers before any array data is read.

    Examples
    --------
    >>> weights, metadata = load_npz("lenet5.npz")  # doctest: +SKIP
    """
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"weight file {source!r} does not exist")
    try:
        archive = zipfile.ZipFile(source)
    except _ARCHIVE_ERRORS as exc:
        raise _error(
            _where(source),
            f"expected a .npz (zip) archive, found an unreadable file ({type(exc).__name__}: {exc})",
        ) from exc
    with archive:
        members = _ArchiveMembers(archive, source)
        metadata = _read_metadata(members, source) if METADATA_KEY in members else {}
        weights = canonicalize(
            members,
            key_map=key_map,
            strict=strict,
            source=source,
            batchnorm_eps=batchnorm_eps,
            **_stated_options(metadata, options, source),
        )
    return weights, metadata


def save_npz(path, weights, metadata=None):
    """Write weights and metadata as an uncompressed ``.npz`` that is byte-for-byte reproducible.

    Members are the canonical arrays (little-endian float32) in canonical order, then
    ``__lenet_fast__.npy`` holding the metadata as compact, key-sorted JSON; timestamps and
    permissions are fixed, so saving the result of `load_npz` reproduces the file exactly.
    ``numpy.load`` reads the file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, written as given (no ``.npz`` suffix is added); overwritten if it exists.
    weights : mapping of str to array_like
        Any layout `canonicalize` accepts (strictly).
    metadata : dict, optional
        JSON-serialisable information to store with the weights (e.g. the activations).

    Raises
    ------
    WeightFileError
        If `canonicalize` rejects `weights`.
    TypeError
        If `metadata` is not a dict.
    ValueError
        If `metadata` cannot be serialised as JSON (including NaN and infinity) or is larger
        than `MAX_METADATA_BYTES` (1 MiB) as JSON, which `load_npz` would refuse.

    Examples
    --------
    >>> save_npz("lenet5.npz", weights, {"conv_activation": "relu"})  # doctest: +SKIP
    """
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, found {type(metadata).__name__}")
    weights = canonicalize(weights, **_stated_options(metadata, {}, None))
    try:
        text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable, found {exc}") from exc
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(
            f"metadata must be at most {MAX_METADATA_BYTES:,} bytes as JSON (what "
            f"from_npz reads); found {len(text.encode('utf-8')):,}"
        )
    arrays = {key: np.asarray(weights[key], dtype="<f4") for key in weights}  # canonical order
    arrays[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    archive_bytes = io.BytesIO()
    with zipfile.ZipFile(archive_bytes, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            member_bytes = io.BytesIO()
            npy_format.write_array(member_bytes, array, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.create_system, info.external_attr = _UNIX, _MEMBER_PERMISSIONS
            archive.writestr(info, member_bytes.getvalue())
    write_file_atomically(path, archive_bytes.getvalue())


def destination_file(path):
    """The file a write to `path` replaces: `path` itself, or the file its symbolic link(s)
    finally name, so that the link stays a link and its target gets the new content, as with
    ``open(path, "w")``.

    Parameters
    ----------
    path : str or os.PathLike
        The path the user named.

    Returns
    -------
    str
        An absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    return os.path.realpath(path) if os.path.islink(path) else path


# A temporary file's name, ".<name>.<12 random hex digits>.part", made from and read back to the
# name of the file it will replace: one format, in these two functions.
_TEMPORARY_RANDOM_BYTES = 6
_TEMPORARY_SUFFIX_LENGTH = len(".") + 2 * _TEMPORARY_RANDOM_BYTES + len(".part")


def _temporary_name(name):
    return f".{name}.{secrets.token_hex(_TEMPORARY_RANDOM_BYTES)}.part"


def _replaced_name(temporary_name):
    return temporary_name[1:-_TEMPORARY_SUFFIX_LENGTH]


def temporary_file_beside(path):
    """Create an empty file ``.<name>.<random>.part`` in the folder of `path`'s destination
    (`destination_file`) and return its path.

    It has the permissions ``open(path, "w")`` would give.  Written, then moved over the
    destination with `replace_durably`, it makes a write atomic (same folder, so the rename
    never copies).

    Parameters
    ----------
    path : str or os.PathLike
        The file that will be written.

    Returns
    -------
    str
        The new, empty temporary file's path (the caller removes it if it is not renamed).

    Raises
    ------
    OSError
        If the folder cannot be written to (``FileExistsError`` if no free name was found in
        100 tries).
    """
    folder, name = os.path.split(destination_file(path))
    # Created with mode 0o666 for the kernel to apply the umask: reading the umask would mean
    # setting it, and a umask set for a moment applies to files other threads create meanwhile.
    for _ in range(100):
        temporary = os.path.join(folder, _temporary_name(name))
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:  # name the file the user asked for, not our temporary one
            raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None
        return temporary
    raise FileExistsError(errno.EEXIST, "no free temporary file name beside it", path)


def replace_durably(temporary):
    """Move the complete `temporary` (from `temporary_file_beside`) over the file it was made
    for: the destination `temporary_file_beside` resolved, which its name records (a symbolic
    link is resolved once, so one retargeted in between does not redirect the write).

    Its data reach the disk first (``fsync``), so a crash leaves the old file or the new one,
    never an empty or partial one; an existing destination keeps its permission bits (as
    ``open(path, "w")`` keeps them: a private file stays private); the folder's entry is
    synced after the rename where the platform allows it.

    Parameters
    ----------
    temporary : str
        The written temporary file, ``.<name>.<random>.part`` beside its destination.

    Raises
    ------
    OSError
        If the file cannot be synced or renamed (the caller removes the temporary file).
    """
    folder, name = os.path.split(temporary)
    destination = os.path.join(folder, _replaced_name(name))
    # POSIX syncs through any descriptor; Windows' FlushFileBuffers needs write access.
    descriptor = os.open(temporary, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    with contextlib.suppress(FileNotFoundError):  # read/write/execute bits only: never set-id
        os.chmod(temporary, os.stat(destination).st_mode & 0o777)
    os.replace(temporary, destination)
    try:
        descriptor = os.open(os.path.dirname(destination), os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (Windows): the rename stands unsynced
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file_atomically(path, data):
    """Write `data` to `path` through a temporary file in the same folder.

    The temporary file is renamed into place only once complete and on disk: `path` is never
    left half-written, and is untouched on failure (the temporary file is removed).  A symbolic
    link is written through, and an existing file keeps its permission bits
    (`replace_durably`).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; replaced if it exists.
    data : bytes-like
        The file's whole content.

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    temporary = temporary_file_beside(path)
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        replace_durably(temporary)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
