"""The NumPy reference against obviously-correct loops, and against PyTorch models saved as users do."""

import itertools
import math

import numpy as np
import pytest

from factories import random_weights, save_like_users, torch_lenets
from lenet_fast import _weights, reference

# ---------------------------------------------------------------------------------------------
# Slow loop implementations: correct by inspection
# ---------------------------------------------------------------------------------------------


def loop_conv2d_valid(x, weight, bias):
    batch, channels, height, width = x.shape
    out_channels, _, kernel_height, kernel_width = weight.shape
    out = np.zeros((batch, out_channels, height - kernel_height + 1, width - kernel_width + 1))
    for n, o, i, j in itertools.product(*map(range, out.shape)):
        total = bias[o]
        for c, ki, kj in itertools.product(
            range(channels), range(kernel_height), range(kernel_width)
        ):
            total += x[n, c, i + ki, j + kj] * weight[o, c, ki, kj]
        out[n, o, i, j] = total
    return out


def loop_pool2x2(x, mode):
    out = np.zeros((*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2))
    for n, c, i, j in itertools.product(*map(range, out.shape)):
        window = [x[n, c, 2 * i + di, 2 * j + dj] for di in (0, 1) for dj in (0, 1)]
        out[n, c, i, j] = max(window) if mode == "max" else sum(window) / 4
    return out


def loop_dense(x, weight, bias):
    out = np.zeros((len(x), len(weight)))
    for n, o in itertools.product(range(len(x)), range(len(weight))):
        out[n, o] = bias[o] + sum(x[n, i] * weight[o, i] for i in range(x.shape[1]))
    return out


SCALAR_ACTIVATIONS = {
    "relu": lambda v: max(v, 0.0),
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
    "tanh": math.tanh,
    "identity": lambda v: v,
}


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [(5, 5), (3, 2)])
def test_conv2d_valid_matches_loops(kernel):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 9, 8))
    weight = rng.normal(size=(4, 3, *kernel))
    bias = rng.normal(size=4)
    expected = loop_conv2d_valid(x, weight, bias)
    np.testing.assert_allclose(reference.conv2d_valid(x, weight, bias), expected, rtol=1e-12)


@pytest.mark.parametrize("mode", reference.POOLS)
def test_pool2x2_matches_loops(mode):
    x = np.random.default_rng(2).normal(size=(2, 3, 6, 8))
    np.testing.assert_allclose(reference.pool2x2(x, mode), loop_pool2x2(x, mode), rtol=1e-12)


def test_dense_matches_loops():
    rng = np.random.default_rng(3)
    x, weight, bias = rng.normal(size=(3, 7)), rng.normal(size=(5, 7)), rng.normal(size=5)
    np.testing.assert_allclose(
        reference.dense(x, weight, bias), loop_dense(x, weight, bias), rtol=1e-12
    )


@pytest.mark.parametrize("name", reference.ACTIVATIONS)
def test_activate_matches_scalar_formula(name):
    x = np.linspace(-6, 6, 25)
    expected = [SCALAR_ACTIVATIONS[name](value) for value in x]
    np.testing.assert_allclose(reference.activate(x, name), expected, rtol=1e-12, atol=1e-300)


def test_sigmoid_is_stable_in_both_tails():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        result = reference.activate(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]), "sigmoid")
    np.testing.assert_allclose(result, [0.0, math.exp(-40), 0.5, 1.0, 1.0], rtol=1e-12)


def test_softmax_rows_sum_to_one_without_overflow():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1001.0], [-1000.0, 0.0, -1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        result = reference.activate(x, "softmax")
    np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-15)
    expected_first = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(result[0], expected_first, rtol=1e-15)
    np.testing.assert_allclose(
        result[1], result[0][[0, 0, 1]] / result[0][[0, 0, 1]].sum(), rtol=1e-12
    )


def test_pad_to_32_zero_pads_28_and_passes_32_through():
    x = np.random.default_rng(4).normal(size=(2, 3, 28, 28))
    padded = reference.pad_to_32(x)
    assert padded.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(padded[:, :, 2:30, 2:30], x)
    padded[:, :, 2:30, 2:30] = 0
    assert not padded.any()
    already = np.ones((1, 1, 32, 32))
    assert reference.pad_to_32(already) is already


