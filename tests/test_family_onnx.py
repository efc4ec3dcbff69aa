"""ONNX interop for the whole LeNet family (issue 12).

Every named member goes torch -> ONNX (``torch.onnx.export``, both exporters) -> lenet_fast (equal
to torch) -> ONNX (`build_model_proto`) -> ONNX Runtime (equal to lenet_fast) -> lenet_fast (the
same weights); the graph reader works on its own (no model class), reads Pad nodes and
``auto_pad``, and refuses what the family does not hold, naming the node.  bench/family.py runs.
"""

import ast
import os
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # the test extra installs it: a skip here means a broken env
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import lenet_fast.onnx as lenet_onnx  # noqa: E402
from lenet_fast import LeNet  # noqa: E402
from lenet_fast._architecture import MEMBERS, normalize_geometry  # noqa: E402
from lenet_fast.onnx import ONNXImportError, build_model_proto, read_graph  # noqa: E402

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
OPTIONS = ("conv_activation", "fc_activation", "output_activation", "pool")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")

_TORCH_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                      "identity": nn.Identity, "softmax": lambda: nn.Softmax(dim=1)}
_TORCH_POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def torch_member(name, in_channels=1, seed=0):
    """The named member as a PyTorch nn.Sequential (random initial weights)."""
    member = MEMBERS[name]
    architecture = member.architecture
    torch.manual_seed(seed)

    def act(option):
        return _TORCH_ACTIVATIONS[architecture[option]]()

    pool = _TORCH_POOLS[architecture["pool"]]
    c1, c2, c3 = member.conv1_channels, member.conv2_channels, member.conv3_channels
    modules = [nn.Conv2d(in_channels, c1, 5, padding=member.conv1_padding), act("conv_activation"),
               pool(2), nn.Conv2d(c1, c2, 5, padding=member.conv2_padding),
               act("conv_activation"), pool(2)]
    side = member.input_size + 2 * member.conv1_padding - 4
    side = (side // 2 + 2 * member.conv2_padding - 4) // 2
    features = c2 * side * side
    if c3:
        modules += [nn.Conv2d(c2, c3, 5), act("conv_activation")]
        features = c3
    modules.append(nn.Flatten())
    for index, units in enumerate(member.dense_units):
        modules.append(nn.Linear(features, units))
        last = index == len(member.dense_units) - 1
        modules.append(act("output_activation" if last else "fc_activation"))
        features = units
    return nn.Sequential(*modules).eval()


def random_weights(member, in_channels=1, seed=0):
    """A member's weights, uniform within PyTorch's default bound 1 / sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in member.shapes(in_channels=in_channels).items():
        fan_in = np.prod(shape[1:]) if key.endswith(".weight") else shape[0]
        weights[key] = rng.uniform(-1, 1, shape).astype(np.float32) / np.float32(np.sqrt(fan_in))
    return weights


def export(module, example, path, dynamo):
    """torch.onnx.export with a dynamic batch axis, with either of torch's exporters."""
    if dynamo:
        torch.onnx.export(module, (example,), path, opset_version=17, dynamo=True,
                          input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    else:
        torch.onnx.export(module, (example,), path, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def images(n, channels, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, channels, size, size),
                                                       dtype=np.float32)


def onnxruntime_scores(proto_or_path, x):
    content = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) \
        else str(proto_or_path)
    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def same_geometry(architecture, member):
    return normalize_geometry(architecture) == normalize_geometry(member.geometry)


# ---------------------------------------------------------------------------------------------
# ONNX round trips of every member
# ---------------------------------------------------------------------------------------------

ROUND_TRIPS = [(name, dynamo) for name in MEMBERS for dynamo in (False, True)]


@pytest.mark.parametrize("name, dynamo", ROUND_TRIPS,
                         ids=[f"{name}-{'dynamo' if dynamo else 'torchscript'}"
                              for name, dynamo in ROUND_TRIPS])
def test_onnx_round_trip_of_every_member(tmp_path, name, dynamo):
    member = MEMBERS[name]
    module = torch_member(name)
    size = member.input_size
    path = tmp_path / f"{name}.onnx"
    export(module, torch.zeros(2, 1, size, size), path, dynamo)

    model = LeNet.from_onnx(path)
    assert {option: model.architecture[option] for option in OPTIONS} == member.architecture
    assert same_geometry(model.architecture, member)
    x = images(300, 1, size)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    found = model.forward(x)
    np.testing.assert_allclose(found, expected, **TOLERANCE)
    assert np.mean(found.argmax(axis=1) == expected.argmax(axis=1)) >= 0.999

    written = tmp_path / "written.onnx"
    model.to_onnx(written)
    onnx.checker.check_model(onnx.load(written), full_check=True)
    np.testing.assert_allclose(onnxruntime_scores(written, x), found, **TOLERANCE)
    np.testing.assert_allclose(onnxruntime_scores(written, x[:1]), found[:1], **TOLERANCE)
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
    weights = random_weights(member, in_channels=3, seed=7)
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
    x = images(64, 3, member.input_size, seed=3)
    model = LeNet.from_onnx(proto)
    np.testing.assert_allclose(onnxruntime_scores(proto, x), model.forward(x), **TOLERANCE)


def test_onnx_module_does_not_import_the_model_class():
    tree = ast.parse(Path(lenet_onnx.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
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
        nn.ZeroPad2d(2), nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.ZeroPad2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()


def test_zero_pad_modules_are_the_convolution_padding(tmp_path):
    """nn.ZeroPad2d(2) before each convolution, through torch's default (dynamo) exporter."""
    module = zero_padded_torch_lenet()
    path = tmp_path / "pads.onnx"
    export(module, torch.zeros(1, 1, 28, 28), path, dynamo=True)
    model = LeNet.from_onnx(path)
    assert (model.architecture["conv1_padding"], model.architecture["conv2_padding"]) == (2, 2)
    x = images(100, 1, 28)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x), module(torch.from_numpy(x)).numpy(),
                                   **TOLERANCE)


def test_pads_computed_by_a_subgraph_are_refused_naming_the_node(tmp_path):
    """The TorchScript exporter computes ZeroPad2d's pads with ConstantOfShape, Concat, ...:
    the reader does not run graphs, so it names the first such node."""
    path = tmp_path / "pads.onnx"
    export(zero_padded_torch_lenet(), torch.zeros(1, 1, 28, 28), path, dynamo=False)
    with pytest.raises(ONNXImportError, match=re.escape(
            "unsupported ConstantOfShape node '/0/ConstantOfShape': op type not in Conv, Gemm")):
        read_graph(path)


@pytest.fixture
def keras_same_graph():
    """The keras-same member as our own graph (conv1 with pads [2, 2, 2, 2])."""
    member = MEMBERS["keras-same"]
    weights = random_weights(member, seed=2)
    return build_model_proto(weights, {**member.architecture, **member.geometry})


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


def pad_before(proto, conv_name, pads, constant=None, mode=None):
    """Insert a Pad node in front of the named Conv."""
    conv = node_named(proto, conv_name)
    inputs = [conv.input[0], f"{conv_name}_pads"]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(pads, np.int64),
                                                           f"{conv_name}_pads"))
    if constant is not None:
        inputs.append(f"{conv_name}_value")
        proto.graph.initializer.append(numpy_helper.from_array(np.array(constant, np.float32),
                                                               f"{conv_name}_value"))
    attributes = {} if mode is None else {"mode": mode}
    pad = helper.make_node("Pad", inputs, [f"{conv_name}_padded"], name=f"{conv_name}_pad",
                           **attributes)
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
    x = images(20, 1, 28)
    for proto in (as_pad, as_auto):
        onnx.checker.check_model(proto)
        weights, architecture = read_graph(proto)
        assert architecture == expected
        for key, value in expected_weights.items():
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
        np.testing.assert_allclose(onnxruntime_scores(proto, x),
                                   onnxruntime_scores(keras_same_graph, x), **TOLERANCE)


