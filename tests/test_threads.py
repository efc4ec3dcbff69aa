"""Threads: the default thread count (affinity mask, cgroup CPU quota, OMP_NUM_THREADS), the
pool's spin setting, the thread rule for small batches, and identical bits at thread counts
beyond the two that test_kernels covers (more threads than CPUs, single-image work items)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from lenet_fast import LeNet, _dispatch, _model

from conftest import build_model_at_level, make_random_weights

PACKAGE_ROOT = str(Path(lenet_fast.__file__).resolve().parent.parent)


def run_python(script, **environment):
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT, **environment}
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                               text=True, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


# ---------------------------------------------------------------------------------------------
# cgroup CPU quota, from fake cgroup files
# ---------------------------------------------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", None),
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),     # 1.5 CPUs: rounded up, as loky / scikit-learn do
    ("50000 100000\n", 1),
    ("400000 50000\n", 8),
    ("garbage\n", None),
    ("", None),
])
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


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("-1", "100000", None), ("250000", "100000", 3), ("100000", "100000", 1), ("x", "100000", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, expected):
    self_cgroup = write(tmp_path / "self_cgroup",
                        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
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
    monkeypatch.setattr(_dispatch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5},
                        raising=False)
    monkeypatch.setattr(_dispatch, "cgroup_cpu_limit", lambda: None)
    assert _dispatch.usable_cpus() == _dispatch.default_num_threads() == 6
    monkeypatch.setattr(_dispatch, "cgroup_cpu_limit", lambda: 2)
    assert _dispatch.usable_cpus() == _dispatch.default_num_threads() == 2
    assert LeNet(make_random_weights()).num_threads == 2
    monkeypatch.setattr(_dispatch, "cgroup_cpu_limit", lambda: 64)
    assert _dispatch.default_num_threads() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _dispatch.default_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "0")     # not a thread count: ignored
    assert _dispatch.default_num_threads() == 6


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity mask of at least 2 CPUs")
def test_default_threads_follow_the_affinity_mask_set_before_the_call():
    stdout = run_python("""
        import os
        import lenet_fast
        from lenet_fast import _dispatch
        before = _dispatch.default_num_threads()
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(before, _dispatch.default_num_threads(), lenet_fast.show_config(False)["usable_cpus"])
    """, OMP_NUM_THREADS="")
    cpus = len(os.sched_getaffinity(0))
    quota = _dispatch.cgroup_cpu_limit()
    assert stdout == [str(min(cpus, quota or cpus)), "1", "1"]


def test_spin_setting_is_reported_and_always_in_effect():
    assert run_python("""
        import lenet_fast
        print(lenet_fast.show_config(False)["spin_microseconds"])
    """, LENET_FAST_SPIN_US="35") == ["35"]
    # Invalid values keep the default (50 us).
    assert run_python("""
        import lenet_fast
        print(lenet_fast.show_config(False)["spin_microseconds"])
    """, LENET_FAST_SPIN_US="lots") == ["50"]


# ---------------------------------------------------------------------------------------------
# The thread rule and identical bits at any thread count
# ---------------------------------------------------------------------------------------------

def test_thread_rule_uses_one_thread_per_images_per_thread():
    calls = []
    model = LeNet(make_random_weights(), num_threads=16)

    def kernel(images, result, threads, check_finite):
        calls.append(threads)
        return -1

    for n in (1, 7, 8, 16, 33, 64, 1000):
        model._run(kernel, np.zeros((n, 1, 32, 32), np.float32), np.zeros((n, 10), np.float32), None,
                   True)
    per_thread = _model._IMAGES_PER_THREAD
    assert calls == [max(1, min(16, n // per_thread)) for n in (1, 7, 8, 16, 33, 64, 1000)]


@pytest.mark.parametrize("threads", [3, 4, 8, 16])
def test_more_threads_than_cpus_give_the_same_bits(level, threads):
    # Every thread count splits a small batch differently (lane groups, then single images taken
    # from the back by helpers); each image must come out exactly as when computed alone.
    model = build_model_at_level(LeNet(make_random_weights(4), output_activation="softmax"), level)
    x = np.random.default_rng(9).normal(size=(150, 1, 28, 28)).astype(np.float32)
    alone = np.concatenate([model.forward(x[i:i + 1]) for i in range(len(x))])
    for n in (2, 5, 16, 17, 40, 64, 99, 150):
        scores = np.empty((n, 10), np.float32)
        for _ in range(3):   # the split depends on when helpers wake up: try a few
            assert model._engine.forward(x[:n], scores, threads, True) == -1
            np.testing.assert_array_equal(scores, alone[:n], err_msg=f"n={n} threads={threads}")
        labels = np.empty(n, np.int64)
        assert model._engine.predict(x[:n], labels, threads, True) == -1
        np.testing.assert_array_equal(labels, alone[:n].argmax(axis=1))


def test_first_non_finite_image_is_found_at_any_thread_count():
    model = LeNet(make_random_weights())
    x = np.random.default_rng(2).normal(size=(120, 1, 32, 32)).astype(np.float32)
    x[[37, 90, 101]] = np.nan
    scores = np.empty((120, 10), np.float32)
    for threads in (1, 2, 5, 16):
        assert model._engine.forward(x, scores, threads, True) == 37


def test_pool_statistics_count_every_multithreaded_job():
    model = LeNet(make_random_weights())
    x = np.random.default_rng(3).normal(size=(64, 1, 32, 32)).astype(np.float32)
    scores = np.empty((64, 10), np.float32)
    before = lenet_fast.show_config(False)["pool_jobs"]
    for _ in range(5):
        model._engine.forward(x, scores, 2, True)
    model._engine.forward(x, scores, 1, True)    # one thread: no job for the pool
    after = lenet_fast.show_config(False)["pool_jobs"]
    assert (after["posted"] + after["backed_off"]) - (before["posted"] + before["backed_off"]) == 5
    assert 0 <= after["struck"] - before["struck"] <= after["posted"] - before["posted"]