def test_default_model_layer_sizes():
    x = np.random.default_rng(5).normal(size=(3, 1, 32, 32)).astype(np.float32)
    output, layers = reference.forward(x, random_weights(), return_intermediates=True)
    shapes = {name: value.shape for name, value in layers.items()}
    assert shapes == {
        "conv1": (3, 6, 28, 28),
        "pool1": (3, 6, 14, 14),
        "conv2": (3, 16, 10, 10),
        "pool2": (3, 16, 5, 5),
        "conv3": (3, 120, 1, 1),
        "fc1": (3, 84),
        "fc2": (3, 10),
    }
    assert output.dtype == np.float32 and all(
        value.dtype == np.float32 for value in layers.values()
    )
    np.testing.assert_array_equal(output, layers["fc2"])
    assert np.all((output > 0) & (output < 1))  # default output activation: sigmoid


def test_forward_applies_activation_before_pooling_like_loops():
    # With tanh and avg pooling the order matters; the loops apply activation, then pool.
    rng = np.random.default_rng(6)
    weights = {
        "conv1.weight": rng.normal(size=(2, 1, 5, 5)),
        "conv1.bias": rng.normal(size=2),
        "conv2.weight": rng.normal(size=(2, 2, 5, 5)),
        "conv2.bias": rng.normal(size=2),
        "conv3.weight": rng.normal(size=(3, 2, 5, 5)),
        "conv3.bias": rng.normal(size=3),
        "fc1.weight": rng.normal(size=(4, 3)),
        "fc1.bias": rng.normal(size=4),
        "fc2.weight": rng.normal(size=(2, 4)),
        "fc2.bias": rng.normal(size=2),
    }
    x = rng.normal(size=(1, 1, 28, 28))
    tanh = np.vectorize(math.tanh)
    hidden = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for layer in ("conv1", "conv2"):
        convolved = loop_conv2d_valid(hidden, weights[f"{layer}.weight"], weights[f"{layer}.bias"])
        hidden = loop_pool2x2(tanh(convolved), "avg")
    hidden = tanh(
        loop_conv2d_valid(hidden, weights["conv3.weight"], weights["conv3.bias"])
    ).reshape(1, 3)
    hidden = tanh(loop_dense(hidden, weights["fc1.weight"], weights["fc1.bias"]))
    expected = loop_dense(hidden, weights["fc2.weight"], weights["fc2.bias"])
    result = reference.forward(
        x,
        weights,
        conv_activation="tanh",
        fc_activation="tanh",
        output_activation="identity",
        pool="avg",
    )
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

