"""ONNX interop: torch -> ONNX -> lenet_fast equals torch; lenet_fast -> ONNX -> ONNX Runtime equals
lenet_fast; unsupported graphs are rejected naming the first offending node.

For the whole family: every named member goes torch -> ONNX (both exporters) -> lenet_fast ->
ONNX (`build_model_proto`) -> ONNX Runtime -> lenet_fast (the same weights); the graph reader
works on its own (no model class), reads Pad nodes and ``auto_pad``, and refuses what the family
does not hold, naming the node.
"""

import ast
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # the test extra installs it: a skip here means a broken env
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import lenet_fast.onnx as lenet_onnx  # noqa: E402
from factories import (  # noqa: E402
    export_onnx,
    keras_same_lenet,
    member_weights,
    onnxruntime_scores,
    random_images,
    torch_lenets,
)
from lenet_fast import LeNet, WeightFileError  # noqa: E402
from lenet_fast._architecture import MEMBERS, normalize_geometry  # noqa: E402
from lenet_fast._weights import fold_batchnorm  # noqa: E402
from lenet_fast.onnx import (  # noqa: E402
    ONNXImportError,
    build_model_proto,
    read_graph,
    save_model,
)

TOLERANCE = 1e-5
OPTIONS = ("conv_activation", "fc_activation", "output_activation", "pool")
# PyTorch LeNets (tests/factories.py): the design table's layers, the tutorial's Net, numbered
# nn.Sequential models, and the older tutorial form without biases.
TableModel = torch_lenets().TableNet
TutorialModel = torch_lenets().TutorialNet
sequential_model = torch_lenets().sequential
OldTutorialModel = torch_lenets().NoBiasNet
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"
)


TORCH_MODELS = {
    "table": (TableModel, 1, 32),
    "tutorial": (TutorialModel, 1, 32),
    "sequential": (sequential_model, 1, 32),
    "sequential-padding2-28x28": (lambda: sequential_model(padding=2), 1, 28),
    "softmax-output-rgb": (
        lambda: sequential_model(in_channels=3, output=nn.Softmax(dim=1)),
        3,
        32,
    ),
}
# The geometry the graph states: its input size and the convolutions' padding.
INPUT_32 = {"input_size": (32, 32), "conv1_padding": 0, "conv2_padding": 0}
INPUT_28_PADDED = {"input_size": (28, 28), "conv1_padding": 2, "conv2_padding": 0}
EXPECTED_ARCHITECTURES = {
    "table": {
        "conv_activation": "relu",
        "fc_activation": "sigmoid",
        "output_activation": "sigmoid",
        "pool": "max",
        **INPUT_32,
    },
    "tutorial": {
        "conv_activation": "relu",
        "fc_activation": "relu",
        "output_activation": "identity",
        "pool": "max",
        **INPUT_32,
    },
    "sequential": {
        "conv_activation": "tanh",
        "fc_activation": "tanh",
        "output_activation": "identity",
        "pool": "avg",
        **INPUT_32,
    },
    "sequential-padding2-28x28": {
        "conv_activation": "tanh",
        "fc_activation": "tanh",
        "output_activation": "identity",
        "pool": "avg",
        **INPUT_28_PADDED,
    },
    "softmax-output-rgb": {
        "conv_activation": "tanh",
        "fc_activation": "tanh",
        "output_activation": "softmax",
        "pool": "avg",
        **INPUT_32,
    },
}


# Every model through the TorchScript exporter; the three layouts and padding=2 also through the
# (slower) dynamo exporter, torch's default, which flattens with a Reshape instead of Flatten.
EXPORTS = [(name, False) for name in TORCH_MODELS] + [
    (name, True) for name in ("table", "tutorial", "sequential-padding2-28x28")
]


@pytest.mark.parametrize(
    "name, dynamo",
    EXPORTS,
    ids=[f"{name}-{'dynamo' if dynamo else 'torchscript'}" for name, dynamo in EXPORTS],
)
def test_torch_export_imports_to_the_same_function(tmp_path, name, dynamo):
    factory, channels, size = TORCH_MODELS[name]
    torch.manual_seed(0)
    module = factory()
    path = tmp_path / f"{name}.onnx"
    export_onnx(module, torch.zeros(2, channels, size, size), path, dynamo)

    model = LeNet.from_onnx(path)

    x = random_images(257, seed=0, in_channels=channels, size=size)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert model.architecture == EXPECTED_ARCHITECTURES[name]
    np.testing.assert_allclose(model.forward(x), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(model.predict(x), model.forward(x).argmax(axis=1))
    # The same weights as loading the state_dict directly (padding aside, the layouts agree).
    direct = LeNet.from_state_dict(module.state_dict(), **EXPECTED_ARCHITECTURES[name])
    for key, value in direct.weights.items():
        np.testing.assert_array_equal(model.weights[key], value, err_msg=key)


def test_reshape_constant_nodes_and_missing_biases(tmp_path):
    torch.manual_seed(4)
    module = OldTutorialModel()
    path = tmp_path / "old.onnx"
    export_onnx(module, torch.zeros(1, 1, 32, 32), path, dynamo=False)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert "Constant" in ops and "Reshape" in ops and "MatMul" in ops  # what this test is about
    model = LeNet.from_onnx(path)
    assert model.architecture == {
        "conv_activation": "sigmoid",
        "fc_activation": "identity",
        "output_activation": "identity",
        "pool": "max",
        **INPUT_32,
    }
    assert not model.weights["conv2.bias"].any() and not model.weights["fc1.bias"].any()
    x = random_images(100, seed=0)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), expected, rtol=0, atol=TOLERANCE)


