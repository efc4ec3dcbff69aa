"""Keras models in: `read_model` reads Keras 3 ``.keras`` archives and Keras 2/3 HDF5 ``.h5`` files.

Design: the file is read as data, never executed.  Keras is not imported (nor TensorFlow); the
model config is parsed with ``json`` and only its plain values are looked at, so no object is
ever deserialised; HDF5 is read with ``h5py`` (the ``keras`` extra).  Loading goes in four steps:

1. *Open*: a ``.keras`` archive (a zip holding ``config.json`` and ``model.weights.h5``) or a
   legacy ``.h5`` file (the JSON config in the ``model_config`` attribute, the weights in the
   ``model_weights`` group), recognised by content, not by name.  Sizes are checked before
   anything is read: the number of zip members and their declared sizes, the JSON text's length.
2. *Chain*: the config's layers as one chain from the input -- a ``Sequential`` model, or a
   ``Functional`` one whose every layer has one inbound tensor from the layer before (no
   branches, shared layers, nested models).  Dropout-like layers are dropped (inference
   identities).
3. *Match*: the chain against the LeNet family the engine runs::

       scaling* zeropad? Conv2D bn? act? bn'? pool act? bn'?
       zeropad? Conv2D bn? act? bn'? pool act? bn'?
       (Conv2D bn? act? bn'?)? Flatten (Dense bn? act? bn'?){1,3}

   (``scaling``: at most one Rescaling and one Normalization, in either order; at most one
   ``bn'`` per stage, none after the last Dense)

   with 5x5 stride-1 convolutions, each ``padding="valid"`` or ``"same"`` (2 on every side;
   conv3 "valid" over a 5x5 map; a ``ZeroPadding2D`` of 2 right before a "valid" one is the
   same as "same"), 2 x 2 stride-2 pooling of one kind, one activation per stage
   (from the layer's ``activation`` or a separate ``Activation``/``ReLU``/``Softmax`` layer), one
   activation shared by the convolutions and one by the hidden Dense layers, softmax only last,
   and an input whose every convolution output is even (2 x 2 pooling of an odd size is refused,
   never floored).  The input size is the config's; a config that states none gets the square
   28 x 28 or 32 x 32 input that gives the first Dense layer's inputs.  Three Dense layers over
   a 5x5 map, the first with the convolutions' activation, are read as conv3 and two dense
   layers (the same function).  Anything else is refused, naming the layer.
4. *Weights*: each expected dataset is located (by Keras's own path scheme: ``layers/conv2d_1/
   vars/0`` in ``.keras``, the ``weight_names`` attribute in ``.h5``), following hard links only,
   and its dtype and shape are checked against the config before its data is read.  The weights
   are converted once from channels-last: kernels (5, 5, in, out) -> (out, in, 5, 5), dense
   kernels (in, out) -> (out, in), and the first dense kernel after ``Flatten`` reordered from
   the flatten order Keras used ((row, column, channel) for channels-last) to PyTorch's
   (channel, row, column).  The leading ``Rescaling`` (``x * scale + offset``) and
   ``Normalization`` (``(x - mean) / sqrt(variance)``, stated or adapted; a variance under
   Keras's epsilon squared is refused, since the file does not store that epsilon) layers,
   one number or one per channel, in either order, are composed into one ``x * a + b`` per input
   channel and folded into conv1 (``_weights.fold_input_affine``: the kernel times a, b times
   the kernel's sums added to the bias; b only where conv1 is unpadded, since "same" pads the
   transformed input with zeros),
   a BatchNormalization (``bn`` above: directly after its Conv2D or Dense, which has no
   activation of its own) into its layer's kernel and bias (``_weights.fold_batchnorm``), and
   one after the activation (``bn'``) into the next layer's inputs
   (``_weights.fold_input_affine``: refused before max pooling with a negative gamma and before
   a "same" Conv2D with a shift), each with the epsilon its config states; all in float64,
   rounded once.  They then pass
   through ``_weights.canonicalize`` with the geometry (input size and both paddings) like
   every other weight set.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import zipfile
import zlib
from typing import Any, NamedTuple

import numpy as np

from . import _architecture, _weights
from ._weights import WeightFileError

MAX_CONFIG_BYTES = 1 << 20  # the model config's JSON text
MAX_WEIGHTS_BYTES = 1 << 31  # the model.weights.h5 member of a .keras archive
_IN_MEMORY_BYTES = 64 << 20  # smaller weight members are decompressed into memory
_MAX_MEMBERS = 64
_MAX_LAYERS = 256
_MAX_SMALL_TEXT = 4096  # metadata.json, the keras_version attribute
_KERNEL = 5
_PADDINGS = {"valid": 0, "same": 2}  # a 5x5 kernel's "same" padding is 2 on every side
_CONV_NAMES = ("conv1", "conv2", "conv3")
_DENSE_NAMES = ("fc1", "fc2", "fc3")
_ANY = "F"  # an expected dataset axis of any size (fc1's inputs)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_CONFIG_MEMBER, _WEIGHTS_MEMBER = "config.json", "model.weights.h5"
# What zipfile, zlib and h5py raise on bad bytes (h5py: OSError, KeyError, ValueError, ...).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    KeyError,
    TypeError,
)

_ACTIVATIONS = {
    "relu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "linear": "identity",
    None: "identity",
}
_POOLS = {"MaxPooling2D": "max", "MaxPool2D": "max", "AveragePooling2D": "avg", "AvgPool2D": "avg"}
# Layers that compute the identity at inference.
_INFERENCE_IDENTITIES = (
    "Dropout",
    "SpatialDropout2D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
)
# Keras's path for a layer's variables in model.weights.h5 is its class name in snake case.
_WEIGHTS_PATH_NAMES = {
    "Conv2D": "conv2d",
    "Dense": "dense",
    "BatchNormalization": "batch_normalization",
    "Normalization": "normalization",
}
_RESCALING = "Rescaling"
_NORMALIZATION = "Normalization"
_MAX_CHANNELS = 3  # the input channels the engine takes
_KERAS_EPSILON = 1e-7  # keras.config.epsilon()'s default: a Normalization's smallest divisor
# Config entries that do not change what a trained layer computes at inference.
_INERT_OPTIONS = {
    "name",
    "trainable",
    "dtype",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
    "rate",
    "noise_shape",
    "seed",
    "stddev",
    "l1",
    "l2",
    "batch_input_shape",
    "batch_shape",
    "input_shape",
    "lora_alpha",
}
# BatchNormalization options that act only while training (inference uses the moving statistics).
_BATCHNORM_TRAINING_OPTIONS = {
    "momentum",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "synchronized",
    "renorm_momentum",
    "fused",
}


def _import_h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "reading Keras .keras and .h5 files needs h5py: install the keras extra "
            '(pip install "lenet_fast[keras]") or h5py itself'
        ) from exc
    return h5py


def _error(source, problem, layer=None):
    where = f"{source}: " + (f"layer {layer.name!r} ({layer.class_name}): " if layer else "")
    return WeightFileError(where + problem)


class _Layer:
    """One entry of the config's layer list: its class, its name and its (checked) config."""

    def __init__(self, entry, index, source):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("class_name"), str)
            or not isinstance(entry.get("config"), dict)
        ):
            raise _error(
                source,
                f"model config: expected layer {index} to be an object with "
                f"'class_name' and 'config', found {_brief(entry)}",
            )
        self.class_name, self.config, self.entry = entry["class_name"], entry["config"], entry
        self.name = self.config.get("name", entry.get("name"))
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise _error(
                source,
                f"model config: layer {index} ({self.class_name}) has no usable "
                f"name, found {_brief(self.name)}",
            )


