"""Never silently wrong: every PyTorch LeNet loads with its real architecture (from_torch, bare
state_dicts with BatchNorm folded, ONNX, the convert command), or with an ArchitectureWarning.

Everything is checked against PyTorch itself in eval mode -- random and trained models, random
inputs and real Fashion-MNIST images -- to 1e-5 absolute + 1e-5 relative, with >= 99.9 % of the
labels agreeing.
"""

import importlib.util
import io
import math
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the test extra installs it: a skip means a broken env
import torch.fx  # noqa: E402, F811
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import lenet_fast  # noqa: E402
from factories import (  # noqa: E402
    FASHION_MEAN,
    FASHION_STD,
    assert_matches_pytorch,
    no_architecture_warning,
    stated_options,
    torch_lenets,
    torch_scores,
    train_torch,
)
from lenet_fast import ArchitectureWarning, LeNet, TorchImportError, WeightFileError  # noqa: E402
from lenet_fast._architecture import DEFAULT_GEOMETRY  # noqa: E402
from lenet_fast._weights import fold_batchnorm  # noqa: E402
from lenet_fast.cli import main  # noqa: E402
from lenet_fast.datasets import load_sample  # noqa: E402

MIN_LABEL_AGREEMENT = 0.999
TRAINING_STEPS = 300
# The models users have (tests/factories.py): the PyTorch tutorial's Net (3 channels here), the
# design table's layout ("seed"), d2l.ai's LeNet, and the older tutorial's Net.
TutorialNet = torch_lenets().TutorialNet
SeedNet = torch_lenets().TableNet
d2l_lenet = torch_lenets().d2l
OldTutorialNet = torch_lenets().OldTutorialNet


MODELS = {
    "tutorial": lambda: TutorialNet(in_channels=3),
    "tutorial+bn": lambda: TutorialNet(in_channels=3, batchnorm=True),
    "seed-relu-sigmoid": lambda: SeedNet(),
    "seed-relu-sigmoid+bn": lambda: SeedNet(batchnorm=True),
    "seed-all-relu": lambda: SeedNet(fc="relu", output="identity"),
    "seed-all-relu+bn": lambda: SeedNet(fc="relu", output="identity", batchnorm=True),
    "d2l": lambda: d2l_lenet(),
    "d2l+bn": lambda: d2l_lenet(batchnorm=True),
    # conv3 and fc1 both 84 wide: which BatchNorm follows which layer is not told by its size
    "seed-84+bn": lambda: SeedNet(batchnorm=True, conv3_channels=84),
}


