"""Every engine the benchmarks compare, built from ONE canonical weight dict.

Design: a `Peer` is a name, a version string, a thread count and two callables on a float32
(N, 1, 32, 32) batch: ``run`` (the timed call: labels, argmax computed inside the engine where it
can) and ``scores`` (the (N, n_classes) outputs).  `build_peers` makes lenet_fast plus every peer
whose package is importable: ONNX Runtime and OpenVINO run the same ``onnx.helper`` graph, PyTorch
runs an eager ``nn.Sequential``, NumPy runs ``lenet_fast.reference``.  Each peer is checked
against lenet_fast when it is built, so a benchmark can never compare two different networks.
Threads: every engine is pinned to the same count through its own knob (ORT intra-op threads,
OpenVINO ``INFERENCE_NUM_THREADS``, ``torch.set_num_threads``, threadpoolctl for NumPy's BLAS).
"""

import contextlib
import dataclasses
import os
import tempfile
from collections import OrderedDict
from typing import Callable

import numpy as np

import lenet_fast
from lenet_fast import LeNet, reference

LAYER_SHAPES = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "conv3": (120, 16, 5, 5),
                "fc1": (84, 120), "fc2": (10, 84)}
ENGINES = ("lenet_fast", "onnxruntime", "openvino", "torch", "numpy")
TOLERANCE = 1e-4
# PyTorch eager and the float64 NumPy reference are 10-50x slower than the compiled engines:
# benchmark them on small batches only, so a run stays within minutes.
MAX_BATCH = {"torch": 1024, "numpy": 1024}


@dataclasses.dataclass(frozen=True)
class Peer:
    """One engine, bound to a model and a thread count."""

    name: str
    version: str
    threads: int
    run: Callable[[np.ndarray], np.ndarray]
    scores: Callable[[np.ndarray], np.ndarray]


def is_benchmarked_at(engine, batch):
    """Whether `engine` is fast enough to be benchmarked at batch size `batch`."""
    return batch <= MAX_BATCH.get(engine, batch)


def random_weights(seed=0):
    """Canonical LeNet-5 weights drawn like PyTorch's default initialisation.

    ``nn.Conv2d`` and ``nn.Linear`` draw weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Parameters
    ----------
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    dict of str to ndarray of float32
        ``conv1.weight`` (6, 1, 5, 5), ``conv1.bias`` (6,), ... ``fc2.weight`` (10, 84),
        ``fc2.bias`` (10,).
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for layer, shape in LAYER_SHAPES.items():
        bound = 1.0 / np.sqrt(np.prod(shape[1:]))
        weights[f"{layer}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{layer}.bias"] = rng.uniform(-bound, bound, shape[0]).astype(np.float32)
    return weights


def random_images(batch, seed=1):
    """A C-contiguous float32 (batch, 1, 32, 32) array of standard-normal pixels."""
    return np.random.default_rng(seed).standard_normal((batch, 1, 32, 32), dtype=np.float32)


def build_onnx_model(weights):
    """The network as an ONNX graph (opset 17, dynamic batch).

    Parameters
    ----------
    weights : dict of str to ndarray
        Canonical weights (see `random_weights`).

    Returns
    -------
    onnx.ModelProto
        Input ``images`` (N, C, 32, 32) float32; outputs ``scores`` (N, n_classes) float32 and
        ``labels`` (N,) int64 (ArgMax, first index on ties, like lenet_fast).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    layers = [("Conv", ["conv1.weight", "conv1.bias"], {}), ("Relu", [], {}), ("MaxPool", [], pool),
              ("Conv", ["conv2.weight", "conv2.bias"], {}), ("Relu", [], {}), ("MaxPool", [], pool),
              ("Conv", ["conv3.weight", "conv3.bias"], {}), ("Relu", [], {}),
              ("Flatten", [], {"axis": 1}),
              ("Gemm", ["fc1.weight", "fc1.bias"], {"transB": 1}), ("Sigmoid", [], {}),
              ("Gemm", ["fc2.weight", "fc2.bias"], {"transB": 1}), ("Sigmoid", [], {})]
    nodes, previous = [], "images"
    for index, (op, parameters, attributes) in enumerate(layers):
        output = "scores" if index == len(layers) - 1 else f"{op.lower()}_{index}"
        nodes.append(helper.make_node(op, [previous, *parameters], [output], **attributes))
        previous = output
    nodes.append(helper.make_node("ArgMax", ["scores"], ["labels"], axis=1, keepdims=0))

    in_channels, n_classes = weights["conv1.weight"].shape[1], weights["fc2.weight"].shape[0]
    graph = helper.make_graph(
        nodes, "lenet5",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", in_channels, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_classes]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(np.asarray(value, np.float32), name)
         for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _lenet_fast_peer(weights, threads):
    model = LeNet.from_state_dict(weights)
    return Peer("lenet_fast", f"{lenet_fast.__version__} ({model.isa})", threads,
                lambda x: model.predict(x, num_threads=threads),
                lambda x: model.forward(x, num_threads=threads))


def _onnxruntime_peer(weights, threads, onnx_model):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return Peer("onnxruntime", onnxruntime.__version__, threads,
                lambda x: session.run(["labels"], {"images": x})[0],
                lambda x: session.run(["scores"], {"images": x})[0])


def _openvino_peer(weights, threads, onnx_model):
    import openvino

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "lenet5.onnx")
        with open(path, "wb") as file:
            file.write(onnx_model.SerializeToString())
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
        compiled = openvino.Core().compile_model(path, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def output(x, name):
        return request.infer({"images": x}, share_inputs=True)[compiled.output(name)]

    return Peer("openvino", openvino.__version__.split("-")[0], threads,
                lambda x: output(x, "labels"), lambda x: output(x, "scores").copy())


def _torch_peer(weights, threads):
    import torch
    from torch import nn

    conv = {layer: weights[f"{layer}.weight"].shape for layer in ("conv1", "conv2", "conv3")}
    fc = {layer: weights[f"{layer}.weight"].shape for layer in ("fc1", "fc2")}
    module = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(conv["conv1"][1], conv["conv1"][0], 5)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(conv["conv2"][1], conv["conv2"][0], 5)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(conv["conv3"][1], conv["conv3"][0], 5)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(fc["fc1"][1], fc["fc1"][0])), ("sigmoid1", nn.Sigmoid()),
        ("fc2", nn.Linear(fc["fc2"][1], fc["fc2"][0])), ("sigmoid2", nn.Sigmoid()),
    ]))
    module.load_state_dict({name: torch.from_numpy(np.array(value, np.float32))
                            for name, value in weights.items()})
    module.eval()

    def infer(x):
        # The thread count is process-wide in PyTorch: set it only when it changes.
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return Peer("torch", torch.__version__, threads,
                lambda x: infer(x).argmax(1).numpy(), lambda x: infer(x).numpy())