def _brief(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Step 1: open the file
# ---------------------------------------------------------------------------------------------


def _parse_config(text, source, where):
    if len(text) > MAX_CONFIG_BYTES:
        raise _error(
            source, f"{where}: expected at most {MAX_CONFIG_BYTES} bytes of JSON, found {len(text)}"
        )
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _error(source, f"{where}: expected UTF-8 JSON, found invalid data ({exc})") from exc


def _open_keras_archive(source, h5py, stack):
    """The config and the open weights file of a ``.keras`` zip archive."""
    try:
        archive = stack.enter_context(zipfile.ZipFile(source))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise _error(
            source,
            f"expected a .keras (zip) archive, found an unreadable file "
            f"({type(exc).__name__}: {exc})",
        ) from exc
    if len(members) > _MAX_MEMBERS:
        raise _error(
            source, f"expected at most {_MAX_MEMBERS} archive members, found {len(members)}"
        )
    by_name = {}
    for info in members:
        if info.filename in by_name:
            raise _error(
                source, f"{info.filename!r}: expected unique member names, found a duplicate"
            )
        by_name[info.filename] = info
    missing = [name for name in (_CONFIG_MEMBER, _WEIGHTS_MEMBER) if name not in by_name]
    if missing:
        found = ", ".join(sorted(by_name)[:10]) or "(none)"
        raise _error(
            source,
            f"expected a Keras 3 .keras archive with members {_CONFIG_MEMBER} "
            f"and {_WEIGHTS_MEMBER}; missing {', '.join(missing)} (found: "
            f"{found})",
        )
    config_info, weights_info = by_name[_CONFIG_MEMBER], by_name[_WEIGHTS_MEMBER]
    for info, limit in ((config_info, MAX_CONFIG_BYTES), (weights_info, MAX_WEIGHTS_BYTES)):
        if info.file_size > limit:
            raise _error(
                source,
                f"{info.filename!r}: expected at most {limit} bytes, the zip "
                f"directory declares {info.file_size}",
            )
    try:
        with archive.open(config_info) as stream:
            text = stream.read(MAX_CONFIG_BYTES + 1)  # zipfile stops at the declared size
    except _READ_ERRORS as exc:
        raise _error(
            source, f"{_CONFIG_MEMBER!r}: unreadable ({type(exc).__name__}: {exc})"
        ) from exc
    config = _parse_config(text, source, _CONFIG_MEMBER)

    def open_weights():
        try:
            if weights_info.file_size <= _IN_MEMORY_BYTES:  # one pass; h5py seeks a lot
                stream = io.BytesIO(archive.read(weights_info))
            else:  # a zip member stream: memory stays bounded, backward seeks re-read
                stream = stack.enter_context(archive.open(weights_info))
            return stack.enter_context(h5py.File(stream, "r"))
        except _READ_ERRORS as exc:
            raise _error(
                source,
                f"{_WEIGHTS_MEMBER!r}: expected an HDF5 file, found an "
                f"unreadable one ({type(exc).__name__}: {exc})",
            ) from exc

    return (
        config,
        _KerasArchiveWeights(open_weights, source),
        _archive_keras_version(archive, by_name),
    )


def _archive_keras_version(archive, by_name):
    """The Keras version metadata.json records, or None (it is informative only)."""
    info = by_name.get("metadata.json")
    if info is None or info.file_size > _MAX_SMALL_TEXT:
        return None
    try:
        with archive.open(info) as stream:
            metadata = json.loads(stream.read(_MAX_SMALL_TEXT).decode("utf-8"))
    except (*_READ_ERRORS, RecursionError):
        return None
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) and len(version) <= 100 else None


def _open_legacy_h5(source, h5py, stack):
    """The config and the weights of a legacy Keras HDF5 file (``model.save("x.h5")``)."""
    try:
        file = stack.enter_context(h5py.File(source, "r"))
        has_config = "model_config" in file.attrs
    except _READ_ERRORS as exc:
        raise _error(
            source,
            f"expected a Keras .h5 file, found an unreadable HDF5 file "
            f"({type(exc).__name__}: {exc})",
        ) from exc
    if not has_config:
        raise _error(
            source,
            "expected a whole Keras model saved with model.save() (an HDF5 "
            "'model_config' attribute); this file has none -- weights alone "
            "(save_weights) do not say the architecture",
        )
    text = _string_attribute(
        file, "model_config", source, "'model_config' attribute", MAX_CONFIG_BYTES
    )
    config = _parse_config(text, source, "'model_config' attribute")
    link = file.get("model_weights", getlink=True)
    if not isinstance(link, h5py.HardLink) or not isinstance(file["model_weights"], h5py.Group):
        raise _error(
            source,
            "expected a 'model_weights' group (a legacy Keras model file), "
            f"found {'none' if link is None else type(link).__name__}",
        )
    version = None
    if "keras_version" in file.attrs:
        version = _string_attribute(
            file, "keras_version", source, "'keras_version' attribute", _MAX_SMALL_TEXT
        )
        version = version.decode("utf-8", "replace") if isinstance(version, bytes) else version
    return (
        config,
        _LegacyWeights(file["model_weights"], source, h5py),
        (version if isinstance(version, str) and len(version) <= 100 else None),
    )


