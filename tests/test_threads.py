"""Threads and concurrency: the default thread count (affinity mask, cgroup CPU quota,
OMP_NUM_THREADS), the pool's spin setting, the thread cap and threads that cannot start, the
thread rule for small batches, identical bits at thread counts beyond the two that test_kernels
covers (more threads than CPUs, single-image work items), eight Python threads calling shared and
separate models, and child processes (fork, spawn) after a multithreaded predict.  The
concurrency tests run for ``LENET_FAST_SAFETY_SECONDS`` (default 3) each."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from factories import member_weights, model_at_level, normal_weights, random_weights, run_python
from factories import normal_images as images
from lenet_fast import LeNet, _dispatch, _model
from lenet_fast._architecture import MEMBERS

PACKAGE_ROOT = str(Path(lenet_fast.__file__).resolve().parent.parent)
LANES = _dispatch.kernels.LANES
# How long the concurrency tests hammer the models, in seconds.
SECONDS = float(os.environ.get("LENET_FAST_SAFETY_SECONDS", "3"))


def run_script(script, **environment):
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT, **environment}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


# ---------------------------------------------------------------------------------------------
# cgroup CPU quota, from fake cgroup files
# ---------------------------------------------------------------------------------------------


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs: rounded up, as loky / scikit-learn do
        ("50000 100000\n", 1),
        ("400000 50000\n", 8),
        ("garbage\n", None),
        ("", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, expected):
    self_cgroup = write(tmp_path / "self_cgroup", "0::/\n")
    write(tmp_path / "fs" / "cpu.max", cpu_max)
    assert _dispatch.cgroup_cpu_limit(str(tmp_path / "fs"), str(self_cgroup)) == expected


def test_cgroup_v2_limit_of_an_ancestor_applies_and_the_smallest_wins(tmp_path):
    self_cgroup = write(tmp_path / "self_cgroup", "0::/system.slice/app.service\n")
    root = tmp_path / "fs"
    write(root / "cpu.max", "max 100000\n")
    write(root / "system.slice" / "cpu.max", "300000 100000\n")
    write(root / "system.slice" / "app.service" / "cpu.max", "max 100000\n")
    assert _dispatch.cgroup_cpu_limit(str(root), str(self_cgroup)) == 3
    write(root / "system.slice" / "app.service" / "cpu.max", "100000 100000\n")
    assert _dispatch.cgroup_cpu_limit(str(root), str(self_cgroup)) == 1


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("-1", "100000", None),
        ("250000", "100000", 3),
        ("100000", "100000", 1),
        ("x", "100000", None),
    ],
)
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, expected):
    self_cgroup = write(
        tmp_path / "self_cgroup",
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n",
    )
    folder = tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc"
    write(folder / "cpu.cfs_quota_us", quota)
    write(folder / "cpu.cfs_period_us", period)
    assert _dispatch.cgroup_cpu_limit(str(tmp_path / "fs"), str(self_cgroup)) == expected


def test_cgroup_v1_inside_a_container_reads_the_root_of_its_namespace(tmp_path):
    # A container's cgroup namespace shows its own cgroup as "/": the quota is at the mount's root.
    self_cgroup = write(tmp_path / "self_cgroup", "3:cpu,cpuacct:/\n")
    write(tmp_path / "fs" / "cpu" / "cpu.cfs_quota_us", "200000")
    write(tmp_path / "fs" / "cpu" / "cpu.cfs_period_us", "100000")
    assert _dispatch.cgroup_cpu_limit(str(tmp_path / "fs"), str(self_cgroup)) == 2


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert _dispatch.cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path / "missing")) is None


# ---------------------------------------------------------------------------------------------
# The default thread count
# ---------------------------------------------------------------------------------------------


def test_default_threads_are_the_usable_cpus_capped_by_the_quota(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(
        _dispatch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False
    )
    monkeypatch.setattr(_dispatch, "cgroup_cpu_limit", lambda: None)
    assert _dispatch.usable_cpus() == _dispatch.default_num_threads() == 6
    monkeypatch.setattr(_dispatch, "cgroup_cpu_limit", lambda: 2)
    assert _dispatch.usable_cpus() == _dispatch.default_num_threads() == 2
    assert LeNet(random_weights()).num_threads == 2
    monkeypatch.setattr(_dispatch, "cgroup_cpu_limit", lambda: 64)
    assert _dispatch.default_num_threads() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _dispatch.default_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a thread count: ignored
    assert _dispatch.default_num_threads() == 6


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs an affinity mask of at least 2 CPUs",
)
def test_default_threads_follow_the_affinity_mask_set_before_the_call():
    stdout = run_script(
        """
        import os
        import lenet_fast
        from lenet_fast import _dispatch
        before = _dispatch.default_num_threads()
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(before, _dispatch.default_num_threads(), lenet_fast.show_config(False)["usable_cpus"])
    """,
        OMP_NUM_THREADS="",
    )
    cpus = len(os.sched_getaffinity(0))
    quota = _dispatch.cgroup_cpu_limit()
    assert stdout == [str(min(cpus, quota or cpus)), "1", "1"]


def test_spin_setting_is_reported_and_always_in_effect():
    assert run_script(
        """
        import lenet_fast
        print(lenet_fast.show_config(False)["spin_microseconds"])
    """,
        LENET_FAST_SPIN_US="35",
    ) == ["35"]
    # Invalid values keep the default (50 us).
    assert run_script(
        """
        import lenet_fast
        print(lenet_fast.show_config(False)["spin_microseconds"])
    """,
        LENET_FAST_SPIN_US="lots",
    ) == ["50"]


# ---------------------------------------------------------------------------------------------
# The thread rule and identical bits at any thread count
# ---------------------------------------------------------------------------------------------


def test_thread_rule_uses_one_thread_per_images_per_thread():
    calls = []
    model = LeNet(random_weights(), num_threads=16)

    def kernel(images, result, threads, check_finite):
        calls.append(threads)
        return -1

    for n in (1, 7, 8, 16, 33, 64, 1000):
        model._run(
            kernel, np.zeros((n, 1, 32, 32), np.float32), np.zeros((n, 10), np.float32), None, True
        )
    per_thread = _model._IMAGES_PER_THREAD
    assert calls == [max(1, min(16, n // per_thread)) for n in (1, 7, 8, 16, 33, 64, 1000)]


@pytest.mark.parametrize("threads", [3, 4, 8, 16])
def test_more_threads_than_cpus_give_the_same_bits(level, threads):
    # Every thread count splits a small batch differently (lane groups, then single images taken
    # from the back by helpers); each image must come out exactly as when computed alone.
    model = model_at_level(LeNet(random_weights(4), output_activation="softmax"), level)
    x = np.random.default_rng(9).normal(size=(150, 1, 28, 28)).astype(np.float32)
    alone = np.concatenate([model.forward(x[i : i + 1]) for i in range(len(x))])
    for n in (2, 5, 16, 17, 40, 64, 99, 150):
        scores = np.empty((n, 10), np.float32)
        for _ in range(3):  # the split depends on when helpers wake up: try a few
            assert model._engine.forward(x[:n], scores, threads, True) == -1
            np.testing.assert_array_equal(scores, alone[:n], err_msg=f"n={n} threads={threads}")
        labels = np.empty(n, np.int64)
        assert model._engine.predict(x[:n], labels, threads, True) == -1
        np.testing.assert_array_equal(labels, alone[:n].argmax(axis=1))


def test_first_non_finite_image_is_found_at_any_thread_count():
    model = LeNet(random_weights())
    x = np.random.default_rng(2).normal(size=(120, 1, 32, 32)).astype(np.float32)
    x[[37, 90, 101]] = np.nan
    scores = np.empty((120, 10), np.float32)
    for threads in (1, 2, 5, 16):
        assert model._engine.forward(x, scores, threads, True) == 37


def test_pool_statistics_count_every_multithreaded_job():
    model = LeNet(random_weights())
    x = np.random.default_rng(3).normal(size=(64, 1, 32, 32)).astype(np.float32)
    scores = np.empty((64, 10), np.float32)
    before = lenet_fast.show_config(False)["pool_jobs"]
    for _ in range(5):
        model._engine.forward(x, scores, 2, True)
    model._engine.forward(x, scores, 1, True)  # one thread: no job for the pool
    after = lenet_fast.show_config(False)["pool_jobs"]
    assert (after["posted"] + after["backed_off"]) - (before["posted"] + before["backed_off"]) == 5
    assert 0 <= after["struck"] - before["struck"] <= after["posted"] - before["posted"]


# ---------------------------------------------------------------------------------------------
# Concurrency: Python threads calling shared and separate models
# ---------------------------------------------------------------------------------------------


def hammer(models, batches, seconds, workers=8):
    """Call predict and forward from `workers` Python threads for `seconds`; return the number of
    calls and every mismatch with the single-threaded results."""
    expected = [
        [(m.predict(b, num_threads=1), m.forward(b, num_threads=1)) for b in batches]
        for m in models
    ]
    mismatches, calls, errors = [], [0] * workers, []
    start = threading.Barrier(workers)

    def work(worker):
        try:
            rng = np.random.default_rng(worker)
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                which = rng.integers(len(models))
                index = rng.integers(len(batches))
                model, batch = models[which], batches[index]
                labels = model.predict(batch)
                scores = model.forward(batch, num_threads=int(rng.integers(1, 4)))
                want_labels, want_scores = expected[which][index]
                if not (
                    np.array_equal(labels, want_labels) and np.array_equal(scores, want_scores)
                ):
                    mismatches.append((worker, which, index))
                calls[worker] += 1
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return sum(calls), mismatches


BATCH_SIZES = [1, 3, LANES, LANES + 5, 100, 257]


def test_eight_threads_share_one_model():
    model = LeNet(normal_weights(), output_activation="softmax", num_threads=2)
    batches = [images(n, seed=n) for n in BATCH_SIZES]
    batches += [images(n, size=28, seed=n) for n in (7, 21, 33)]  # 28x28: padded inside
    calls, mismatches = hammer([model], batches, SECONDS)
    assert not mismatches
    assert calls > 8


def test_eight_threads_share_a_model_whose_batch_one_is_split():
    """Caffe's LeNet shares batch 1's layers with the pool; eight callers at once (only one
    can hold the pool, the others run their image alone) get the one-thread bits."""
    member = MEMBERS["caffe"]
    model = LeNet(member_weights(member), **member.architecture, **member.geometry, num_threads=2)
    assert model._engine.one_image_threads > 1
    batches = [images(1, size=28, seed=seed) for seed in range(4)] + [images(5, size=28)]
    calls, mismatches = hammer([model], batches, SECONDS)
    assert not mismatches
    assert calls > 8


def test_eight_threads_on_different_models():
    models = [
        LeNet(normal_weights(seed=1), num_threads=2),
        LeNet(
            normal_weights(conv1=3, conv2=40, conv3=17, fc1=200, n_classes=3, seed=2),
            pool="avg",
            output_activation="softmax",
            num_threads=2,
        ),
        LeNet(
            normal_weights(conv1=20, conv2=5, conv3=300, fc1=7, n_classes=31, seed=3),
            conv_activation="tanh",
            fc_activation="relu",
            num_threads=1,
        ),
        LeNet(
            normal_weights(seed=4),
            conv_activation="sigmoid",
            output_activation="identity",
            num_threads=3,
        ),
    ]
    batches = [images(n, seed=n) for n in BATCH_SIZES]
    calls, mismatches = hammer(models, batches, SECONDS)
    assert not mismatches
    assert calls > 8


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _child_predicts(path, queue):
    model = LeNet.from_npz(path, num_threads=2)
    queue.put(model.predict(images(300, seed=7)).tolist())


@pytest.mark.parametrize(
    "method",
    [
        # Found here: GNU libgomp cannot start a thread team in a child forked after the parent ran
        # one, so predict hung in GOMP_parallel until forked children were made to run serially.
        pytest.param(
            "fork", marks=pytest.mark.skipif(sys.platform != "linux", reason="fork: Linux")
        ),
        "spawn",
    ],
)
def test_child_process_loads_and_predicts_after_a_multithreaded_predict(tmp_path, method):
    import multiprocessing

    model = LeNet(normal_weights(), num_threads=2)
    model.save_npz(tmp_path / "model.npz")
    expected = model.predict(images(300, seed=7), num_threads=2).tolist()  # OpenMP team started
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_child_predicts, args=(str(tmp_path / "model.npz"), queue))
    child.start()
    try:
        result = queue.get(timeout=30)
    except Exception:  # noqa: BLE001 -- queue.Empty: the child hung or died
        result = None
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    assert result == expected, f"{method} child hung or died (exit code {child.exitcode})"


# ---------------------------------------------------------------------------------------------
# Threads: the cap, and threads that cannot start
# ---------------------------------------------------------------------------------------------


def test_num_threads_above_the_cap_is_refused():
    model = LeNet(normal_weights(), num_threads=2)
    assert lenet_fast.MAX_THREADS == 256
    with pytest.raises(
        ValueError,
        match=r"^num_threads must be at most 256 "
        r"\(lenet_fast.MAX_THREADS\); got 1000$",
    ):
        model.predict(np.zeros((1, 32, 32), np.float32), num_threads=1000)
    with pytest.raises(ValueError, match="at most 256"):
        LeNet(normal_weights(), num_threads=257)


def test_threads_that_cannot_start_are_an_exception_not_an_exit():
    result = run_python("""
        import resource
        import numpy as np
        from lenet_fast import LeNet
        from lenet_fast._weights import canonical_shapes
        weights = {key: np.full(shape, 0.01, np.float32)
                   for key, shape in canonical_shapes().items()}
        model = LeNet(weights)
        x = np.zeros((256 * 32, 1, 32, 32), np.float32)
        limit = 600 * 2**20 + int(open("/proc/self/statm").read().split()[0]) * 4096
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            model.predict(x, num_threads=256)
            report(outcome="ran")
        except OSError as exc:
            report(outcome="refused", error=str(exc))
    """)
    assert result["outcome"] == "refused"  # before: GNU OpenMP ended the process
    assert "could not start 256 threads" in result["error"]