def build(name, seed=0):
    """A model with random weights and random (not trivial) BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = randomised_batchnorms(MODELS[name](), seed + 1)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = 1e-5
    return net


def randomised_batchnorms(net, seed=7):
    """`net` in eval mode with every BatchNorm's statistics and affine parameters drawn away
    from their initial values (weights 0.5-1.5: positive, as max pooling needs after one)."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            features = module.num_features
            module.running_mean.copy_(torch.rand(features, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(features, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(features, generator=generator) * 2 - 1)
    return net.eval()


def random_images(net, count=256, seed=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, net.channels, net.size, net.size), dtype=np.float32)


def fashion_images(net, count=1000):
    """Real Fashion-MNIST test images, normalised, shaped for `net`: 28x28, or zero-padded to
    32x32 (as the engine pads), replicated over 3 channels for the tutorial's Net."""
    images, _ = load_sample()
    x = ((images[:count].astype(np.float32) / 255 - FASHION_MEAN) / FASHION_STD)[:, None]
    if net.size == 32:
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.ascontiguousarray(np.repeat(x, net.channels, axis=1))


def label_agreement(model, net, x):
    return float(np.mean(model.predict(x) == torch_scores(net, x).argmax(axis=1)))


def train(net, steps=TRAINING_STEPS, seed=0):
    """A few hundred Adam steps on the shipped Fashion-MNIST sample (about a second)."""
    return train_torch(net, fashion_images(net), load_sample()[1], steps, seed)


@pytest.fixture(scope="module")
def trained():
    """Trained models, built once: the tutorial Net with BatchNorm, d2l's LeNet with
    BatchNorm, and the all-ReLU seed layout."""
    return {name: train(build(name)) for name in ("tutorial+bn", "d2l+bn", "seed-all-relu")}


# ---------------------------------------------------------------------------------------------
# from_torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_from_torch_matches_pytorch_on_random_and_real_images(name):
    net = build(name)
    with no_architecture_warning():
        model = LeNet.from_torch(net, example_input=random_images(net, 8))
    assert model.architecture == net.architecture
    assert model.assumed_architecture == {}
    assert_matches_pytorch(model, net, random_images(net))
    assert_matches_pytorch(model, net, fashion_images(net))


def batchnorm_after_activation(pool=nn.MaxPool2d, conv1_padding=0, conv2_padding=0):
    """BatchNorms after the activations: before a pooling, after one (before the flatten),
    after a hidden Linear's activation, and into a Linear that has its own BatchNorm."""
    torch.manual_seed(3)
    size = 28 + 2 * conv1_padding
    side = ((size - 4) // 2 - 4 + 2 * conv2_padding) // 2
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=conv1_padding),
        nn.ReLU(),
        nn.BatchNorm2d(6),
        pool(2),
        nn.Conv2d(6, 16, 5, padding=conv2_padding),
        nn.ReLU(),
        pool(2),
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.BatchNorm1d(120),
        nn.Linear(120, 84),
        nn.BatchNorm1d(84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )
    net.channels, net.size = 1, 28
    return randomised_batchnorms(net)


@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
def test_batchnorms_after_activations_fold_into_the_next_layer(pool):
    net = batchnorm_after_activation(pool, conv1_padding=2)
    with no_architecture_warning():
        model = LeNet.from_torch(net)
    assert model.architecture["conv_activation"] == "relu"
    assert model.architecture["pool"] == ("max" if pool is nn.MaxPool2d else "avg")
    assert_matches_pytorch(model, net, random_images(net))
    assert_matches_pytorch(model, net, fashion_images(net))


def test_batchnorms_after_functional_activations_fold_too():
    """The same read from a forward() that calls F.relu (the traced path, not a Sequential)."""
    layers = batchnorm_after_activation()

    class Functional(nn.Module):
        channels, size = 1, 28

        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.conv2, self.bn2 = layers[0], layers[2], layers[4], layers[7]
            self.fc1, self.bn3, self.fc2, self.bn4, self.fc3 = (
                layers[i] for i in (9, 11, 12, 13, 15)
            )

        def forward(self, x):
            x = F.max_pool2d(self.bn1(F.relu(self.conv1(x))), 2)
            x = self.bn2(F.max_pool2d(F.relu(self.conv2(x)), 2))
            x = self.bn3(F.relu(self.fc1(torch.flatten(x, 1))))
            return self.fc3(F.relu(self.bn4(self.fc2(x))))

    net = Functional().eval()
    with no_architecture_warning():
        model = LeNet.from_torch(net)
    assert_matches_pytorch(model, net, random_images(net))
    assert_matches_pytorch(model, layers, random_images(net))


def test_batchnorms_after_activations_that_cannot_fold_are_refused():
    net = batchnorm_after_activation()
    with torch.no_grad():
        net[2].weight[4] = -0.25
    assert (
        "module '2' (BatchNorm2d): a negative weight (gamma) before max pooling does not "
        "commute with it (channel 4: -0.25); expected the BatchNorm after the pooling"
    ) in refusal(net)
    assert (
        "module '2' (BatchNorm2d): module '4' (Conv2d) pads the normalised map with zeros"
    ) in refusal(batchnorm_after_activation(conv2_padding=2))
    padded_without_shift = batchnorm_after_activation(nn.AvgPool2d, conv2_padding=2)
    with torch.no_grad():  # no shift: the fold is exact, padding or not
        padded_without_shift[2].bias.copy_(padded_without_shift[2].running_mean * 0)
        padded_without_shift[2].running_mean.zero_()
    with no_architecture_warning():
        model = LeNet.from_torch(padded_without_shift)
    assert_matches_pytorch(model, padded_without_shift, random_images(padded_without_shift))
    layers = list(batchnorm_after_activation())
    after_flatten = nn.Sequential(*layers[:7], nn.Flatten(), nn.BatchNorm1d(256), *layers[9:])
    assert "expected a BatchNorm before the flatten, not after it" in refusal(after_flatten)
    between = nn.Sequential(layers[0], layers[3], layers[2], layers[1], *layers[4:])
    assert (
        "module '2' (BatchNorm2d): a BatchNorm is folded into the layer it directly follows, or "
        "after the activation into the next layer; this one follows module '1' (MaxPool2d) and "
        "precedes an activation"
    ) in refusal(between)


@pytest.mark.parametrize("name", ["d2l", "tutorial"])
def test_from_torch_checks_example_input_before_running_the_module(name):
    """A wrong example_input is a ValueError or TypeError naming what the first Conv2d takes,
    never the module's own RuntimeError."""
    net = build(name)
    good = random_images(net, 2)
    wrong_size = 32 if net.size == 28 else 28
    for bad in (
        good[0],
        good[:, :1, :4],
        np.zeros((2, net.channels, wrong_size, wrong_size)),
        np.zeros((2, net.channels + 1, net.size, net.size)),
        good[:0],
        [[1.0]],
        3.0,
    ):
        with pytest.raises(
            ValueError,
            match=rf"example_input must be images of shape \(N, "
            rf"{net.channels}, {net.size}, {net.size}\)",
        ):
            LeNet.from_torch(net, example_input=bad)
    for bad in (
        good.astype(str),
        good > 0,
        torch.zeros(2, net.channels, net.size, net.size, dtype=torch.complex64),
    ):
        with pytest.raises(TypeError, match="example_input must hold real numbers"):
            LeNet.from_torch(net, example_input=bad)
    with no_architecture_warning():  # integers and tensors of the right shape are fine
        LeNet.from_torch(net, example_input=torch.from_numpy((good > 0).astype(np.int64)))


@pytest.mark.parametrize("name", ["tutorial+bn", "d2l+bn", "seed-all-relu"])
def test_trained_models_from_torch_agree_with_pytorch(trained, name):
    net = trained[name]
    model = LeNet.from_torch(net)
    x = fashion_images(net)
    accuracy = np.mean(torch_scores(net, x).argmax(axis=1) == load_sample()[1])
    assert accuracy > 0.6, accuracy  # really trained: a wrong activation changes labels
    assert_matches_pytorch(model, net, x)
    assert_matches_pytorch(model, net, random_images(net))


def test_from_torch_save_npz_loads_with_no_warning(tmp_path):
    net = build("d2l+bn")
    LeNet.from_torch(net).save_npz(tmp_path / "lenet.npz")
    with no_architecture_warning():
        model = LeNet.from_npz(tmp_path / "lenet.npz")
    assert model.metadata["converted_from"] == "PyTorch Sequential"
    assert_matches_pytorch(model, net, fashion_images(net))


def test_from_torch_leaves_the_module_as_it_was():
    net = build("tutorial+bn").train()
    net.bn1.eval()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    LeNet.from_torch(net)
    assert net.training and not net.bn1.training and net.bn2.training
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())


@pytest.mark.parametrize("flatten", ["view-size", "reshape-400", "shape-0"])
def test_from_torch_reads_functional_and_method_forms(flatten):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 6, 5, bias=False), nn.Conv2d(6, 16, 5)
            self.d1, self.d2, self.d3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            x = F.avg_pool2d(self.c1(x).tanh(), kernel_size=2, stride=2)
            x = F.avg_pool2d(torch.tanh(self.c2(x)), (2, 2))
            if flatten == "view-size":
                x = x.view(x.size(0), -1)
            elif flatten == "reshape-400":
                x = x.reshape(-1, 400)
            else:
                x = torch.reshape(x, (x.shape[0], 400))
            x = self.drop(x)
            x = F.dropout(F.tanh(self.d1(x)), 0.3, training=self.training)
            return F.softmax(self.d3(torch.sigmoid(self.d2(x))), dim=1)

    net = Functional().train()
    net.channels, net.size = 1, 32
    model = LeNet.from_torch(net)
    assert model.architecture == {
        "conv_activation": "tanh",
        "fc_activation": "sigmoid",
        "output_activation": "softmax",
        "pool": "avg",
        **DEFAULT_GEOMETRY,
    }
    assert_matches_pytorch(model, net, random_images(net))


def test_from_torch_falls_back_to_torch_export():
    torch.manual_seed(0)
    net = OldTutorialNet().eval()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(net)
    model = LeNet.from_torch(net)
    assert model.architecture == {
        "conv_activation": "relu",
        "fc_activation": "relu",
        "output_activation": "softmax",
        "pool": "max",
        **DEFAULT_GEOMETRY,
    }
    assert_matches_pytorch(model, net, random_images(net))
    assert_matches_pytorch(model, net, fashion_images(net))


def refusal(module, x=None):
    with pytest.raises(TorchImportError) as info:
        LeNet.from_torch(module)
    return str(info.value)