def _string_attribute(obj, name, source, where, limit):
    """A string attribute, with its type and (for fixed-length strings) size checked before it is
    read; a variable-length string lives in the file, so it is no larger than the file."""
    import h5py

    try:
        attribute = obj.attrs.get_id(name)
        dtype, shape = attribute.dtype, attribute.shape
        if h5py.check_string_dtype(dtype) is None or shape not in ((), (1,)):
            raise _error(source, f"{where}: expected a string, found {dtype} of shape {shape}")
        if dtype.itemsize > limit:
            raise _error(source, f"{where}: expected at most {limit} bytes, found {dtype.itemsize}")
        value = obj.attrs[name]
    except WeightFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _error(source, f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value


# ---------------------------------------------------------------------------------------------
# Step 2: the chain of layers
# ---------------------------------------------------------------------------------------------


def _model_layers(config, source):
    """The model's layers in config order, and the same layers as a chain from the input."""
    if not isinstance(config, dict):
        raise _error(source, f"model config: expected a JSON object, found {_brief(config)}")
    class_name, inner = config.get("class_name"), config.get("config")
    if class_name == "Sequential":
        entries = inner.get("layers") if isinstance(inner, dict) else inner  # Keras 2.0: a list
    elif class_name in ("Functional", "Model"):
        entries = inner.get("layers") if isinstance(inner, dict) else None
    else:
        raise _error(
            source,
            f"model config: expected a Sequential or Functional model, found "
            f"{_brief(class_name)} (a subclassed model's file does not describe "
            f"its layers)",
        )
    if not isinstance(entries, list) or not entries:
        raise _error(
            source, f"model config: expected a non-empty list of layers, found {_brief(entries)}"
        )
    if len(entries) > _MAX_LAYERS:
        raise _error(
            source, f"model config: expected at most {_MAX_LAYERS} layers, found {len(entries)}"
        )
    layers = [_Layer(entry, index, source) for index, entry in enumerate(entries)]
    names = [layer.name for layer in layers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _error(
            source,
            f"model config: expected unique layer names, found {duplicates[0]!r} more than once",
        )
    if class_name == "Sequential":
        return layers, layers, _sequential_input_shape(config, inner, layers)
    return layers, _functional_chain(inner, layers, source), None


def _sequential_input_shape(config, inner, layers):
    """The (batch, ...) input shape a Sequential config states, or None."""
    first = layers[0].config
    candidates = [first.get("batch_shape"), first.get("batch_input_shape")]
    if isinstance(inner, dict):
        candidates.append(inner.get("build_input_shape"))
    build = config.get("build_config")
    if isinstance(build, dict):
        candidates.append(build.get("input_shape"))
    return next((shape for shape in candidates if shape is not None), None)


def _tensor_reference(value, source, where):
    """(layer name, node index, tensor index) from a Keras 2 list or a Keras 3 tensor object."""
    if (
        isinstance(value, dict)
        and value.get("class_name") == "__keras_tensor__"
        and isinstance(value.get("config"), dict)
    ):
        value = value["config"].get("keras_history")
    if (
        isinstance(value, list)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and all(isinstance(index, int) and not isinstance(index, bool) for index in value[1:3])
    ):
        if len(value) == 4 and not _no_call_arguments(value[3]):
            raise _error(source, f"{where}: call arguments {_brief(value[3])} are not supported")
        return tuple(value[:3])
    raise _error(
        source, f"{where}: expected a reference to a layer's output tensor, found {_brief(value)}"
    )


def _no_call_arguments(kwargs):
    return isinstance(kwargs, dict) and all(value is None for value in kwargs.values())


def _endpoint(inner, key, source):
    value = inner.get(key)
    if isinstance(value, list) and value and isinstance(value[0], list):
        if len(value) != 1:
            raise _error(source, f"model config: expected one entry in {key}, found {len(value)}")
        value = value[0]
    return _tensor_reference(value, source, f"model config: {key}")


def _inbound(layer, source):
    """The name of the one layer whose output feeds `layer`."""
    nodes = layer.entry.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        count = len(nodes) if isinstance(nodes, list) else _brief(nodes)
        raise _error(
            source, f"expected the layer to be called once (one inbound node), found {count}", layer
        )
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [tensor], "kwargs": {...}}
        arguments, kwargs = node.get("args"), node.get("kwargs", {})
        if not _no_call_arguments(kwargs):
            raise _error(source, f"call arguments {_brief(kwargs)} are not supported", layer)
    else:  # Keras 2: [[name, node, tensor, kwargs]]
        arguments = node
    if (
        isinstance(arguments, list)
        and len(arguments) == 1
        and isinstance(arguments[0], list)
        and arguments[0]
        and not isinstance(arguments[0][0], str)
    ):
        arguments = arguments[0]  # Keras 3 passes several tensors as one list argument
    if not isinstance(arguments, list) or len(arguments) != 1:
        count = len(arguments) if isinstance(arguments, list) else _brief(arguments)
        raise _error(source, f"expected one input tensor, found {count}", layer)
    name, node_index, tensor_index = _tensor_reference(
        arguments[0], source, f"layer {layer.name!r} input"
    )
    if (node_index, tensor_index) != (0, 0):
        raise _error(
            source,
            f"expected the first output of layer {name!r} as input, found "
            f"node {node_index}, tensor {tensor_index}",
            layer,
        )
    return name


def _functional_chain(inner, layers, source):
    """A Functional model's layers from its input to its output, checking they form one chain."""
    by_name = {layer.name: layer for layer in layers}
    input_name = _endpoint(inner, "input_layers", source)[0]
    output_name = _endpoint(inner, "output_layers", source)[0]
    chain, name = [], output_name
    while True:
        layer = by_name.get(name)
        if layer is None:
            raise _error(
                source,
                f"model config: the chain refers to layer {name!r}, which the "
                f"config does not define",
            )
        if layer in chain:
            raise _error(source, "model config: the layers form a cycle", layer)
        chain.append(layer)
        if name == input_name:
            break
        if layer.class_name == "InputLayer":
            raise _error(
                source, f"expected the chain to start at the model input {input_name!r}", layer
            )
        name = _inbound(layer, source)
    unused = [layer for layer in layers if layer not in chain]
    if unused:
        raise _error(
            source,
            "expected one chain of layers from the input to the output; this "
            "layer is not on it (a branch)",
            unused[0],
        )
    return chain[::-1]


# ---------------------------------------------------------------------------------------------
# Step 3: match the chain against the network
# ---------------------------------------------------------------------------------------------


class _Step:
    """A layer the network uses: kind is "input", "conv", "dense", "activation", "pool",
    "flatten", "batchnorm", "rescaling", "normalization" or "zeropad"; `value` the activation,
    pool kind, input shape, BatchNormalization options, (scale, offset) or Normalization
    options."""

    def __init__(self, kind, layer, value=None):
        self.kind, self.layer, self.value = kind, layer, value
        self.zero_padding = None  # a conv's ZeroPadding2D layer (_attach_zero_paddings)
        self.statistics = None  # a Normalization's (mean, variance) as used (_input_affine)


def _option(layer, key, allowed, source, default=None):
    value = layer.config.get(key, default)
    if isinstance(value, list) and len(value) == 1 and key == "axis":
        value = value[0]
    if value not in allowed:
        expected = " or ".join(repr(option) for option in allowed)
        raise _error(source, f"expected {key} {expected}, found {_brief(value)}", layer)
    return value


def _check_inert_options(layer, used, source):
    """Refuse config entries that would change the computation and that this reader does not
    interpret (new Keras options are accepted only while they are None)."""
    for key, value in layer.config.items():
        if key not in used and key not in _INERT_OPTIONS and value is not None:
            raise _error(source, f"option {key}={_brief(value)} is not supported", layer)
    dtype = layer.config.get("dtype")
    if isinstance(dtype, dict):
        dtype = (
            dtype.get("config", {}).get("name") if isinstance(dtype.get("config"), dict) else None
        )
    if dtype not in (None, "float32"):
        raise _error(
            source,
            f"expected float32 computation, found dtype policy {_brief(dtype)} "
            f"(the outputs would differ from Keras's)",
            layer,
        )


def _activation_name(value, layer, source):
    if (
        isinstance(value, dict)
        and str(value.get("module", "")).startswith(("keras.activations", "keras.src.activations"))
        and isinstance(value.get("config"), str)
    ):
        value = value["config"]  # Keras 3's serialised built-in function
    if isinstance(value, str) or value is None:
        if value in _ACTIVATIONS:
            return _ACTIVATIONS[value]
    raise _error(
        source,
        f"activation {_brief(value)} is not supported (expected relu, tanh, "
        f"sigmoid, softmax, log_softmax or linear)",
        layer,
    )


def _data_format(layer, source):
    return (
        _option(layer, "data_format", ("channels_last", "channels_first", None), source)
        or "channels_last"
    )


def _steps(chain, source):
    """Each layer of the chain as a step; inference identities are dropped."""
    steps = []
    for layer in chain:
        name = layer.class_name
        if name in _INFERENCE_IDENTITIES:
            continue
        if name == "InputLayer":
            _check_inert_options(layer, {"sparse", "ragged", "optional"}, source)
            for flag in ("sparse", "ragged", "optional"):
                _option(layer, flag, (False, None), source)
            steps.append(
                _Step(
                    "input",
                    layer,
                    layer.config.get("batch_shape", layer.config.get("batch_input_shape")),
                )
            )
        elif name == "Conv2D":
            _check_inert_options(
                layer,
                {
                    "filters",
                    "kernel_size",
                    "strides",
                    "padding",
                    "data_format",
                    "dilation_rate",
                    "groups",
                    "activation",
                    "use_bias",
                    "lora_rank",
                },
                source,
            )
            _option(layer, "kernel_size", ([_KERNEL, _KERNEL],), source)
            _option(layer, "strides", ([1, 1],), source, [1, 1])
            _option(layer, "dilation_rate", ([1, 1],), source, [1, 1])
            _option(layer, "groups", (1,), source, 1)
            _option(layer, "padding", ("valid", "same"), source, "valid")
            _option(layer, "lora_rank", (None,), source)
            _data_format(layer, source)
            steps.append(
                _Step(
                    "conv", layer, _activation_name(layer.config.get("activation"), layer, source)
                )
            )
        elif name == "Dense":
            _check_inert_options(layer, {"units", "activation", "use_bias", "lora_rank"}, source)
            _option(layer, "lora_rank", (None,), source)
            steps.append(
                _Step(
                    "dense", layer, _activation_name(layer.config.get("activation"), layer, source)
                )
            )
        elif name in _POOLS:
            _check_inert_options(layer, {"pool_size", "strides", "padding", "data_format"}, source)
            _option(layer, "pool_size", ([2, 2],), source)
            _option(layer, "strides", ([2, 2], None), source)
            _option(layer, "padding", ("valid", "same"), source, "valid")
            _data_format(layer, source)
            steps.append(_Step("pool", layer, _POOLS[name]))
        elif name == "Flatten":
            _check_inert_options(layer, {"data_format"}, source)
            _data_format(layer, source)
            steps.append(_Step("flatten", layer))
        elif name == "Activation":
            _check_inert_options(layer, {"activation"}, source)
            steps.append(
                _Step(
                    "activation",
                    layer,
                    _activation_name(layer.config.get("activation"), layer, source),
                )
            )
        elif name == "ReLU":
            _check_inert_options(layer, {"max_value", "negative_slope", "threshold"}, source)
            _option(layer, "max_value", (None,), source)
            _option(layer, "negative_slope", (0, 0.0), source, 0.0)
            _option(layer, "threshold", (0, 0.0), source, 0.0)
            steps.append(_Step("activation", layer, "relu"))
        elif name == "Softmax":
            _check_inert_options(layer, {"axis"}, source)
            _option(layer, "axis", (-1, 1), source, -1)
            steps.append(_Step("activation", layer, "softmax"))
        elif name == "BatchNormalization":
            steps.append(_Step("batchnorm", layer, _batchnorm_options(layer, source)))
        elif name == "ZeroPadding2D":
            _check_inert_options(layer, {"padding", "data_format"}, source)
            padding = layer.config.get("padding", 1)
            sides = (
                [padding] * 4
                if isinstance(padding, int) and not isinstance(padding, bool)
                else [
                    value
                    for pair in (padding if isinstance(padding, list) else [])
                    for value in (pair if isinstance(pair, list) else [pair, pair])
                ]
            )
            if sides != [2, 2, 2, 2]:
                raise _error(
                    source,
                    f"expected padding 2 on every side (a 5x5 convolution's 'same'), found "
                    f"{_brief(padding)}",
                    layer,
                )
            steps.append(_Step("zeropad", layer))
        elif name == _RESCALING:
            _check_inert_options(layer, {"scale", "offset"}, source)
            steps.append(
                _Step(
                    "rescaling",
                    layer,
                    tuple(
                        _finite_numbers(layer, key, default, source)
                        for key, default in (("scale", None), ("offset", 0.0))
                    ),
                )
            )
        elif name == _NORMALIZATION:
            _check_inert_options(layer, {"axis", "invert", "mean", "variance"}, source)
            _option(layer, "invert", (False,), source, False)
            axis = layer.config.get("axis", [-1])
            axis = [] if axis is None else axis if isinstance(axis, list) else [axis]
            if len(axis) > 1 or any(isinstance(a, bool) or not isinstance(a, int) for a in axis):
                raise _error(
                    source, f"expected no axis or the channel axis, found {_brief(axis)}", layer
                )
            stated = (
                layer.config.get("mean") is not None or layer.config.get("variance") is not None
            )
            steps.append(
                _Step(
                    "normalization",
                    layer,
                    {
                        "axis": axis[0] if axis else None,
                        "mean": _finite_numbers(layer, "mean", None, source) if stated else None,
                        "variance": (
                            _finite_numbers(layer, "variance", None, source, at_least=0)
                            if stated
                            else None
                        ),
                    },
                )
            )
        elif name == "Reshape":
            _check_inert_options(layer, {"target_shape"}, source)
            steps.append(_Step("reshape", layer, layer.config.get("target_shape")))
        elif name in ("Sequential", "Functional", "Model"):
            raise _error(source, "nested models are not supported; save the inner model", layer)
        else:
            raise _error(
                source,
                f"layer type {name} is not supported (expected InputLayer, Reshape, "
                f"Rescaling, Normalization, ZeroPadding2D, Conv2D, BatchNormalization, "
                f"MaxPooling2D, AveragePooling2D, Flatten, Dense, Activation, ReLU, "
                f"Softmax or Dropout)",
                layer,
            )
    return steps


def _finite_number(layer, key, default, source, at_least=None):
    """A config entry that must be one finite number (a per-channel list is refused), and at
    least `at_least` where that is given."""
    value = layer.config.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (at_least is not None and value < at_least)
    ):
        expected = "one finite number" if at_least is None else f"a finite number >= {at_least:g}"
        raise _error(source, f"expected {key} {expected}, found {_brief(value)}", layer)
    return float(value)