def _numpy_peer(weights, threads):
    try:
        from threadpoolctl import ThreadpoolController
        blas = ThreadpoolController().select(user_api="blas")

        def limit_blas():
            return blas.limit(limits=threads)
        version = f"{np.__version__} (BLAS threads = {threads}, threadpoolctl)"
    except ImportError:
        limit_blas = contextlib.nullcontext
        version = f"{np.__version__} (BLAS threads uncontrolled: threadpoolctl missing)"

    def scores(x):
        with limit_blas():
            return reference.forward(x, weights)

    return Peer("numpy", version, threads, lambda x: scores(x).argmax(1), scores)


def _check_against(peer, expected_scores, expected_labels, images):
    """Raise if `peer` does not compute the network lenet_fast computes."""
    scores = np.asarray(peer.scores(images))
    difference = np.max(np.abs(scores - expected_scores))
    if scores.shape != expected_scores.shape or not difference <= TOLERANCE:
        raise AssertionError(f"{peer.name} ({peer.threads} threads) disagrees with lenet_fast: "
                             f"max |score difference| = {difference:.3g} > {TOLERANCE}")
    # Labels must match except where two classes are within the tolerance of each other.
    top_two = np.sort(expected_scores, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > TOLERANCE
    labels = np.asarray(peer.run(images))
    if labels.shape != expected_labels.shape or \
            np.any(labels[clear] != expected_labels[clear]):
        raise AssertionError(f"{peer.name} ({peer.threads} threads) predicts other labels than "
                             f"lenet_fast")


def build_peers(weights, threads, engines=ENGINES):
    """Build every available engine for `weights`, each checked against lenet_fast.

    Parameters
    ----------
    weights : dict of str to ndarray
        Canonical LeNet-5 weights (see `random_weights`).
    threads : int
        Threads every engine may use.
    engines : iterable of str, default `ENGINES`
        Which engines to build (lenet_fast is always built: it is the yardstick).

    Returns
    -------
    peers : dict of str to Peer
        Engine name to peer, lenet_fast first.
    skipped : dict of str to str
        Engine name to the reason it was skipped (its package is not installed).

    Raises
    ------
    AssertionError
        If an engine's scores differ from lenet_fast's by more than `TOLERANCE`, or its labels
        differ where the decision is clear.
    """
    peers = {"lenet_fast": _lenet_fast_peer(weights, threads)}
    skipped = {}
    onnx_model = None
    needs_onnx = {"onnxruntime", "openvino"}
    for engine in engines:
        if engine == "lenet_fast":
            continue
        try:
            if engine in needs_onnx and onnx_model is None:
                onnx_model = build_onnx_model(weights)
            if engine == "onnxruntime":
                peers[engine] = _onnxruntime_peer(weights, threads, onnx_model)
            elif engine == "openvino":
                peers[engine] = _openvino_peer(weights, threads, onnx_model)
            elif engine == "torch":
                peers[engine] = _torch_peer(weights, threads)
            elif engine == "numpy":
                peers[engine] = _numpy_peer(weights, threads)
            else:
                raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
        except ImportError as error:
            skipped[engine] = f"{error.name or error} is not installed"

    images = random_images(64, seed=12345)
    expected_scores = peers["lenet_fast"].scores(images)
    expected_labels = peers["lenet_fast"].run(images)
    for peer in peers.values():
        _check_against(peer, expected_scores, expected_labels, images)
        _check_against(peer, expected_scores[:1], expected_labels[:1], images[:1])
    return peers, skipped

