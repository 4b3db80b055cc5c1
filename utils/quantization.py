"""Quantization of the course's models, written out: from absmax to GPTQ and QAT.

Every scheme stores a weight matrix as small **integer codes** plus a few **scales** (and, for the
asymmetric schemes, **zero points**), and rebuilds an approximation of the float weights from them:

    w  ≈  (q - z) * s          q: b-bit code, z: zero point (0 when symmetric), s: scale

- :func:`quantize` / :func:`dequantize`: round-to-nearest (RTN) at 2–8 bits, symmetric (absmax) or
  asymmetric (zero point), one scale per tensor, per output channel (row) or per group of
  ``group_size`` consecutive weights of a row; codes of fewer than 8 bits are **packed** (two 4-bit
  codes per byte, four 2-bit codes per byte, eight 3-bit codes in three bytes). ``format="nf4"`` is
  QLoRA's 4-bit NormalFloat: 16 levels placed at quantiles of a normal distribution
  (:func:`nf4_codebook`), scaled by each block's absmax. The result is a :class:`QuantizedTensor`.
- :class:`QuantLinear`: a weight-only quantized ``nn.Linear`` (codes and scales are *buffers*, so its
  ``state_dict`` holds codes, not floats; the weight is dequantized on the fly in ``forward``);
  :class:`QuantEmbedding` for the token embedding; :func:`quantize_model` swaps a model's layers
  according to a :class:`QuantConfig`; :func:`model_size_bytes`.
- :class:`W8A8Linear`: int8 weights *and* int8 activations (quantized per token at run time), one
  integer matrix multiply (``torch._int_mm``) — where int8 speed comes from on a CPU.
- :class:`Int8MixedLinear`: LLM.int8()'s mixed decomposition — input features that carry an outlier
  (|x| > threshold, 6.0) are multiplied in floating point, the rest in int8.
- :func:`gptq_quantize` / :func:`gptq_quantize_model`: GPTQ (Frantar et al. 2022), layer by layer,
  column by column, compensating each column's rounding error on the columns not yet quantized with
  the inverse Hessian of calibration activations (Cholesky form), with groups and act-order.
- :func:`fake_quantize`, :class:`FakeQuantLinear`, :func:`prepare_qat`, :func:`convert_qat`:
  quantization-aware training with a straight-through estimator.
- :data:`FLOAT_FORMATS`, :func:`float_format`, :func:`representable_values`: fp32 / fp16 / bf16 /
  fp8 (e4m3, e5m2) explained by their bits.

Shapes: a weight is (out_features, in_features) as in ``nn.Linear``; "channel" = one row.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GRANULARITIES", "FORMATS", "SCALE_DTYPES", "QuantizedTensor", "quantize", "dequantize", "nf4_codebook",
    "pack_codes", "unpack_codes", "QuantConfig", "QuantLinear", "QuantEmbedding", "quantize_model",
    "model_size_bytes", "quantized_modules", "W8A8Linear", "Int8MixedLinear", "quantize_per_token",
    "int8_matmul", "hessian_from_inputs", "gptq_quantize", "gptq_quantize_model", "fake_quantize",
    "FakeQuantLinear", "prepare_qat", "convert_qat", "FloatFormat", "FLOAT_FORMATS", "float_format",
    "representable_values", "round_to_format", "linear_input_absmax",
]

GRANULARITIES = ("tensor", "channel", "group")
FORMATS = ("int", "nf4")
SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# NF4 codebook
# ---------------------------------------------------------------------------------------------

def nf4_codebook() -> torch.Tensor:
    """The 16 values of 4-bit NormalFloat (QLoRA, Dettmers et al. 2023), ascending, in [-1, 1].

    Built as in the paper: 8 positive levels at the normal quantiles of ``linspace(0.9677083, 0.5, 9)``
    (dropping 0.5, i.e. the zero quantile) and 7 negative levels at ``linspace(0.9677083, 0.5, 8)``,
    plus an exact 0; everything divided by the largest value so that the ends are -1 and 1. The
    asymmetry (8 positive, 7 negative, one zero) gives an exact zero with 16 codes. Equal to
    bitsandbytes' NF4 table to float32 precision (tested).
    """
    offset = 0.9677083
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (values / values.max()).float()


_NF4 = nf4_codebook()
_NF4_MID = (_NF4[1:] + _NF4[:-1]) / 2  # decision boundaries: nearest level = bucketize over midpoints


# ---------------------------------------------------------------------------------------------
# Packing codes into bytes
# ---------------------------------------------------------------------------------------------

def _check_bits(bits) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
    return bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit codes (uint8, any shape, values < 2**bits) into a 1-D uint8 tensor.

    Codes are taken in flattened order, 8 at a time, into ``bits`` bytes (least significant bits
    first): 4-bit codes go two per byte (low nibble first), 2-bit codes four per byte, 3-bit codes
    eight per three bytes; 8-bit codes are stored as they are. The flat length is padded to a multiple
    of 8 codes, so the result has ``ceil(n / 8) * bits`` bytes.
    """
    bits = _check_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.clone()
    if flat.numel() and int(flat.max()) >= 2 ** bits:
        raise ValueError(f"codes must be < 2**bits = {2 ** bits}, got a code {int(flat.max())}")
    flat = F.pad(flat, (0, (-flat.numel()) % 8))
    if bits == 4:
        v = flat.view(-1, 2)
        return v[:, 0] | (v[:, 1] << 4)
    if bits == 2:
        v = flat.view(-1, 4)
        return v[:, 0] | (v[:, 1] << 2) | (v[:, 2] << 4) | (v[:, 3] << 6)
    v = flat.view(-1, 8).to(torch.int64)
    acc = (v << (torch.arange(8, device=v.device) * bits)).sum(1)  # 8 codes in one 64-bit word
    return ((acc[:, None] >> (torch.arange(bits, device=v.device) * 8)) & 255).to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``n`` codes as a 1-D uint8 tensor."""
    bits = _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"packed must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    need = math.ceil(n / 8) * bits if bits < 8 else n
    if packed.numel() < need:
        raise ValueError(f"{n} codes of {bits} bits need {need} bytes, got {packed.numel()}")
    if bits == 8:
        return packed[:n]
    if bits == 4:
        return torch.stack((packed & 15, packed >> 4), -1).reshape(-1)[:n]
    if bits == 2:
        return torch.stack((packed & 3, (packed >> 2) & 3, (packed >> 4) & 3, packed >> 6), -1).reshape(-1)[:n]
    b = packed[:need].view(-1, bits).to(torch.int64)
    acc = (b << (torch.arange(bits, device=b.device) * 8)).sum(1)
    v = (acc[:, None] >> (torch.arange(8, device=b.device) * bits)) & (2 ** bits - 1)
    return v.to(torch.uint8).reshape(-1)[:n]


def _packed_numel(n: int, bits: int) -> int:
    return n if bits == 8 else math.ceil(n / 8) * bits


# ---------------------------------------------------------------------------------------------
# QuantizedTensor, quantize, dequantize
# ---------------------------------------------------------------------------------------------

def _blocks_shape(shape: tuple[int, ...], granularity: str, group_size: int | None) -> tuple[int, int, int]:
    """(R, G, K): R rows with one scale per group, G groups per row, K weights per group."""
    n = math.prod(shape)
    if granularity == "tensor":
        return 1, 1, n
    rows = shape[0]
    if granularity == "channel":
        return rows, 1, n // rows
    return rows, (n // rows) // group_size, group_size


@dataclass
class QuantizedTensor:
    """A quantized tensor: packed integer codes + scales (+ zero points).

    ``codes``: 1-D uint8, the packed codes (:func:`pack_codes`); unpacked they are unsigned
    ``bits``-bit numbers. ``scales``: (R, G) in ``scale_dtype``, one per block (R = 1 for "tensor",
    rows for "channel"/"group"; G = 1 or the number of groups per row). ``zero_points``: (R, G) uint8
    for asymmetric schemes, else None. Symmetric int codes are stored with an offset of
    ``2**(bits-1)`` so they are unsigned: the signed code is ``code - 2**(bits-1)``. NF4 codes are
    indices into :func:`nf4_codebook`.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor | None
    bits: int
    shape: tuple[int, ...]
    symmetric: bool = True
    granularity: str = "tensor"
    group_size: int | None = None
    format: str = "int"
    dtype: torch.dtype = torch.float32

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def blocks(self) -> tuple[int, int, int]:
        return _blocks_shape(self.shape, self.granularity, self.group_size)

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes + scales + zero points."""
        total = self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()
        if self.zero_points is not None:
            total += self.zero_points.numel() * self.zero_points.element_size()
        return total

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, scales and zero points included."""
        return 8 * self.nbytes / self.numel

    def int_codes(self) -> torch.Tensor:
        """The codes unpacked, as int16 of ``shape``: signed for symmetric int, else unsigned."""
        q = unpack_codes(self.codes, self.bits, self.numel).to(torch.int16)
        if self.format == "int" and self.symmetric:
            q = q - 2 ** (self.bits - 1)
        return q.reshape(self.shape)

    def step(self) -> torch.Tensor:
        """The largest gap between neighbouring representable values, per element (float32 of
        ``shape``): round-to-nearest errs by at most half of it. For int formats that is the scale."""
        R, G, K = self.blocks
        gap = 1.0 if self.format == "int" else float((_NF4[1:] - _NF4[:-1]).max())
        return (self.scales.float()[..., None] * gap).expand(R, G, K).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self, dtype)