def _finite_numbers(layer, key, default, source, at_least=None):
    """A config entry of one finite number, or a list of them (one per input channel), as a
    float64 array (0-d for a number); at least `at_least` where that is given."""
    value = layer.config.get(key, default)
    items = value if isinstance(value, list) else [value]
    if not 1 <= len(items) <= _MAX_CHANNELS or any(
        isinstance(item, bool)
        or not isinstance(item, (int, float))
        or not math.isfinite(item)
        or (at_least is not None and item < at_least)
        for item in items
    ):
        number = "finite number" if at_least is None else f"finite number >= {at_least:g}"
        raise _error(
            source,
            f"expected {key} one {number} or a list of one per input channel, found "
            f"{_brief(value)}",
            layer,
        )
    return np.asarray(value, dtype=np.float64)


def _leading_reshape(steps, stated_shape, source):
    """(steps, stated shape): a Reshape among the model's first layers that only gives the
    input its channel axis -- ``Input((28, 28))`` or ``Input((784,))`` then ``Reshape((28, 28,
    1))`` (or ``(1, 28, 28)``), as Keras MNIST examples do -- taken out, its target becoming the
    input shape (the model then takes (N, 28, 28) or (N, 1, 28, 28) images: the same floats in
    the same order).  A Reshape anywhere else, or one that moves values, is refused."""
    reshapes = [step for step in steps if step.kind == "reshape"]
    if not reshapes:
        return steps, stated_shape
    step = reshapes[0]
    leading = ("input", "reshape", "rescaling", "normalization")
    if len(reshapes) > 1 or any(other.kind not in leading for other in steps[: steps.index(step)]):
        raise _error(
            source,
            "expected a Reshape only among the model's first layers, giving the input its "
            "channel axis",
            step.layer,
        )
    target = step.value
    inputs = [other for other in steps if other.kind == "input"]
    stated = inputs[0].value if inputs else stated_shape
    sizes = list(target) if isinstance(target, list) else []
    if (
        len(sizes) != 3
        or not all(isinstance(size, int) and not isinstance(size, bool) for size in sizes)
        or 1 not in (sizes[0], sizes[2])
        or min(sizes) < 1
    ):
        raise _error(
            source,
            f"expected a Reshape to (height, width, 1) or (1, height, width), found "
            f"target_shape {_brief(target)}",
            step.layer,
        )
    if stated is not None:
        given = stated[1:] if isinstance(stated, list) and stated else None
        if (
            not given
            or None in given
            or not all(isinstance(size, int) for size in given)
            or math.prod(given) != math.prod(sizes)
        ):
            raise _error(
                source,
                f"expected the Reshape's input to hold the {math.prod(sizes)} values of "
                f"target_shape {sizes}, found input shape {_brief(stated)}",
                step.layer,
            )
    shape = [None, *sizes]
    kept = [other for other in steps if other is not step and other.kind != "input"]
    return [_Step("input", inputs[0].layer if inputs else step.layer, shape), *kept], shape


def _leading_rescaling(steps, source):
    """(steps, transforms): the steps with the Rescaling and Normalization layers that come
    first (after the input; at most one of each, in either order) taken out, and those steps in
    order.  One anywhere else, or a second of a kind, is refused."""
    first = next((index for index, step in enumerate(steps) if step.kind != "input"), len(steps))
    transforms = []
    for index, step in enumerate(steps):
        if step.kind not in ("rescaling", "normalization"):
            continue
        if index != first + len(transforms) or any(t.kind == step.kind for t in transforms):
            raise _error(
                source,
                f"a {step.layer.class_name} is folded into the first Conv2D only among the "
                f"model's first layers (after the input, at most one Rescaling and one "
                f"Normalization); this one is not",
                step.layer,
            )
        transforms.append(step)
    return [step for step in steps if step not in transforms], transforms


def _attach_zero_paddings(steps, source):
    """The steps with each ZeroPadding2D taken out and recorded on the Conv2D right after it
    (``step.zero_padding``: that layer), which it pads; one followed by anything else is
    refused."""
    kept = []
    for index, step in enumerate(steps):
        if step.kind != "zeropad":
            kept.append(step)
            continue
        following = steps[index + 1] if index + 1 < len(steps) else None
        if following is None or following.kind != "conv":
            found = (
                f"{following.layer.class_name} {following.layer.name!r}" if following else "nothing"
            )
            raise _error(
                source,
                f"a ZeroPadding2D is read as the padding of the Conv2D right after it; this one "
                f"is followed by {found}",
                step.layer,
            )
        following.zero_padding = step.layer
    return kept


def _check_input_transforms(transforms, paddings, layout, source):
    """An offset folds into an unpadded conv1 only: 'same' pads the rescaled input with zeros,
    which a folded offset would turn into the offset (a Normalization's adapted mean is checked
    once read, in `_input_affine`).  Per-channel values must lie along the channel axis."""
    channel_axes = (-1, 3) if layout == "channels_last" else (1, -3)
    for step in transforms:
        if step.kind == "rescaling":
            offset, name, what = step.value[1], "offset", "rescaled"
            if layout != "channels_last" and any(value.ndim for value in step.value):
                raise _error(
                    source,
                    "a per-channel Rescaling broadcasts over the last axis, the width of "
                    "channels_first input; expected one scale and one offset",
                    step.layer,
                )
        else:
            offset, name, what = step.value["mean"], "mean", "normalised"
            if step.value["axis"] not in (None, *channel_axes):
                raise _error(
                    source,
                    f"expected axis {' or '.join(map(str, channel_axes))} (the channels) or "
                    f"none, found {step.value['axis']}",
                    step.layer,
                )
        if offset is not None and (offset != 0).any() and paddings[0]:
            raise _error(
                source,
                f"a {step.layer.class_name} {name} cannot be folded into a first Conv2D with "
                f"padding 'same' (Keras pads the {what} input with zeros); expected {name} 0 "
                f"or padding 'valid'",
                step.layer,
            )


def _input_affine(transforms, channels, padded, reader, source):
    """The leading Rescaling and Normalization layers as one ``x * scale + shift`` per input
    channel (float64), composed in order; a Normalization divides by ``sqrt(variance)`` (Keras
    by ``max(sqrt(variance), epsilon)``: a variance small enough for the epsilon, which files do
    not store, to matter is refused) and reads its adapted mean and variance where the config
    states none."""
    scale, shift = np.ones(channels), np.zeros(channels)
    for step in transforms:
        if step.kind == "rescaling":
            values = step.value
        else:
            mean, variance = step.value["mean"], step.value["variance"]
            if mean is None:
                shape = () if step.value["axis"] is None else (channels,)
                mean, variance, _count = reader[0].variables(
                    step.layer,
                    reader[1][step.layer.name],
                    [shape, shape, None],
                    roles=("mean", "variance", "count"),
                )
                if (
                    not (np.isfinite(mean).all() and np.isfinite(variance).all())
                    or (np.asarray(variance) < 0).any()
                ):
                    raise _error(
                        source,
                        "expected a finite mean and a finite variance >= 0",
                        step.layer,
                    )
                if padded and (np.asarray(mean) != 0).any():
                    raise _error(
                        source,
                        "a Normalization mean cannot be folded into a first Conv2D with "
                        "padding 'same' (Keras pads the normalised input with zeros); expected "
                        "mean 0 or padding 'valid'",
                        step.layer,
                    )
            step.statistics = (np.asarray(mean).tolist(), np.asarray(variance).tolist())
            deviation = np.sqrt(np.asarray(variance, dtype=np.float64))
            if (deviation < _KERAS_EPSILON).any():
                raise _error(
                    source,
                    f"a variance below {_KERAS_EPSILON**2:g} ({float(np.min(variance))!r}): "
                    f"Keras then divides by its configured epsilon, which the file does not "
                    f"store",
                    step.layer,
                )
            divisor = deviation
            values = (1 / divisor, -np.asarray(mean, dtype=np.float64) / divisor)
        factor, offset = (np.asarray(value, dtype=np.float64) for value in values)
        for value in (factor, offset):
            if value.ndim and value.shape != (channels,):
                raise _error(
                    source,
                    f"expected one value or {channels} (one per input channel), found {value.size}",
                    step.layer,
                )
        scale, shift = scale * factor, shift * factor + offset
    return scale, shift


def _batchnorm_options(layer, source):
    """A BatchNormalization's inference options: (axis, epsilon, center, scale)."""
    _check_inert_options(
        layer,
        {
            "axis",
            "epsilon",
            "center",
            "scale",
            "renorm",
            "renorm_clipping",
            "virtual_batch_size",
            "adjustment",
            *_BATCHNORM_TRAINING_OPTIONS,
        },
        source,
    )
    # Batch renormalisation stores more variables; these change what a batch computes.
    _option(layer, "renorm", (False, None), source)
    for key in ("renorm_clipping", "virtual_batch_size", "adjustment"):
        _option(layer, key, (None,), source)
    axis = layer.config.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise _error(source, f"expected one integer axis, found {_brief(axis)}", layer)
    epsilon = _finite_number(layer, "epsilon", 1e-3, source, at_least=0)
    center = _option(layer, "center", (True, False), source, True)
    scale = _option(layer, "scale", (True, False), source, True)
    return {"axis": axis, "epsilon": epsilon, "center": center, "scale": scale}


