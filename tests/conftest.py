"""Shared pytest setup: every test runs in fast mode unless it says otherwise."""

import os

os.environ.setdefault("LLM_COURSE_FAST", "1")

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids thread-pool overhead (and contention on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_script(relpath: str):
    """A script of the repository (``benchmarks/...``, ``tools/...``) as a module: scripts are not a package."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("benchmarks/x.py")``: that script as a module, for its tests."""
    return _load_script


@pytest.fixture(scope="module")
def bench():
    """benchmarks/pretrain_cpu.py as a module (a script, not a package), for its tests."""
    return _load_script("benchmarks/pretrain_cpu.py")
