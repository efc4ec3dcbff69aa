"""Write the seed corpora under corpus/<target>/ (run from anywhere; small, deterministic files).

The seeds are valid inputs, encoded the way each target decodes its bytes, so that mutation
starts from files that get through every layer.
"""

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fuzz_npz import MEMBER_NAMES  # noqa: E402

from lenet_fast import LeNet  # noqa: E402
from lenet_fast.datasets import write_idx  # noqa: E402


def tiny_weights(in_channels=1, widths=(2, 3, 4, 3, 2)):
    c1, c2, c3, f1, classes = widths
    rng = np.random.default_rng(0)
    shapes = {
        "conv1.weight": (c1, in_channels, 5, 5),
        "conv1.bias": (c1,),
        "conv2.weight": (c2, c1, 5, 5),
        "conv2.bias": (c2,),
        "conv3.weight": (c3, c2, 5, 5),
        "conv3.bias": (c3,),
        "fc1.weight": (f1, c3),
        "fc1.bias": (f1,),
        "fc2.weight": (classes, f1),
        "fc2.bias": (classes,),
    }
    return {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}


def write(target, name, data):
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def npz_seeds(tmp):
    model = LeNet(tiny_weights(), pool="avg", metadata={"note": "seed"})
    model.save_npz(tmp / "model.npz")
    saved = (tmp / "model.npz").read_bytes()
    write("npz", "raw-save-npz", b"\0" + saved)
    weights = tiny_weights(3)
    tutorial = {
        "conv1.weight": weights["conv1.weight"],
        "conv1.bias": weights["conv1.bias"],
        "conv2.weight": weights["conv2.weight"],
        "conv2.bias": weights["conv2.bias"],
        "fc1.weight": weights["conv3.weight"].reshape(4, -1),
        "fc1.bias": weights["conv3.bias"],
        "fc2.weight": weights["fc1.weight"],
        "fc2.bias": weights["fc1.bias"],
        "fc3.weight": weights["fc2.weight"].astype(">f8"),
        "fc3.bias": weights["fc2.bias"],
    }
    np.savez_compressed(tmp / "tutorial.npz", **tutorial)
    write("npz", "raw-savez-compressed-tutorial", b"\0" + (tmp / "tutorial.npz").read_bytes())
    with zipfile.ZipFile(io.BytesIO(saved)) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    encoded = bytearray([1, 0, len(members)])
    for name, content in members:
        encoded += bytes([MEMBER_NAMES.index(name)]) + len(content).to_bytes(2, "big") + content
    write("npz", "members", bytes(encoded))
    encoded = bytearray([2, 1, len(members)])
    for name, content in members:
        header_length = int.from_bytes(content[8:10], "little")
        header = content[10 : 10 + header_length].rstrip(b" \n")
        data = content[10 + header_length :]
        encoded += (
            bytes([MEMBER_NAMES.index(name), len(header)])
            + header
            + bytes([0])
            + len(data).to_bytes(2, "big")
            + data
        )
    write("npz", "headers", bytes(encoded))


