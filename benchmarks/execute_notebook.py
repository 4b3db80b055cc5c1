"""Execute one notebook (as `make execute` does, but to another file) and report its errors and run time.

    python benchmarks/execute_notebook.py notebooks/04_pretraining_and_generation.ipynb /tmp/04.ipynb

Every cell runs even after an error (so one run lists every failing cell); the last lines printed are one
line per failing cell (index, exception name, message) and the wall-clock time. Used by
``benchmarks/gpu_check.sh`` to run the course on a GPU, where `make execute DEVICE=cuda` needs a checkout
set up with `make setup`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(src: str, dst: str) -> int:
    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(Path(src).resolve().parent)}})
    t0 = time.perf_counter()
    # one line per finished cell: a run stopped by a time limit still shows how far it got
    client.on_cell_executed = lambda cell, cell_index, **_: print(
        f"cell {cell_index} done at {time.perf_counter() - t0:.1f} s", flush=True)
    client.execute()
    seconds = time.perf_counter() - t0
    nbformat.write(nb, dst)
    errors = [(i, o.get("ename"), str(o.get("evalue"))[:300]) for i, c in enumerate(nb.cells)
              if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    for i, name, value in errors:
        print(f"cell {i}: {name}: {value}")
    print(f"{Path(src).name}: {len(errors)} failing cells, {seconds:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or not Path(sys.argv[1]).is_file():
        sys.exit(f"usage: python {Path(__file__).name} NOTEBOOK.ipynb OUTPUT.ipynb (the notebook must exist; "
                 f"got {sys.argv[1:]})")
    sys.exit(main(sys.argv[1], sys.argv[2]))
