"""LoRA (Hu et al. 2021): freeze a weight W and learn a low-rank update, W + (alpha / r) * B @ A.

- :class:`LoRALinear` wraps one linear layer (``nn.Linear``, or any module with ``in_features`` /
  ``out_features`` such as a 4-bit ``QuantLinear`` for QLoRA): ``y = base(x) + (alpha/r) * B A x``
  with A (r, in) random and B (out, r) zero, so the wrapped layer starts out exactly equal to the
  base. ``merge()`` folds the update into the base weight (zero inference overhead), ``unmerge()``
  takes it out again.
- Our attention computes q, k and v with ONE fused matrix ``qkv_proj`` (rows: q, then k, then v).
  LoRA on the whole fused matrix is what ``peft`` does on GPT-2's fused ``c_attn``; LoRA on q and v
  only (the common Llama-style choice, where q_proj and v_proj are separate layers) needs the update
  confined to those rows: ``segments`` gives each chosen row range its own (A, B) pair, exactly as
  two separate LoRA layers on separate q and v matrices would have.
- :func:`apply_lora` swaps the chosen layers of a GPT in place and freezes everything else;
  :func:`merge_lora` / :func:`unmerge_lora` do every LoRA layer of a model; inside
  ``with lora_disabled(model):`` the model computes exactly what its frozen base computes (peft's
  ``disable_adapter()``), so one set of base weights can serve some requests with the adapter and
  others without.

Target names for :func:`apply_lora` (:data:`LORA_TARGETS`): ``"qkv_proj"`` (the whole fused matrix),
``"q"``, ``"k"``, ``"v"`` (row blocks of ``qkv_proj``; any combination), ``"out_proj"``,
``"up_proj"``, ``"down_proj"``, ``"gate_up_proj"`` (MLP layers).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_layers", "lora_disabled",
           "LORA_TARGETS", "qkv_segments"]

QKV_PARTS = ("q", "k", "v")
LINEAR_TARGETS = ("qkv_proj", "out_proj", "up_proj", "down_proj", "gate_up_proj")
LORA_TARGETS = LINEAR_TARGETS + QKV_PARTS


def _check_rank(r, alpha, dropout) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}")
    if alpha is not None and (not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0):
        raise ValueError(f"LoRA alpha must be a positive number (or None = r), got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B @ A @ dropout(x)`` on the output rows listed in ``segments``.

    Args:
        base: the frozen layer (``nn.Linear`` or a module with ``in_features``/``out_features``).
        r: rank (> 0). alpha: scale numerator (None = r, i.e. scaling 1). dropout: on LoRA's input.
        segments: output-row ranges ``[(start, stop), ...]`` (sorted, non-overlapping) that get an
            update, each with its own A_i (r, in) and B_i (stop - start, r); None = all rows, one pair.

    Shapes: x (..., in) -> (..., out). ``lora_A[i]`` (r, in) is initialised like ``nn.Linear``
    (Kaiming-uniform, as peft), ``lora_B[i]`` is zero: at initialisation the output equals the base's.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0,
                 segments: Sequence[tuple[int, int]] | None = None):
        super().__init__()
        _check_rank(r, alpha, dropout)
        if isinstance(base, LoRALinear):
            raise TypeError("base is already a LoRALinear; apply LoRA once per layer")
        n_in, n_out = getattr(base, "in_features", None), getattr(base, "out_features", None)
        if not isinstance(n_in, int) or not isinstance(n_out, int):
            raise TypeError(f"base must be nn.Linear (or have int in_features/out_features), got {type(base).__name__}")
        segments = [(0, n_out)] if segments is None else [tuple(s) for s in segments]
        prev = 0
        for s in segments:
            if len(s) != 2 or not all(isinstance(v, int) for v in s) or not prev <= s[0] < s[1] <= n_out:
                raise ValueError(f"segments must be sorted, non-overlapping (start, stop) row ranges within "
                                 f"[0, out_features={n_out}], got {segments}")
            prev = s[1]
        self.base = base
        self.in_features, self.out_features = n_in, n_out
        self.r, self.alpha = r, float(r if alpha is None else alpha)
        self.scaling = self.alpha / r
        self.segments = segments
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        w = next(base.parameters(), None)
        dtype = w.dtype if w is not None and w.is_floating_point() else torch.float32
        device = w.device if w is not None else None
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(r, n_in, device=device, dtype=dtype))
                                       for _ in segments)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(b - a, r, device=device, dtype=dtype))
                                       for a, b in segments)
        for A in self.lora_A:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.merged = False
        self.enabled = True  # False: the layer computes base(x) only (see lora_disabled)

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha/r) * B A as a full (out, in) matrix: zero rows outside the segments."""
        A0 = self.lora_A[0]
        pieces, pos = [], 0
        for (a, b), A, B in zip(self.segments, self.lora_A, self.lora_B):
            if a > pos:
                pieces.append(A0.new_zeros(a - pos, self.in_features))
            pieces.append(B @ A)
            pos = b
        if pos < self.out_features:
            pieces.append(A0.new_zeros(self.out_features - pos, self.in_features))
        return torch.cat(pieces, 0) * self.scaling

    def lora_output(self, x: torch.Tensor) -> torch.Tensor:
        """The update's contribution (..., out) without forming B A (two thin matmuls per segment)."""
        h = self.lora_dropout(x)
        pieces, pos = [], 0
        for (a, b), A, B in zip(self.segments, self.lora_A, self.lora_B):
            if a > pos:
                pieces.append(h.new_zeros(*h.shape[:-1], a - pos))
            pieces.append(F.linear(F.linear(h.to(A.dtype), A), B))
            pos = b
        if pos < self.out_features:
            pieces.append(h.new_zeros(*h.shape[:-1], self.out_features - pos))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, -1)
        return out * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or not self.enabled:
            return y
        return y + self.lora_output(x).to(y.dtype)

    def _base_weight(self) -> torch.Tensor:
        w = getattr(self.base, "weight", None)
        # a Parameter, not any tensor: a quantized layer's .weight is a dequantized COPY, and adding to a
        # copy would silently merge nothing
        if not isinstance(w, nn.Parameter) or not w.is_floating_point() or tuple(w.shape) != (self.out_features, self.in_features):
            raise TypeError(f"cannot merge into a {type(self.base).__name__}: it has no floating-point (out, in) "
                            "weight Parameter (a quantized base, as in QLoRA, stays unmerged: dequantize it into an "
                            "nn.Linear first)")
        return w

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (alpha/r) B A: afterwards the layer costs what the base costs. Idempotent."""
        if not self.enabled:  # merged, it could no longer be switched off
            raise ValueError("this LoRA layer is switched off (inside lora_disabled): merge it after that block")
        if not self.merged:
            w = self._base_weight()
            w.add_(self.delta_weight().to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (alpha/r) B A (the inverse of :meth:`merge`, up to float rounding). Idempotent."""
        if self.merged:
            w = self._base_weight()
            w.sub_(self.delta_weight().to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}, "
                f"segments={self.segments}, merged={self.merged}")