def test_from_torch_refuses_what_the_engine_cannot_compute():
    def sequential(*replace):
        layers = list(d2l_lenet())
        for index, layer in replace:
            layers[index] = layer
        return nn.Sequential(*layers)

    assert refusal(sequential((1, nn.LeakyReLU()))) == (
        "Sequential: module '1' (LeakyReLU): this module is not one a LeNet-5 here is built from "
        "(Conv2d, Linear, BatchNorm1d/2d, ReLU, Sigmoid, Tanh, Softmax, LogSoftmax, Identity, "
        "MaxPool2d, AvgPool2d, Flatten, Dropout)"
    )
    assert (
        "module '3' (Conv2d): the engine computes 5x5 convolutions with stride 1; found "
        "stride (2, 2)" in refusal(sequential((3, nn.Conv2d(6, 16, 5, stride=2))))
    )
    assert "module '3' (Conv2d)" in refusal(sequential((3, nn.Conv2d(6, 16, 5, padding=1))))
    assert (
        "module '2' (MaxPool2d): expected 2x2 max pooling with stride 2 and no padding"
        in refusal(sequential((2, nn.MaxPool2d(3, 2))))
    )
    assert "pooling" in refusal(sequential((5, nn.MaxPool2d(2))))
    # 300 features: no input size of 28 or 32 with these paddings gives them.
    assert (
        "module '7' (Linear): fc1 takes 300 inputs, which no geometry gives with conv2's 16 "
        "channels" in refusal(sequential((7, nn.Linear(300, 120))))
    )
    assert "one activation after conv1, conv2 and conv3" in refusal(sequential((4, nn.ReLU())))
    six = nn.Sequential(*d2l_lenet(), nn.Linear(10, 10))
    assert (
        "module '12' (Linear): the engine computes one to three dense layers; this is a "
        "fourth" in refusal(six)
    )

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = d2l_lenet()

        def forward(self, x):
            y = self.net(x)
            return y + y

    assert "function _operator.add (node 'add')" in refusal(Residual())

    class LateBatchNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.bn = d2l_lenet(), nn.BatchNorm1d(10)

        def forward(self, x):
            return self.bn(torch.relu(self.net(x)))

    message = refusal(LateBatchNorm())
    assert (
        "module 'bn' (BatchNorm1d): a BatchNorm after the last layer's activation has no "
        "layer after it to fold into" in message
    )

    class AlwaysDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = d2l_lenet()

        def forward(self, x):
            return F.dropout(self.net(x), 0.5)

    assert "dropout with training=True drops values even in eval mode" in refusal(AlwaysDropout())

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = d2l_lenet()

        def forward(self, x):
            return self.net(x) if x.sum() > 0 else -self.net(x)

    message = refusal(DataDependent())
    assert "neither torch.fx" in message and "nor torch.export" in message
    with pytest.raises(TypeError, match="module must be a torch.nn.Module; got dict"):
        LeNet.from_torch({})


