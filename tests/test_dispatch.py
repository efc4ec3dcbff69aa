"""Choice of the kernel level at import: show_config(), LENET_FAST_ISA, and the kernels run on CPUs
without AVX-512 / AVX2, emulated by qemu-user (``qemu-x86_64 -cpu Haswell`` / ``-cpu Nehalem``)."""

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lenet_fast
from factories import exact, random_weights
from lenet_fast import LeNet, _cpu_features, _dispatch, reference

PACKAGE_ROOT = str(Path(lenet_fast.__file__).resolve().parent.parent)
LANES = {"avx512": 16, "avx2": 8, "generic": 4}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def run_python(script, *args, isa=None, prefix=(), timeout=60):
    """Run `script` in a fresh interpreter that imports this lenet_fast, optionally forcing a level."""
    env = {
        key: value for key, value in os.environ.items() if key != _dispatch.ISA_ENVIRONMENT_VARIABLE
    }
    env["PYTHONPATH"] = PACKAGE_ROOT
    if isa is not None:
        env[_dispatch.ISA_ENVIRONMENT_VARIABLE] = isa
    return subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


REPORT_IMPORT = """
try:
    import lenet_fast
except ImportError as exc:
    print("ImportError:", exc)
else:
    print(lenet_fast.show_config(False)["isa"])
"""


# ---------------------------------------------------------------------------------------------
# show_config and the levels
# ---------------------------------------------------------------------------------------------


def test_show_config_reports_the_level_in_use(capsys):
    config = lenet_fast.show_config(False)
    assert capsys.readouterr().out == ""
    assert {
        "version",
        "isa",
        "usable_isas",
        "built_isas",
        "forced_isa",
        "vector_lanes",
        "threading",
        "spin_microseconds",
        "pool_jobs",
        "openmp_runtimes_loaded",
        "usable_cpus",
        "cgroup_cpu_limit",
        "default_num_threads",
    } <= set(config)
    assert config["version"] == lenet_fast.__version__
    assert config["isa"] == _dispatch.kernels.ISA == LeNet(random_weights()).isa
    assert config["usable_isas"] == _dispatch.usable_levels()
    assert config["built_isas"] == _dispatch.built_levels()
    forced = os.environ.get(_dispatch.ISA_ENVIRONMENT_VARIABLE) or None
    assert config["forced_isa"] == forced
    if forced is None:
        assert config["isa"] == config["usable_isas"][0]
    assert config["vector_lanes"] == LANES[config["isa"]]
    assert not {"openmp", "no_openmp_reason"} & set(config)  # no -fopenmp: nothing to report
    assert config["default_num_threads"] == _dispatch.default_num_threads()
    assert config["usable_cpus"] == _dispatch.usable_cpus()
    assert config["openmp_runtimes_loaded"] == _dispatch.loaded_openmp_runtimes()

    lenet_fast.show_config()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(config)
    for line, (key, value) in zip(printed, config.items()):
        shown = (", ".join(value) or "none") if isinstance(value, tuple) else str(value)
        assert line.split(None, 1) == [key, shown]


def test_usable_levels_are_built_supported_and_ordered():
    built, usable = _dispatch.built_levels(), _dispatch.usable_levels()
    assert usable and usable[-1] == "generic"
    assert set(usable) <= set(built) and set(usable) <= set(_cpu_features.supported_levels())
    assert list(usable) == [level for level in _dispatch.LEVELS if level in usable]
    if _cpu_features.is_x86():
        assert set(built) == {"avx512", "avx2", "generic"}
    for level in usable:
        kernels = _dispatch.load_kernels(level)
        assert (kernels.ISA, kernels.LANES) == (level, LANES[level])


