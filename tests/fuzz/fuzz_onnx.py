"""Fuzz target: bytes -> lenet_fast.onnx.read_graph (the ONNX importer).

Every input must import or raise ONNXImportError; anything else (another exception, a crash, a
hang, runaway memory) is a bug.  The first byte picks how the rest is used:

* 0: the whole file, as is (mutations of serialized models reach the protobuf decoder and,
  when they still decode, every check of the importer);
* 1: a graph built from choices: a chain of nodes of supported and unsupported op types with
  fuzzed attributes, and initializers with fuzzed dims, data types and raw bytes, so that
  mutations reach the graph walk and the tensor decoding without first breaking protobuf.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness

with _harness.instrumented_imports():
    from lenet_fast.onnx import ONNXImportError, read_graph

from onnx import TensorProto, helper

OPS = [
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "MaxPool",
    "AveragePool",
    "Flatten",
    "Reshape",
    "Pad",
    "Identity",
    "Constant",
    "BatchNormalization",
    "Shape",
    "Gather",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "Concat",
    "Mul",
    "Transpose",
]
ATTRIBUTES = [
    "kernel_shape",
    "strides",
    "pads",
    "dilations",
    "group",
    "transB",
    "axis",
    "alpha",
    "auto_pad",
    "value_ints",
    "value_float",
    "perm",
    "axes",
    "start",
    "end",
    "starts",
    "ends",
    "to",
]
DATA_TYPES = [
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.DOUBLE,
    TensorProto.INT64,
    TensorProto.INT32,
    TensorProto.UINT8,
    0,
    99,
]
_DIRECTORY = tempfile.mkdtemp(
    prefix="fuzz-onnx-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)
PATH = os.path.join(_DIRECTORY, "model.onnx")


def _attribute(reader, name):
    if name in ("kernel_shape", "strides", "pads", "dilations", "value_ints", "perm", "axes"):
        return [reader.integer(-2, 6) for _ in range(reader.integer(0, 4))]
    if name == "alpha" or name == "value_float":
        return reader.integer(-2, 2) / 2
    if name == "auto_pad":
        return reader.choice(["NOTSET", "VALID", "SAME_UPPER"])
    return reader.integer(-2, 3)


def build_graph(reader):
    names = ["images"]
    initializers = []
    for index in range(reader.integer(0, 12)):
        dims = [reader.integer(0, 130) for _ in range(reader.integer(0, 4))]
        tensor = helper.make_tensor_value_info(f"w{index}", TensorProto.FLOAT, dims)
        proto = TensorProto(name=f"w{index}", dims=dims, data_type=reader.choice(DATA_TYPES))
        proto.raw_data = reader.take(reader.integer(0, 2048))
        initializers.append(proto)
        names.append(tensor.name)
    nodes = []
    current = "images"
    for index in range(reader.integer(0, 24)):
        op = reader.choice(OPS)
        inputs = [current] + [reader.choice(names) for _ in range(reader.integer(0, 3))]
        if op == "Constant":
            inputs = []
        attributes = {}
        for _ in range(reader.integer(0, 3)):
            name = reader.choice(ATTRIBUTES)
            attributes[name] = _attribute(reader, name)
        output = f"t{index}"
        nodes.append(helper.make_node(op, inputs, [output], name=f"n{index}", **attributes))
        names.append(output)
        if op != "Constant":
            current = output
    size = reader.choice([28, 32, 0])
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    return helper.make_model(graph).SerializeToString()


def build_file(data):
    reader = _harness.ByteReader(data)
    if reader.byte() % 2 == 0:
        return reader.rest()
    return build_graph(reader)


def test_one_input(data):
    try:
        content = build_file(data)
    except (ValueError, TypeError):  # helper.make_* refusing a combination: not our code
        return
    with open(PATH, "wb") as file:
        file.write(content)
    try:
        read_graph(PATH)
    except ONNXImportError:
        pass


if __name__ == "__main__":
    _harness.run(test_one_input, "onnx")
