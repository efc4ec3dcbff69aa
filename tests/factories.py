"""The one place tests (and ``bench/``) get random weights, images and PyTorch LeNets from.

* `random_weights`: seeded canonical float32 weights of any widths and input channels (or of any
  family member's shapes), uniform or normal, scaled by the fan-in like PyTorch's default
  initialisation (so activations stay in their interesting range); `member_weights`: those of a
  named member (``lenet_fast._architecture.MEMBERS``);
* `normal_weights`, `unit_normal_weights`: the same with normal draws;
* `normal_images`: seeded normal images of any dtype; `LAYOUTS`: every memory layout and dtype
  an input may come in;
* `random_images`: seeded standard-normal float32 images;
* `model_at_level`: the same model on the kernels of another ISA level;
* `torch_lenets`: the PyTorch LeNet definitions (and every named family member) the reference,
  model and interop tests export, import and compare against (torch is imported when it is first
  called: this module needs none); `export_onnx`: one of them to an ``.onnx`` file;
  `onnxruntime_scores`: what ONNX Runtime computes with a model;
* `real_images`: the shipped Fashion-MNIST sample as floats in [0, 1], padded, 1 or 3 channels;
* `keras_same_lenet`: the issue's Keras LeNet ('same' first convolution, tanh, average
  pooling); `saved_keras_models`, `assert_keras_parity`: Keras models saved as ``.keras`` and
  ``.h5``, and lenet_fast's outputs against Keras's own (Keras is imported by the tests that use
  them, with the PyTorch backend);
* `torch_scores`, `assert_matches_pytorch`: a PyTorch net's outputs, and a lenet_fast model
  against them (1e-5 absolute + 1e-5 relative, >= 99.9 % equal labels); `train_torch`: a few
  hundred seeded Adam steps; `no_architecture_warning`: a block where an ArchitectureWarning is
  an error; `stated_options`: a PyTorch net's architecture and BatchNorm eps, all stated;
  `FASHION_MEAN`, `FASHION_STD`: the normalisation of Fashion-MNIST pixels;
* `save_like_users`: a PyTorch model's state_dict written with ``np.savez``, as users do;
* `leftovers`: the temporary files an interrupted atomic write left behind;
* `traced_peak`: the peak of Python allocations in a block (tracemalloc);
* `exact`, `starts`: ``pytest.raises(match=)`` patterns matching one whole message, or its start;
* `run_python`: code in a fresh interpreter that imports the lenet_fast under test and this
  module, with ``rss_mb()``, ``peak_mb()`` and ``report(**values)``; returns what it reports.

Import it as ``from factories import ...`` in tests (pytest puts ``tests/`` on ``sys.path``) and
as ``from tests.factories import ...`` from ``bench/``.
"""

import contextlib
import functools
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
import types
import warnings
from pathlib import Path

import numpy as np

from lenet_fast import ArchitectureWarning
from lenet_fast._architecture import LAYERS, MEMBERS
from lenet_fast._weights import canonical_shapes

DEFAULT_WIDTHS = (6, 16, 120, 84, 10)  # conv1, conv2, conv3, fc1 channels; classes
FASHION_MEAN, FASHION_STD = 0.286, 0.353  # Fashion-MNIST pixels / 255: mean, standard deviation