def test_load_kernels_errors(monkeypatch):
    with pytest.raises(
        ValueError, match=exact("unknown ISA level 'sse4': expected one of avx512, avx2, generic")
    ):
        _dispatch.load_kernels("sse4")
    monkeypatch.setattr(_cpu_features, "supported_levels", lambda: ("generic",))
    with pytest.raises(
        ImportError,
        match=exact(
            "LENET_FAST_ISA=avx2 but this CPU does not support avx2 (it supports: generic)"
        ),
    ):
        _dispatch.load_kernels("avx2")
    monkeypatch.setattr(_dispatch, "built_levels", lambda: ("generic",))
    with pytest.raises(
        ImportError,
        match=exact(
            "lenet_fast was built without the 'avx512' kernels on this platform (built: generic)"
        ),
    ):
        _dispatch.load_kernels("avx512")
    assert _dispatch.load_kernels("generic").ISA == "generic"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3), ("3,2", 3), (" 5 ", 5), ("0", None), ("many", None), ("", None)],
)
def test_default_num_threads_reads_omp_num_threads(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    fallback = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _dispatch.default_num_threads() == (expected or fallback)
    assert LeNet(random_weights()).num_threads == (expected or fallback)


# ---------------------------------------------------------------------------------------------
# LENET_FAST_ISA, in fresh interpreters
# ---------------------------------------------------------------------------------------------


def test_forcing_each_usable_level(level):
    completed = run_python(REPORT_IMPORT, isa=level)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == level


def test_empty_forced_level_means_the_best():
    completed = run_python(REPORT_IMPORT, isa="")
    assert completed.stdout.strip() == _dispatch.usable_levels()[0], completed.stderr


def test_unknown_forced_level_is_an_import_error():
    completed = run_python(REPORT_IMPORT, isa="sse9")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == (
        "ImportError: LENET_FAST_ISA='sse9' is not a level: expected one of avx512, avx2, generic"
    )


def test_forcing_a_level_this_cpu_lacks_is_an_import_error():
    missing = [
        level for level in _dispatch.built_levels() if level not in _dispatch.usable_levels()
    ]
    if not missing:
        pytest.skip("this CPU runs every built level (the qemu tests cover a CPU that lacks one)")
    completed = run_python(REPORT_IMPORT, isa=missing[0])
    supported = ", ".join(_cpu_features.supported_levels())
    assert completed.stdout.strip() == (
        f"ImportError: LENET_FAST_ISA={missing[0]} but this CPU does "
        f"not support {missing[0]} (it supports: {supported})"
    )


def test_import_without_any_built_kernels_is_an_import_error(tmp_path):
    package = tmp_path / "lenet_fast"
    package.mkdir()
    source = Path(lenet_fast.__file__).resolve().parent
    for path in source.iterdir():
        if path.suffix == ".py" or path.name.startswith("_cpu_features"):
            shutil.copy(path, package / path.name)
    completed = subprocess.run(
        [sys.executable, "-c", "import lenet_fast"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].startswith("ImportError: ")


def test_importing_the_unbuilt_source_folder_says_how_to_build(tmp_path):
    package = tmp_path / "lenet_fast"
    package.mkdir()
    for path in Path(lenet_fast.__file__).resolve().parent.glob("*.py"):
        shutil.copy(path, package / path.name)
    # -S: no site-packages, so no installed copy that this folder would shadow (that case has
    # its own message: tests/test_cli.py).
    completed = subprocess.run(
        [sys.executable, "-S", "-c", "import lenet_fast"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: lenet_fast has no compiled kernels here")
    assert "pip install ." in last_line


# ---------------------------------------------------------------------------------------------
# qemu-user: the kernels on CPUs without AVX-512 (Haswell) and without AVX (Nehalem)
# ---------------------------------------------------------------------------------------------

QEMU = shutil.which("qemu-x86_64")

QEMU_SCRIPT = """
import json, sys
import numpy as np
import lenet_fast
from lenet_fast import LeNet

model = LeNet.from_npz(sys.argv[1])
x = np.load(sys.argv[2])
print(json.dumps({
    "isa": lenet_fast.show_config(False)["isa"],
    "usable": list(lenet_fast.show_config(False)["usable_isas"]),
    "batch_1": model.forward(x[:1]).tolist(),
    "batch_20": model.forward(x).tolist(),
    "labels": model.predict(x).tolist(),
}))
"""


@pytest.fixture(scope="module")
def qemu():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"qemu-x86_64 emulates x86-64 CPUs; this machine is {platform.machine()}")
    if QEMU is None:
        pytest.skip("qemu-x86_64 is not on PATH (Debian: apt-get install qemu-user)")
    completed = subprocess.run(
        [QEMU, "-cpu", "Nehalem", sys.executable, "-c", "import numpy; print('ok')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.strip() == "ok", (
        f"qemu-x86_64 cannot run {sys.executable}: {completed.returncode} {completed.stderr[-2000:]}"
    )
    return QEMU


@pytest.fixture(scope="module")
def qemu_case(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qemu")
    model = LeNet(
        random_weights(8, 1, (7, 13, 50, 33, 5)),
        conv_activation="tanh",
        output_activation="softmax",
        pool="avg",
    )
    model.save_npz(directory / "model.npz")
    x = np.random.default_rng(9).normal(size=(20, 1, 28, 28)).astype(np.float32)
    np.save(directory / "x.npy", x)
    return directory, model, x


@pytest.mark.parametrize(("cpu", "emulated_level"), [("Haswell", "avx2"), ("Nehalem", "generic")])
def test_kernels_under_qemu_match_native(qemu, qemu_case, cpu, emulated_level):
    directory, model, x = qemu_case
    completed = run_python(
        QEMU_SCRIPT,
        str(directory / "model.npz"),
        str(directory / "x.npy"),
        prefix=(qemu, "-cpu", cpu),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert result["isa"] == emulated_level
    assert result["usable"][0] == emulated_level and "avx512" not in result["usable"]
    native = model.forward(x)
    np.testing.assert_allclose(np.array(result["batch_20"], np.float32), native, **TOLERANCE)
    np.testing.assert_allclose(np.array(result["batch_1"], np.float32), native[:1], **TOLERANCE)
    np.testing.assert_allclose(
        np.array(result["batch_20"], np.float32),
        reference.forward(x, model.weights, **model.architecture),
        **TOLERANCE,
    )
    assert result["labels"] == model.predict(x).tolist()


@pytest.mark.parametrize(
    ("cpu", "forced", "supported"),
    [("Haswell", "avx512", "avx2, generic"), ("Nehalem", "avx2", "generic")],
)
def test_forcing_a_level_the_emulated_cpu_lacks_is_an_import_error(qemu, cpu, forced, supported):
    completed = run_python(REPORT_IMPORT, isa=forced, prefix=(qemu, "-cpu", cpu))
    assert completed.returncode == 0, completed.stderr[-3000:]  # not SIGILL (-4)
    assert completed.stdout.strip() == (
        f"ImportError: LENET_FAST_ISA={forced} but this CPU does not support {forced} "
        f"(it supports: {supported})"
    )