def _check_float_tensor(w, name: str = "w") -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (the weights to quantize), got dtype {w.dtype}; "
                        "integer tensors are already quantized")
    if w.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)}); nothing to quantize")


def _check_scheme(bits, granularity, group_size, fmt, shape, symmetric=True, scale_dtype="float32") -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    _check_bits(bits)
    if fmt == "nf4" and bits != 4:
        raise ValueError(f"format='nf4' is a 4-bit format: bits must be 4, got {bits}")
    if fmt == "nf4" and not symmetric:
        raise ValueError("format='nf4' is scaled by each block's absmax (symmetric); pass symmetric=True")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if _scale_dtype(scale_dtype) is None:
        raise ValueError(f"scale_dtype must be one of {tuple(SCALE_DTYPES)}, got {scale_dtype!r}")
    if granularity in ("channel", "group") and len(shape) != 2:
        raise ValueError(f"granularity={granularity!r} needs a 2-D (out_features, in_features) tensor, got shape "
                         f"{tuple(shape)}; use granularity='tensor' or reshape")
    if granularity == "group":
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"granularity='group' needs a positive int group_size, got {group_size!r}")
        if shape[-1] % group_size:
            divisors = [d for d in (16, 32, 64, 128, 256) if shape[-1] % d == 0]
            raise ValueError(f"group_size={group_size} does not divide the row width {shape[-1]} (shape "
                             f"{tuple(shape)}); choose a divisor, e.g. one of {divisors or [shape[-1]]}")
    elif group_size is not None:
        raise ValueError(f"group_size={group_size!r} only applies to granularity='group' (got {granularity!r})")


def _scale_dtype(scale_dtype) -> torch.dtype | None:
    if isinstance(scale_dtype, torch.dtype):
        return scale_dtype if scale_dtype in SCALE_DTYPES.values() else None
    return SCALE_DTYPES.get(scale_dtype)