def random_weights(
    seed=0,
    in_channels=1,
    widths=DEFAULT_WIDTHS,
    *,
    conv1=None,
    conv2=None,
    conv3=None,
    fc1=None,
    n_classes=None,
    distribution="uniform",
    gain=1.0,
    fan_in_scaled=True,
    bias_bound=0.1,
    shapes=None,
):
    """Canonical float32 weights, drawn layer by layer (weight, then bias) from one generator.

    `normal_weights` and `unit_normal_weights` are this function with other defaults.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``.
    in_channels : int
        Input channels (conv1's second dimension).
    widths : tuple of 5 int
        conv1, conv2, conv3 channels, fc1 units, classes.
    conv1, conv2, conv3, fc1, n_classes : int, optional
        Override one entry of `widths`.
    distribution : {"uniform", "normal"}
        Uniform in +-bound, or normal with standard deviation bound.
    gain : float
        Multiplies the bound.
    fan_in_scaled : bool
        Whether the weights' bound is ``gain / sqrt(fan_in)`` (PyTorch's default scale) rather
        than ``gain``.
    bias_bound : float or None
        Biases' bound; None: the same as the layer's weights.
    shapes : dict of str to tuple, optional
        Canonical shapes of any member of the family (``Member.shapes()``,
        ``_architecture.canonical_shapes``); given, `in_channels` and the widths are not used.

    Returns
    -------
    dict of str to ndarray of float32
    """
    overrides = (conv1, conv2, conv3, fc1, n_classes)
    conv1, conv2, conv3, fc1, n_classes = (
        width if override is None else override for width, override in zip(widths, overrides)
    )
    if shapes is None:
        shapes = canonical_shapes(
            in_channels=in_channels,
            conv1_channels=conv1,
            conv2_channels=conv2,
            conv3_channels=conv3,
            fc1_units=fc1,
            n_classes=n_classes,
        )
    rng = np.random.default_rng(seed)

    def draw(bound, shape):
        if distribution == "uniform":
            return rng.uniform(-bound, bound, shape).astype(np.float32)
        if distribution == "normal":
            return (rng.normal(size=shape) * bound).astype(np.float32)
        raise ValueError(f"distribution: expected 'uniform' or 'normal', got {distribution!r}")

    weights = {}
    for layer in LAYERS:
        if f"{layer}.weight" not in shapes:
            continue
        shape = shapes[f"{layer}.weight"]
        bound = gain / math.sqrt(math.prod(shape[1:]) or 1) if fan_in_scaled else gain
        weights[f"{layer}.weight"] = draw(bound, shape)
        weights[f"{layer}.bias"] = draw(bound if bias_bound is None else bias_bound, shape[:1])
    return weights


# Normal, scaled by the fan-in like a trained net (biases too), so outputs vary between images.
normal_weights = functools.partial(random_weights, distribution="normal", bias_bound=None)
# Standard normal, unscaled: for tests of layouts and files, where values only need to differ.
unit_normal_weights = functools.partial(
    random_weights, distribution="normal", fan_in_scaled=False, bias_bound=None
)


def member_weights(member, in_channels=1, seed=0):
    """Uniform weights (`random_weights`) of a member of ``lenet_fast._architecture.MEMBERS``
    (a `Member`, or its name)."""
    member = MEMBERS[member] if isinstance(member, str) else member
    return random_weights(seed, shapes=member.shapes(in_channels=in_channels))


def model_at_level(model, level):
    """`model`'s weights, architecture, threads and metadata on the kernels of `level`."""
    copy = model.with_isa(level)
    assert copy.isa == level
    return copy


def normal_images(n, in_channels=1, size=32, seed=1, dtype=np.float32):
    """Normal images (``rng.normal``, then cast to `dtype`), shape (n, in_channels, size, size)."""
    return np.random.default_rng(seed).normal(size=(n, in_channels, size, size)).astype(dtype)


def _unaligned(array, writeable):
    data = np.ascontiguousarray(array, dtype=np.float32)
    if writeable:
        buffer = np.empty(data.nbytes + 1, np.uint8)
        view = buffer[1:].view(np.float32).reshape(array.shape)
        view[...] = data
    else:
        view = np.frombuffer(b"\0" + data.tobytes(), dtype=np.float32, offset=1).reshape(
            array.shape
        )
    assert array.size == 0 or not view.flags.aligned
    return view


def read_only(array):
    """A read-only copy of `array`."""
    array = array.copy()
    array.setflags(write=False)
    return array


# Every memory layout and dtype a caller may hand to LeNet.forward/predict, as a function of
# float32 (N, C, H, W) images; the model must give the result of np.asarray(view, np.float32).
LAYOUTS = {
    "negative-strides": lambda x: x[::-1, :, ::-1, ::-1],
    "read-only": read_only,
    "offset-view": lambda x: np.pad(x, ((2, 1), (0, 0), (3, 0), (0, 5)))[2:-1, :, 3:, :-5],
    "every-other-image": lambda x: np.repeat(x, 2, axis=0)[::2],
    "fortran-order": np.asfortranarray,
    "unaligned": lambda x: _unaligned(x, writeable=True),
    "unaligned-read-only": lambda x: _unaligned(x, writeable=False),
    "big-endian": lambda x: x.astype(">f4"),
    "float64": lambda x: x.astype(np.float64),
    "longdouble": lambda x: x.astype(np.longdouble),
    "float16": lambda x: x.astype(np.float16),
    "channels-last-transposed": lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(
        0, 3, 1, 2
    ),
    "nested-list": lambda x: x.tolist(),
    "n-h-w": lambda x: x[:, 0],
}


