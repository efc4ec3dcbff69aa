"""pytest-benchmark: lenet_fast against its peers, one group per (batch size, thread count).

Run with ``pytest bench/ --benchmark-only``.  Every engine computes the same network from the same
weights (checked when the peers are built, see `bench.peers.build_peers`) on the same
images; engines whose package is missing are skipped.  Small batches use pytest-benchmark's own
calibration; batches of 1024 and more use a fixed number of rounds so the whole run stays within
minutes.  There are no timing assertions: the point is the side-by-side table.
"""

import pytest

from bench.peers import ENGINES, build_peers, is_benchmarked_at
from tests.factories import random_images, random_weights

BATCHES = (1, 64, 1024, 16384)
THREADS = (1, 2)
LARGE_BATCH = 1024
LARGE_BATCH_ROUNDS = 3

CASES = [
    pytest.param(engine, batch, threads, id=f"{engine}-batch{batch}-threads{threads}")
    for batch in BATCHES
    for threads in THREADS
    for engine in ENGINES
    if is_benchmarked_at(engine, batch)
]


@pytest.fixture(scope="session")
def peers_for():
    """``peers_for(threads)`` -> (peers, skipped), built once per thread count."""
    weights = random_weights(seed=0)
    built = {}

    def get(threads):
        if threads not in built:
            built[threads] = build_peers(weights, threads)
        return built[threads]

    return get


@pytest.fixture(scope="session")
def images_for():
    """``images_for(batch)`` -> the first `batch` images of one shared random array."""
    images = random_images(max(BATCHES))
    return lambda batch: images[:batch]


@pytest.mark.parametrize("engine, batch, threads", CASES)
def test_predict_throughput(benchmark, peers_for, images_for, engine, batch, threads):
    peers, skipped = peers_for(threads)
    if engine in skipped:
        pytest.skip(f"{engine}: {skipped[engine]}")
    peer = peers[engine]
    images = images_for(batch)
    benchmark.group = f"batch {batch:>5}, {threads} thread{'s' if threads > 1 else ''}"
    benchmark.extra_info.update(version=peer.version, images_per_call=batch)
    labels = peer.run(images)  # warm-up: OpenVINO reshapes and ORT allocates on a new batch size
    assert labels.shape == (batch,)
    if batch >= LARGE_BATCH:
        benchmark.pedantic(peer.run, args=(images,), rounds=LARGE_BATCH_ROUNDS)
    else:
        benchmark(peer.run, images)
