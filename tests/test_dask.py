"""lenet_fast.dask: lazy inference over Dask arrays, on the local schedulers and on a real
multi-process dask.distributed cluster, equals the in-process result exactly."""

import pickle
import re

import numpy as np
import pytest

da = pytest.importorskip("dask.array")  # the test extra installs dask[array,distributed]
distributed = pytest.importorskip("distributed")

from factories import random_weights  # noqa: E402
from lenet_fast import LeNet  # noqa: E402
from lenet_fast import dask as lenet_dask  # noqa: E402

N_IMAGES = 100_000
CHUNK = 12_500


def random_model(in_channels=1, seed=0):
    # Weights and biases in +-4/sqrt(fan_in): wide enough that noise images get many labels.
    weights = random_weights(seed, in_channels, gain=4, bias_bound=None)
    return LeNet(weights, fc_activation="tanh", output_activation="softmax")


def local_result(method, model, images):
    """The in-process result, one block at a time (the images are generated, never stored)."""
    return np.concatenate(
        [getattr(model, method)(block.compute(scheduler="synchronous")) for block in images.blocks]
    )


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


def test_cluster_predicts_100k_images_exactly_like_the_local_model(client):
    model = random_model()
    # Generated on the workers from per-chunk seeds: no image crosses the network.
    images = da.random.default_rng(0).standard_normal(
        (N_IMAGES, 28, 28), chunks=CHUNK, dtype=np.float32
    )
    labels = lenet_dask.predict(model, images)
    scores = lenet_dask.forward(model, images)
    assert labels.chunks == (images.chunks[0],)
    assert scores.chunks == (images.chunks[0], (10,))

    cluster_labels, cluster_scores = client.compute([labels, scores], sync=True)

    assert cluster_labels.dtype == np.int64 and cluster_labels.shape == (N_IMAGES,)
    np.testing.assert_array_equal(cluster_labels, local_result("predict", model, images))
    np.testing.assert_array_equal(cluster_scores, local_result("forward", model, images))
    assert len(np.unique(cluster_labels)) > 1  # not a degenerate model


def test_cluster_workers_use_one_thread_per_task_unless_told(client):
    # The nanny sets OMP_NUM_THREADS=1 and each worker runs one task at a time.
    model = random_model()
    assert client.submit(lenet_dask._threads_per_task, model, pure=False).result() == 1
    images = da.random.default_rng(1).standard_normal(
        (4_000, 1, 32, 32), chunks=1_000, dtype=np.float32
    )
    labels = lenet_dask.predict(model, images, num_threads=2).compute()
    np.testing.assert_array_equal(labels, local_result("predict", model, images))


def test_the_model_enters_the_graph_once():
    model = random_model()
    images = da.zeros((50 * 100, 1, 32, 32), chunks=100, dtype=np.float32)
    graph = dict(lenet_dask.predict(model, images).__dask_graph__())
    model_size = len(pickle.dumps(model))
    graph_size = len(distributed.protocol.pickle.dumps(graph))
    assert model_size < graph_size < model_size + 100_000, (model_size, graph_size)


@pytest.mark.parametrize(
    "shape, chunks",
    [
        ((1_000, 28, 28), (250, 14, 28)),  # (N, H, W), chunked along H too: rechunked
        ((1_000, 1, 32, 32), (300, 1, 32, 32)),  # (N, C, H, W), uneven last chunk
        ((999, 3, 28, 28), (400, 3, 28, 28)),  # three channels
    ],
)
def test_local_threaded_scheduler(shape, chunks):
    model = random_model(in_channels=3 if shape[1] == 3 else 1)
    images = da.random.default_rng(2).standard_normal(shape, chunks=chunks, dtype=np.float32)
    x = images.compute()
    np.testing.assert_array_equal(lenet_dask.predict(model, images).compute(), model.predict(x))
    np.testing.assert_array_equal(lenet_dask.forward(model, images).compute(), model.forward(x))


def test_errors_are_raised_when_the_graph_is_built():
    model = random_model()
    with pytest.raises(
        TypeError,
        match=re.escape(
            "images must be a dask.array.Array of shape (N, [C,] H, W); got ndarray (wrap NumPy "
            "arrays with dask.array.from_array)"
        ),
    ):
        lenet_dask.predict(model, np.zeros((2, 32, 32), np.float32))
    with pytest.raises(TypeError, match="^model must be a lenet_fast.LeNet; got str$"):
        lenet_dask.forward("model", da.zeros((2, 32, 32), dtype=np.float32))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "x must have shape (N, 1, 32, 32) or (N, 1, 28, 28), or (N, 32, 32) / (N, 28, 28); "
            "got (5, 1, 30, 30)"
        ),
    ):
        lenet_dask.predict(model, da.zeros((5, 1, 30, 30), dtype=np.float32))
    with pytest.raises(TypeError, match="^x must hold floating-point images"):
        lenet_dask.predict(model, da.zeros((5, 32, 32), dtype=np.int32))
    with pytest.raises(ValueError, match="^num_threads must be >= 1; got 0$"):
        lenet_dask.predict(model, da.zeros((5, 32, 32), dtype=np.float32), num_threads=0)


def test_non_finite_input_raises_at_compute_time():
    model = random_model()
    x = np.zeros((100, 32, 32), np.float32)
    x[70, 3, 3] = np.nan
    labels = lenet_dask.predict(model, da.from_array(x, chunks=50))
    with pytest.raises(ValueError, match=re.escape("x[20] contains NaN or infinity")):
        labels.compute(scheduler="synchronous")
    np.testing.assert_array_equal(
        lenet_dask.predict(model, da.from_array(x, chunks=50), check_finite=False)[:70].compute(),
        model.predict(x[:70]),
    )
