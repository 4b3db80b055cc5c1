"""The conventions every notebook follows (see README, 'Writing a notebook')."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SETUP_CELL = (ROOT / "notebooks" / "_setup_cell.py").read_text(encoding="utf-8")


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell):
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_there_is_a_notebook_00():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_shared_setup_cell(path):
    code = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code"
    assert _source(code[0]).strip() == SETUP_CELL.strip(), (
        "the first code cell must be notebooks/_setup_cell.py verbatim")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_title_build_list_summary_and_exercises(path):
    cells = _load(path)["cells"]
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    number = path.name[:2]
    assert re.search(rf"^# {number} — ", markdown, re.M), f"title must start with '# {number} — '"
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    assert headings[0].strip().lower() == "what you will build", headings[:3]
    assert any(h.strip().lower() == "summary" for h in headings)
    assert headings[-1].strip().lower().startswith("exercises")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed_in_order_without_errors(path):
    code = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code if c.get("execution_count") is not None]
    assert len(counts) == len(code), "every code cell must be executed (run `make execute`)"
    assert counts == sorted(counts) and counts[0] == 1, "re-run the notebook top to bottom"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"stored error output: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_checks_some_outputs_under_nbval(path):
    sources = [_source(c) for c in _load(path)["cells"] if c["cell_type"] == "code"]
    # nbval reads the marker only on a line of its own
    assert any(line.strip() == "# NBVAL_CHECK_OUTPUT" for s in sources for line in s.splitlines()), (
        "mark the 'check against the real thing' cell with # NBVAL_CHECK_OUTPUT")


def test_repository_url_lives_in_the_setup_cell_and_readme_uses_the_same():
    url = re.search(r'COURSE_REPO = "([^"]+)"', SETUP_CELL).group(1)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    colab = re.findall(r"colab\.research\.google\.com/github/([^)\s]+?)/blob/", readme)
    assert colab, "README links each notebook to Colab"
    assert all(url.endswith(c) for c in colab), (url, set(colab))


def test_sync_setup_cell_rewrites_only_the_first_code_cell(tmp_path):
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from sync_setup_cell import sync

    path = tmp_path / NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], path)
    nb = _load(path)
    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    nb["cells"][code[0]]["source"] = "import utils  # an old first cell\n"
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    before = _load(path)
    assert sync([path]) == [path]
    after = _load(path)
    assert _source(after["cells"][code[0]]).strip() == SETUP_CELL.strip()
    assert after["cells"][code[0]]["outputs"] == before["cells"][code[0]]["outputs"]
    assert [c for i, c in enumerate(after["cells"]) if i != code[0]] == \
        [c for i, c in enumerate(before["cells"]) if i != code[0]]
    assert sync([path]) == []  # already in sync: the file is not rewritten


def test_setup_cell_pins_a_ref_and_imports_the_runtime_before_torch():
    assert re.search(r'^COURSE_REF = "[^"]+"', SETUP_CELL, re.M)
    assert "import torch" not in SETUP_CELL  # utils.runtime must load first (OpenMP settings)
    assert "import utils.runtime" in SETUP_CELL
    assert "enable_custom_widget_manager()" in SETUP_CELL


# "<something> equal / identical / same / match ...: False" in a stored output: a check against the real thing that failed
# when the notebook was executed (notebook 05 once committed "logits equal (max |difference| < 1e-5): False")
FAILED_EQUALITY = re.compile(r"\b(equal|equals|identical|same|match|matches)\b[^\n:]*:\s*False\b", re.I)


def _printed(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        text = out.get("text") if out.get("output_type") == "stream" else out.get("data", {}).get("text/plain")
        parts.append(text if isinstance(text, str) else "".join(text or []))
    return "".join(parts)


def test_failed_equality_pattern_matches_what_a_failed_check_prints():
    assert FAILED_EQUALITY.search("logits equal (max |difference| < 1e-5): False")
    assert FAILED_EQUALITY.search("2,000 random strings identical: False")
    assert FAILED_EQUALITY.search("same experts chosen in every layer: False")
    assert not FAILED_EQUALITY.search("2,000 random strings identical: True")
    assert not FAILED_EQUALITY.search("causal mask: shuffling the tokens only shuffles the outputs: False")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_output_reports_a_failed_equality_check(path):
    code = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    failed = [(i, m.group(0)) for i, c in enumerate(code) for m in FAILED_EQUALITY.finditer(_printed(c))]
    assert not failed, f"code cell {failed[0][0]} printed {failed[0][1]!r} when the notebook was executed"