def test_matmul_add_and_untransposed_gemm(tmp_path):
    torch.manual_seed(5)
    reference = LeNet.from_state_dict(TableModel().state_dict(), output_activation="softmax")
    path = tmp_path / "lenet.onnx"
    reference.to_onnx(path)
    proto = onnx.load(path)
    graph = proto.graph
    # fc1 as Gemm(transB=0) on a transposed weight; fc2 as MatMul then Add(bias, product).
    weights = reference.weights
    fc1, fc2 = node_named(proto, "fc1"), node_named(proto, "fc2")
    set_attribute(fc1, "transB", 0)
    fc1.input[1] = "fc1.weight.T"
    graph.initializer.append(
        numpy_helper.from_array(weights["fc1.weight"].T.copy(), "fc1.weight.T")
    )
    graph.initializer.append(
        numpy_helper.from_array(weights["fc2.weight"].T.copy(), "fc2.weight.T")
    )
    position = list(graph.node).index(fc2)
    matmul = helper.make_node("MatMul", [fc2.input[0], "fc2.weight.T"], ["product"], name="mm")
    add = helper.make_node("Add", ["fc2.bias", "product"], [fc2.output[0]], name="bias_add")
    graph.node.remove(fc2)
    graph.node.insert(position, add)
    graph.node.insert(position, matmul)
    onnx.checker.check_model(proto)
    model = LeNet.from_onnx(proto)
    assert model.architecture == reference.architecture
    for key, value in reference.weights.items():
        np.testing.assert_array_equal(model.weights[key], value, err_msg=key)


def test_from_onnx_accepts_a_model_proto_and_explicit_overrides(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "table.onnx"
    export_onnx(TableModel(), torch.zeros(1, 1, 32, 32), path, dynamo=False)
    proto = onnx.load(path)
    model = LeNet.from_onnx(proto, output_activation="identity", num_threads=1)
    assert model.architecture["output_activation"] == "identity"
    assert model.architecture["conv_activation"] == "relu"
    assert model.num_threads == 1


ROUND_TRIP_CASES = [
    ("relu", "sigmoid", "sigmoid", "max", 1),
    ("tanh", "relu", "softmax", "avg", 1),
    ("sigmoid", "tanh", "identity", "max", 3),
    ("identity", "identity", "relu", "avg", 3),
    ("relu", "relu", "log_softmax", "max", 1),
]


@pytest.mark.parametrize("conv, fc, output, pool, channels", ROUND_TRIP_CASES)
def test_export_runs_in_onnxruntime_to_the_same_outputs(tmp_path, conv, fc, output, pool, channels):
    rng = np.random.default_rng(3)
    shapes = {
        "conv1": (8, channels, 5, 5),
        "conv2": (12, 8, 5, 5),
        "conv3": (40, 12, 5, 5),
        "fc1": (30, 40),
        "fc2": (7, 30),
    }
    weights = {}
    for layer, shape in shapes.items():
        bound = 1 / np.sqrt(np.prod(shape[1:]))
        weights[f"{layer}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{layer}.bias"] = rng.uniform(-bound, bound, shape[:1]).astype(np.float32)
    model = LeNet(
        weights, conv_activation=conv, fc_activation=fc, output_activation=output, pool=pool
    )
    path = tmp_path / "lenet.onnx"
    model.to_onnx(path)

    written = onnx.load(path)
    onnx.checker.check_model(written, full_check=True)
    assert [(opset.domain, opset.version) for opset in written.opset_import] == [("", 17)]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = random_images(300, seed=4, in_channels=channels)
    (scores,) = session.run(None, {"images": x})
    np.testing.assert_allclose(scores, model.forward(x), rtol=0, atol=TOLERANCE)
    # Batch size is dynamic.
    np.testing.assert_allclose(
        session.run(None, {"images": x[:1]})[0], model.forward(x[:1]), rtol=0, atol=TOLERANCE
    )
    # And the file reads back to the same model.
    back = LeNet.from_onnx(path)
    assert back.architecture == model.architecture
    for key, value in model.weights.items():
        np.testing.assert_array_equal(back.weights[key], value, err_msg=key)


# ---------------------------------------------------------------------------------------------
# Rejections: exact messages
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def lenet_graph(tmp_path):
    """Our own export of a small model, loaded as an onnx.ModelProto to be edited by a test."""
    torch.manual_seed(2)
    model = LeNet.from_state_dict(TableModel().state_dict())
    path = tmp_path / "lenet.onnx"
    model.to_onnx(path)
    return onnx.load(path)


def node_named(proto, name):
    (node,) = [node for node in proto.graph.node if node.name == name]
    return node


def set_attribute(node, name, value=None):
    """Replace (or with value None, remove) an attribute."""
    for index, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[index]
            break
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def insert_after(proto, name, op, new_name, extra_inputs=(), initializers=(), **attributes):
    """Insert a node consuming `name`'s output and re-point the next node at it."""
    node = node_named(proto, name)
    output = f"{new_name}_out"
    new = helper.make_node(
        op, [node.output[0], *extra_inputs], [output], name=new_name, **attributes
    )
    for other in proto.graph.node:
        if other.input and other.input[0] == node.output[0]:
            other.input[0] = output
    position = list(proto.graph.node).index(node) + 1
    proto.graph.node.insert(position, new)
    proto.graph.initializer.extend(
        numpy_helper.from_array(value, key) for key, value in initializers
    )


def reject(proto, message):
    """from_onnx(proto) raises ONNXImportError(message), which starts with "ONNX model: "."""
    if not message.startswith("ONNX model: "):
        message = f"ONNX model: {message}"
    with pytest.raises(ONNXImportError, match=f"^{re.escape(message)}$"):
        LeNet.from_onnx(proto)


def test_folds_batch_normalization_before_and_after_an_activation(lenet_graph):
    rng = np.random.default_rng(0)
    scale, shift, mean = (rng.uniform(-1, 1, 6).astype(np.float32) for _ in range(3))
    variance = rng.uniform(0.5, 2, 6).astype(np.float32)
    names = ["bn.scale", "bn.bias", "bn.mean", "bn.var"]
    values = list(zip(names, (scale, shift, mean, variance)))
    plain = LeNet.from_onnx(lenet_graph)
    after_relu = onnx.ModelProto()
    after_relu.CopyFrom(lenet_graph)
    insert_after(lenet_graph, "conv1", "BatchNormalization", "bn1", names, values, epsilon=1e-3)
    folded = LeNet.from_onnx(lenet_graph)
    weight, bias = fold_batchnorm(
        plain.weights["conv1.weight"],
        plain.weights["conv1.bias"],
        scale,
        shift,
        mean,
        variance,
        eps=1e-3,
    )
    np.testing.assert_array_equal(folded.weights["conv1.weight"], weight)
    np.testing.assert_array_equal(folded.weights["conv1.bias"], bias)
    negative_before_max = onnx.ModelProto()
    negative_before_max.CopyFrom(after_relu)
    insert_after(negative_before_max, "conv1_relu", "BatchNormalization", "bn1", names, values)
    reject(
        negative_before_max,
        f"unsupported BatchNormalization node 'bn1': a negative scale before max pooling does "
        f"not commute with it (channel 1: scale {float(scale[1])!r}); expected the "
        f"BatchNormalization after the pooling",
    )
    # After the ReLU with a positive scale: folded into conv2's inputs, ONNX Runtime's outputs.
    positive = [(names[0], np.abs(scale)), *values[1:]]
    insert_after(after_relu, "conv1_relu", "BatchNormalization", "bn1", names, positive)
    x = np.random.default_rng(1).normal(size=(64, 1, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(
        after_relu.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {after_relu.graph.input[0].name: x})[0]
    np.testing.assert_allclose(
        LeNet.from_onnx(after_relu).forward(x), expected, atol=1e-5, rtol=1e-5
    )


def test_rejects_batch_normalization_after_an_activation_before_any_layer(lenet_graph):
    conv1 = node_named(lenet_graph, "conv1")
    first = conv1.input[0]
    names = ["pre.scale", "pre.bias", "pre.mean", "pre.var"]
    lenet_graph.graph.initializer.extend(
        numpy_helper.from_array(np.ones(1, np.float32), name) for name in names
    )
    nodes = [
        helper.make_node("Relu", [first], ["pre_relu_out"], name="pre_relu"),
        helper.make_node(
            "BatchNormalization", ["pre_relu_out", *names], ["pre_bn_out"], name="pre_bn"
        ),
    ]
    conv1.input[0] = "pre_bn_out"
    for position, node in enumerate(nodes):
        lenet_graph.graph.node.insert(position, node)
    reject(
        lenet_graph,
        "unsupported BatchNormalization node 'pre_bn': a BatchNormalization is folded into the "
        "Conv, Gemm or MatMul it directly follows; this one follows Relu node 'pre_relu'",
    )


def test_rejects_stride_2_convolution(lenet_graph):
    set_attribute(node_named(lenet_graph, "conv2"), "strides", [2, 2])
    reject(lenet_graph, "unsupported Conv node 'conv2': expected strides [1, 1], found [2, 2]")


def test_rejects_3x3_kernel_from_torch(tmp_path):
    module = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 10),
    )
    path = tmp_path / "k3.onnx"
    export_onnx(module, torch.zeros(1, 1, 32, 32), path, dynamo=False)
    with pytest.raises(
        ONNXImportError,
        match=re.escape(
            "unsupported Conv node '/0/Conv': expected kernel_shape [5, 5], found [3, 3]"
        ),
    ):
        LeNet.from_onnx(path)


def test_rejects_padding_other_than_2_on_28x28(tmp_path):
    module = sequential_model(padding=1)
    path = tmp_path / "pad1.onnx"
    export_onnx(module, torch.zeros(1, 1, 30, 30), path, dynamo=False)
    with pytest.raises(
        ONNXImportError,
        match=re.escape(
            "unsupported Conv node '/0/Conv': expected pads [0, 0, 0, 0] or [2, 2, 2, 2], "
            "found [1, 1, 1, 1]"
        ),
    ):
        LeNet.from_onnx(path)


def test_padding_2_on_32x32_input_is_a_family_member(tmp_path):
    module = sequential_model(padding=2)
    path = tmp_path / "pad2-32.onnx"
    # 32x32 padded by 2 gives 6x6 after the second pool, so the dense layer must be wider.
    module[7] = nn.Linear(16 * 6 * 6, 120)
    export_onnx(module, torch.zeros(1, 1, 32, 32), path, dynamo=False)
    model = LeNet.from_onnx(path)
    assert model.architecture["input_size"] == (32, 32)
    assert model.architecture["conv1_padding"] == 2
    x = random_images(50, seed=0)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), expected, rtol=0, atol=TOLERANCE)


