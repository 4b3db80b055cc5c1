"""Positional encodings: how a transformer knows where each token is.

- :func:`sinusoidal_positions` — the fixed sin/cos table of "Attention Is All You Need" (added to
  the token embeddings);
- :class:`LearnedPositionalEmbedding` — one learned vector per position (GPT-2, BERT); it cannot go
  past the positions it was trained on;
- :class:`RotaryEmbedding` + :func:`apply_rope` — RoPE (Llama and most models since): q and k are
  rotated by an angle proportional to their position, so attention scores depend only on the
  *difference* of positions. :func:`apply_rope_rolled` is the same rotation in fewer ops, for the
  decoding hot path.

Shapes: T positions, d (or hd) the embedding (or per-head) dimension, B batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import check_int, check_number

__all__ = ["sinusoidal_positions", "LearnedPositionalEmbedding", "rotate_half", "apply_rope", "apply_rope_rolled",
           "RotaryEmbedding"]


def _check_positions(positions, what: str = "position_ids") -> None:
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"{what} must be an integer tensor, got {type(positions).__name__}")
    if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dtype == torch.bool:
        raise TypeError(f"{what} must hold integers, got dtype {positions.dtype}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"{what} must be >= 0, got a minimum of {int(positions.min())} (a negative position "
                         "would silently wrap around to the end of the table)")


# ---------------------------------------------------------------------------------------------
# Sinusoidal and learned
# ---------------------------------------------------------------------------------------------

def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed encodings of "Attention Is All You Need": (T, d).

    ``pe[t, 2i] = sin(t / base^(2i/d))`` and ``pe[t, 2i+1] = cos(t / base^(2i/d))``: every pair of
    dimensions is a clock turning at its own speed, fast for the first pairs, slow for the last.
    """
    check_int("T", T, 1)
    check_int("d", d, 2)
    if d % 2:
        raise ValueError(f"sinusoidal_positions needs an even d (sin/cos pairs), got d={d}")
    base = check_number("base", base, 0, low_open=True)
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    angles = pos * inv_freq  # (T, d/2)
    pe = torch.empty(T, d)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


class LearnedPositionalEmbedding(nn.Module):
    """One learned vector per position (GPT-2, BERT): positions (T,) or (B, T) -> (..., T, d).

    It only knows the ``max_len`` positions it was trained on: asking for a later one is an error
    (this is what fixes GPT-2's context window at 1024).
    """

    def __init__(self, max_len: int, d: int):
        super().__init__()
        check_int("max_len", max_len, 1)
        check_int("d", d, 1)
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, d))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        _check_positions(positions, "positions")
        if positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond the {self.max_len} learned positions "
                             f"(0..{self.max_len - 1}); learned positions cannot extrapolate: shorten the "
                             "sequence (or, when generating, re-run the last block_size tokens without the cache)")
        return F.embedding(positions, self.weight)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE)