def random_images(batch, seed=1, in_channels=1, size=32, dtype=np.float32):
    """Standard-normal images, C-contiguous, shape (batch, in_channels, size, size)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, in_channels, size, size), dtype=np.float32).astype(
        dtype, copy=False
    )


def real_images(size=28, channels=1):
    """The shipped Fashion-MNIST test images as floats in [0, 1], (N, C, size, size): zero-padded
    to `size`; with 3 channels the image, its negative and its square (three different ones)."""
    from lenet_fast.datasets import load_sample

    pixels = load_sample()[0].astype(np.float32) / 255
    pad = (size - 28) // 2
    pixels = np.pad(pixels, ((0, 0), (pad, pad), (pad, pad)))[:, None]
    if channels == 3:
        pixels = np.concatenate([pixels, 1 - pixels, pixels**2], axis=1)
    return np.ascontiguousarray(pixels)


def keras_same_lenet(channels=1, dense=(120, 84), dropout=None, dense_activation="tanh"):
    """The issue's Keras LeNet: 28x28x`channels`, Conv2D(6, 5, 'same', tanh), average pooling,
    Conv2D(16, 5, tanh), average pooling, Flatten, Dense(units, `dense_activation`) for each of
    `dense`, a Dropout of rate `dropout` (which inference ignores) if given, Dense(10,
    softmax)."""
    import keras
    from keras import layers

    hidden = [layers.Dense(units, activation=dense_activation) for units in dense]
    return keras.Sequential(
        [
            keras.Input((28, 28, channels)),
            layers.Conv2D(6, 5, padding="same", activation="tanh"),
            layers.AveragePooling2D(2),
            layers.Conv2D(16, 5, activation="tanh"),
            layers.AveragePooling2D(2),
            layers.Flatten(),
            *hidden,
            *([] if dropout is None else [layers.Dropout(dropout)]),
            layers.Dense(10, activation="softmax"),
        ]
    )


def saved_keras_models(models, folder, trained):
    """name -> (Keras model, its .keras file, its .h5 file) for every ``name: (build, ...)`` of
    `models`, built after ``keras.utils.set_random_seed(0)`` and saved in `folder`.  The models
    named in `trained` (name -> epochs) are fitted on the shipped sample so that their labels mean
    something; the others keep Keras's initial weights."""
    import keras
    import torch  # Keras's backend here: one thread, as in `train_torch`

    from lenet_fast.datasets import load_sample

    keras.utils.set_random_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = {}
    try:
        for name, (build, *_) in models.items():
            model = build()
            if name in trained:
                pixels, labels = load_sample()
                model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
                model.fit(
                    pixels[..., None].astype(np.float32) / 255,
                    labels,
                    epochs=trained[name],
                    batch_size=32,
                    verbose=0,
                )
            model.save(folder / f"{name}.keras")
            model.save(folder / f"{name}.h5")
            result[name] = (model, folder / f"{name}.keras", folder / f"{name}.h5")
    finally:
        torch.set_num_threads(threads)
    return result


def assert_keras_parity(ours, keras_model, images):
    """`ours`' scores for (N, C, H, W) `images` against the Keras model's (given the images in
    its own layout): within 1e-5 absolute + 1e-5 relative, >= 99.9 % equal labels.  Returns
    ours."""
    channels_first = tuple(keras_model.inputs[0].shape[1:])[0] == images.shape[1]
    expected = np.asarray(
        keras_model.predict(
            images if channels_first else images.transpose(0, 2, 3, 1), verbose=0, batch_size=256
        )
    )
    found = ours.forward(images)
    np.testing.assert_allclose(found, expected, atol=1e-5, rtol=1e-5)
    agreement = np.mean(found.argmax(axis=1) == expected.argmax(axis=1))
    assert agreement >= 0.999, agreement
    return found


@contextlib.contextmanager
def traced_peak():
    """Trace Python's allocations inside the block; the list it yields then holds the peak of
    traced bytes (checks that a refusal comes before a large allocation)."""
    peak = []
    tracemalloc.start()
    try:
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def exact(message):
    """A ``pytest.raises(match=...)`` pattern that matches exactly `message`, nothing more."""
    return f"^{re.escape(message)}$"