def test_rejects_different_activations_after_the_convolutions(lenet_graph):
    node_named(lenet_graph, "conv2_relu").op_type = "Tanh"
    reject(
        lenet_graph,
        "ONNX model: conv_activation must be the same after conv1, conv2 and "
        "conv3; found relu after conv1, tanh after conv2, relu after conv3",
    )


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_rejects_softmax_inside_the_network(lenet_graph, op):
    node_named(lenet_graph, "fc1_sigmoid").op_type = op
    reject(
        lenet_graph,
        f"unsupported {op} node 'fc1_sigmoid': expected {op} only after fc2, found it after fc1",
    )


def test_rejects_activation_after_average_pooling(lenet_graph):
    node_named(lenet_graph, "conv1_pool").op_type = "AveragePool"
    node_named(lenet_graph, "conv2_pool").op_type = "AveragePool"
    node_named(lenet_graph, "conv1_relu").op_type = "Identity"
    insert_after(lenet_graph, "conv1_pool", "Tanh", "late_tanh")
    reject(
        lenet_graph,
        "unsupported Tanh node 'late_tanh': an activation after AveragePool does "
        "not commute with it; expected it before the pooling",
    )


def test_rejects_mixed_pooling(lenet_graph):
    node_named(lenet_graph, "conv2_pool").op_type = "AveragePool"
    reject(
        lenet_graph,
        "unsupported AveragePool node 'conv2_pool': pooling must be the same after "
        "conv1 and conv2; found MaxPool then AveragePool",
    )


def test_rejects_3x3_pooling(lenet_graph):
    set_attribute(node_named(lenet_graph, "conv1_pool"), "kernel_shape", [3, 3])
    reject(
        lenet_graph,
        "unsupported MaxPool node 'conv1_pool': expected kernel_shape [2, 2], found [3, 3]",
    )


