"""utils/measure.py: timings count what they say, memory counters see what they claim."""

import time

import pytest
import torch

from utils.measure import Timing, peak_tensor_memory, saved_tensor_bytes, time_fn, torch_threads


def test_time_fn_runs_warmup_then_repeats_of_number_calls_and_reports_seconds_per_call():
    calls = []

    def fn(x, y=0):
        calls.append((x, y))
        time.sleep(0.002)

    t = time_fn(fn, 1, y=2, repeats=3, warmup=2, number=4)
    assert len(calls) == 2 + 3 * 4 and set(calls) == {(1, 2)}
    assert isinstance(t, Timing) and len(t.times) == 3 and t.number == 4
    assert all(0.0015 < s < 0.5 for s in t.times)  # per call, not per repeat of 4 calls
    assert t.best == min(t.times) and t.best <= t.median <= max(t.times) and float(t) == t.median


def test_timing_median_and_best_of_known_times():
    t = Timing((3.0, 1.0, 2.0, 10.0))
    assert t.median == 2.5 and t.best == 1.0


def test_peak_tensor_memory_counts_intermediates_and_not_inputs():
    x = torch.zeros(1000)  # 4000 bytes, an input: not counted

    def f(x):
        a = x + 1  # 4000 bytes
        b = a * 2  # 4000 more while a is alive: the peak is 8000
        del a
        return b.sum()  # 4 bytes

    result, peak = peak_tensor_memory(f, x)
    assert result.item() == 2000.0
    assert peak == 8000


def test_saved_tensor_bytes_counts_what_autograd_keeps_for_backward():
    w = torch.randn(64, 32, requires_grad=True)
    x = torch.randn(8, 32, requires_grad=True)
    out, saved = saved_tensor_bytes(lambda: (x @ w.T).sum())
    assert saved == (8 * 32 + 64 * 32) * 4  # a matmul saves both its operands for the backward pass
    out.backward()
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: (x @ w.T).sum())[1] == 0  # nothing saved without autograd


def test_torch_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
