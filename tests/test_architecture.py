"""The LeNet family (``lenet_fast._architecture``: named members, geometry, sizes) through the
Python API: the unpadded MNIST LeNet and Caffe's LeNet built in PyTorch load in one call and give
PyTorch's answers; geometry is inferred, stated or announced, kept by every round trip, and
refused with clear messages where it does not fit; summaries count the multiply-adds; every
member gives the same bits at any batch position and thread count."""

import pickle
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from factories import (  # noqa: E402
    FASHION_MEAN,
    FASHION_STD,
    assert_matches_pytorch,
    model_at_level,
    no_architecture_warning,
    random_images,
    random_weights,
    torch_lenets,
    torch_scores,
    train_torch,
)
from lenet_fast import (  # noqa: E402
    ArchitectureWarning,
    LeNet,
    WeightFileError,
    _architecture,
    _weights,
    reference,
)
from lenet_fast._architecture import MEMBERS  # noqa: E402
from lenet_fast.cli import main  # noqa: E402
from lenet_fast.datasets import load_fashion_mnist  # noqa: E402

ATOL = RTOL = 1e-5
TRAINING_STEPS = 300
MNIST_UNPADDED = {
    "conv_activation": "relu",
    "fc_activation": "relu",
    "output_activation": "identity",
    "pool": "max",
}
CAFFE = {
    "conv_activation": "identity",
    "fc_activation": "relu",
    "output_activation": "softmax",
    "pool": "max",
}
GEOMETRY_28 = {"input_size": (28, 28), "conv1_padding": 0, "conv2_padding": 0}


MnistLeNet = torch_lenets().MnistLeNet
mnist_sequential = torch_lenets().mnist_sequential
CaffeLeNet = torch_lenets().CaffeLeNet


@pytest.fixture(scope="module")
def fashion():
    """Normalised Fashion-MNIST (Debian's dataset-fashion-mnist): training and test images."""
    try:
        train_images, train_labels = load_fashion_mnist("train")
        test_images, _ = load_fashion_mnist("test")
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc})")

    def normalise(images):
        return ((images.astype(np.float32) / 255 - FASHION_MEAN) / FASHION_STD)[:, None]

    return normalise(train_images), train_labels.astype(np.int64), normalise(test_images[:2000])


@pytest.fixture(scope="module")
def trained_members(fashion):
    """The unpadded MNIST LeNet and Caffe's LeNet after a few hundred Adam steps on real
    Fashion-MNIST.  Caffe's LeNet trains as Caffe trains it: the cross-entropy
    (SoftmaxWithLoss) takes ip2's outputs, and the softmax belongs to the deployed model."""
    train_images, train_labels, _ = fashion
    torch.manual_seed(0)
    mnist = train_torch(MnistLeNet(), train_images, train_labels, TRAINING_STEPS)
    torch.manual_seed(0)
    caffe = CaffeLeNet()
    train_torch(caffe, train_images, train_labels, TRAINING_STEPS, logits=caffe.logits)
    return {"mnist-unpadded": (mnist, MNIST_UNPADDED), "caffe": (caffe, CAFFE)}


# ---------------------------------------------------------------------------------------------
# Parity with PyTorch
# ---------------------------------------------------------------------------------------------


def loaders(net, architecture, tmp_path):
    """The ways a user loads `net`: from_torch, from_state_dict and from_npz of np.savez."""
    state = net.state_dict()
    np.savez(tmp_path / "state.npz", **{key: value.numpy() for key, value in state.items()})
    with no_architecture_warning():
        yield "from_torch", LeNet.from_torch(net)
        yield "from_state_dict", LeNet.from_state_dict(state, **architecture)
        yield "from_npz", LeNet.from_npz(tmp_path / "state.npz", **architecture)