def test_rejects_a_branch(lenet_graph):
    # A second consumer of conv1's output: the chain is no longer a chain.
    lenet_graph.graph.node.insert(
        1, helper.make_node("Relu", ["conv1_relu"], ["side"], name="side_branch")
    )
    reject(
        lenet_graph,
        "unsupported MaxPool node 'conv1_pool': it branches off tensor "
        "'conv1_relu', which already feeds Relu node 'side_branch'; expected a "
        "single chain of nodes",
    )


def test_rejects_a_fourth_dense_layer(lenet_graph):
    weight = np.zeros((10, 10), np.float32)
    insert_after(lenet_graph, "fc2", "Gemm", "fc3", ["fc3.weight"], [("fc3.weight", weight)])
    insert_after(lenet_graph, "fc3", "Gemm", "fc4", ["fc3.weight"])
    reject(
        lenet_graph,
        "unsupported Gemm node 'fc4': a LeNet has at most 3 dense layers after "
        "its convolutions; this is a fourth",
    )


def test_rejects_wrong_widths_through_the_weight_checks(lenet_graph):
    (conv3,) = [tensor for tensor in lenet_graph.graph.initializer if tensor.name == "conv3.weight"]
    conv3.CopyFrom(numpy_helper.from_array(np.zeros((100, 16, 5, 5), np.float32), "conv3.weight"))
    with pytest.raises(
        WeightFileError,
        match=re.escape("ONNX model: 'conv3.bias': expected shape (100,), found (120,)"),
    ):
        LeNet.from_onnx(lenet_graph)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LeNet.from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(
        TypeError, match="^path_or_model must be a path, bytes or an onnx.ModelProto; got int$"
    ):
        LeNet.from_onnx(3)
    with pytest.raises(TypeError, match="^proto must be an onnx.ModelProto; got dict$"):
        save_model({}, tmp_path / "x.onnx")