def _stages(steps, source):
    """Group the steps as the weighted layers, each with the steps that follow it, named conv1,
    conv2 (conv3) for the Conv2D layers and fc1, fc2, fc3 for the Dense layers."""
    stages, names, inputs = [], [], []
    for step in steps:
        if step.kind in ("conv", "dense"):
            convs = sum(name.startswith("conv") for name in names)
            denses = len(names) - convs
            if step.kind == "conv" and (denses or convs == len(_CONV_NAMES)):
                raise _error(
                    source,
                    "expected at most three Conv2D layers, all before the Dense layers",
                    step.layer,
                )
            if step.kind == "dense" and convs < 2:
                raise _error(source, f"expected {_CONV_NAMES[convs]} to be a Conv2D", step.layer)
            if step.kind == "dense" and denses == len(_DENSE_NAMES):
                raise _error(
                    source,
                    "expected at most three Dense layers after the convolutions; this is a fourth",
                    step.layer,
                )
            names.append(_CONV_NAMES[convs] if step.kind == "conv" else _DENSE_NAMES[denses])
            stages.append((step, []))
        elif step.kind == "input":
            if stages or inputs:
                raise _error(source, "expected InputLayer only first", step.layer)
            inputs.append(step)
        elif not stages:
            raise _error(source, "expected the first layer to be a Conv2D", step.layer)
        else:
            stages[-1][1].append(step)
    if len(stages) < 3 or not names[-1].startswith("fc"):
        found = ", ".join(step.layer.class_name for step, _ in stages) or "none"
        raise _error(
            source,
            f"expected two or three Conv2D layers, then one to three Dense "
            f"layers; found {len(stages)} weighted layers: {found}",
        )
    return list(zip(names, stages)), inputs[0] if inputs else None


def _read_structure(named_stages, source):
    """Check where pooling, Flatten, activations and BatchNormalizations sit; return each
    weighted layer's activation (name -> (activation, the layer that says so)), the two pooling
    steps, the Flatten, the BatchNormalization steps that fold into their layer (name -> step)
    and those after a stage's activation, which fold into the next layer (name of the stage ->
    (step, the pooling step after it or None))."""
    activations, pools, flatten = {}, [], None
    batchnorms, outputs_batchnorms = {}, {}
    last_conv = [name for name, _ in named_stages if name.startswith("conv")][-1]
    last = named_stages[-1][0]
    for name, (layer, following) in named_stages:
        wants_pool, wants_flatten = name in ("conv1", "conv2"), name == last_conv
        chosen = [(layer.value, layer.layer)] if layer.value != "identity" else []
        seen = {"pool": [], "flatten": []}
        for position, step in enumerate(following):
            if step.kind == "batchnorm":
                before, after = following[:position], following[position + 1 :]
                if not before and layer.value == "identity":
                    batchnorms[name] = step  # folds into this layer's outputs
                else:
                    _check_outputs_batchnorm(name, layer, before, after, step, last, source)
                    if name in outputs_batchnorms:
                        raise _error(
                            source,
                            f"expected at most one BatchNormalization after {name}'s activation",
                            step.layer,
                        )
                    pooled_after = [later for later in after if later.kind == "pool"]
                    outputs_batchnorms[name] = (step, pooled_after[0] if pooled_after else None)
                continue
            if step.kind == "activation":
                if step.value != "identity":
                    chosen.append((step.value, step.layer))
                if seen["pool"] and seen["pool"][0].value == "avg" and step.value != "identity":
                    raise _error(
                        source,
                        "an activation after average pooling does not commute "
                        "with it; expected it before the pooling",
                        step.layer,
                    )
                continue
            seen[step.kind].append(step)
            if len(seen[step.kind]) > 1:
                raise _error(source, f"expected at most one {step.kind} after {name}", step.layer)
            if step.kind == "pool" and not wants_pool:
                raise _error(
                    source,
                    f"expected pooling only after the first two Conv2D "
                    f"layers, found it after {name}",
                    step.layer,
                )
            if step.kind == "flatten" and (not wants_flatten or (wants_pool and not seen["pool"])):
                raise _error(
                    source,
                    f"expected Flatten only after the last convolution (and "
                    f"its pooling), found it after {name}",
                    step.layer,
                )
        if wants_pool and not seen["pool"]:
            raise _error(
                source,
                "expected a 2x2 stride-2 MaxPooling2D or AveragePooling2D after this layer",
                layer.layer,
            )
        if wants_flatten and not seen["flatten"]:
            raise _error(source, "expected a Flatten after this layer", layer.layer)
        if len(chosen) > 1:
            raise _error(
                source,
                f"a second activation ({chosen[1][0]}) after {chosen[0][0]} "
                f"in one stage cannot be expressed",
                chosen[1][1],
            )
        activation, where = chosen[0] if chosen else ("identity", layer.layer)
        if activation in ("softmax", "log_softmax") and name != last:
            raise _error(source, f"expected {activation} only after the last Dense", where)
        activations[name] = (activation, where)
        pools.extend(seen["pool"])
        flatten = flatten or (seen["flatten"][0] if seen["flatten"] else None)
    if pools[0].value != pools[1].value:
        raise _error(
            source,
            f"pooling must be the same after both convolutions; found "
            f"{pools[0].layer.class_name} then {pools[1].layer.class_name}",
            pools[1].layer,
        )
    return activations, pools, flatten, batchnorms, outputs_batchnorms


def _check_outputs_batchnorm(name, layer, before, after, batchnorm, last, source):
    """A BatchNormalization that is not directly after its Conv2D or Dense folds into the next
    layer's inputs: only where no activation follows it in the stage (it normalises the
    stage's output), before any Flatten, and not after the last layer."""
    if before and any(step.kind == "activation" and step.value != "identity" for step in after):
        raise _error(
            source,
            f"a BatchNormalization folds into the Conv2D or Dense it directly follows, or "
            f"after the activation into the next layer; this one follows "
            f"{before[-1].layer.class_name} {before[-1].layer.name!r} and precedes an "
            f"activation",
            batchnorm.layer,
        )
    if any(step.kind == "flatten" for step in before):
        raise _error(
            source,
            "expected a BatchNormalization before the Flatten, not after it",
            batchnorm.layer,
        )
    if name == last:
        raise _error(
            source,
            f"a BatchNormalization after the last layer's {layer.value} has no layer after it "
            f"to fold into (expected it before the activation)",
            batchnorm.layer,
        )


def _check_batchnorm_axes(named_stages, batchnorms, layout, source):
    """Each BatchNormalization normalises its layer's output channels (features)."""
    for name, (layer, _) in named_stages:
        if name not in batchnorms:
            continue
        step = batchnorms[name]
        step = step[0] if isinstance(step, tuple) else step  # (step, pooling after it)
        if layer.kind == "dense":
            axes, what = (-1, 1), "the Dense layer's features"
        elif layout == "channels_last":
            axes, what = (-1, 3), "the channels (channels_last)"
        else:
            axes, what = (1, -3), "the channels (channels_first)"
        if step.value["axis"] not in axes:
            raise _error(
                source,
                f"expected axis {' or '.join(map(str, axes))} ({what}), found {step.value['axis']}",
                step.layer,
            )


def _shared_activation(activations, names, role, source):
    """The one activation the layers `names` share: lenet_fast applies one per role."""
    expected, _ = activations[names[0]]
    for name in names[1:]:
        activation, where = activations[name]
        if activation != expected:
            raise _error(
                source,
                f"this layer must use the {role}' activation ({expected}) "
                f"because lenet_fast applies one activation after all of them; "
                f"found {activation}",
                where,
            )
    return expected


def _positive(layer, key, limit, source):
    value = layer.config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _error(source, f"expected {key} from 1 to {limit}, found {_brief(value)}", layer)
    return value


def _geometry(named_stages, input_step, pools, flatten, source):
    """Check data formats and paddings; return the data format, the input's (C, H, W) with None
    where unstated, the flatten order as axis names and the two convolutions' paddings."""
    convs = [step for name, (step, _) in named_stages if name.startswith("conv")]
    zero_paddings = [step.zero_padding for step in convs if step.zero_padding is not None]
    layouts = {
        _data_format(layer, source)
        for layer in (*(step.layer for step in (*convs, *pools)), *zero_paddings)
    }
    if len(layouts) > 1:
        raise _error(
            source,
            "expected one data_format for every Conv2D, pooling and ZeroPadding2D layer, "
            f"found {' and '.join(sorted(layouts))}",
        )
    layout = layouts.pop()
    paddings = [
        _PADDINGS[_option(step.layer, "padding", ("valid", "same"), source, "valid")]
        for step in convs
    ]
    for index, step in enumerate(convs):
        if step.zero_padding is not None:
            if paddings[index]:
                raise _error(
                    source,
                    "expected padding 'valid' on a Conv2D after a ZeroPadding2D (its "
                    "padding would add to the ZeroPadding2D's)",
                    step.layer,
                )
            paddings[index] = _PADDINGS["same"]
    if len(convs) == 3 and paddings[2]:
        raise _error(
            source,
            "expected padding 'valid' on the third Conv2D (conv3 is a "
            "full-window convolution giving 1x1)",
            convs[2].layer,
        )
    shape = input_step.value if input_step else None
    if shape is None:
        channels = height = width = None
    else:
        if (
            not isinstance(shape, list)
            or len(shape) != 4
            or not all(
                size is None or (isinstance(size, int) and not isinstance(size, bool) and size > 0)
                for size in shape
            )
        ):
            raise _error(
                source,
                f"expected an image input shape (batch, height, width, "
                f"channels), found {_brief(shape)}",
            )
        if layout == "channels_last":
            height, width, channels = shape[1:]
        else:
            channels, height, width = shape[1:]
        if (height is None) != (width is None):
            raise _error(
                source,
                f"expected the input's height and width both stated or both "
                f"free, found {_brief(shape)}",
            )
    # Flatten order of the (C, H, W) feature map: the tensor's own layout, moved to
    # channels-last first when the Flatten layer says channels_first.
    order = ("H", "W", "C") if layout == "channels_last" else ("C", "H", "W")
    if _data_format(flatten.layer, source) == "channels_first":
        order = order[1:] + order[:1]
    return layout, (channels, height, width), order, tuple(paddings[:2])