@pytest.mark.parametrize(
    "build, architecture, widths",
    [
        (MnistLeNet, MNIST_UNPADDED, (1, 6, 16, 120, 84, 10)),
        (mnist_sequential, MNIST_UNPADDED, (1, 6, 16, 120, 84, 10)),
        (CaffeLeNet, CAFFE, (1, 20, 50, 500, 10)),
    ],
    ids=["mnist-unpadded", "mnist-unpadded-sequential", "caffe"],
)
def test_family_members_match_pytorch_on_random_images(tmp_path, build, architecture, widths):
    torch.manual_seed(1)
    net = build().eval()
    x = random_images(512, seed=3, size=28)
    for how, model in loaders(net, architecture, tmp_path):
        assert model.architecture == {**architecture, **GEOMETRY_28}, how
        assert tuple(model.dimensions.values()) == widths, how
        assert not model.sizes.has_conv3
        assert_matches_pytorch(model, net, x)


@pytest.mark.parametrize("member", ["mnist-unpadded", "caffe"])
def test_trained_members_match_pytorch_on_real_fashion_mnist(
    tmp_path, fashion, trained_members, member
):
    (net, architecture), (_, _, test_images) = trained_members[member], fashion
    accuracy_labels = torch_scores(net, test_images).argmax(axis=1)
    assert len(np.unique(accuracy_labels)) >= 8  # trained: its labels depend on the images
    for _how, model in loaders(net, architecture, tmp_path):
        assert_matches_pytorch(model, net, test_images)
        assert_matches_pytorch(model, net, random_images(256, seed=5, size=28))


def test_caffe_names_are_recognised_and_assumed_as_caffe(tmp_path):
    torch.manual_seed(2)
    net = CaffeLeNet().eval()
    with pytest.warns(ArchitectureWarning, match=r"Caffe's LeNet \(the ip1/ip2 names\)") as caught:
        model = LeNet.from_state_dict(net.state_dict())
    assert len(caught) == 1
    assert model.assumed_architecture == CAFFE
    assert_matches_pytorch(model, net, random_images(512, seed=3, size=28))


def test_unpadded_mnist_lenet_in_one_call_with_lenet_and_stated_geometry():
    torch.manual_seed(3)
    net = MnistLeNet().eval()
    model = LeNet(net.state_dict(), input_size=28, conv1_padding=0, **MNIST_UNPADDED)
    assert_matches_pytorch(model, net, random_images(512, seed=3, size=28))
    # the same with no geometry stated: 256 features leave one geometry
    assert LeNet(net.state_dict(), **MNIST_UNPADDED).architecture == model.architecture


# ---------------------------------------------------------------------------------------------
# Round trips keep the geometry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [MnistLeNet, CaffeLeNet])
def test_npz_state_dict_pickle_round_trips_keep_geometry(tmp_path, build):
    torch.manual_seed(4)
    net = build().eval()
    with no_architecture_warning():
        model = LeNet.from_torch(net)
        model.save_npz(tmp_path / "first.npz")
        loaded = LeNet.from_npz(tmp_path / "first.npz")
        again = LeNet.from_state_dict(model.weights, **model.architecture)
    assert loaded.architecture == model.architecture == again.architecture
    assert loaded.assumed_architecture == {}
    copy = pickle.loads(pickle.dumps(model))
    assert copy.architecture == model.architecture
    x = random_images(64, seed=3, size=28)
    for other in (loaded, again, copy):
        np.testing.assert_array_equal(other.forward(x), model.forward(x))
    loaded.save_npz(tmp_path / "second.npz")
    assert (tmp_path / "first.npz").read_bytes() == (tmp_path / "second.npz").read_bytes()
    _, metadata = _weights.load_npz(tmp_path / "first.npz")
    assert metadata["architecture"]["input_size"] == [28, 28]
    assert metadata["architecture"]["conv1_padding"] == 0


