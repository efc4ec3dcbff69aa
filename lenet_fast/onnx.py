"""ONNX in and out: import LeNet-family ONNX graphs (`from_onnx`) and export ours (`to_onnx`).

Design: `from_onnx` never executes the graph; it reads it.  The nodes are sorted topologically
from the one graph input and must form a single chain (Constant nodes and initializers feed it
weights).  Each node is turned into a token -- a weighted layer (Conv, Gemm, MatMul followed by
Add), an activation, a 2x2 pool or a flatten -- and the token list is matched against the one
shape LeNet-5 has::

    conv act? pool act? conv act? pool act? (conv act? flatten | flatten dense) act? dense act? dense act?

which covers the three PyTorch layouts ``lenet_fast`` loads (table model, PyTorch tutorial with a
dense fc1 over the flattened 16x5x5 features, numbered ``nn.Sequential``) as both of PyTorch's
exporters write them.  An inference ``BatchNormalization`` directly after a Conv, Gemm or MatMul
is folded into that layer's weight and bias (`_weights.fold_batchnorm`, float64).  The weights
then pass through ``_weights.canonicalize`` like any other
weight set, so shape checks live in one place.  Anything the kernels cannot compute exactly is
rejected, naming the first offending node: other op types, strides, dilations, groups, other
kernel or pool sizes, and padding -- except ``pads=[2, 2, 2, 2]`` on the first convolution of a
28x28 input, which is exactly our zero-padding of 28x28 images.

`to_onnx` writes the inverse: opset 17, IR version 8 (readable by ONNX Runtime 1.17 and later),
a dynamic batch axis, input ``images`` (N, C, 32, 32) float32 and output ``scores`` after the
output activation.  The ``onnx`` package is imported inside the functions, so ``import
lenet_fast`` does not need it.
"""

import math
import os

import numpy as np

from . import _weights
from ._model import LeNet

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "images"
OUTPUT_NAME = "scores"

_ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}
_POOL_OPS = {"MaxPool": "max", "AveragePool": "avg"}
_FLATTEN_OPS = ("Flatten", "Reshape")
_SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", *_ACTIVATION_OPS, *_POOL_OPS, *_FLATTEN_OPS,
                  "Identity", "Constant", "BatchNormalization")
_LAYERS = _weights.LAYERS
_KERNEL = 5
_MNIST_SIZE, _INPUT_SIZE = 28, 32
_MNIST_PADS = [2, 2, 2, 2]
_ONNX_ACTIVATIONS = {name: op for op, name in _ACTIVATION_OPS.items()}
_ONNX_POOLS = {name: op for op, name in _POOL_OPS.items()}


class ONNXImportError(ValueError):
    """An ONNX graph that is not a LeNet-5 this package can run exactly, or a malformed file.

    The message names the file (or "ONNX model"), then the first unsupported node (op type and
    name), the initializer, or the mismatch found.
    """


class _ONNXWeightError(ONNXImportError, _weights.WeightFileError):
    """Weights in an ONNX graph that do not fit together as one LeNet-5: both error types."""


# Exceptions that onnx's helpers and numpy raise on malformed protobuf content (a tensor whose
# raw_data is shorter than its dims, an unknown data_type, a missing attribute field ...).
_MALFORMED = (AttributeError, IndexError, KeyError, TypeError, ValueError, OverflowError,
              MemoryError, RuntimeError, NotImplementedError)


def _describe(node):
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def _unsupported(node, problem):
    return ONNXImportError(f"unsupported {_describe(node)}: {problem}")


def _attributes(node):
    from onnx import helper

    try:
        return {attribute.name: helper.get_attribute_value(attribute)
                for attribute in node.attribute}
    except _MALFORMED as exc:
        raise _unsupported(node, f"malformed attribute ({type(exc).__name__}: {exc})") from exc