@pytest.mark.parametrize("form", ["function", "module", "method", "export"])
def test_log_softmax_output_matches_pytorch(form, tmp_path):
    """PyTorch's MNIST examples end in log_softmax (for NLLLoss): its function, module and
    tensor-method forms load, through torch.export too, and give PyTorch's log-probabilities;
    its state_dict loads with output_activation="log_softmax", and the ONNX round trip keeps it
    (LogSoftmax)."""

    class ExampleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = (
                nn.Linear(256, 120),
                nn.Linear(120, 84),
                nn.Linear(84, 10),
            )
            self.log_softmax = nn.LogSoftmax(dim=1)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            if form == "export":  # a loop over x.size(): torch.fx cannot trace it
                features = 1
                for size in x.size()[1:]:
                    features *= size
                x = x.view(-1, features)
            else:
                x = torch.flatten(x, 1)
            x = self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
            if form == "module":
                return self.log_softmax(x)
            return x.log_softmax(1) if form == "method" else F.log_softmax(x, dim=1)

    torch.manual_seed(0)
    net = ExampleNet().eval()
    if form == "export":
        with pytest.raises(Exception):
            torch.fx.symbolic_trace(net)
    with torch.no_grad():
        net.fc3.weight.mul_(100.0)  # confident scores: log-probabilities far below zero
    x = np.random.default_rng(0).normal(size=(300, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert expected.min() < -10  # confident: most classes far below the best one
    stated = {
        "conv_activation": "relu",
        "fc_activation": "relu",
        "output_activation": "log_softmax",
        "pool": "max",
        "input_size": 28,
        "conv1_padding": 0,
    }
    models = [
        LeNet.from_torch(net),
        LeNet.from_torch(net, example_input=torch.zeros(2, 1, 28, 28)),
        LeNet.from_state_dict(net.state_dict(), **stated),
    ]
    if importlib.util.find_spec("onnx") is not None:
        models[0].to_onnx(tmp_path / "net.onnx")
        models.append(LeNet.from_onnx(tmp_path / "net.onnx"))
    for model in models:
        assert model.architecture["output_activation"] == "log_softmax"
        np.testing.assert_allclose(model.forward(x), expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(model.predict(x), expected.argmax(axis=1))
    wrong_dim = nn.Sequential(*d2l_lenet(), nn.LogSoftmax(dim=0))
    assert "expected LogSoftmax over the classes (dim=1), found dim=0" in refusal(wrong_dim)


def test_importing_lenet_fast_does_not_import_torch():
    code = (
        "import sys, lenet_fast; from lenet_fast import cli, onnx; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# Bare state_dicts: the right answer, or a warning; BatchNorm folded, never dropped
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_bare_state_dict_matches_or_warns_and_matches_once_stated(name, tmp_path):
    net = build(name)
    x = fashion_images(net)
    state = net.state_dict()
    with pytest.warns(ArchitectureWarning) as caught:
        assumed = LeNet.from_state_dict(state)
    assert len(caught) == 1
    message = str(caught[0].message)
    for option, value in assumed.assumed_architecture.items():
        assert f"{option}={value!r}" in message
        assert f"--{option.replace('_', '-')} {value}" in message
    assert "save_npz" in message
    if assumed.architecture == net.architecture:
        assert_matches_pytorch(assumed, net, x)
    else:
        assert not np.allclose(assumed.forward(x), torch_scores(net, x), atol=1e-3)
    np.savez(tmp_path / "net.npz", **{key: value.numpy() for key, value in state.items()})
    with no_architecture_warning():
        stated = LeNet.from_npz(tmp_path / "net.npz", **stated_options(net))
        assert_matches_pytorch(stated, net, x)
        assert_matches_pytorch(
            LeNet.from_state_dict(state, **stated_options(net)), net, random_images(net)
        )


def test_assumed_architecture_by_layout():
    with pytest.warns(ArchitectureWarning, match="the PyTorch tutorial layout's architecture"):
        tutorial = LeNet.from_state_dict(build("tutorial").state_dict())
    assert tutorial.architecture == TutorialNet.architecture
    assert tutorial.assumed_architecture == {
        option: TutorialNet.architecture[option] for option in lenet_fast._architecture.OPTIONS
    }
    with pytest.warns(ArchitectureWarning, match="lenet_fast's defaults for its own layout"):
        seed = LeNet.from_state_dict(build("seed-relu-sigmoid").state_dict(), pool="max")
    assert seed.architecture == build("seed-relu-sigmoid").architecture
    assert "pool" not in seed.assumed_architecture
    assert (
        "assumed, not stated by the weights: conv_activation, fc_activation, "
        "output_activation" in str(seed.summary())
    )
    assert seed.summary().assumed == seed.assumed_architecture
    assert pickle.loads(pickle.dumps(seed)).assumed_architecture == seed.assumed_architecture
    with no_architecture_warning():
        assert LeNet.pretrained("fashion-mnist").assumed_architecture == {}
        assert "assumed" not in str(LeNet.pretrained("mnist").summary())


def test_save_npz_keeps_a_guess_a_guess(tmp_path):
    """A model loaded with an assumed architecture and saved again: the file records which
    options were assumed, so loading it warns again (with the same values and origin), while
    the options stated at load time stay stated."""
    state = build("tutorial").state_dict()
    with pytest.warns(ArchitectureWarning):
        guessed = LeNet.from_state_dict(state, pool="max")
    guessed.save_npz(tmp_path / "guess.npz")
    with pytest.warns(ArchitectureWarning, match="already assumed, not stated") as caught:
        again = LeNet.from_npz(tmp_path / "guess.npz")
    assert len(caught) == 1
    assert again.architecture == guessed.architecture
    assert again.assumed_architecture == guessed.assumed_architecture
    assert "pool" not in again.assumed_architecture
    # Stating the options now makes the file load silently, and saving that states them.
    with no_architecture_warning():
        stated = LeNet.from_npz(tmp_path / "guess.npz", **guessed.assumed_architecture)
        stated.save_npz(tmp_path / "stated.npz")
        assert LeNet.from_npz(tmp_path / "stated.npz").assumed_architecture == {}


def assert_refuses_metadata(tmp_path, model, key, bad_values):
    """A file holding `model` whose metadata[key] is each of `bad_values` is refused, naming
    the key."""
    weights = {name: np.asarray(value) for name, value in model.weights.items()}
    for bad in bad_values:
        lenet_fast._weights.save_npz(
            tmp_path / "bad.npz", weights, {"architecture": model.architecture, key: bad}
        )
        with pytest.raises(WeightFileError, match=key):
            LeNet.from_npz(tmp_path / "bad.npz")


def test_recorded_guess_must_name_stored_options(tmp_path):
    model = LeNet(build("seed-relu-sigmoid").state_dict())
    assert_refuses_metadata(
        tmp_path, model, "assumed_architecture", (["conv_activation", "colour"], "pool", [3])
    )


def test_the_readme_users_tutorial_model_gets_pytorchs_labels(trained):
    """The issue's story: np.savez of the tutorial Net's state_dict, then from_npz."""
    net = trained["tutorial+bn"]
    with pytest.warns(ArchitectureWarning):
        model = LeNet.from_state_dict(net.state_dict())
    assert label_agreement(model, net, fashion_images(net)) >= MIN_LABEL_AGREEMENT


def test_a_wrong_assumption_shows_in_a_trained_models_labels(trained):
    """Why the warning matters: d2l's trained LeNet under the assumed (default) architecture
    disagrees with PyTorch on most labels; stated, it agrees."""
    net = trained["d2l+bn"]
    x = fashion_images(net)
    with pytest.warns(ArchitectureWarning):
        assumed = LeNet.from_state_dict(net.state_dict())
    assert label_agreement(assumed, net, x) < 0.5
    assert (
        label_agreement(LeNet.from_state_dict(net.state_dict(), **stated_options(net)), net, x)
        >= MIN_LABEL_AGREEMENT
    )


@pytest.mark.parametrize(
    "naming, reverse",
    [("bn{}", False), ("{}_bn", True), ("bn_{}", True), ("{}.bn", True), ("norm{}", False)],
)
def test_batchnorm_key_naming_variants(naming, reverse):
    """conv3 and fc1 are both 84 wide: a name (conv3_bn, bn_fc1, conv3.bn) or, for bn1 ... bn4,
    the order of the keys (a state_dict lists modules as they were defined) tells which
    BatchNorm follows which layer."""
    net = build("seed-84+bn")
    layers = {"bn1": "conv1", "bn2": "conv2", "bn3": "conv3", "bn4": "fc1"}
    renamed = {}
    for key, value in net.state_dict().items():
        prefix, _, parameter = key.rpartition(".")
        if prefix in layers:
            by_name = naming in ("{}_bn", "bn_{}", "{}.bn")
            prefix = naming.format(layers[prefix] if by_name else prefix[-1])
        renamed[f"{prefix}.{parameter}"] = value
    if reverse:
        renamed = dict(reversed(renamed.items()))
    model = LeNet.from_state_dict(renamed, **stated_options(net))
    assert_matches_pytorch(model, net, random_images(net))


def wrapped_state_dict(net, wrapper):
    """The state_dict of `net` as saved from a wrapper: keys prefixed with module. (DataParallel),
    _orig_mod. (torch.compile), both, or model. (a training wrapper's attribute)."""
    if wrapper == "DataParallel":
        return nn.DataParallel(net).state_dict()
    if wrapper == "compile":
        return torch.compile(net).state_dict()
    if wrapper == "DataParallel+compile":
        return nn.DataParallel(torch.compile(net)).state_dict()
    return {f"{wrapper}{key}": value for key, value in net.state_dict().items()}


@pytest.mark.parametrize("wrapper", ["DataParallel", "compile", "DataParallel+compile", "model."])
@pytest.mark.parametrize("name", ["seed-84+bn", "tutorial", "caffe"])
def test_a_prefix_every_key_shares_is_read_as_a_wrapper(name, wrapper):
    """A state_dict saved from nn.DataParallel, DistributedDataParallel or torch.compile has
    every key behind the same prefix: the named layouts are found behind it, and the weights
    are the unwrapped state_dict's, bit for bit."""
    torch.manual_seed(5)
    net = torch_lenets().CaffeLeNet().eval() if name == "caffe" else build(name)
    state = wrapped_state_dict(net, wrapper)
    prefix = {"DataParallel": "module.", "compile": "_orig_mod."}.get(wrapper, wrapper)
    prefix = "module._orig_mod." if wrapper == "DataParallel+compile" else prefix
    assert all(key.startswith(prefix) for key in state)  # what this test is about
    model = LeNet.from_state_dict(state, **stated_options(net))
    plain = LeNet.from_state_dict(net.state_dict(), **stated_options(net))
    for key, value in plain.weights.items():
        np.testing.assert_array_equal(model.weights[key], value, err_msg=key)
    assert_matches_pytorch(model, net, random_images(net))


def test_batchnorm_names_point_at_their_layer_behind_a_wrapper_prefix():
    """conv3 and fc1 are both 84 wide; fc1's BatchNorm is named bn1 and listed first, so only
    its name (a number, read after the module. prefix) tells that it follows fc1."""
    net = build("seed-84+bn")
    names = {"bn1": "conv1_bn", "bn2": "conv2_bn", "bn3": "conv3_bn", "bn4": "bn1"}
    state = {}
    for key, value in nn.DataParallel(net).state_dict().items():
        wrapper, layer, parameter = key.split(".")
        state[f"{wrapper}.{names.get(layer, layer)}.{parameter}"] = value
    first = {key: value for key, value in state.items() if key.startswith("module.bn1.")}
    state = {**first, **state}
    assert list(state)[0] == "module.bn1.weight"  # what this test is about
    model = LeNet.from_state_dict(state, **stated_options(net))
    assert_matches_pytorch(model, net, random_images(net))


def test_numbered_sequential_batchnorm_and_strict_false_folds_it():
    net = build("d2l+bn")
    state = net.state_dict()
    assert "1.running_mean" in state
    for strict in (True, False):
        model = LeNet.from_state_dict(state, strict=strict, **stated_options(net))
        assert_matches_pytorch(model, net, fashion_images(net))


def test_strict_false_never_drops_batchnorm_and_never_suggests_it():
    net = build("tutorial+bn")
    state = dict(net.state_dict())
    state["bn9.running_mean"], state["bn9.running_var"] = torch.zeros(33), torch.ones(33)
    for strict in (True, False):
        with pytest.raises(WeightFileError, match="BatchNorm 'bn9' has 33 features") as info:
            LeNet.from_state_dict(state, strict=strict, **TutorialNet.architecture)
        assert "strict" not in str(info.value)
    del state["bn2.running_var"]
    with pytest.raises(WeightFileError, match="BatchNorm 'bn2' has no bn2.running_var") as info:
        LeNet.from_state_dict(state, strict=False, **TutorialNet.architecture)
    assert "strict" not in str(info.value)


def test_conv_without_bias_before_batchnorm():
    torch.manual_seed(0)
    net = build("tutorial+bn")
    net.conv1.bias = None
    model = LeNet.from_state_dict(net.state_dict(), **stated_options(net))
    assert_matches_pytorch(model, net, random_images(net))
    assert_matches_pytorch(LeNet.from_torch(net), net, random_images(net))
    plain = build("tutorial").state_dict()
    del plain["conv1.bias"]
    with pytest.raises(WeightFileError, match="incomplete weights .* missing conv1.bias"):
        LeNet.from_state_dict(plain, **TutorialNet.architecture)


def eps_sensitive_net(eps=1e-3):
    """A trained-looking LeNet whose BatchNorms use `eps` (by default 1e-3: Keras's default,
    and a common choice) over small running variances, where PyTorch's default 1e-5 changes
    the outputs."""
    net = build("seed-all-relu+bn")
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
            # Variances of 1e-3 (as after inputs scaled to small values), gamma scaled with
            # them so that activations keep their size: eps 1e-5 or 1e-3 then scales each
            # BatchNorm's output by ~1.0 or ~0.7.
            module.running_var.mul_(1e-3)
            module.weight.data.mul_(math.sqrt(1e-3))
    return net


def test_an_assumed_batchnorm_eps_is_announced_and_stating_it_gives_pytorchs_outputs(tmp_path):
    net = eps_sensitive_net()
    x, state = random_images(net), net.state_dict()
    with pytest.warns(ArchitectureWarning) as caught:
        assumed = LeNet.from_state_dict(state, **net.architecture)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "state batchnorm_eps, so lenet_fast assumed batchnorm_eps=1e-05" in message
    assert "a state_dict does not store a BatchNorm's eps: PyTorch's default" in message
    assert "whether it came before the activation, which is assumed" in message
    assert "--batchnorm-eps 1e-05" in message
    assert assumed.assumed_architecture == {"batchnorm_eps": 1e-05}
    assert "assumed, not stated by the weights: batchnorm_eps" in str(assumed.summary())
    assert not np.allclose(assumed.forward(x), torch_scores(net, x), atol=1e-2)  # not a detail
    np.savez(tmp_path / "net.npz", **{key: value.numpy() for key, value in state.items()})
    with pytest.warns(ArchitectureWarning, match="assumed batchnorm_eps=1e-05"):
        LeNet.from_npz(tmp_path / "net.npz", **net.architecture)
    with no_architecture_warning():
        for model in (
            LeNet.from_state_dict(state, **stated_options(net)),
            LeNet.from_npz(tmp_path / "net.npz", **stated_options(net)),
            LeNet.from_torch(net),  # reads each BatchNorm's eps from the module
            LeNet(state, **stated_options(net)),
        ):
            assert model.assumed_architecture == {}
            assert_matches_pytorch(model, net, x)
        # LeNet(weights) takes its signature's defaults without a warning, 1e-5 among them.
        default = LeNet(state, **net.architecture)
    np.testing.assert_array_equal(default.forward(x), assumed.forward(x))
    for bad in (-1e-3, float("nan"), float("inf"), "1e-3", True):
        with pytest.raises(ValueError, match="batchnorm_eps must be"):
            LeNet.from_state_dict(state, **net.architecture, batchnorm_eps=bad)
    # Weights without a BatchNorm: nothing to assume, and an eps stated for them is refused
    # (it would change nothing, so the caller's idea of the model is off).
    plain = build("seed-all-relu")
    with no_architecture_warning():
        model = LeNet.from_state_dict(plain.state_dict(), **plain.architecture)
    assert_matches_pytorch(model, plain, x)
    with pytest.raises(ValueError, match="hold no BatchNorm layer to fold it into"):
        LeNet.from_state_dict(plain.state_dict(), **plain.architecture, batchnorm_eps=0.5)


def test_save_npz_keeps_an_assumed_batchnorm_eps_a_guess(tmp_path):
    """The saved file holds the folded weights; it records that their eps was assumed, so
    loading it warns again; stating the same eps confirms it, another one is refused (a folded
    BatchNorm cannot be refolded)."""
    net = eps_sensitive_net(eps=1e-5)
    with pytest.warns(ArchitectureWarning):
        guessed = LeNet.from_state_dict(net.state_dict(), **net.architecture)
    guessed.save_npz(tmp_path / "guess.npz")
    with pytest.warns(ArchitectureWarning, match="already assumed, not stated") as caught:
        again = LeNet.from_npz(tmp_path / "guess.npz")
    assert len(caught) == 1 and "--batchnorm-eps 1e-05" in str(caught[0].message)
    assert again.assumed_architecture == {"batchnorm_eps": 1e-05}
    assert "assumed_batchnorm_eps" not in again.metadata
    assert_matches_pytorch(again, net, random_images(net))
    with no_architecture_warning():
        confirmed = LeNet.from_npz(tmp_path / "guess.npz", batchnorm_eps=1e-5)
        confirmed.save_npz(tmp_path / "stated.npz")
        assert LeNet.from_npz(tmp_path / "stated.npz").assumed_architecture == {}
    # Folded with a stated eps, the file holds no BatchNorm left to state an eps for.
    with pytest.raises(ValueError, match="save_npz wrote holds its BatchNorms folded already"):
        LeNet.from_npz(tmp_path / "stated.npz", batchnorm_eps=1e-5)
    with pytest.raises(ValueError, match="folded into its weights with an assumed eps of 1e-05"):
        LeNet.from_npz(tmp_path / "guess.npz", batchnorm_eps=1e-3)
    assert_refuses_metadata(tmp_path, confirmed, "assumed_batchnorm_eps", (-1.0, "1e-5", None))


def test_cli_states_or_refuses_the_batchnorm_eps(tmp_path, capsys):
    net = eps_sensitive_net()
    torch.save(net.state_dict(), tmp_path / "in.pt")
    flags = [f"--{option.replace('_', '-')}={value}" for option, value in net.architecture.items()]
    status, _, err = run_cli(
        capsys, "convert", "--torch", tmp_path / "in.pt", tmp_path / "a.npz", *flags
    )
    assert status == 1 and "does not state batchnorm_eps" in err and "--batchnorm-eps 1e-05" in err
    assert not (tmp_path / "a.npz").exists()
    status, _, err = run_cli(
        capsys,
        "convert",
        "--torch",
        tmp_path / "in.pt",
        tmp_path / "a.npz",
        *flags,
        "--batchnorm-eps",
        "1e-3",
    )
    assert status == 0, err
    with no_architecture_warning():
        assert_matches_pytorch(LeNet.from_npz(tmp_path / "a.npz"), net, random_images(net))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "convert",
                "--torch",
                str(tmp_path / "in.pt"),
                str(tmp_path / "b.npz"),
                "--batchnorm-eps",
                "-1",
            ]
        )
    assert exit_info.value.code == 2
    assert "--batchnorm-eps: expected a finite number >= 0" in capsys.readouterr().err
    pytest.importorskip("onnx")
    LeNet.from_torch(net).to_onnx(tmp_path / "net.onnx")  # ONNX stores each epsilon
    status, _, err = run_cli(capsys, "info", tmp_path / "net.onnx", "--batchnorm-eps", "1e-3")
    assert status == 1 and "--batchnorm-eps is for state_dicts" in err
    # Nothing to state it for: a pretrained model, a file without BatchNorm.
    status, _, err = run_cli(capsys, "info", "fashion-mnist", "--batchnorm-eps", "1e-3")
    assert status == 1 and "a pretrained model holds none" in err
    status, _, err = run_cli(capsys, "info", tmp_path / "a.npz", "--batchnorm-eps", "1e-3")
    assert status == 1 and "hold no BatchNorm layer" in err


def test_fold_batchnorm_matches_pytorch_and_the_keras_axis():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(4, 5, 5).double()
    norm = nn.BatchNorm2d(5, eps=1e-3).double().eval()
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.1, 3)
    x = torch.from_numpy(rng.standard_normal((3, 4, 9, 9)))
    parameters = [
        value.detach().numpy()
        for value in (
            conv.weight,
            conv.bias,
            norm.weight,
            norm.bias,
            norm.running_mean,
            norm.running_var,
        )
    ]
    weight, bias = fold_batchnorm(*parameters, eps=1e-3)
    assert weight.dtype == bias.dtype == np.float32
    folded = F.conv2d(x, torch.from_numpy(weight).double(), torch.from_numpy(bias).double())
    with torch.no_grad():
        np.testing.assert_allclose(folded.numpy(), norm(conv(x)).numpy(), rtol=1e-6, atol=1e-6)
    dense_weight = rng.standard_normal((7, 3))  # Keras Dense: (inputs, outputs)
    keras_weight, _ = fold_batchnorm(
        dense_weight, None, [1, 2, 3], None, [0, 0, 0], [1, 4, 9], eps=0.0, axis=-1
    )
    np.testing.assert_allclose(keras_weight, dense_weight * [1, 1, 1], rtol=1e-7)
    with pytest.raises(ValueError, match="expected running_var \\+ eps > 0"):
        fold_batchnorm(np.ones((2, 2)), None, None, None, [0, 0], [-1, 1], eps=0.0)
    with pytest.raises(ValueError, match="expected running_mean of length 2"):
        fold_batchnorm(np.ones((2, 2)), None, None, None, [0, 0, 0], [1, 1])


# ---------------------------------------------------------------------------------------------
# ONNX BatchNormalization nodes
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"
)
@pytest.mark.parametrize("name", ["tutorial+bn", "seed-relu-sigmoid+bn", "d2l+bn"])
def test_onnx_batchnormalization_is_folded(name):
    onnx = pytest.importorskip("onnx")
    net = build(name)
    graph = onnx.load_from_string(onnx_bytes(net))
    assert "BatchNormalization" in [node.op_type for node in graph.graph.node]
    with no_architecture_warning():
        model = LeNet.from_onnx(graph)
    # the activations and pooling (the geometry the ONNX reader states is the interop tests')
    assert {option: model.architecture[option] for option in lenet_fast._architecture.OPTIONS} == {
        option: net.architecture[option] for option in lenet_fast._architecture.OPTIONS
    }
    assert_matches_pytorch(model, net, fashion_images(net))


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"
)
@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
def test_onnx_batchnormalization_after_the_activation_is_folded_into_the_next_layer(pool):
    onnx = pytest.importorskip("onnx")
    net = batchnorm_after_activation(pool, conv1_padding=2)
    graph = onnx.load_from_string(onnx_bytes(net))
    found = [node.op_type for node in graph.graph.node]
    assert found.count("BatchNormalization") == 4, found
    with no_architecture_warning():
        model = LeNet.from_onnx(graph)
    assert_matches_pytorch(model, net, random_images(net))
    assert_matches_pytorch(model, net, fashion_images(net))


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"
)
def test_onnx_batchnormalization_after_the_activation_that_cannot_fold_is_refused():
    onnx = pytest.importorskip("onnx")

    def message(net):
        with pytest.raises(lenet_fast.onnx.ONNXImportError) as info:
            LeNet.from_onnx(onnx.load_from_string(onnx_bytes(net)))
        return str(info.value)

    net = batchnorm_after_activation()
    with torch.no_grad():
        net[2].weight[4] = -0.25
    assert (
        "a negative scale before max pooling does not commute with it (channel 4: scale -0.25)"
        in message(net)
    )
    assert "pads the normalised map with zeros" in message(
        batchnorm_after_activation(conv2_padding=2)
    )
    layers = list(batchnorm_after_activation())
    between = nn.Sequential(layers[0], layers[3], layers[2], layers[1], *layers[4:])
    late = randomised_batchnorms(nn.Sequential(*layers, nn.ReLU(), nn.BatchNorm1d(10)))
    for changed in (between, late):
        changed.channels, changed.size = 1, 28
    assert "or after the activation into the next layer; this one precedes Relu node" in message(
        between
    )
    assert "has no layer after it to fold into" in message(late)