def _input_size(named_stages, stated, paddings, features, conv2_channels, source):
    """The input (H, W): the stated one, checked to pool exactly, else the square one (28 or 32)
    that gives the first Dense layer's inputs (`features`; None: conv3's 5x5 map); and the
    (H, W) after the second pooling."""
    conv1 = named_stages[0][1][0].layer
    geometry = {"conv1_padding": paddings[0], "conv2_padding": paddings[1]}
    text = (
        f"padding {'same' if paddings[0] else 'valid'!r} on conv1 and "
        f"{'same' if paddings[1] else 'valid'!r} on conv2"
    )
    if stated == (None, None):
        wanted = conv2_channels * _KERNEL * _KERNEL if features is None else features
        candidates = _architecture.geometry_candidates(conv2_channels, wanted, geometry)
        if not candidates:
            raise _error(
                source,
                f"the config states no input size and no 28x28 or 32x32 "
                f"input gives the first Dense layer's {wanted} features with "
                f"{text}",
                conv1,
            )
        stated = candidates[0]["input_size"]
    try:
        stages = _architecture.stage_sizes({"input_size": stated, **geometry})
    except ValueError as exc:
        raise _error(source, f"input {stated[0]}x{stated[1]} with {text}: {exc}", conv1) from exc
    return tuple(stated), stages["pool2"]


# ---------------------------------------------------------------------------------------------
# Step 4: the weights
# ---------------------------------------------------------------------------------------------


def _check_links(group, parts, h5py, source, where):
    """Follow `parts` from `group` through hard links only (no soft or external links)."""
    node = group
    for part in parts:
        link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise _error(
                source,
                f"{where}: expected a stored object, found a "
                f"{type(link).__name__} (links are not followed)",
            )
        node = node[part]
    return node


