"""Keras interop for the whole LeNet family (issue 12).

LeNets of the family built and saved by Keras 3 itself (``.keras`` and ``.h5``; padding
"valid"/"same" per convolution, 28x28 and 32x32 inputs, 1-3 Dense layers, average/max pooling,
tanh/relu/sigmoid, softmax, channels-first) give Keras's own predictions: <= 1e-5 abs + 1e-5 rel,
>= 99.9 % equal labels, on random and real Fashion-MNIST images; networks outside the family are
refused naming the layer.  Keras runs on its PyTorch backend (no TensorFlow).
"""

import os
import re

import numpy as np
import pytest

from lenet_fast import LeNet
from lenet_fast._architecture import normalize_geometry
from lenet_fast.datasets import load_sample

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
OPTIONS = ("conv_activation", "fc_activation", "output_activation", "pool")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install lenet_fast[keras])")
os.environ["KERAS_BACKEND"] = "torch"   # before Keras is imported: no TensorFlow needed
keras = pytest.importorskip("keras", reason="Keras 3 is not installed (the test extra installs it)")
from keras import layers  # noqa: E402


def real_images(size=28, channels=1):
    """The shipped Fashion-MNIST test images as floats in [0, 1], (N, C, size, size)."""
    pixels = load_sample()[0].astype(np.float32) / 255
    pad = (size - 28) // 2
    pixels = np.pad(pixels, ((0, 0), (pad, pad), (pad, pad)))[:, None]
    if channels == 3:   # three different channels: the image, its negative, its square
        pixels = np.concatenate([pixels, 1 - pixels, pixels**2], axis=1)
    return np.ascontiguousarray(pixels)


def keras_mnist_unpadded():
    """28x28 'valid' everywhere, ReLU, max pooling, flatten 256 -> 120 -> 84 -> 10 (linear)."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(6, 5, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 5, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
        layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(10)])


def keras_caffe():
    """Caffe's LeNet: no convolution activation, flatten 800 -> 500 ReLU -> 10 softmax."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(20, 5), layers.MaxPooling2D(2), layers.Conv2D(50, 5), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(500, activation="relu"),
        layers.Dense(10, activation="softmax")])


def keras_same_flatten():
    """'same' then 'valid', tanh convolutions, average pooling, and ReLU dense layers: a flatten
    over 5x5 in Keras's (row, column, channel) order that is not conv3."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(6, 5, padding="same", activation="tanh"), layers.AveragePooling2D(2),
        layers.Conv2D(16, 5, activation="tanh"), layers.AveragePooling2D(2), layers.Flatten(),
        layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(10, activation="softmax")])


def keras_same_same_rgb():
    """'same' on both convolutions (7x7 after pooling), RGB, one Dense layer."""
    return keras.Sequential([
        keras.Input((28, 28, 3)),
        layers.Conv2D(8, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(12, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(10, activation="softmax")])


def keras_channels_first_valid_32():
    """Channels-first tensors on a 32x32 input, sigmoid, flattened in (channel, row, column)."""
    return keras.Sequential([
        keras.Input((1, 32, 32)),
        layers.Conv2D(6, 5, activation="sigmoid", data_format="channels_first"),
        layers.AveragePooling2D(2, data_format="channels_first"),
        layers.Conv2D(16, 5, activation="sigmoid", data_format="channels_first"),
        layers.AveragePooling2D(2, data_format="channels_first"),
        layers.Flatten(data_format="channels_first"),
        layers.Dense(32, activation="tanh"), layers.Dense(10)])


KERAS_MODELS = {
    "mnist-unpadded": (keras_mnist_unpadded, {
        "conv_activation": "relu", "fc_activation": "relu", "output_activation": "identity",
        "pool": "max", "input_size": 28, "conv1_padding": 0, "conv2_padding": 0}),
    "caffe": (keras_caffe, {
        "conv_activation": "identity", "fc_activation": "relu", "output_activation": "softmax",
        "pool": "max", "input_size": 28, "conv1_padding": 0, "conv2_padding": 0}),
    "same-flatten": (keras_same_flatten, {
        "conv_activation": "tanh", "fc_activation": "relu", "output_activation": "softmax",
        "pool": "avg", "input_size": 28, "conv1_padding": 2, "conv2_padding": 0}),
    "same-same-rgb": (keras_same_same_rgb, {
        "conv_activation": "relu", "output_activation": "softmax", "pool": "max",
        "input_size": 28, "conv1_padding": 2, "conv2_padding": 2}),
    "channels-first-32": (keras_channels_first_valid_32, {
        "conv_activation": "sigmoid", "fc_activation": "tanh", "output_activation": "identity",
        "pool": "avg", "input_size": 32, "conv1_padding": 0, "conv2_padding": 0}),
}


@pytest.fixture(scope="module", autouse=True)
def fresh_keras_names():
    """Keras numbers automatic layer names per process (conv2d, conv2d_1, ...): reset them after
    this module so that other test modules see the names a fresh process gives."""
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def keras_saved(tmp_path_factory):
    """name -> (Keras model, its .keras file, its .h5 file).  The Caffe LeNet is trained for an
    epoch on real images so that its labels mean something; the others keep Keras's initial
    weights."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("keras-family")
    result = {}
    for name, (build, _) in KERAS_MODELS.items():
        model = build()
        if name == "caffe":
            pixels, labels = load_sample()
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            model.fit(pixels[..., None].astype(np.float32) / 255, labels, epochs=1,
                      batch_size=32, verbose=0)
        model.save(folder / f"{name}.keras")
        model.save(folder / f"{name}.h5")
        result[name] = (model, folder / f"{name}.keras", folder / f"{name}.h5")
    return result


