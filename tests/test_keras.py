"""Keras interop: LeNets built and saved by Keras 3 itself (``.keras`` and ``.h5``), and the Keras 2
``.h5`` layout, load with `LeNet.from_keras` and give Keras's outputs; files outside the network
family (odd sizes, conv3 that does not see 5x5, a fourth Dense layer, mixed activations, ...),
and hostile files, are refused naming the file and the layer.  The family's members and
geometries ('valid'/'same' per convolution, 28x28 and 32x32, flatten models with 1-3 Dense
layers, channels-first, RGB) load with fc1 permuted once from Keras's (row, column, channel)
order.

Keras runs on its PyTorch backend (no TensorFlow).  Parity: <= 1e-5 absolute + 1e-5 relative on the
outputs and >= 99.9 % equal labels, on random images and on real Fashion-MNIST images.
"""

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install lenet_fast[keras])")
os.environ["KERAS_BACKEND"] = "torch"  # before Keras is imported: no TensorFlow needed
keras = pytest.importorskip("keras", reason="Keras 3 is not installed (the test extra installs it)")
from keras import layers  # noqa: E402

from factories import (  # noqa: E402
    assert_keras_parity,
    keras_same_lenet,
    real_images,
    saved_keras_models,
)
from lenet_fast import LeNet, WeightFileError  # noqa: E402
from lenet_fast._architecture import ARCHITECTURE_OPTIONS  # noqa: E402
from lenet_fast.datasets import load_sample  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"
)


# ---------------------------------------------------------------------------------------------
# Models built with Keras
# ---------------------------------------------------------------------------------------------


def example_lenet():
    """The issue's Keras LeNet (28x28x1, 'same' first convolution, tanh, average pooling), with a
    Dropout that inference ignores."""
    return keras_same_lenet(dropout=0.3)


def relu_max_lenet():
    """32x32 'valid', ReLU and max pooling, conv3 as a Conv2D, activations as separate layers (one
    after a max pooling), a bias-free convolution; Functional API with custom names."""
    inputs = keras.Input((32, 32, 1), name="pixels")
    x = layers.Conv2D(6, 5, name="c1")(inputs)
    x = layers.ReLU(name="r1")(x)
    x = layers.MaxPooling2D(name="s2")(x)
    x = layers.Conv2D(16, 5, use_bias=False, name="c3")(x)
    x = layers.MaxPooling2D(name="s4")(x)
    x = layers.Activation("relu", name="r4")(x)
    x = layers.Conv2D(120, 5, activation="relu", name="c5")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(84, activation="relu", name="f6")(x)
    x = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, layers.Softmax(name="probabilities")(x))


def rgb_lenet():
    """Three input channels, other widths, sigmoid dense layers and a linear output."""
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(8, 5, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(20, 5, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(100, activation="relu"),
            layers.Dense(50, activation="sigmoid"),
            layers.Dense(7),
        ]
    )


def channels_first_lenet():
    """Channels-first tensors, flattened channels-last (Flatten's data_format moves them)."""
    return keras.Sequential(
        [
            keras.Input((1, 28, 28)),
            layers.Conv2D(6, 5, padding="same", activation="tanh", data_format="channels_first"),
            layers.AveragePooling2D(2, data_format="channels_first"),
            layers.Conv2D(16, 5, activation="tanh", data_format="channels_first"),
            layers.AveragePooling2D(2, data_format="channels_first"),
            layers.Flatten(data_format="channels_first"),
            layers.Dense(120, activation="tanh"),
            layers.Dense(84, activation="tanh"),
            layers.Dense(10, activation="softmax"),
        ]
    )


def keras_mnist_unpadded(output_activation=None):
    """28x28 'valid' everywhere, ReLU, max pooling, flatten 256 -> 120 -> 84 -> 10 (linear, or
    `output_activation`)."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(6, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(120, activation="relu"),
            layers.Dense(84, activation="relu"),
            layers.Dense(10, activation=output_activation),
        ]
    )


def keras_caffe():
    """Caffe's LeNet: no convolution activation, flatten 800 -> 500 ReLU -> 10 softmax."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(20, 5),
            layers.MaxPooling2D(2),
            layers.Conv2D(50, 5),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(500, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )


def keras_same_flatten():
    """'same' then 'valid', tanh convolutions, average pooling, and ReLU dense layers: a flatten
    over 5x5 in Keras's (row, column, channel) order that is not conv3."""
    return keras_same_lenet(dense_activation="relu")