def _tensor_array(tensor, what):
    """A TensorProto as a NumPy array, its size checked first; malformed content raises
    ONNXImportError naming `what` (the initializer or node)."""
    from onnx import TensorProto, numpy_helper

    dims = list(tensor.dims)
    if any(size < 0 for size in dims) or math.prod(dims) > _weights.MAX_ELEMENTS:
        raise ONNXImportError(f"{what}: expected at most {_weights.MAX_ELEMENTS:,} elements, "
                              f"found dims {dims}")
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ONNXImportError(f"{what}: its data is in an external file, which is read only when "
                              f"from_onnx is given the model's path (not a loaded ModelProto)")
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
        if not location or os.path.isabs(location) or \
                os.path.commonpath([root, target]) != root or target == root:
            raise ONNXImportError(f"{what}: external data location {location!r} is not a file "
                                  f"inside the model's folder {root!r}")
        if not os.path.isfile(target):
            raise ONNXImportError(f"{what}: external data file {location!r} is missing or not a "
                                  f"regular file")
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            offset, dims = int(entries.get("offset", 0)), list(tensor.dims)
            declared = int(entries.get("length", math.prod(dims) * itemsize))
        except _MALFORMED as exc:
            raise ONNXImportError(f"{what}: malformed external data entry ({type(exc).__name__}: "
                                  f"{exc})") from exc
        expected = math.prod(dims) * itemsize
        if any(size < 0 for size in dims) or math.prod(dims) > _weights.MAX_ELEMENTS or \
                declared != expected or offset < 0 or \
                offset + expected > os.path.getsize(target):
            raise ONNXImportError(f"{what}: external data of {declared:,} bytes at offset "
                                  f"{offset:,} in {location!r} ({os.path.getsize(target):,} "
                                  f"bytes) does not hold dims {dims} ({expected:,} bytes; at most "
                                  f"{_weights.MAX_ELEMENTS:,} elements)")
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
    if isinstance(path_or_model, (str, os.PathLike)):
        source = os.fspath(path_or_model)
        if not os.path.exists(source):
            raise FileNotFoundError(f"ONNX file {source!r} does not exist")
        if not os.path.isfile(source):
            raise ONNXImportError(f"{source}: expected an ONNX model file, found a folder or "
                                  f"special file")
        try:
            # External data is read by _read_external_data, with our own path checks.
            model = onnx.load(source, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a corrupt file
            raise ONNXImportError(
                f"{source}: expected an ONNX model file, found an unreadable file "
                f"({type(exc).__name__}: {exc})") from exc
        _read_external_data(model, os.path.dirname(os.path.abspath(source)), source)
        return model, source
    raise TypeError(f"path_or_model must be a path or an onnx.ModelProto; got "
                    f"{type(path_or_model).__name__}")


def _constant_value(node):
    attributes = _attributes(node)
    if "value" in attributes:
        return _tensor_array(attributes["value"], f"unsupported {_describe(node)}")
    for name in ("value_float", "value_floats", "value_int", "value_ints"):
        if name in attributes:
            return np.array(attributes[name])
    raise _unsupported(node, f"expected a dense tensor value, found attributes {sorted(attributes)}")


def _topological_order(graph, available):
    """The graph's nodes ordered so that each comes after the producers of its inputs: in waves
    (the nodes whose inputs all exist, in file order), found in linear time (Kahn's algorithm)."""
    nodes, available = list(graph.node), set(available)
    waiting = {}                 # tensor name -> indices of the nodes waiting for it
    missing = []                 # per node: how many of its distinct inputs do not exist yet
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
        raise _unsupported(node, f"input {name!r} is produced by no node (cycle or dangling "
                                 f"input)")
    return ordered


def _graph_input(graph, constants, source):
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise ONNXImportError(f"{source}: expected one graph input (the images), found "
                              f"{len(inputs)}: {', '.join(value.name for value in inputs)}")
    if len(graph.output) != 1:
        raise ONNXImportError(f"{source}: expected one graph output (the scores), found "
                              f"{len(graph.output)}: "
                              f"{', '.join(value.name for value in graph.output)}")
    dims = [dim.dim_value if dim.HasField("dim_value") else None
            for dim in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ONNXImportError(f"{source}: expected a 4-D image input (N, C, H, W), found input "
                              f"{inputs[0].name!r} with {len(dims)} axes")
    return inputs[0].name, dims


class _Token:
    """One step of the chain: kind is "layer", "activation", "pool" or "flatten"."""

    def __init__(self, kind, node, value=None, weight=None, bias=None):
        self.kind, self.node, self.value, self.weight, self.bias = kind, node, value, weight, bias


def _tokenize(nodes, data, constants, source):
    """Follow the chain of nodes from tensor `data`; return its tokens and the final tensor."""
    tokens, index = [], 0
    consumers = {}
    for node in nodes:
        if node.op_type != "Constant":
            for name in node.input:
                consumers.setdefault(name, []).append(node)

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
            raise _unsupported(node, f"input {name!r} must be a constant weight (an initializer "
                                     f"or a Constant node)")
        value = np.asarray(constants[name])
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if allowed is not None and value.ndim not in allowed:
            raise _unsupported(node, f"expected a {' or '.join(map(str, allowed))}-D {what} "
                                     f"{name!r}, found shape {value.shape}")
        return value

    while index < len(nodes):
        node = nodes[index]
        index += 1
        if node.domain not in ("", "ai.onnx") or node.op_type not in _SUPPORTED_OPS:
            raise _unsupported(node, f"op type not in {', '.join(_SUPPORTED_OPS)}")
        if node.op_type == "Constant":
            continue
        users = consumers.get(data, [])
        if len(users) > 1:
            raise _unsupported(users[1], f"it branches off tensor {data!r}, which already feeds "
                                         f"{_describe(users[0])}; expected a single chain of nodes")
        outputs = ([name for name in node.output if name]  # optional outputs may be named ""
                   if node.op_type == "BatchNormalization" else node.output)
        if not node.input or node.input[0] != data or len(outputs) != 1:
            raise _unsupported(node, f"expected a single-output node continuing the chain from "
                                     f"tensor {data!r}, found inputs {list(node.input)} and "
                                     f"outputs {list(node.output)}")
        attributes = _attributes(node)
        op = node.op_type
        if op == "Identity":
            pass
        elif op == "Conv":
            _check_attributes(node, attributes, {
                "kernel_shape": [[_KERNEL, _KERNEL]], "strides": [[1, 1]], "dilations": [[1, 1]],
                "group": [1], "auto_pad": ["NOTSET", "VALID"], "pads": [[0, 0, 0, 0], _MNIST_PADS]})
            tokens.append(_Token("layer", node, attributes.get("pads", [0, 0, 0, 0]),
                                 constant(node, 1, 4), constant(node, 2)))
        elif op == "Gemm":
            _check_attributes(node, attributes, {"transA": [0], "transB": [0, 1],
                                                 "alpha": [1.0], "beta": [1.0]})
            weight, bias = constant(node, 1, 2), constant(node, 2)
            tokens.append(_Token("layer", node, None,
                                 weight if attributes.get("transB", 0) else weight.T,
                                 None if bias is None else bias.reshape(-1)))
        elif op == "MatMul":
            matmul, weight, bias = node, constant(node, 1, 2), None
            add = nodes[index] if index < len(nodes) else None
            if add is not None and add.op_type == "Add" and node.output[0] in add.input and \
                    len(consumers.get(node.output[0], [])) == 1:
                # The bias, on either side of the Add.
                position = 1 - list(add.input).index(node.output[0])
                bias = constant(add, position, (0, 1, 2)).reshape(-1)
                node, index = add, index + 1
            tokens.append(_Token("layer", matmul, None, weight.T, bias))
        elif op == "BatchNormalization":
            _fold_batchnorm_node(node, attributes, tokens, constant)
        elif op in _ACTIVATION_OPS:
            if op == "Softmax":
                _check_attributes(node, attributes, {"axis": [1, -1]})
            tokens.append(_Token("activation", node, _ACTIVATION_OPS[op]))
        elif op in _POOL_OPS:
            _check_attributes(node, attributes, {
                "kernel_shape": [[2, 2]], "strides": [[2, 2]], "pads": [[0, 0, 0, 0]],
                "dilations": [[1, 1]], "ceil_mode": [0], "auto_pad": ["NOTSET", "VALID"],
                "count_include_pad": [0, 1], "storage_order": [0]})
            if "strides" not in attributes:
                raise _unsupported(node, "expected strides [2, 2], found the default [1, 1]")
            tokens.append(_Token("pool", node, _POOL_OPS[op]))
        elif op == "Flatten":
            _check_attributes(node, attributes, {"axis": [1]})
            tokens.append(_Token("flatten", node))
        elif op == "Reshape":
            _check_attributes(node, attributes, {"allowzero": [0, 1]})
            shape = constant(node, 1, 1)
            batch_ok = shape.ndim == 1 and len(shape) == 2 and (
                shape[0] == -1 or (shape[0] == 0 and not attributes.get("allowzero", 0)))
            if not batch_ok or shape[1] == 0 or shape[1] < -1 or (shape == -1).all():
                raise _unsupported(node, f"expected a flatten to (batch, features), found target "
                                         f"shape {shape.tolist()}")
            tokens.append(_Token("flatten", node, int(shape[1])))
        else:  # an Add that does not follow a MatMul
            raise _unsupported(node, "expected Add only as the bias of a MatMul")
        data = node.output[0]
    return tokens, data


def _fold_batchnorm_node(node, attributes, tokens, constant):
    """Fold an inference BatchNormalization into the Conv/Gemm/MatMul token it directly follows
    (in float64, see `_weights.fold_batchnorm`)."""
    _check_attributes(node, attributes, {"epsilon": [attributes.get("epsilon", 1e-5)],
                                         "momentum": [attributes.get("momentum", 0.9)],
                                         "training_mode": [0], "spatial": [1]})
    if not tokens or tokens[-1].kind != "layer" or tokens[-1].node is node:
        raise _unsupported(node, "a BatchNormalization is folded into the Conv, Gemm or MatMul "
                                 "it directly follows; this one follows "
                                 + (_describe(tokens[-1].node) if tokens else "the input"))
    layer = tokens[-1]
    if getattr(layer, "batchnorm", None) is not None:
        raise _unsupported(node, f"expected at most one BatchNormalization after "
                                 f"{_describe(layer.node)}")
    try:
        layer.weight, layer.bias = _weights.fold_batchnorm(
            layer.weight, layer.bias, constant(node, 1), constant(node, 2), constant(node, 3),
            constant(node, 4), attributes.get("epsilon", 1e-5))
    except ValueError as exc:
        raise _unsupported(node, f"cannot fold it into {_describe(layer.node)}: {exc}") from exc
    layer.batchnorm = node


def _split_layers(tokens, source):
    """Group the tokens as five weighted layers, each with the tokens that follow it."""
    layers = []
    for token in tokens:
        if token.kind == "layer":
            if len(layers) == len(_LAYERS):
                raise _unsupported(token.node, f"a LeNet-5 has {len(_LAYERS)} weighted layers; "
                                               f"this is a sixth")
            layers.append((token, []))
        elif not layers:
            raise _unsupported(token.node, "expected the first node to be a Conv")
        else:
            layers[-1][1].append(token)
    if len(layers) != len(_LAYERS):
        raise ONNXImportError(f"{source}: expected {len(_LAYERS)} weighted layers (Conv, Conv, "
                              f"Conv or Gemm, Gemm, Gemm), found {len(layers)}")
    return layers


def _read_architecture(layers, input_dims, source):
    """Check the token structure; return the architecture and the conv1 padding decision."""
    activations, pools = {}, []
    for position, (name, (layer, following)) in enumerate(zip(_LAYERS, layers)):
        is_conv = layer.node.op_type == "Conv"
        if (position < 2 and not is_conv) or (position > 2 and is_conv):
            expected = "Conv" if position < 2 else "Gemm or MatMul+Add"
            raise _unsupported(layer.node, f"expected {name} to be {expected}")
        if position > 0 and is_conv and layer.value != [0, 0, 0, 0]:
            raise _unsupported(layer.node, f"only the first Conv may be padded (by 2, for 28x28 "
                                           f"input); found pads {layer.value}")
        next_is_dense = position + 1 < len(layers) and layers[position + 1][0].node.op_type != "Conv"
        # Flatten goes after the last convolution: after conv3, or after conv2 when conv3 is dense.
        wants_flatten = position == 2 and is_conv or position == 1 and next_is_dense
        wants_pool = position < 2
        seen = {"activation": [], "pool": [], "flatten": []}
        for token in following:
            seen[token.kind].append(token)
            if len(seen[token.kind]) > 1:
                raise _unsupported(token.node, f"expected at most one {token.kind} after {name}")
            if token.kind == "pool" and not wants_pool:
                raise _unsupported(token.node, f"expected pooling only after conv1 and conv2, "
                                               f"found it after {name}")
            if token.kind == "flatten" and (not wants_flatten or wants_pool and not seen["pool"]):
                raise _unsupported(token.node, f"expected flattening only after the last "
                                               f"convolution's pooling, found it after {name}")
            if token.kind == "activation" and seen["pool"] and seen["pool"][0].value == "avg":
                raise _unsupported(token.node, "an activation after AveragePool does not commute "
                                               "with it; expected it before the pooling")
            if token.kind == "activation" and token.value == "softmax" and name != "fc2":
                raise _unsupported(token.node, f"expected Softmax only after fc2, found it after "
                                               f"{name}")
        if wants_pool and not seen["pool"]:
            raise _unsupported(layer.node, f"expected a 2x2 stride-2 MaxPool or AveragePool "
                                           f"after {name}")
        if wants_flatten and not seen["flatten"]:
            raise _unsupported(layer.node, f"expected a Flatten or Reshape after {name}")
        if seen["flatten"] and seen["flatten"][0].value not in (None, -1):
            features = layers[position + 1][0].weight.shape[-1]
            if seen["flatten"][0].value != features:
                raise _unsupported(seen["flatten"][0].node,
                                   f"expected to flatten to {features} features (the next "
                                   f"layer's input), found {seen['flatten'][0].value}")
        activation = seen["activation"][0] if seen["activation"] else None
        activations[name] = (activation.value if activation else "identity",
                             activation.node if activation else layer.node)
        pools.extend(seen["pool"])
    conv_kinds = {activations[name][0] for name in _LAYERS[:3]}
    if len(conv_kinds) > 1:
        found = ", ".join(f"{activations[name][0]} after {name}" for name in _LAYERS[:3])
        raise ONNXImportError(f"{source}: conv_activation must be the same after conv1, conv2 "
                              f"and conv3; found {found}")
    if pools[0].value != pools[1].value:
        raise _unsupported(pools[1].node, f"pooling must be the same after conv1 and conv2; "
                                          f"found {pools[0].node.op_type} then "
                                          f"{pools[1].node.op_type}")
    _check_input_size(layers[0][0], input_dims, source)
    return {"conv_activation": conv_kinds.pop(), "fc_activation": activations["fc1"][0],
            "output_activation": activations["fc2"][0], "pool": pools[0].value}


def _check_input_size(conv1, input_dims, source):
    """Unpadded conv1 needs 32x32 input, conv1 padded by 2 needs 28x28 (our own padding)."""
    size = _MNIST_SIZE if conv1.value == _MNIST_PADS else _INPUT_SIZE
    height, width = input_dims[2:]
    if (height, width) != (size, size) and (height, width) != (None, None):
        padding = "pads [2, 2, 2, 2]" if size == _MNIST_SIZE else "no padding"
        raise _unsupported(conv1.node, f"with {padding} the input must be {size}x{size}; found "
                                       f"{height}x{width}")


def from_onnx(path_or_model, *, conv_activation=None, fc_activation=None, output_activation=None,
              pool=None, num_threads=None):
    """Build a `LeNet` from a LeNet-5 ONNX graph, such as ``torch.onnx.export`` writes.

    Parameters
    ----------
    path_or_model : str, path-like or onnx.ModelProto
        The graph: Conv -> activation -> 2x2 pool -> Conv -> activation -> 2x2 pool -> Conv ->
        activation -> Flatten -> Gemm -> activation -> Gemm -> activation, or the PyTorch
        tutorial form (Flatten after the second pool, then three Gemm layers).  Supported ops:
        Conv (5x5, stride 1; the first may have ``pads=[2, 2, 2, 2]`` on a 28x28 input), Relu,
        Sigmoid, Tanh, Softmax (last), MaxPool and AveragePool (2x2, stride 2), Flatten,
        Reshape to (batch, features), Gemm, MatMul + Add, Identity, BatchNormalization
        directly after a Conv/Gemm/MatMul (folded into it); weights as initializers or
        Constant nodes.  Activations may be absent ("identity").
    conv_activation, fc_activation, output_activation, pool : str, optional
        Override what the graph says (then the model no longer computes the graph's function);
        by default they are read from the graph.
    num_threads : int, optional
        See `LeNet`.

    Returns
    -------
    LeNet

    Raises
    ------
    ONNXImportError
        (a ``ValueError``; also ``lenet_fast.ONNXImportError``) for every problem with the
        graph, its message starting with the file (or "ONNX model") and naming the first
        unsupported node (op type and name), the initializer, or the mismatch: an op type
        outside the list, a branch, other strides, kernels, padding, pooling or attributes,
        different activations after the three convolutions, different pooling, a malformed or
        oversized tensor (over 2**24 elements), external data outside the model's folder
        (after resolving symlinks).  When the weights' shapes do not fit together as one
        LeNet-5 the error is also a `lenet_fast.WeightFileError`.
    FileNotFoundError
        If the path does not exist.
    TypeError
        If `path_or_model` is neither a path nor an ``onnx.ModelProto``.

    Examples
    --------
    >>> torch.onnx.export(torch_model, (x,), "lenet.onnx")      # doctest: +SKIP
    >>> model = LeNet.from_onnx("lenet.onnx")                  # doctest: +SKIP
    """
    from ._model import _check_num_threads

    if num_threads is not None:
        _check_num_threads(num_threads)
    model, source = _load(path_or_model)
    try:
        canonical, architecture = _read_graph(model.graph, source)
    except _weights.WeightFileError as exc:
        raise _ONNXWeightError(str(exc)) from exc
    except ONNXImportError as exc:
        if str(exc).startswith(f"{source}: "):
            raise
        raise ONNXImportError(f"{source}: {exc}") from exc
    except _MALFORMED as exc:   # a malformed graph that no check above names more precisely
        raise ONNXImportError(f"{source}: malformed ONNX graph ({type(exc).__name__}: "
                              f"{exc})") from exc
    explicit = {"conv_activation": conv_activation, "fc_activation": fc_activation,
                "output_activation": output_activation, "pool": pool}
    return LeNet._from_canonical(canonical, {"architecture": architecture}, num_threads, explicit)


def _read_graph(graph, source):
    """The canonical weights and the architecture of a LeNet-5 graph."""
    constants = {tensor.name: _tensor_array(tensor, f"{source}: initializer {tensor.name!r}")
                 for tensor in graph.initializer}
    input_name, input_dims = _graph_input(graph, constants, source)
    nodes = _topological_order(graph, {input_name, *constants})
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constants[node.output[0]] = _constant_value(node)
    tokens, output = _tokenize(nodes, input_name, constants, source)
    if output != graph.output[0].name:
        raise ONNXImportError(f"{source}: the chain from input {input_name!r} ends at tensor "
                              f"{output!r}, not at the graph output {graph.output[0].name!r}")
    layers = _split_layers(tokens, source)
    architecture = _read_architecture(layers, input_dims, source)
    weights = {}
    for name, (layer, _) in zip(_LAYERS, layers):
        weights[f"{name}.weight"] = layer.weight
        weights[f"{name}.bias"] = (np.zeros(layer.weight.shape[0], np.float32)
                                   if layer.bias is None else layer.bias)
    in_channels = input_dims[1]
    if in_channels is not None and in_channels != weights["conv1.weight"].shape[1]:
        raise ONNXImportError(f"{source}: the input has {in_channels} channels but conv1 expects "
                              f"{weights['conv1.weight'].shape[1]}")
    return _weights.canonicalize(weights, source=source), architecture


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def to_onnx(model, path):
    """Write `model` as a standard ONNX graph that ONNX Runtime runs to the same outputs.

    Parameters
    ----------
    model : LeNet
    path : str or path-like
        Destination ``.onnx`` file (overwritten).

    Notes
    -----
    Opset 17, IR version 8; input ``images`` float32 of shape (N, C, 32, 32) with a dynamic
    batch axis (28x28 images must be padded by 2 first, as `LeNet` does itself); output
    ``scores`` (N, n_classes) after the output activation, as `LeNet.forward` returns.  The
    input is the normalised float tensor: a model's stored uint8 preprocessing is not part of
    the graph.  `from_onnx` reads the file back to an equal model.

    Raises
    ------
    TypeError
        If `model` is not a `LeNet`.

    Examples
    --------
    >>> LeNet.pretrained("mnist").to_onnx("mnist.onnx")     # doctest: +SKIP
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(model, LeNet):
        raise TypeError(f"model must be a lenet_fast.LeNet; got {type(model).__name__}")
    architecture, weights = model.architecture, model.weights
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    steps = []
    for name in _LAYERS:
        if name == "fc1":
            steps.append(("Flatten", "flatten", [], {"axis": 1}))
        parameters = [f"{name}.weight", f"{name}.bias"]
        if name.startswith("conv"):
            steps.append(("Conv", name, parameters, {"kernel_shape": [_KERNEL, _KERNEL]}))
        else:
            steps.append(("Gemm", name, parameters, {"transB": 1}))
        activation = architecture["output_activation" if name == "fc2" else
                                  "conv_activation" if name.startswith("conv") else
                                  "fc_activation"]
        if activation != "identity":
            attributes = {"axis": 1} if activation == "softmax" else {}
            steps.append((_ONNX_ACTIVATIONS[activation], f"{name}_{activation}", [], attributes))
        if name in ("conv1", "conv2"):
            steps.append((_ONNX_POOLS[architecture["pool"]], f"{name}_pool", [], pool))
    nodes, previous = [], INPUT_NAME
    for index, (op, name, parameters, attributes) in enumerate(steps):
        output = OUTPUT_NAME if index == len(steps) - 1 else name
        nodes.append(helper.make_node(op, [previous, *parameters], [output], name=name,
                                      **attributes))
        previous = output
    graph = helper.make_graph(
        nodes, "lenet5",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["N", model.in_channels, _INPUT_SIZE, _INPUT_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", model.n_classes])],
        [numpy_helper.from_array(weights[key], key) for key in _weights.CANONICAL_KEYS],
    )
    from . import __version__

    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   ir_version=IR_VERSION, producer_name="lenet_fast",
                                   producer_version=__version__)
    onnx.checker.check_model(onnx_model)
    _weights.write_file_atomically(path, onnx_model.SerializeToString())