def onnx_bytes(net):
    """`net` exported by torch.onnx with its BatchNormalization nodes kept."""
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.from_numpy(random_images(net, 2)),),
        buffer,
        dynamo=False,
        do_constant_folding=False,
    )
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_cli(capsys, *arguments):
    status = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_predict_prints_the_warning_as_one_line_and_takes_the_options(tmp_path, capsys):
    net = build("d2l")
    np.savez(tmp_path / "net.npz", **{k: v.numpy() for k, v in net.state_dict().items()})
    x = fashion_images(net, 50)
    np.save(tmp_path / "x.npy", x)
    status, out, err = run_cli(
        capsys, "predict", tmp_path / "net.npz", tmp_path / "x.npy", "--quiet"
    )
    assert status == 0
    assert len(err.splitlines()) == 1
    assert err.startswith("lenet-fast: warning: ") and "--conv-activation relu" in err
    flags = [
        "--conv-activation=sigmoid",
        "--fc-activation=sigmoid",
        "--output-activation=identity",
        "--pool=avg",
    ]
    status, out, err = run_cli(
        capsys, "predict", tmp_path / "net.npz", tmp_path / "x.npy", "--quiet", *flags
    )
    assert (status, err) == (0, "")
    labels = [int(line.split(",")[1]) for line in out.splitlines()[1:]]
    assert labels == torch_scores(net, x).argmax(axis=1).tolist()
    np.save(tmp_path / "y.npy", np.array(labels))
    status, out, err = run_cli(
        capsys,
        "evaluate",
        tmp_path / "net.npz",
        tmp_path / "x.npy",
        tmp_path / "y.npy",
        "--quiet",
        *flags,
    )
    assert (status, err) == (0, "") and "accuracy: 1.0000" in out


