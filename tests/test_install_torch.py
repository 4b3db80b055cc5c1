"""tools/install_torch.py: which torch build `make setup` installs, and its fallback when PyTorch's index is away."""

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import install_torch  # noqa: E402


@pytest.mark.parametrize("system, installed, gpu, action, says", [
    ("Linux", None, False, "cpu-index", "no NVIDIA GPU"),
    ("Linux", None, True, "default", "CUDA build"),
    ("Linux", "2.13.0+cpu", False, "keep", "kept"),
    ("Linux", "2.5.0", True, "keep", "kept"),
    ("Linux", "2.4.1+cu121", False, "cpu-index", "older than the course's minimum 2.5"),
    ("Linux", "2.6.0a0+git1234", False, "keep", "kept"),
    ("Darwin", None, False, "default", "Darwin"),
    ("Windows", "2.1.0", False, "default", "older than"),
])
def test_plan_keeps_a_new_enough_torch_and_picks_the_build_for_the_machine(system, installed, gpu, action, says):
    got, why = install_torch.plan(system, installed, "2.5", gpu)
    assert got == action
    assert says in why


def test_minimum_comes_from_requirements_txt():
    text = (ROOT / "requirements.txt").read_text()
    assert f"torch>={install_torch.minimum_torch()}" in text.replace(" ", "")


@pytest.mark.parametrize("bad", ["", "abc", "v2.5"])
def test_version_tuple_rejects_junk(bad):
    with pytest.raises(ValueError, match="not a version"):
        install_torch.version_tuple(bad)


def _dry_run(index: str) -> subprocess.CompletedProcess:
    # a python with no torch, so the script has to choose a build (nothing is installed: --dry-run)
    return subprocess.run([sys.executable, str(ROOT / "tools" / "install_torch.py"), "--python", sys.executable,
                           "--minimum", "999", "--cpu-index", index, "--timeout", "5", "--dry-run"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(sys.platform != "linux" or install_torch.has_nvidia_gpu(), reason="the CPU-index path is "
                    "taken on Linux without an NVIDIA GPU")
def test_unreachable_cpu_index_falls_back_to_the_default_index_with_a_message():
    out = _dry_run("http://127.0.0.1:9/whl/cpu")  # port 9 (discard): refused at once
    assert out.returncode == 0, out.stderr
    assert "cannot be reached" in out.stdout and "falling back to the default index" in out.stdout
    command = out.stdout.strip().splitlines()[-1]
    assert "pip install" in command and "--index-url" not in command


@pytest.mark.skipif(sys.platform != "linux" or install_torch.has_nvidia_gpu(), reason="the CPU-index path is "
                    "taken on Linux without an NVIDIA GPU")
def test_reachable_cpu_index_is_used():
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_port}/whl/cpu"
        out = _dry_run(index)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    assert "cannot be reached" not in out.stdout
    assert out.stdout.strip().splitlines()[-1].endswith(f"--index-url {index}")