def _read_dataset(node, expected_shape, h5py, source, where, hint=""):
    """Read a dataset after checking its type, dtype and shape (`None` in the expected shape
    takes any size up to 3, for the input channels); `hint` explains a wrong shape."""
    if not isinstance(node, h5py.Dataset):
        raise _error(source, f"{where}: expected a dataset, found {type(node).__name__}")
    try:
        shape, dtype = node.shape, node.dtype
        if node.is_virtual or node.external:
            raise _error(
                source,
                f"{where}: expected data stored in this file, found a virtual or external dataset",
            )
    except WeightFileError:
        raise
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise _error(source, f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise _error(source, f"{where}: expected float16, float32 or float64, found {dtype}")
    matches = (
        shape is not None
        and len(shape) == len(expected_shape)
        and all(
            got == want or (want is None and 1 <= got <= 3) or (want == _ANY and got >= 1)
            for got, want in zip(shape, expected_shape)
        )
    )
    if not matches:
        text = ", ".join("C" if want is None else str(want) for want in expected_shape)
        raise _error(
            source,
            f"{where}: expected shape ({text}{',' if len(expected_shape) == 1 else ''}), "
            f"found {shape}{hint}",
        )
    if math.prod(shape) > _weights.MAX_ELEMENTS:
        raise _error(
            source,
            f"{where}: expected at most {_weights.MAX_ELEMENTS} elements, found {math.prod(shape)}",
        )
    try:
        return np.asarray(node[()])
    except _READ_ERRORS as exc:
        raise _error(source, f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc


class _KerasArchiveWeights:
    """model.weights.h5 of a .keras archive: a layer's variables are ``layers/<class in snake
    case, numbered by order of appearance>/vars/<index>``."""

    def __init__(self, open_file, source):
        self._open_file, self._file, self._source = open_file, None, source

    def variables(self, layer, path_name, shapes, hint="", roles=None):
        """The layer's variables, in Keras's order (kernel, bias; gamma, beta, moving mean,
        moving variance); `roles` names them for the legacy reader, not needed here.  A shape
        None: the variable must be there but is not read (None in its place)."""
        import h5py

        if self._file is None:  # opened once the config has been checked
            self._file = self._open_file()
        where = f"{_WEIGHTS_MEMBER} 'layers/{path_name}/vars'"
        group = _check_links(self._file, ["layers", path_name, "vars"], h5py, self._source, where)
        if not isinstance(group, h5py.Group):
            raise _error(
                self._source, f"{where}: missing (the weights do not match the config)", layer
            )
        stored_name = (
            _string_attribute(
                group, "name", self._source, f"{where} 'name' attribute", _MAX_SMALL_TEXT
            )
            if "name" in group.attrs
            else None
        )
        if isinstance(stored_name, bytes):
            stored_name = stored_name.decode("utf-8", "replace")
        if stored_name is not None and stored_name != layer.name:
            raise _error(
                self._source,
                f"{where} belongs to layer {_brief(stored_name)}: the "
                f"weights do not match the config",
                layer,
            )
        present, expected = sorted(group.keys()), [str(index) for index in range(len(shapes))]
        if present != expected:
            raise _error(
                self._source, f"{where}: expected variables {expected}, found {present}", layer
            )
        return [
            _read_dataset(
                _check_links(group, [key], h5py, self._source, where),
                shape,
                h5py,
                self._source,
                f"{where[:-1]}/{key}' of layer {layer.name!r}",
                hint,
            )
            if shape is not None
            else None
            for key, shape in zip(expected, shapes)
        ]


class _LegacyWeights:
    """The model_weights group of a legacy .h5 file: a group per layer name whose
    ``weight_names`` attribute lists its datasets (kernel, then bias) by relative path."""

    def __init__(self, group, source, h5py):
        self._group, self._source, self._h5py = group, source, h5py

    def variables(self, layer, path_name, shapes, hint="", roles=("kernel", "bias")):
        h5py, source = self._h5py, self._source
        where = f"'model_weights/{layer.name}'"
        group = _check_links(self._group, [layer.name], h5py, source, where)
        if not isinstance(group, h5py.Group):
            raise _error(source, f"{where}: missing (the weights do not match the config)", layer)
        names = self._weight_names(group, layer, where)
        roles = list(roles[: len(shapes)])
        found = [name.split("/")[-1].split(":")[0] for name in names]
        if found != roles:
            raise _error(source, f"{where}: expected weights {roles}, found {names}", layer)
        arrays = []
        for name, shape in zip(names, shapes):
            if shape is None:  # present, not used (a Normalization's count)
                arrays.append(None)
                continue
            dataset_where = f"'model_weights/{layer.name}/{name}'"
            node = _check_links(group, name.split("/"), h5py, source, dataset_where)
            if node is None:
                raise _error(source, f"{dataset_where}: missing", layer)
            arrays.append(_read_dataset(node, shape, h5py, source, dataset_where, hint))
        return arrays

    def _weight_names(self, group, layer, where):
        try:
            attribute = (
                group.attrs.get_id("weight_names") if "weight_names" in group.attrs else None
            )
            if attribute is None:
                raise _error(self._source, f"{where}: no 'weight_names' attribute", layer)
            if attribute.shape is None or len(attribute.shape) != 1 or attribute.shape[0] > 4:
                raise _error(
                    self._source,
                    f"{where}: expected at most 4 weight names, found "
                    f"an attribute of shape {attribute.shape}",
                    layer,
                )
            if attribute.shape[0] and self._h5py.check_string_dtype(attribute.dtype) is None:
                raise _error(
                    self._source,
                    f"{where}: expected weight names as strings, found {attribute.dtype}",
                    layer,
                )
            values = group.attrs["weight_names"]
        except WeightFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise _error(
                self._source,
                f"{where}: unreadable 'weight_names' ({type(exc).__name__}: {exc})",
                layer,
            ) from exc
        names = [
            value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            for value in np.asarray(values).reshape(-1)
        ]
        if any(not name or len(name) > 1000 or name.startswith("/") for name in names):
            raise _error(self._source, f"{where}: unusable weight names {_brief(names)}", layer)
        return names


def _batchnorm_variables(batchnorm, width, store, path_names):
    """A BatchNormalization's stored variables by role (gamma and beta only where stored)."""
    options, layer = batchnorm.value, batchnorm.layer
    roles = [
        *(["gamma"] if options["scale"] else []),
        *(["beta"] if options["center"] else []),
        "moving_mean",
        "moving_variance",
    ]
    return dict(
        zip(
            roles,
            store.variables(layer, path_names[layer.name], [(width,)] * len(roles), roles=roles),
        )
    )


def _folded_inputs(arrays, placed, width, next_padding, flattened, reader, source):
    """[kernel, bias] (float64) of the layer after a BatchNormalization that follows an
    activation (or a pooling): the layer then reads the un-normalised values.

    Exact for the next layer's products and sums; the pooling between them commutes with a
    per-channel ``x * scale + shift`` (average pooling always, max pooling where no scale is
    negative), and a "same" convolution pads the normalised map with zeros, so it must see no
    shift.  Both are checked on the stored values and refused otherwise."""
    batchnorm, pooling = placed
    values = _batchnorm_variables(batchnorm, width, *reader)
    try:
        scale, shift = _weights.batchnorm_affine(
            values.get("gamma"),
            values.get("beta"),
            values["moving_mean"],
            values["moving_variance"],
            batchnorm.value["epsilon"],
            width,
        )
    except ValueError as exc:
        raise _error(source, f"cannot fold it into the next layer: {exc}", batchnorm.layer) from exc
    if pooling is not None and pooling.value == "max" and (scale < 0).any():
        channel = int(np.flatnonzero(scale < 0)[0])
        raise _error(
            source,
            f"a negative scale (gamma) before max pooling does not commute with it "
            f"(channel {channel}: gamma {float(values['gamma'][channel])!r}); expected the "
            f"BatchNormalization after the pooling",
            batchnorm.layer,
        )
    if next_padding and (shift != 0).any():
        raise _error(
            source,
            "the next Conv2D pads the normalised map with zeros ('same'), which a fold into its "
            "weights would shift; expected 'valid' there, or the BatchNormalization before the "
            "activation",
            batchnorm.layer,
        )
    kernel = arrays[0]
    channel_of_input = None
    if flattened is not None:  # a Dense after Flatten: each feature's channel, in Keras's order
        order, pooled = flattened
        features = kernel.shape[0]
        if pooled is None:  # no stated input size: a square map (as _input_size assumes)
            side = math.isqrt(features // width)
            pooled = (side, side)
        if features != width * pooled[0] * pooled[1]:
            raise _error(
                source,
                f"cannot fold it into the next layer: its {features} inputs are not "
                f"{width} channels of a square map",
                batchnorm.layer,
            )
        grid = np.broadcast_to(np.arange(width)[:, None, None], (width, *pooled))
        channel_of_input = grid.transpose(["CHW".index(axis) for axis in order]).reshape(-1)
    return list(
        _weights.fold_input_affine(
            kernel,
            arrays[1] if len(arrays) > 1 else None,
            scale,
            shift,
            axis=kernel.ndim - 2,
            channel_of_input=channel_of_input,
        )
    )


def _folded(arrays, batchnorm, width, store, path_names, source):
    """[kernel, bias] of a layer with the BatchNormalization that follows it folded in."""
    options, layer = batchnorm.value, batchnorm.layer
    values = _batchnorm_variables(batchnorm, width, store, path_names)
    try:
        return list(
            _weights.fold_batchnorm(
                arrays[0],
                arrays[1] if len(arrays) > 1 else None,
                values.get("gamma"),
                values.get("beta"),
                values["moving_mean"],
                values["moving_variance"],
                options["epsilon"],
                axis=-1,
            )
        )
    except ValueError as exc:
        raise _error(source, f"cannot fold it into the layer before: {exc}", layer) from exc


def _check_conv3_input(stages, stated, pooled, source):
    if "conv3" in stages and pooled != (_KERNEL, _KERNEL):
        raise _error(
            source,
            f"the third Conv2D must see a 5x5 map (it is a full-window "
            f"convolution); the input {stated[0]}x{stated[1]} gives "
            f"{pooled[0]}x{pooled[1]}",
            stages["conv3"][0].layer,
        )


class _Structure(NamedTuple):
    """What steps 2 and 3 found: the weighted layers and what follows each, and the geometry."""

    named_stages: list  # (conv1 ... fc3, (weighted step, the steps after it))
    activations: dict  # name -> (activation, the layer that says so)
    batchnorms: dict  # name -> the BatchNormalization step folded into it
    outputs_batchnorms: dict  # name -> (BatchNormalization after its activation, pooling after)
    transforms: list  # the leading Rescaling / Normalization steps folded into conv1
    input_chw: tuple  # the input's (C, H, W), None where the config states none
    order: tuple  # Keras's flatten order of the (C, H, W) feature map, as axis names
    paddings: tuple  # conv1's and conv2's padding


def _read_weights(layers, structure, store, source):
    """The weights in canonical shapes (converted from Keras's channels-last layout, any
    BatchNormalization folded in) keyed by Keras layer names, the key_map from canonical layer
    names to those, the architecture's activations and the input size."""
    named_stages, activations, batchnorms, outputs_batchnorms = structure[:4]
    transforms, input_chw, order, paddings = structure[4:]
    counters, path_names = {}, {}
    for layer in layers:  # Keras numbers the variable paths per class, in config order
        base = _WEIGHTS_PATH_NAMES.get(layer.class_name)
        if base:
            count = counters.get(base, 0)
            path_names[layer.name] = base if count == 0 else f"{base}_{count}"
            counters[base] = count + 1
    names = [name for name, _ in named_stages]
    stages = dict(named_stages)
    arrays, widths, channels = {}, {}, input_chw[0]
    stated, pooled, inputs = input_chw[1:], None, None  # inputs: the next Dense layer's
    if stated != (None, None):  # checked before any weight is read
        stated, pooled = _input_size(named_stages, stated, paddings, None, None, source)
        _check_conv3_input(stages, stated, pooled, source)
    for name in names:
        layer = stages[name][0].layer
        use_bias = _option(layer, "use_bias", (True, False), source, True)
        hint = ""
        if name.startswith("conv"):
            width = _positive(layer, "filters", _architecture.MAX_WIDTH, source)
            kernel_shape = (_KERNEL, _KERNEL, channels, width)
        else:
            limit = _architecture.MAX_CLASSES if name == names[-1] else _architecture.MAX_WIDTH
            width = _positive(layer, "units", limit, source)
            if name == "fc1" and "conv3" not in stages and pooled is not None:
                inputs = widths["conv2"] * pooled[0] * pooled[1]
                hint = (
                    f" (the Dense after Flatten takes {inputs} features: conv2's "
                    f"{widths['conv2']} channels of {pooled[0]}x{pooled[1]} for a "
                    f"{stated[0]}x{stated[1]} input)"
                )
            elif name == "fc1" and "conv3" not in stages:  # no stated input: any, checked below
                inputs = None
            kernel_shape = (_ANY if inputs is None else inputs, width)
        shapes = [kernel_shape, (width,)] if use_bias else [kernel_shape]
        arrays[name] = store.variables(layer, path_names[layer.name], shapes, hint)
        if name == "conv1" and transforms:  # the channels: the kernel's, if no input states them
            kernel, *bias = arrays[name]
            scale, shift = _input_affine(
                transforms, kernel.shape[2], paddings[0], (store, path_names), source
            )
            arrays[name] = list(
                _weights.fold_input_affine(kernel, bias[0] if bias else None, scale, shift, axis=2)
            )
        previous = names[names.index(name) - 1] if name != "conv1" else None
        if previous in outputs_batchnorms:
            arrays[name] = _folded_inputs(
                arrays[name],
                outputs_batchnorms[previous],
                widths[previous],
                next_padding=paddings[1] if name == "conv2" else 0,
                flattened=(order, pooled) if name == "fc1" and "conv3" not in stages else None,
                reader=(store, path_names),
                source=source,
            )
        if name in batchnorms:
            arrays[name] = _folded(arrays[name], batchnorms[name], width, store, path_names, source)
        if name == "fc1" and inputs is None:
            inputs = features = arrays[name][0].shape[0]
        elif name == "fc1":
            features = inputs
        widths[name] = channels = inputs = width
    stated, pooled = _input_size(
        named_stages,
        stated,
        paddings,
        None if "conv3" in stages else features,
        widths["conv2"],
        source,
    )
    _check_conv3_input(stages, stated, pooled, source)
    conv_activation = activations["conv1"][0]
    # Three Dense layers over a 5x5 map, the first with the convolutions' activation: conv3 and
    # two dense layers (the network lenet_fast always ran; the same function).
    dense_as_conv3 = (
        "conv3" not in stages
        and len(names) == 5
        and pooled == (_KERNEL, _KERNEL)
        and activations["fc1"][0] == conv_activation
    )
    canonical_names = dict(
        zip(names, ("conv1", "conv2", "conv3", "fc1", "fc2") if dense_as_conv3 else names)
    )
    weights, key_map = {}, {}
    for name in names:
        layer, canonical = stages[name][0].layer, canonical_names[name]
        kernel = arrays[name][0]
        if kernel.ndim == 4:
            weight = kernel.transpose(3, 2, 0, 1)  # (5, 5, in, out) -> (out, in, 5, 5)
        elif name == "fc1" and "conv3" not in stages:  # the first Dense after Flatten
            sizes = {"C": widths["conv2"], "H": pooled[0], "W": pooled[1]}
            weight = kernel.T.reshape(kernel.shape[1], *(sizes[axis] for axis in order))
            weight = weight.transpose(0, *(1 + order.index(axis) for axis in "CHW"))
            if not dense_as_conv3:
                weight = weight.reshape(kernel.shape[1], -1)
        else:
            weight = kernel.T  # (in, out) -> (out, in)
        # Keyed by the Keras layer's name, so that canonicalize's messages name it.
        key_map[canonical] = layer.name
        weights[f"{layer.name}.weight"] = weight
        weights[f"{layer.name}.bias"] = (
            arrays[name][1] if len(arrays[name]) > 1 else np.zeros(weight.shape[0], kernel.dtype)
        )
    convs = [canonical_names[name] for name in names if canonical_names[name].startswith("conv")]
    denses = [canonical_names[name] for name in names if canonical_names[name].startswith("fc")]
    renamed = {canonical_names[name]: value for name, value in activations.items()}
    conv_activation = _shared_activation(renamed, convs, "convolutions", source)
    fc_activation = (
        _shared_activation(renamed, denses[:-1], "hidden Dense layers", source)
        if len(denses) > 1
        else _architecture.DEFAULT_ARCHITECTURE["fc_activation"]
    )
    architecture = {
        "conv_activation": conv_activation,
        "fc_activation": fc_activation,
        "output_activation": renamed[denses[-1]][0],
    }
    return weights, key_map, architecture, stated


def read_model(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Read a Keras model file as canonical weights and an architecture, without Keras.

    `LeNet.from_keras` builds a model from what this returns; this module does not import the
    model class, so the reader can be used and tested on its own.

    Parameters
    ----------
    path : str or path-like
        A Keras 3 ``.keras`` archive or a Keras 2/3 ``.h5`` file written by ``model.save``
        (recognised by content).  The model: Conv2D -> pooling -> Conv2D -> pooling -> (Conv2D
        ->) Flatten -> one to three Dense layers; see Notes.

    Returns
    -------
    weights : dict of str to ndarray
        Canonical float32 weights (``conv1.weight`` ..., see `lenet_fast._weights.canonicalize`),
        converted from channels-last and Keras's flatten order.
    architecture : dict
        The file's ``conv_activation``, ``fc_activation``, ``output_activation``, ``pool`` and
        geometry (``input_size``, ``conv1_padding``, ``conv2_padding``).
    provenance : dict
        ``format`` (``"Keras .keras"`` or ``"Keras .h5"``), ``keras_input_shape``,
        ``keras_rescaling`` (``scale`` and ``offset`` of a Rescaling folded into conv1) and
        ``keras_normalization`` (``mean`` and ``variance`` of a Normalization folded into
        conv1) where there were such layers and, where the file records them, ``keras_model``
        (the model's name) and ``keras_version``.

    Raises
    ------
    lenet_fast.WeightFileError
        (a ``ValueError``) naming the file and, where there is one, the layer: an unreadable or
        oversized file, a model that is not one chain of layers, a layer type, option,
        activation or geometry the engine cannot run (the message says which), or weights that
        do not match the config.
    ImportError
        If ``h5py`` is not installed (``pip install "lenet_fast[keras]"``).
    FileNotFoundError
        If `path` does not exist.
    TypeError
        If `path` is not a str or path-like.

    Notes
    -----
    Supported: ``Sequential`` models and ``Functional`` models that are one chain of layers;
    InputLayer; Conv2D with 5x5 kernels, stride 1, no dilation, one group, ``padding="valid"``
    or ``"same"`` on each of the first two and "valid" on a third (which must see a 5x5 map);
    2 x 2 stride-2 MaxPooling2D or AveragePooling2D (the same after both convolutions);
    Flatten; one to three Dense layers; activations relu, tanh, sigmoid, linear and (last) softmax or
    log_softmax, as a layer option or as Activation, ReLU (plain) and Softmax layers; Dropout,
    SpatialDropout2D, GaussianNoise, GaussianDropout, AlphaDropout and ActivityRegularization
    are ignored (they are identities at inference); ``use_bias=False`` gives a zero bias;
    channels-last or channels-first.  The convolutions share one activation, and the Dense
    layers but the last share one.  The input size (e.g. 28 x 28 or 32 x 32) comes from the
    config and must give even convolution outputs.  A ZeroPadding2D of 2 on every side right
    before a "valid" Conv2D (conv1 or conv2) is read as that layer's padding 2.  A
    BatchNormalization directly after a Conv2D or Dense without an activation of its own (on
    its channel or feature axis) is folded into that layer with the config's epsilon; one
    anywhere else is refused.  A ``Rescaling`` and a ``Normalization`` first (in either
    order; one value or one per channel, along the channel axis; an offset or a mean only with
    a 'valid' conv1) are folded into conv1, so the model takes the inputs the Keras model took
    (e.g. pixels 0-255); ``provenance["keras_rescaling"]`` and
    ``provenance["keras_normalization"]`` record them.  A ``Reshape`` among the first layers
    that only gives the input its channel axis (``Input((28, 28))`` or ``Input((784,))`` then
    ``Reshape((28, 28, 1))``, or ``(1, 28, 28)``) sets the input shape: the model takes
    (N, 28, 28) images, the same floats in the same order.

    Examples
    --------
    >>> weights, architecture, provenance = read_model("lenet.keras")   # doctest: +SKIP
    >>> architecture["input_size"]                                      # doctest: +SKIP
    (28, 28)
    """
    h5py = _import_h5py()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like; got {type(path).__name__}")
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"Keras file {source!r} does not exist")
    try:
        with open(source, "rb") as file:
            magic = file.read(len(_HDF5_MAGIC))
    except OSError as exc:
        raise _error(source, f"unreadable ({type(exc).__name__}: {exc})") from exc
    try:
        canonical, metadata = _load(source, magic, h5py)
    except WeightFileError:
        raise
    except _READ_ERRORS as exc:  # whatever h5py raises on damage the checks did not foresee
        raise _error(source, f"unreadable ({type(exc).__name__}: {exc})") from exc
    return canonical, metadata["architecture"], metadata["provenance"]


def _load(source, magic, h5py):
    """The canonical weights and the metadata (architecture, provenance) of a Keras file."""
    with contextlib.ExitStack() as stack:
        if magic.startswith(_ZIP_MAGICS):
            config, store, version = _open_keras_archive(source, h5py, stack)
            file_format = ".keras"
        elif magic == _HDF5_MAGIC:
            config, store, version = _open_legacy_h5(source, h5py, stack)
            file_format = ".h5"
        else:
            raise _error(
                source,
                f"expected a Keras .keras archive (zip) or .h5 (HDF5) file, "
                f"found a file starting with {magic!r}",
            )
        layers, chain, stated_shape = _model_layers(config, source)
        steps, stated_shape = _leading_reshape(_steps(chain, source), stated_shape, source)
        steps, transforms = _leading_rescaling(steps, source)
        steps = _attach_zero_paddings(steps, source)
        if stated_shape is not None and not any(step.kind == "input" for step in steps):
            steps.insert(0, _Step("input", chain[0], stated_shape))
        named_stages, input_step = _stages(steps, source)
        activations, pools, flatten, batchnorms, outputs_batchnorms = _read_structure(
            named_stages, source
        )
        layout, input_chw, order, paddings = _geometry(
            named_stages, input_step, pools, flatten, source
        )
        _check_batchnorm_axes(named_stages, batchnorms, layout, source)
        _check_batchnorm_axes(named_stages, outputs_batchnorms, layout, source)
        _check_input_transforms(transforms, paddings, layout, source)
        structure = _Structure(
            named_stages,
            activations,
            batchnorms,
            outputs_batchnorms,
            transforms,
            input_chw,
            order,
            paddings,
        )
        weights, key_map, architecture, input_size = _read_weights(layers, structure, store, source)
    architecture.update(
        pool=pools[0].value,
        input_size=input_size,
        conv1_padding=paddings[0],
        conv2_padding=paddings[1],
    )
    canonical = _weights.canonicalize(
        weights,
        key_map=key_map,
        source=source,
        conv_activation=architecture["conv_activation"],
        fc_activation=architecture["fc_activation"],
        **{option: architecture[option] for option in _architecture.GEOMETRY_OPTIONS},
    )
    channels = canonical["conv1.weight"].shape[1]
    provenance = {
        "format": f"Keras {file_format}",
        "keras_input_shape": [*input_size, channels]
        if layout == "channels_last"
        else [channels, *input_size],
    }
    for step in transforms:  # the model reads what Keras's first layers read: say so
        if step.kind == "rescaling":
            provenance["keras_rescaling"] = {
                "scale": step.value[0].tolist(),
                "offset": step.value[1].tolist(),
            }
        else:
            mean, variance = step.statistics
            provenance["keras_normalization"] = {"mean": mean, "variance": variance}
    for key, value in (("keras_model", _model_name(config)), ("keras_version", version)):
        if value is not None:
            provenance[key] = value
    return canonical, {"architecture": architecture, "provenance": provenance}


def _model_name(config):
    inner = config.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) and len(name) <= 200 else None