@pytest.mark.parametrize("source", ["npz", "torch", "torch-checkpoint", "onnx"])
def test_cli_convert_round_trips(tmp_path, capsys, source):
    net = build("seed-all-relu+bn")
    state = net.state_dict()
    flags = [
        f"--{option.replace('_', '-')}={value}" for option, value in stated_options(net).items()
    ]
    if source == "npz":
        np.savez(tmp_path / "in.npz", **{key: value.numpy() for key, value in state.items()})
        arguments = [tmp_path / "in.npz", *flags]
    elif source == "torch":
        torch.save(state, tmp_path / "in.pt")
        arguments = ["--torch", tmp_path / "in.pt", *flags]
    elif source == "torch-checkpoint":  # a training checkpoint of a DataParallel model
        wrapped = nn.DataParallel(net).state_dict()
        torch.save({"epoch": 7, "state_dict": wrapped}, tmp_path / "in.pt")
        arguments = ["--torch", tmp_path / "in.pt", *flags]
    else:
        pytest.importorskip("onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.from_numpy(random_images(net, 2)),),
                str(tmp_path / "in.onnx"),
                dynamo=False,
            )
        arguments = [tmp_path / "in.onnx"]
    classes = ",".join(f"class {k}" for k in range(10))
    status, _, err = run_cli(
        capsys,
        "convert",
        *arguments,
        tmp_path / "out.npz",
        "--classes",
        classes,
        "--preprocessing",
        "mean=0.286,std=0.353",
    )
    assert status == 0, err
    assert err.startswith("wrote ")
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
    with no_architecture_warning():
        model = LeNet.from_npz(tmp_path / "out.npz")
    assert model.classes == classes.split(",")
    assert model.metadata["preprocessing"]["std"] == 0.353
    assert_matches_pytorch(model, net, random_images(net))
    images, _ = load_sample()
    padded = np.pad(images[:100], ((0, 0), (2, 2), (2, 2)))[:, None]
    np.testing.assert_array_equal(
        model.predict(padded),
        model.predict(((padded.astype(np.float32) / 255 - 0.286) / 0.353).astype(np.float32)),
    )


