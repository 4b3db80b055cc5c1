"""Mixed precision: which float format a training step computes in, per device.

- :func:`resolve_precision` turns ``"auto"`` into a concrete choice and rejects combinations that
  cannot work;
- :func:`autocast_context` is the context manager for the forward pass (``torch.autocast``);
- :func:`make_grad_scaler` returns the gradient scaler fp16 needs (its 5 exponent bits underflow
  small gradients unless the loss is scaled up first) and ``None`` otherwise;
- :func:`cpu_has_fast_bf16` says whether this CPU multiplies bf16 matrices faster than fp32.

Usage::

    from utils.precision import autocast_context, resolve_precision
    with autocast_context("cpu", "auto"):
        logits, loss = model(x, y)
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def as_device(device: torch.device | str, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine (ValueError/TypeError if not)."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a str such as 'cpu' or a torch.device, got {type(device).__name__} {device!r}")
    try:
        out = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{name}={device!r} is not a device; use 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r}, but this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                         "use 'cpu'")
    if out.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{name}={device!r}, but this machine has no Apple MPS device; use 'cpu'")
    return out


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions, where oneDNN runs bf16 matrix multiplies faster
    than fp32: AMX tile units (Intel Xeon 4th gen and later) or AVX-512 BF16 dot products (AMD Zen 4
    and later, Intel Cooper Lake). CPUs with neither (most laptops before 2023): False, stay in
    fp32 (``benchmarks/pretrain_cpu.py`` and notebook 04 measure the difference)."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(device: torch.device | str, precision: str) -> str:
    """Turn "auto" into a concrete precision for ``device`` and reject unsupported combinations.

    "auto" is bf16 on CUDA GPUs that support it and on CPUs with :func:`cpu_has_fast_bf16`, else
    fp32. "fp16" works on CUDA and CPU (with :func:`make_grad_scaler`); "bf16" on CUDA and CPU.
    """
    device = as_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision in ("fp16", "bf16") and device.type not in ("cpu", "cuda"):
        raise ValueError(f"{precision} autocast is not supported on {device.type}; use precision='fp32'")
    return precision


def autocast_context(device: torch.device | str, precision: str = "fp32"):
    """A context manager for the forward pass: ``torch.autocast`` for bf16/fp16, else a no-op."""
    device = as_device(device)
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """``torch.amp.GradScaler`` for fp16 (scales the loss so small gradients do not underflow), else None."""
    device = as_device(device)
    if resolve_precision(device, precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


__all__ = ["PRECISIONS", "as_device", "autocast_context", "cpu_has_fast_bf16", "make_grad_scaler", "resolve_precision"]
