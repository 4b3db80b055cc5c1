"""The course's transformer models, small and flat (in the spirit of nanoGPT's model.py).

- :class:`GPTConfig` — a dataclass of hyper-parameters, validated on creation.
- :class:`GPT` — a decoder-only language model: ``forward(idx, targets=None) -> (logits, loss)``,
  weight tying, GPT-2 initialisation, an optional pre-allocated :class:`KVCache` for generation,
  left-padded batches (``attention_mask`` + ``position_ids``), and ``from_hf_gpt2`` to load the
  weights of a Hugging Face ``GPT2LMHeadModel`` (checked logit-for-logit in the tests).
- :class:`EncoderModel` (BERT-like: bidirectional + masked-language-model head) and
  :class:`EncoderDecoder` (T5-like: encoder + decoder with cross-attention), built from the same
  :class:`Block`.
- :func:`count_parameters` (by formula, from a config) and :func:`memory_footprint`;
  :class:`Architecture` + :func:`architecture_parameters` apply the same formula to published models
  (GPT-2, BERT, Llama, Mixtral): see :data:`PUBLISHED_ARCHITECTURES`.

All layers are plain ``nn.Linear`` / ``nn.Embedding`` so that later notebooks (LoRA, quantization)
can swap them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.attention import (ATTENTION_IMPLS, LearnedPositionalEmbedding, MultiHeadAttention,
                             RotaryEmbedding, scaled_dot_product_attention)

__all__ = [
    "GPTConfig", "LayerNorm", "RMSNorm", "MLP", "Block", "KVCache", "GPT", "EncoderModel", "EncoderDecoder",
    "count_parameters", "memory_footprint", "Architecture", "architecture_parameters",
    "PUBLISHED_ARCHITECTURES", "BYTES_PER_PARAM",
]

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu", "swiglu")
POSITIONS = ("learned", "rope")
NORM_POSITIONS = ("pre", "post")


def _swiglu_hidden(n_embd: int, multiple_of: int = 32) -> int:
    """Default SwiGLU width: 2/3 of 4 * n_embd (same parameter count as a 4x GELU MLP, since SwiGLU
    has three matrices instead of two), rounded up to a multiple of ``multiple_of`` (Llama does this)."""
    hidden = int(8 * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass
class GPTConfig:
    """Hyper-parameters of the course's transformers.

    vocab_size: number of token ids. block_size: context length (maximum sequence length for learned
    positions; the trained length for RoPE). n_layer, n_head, n_embd: depth, heads, width.
    n_kv_head: key/value heads for grouped-query attention (None = n_head; 1 = multi-query).
    dropout: on embeddings, attention weights and residual branches (GPT-2's embd/attn/resid_pdrop);
    attn_dropout: a different rate for the attention weights only (None = dropout; 0 keeps PyTorch's
    fused attention kernel on CPU, which has no dropout). bias: biases in Linear layers and
    LayerNorm. norm: "layernorm" | "rmsnorm". norm_position: "pre" (GPT-2 and later) | "post"
    (original Transformer). mlp: "gelu" (tanh approximation, as GPT-2) | "relu" | "swiglu".
    ffn_hidden: MLP width (None = 4 * n_embd, or ~8/3 * n_embd for SwiGLU). pos: "learned" | "rope".
    tie_weights: the output layer shares the token-embedding matrix. attn_impl: "torch" (PyTorch's
    fused attention kernel) | "ours" (utils.attention.scaled_dot_product_attention; same numbers).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    mlp: str = "gelu"
    pos: str = "learned"
    n_kv_head: int | None = None
    ffn_hidden: int | None = None
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    tie_weights: bool = True
    rope_base: float = 10000.0
    attn_impl: str = "torch"
    attn_dropout: float | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head "
                             f"gets n_embd // n_head dimensions; e.g. use n_embd={self.n_head * max(1, self.n_embd // self.n_head)}")
        if self.n_kv_head is not None:
            if not isinstance(self.n_kv_head, int) or self.n_kv_head < 1 or self.n_head % self.n_kv_head:
                raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): "
                                 "each key/value head serves a group of query heads")
        for name, choices in (("norm", NORMS), ("mlp", MLPS), ("pos", POSITIONS),
                              ("norm_position", NORM_POSITIONS), ("attn_impl", ATTENTION_IMPLS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not one of {choices}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.ffn_hidden is not None and (not isinstance(self.ffn_hidden, int) or self.ffn_hidden < 1):
            raise ValueError(f"ffn_hidden must be a positive int or None, got {self.ffn_hidden!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim = n_embd // n_head = {self.head_dim} "
                             "must be even")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden(self) -> int:
        """The MLP's inner width."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return _swiglu_hidden(self.n_embd) if self.mlp == "swiglu" else 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (bias optional)."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring and without bias (Llama)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        # eps / d, so that sum(eps/d + x^2/d) = mean(x^2) + eps comes out of one addcmul and one sum
        self.register_buffer("_eps_over_d", torch.tensor(eps / d), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out rather than F.rms_norm, which on CPU is a composite of ~10 small ops: this is 5
        # (addcmul, sum, rsqrt, mul, mul) and takes half the time on a decoding step, where a norm
        # is a single 192-vector and op overhead is the whole cost (tests check it equals nn.RMSNorm).
        if x.dtype == torch.float32:  # (a 0-dim buffer in another dtype does not change the result dtype)
            ms_eps = torch.addcmul(self._eps_over_d, x, x, value=1.0 / x.shape[-1]).sum(-1, keepdim=True)
            return x * ms_eps.rsqrt() * self.weight
        xf = x.float()  # low precision: normalise in fp32
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class MLP(nn.Module):
    """The position-wise feed-forward network: (B, T, C) -> (B, T, C).

    gelu / relu: ``down_proj(act(up_proj(x)))``. swiglu: ``down_proj(silu(gate) * up)`` where
    ``gate, up = gate_up_proj(x).chunk(2, -1)``: the gate and up matrices stacked in one ``nn.Linear``
    (rows ``[:hidden]`` are the gate), so one matrix multiply computes both.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.hidden
        if self.kind == "swiglu":
            self.gate_up_proj = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)
        else:
            self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "gelu":
            h = F.gelu(self.up_proj(x), approximate="tanh")  # GPT-2's "gelu_new"
        else:
            h = F.relu(self.up_proj(x))
        h = self.down_proj(h)
        return self.dropout(h) if self.dropout.p and self.training else h  # skip the no-op call when decoding


class Block(nn.Module):
    """One transformer block: self-attention, optional cross-attention, MLP, each a residual branch.

    Pre-norm (``x + f(norm(x))``, GPT-2 onwards) or post-norm (``norm(x + f(x))``, the 2017
    Transformer and BERT), from ``config.norm_position``. ``causal=False`` gives the bidirectional
    encoder block; ``cross=True`` adds cross-attention over an encoder's output (decoder block).
    """

    def __init__(self, config: GPTConfig, causal: bool = True, cross: bool = False,
                 rope: RotaryEmbedding | None = None):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.ln_1 = make_norm(config)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, config.n_kv_head, bias=config.bias,
                                       dropout=config.dropout, causal=causal, rope=rope, impl=config.attn_impl,
                                       attn_dropout=config.attn_dropout)
        self.ln_cross = make_norm(config) if cross else None
        self.cross_attn = (MultiHeadAttention(config.n_embd, config.n_head, config.n_kv_head, bias=config.bias,
                                              dropout=config.dropout, cross=True, impl=config.attn_impl,
                                              attn_dropout=config.attn_dropout)
                           if cross else None)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, position_ids=None, kv_cache=None,
                layer_idx: int | None = None, is_causal: bool | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, rope_cos_sin=None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). ``context`` (B, S, C) and ``context_mask`` (bool, broadcastable to
        (B, H, T, S)) feed the cross-attention of a decoder block. The other arguments go to the
        self-attention (:class:`MultiHeadAttention`)."""
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), mask=mask, position_ids=position_ids, kv_cache=kv_cache,
                              layer_idx=layer_idx, is_causal=is_causal, rope_cos_sin=rope_cos_sin)
            if self.cross_attn is not None:
                x = x + self.cross_attn(self.ln_cross(x), context=context, mask=context_mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, mask=mask, position_ids=position_ids, kv_cache=kv_cache, layer_idx=layer_idx,
                                   is_causal=is_causal, rope_cos_sin=rope_cos_sin))
        if self.cross_attn is not None:
            x = self.ln_cross(x + self.cross_attn(x, context=context, mask=context_mask))
        return self.ln_2(x + self.mlp(x))


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------

class KVCache:
    """Pre-allocated key/value cache for all layers of a decoder.

    ``k`` and ``v`` are (n_layer, B, n_kv_head, max_len, head_dim) buffers allocated once; ``length``
    positions are filled. Each attention layer writes its new keys/values in place at
    ``[length : length + T]`` (:meth:`update`, no ``torch.cat`` per step) and attends over
    ``[:length + T]``; the model then calls :meth:`advance`. Create it with ``model.new_kv_cache(B)``.

    Padding (batched prompts of different lengths, left-padded): the model stores the padding mask
    of every cached position in ``pad_mask`` (B, max_len) and counts each row's real tokens in
    ``n_real`` (B,) so that new tokens get the right positions.

    :meth:`trim` drops the oldest entries (a sliding window) when the buffer is full. Positions keep
    counting from where they were (``offset`` = positions dropped so far). With RoPE the cached keys
    carry their rotation, and attention scores depend only on position differences, so decoding
    after a trim is exactly attention over the last ``keep`` cached positions (the Mistral-style
    sliding-window cache). It is not bit-equal to re-running the model on the window from scratch
    in a multi-layer model: the kept keys of layers >= 2 were computed while the dropped tokens were
    still visible. With *learned* positions a trim cannot help: positions beyond ``block_size`` do
    not exist, so generation must instead re-prefill the last ``block_size`` tokens into a fresh cache.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_kv_head", n_kv_head),
                            ("max_len", max_len), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVCache {name} must be a positive int, got {value!r}")
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # one view per layer, made once: indexing self.k[layer, :, :, a:b] on every decoding step
        # costs several view ops per layer, which adds up when a step is ~100 small ops
        # (select, not unbind: unbind's views cannot be written in place while autograd is on)
        self._k_layers = [self.k[i] for i in range(n_layer)]
        self._v_layers = [self.v[i] for i in range(n_layer)]
        self._slot_shape = (batch_size, n_kv_head, head_dim)  # what update() accepts (besides T)
        self.length = 0
        self.offset = 0
        self.pad_mask: torch.Tensor | None = None
        self.n_real: torch.Tensor | None = None

    @property
    def n_layer(self) -> int:
        return self.k.shape[0]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def next_position(self) -> int:
        """Position of the next token for unpadded rows (counts trimmed positions too)."""
        return self.offset + self.length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (f"KVCache(n_layer={self.n_layer}, batch_size={self.batch_size}, n_kv_head={self.k.shape[2]}, "
                f"length={self.length}/{self.max_len}, head_dim={self.k.shape[4]}, offset={self.offset}, "
                f"dtype={self.k.dtype})")

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, head_dim) at [length:length+T] of layer ``layer_idx``; return the
        views (B, n_kv_head, length + T, head_dim) of everything cached for that layer."""
        if k.dim() != 4:
            raise ValueError(f"k must be (B, n_kv_head, T, head_dim), got shape {tuple(k.shape)}")
        B, Hkv, T, hd = k.shape
        start = self.length
        end = start + T
        if end > self.k.shape[3]:
            raise ValueError(f"the KV cache is full: {start} cached + {T} new > max_len "
                             f"{self.k.shape[3]}; call cache.trim(keep) to drop the oldest positions, or "
                             "allocate a longer cache (model.new_kv_cache(batch_size, max_len=...))")
        if (B, Hkv, hd) != self._slot_shape or v.shape != k.shape:
            raise ValueError(f"k/v of shape {tuple(k.shape)} / {tuple(v.shape)} do not fit the cache "
                             f"(B={self.batch_size}, n_kv_head={self.k.shape[2]}, head_dim={self.k.shape[4]})")
        k_layer, v_layer = self._k_layers[layer_idx], self._v_layers[layer_idx]
        k_layer.narrow(2, start, T).copy_(k)
        v_layer.narrow(2, start, T).copy_(v)
        return k_layer.narrow(2, 0, end), v_layer.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (the model calls this once per forward)."""
        self.length += n

    def trim(self, keep: int) -> None:
        """Keep only the newest ``keep`` positions (moved to the front of the buffer)."""
        if not isinstance(keep, int) or not 0 <= keep <= self.length:
            raise ValueError(f"keep must be an int in [0, length={self.length}], got {keep!r}")
        drop = self.length - keep
        if drop == 0:
            return
        self.k[:, :, :, :keep] = self.k[:, :, :, drop:self.length].clone()
        self.v[:, :, :, :keep] = self.v[:, :, :, drop:self.length].clone()
        if self.pad_mask is not None:
            self.pad_mask[:, :keep] = self.pad_mask[:, drop:self.length].clone()
        self.length = keep
        self.offset += drop

    def reset(self) -> None:
        """Empty the cache (the buffers are kept for reuse)."""
        self.length = self.offset = 0
        self.pad_mask = self.n_real = None

    def _enable_padding(self) -> None:
        if self.pad_mask is None:
            B, L = self.k.shape[1], self.k.shape[3]
            self.pad_mask = torch.ones(B, L, dtype=torch.bool, device=self.k.device)
            self.n_real = torch.full((B,), self.offset + self.length, dtype=torch.long, device=self.k.device)