def starts(message):
    """A ``pytest.raises(match=...)`` pattern for a message that begins with `message`."""
    return f"^{re.escape(message)}"


def leftovers(folder):
    """Temporary ``*.part`` files an atomic writer left in `folder` (there should be none)."""
    return sorted(path.name for path in Path(folder).iterdir() if path.name.endswith(".part"))


def save_like_users(module, path):
    """Write a PyTorch module's ``state_dict`` as users do: ``np.savez`` of its arrays."""
    np.savez(path, **{key: value.numpy() for key, value in module.state_dict().items()})


@functools.cache
def torch_lenets():
    """The PyTorch LeNets of the tests, as a namespace (imports torch on the first call).

    * ``TableNet(in_channels=1, conv1_padding=0, fc="sigmoid", output="sigmoid",
      batchnorm=False, conv3_channels=120)``: the design table's layers conv1, conv2, conv3 (a
      convolution), fc1, fc2; ReLU convolutions, max pooling; optionally BatchNorm after every
      conv and after fc1.
    * ``TutorialNet(in_channels=1, batchnorm=False)``: the PyTorch tutorial's Net (fc1 a dense
      layer over 16*5*5 features; ReLU everywhere, identity output); optionally BatchNorm.
    * ``OldTutorialNet()``: the older tutorial's Net, whose flatten size comes from a Python loop
      over ``x.size()`` (torch.fx cannot trace it), with BatchNorm, dropout and softmax output.
    * ``NoBiasNet()``: the older tutorial form ``view(-1, 400)``, sigmoid, layers without bias.
    * ``sequential(padding=0, in_channels=1, output=None)``: a numbered ``nn.Sequential`` with
      tanh and average pooling, flatten of 16*5*5, optional padded conv1 and output module.
    * ``sequential_conv3()``: a numbered ``nn.Sequential`` with conv3, tanh, average pooling and
      a softmax output.
    * ``d2l(batchnorm=False)``: d2l.ai's LeNet (sigmoid, average pooling, conv1 padded by 2).
    * ``MnistLeNet()``: the LeNet of PyTorch's MNIST examples on unpadded 28x28 input (flatten
      of 16*4*4, three dense layers, ReLU, identity output); ``mnist_sequential()``: the same
      as a numbered ``nn.Sequential``.
    * ``CaffeLeNet()``: Caffe's MNIST LeNet with Caffe's layer names (conv 20, conv 50, no conv
      activation, ip1 800 -> 500 + ReLU, ip2 500 -> 10, softmax).
    * ``ReshapingLeNet(reshape=None, flatten="flatten")``: the unpadded MNIST LeNet, optionally
      taking flat or (N, 28, 28) images that a ``view``, ``reshape`` or ``unsqueeze`` makes
      (N, 1, 28, 28) first, with one of four ways to flatten.
    * ``member(name, in_channels=1, seed=0)``: a named member of
      ``lenet_fast._architecture.MEMBERS`` as an ``nn.Sequential`` in eval mode (seeded
      PyTorch initialisation).

    Every model has ``channels`` and ``size`` (its input) and ``architecture`` (the lenet_fast
    options it computes).  Parameters are created in the same order in every variant, so a seed
    gives the same weights with or without BatchNorm.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def geometry(conv1_padding=0):
        """The geometry options of a 5x5-pool2 LeNet whose conv1 has this padding."""
        size = 28 if conv1_padding == 2 else 32
        return {"input_size": (size, size), "conv1_padding": conv1_padding, "conv2_padding": 0}

    class TableNet(nn.Module):
        size = 32

        def __init__(
            self,
            in_channels=1,
            conv1_padding=0,
            fc="sigmoid",
            output="sigmoid",
            batchnorm=False,
            conv3_channels=120,
        ):
            super().__init__()
            self.channels, self.size = in_channels, 28 if conv1_padding == 2 else 32
            self.architecture = {
                "conv_activation": "relu",
                "fc_activation": fc,
                "output_activation": output,
                "pool": "max",
                **geometry(conv1_padding),
            }
            c3 = conv3_channels
            self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=conv1_padding)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.conv3, self.fc1, self.fc2 = (
                nn.Conv2d(16, c3, 5),
                nn.Linear(c3, 84),
                nn.Linear(84, 10),
            )
            self.bn1, self.bn2, self.bn3, self.bn4 = (
                (nn.BatchNorm2d(6), nn.BatchNorm2d(16), nn.BatchNorm2d(c3), nn.BatchNorm1d(84))
                if batchnorm
                else (nn.Identity(),) * 4
            )
            self.fc_act = {"sigmoid": nn.Sigmoid(), "relu": nn.ReLU()}[fc]
            self.out_act = {"sigmoid": nn.Sigmoid(), "identity": nn.Identity()}[output]

        def forward(self, x):
            x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
            x = F.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
            x = torch.flatten(torch.relu(self.bn3(self.conv3(x))), 1)
            return self.out_act(self.fc2(self.fc_act(self.bn4(self.fc1(x)))))

    class TutorialNet(nn.Module):
        architecture = {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "identity",
            "pool": "max",
            **geometry(),
        }
        size = 32

        def __init__(self, in_channels=1, batchnorm=False):
            super().__init__()
            self.channels = in_channels
            self.conv1 = nn.Conv2d(in_channels, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)
            norms = (
                (nn.BatchNorm2d(6), nn.BatchNorm2d(16), nn.BatchNorm1d(120))
                if batchnorm
                else (nn.Identity(),) * 3
            )
            self.bn1, self.bn2, self.bn3 = norms

        def forward(self, x):
            x = self.pool(F.relu(self.bn1(self.conv1(x))))
            x = self.pool(F.relu(self.bn2(self.conv2(x))))
            x = torch.flatten(x, 1)
            x = F.relu(self.bn3(self.fc1(x)))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    class OldTutorialNet(nn.Module):
        architecture = {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
            **geometry(),
        }
        channels, size = 1, 32

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.bn = nn.Linear(16 * 5 * 5, 120), nn.BatchNorm1d(120)
            self.fc2, self.fc3, self.drop = nn.Linear(120, 84), nn.Linear(84, 10), nn.Dropout()

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = x.view(-1, self.num_flat_features(x))
            x = self.drop(F.relu(self.bn(self.fc1(x))))
            x = F.relu(self.fc2(x))
            return F.softmax(self.fc3(x), dim=1)

        @staticmethod
        def num_flat_features(x):
            count = 1
            for size in x.size()[1:]:
                count *= size
            return count

    class NoBiasNet(nn.Module):
        channels, size = 1, 32

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5, bias=False)
            self.fc1 = nn.Linear(400, 120)
            self.fc2, self.fc3 = nn.Linear(120, 84, bias=False), nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(torch.sigmoid(self.conv1(x)), 2)
            x = F.max_pool2d(torch.sigmoid(self.conv2(x)), 2)
            x = torch.sigmoid(self.fc1(x.view(-1, 16 * 5 * 5)))
            return self.fc3(self.fc2(x))

    def sequential(padding=0, in_channels=1, output=None):
        layers = [
            nn.Conv2d(in_channels, 6, 5, padding=padding),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, 10),
        ]
        net = nn.Sequential(*layers, *([output] if output is not None else []))
        net.channels, net.size = in_channels, 28 if padding == 2 else 32
        net.architecture = {
            "conv_activation": "tanh",
            "fc_activation": "tanh",
            "output_activation": "identity" if output is None else "softmax",
            "pool": "avg",
            **geometry(padding),
        }
        return net

    def sequential_conv3():
        net = nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, 10),
            nn.Softmax(dim=1),
        )
        net.channels, net.size = 1, 32
        net.architecture = {
            "conv_activation": "tanh",
            "fc_activation": "tanh",
            "output_activation": "softmax",
            "pool": "avg",
            **geometry(),
        }
        return net

    def d2l(batchnorm=False):
        def norm(layer):
            return [layer] if batchnorm else []

        layers = [
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            *norm(nn.BatchNorm2d(6)),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            *norm(nn.BatchNorm2d(16)),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            *norm(nn.BatchNorm1d(120)),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            nn.Sigmoid(),
            nn.Linear(84, 10),
        ]
        net = nn.Sequential(*layers)
        net.architecture = {
            "conv_activation": "sigmoid",
            "fc_activation": "sigmoid",
            "output_activation": "identity",
            "pool": "avg",
            **geometry(2),
        }
        net.channels, net.size = 1, 28
        return net

    class MnistLeNet(nn.Module):
        channels, size = 1, 28

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2 = nn.Linear(256, 120), nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def mnist_sequential():
        return nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    class CaffeLeNet(nn.Module):
        channels, size = 1, 28
        architecture = {
            "conv_activation": "identity",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
        }

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
            self.ip1, self.ip2 = nn.Linear(800, 500), nn.Linear(500, 10)

        def logits(self, x):
            """ip2's outputs: what Caffe's training net feeds its SoftmaxWithLoss."""
            x = F.max_pool2d(self.conv2(F.max_pool2d(self.conv1(x), 2)), 2)
            return self.ip2(F.relu(self.ip1(x.flatten(1))))

        def forward(self, x):  # Caffe's deploy net: probabilities
            return F.softmax(self.logits(x), dim=1)

    activations = {
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "identity": nn.Identity,
        "softmax": lambda: nn.Softmax(dim=1),
    }
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}

    def member(name, in_channels=1, seed=0):
        spec = MEMBERS[name]
        architecture = spec.architecture
        torch.manual_seed(seed)

        def act(option):
            return activations[architecture[option]]()

        pool = pools[architecture["pool"]]
        c1, c2, c3 = spec.conv1_channels, spec.conv2_channels, spec.conv3_channels
        modules = [
            nn.Conv2d(in_channels, c1, 5, padding=spec.conv1_padding),
            act("conv_activation"),
            pool(2),
            nn.Conv2d(c1, c2, 5, padding=spec.conv2_padding),
            act("conv_activation"),
            pool(2),
        ]
        side = spec.input_size + 2 * spec.conv1_padding - 4
        side = (side // 2 + 2 * spec.conv2_padding - 4) // 2
        features = c2 * side * side
        if c3:
            modules += [nn.Conv2d(c2, c3, 5), act("conv_activation")]
            features = c3
        modules.append(nn.Flatten())
        for index, units in enumerate(spec.dense_units):
            modules.append(nn.Linear(features, units))
            last = index == len(spec.dense_units) - 1
            modules.append(act("output_activation" if last else "fc_activation"))
            features = units
        return nn.Sequential(*modules).eval()

    class ReshapingLeNet(nn.Module):
        """The unpadded MNIST LeNet (ReLU, max pooling) with one of ``INPUT_RESHAPES`` (None:
        it takes (N, 1, 28, 28) images; else flat (N, 784) or (N, 28, 28) ones,
        ``input_shape``, made (N, 1, 28, 28) first) and one of ``FLATTENS``."""

        INPUT_RESHAPES = {
            "view-flat": (lambda x: x.view(-1, 1, 28, 28), (784,)),
            "reshape-batch": (lambda x: x.reshape(x.size(0), 1, 28, 28), (784,)),
            "unsqueeze": (lambda x: x.unsqueeze(1), (28, 28)),
        }
        FLATTENS = {
            "view-size0": lambda x: x.view(x.size(0), -1),
            "reshape-shape0": lambda x: x.reshape(x.shape[0], -1),
            "flatten": lambda x: torch.flatten(x, 1),
            # the old tutorial's num_flat_features: a product over x.size()[1:]
            "view-product": lambda x: x.view(-1, OldTutorialNet.num_flat_features(x)),
        }
        channels, size = 1, 28
        architecture = {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "identity",
            "pool": "max",
        }

        def __init__(self, reshape=None, flatten="flatten"):
            super().__init__()
            self.reshape, self.input_shape = (
                self.INPUT_RESHAPES[reshape] if reshape else (None, (1, 28, 28))
            )
            self.flatten = self.FLATTENS[flatten]
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2 = nn.Linear(256, 84), nn.Linear(84, 10)

        def forward(self, x):
            if self.reshape is not None:
                x = self.reshape(x)
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc2(F.relu(self.fc1(self.flatten(x))))

    return types.SimpleNamespace(
        ReshapingLeNet=ReshapingLeNet,
        TableNet=TableNet,
        TutorialNet=TutorialNet,
        OldTutorialNet=OldTutorialNet,
        NoBiasNet=NoBiasNet,
        sequential=sequential,
        sequential_conv3=sequential_conv3,
        d2l=d2l,
        MnistLeNet=MnistLeNet,
        mnist_sequential=mnist_sequential,
        CaffeLeNet=CaffeLeNet,
        member=member,
    )


def torch_scores(net, x):
    """`net`'s outputs (in eval mode, without gradients) for the float32 array `x`."""
    import torch

    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def assert_matches_pytorch(model, net, x, tolerance=1e-5, min_agreement=0.999):
    """`model.forward(x)` within `tolerance` (absolute + relative) of `net`'s outputs and at least
    `min_agreement` of `model.predict(x)` equal to PyTorch's labels; returns the largest
    absolute difference."""
    expected = torch_scores(net, x)
    actual = model.forward(x)
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)
    agreement = float(np.mean(model.predict(x) == expected.argmax(axis=1)))
    assert agreement >= min_agreement, agreement
    return float(np.abs(actual - expected).max())


