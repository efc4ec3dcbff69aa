"""Models pickle small (weights + architecture), work after unpickling in another process, and
deep-copy."""

import copy
import multiprocessing
import pickle

import numpy as np
import pytest

from lenet_fast import LeNet

SHAPES = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "conv3": (120, 16, 5, 5),
          "fc1": (84, 120), "fc2": (10, 84)}


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    weights = {}
    for layer, shape in SHAPES.items():
        bound = 3 / np.sqrt(np.prod(shape[1:]))
        weights[f"{layer}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{layer}.bias"] = rng.uniform(-bound, bound, shape[:1]).astype(np.float32)
    return LeNet(weights, conv_activation="tanh", fc_activation="relu", output_activation="softmax",
                 pool="avg", num_threads=1, metadata={"classes": [str(k) for k in range(10)]})


@pytest.fixture
def images():
    return np.random.default_rng(1).standard_normal((500, 1, 32, 32), dtype=np.float32)


def test_pickle_holds_little_more_than_the_weights(model):
    weight_bytes = sum(array.nbytes for array in model.weights.values())
    size = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    assert weight_bytes < size < weight_bytes + 4096, (size, weight_bytes)


def test_unpickled_in_a_spawned_process_predicts_the_same(model, images):
    # spawn: a fresh interpreter that re-imports lenet_fast, rebuilds the kernels and workspaces.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        labels = pool.apply(LeNet.predict, (model, images))
        scores = pool.apply(LeNet.forward, (model, images))
        child_repr = pool.apply(repr, (model,))
    np.testing.assert_array_equal(labels, model.predict(images))
    np.testing.assert_array_equal(scores, model.forward(images))
    assert child_repr == repr(model)


def test_round_trip_keeps_everything(model, images):
    restored = pickle.loads(pickle.dumps(model))
    assert restored.architecture == model.architecture
    assert restored.num_threads == model.num_threads == 1
    assert restored.classes == model.classes
    assert restored.metadata == model.metadata
    for key, value in model.weights.items():
        np.testing.assert_array_equal(restored.weights[key], value, err_msg=key)
        assert not restored.weights[key].flags.writeable
    np.testing.assert_array_equal(restored.forward(images), model.forward(images))


def test_deepcopy_is_independent_and_equal(model, images):
    duplicate = copy.deepcopy(model)
    assert duplicate is not model and repr(duplicate) == repr(model)
    for key, value in model.weights.items():
        assert duplicate.weights[key] is not value
        np.testing.assert_array_equal(duplicate.weights[key], value, err_msg=key)
    duplicate.num_threads = 2
    assert model.num_threads == 1
    np.testing.assert_array_equal(duplicate.forward(images), model.forward(images))
    np.testing.assert_array_equal(copy.copy(model).predict(images), model.predict(images))