def test_importing_lenet_fast_imports_no_optional_dependency():
    code = (
        "import sys, lenet_fast, lenet_fast.onnx, lenet_fast.dask; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'dask') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def same_geometry(architecture, member):
    return normalize_geometry(architecture) == normalize_geometry(member.geometry)


# ---------------------------------------------------------------------------------------------
# The family (issue 12): ONNX round trips of every member
# ---------------------------------------------------------------------------------------------

ROUND_TRIPS = [(name, dynamo) for name in MEMBERS for dynamo in (False, True)]


@pytest.mark.parametrize(
    "name, dynamo",
    ROUND_TRIPS,
    ids=[f"{name}-{'dynamo' if dynamo else 'torchscript'}" for name, dynamo in ROUND_TRIPS],
)
def test_onnx_round_trip_of_every_member(tmp_path, name, dynamo):
    member = MEMBERS[name]
    module = torch_lenets().member(name)
    size = member.input_size
    path = tmp_path / f"{name}.onnx"
    export_onnx(module, torch.zeros(2, 1, size, size), path, dynamo)

    model = LeNet.from_onnx(path)
    assert {option: model.architecture[option] for option in OPTIONS} == member.architecture
    assert same_geometry(model.architecture, member)
    x = random_images(300, seed=0, size=size)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    found = model.forward(x)
    np.testing.assert_allclose(found, expected, atol=TOLERANCE, rtol=TOLERANCE)
    assert np.mean(found.argmax(axis=1) == expected.argmax(axis=1)) >= 0.999

    written = tmp_path / "written.onnx"
    model.to_onnx(written)
    onnx.checker.check_model(onnx.load(written), full_check=True)
    np.testing.assert_allclose(
        onnxruntime_scores(written, x), found, atol=TOLERANCE, rtol=TOLERANCE
    )
    np.testing.assert_allclose(
        onnxruntime_scores(written, x[:1]), found[:1], atol=TOLERANCE, rtol=TOLERANCE
    )
    back = LeNet.from_onnx(written)
    assert back.architecture == model.architecture
    assert list(back.weights) == list(model.weights)
    for key, value in model.weights.items():
        np.testing.assert_array_equal(back.weights[key], value, err_msg=key)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_read_graph_and_build_model_proto_without_the_model_class(name):
    """The graph reader and builder work on (weights, architecture) alone: a proto built from a
    member's random weights reads back to the same weights and architecture, and ONNX Runtime
    runs it to lenet_fast's outputs (RGB input, so the channel axis is exercised too)."""
    member = MEMBERS[name]
    weights = member_weights(member, in_channels=3, seed=7)
    architecture = {**member.architecture, **member.geometry}
    proto = build_model_proto(weights, architecture)
    read_weights, read_architecture = read_graph(proto)
    assert {option: read_architecture[option] for option in OPTIONS} == member.architecture
    assert same_geometry(read_architecture, member)
    # The same arrays in the same order; keras-same's flatten over 5x5 with one activation
    # throughout reads back as conv3 (the same function, as lenet_fast has always read it).
    assert len(read_weights) == len(weights)
    for (key, value), (read_key, read_value) in zip(weights.items(), read_weights.items()):
        assert read_key == key or (name == "keras-same" and read_value.size == value.size)
        np.testing.assert_array_equal(read_value.reshape(value.shape), value, err_msg=key)
    x = random_images(64, seed=3, in_channels=3, size=member.input_size)
    model = LeNet.from_onnx(proto)
    np.testing.assert_allclose(
        onnxruntime_scores(proto, x), model.forward(x), atol=TOLERANCE, rtol=TOLERANCE
    )


def test_onnx_module_does_not_import_the_model_class():
    tree = ast.parse(Path(lenet_onnx.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {"_model", "LeNet", "lenet_fast._model"} & imported, imported


def test_build_model_proto_refuses_what_is_not_a_member():
    member = MEMBERS["mnist-unpadded"]
    weights = {key: np.zeros(shape, np.float32) for key, shape in member.shapes().items()}
    architecture = {**member.architecture, **member.geometry}
    with pytest.raises(ValueError, match="fc1.weight"):
        build_model_proto(weights, {**architecture, "input_size": 32})
    with pytest.raises(ValueError, match="conv_activation must be one of"):
        build_model_proto(weights, {**architecture, "conv_activation": "softmax"})
    del weights["fc2.weight"], weights["fc2.bias"]
    with pytest.raises(ValueError, match="consecutive"):
        build_model_proto(weights, architecture)


# ---------------------------------------------------------------------------------------------
# Padding as Pad nodes and auto_pad; refusals naming the node
# ---------------------------------------------------------------------------------------------


def zero_padded_torch_lenet():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.ZeroPad2d(2),
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.ZeroPad2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    ).eval()


def test_zero_pad_modules_are_the_convolution_padding(tmp_path):
    """nn.ZeroPad2d(2) before each convolution, through torch's default (dynamo) exporter."""
    module = zero_padded_torch_lenet()
    path = tmp_path / "pads.onnx"
    export_onnx(module, torch.zeros(1, 1, 28, 28), path, dynamo=True)
    model = LeNet.from_onnx(path)
    assert (model.architecture["conv1_padding"], model.architecture["conv2_padding"]) == (2, 2)
    x = random_images(100, seed=0, size=28)
    with torch.no_grad():
        np.testing.assert_allclose(
            model.forward(x), module(torch.from_numpy(x)).numpy(), atol=TOLERANCE, rtol=TOLERANCE
        )


def test_pads_computed_by_a_subgraph_are_refused_naming_the_node(tmp_path):
    """The TorchScript exporter computes ZeroPad2d's pads with ConstantOfShape, Concat, ...:
    the reader does not run graphs, so it names the first such node."""
    path = tmp_path / "pads.onnx"
    export_onnx(zero_padded_torch_lenet(), torch.zeros(1, 1, 28, 28), path, dynamo=False)
    with pytest.raises(
        ONNXImportError,
        match=re.escape(
            "unsupported ConstantOfShape node '/0/ConstantOfShape': op type not in Conv, Gemm"
        ),
    ):
        read_graph(path)


# ---------------------------------------------------------------------------------------------
# Flattens as the exporters write them: computed target shapes, a fixed example batch
# ---------------------------------------------------------------------------------------------


ReshapingLeNet = torch_lenets().ReshapingLeNet
FLATTENS = ReshapingLeNet.FLATTENS


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("batch", ["dynamic", 1, 3])
@pytest.mark.parametrize("flatten", FLATTENS)
def test_flattens_load_as_exported_with_a_computed_shape_or_a_fixed_batch(
    tmp_path, flatten, batch, exporter
):
    """torch.onnx.export(net, (x,), path) fixes the batch at the example's (Reshape to [1, -1],
    [3, 256], ...); with a dynamic batch the TorchScript exporter computes x.size(0) with Shape,
    Gather, Unsqueeze, Concat (and Mul for a product of sizes).  Each loads with no warning and
    runs any batch as torch does."""
    torch.manual_seed(6)
    module = ReshapingLeNet(flatten=flatten).eval()
    path = tmp_path / "flatten.onnx"
    example = torch.zeros(1 if batch == "dynamic" else batch, 1, 28, 28)
    export_onnx(module, example, path, exporter == "dynamo", dynamic_batch=batch == "dynamic")
    ops = {node.op_type for node in onnx.load(path).graph.node}
    if exporter == "torchscript" and batch == "dynamic" and flatten != "flatten":
        # what this test is about
        assert {"Shape", "Gather", "Mul" if flatten == "view-product" else "Concat"} <= ops
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LeNet.from_onnx(path)
    x = random_images(37, seed=1, size=28)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), expected, rtol=TOLERANCE, atol=TOLERANCE)
    if batch != "dynamic":  # ONNX Runtime runs the graph at its own batch only
        np.testing.assert_allclose(
            model.forward(x[:batch]), onnxruntime_scores(path, x[:batch]), atol=TOLERANCE
        )


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 21])
def test_torchscript_exports_of_every_opset_load(tmp_path, opset):
    """d2l's LeNet with fresh BatchNorms (sigmoid, average pooling, conv1 padded by 2) through
    the TorchScript exporter at old and new opsets: equal initializers (the BatchNorms' ones and
    zeros) are shared through Identity nodes, and before opset 10 every AveragePool follows a
    Pad of nothing."""
    torch.manual_seed(11)
    module = torch_lenets().d2l(batchnorm=True).eval()
    path = tmp_path / "old.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(2, 1, 28, 28),), path, dynamo=False, opset_version=opset
        )
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "Identity" in ops and ("Pad" in ops) == (opset < 10)  # what this test is about
    model = LeNet.from_onnx(path)
    x = random_images(2, seed=3, size=28)
    np.testing.assert_allclose(model.forward(x), onnxruntime_scores(path, x), atol=TOLERANCE)
    x = random_images(65, seed=4, size=28)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("batch", ["dynamic", 2])
@pytest.mark.parametrize("reshape", ReshapingLeNet.INPUT_RESHAPES)
def test_a_graph_of_flat_images_reshaped_first_loads(tmp_path, reshape, batch, exporter):
    """A module taking flat (N, 784) or (N, 28, 28) images that it reshapes first exports a 2-D
    or 3-D graph input and a first Reshape or Unsqueeze: the model takes (N, 28, 28) images."""
    torch.manual_seed(13)
    module = ReshapingLeNet(reshape).eval()
    path = tmp_path / "flat.onnx"
    example = torch.zeros(1 if batch == "dynamic" else batch, *module.input_shape)
    export_onnx(module, example, path, exporter == "dynamo", dynamic_batch=batch == "dynamic")
    model = LeNet.from_onnx(path)
    assert model.architecture["input_size"] == (28, 28)
    x = random_images(37, seed=2, size=28)[:, 0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x.reshape(len(x), *module.input_shape))).numpy()
    np.testing.assert_allclose(model.forward(x), expected, rtol=TOLERANCE, atol=TOLERANCE)


def test_a_flat_input_not_reshaped_first_is_refused(lenet_graph):
    lenet_graph.graph.input[0].type.tensor_type.shape.dim.pop()
    reject(
        lenet_graph,
        "expected a 4-D image input (N, C, H, W), or flat or (N, H, W) images that a first "
        "Reshape to (N, C, H, W) or Unsqueeze(axes=[1]) makes so; found input 'images' with 3 "
        "axes",
    )


