"""Attention from scratch: scaled dot-product attention, multi-head (and grouped-query) attention,
and tiled "flash" attention with the online softmax.

Everything here is written out step by step and checked against PyTorch in ``tests/test_attention.py``:

- :func:`scaled_dot_product_attention` — scores, scale, mask, softmax, weighted sum (equals
  ``torch.nn.functional.scaled_dot_product_attention``), optionally returning the weights;
- :func:`flash_attention` — the same result computed block by block with a running max and sum,
  never building the full (Tq, Tk) score matrix;
- :class:`MultiHeadAttention` — self- or cross-attention with one fused q/k/v projection (as GPT-2's
  ``c_attn``), where grouped-query attention (``n_kv_head < n_head``) and multi-query attention
  (``n_kv_head=1``) just mean fewer k/v columns; optional RoPE (``utils.positions``), a KV cache
  (``utils.kv_cache.KVCache``) and prefix keys/values (prefix tuning).

Shape letters: B batch, H query heads, Hkv key/value heads, T / Tq query length, Tk key length,
d (or hd) the per-head dimension, C = n_embd = H * hd.

Causal masks are aligned to the END when there are fewer queries than keys (Tq < Tk): query ``i``
may attend to keys ``j <= i + (Tk - Tq)``. That is what a KV cache needs (the new queries are the
last Tq positions of the sequence). Note that ``torch.nn.functional.scaled_dot_product_attention``
with ``is_causal=True`` aligns to the top-left instead; the two agree when Tq == Tk.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import check_bool, check_int, check_number
from utils.positions import RotaryEmbedding, apply_rope_rolled

__all__ = ["scaled_dot_product_attention", "flash_attention", "causal_mask", "attend", "MultiHeadAttention",
           "ATTENTION_IMPLS"]


# ---------------------------------------------------------------------------------------------
# Checks shared by the attention functions
# ---------------------------------------------------------------------------------------------

def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., T, d), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension d (their dot product is the score), "
                         f"got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length Tk (one value per key), "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must have the same leading shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must have the same dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k and v must be on the same device, got {q.device}, {k.device} and {v.device}")


def _check_options(is_causal, dropout_p, scale) -> None:
    check_bool("is_causal", is_causal)
    check_number("dropout_p", dropout_p, 0, 1, high_open=True)
    if scale is not None:
        check_number("scale (None = 1/sqrt(d))", scale, 0, low_open=True)


def _expand_kv_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: repeat each k/v head for the q heads of its group.

    With q (B, H, Tq, d) and k, v (B, Hkv, Tk, d) where H is a multiple of Hkv, query head ``h`` uses
    key/value head ``h // (H // Hkv)`` (the same grouping as torch's ``enable_gqa`` and Hugging Face).
    """
    if q.dim() >= 3 and k.dim() == q.dim():
        hq, hk = q.shape[-3], k.shape[-3]
        if hq != hk and hk != 1:
            if hq % hk:
                raise ValueError(f"grouped-query attention needs the number of query heads ({hq}) to be a "
                                 f"multiple of the number of key/value heads ({hk}); q {tuple(q.shape)}, "
                                 f"k {tuple(k.shape)}")
            k = k.repeat_interleave(hq // hk, dim=-3)
            v = v.repeat_interleave(hq // hk, dim=-3)
    return k, v


def causal_mask(tq: int, tk: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where query ``i`` may attend key ``j``: ``j <= i + (Tk - Tq)``.

    Aligned to the end, so the Tq queries are the last Tq positions of a Tk-long sequence
    (for Tq == Tk this is the usual lower-triangular mask).
    """
    check_int("tq", tq, 1)
    check_int("tk", tk, 1)
    if tq > tk:
        raise ValueError(f"a causal mask with more queries ({tq}) than keys ({tk}) leaves the first "
                         f"{tq - tk} queries with nothing to attend to; pass at least as many keys as queries")
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def _check_mask(mask: torch.Tensor, batch_shape: torch.Size, tq: int, tk: int, device: torch.device) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool: True = may attend, or additive float), "
                        f"got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = may attend) or floating point (added to the scores), "
                        f"got dtype {mask.dtype}; convert it with mask.bool()")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but q, k, v are on {device}")
    target = (*batch_shape, tq, tk)
    try:
        ok = torch.broadcast_shapes(mask.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                         f"{target} (..., Tq, Tk); e.g. a padding mask over keys should be shaped (B, 1, 1, Tk)")


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention, written out
# ---------------------------------------------------------------------------------------------

def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, is_causal: bool = False,
                                 dropout_p: float = 0.0, return_weights: bool = False,
                                 scale: float | None = None):
    """softmax(q k^T / sqrt(d) + mask) v, step by step.

    Args:
        q: (..., Tq, d) queries. k: (..., Tk, d) keys. v: (..., Tk, dv) values. The leading
           dimensions broadcast; with q (B, H, Tq, d) and k, v (B, Hkv, Tk, d) where H is a multiple
           of Hkv, each key/value head serves H // Hkv query heads (grouped-query attention).
        mask: bool (True = may attend) or float (added to the scores, e.g. 0 / -inf), broadcastable
           to (..., Tq, Tk).
        is_causal: also forbid attending to later positions, aligned to the end when Tq < Tk
           (query i sees keys j <= i + Tk - Tq). Combined with ``mask`` when both are given.
        dropout_p: dropout on the attention weights (only use it while training).
        return_weights: also return the (..., Tq, Tk) attention weights (after dropout).
        scale: score scale, default 1 / sqrt(d).

    Returns:
        out (..., Tq, dv), or (out, weights) when ``return_weights``.

    A query row whose keys are all masked by a *boolean* mask gets uniform weights over its keys
    (masked scores are set to the most negative finite number, not -inf), so it never produces NaN.
    """
    _check_qkv(q, k, v)
    _check_options(is_causal, dropout_p, scale)
    check_bool("return_weights", return_weights)
    k, v = _expand_kv_heads(q, k, v)
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk): how much each query matches each key

    if mask is not None:
        _check_mask(mask, scores.shape[:-2], tq, tk, q.device)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(tq, tk, device=q.device), torch.finfo(scores.dtype).min)

    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # each row sums to 1
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    out = weights @ v  # (..., Tq, dv): a weighted average of the values
    return (out, weights) if return_weights else out


# ---------------------------------------------------------------------------------------------
# Flash attention: tiles + online softmax
# ---------------------------------------------------------------------------------------------

def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                    block_size: int = 64, scale: float | None = None) -> torch.Tensor:
    """Exact attention computed tile by tile with the online softmax (Dao et al., 2022).

    For each block of ``block_size`` queries we walk over blocks of ``block_size`` keys keeping, per
    query row, the running maximum ``m`` of the scores seen so far, the running sum ``l`` of
    ``exp(score - m)`` and the running un-normalised output ``acc``. When a new block raises the
    maximum, the old sum and output are rescaled by ``exp(m_old - m_new)``. At the end ``acc / l`` is
    exactly softmax(scores) @ v, but no more than a (block, block) tile of scores ever exists.
    With ``is_causal``, key blocks entirely in the future of a query block are skipped.

    Args: q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) (GQA heads as in
    :func:`scaled_dot_product_attention`). Returns (..., Tq, dv).

    This is a teaching implementation: the tiling saves memory, but the Python loop over tiles is
    slow; real kernels run the same algorithm inside one GPU kernel, with tiles in on-chip SRAM.
    """
    _check_qkv(q, k, v)
    _check_options(is_causal, 0.0, scale)
    block_size = check_int("block_size", block_size, 1)
    k, v = _expand_kv_heads(q, k, v)
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if is_causal and tq > tk:
        raise ValueError(f"causal attention with more queries ({tq}) than keys ({tk}) leaves some queries "
                         "with nothing to attend to")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    shift = tk - tq  # causal alignment to the end
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    out = q.new_empty(*batch_shape, tq, v.shape[-1])
    neg = torch.finfo(torch.float32).min

    for qs in range(0, tq, block_size):
        qe = min(qs + block_size, tq)
        qb = q[..., qs:qe, :].float() * scale
        m = torch.full((*batch_shape, qe - qs, 1), neg, dtype=torch.float32, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(*batch_shape, qe - qs, v.shape[-1], dtype=torch.float32, device=q.device)
        k_end = min(tk, qe - 1 + shift + 1) if is_causal else tk  # last key the last query may see, +1
        for ks in range(0, k_end, block_size):
            ke = min(ks + block_size, k_end)
            s = qb @ k[..., ks:ke, :].float().transpose(-2, -1)  # (..., bq, bk): one tile of scores
            if is_causal and ke - 1 > qs + shift:  # the tile crosses the diagonal
                rows = torch.arange(qs, qe, device=q.device)[:, None] + shift
                cols = torch.arange(ks, ke, device=q.device)[None, :]
                s = s.masked_fill(cols > rows, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)  # masked entries give exp(-inf) = 0
            correction = torch.exp(m - m_new)  # rescale what was accumulated under the old max
            l = l * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + p @ v[..., ks:ke, :].float()
            m = m_new
        out[..., qs:qe, :] = (acc / l).to(out.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# The kernel used inside the modules
# ---------------------------------------------------------------------------------------------

def _probe_enable_gqa() -> bool:
    try:
        x = torch.zeros(1, 2, 1, 2)
        F.scaled_dot_product_attention(x, x[:, :1], x[:, :1], enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


_TORCH_HAS_GQA = _probe_enable_gqa()
ATTENTION_IMPLS = ("torch", "ours")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           is_causal: bool = False, dropout_p: float = 0.0, impl: str = "torch") -> torch.Tensor:
    """Attention as used by the modules: q (B, H, Tq, d), k/v (B, Hkv, Tk, d) -> (B, H, Tq, d).

    ``impl="ours"`` runs :func:`scaled_dot_product_attention`; ``impl="torch"`` runs PyTorch's fused
    kernel (same numbers, tested, but faster and lighter on memory), with the causal mask aligned to
    the end like ours.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")
    _check_qkv(q, k, v)
    _check_options(is_causal, dropout_p, None)
    if mask is not None:
        _check_mask(mask, torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2], q.device)
    if is_causal and q.shape[-2] > k.shape[-2]:
        causal_mask(q.shape[-2], k.shape[-2])  # raises: more queries than keys
    return _attend(q, k, v, mask, is_causal, dropout_p, impl)


def _attend(q, k, v, mask, is_causal, dropout_p, impl) -> torch.Tensor:
    """:func:`attend` without the checks: the modules call it with tensors they built themselves
    (on a decoding step, a few microseconds of checks per layer would add up)."""
    if impl == "ours":
        return scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
        # PyTorch's CPU flash-attention backward is several times slower in bf16 than in fp32
        # (benchmarks/attention.py, second table), so train-time attention on CPU runs in fp32.
        with torch.autocast("cpu", enabled=False):
            return _attend(q.float(), k.float(), v.float(), mask, is_causal, dropout_p, impl).to(q.dtype)
    tq, tk = q.shape[-2], k.shape[-2]
    if is_causal and (tq != tk or mask is not None):
        cm = causal_mask(tq, tk, device=q.device)
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask & cm
        else:
            mask = mask.masked_fill(~cm, float("-inf"))
        is_causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    if k.shape[-3] != q.shape[-3]:
        if _TORCH_HAS_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                  dropout_p=dropout_p, enable_gqa=True)
        k, v = _expand_kv_heads(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)