def _store_scale(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast scales to their storage dtype, rounding *up*, so that codes computed with the stored scale
    never need clipping (|w| / s <= qmax still holds)."""
    stored = s.to(dtype)
    if dtype != torch.float32:
        finfo = torch.finfo(dtype)
        stored = stored.clamp(min=finfo.tiny, max=finfo.max)
        low = stored.float() < s
        if low.any():
            stored = torch.where(low, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    return stored


def _block_params(x3: torch.Tensor, bits: int, symmetric: bool, fmt: str, dtype: torch.dtype):
    """Scales (R, G) and zero points (R, G) uint8 or None, for blocks x3 (R, G, K) in float32."""
    if fmt == "nf4" or symmetric:
        amax = x3.abs().amax(-1)
        qmax = 1.0 if fmt == "nf4" else float(2 ** (bits - 1) - 1)
        s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # an all-zero block: any scale works
        return _store_scale(s, dtype), None
    qmax = float(2 ** bits - 1)
    lo = x3.amin(-1).clamp(max=0.0)  # the range always contains 0, so 0 is exactly representable
    hi = x3.amax(-1).clamp(min=0.0)
    s = torch.where(hi > lo, (hi - lo) / qmax, torch.ones_like(hi))
    s = _store_scale(s, dtype)
    z = torch.round(-lo / s.float()).clamp(0, qmax).to(torch.uint8)
    return s, z


def _quantize_blocks(x3: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bits: int, symmetric: bool,
                     fmt: str) -> torch.Tensor:
    """Unsigned uint8 codes (R, G, K) of float blocks x3 with scales/zero points (R, G)."""
    sf = s.float()[..., None]
    if fmt == "nf4":
        return torch.bucketize(x3 / sf, _NF4_MID.to(x3.device)).to(torch.uint8)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        q = torch.round(x3 / sf).clamp(-qmax, qmax) + 2 ** (bits - 1)
        return q.to(torch.uint8)
    q = torch.round(x3 / sf) + z.float()[..., None]
    return q.clamp(0, 2 ** bits - 1).to(torch.uint8)


def _dequantize_blocks(u: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bits: int, symmetric: bool,
                       fmt: str) -> torch.Tensor:
    """Float32 values of unsigned codes u (R, G, K)."""
    sf = s.float()[..., None]
    if fmt == "nf4":
        return _NF4.to(u.device)[u.long()] * sf
    if symmetric:
        return (u.float() - 2 ** (bits - 1)) * sf
    return (u.float() - z.float()[..., None]) * sf


def quantize(w: torch.Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "tensor",
             group_size: int | None = None, *, format: str = "int", scale_dtype: str | torch.dtype = "float32"
             ) -> QuantizedTensor:
    """Round-to-nearest quantization of ``w`` to ``bits`` bits.

    symmetric=True (absmax): ``s = max|w| / (2**(bits-1) - 1)``, codes in ``[-qmax, qmax]``, zero point 0.
    symmetric=False (zero point): the block's range ``[min(w, 0), max(w, 0)]`` is cut into ``2**bits - 1``
    steps; ``z = round(-min / s)``, so 0 is exact and an all-positive block uses all ``2**bits`` levels.
    granularity: "tensor" (one scale), "channel" (one per row of a 2-D weight), "group" (one per
    ``group_size`` consecutive weights of a row; ``group_size`` must divide the row width).
    format="nf4": NF4 levels times each block's absmax (bits=4, symmetric).
    scale_dtype: how scales are stored ("float32", "float16", "bfloat16"); rounded up, never clipped.

    Round trip: ``|w - dequantize(quantize(w))| <= step / 2`` elementwise (``QuantizedTensor.step()``:
    the scale for int formats). Zero and constant tensors are handled (no division by zero).
    """
    _check_float_tensor(w)
    _check_scheme(bits, granularity, group_size, format, tuple(w.shape), symmetric, scale_dtype)
    x = w.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("w contains inf or nan; quantization needs finite values")
    shape = tuple(w.shape)
    x3 = x.reshape(_blocks_shape(shape, granularity, group_size))
    s, z = _block_params(x3, bits, symmetric, format, _scale_dtype(scale_dtype))
    u = _quantize_blocks(x3, s, z, bits, symmetric, format)
    return QuantizedTensor(pack_codes(u, bits), s, z, bits, shape, symmetric if format == "int" else True,
                           granularity, group_size, format, w.dtype)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The float tensor a :class:`QuantizedTensor` stands for, of its original shape (and dtype, unless
    ``dtype`` is given)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize needs a QuantizedTensor (from quantize), got {type(qt).__name__}")
    R, G, K = qt.blocks
    u = unpack_codes(qt.codes, qt.bits, qt.numel).view(R, G, K)
    w = _dequantize_blocks(u, qt.scales, qt.zero_points, qt.bits, qt.symmetric, qt.format)
    return w.reshape(qt.shape).to(dtype or qt.dtype)


# ---------------------------------------------------------------------------------------------
# Weight-only quantized layers and quantize_model
# ---------------------------------------------------------------------------------------------

@dataclass
class QuantConfig:
    """How :func:`quantize_model` quantizes a model.

    kind: "weight" (weight-only :class:`QuantLinear`, any bits/format), "w8a8" (:class:`W8A8Linear`,
    int8 weights per channel + int8 activations per token) or "llm_int8" (:class:`Int8MixedLinear`,
    W8A8 with outlier features in float, ``threshold``).
    bits, symmetric, granularity, group_size, format, scale_dtype: the scheme (see :func:`quantize`).
    skip: names (regular expressions, matched with ``re.search`` against the module's full name) of
    linear layers left in float. By default the output head ``lm_head``: in the course model it is
    *tied* to the token embedding ``wte`` (one matrix), so quantizing it would also change the
    embedding — and the first and last layers are the most sensitive ones anyway.
    include_embeddings: also quantize ``nn.Embedding`` layers (with a tied head, the one shared matrix
    is quantized once and serves both; weight-only kind only).
    fit_group_size: where ``group_size`` does not divide a layer's width, use the largest divisor of
    the width below it (the course model's 192-wide layers take groups of 64 when asked for 128);
    otherwise such a layer is an error.
    """

    kind: str = "weight"
    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None
    format: str = "int"
    scale_dtype: str = "float32"
    skip: tuple[str, ...] = ("lm_head",)
    include_embeddings: bool = False
    threshold: float = 6.0
    fit_group_size: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("weight", "w8a8", "llm_int8"):
            raise ValueError(f"QuantConfig.kind must be 'weight', 'w8a8' or 'llm_int8', got {self.kind!r}")
        if self.kind != "weight" and (self.bits != 8 or self.format != "int" or not self.symmetric
                                      or self.granularity != "channel" or self.include_embeddings):
            raise ValueError(f"kind={self.kind!r} is int8, symmetric, per channel, linear layers only: leave bits, "
                             "format, symmetric, granularity and include_embeddings at their defaults")
        if not isinstance(self.scale_dtype, str):
            raise TypeError(f"QuantConfig.scale_dtype is a name, one of {tuple(SCALE_DTYPES)}, got {self.scale_dtype!r}")
        # a 2-D shape whose width the group size divides: validates everything except the divisibility
        width = self.group_size if isinstance(self.group_size, int) and self.group_size > 0 else 1
        _check_scheme(self.bits, self.granularity, self.group_size, self.format, (1, width), self.symmetric,
                      self.scale_dtype)
        self.skip = tuple(self.skip)
        for pattern in self.skip:
            re.compile(pattern)
        if not (isinstance(self.threshold, (int, float)) and self.threshold > 0):
            raise ValueError(f"QuantConfig.threshold must be a positive number, got {self.threshold!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable (for checkpoint metadata)."""
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        return cls(**{**d, "skip": tuple(d.get("skip", ("lm_head",)))})

    def describe(self) -> str:
        if self.kind != "weight":
            return {"w8a8": "W8A8 (int8 weights per channel, int8 activations per token)",
                    "llm_int8": f"LLM.int8() (threshold {self.threshold})"}[self.kind]
        fmt = "NF4" if self.format == "nf4" else f"int{self.bits} {'sym' if self.symmetric else 'asym'}"
        gran = f"group {self.group_size}" if self.granularity == "group" else f"per {self.granularity}"
        return f"{fmt}, {gran}"


class QuantLinear(nn.Module):
    """Weight-only quantized ``nn.Linear``: y = x @ dequantize(codes, scales)^T + bias.

    The packed codes, scales and zero points are buffers (``codes``, ``scales``, ``zero_points``),
    so ``state_dict()`` saves the integer codes, not float weights, and a model rebuilt with the
    same :class:`QuantConfig` loads them back exactly. The float weight exists only inside
    ``forward`` (dequantize on the fly); ``weight`` is a computed, read-only float copy. The bias stays
    a float ``nn.Parameter``. Input (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 symmetric: bool = True, granularity: str = "channel", group_size: int | None = None,
                 format: str = "int", scale_dtype: str = "float32", dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__()
        _check_scheme(bits, granularity, group_size, format, (out_features, in_features), symmetric, scale_dtype)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.symmetric, self.granularity, self.group_size = bits, symmetric, granularity, group_size
        self.format, self.scale_dtype, self.compute_dtype = format, scale_dtype, dtype
        R, G, _ = _blocks_shape((out_features, in_features), granularity, group_size)
        n = in_features * out_features
        self.register_buffer("codes", torch.zeros(_packed_numel(n, bits), dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(R, G, dtype=_scale_dtype(scale_dtype), device=device))
        asym = format == "int" and not symmetric
        self.register_buffer("zero_points", torch.zeros(R, G, dtype=torch.uint8, device=device) if asym else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_quantized(cls, qt: QuantizedTensor, bias: torch.Tensor | None = None) -> "QuantLinear":
        if not isinstance(qt, QuantizedTensor) or len(qt.shape) != 2:
            raise TypeError("from_quantized needs a 2-D QuantizedTensor (out_features, in_features)")
        out_f, in_f = qt.shape
        scale_name = next(k for k, v in SCALE_DTYPES.items() if v == qt.scales.dtype)
        layer = cls(in_f, out_f, bias is not None, bits=qt.bits, symmetric=qt.symmetric, granularity=qt.granularity,
                    group_size=qt.group_size, format=qt.format, scale_dtype=scale_name, dtype=qt.dtype,
                    device=qt.codes.device)
        layer.codes.copy_(qt.codes)
        layer.scales.copy_(qt.scales)
        if qt.zero_points is not None:
            layer.zero_points.copy_(qt.zero_points)
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, symmetric: bool = True, granularity: str = "channel",
                    group_size: int | None = None, format: str = "int", scale_dtype: str = "float32") -> "QuantLinear":
        """Quantize an ``nn.Linear`` by round-to-nearest."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        qt = quantize(linear.weight, bits, symmetric, granularity, group_size, format=format, scale_dtype=scale_dtype)
        return cls.from_quantized(qt, linear.bias)

    def quantized(self) -> QuantizedTensor:
        """The stored weight as a :class:`QuantizedTensor` (sharing this layer's buffers)."""
        return QuantizedTensor(self.codes, self.scales, self.zero_points, self.bits,
                               (self.out_features, self.in_features), self.symmetric, self.granularity,
                               self.group_size, self.format, self.compute_dtype)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self.quantized(), dtype)

    @property
    def weight(self) -> torch.Tensor:
        """A float copy of the weight, computed from the codes (read-only: changing it changes nothing)."""
        return self.dequantized_weight()

    def _signed_int8_weight(self) -> torch.Tensor:
        """The 8-bit symmetric codes as signed int8 (out, in) — code u stores q + 128, and u ^ 128 read as
        int8 is q — for torch's weight-only int8 kernel. Cached on the module (one more byte per weight in
        memory, not in the state dict) and rebuilt whenever the codes change (device, storage or version)."""
        key = (self.codes.device, self.codes.data_ptr(), self.codes._version)
        if getattr(self, "_signed_key", None) != key:
            self._signed = (self.codes ^ 128).view(torch.int8).view(self.out_features, self.in_features)
            self._signed_key = key
        return self._signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.format == "int" and self.symmetric and self.granularity == "channel" and self.bits == 8
                and x.dtype == torch.bfloat16 and x.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")
                and not (torch.is_grad_enabled() and x.requires_grad)):
            # bf16 activations on the CPU: torch's fused weight-only int8 kernel reads the int8 codes directly
            # (no float copy of the weight), which is what makes weight-only int8 fast at batch 1
            x2 = x.reshape(-1, self.in_features).contiguous()
            y = torch._weight_int8pack_mm(x2, self._signed_int8_weight(), self.scales.reshape(-1).to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y + self.bias.to(y.dtype) if self.bias is not None else y
        if self.format == "int" and self.symmetric and self.granularity != "group" and self.bits == 8:
            # per-channel int8: scale the output instead of the weight (one multiply per output, not per weight)
            q = self.codes.view(self.out_features, self.in_features).to(x.dtype) - 128
            y = F.linear(x, q) * self.scales.to(x.dtype).reshape(-1)
            return y + self.bias if self.bias is not None else y
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        fmt = "nf4" if self.format == "nf4" else f"int{self.bits}{'' if self.symmetric else ' asym'}"
        gran = f"group={self.group_size}" if self.granularity == "group" else self.granularity
        return f"in_features={self.in_features}, out_features={self.out_features}, {fmt}, {gran}"


class QuantEmbedding(nn.Module):
    """Weight-only quantized ``nn.Embedding`` (one row per token). Each row (token) is a channel, so
    the same codes also serve a tied output head (see :func:`quantize_model`). (B, T) ids -> (B, T, d)."""

    def __init__(self, table: QuantLinear):
        super().__init__()
        self.table = table  # a QuantLinear of shape (num_embeddings, embedding_dim): rows = tokens
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    @property
    def weight(self) -> torch.Tensor:
        return self.table.dequantized_weight()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.table.dequantized_weight())


def _fitted_group_size(config: QuantConfig, width: int | None) -> int | None:
    g = config.group_size
    if g is None or width is None or width % g == 0 or not config.fit_group_size:
        return g
    return max(d for d in range(1, g + 1) if width % d == 0)


def _scheme_kwargs(config: QuantConfig, width: int | None = None) -> dict:
    """The keyword arguments of :func:`quantize` for a layer ``width`` inputs wide."""
    return dict(bits=config.bits, symmetric=config.symmetric, granularity=config.granularity,
                group_size=_fitted_group_size(config, width), format=config.format, scale_dtype=config.scale_dtype)


def _selected_linears(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Linear]]:
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:  # exactly nn.Linear: not our float-weight subclasses
            continue
        if any(re.search(p, name) for p in config.skip):
            continue
        if id(module.weight) in embedding_weights:  # a head tied to an embedding: handled with the embedding
            continue
        out.append((name, module))
    return out


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _make_layer(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    if config.kind == "w8a8":
        return W8A8Linear.from_linear(linear)
    if config.kind == "llm_int8":
        return Int8MixedLinear.from_linear(linear, threshold=config.threshold)
    return QuantLinear.from_linear(linear, **_scheme_kwargs(config, linear.in_features))


def quantize_model(model: nn.Module, config: QuantConfig | None = None, *,
                   layers: dict[str, nn.Module] | None = None) -> nn.Module:
    """Swap the model's ``nn.Linear`` layers for quantized ones, in place; returns the model.

    Which layers: every ``nn.Linear`` whose name matches none of ``config.skip`` (default: all but
    ``lm_head``), and, with ``config.include_embeddings``, the ``nn.Embedding`` layers too. The course
    model's fused projections (``qkv_proj`` stacks q, k, v; ``gate_up_proj`` stacks gate and up) are
    single ``nn.Linear`` s: with per-channel or per-group scales every output row keeps its own scale,
    which is exactly what quantizing q, k and v separately would give (tested).
    ``layers``: ready-made replacements by module name (e.g. from GPTQ) used instead of RTN.
    Works as ``load_checkpoint(..., prepare=lambda m: quantize_model(m, config))``.
    """
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = layers or {}
    targets = _selected_linears(model, config)
    replacements = {name: layers[name] if name in layers else _make_layer(lin, config) for name, lin in targets}
    if config.include_embeddings:
        for name, emb in list(model.named_modules()):
            if not isinstance(emb, nn.Embedding):
                continue
            table = QuantLinear.from_linear(_as_linear(emb.weight), **_scheme_kwargs(config, emb.weight.shape[1]))
            replacements[name] = QuantEmbedding(table)
            for hname, head in model.named_modules():  # heads tied to this embedding share its codes
                if type(head) is nn.Linear and head.weight is emb.weight:
                    tied = QuantLinear(head.in_features, head.out_features, head.bias is not None,
                                       **_scheme_kwargs(config, head.in_features), device=emb.weight.device)
                    tied.codes, tied.scales, tied.zero_points = table.codes, table.scales, table.zero_points
                    if head.bias is not None:
                        tied.bias.data.copy_(head.bias.detach())
                    replacements[hname] = tied
    for name, new in replacements.items():
        _set_module(model, name, new)
    return model


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    lin.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return lin


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the quantized layers in a model."""
    kinds = (QuantLinear, QuantEmbedding, W8A8Linear, Int8MixedLinear)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of everything in the model's ``state_dict`` (parameters and buffers: codes, scales),
    each storage counted once (a tied matrix, or codes shared by an embedding and its head, once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------
# W8A8: int8 weights, int8 activations, integer matmul
# ---------------------------------------------------------------------------------------------

def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row ("per token"): x (N, K) float -> (codes (N, K) int8, scales (N, 1) float32)."""
    _check_float_tensor(x, "x")
    xf = x.float()
    s = (xf.abs().amax(-1, keepdim=True) / 127.0).clamp(min=1e-12)
    return torch.round(xf / s).clamp(-127, 127).to(torch.int8), s


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8 @ b (K, N) int8 -> (M, N) int32 with torch's integer kernel (``torch._int_mm``),
    falling back to an int32 matmul where the kernel does not take the shapes (e.g. CUDA with M <= 16)."""
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul needs int8 operands, got {a.dtype} and {b.dtype}")
    try:
        return torch._int_mm(a, b)
    except (RuntimeError, NotImplementedError):
        return (a.to(torch.int32) @ b.to(torch.int32)) if a.device.type == "cpu" else \
            (a.double() @ b.double()).round().to(torch.int32)


class W8A8Linear(nn.Module):
    """int8 weights (symmetric, per output channel) and int8 activations (symmetric, per token,
    quantized at run time): y = (x_q @ w_q^T) * s_x * s_w + bias, the product accumulated in int32.
    Buffers ``qweight`` (out, in) int8 and ``w_scale`` (out,) float32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("w_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "W8A8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        q, s = quantize_per_token(linear.weight.detach())  # a weight row = an output channel
        layer.qweight.copy_(q)
        layer.w_scale.copy_(s.reshape(-1))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.w_scale[:, None]

    def _int8_part(self, x2: torch.Tensor) -> torch.Tensor:
        xq, sx = quantize_per_token(x2)
        return int8_matmul(xq, self.qweight.t()).float() * sx * self.w_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self._int8_part(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, W8A8"


class Int8MixedLinear(W8A8Linear):
    """LLM.int8() (Dettmers et al. 2022): the input features (columns of x) in which any value has
    |x| > ``threshold`` are multiplied in floating point (with the dequantized int8 weight columns,
    as bitsandbytes does); all other columns go through the int8 path of :class:`W8A8Linear`,
    so one outlier feature no longer sets the quantization scale of every token.
    ``last_outlier_columns`` holds the columns of the last call."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, threshold: float = 6.0, device=None):
        super().__init__(in_features, out_features, bias, device=device)
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.threshold = float(threshold)
        self.last_outlier_columns = torch.zeros(0, dtype=torch.long)

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "Int8MixedLinear":
        base = W8A8Linear.from_linear(linear)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, threshold,
                    device=linear.weight.device)
        layer.load_state_dict(base.state_dict())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        cols = (x2.abs() > self.threshold).any(0).nonzero().flatten()
        self.last_outlier_columns = cols
        if cols.numel():
            x_int = x2.index_fill(1, cols, 0.0)
            w_cols = self.qweight[:, cols].float() * self.w_scale[:, None]  # (out, n_outlier)
            y = self._int8_part(x_int) + x2[:, cols] @ w_cols.t()
        else:
            y = self._int8_part(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, LLM.int8 threshold={self.threshold}"


# ---------------------------------------------------------------------------------------------
# Activation statistics (outliers) and calibration
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def linear_input_absmax(model: nn.Module, *inputs, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Run ``model(*inputs)`` and return {linear name: max |x| per input feature (in_features,)} over all
    tokens: where activation outliers live."""
    stats: dict[str, torch.Tensor] = {}
    wanted = set(names) if names is not None else None
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, QuantLinear, W8A8Linear)) and (wanted is None or name in wanted):
            def hook(mod, args, _name=name):
                a = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0)
                stats[_name] = torch.maximum(stats[_name], a) if _name in stats else a
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return stats