def nhwc_graph(keras_model, input_reshape=False):
    """A Keras LeNet as tf2onnx writes it: (N, H, W, C) input made (N, C, H, W) by a Transpose
    (by a Reshape where C = 1, tf2onnx's shortcut if `input_reshape`), Conv kernels in (O, I,
    H, W), a Transpose back to (N, H, W, C) before the Reshape that flattens, and MatMul + Add
    with Keras's own (inputs, units) kernels, so the first one reads (row, column, channel)."""
    _, height, width, channels = keras_model.inputs[0].shape
    nodes, initializers, data = [], [], "input_1"

    def add(op, inputs, weights=(), **attributes):
        nonlocal data
        names = []
        for value in weights:
            names.append(f"w{len(initializers)}")
            initializers.append(numpy_helper.from_array(np.asarray(value), names[-1]))
        output = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, [data, *inputs, *names], [output], **attributes))
        data = output

    if input_reshape:
        add("Reshape", [], [np.array([-1, channels, height, width], np.int64)])
    else:
        add("Transpose", [], perm=[0, 3, 1, 2])
    flattened = False
    for layer in keras_model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kernel, bias = layer.get_weights()
            pads = [2] * 4 if layer.padding == "same" else [0] * 4
            add("Conv", [], [kernel.transpose(3, 2, 0, 1), bias], pads=pads)
            add({"relu": "Relu", "tanh": "Tanh"}[layer.activation.__name__], [])
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            add(kind[:-9] + "Pool", [], kernel_shape=[2, 2], strides=[2, 2])
        elif kind == "Flatten":
            add("Transpose", [], perm=[0, 2, 3, 1])
            add("Reshape", [], [np.array([-1, layer.output.shape[1]], np.int64)])
            flattened = True
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            add("MatMul", [], [kernel])
            add("Add", [], [bias])
            activation = layer.activation.__name__
            if activation != "linear":
                add({"relu": "Relu", "tanh": "Tanh", "softmax": "Softmax"}[activation], [])
    assert flattened
    graph = helper.make_graph(
        nodes,
        "tf2onnx-like",
        [helper.make_tensor_value_info("input_1", 1, [None, height, width, channels])],
        [helper.make_tensor_value_info(data, 1, [None, 10])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


# tf2onnx makes a one-channel input (N, C, H, W) with a Reshape instead of a Transpose.
@pytest.mark.parametrize(
    "channels, input_reshape",
    [(1, False), (3, False), (1, True)],
    ids=["1-transpose", "3-transpose", "1-reshape"],
)
def test_a_channels_last_graph_as_tf2onnx_writes_it(channels, input_reshape):
    os.environ.setdefault("KERAS_BACKEND", "torch")  # as tests/test_keras.py: no TensorFlow
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("needs Keras with the PyTorch backend (KERAS_BACKEND=torch)")
    keras.utils.set_random_seed(14)
    keras_model = keras_same_lenet(channels, dense=(120,))
    proto = nhwc_graph(keras_model, input_reshape)
    onnx.checker.check_model(proto)
    x = random_images(64, seed=5, in_channels=channels, size=28)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    expected = np.asarray(keras_model.predict(nhwc, verbose=0))
    np.testing.assert_allclose(onnxruntime_scores(proto, nhwc), expected, atol=TOLERANCE)
    model = LeNet.from_onnx(proto)
    assert model.architecture["input_size"] == (28, 28)
    np.testing.assert_allclose(model.forward(x), expected, atol=TOLERANCE, rtol=TOLERANCE)


def test_a_transpose_not_before_the_flatten_is_refused(lenet_graph):
    insert_after(lenet_graph, "conv2", "Transpose", "to_nhwc", perm=[0, 2, 3, 1])
    reject(
        lenet_graph,
        "unsupported Transpose node 'to_nhwc': expected a Transpose to (N, H, W, C) only "
        "directly before the flatten, found Relu node 'conv2_relu' after it",
    )


@pytest.fixture
def size0_graph(tmp_path):
    """ReshapingLeNet(flatten="view-size0") through the TorchScript exporter with a dynamic batch."""
    torch.manual_seed(7)
    path = tmp_path / "size0.onnx"
    export_onnx(ReshapingLeNet(flatten="view-size0"), torch.zeros(1, 1, 28, 28), path, dynamo=False)
    return onnx.load(path)


def test_computed_target_shapes_that_are_not_a_flatten_are_refused(size0_graph):
    (gather,) = [node for node in size0_graph.graph.node if node.op_type == "Gather"]
    (indices,) = [node for node in size0_graph.graph.node if node.output[0] == gather.input[1]]
    indices.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(1, np.int64)))
    reject(
        size0_graph,
        "unsupported Reshape node '/Reshape': expected a flatten to (batch, features), found "
        "target shape [/MaxPool_1_output_0[1], -1]",
    )


def test_a_fixed_batch_other_than_the_inputs_is_refused(tmp_path):
    torch.manual_seed(8)
    path = tmp_path / "fixed.onnx"
    export_onnx(ReshapingLeNet(), torch.zeros(4, 1, 28, 28), path, True, False)
    proto = onnx.load(path)
    (reshape,) = [node for node in proto.graph.node if node.op_type == "Reshape"]
    (target,) = [tensor for tensor in proto.graph.initializer if tensor.name == reshape.input[1]]
    assert numpy_helper.to_array(target).tolist() == [4, 256]
    target.CopyFrom(numpy_helper.from_array(np.array([2, 512], np.int64), target.name))
    reject(
        proto,
        f"unsupported Reshape node {reshape.name!r}: expected a flatten to (batch, features), "
        f"found target shape [2, 512]",
    )


def test_shape_arithmetic_on_the_images_themselves_is_refused(lenet_graph):
    insert_after(lenet_graph, "fc2", "Mul", "scale", ["two"], [("two", np.array(2.0, np.float32))])
    reject(
        lenet_graph,
        "unsupported Mul node 'scale': expected Mul only in the arithmetic of a Reshape's "
        "target shape, found it on tensor 'fc2' of the chain",
    )