def refuse(proto, message):
    with pytest.raises(ONNXImportError, match=f"^{re.escape('ONNX model: ' + message)}"):
        read_graph(proto)


def test_pad_refusals_name_the_node(keras_same_graph):
    cases = [
        (dict(pads=[0, 0, 2, 2, 0, 0, 2, 2], constant=1.0),
         "unsupported Pad node 'conv2_pad': expected zero padding, found constant value [1.0]"),
        (dict(pads=[0, 0, 1, 1, 0, 0, 1, 1]),
         "unsupported Pad node 'conv2_pad': expected pads [0, 0, 2, 2, 0, 0, 2, 2] (2 zeros "
         "around each image), found [0, 0, 1, 1, 0, 0, 1, 1]"),
        (dict(pads=[0, 0, 2, 2, 0, 0, 2, 2], mode="reflect"),
         "unsupported Pad node 'conv2_pad': expected mode 'constant', found 'reflect'"),
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
    refuse(proto, "unsupported Conv node 'conv1': padded by 2 after Pad node 'conv1_pad' padded "
                  "by 2: expected 0 or 2 in all")
    # A Pad that a Conv does not directly follow.
    proto = onnx.ModelProto()
    proto.CopyFrom(keras_same_graph)
    pool = node_named(proto, "conv1_pool")
    pad = helper.make_node("Pad", [pool.input[0], "pads"], ["late_padded"], name="late_pad")
    proto.graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64), "pads"))
    pool.input[0] = "late_padded"
    proto.graph.node.insert(list(proto.graph.node).index(pool), pad)
    refuse(proto, "unsupported Pad node 'late_pad': expected a Pad only directly before a Conv, "
                  "found AveragePool node 'conv1_pool' after it")