# ---------------------------------------------------------------------------------------------
# Multi-head attention
# ---------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention with optional grouped-query heads, RoPE and KV cache.

    Args:
        n_embd: model width C. n_head: number of query heads H (C % H == 0; head_dim = C // H).
        n_kv_head: key/value heads Hkv (H % Hkv == 0). None = H (classic multi-head); 1 = multi-query.
        bias: biases in the four projections. dropout: on the output (and on the attention weights
        unless ``attn_dropout`` is given). attn_dropout: on the attention weights (None = ``dropout``).
        causal: mask future positions (decoder self-attention). Ignored for cross-attention.
        rope: a :class:`RotaryEmbedding` applied to q and k (self-attention only), or None.
        cross: keys and values come from ``context`` (the encoder output), not from ``x``.
        impl: "torch" (PyTorch's fused kernel) or "ours" (:func:`scaled_dot_product_attention`).

    Projections (each one ``nn.Linear``, so LoRA or quantization can wrap them):
    self-attention: ``qkv_proj`` C -> (H + 2*Hkv)*hd, the q, k and v projections stacked in one matrix
    (rows ``[:H*hd]`` make q, the next ``Hkv*hd`` make k, the last ``Hkv*hd`` make v) so that one
    matrix multiply computes all three, as GPT-2's ``c_attn``; cross-attention: ``q_proj`` C -> H*hd
    on x and ``kv_proj`` C -> 2*Hkv*hd on the context; ``out_proj`` C -> C. :meth:`qkv_weights`
    returns the three matrices separately.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, causal: bool = True, rope: RotaryEmbedding | None = None,
                 cross: bool = False, impl: str = "torch", attn_dropout: float | None = None):
        super().__init__()
        check_int("n_embd", n_embd, 1)
        check_int("n_head", n_head, 1)
        if n_kv_head is not None:
            check_int("n_kv_head", n_kv_head, 1)
        for name, value in (("bias", bias), ("causal", causal), ("cross", cross)):
            check_bool(name, value)
        check_number("dropout", dropout, 0, 1, high_open=True)
        if attn_dropout is not None:
            check_number("attn_dropout", attn_dropout, 0, 1, high_open=True)
        if rope is not None and not isinstance(rope, RotaryEmbedding):
            raise TypeError(f"rope must be a RotaryEmbedding or None, got {type(rope).__name__}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets "
                             f"n_embd // n_head dimensions")
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head}): each key/value "
                             "head is shared by a group of n_head // n_kv_head query heads")
        if not isinstance(impl, str) or impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")
        if rope is not None and rope.head_dim != n_embd // n_head:
            raise ValueError(f"rope is for heads of {rope.head_dim} dimensions, these have n_embd // n_head = "
                             f"{n_embd // n_head}")
        if rope is not None and cross:
            raise ValueError("RoPE is for self-attention; cross-attention keys come from another sequence")
        self.n_embd, self.n_head, self.n_kv_head = n_embd, n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.causal, self.cross, self.rope, self.impl = causal and not cross, cross, rope, impl
        self.dropout = dropout if attn_dropout is None else attn_dropout  # on the attention weights
        q_dim, kv_dim = n_head * self.head_dim, n_kv_head * self.head_dim
        if cross:  # q from x, k and v from the context
            self.q_proj = nn.Linear(n_embd, q_dim, bias=bias)
            self.kv_proj = nn.Linear(n_embd, 2 * kv_dim, bias=bias)
        else:  # one matrix multiply for q, k and v: fewer, larger ops (what decoding speed is made of)
            self.qkv_proj = nn.Linear(n_embd, q_dim + 2 * kv_dim, bias=bias)
        self.out_proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def qkv_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q (H*hd, C), k (Hkv*hd, C) and v (Hkv*hd, C) projection matrices, as views."""
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if self.cross:
            return (self.q_proj.weight, *self.kv_proj.weight.split(kv_dim, dim=0))
        return self.qkv_proj.weight.split([q_dim, kv_dim, kv_dim], dim=0)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache=None, layer_idx: int | None = None,
                need_weights: bool = False, is_causal: bool | None = None,
                rope_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, T, C) -> (B, T, C), or (out, weights (B, H, T, Tk)) with ``need_weights``.

        context: (B, S, C), required for cross-attention. mask: bool / additive, broadcastable to
        (B, H, T, Tk). position_ids: for RoPE, a tensor (T,) or (B, T), or an int start of contiguous
        positions (default: the positions right after what the cache holds, else 0).
        kv_cache / layer_idx: an object with ``update(layer_idx, k, v) -> (k_all, v_all)`` and
        ``length`` (``utils.kv_cache.KVCache``): the new keys/values are written into it and attention
        runs over everything cached. is_causal: override the module's ``causal`` (the model passes
        False when ``mask`` already contains the causal part). rope_cos_sin: ``(cos, sin_signed)`` from
        ``rope.cos_sin(position_ids, T, signed=True)``, computed once per forward by the model and
        shared by all its layers (as Hugging Face's Llama passes ``position_embeddings``); when
        given, ``position_ids`` is not used. past_kv: prefix keys and values ``(k, v)``, each
        (B or 1, Hkv, P, hd), put before everything else (prefix tuning): every query attends to all
        P of them (a ``mask`` must then cover P + past + T keys); gradients flow into them.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (B, T, n_embd={self.n_embd}), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"x must be (B, T, n_embd={self.n_embd}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs `context` (B, S, n_embd), e.g. the encoder output")
            if not isinstance(context, torch.Tensor) or context.dim() != 3 or context.shape[0] != B or context.shape[-1] != self.n_embd:
                raise ValueError(f"context must be (B={B}, S, n_embd={self.n_embd}), got "
                                 f"{getattr(context, 'shape', type(context).__name__)}")
            if kv_cache is not None or past_kv is not None:
                raise ValueError("kv_cache and past_kv are for self-attention; cross-attention recomputes from context")
            src = context
        else:
            if context is not None:
                raise ValueError("context is only used by cross-attention (MultiHeadAttention(cross=True))")
            src = x
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        if self.cross:
            S = src.shape[1]
            q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
            k, v = self.kv_proj(src).view(B, S, 2 * Hkv, hd).transpose(1, 2).split(Hkv, dim=1)  # (B, Hkv, S, hd)
        else:
            # heads of q, then k, then v: (B, H + 2*Hkv, T, hd) (narrow/split: cheaper than
            # tensor[:, a:b] on a decoding step, where every op's overhead counts)
            qkv = self.qkv_proj(x).view(B, T, H + 2 * Hkv, hd).transpose(1, 2)
            v = qkv.narrow(1, H + Hkv, Hkv)  # (B, Hkv, T, hd)
            qk = qkv.narrow(1, 0, H + Hkv)
            if self.rope is not None:
                if rope_cos_sin is None:
                    if position_ids is None:
                        position_ids = kv_cache.length if kv_cache is not None else 0
                    rope_cos_sin = self.rope.cos_sin(position_ids, T, signed=True)
                # rotate the q and k heads in one go: cos/sin (T, hd) or (B, 1, T, hd) broadcast
                # over the heads axis (the same angles for every head of a position)
                cos, sin = rope_cos_sin
                if cos.shape[-1] != hd or sin.shape != cos.shape or cos.shape[-2] != T:
                    raise ValueError(f"rope_cos_sin must be (cos, sin_signed) of shape (T={T}, head_dim={hd}) or "
                                     f"(B, 1, T, head_dim), from rope.cos_sin(position_ids, T, signed=True); got "
                                     f"{tuple(cos.shape)} and {tuple(sin.shape)}")
                if cos.dtype != qk.dtype:
                    cos, sin = cos.to(qk.dtype), sin.to(qk.dtype)
                qk = apply_rope_rolled(qk, cos, sin)
            q, k = qk.split([H, Hkv], dim=1)  # (B, H, T, hd), (B, Hkv, T, hd)
        if kv_cache is not None:
            if layer_idx is None:
                raise ValueError("pass layer_idx with kv_cache (which layer's slot to write)")
            k, v = kv_cache.update(layer_idx, k, v)  # (B, Hkv, past + T, hd), views of the cache
        if past_kv is not None:  # prefix keys/values in front of everything (batch dim 1 broadcasts)
            pk, pv = past_kv
            k = torch.cat([pk.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        if mask is not None:
            _check_mask(mask, (B, H), T, k.shape[2], x.device)
        causal = self.causal if is_causal is None else is_causal
        if causal and T == 1:
            causal = False  # one new query may see every cached key
        p = self.dropout if self.training else 0.0
        if need_weights:
            y, w = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal, dropout_p=p,
                                                return_weights=True)
        else:
            y = _attend(q, k, v, mask, causal, p, self.impl)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # heads side by side again
        y = self.out_proj(y)
        if self.resid_dropout.p and self.training:  # skip the no-op call when decoding
            y = self.resid_dropout(y)
        return (y, w) if need_weights else y