def test_from_onnx_takes_the_serialized_bytes(tmp_path, size0_graph):
    path = tmp_path / "size0.onnx"
    save_model(size0_graph, path)
    model = LeNet.from_onnx(path.read_bytes())
    for key, value in LeNet.from_onnx(path).weights.items():
        np.testing.assert_array_equal(model.weights[key], value, err_msg=key)
    with pytest.raises(
        ONNXImportError, match="^ONNX model: expected a serialized ONNX model, found unreadable"
    ):
        LeNet.from_onnx(b"\x08\x07\xff\xff")


@pytest.fixture
def keras_same_graph():
    """The keras-same member as our own graph (conv1 with pads [2, 2, 2, 2])."""
    member = MEMBERS["keras-same"]
    weights = member_weights(member, seed=2)
    return build_model_proto(weights, {**member.architecture, **member.geometry})


def pad_before(proto, conv_name, pads, constant=None, mode=None):
    """Insert a Pad node in front of the named Conv."""
    conv = node_named(proto, conv_name)
    inputs = [conv.input[0], f"{conv_name}_pads"]
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array(pads, np.int64), f"{conv_name}_pads")
    )
    if constant is not None:
        inputs.append(f"{conv_name}_value")
        proto.graph.initializer.append(
            numpy_helper.from_array(np.array(constant, np.float32), f"{conv_name}_value")
        )
    attributes = {} if mode is None else {"mode": mode}
    pad = helper.make_node(
        "Pad", inputs, [f"{conv_name}_padded"], name=f"{conv_name}_pad", **attributes
    )
    conv.input[0] = f"{conv_name}_padded"
    proto.graph.node.insert(list(proto.graph.node).index(conv), pad)


def test_pad_node_and_auto_pad_read_as_padding_2(keras_same_graph):
    expected_weights, expected = read_graph(keras_same_graph)
    as_pad = onnx.ModelProto()
    as_pad.CopyFrom(keras_same_graph)
    set_attribute(node_named(as_pad, "conv1"), "pads")
    pad_before(as_pad, "conv1", [0, 0, 2, 2, 0, 0, 2, 2], constant=0.0)
    as_auto = onnx.ModelProto()
    as_auto.CopyFrom(keras_same_graph)
    set_attribute(node_named(as_auto, "conv1"), "pads")
    set_attribute(node_named(as_auto, "conv1"), "auto_pad", "SAME_UPPER")
    x = random_images(20, seed=0, size=28)
    for proto in (as_pad, as_auto):
        onnx.checker.check_model(proto)
        weights, architecture = read_graph(proto)
        assert architecture == expected
        for key, value in expected_weights.items():
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
        np.testing.assert_allclose(
            onnxruntime_scores(proto, x),
            onnxruntime_scores(keras_same_graph, x),
            atol=TOLERANCE,
            rtol=TOLERANCE,
        )


def refuse(proto, message):
    with pytest.raises(ONNXImportError, match=f"^{re.escape('ONNX model: ' + message)}"):
        read_graph(proto)


def test_pad_refusals_name_the_node(keras_same_graph):
    cases = [
        (
            {"pads": [0, 0, 2, 2, 0, 0, 2, 2], "constant": 1.0},
            "unsupported Pad node 'conv2_pad': expected zero padding, found constant value [1.0]",
        ),
        (
            {"pads": [0, 0, 1, 1, 0, 0, 1, 1]},
            "unsupported Pad node 'conv2_pad': expected pads [0, 0, 2, 2, 0, 0, 2, 2] (2 zeros "
            "around each image), found [0, 0, 1, 1, 0, 0, 1, 1]",
        ),
        (
            {"pads": [0, 0, 2, 2, 0, 0, 2, 2], "mode": "reflect"},
            "unsupported Pad node 'conv2_pad': expected mode 'constant', found 'reflect'",
        ),
    ]
    for arguments, message in cases:
        proto = onnx.ModelProto()
        proto.CopyFrom(keras_same_graph)
        pad_before(proto, "conv2", **arguments)
        refuse(proto, message)
    # Padding 2 from a Pad and 2 more from the Conv is 4: not in the family.
    proto = onnx.ModelProto()
    proto.CopyFrom(keras_same_graph)
    pad_before(proto, "conv1", [0, 0, 2, 2, 0, 0, 2, 2])
    refuse(
        proto,
        "unsupported Conv node 'conv1': padded by 2 after Pad node 'conv1_pad' padded "
        "by 2: expected 0 or 2 in all",
    )
    # A Pad that a Conv does not directly follow.
    proto = onnx.ModelProto()
    proto.CopyFrom(keras_same_graph)
    pool = node_named(proto, "conv1_pool")
    pad = helper.make_node("Pad", [pool.input[0], "pads"], ["late_padded"], name="late_pad")
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64), "pads")
    )
    pool.input[0] = "late_padded"
    proto.graph.node.insert(list(proto.graph.node).index(pool), pad)
    refuse(
        proto,
        "unsupported Pad node 'late_pad': expected a Pad only directly before a Conv, "
        "found AveragePool node 'conv1_pool' after it",
    )


def test_geometry_refusals_name_the_node(tmp_path):
    # 30x30, unpadded: conv2 gives 9x9, which 2x2 pooling does not divide.
    module = nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    path = tmp_path / "odd.onnx"
    export_onnx(module.eval(), torch.zeros(1, 1, 30, 30), path, dynamo=False)
    with pytest.raises(
        ONNXImportError,
        match=re.escape("unsupported Conv node '/0/Conv': conv2 gives a height of 9 (odd)"),
    ):
        read_graph(path)
    # conv3 over a 6x6 map (32x32 input, conv1 padded): not a full-window convolution.
    module = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(120 * 2 * 2, 10),
    )
    path = tmp_path / "conv3.onnx"
    export_onnx(module.eval(), torch.zeros(1, 1, 32, 32), path, dynamo=False)
    with pytest.raises(
        ONNXImportError,
        match=re.escape(
            "unsupported Conv node '/6/Conv': conv3 must see a 5x5 map (it is a full-window "
            "convolution); a 32x32 input with padding 2 on conv1 and 0 on conv2 gives 6x6"
        ),
    ):
        read_graph(path)