def qkv_segments(attn: nn.Module, parts: Iterable[str]) -> list[tuple[int, int]]:
    """Row ranges of ``attn.qkv_proj`` for the chosen parts ("q", "k", "v"), in row order.

    q rows are ``[0, H*hd)``, k rows the next ``Hkv*hd``, v rows the last ``Hkv*hd``."""
    q_dim, kv_dim = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
    spans = {"q": (0, q_dim), "k": (q_dim, q_dim + kv_dim), "v": (q_dim + kv_dim, q_dim + 2 * kv_dim)}
    return [spans[p] for p in QKV_PARTS if p in set(parts)]


def _check_targets(target_modules) -> list[str]:
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    try:
        targets = list(target_modules)
    except TypeError:
        raise TypeError(f"target_modules must be a list of names from {LORA_TARGETS}, got {target_modules!r}") from None
    if not targets:
        raise ValueError(f"target_modules is empty; choose names from {LORA_TARGETS}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"unknown LoRA target module name(s) {unknown}; allowed: {LORA_TARGETS} "
                         "('q', 'k', 'v' are row blocks of the fused qkv_proj)")
    if "qkv_proj" in targets and set(targets) & set(QKV_PARTS):
        raise ValueError("choose either 'qkv_proj' (the whole fused matrix) or some of 'q', 'k', 'v' (its row "
                         f"blocks), not both; got {targets}")
    return targets


def apply_lora(model: nn.Module, target_modules: Sequence[str] = ("q", "v"), r: int = 8,
               alpha: float | None = None, dropout: float = 0.0, freeze_base: bool = True) -> nn.Module:
    """Swap the chosen linear layers of every block for :class:`LoRALinear`, in place; returns ``model``.

    ``target_modules``: names from :data:`LORA_TARGETS`; ``("qkv_proj",)`` puts one LoRA pair on the
    whole fused q/k/v matrix (what peft does on GPT-2's ``c_attn``), ``("q", "v")`` one pair on the q
    rows and one on the v rows (Llama-style). ``freeze_base``: set ``requires_grad=False`` on every
    parameter that is not LoRA's (call it before adding a trainable head). Raises ``ValueError`` for
    r <= 0, an unknown name, or a name that no layer of the model has; nothing is changed then.
    """
    _check_rank(r, alpha, dropout)
    targets = _check_targets(target_modules)
    parts = [t for t in targets if t in QKV_PARTS]
    linear_names = [t for t in targets if t in LINEAR_TARGETS] + (["qkv_proj"] if parts else [])
    plan = []  # (parent, attribute, segments): decided fully before any layer is swapped
    found = set()
    for module in model.modules():
        for name in linear_names:
            child = getattr(module, name, None) if name in module._modules else None
            if child is None:
                continue
            if isinstance(child, LoRALinear):
                raise ValueError(f"{type(module).__name__}.{name} already has LoRA; apply_lora once per model")
            segments = qkv_segments(module, parts) if name == "qkv_proj" and parts else None
            plan.append((module, name, segments))
            found.add(name)
    missing = [n for n in linear_names if n not in found]
    if missing:
        raise ValueError(f"no layer named {missing} in this model (e.g. 'gate_up_proj' exists only with "
                         f"mlp='swiglu', 'up_proj' only without); found {sorted(found) or 'none'}")
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    for parent, name, segments in plan:
        setattr(parent, name, LoRALinear(getattr(parent, name), r, alpha, dropout, segments))
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer's update into its base weight (in place); returns ``model``."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers to merge (call apply_lora first)")
    for layer in layers:
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (in place); returns ``model``."""
    for layer in lora_layers(model):
        layer.unmerge()
    return model


@contextmanager
def lora_disabled(model: nn.Module):
    """``with lora_disabled(model):`` every LoRA layer computes its base layer's output only, exactly (the
    update is skipped, not multiplied by zero); on leaving, each layer is switched back as it was. Raises
    ``ValueError`` when the model has no LoRA layer or a merged one (its base weight holds the update: unmerge
    it first)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers to disable (call apply_lora first)")
    if any(layer.merged for layer in layers):
        raise ValueError("a merged LoRA layer's base weight holds the update, so it cannot be switched off: "
                         "call unmerge_lora(model) first")
    was = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, on in zip(layers, was):
            layer.enabled = on
