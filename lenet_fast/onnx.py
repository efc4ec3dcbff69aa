"""ONNX in and out for the LeNet family, as data: a graph <-> ``(weights, architecture)``.

`read_graph` turns an ONNX graph into canonical weights and an architecture dict; it never
executes the graph, it reads it.  `build_model_proto` turns ``(weights, architecture)`` back into
an ``onnx.ModelProto``; `save_model` writes one atomically.  `LeNet.from_onnx` and
`LeNet.to_onnx` compose them; this module does not import the model class (nor the compiled
kernels), so the graph reader can be used and tested on its own.

Reading: the nodes are sorted topologically from the one graph input (linear time) and must form
a single chain (Constant nodes and initializers feed it weights).  Each node becomes a token -- a
weighted layer (Conv, Gemm, MatMul followed by Add), an activation, a 2x2 pool, a flatten or a
zero Pad of 2 -- and the token list is matched against the family::

    pad? conv act? pool act? pad? conv act? pool act? (conv act? flatten | flatten)
    dense act? [dense act? [dense act?]]

A flatten's target shape may be computed (Shape, Gather, Slice, Squeeze, Unsqueeze, Cast,
Concat, Mul: ``x.view(x.size(0), -1)``, the feature count multiplied out of ``x.size()[1:]``,
and tf2onnx's batch sliced from the shape cast to int32 and back): those
nodes are evaluated symbolically, the batch and the chain tensors' other dimensions as
symbols, and accepted only as a Reshape's target (`_shape_arithmetic`).  A graph exported at a
fixed example batch (torch's default) reshapes to that batch: it is read as the batch, since
every other node works image by image.  A graph input of flat (N, H*W) or (N, H, W) images
made (N, C, H, W) by a first Reshape or Unsqueeze is read as (N, C, H, W) images
(`_reshaped_input`), and so is tf2onnx's form of a Keras model: (N, H, W, C) images transposed
first, and transposed back before the flatten (whose order the first dense layer's weights
are permuted from, once).

5x5 stride-1 convolutions padded by 0 or 2 (Conv ``pads``, ``auto_pad`` SAME, or a constant zero
Pad just before the Conv), one pooling kind, conv3 only where the second pooling gives 5x5, one to
three dense layers (Gemm or MatMul + Add).  The input size is the graph input's when it states
one, else worked out from the first dense layer's width (the padding is explicit in ONNX, so
nothing is guessed).  A Flatten and three dense layers over a 5x5 map whose first dense layer
uses the convolutions' activation are read as conv3 (the PyTorch tutorial's network, as
``lenet_fast`` always has).  An inference ``BatchNormalization`` directly after a Conv, Gemm or
MatMul is folded into that layer (`_weights.fold_batchnorm`, float64), and one after an
activation or a pooling into the next layer's inputs (`_weights.fold_input_affine`; refused
before max pooling with a negative scale, before a padded Conv with a shift, before an
activation, after the flatten or the last layer).  The weights then pass
through ``_weights.canonicalize`` like any other weight set, so shape checks live in one place.
Anything else is rejected, naming the file and the first offending node.

Writing: opset 17, IR version 8 (readable by ONNX Runtime 1.17 and later), a dynamic batch axis,
input ``images`` (N, C, H, W) float32 at the model's input size (padding as Conv ``pads``) and
output ``scores`` after the output activation.  The ``onnx`` package is imported inside the
functions, so ``import lenet_fast`` does not need it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _architecture, _weights

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from onnx import ModelProto

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "images"
OUTPUT_NAME = "scores"

_ACTIVATION_OPS = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
}
_OVER_CLASSES = ("Softmax", "LogSoftmax")  # output only, along axis 1
_POOL_OPS = {"MaxPool": "max", "AveragePool": "avg"}
_FLATTEN_OPS = ("Flatten", "Reshape")
# The shape arithmetic exporters emit for a flatten's target shape: ``x.view(x.size(0), -1)``
# through the TorchScript exporter with a dynamic batch is Shape -> Gather -> Unsqueeze ->
# Concat -> Reshape, and a feature count multiplied out of ``x.size()[1:]`` adds Mul; tf2onnx
# takes the batch as Shape -> Cast (int32) -> Slice [0:1] (-> Squeeze -> Unsqueeze) -> Cast.  Read
# symbolically (`_shape_arithmetic`), never run; accepted only as a Reshape's target.
_SHAPE_OPS = ("Shape", "Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Concat", "Mul")
# Cast's integer targets (TensorProto.INT32, INT64): tf2onnx casts shapes to int32 and back
_INTEGER_TYPES = (6, 7)
_BATCH = "N"  # the factor of a symbolic dimension that stands for the batch size
_MAX_SHAPE_TERMS = 8  # dims of a computed shape, factors of a product: a flatten needs 2 and 3
_SUPPORTED_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    *_ACTIVATION_OPS,
    *_POOL_OPS,
    *_FLATTEN_OPS,
    *_SHAPE_OPS,
    "Transpose",
    "Pad",
    "Identity",
    "Constant",
    "BatchNormalization",
)
_KERNEL = 5
_PADDING = 2  # the one non-zero padding: "same" for a 5x5 kernel
_NO_PADS, _SAME_PADS = [0, 0, 0, 0], [_PADDING] * 4
_CONV_NAMES = ("conv1", "conv2", "conv3")
_DENSE_NAMES = ("fc1", "fc2", "fc3")
_MAX_LAYERS = len(_CONV_NAMES) + len(_DENSE_NAMES)
_ONNX_ACTIVATIONS = {name: op for op, name in _ACTIVATION_OPS.items()}
_ONNX_POOLS = {name: op for op, name in _POOL_OPS.items()}


class ONNXImportError(ValueError):
    """An ONNX graph that is not a LeNet this package can run exactly, or a malformed file.

    The message names the file (or "ONNX model"), then the first unsupported node (op type and
    name), the initializer, or the mismatch found.
    """


class _ONNXWeightError(ONNXImportError, _weights.WeightFileError):
    """Weights in an ONNX graph that do not fit together as one LeNet: both error types."""


# Exceptions that onnx's helpers and numpy raise on malformed protobuf content (a tensor whose
# raw_data is shorter than its dims, an unknown data_type, a missing attribute field ...).
_MALFORMED = (
    AttributeError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    MemoryError,
    RuntimeError,
    NotImplementedError,
)


def _describe(node):
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def _unsupported(node, problem):
    return ONNXImportError(f"unsupported {_describe(node)}: {problem}")


def _attributes(node):
    from onnx import helper

    try:
        return {
            attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute
        }
    except _MALFORMED as exc:
        raise _unsupported(node, f"malformed attribute ({type(exc).__name__}: {exc})") from exc


def _tensor_array(tensor, what):
    """A TensorProto as a NumPy array, its size checked first; malformed content raises
    ONNXImportError naming `what` (the initializer or node)."""
    from onnx import TensorProto, numpy_helper

    dims = list(tensor.dims)
    if any(size < 0 for size in dims) or math.prod(dims) > _weights.MAX_ELEMENTS:
        raise ONNXImportError(
            f"{what}: expected at most {_weights.MAX_ELEMENTS:,} elements, found dims {dims}"
        )
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ONNXImportError(
            f"{what}: its data is in an external file, which is read only when "
            f"from_onnx is given the model's path (not a loaded ModelProto)"
        )
    try:
        return numpy_helper.to_array(tensor)
    except _MALFORMED as exc:
        raise ONNXImportError(f"{what}: malformed tensor ({type(exc).__name__}: {exc})") from exc


def _read_external_data(model, folder, source):
    """Load every initializer's external data ourselves, refusing any location that resolves
    (after symlinks) outside `folder`, and any length that disagrees with the tensor's dims."""
    from onnx import TensorProto, helper

    root = os.path.realpath(folder)
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        what = f"{source}: initializer {tensor.name!r}"
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        target = os.path.realpath(os.path.join(root, location))
        if (
            not location
            or os.path.isabs(location)
            or os.path.commonpath([root, target]) != root
            or target == root
        ):
            raise ONNXImportError(
                f"{what}: external data location {location!r} is not a file "
                f"inside the model's folder {root!r}"
            )
        if not os.path.isfile(target):
            raise ONNXImportError(
                f"{what}: external data file {location!r} is missing or not a regular file"
            )
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            offset, dims = int(entries.get("offset", 0)), list(tensor.dims)
            declared = int(entries.get("length", math.prod(dims) * itemsize))
        except _MALFORMED as exc:
            raise ONNXImportError(
                f"{what}: malformed external data entry ({type(exc).__name__}: {exc})"
            ) from exc
        expected = math.prod(dims) * itemsize
        if (
            any(size < 0 for size in dims)
            or math.prod(dims) > _weights.MAX_ELEMENTS
            or declared != expected
            or offset < 0
            or offset + expected > os.path.getsize(target)
        ):
            raise ONNXImportError(
                f"{what}: external data of {declared:,} bytes at offset "
                f"{offset:,} in {location!r} ({os.path.getsize(target):,} "
                f"bytes) does not hold dims {dims} ({expected:,} bytes; at most "
                f"{_weights.MAX_ELEMENTS:,} elements)"
            )
        with open(target, "rb") as file:
            file.seek(offset)
            tensor.raw_data = file.read(expected)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _check_attributes(node, attributes, allowed):
    """Reject attributes with values other than the allowed ones (absent means the default)."""
    for name, value in attributes.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, (list, tuple)):
            value = list(value)
        if name not in allowed:
            raise _unsupported(node, f"attribute {name}={value!r} is not supported")
        if value not in allowed[name]:
            expected = " or ".join(repr(option) for option in allowed[name])
            raise _unsupported(node, f"expected {name} {expected}, found {value!r}")


