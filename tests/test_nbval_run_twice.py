"""The plugin behind `make notebooks` (tests/nbval_run_twice.py) runs each notebook a second time in the same
kernel, and a cell that only works once fails there, under its own name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, cells: list[tuple[str, str | list[str]]]) -> Path:
    """A notebook whose code cells hold `source` and, as if run once, printed `stdout` (a list: in several
    stream outputs, as a kernel stores a cell whose printing paused between flushes)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for n, (source, stdout) in enumerate(cells, start=1):
        cell = nbformat.v4.new_code_cell(source, execution_count=n)
        parts = [stdout] if isinstance(stdout, str) else stdout
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=part) for part in parts]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.nbval_run_twice", "--nbval-lax",
                           "-p", "no:cacheprovider", "-rA", "-q", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twice")
    once = _notebook(tmp / "once.ipynb", [
        ("import os\nos.makedirs('out')  # fails when the directory is already there\nprint('made')", "made\n"),
        ("# NBVAL_CHECK_OUTPUT\ntry:\n    n += 1\nexcept NameError:\n    n = 0\nprint(n)", "0\n"),
        ("# NBVAL_CHECK_OUTPUT\nprint('ok')", "ok\n"),
    ])
    twice = _notebook(tmp / "twice.ipynb", [
        ("# NBVAL_CHECK_OUTPUT\nimport os\nos.makedirs('out2', exist_ok=True)\nn = 0\nprint(n)", "0\n"),
        # stored as two stream outputs; nbval merges them into the first in place, which must not leak into pass 2
        ("# NBVAL_CHECK_OUTPUT\nprint('a')\nprint('b')", ["a\n", "b\n"]),
    ])
    return _nbval(once), _nbval(twice)


def test_second_pass_runs_every_cell_again_in_the_same_kernel(runs):
    _, twice = runs
    assert twice.returncode == 0, twice.stdout
    assert "PASSED" in twice.stdout and "twice.ipynb::Cell 1 (run all again)" in twice.stdout
    assert "4 passed" in twice.stdout


def test_a_cell_that_works_only_once_fails_in_the_second_pass_under_its_name(runs):
    once, _ = runs
    assert once.returncode == 1, once.stdout
    lines = once.stdout.splitlines()
    failed = sorted(l.split("::", 1)[1].split(" - ")[0] for l in lines if l.startswith("FAILED"))
    passed = sorted(l.split("::", 1)[1] for l in lines if l.startswith("PASSED"))
    # first pass: all three pass; second pass: the mkdir raises and the counter prints 1, not the stored 0
    assert failed == ["Cell 0 (run all again)", "Cell 1 (run all again)"], once.stdout
    assert passed == ["Cell 0", "Cell 1", "Cell 2", "Cell 2 (run all again)"], once.stdout