def test_keras_same_member_stores_its_padding(tmp_path):
    """28x28 input with conv1 padded by 2 and a 400-feature flatten whose dense activation is
    not the conv one: stored and reloaded as stated, taking only 28x28 images."""
    member = MEMBERS["keras-same"]
    weights = random_weights(6, shapes=member.shapes())
    architecture = {**member.architecture, "fc_activation": "sigmoid"}
    model = LeNet(weights, input_size=28, conv1_padding=2, **architecture)
    assert "fc3.weight" in model.weights and "conv3.weight" not in model.weights
    model.save_npz(tmp_path / "keras.npz")
    with no_architecture_warning():
        loaded = LeNet.from_npz(tmp_path / "keras.npz")
    assert loaded.architecture == {
        **architecture,
        "input_size": (28, 28),
        "conv1_padding": 2,
        "conv2_padding": 0,
    }
    x = random_images(32, seed=3, size=28)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    np.testing.assert_allclose(
        model.forward(x), reference.forward(x, weights, **model.architecture), atol=ATOL, rtol=RTOL
    )
    with pytest.raises(
        ValueError,
        match=re.escape("x must have shape (N, 1, 28, 28), or (N, 28, 28); got (2, 1, 32, 32)"),
    ):
        loaded.forward(np.zeros((2, 1, 32, 32), np.float32))


# ---------------------------------------------------------------------------------------------
# Geometry inference
# ---------------------------------------------------------------------------------------------


def flatten_weights(features_per_channel, conv2=16, seed=7):
    return random_weights(
        seed,
        shapes=_architecture.canonical_shapes(
            1, 6, conv2, 0, (32, 10), features=conv2 * features_per_channel
        ),
    )


def test_geometry_unique_is_used_silently():
    with no_architecture_warning():
        model = LeNet.from_state_dict(flatten_weights(16), **MNIST_UNPADDED)
    assert model.architecture["input_size"] == (28, 28)
    assert model.assumed_architecture == {}
    # 5x5 per channel: 32x32 unpadded and 28x28 padded by 2 compute the same; 32x32 (which also
    # takes 28x28 images) is used, no guess to announce
    with no_architecture_warning():
        model = LeNet.from_state_dict(
            flatten_weights(25), **{**MNIST_UNPADDED, "fc_activation": "tanh"}
        )
    assert model.sizes.geometry == _architecture.DEFAULT_GEOMETRY


def test_geometry_ambiguous_is_announced_and_stated_silences_it(tmp_path):
    # 6x6 per channel: 28x28 with conv2 padded by 2, or 32x32 with conv1 padded by 2
    weights = flatten_weights(36)
    with pytest.warns(ArchitectureWarning, match="fc1's inputs fit several geometries") as caught:
        model = LeNet.from_state_dict(weights, **MNIST_UNPADDED)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "input_size=28" in message and "--input-size 28" in message
    assert model.assumed_architecture == {
        "input_size": (28, 28),
        "conv1_padding": 0,
        "conv2_padding": 2,
    }
    x = random_images(16, seed=3, size=28)
    np.testing.assert_allclose(
        model.forward(x), reference.forward(x, weights, **model.architecture), atol=ATOL, rtol=RTOL
    )
    # save_npz keeps the guess a guess
    model.save_npz(tmp_path / "guess.npz")
    with pytest.warns(ArchitectureWarning):
        assert (
            LeNet.from_npz(tmp_path / "guess.npz").assumed_architecture
            == model.assumed_architecture
        )
    with no_architecture_warning():
        stated = LeNet.from_state_dict(weights, input_size=32, **MNIST_UNPADDED)
        assert stated.architecture["conv1_padding"] == 2
        assert stated.assumed_architecture == {}
        other = LeNet(weights, conv2_padding=2, **MNIST_UNPADDED)
        assert other.architecture["input_size"] == (28, 28)