def train_torch(net, images, labels, steps=300, seed=0, logits=None):
    """`steps` seeded Adam steps (batches of 64, cross-entropy) of `net` on float32 `images` and
    integer `labels`, on one torch thread (tiny batches: extra threads only contend on a shared
    machine), so that its labels depend on its real activations; returns `net` in eval mode.

    The loss takes `logits(batch)` (default: `net` itself), for a model whose forward ends in a
    softmax, so that the cross-entropy sees the scores before it, as frameworks train it."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    generator = torch.Generator().manual_seed(seed)
    try:
        for _ in range(steps):
            batch = torch.randint(0, len(images), (64,), generator=generator)
            optimiser.zero_grad()
            F.cross_entropy((logits or net)(images[batch]), labels[batch]).backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@contextlib.contextmanager
def no_architecture_warning():
    """Inside the block, an ArchitectureWarning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchitectureWarning)
        yield


def stated_options(net):
    """Everything to state when loading `net`'s state_dict: its `architecture` and, if it has
    BatchNorm layers, their eps (a state_dict does not store it)."""
    import torch

    eps = {
        module.eps
        for module in net.modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
    }
    assert len(eps) <= 1, "BatchNorm layers with different eps"
    return {**net.architecture, **({"batchnorm_eps": eps.pop()} if eps else {})}


