"""Install PyTorch for the course into a virtual environment: the right build, and only when needed.

    python tools/install_torch.py --python .venv/bin/python --spec torch==2.13.0

`make setup` runs this before installing requirements.txt, so pip never picks a torch build by itself:

- a torch that is already installed and meets the course's minimum (read from requirements.txt) is kept;
- Linux with an NVIDIA GPU (``nvidia-smi -L`` lists one): ``--spec`` from the default index (PyPI's Linux
  wheels are the CUDA build);
- Linux without one: ``--spec`` from PyTorch's CPU wheel index, as PyTorch's install page gives it
  (``pip install torch --index-url https://download.pytorch.org/whl/cpu``), about 200 MB instead of several
  GB of CUDA libraries; where that index cannot be reached, a message says so and the default index is used;
- macOS and Windows: the default index (its wheels there are the CPU build, with MPS on Apple silicon).

Standard library only: it runs before torch exists. ``--dry-run`` prints the decision and the pip command
without installing anything.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def minimum_torch(requirements: Path = ROOT / "requirements.txt") -> str:
    """The ``torch>=X`` lower bound declared in requirements.txt."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*torch\s*>=\s*([0-9][0-9.]*)", line)
        if m:
            return m.group(1)
    raise ValueError(f"{requirements} declares no 'torch>=X' line")


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); '2.6.0a0+git1234' -> (2, 6, 0). Raises ValueError on junk."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)", version)
    if not m:
        raise ValueError(f"not a version number: {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def meets(version: str, minimum: str) -> bool:
    a, b = version_tuple(version), version_tuple(minimum)
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)) >= b + (0,) * (n - len(b))


def plan(system: str, installed: str | None, minimum: str, nvidia_gpu: bool) -> tuple[str, str]:
    """Decide what to do: ("keep" | "cpu-index" | "default", a sentence saying why)."""
    if installed is not None and meets(installed, minimum):
        return "keep", f"torch {installed} is already installed and meets the course's minimum {minimum}: kept"
    why = (f"torch {installed} is older than the course's minimum {minimum}" if installed
           else "torch is not installed")
    if system == "Linux" and nvidia_gpu:
        return "default", f"{why}; nvidia-smi found a GPU: installing the CUDA build from the default index"
    if system == "Linux":
        return "cpu-index", f"{why}; no NVIDIA GPU: installing the CPU build from PyTorch's CPU index"
    return "default", f"{why}; {system}: installing from the default index (CPU build, MPS on Apple silicon)"


def installed_torch(python: str) -> str | None:
    """torch's version in the environment of ``python`` (from its metadata; None if absent)."""
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def index_reachable(url: str, timeout: float) -> str | None:
    """None when ``url``/torch/ answers; else the reason it could not be reached."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the virtual environment's python")
    parser.add_argument("--spec", default="torch==2.13.0", help="what to install (the tested release)")
    parser.add_argument("--minimum", default=None, help="keep an installed torch at least this new "
                                                        "(default: requirements.txt's torch>=X)")
    parser.add_argument("--cpu-index", default=os.environ.get("TORCH_CPU_INDEX", CPU_INDEX))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the CPU index")
    parser.add_argument("--dry-run", action="store_true", help="print the decision and command only")
    args = parser.parse_args(argv)

    minimum = args.minimum or minimum_torch()
    installed = installed_torch(args.python)
    action, why = plan(platform.system(), installed, minimum, has_nvidia_gpu())
    print(f"install_torch: {why}", flush=True)
    if action == "keep":
        return 0
    pip = [args.python, "-m", "pip", "install", "-q", "--upgrade", args.spec]
    if action == "cpu-index":
        problem = index_reachable(args.cpu_index, args.timeout)
        if problem is None:
            pip += ["--index-url", args.cpu_index]
        else:
            print(f"install_torch: PyTorch's CPU index {args.cpu_index} cannot be reached ({problem}).\n"
                  f"install_torch: falling back to the default index for {args.spec}: on Linux that is the "
                  "CUDA build (several GB; it runs on the CPU too). To get the small CPU build later: "
                  f"{args.python} -m pip install --force-reinstall {args.spec} --index-url {CPU_INDEX}",
                  flush=True)
    print("install_torch: " + " ".join(pip), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(pip).returncode


if __name__ == "__main__":
    sys.exit(main())