def test_stated_geometry_that_does_not_fit_is_refused():
    with pytest.raises(
        WeightFileError,
        match=r"^fc1 takes 256 inputs, which no geometry gives "
        r"with conv2's 16 channels .*stated input_size="
        r"\(32, 32\)",
    ):
        LeNet.from_state_dict(flatten_weights(16), input_size=32, **MNIST_UNPADDED)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_odd_convolution_outputs_are_refused():
    weights = flatten_weights(16)
    with pytest.raises(
        WeightFileError,
        match=re.escape(
            "conv1 gives a height of 25 (odd) with input 29x29, conv1_padding 0, conv2_padding "
            "0; expected an even size of at least 2 for the 2x2/2 pooling after it (an odd size "
            "is refused, never floored)"
        ),
    ):
        LeNet(weights, input_size=29, **MNIST_UNPADDED)
    with pytest.raises(
        WeightFileError,
        match=r"^conv2 gives a width of 9 \(odd\) with input "
        r"28x30",
    ):
        LeNet(weights, input_size=(28, 30), **MNIST_UNPADDED)


def test_conv3_after_a_pool2_that_is_not_5x5_is_refused():
    shapes = MEMBERS["lenet5"].shapes()
    weights = {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}
    with pytest.raises(
        WeightFileError,
        match=re.escape(
            "conv3 needs a 5x5 pool2 output (it gives 1x1); with input 28x28, conv1_padding 0, "
            "conv2_padding 0 pool2 is 4x4: expected no conv3"
        ),
    ):
        LeNet(weights, input_size=28, conv1_padding=0)


def test_four_dense_layers_and_gaps_are_refused():
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    with pytest.raises(
        ValueError, match="the engine computes one to three dense layers; this is a fourth"
    ):
        LeNet.from_torch(net)
    with pytest.raises(
        WeightFileError,
        match=re.escape(
            "an nn.Sequential export with 6 numbered layers does not fit: expected 3 to 6 (conv1, "
            "conv2, an optional conv3 with a 4-D weight, then one to three dense layers)"
        ),
    ):
        LeNet.from_state_dict(net.state_dict(), **MNIST_UNPADDED)
    weights = flatten_weights(16)
    weights["fc3.weight"], weights["fc3.bias"] = np.zeros((5, 32), np.float32), np.zeros(5)
    del weights["fc2.weight"], weights["fc2.bias"]
    with pytest.raises(
        WeightFileError,
        match=re.escape("dense layers fc1, fc3: expected consecutive layers fc1, fc2, fc3"),
    ):
        LeNet(weights)
    with pytest.raises(
        WeightFileError,
        match=re.escape("'fc1.weight': expected shape (fc1_units, features), found (32,)"),
    ):
        LeNet({**flatten_weights(16), "fc1.weight": np.zeros(32, np.float32)})


def test_geometry_option_values_are_checked():
    weights = flatten_weights(16)
    with pytest.raises(ValueError, match=re.escape("conv1_padding must be 0 or 2; got 1")):
        LeNet.from_state_dict(weights, conv1_padding=1, **MNIST_UNPADDED)
    with pytest.raises(
        ValueError,
        match=re.escape("input_size must be an int or (height, width), each at most 256; got 0"),
    ):
        LeNet.from_state_dict(weights, input_size=0, **MNIST_UNPADDED)


def test_model_input_size_is_enforced():
    model = LeNet(flatten_weights(16), **MNIST_UNPADDED)
    with pytest.raises(
        ValueError,
        match=re.escape("x must have shape (N, 1, 28, 28), or (N, 28, 28); got (3, 1, 32, 32)"),
    ):
        model.forward(np.zeros((3, 1, 32, 32), np.float32))


# ---------------------------------------------------------------------------------------------
# Sizes, summary, CLI
# ---------------------------------------------------------------------------------------------