def idx_seeds(tmp):
    rng = np.random.default_rng(0)
    for name, array in [
        ("images-u8", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
        ("labels-u8", np.arange(10, dtype=np.uint8)),
        ("floats-f4", rng.normal(size=(2, 3)).astype(np.float32)),
        ("ints-i2", np.arange(-3, 3, dtype=np.int16).reshape(2, 3, 1)),
    ]:
        write_idx(tmp / name, array)
        write("idx", f"raw-{name}", b"\0" + (tmp / name).read_bytes())
        write("idx", f"gzip-{name}", b"\1" + (tmp / name).read_bytes())


def onnx_seeds(tmp):
    LeNet(tiny_weights(), output_activation="softmax").to_onnx(tmp / "model.onnx")
    write("onnx", "raw-lenet", b"\0" + (tmp / "model.onnx").read_bytes())
    LeNet(tiny_weights(3), pool="avg", conv_activation="tanh").to_onnx(tmp / "model.onnx")
    write("onnx", "raw-lenet-rgb-avg", b"\0" + (tmp / "model.onnx").read_bytes())
    rng = np.random.default_rng(0)
    for index in range(3):
        write("onnx", f"graph-{index}", b"\1" + rng.bytes(300))
    onnx_export_seeds(tmp)


def onnx_export_seeds(tmp):
    """Graphs as exporters write them, of a tiny unpadded LeNet (2 and 3 channels, 10 classes):
    torch's default export at a fixed batch (Reshape to [1, -1]), the TorchScript exporter's
    computed x.view(x.size(0), -1) (Shape, Gather, Unsqueeze, Concat), flat input reshaped
    first, and tf2onnx's channels-last Transposes."""
    import warnings

    import onnx
    import torch
    from onnx import helper, numpy_helper

    class Tiny(torch.nn.Module):
        def __init__(self, flat=False):
            super().__init__()
            self.flat = flat
            self.conv1, self.conv2 = torch.nn.Conv2d(1, 2, 5), torch.nn.Conv2d(2, 3, 5)
            self.fc1 = torch.nn.Linear(48, 10)

        def forward(self, x):
            if self.flat:
                x = x.reshape(x.size(0), 1, 28, 28)
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc1(x.view(x.size(0), -1))

    torch.manual_seed(0)
    for name, flat, dynamo in (
        ("export-fixed-batch", False, True),
        ("export-size0", False, False),
        ("export-flat-input", True, False),
    ):
        module = Tiny(flat).eval()
        example = torch.zeros(1, 784) if flat else torch.zeros(1, 1, 28, 28)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                torch.onnx.export(
                    module, (example,), tmp / "export.onnx", dynamo=True, external_data=False
                )
            else:
                torch.onnx.export(
                    module,
                    (example,),
                    tmp / "export.onnx",
                    dynamo=False,
                    input_names=["x"],
                    dynamic_axes={"x": {0: "batch"}},
                )
        write("onnx", f"raw-{name}", b"\0" + (tmp / "export.onnx").read_bytes())
    weights = [
        numpy_helper.from_array(value.detach().numpy(), name)
        for name, value in (
            ("w1", module.conv1.weight),
            ("b1", module.conv1.bias),
            ("w2", module.conv2.weight),
            ("b2", module.conv2.bias),
            ("w3", module.fc1.weight.T.contiguous()),
            ("b3", module.fc1.bias),
        )
    ]
    weights.append(numpy_helper.from_array(np.array([-1, 48], np.int64), "shape"))
    chain = [
        ("Transpose", [], {"perm": [0, 3, 1, 2]}),
        ("Conv", ["w1", "b1"], {}),
        ("Relu", [], {}),
        ("MaxPool", [], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("Conv", ["w2", "b2"], {}),
        ("Relu", [], {}),
        ("MaxPool", [], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("Transpose", [], {"perm": [0, 2, 3, 1]}),
        ("Reshape", ["shape"], {}),
        ("MatMul", ["w3"], {}),
        ("Add", ["b3"], {}),
    ]
    nodes, data = [], "input_1"
    for index, (op, inputs, attributes) in enumerate(chain):
        nodes.append(helper.make_node(op, [data, *inputs], [f"t{index}"], **attributes))
        data = f"t{index}"
    graph = helper.make_graph(
        nodes,
        "tf2onnx-like",
        [helper.make_tensor_value_info("input_1", 1, [None, 28, 28, 1])],
        [helper.make_tensor_value_info(data, 1, [None, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    write("onnx", "raw-tf2onnx-channels-last", b"\0" + model.SerializeToString())
    onnx.checker.check_model(model)


def image_seeds(tmp):
    from PIL import Image

    from lenet_fast.cli import IMAGE_SUFFIXES

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    for suffix, mode, size in (
        (".png", "L", 28),
        (".png", "RGB", 32),
        (".jpg", "L", 28),
        (".bmp", "L", 28),
        (".gif", "L", 28),
        (".webp", "L", 28),
        (".tif", "L", 32),
    ):
        image = Image.fromarray(pixels).resize((size, size)).convert(mode)
        image.save(tmp / f"seed{suffix}")
        write(
            "image",
            f"{mode}-{size}{suffix}",
            bytes([IMAGE_SUFFIXES.index(suffix)]) + (tmp / f"seed{suffix}").read_bytes(),
        )


def predict_seeds():
    rng = np.random.default_rng(0)
    for index in range(8):
        write("predict", f"random-{index}", rng.bytes(48))
    write("predict", "zeros", bytes(48))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        npz_seeds(Path(tmp))
        idx_seeds(Path(tmp))
        onnx_seeds(Path(tmp))
        image_seeds(Path(tmp))
    predict_seeds()
    for target in ("npz", "idx", "predict", "onnx", "image"):
        files = sorted((HERE / "corpus" / target).iterdir())
        print(target, len(files), "files,", sum(f.stat().st_size for f in files), "bytes")