def keras_same_same_rgb():
    """'same' on both convolutions (7x7 after pooling), RGB, one Dense layer."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 3)),
            layers.Conv2D(8, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(12, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ]
    )


def keras_channels_first_valid_32():
    """Channels-first tensors on a 32x32 input, sigmoid, flattened in (channel, row, column)."""
    return keras.Sequential(
        [
            keras.Input((1, 32, 32)),
            layers.Conv2D(6, 5, activation="sigmoid", data_format="channels_first"),
            layers.AveragePooling2D(2, data_format="channels_first"),
            layers.Conv2D(16, 5, activation="sigmoid", data_format="channels_first"),
            layers.AveragePooling2D(2, data_format="channels_first"),
            layers.Flatten(data_format="channels_first"),
            layers.Dense(32, activation="tanh"),
            layers.Dense(10),
        ]
    )


def with_moving_statistics(model, seed=3):
    """`model` with every BatchNormalization's variables set away from their initial values:
    variances of 0.2-1 (small enough that reading another epsilon than the config's changes
    the outputs by over 1e-4, large enough that the scores do not saturate)."""
    rng = np.random.default_rng(seed)
    draw = {
        "gamma": lambda n: rng.uniform(0.5, 1.5, n),
        "beta": lambda n: rng.normal(0.0, 0.3, n),
        "moving_mean": lambda n: rng.normal(0.0, 0.3, n),
        "moving_variance": lambda n: rng.uniform(0.2, 1.0, n),
    }
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [
                    draw[weight.path.split("/")[-1]](weight.shape[0]).astype(np.float32)
                    for weight in layer.weights
                ]
            )
    return model


def with_gamma(model, gamma):
    """`model` with its one BatchNormalization's gamma set (the other variables as Keras
    initialised them)."""
    (layer,) = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    values = layer.get_weights()
    values[0] = np.asarray(gamma, np.float32)
    layer.set_weights(values)
    return model


def keras_batchnorm():
    """Conv/Dense -> BatchNormalization -> activation throughout (the usual order): Keras's
    default epsilon, stated ones, scale=False, center=False, a bias-free convolution, and a
    BatchNormalization before the softmax."""
    return with_moving_statistics(
        keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(8, 5, use_bias=False),
                layers.BatchNormalization(),
                layers.Activation("relu"),
                layers.MaxPooling2D(2),
                layers.Conv2D(16, 5),
                layers.BatchNormalization(epsilon=0.01, scale=False),
                layers.ReLU(),
                layers.MaxPooling2D(2),
                layers.Flatten(),
                layers.Dense(64),
                layers.BatchNormalization(center=False, epsilon=1e-5),
                layers.Activation("relu"),
                layers.Dense(10),
                layers.BatchNormalization(),
                layers.Softmax(),
            ]
        )
    )


def keras_batchnorm_channels_first():
    """Channels-first tensors: the BatchNormalizations of the convolutions normalise axis 1."""
    return with_moving_statistics(
        keras.Sequential(
            [
                keras.Input((1, 28, 28)),
                layers.Conv2D(6, 5, padding="same", data_format="channels_first"),
                layers.BatchNormalization(axis=1),
                layers.Activation("tanh"),
                layers.AveragePooling2D(2, data_format="channels_first"),
                layers.Conv2D(16, 5, data_format="channels_first"),
                layers.BatchNormalization(axis=1, epsilon=0.02),
                layers.Activation("tanh"),
                layers.AveragePooling2D(2, data_format="channels_first"),
                layers.Flatten(data_format="channels_first"),
                layers.Dense(10),
            ]
        ),
        seed=4,
    )


def keras_batchnorm_after_activation():
    """BatchNormalization after the activation (what Conv2D(activation=...) followed by one
    gives): folded into the next layer's inputs -- before max pooling and after it, before the
    Flatten, between Dense layers, and into a Dense that has its own BatchNormalization."""
    return with_moving_statistics(
        keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(6, 5, activation="relu"),
                layers.BatchNormalization(),
                layers.MaxPooling2D(2),
                layers.Conv2D(16, 5, activation="relu", use_bias=False),
                layers.MaxPooling2D(2),
                layers.BatchNormalization(epsilon=0.01),
                layers.Flatten(),
                layers.Dense(120, activation="relu"),
                layers.BatchNormalization(center=False),
                layers.Dense(84),
                layers.BatchNormalization(),
                layers.Activation("relu"),
                layers.Dense(10, activation="softmax"),
            ]
        ),
        seed=5,
    )


def keras_batchnorm_after_activation_channels_first():
    """The same on channels-first tensors: after average pooling into a "valid" conv2, before
    average pooling, and into a Dense after a channels-first Flatten."""
    return with_moving_statistics(
        keras.Sequential(
            [
                keras.Input((1, 28, 28)),
                layers.Conv2D(
                    6, 5, padding="same", activation="tanh", data_format="channels_first"
                ),
                layers.AveragePooling2D(2, data_format="channels_first"),
                layers.BatchNormalization(axis=1),
                layers.Conv2D(16, 5, activation="tanh", data_format="channels_first"),
                layers.BatchNormalization(axis=1, scale=False),
                layers.AveragePooling2D(2, data_format="channels_first"),
                layers.Flatten(data_format="channels_first"),
                layers.Dense(10),
            ]
        ),
        seed=6,
    )


# The geometry the config states: input size and the convolutions' padding.
INPUT_32 = {"input_size": (32, 32), "conv1_padding": 0, "conv2_padding": 0}
INPUT_28 = {"input_size": (28, 28), "conv1_padding": 0, "conv2_padding": 0}
INPUT_28_SAME = {"input_size": (28, 28), "conv1_padding": 2, "conv2_padding": 0}
INPUT_28_SAME_SAME = {"input_size": (28, 28), "conv1_padding": 2, "conv2_padding": 2}
MODELS = {
    "example": (
        example_lenet,
        {
            "conv_activation": "tanh",
            "fc_activation": "tanh",
            "output_activation": "softmax",
            "pool": "avg",
            **INPUT_28_SAME,
        },
    ),
    "relu_max": (
        relu_max_lenet,
        {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
            **INPUT_32,
        },
    ),
    "rgb": (
        rgb_lenet,
        {
            "conv_activation": "relu",
            "fc_activation": "sigmoid",
            "output_activation": "identity",
            "pool": "max",
            **INPUT_32,
        },
    ),
    "channels_first": (
        channels_first_lenet,
        {
            "conv_activation": "tanh",
            "fc_activation": "tanh",
            "output_activation": "softmax",
            "pool": "avg",
            **INPUT_28_SAME,
        },
    ),
    # The family (issue 12): padding per convolution, flatten models, 1 to 3 Dense layers.
    "mnist-unpadded": (
        keras_mnist_unpadded,
        {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "identity",
            "pool": "max",
            **INPUT_28,
        },
    ),
    "caffe": (
        keras_caffe,
        {
            "conv_activation": "identity",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
            **INPUT_28,
        },
    ),
    "same-flatten": (
        keras_same_flatten,
        {
            "conv_activation": "tanh",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "avg",
            **INPUT_28_SAME,
        },
    ),
    "same-same-rgb": (
        keras_same_same_rgb,
        {  # one Dense layer: no fc_activation to compare
            "conv_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
            **INPUT_28_SAME_SAME,
        },
    ),
    # BatchNormalization folded into the layer before it (the fidelity issue's folding).
    "batchnorm": (
        keras_batchnorm,
        {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
            **INPUT_28,
        },
    ),
    "batchnorm_after_activation": (
        keras_batchnorm_after_activation,
        {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "softmax",
            "pool": "max",
            **INPUT_28,
        },
    ),
    "channels_first_batchnorm_after_activation": (
        keras_batchnorm_after_activation_channels_first,
        {
            "conv_activation": "tanh",
            "output_activation": "identity",
            "pool": "avg",
            **INPUT_28_SAME,
        },
    ),
    "log_softmax": (
        lambda: keras_mnist_unpadded("log_softmax"),
        {
            "conv_activation": "relu",
            "fc_activation": "relu",
            "output_activation": "log_softmax",
            "pool": "max",
            **INPUT_28,
        },
    ),
    "channels_first_batchnorm": (
        keras_batchnorm_channels_first,
        {
            "conv_activation": "tanh",
            "output_activation": "identity",
            "pool": "avg",
            **INPUT_28_SAME,
        },
    ),
    "channels_first_32": (
        keras_channels_first_valid_32,
        {
            "conv_activation": "sigmoid",
            "fc_activation": "tanh",
            "output_activation": "identity",
            "pool": "avg",
            **INPUT_32,
        },
    ),
}
# Trained for this many epochs on real images so that their labels mean something; the others
# keep Keras's initial weights.
TRAINED = {"example": 3, "caffe": 1}


def keras_input_shape(model):
    return tuple(model.inputs[0].shape[1:])


@pytest.fixture(scope="module", autouse=True)
def fresh_keras_names():
    """Keras numbers automatic layer names per process (conv2d, conv2d_1, ...): reset them after
    this module so that other test modules see the names a fresh process gives."""
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (Keras model, its .keras file, its .h5 file) for every model of MODELS."""
    return saved_keras_models(MODELS, tmp_path_factory.mktemp("keras"), TRAINED)


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
@pytest.mark.parametrize("name", list(MODELS))
def test_outputs_match_keras(saved, name, file_format):
    keras_model, keras_file, h5_file = saved[name]
    model = LeNet.from_keras(keras_file if file_format == ".keras" else h5_file)
    expected = MODELS[name][1]
    assert set(model.architecture) == set(ARCHITECTURE_OPTIONS)
    assert {option: model.architecture[option] for option in expected} == expected
    shape = keras_input_shape(keras_model)
    channels, size = (
        (shape[0], shape[1]) if name.startswith("channels_first") else (shape[2], shape[0])
    )
    random_images = np.random.default_rng(1).normal(size=(1000, channels, size, size))
    assert_keras_parity(model, keras_model, random_images.astype(np.float32))
    found = assert_keras_parity(model, keras_model, real_images(size, channels))
    if name in TRAINED:  # its labels are Fashion-MNIST classes, not noise
        assert np.mean(found.argmax(axis=1) == load_sample()[1]) > 0.5
    provenance = model.metadata["provenance"]
    assert provenance["format"] == f"Keras {file_format}"
    assert provenance["keras_version"] == keras.__version__
    assert tuple(provenance["keras_input_shape"]) == shape


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
def test_zero_padding_before_a_valid_conv2d_is_its_padding(tmp_path, file_format):
    """LeNet-5 replicas pad MNIST's 28x28 to 32x32 with ZeroPadding2D(2) before a 'valid' conv1
    (and some pad conv2's input too): read as padding 2 on that convolution."""
    keras.utils.set_random_seed(6)
    keras_model = sequential(
        layers.ZeroPadding2D(2),
        layers.Conv2D(6, 5, activation="tanh"),
        layers.AveragePooling2D(2),
        layers.ZeroPadding2D(((2, 2), (2, 2))),
        layers.Conv2D(16, 5, activation="tanh"),
        layers.AveragePooling2D(2),
        layers.Flatten(),
        layers.Dense(10, activation="softmax"),
    )
    path = tmp_path / f"model{file_format}"
    keras_model.save(path)
    model = LeNet.from_keras(path)
    assert {key: model.architecture[key] for key in ("conv1_padding", "conv2_padding")} == {
        "conv1_padding": 2,
        "conv2_padding": 2,
    }
    assert_keras_parity(model, keras_model, real_images(28, 1))
    noise = np.random.default_rng(3).normal(size=(300, 1, 28, 28)).astype(np.float32)
    assert_keras_parity(model, keras_model, noise)


