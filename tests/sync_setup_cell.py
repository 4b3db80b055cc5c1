"""Copy notebooks/_setup_cell.py into the first code cell of every notebook (`make sync-setup-cell`).

Only that cell's source changes (its outputs and execution count stay), so the notebooks keep their
committed run; tests/test_notebook_conventions.py checks that every notebook agrees with the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def sync(paths: list[Path] | None = None) -> list[Path]:
    cell = (ROOT / "notebooks" / "_setup_cell.py").read_text(encoding="utf-8").strip()
    changed = []
    for path in paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = next((c for c in nb.cells if c.cell_type == "code"), None)
        if first is None:
            raise ValueError(f"{path} has no code cell")
        if first.source.strip() != cell:
            first.source = cell
            nbformat.write(nb, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for p in sync([Path(a) for a in sys.argv[1:]] or None):
        print("updated", p.relative_to(ROOT))
