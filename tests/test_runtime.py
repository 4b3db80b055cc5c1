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


@pytest.mark.parametrize("bad, error, message", [
    (-1, ValueError, "0 <= seed < 2\\*\\*64.*got -1"),
    (2**64, ValueError, "got 18446744073709551616"),
    (2**70, ValueError, "got 1180591620717411303424"),
    (1.5, TypeError, "got 1.5 of type float"),
    ("7", TypeError, "got '7' of type str"),
    (True, TypeError, "got True of type bool"),
    (None, TypeError, "got None of type NoneType"),
    (np.float64(3.0), TypeError, "of type float64"),
], ids=["negative", "2**64", "2**70", "float", "str", "bool", "None", "numpy-float"])
def test_set_seed_rejects_bad_seeds_before_seeding_anything(bad, error, message):
    torch.manual_seed(99)
    expected = torch.rand(1)
    torch.manual_seed(99)
    with pytest.raises(error, match=message):
        set_seed(bad)
    assert torch.equal(torch.rand(1), expected), "a rejected seed must leave the generators untouched"


@pytest.mark.parametrize("seed", [0, 2**64 - 1, np.int64(7), np.uint64(2**63)], ids=["0", "2**64-1", "np.int64",
                                                                                    "np.uint64"])
def test_set_seed_accepts_every_seed_torch_accepts(seed):
    set_seed(seed)
    a = torch.rand(2)
    set_seed(int(seed))
    assert torch.equal(torch.rand(2), a)


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


class _FakeLibc:
    """Stands in for glibc: records every mallopt(param, value) call; returns ``result``."""

    def __init__(self, result=1):
        self.calls, self.result = [], result

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def fresh_allocator_state(monkeypatch):
    """keep_freed_memory as in a new process on glibc Linux, with a fake libc that records calls."""
    import ctypes

    import utils.runtime as runtime

    def install(result=1):
        libc = _FakeLibc(result)
        monkeypatch.setattr(runtime, "_allocator_tuned", None)
        monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
        monkeypatch.setattr(platform, "system", lambda: "Linux")
        monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("glibc", "2.36"))
        return libc

    return install


def test_keep_freed_memory_applies_the_settings_once_and_later_calls_change_nothing(fresh_allocator_state):
    from utils.runtime import keep_freed_memory

    libc = fresh_allocator_state()
    assert keep_freed_memory() is True
    first = list(libc.calls)
    assert first == [(-3, 32 * 1024 * 1024), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, then M_TRIM_THRESHOLD
    assert keep_freed_memory() is True
    assert keep_freed_memory(trim_threshold=5) is True
    assert libc.calls == first, "a second call must not touch the allocator again"


def test_keep_freed_memory_reports_false_where_glibc_refuses(fresh_allocator_state):
    from utils.runtime import keep_freed_memory

    libc = fresh_allocator_state(result=0)
    assert keep_freed_memory() is False
    assert keep_freed_memory() is False
    assert len(libc.calls) == 1  # stops at the first refusal, and does not retry


def test_keep_freed_memory_does_nothing_off_glibc(fresh_allocator_state, monkeypatch):
    from utils.runtime import keep_freed_memory

    libc = fresh_allocator_state()
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_freed_memory() is False
    assert libc.calls == []


@pytest.mark.parametrize("bad", [-1, 2.5, "1G", True])
def test_keep_freed_memory_rejects_a_bad_trim_threshold(bad):
    from utils.runtime import keep_freed_memory

    with pytest.raises(ValueError, match="trim_threshold"):
        keep_freed_memory(bad)


_POLICY_SCRIPT = """
import os, sys
if sys.argv[1] == "torch-first":
    import torch
import utils.runtime as r
print(os.environ.get("OMP_WAIT_POLICY"), "|", r.openmp_wait_policy(), "|", os.environ.get("KINETO_LOG_LEVEL"))
"""


@pytest.mark.parametrize("order, user_value, expected", [
    ("runtime-first", None, "PASSIVE | PASSIVE | 6"),
    ("runtime-first", "ACTIVE", "ACTIVE | ACTIVE | 6"),  # a value the user set is kept
    ("torch-first", None, "PASSIVE | OpenMP default (torch was imported before utils.runtime) | 6"),
])
def test_importing_runtime_makes_openmp_threads_sleep_unless_the_user_chose(order, user_value, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KINETO_LOG_LEVEL")}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    out = subprocess.run([sys.executable, "-c", _POLICY_SCRIPT, order], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT, env=env).stdout.strip()
    assert out == expected


def test_environment_report_says_how_openmp_threads_wait():
    assert "OpenMP wait policy" in environment_report()


def test_runtime_quiets_the_library_loggers_that_print_notices_into_notebooks():
    import logging

    import utils.runtime  # noqa: F401  (sets the levels at import)

    for name in ("torchao", "torch.utils._pytree", "bitsandbytes", "kernels"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.ERROR, name
    # a warning of the offline Hub check (kernels._internals.hf_hub) no longer passes; an error still does
    child = logging.getLogger("kernels._internals.hf_hub")
    assert not child.isEnabledFor(logging.WARNING) and child.isEnabledFor(logging.ERROR)
