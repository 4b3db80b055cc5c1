"""pytest plugin: nbval runs every notebook twice in one kernel, as a learner does who presses "Run all" again
without restarting.

    python -m pytest -p tests.nbval_run_twice --nbval-lax notebooks/     # what `make notebooks` runs

After a notebook's cells, nbval runs them all again in the same kernel, as items named
"Cell N (run all again)". They check what the first pass checks: no cell raises, and each
`# NBVAL_CHECK_OUTPUT` cell prints what the committed notebook holds. So a cell that only works once (state left
from the first pass: a re-wrapped model, a file that now exists, a seed consumed) fails under its own name.
One kernel serves both passes because nbval starts a notebook's kernel once, for all the items of that file.
"""

from __future__ import annotations

import copy

import pytest

SECOND = " (run all again)"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    from nbval.plugin import IPyNbCell, IPyNbFile

    out: list[pytest.Item] = []
    i = 0
    while i < len(items):
        parent = items[i].parent
        if not isinstance(parent, IPyNbFile):
            out.append(items[i])
            i += 1
            continue
        j = i
        while j < len(items) and items[j].parent is parent:  # this notebook's cells, in order
            j += 1
        first = items[i:j]
        # each item of the second pass gets its own copy of the stored cell: nbval's coalesce_streams merges a
        # cell's stdout outputs into the first one in place, so the first pass leaves the stored text changed
        again = [IPyNbCell.from_parent(parent, name=cell.name + SECOND, cell_num=cell.cell_num,
                                       cell=copy.deepcopy(cell.cell), options=cell.options) for cell in first]
        out.extend(first + again)
        i = j
    items[:] = out