# ---------------------------------------------------------------------------------------------
# Reading the graph
# ---------------------------------------------------------------------------------------------


def _load(path_or_model):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, "ONNX model"
    if isinstance(path_or_model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_model_from_string(bytes(path_or_model)), "ONNX model"
        except Exception as exc:  # protobuf's DecodeError and the like
            raise ONNXImportError(
                f"ONNX model: expected a serialized ONNX model, found unreadable bytes "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    if isinstance(path_or_model, (str, os.PathLike)):
        source = os.fspath(path_or_model)
        if not os.path.exists(source):
            raise FileNotFoundError(f"ONNX file {source!r} does not exist")
        if not os.path.isfile(source):
            raise ONNXImportError(
                f"{source}: expected an ONNX model file, found a folder or special file"
            )
        try:
            # External data is read by _read_external_data, with our own path checks.
            model = onnx.load(source, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a corrupt file
            raise ONNXImportError(
                f"{source}: expected an ONNX model file, found an unreadable file "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        _read_external_data(model, os.path.dirname(os.path.abspath(source)), source)
        return model, source
    raise TypeError(
        f"path_or_model must be a path, bytes or an onnx.ModelProto; "
        f"got {type(path_or_model).__name__}"
    )


def _aliases_a_constant(node, constants):
    """Whether `node` is an Identity of a constant (another name for the same weights)."""
    return (
        node.op_type == "Identity"
        and node.domain in ("", "ai.onnx")
        and len(node.input) == 1
        and len(node.output) == 1
        and node.input[0] in constants
    )


def _constant_value(node):
    attributes = _attributes(node)
    if "value" in attributes:
        return _tensor_array(attributes["value"], f"unsupported {_describe(node)}")
    for name in ("value_float", "value_floats", "value_int", "value_ints"):
        if name in attributes:
            return np.array(attributes[name])
    raise _unsupported(
        node, f"expected a dense tensor value, found attributes {sorted(attributes)}"
    )


def _topological_order(graph, available):
    """The graph's nodes ordered so that each comes after the producers of its inputs: in waves
    (the nodes whose inputs all exist, in file order), found in linear time (Kahn's algorithm)."""
    nodes, available = list(graph.node), set(available)
    waiting = {}  # tensor name -> indices of the nodes waiting for it
    missing = []  # per node: how many of its distinct inputs do not exist yet
    for index, node in enumerate(nodes):
        absent = {name for name in node.input if name and name not in available}
        missing.append(len(absent))
        for name in absent:
            waiting.setdefault(name, []).append(index)
    wave = [index for index, count in enumerate(missing) if count == 0]
    ordered = []
    while wave:
        wave.sort()
        ordered.extend(nodes[index] for index in wave)
        following = []
        for index in wave:
            for name in nodes[index].output:
                if name in available:
                    continue
                available.add(name)
                for waiter in waiting.pop(name, ()):
                    missing[waiter] -= 1
                    if missing[waiter] == 0:
                        following.append(waiter)
        wave = following
    if len(ordered) != len(nodes):
        node = next(node for index, node in enumerate(nodes) if missing[index])
        name = next(name for name in node.input if name and name not in available)
        raise _unsupported(node, f"input {name!r} is produced by no node (cycle or dangling input)")
    return ordered


def _graph_input(graph, constants, source):
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise ONNXImportError(
            f"{source}: expected one graph input (the images), found "
            f"{len(inputs)}: {', '.join(value.name for value in inputs)}"
        )
    if len(graph.output) != 1:
        raise ONNXImportError(
            f"{source}: expected one graph output (the scores), found "
            f"{len(graph.output)}: "
            f"{', '.join(value.name for value in graph.output)}"
        )
    dims = [
        dim.dim_value if dim.HasField("dim_value") else None
        for dim in inputs[0].type.tensor_type.shape.dim
    ]
    return inputs[0].name, dims


def _batch_dims(attributes, batch):
    """The dims a Reshape's target may give the batch: -1, the symbolic batch, the graph's fixed
    batch size `batch` (an exporter's example batch), and 0 (copy) unless ``allowzero``."""
    forms = [(-1, ()), (1, (_BATCH,))]
    if batch is not None:
        forms.append((batch, ()))
    if not attributes.get("allowzero", 0):
        forms.append((0, ()))
    return forms


def _constant_target(node, shape):
    """A Reshape's constant target shape as ``(scalar, dims)``; it must be integers."""
    shape = np.asarray(shape)
    if shape.dtype.kind not in "iu":
        raise _unsupported(node, f"expected an int64 target shape, found {shape.dtype}")
    return False, [(int(value), ()) for value in shape.reshape(-1)]


def _reshaped_input(nodes, name, dims, constants, source):
    """(nodes, the images' tensor, its (N, C, H, W)): a graph whose input is flat (N, H*W) or
    (N, H, W) images starts with a Reshape to (N, C, H, W) -- its target constant or computed
    from the input's Shape (``x.reshape(x.size(0), 1, 28, 28)``) -- or an Unsqueeze of axis 1
    (``x.unsqueeze(1)``); those nodes are taken out and the chain starts at the Reshape's
    output.  The model then takes (N, C, H, W) or (N, H, W) images: the same floats."""
    expected = (
        f"{source}: expected a 4-D image input (N, C, H, W), or flat or (N, H, W) images that "
        f"a first Reshape to (N, C, H, W) or Unsqueeze(axes=[1]) makes so; found input "
        f"{name!r} with {len(dims)} axes"
    )
    if len(dims) not in (2, 3, 4):
        raise ONNXImportError(expected)
    symbolic, arithmetic = {}, []  # the shape arithmetic on the input's Shape
    for node in nodes:
        reads_input_shape = node.op_type == "Shape" and list(node.input[:1]) == [name]
        computed = (
            node.op_type in _SHAPE_OPS
            and node.op_type != "Shape"
            and any(value in symbolic for value in node.input)
            and all(value in symbolic or value in constants for value in node.input)
        )
        if reads_input_shape or computed:
            symbolic[node.output[0]] = _shape_arithmetic(
                node, _attributes(node), symbolic, constants, {name: len(dims)}
            )
            arithmetic.append(node)
    taken = {id(node) for node in arithmetic}  # ids: protobuf messages compare by value
    users = [node for node in nodes if name in node.input and id(node) not in taken]
    first = users[0] if len(users) == 1 else None
    if len(dims) == 4 and (first is None or first.op_type not in ("Reshape", "Transpose")):
        return nodes, name, dims  # (N, C, H, W) images
    if first is None or first.op_type not in ("Reshape", "Unsqueeze", "Transpose"):
        raise ONNXImportError(expected)
    if len(first.output) != 1:
        raise ONNXImportError(expected)
    attributes = _attributes(first)
    if first.op_type == "Transpose":  # (N, H, W, C) images, as tf2onnx exports Keras models
        _check_attributes(first, attributes, {"perm": [[0, 3, 1, 2]]})
        if len(dims) != 4 or "perm" not in attributes:
            raise _unsupported(first, f"expected (N, H, W, C) images, found {len(dims)} axes")
        kept = [node for node in nodes if node is not first]
        return kept, first.output[0], [dims[0], dims[3], dims[1], dims[2]]
    given = dims[1:]
    if first.op_type == "Unsqueeze":
        axes = attributes.get("axes")
        if axes is None and len(first.input) > 1 and first.input[1] in constants:
            axes = np.asarray(constants[first.input[1]]).reshape(-1).tolist()
        if len(dims) != 3 or axes is None or list(axes) not in ([1], [-3]):
            raise _unsupported(first, f"expected axes [1] on (N, H, W) images, found {axes}")
        return [node for node in nodes if node is not first], first.output[0], [dims[0], 1, *given]
    _check_attributes(first, attributes, {"allowzero": [0, 1]})
    target = first.input[1] if len(first.input) > 1 else ""
    if target in symbolic:
        scalar, target_dims = symbolic[target]
    elif target in constants:
        scalar, target_dims = _constant_target(first, constants[target])
    else:
        raise _unsupported(first, f"expected a constant or computed target shape, found {target!r}")
    sizes = [coefficient for coefficient, factors in target_dims[1:] if not factors]
    if (
        scalar
        or len(target_dims) != 4
        or target_dims[0] not in _batch_dims(attributes, dims[0])
        or len(sizes) != 3
        or min(sizes) < 1
        or (None not in given and math.prod(given) != math.prod(sizes))
    ):
        raise _unsupported(
            first,
            f"expected a target shape (batch, C, H, W) holding the input's "
            f"{'x'.join(map(str, given))} values, found "
            f"[{', '.join(_dim_text(dim) for dim in target_dims)}]",
        )
    kept = [node for node in nodes if node is not first and id(node) not in taken]
    return kept, first.output[0], [dims[0], *sizes]


class _Token:
    """One step of the chain: kind is "layer", "activation", "pool", "flatten" or "pad"."""

    def __init__(self, kind, node, value=None, weight=None, bias=None):
        self.kind, self.node, self.value, self.weight, self.bias = kind, node, value, weight, bias
        self.batchnorm = None
        self.channels_last = False  # a flatten of (N, H, W, C): after a Transpose to NHWC


def _conv_pads(node, attributes):
    """A Conv's padding on every side: 0 or 2 (``pads`` or ``auto_pad``)."""
    _check_attributes(
        node,
        attributes,
        {
            "kernel_shape": [[_KERNEL, _KERNEL]],
            "strides": [[1, 1]],
            "dilations": [[1, 1]],
            "group": [1],
            "auto_pad": ["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"],
            "pads": [_NO_PADS, _SAME_PADS],
        },
    )
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad.startswith("SAME"):
        if "pads" in attributes:
            raise _unsupported(node, "expected pads or auto_pad, found both")
        return _PADDING
    return _PADDING if list(attributes.get("pads", _NO_PADS)) == _SAME_PADS else 0


def _pad_amount(node, attributes, constant):
    """A Pad node's padding: 2 zeros on each side of the two image axes, or 0 for a Pad that
    pads nothing (torch's exports for opset < 10 put one before each AveragePool)."""
    pads = attributes.get("pads")
    if pads is None and len(node.input) > 1 and node.input[1]:
        pads = constant(node, 1, 1).tolist()
    if pads is not None and not any(pads):
        return 0
    _check_attributes(
        node,
        attributes,
        {"mode": ["constant"], "pads": [[0, 0, _PADDING, _PADDING] * 2], "value": [0.0]},
    )
    if "pads" in attributes:  # opset < 11: attributes only
        return _PADDING
    pads, value = constant(node, 1, 1), constant(node, 2)
    axes = constant(node, 3)
    expected = [0, 0, _PADDING, _PADDING] * 2
    if axes is not None:  # opset 18: pads for the listed axes only
        if sorted(int(axis) % 4 for axis in np.asarray(axes).reshape(-1)) != [2, 3]:
            raise _unsupported(
                node,
                f"expected padding of axes [2, 3] (the image), found axes "
                f"{np.asarray(axes).reshape(-1).tolist()}",
            )
        expected = [_PADDING] * 4
    if pads.tolist() != expected:
        raise _unsupported(
            node, f"expected pads {expected} (2 zeros around each image), found {pads.tolist()}"
        )
    if value is not None and (value.size > 1 or np.any(value != 0)):
        raise _unsupported(
            node,
            f"expected zero padding, found constant value "
            f"{np.asarray(value).reshape(-1)[:4].tolist()}",
        )
    return _PADDING


def _dim_text(dim):
    """A symbolic dimension as text: 800, N (the batch), or t[1]*t[2]*t[3]."""
    coefficient, factors = dim
    parts = [str(coefficient)] if coefficient != 1 or not factors else []
    parts += [factor if factor == _BATCH else f"{factor[0]}[{factor[1]}]" for factor in factors]
    return "*".join(parts)


def _shape_arithmetic(node, attributes, symbolic, constants, ranks):
    """The value of one shape-arithmetic node (`_SHAPE_OPS`) as ``(scalar, dims)``: each dim a
    ``(coefficient, factors)`` product, where a factor is `_BATCH` (dimension 0 of every
    tensor of the chain) or ``(tensor, axis)`` for another dimension of a chain tensor."""

    def operand(position):
        name = node.input[position] if len(node.input) > position else ""
        if name in symbolic:
            return symbolic[name]
        if name in constants:
            array = np.asarray(constants[name])
            if array.dtype.kind not in "iu" or array.ndim > 1:
                raise _unsupported(
                    node,
                    f"expected integer shape values as input {position}, found "
                    f"{array.dtype} of shape {array.shape}",
                )
            if array.size > _MAX_SHAPE_TERMS:
                raise _unsupported(
                    node,
                    f"expected a shape of at most {_MAX_SHAPE_TERMS} dimensions as input "
                    f"{position}, found {array.size} values",
                )
            return array.ndim == 0, [(int(value), ()) for value in array.reshape(-1)]
        raise _unsupported(
            node,
            f"expected {node.op_type} only in the arithmetic of a Reshape's target shape, "
            f"found input {name!r}, which is neither a shape nor a constant",
        )

    def known(value, what):
        scalar, dims = value
        if any(factors for _, factors in dims):
            raise _unsupported(node, f"expected constant {what}, found a computed shape")
        return [coefficient for coefficient, _ in dims]

    def axes_of(position):
        """A 1-D shape's axes (attribute before opset 13, else an optional constant input)."""
        if "axes" in attributes:
            return list(attributes["axes"])
        if len(node.input) > position and node.input[position]:
            return known(operand(position), "axes")
        return None

    op = node.op_type
    if op == "Cast":
        others = {name: value for name, value in attributes.items() if name != "to"}
        _check_attributes(node, others, {"saturate": [0, 1]})
        if attributes.get("to") not in _INTEGER_TYPES:
            raise _unsupported(
                node,
                f"expected a cast of a shape to int32 or int64 (to=6 or 7), found "
                f"to={attributes.get('to')!r}",
            )
        return operand(0)
    if op == "Slice":  # of a 1-D shape along axis 0, step 1 (tf2onnx: x.shape[:1])
        scalar, dims = operand(0)
        if "starts" in attributes:  # opset < 10: attributes
            starts, ends = list(attributes["starts"]), list(attributes.get("ends", []))
            steps = [1]
        else:
            starts, ends = known(operand(1), "starts"), known(operand(2), "ends")
            steps = known(operand(4), "steps") if len(node.input) > 4 and node.input[4] else [1]
        axes = axes_of(3)
        if (
            scalar
            or len(starts) != 1
            or len(ends) != 1
            or axes not in (None, [0], [-1])
            or steps != [1]
        ):
            raise _unsupported(node, "expected a slice of a 1-D shape along axis 0 with step 1")
        return False, dims[slice(starts[0], ends[0])]
    if op == "Squeeze":  # a 1-element shape made a scalar
        scalar, dims = operand(0)
        if scalar or len(dims) != 1 or axes_of(1) not in (None, [0], [-1]):
            raise _unsupported(node, "expected a 1-element shape made a scalar (axes [0])")
        return True, dims
    if op == "Shape":
        for attribute, value in attributes.items():
            if attribute not in ("start", "end"):
                raise _unsupported(node, f"attribute {attribute}={value!r} is not supported")
        name = node.input[0]
        if name not in ranks:
            raise _unsupported(node, f"expected the shape of a tensor of the chain, found {name!r}")
        rank = ranks[name]
        dims = [(1, (_BATCH,))] + [(1, ((name, axis),)) for axis in range(1, rank)]
        return False, dims[slice(attributes.get("start", 0), attributes.get("end", rank))]
    if op == "Gather":
        _check_attributes(node, attributes, {"axis": [0]})
        scalar, dims = operand(0)
        indices_scalar, indices = operand(1)
        positions = known((indices_scalar, indices), "indices")
        if scalar or not all(-len(dims) <= position < len(dims) for position in positions):
            raise _unsupported(node, f"expected indices within a shape of {len(dims)} dimensions")
        return indices_scalar, [dims[position] for position in positions]
    if op == "Unsqueeze":
        axes = axes_of(1)
        scalar, dims = operand(0)
        if not scalar or axes not in ([0], [-1]):
            raise _unsupported(node, "expected a scalar made into a 1-D shape (axes [0])")
        return False, dims
    if op == "Concat":
        _check_attributes(node, attributes, {"axis": [0, -1]})
        parts = [operand(position) for position in range(len(node.input))]
        if any(scalar for scalar, _ in parts):
            raise _unsupported(node, "expected 1-D shapes to concatenate")
        joined = [dim for _, dims in parts for dim in dims]
        if len(joined) > _MAX_SHAPE_TERMS:
            raise _unsupported(node, f"expected at most {_MAX_SHAPE_TERMS} dimensions")
        return False, joined
    # Mul: of two scalars or 1-element shapes (a feature count multiplied out)
    (scalar_a, a), (scalar_b, b) = operand(0), operand(1)
    if len(a) != 1 or len(b) != 1:
        raise _unsupported(node, "expected a product of two single dimensions")
    (coefficient_a, factors_a), (coefficient_b, factors_b) = a[0], b[0]
    if len(factors_a) + len(factors_b) > _MAX_SHAPE_TERMS:
        raise _unsupported(node, f"expected a product of at most {_MAX_SHAPE_TERMS} dimensions")
    product = (coefficient_a * coefficient_b, tuple(sorted(factors_a + factors_b, key=repr)))
    return scalar_a and scalar_b, [product]


def _flatten_features(node, attributes, target, data, ranks, batch):
    """The feature count of a Reshape that flattens `data` to (batch, features): -1 for all of
    them.  `target` is ``(scalar, dims)``; the first dim may be -1, 0 (copy), the symbolic batch
    or the graph's fixed batch size `batch` (an exporter's example batch, e.g. ``[1, -1]``)."""
    scalar, dims = target
    if not scalar and len(dims) == 2:
        first, (coefficient, factors) = dims
        batch_ok = first in _batch_dims(attributes, batch)
        every_feature = (1, tuple(sorted(((data, axis) for axis in range(1, 4)), key=repr)))
        if batch_ok and dims[1] == every_feature and ranks.get(data) == 4:
            return -1
        if batch_ok and not factors and (coefficient > 0 or coefficient == -1 and first[0] != -1):
            return coefficient
    raise _unsupported(
        node,
        f"expected a flatten to (batch, features), found target shape "
        f"[{', '.join(_dim_text(dim) for dim in dims)}]",
    )


def _tokenize(nodes, data, constants, source, batch=None):
    """Follow the chain of nodes from tensor `data`; return its tokens and the final tensor.
    `batch` is the graph input's fixed batch size, if it has one."""
    tokens, index = [], 0
    consumers = {}
    for node in nodes:
        if node.op_type not in ("Constant", "Shape"):
            for name in node.input:
                consumers.setdefault(name, []).append(node)
    symbolic = {}  # the outputs of shape arithmetic: tensor name -> (scalar, dims)
    transposed = None  # a Transpose to (N, H, W, C), for the flatten that must follow it
    rank = 4  # of the chain's tensor: 2 after the flatten
    ranks = {data: rank}  # the tensors of the chain so far: name -> number of axes

    def constant(node, position, ndim=None):
        """The constant input at `position` (None when absent and `ndim` is None); with `ndim`,
        it is required and must have that many axes (a tuple: any of them)."""
        name = node.input[position] if len(node.input) > position else ""
        if not name and ndim is None:
            return None
        what = "weight" if position == 1 else "bias" if position == 2 else "constant input"
        if not name:
            raise _unsupported(node, f"expected a {what} as input {position}, found none")
        if name not in constants:
            raise _unsupported(
                node,
                f"input {name!r} must be a constant weight (an initializer or a Constant node)",
            )
        value = np.asarray(constants[name])
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if allowed is not None and value.ndim not in allowed:
            raise _unsupported(
                node,
                f"expected a {' or '.join(map(str, allowed))}-D {what} "
                f"{name!r}, found shape {value.shape}",
            )
        return value

    after_activation = None  # a BatchNormalization after an activation, for the next layer
    while index < len(nodes):
        node = nodes[index]
        index += 1
        newest = tokens[-1] if tokens else None
        if node.domain not in ("", "ai.onnx") or node.op_type not in _SUPPORTED_OPS:
            raise _unsupported(node, f"op type not in {', '.join(_SUPPORTED_OPS)}")
        if node.op_type == "Constant" or _aliases_a_constant(node, constants):
            continue
        if node.op_type in _SHAPE_OPS and (
            node.op_type == "Shape" or not any(name in ranks for name in node.input)
        ):
            symbolic[node.output[0]] = _shape_arithmetic(
                node, _attributes(node), symbolic, constants, ranks
            )
            continue
        users = consumers.get(data, [])
        if len(users) > 1:
            raise _unsupported(
                users[1],
                f"it branches off tensor {data!r}, which already feeds "
                f"{_describe(users[0])}; expected a single chain of nodes",
            )
        outputs = (
            [name for name in node.output if name]  # optional outputs may be named ""
            if node.op_type == "BatchNormalization"
            else node.output
        )
        if not node.input or node.input[0] != data or len(outputs) != 1:
            raise _unsupported(
                node,
                f"expected a single-output node continuing the chain from "
                f"tensor {data!r}, found inputs {list(node.input)} and "
                f"outputs {list(node.output)}",
            )
        attributes = _attributes(node)
        op = node.op_type
        if transposed is not None and op not in _FLATTEN_OPS:
            raise _unsupported(
                transposed,
                f"expected a Transpose to (N, H, W, C) only directly before the flatten, found "
                f"{_describe(node)} after it",
            )
        pending_pad = tokens[-1] if tokens and tokens[-1].kind == "pad" else None
        if pending_pad is not None and op not in ("Conv", "Identity"):
            raise _unsupported(
                pending_pad.node,
                f"expected a Pad only directly before a Conv, found {_describe(node)} after it",
            )
        if op == "Identity":
            pass
        elif op == "Transpose":
            _check_attributes(node, attributes, {"perm": [[0, 2, 3, 1]]})
            if rank != 4 or "perm" not in attributes:
                raise _unsupported(node, "expected a Transpose to (N, H, W, C) before the flatten")
            transposed = node
        elif op == "Conv":
            padding = _conv_pads(node, attributes)
            if pending_pad is not None:
                if padding:
                    raise _unsupported(
                        node,
                        f"padded by 2 after {_describe(pending_pad.node)} "
                        f"padded by 2: expected 0 or 2 in all",
                    )
                tokens.pop()
                padding = pending_pad.value
            tokens.append(_Token("layer", node, padding, constant(node, 1, 4), constant(node, 2)))
        elif op == "Pad":
            amount = _pad_amount(node, attributes, constant)
            if amount:  # a Pad of nothing is the identity
                tokens.append(_Token("pad", node, amount))
        elif op == "Gemm":
            _check_attributes(
                node, attributes, {"transA": [0], "transB": [0, 1], "alpha": [1.0], "beta": [1.0]}
            )
            weight, bias = constant(node, 1, 2), constant(node, 2)
            tokens.append(
                _Token(
                    "layer",
                    node,
                    None,
                    weight if attributes.get("transB", 0) else weight.T,
                    None if bias is None else bias.reshape(-1),
                )
            )
        elif op == "MatMul":
            matmul, weight, bias = node, constant(node, 1, 2), None
            add = nodes[index] if index < len(nodes) else None
            if (
                add is not None
                and add.op_type == "Add"
                and node.output[0] in add.input
                and len(consumers.get(node.output[0], [])) == 1
            ):
                # The bias, on either side of the Add.
                position = 1 - list(add.input).index(node.output[0])
                bias = constant(add, position, (0, 1, 2)).reshape(-1)
                node, index = add, index + 1
            tokens.append(_Token("layer", matmul, None, weight.T, bias))
        elif (
            op == "BatchNormalization"
            and tokens
            and tokens[-1].kind in ("activation", "pool")
            and any(token.kind == "layer" for token in tokens)
        ):
            if after_activation is not None:
                raise _unsupported(
                    node,
                    f"expected at most one BatchNormalization after the activation of "
                    f"{_describe(after_activation.layer.node)}",
                )
            after_activation = _BatchnormAfterActivation(node, attributes, tokens, constant)
        elif op == "BatchNormalization":
            _fold_batchnorm_node(node, attributes, tokens, constant)
        elif op in _ACTIVATION_OPS:
            if op in _OVER_CLASSES:
                _check_attributes(node, attributes, {"axis": [1, -1]})
            tokens.append(_Token("activation", node, _ACTIVATION_OPS[op]))
        elif op in _POOL_OPS:
            _check_attributes(
                node,
                attributes,
                {
                    "kernel_shape": [[2, 2]],
                    "strides": [[2, 2]],
                    "pads": [[0, 0, 0, 0]],
                    "dilations": [[1, 1]],
                    "ceil_mode": [0],
                    "auto_pad": ["NOTSET", "VALID"],
                    "count_include_pad": [0, 1],
                    "storage_order": [0],
                },
            )
            if "strides" not in attributes:
                raise _unsupported(node, "expected strides [2, 2], found the default [1, 1]")
            tokens.append(_Token("pool", node, _POOL_OPS[op]))
        elif op == "Flatten":
            _check_attributes(node, attributes, {"axis": [1]})
            tokens.append(_Token("flatten", node))
        elif op == "Reshape":
            _check_attributes(node, attributes, {"allowzero": [0, 1]})
            if len(node.input) > 1 and node.input[1] in symbolic:
                target = symbolic[node.input[1]]
            else:
                target = _constant_target(node, constant(node, 1, 1))
            features = _flatten_features(node, attributes, target, data, ranks, batch)
            tokens.append(_Token("flatten", node, features))
        elif op in _SHAPE_OPS:  # on a tensor of the chain
            raise _unsupported(
                node,
                f"expected {op} only in the arithmetic of a Reshape's target shape, found it "
                f"on tensor {data!r} of the chain",
            )
        else:  # an Add that does not follow a MatMul
            raise _unsupported(node, "expected Add only as the bias of a MatMul")
        if after_activation is not None and tokens[-1] is not newest:
            after_activation = after_activation.meet(tokens[-1])
        if tokens and tokens[-1] is not newest and tokens[-1].kind == "flatten":
            rank = 2
            if transposed is not None:
                tokens[-1].channels_last, transposed = True, None
        data = node.output[0]
        ranks[data] = rank
    if tokens and tokens[-1].kind == "pad":
        raise _unsupported(tokens[-1].node, "expected a Pad only directly before a Conv")
    if transposed is not None:
        raise _unsupported(transposed, "expected a Transpose to (N, H, W, C) only before a flatten")
    if after_activation is not None:
        raise _unsupported(
            after_activation.node,
            "a BatchNormalization after the last layer's activation has no layer after it to "
            "fold into (expected it before the activation)",
        )
    return tokens, data


class _BatchnormAfterActivation:
    """A BatchNormalization after an activation or a pooling: ``x * scale + shift`` per channel
    of the layer before, folded into the next layer's inputs (`_weights.fold_input_affine`) once
    that layer's token arrives.  The tokens in between must keep the fold exact: no activation
    (it would apply after the normalisation), max pooling only with no negative scale."""

    def __init__(self, node, attributes, tokens, constant):
        _check_batchnorm_attributes(node, attributes)
        self.node = node
        self.layer = [token for token in tokens if token.kind == "layer"][-1]
        if any(token.kind == "flatten" for token in tokens[tokens.index(self.layer) :]):
            raise _unsupported(node, "expected a BatchNormalization before the flatten, not after")
        self.gamma = constant(node, 1)
        try:
            self.scale, self.shift = _weights.batchnorm_affine(
                self.gamma,
                constant(node, 2),
                constant(node, 3),
                constant(node, 4),
                attributes.get("epsilon", 1e-5),
                self.layer.weight.shape[0],
            )
        except ValueError as exc:
            raise _unsupported(node, f"cannot fold it into the layer after it: {exc}") from exc

    def meet(self, token):
        """Take the next token in the chain; returns self until the layer it folds into."""
        if token.kind == "activation":
            raise _unsupported(
                self.node,
                f"a BatchNormalization is folded into the Conv, Gemm or MatMul it directly "
                f"follows, or after the activation into the next layer; this one precedes "
                f"{_describe(token.node)}",
            )
        if token.kind == "pool" and token.value == "max" and (self.scale < 0).any():
            channel = int(np.flatnonzero(self.scale < 0)[0])
            raise _unsupported(
                self.node,
                f"a negative scale before max pooling does not commute with it (channel "
                f"{channel}: scale {float(self.gamma.reshape(-1)[channel])!r}); expected the "
                f"BatchNormalization after the pooling",
            )
        if token.kind != "layer":
            return self
        if token.node.op_type == "Conv" and token.value and (self.shift != 0).any():
            raise _unsupported(
                self.node,
                f"{_describe(token.node)} pads the normalised map with zeros, which a fold "
                f"into its weights would shift; expected no padding there, or the "
                f"BatchNormalization before the activation",
            )
        try:  # a dense layer after a Flatten reads (C, H, W) in order: the default
            token.weight, token.bias = _weights.fold_input_affine(
                token.weight, token.bias, self.scale, self.shift, axis=1, out_axis=0
            )
        except ValueError as exc:
            raise _unsupported(
                self.node, f"cannot fold it into {_describe(token.node)}: {exc}"
            ) from exc
        return None


def _check_batchnorm_attributes(node, attributes):
    """An inference BatchNormalization: any epsilon and momentum, no training mode."""
    _check_attributes(
        node,
        attributes,
        {
            "epsilon": [attributes.get("epsilon", 1e-5)],
            "momentum": [attributes.get("momentum", 0.9)],
            "training_mode": [0],
            "spatial": [1],
        },
    )


def _fold_batchnorm_node(node, attributes, tokens, constant):
    """Fold an inference BatchNormalization into the Conv/Gemm/MatMul token it directly follows
    (in float64, see `_weights.fold_batchnorm`)."""
    _check_batchnorm_attributes(node, attributes)
    if not tokens or tokens[-1].kind != "layer" or tokens[-1].node is node:
        raise _unsupported(
            node,
            "a BatchNormalization is folded into the Conv, Gemm or MatMul "
            "it directly follows; this one follows "
            + (_describe(tokens[-1].node) if tokens else "the input"),
        )
    layer = tokens[-1]
    if getattr(layer, "batchnorm", None) is not None:
        raise _unsupported(
            node, f"expected at most one BatchNormalization after {_describe(layer.node)}"
        )
    try:
        layer.weight, layer.bias = _weights.fold_batchnorm(
            layer.weight,
            layer.bias,
            constant(node, 1),
            constant(node, 2),
            constant(node, 3),
            constant(node, 4),
            attributes.get("epsilon", 1e-5),
        )
    except ValueError as exc:
        raise _unsupported(node, f"cannot fold it into {_describe(layer.node)}: {exc}") from exc
    layer.batchnorm = node


def _split_layers(tokens, source):
    """Group the tokens as the weighted layers, each with the tokens that follow it, and name
    them: conv1, conv2 (and conv3) for the leading Convs, fc1, fc2, fc3 for the dense layers."""
    layers, names = [], []
    for token in tokens:
        if token.kind != "layer":
            if not layers:
                raise _unsupported(token.node, "expected the first node to be a Conv")
            layers[-1][1].append(token)
            continue
        convs = sum(name.startswith("conv") for name in names)
        denses = len(names) - convs
        is_conv = token.node.op_type == "Conv"
        if is_conv and (denses or convs == len(_CONV_NAMES)):
            raise _unsupported(
                token.node,
                f"expected {_DENSE_NAMES[denses]} to be Gemm or "
                f"MatMul+Add (at most three Conv layers, all before "
                f"the dense layers)",
            )
        if not is_conv and convs < 2:
            raise _unsupported(token.node, f"expected {_CONV_NAMES[convs]} to be Conv")
        if not is_conv and denses == len(_DENSE_NAMES):
            raise _unsupported(
                token.node,
                f"a LeNet has at most {len(_DENSE_NAMES)} dense "
                f"layers after its convolutions; this is a fourth",
            )
        names.append(_CONV_NAMES[convs] if is_conv else _DENSE_NAMES[denses])
        layers.append((token, []))
    if len(names) < 3 or not names[-1].startswith("fc"):
        found = ", ".join(layer.node.op_type for layer, _ in layers) or "none"
        raise ONNXImportError(
            f"{source}: expected two or three Conv layers, then one to three "
            f"dense layers (Gemm or MatMul+Add), found {len(layers)} weighted "
            f"layers: {found}"
        )
    return list(zip(names, layers))


def _read_structure(named_layers, source):
    """Check where the activations, pools and flatten sit; return the activation after each
    layer (name -> (activation, the node that says so)), the pooling kind and the flatten
    token."""
    activations, pools, flatten = {}, [], None
    last_conv = [name for name, _ in named_layers if name.startswith("conv")][-1]
    last = named_layers[-1][0]
    for name, (layer, following) in named_layers:
        wants_pool = name in ("conv1", "conv2")
        wants_flatten = name == last_conv
        seen = {"activation": [], "pool": [], "flatten": []}
        for token in following:
            seen[token.kind].append(token)
            if len(seen[token.kind]) > 1:
                raise _unsupported(token.node, f"expected at most one {token.kind} after {name}")
            if token.kind == "pool" and not wants_pool:
                raise _unsupported(
                    token.node,
                    f"expected pooling only after conv1 and conv2, found it after {name}",
                )
            if token.kind == "flatten" and (not wants_flatten or wants_pool and not seen["pool"]):
                raise _unsupported(
                    token.node,
                    f"expected flattening only after the last "
                    f"convolution's pooling, found it after {name}",
                )
            if token.kind == "activation" and seen["pool"] and seen["pool"][0].value == "avg":
                raise _unsupported(
                    token.node,
                    "an activation after AveragePool does not commute "
                    "with it; expected it before the pooling",
                )
            if token.kind == "activation" and token.node.op_type in _OVER_CLASSES and name != last:
                raise _unsupported(
                    token.node,
                    f"expected {token.node.op_type} only after {last}, found it after {name}",
                )
        if wants_pool and not seen["pool"]:
            raise _unsupported(
                layer.node, f"expected a 2x2 stride-2 MaxPool or AveragePool after {name}"
            )
        if wants_flatten and not seen["flatten"]:
            raise _unsupported(layer.node, f"expected a Flatten or Reshape after {name}")
        if name == "conv3" and layer.value:
            raise _unsupported(
                layer.node, "expected conv3 unpadded (a full-window convolution giving 1x1)"
            )
        activation = seen["activation"][0] if seen["activation"] else None
        activations[name] = (
            activation.value if activation else "identity",
            activation.node if activation else layer.node,
        )
        pools.extend(seen["pool"])
        flatten = flatten or (seen["flatten"][0] if seen["flatten"] else None)
    if pools[0].value != pools[1].value:
        raise _unsupported(
            pools[1].node,
            f"pooling must be the same after conv1 and conv2; "
            f"found {pools[0].node.op_type} then "
            f"{pools[1].node.op_type}",
        )
    return activations, pools[0].value, flatten


def _shared_activation(activations, names, option, source):
    """The one activation `names` share (the engine applies one per role)."""
    kinds = {activations[name][0] for name in names}
    if len(kinds) > 1:
        found = ", ".join(f"{activations[name][0]} after {name}" for name in names)
        listed = " and ".join([", ".join(names[:-1]), names[-1]])
        raise ONNXImportError(f"{source}: {option} must be the same after {listed}; found {found}")
    return kinds.pop()


def _read_geometry(named_layers, input_dims, source):
    """The input (H, W) and the two convolutions' padding: the graph input's size when stated,
    else the one square size (28 or 32) that gives the first dense layer's inputs, or conv3's
    5x5 map; and the (H, W) after the second pooling."""
    layers = dict(named_layers)
    conv1, conv2 = layers["conv1"][0], layers["conv2"][0]
    padding = {"conv1_padding": conv1.value, "conv2_padding": conv2.value}
    channels2 = conv2.weight.shape[0]
    has_conv3 = "conv3" in layers
    features = channels2 * _KERNEL * _KERNEL if has_conv3 else layers["fc1"][0].weight.shape[1]
    stated = tuple(input_dims[2:])
    text = f"padding {conv1.value} on conv1 and {conv2.value} on conv2"
    if None in stated:
        if stated != (None, None):
            raise ONNXImportError(
                f"{source}: expected the input's height and width both fixed "
                f"or both free, found {stated[0]}x{stated[1]}".replace("None", "?")
            )
        candidates = _architecture.geometry_candidates(channels2, features, padding)
        if not candidates:
            node = layers["conv3" if has_conv3 else "fc1"][0].node
            wanted = "a 5x5 map for conv3" if has_conv3 else f"{features} features for fc1"
            raise _unsupported(
                node,
                f"no 28x28 or 32x32 input gives {wanted} with {text} and "
                f"conv2's {channels2} channels; state the input size in "
                f"the graph input",
            )
        stated = candidates[0]["input_size"]
    try:
        stages = _architecture.stage_sizes({"input_size": stated, **padding})
    except ValueError as exc:
        raise _unsupported(conv1.node, f"{exc}") from exc
    pooled = stages["pool2"]
    if has_conv3 and pooled != (_KERNEL, _KERNEL):
        raise _unsupported(
            layers["conv3"][0].node,
            f"conv3 must see a 5x5 map (it is a full-window convolution); a "
            f"{stated[0]}x{stated[1]} input with {text} gives "
            f"{pooled[0]}x{pooled[1]}",
        )
    return tuple(stated), (conv1.value, conv2.value), pooled


def _check_flatten(flatten, features):
    """A Reshape that states its feature count must state the next layer's."""
    if flatten.value not in (None, -1) and flatten.value != features:
        raise _unsupported(
            flatten.node,
            f"expected to flatten to {features} features (the next "
            f"layer's input), found {flatten.value}",
        )


def read_graph(
    model_or_path: str | os.PathLike[str] | ModelProto,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a LeNet-family ONNX graph as canonical weights and an architecture, without running it.

    Parameters
    ----------
    model_or_path : str, path-like, bytes or onnx.ModelProto
        The graph (a file, its serialized bytes or a loaded model), such as
        ``torch.onnx.export`` writes: Conv -> activation -> 2x2 pool ->
        Conv -> activation -> 2x2 pool -> (Conv -> activation ->) Flatten -> one to three
        Gemm (or MatMul + Add) layers, each followed by its activation.  Supported ops: Conv
        (5x5, stride 1, padded by 0 or 2 through ``pads``, ``auto_pad="SAME_*"`` or a constant
        zero Pad of 2 just before it), Relu, Sigmoid, Tanh, Softmax or LogSoftmax (last),
        MaxPool and AveragePool (2x2, stride 2), Flatten, Reshape to (batch, features) -- the
        batch given as -1, 0, the graph input's fixed batch size (an exporter's example batch:
        the per-image function is the same at any batch) or computed by Shape, Gather, Slice,
        Squeeze, Unsqueeze, Cast, Concat and Mul nodes (``x.view(x.size(0), -1)``, tf2onnx's
        sliced batch), read symbolically --, Gemm,
        MatMul + Add, Pad (of 2, or of nothing), Identity, BatchNormalization directly after a
        Conv/Gemm/MatMul (folded into it) or after an activation or pooling (folded into the
        next layer); weights as initializers, Constant nodes or Identity nodes of either.
        Activations may be absent ("identity").  A graph of flat (N, H*W) or (N, H, W) images
        may make them (N, C, H, W) with a first Reshape (constant or computed target) or
        Unsqueeze(axes=[1]); one of (N, H, W, C) images (a Keras model through tf2onnx) with a
        first Transpose (perm [0, 3, 1, 2]) or Reshape, and a Transpose back to (N, H, W, C)
        (perm [0, 2, 3, 1]) right before the flatten: the first dense layer's inputs are then
        read in (row, column, channel) order.  The model takes (N, C, H, W) images.

    Returns
    -------
    weights : dict of str to ndarray
        Canonical float32 weights (``conv1.weight`` ..., see `lenet_fast._weights.canonicalize`).
    architecture : dict
        ``conv_activation``, ``fc_activation``, ``output_activation``, ``pool`` and the geometry:
        ``input_size`` (an int for a square input, else (H, W)), ``conv1_padding`` and
        ``conv2_padding`` (0 or 2).  With a single dense layer, ``fc_activation`` is unused and
        left at its default.

    Raises
    ------
    ONNXImportError
        (a ``ValueError``; also ``lenet_fast.ONNXImportError``) for every problem with the
        graph, its message starting with the file (or "ONNX model") and naming the first
        unsupported node (op type and name), the initializer, or the mismatch: an op type
        outside the list, a branch, other strides, kernels, padding, pooling or attributes,
        different activations where the engine applies one, different pooling, sizes that no
        2x2 pooling divides exactly, a malformed or oversized tensor (over 2**24 elements),
        external data outside the model's folder (after resolving symlinks).  When the weights'
        shapes do not fit together the error is also a `lenet_fast.WeightFileError`.
    FileNotFoundError
        If the path does not exist.
    TypeError
        If `model_or_path` is not a path, bytes or an ``onnx.ModelProto``.

    Examples
    --------
    >>> weights, architecture = read_graph("lenet.onnx")     # doctest: +SKIP
    >>> architecture["input_size"], weights["fc1.weight"].shape    # doctest: +SKIP
    ((28, 28), (120, 256))
    """
    model, source = _load(model_or_path)
    try:
        return _read_graph(model.graph, source)
    except _weights.WeightFileError as exc:
        raise _ONNXWeightError(str(exc)) from exc
    except ONNXImportError as exc:
        if str(exc).startswith(f"{source}: "):
            raise
        raise ONNXImportError(f"{source}: {exc}") from exc
    except _MALFORMED as exc:  # a malformed graph that no check above names more precisely
        raise ONNXImportError(
            f"{source}: malformed ONNX graph ({type(exc).__name__}: {exc})"
        ) from exc


def _read_graph(graph, source):
    """The canonical weights and the architecture of a LeNet-family graph."""
    constants = {
        tensor.name: _tensor_array(tensor, f"{source}: initializer {tensor.name!r}")
        for tensor in graph.initializer
    }
    input_name, input_dims = _graph_input(graph, constants, source)
    nodes = _topological_order(graph, {input_name, *constants})
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constants[node.output[0]] = _constant_value(node)
        elif _aliases_a_constant(node, constants):  # torch's exporter shares equal initializers
            constants[node.output[0]] = constants[node.input[0]]
    nodes, input_name, input_dims = _reshaped_input(
        nodes, input_name, input_dims, constants, source
    )
    tokens, output = _tokenize(nodes, input_name, constants, source, batch=input_dims[0])
    if output != graph.output[0].name:
        raise ONNXImportError(
            f"{source}: the chain from input {input_name!r} ends at tensor "
            f"{output!r}, not at the graph output {graph.output[0].name!r}"
        )
    named_layers = _split_layers(tokens, source)
    activations, pool, flatten = _read_structure(named_layers, source)
    names = [name for name, _ in named_layers]
    convs = [name for name in names if name.startswith("conv")]
    denses = [name for name in names if name.startswith("fc")]
    conv_activation = _shared_activation(activations, convs, "conv_activation", source)
    in_channels = input_dims[1]
    conv1_weight = named_layers[0][1][0].weight
    if in_channels is not None and in_channels != conv1_weight.shape[1]:
        raise ONNXImportError(
            f"{source}: the input has {in_channels} channels but conv1 expects "
            f"{conv1_weight.shape[1]}"
        )
    (height, width), padding, pooled = _read_geometry(named_layers, input_dims, source)
    layers = dict(named_layers)
    _check_flatten(flatten, layers[denses[0]][0].weight.shape[-1])
    if flatten.channels_last and len(convs) == 2:  # (row, column, channel) -> (C, H, W) order
        first = layers[denses[0]][0]
        channels, units = layers["conv2"][0].weight.shape[0], first.weight.shape[0]
        first.weight = (
            first.weight.reshape(units, *pooled, channels).transpose(0, 3, 1, 2).reshape(units, -1)
        )
    # The PyTorch tutorial's network: three dense layers over a 5x5 map, the first with the
    # convolutions' activation, is conv3 (a full-window convolution) and two dense layers.
    if (
        len(convs) == 2
        and len(denses) == 3
        and pooled == (_KERNEL, _KERNEL)
        and activations["fc1"][0] == conv_activation
    ):
        renamed = dict(zip(names, ("conv1", "conv2", "conv3", "fc1", "fc2")))
        layers = {renamed[name]: layer for name, layer in layers.items()}
        activations = {renamed[name]: value for name, value in activations.items()}
        denses = ["fc1", "fc2"]
    fc_activation = (
        _shared_activation(activations, denses[:-1], "fc_activation", source)
        if len(denses) > 1
        else _architecture.DEFAULT_ARCHITECTURE["fc_activation"]
    )
    weights = {}
    for name, (layer, _) in layers.items():
        weight = layer.weight
        if name == "conv3" and weight.ndim == 2:  # the flattened (C, H, W) dense form
            channels = layers["conv2"][0].weight.shape[0]
            if weight.shape[1] == channels * _KERNEL * _KERNEL:
                weight = weight.reshape(weight.shape[0], channels, _KERNEL, _KERNEL)
        weights[f"{name}.weight"] = weight
        weights[f"{name}.bias"] = (
            np.zeros(weight.shape[0], np.float32) if layer.bias is None else layer.bias
        )
    architecture = {
        "conv_activation": conv_activation,
        "fc_activation": fc_activation,
        "output_activation": activations[denses[-1]][0],
        "pool": pool,
        "input_size": (height, width),
        "conv1_padding": padding[0],
        "conv2_padding": padding[1],
    }
    return _canonical(weights, architecture, source), architecture


def _canonical(weights, architecture, source):
    """The weights through the one shape check every loader uses, with the geometry the graph
    states (the dense layers are named as decided above: the activations are passed so that
    fc1 is never read as conv3 where they differ)."""
    return _weights.canonicalize(
        weights,
        source=source,
        conv_activation=architecture["conv_activation"],
        fc_activation=architecture["fc_activation"],
        **{option: architecture[option] for option in _architecture.GEOMETRY_OPTIONS},
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def build_model_proto(
    weights: Mapping[str, ArrayLike], architecture: Mapping[str, Any]
) -> ModelProto:
    """The ONNX graph of a LeNet-family network, as an ``onnx.ModelProto``.

    Parameters
    ----------
    weights : mapping of str to ndarray
        Canonical weights (``conv1.weight``, ``conv1.bias``, ``conv2.*``, optional ``conv3.*``,
        ``fc1.*``, optional ``fc2.*`` and ``fc3.*``), e.g. `LeNet.weights` or the first result
        of `read_graph`.
    architecture : mapping of str to str or int
        ``conv_activation``, ``fc_activation``, ``output_activation`` and ``pool`` (e.g.
        `LeNet.architecture`), and optionally the geometry ``input_size`` (int or (H, W);
        default 32), ``conv1_padding`` and ``conv2_padding`` (0 or 2; default 0).

    Returns
    -------
    onnx.ModelProto
        Opset 17, IR version 8; input ``images`` float32 (N, C, H, W) with a dynamic batch axis
        and the model's input size; output ``scores`` (N, n_classes) after the output
        activation.  The input is the normalised float tensor: a model's stored uint8
        preprocessing is not part of the graph.  `read_graph` reads it back to the same weights
        and architecture; checked with ``onnx.checker``.

    Raises
    ------
    ValueError
        If the weights do not hold a family member's layers, an option is not in the
        vocabulary, or the shapes do not fit the geometry (ONNX's checker names the mismatch).

    Examples
    --------
    >>> proto = build_model_proto(model.weights, model.architecture)     # doctest: +SKIP
    >>> onnxruntime.InferenceSession(proto.SerializeToString())           # doctest: +SKIP
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ._version import __version__

    geometry = _architecture.normalize_geometry(architecture)
    names = _architecture.sizes(
        {key: np.shape(value) for key, value in weights.items()}, **geometry
    ).layers
    height, width = geometry["input_size"]
    padding = {"conv1": geometry["conv1_padding"], "conv2": geometry["conv2_padding"], "conv3": 0}
    for option in _architecture.OPTIONS:
        _architecture.check_option(option, architecture.get(option))
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    last_conv = [name for name in names if name.startswith("conv")][-1]
    steps = []
    for name in names:
        parameters = [f"{name}.weight", f"{name}.bias"]
        if name.startswith("conv"):
            attributes = {"kernel_shape": [_KERNEL, _KERNEL]}
            if padding[name]:
                attributes["pads"] = [padding[name]] * 4
            steps.append(("Conv", name, parameters, attributes))
            activation = architecture["conv_activation"]
        else:
            steps.append(("Gemm", name, parameters, {"transB": 1}))
            activation = architecture["output_activation" if name == names[-1] else "fc_activation"]
        if activation != "identity":
            op = _ONNX_ACTIVATIONS[activation]
            attributes = {"axis": 1} if op in _OVER_CLASSES else {}
            steps.append((op, f"{name}_{activation}", [], attributes))
        if name in ("conv1", "conv2"):
            steps.append((_ONNX_POOLS[architecture["pool"]], f"{name}_pool", [], pool))
        if name == last_conv:
            steps.append(("Flatten", "flatten", [], {"axis": 1}))
    nodes, previous = [], INPUT_NAME
    for index, (op, name, parameters, attributes) in enumerate(steps):
        output = OUTPUT_NAME if index == len(steps) - 1 else name
        nodes.append(
            helper.make_node(op, [previous, *parameters], [output], name=name, **attributes)
        )
        previous = output
    arrays = {
        f"{name}.{part}": np.ascontiguousarray(weights[f"{name}.{part}"], np.float32)
        for name in names
        for part in ("weight", "bias")
    }
    in_channels, n_classes = arrays["conv1.weight"].shape[1], arrays[f"{names[-1]}.weight"].shape[0]
    graph = helper.make_graph(
        nodes,
        "lenet",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", in_channels, height, width]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", n_classes])],
        [numpy_helper.from_array(array, key) for key, array in arrays.items()],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="lenet_fast",
        producer_version=__version__,
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ValueError(
            f"the weights do not fit the architecture as an ONNX graph: {exc}"
        ) from exc
    return proto


def save_model(proto: ModelProto, path: str | os.PathLike[str]) -> None:
    """Write an ``onnx.ModelProto`` to `path` atomically.

    Parameters
    ----------
    proto : onnx.ModelProto
        E.g. from `build_model_proto`.
    path : str or path-like
        Destination ``.onnx`` file: written to a temporary file beside it, renamed into place
        once complete, so it is never left half-written and is untouched on failure.

    Raises
    ------
    TypeError
        If `proto` is not an ``onnx.ModelProto``.
    OSError
        If the file cannot be written.

    Examples
    --------
    >>> save_model(build_model_proto(weights, architecture), "lenet.onnx")   # doctest: +SKIP
    """
    import onnx

    if not isinstance(proto, onnx.ModelProto):
        raise TypeError(f"proto must be an onnx.ModelProto; got {type(proto).__name__}")
    _weights.write_file_atomically(path, proto.SerializeToString())
