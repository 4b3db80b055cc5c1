import platform
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from utils.runtime import REPO_ROOT, environment_report, get_device, is_fast, pick, set_seed


def test_pick_returns_fast_value_in_fast_mode(monkeypatch):
    monkeypatch.setenv("LLM_COURSE_FAST", "1")
    assert is_fast() is True
    assert pick(default=2000, fast=50) == 50


def test_pick_returns_default_value_when_fast_mode_is_off(monkeypatch):
    for off in ("0", "", "false"):
        monkeypatch.setenv("LLM_COURSE_FAST", off)
        assert is_fast() is False
        assert pick(default=2000, fast=50) == 2000
    monkeypatch.delenv("LLM_COURSE_FAST")
    assert pick(default="big", fast="small") == "big"


def test_unrecognised_fast_mode_value_is_an_error(monkeypatch):
    monkeypatch.setenv("LLM_COURSE_FAST", "maybe")
    with pytest.raises(ValueError, match="LLM_COURSE_FAST"):
        is_fast()


def test_set_seed_makes_python_numpy_and_torch_repeatable():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    set_seed(1234)
    first = draw()
    set_seed(1234)
    assert draw() == first
    set_seed(1235)
    assert draw() != first


@pytest.mark.parametrize("bad", [-1, 1.5, "7", True])
def test_set_seed_rejects_non_integer_or_negative_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        set_seed(bad)


def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("LLM_COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.runtime._mps_available", lambda: False)
    assert get_device() == torch.device("cpu")
    monkeypatch.setattr("utils.runtime._mps_available", lambda: True)
    assert get_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")


def test_get_device_override_and_environment_variable(monkeypatch):
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_rejects_unknown_or_unavailable_devices(monkeypatch):
    with pytest.raises(ValueError, match="unknown device"):
        get_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="cuda"):
        get_device("cuda")


def test_environment_report_names_versions_and_mode():
    report = environment_report()
    assert report["torch"] == torch.__version__
    assert report["fast mode"] in ("True", "False")


_ALLOCATOR_SCRIPT = """
import ctypes, resource, sys, torch
from utils.runtime import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
x = torch.ones(2048, 2048)  # 16 MB, the size of the course recipe's logits
mmapped = libc.mallinfo2().hblks - before  # blocks served by mmap (and later given back with munmap)
del x
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    xs = [torch.ones(2048, 2048) for _ in range(4)]; del xs
per_round = []
for _ in range(10):  # what a training step does with its largest activations
    f0 = faults()
    xs = [torch.ones(2048, 2048) for _ in range(4)]; del xs
    per_round.append(faults() - f0)
print(tuned, mmapped, sorted(per_round)[len(per_round) // 2])  # the median round
"""


def _glibc_with_mallinfo2() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")


@pytest.mark.skipif(not _glibc_with_mallinfo2(),
                    reason="keep_freed_memory tunes glibc's allocator (mallinfo2 needs glibc >= 2.33)")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_without_page_faults():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", _ALLOCATOR_SCRIPT, mode], capture_output=True, text=True,
                             check=True, cwd=REPO_ROOT).stdout.split()
        return out[0], int(out[1]), float(out[2])

    _, default_mmapped, _ = run("default")
    applied, tuned_mmapped, tuned_faults = run("tuned")
    assert default_mmapped == 1  # glibc's default: a 16 MB block is mmapped, and munmapped when freed
    assert applied == "True"
    assert tuned_mmapped == 0  # served from the heap and kept there for the next step
    # the median round faults almost nothing, vs ~4,096 per 16 MB block when blocks are handed back and
    # faulted in again (a single round may still fault once, when the heap first grows or moves)
    assert tuned_faults < 100


def test_keep_freed_memory_is_idempotent():
    from utils.runtime import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()


@pytest.mark.parametrize("bad", [-1, 2.5, "1G", True])
def test_keep_freed_memory_rejects_a_bad_trim_threshold(bad):
    from utils.runtime import keep_freed_memory

    with pytest.raises(ValueError, match="trim_threshold"):
        keep_freed_memory(bad)