# ---------------------------------------------------------------------------------------------
# Shared pieces of the models
# ---------------------------------------------------------------------------------------------

def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _check_idx(idx: torch.Tensor, vocab_size: int, name: str = "idx", check_values: bool = True) -> None:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor of token ids (B, T), got {type(idx).__name__}")
    if idx.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(idx.shape)}; add a batch "
                         f"dimension with {name}[None] for a single sequence")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {idx.dtype}")
    if idx.shape[1] == 0:
        raise ValueError(f"{name} is empty (T = 0)")
    if not check_values or _compiling():  # the value check needs the data; not inside torch.compile graphs
        return
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} holds token id {hi if hi >= vocab_size else lo}, outside [0, vocab_size="
                         f"{vocab_size}); was the text encoded with a different tokenizer?")


def _loss(logits: torch.Tensor, targets: torch.Tensor | None, idx_shape: torch.Size) -> torch.Tensor | None:
    if targets is None:
        return None
    if targets.shape != idx_shape:
        raise ValueError(f"targets must have the same shape as the input {tuple(idx_shape)}, got "
                         f"{tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def _init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) for Linear and Embedding, zero biases; the projections that
    write into the residual stream (out_proj, down_proj) get std 0.02 / sqrt(2 * n_layer) so that the
    residual stream's variance does not grow with depth."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith("out_proj.weight") or name.endswith("down_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


def _check_mask_2d(mask: torch.Tensor, B: int, T: int, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != B:
        raise ValueError(f"{name} must be a (B={B}, T) tensor with True/1 for real tokens and False/0 for "
                         f"padding, got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.shape[1] != T:
        raise ValueError(f"{name} has {mask.shape[1]} columns, expected {T}")
    return mask.bool()


# ---------------------------------------------------------------------------------------------
# GPT: the decoder-only language model
# ---------------------------------------------------------------------------------------------

class GPT(nn.Module):
    """Decoder-only transformer language model.

    ``forward(idx (B, T), targets (B, T) or None) -> (logits (B, T, vocab), loss or None)``.
    Keyword-only extras for generation: ``kv_cache`` (a :class:`KVCache`), ``attention_mask``
    ((B, past + T) or (B, T) bool, True = real token, for left-padded batches) and ``position_ids``
    ((B, T) or (T,); by default computed from the mask: each row's real tokens are numbered 0, 1, ...).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.rope = (RotaryEmbedding(config.head_dim, config.block_size, base=config.rope_base)
                     if config.pos == "rope" else None)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=True, rope=self.rope) for _ in range(config.n_layer))
        self.ln_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        _init_weights(self, config.n_layer)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix: token -> vector and vector -> token scores

    # -- forward ---------------------------------------------------------------------------------
    def _prepare(self, idx, kv_cache, attention_mask, position_ids):
        """Embeddings, the attention mask and positions for one forward (shared by forward and
        attention_weights). Returns x (B, T, C), mask or None, positions (int start or tensor), pad_new."""
        cfg = self.config
        # On CPU an out-of-range id makes the embedding lookup raise IndexError, turned below into the
        # same clear message, so the happy path skips a pass over the ids (decoding runs this every
        # token); on GPUs a bad id is a device-side assert, so check first there.
        _check_idx(idx, cfg.vocab_size, check_values=idx.device.type != "cpu")
        B, T = idx.shape
        past = 0
        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(f"kv_cache must be a KVCache (model.new_kv_cache(B)), got {type(kv_cache).__name__}")
            if kv_cache.batch_size != B or kv_cache.n_layer != cfg.n_layer:
                raise ValueError(f"the KV cache was made for batch {kv_cache.batch_size} and {kv_cache.n_layer} "
                                 f"layers, got a batch of {B} for a {cfg.n_layer}-layer model")
            past = kv_cache.length
        elif T > cfg.block_size:
            raise ValueError(f"sequence length {T} is longer than the context window block_size="
                             f"{cfg.block_size}; crop the input to its last {cfg.block_size} tokens")
        total = past + T

        pad = pad_new = None
        if attention_mask is not None:
            if attention_mask.dim() == 2 and attention_mask.shape[1] == total:
                am = _check_mask_2d(attention_mask, B, total, "attention_mask")
            else:
                am = _check_mask_2d(attention_mask, B, T, "attention_mask (B, past + T) or (B, T)")
            pad_new = am[:, am.shape[1] - T:]
            if kv_cache is not None:
                kv_cache._enable_padding()
                kv_cache.pad_mask[:, past:total] = pad_new
                pad = kv_cache.pad_mask[:, :total]
            else:
                pad = am
        elif kv_cache is not None and kv_cache.pad_mask is not None:
            kv_cache.pad_mask[:, past:total] = True
            pad = kv_cache.pad_mask[:, :total]
            pad_new = pad[:, past:]

        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dtype.is_floating_point or \
                    position_ids.shape not in ((B, T), (T,)):
                raise ValueError(f"position_ids must be an integer tensor (B={B}, T={T}) or (T,), got "
                                 f"{getattr(position_ids, 'shape', position_ids)!r}")
            pos = position_ids
        elif pad_new is not None:
            base = kv_cache.n_real if kv_cache is not None else torch.zeros(B, dtype=torch.long, device=idx.device)
            pos = (base[:, None] + pad_new.long().cumsum(1) - 1).clamp(min=0)
        else:
            pos = kv_cache.next_position if kv_cache is not None else 0

        try:
            x = self.wte(idx)
        except IndexError:
            _check_idx(idx, cfg.vocab_size)  # raises the clear error
            raise
        if self.wpe is not None:
            if isinstance(pos, int):
                if pos + T > cfg.block_size:
                    raise ValueError(f"positions {pos}..{pos + T - 1} go beyond the {cfg.block_size} learned positions; "
                                     "a model with learned positions cannot continue past block_size: re-run the last "
                                     "block_size tokens in a fresh cache (or use pos='rope')")
                x = x + self.wpe.weight[pos:pos + T]
            else:
                x = x + self.wpe(pos)
        if self.drop.p and self.training:
            x = self.drop(x)

        mask = None
        if pad is not None:
            qpos = torch.arange(past, total, device=idx.device)[:, None]
            kpos = torch.arange(total, device=idx.device)[None, :]
            # causal AND key is a real token; every query may always see itself, so a padding query
            # never has an empty row (its output is ignored, but must not be NaN)
            allowed = ((kpos <= qpos) & pad[:, None, :]) | (kpos == qpos)
            mask = allowed[:, None]  # (B, 1, T, past + T)
        return x, mask, pos, pad_new

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None):
        x, mask, pos, pad_new = self._prepare(idx, kv_cache, attention_mask, position_ids)
        is_causal = mask is None
        # RoPE angles once per forward, shared by every layer (not re-gathered in each)
        rope = self.rope.cos_sin(pos, idx.shape[1], signed=True) if self.rope is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, position_ids=pos, kv_cache=kv_cache, layer_idx=i, is_causal=is_causal,
                      rope_cos_sin=rope)
        logits = self.lm_head(self.ln_f(x))
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
            if kv_cache.n_real is not None and pad_new is not None:
                kv_cache.n_real += pad_new.sum(1)
        return logits, _loss(logits, targets, idx.shape)

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Attention weights of every layer, for plotting: a list of n_layer tensors (B, n_head, T, T)."""
        x, mask, pos, _ = self._prepare(idx, None, attention_mask, None)
        maps = []
        for block in self.blocks:
            h = block.ln_1(x) if block.pre_norm else x
            a, w = block.attn(h, mask=mask, position_ids=pos, is_causal=mask is None, need_weights=True)
            maps.append(w)
            x = block(x, mask=mask, position_ids=pos, is_causal=mask is None)
        return maps

    # -- generation support ------------------------------------------------------------------------
    def new_kv_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A pre-allocated :class:`KVCache` for this model (max_len defaults to block_size)."""
        p = self.wte.weight
        return KVCache(self.config.n_layer, batch_size, self.config.kv_heads,
                       self.config.block_size if max_len is None else max_len, self.config.head_dim,
                       device=p.device if device is None else device, dtype=p.dtype if dtype is None else dtype)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context window (e.g. load GPT-2 with 1024 positions, use 256)."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in [1, {self.config.block_size}], got {block_size}")
        self.config.block_size = block_size
        if self.wpe is not None:
            self.wpe.weight = nn.Parameter(self.wpe.weight.detach()[:block_size].clone())
            self.wpe.max_len = block_size

    # -- loading GPT-2 -----------------------------------------------------------------------------
    @classmethod
    def from_hf_gpt2(cls, hf_model) -> "GPT":
        """Copy a Hugging Face ``GPT2LMHeadModel``'s weights into a new :class:`GPT`.

        GPT-2 stores its linear layers as ``Conv1D`` with weight (in, out), the transpose of
        ``nn.Linear``'s (out, in); and its attention input projection ``c_attn`` computes q, k, v in
        one (C, 3C) matrix, as our ``qkv_proj`` (transposed).
        """
        hf_cfg = hf_model.config
        if getattr(hf_cfg, "model_type", None) != "gpt2":
            raise TypeError(f"expected a Hugging Face GPT-2 model, got model_type={getattr(hf_cfg, 'model_type', None)!r}")
        act = hf_cfg.activation_function
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ValueError(f"GPT-2 activation {act!r} is not supported: our GELU MLP uses the tanh approximation "
                             "('gelu_new', as every released GPT-2)")
        if getattr(hf_cfg, "scale_attn_by_inverse_layer_idx", False) or not getattr(hf_cfg, "scale_attn_weights", True):
            raise ValueError("only GPT-2's standard attention scaling (1/sqrt(head_dim)) is supported")
        C = hf_cfg.n_embd
        config = GPTConfig(vocab_size=hf_cfg.vocab_size, block_size=hf_cfg.n_positions, n_layer=hf_cfg.n_layer,
                           n_head=hf_cfg.n_head, n_embd=C, dropout=0.0, bias=True, norm="layernorm", mlp="gelu",
                           pos="learned", ffn_hidden=hf_cfg.n_inner or 4 * C, norm_eps=hf_cfg.layer_norm_epsilon)
        param = next(hf_model.parameters())
        model = cls(config).to(device=param.device, dtype=param.dtype)
        sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
        with torch.no_grad():
            model.wte.weight.copy_(sd["wte.weight"])
            model.wpe.weight.copy_(sd["wpe.weight"])
            for i, block in enumerate(model.blocks):
                p = f"h.{i}."
                block.ln_1.weight.copy_(sd[p + "ln_1.weight"]); block.ln_1.bias.copy_(sd[p + "ln_1.bias"])
                block.ln_2.weight.copy_(sd[p + "ln_2.weight"]); block.ln_2.bias.copy_(sd[p + "ln_2.bias"])
                block.attn.qkv_proj.weight.copy_(sd[p + "attn.c_attn.weight"].t())  # Conv1D (C, 3C) -> (3C, C)
                block.attn.qkv_proj.bias.copy_(sd[p + "attn.c_attn.bias"])
                block.attn.out_proj.weight.copy_(sd[p + "attn.c_proj.weight"].t())
                block.attn.out_proj.bias.copy_(sd[p + "attn.c_proj.bias"])
                block.mlp.up_proj.weight.copy_(sd[p + "mlp.c_fc.weight"].t())
                block.mlp.up_proj.bias.copy_(sd[p + "mlp.c_fc.bias"])
                block.mlp.down_proj.weight.copy_(sd[p + "mlp.c_proj.weight"].t())
                block.mlp.down_proj.bias.copy_(sd[p + "mlp.c_proj.bias"])
            model.ln_f.weight.copy_(sd["ln_f.weight"]); model.ln_f.bias.copy_(sd["ln_f.bias"])
            if "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["wte.weight"]):
                raise ValueError("this GPT-2's lm_head is not tied to its token embedding; GPT-2 always ties them")
        model.train(hf_model.training)
        return model

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> "GPT":
        """Download OpenAI's GPT-2 weights via Hugging Face (needs internet; never used by the tests).
        ``name`` is one of "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"."""
        if name not in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
            raise ValueError(f"unknown GPT-2 size {name!r}; choose gpt2, gpt2-medium, gpt2-large or gpt2-xl")
        from transformers import GPT2LMHeadModel

        hf_model = GPT2LMHeadModel.from_pretrained(name)
        return cls.from_hf_gpt2(hf_model.eval())


# ---------------------------------------------------------------------------------------------
# Encoder-only (BERT-like) and encoder-decoder (T5-like)
# ---------------------------------------------------------------------------------------------

class _Embed(nn.Module):
    """Token + (learned) position embeddings and dropout for the encoder / decoder stacks."""

    def __init__(self, config: GPTConfig, wte: nn.Embedding):
        super().__init__()
        self.wte = wte
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.block_size = config.block_size

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} is longer than block_size={self.block_size}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[:T]
        return self.drop(x)


def _key_padding_mask(mask: torch.Tensor | None, B: int, T: int, name: str) -> torch.Tensor | None:
    if mask is None:
        return None
    return _check_mask_2d(mask, B, T, name)[:, None, None, :]  # (B, 1, 1, T): which keys are real


class EncoderModel(nn.Module):
    """BERT-like encoder: bidirectional blocks (every token sees every other) + a masked-LM head.

    ``forward(idx (B, T), targets=None, *, attention_mask=None) -> (logits (B, T, vocab), loss)``.
    For masked language modelling, ``targets`` holds the original token at masked positions and
    -100 elsewhere (ignored by the loss). ``attention_mask`` (B, T): True for real tokens, False for
    padding (padding keys are masked out). ``encode`` returns the final hidden states (B, T, C).
    The MLM head is BERT's: Linear + GELU + norm, then the (tied) output matrix plus a bias.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.embed = _Embed(config, self.wte)
        self.rope = (RotaryEmbedding(config.head_dim, config.block_size, base=config.rope_base)
                     if config.pos == "rope" else None)
        self.blocks = nn.ModuleList(Block(config, causal=False, rope=self.rope) for _ in range(config.n_layer))
        self.ln_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.mlm_dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.mlm_norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        _init_weights(self, config.n_layer)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_idx(idx, self.config.vocab_size)
        mask = _key_padding_mask(attention_mask, *idx.shape, "attention_mask")
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, mask=mask, is_causal=False)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None):
        h = self.encode(idx, attention_mask)
        h = self.mlm_norm(F.gelu(self.mlm_dense(h)))
        logits = self.lm_head(h) + self.mlm_bias
        return logits, _loss(logits, targets, idx.shape)


class EncoderDecoder(nn.Module):
    """T5-like encoder-decoder: a bidirectional encoder reads the source; a causal decoder writes the
    target, attending to the encoder's output through cross-attention in every block.

    ``forward(src (B, S), tgt (B, T), targets=None, *, src_mask=None) -> (logits (B, T, vocab), loss)``:
    ``tgt`` is the decoder input (the target shifted right, starting with a start token) and
    ``targets`` the tokens to predict (-100 = ignore). Encoder and decoder each have ``n_layer``
    blocks and share the token embedding (and the tied output matrix).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.enc_embed = _Embed(config, self.wte)
        self.dec_embed = _Embed(config, self.wte)
        self.rope = (RotaryEmbedding(config.head_dim, config.block_size, base=config.rope_base)
                     if config.pos == "rope" else None)
        self.encoder = nn.ModuleList(Block(config, causal=False, rope=self.rope) for _ in range(config.n_layer))
        self.decoder = nn.ModuleList(Block(config, causal=True, cross=True, rope=self.rope)
                                     for _ in range(config.n_layer))
        pre = config.norm_position == "pre"
        self.enc_ln = make_norm(config) if pre else nn.Identity()
        self.dec_ln = make_norm(config) if pre else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        _init_weights(self, config.n_layer)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) -> memory (B, S, C)."""
        _check_idx(src, self.config.vocab_size, "src")
        mask = _key_padding_mask(src_mask, *src.shape, "src_mask")
        x = self.enc_embed(src)
        for block in self.encoder:
            x = block(x, mask=mask, is_causal=False)
        return self.enc_ln(x)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt (B, T), memory (B, S, C) -> logits (B, T, vocab)."""
        _check_idx(tgt, self.config.vocab_size, "tgt")
        ctx_mask = _key_padding_mask(src_mask, memory.shape[0], memory.shape[1], "src_mask")
        x = self.dec_embed(tgt)
        for block in self.decoder:
            x = block(x, context=memory, context_mask=ctx_mask)
        return self.lm_head(self.dec_ln(x))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None, *,
                src_mask: torch.Tensor | None = None):
        if src.dim() != 2 or tgt.dim() != 2 or src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src (B, S) and tgt (B, T) must be 2-D with the same batch size, got "
                             f"{tuple(src.shape)} and {tuple(tgt.shape)}")
        logits = self.decode(tgt, self.encode(src, src_mask), src_mask)
        return logits, _loss(logits, targets, tgt.shape)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: int, start_id: int, eos_id: int | None = None,
                 src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding (no cache; small models only): returns (B, 1 + n) starting with ``start_id``."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        memory = self.encode(src, src_mask)
        out = torch.full((src.shape[0], 1), start_id, dtype=torch.long, device=src.device)
        for _ in range(min(max_new_tokens, self.config.block_size - 1)):
            logits = self.decode(out, memory, src_mask)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return out


# ---------------------------------------------------------------------------------------------
# Parameter counting and memory
# ---------------------------------------------------------------------------------------------

@dataclass
class Architecture:
    """The hyper-parameters that decide a transformer's parameter count.

    bias: biases in attention and MLP linear layers. norm_bias: LayerNorm has a bias (default: bias,
    for layernorm; RMSNorm never has one). n_positions: rows of a learned position table (0 for
    RoPE). n_token_types, embedding_norm, pooler: BERT's segment embeddings, its LayerNorm after the
    embeddings and its [CLS] pooler. final_norm: a norm after the last block (pre-norm models).
    tied: output matrix shared with the token embedding. n_expert / top_k: Mixture-of-Experts MLPs
    (n_expert copies of the MLP per layer plus a router; top_k of them run per token).
    """

    name: str
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int | None = None
    d_ff: int | None = None
    mlp: str = "gelu"
    norm: str = "layernorm"
    bias: bool = True
    norm_bias: bool | None = None
    n_positions: int = 0
    n_token_types: int = 0
    embedding_norm: bool = False
    final_norm: bool = True
    pooler: bool = False
    tied: bool = True
    n_expert: int = 1
    top_k: int = 1
    router_bias: bool = False
    source: str = ""

    @classmethod
    def from_config(cls, config: GPTConfig, name: str = "GPTConfig") -> "Architecture":
        return cls(name=name, vocab_size=config.vocab_size, d_model=config.n_embd, n_layer=config.n_layer,
                   n_head=config.n_head, n_kv_head=config.n_kv_head, d_ff=config.hidden, mlp=config.mlp,
                   norm=config.norm, bias=config.bias,
                   n_positions=config.block_size if config.pos == "learned" else 0,
                   final_norm=config.norm_position == "pre", tied=config.tie_weights)


def architecture_parameters(arch: Architecture) -> dict[str, int]:
    """Parameter count of an :class:`Architecture` by formula: {"total": ..., "active": ...}.

    "active" counts what one token uses: with a Mixture of Experts only ``top_k`` of the
    ``n_expert`` MLPs run per token, while attention, norms and embeddings are shared.
    """
    d, L = arch.d_model, arch.n_layer
    if arch.mlp not in MLPS or arch.norm not in NORMS:
        raise ValueError(f"mlp must be one of {MLPS} and norm one of {NORMS}, got {arch.mlp!r}, {arch.norm!r}")
    if d % arch.n_head:
        raise ValueError(f"d_model ({d}) must be divisible by n_head ({arch.n_head})")
    if not 1 <= arch.top_k <= arch.n_expert:
        raise ValueError(f"top_k ({arch.top_k}) must be in [1, n_expert={arch.n_expert}]")
    hd = d // arch.n_head
    kv = (arch.n_kv_head or arch.n_head) * hd
    f = arch.d_ff or 4 * d
    b = int(arch.bias)
    norm_bias = (arch.bias if arch.norm_bias is None else arch.norm_bias) and arch.norm == "layernorm"
    norm = d * (1 + int(norm_bias))

    attention = 2 * d * d + 2 * d * kv + b * (2 * d + 2 * kv)  # q, out: d x d; k, v: d x kv
    if arch.mlp == "swiglu":
        expert = 3 * d * f + b * (2 * f + d)  # gate, up: d x f; down: f x d
    else:
        expert = 2 * d * f + b * (f + d)  # up: d x f; down: f x d
    router = (d * arch.n_expert + int(arch.router_bias) * arch.n_expert) if arch.n_expert > 1 else 0
    shared_layer = attention + router + 2 * norm

    embeddings = (arch.vocab_size + arch.n_positions + arch.n_token_types) * d
    embeddings += norm if arch.embedding_norm else 0
    head = 0 if arch.tied else arch.vocab_size * d
    rest = embeddings + head + (norm if arch.final_norm else 0) + ((d * d + d) if arch.pooler else 0)
    return {"total": rest + L * (shared_layer + arch.n_expert * expert),
            "active": rest + L * (shared_layer + arch.top_k * expert)}


def count_parameters(config: GPTConfig) -> int:
    """Number of parameters of ``GPT(config)`` computed from the config alone (tied embeddings once).

    Equals ``sum(p.numel() for p in GPT(config).parameters())`` (tested)."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"count_parameters needs a GPTConfig, got {type(config).__name__}")
    return architecture_parameters(Architecture.from_config(config))["total"]


BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


def memory_footprint(n_params: int) -> dict[str, float]:
    """Bytes needed to hold ``n_params`` weights at each precision (weights only: no activations,
    KV cache, gradients or optimizer state): {"fp32": ..., "bf16": ..., "int8": ..., "int4": ...}."""
    if n_params < 0:
        raise ValueError(f"n_params must be >= 0, got {n_params}")
    return {k: n_params * v for k, v in BYTES_PER_PARAM.items()}


# Published models, with the hyper-parameters from their papers / released configs.
PUBLISHED_ARCHITECTURES: dict[str, Architecture] = {
    "GPT-2 small": Architecture(
        "GPT-2 small", vocab_size=50257, d_model=768, n_layer=12, n_head=12, d_ff=3072, mlp="gelu",
        norm="layernorm", bias=True, n_positions=1024, tied=True,
        source="Radford et al. 2019; Hugging Face config of `gpt2`"),
    "BERT-base": Architecture(
        "BERT-base", vocab_size=30522, d_model=768, n_layer=12, n_head=12, d_ff=3072, mlp="gelu",
        norm="layernorm", bias=True, n_positions=512, n_token_types=2, embedding_norm=True,
        final_norm=False, pooler=True, tied=True,
        source="Devlin et al. 2019; config of `bert-base-uncased` (post-norm, with pooler, no MLM head)"),
    "Llama-2-7B": Architecture(
        "Llama-2-7B", vocab_size=32000, d_model=4096, n_layer=32, n_head=32, n_kv_head=32, d_ff=11008,
        mlp="swiglu", norm="rmsnorm", bias=False, tied=False,
        source="Touvron et al. 2023; config of `Llama-2-7b-hf`"),
    "Mixtral-8x7B": Architecture(
        "Mixtral-8x7B", vocab_size=32000, d_model=4096, n_layer=32, n_head=32, n_kv_head=8, d_ff=14336,
        mlp="swiglu", norm="rmsnorm", bias=False, tied=False, n_expert=8, top_k=2,
        source="Jiang et al. 2024; config of `Mixtral-8x7B-v0.1`"),
}
