"""Runtime helpers: device choice, seeding, CPU settings, and the fast mode used by CI.

Fast mode (``LLM_COURSE_FAST=1``, set by ``make test``) shrinks every experiment so the whole
course executes under nbval in minutes; default mode is what a learner runs.

Importing this module before torch (the notebooks' first cell does) makes OpenMP's waiting threads
sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``), see :data:`OPENMP_WAIT_POLICY`.
"""

from __future__ import annotations

import logging
import warnings
import os
import random
import sys
from pathlib import Path
from typing import TypeVar

# OpenMP reads its settings once, when torch's OpenMP runtime loads, so this must run before
# `import torch`. PyTorch's CPU build (GNU OpenMP) otherwise keeps worker threads spinning at the end
# of every parallel region; when another process holds one of the cores, the running thread spins its
# whole time slice waiting for the descheduled one: on a shared 2-core machine, 10 training steps of a
# small model took a median 259 s (30 s of CPU) with the default and 6.0 s (1 s of CPU) with PASSIVE
# (benchmarks/contention.py). A value the user set is kept.
_TORCH_WAS_LOADED = "torch" in sys.modules
_ENV_AT_START = frozenset(os.environ)
OPENMP_WAIT_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch.profiler's Kineto prints "USDT: ... profiler_start/stop" lines to stderr on every profile
# (levels below 6 keep them); read when a profile starts.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
# transformers imports torchao when it is installed; torchao then logs that its CUDA-only kernels do not
# load, and torch's pytree registry logs a deprecation notice: noise in every notebook that loads a model.
# bitsandbytes likewise logs that an optional CPU kernel package is missing, and Hugging Face's `kernels`
# (transformers brings it) that it skips a download's trust check while the Hub is offline, as it is here.
for _logger in ("torchao", "torch.utils._pytree", "bitsandbytes", "kernels"):
    logging.getLogger(_logger).setLevel(logging.ERROR)
# peft still asks transformers for the deprecated `is_gradient_checkpointing` (a FutureWarning in every
# LoRA check); it is peft's call, not the learner's, so it is hidden.
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"

_DEVICES = ("cuda", "mps", "cpu")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def is_fast() -> bool:
    """True when ``LLM_COURSE_FAST`` is set to 1/true/yes/on (read at call time)."""
    value = os.environ.get("LLM_COURSE_FAST", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"LLM_COURSE_FAST={value!r} is not understood; set it to 1 (fast mode) or 0 / unset it."
    )


def pick(default: T, fast: T) -> T:
    """Return ``fast`` in fast mode, else ``default``: ``steps = pick(default=2000, fast=50)``."""
    return fast if is_fast() else default


def get_device(override: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU.

    ``override`` (or the environment variable ``LLM_COURSE_DEVICE``) forces one of
    "cuda", "mps", "cpu" (an index such as "cuda:1" is allowed); asking for a device that is
    not available raises ``RuntimeError`` rather than silently falling back.
    """
    wanted = override if override is not None else os.environ.get("LLM_COURSE_DEVICE")
    if wanted:
        kind = wanted.split(":")[0].lower()
        if kind not in _DEVICES:
            raise ValueError(f"unknown device {wanted!r}; choose one of {', '.join(_DEVICES)}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        if kind == "mps" and not _mps_available():
            raise RuntimeError("device 'mps' was requested but this torch build/machine has no MPS")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


_SEED_LIMIT = 2**64  # torch.manual_seed takes at most 64 bits


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices) so a run is repeatable.

    ``seed``: an int (or NumPy integer) with ``0 <= seed < 2**64``; anything else raises before any
    generator is touched (TypeError for a non-integer, ValueError for an integer out of range).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int with 0 <= seed < 2**64, got {seed!r} of type {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be an int with 0 <= seed < 2**64 (what torch.manual_seed accepts), "
                         f"got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit Linux
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_allocator_tuned: bool | None = None


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed CPU memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same large activations every time (the logits alone
    are batch x context x vocab floats: 16 MB for the course recipe). By default glibc serves such
    blocks with ``mmap`` and returns them with ``munmap``, so every step page-faults the memory back
    in: ``benchmarks/allocator.py`` measured about 20,000 page faults per bf16 training step of the
    course recipe on a 2-core AMD EPYC, and 1.19x the time per step. Serving blocks up to 32 MB
    from the heap and trimming the heap only past ``trim_threshold`` bytes of free memory removes
    that cost (PyTorch's CPU tuning guide reaches the same by preloading jemalloc or tcmalloc).
    The price is that up to ``trim_threshold`` bytes freed by Python stay reserved by the process.

    Idempotent; returns True where the setting applied (Linux with glibc), False elsewhere (macOS,
    Windows and musl keep their own allocator). :func:`utils.training.train` calls it.
    """
    global _allocator_tuned
    if not isinstance(trim_threshold, int) or isinstance(trim_threshold, bool) or trim_threshold < 0:
        raise ValueError(f"trim_threshold must be a number of bytes >= 0 (e.g. 1 << 30 for 1 GiB), "
                         f"got {trim_threshold!r}")
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    import ctypes
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
            _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
        except (OSError, AttributeError):
            _allocator_tuned = False
    return _allocator_tuned


def openmp_wait_policy() -> str:
    """How torch's OpenMP threads wait: "PASSIVE" (sleep; the course's choice) or what the user set.

    Says so when torch was imported before this module without ``OMP_WAIT_POLICY`` set: the setting
    then came too late for this process (restart the kernel and run the first cell first).
    """
    if _TORCH_WAS_LOADED and OPENMP_WAIT_POLICY == "PASSIVE" and "OMP_WAIT_POLICY" not in _ENV_AT_START:
        return "OpenMP default (torch was imported before utils.runtime)"
    return OPENMP_WAIT_POLICY


def environment_report() -> dict[str, str]:
    """Versions and settings worth printing at the top of a notebook or a bug report."""
    import platform

    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(get_device()),
        "torch threads": str(torch.get_num_threads()),
        "OpenMP wait policy": openmp_wait_policy(),
        "fast mode": str(is_fast()),
    }
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    return report
