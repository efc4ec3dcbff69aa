"""The README's promises: its marked usage example runs as written, and its two commands are the
ones CI runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lenet_fast

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RUNNABLE = re.compile(r"<!-- README test: this block runs as written.*?-->\n```python\n(.*?)```", re.S)


def test_readme_has_a_runnable_example():
    assert len(RUNNABLE.findall(README)) >= 1


@pytest.mark.parametrize("number", range(len(RUNNABLE.findall(README))))
def test_readme_example_runs_as_written(number, tmp_path):
    code = RUNNABLE.findall(README)[number]
    # The example runs in an empty folder, against the same lenet_fast the tests import.
    package_parent = str(Path(lenet_fast.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": package_parent}
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr
    assert "accuracy 0.9" in completed.stdout


def test_ci_runs_the_readme_test_command():
    test_command = 'pip install ".[test]" && pytest'
    assert f"```bash\n{test_command}\n```" in README
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