def adapted(layer, channels, seed=4):
    """A Normalization layer adapted to pixel-like data (means 30-120, deviations 20-80)."""
    rng = np.random.default_rng(seed)
    center = rng.uniform(30, 120, channels)
    spread = rng.uniform(20, 80, channels)
    layer.adapt((rng.normal(size=(64, 28, 28, channels)) * spread + center).astype(np.float32))
    return layer


def unpadded_relu_body():
    """Fresh layers of a small unpadded ReLU LeNet: 28x28 -> 6 -> 16 -> flatten 256 -> 10."""
    return [
        layers.Conv2D(6, 5, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(16, 5, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(10),
    ]


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
def test_leading_normalization_is_folded_into_conv1(tmp_path, file_format):
    """MNIST tutorials normalise inside the model: Normalization with the mean and variance
    stated, or adapted to the data (per channel on RGB), alone or after a Rescaling, and a
    per-channel Rescaling.  The model then takes what the Keras model took."""
    keras.utils.set_random_seed(6)
    models = {
        "stated": (
            sequential(
                layers.Rescaling(1 / 255),
                layers.Normalization(mean=0.1307, variance=0.3081**2),
                *unpadded_relu_body(),
            ),
            1,
            {"mean": 0.1307, "variance": pytest.approx(0.3081**2)},
        ),
        "adapted_rgb": (
            keras.Sequential(
                [
                    keras.Input((28, 28, 3)),
                    adapted(layers.Normalization(), 3),
                    layers.Rescaling([0.5, 2.0, 1.0], offset=[0.1, 0.0, -0.2]),
                    *unpadded_relu_body(),
                ]
            ),
            3,
            None,
        ),
        "scalar_before_same": (  # no mean: nothing for the zero padding to shift
            sequential(layers.Normalization(axis=None, mean=0.0, variance=4.0), *lenet_body()),
            1,
            {"mean": 0.0, "variance": 4.0},
        ),
    }
    for name, (keras_model, channels, statistics) in models.items():
        path = tmp_path / f"{name}{file_format}"
        keras_model.save(path)
        model = LeNet.from_keras(path)
        provenance = model.metadata["provenance"]
        if statistics is not None:
            assert provenance["keras_normalization"] == statistics
        else:  # adapted: the layer's own statistics
            layer = keras_model.layers[0]
            np.testing.assert_allclose(
                provenance["keras_normalization"]["mean"], np.ravel(layer.mean), rtol=1e-6
            )
            assert provenance["keras_rescaling"] == {
                "scale": [0.5, 2.0, 1.0],
                "offset": [0.1, 0.0, -0.2],
            }
        pixels = np.repeat(real_images(28, 1) * 255, channels, axis=1)
        noise = np.random.default_rng(2).uniform(0, 255, size=(300, channels, 28, 28))
        assert_keras_parity(model, keras_model, pixels)
        assert_keras_parity(model, keras_model, noise.astype(np.float32))


def test_leading_normalization_without_a_stated_input_shape(tmp_path):
    """A config that states no input shape: the channels come from conv1's kernel."""
    keras_model = sequential(adapted(layers.Normalization(), 1), *unpadded_relu_body())
    keras_model.save(tmp_path / "stated.keras")
    config, weights = archive_parts(tmp_path / "stated.keras")
    config.pop("build_config", None)
    config["config"].pop("build_input_shape", None)
    config["config"]["layers"] = [
        {key: value for key, value in layer.items() if key != "build_config"}
        for layer in config["config"]["layers"]
        if layer["class_name"] != "InputLayer"
    ]
    write_archive(tmp_path / "unstated.keras", config, weights)
    model = LeNet.from_keras(tmp_path / "unstated.keras")
    assert model.architecture["input_size"] == (28, 28)
    assert_keras_parity(model, keras_model, real_images(28, 1) * 255)


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
@pytest.mark.parametrize(
    ("mean", "variance", "message"),
    [
        (np.nan, 1.0, "expected a finite mean and a finite variance >= 0"),
        (0.0, -1.0, "expected a finite mean and a finite variance >= 0"),
        (0.0, np.inf, "expected a finite mean and a finite variance >= 0"),
        (0.0, 0.0, r"a variance below 1e-14 \(0.0\): Keras then divides by its configured epsilon"),
    ],
    ids=["nan", "negative", "inf", "zero"],
)
def test_adapted_normalization_statistics_must_be_usable(
    tmp_path, file_format, mean, variance, message
):
    norm = adapted(layers.Normalization(name="norm"), 1)
    keras_model = sequential(norm, *lenet_body(conv1=layers.Conv2D(6, 5, activation="tanh")))
    count = norm.get_weights()[2]
    norm.set_weights([np.array([mean], np.float32), np.array([variance], np.float32), count])
    path = tmp_path / f"model{file_format}"
    keras_model.save(path)
    with pytest.raises(WeightFileError, match=r"layer 'norm' \(Normalization\): " + message):
        LeNet.from_keras(path)


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
def test_leading_rescaling_is_folded_into_conv1(tmp_path, file_format):
    """Keras tutorials scale pixels inside the model: Rescaling(1/255) before a 'same' conv1, and
    Rescaling with an offset before a 'valid' conv1 followed by a BatchNormalization.  The
    model then takes what the Keras model took, raw pixels 0-255, and says so."""
    keras.utils.set_random_seed(5)
    models = {
        (1 / 255, 0.0): sequential(layers.Rescaling(1 / 255), *lenet_body()),
        (2 / 255, -1.0): with_moving_statistics(
            sequential(
                layers.Rescaling(2 / 255, offset=-1.0),
                layers.Conv2D(6, 5),
                layers.BatchNormalization(),
                layers.ReLU(),
                layers.MaxPooling2D(2),
                layers.Conv2D(16, 5, activation="relu"),
                layers.MaxPooling2D(2),
                layers.Flatten(),
                layers.Dense(10),
            )
        ),
    }
    pixels = real_images(28, 1) * 255
    noise = np.random.default_rng(2).uniform(0, 255, size=(500, 1, 28, 28)).astype(np.float32)
    for (scale, offset), keras_model in models.items():
        path = tmp_path / f"model{file_format}"
        keras_model.save(path)
        model = LeNet.from_keras(path)
        assert model.metadata["provenance"]["keras_rescaling"] == {"scale": scale, "offset": offset}
        assert "keras_normalization" not in model.metadata["provenance"]
        assert_keras_parity(model, keras_model, pixels)
        assert_keras_parity(model, keras_model, noise)


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
def test_a_leading_reshape_that_adds_the_channel_axis_gives_the_input_shape(tmp_path, file_format):
    """Keras MNIST examples take (28, 28) or flat 784 pixels and Reshape them to (28, 28, 1), or
    (1, 28, 28) before channels_first convolutions: the same floats in the same order, so the
    model takes (N, 28, 28) images and gives Keras's scores."""
    keras.utils.set_random_seed(6)
    first = {"data_format": "channels_first"}
    models = {
        "28x28": sequential(layers.Reshape((28, 28, 1)), *lenet_body(), input_shape=(28, 28)),
        "784-rescaled": sequential(
            layers.Rescaling(1 / 255),
            layers.Reshape((28, 28, 1)),
            *lenet_body(),
            input_shape=(784,),
        ),
        "channels-first": sequential(
            layers.Reshape((1, 28, 28)),
            layers.Conv2D(6, 5, activation="relu", **first),
            layers.MaxPooling2D(2, **first),
            layers.Conv2D(16, 5, activation="relu", **first),
            layers.MaxPooling2D(2, **first),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
            input_shape=(28, 28),
        ),
    }
    images = real_images(28, 1)[:, 0]
    for name, keras_model in models.items():
        path = tmp_path / f"{name}{file_format}"
        keras_model.save(path)
        model = LeNet.from_keras(path)
        x = images * 255 if name == "784-rescaled" else images
        keras_input = x.reshape(len(x), *keras_model.inputs[0].shape[1:])
        expected = np.asarray(keras_model.predict(keras_input, verbose=0, batch_size=256))
        found = model.forward(x)
        np.testing.assert_allclose(found, expected, atol=1e-5, rtol=1e-5, err_msg=name)
        assert np.mean(found.argmax(axis=1) == expected.argmax(axis=1)) >= 0.999
        assert model.architecture["input_size"] == (28, 28)


def test_keras_flatten_permutation_is_done_once_at_load(saved):
    """fc1 of a channels-last flatten model is stored in PyTorch's (channel, row, column)
    order: Keras's kernel row (r * W + c) * C + k becomes column (k * H + r) * W + c."""
    keras_model, path, _ = saved["mnist-unpadded"]
    kernel = np.asarray(keras_model.layers[5].kernel)  # the first Dense: (256, 120)
    found = LeNet.from_keras(path).weights["fc1.weight"]
    expected = kernel.reshape(4, 4, 16, 120).transpose(3, 2, 0, 1).reshape(120, 256)
    np.testing.assert_array_equal(found, expected)


def test_saved_model_reloads_without_arguments(saved, tmp_path):
    model = LeNet.from_keras(saved["example"][1])
    model.save_npz(tmp_path / "lenet.npz")
    again = LeNet.from_npz(tmp_path / "lenet.npz")
    assert again.architecture == model.architecture
    images = real_images(28, 1)[:64]
    np.testing.assert_array_equal(again.forward(images), model.forward(images))


def test_reading_imports_neither_keras_nor_tensorflow(saved):
    code = textwrap.dedent(f"""
        import sys
        from lenet_fast import LeNet
        for path in ({str(saved["example"][1])!r}, {str(saved["relu_max"][2])!r}):
            LeNet.from_keras(path)
        assert not {{"keras", "tensorflow"}} & set(sys.modules), sorted(sys.modules)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_missing_h5py_names_the_extra(saved):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["h5py"] = None
        from lenet_fast import LeNet
        try:
            LeNet.from_keras({str(saved["example"][1])!r})
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("no ImportError")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "lenet_fast[keras]"' in result.stdout


# ---------------------------------------------------------------------------------------------
# The Keras 2 .h5 layout (written as tf.keras 2 writes it, from a Keras 3 model's weights)
# ---------------------------------------------------------------------------------------------


def keras2_layer(layer):
    """A Keras 2 config entry: class_name and config only, activations as names."""
    config = {
        key: value
        for key, value in layer.get_config().items()
        if key not in ("dtype", "kernel_initializer", "bias_initializer", "quantization_config")
    }
    config["dtype"] = "float32"
    return {"class_name": type(layer).__name__, "config": config}


def write_keras2_h5(model, path, functional=False):
    """The file tf.keras 2.x ``model.save("x.h5")`` writes: Sequential configs put the input shape
    on the first layer, Functional ones list inbound nodes as [[name, 0, 0, {}]]; weights live at
    model_weights/<layer>/<layer>/kernel:0, listed by the weight_names attribute."""
    entries = [keras2_layer(layer) for layer in model.layers]
    if functional:
        previous = "input_1"
        for entry in entries:
            entry["name"] = entry["config"]["name"]
            entry["inbound_nodes"] = [[[previous, 0, 0, {}]]]
            previous = entry["name"]
        shape = [None, *keras_input_shape(model)]
        entries.insert(
            0,
            {
                "class_name": "InputLayer",
                "name": "input_1",
                "inbound_nodes": [],
                "config": {
                    "batch_input_shape": shape,
                    "dtype": "float32",
                    "sparse": False,
                    "ragged": False,
                    "name": "input_1",
                },
            },
        )
        config = {
            "class_name": "Functional",
            "config": {
                "name": "model",
                "layers": entries,
                "input_layers": [["input_1", 0, 0]],
                "output_layers": [[previous, 0, 0]],
            },
        }
    else:
        entries[0]["config"]["batch_input_shape"] = [None, *keras_input_shape(model)]
        config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": entries}}
    with h5py.File(path, "w") as file:
        file.attrs["keras_version"] = "2.15.0"
        file.attrs["backend"] = "tensorflow"
        file.attrs["model_config"] = json.dumps(config)
        group = file.create_group("model_weights")
        group.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
        for layer in model.layers:
            names = [f"{layer.name}/{variable.name}:0".encode() for variable in layer.weights]
            layer_group = group.create_group(layer.name)
            layer_group.attrs["weight_names"] = np.array(names, dtype="S")
            for name, variable in zip(names, layer.weights):
                layer_group[name.decode()] = np.asarray(variable.numpy())


@pytest.mark.parametrize("name", ["example", "batchnorm"])
@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_keras2_h5_layout(saved, tmp_path, functional, name):
    keras_model = saved[name][0]
    write_keras2_h5(keras_model, tmp_path / "keras2.h5", functional)
    model = LeNet.from_keras(tmp_path / "keras2.h5")
    assert model.metadata["provenance"]["keras_version"] == "2.15.0"
    assert_keras_parity(model, keras_model, real_images(28, 1))


# ---------------------------------------------------------------------------------------------
# Networks outside the family, refused naming the layer
# ---------------------------------------------------------------------------------------------


def sequential(*body, input_shape=(28, 28, 1)):
    return keras.Sequential([keras.Input(input_shape), *body])


def lenet_body(conv1=None, pool=layers.AveragePooling2D, conv2=None, flatten_and_dense=None):
    return [
        conv1 or layers.Conv2D(6, 5, padding="same", activation="tanh", name="conv1"),
        pool(2),
        conv2 or layers.Conv2D(16, 5, activation="tanh", name="conv2"),
        pool(2),
        *(
            flatten_and_dense
            or [
                layers.Flatten(),
                layers.Dense(120, activation="tanh"),
                layers.Dense(84, activation="tanh"),
                layers.Dense(10, activation="softmax"),
            ]
        ),
    ]


# (The unpadded MNIST LeNet, Caffe's LeNet and a first Dense with another activation than the
# convolutions' are family members now: MODELS above loads them.)
UNSUPPORTED = {
    "reshape_after_conv1": (
        lambda: sequential(
            layers.Conv2D(6, 5, padding="same", name="conv1"),
            layers.Reshape((28, 28, 6), name="reshape"),
            *lenet_body()[1:],
        ),
        r"layer 'reshape' \(Reshape\): expected a Reshape only among the model's first layers, "
        r"giving the input its channel axis",
    ),
    "reshape_to_two_channels": (
        lambda: sequential(
            layers.Reshape((28, 14, 2), name="reshape"),
            *lenet_body(),
            input_shape=(28, 28),
        ),
        r"layer 'reshape' \(Reshape\): expected a Reshape to \(height, width, 1\) or \(1, "
        r"height, width\), found target_shape \[28, 14, 2\]",
    ),
    "strides": (
        lambda: sequential(
            *lenet_body(conv2=layers.Conv2D(16, 5, strides=2, name="conv2")),
            input_shape=(28, 28, 1),
        ),
        r"layer 'conv2' \(Conv2D\): expected strides \[1, 1\], found \[2, 2\]",
    ),
    "dilation": (
        lambda: sequential(*lenet_body(conv2=layers.Conv2D(16, 5, dilation_rate=2, name="conv2"))),
        r"layer 'conv2' \(Conv2D\): expected dilation_rate \[1, 1\], found \[2, 2\]",
    ),
    "kernel_3": (
        lambda: sequential(*lenet_body(conv2=layers.Conv2D(16, 3, name="conv2"))),
        r"layer 'conv2' \(Conv2D\): expected kernel_size \[5, 5\], found \[3, 3\]",
    ),
    "batchnorm_between_pooling_and_activation": (
        lambda: sequential(
            layers.Conv2D(6, 5, padding="same", name="conv1"),
            layers.AveragePooling2D(2),
            layers.BatchNormalization(name="bn"),
            layers.Activation("tanh"),
            *lenet_body()[2:],
        ),
        r"layer 'bn' \(BatchNormalization\): a BatchNormalization folds into the Conv2D or "
        r"Dense it directly follows, or after the activation into the next layer; this one "
        r"follows AveragePooling2D '[^']+' and precedes an activation",
    ),
    "two_batchnorms_after_activation": (
        lambda: sequential(
            *lenet_body()[:1],
            layers.BatchNormalization(name="bn1"),
            layers.BatchNormalization(name="bn2"),
            *lenet_body()[1:],
        ),
        r"layer 'bn2' \(BatchNormalization\): expected at most one BatchNormalization after "
        r"conv1's activation",
    ),
    "batchnorm_after_flatten": (
        lambda: sequential(
            *lenet_body()[:5],
            layers.BatchNormalization(name="bn"),
            *lenet_body()[5:],
        ),
        r"layer 'bn' \(BatchNormalization\): expected a BatchNormalization before the Flatten",
    ),
    "batchnorm_after_the_output": (
        lambda: sequential(*lenet_body(), layers.BatchNormalization(name="bn")),
        r"layer 'bn' \(BatchNormalization\): a BatchNormalization after the last layer's "
        r"softmax has no layer after it to fold into",
    ),
    "negative_scale_before_max_pooling": (
        lambda: with_gamma(
            sequential(
                *lenet_body(
                    conv1=layers.Conv2D(6, 5, activation="relu", name="conv1"),
                    pool=layers.MaxPooling2D,
                )[:1],
                layers.BatchNormalization(name="bn"),
                *lenet_body(pool=layers.MaxPooling2D)[1:],
            ),
            [1.0, 1.0, -0.5, 1.0, 1.0, 1.0],
        ),
        r"layer 'bn' \(BatchNormalization\): a negative scale \(gamma\) before max pooling "
        r"does not commute with it \(channel 2: gamma -0.5\); expected the BatchNormalization "
        r"after the pooling",
    ),
    "shift_before_same_conv2": (
        lambda: with_moving_statistics(
            sequential(
                *lenet_body()[:2],
                layers.BatchNormalization(name="bn"),
                layers.Conv2D(16, 5, padding="same", activation="tanh", name="conv2"),
                *lenet_body()[3:],
            )
        ),
        r"layer 'bn' \(BatchNormalization\): the next Conv2D pads the normalised map with zeros",
    ),
    "two_batchnorms": (
        lambda: sequential(
            layers.Conv2D(6, 5, padding="same", name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.BatchNormalization(name="bn2"),
            layers.Activation("tanh"),
            *lenet_body()[1:],
        ),
        r"layer 'bn2' \(BatchNormalization\): .* this one follows BatchNormalization 'bn1'",
    ),
    "batchnorm_axis": (
        lambda: sequential(
            layers.Conv2D(6, 5, padding="same", name="conv1"),
            layers.BatchNormalization(axis=1, name="bn"),
            layers.Activation("tanh"),
            *lenet_body()[1:],
        ),
        r"layer 'bn' \(BatchNormalization\): expected axis -1 or 3 \(the channels "
        r"\(channels_last\)\), found 1",
    ),
    "batchnorm_renorm": (
        lambda: sequential(
            layers.Conv2D(6, 5, padding="same", name="conv1"),
            layers.BatchNormalization(renorm=True, name="bn"),
            layers.Activation("tanh"),
            *lenet_body()[1:],
        ),
        r"layer 'bn' \(BatchNormalization\): expected renorm False or None, found True",
    ),
    "other_layer": (
        lambda: sequential(*lenet_body()[:1], layers.LeakyReLU(name="leaky"), *lenet_body()[1:]),
        r"layer 'leaky' \(LeakyReLU\): layer type LeakyReLU is not supported",
    ),
    "other_activation": (
        lambda: sequential(*lenet_body(conv2=layers.Conv2D(16, 5, activation="elu", name="conv2"))),
        r"layer 'conv2' \(Conv2D\): activation 'elu' is not supported",
    ),
    "activation_after_average_pool": (
        lambda: sequential(
            layers.Conv2D(6, 5, padding="same", name="conv1"),
            layers.AveragePooling2D(2),
            layers.Activation("tanh", name="late"),
            *lenet_body()[2:],
        ),
        r"layer 'late' \(Activation\): an activation after average pooling does not commute",
    ),
    "two_activations": (
        lambda: sequential(
            *lenet_body()[:1], layers.Activation("relu", name="again"), *lenet_body()[1:]
        ),
        r"layer 'again' \(Activation\): a second activation \(relu\) after tanh",
    ),
    "mixed_pooling": (
        lambda: sequential(
            *lenet_body()[:1],
            layers.MaxPooling2D(name="max"),
            *lenet_body()[2:3],
            layers.AveragePooling2D(2, name="avg"),
            *lenet_body()[4:],
        ),
        r"layer 'avg' \(AveragePooling2D\): pooling must be the same after both convolutions",
    ),
    "pool_3": (
        lambda: sequential(*lenet_body()[:1], layers.MaxPooling2D(3, name="p3"), *lenet_body()[2:]),
        r"layer 'p3' \(MaxPooling2D\): expected pool_size \[2, 2\], found \[3, 3\]",
    ),
    "softmax_inside": (
        lambda: sequential(
            *lenet_body(
                flatten_and_dense=[
                    layers.Flatten(),
                    layers.Dense(120, activation="tanh"),
                    layers.Dense(84, activation="softmax", name="early"),
                    layers.Dense(10),
                ]
            )
        ),
        r"layer 'early' \(Dense\): expected softmax only after the last Dense",
    ),
    "zero_padding_1": (
        lambda: sequential(layers.ZeroPadding2D(1, name="pad"), *lenet_body()),
        r"layer 'pad' \(ZeroPadding2D\): expected padding 2 on every side",
    ),
    "zero_padding_before_pooling": (
        lambda: sequential(
            *lenet_body()[:1], layers.ZeroPadding2D(2, name="pad"), *lenet_body()[1:]
        ),
        r"layer 'pad' \(ZeroPadding2D\): a ZeroPadding2D is read as the padding of the Conv2D "
        r"right after it; this one is followed by AveragePooling2D",
    ),
    "zero_padding_before_same": (
        lambda: sequential(layers.ZeroPadding2D(2), *lenet_body()),
        r"layer 'conv1' \(Conv2D\): expected padding 'valid' on a Conv2D after a ZeroPadding2D",
    ),
    "rescaling_offset_before_same": (
        lambda: sequential(layers.Rescaling(1 / 127.5, offset=-1, name="scale"), *lenet_body()),
        r"layer 'scale' \(Rescaling\): a Rescaling offset cannot be folded into a first Conv2D "
        r"with padding 'same'",
    ),
    "rescaling_not_first": (
        lambda: sequential(
            *lenet_body()[:2], layers.Rescaling(0.5, name="scale"), *lenet_body()[2:]
        ),
        r"layer 'scale' \(Rescaling\): a Rescaling is folded into the first Conv2D only among "
        r"the model's first layers \(after the input, at most one Rescaling and one "
        r"Normalization\); this one is not",
    ),
    "two_rescalings": (
        lambda: sequential(
            layers.Rescaling(0.5), layers.Rescaling(0.5, name="again"), *lenet_body()
        ),
        r"layer 'again' \(Rescaling\): a Rescaling is folded into the first Conv2D only among",
    ),
    "normalization_not_first": (
        lambda: sequential(
            *lenet_body()[:2],
            layers.Normalization(mean=0.5, variance=1.0, name="norm"),
            *lenet_body()[2:],
        ),
        r"layer 'norm' \(Normalization\): a Normalization is folded into the first Conv2D only",
    ),
    "normalization_mean_before_same": (
        lambda: sequential(
            layers.Normalization(mean=0.2, variance=0.09, name="norm"), *lenet_body()
        ),
        r"layer 'norm' \(Normalization\): a Normalization mean cannot be folded into a first "
        r"Conv2D with padding 'same' \(Keras pads the normalised input with zeros\)",
    ),
    "adapted_normalization_before_same": (
        lambda: sequential(adapted(layers.Normalization(name="norm"), 1), *lenet_body()),
        r"layer 'norm' \(Normalization\): a Normalization mean cannot be folded into a first "
        r"Conv2D with padding 'same'",
    ),
    "normalization_inverted": (
        lambda: sequential(
            layers.Normalization(mean=0.2, variance=0.09, invert=True, name="norm"),
            *lenet_body(conv1=layers.Conv2D(6, 5, activation="tanh")),
        ),
        r"layer 'norm' \(Normalization\): expected invert False, found True",
    ),
    "normalization_over_rows": (
        lambda: sequential(
            layers.Normalization(axis=1, mean=0.0, variance=1.0, name="norm"),
            *lenet_body(),
        ),
        r"layer 'norm' \(Normalization\): expected axis -1 or 3 \(the channels\) or none, found 1",
    ),
    "mixed_precision": (
        lambda: sequential(
            *lenet_body(
                conv2=layers.Conv2D(16, 5, activation="tanh", dtype="mixed_float16", name="conv2")
            )
        ),
        r"layer 'conv2' \(Conv2D\): expected float32 computation, found dtype policy "
        r"'mixed_float16'",
    ),
}


def keras_body(conv2=None, conv3=None, dense=None, input_shape=(28, 28, 1)):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(6, 5, padding="same", activation="tanh", name="conv1"),
            layers.AveragePooling2D(2),
            conv2 or layers.Conv2D(16, 5, activation="tanh", name="conv2"),
            layers.AveragePooling2D(2),
            *([conv3] if conv3 else []),
            layers.Flatten(),
            *(dense or [layers.Dense(120, activation="tanh"), layers.Dense(10)]),
        ]
    )


OUTSIDE_THE_FAMILY = {
    "odd_size": (
        lambda: keras_body(input_shape=(30, 30, 1)),
        r"layer 'conv1' \(Conv2D\): input 30x30 with padding 'same' on conv1 and 'valid' on "
        r"conv2: conv2 gives a height of 11 \(odd\)",
    ),
    "conv3_same": (
        lambda: keras_body(conv3=layers.Conv2D(120, 5, padding="same", name="conv3")),
        r"layer 'conv3' \(Conv2D\): expected padding 'valid' on the third Conv2D",
    ),
    "conv3_not_5x5": (
        lambda: keras_body(conv3=layers.Conv2D(120, 5, name="conv3"), input_shape=(36, 36, 1)),
        r"layer 'conv3' \(Conv2D\): the third Conv2D must see a 5x5 map .* the input 36x36 "
        r"gives 7x7",
    ),
    "fourth_dense": (
        lambda: keras_body(
            dense=[
                layers.Dense(64),
                layers.Dense(32),
                layers.Dense(16),
                layers.Dense(10, name="fourth"),
            ]
        ),
        r"layer 'fourth' \(Dense\): expected at most three Dense layers after the convolutions; "
        r"this is a fourth",
    ),
    "hidden_dense_activations_differ": (
        lambda: keras_body(
            dense=[
                layers.Dense(64, activation="relu"),
                layers.Dense(32, activation="tanh", name="second"),
                layers.Dense(10),
            ]
        ),
        r"layer 'second' \(Dense\): this layer must use the hidden Dense layers' activation "
        r"\(relu\) .* found tanh",
    ),
    "conv_activations_differ": (
        lambda: keras_body(conv2=layers.Conv2D(16, 5, activation="relu", name="conv2")),
        r"layer 'conv2' \(Conv2D\): this layer must use the convolutions' activation \(tanh\) "
        r".* found relu",
    ),
}


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
@pytest.mark.parametrize("case", list(UNSUPPORTED) + list(OUTSIDE_THE_FAMILY))
def test_unsupported_networks_are_refused(tmp_path, case, file_format):
    build, message = {**UNSUPPORTED, **OUTSIDE_THE_FAMILY}[case]
    path = tmp_path / f"model{file_format}"
    build().save(path)
    with pytest.raises(WeightFileError, match=re.escape(str(path)) + ": " + message):
        LeNet.from_keras(path)


def test_branches_are_refused(tmp_path):
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(6, 5, padding="same", activation="tanh", name="conv1")(inputs)
    side = layers.Conv2D(6, 1, name="side")(x)
    x = layers.Add(name="join")([x, side])
    for layer in lenet_body()[1:]:
        x = layer(x)
    keras.Model(inputs, x).save(tmp_path / "branch.keras")
    with pytest.raises(WeightFileError, match=r"layer 'join' \(Add\): expected one input tensor"):
        LeNet.from_keras(tmp_path / "branch.keras")


def test_subclassed_model_is_refused(tmp_path):
    config = {"module": "__main__", "class_name": "MyLeNet", "config": {}}
    path = tmp_path / "subclassed.keras"
    write_archive(path, config, b"")
    with pytest.raises(
        WeightFileError,
        match=r"expected a Sequential or Functional model, found "
        r"'MyLeNet' \(a subclassed model",
    ):
        LeNet.from_keras(path)


# ---------------------------------------------------------------------------------------------
# Hostile and broken files
# ---------------------------------------------------------------------------------------------


def archive_parts(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json")), archive.read("model.weights.h5")


def write_archive(path, config, weights, extra=()):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "config.json", config if isinstance(config, (str, bytes)) else json.dumps(config)
        )
        archive.writestr("model.weights.h5", weights)
        for name, data in extra:
            archive.writestr(name, data)


def edited_weights(weights, edit):
    """The model.weights.h5 bytes after `edit(h5py.File)`."""
    buffer = io.BytesIO(weights)
    with h5py.File(buffer, "r+") as file:
        edit(file)
    return buffer.getvalue()


def refused(path, pattern):
    with pytest.raises(WeightFileError, match=re.escape(str(path)) + ": (.* )?" + pattern):
        LeNet.from_keras(path)


def test_not_a_keras_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"GIF89a not a model")
    refused(path, r"expected a Keras \.keras archive \(zip\) or \.h5 \(HDF5\) file")
    with pytest.raises(FileNotFoundError):
        LeNet.from_keras(tmp_path / "missing.keras")
    path.write_bytes(b"PK\x03\x04 truncated")
    refused(path, r"expected a \.keras \(zip\) archive, found an unreadable file")


def test_archive_members_and_sizes(saved, tmp_path):
    config, weights = archive_parts(saved["example"][1])
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    refused(path, r"missing model\.weights\.h5")
    write_archive(path, " " * (1 << 20) + json.dumps(config), weights)
    refused(path, r"'config\.json': expected at most 1048576 bytes, the zip directory declares")
    write_archive(path, config, weights, [(f"extra{i}", b"") for i in range(100)])
    refused(path, r"expected at most 64 archive members, found 102")
    write_archive(path, "{not json", weights)
    refused(path, r"config\.json: expected UTF-8 JSON, found invalid data")
    write_archive(path, "[" * 100_000 + "]" * 100_000, weights)
    refused(path, r"config\.json: expected UTF-8 JSON, found invalid data")
    write_archive(path, config, b"not hdf5")
    refused(path, r"'model\.weights\.h5': expected an HDF5 file, found an unreadable one")


def test_zip_bomb_member_is_refused_from_its_declared_size(saved, tmp_path):
    config, weights = archive_parts(saved["example"][1])
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", weights + bytes(1 << 31))
    assert path.stat().st_size < 10 << 20
    refused(
        path,
        r"'model\.weights\.h5': expected at most 2147483648 bytes, the zip directory "
        r"declares \d+",
    )


def test_config_is_data_never_code(saved, tmp_path):
    """A Lambda layer's code (and a registered custom class) is never run: the layer is refused."""
    config, weights = archive_parts(saved["example"][1])
    marker = tmp_path / "executed"
    code = f"open({str(marker)!r}, 'w')"
    config["config"]["layers"].insert(
        2,
        {
            "module": "keras.layers",
            "class_name": "Lambda",
            "registered_name": None,
            "config": {
                "name": "evil",
                "function": {"class_name": "__lambda__", "config": {"code": code}},
            },
        },
    )
    path = tmp_path / "lambda.keras"
    write_archive(path, config, weights)
    refused(path, r"layer 'evil' \(Lambda\): layer type Lambda is not supported")
    assert not marker.exists()


def test_config_values_of_the_wrong_type(saved, tmp_path):
    config, weights = archive_parts(saved["example"][1])
    path = tmp_path / "model.keras"
    cases = [
        (lambda c: c.update(config=[]), r"expected a non-empty list of layers"),
        (
            lambda c: c["config"]["layers"].__setitem__(1, "Conv2D"),
            r"expected layer 1 to be an object with 'class_name' and 'config'",
        ),
        (
            lambda c: c["config"]["layers"][1]["config"].update(filters=10**9),
            r"layer 'conv2d' \(Conv2D\): expected filters from 1 to 4096, found 1000000000",
        ),
        (
            lambda c: c["config"]["layers"][1]["config"].update(filters="6"),
            r"layer 'conv2d' \(Conv2D\): expected filters from 1 to 4096, found '6'",
        ),
        (
            lambda c: c["config"]["layers"][1]["config"].update(
                activation={"module": "os", "config": "system"}
            ),
            r"layer 'conv2d' \(Conv2D\): activation \{'module': 'os'",
        ),
        (
            lambda c: c["config"]["layers"][1]["config"].update(future_option=3),
            r"layer 'conv2d' \(Conv2D\): option future_option=3 is not supported",
        ),
        (
            lambda c: c["config"]["layers"][0]["config"].update(batch_shape=[None, 28, 28, "1"]),
            r"expected an image input shape \(batch, height, width, channels\)",
        ),
        (
            lambda c: c["config"]["layers"][2]["config"].update(name="conv2d"),
            r"expected unique layer names, found 'conv2d' more than once",
        ),
        (
            lambda c: c["config"]["layers"][6]["config"].update(units=100),
            r"model\.weights\.h5 'layers/dense/vars/0' of layer 'dense': expected shape "
            r"\(400, 100\), found \(400, 120\) \(the Dense after Flatten takes 400 features",
        ),
    ]
    for edit, message in cases:
        edited = json.loads(json.dumps(config))
        edit(edited)
        write_archive(path, edited, weights)
        refused(path, message)


def test_batchnorm_that_cannot_be_folded_is_refused(saved, tmp_path):
    """Statistics that give no finite layer, missing variables and a malformed epsilon are
    refused naming the BatchNormalization layer."""
    config, weights = archive_parts(saved["batchnorm"][1])
    path = tmp_path / "model.keras"
    bn = r"layer '[^']+' \(BatchNormalization\): "

    def negative_variance(file):
        del file["layers/batch_normalization/vars/3"]
        file["layers/batch_normalization/vars/3"] = np.full(8, -1.0, np.float32)

    def missing_variance(file):
        del file["layers/batch_normalization/vars/3"]

    for edit, message in (
        (
            negative_variance,
            bn + r"cannot fold it into the layer before: expected running_var \+ "
            r"eps > 0, found -0.999",
        ),
        (
            missing_variance,
            bn + r".*expected variables \['0', '1', '2', '3'\], found "
            r"\['0', '1', '2'\]",
        ),
    ):
        write_archive(path, config, edited_weights(weights, edit))
        refused(path, message)
    for epsilon in ("0.001", -1.0, True, None):
        edited = json.loads(json.dumps(config))
        layer = next(
            entry
            for entry in edited["config"]["layers"]
            if entry["class_name"] == "BatchNormalization"
        )
        layer["config"]["epsilon"] = epsilon
        write_archive(path, edited, weights)
        refused(path, bn + "expected epsilon a finite number >= 0, found")


def test_rescaling_needs_one_finite_scale_and_offset(saved, tmp_path):
    config, weights = archive_parts(saved["example"][1])
    path = tmp_path / "model.keras"
    list_of_values = r"one finite number or a list of one per input channel, found"
    for key, value, message in (
        ("scale", [0.5] * 4, rf"expected scale {list_of_values}"),
        ("scale", "0.5", rf"expected scale {list_of_values}"),
        ("scale", None, rf"expected scale {list_of_values}"),
        ("offset", 1e999, rf"expected offset {list_of_values}"),
        ("scale", [0.5, 0.5], r"expected one value or 1 \(one per input channel\), found 2"),
    ):
        edited = json.loads(json.dumps(config))
        rescaling = {"name": "scale", "scale": 1 / 255, "offset": 0.0, key: value}
        edited["config"]["layers"].insert(1, {"class_name": "Rescaling", "config": rescaling})
        write_archive(path, edited, weights)
        refused(path, rf"layer 'scale' \(Rescaling\): {message}")


def test_weights_that_do_not_match_or_are_unsafe(saved, tmp_path):
    config, weights = archive_parts(saved["example"][1])
    path = tmp_path / "model.keras"

    def replace(name, data):
        def edit(file):
            del file[name]
            file[name] = data

        return edit

    def external_link(file):
        del file["layers/conv2d/vars/0"]
        file["layers/conv2d/vars/0"] = h5py.ExternalLink("/etc/passwd", "/data")

    def soft_link(file):
        del file["layers/conv2d/vars/0"]
        file["layers/conv2d/vars/0"] = h5py.SoftLink("/layers/conv2d_1/vars/0")

    cases = [
        (
            replace("layers/conv2d/vars/0", np.zeros((5, 5, 1, 7), np.float32)),
            r"'layers/conv2d/vars/0' of layer 'conv2d': expected shape \(5, 5, 1, 6\), found "
            r"\(5, 5, 1, 7\)",
        ),
        (
            replace("layers/conv2d/vars/0", np.zeros((5, 5, 1, 6), np.int32)),
            r"expected float16, float32 or float64, found int32",
        ),
        (
            replace(
                "layers/conv2d/vars/1",
                np.array([b"x"] * 6, dtype=object).astype(h5py.string_dtype()),
            ),
            r"expected float16, float32 or float64, found object",
        ),
        (
            replace("layers/dense/vars/1", np.full(120, np.nan, np.float32)),
            r"'dense.bias' \(used as conv3.bias\): expected finite values",
        ),
        (
            lambda file: file["layers/conv2d/vars"].create_dataset("2", data=np.zeros(3)),
            r"layer 'conv2d' \(Conv2D\): model\.weights\.h5 'layers/conv2d/vars': expected "
            r"variables \['0', '1'\], found \['0', '1', '2'\]",
        ),
        (
            lambda file: file["layers/conv2d/vars"].attrs.modify("name", "other"),
            r"belongs to layer 'other': the weights do not match the config",
        ),
        (
            lambda file: file["layers"].pop("dense_1"),
            r"layer 'dense_1' \(Dense\): model\.weights\.h5 'layers/dense_1/vars': missing",
        ),
        (external_link, r"found a ExternalLink \(links are not followed\)"),
        (soft_link, r"found a SoftLink \(links are not followed\)"),
    ]
    for edit, message in cases:
        write_archive(path, config, edited_weights(weights, edit))
        refused(path, message)


def test_legacy_h5_without_a_config_or_with_bad_weight_names(saved, tmp_path):
    keras_model, _, h5_file = saved["example"]
    path = tmp_path / "weights.h5"
    keras_model.save_weights(tmp_path / "model.weights.h5")
    refused(tmp_path / "model.weights.h5", r"this file has none -- weights alone")
    data = h5_file.read_bytes()
    path.write_bytes(data)
    with h5py.File(path, "r+") as file:
        file["model_weights/dense"].attrs["weight_names"] = np.array(
            [b"dense/bias", b"dense/kernel"]
        )
    refused(
        path,
        r"layer 'dense' \(Dense\): 'model_weights/dense': expected weights "
        r"\['kernel', 'bias'\], found \['dense/bias', 'dense/kernel'\]",
    )
    path.write_bytes(data)
    with h5py.File(path, "r+") as file:
        file.attrs["model_config"] = np.int64(3)
    refused(path, r"'model_config' attribute: expected a string, found int64")
    with h5py.File(path, "w", libver="latest") as file:  # room for a 2 MiB attribute
        file.attrs["model_config"] = np.bytes_(b" " * (2 << 20))
    refused(path, r"'model_config' attribute: expected at most 1048576 bytes, found 2097152")
    with h5py.File(path, "w", libver="latest") as file:  # variable length: read, then refused
        file.attrs["model_config"] = " " * (2 << 20)
    refused(
        path,
        r"'model_config' attribute: expected at most 1048576 bytes of JSON, found "
        r"2097152",
    )


@pytest.mark.parametrize("file_format", [".keras", ".h5", "deflated .keras"])
def test_corrupted_bytes_give_only_weight_file_errors(saved, tmp_path, file_format):
    """Flipped and truncated bytes anywhere: a clean WeightFileError or (where the damage hit
    only weight values) a working model -- never another exception."""
    keras_model, keras_file, h5_file = saved["example"]
    data = bytearray((h5_file if file_format == ".h5" else keras_file).read_bytes())
    if file_format == "deflated .keras":  # Keras stores members; a compressed copy is legal too
        buffer = io.BytesIO()
        with (
            zipfile.ZipFile(keras_file) as source,
            zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target,
        ):
            for info in source.infolist():
                target.writestr(info.filename, source.read(info))
        data = bytearray(buffer.getvalue())
        file_format = ".keras"
    rng = np.random.default_rng(7)
    images = real_images(28, 1)[:32]
    expected = np.asarray(keras_model.predict(images.transpose(0, 2, 3, 1), verbose=0))
    path = tmp_path / f"corrupt{file_format}"
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(120):
        damaged = bytearray(data)
        if trial % 4 == 3:
            damaged = damaged[: int(rng.integers(len(damaged)))]
        else:
            for position in rng.integers(len(damaged), size=int(rng.integers(1, 8))):
                damaged[position] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            model = LeNet.from_keras(path)
        except WeightFileError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        # A flip inside weight data changes the weights, which no file format can detect
        # without a checksum; the model must still be a working LeNet of the same shape.
        assert model.forward(images).shape == expected.shape
    assert outcomes["refused"] > 0, outcomes


def test_large_weight_members_are_streamed(saved, monkeypatch):
    """Members over the in-memory limit are read from the zip stream: same model."""
    import lenet_fast.keras

    keras_model, keras_file, _ = saved["relu_max"]
    monkeypatch.setattr(lenet_fast.keras, "_IN_MEMORY_BYTES", 0)
    assert_keras_parity(LeNet.from_keras(keras_file), keras_model, real_images(32, 1))


# ---------------------------------------------------------------------------------------------
# The command line reads Keras files (lenet_fast.cli.read_model_file)
# ---------------------------------------------------------------------------------------------


def run_cli(capsys, *arguments):
    from lenet_fast.cli import main

    status = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
def test_cli_predict_evaluate_and_info_take_a_keras_model(saved, tmp_path, capsys, file_format):
    keras_model, keras_file, h5_file = saved["example"]
    path = keras_file if file_format == ".keras" else h5_file
    model = LeNet.from_keras(path)
    images, labels = real_images(28, 1)[:300, 0], load_sample()[1][:300]
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    status, _, err = run_cli(
        capsys,
        "predict",
        path,
        tmp_path / "images.npy",
        "--out",
        tmp_path / "labels_out.npy",
        "--quiet",
    )
    assert status == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "labels_out.npy"), model.predict(images))
    assert "warning" not in err  # the Keras file states its architecture

    status, out, err = run_cli(
        capsys, "evaluate", path, tmp_path / "images.npy", tmp_path / "labels.npy", "--quiet"
    )
    assert status == 0, err
    correct = int(np.sum(model.predict(images) == labels))
    assert f"accuracy: {correct / 300:.4f} ({correct:,}/300 correct)" in out

    status, out, err = run_cli(capsys, "info", path)
    assert status == 0, err
    assert "conv tanh, fc1 tanh, output softmax, avg pooling" in out
    assert f"Keras {file_format}" in out and "assumed" not in out
    # The architecture options beat what the file says, as for every other format.
    status, out, err = run_cli(capsys, "info", path, "--pool", "max")
    assert status == 0, err
    assert "conv tanh, fc1 tanh, output softmax, max pooling" in out


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".KERAS", ".hdf5"])
def test_cli_convert_writes_a_self_describing_npz_from_a_keras_model(
    saved, tmp_path, capsys, suffix
):
    _, keras_file, h5_file = saved["relu_max"]
    source = tmp_path / f"model{suffix}"
    source.write_bytes((h5_file if suffix.lower() in (".h5", ".hdf5") else keras_file).read_bytes())
    status, _, err = run_cli(
        capsys,
        "convert",
        source,
        tmp_path / "out.npz",
        "--classes",
        ",".join(str(i) for i in range(10)),
    )
    assert status == 0, err
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ArchitectureWarning: nothing was guessed
        converted = LeNet.from_npz(tmp_path / "out.npz")
    original = LeNet.from_keras(source)
    assert converted.architecture == original.architecture == MODELS["relu_max"][1]
    assert converted.classes == [str(i) for i in range(10)]
    assert converted.metadata["provenance"]["format"] == original.metadata["provenance"]["format"]
    images = real_images(32, 1)[:64]
    np.testing.assert_array_equal(converted.forward(images), original.forward(images))


def test_cli_keras_errors_are_one_line(saved, tmp_path, capsys):
    (tmp_path / "fake.keras").write_bytes(b"not a model at all")
    np.save(tmp_path / "images.npy", real_images(28, 1)[:4, 0])
    for arguments in (
        ("predict", tmp_path / "fake.keras", tmp_path / "images.npy"),
        ("info", tmp_path / "fake.keras"),
        ("convert", tmp_path / "fake.keras", tmp_path / "out.npz"),
    ):
        status, _, err = run_cli(capsys, *arguments)
        assert status == 1
        assert err.count("\n") == 1 and err.startswith("lenet-fast: error: ")
        assert "expected a Keras .keras archive (zip) or .h5 (HDF5) file" in err
    assert not (tmp_path / "out.npz").exists()
