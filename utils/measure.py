"""Measuring time and memory: one set of helpers for the notebooks and the benchmarks.

- :func:`time_fn` — run a function a few times (after warm-up calls) and return a :class:`Timing`
  (seconds per call of every repeat; ``.median`` and ``.best``). On a busy machine ``.best`` is the
  run least disturbed by other processes; ``.median`` is the typical one.
- :func:`peak_tensor_memory` — peak bytes of the tensors a call allocates, op by op, on any device
  (CPU included, where ``tracemalloc`` cannot see torch's allocations).
- :func:`saved_tensor_bytes` — bytes autograd keeps for the backward pass (the activations) during
  a call.
- :func:`torch_threads` — a context manager running a block with a given number of CPU threads.
"""

from __future__ import annotations

import statistics
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from utils.checks import check_int

__all__ = ["Timing", "time_fn", "peak_tensor_memory", "saved_tensor_bytes", "torch_threads"]


def _check_callable(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable (a function to measure), got {type(fn).__name__}")


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Seconds per call, one entry per repeat (each repeat averages ``number`` back-to-back calls)."""

    times: tuple[float, ...]
    number: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def __float__(self) -> float:
        return self.median


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_fn(fn: Callable, *args, repeats: int = 5, warmup: int = 1, number: int = 1, **kwargs) -> Timing:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeats`` timed repeats of
    ``number`` calls each. Returns a :class:`Timing` of seconds per call (``.median``, ``.best``).

    Use ``number > 1`` for calls of a few microseconds, where the clock's resolution and the loop
    matter. CUDA work is synchronised before the clock is read, so the GPU's time is included.
    """
    _check_callable(fn)
    repeats, warmup, number = check_int("repeats", repeats, 1), check_int("warmup", warmup, 0), check_int("number", number, 1)
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        _synchronize()
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args, **kwargs)
        _synchronize()
        times.append((time.perf_counter() - t0) / number)
    return Timing(tuple(times), number)


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` intra-op CPU threads (tiny models are often faster on one), then restore."""
    n = check_int("n", n, 1)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------

class _LiveTensorBytes:
    """Counts the bytes of tensor storages allocated during a call that are still alive, op by op.

    Implemented as a ``TorchDispatchMode``: every ATen op's outputs are seen; a storage not seen
    before (and not one of the inputs') is counted until its last tensor is freed (weakref.finalize).
    """

    def __init__(self, external: set[int]):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(t, torch.Tensor):
                        tracker._track(t)
                return out

        self.mode = _Mode()
        self.external = external
        self.live: dict[int, list[int]] = {}  # storage pointer -> [nbytes, tensors alive]
        self.current = self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if key == 0 or nbytes == 0 or key in self.external:
            return
        if key in self.live:
            self.live[key][1] += 1
        else:
            self.live[key] = [nbytes, 1]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


def peak_tensor_memory(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn(*args, **kwargs)`` and return (result, peak bytes of tensors it allocated).

    Works on any device, including CPU (where ``tracemalloc`` cannot see torch's allocations):
    every op's output storage is counted while it is alive; the inputs are not counted; the
    result is counted (it is alive at the end). Buffers that a fused kernel allocates internally
    and frees before returning (e.g. the per-thread tiles of torch's CPU flash kernel) are not
    visible, so for such kernels this is a lower bound. On CUDA, ``torch.cuda.max_memory_allocated``
    measures the allocator directly.

    Autograd follows the caller's mode: wrap the call in ``torch.no_grad()`` for inference, or pass a
    function that runs forward *and* backward to measure a training step (e.g. with and without
    gradient checkpointing).
    """
    _check_callable(fn)
    external = {a.untyped_storage().data_ptr() for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
    tracker = _LiveTensorBytes(external)
    with tracker.mode:
        result = fn(*args, **kwargs)
    return result, tracker.peak


def saved_tensor_bytes(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn(*args, **kwargs)`` and return (result, bytes of the tensors autograd saved for the
    backward pass while it ran): the activation memory a training step keeps between forward and
    backward (counted per saved tensor, so a tensor saved twice counts twice)."""
    _check_callable(fn)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(*args, **kwargs)
    return result, total