def export_onnx(module, example, path, dynamo, dynamic_batch=True):
    """``torch.onnx.export`` of `module` (in eval mode) with input "x" and output "y", opset 17,
    with the dynamo exporter or the TorchScript one; with a dynamic batch axis, or (as torch
    exports by default) at the example's fixed batch size."""
    import torch

    module.eval()
    if dynamo:
        torch.onnx.export(
            module,
            (example,),
            path,
            opset_version=17,
            dynamo=True,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None,
            verbose=False,
        )
    else:
        torch.onnx.export(
            module,
            (example,),
            path,
            opset_version=17,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None,
        )


def onnxruntime_scores(proto_or_path, x):
    """What ONNX Runtime (CPU) computes for `x` with a ``ModelProto`` or an ``.onnx`` file."""
    import onnxruntime

    content = (
        proto_or_path.SerializeToString()
        if hasattr(proto_or_path, "SerializeToString")
        else str(proto_or_path)
    )
    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


_CHILD_PRELUDE = """
import json, os, sys
import numpy
import numpy as np
import lenet_fast
from lenet_fast import LeNet
from factories import normal_images as images, normal_weights

def _status_mb(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024

def rss_mb():
    return _status_mb("VmRSS")

def peak_mb():
    # VmHWM, the high-water mark of this process's own address space: ru_maxrss would also
    # count the parent's (Linux carries it over fork and exec), hiding any growth below it.
    return _status_mb("VmHWM")

def report(**values):
    values["peak_mb"] = peak_mb()
    print(json.dumps(values))
"""


def run_python(code, timeout=120, env=None):
    """Run `code` (dedented) in a fresh interpreter and return the JSON object it reports.

    The interpreter imports the same lenet_fast as this process and this module (``images``,
    ``normal_weights``), and defines ``rss_mb()``, ``peak_mb()`` (MiB, from /proc: Linux only) and
    ``report(**values)``, which prints `values` plus ``peak_mb`` as JSON.  The last line of
    standard output is parsed; a non-zero exit fails the calling test with the output.
    """
    import lenet_fast

    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        [
            str(Path(lenet_fast.__file__).resolve().parents[1]),
            str(Path(__file__).parent),
            environment.get("PYTHONPATH", ""),
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