def torch_multiply_adds(net, size=28):
    """Multiply-adds per image counted from the PyTorch module by running it."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output[0].numel() * module.in_channels * 25
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [module.register_forward_hook(count) for module in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize("build, member", [(MnistLeNet, "mnist-unpadded"), (CaffeLeNet, "caffe")])
def test_summary_and_sizes_count_the_multiply_adds(build, member):
    net = build().eval()
    with no_architecture_warning():
        model = LeNet.from_torch(net)
    expected = torch_multiply_adds(net)
    assert model.sizes.multiply_adds == model.summary().total_multiply_adds == expected
    shapes = MEMBERS[member].shapes()
    assert _architecture.sizes(shapes, **MEMBERS[member].geometry).multiply_adds == expected
    names = [layer.name for layer in model.summary().layers]
    assert names == ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2"] + (
        ["fc3"] if member == "mnist-unpadded" else []
    )
    assert "geometry: input 28x28, conv1_padding=0, conv2_padding=0" in str(model.summary())
    # conv2 by Winograd: per pooled window 36 c1 c2 products + 120 c1 + 16 c2 transform
    # multiply-adds instead of 100 c1 c2
    c1, c2 = model.sizes.conv1_channels, model.sizes.conv2_channels
    windows = model.sizes.pool2_size[0] * model.sizes.pool2_size[1]
    conv2 = windows * (36 * c1 * c2 + 120 * c1 + 16 * c2)
    summary = model.summary()
    if model.isa == "generic":  # no fused multiply-add: conv2 stays direct there
        assert summary.conv2_algorithm == "direct"
        assert summary.executed_multiply_adds == expected
        assert "engine:" not in str(summary)
        return
    assert summary.conv2_algorithm == "winograd"
    assert summary.executed_multiply_adds == expected - windows * 100 * c1 * c2 + conv2
    assert (
        f"engine: conv2 by Winograd's F(2x2, 5x5), {conv2:,} multiply-adds per image instead "
        f"of {windows * 100 * c1 * c2:,} ({summary.executed_multiply_adds:,} in all)"
    ) in str(summary)


def test_cli_states_the_geometry_for_a_bare_file(tmp_path, capsys):
    weights = flatten_weights(36)
    np.savez(tmp_path / "bare.npz", **weights)
    flags = [
        "--conv-activation",
        "relu",
        "--fc-activation",
        "relu",
        "--output-activation",
        "identity",
        "--pool",
        "max",
    ]
    status = main(
        [
            "convert",
            str(tmp_path / "bare.npz"),
            str(tmp_path / "out.npz"),
            *flags,
            "--input-size",
            "32",
            "--conv1-padding",
            "2",
            "--conv2-padding",
            "0",
        ]
    )
    assert status == 0, capsys.readouterr().err
    with no_architecture_warning():
        model = LeNet.from_npz(tmp_path / "out.npz")
    assert model.architecture == {
        **MNIST_UNPADDED,
        "input_size": (32, 32),
        "conv1_padding": 2,
        "conv2_padding": 0,
    }
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out.npz")]) == 0
    out = capsys.readouterr().out
    assert "input 32x32, conv1 padding 2, conv2 padding 0, flatten -> 2 dense" in out
    assert main(["info", str(tmp_path / "bare.npz"), *flags]) == 0
    assert "assumed: input_size, conv1_padding, conv2_padding" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bitwise determinism for every member
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("member", list(MEMBERS))
def test_members_are_bitwise_deterministic_across_batch_position_and_threads(member, level):
    spec = MEMBERS[member]
    rng = np.random.default_rng(8)
    weights = random_weights(8, shapes=spec.shapes())
    model = model_at_level(LeNet(weights, **spec.architecture, **spec.geometry), level)
    x = rng.standard_normal((67, 1, *spec.geometry["input_size"]), dtype=np.float32)
    full = model.forward(x, num_threads=1)
    np.testing.assert_allclose(
        full, reference.forward(x, weights, **model.architecture), atol=ATOL, rtol=RTOL
    )
    for threads in (2, 3):
        np.testing.assert_array_equal(model.forward(x, num_threads=threads), full)
    for start, stop in ((0, 1), (5, 6), (3, 20), (30, 67)):
        np.testing.assert_array_equal(model.forward(x[start:stop]), full[start:stop])
    shuffled = x[::-1].copy()
    np.testing.assert_array_equal(model.forward(shuffled, num_threads=2), full[::-1])
