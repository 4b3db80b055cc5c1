"""Every notebook survives "Run all" twice in one kernel (a learner re-running a notebook without a restart),
and its `# NBVAL_CHECK_OUTPUT` cells print the same thing both times."""

from __future__ import annotations

import configparser
import copy
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tests" / "nbval_sanitize.cfg")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _text(cell, rules) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    text = "".join(parts)
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_run_all_twice_in_one_kernel(path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    n = len(nb.cells)
    nb.cells = nb.cells + copy.deepcopy(nb.cells)  # "Run all", then "Run all" again, no restart
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    rules = _sanitizers()
    for i in range(n):
        first, second = nb.cells[i], nb.cells[i + n]
        if first.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in first.source:
            assert _text(first, rules) == _text(second, rules), (
                f"{path.name}: checked cell {i} prints something else when the notebook is run a second time "
                f"in the same kernel:\n{_text(first, rules)}\n---\n{_text(second, rules)}")