def test_geometry_refusals_name_the_node(tmp_path):
    # 30x30, unpadded: conv2 gives 9x9, which 2x2 pooling does not divide.
    module = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                           nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    path = tmp_path / "odd.onnx"
    export(module.eval(), torch.zeros(1, 1, 30, 30), path, dynamo=False)
    with pytest.raises(ONNXImportError, match=re.escape(
            "unsupported Conv node '/0/Conv': conv2 gives a height of 9 (odd)")):
        read_graph(path)
    # conv3 over a 6x6 map (32x32 input, conv1 padded): not a full-window convolution.
    module = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 120, 5),
                           nn.ReLU(), nn.Flatten(), nn.Linear(120 * 2 * 2, 10))
    path = tmp_path / "conv3.onnx"
    export(module.eval(), torch.zeros(1, 1, 32, 32), path, dynamo=False)
    with pytest.raises(ONNXImportError, match=re.escape(
            "unsupported Conv node '/6/Conv': conv3 must see a 5x5 map (it is a full-window "
            "convolution); a 32x32 input with padding 2 on conv1 and 0 on conv2 gives 6x6")):
        read_graph(path)


def test_hidden_dense_layers_must_share_an_activation(tmp_path):
    module = torch_member("mnist-unpadded")
    module[8] = nn.Tanh()      # after fc1; fc2 keeps ReLU
    path = tmp_path / "mixed.onnx"
    export(module, torch.zeros(1, 1, 28, 28), path, dynamo=False)
    with pytest.raises(ONNXImportError, match=re.escape(
            "fc_activation must be the same after fc1 and fc2; found tanh after fc1, relu after "
            "fc2")):
        read_graph(path)


# ---------------------------------------------------------------------------------------------
# bench/family.py runs (no timing assertion: the numbers belong in its report)
# ---------------------------------------------------------------------------------------------

def test_family_benchmark_prints_a_table_per_member():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "family.py").is_file():
        pytest.skip("bench/ is not beside tests/ (an installed package's tests)")
    result = subprocess.run(
        [sys.executable, "-m", "bench.family", "--members", "caffe", "mnist-unpadded",
         "--batches", "1", "3", "--threads", "1", "--repeats", "1", "--min-seconds", "0.001"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert result.returncode == 0, result.stderr
    assert "caffe: 1x28x28 input, 2,293,000 multiply-adds per image" in result.stdout
    assert "mnist-unpadded: 1x28x28 input, 281,640 multiply-adds per image" in result.stdout
    rows = re.findall(r"^\| (\d+) \| 1 \| [\d,]+ \| [\d,]+ \| [\d.]+x \| [\d.]+% \|$",
                      result.stdout, re.MULTILINE)
    assert rows == ["1", "3", "1", "3"], result.stdout