HIDDEN_NAMES = "'relu', 'sigmoid', 'tanh', 'identity'"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "conv_activation",
            "softmax",
            f"conv_activation must be one of {HIDDEN_NAMES}; got 'softmax'",
        ),
        ("fc_activation", "gelu", f"fc_activation must be one of {HIDDEN_NAMES}; got 'gelu'"),
        (
            "output_activation",
            "Softmax",
            f"output_activation must be one of {HIDDEN_NAMES}, 'softmax', 'log_softmax'; got 'Softmax'",
        ),
        ("pool", "min", "pool must be one of 'max', 'avg'; got 'min'"),
    ],
)
def test_forward_rejects_unknown_option_names(option, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        reference.forward(np.zeros((1, 1, 32, 32)), random_weights(), **{option: value})


def test_layer_functions_name_bad_arguments():
    with pytest.raises(
        ValueError,
        match=f"^name must be one of {HIDDEN_NAMES}, 'softmax', 'log_softmax'; got 'elu'$",
    ):
        reference.activate(np.zeros(3), "elu")
    with pytest.raises(ValueError, match="^mode must be one of 'max', 'avg'; got 'mean'$"):
        reference.pool2x2(np.zeros((1, 1, 4, 4)), "mean")
    with pytest.raises(ValueError, match="^x must have even height and width; got 5x4$"):
        reference.pool2x2(np.zeros((1, 1, 5, 4)), "max")
    with pytest.raises(
        ValueError, match=r"^x has 2 channels but weight expects 1 \(weight shape \(6, 1, 5, 5\)\)$"
    ):
        reference.conv2d_valid(np.zeros((1, 2, 8, 8)), np.zeros((6, 1, 5, 5)), np.zeros(6))
    with pytest.raises(ValueError, match=r"^bias must have shape \(6,\); got \(5,\)$"):
        reference.conv2d_valid(np.zeros((1, 1, 8, 8)), np.zeros((6, 1, 5, 5)), np.zeros(5))
    with pytest.raises(ValueError, match=r"^x must be 4-D \(N, C, H, W\); got shape \(8, 8\)$"):
        reference.conv2d_valid(np.zeros((8, 8)), np.zeros((6, 1, 5, 5)), np.zeros(6))
    with pytest.raises(ValueError, match="^x images \\(4x8\\) are smaller than the 5x5 kernel$"):
        reference.conv2d_valid(np.zeros((1, 1, 4, 8)), np.zeros((6, 1, 5, 5)), np.zeros(6))
    with pytest.raises(
        ValueError, match=r"^x has 3 features but weight expects 4 \(weight shape \(2, 4\)\)$"
    ):
        reference.dense(np.zeros((1, 3)), np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="^x images must be 28x28 or 32x32; got 30x30$"):
        reference.pad_to_32(np.zeros((1, 1, 30, 30)))


def test_forward_names_missing_weights():
    weights = random_weights()
    del weights["conv2.bias"], weights["fc2.weight"]
    message = r"^weights is missing conv2\.bias, fc2\.weight; expected canonical LeNet-5 weights$"
    with pytest.raises(ValueError, match=message):
        reference.forward(np.zeros((1, 1, 32, 32)), weights)


# ---------------------------------------------------------------------------------------------
# PyTorch parity, through files saved the way users save them
# ---------------------------------------------------------------------------------------------

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("build", "options"),
    [
        (lambda: torch_lenets().TableNet(), {}),
        (
            lambda: torch_lenets().TutorialNet(),
            {"fc_activation": "relu", "output_activation": "identity"},
        ),
        (
            lambda: torch_lenets().sequential_conv3(),
            {
                "conv_activation": "tanh",
                "pool": "avg",
                "fc_activation": "tanh",
                "output_activation": "softmax",
            },
        ),
        (lambda: torch_lenets().TableNet(in_channels=3), {}),
    ],
    ids=["table", "tutorial", "sequential", "table-3-channels"],
)
def test_forward_matches_pytorch_models_loaded_from_npz(torch, tmp_path, build, options):
    torch.manual_seed(7)
    model = build().eval()
    in_channels = model.state_dict()[next(iter(model.state_dict()))].shape[1]
    save_like_users(model, tmp_path / "model.npz")
    weights, metadata = _weights.load_npz(tmp_path / "model.npz")
    assert metadata == {}
    x = torch.randn(5, in_channels, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(
        reference.forward(x.numpy(), weights, **options), expected, **TOLERANCE
    )


def test_padding_2_on_28x28_equals_padding_to_32(torch, tmp_path):
    torch.manual_seed(8)
    model = torch_lenets().TableNet(conv1_padding=2).eval()
    save_like_users(model, tmp_path / "padded.npz")
    weights, _ = _weights.load_npz(tmp_path / "padded.npz")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(reference.forward(x.numpy(), weights), expected, **TOLERANCE)


@pytest.mark.parametrize(
    ("conv_activation", "pool"), list(itertools.product(reference.ACTIVATIONS, reference.POOLS))
)
@pytest.mark.parametrize(
    ("fc_activation", "output_activation"),
    list(zip(reference.ACTIVATIONS + ("relu",), reference.OUTPUT_ACTIVATIONS)),
)
def test_every_option_matches_pytorch_functional(
    torch, conv_activation, pool, fc_activation, output_activation
):
    functional = torch.nn.functional
    activations = {
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "identity": lambda t: t,
        "softmax": lambda t: torch.softmax(t, dim=1),
    }
    pooling = {"max": functional.max_pool2d, "avg": functional.avg_pool2d}[pool]
    weights = random_weights(seed=9, in_channels=3)
    tensors = {key: torch.from_numpy(value) for key, value in weights.items()}
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(10))

    hidden = functional.pad(x, (2, 2, 2, 2))
    for layer in ("conv1", "conv2"):
        hidden = functional.conv2d(hidden, tensors[f"{layer}.weight"], tensors[f"{layer}.bias"])
        hidden = pooling(activations[conv_activation](hidden), 2)
    hidden = functional.conv2d(hidden, tensors["conv3.weight"], tensors["conv3.bias"])
    hidden = activations[conv_activation](hidden).flatten(1)
    hidden = functional.linear(hidden, tensors["fc1.weight"], tensors["fc1.bias"])
    hidden = functional.linear(
        activations[fc_activation](hidden), tensors["fc2.weight"], tensors["fc2.bias"]
    )
    expected = activations[output_activation](hidden)

    result = reference.forward(
        x.numpy(),
        weights,
        conv_activation=conv_activation,
        fc_activation=fc_activation,
        output_activation=output_activation,
        pool=pool,
    )
    np.testing.assert_allclose(result, expected.numpy(), **TOLERANCE)