def hessian_from_inputs(x: torch.Tensor) -> torch.Tensor:
    """GPTQ's Hessian of the layer-wise loss ||W X - W_q X||^2: H = 2 X^T X / n for inputs x (..., in)."""
    _check_float_tensor(x, "x")
    x2 = x.reshape(-1, x.shape[-1]).float()
    return 2.0 * x2.t() @ x2 / x2.shape[0]


# ---------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int = 4, symmetric: bool = True,
                  group_size: int | None = None, *, act_order: bool = False, damp: float = 0.01,
                  block_size: int = 128, scale_dtype: str = "float32") -> QuantizedTensor:
    """GPTQ: quantize ``w`` (out, in) column by column, minimising ||(W - W_q) X||^2 for the calibration
    inputs behind ``H`` (in, in) (:func:`hessian_from_inputs`).

    For each column j (in order, or by decreasing H_jj with ``act_order``): round it to the grid,
    then spread its error e_j = (w_j - q_j) / [H^-1]_jj over the columns not yet quantized,
    w_k -= e_j [H^-1]_jk, using the upper Cholesky factor of H^-1 (equivalent to re-inverting H after
    each column, and numerically stable). ``damp`` * mean(diag H) is added to the diagonal first.
    Updates are applied lazily per ``block_size`` columns (the same result, faster).
    Scales: per output channel (``group_size=None``) or per group; without act-order a group's scale is
    chosen when its first column is reached (from the error-updated weights); with act-order the
    groups' scales are fixed up front from the original weights ("static groups"), so groups stay
    contiguous in the original column order and the result has :func:`quantize`'s layout.
    Returns a :class:`QuantizedTensor` that :class:`QuantLinear` holds like any RTN result.
    """
    _check_float_tensor(w)
    if w.dim() != 2:
        raise ValueError(f"gptq_quantize needs a 2-D weight (out, in), got shape {tuple(w.shape)}")
    granularity = "group" if group_size is not None else "channel"
    _check_scheme(bits, granularity, group_size, "int", tuple(w.shape), symmetric, scale_dtype)
    n_out, n_in = w.shape
    if not isinstance(H, torch.Tensor) or H.shape != (n_in, n_in):
        raise ValueError(f"H must be ({n_in}, {n_in}) for a weight with {n_in} input features, "
                         f"got {tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__}")
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1), got {damp}")
    sdt = _scale_dtype(scale_dtype)
    W = w.detach().float().clone()
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n_in, device=H.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(n_in, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    g = group_size or n_in
    n_groups = n_in // g
    S = torch.ones(n_out, n_groups, dtype=sdt, device=W.device)
    Z = torch.zeros(n_out, n_groups, dtype=torch.uint8, device=W.device) if not symmetric else None
    if group_size is None or act_order:  # scales fixed up front from the original weights
        S, Z = _block_params(w.detach().float().reshape(n_out, n_groups, g), bits, symmetric, "int", sdt)
    group_of = (perm // g).tolist()  # the (original) group of each permuted column
    codes = torch.zeros(n_out, n_in, dtype=torch.uint8, device=W.device)
    if group_size is not None:
        block_size = max(g, (block_size // g) * g)  # each group inside one block
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    offset = 2 ** (bits - 1) if symmetric else 0
    Sf = S.float()
    Zf = Z.float() if Z is not None else torch.zeros_like(Sf)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size is not None and not act_order and col % g == 0:
                s_new, z_new = _block_params(W1[:, i:i + g][:, None, :], bits, symmetric, "int", sdt)
                S[:, col // g] = s_new[:, 0]
                Sf[:, col // g] = s_new[:, 0].float()
                if Z is not None:
                    Z[:, col // g] = z_new[:, 0]
                    Zf[:, col // g] = z_new[:, 0].float()
            gi = group_of[col]
            s_col, z_col = Sf[:, gi], Zf[:, gi]
            w_col = W1[:, i]
            c = (torch.round(w_col / s_col) + z_col).clamp_(lo, hi)  # the same rounding as quantize()
            codes[:, col] = (c + offset).to(torch.uint8)
            err = (w_col - (c - z_col) * s_col) / Hinv1[i, i]
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    out_codes = torch.empty_like(codes)
    out_codes[:, perm] = codes  # back to the original column order
    return QuantizedTensor(pack_codes(out_codes, bits), S, Z, bits, (n_out, n_in), symmetric, granularity,
                           group_size, "int", w.dtype)


class _StopForward(Exception):
    pass


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, calibration: torch.Tensor, config: QuantConfig, *,
                        act_order: bool = False, damp: float = 0.01, batch_size: int = 16,
                        true_sequential: bool = True, progress: bool = False) -> nn.Module:
    """GPTQ on every linear layer :func:`quantize_model` would quantize, block by block, in place.

    ``calibration``: (N, T) token ids. Block after block (``model.blocks``, else all layers at once),
    the calibration batch runs through the model (earlier blocks already quantized, so later layers
    see the inputs they will see at inference time); hooks accumulate H = 2 X^T X / n for each linear
    of the current block, which is then quantized by :func:`gptq_quantize`. With ``true_sequential``
    (the reference implementation's ``--true-sequential``) the linears *inside* a block are also done
    one after another in the order the forward pass calls them, so e.g. ``down_proj``'s Hessian comes
    from the outputs of the already-quantized ``gate_up_proj``; without it, all linears of a block take
    their Hessians from the block's float inputs in one pass. Only ``config.kind="weight"`` with int
    format. Returns the model with :class:`QuantLinear` layers.
    """
    if config.kind != "weight" or config.format != "int":
        raise ValueError("GPTQ here produces weight-only int codes: use QuantConfig(kind='weight', format='int')")
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise ValueError("calibration must be a (N, T) tensor of token ids (torch.long)")
    if not isinstance(true_sequential, bool):
        raise TypeError(f"true_sequential must be True or False, got {true_sequential!r}")
    targets = dict(_selected_linears(model, config))
    blocks = list(getattr(model, "blocks", []))
    groups: list[tuple[nn.Module | None, list[str]]] = []
    for block in blocks:
        names = [n for n, m in targets.items() if any(m is mm for mm in block.modules())]
        if names:
            groups.append((block, names))
    rest = [n for n in targets if not any(n in names for _, names in groups)]
    if rest:
        groups.append((None, rest))
    was_training = model.training
    model.eval()
    it = groups
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(groups, desc="GPTQ", unit="block")
    device = next(model.parameters()).device
    calibration = calibration.to(device)

    def run_calibration(block, hooks):
        if block is not None:
            def stop(mod, args, out):
                raise _StopForward
            hooks.append(block.register_forward_hook(stop))
        try:
            for i in range(0, len(calibration), batch_size):
                try:
                    model(calibration[i:i + batch_size])
                except _StopForward:
                    pass
        finally:
            for h in hooks:
                h.remove()

    def call_order(block, names):
        """The block's target linears in the order one forward pass calls them (never-called ones last)."""
        order: list[str] = []
        hooks = [targets[n].register_forward_pre_hook(lambda mod, args, _n=n: order.append(_n) if _n not in order
                                                      else None) for n in names]
        if block is not None:
            def stop(mod, args, out):
                raise _StopForward
            hooks.append(block.register_forward_hook(stop))
        try:
            model(calibration[:1])
        except _StopForward:
            pass
        finally:
            for h in hooks:
                h.remove()
        return order + [n for n in names if n not in order]

    for block, names in it:
        stages = [[n] for n in call_order(block, names)] if true_sequential else [names]
        for stage in stages:
            _gptq_stage(model, targets, block, stage, calibration, config, act_order, damp, run_calibration)
    if config.include_embeddings:
        quantize_model(model, config)  # the embeddings by RTN (no Hessian for a lookup table)
    model.train(was_training)
    return model


def _gptq_stage(model, targets, block, names, calibration, config, act_order, damp, run_calibration):
    """Accumulate the Hessians of ``names`` over the calibration set, then GPTQ-quantize and swap them in."""
    H = {n: torch.zeros(targets[n].in_features, targets[n].in_features,
                        device=targets[n].weight.device) for n in names}
    count = {n: 0 for n in names}
    hooks = []
    for n in names:
        def hook(mod, args, _n=n):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            m = x.shape[0]
            H[_n] *= count[_n] / (count[_n] + m)
            H[_n] += 2.0 / (count[_n] + m) * (x.t() @ x)
            count[_n] += m
        hooks.append(targets[n].register_forward_pre_hook(hook))
    run_calibration(block, hooks)
    new = {}
    for n in names:
        lin = targets[n]
        qt = gptq_quantize(lin.weight, H[n], config.bits, config.symmetric,
                           _fitted_group_size(config, lin.in_features),
                           act_order=act_order, damp=damp, scale_dtype=config.scale_dtype)
        new[n] = QuantLinear.from_quantized(qt, lin.bias)
    for n, layer in new.items():
        _set_module(model, n, layer)


# ---------------------------------------------------------------------------------------------
# QAT: fake quantization with a straight-through estimator
# ---------------------------------------------------------------------------------------------

def fake_quantize(w: torch.Tensor, bits: int = 4, symmetric: bool = True, granularity: str = "channel",
                  group_size: int | None = None, format: str = "int") -> torch.Tensor:
    """``dequantize(quantize(w))`` in the forward pass, identity in the backward pass (straight-through
    estimator): ``w + (q(w) - w).detach()``. Rounding has zero gradient almost everywhere; the STE
    lets the loss gradient reach the float "shadow" weights, which training then moves so that their
    *rounded* values work well."""
    _check_float_tensor(w)
    _check_scheme(bits, granularity, group_size, format, tuple(w.shape), symmetric)
    x3 = w.detach().float().reshape(_blocks_shape(tuple(w.shape), granularity, group_size))
    s, z = _block_params(x3, bits, symmetric, format, torch.float32)
    u = _quantize_blocks(x3, s, z, bits, symmetric, format)  # = dequantize(quantize(w)), without packing the codes
    q = _dequantize_blocks(u, s, z, bits, symmetric, format).reshape(w.shape).to(w.dtype)
    return w + (q - w).detach()


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses the fake-quantized weight (:func:`fake_quantize`); the float
    weight is the trainable parameter."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 symmetric: bool = True, granularity: str = "channel", group_size: int | None = None,
                 format: str = "int", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _check_scheme(bits, granularity, group_size, format, (out_features, in_features), symmetric)
        self.qkw = dict(bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size, format=format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quantize(self.weight, **self.qkw), self.bias)


def prepare_qat(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Swap the layers :func:`quantize_model` would quantize for :class:`FakeQuantLinear` sharing the
    same weight and bias parameters (an optimizer built before or after sees the same tensors)."""
    if config.kind != "weight":
        raise ValueError("QAT here trains weight-only schemes: use QuantConfig(kind='weight', ...)")
    for name, lin in _selected_linears(model, config):
        kw = _scheme_kwargs(config, lin.in_features)
        kw.pop("scale_dtype")
        fq = FakeQuantLinear(lin.in_features, lin.out_features, lin.bias is not None, device="meta", **kw)
        fq.weight = lin.weight
        fq.bias = lin.bias
        _set_module(model, name, fq)
    return model


def convert_qat(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace each :class:`FakeQuantLinear` by a :class:`QuantLinear` holding the codes of its trained
    weight: the converted model computes what the fake-quantized one did (tested)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            qt = quantize(module.weight, module.qkw["bits"], module.qkw["symmetric"], module.qkw["granularity"],
                          module.qkw["group_size"], format=module.qkw["format"], scale_dtype=config.scale_dtype)
            _set_module(model, name, QuantLinear.from_quantized(qt, module.bias))
    return model


# ---------------------------------------------------------------------------------------------
# Floating-point formats
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: sign bit, ``exponent_bits``, ``mantissa_bits`` (stored fraction).

    A normal number is ``(-1)^sign * 2^(e - bias) * 1.fraction``; ``max`` is the largest finite value,
    ``min_normal`` the smallest normal one, ``min_subnormal`` the smallest positive value, ``eps``
    the gap between 1 and the next value (relative precision 2^-mantissa_bits)."""

    name: str
    dtype: torch.dtype
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max: float
    min_normal: float
    min_subnormal: float
    eps: float
    note: str = ""


def _make_format(name: str, dtype: torch.dtype, e: int, m: int, note: str) -> FloatFormat:
    fi = torch.finfo(dtype)
    return FloatFormat(name, dtype, fi.bits, e, m, float(fi.max), float(fi.smallest_normal),
                       float(fi.smallest_normal) * 2.0 ** -m, float(fi.eps), note)


FLOAT_FORMATS: dict[str, FloatFormat] = {
    "fp32": _make_format("fp32", torch.float32, 8, 23, "training master weights; the reference"),
    "fp16": _make_format("fp16", torch.float16, 5, 10, "more precision, small range: needs loss scaling to train"),
    "bf16": _make_format("bf16", torch.bfloat16, 8, 7, "fp32's range with 8 bits of precision: trains without scaling"),
    "fp8_e4m3": _make_format("fp8_e4m3", torch.float8_e4m3fn, 4, 3, "fp8 for weights/activations (forward)"),
    "fp8_e5m2": _make_format("fp8_e5m2", torch.float8_e5m2, 5, 2, "fp8 for gradients (range over precision)"),
}


def float_format(name: str) -> FloatFormat:
    """One of :data:`FLOAT_FORMATS` by name."""
    if name not in FLOAT_FORMATS:
        raise ValueError(f"unknown float format {name!r}; choose one of {tuple(FLOAT_FORMATS)}")
    return FLOAT_FORMATS[name]


def representable_values(name: str, positive: bool = True) -> torch.Tensor:
    """Every finite value of a 16- or 8-bit float format, ascending, as float64 (only the positive
    ones with ``positive=True``). fp32 has too many to list."""
    fmt = float_format(name)
    if fmt.bits == 32:
        raise ValueError("fp32 has 2**32 bit patterns: representable_values lists 8- and 16-bit formats only")
    if fmt.bits == 16:
        raw = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(fmt.dtype)
    else:
        raw = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).view(fmt.dtype)
    v = raw.double()
    v = v[torch.isfinite(v)]
    if positive:
        v = v[v > 0]
    return torch.unique(v)


def round_to_format(x: torch.Tensor, name: str, saturate: bool = True) -> torch.Tensor:
    """``x`` rounded to the nearest value of a float format and back to ``x``'s dtype. ``saturate``
    clamps to ±max first (fp8 kernels do; without it fp16 overflows to inf)."""
    _check_float_tensor(x, "x")
    fmt = float_format(name)
    y = x.clamp(-fmt.max, fmt.max) if saturate else x
    return y.to(fmt.dtype).to(x.dtype)