def test_cli_convert_refuses_to_store_a_guess_and_unreadable_input(tmp_path, capsys):
    net = build("tutorial")
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in net.state_dict().items()})
    status, _, err = run_cli(capsys, "convert", tmp_path / "in.npz", tmp_path / "out.npz")
    assert status == 1
    assert (
        "a converted file must not store a guess: pass --conv-activation relu "
        "--fc-activation relu --output-activation identity --pool max" in err
    )
    assert not (tmp_path / "out.npz").exists()
    torch.save({"net": nn.ReLU()}, tmp_path / "pickled.pt")
    status, _, err = run_cli(
        capsys, "convert", "--torch", tmp_path / "pickled.pt", tmp_path / "out.npz"
    )
    assert status == 1 and "weights_only=True" in err
    status, _, err = run_cli(capsys, "convert", tmp_path / "pickled.pt", tmp_path / "out.npz")
    assert status == 1 and "pass --torch" in err
    status, _, err = run_cli(capsys, "convert", tmp_path / "in.npz", tmp_path / "out.bin")
    assert status == 1 and "ending in .npz" in err
    status, _, err = run_cli(
        capsys,
        "convert",
        tmp_path / "in.npz",
        tmp_path / "out.npz",
        "--preprocessing",
        "mu=3",
        "--conv-activation",
        "relu",
        "--fc-activation",
        "relu",
        "--output-activation",
        "identity",
        "--pool",
        "max",
    )
    assert status == 1 and "expected comma-separated scale=" in err
    assert not (tmp_path / "out.npz").exists()