def assert_keras_parity(ours, keras_model, x):
    channels_first = tuple(keras_model.inputs[0].shape[1:])[0] == x.shape[1]
    expected = np.asarray(keras_model.predict(x if channels_first else x.transpose(0, 2, 3, 1),
                                              verbose=0, batch_size=256))
    found = ours.forward(x)
    np.testing.assert_allclose(found, expected, **TOLERANCE)
    agreement = np.mean(found.argmax(axis=1) == expected.argmax(axis=1))
    assert agreement >= 0.999, agreement
    return found


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_keras_family_matches_keras(keras_saved, name, file_format):
    keras_model, keras_file, h5_file = keras_saved[name]
    model = LeNet.from_keras(keras_file if file_format == ".keras" else h5_file)
    expected = KERAS_MODELS[name][1]
    for option, value in expected.items():
        if option in OPTIONS:
            assert model.architecture[option] == value, option
    assert normalize_geometry(model.architecture) == normalize_geometry(
        {option: expected[option] for option in ("input_size", "conv1_padding",
                                                 "conv2_padding")})
    channels = 3 if name.endswith("rgb") else 1
    size = expected["input_size"]
    random_images = np.random.default_rng(1).random((1000, channels, size, size),
                                                    dtype=np.float32)
    assert_keras_parity(model, keras_model, random_images)
    found = assert_keras_parity(model, keras_model, real_images(size, channels))
    if name == "caffe":   # trained: its labels are Fashion-MNIST classes, not noise
        assert np.mean(found.argmax(axis=1) == load_sample()[1]) > 0.5


def test_keras_flatten_permutation_is_done_once_at_load(keras_saved):
    """fc1 of a channels-last flatten model is stored in PyTorch's (channel, row, column)
    order: Keras's kernel row (r * W + c) * C + k becomes column (k * H + r) * W + c."""
    keras_model, path, _ = keras_saved["mnist-unpadded"]
    kernel = np.asarray(keras_model.layers[5].kernel)        # the first Dense: (256, 120)
    found = LeNet.from_keras(path).weights["fc1.weight"]
    expected = kernel.reshape(4, 4, 16, 120).transpose(3, 2, 0, 1).reshape(120, 256)
    np.testing.assert_array_equal(found, expected)


def keras_body(conv2=None, conv3=None, dense=None, input_shape=(28, 28, 1)):
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(6, 5, padding="same", activation="tanh", name="conv1"),
        layers.AveragePooling2D(2), conv2 or layers.Conv2D(16, 5, activation="tanh", name="conv2"),
        layers.AveragePooling2D(2), *([conv3] if conv3 else []), layers.Flatten(),
        *(dense or [layers.Dense(120, activation="tanh"), layers.Dense(10)])])


KERAS_REFUSED = {
    "odd_size": (
        lambda: keras_body(input_shape=(30, 30, 1)),
        r"layer 'conv1' \(Conv2D\): input 30x30 with padding 'same' on conv1 and 'valid' on "
        r"conv2: conv2 gives a height of 11 \(odd\)"),
    "conv3_same": (
        lambda: keras_body(conv3=layers.Conv2D(120, 5, padding="same", name="conv3")),
        r"layer 'conv3' \(Conv2D\): expected padding 'valid' on the third Conv2D"),
    "conv3_not_5x5": (
        lambda: keras_body(conv3=layers.Conv2D(120, 5, name="conv3"), input_shape=(36, 36, 1)),
        r"layer 'conv3' \(Conv2D\): the third Conv2D must see a 5x5 map .* the input 36x36 "
        r"gives 7x7"),
    "fourth_dense": (
        lambda: keras_body(dense=[layers.Dense(64), layers.Dense(32), layers.Dense(16),
                                  layers.Dense(10, name="fourth")]),
        r"layer 'fourth' \(Dense\): expected at most three Dense layers after the convolutions; "
        r"this is a fourth"),
    "hidden_dense_activations_differ": (
        lambda: keras_body(dense=[layers.Dense(64, activation="relu"),
                                  layers.Dense(32, activation="tanh", name="second"),
                                  layers.Dense(10)]),
        r"layer 'second' \(Dense\): this layer must use the hidden Dense layers' activation "
        r"\(relu\) .* found tanh"),
    "conv_activations_differ": (
        lambda: keras_body(conv2=layers.Conv2D(16, 5, activation="relu", name="conv2")),
        r"layer 'conv2' \(Conv2D\): this layer must use the convolutions' activation \(tanh\) "
        r".* found relu"),
}


@pytest.mark.parametrize("file_format", [".keras", ".h5"])
@pytest.mark.parametrize("case", list(KERAS_REFUSED))
def test_keras_outside_the_family_is_refused_naming_the_layer(tmp_path, case, file_format):
    build, message = KERAS_REFUSED[case]
    path = tmp_path / f"model{file_format}"
    build().save(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        LeNet.from_keras(path)
