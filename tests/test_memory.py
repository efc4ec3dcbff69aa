"""Memory: a million images, converted batches and stride-0 views run in bounded memory, and
nothing leaks over many calls, loads or short-lived threads.

Memory is measured in a fresh interpreter (`factories.run_python`: VmHWM and VmRSS from /proc),
so the test process's own allocations do not blur the numbers.  Every test here is marked
``memory`` (pyproject.toml): ``pytest -m "not memory"`` leaves them out, as the checked build
(AddressSanitizer, whose shadow memory makes RSS meaningless) does.
"""

import sys

import pytest

from factories import normal_weights, run_python
from lenet_fast import LeNet

pytestmark = [
    pytest.mark.memory,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def test_huge_broadcast_batch_is_converted_in_bounded_memory():
    # 100,000 images as a stride-0 view of one image: 400 MB if copied at once.
    result = run_python("""
        model = LeNet(normal_weights(), num_threads=2)
        one = images(1)
        expected = model.forward(one)
        model.predict(np.broadcast_to(one, (5000, 1, 32, 32)))  # warm-up: workspaces, chunk
        before = peak_mb()
        huge = np.broadcast_to(one, (100_000, 1, 32, 32))
        scores = model.forward(huge)
        report(grew=peak_mb() - before, equal=bool((scores == expected).all()))
    """)
    assert result["equal"]
    assert result["grew"] < 4 + 40, result  # the 4 MB of scores plus slack; never 400 MB


def test_million_image_predict_peak_memory_is_output_plus_workspace():
    # 1,000,000 zero images (4 GB) as a read-only anonymous mapping: its pages are the shared
    # zero page, so they cost no RSS and any copy of the input would show in the peak.
    result = run_python(
        """
        import mmap
        n = 1_000_000
        buffer = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ)
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
        x = np.frombuffer(buffer, dtype=np.float32).reshape(n, 1, 32, 32)
        model = LeNet(normal_weights(), num_threads=2)
        expected = model.predict(x[:1])[0]
        model.predict(x[:4096])  # warm-up: per-thread workspaces
        before = peak_mb()
        labels = model.predict(x)
        report(grew=peak_mb() - before, equal=bool((labels == expected).all()),
               input_mb=x.nbytes / 2**20)
    """,
        timeout=300,
    )
    assert result["equal"]
    assert result["grew"] < 8 + 24, result  # 8 MB of int64 labels, small slack


# ---------------------------------------------------------------------------------------------
# Memory: leaks
# ---------------------------------------------------------------------------------------------


def test_no_leak_over_100000_predict_calls():
    result = run_python(
        """
        model = LeNet(normal_weights(), num_threads=2)
        one, batch = images(1), images(32)
        scores = np.empty((32, 10), np.float32)
        def calls(count):
            for i in range(count):
                if i % 10 == 9:
                    model.predict(batch)
                    model.forward(batch, out=scores)
                else:
                    model.predict(one)
        calls(5_000)
        before = rss_mb()
        calls(95_000)
        report(grew=rss_mb() - before)
    """,
        timeout=300,
    )
    assert result["grew"] < 20, result


def test_no_leak_over_1000_load_free_cycles(tmp_path):
    LeNet(normal_weights(conv1=20, conv3=300, fc1=200)).save_npz(tmp_path / "model.npz")
    result = run_python(
        f"""
        import gc
        x = images(40)
        def cycles(count):
            for _ in range(count):
                model = LeNet.from_npz({str(tmp_path / "model.npz")!r}, num_threads=2)
                model.predict(x)
                del model
        cycles(50)
        gc.collect()
        before = rss_mb()
        cycles(950)
        gc.collect()
        report(grew=rss_mb() - before)
    """,
        timeout=300,
    )
    assert result["grew"] < 20, result


def test_thread_workspaces_are_freed_when_threads_exit():
    # Each new OS thread gets its own cached workspace; 200 short-lived threads must not keep 200.
    result = run_python("""
        import threading
        model = LeNet(normal_weights(conv1=64, conv2=64), num_threads=1)
        x = images(40)
        def burst(count):
            for _ in range(count):
                thread = threading.Thread(target=model.predict, args=(x,))
                thread.start()
                thread.join()
        burst(20)
        before = rss_mb()
        burst(200)
        report(grew=rss_mb() - before)
    """)
    assert result["grew"] < 20, result


def test_million_images_into_out_and_a_converted_float64_view_run_in_bounded_memory():
    result = run_python("""
        rng = np.random.default_rng(0)
        model = LeNet(normal_weights(seed=7))
        model.predict(np.zeros((300, 1, 28, 28), np.float32))   # threads and workspaces exist now
        result = {}
        # float32 C-contiguous (the fast path) into out=.  np.zeros pages are mapped to the shared
        # zero page when read, so the 3 GB input does not enter the resident set; the output is
        # touched first.
        x = np.zeros((1_000_000, 1, 28, 28), np.float32)
        labels = np.full(1_000_000, -1, np.int64)
        before = peak_mb()
        model.predict(x, out=labels)
        result["float32"] = peak_mb() - before
        result["float32_labels"] = sorted(set(labels.tolist()))
        # A zero-stride float64 view of 200,000 images: converted to float32 in chunks.
        image = rng.normal(size=(1, 1, 28, 28))
        before = peak_mb()
        labels = model.predict(np.broadcast_to(image, (200_000, 1, 28, 28)))
        result["converted"] = peak_mb() - before - labels.nbytes / 2**20
        result["converted_labels"] = sorted(set(labels.tolist()))
        result["zero_label"] = int(model.predict(np.zeros((1, 28, 28), np.float32))[0])
        result["image_label"] = int(model.predict(image)[0])
        report(**result)
    """)
    assert result["float32"] < 64, f"peak RSS grew by {result['float32']:.0f} MB"
    assert result["converted"] < 64, f"peak RSS grew by {result['converted']:.0f} MB"
    assert result["float32_labels"] == [result["zero_label"]]
    assert result["converted_labels"] == [result["image_label"]]
