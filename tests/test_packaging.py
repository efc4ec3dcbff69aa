"""Packaging promises: one version, the licence files in the package and its metadata, a complete
sdist, the build's choice of target architecture (from the compiler, not the host), its refusal
of MSVC, and no OpenMP flag (the kernels' threads are their own pthread pool).

The tests marked ``slow`` build lenet_fast again (an sdist).  The wheel (manylinux repair,
install without a compiler), the sdist install in a fresh venv and the aarch64 build under qemu
are CI steps: tools/wheel_check.sh, tools/sdist_check.sh, tools/aarch64_check.sh.
"""

import ast
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import lenet_fast

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(lenet_fast.__file__).resolve().parent
FASHION_LICENCE = "LICENSE-fashion-mnist.txt"


def load_setup_module(monkeypatch, **environment):
    """Import setup.py as a module (its ``setup()`` call only runs as ``__main__``) under
    ``environment`` (a value of None removes the variable)."""
    for name, value in environment.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("lenet_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_compiler(tmp_path, target):
    """A 'compiler' that only answers -dumpmachine, like a cross compiler for ``target``."""
    path = tmp_path / f"{target}-gcc"
    path.write_text(f'#!/bin/sh\n[ "$1" = -dumpmachine ] && echo {target} && exit 0\nexit 1\n')
    path.chmod(0o755)
    return str(path)


# ---------------------------------------------------------------------------------------------
# One version
# ---------------------------------------------------------------------------------------------


def test_the_version_is_written_once_in_the_package():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    module, _, name = project["tool"]["setuptools"]["dynamic"]["version"]["attr"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is lenet_fast.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", lenet_fast.__version__)
    assert lenet_fast.show_config(False)["version"] == lenet_fast.__version__


def test_installed_metadata_has_the_package_version_and_licences():
    try:
        distribution = importlib.metadata.distribution("lenet_fast")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("lenet_fast is imported from a source tree, not installed: no metadata")
    if (
        Path(distribution.locate_file("lenet_fast/__init__.py")).resolve()
        != PACKAGE_DIR / "__init__.py"
    ):
        pytest.skip(
            f"the installed lenet_fast ({distribution.locate_file('lenet_fast')}) is not "
            f"the one under test ({PACKAGE_DIR})"
        )
    assert distribution.version == lenet_fast.__version__
    metadata = distribution.metadata
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert sorted(metadata.get_all("License-File")) == sorted(
        ["LICENSE", f"lenet_fast/data/{FASHION_LICENCE}"]
    )


# ---------------------------------------------------------------------------------------------
# Licences
# ---------------------------------------------------------------------------------------------


def test_licence_files_exist_and_say_what_they_cover():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder" in licence
    # The Fashion-MNIST notice is inside the package, next to the data it covers.
    notice = (PACKAGE_DIR / "data" / FASHION_LICENCE).read_text()
    assert "Zalando SE" in notice and "The MIT License" in notice
    for name in (
        "fashion-mnist-sample-images-idx3-ubyte.gz",
        "fashion-mnist-sample-labels-idx1-ubyte.gz",
    ):
        assert (PACKAGE_DIR / "data" / name).exists()
        assert name in notice


# ---------------------------------------------------------------------------------------------
# Target architecture, MSVC
# ---------------------------------------------------------------------------------------------


def test_cross_compiler_target_decides_the_levels_not_the_host(monkeypatch, tmp_path):
    setup_module = load_setup_module(
        monkeypatch,
        CC=fake_compiler(tmp_path, "aarch64-linux-gnu"),
        CFLAGS=None,
        ARCHFLAGS=None,
        LENET_FAST_TARGET_ARCH=None,
    )
    assert setup_module.TARGET_ARCH == "aarch64"
    assert "aarch64-linux-gnu" in setup_module.TARGET_FOUND_BY
    assert list(setup_module.ISA_FLAGS) == ["generic"]
    assert [extension.name for extension in setup_module.declared_extensions()] == [
        "lenet_fast._cpu_features",
        "lenet_fast._kernels_generic",
    ]


def test_x86_64_compiler_gets_the_three_levels(monkeypatch, tmp_path):
    setup_module = load_setup_module(
        monkeypatch,
        CC=fake_compiler(tmp_path, "x86_64-pc-linux-gnu"),
        CFLAGS=None,
        ARCHFLAGS=None,
        LENET_FAST_TARGET_ARCH=None,
    )
    assert setup_module.TARGET_ARCH == "x86_64"
    assert list(setup_module.ISA_FLAGS) == ["generic", "avx2", "avx512"]


def test_target_override_and_fallback_to_the_host_platform(monkeypatch, tmp_path):
    assert load_setup_module(monkeypatch, LENET_FAST_TARGET_ARCH="arm64").TARGET_ARCH == "aarch64"
    # A compiler that cannot say: sysconfig's platform, which honours _PYTHON_HOST_PLATFORM.
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    setup_module = load_setup_module(
        monkeypatch,
        LENET_FAST_TARGET_ARCH=None,
        CC=str(broken),
        CFLAGS=None,
        ARCHFLAGS=None,
        _PYTHON_HOST_PLATFORM="linux-aarch64",
    )
    assert (setup_module.TARGET_ARCH, setup_module.TARGET_FOUND_BY) == (
        "aarch64",
        "sysconfig platform linux-aarch64",
    )
    universal = load_setup_module(monkeypatch, ARCHFLAGS="-arch arm64 -arch x86_64")
    assert list(universal.ISA_FLAGS) == ["generic"]


def test_msvc_stops_the_build_before_compiling_with_what_is_missing(monkeypatch):
    setuptools = pytest.importorskip("setuptools")
    setup_module = load_setup_module(monkeypatch)
    command = setup_module.BuildKernels(
        setuptools.Distribution({"ext_modules": setup_module.declared_extensions()})
    )
    command.compiler = SimpleNamespace(compiler_type="msvc")
    command.extensions = setup_module.declared_extensions()
    with pytest.raises(SystemExit, match="MSVC") as raised:
        command.build_extensions()
    message = str(raised.value)
    assert "MinGW-w64" in message and "vector extensions" in message
    assert all(
        source.endswith(".pyx") for extension in command.extensions for source in extension.sources
    ), "nothing may be cythonized before the refusal"


# ---------------------------------------------------------------------------------------------
# The sdist
# ---------------------------------------------------------------------------------------------


def tracked_files():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the sdist is compared with the tracked files")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip(f"git ls-files failed: {listed.stderr}")
    return set(listed.stdout.split())


@pytest.mark.slow
def test_sdist_holds_every_tracked_file_and_no_build_output(tmp_path):
    pytest.importorskip("build")
    tracked = tracked_files()
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--sdist",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    output = built.stdout + built.stderr
    for warning in ("Deprecat", "is absent from the `packages`", "SetuptoolsWarning"):
        assert warning not in output, output
    (archive,) = tmp_path.glob("lenet_fast-*.tar.gz")
    assert archive.name == f"lenet_fast-{lenet_fast.__version__}.tar.gz"
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        pkg_info = tar.extractfile(f"lenet_fast-{lenet_fast.__version__}/PKG-INFO").read().decode()
    missing = sorted(tracked - names)
    assert not missing, f"tracked files missing from the sdist: {missing}"
    assert "tests/conftest.py" in names and any(n.startswith("tests/fuzz/corpus/") for n in names)
    unwanted = sorted(
        name
        for name in names
        if name.endswith((".so", ".pyc"))
        or name in ("src/kernels.pxi", "lenet_fast/_build_info.json")
        or (name.startswith("src/") and name.endswith(".c"))
    )
    assert not unwanted, f"build outputs in the sdist: {unwanted}"
    assert f"\nVersion: {lenet_fast.__version__}\n" in pkg_info
    assert "\nLicense-Expression: BSD-3-Clause\n" in pkg_info
    assert "\nLicense-File: LICENSE\n" in pkg_info
    assert f"\nLicense-File: lenet_fast/data/{FASHION_LICENCE}\n" in pkg_info


# ---------------------------------------------------------------------------------------------
# setup.py: flags, templates
# ---------------------------------------------------------------------------------------------


def test_checked_build_adds_its_flags_to_the_release_flags(monkeypatch):
    setup = load_setup_module(monkeypatch)
    release, release_link = setup.common_flags(debug=False, sanitize="")
    assert {"-O3", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11"} <= set(release)
    assert "-ffast-math" not in release and release_link == []
    checked, checked_link = setup.common_flags(debug=True, sanitize="address")
    assert checked[: len(release)] == release  # kept, in front: the later -O1 wins
    assert checked.index("-O1") > checked.index("-O3")
    assert {"-g", "-UNDEBUG", "-fsanitize=address"} <= set(checked)
    assert checked_link == ["-fsanitize=address"]
    # The kernels' threads are their own pthread pool: no OpenMP flag, and no OpenMP runtime to
    # link or vendor.
    for extension in setup.declared_extensions():
        flags = [
            *release,
            *checked,
            *checked_link,
            *extension.extra_compile_args,
            *extension.extra_link_args,
        ]
        assert not [flag for flag in flags if "openmp" in flag or flag == "-lomp"], extension.name


def test_templates_render_at_build_time_only_and_every_tp_file(monkeypatch, tmp_path):
    pytest.importorskip("Cython")
    import Cython.Tempita

    def fail(*args, **kwargs):
        raise AssertionError("a template was rendered when setup.py was imported")

    monkeypatch.setattr(Cython.Tempita, "Template", fail)
    setup = load_setup_module(monkeypatch)  # importing renders nothing
    monkeypatch.undo()
    (tmp_path / "a.pxi.tp").write_text("{{for n in (1, 2)}}x{{n}} = {{n}}\n{{endfor}}")
    (tmp_path / "b.pxd.tp").write_text("{{py: w = 8}}cdef int W = {{w}}\n")
    shutil.copy(ROOT / "src" / "block_sizes.py", tmp_path)  # the table every template sees
    monkeypatch.setattr(setup, "SRC", tmp_path)
    setup.generate_from_templates()
    assert (tmp_path / "a.pxi").read_text().endswith("x1 = 1\nx2 = 2\n")
    assert (tmp_path / "b.pxd").read_text().endswith("cdef int W = 8\n")
    assert "do not edit" in (tmp_path / "a.pxi").read_text().splitlines()[0]


def test_setup_docstring_names_every_environment_variable_it_reads(monkeypatch):
    text = (ROOT / "setup.py").read_text()
    read = set(re.findall(r"environ(?:\.get)?\(\s*\"(LENET_FAST_\w+)\"", text)) | set(
        re.findall(r"environ\[\"(LENET_FAST_\w+)\"\]", text)
    )
    assert read, "setup.py reads no LENET_FAST_ variable?"
    documented = load_setup_module(monkeypatch).__doc__
    assert {name for name in read if f"``{name}" not in documented} == set()


# ---------------------------------------------------------------------------------------------
# The typed, documented public API
# ---------------------------------------------------------------------------------------------


def test_the_package_is_typed():
    assert (PACKAGE_DIR / "py.typed").is_file()
    project = tomllib_or_skip().loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["lenet_fast"]


def tomllib_or_skip():
    return pytest.importorskip("tomllib")


def test_public_docstrings_pass_numpydoc():
    """Every module of the package (CI runs this test): the public names of the private modules
    (``LeNet`` in ``_model``, ``canonicalize`` in ``_weights``, ...) are the public API too."""
    pytest.importorskip("numpydoc")
    # The repository's sources (numpydoc reads its settings from the pyproject.toml above the
    # files it lints, which an installed copy in site-packages does not have).
    modules = sorted(str(path) for path in (ROOT / "lenet_fast").glob("*.py"))
    assert len(modules) > 15
    result = subprocess.run(
        [sys.executable, "-m", "numpydoc", "lint", *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def package_import_graph():
    """Which of the package's modules each module imports, at any level (function-level imports
    included): ``from . import x``, ``from .x import y``, ``from lenet_fast.x import y``,
    ``import lenet_fast.x``; ``from . import name`` of a non-module and ``import lenet_fast``
    count as importing ``__init__``.  The compiled extensions (``_cpu_features``, the kernels)
    are modules that import none of the package's."""
    extensions = {
        path.name.split(".")[0] for path in PACKAGE_DIR.iterdir() if path.suffix in (".so", ".pyd")
    }
    extensions |= {path.stem for path in (ROOT / "src").glob("*.pyx")}
    modules = {path.stem for path in PACKAGE_DIR.glob("*.py")} | extensions
    graph = {}
    for path in PACKAGE_DIR.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (
                node.level == 1
                or (node.level == 0 and (node.module or "").split(".")[0] == "lenet_fast")
            ):
                parts = (node.module or "").split(".")[0 if node.level else 1 :]
                if parts and parts[0]:
                    imported.add(parts[0])
                else:
                    imported |= {
                        alias.name if alias.name in modules else "__init__" for alias in node.names
                    }
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "lenet_fast":
                        imported.add(parts[1] if len(parts) > 1 else "__init__")
        graph[path.stem] = imported & modules - {path.stem}
    return graph | {extension: set() for extension in extensions}


def import_cycle(graph):
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return stack[stack.index(imported) :] + [imported]
            if imported not in state:
                found = visit(imported, stack + [imported])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_import_cycle_finder_finds_a_cycle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = package_import_graph()
    # The graph is read, not assumed: the model class composes the readers, which import it not.
    assert {"_torch", "keras", "onnx", "_weights", "_architecture"} <= graph["_model"]
    assert "_model" in graph["cli"] and "_model" in graph["__init__"]
    cycle = import_cycle({module: imported - {"__init__"} for module, imported in graph.items()})
    assert cycle is None, " -> ".join(cycle)
    # No module but __main__ imports the package itself (its __init__ imports the modules).
    assert {module for module, imported in graph.items() if "__init__" in imported} <= {"__main__"}


def test_the_package_docstring_names_every_module():
    modules = {
        path.stem.split(".")[0]
        for path in PACKAGE_DIR.iterdir()
        if path.suffix in (".py", ".so", ".pyd") and path.stem != "__init__"
    }
    modules = {name for name in modules if not name.startswith("_kernels_")} | {"_kernels_"}
    missing = {name for name in modules if name not in lenet_fast.__doc__}
    assert missing == set()


# ---------------------------------------------------------------------------------------------
# The README
# ---------------------------------------------------------------------------------------------

README = (ROOT / "README.md").read_text()
RUNNABLE = re.compile(
    r"<!-- README test: this block runs as written.*?-->\n```python\n(.*?)```", re.S
)


def test_readme_has_a_runnable_example():
    assert len(RUNNABLE.findall(README)) >= 1


@pytest.mark.parametrize("number", range(len(RUNNABLE.findall(README))))
def test_readme_example_runs_as_written(number, tmp_path):
    code = RUNNABLE.findall(README)[number]
    # The example runs in an empty folder, against the same lenet_fast the tests import.
    package_parent = str(Path(lenet_fast.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": package_parent}
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    assert "accuracy 0.9" in completed.stdout


def test_plain_pytest_collects_every_test_module():
    """``pytest`` with no arguments (the README's test command) collects every test module of
    ``tests/``; ``bench/``'s tests import the benchmark from the source tree, so CI runs them
    against an in-place build (the last step of ``.ci/run``), and ``pytest bench/`` runs the
    pytest-benchmark measurements."""
    project = tomllib_or_skip().loads((ROOT / "pyproject.toml").read_text())
    testpaths = [ROOT / path for path in project["tool"]["pytest"]["ini_options"]["testpaths"]]
    collected = {
        path
        for root in testpaths
        for path in ([root] if root.is_file() else root.rglob("test_*.py"))
    }
    assert set(ROOT.glob("tests/**/test_*.py")) - collected == set()
    ci = (ROOT / ".ci" / "run").read_text()
    harness = {path.name for path in ROOT.glob("bench/test_*.py")} - {"test_bench.py"}
    assert {name for name in harness if f"bench/{name}" not in ci} == set()