def test_architecture_warning_is_exported():
    assert issubclass(lenet_fast.ArchitectureWarning, UserWarning)
    assert "ArchitectureWarning" in lenet_fast.__all__ and "TorchImportError" in lenet_fast.__all__


# ---------------------------------------------------------------------------------------------
# TorchScript modules: read through torch's ONNX exporter
# ---------------------------------------------------------------------------------------------


def scripted(net, how, tmp_path):
    """`net` as torch.jit.script or torch.jit.trace gives it, or saved and loaded again."""
    x = torch.zeros(2, net.channels, net.size, net.size)
    if how == "script":
        return torch.jit.script(net)
    if how == "trace":
        return torch.jit.trace(net, x)
    torch.jit.save(torch.jit.script(net), tmp_path / "scripted.pt")
    return torch.jit.load(tmp_path / "scripted.pt")


@pytest.mark.parametrize("how", ["script", "trace", "saved"])
@pytest.mark.parametrize("name", ["tutorial", "mnist", "d2l+bn"])
def test_torchscript_modules_load_with_the_architecture_of_the_module(tmp_path, name, how):
    """fx cannot trace a ScriptModule; from_torch reads it through torch.onnx.export (in
    memory) and the ONNX reader, finds the input size by running it on 28x28 and 32x32 zeros,
    checks the converted model against the module on them, and agrees with from_torch of the
    module it came from."""
    torch.manual_seed(9)
    net = torch_lenets().MnistLeNet().eval() if name == "mnist" else build(name)
    module = scripted(net, how, tmp_path)
    with no_architecture_warning():
        model = LeNet.from_torch(module)
    direct = LeNet.from_torch(net)
    assert model.architecture == direct.architecture
    assert model.metadata["converted_from"].startswith("PyTorch TorchScript ")
    for key, value in direct.weights.items():  # BatchNorm: folded by the exporter in float32
        np.testing.assert_allclose(model.weights[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    assert_matches_pytorch(model, net, random_images(net))


def test_torchscript_modules_of_other_sizes_need_an_example_input():
    torch.manual_seed(10)
    net = torch_lenets().mnist_sequential().eval()
    net[7] = nn.Linear(16 * 6 * 6, 120)  # 36x36 input
    module = torch.jit.script(net)
    with pytest.raises(
        TorchImportError,
        match=r"^Sequential: a TorchScript module runs on neither \(28x28: RuntimeError: .*\) "
        r"of 28x28 and 32x32 images; pass example_input=images it takes$",
    ):
        LeNet.from_torch(module)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((50, 1, 36, 36), np.float32))
    model = LeNet.from_torch(module, example_input=x[:2])
    assert model.architecture["input_size"] == (36, 36)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x.numpy()), net(x).numpy(), atol=1e-5, rtol=1e-5)


def test_torchscript_modules_outside_the_family_are_refused_naming_the_node():
    net = torch_lenets().mnist_sequential().eval()
    net[0] = nn.Conv2d(1, 6, 3)  # runs on 28x28: 26 -> 13 -> 9 -> 4, fc1 still 256 inputs
    with pytest.raises(
        TorchImportError,
        match=r"^Sequential \(TorchScript, read as ONNX\): unsupported Conv node .*kernel",
    ):
        LeNet.from_torch(torch.jit.script(net))


def test_cli_refuses_a_torchscript_archive_without_loading_it(tmp_path, capsys):
    torch.jit.save(torch.jit.script(build("tutorial")), tmp_path / "scripted.pt")
    status, _, err = run_cli(
        capsys, "convert", "--torch", tmp_path / "scripted.pt", tmp_path / "out.npz"
    )
    assert status == 1
    assert (
        "a TorchScript archive (torch.jit.save), which holds code; lenet-fast runs no code" in err
    )
    assert not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------------------------------------
# Modules that take flat or (N, H, W) images and reshape them first
# ---------------------------------------------------------------------------------------------

ReshapingLeNet = torch_lenets().ReshapingLeNet


@pytest.mark.parametrize("reshape", ReshapingLeNet.INPUT_RESHAPES)
def test_a_first_reshape_of_the_images_is_the_input_shape(reshape):
    """The model takes (N, 28, 28) images where the module took them flat or without the
    channel axis: the same floats in the same order."""
    torch.manual_seed(12)
    net = ReshapingLeNet(reshape).eval()
    with no_architecture_warning():
        model = LeNet.from_torch(net)
    assert model.architecture == {**net.architecture, **DEFAULT_GEOMETRY, "input_size": (28, 28)}
    x = random_images(net, 65)[:, 0]
    with torch.no_grad():
        expected = net(torch.from_numpy(x.reshape(len(x), *net.input_shape))).numpy()
    np.testing.assert_allclose(model.forward(x), expected, atol=1e-5, rtol=1e-5)


def test_a_reshape_of_the_images_after_a_layer_is_refused():
    class Late(ReshapingLeNet):
        def forward(self, x):
            x = F.relu(self.conv1(x)).view(-1, 6, 24, 24)
            return super().forward(x)

    with pytest.raises(TorchImportError, match=r"expected a flatten to \(batch, features\)"):
        LeNet.from_torch(Late("unsqueeze"))


def test_a_pruned_state_dict_gives_the_weights_the_module_computes_with(tmp_path):
    """torch.nn.utils.prune leaves conv1.weight_orig and conv1.weight_mask in the state_dict
    (until prune.remove): the weight is their product, bit for bit PyTorch's, from the mapping
    and from an .npz; a mask of another shape is refused naming it."""
    import torch.nn.utils.prune as prune

    net = build("seed-relu-sigmoid")
    for module in (net.conv1, net.conv3, net.fc1):
        prune.l1_unstructured(module, "weight", amount=0.6)
    state = net.state_dict()
    assert "conv1.weight_mask" in state and "conv1.weight" not in state  # what this is about
    np.savez(tmp_path / "pruned.npz", **{key: value.numpy() for key, value in state.items()})
    for model in (
        LeNet.from_state_dict(state, **stated_options(net)),
        LeNet.from_npz(tmp_path / "pruned.npz", **stated_options(net)),
    ):
        for layer in ("conv1", "conv3", "fc1"):
            np.testing.assert_array_equal(
                model.weights[f"{layer}.weight"], getattr(net, layer).weight.detach().numpy()
            )
        assert_matches_pytorch(model, net, random_images(net))
    state["fc1.weight_mask"] = state["fc1.weight_mask"][:, :10]
    with pytest.raises(
        WeightFileError,
        match=r"^'fc1\.weight_mask': expected the shape of 'fc1\.weight_orig', \(84, 120\), "
        r"found \(84, 10\)$",
    ):
        LeNet.from_state_dict(state, **stated_options(net))