# ---------------------------------------------------------------------------------------------

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the Llama / HF convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, hd) by the angles whose cos/sin are given, broadcastable to x.

    Convention: "rotate-half" (as Hugging Face Llama): dimension ``i`` is paired with ``i + hd/2``,
    and the pair is rotated by angle ``t * base^(-2i/hd)``. (The original RoPE paper pairs adjacent
    dimensions 2i, 2i+1 — "interleaved"; the two are the same up to a fixed permutation of the
    dimensions, which is why Llama checkpoints converted between them permute q/k weights.)
    """
    return x * cos + rotate_half(x) * sin


def apply_rope_rolled(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` in three ops instead of seven, for the decoding hot path.

    ``rotate_half(x) * sin`` = ``cat(-x2, x1) * sin`` = ``roll(x, hd/2) * sin_signed`` where
    ``sin_signed`` is ``sin`` with its first half negated (``RotaryEmbedding.cos_sin(..., signed=True)``).
    Equal to :func:`apply_rope` (tested).
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) for heads of size ``head_dim``.

    ``cos_sin(position_ids)`` returns (cos, sin) to use with :func:`apply_rope`:
    for position_ids (T,) they are (T, hd); for (B, T) they are (B, 1, T, hd) (broadcast over heads).
    Because q at position m and k at position n are rotated by m and n, their dot product depends
    only on m - n: attention sees *relative* positions. The tables are computed up to
    ``max_seq_len`` and extended on demand (RoPE has no learned limit; quality beyond the trained
    length is another matter).
    """

    def __init__(self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0):
        super().__init__()
        check_int("head_dim", head_dim, 2)
        if head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}")
        check_int("max_seq_len", max_seq_len, 1)
        self.head_dim, self.base = head_dim, check_number("base", base, 0, low_open=True)
        inv_freq = 1.0 / (self.base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_seq_len)

    def _build(self, n: int) -> None:
        device = self.inv_freq.device
        t = torch.arange(n, dtype=torch.float32, device=device)
        freqs = torch.outer(t, self.inv_freq)  # (n, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (n, hd): rotate-half layout
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        # sin with the first half negated, for apply_rope_rolled (the same rotation in fewer ops)
        half = self.head_dim // 2
        self.register_buffer("sin_signed", torch.cat((-emb[:, :half].sin(), emb[:, half:].sin()), dim=-1),
                             persistent=False)
        self.max_seq_len = n

    def cos_sin(self, position_ids: torch.Tensor | int, T: int | None = None,
                signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for the given positions.

        ``position_ids`` a tensor (T,) -> (T, hd) each; (B, T) -> (B, 1, T, hd) each (broadcast over
        heads). Or an int ``start`` with ``T``: the contiguous positions start..start+T-1 (a slice of
        the table, the fast path used when no row is padded). ``signed=True`` returns
        ``sin_signed`` instead of ``sin``, for :func:`apply_rope_rolled`.
        """
        if isinstance(position_ids, int) and not isinstance(position_ids, bool):
            if position_ids < 0:
                raise ValueError(f"position_ids (an int start) must be >= 0, got {position_ids}")
            if not isinstance(T, int) or isinstance(T, bool) or T < 0:
                raise ValueError(f"cos_sin(start, T): give the number of positions T (an int >= 0) with an int "
                                 f"start, got T={T!r}")
            end = position_ids + T
            if end > self.max_seq_len:
                self._build(max(end, 2 * self.max_seq_len))
            sin_table = self.sin_signed if signed else self.sin
            return self.cos.narrow(0, position_ids, T), sin_table.narrow(0, position_ids, T)
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() not in (1, 2):
            raise ValueError(f"position_ids must be an int start, or a tensor (T,) or (B, T); got "
                             f"{getattr(position_ids, 'shape', position_ids)!r}")
        if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex or position_ids.dtype == torch.bool:
            raise TypeError(f"position_ids must hold integers, got dtype {position_ids.dtype}")
        needed = 0
        if position_ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(position_ids))  # one pass for both checks
            if lo < 0:
                raise ValueError(f"position_ids must be >= 0, got a minimum of {lo} (a negative position would "
                                 "silently wrap around to the end of the table)")
            needed = hi + 1
        if needed > self.max_seq_len:
            self._build(max(needed, 2 * self.max_seq_len))
        sin_table = self.sin_signed if signed else self.sin
        cos, sin = self.cos[position_ids], sin_table[position_ids]
        if position_ids.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin

    def forward(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor | int = 0):
        """Rotate q (B, H, T, hd) and k (B, Hkv, T, hd) by their positions: a tensor (T,) or (B, T),
        or an int start of contiguous positions."""
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[-1] != self.head_dim:
                raise ValueError(f"{name} must be a tensor (..., T, head_dim={self.head_dim}), got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
        cos, sin = self.cos_sin(position_ids, q.shape[-2])
        if cos.dtype != q.dtype:
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