def test_hidden_dense_layers_must_share_an_activation(tmp_path):
    module = torch_lenets().member("mnist-unpadded")
    module[8] = nn.Tanh()  # after fc1; fc2 keeps ReLU
    path = tmp_path / "mixed.onnx"
    export_onnx(module, torch.zeros(1, 1, 28, 28), path, dynamo=False)
    with pytest.raises(
        ONNXImportError,
        match=re.escape(
            "fc_activation must be the same after fc1 and fc2; found tanh after fc1, relu after fc2"
        ),
    ):
        read_graph(path)


def tf2onnx_flatten(proto, squeeze):
    """`proto` (the TorchScript exporter's x.view(x.size(0), -1): Shape -> Gather(0) ->
    Unsqueeze -> Concat) with the batch taken as tf2onnx takes it: the shape cast to int32,
    sliced to its first element and cast back (Shape -> Cast -> Slice -> Cast), or, with
    `squeeze`, sliced, squeezed to a scalar and unsqueezed again."""
    graph = proto.graph
    (gather,) = [node for node in graph.node if node.op_type == "Gather"]
    (unsqueeze,) = [node for node in graph.node if node.op_type == "Unsqueeze"]
    position = list(graph.node).index(gather)
    for name, value in (("starts", [0]), ("ends", [1]), ("axes", [0])):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"tf_{name}"))
    shape = gather.input[0]
    new = [
        helper.make_node(
            "Cast", [shape], ["tf_shape32"], name="tf_cast32", to=onnx.TensorProto.INT32
        ),
        helper.make_node(
            "Slice",
            ["tf_shape32", "tf_starts", "tf_ends", "tf_axes"],
            ["tf_first"],
            name="tf_slice",
        ),
    ]
    first = "tf_first"
    if squeeze:
        new += [
            helper.make_node("Squeeze", [first, "tf_axes"], ["tf_batch"], name="tf_squeeze"),
            helper.make_node(
                "Unsqueeze", ["tf_batch", "tf_axes"], ["tf_first1"], name="tf_unsqueeze"
            ),
        ]
        first = "tf_first1"
    new.append(
        helper.make_node(
            "Cast", [first], [unsqueeze.output[0]], name="tf_cast64", to=onnx.TensorProto.INT64
        )
    )
    graph.node.remove(gather)
    graph.node.remove(unsqueeze)
    for offset, node in enumerate(new):
        graph.node.insert(position + offset, node)
    return proto


@pytest.mark.parametrize("squeeze", [False, True], ids=["slice", "slice-squeeze"])
def test_a_batch_sliced_and_cast_as_tf2onnx_computes_it_loads(tmp_path, size0_graph, squeeze):
    """tf2onnx computes a flatten's batch with Cast, Slice (and Squeeze): read like the
    TorchScript exporter's Gather, the same model, ONNX Runtime's scores."""
    path = tmp_path / "size0.onnx"
    save_model(size0_graph, path)
    expected = LeNet.from_onnx(path)
    proto = tf2onnx_flatten(onnx.load(path), squeeze)
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert {"Cast", "Slice"} <= ops and "Gather" not in ops
    model = LeNet.from_onnx(proto.SerializeToString())
    for key, value in expected.weights.items():
        np.testing.assert_array_equal(model.weights[key], value, err_msg=key)
    x = random_images(5, size=28)
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (scores,) = session.run(None, {proto.graph.input[0].name: x})
    np.testing.assert_allclose(model.forward(x), scores, rtol=1e-5, atol=1e-5)


def test_a_slice_that_is_not_the_batch_is_refused(tmp_path, size0_graph):
    proto = tf2onnx_flatten(size0_graph, squeeze=False)
    (ends,) = [tensor for tensor in proto.graph.initializer if tensor.name == "tf_ends"]
    ends.CopyFrom(numpy_helper.from_array(np.array([2], np.int64), "tf_ends"))
    reject(
        proto,
        "unsupported Reshape node '/Reshape': expected a flatten to (batch, features), found "
        "target shape [N, /MaxPool_1_output_0[1], -1]",
    )
    cast = node_named(proto, "tf_cast32")
    set_attribute(cast, "to", onnx.TensorProto.FLOAT)
    reject(
        proto,
        "unsupported Cast node 'tf_cast32': expected a cast of a shape to int32 or int64 "
        "(to=6 or 7), found to=1",
    )


def test_shape_slices_and_squeezes_of_older_opsets_read_their_attributes():
    """Before opset 10 Slice, and before opset 13 Squeeze and Unsqueeze, take attributes."""
    shape = (False, [(1, ("N",)), (1, (("x", 1),)), (1, (("x", 2),))])
    symbolic = {"shape": shape}

    def value(op, inputs, **attributes):
        node = helper.make_node(op, inputs, ["out"], name=op.lower(), **attributes)
        return lenet_onnx._shape_arithmetic(node, lenet_onnx._attributes(node), symbolic, {}, {})

    assert value("Slice", ["shape"], starts=[0], ends=[1]) == (False, [(1, ("N",))])
    assert value("Slice", ["shape"], starts=[1], ends=[99], axes=[0]) == (False, shape[1][1:])
    symbolic["first"] = (False, [(1, ("N",))])
    assert value("Squeeze", ["first"], axes=[0]) == (True, [(1, ("N",))])
    symbolic["batch"] = (True, [(1, ("N",))])
    assert value("Unsqueeze", ["batch"], axes=[0]) == (False, [(1, ("N",))])
    with pytest.raises(ONNXImportError, match="expected a slice of a 1-D shape along axis 0"):
        value("Slice", ["shape"], starts=[0, 0], ends=[1, 1], axes=[0, 1])
    with pytest.raises(ONNXImportError, match="expected a 1-element shape made a scalar"):
        value("Squeeze", ["shape"], axes=[0])
