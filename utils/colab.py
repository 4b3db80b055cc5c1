"""Google Colab support for the notebooks' first cell: install only what the Colab runtime lacks.

Standard library only (plus ``packaging`` where present): the first cell imports this before any of
the course's requirements are installed, and before torch is imported.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

# Colab runs its own Jupyter front end: a JupyterLab install there is dead weight.
NOT_FOR_COLAB = ("jupyterlab",)
# Installed in Colab already and never replaced: reinstalling torch there downloads GBs and breaks CUDA.
KEEP_AS_IS = ("torch",)

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(path: str | Path) -> list[tuple[str, str]]:
    """``(name, specifier)`` for each requirement line of a requirements file (comments skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = _REQ.match(line)
        if not m:
            raise ValueError(f"{path}: cannot read the requirement line {line!r}")
        out.append((m.group(1), m.group(3).strip()))
    return out


def _satisfied(version: str, specifier: str) -> bool:
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # no packaging: trust any installed version
        return True
    return SpecifierSet(specifier).contains(version, prereleases=True)


def missing_requirements(path: str | Path) -> tuple[list[str], list[str]]:
    """``(to_install, problems)``: requirement strings that are absent or too old (without jupyterlab
    and torch), and a sentence for each kept package whose version misses the course's range."""
    to_install, problems = [], []
    for name, spec in parse_requirements(path):
        if _canonical(name) in NOT_FOR_COLAB:
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if _canonical(name) in KEEP_AS_IS:
            if have is None or not _satisfied(have, spec):
                problems.append(f"{name} {have or '(absent)'} does not meet the course's {name}{spec}; "
                                f"it is left as it is")
            continue
        if have is None or not _satisfied(have, spec):
            to_install.append(f"{name}{spec}")
    return to_install, problems


def install_missing_requirements(path: str | Path) -> list[str]:
    """pip-install what :func:`missing_requirements` finds, pinning the runtime's torch; return it.

    Packages upgraded in a running runtime may need a restart (Runtime -> Restart session), which a
    message then says.
    """
    to_install, problems = missing_requirements(path)
    for problem in problems:
        print("Note:", problem)
    if not to_install:
        return []
    print("Installing what this runtime lacks:", ", ".join(to_install), flush=True)
    pins = []
    for name in KEEP_AS_IS:  # a constraint, so no dependency can pull another torch
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    constraints = Path(path).with_name(".colab-constraints.txt")
    constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
    already = {n for n in to_install if _installed(n)}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints), *to_install], check=True)
    if already:
        print("Upgraded packages the runtime already had (" + ", ".join(sorted(already)) + "): if an import "
              "fails below, choose Runtime -> Restart session and run the notebook again.")
    return to_install


def _installed(requirement: str) -> bool:
    name = _REQ.match(requirement).group(1)
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
