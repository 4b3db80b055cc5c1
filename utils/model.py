"""The course's decoder-only transformer, small and flat (in the spirit of nanoGPT's model.py).

Read top to bottom:

- :class:`GPTConfig` — a dataclass of hyper-parameters, validated strictly on creation;
- the pieces of a block: :class:`LayerNorm`, :class:`RMSNorm` (:func:`make_norm`), :class:`MLP`,
  and :class:`Block` (attention + MLP, each a residual branch; attention is
  ``utils.attention.MultiHeadAttention``);
- :class:`GPT` — the language model: ``forward(idx, targets=None) -> (logits, loss)``, weight tying,
  GPT-2 initialisation, a :class:`utils.kv_cache.KVCache` for generation, padded batches
  (``attention_mask`` + ``position_ids``), ``hidden_states`` for classification heads and
  embeddings, ``past_key_values`` for prefix tuning, auxiliary losses from a replaced MLP (Mixture
  of Experts), and ``from_hf_gpt2`` to load Hugging Face GPT-2 weights (checked logit-for-logit).

Elsewhere: positional encodings in ``utils.positions``, the KV cache in ``utils.kv_cache``, the
BERT-like and T5-like models in ``utils.encoders``, parameter counting in ``utils.params``.
All layers are plain ``nn.Linear`` / ``nn.Embedding`` so that later notebooks (LoRA, quantization)
can swap them; ``block.mlp`` can be replaced by any module (see :class:`Block`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.attention import ATTENTION_IMPLS, MultiHeadAttention
from utils.checks import check_bool, check_number, is_int, is_number
from utils.kv_cache import KVCache
from utils.moe import MoELayer, check_moe_fields, moe_config
from utils.positions import LearnedPositionalEmbedding, RotaryEmbedding

__all__ = ["GPTConfig", "LayerNorm", "RMSNorm", "make_norm", "MLP", "Block", "GPT"]

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu", "swiglu")
POSITIONS = ("learned", "rope")
NORM_POSITIONS = ("pre", "post")


def _swiglu_hidden(n_embd: int, multiple_of: int = 32) -> int:
    """Default SwiGLU width: 2/3 of 4 * n_embd (same parameter count as a 4x GELU MLP, since SwiGLU
    has three matrices instead of two), rounded up to a multiple of ``multiple_of`` (Llama does this)."""
    hidden = int(8 * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class GPTConfig:
    """Hyper-parameters of the course's transformers.

    vocab_size: number of token ids. block_size: context length (maximum sequence length for learned
    positions; the trained length for RoPE). n_layer, n_head, n_embd: depth, heads, width.
    n_kv_head: key/value heads for grouped-query attention (None = n_head; 1 = multi-query); the
    value in use is :attr:`resolved_n_kv_head`.
    dropout: on embeddings, attention weights and residual branches (GPT-2's embd/attn/resid_pdrop);
    attn_dropout: a different rate for the attention weights only (None = dropout; 0 keeps PyTorch's
    fused attention kernel on CPU, which has no dropout). bias: biases in Linear layers and
    LayerNorm. norm: "layernorm" | "rmsnorm". norm_position: "pre" (GPT-2 and later) | "post"
    (original Transformer). mlp: "gelu" (tanh approximation, as GPT-2) | "relu" | "swiglu".
    ffn_hidden: MLP width (None = 4 * n_embd, or ~8/3 * n_embd for SwiGLU); the value in use is
    :attr:`resolved_ffn_hidden`. pos: "learned" | "rope". rope_base: RoPE's base (> 0).
    tie_weights: the output layer shares the token-embedding matrix. attn_impl: "torch" (PyTorch's
    fused attention kernel) | "ours" (utils.attention.scaled_dot_product_attention; same numbers).
    Mixture of Experts (:mod:`utils.moe`): n_expert routed experts (0 = dense), top_k per token,
    moe_layers (layer indices; None = every layer), expert_hidden (None = resolved_ffn_hidden),
    capacity_factor (None = no limit), router ("topk" | "noisy_topk" | "expert_choice"),
    aux_loss_coef, z_loss_coef, n_shared_expert (always-on experts), moe_hybrid (a dense MLP of width
    resolved_ffn_hidden mixed with the experts by learned coefficients), routed_scaling_factor (multiplies
    the routed experts' weighted sum; 1.0 = Mixtral, DeepSeek-V3 uses 2.5).
    smear: previous-token smear (decoder :class:`GPT` only): each position's token embedding plus a
    learned per-channel multiple (initialised to 0) of the previous position's, as modded-nanogpt's
    "smear". Every layer then sees the previous token, so a single attention layer can match "the
    token before" (the first half of an induction head); a benchmark lever, for whole sequences only
    (KV-cache decoding, past_key_values and attention_mask are refused).

    Every field is checked in :meth:`validate` (run on creation): a later field (e.g. Mixture of
    Experts) adds its check there.
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
    # Mixture of Experts (utils.moe; n_expert = 0: dense MLPs everywhere)
    n_expert: int = 0
    top_k: int = 2
    moe_layers: tuple[int, ...] | None = None
    expert_hidden: int | None = None
    capacity_factor: float | None = None
    router: str = "topk"
    aux_loss_coef: float = 1e-2
    z_loss_coef: float = 1e-3
    n_shared_expert: int = 0
    moe_hybrid: bool = False
    routed_scaling_factor: float = 1.0
    smear: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first bad field, the value and what is allowed."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not is_int(value, allow_numpy=False) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        for name in ("bias", "tie_weights", "smear"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"GPTConfig.{name} must be True or False, got {value!r} (a string such as "
                                f"'no' would count as True)")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head "
                             f"gets n_embd // n_head dimensions; e.g. use n_embd={self.n_head * max(1, self.n_embd // self.n_head)}")
        if self.n_kv_head is not None and (not is_int(self.n_kv_head, allow_numpy=False) or self.n_kv_head < 1
                                           or self.n_head % self.n_kv_head):
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head!r}): "
                             "each key/value head serves a group of query heads (None = n_head)")
        for name, choices in (("norm", NORMS), ("mlp", MLPS), ("pos", POSITIONS),
                              ("norm_position", NORM_POSITIONS), ("attn_impl", ATTENTION_IMPLS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"GPTConfig.{name}={value!r} is not one of {choices}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is None and name == "attn_dropout":
                continue
            if not is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"GPTConfig.{name} must be a number in [0, 1), got {value!r}")
        if self.ffn_hidden is not None and (not is_int(self.ffn_hidden, allow_numpy=False) or self.ffn_hidden < 1):
            raise ValueError(f"GPTConfig.ffn_hidden must be a positive int or None, got {self.ffn_hidden!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim = n_embd // n_head = {self.head_dim} "
                             "must be even")
        for name in ("norm_eps", "rope_base"):
            value = getattr(self, name)
            if not is_number(value) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a finite number > 0, got {value!r}")
        check_moe_fields(self)

    @property
    def moe_layer_indices(self) -> tuple[int, ...]:
        """The layers whose MLP is a Mixture of Experts (empty for a dense model)."""
        if not self.n_expert:
            return ()
        return tuple(range(self.n_layer)) if self.moe_layers is None else tuple(self.moe_layers)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def resolved_n_kv_head(self) -> int:
        """The number of key/value heads in use: ``n_kv_head``, or ``n_head`` when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def resolved_ffn_hidden(self) -> int:
        """The MLP's inner width in use: ``ffn_hidden``, or the default for ``mlp`` when it is None."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return _swiglu_hidden(self.n_embd) if self.mlp == "swiglu" else 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


def _check_config(config, who: str) -> None:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"{who} needs a GPTConfig, got {type(config).__name__}")


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def _check_norm_args(d, eps) -> None:
    if not is_int(d, allow_numpy=False) or d < 1:
        raise ValueError(f"d must be a positive int (the normalised dimension), got {d!r}")
    check_number("eps", eps, 0, low_open=True)


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension (bias optional)."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        _check_norm_args(d, eps)
        check_bool("bias", bias)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring and without bias (Llama)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        _check_norm_args(d, eps)
        self.eps, self.d = eps, d
        self.weight = nn.Parameter(torch.ones(d))
        # eps / d, so that sum(eps/d + x^2/d) = mean(x^2) + eps comes out of one addcmul and one sum
        self.register_buffer("_eps_over_d", torch.tensor(eps / d), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(f"RMSNorm({self.d}) got x of shape {tuple(x.shape)}")
        # Written out rather than F.rms_norm, which on CPU is a composite of ~10 small ops: this is 5
        # (addcmul, sum, rsqrt, mul, mul), which matters on a decoding step, where a norm is a single
        # vector and op overhead is the whole cost (tests check it equals torch's RMSNorm).
        if x.dtype == torch.float32:  # (a 0-dim buffer in another dtype does not change the result dtype)
            ms_eps = torch.addcmul(self._eps_over_d, x, x, value=1.0 / x.shape[-1]).sum(-1, keepdim=True)
            return x * ms_eps.rsqrt() * self.weight
        xf = x.float()  # low precision: normalise in fp32
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    """The norm layer ``config.norm`` asks for, of width ``n_embd``."""
    _check_config(config, "make_norm")
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
        _check_config(config, "MLP")
        self.kind = config.mlp
        hidden = config.resolved_ffn_hidden
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

    ``block.mlp`` may be replaced by any module mapping (B, T, C) to (B, T, C), or to ``(y, stats)``
    where ``stats`` is a dict with ``"aux_loss"``: a scalar tensor already multiplied by its
    coefficient (e.g. a Mixture of Experts' load-balancing loss). After each forward the block
    keeps those stats in ``block.mlp_stats`` (None when the MLP returned a tensor); :class:`GPT`
    collects them.
    """

    def __init__(self, config: GPTConfig, causal: bool = True, cross: bool = False,
                 rope: RotaryEmbedding | None = None):
        super().__init__()
        _check_config(config, "Block")
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
        self.mlp_stats: dict | None = None

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        stats = None
        if type(out) is tuple:
            if len(out) != 2 or not isinstance(out[1], dict) or not isinstance(out[1].get("aux_loss"), torch.Tensor) \
                    or out[1]["aux_loss"].numel() != 1:
                raise TypeError(f"block.mlp ({type(self.mlp).__name__}) returned a tuple: it must be (y, stats) with "
                                "stats a dict holding 'aux_loss', a scalar tensor")
            out, stats = out
        self.__dict__["mlp_stats"] = stats  # (a plain attribute: skip nn.Module's slower __setattr__)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, position_ids=None, kv_cache=None,
                layer_idx: int | None = None, is_causal: bool | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, rope_cos_sin=None, past_kv=None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). ``context`` (B, S, C) and ``context_mask`` (bool, broadcastable to
        (B, H, T, S)) feed the cross-attention of a decoder block. The other arguments go to the
        self-attention (:class:`utils.attention.MultiHeadAttention`)."""
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), mask=mask, position_ids=position_ids, kv_cache=kv_cache,
                              layer_idx=layer_idx, is_causal=is_causal, rope_cos_sin=rope_cos_sin, past_kv=past_kv)
            if self.cross_attn is not None:
                x = x + self.cross_attn(self.ln_cross(x), context=context, mask=context_mask)
            return x + self._mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, mask=mask, position_ids=position_ids, kv_cache=kv_cache, layer_idx=layer_idx,
                                   is_causal=is_causal, rope_cos_sin=rope_cos_sin, past_kv=past_kv))
        if self.cross_attn is not None:
            x = self.ln_cross(x + self.cross_attn(x, context=context, mask=context_mask))
        return self.ln_2(x + self._mlp(x))


# ---------------------------------------------------------------------------------------------
# Checks and pieces shared with utils.encoders
# ---------------------------------------------------------------------------------------------

def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _check_idx(idx: torch.Tensor, vocab_size: int, name: str = "idx", check_values: bool = True) -> None:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids (B, T), got {type(idx).__name__}; "
                        f"convert a list with torch.tensor([ids])")
    if idx.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(idx.shape)}; add a batch "
                         f"dimension with {name}[None] for a single sequence")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {idx.dtype}")
    if idx.shape[0] == 0:
        raise ValueError(f"{name} is a batch of 0 sequences (shape {tuple(idx.shape)}); give at least one")
    if idx.shape[1] == 0:
        raise ValueError(f"{name} is empty (T = 0)")
    if not check_values or _compiling():  # the value check needs the data; not inside torch.compile graphs
        return
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} holds token id {hi if hi >= vocab_size else lo}, outside [0, vocab_size="
                         f"{vocab_size}); was the text encoded with a different tokenizer?")


def _check_targets(targets, idx_shape: torch.Size, vocab_size: int) -> None:
    """Type and shape; values only off CPU (on CPU an out-of-range target is caught from cross_entropy)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of token ids, got {type(targets).__name__}")
    if targets.shape != idx_shape:
        raise ValueError(f"targets must have the same shape as the input {tuple(idx_shape)}, got "
                         f"{tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids (-100 = ignore), got dtype {targets.dtype}")
    if targets.device.type != "cpu" and not _compiling():
        _check_target_values(targets, vocab_size)


def _check_target_values(targets: torch.Tensor, vocab_size: int) -> None:
    bad = targets[(targets != -100) & ((targets < 0) | (targets >= vocab_size))]
    if bad.numel():
        raise ValueError(f"targets hold token id {int(bad[0])}, outside [0, vocab_size={vocab_size}) "
                         "(-100 marks positions to ignore)")


def _loss(logits: torch.Tensor, targets: torch.Tensor | None, idx_shape: torch.Size) -> torch.Tensor | None:
    """Mean cross-entropy over the positions whose target is not -100 (None without targets)."""
    if targets is None:
        return None
    V = logits.shape[-1]
    _check_targets(targets, idx_shape, V)
    try:
        return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=-100)
    except IndexError:  # CPU: "Target 61 is out of bounds"; say which id and what is allowed
        _check_target_values(targets, V)
        raise


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


def _check_mask_2d(mask, B: int, T: int, name: str) -> torch.Tensor:
    """A (B, T) padding mask (True/1 = real token) as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a (B={B}, T={T}) tensor with True/1 for real tokens and False/0 for "
                        f"padding, got {type(mask).__name__}")
    if mask.dim() != 2 or mask.shape[0] != B:
        raise ValueError(f"{name} must be a (B={B}, T) tensor with True/1 for real tokens and False/0 for "
                         f"padding, got shape {tuple(mask.shape)}")
    if mask.shape[1] != T:
        raise ValueError(f"{name} has {mask.shape[1]} columns, expected {T}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_complex or not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name} must hold only True/False or 1/0 (1 = real token), got dtype {mask.dtype} with "
                         "other values")
    return mask.bool()


# ---------------------------------------------------------------------------------------------
# GPT: the decoder-only language model
# ---------------------------------------------------------------------------------------------

class GPT(nn.Module):
    """Decoder-only transformer language model.

    ``forward(idx (B, T), targets (B, T) or None) -> (logits (B, T, vocab), loss or None)``.
    Keyword-only extras:

    - ``kv_cache``: a :class:`utils.kv_cache.KVCache` (``model.new_kv_cache(B)``) for generation;
    - ``attention_mask``: (B, T) or (B, past + T) bool / 0-1, True = real token; left or right
      padding; padding never changes a real token's output;
    - ``position_ids``: (B, T) or (T,) ints >= 0; by default each row's real tokens are numbered
      0, 1, ... (continuing after what the cache holds);
    - ``past_key_values``: a list (one per layer) of ``(k, v)``, each (B or 1, n_kv_head, P, head_dim):
      P "virtual" prefix positions that every new token attends to (prefix tuning); gradients
      flow into them; they take no positions (the new tokens still start at 0).

    With ``targets``, the loss is the mean cross-entropy (-100 = ignore); in **training mode** the
    auxiliary losses of replaced MLPs (``stats["aux_loss"]``, see :class:`Block`) are added to it.
    After every forward ``model.aux_stats`` is the list of those stats dicts (layer order; empty if
    no MLP returned any) and ``model.loss_parts`` is ``{"lm": cross-entropy, "aux": summed aux
    loss}`` (detached) when targets were given, else None.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        _check_config(config, "GPT")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.rope = (RotaryEmbedding(config.head_dim, config.block_size, base=config.rope_base)
                     if config.pos == "rope" else None)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=True, rope=self.rope) for _ in range(config.n_layer))
        for i in config.moe_layer_indices:  # Mixture-of-Experts layers: the MLP returns (y, stats)
            self.blocks[i].mlp = MoELayer(moe_config(config), n_layer=config.n_layer)
        self.ln_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        _init_weights(self, config.n_layer)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix: token -> vector and vector -> token scores
        # previous-token smear (config.smear): 0 at first, so the model starts as the plain GPT
        self.smear = nn.Parameter(torch.zeros(config.n_embd)) if config.smear else None
        self.aux_stats: list[dict] = []
        self.loss_parts: dict | None = None

    # -- inputs ------------------------------------------------------------------------------------
    def _check_cache(self, kv_cache, B: int) -> None:
        cfg = self.config
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be a KVCache (model.new_kv_cache(B)), got {type(kv_cache).__name__}")
        if kv_cache.dims == (cfg.n_layer, B, cfg.n_kv_head or cfg.n_head, cfg.n_embd // cfg.n_head):
            return
        if kv_cache.batch_size != B or kv_cache.n_layer != cfg.n_layer:
            raise ValueError(f"the KV cache was made for batch {kv_cache.batch_size} and {kv_cache.n_layer} "
                             f"layers, got a batch of {B} for a {cfg.n_layer}-layer model")
        if kv_cache.n_kv_head != cfg.resolved_n_kv_head or kv_cache.head_dim != cfg.head_dim:
            raise ValueError(f"the KV cache holds {kv_cache.n_kv_head} heads of {kv_cache.head_dim} dimensions, "
                             f"this model {cfg.resolved_n_kv_head} of {cfg.head_dim}; make it with model.new_kv_cache")

    def _check_past_key_values(self, past_key_values, B: int, device: torch.device) -> int:
        """Validate prefix keys/values; return the prefix length P."""
        cfg = self.config
        if not isinstance(past_key_values, (list, tuple)) or len(past_key_values) != cfg.n_layer:
            raise ValueError(f"past_key_values must be a list of {cfg.n_layer} (k, v) pairs (one per layer), got "
                             f"{type(past_key_values).__name__} of length {len(past_key_values) if isinstance(past_key_values, (list, tuple)) else '-'}")
        P = None
        for i, pair in enumerate(past_key_values):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"past_key_values[{i}] must be a pair (k, v), got {type(pair).__name__}")
            for name, t in zip("kv", pair):
                if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                    raise TypeError(f"past_key_values[{i}] {name} must be a floating-point tensor, got "
                                    f"{getattr(t, 'dtype', type(t).__name__)}")
                if t.dim() != 4 or t.shape[0] not in (1, B) or t.shape[1] != cfg.resolved_n_kv_head \
                        or t.shape[3] != cfg.head_dim or (P is not None and t.shape[2] != P):
                    raise ValueError(f"past_key_values[{i}] {name} must be (B={B} or 1, n_kv_head="
                                     f"{cfg.resolved_n_kv_head}, P, head_dim={cfg.head_dim}) with the same P in every "
                                     f"layer, got {tuple(t.shape)}")
                if t.device != device:
                    raise ValueError(f"past_key_values[{i}] {name} is on {t.device}, the input on {device}")
                P = t.shape[2]
        return P

    def _prepare(self, idx, kv_cache, attention_mask, position_ids, past_key_values):
        """Embeddings, attention mask and positions for one forward. Returns x (B, T, C), the mask
        (B, 1, T, keys) or None, the positions (int start or tensor), and the new tokens' padding mask."""
        cfg = self.config
        # On CPU an out-of-range id makes the embedding lookup raise IndexError, turned below into the
        # same clear message, so the happy path skips a pass over the ids (decoding runs this every
        # token); on GPUs a bad id is a device-side assert, so check first there.
        _check_idx(idx, cfg.vocab_size, check_values=not (isinstance(idx, torch.Tensor) and idx.device.type == "cpu"))
        B, T = idx.shape
        n_prefix = 0 if past_key_values is None else self._check_past_key_values(past_key_values, B, idx.device)
        past = 0
        if kv_cache is not None:
            self._check_cache(kv_cache, B)
            past = kv_cache.length
            if past + T > kv_cache.max_len:
                raise ValueError(f"the KV cache is full: {past} cached + {T} new > max_len {kv_cache.max_len}; call "
                                 "cache.trim(keep) to drop the oldest positions, or allocate a longer cache "
                                 "(model.new_kv_cache(batch_size, max_len=...))")
        elif T > cfg.block_size:
            raise ValueError(f"sequence length {T} is longer than the context window block_size="
                             f"{cfg.block_size}; crop the input to its last {cfg.block_size} tokens")
        total = past + T
        if self.smear is not None and (kv_cache is not None or past_key_values is not None
                                       or attention_mask is not None):
            raise NotImplementedError("GPTConfig.smear=True mixes each token with the one before it, which a KV "
                                      "cache, past_key_values or a padding mask would have to carry; this model "
                                      "scores whole sequences only (generate with use_cache=False, no padding)")
        try:
            x = self.wte(idx)
        except IndexError:
            _check_idx(idx, cfg.vocab_size)  # raises the clear error
            raise
        if self.smear is not None:  # x_t + smear * x_{t-1} (the first position has no token before it)
            x = x + self.smear.to(x.dtype) * F.pad(x, (0, 0, 1, 0))[:, :-1]

        # Padding: which keys are real (B, total) and which new tokens are (B, T). Everything that
        # can fail is checked before the cache's padding record is written (at the end).
        pad = pad_new = None
        cache_pad = kv_cache is not None and (attention_mask is not None or kv_cache.pad_mask is not None)
        if attention_mask is not None:
            if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and attention_mask.shape[1] == total:
                am = _check_mask_2d(attention_mask, B, total, "attention_mask")
            else:
                am = _check_mask_2d(attention_mask, B, T, "attention_mask (B, past + T) or (B, T)")
            pad_new = am[:, am.shape[1] - T:]
            pad = am if kv_cache is None else None
        elif cache_pad:
            pad_new = torch.ones(B, T, dtype=torch.bool, device=idx.device)

        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dtype.is_floating_point or \
                    position_ids.dtype == torch.bool or position_ids.shape not in ((B, T), (T,)):
                raise ValueError(f"position_ids must be an integer tensor (B={B}, T={T}) or (T,), got "
                                 f"{getattr(position_ids, 'shape', type(position_ids).__name__)!r}")
            pos = position_ids  # negative ones are refused by the position tables
        elif pad_new is not None:
            if kv_cache is None:
                base = torch.zeros(B, dtype=torch.long, device=idx.device)
            elif kv_cache.n_real is not None:
                base = kv_cache.n_real
            else:
                base = torch.full((B,), kv_cache.next_position, dtype=torch.long, device=idx.device)
            pos = (base[:, None] + pad_new.long().cumsum(1) - 1).clamp(min=0)
        else:
            pos = kv_cache.next_position if kv_cache is not None else 0

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

        if cache_pad:  # all checks passed: record the new tokens' padding in the cache
            kv_cache._enable_padding()
            kv_cache.pad_mask[:, past:total] = pad_new
            pad = kv_cache.pad_mask[:, :total]

        mask = None
        if pad is not None:
            if n_prefix:  # prefix keys are always visible
                pad = torch.cat([pad.new_ones(B, n_prefix), pad], dim=1)
            qpos = torch.arange(n_prefix + past, n_prefix + total, device=idx.device)[:, None]
            kpos = torch.arange(n_prefix + total, device=idx.device)[None, :]
            # causal AND key is a real token; every query may always see itself, so a padding query
            # never has an empty row (its output is ignored, but must not be NaN)
            allowed = ((kpos <= qpos) & pad[:, None, :]) | (kpos == qpos)
            mask = allowed[:, None]  # (B, 1, T, prefix + past + T)
        return x, mask, pos, pad_new

    # -- forward -----------------------------------------------------------------------------------
    def _trunk(self, idx, kv_cache, attention_mask, position_ids, past_key_values) -> torch.Tensor:
        """Embeddings and blocks: the input of the final norm (B, T, C); sets ``aux_stats``."""
        x, mask, pos, pad_new = self._prepare(idx, kv_cache, attention_mask, position_ids, past_key_values)
        is_causal = mask is None
        # RoPE angles once per forward, shared by every layer (not re-gathered in each)
        rope = self.rope.cos_sin(pos, idx.shape[1], signed=True) if self.rope is not None else None
        stats = []
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, position_ids=pos, kv_cache=kv_cache, layer_idx=i, is_causal=is_causal,
                      rope_cos_sin=rope, past_kv=None if past_key_values is None else past_key_values[i])
            s = block.__dict__.get("mlp_stats")
            if s is not None:
                stats.append(s)
        self.__dict__["aux_stats"] = stats
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
            if kv_cache.n_real is not None and pad_new is not None:
                kv_cache.n_real += pad_new.sum(1)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                past_key_values=None):
        if targets is not None:  # before anything changes (the cache)
            _check_idx(idx, self.config.vocab_size, check_values=False)
            _check_targets(targets, idx.shape, self.config.vocab_size)
            if kv_cache is not None:  # a bad target found after the forward would leave the cache advanced
                _check_target_values(targets, self.config.vocab_size)
        logits = self.lm_head(self.ln_f(self._trunk(idx, kv_cache, attention_mask, position_ids, past_key_values)))
        if targets is None:
            self.__dict__["loss_parts"] = None
            return logits, None
        lm = _loss(logits, targets, idx.shape)
        stats = self.aux_stats
        aux = sum(s["aux_loss"] for s in stats) if stats else lm.new_zeros(())
        self.__dict__["loss_parts"] = {"lm": lm.detach(), "aux": aux.detach()}
        return logits, (lm + aux if self.training and stats else lm)

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, past_key_values=None, *,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (B, T, n_embd): the output of the final norm, what ``lm_head`` reads.

        For classification heads and embeddings. ``attention_mask`` (B, T), True/1 = real token,
        may pad on the left or the right: padding never changes a real token's hidden state (pool
        over the real positions yourself, e.g. the last real token, or a masked mean).
        """
        return self.ln_f(self._trunk(idx, None, attention_mask, position_ids, past_key_values))

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Attention weights of every layer, for plotting: a list of n_layer tensors (B, n_head, T, T)."""
        x, mask, pos, _ = self._prepare(idx, None, attention_mask, None, None)
        maps = []
        for block in self.blocks:
            h = block.ln_1(x) if block.pre_norm else x
            _, w = block.attn(h, mask=mask, position_ids=pos, is_causal=mask is None, need_weights=True)
            maps.append(w)
            x = block(x, mask=mask, position_ids=pos, is_causal=mask is None)
        return maps

    # -- generation support ------------------------------------------------------------------------
    def new_kv_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A pre-allocated :class:`utils.kv_cache.KVCache` for this model (max_len defaults to block_size;
        device and dtype to the model's)."""
        p = self.wte.weight
        return KVCache(self.config.n_layer, batch_size, self.config.resolved_n_kv_head,
                       self.config.block_size if max_len is None else max_len, self.config.head_dim,
                       device=p.device if device is None else device, dtype=p.dtype if dtype is None else dtype)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context window (e.g. load GPT-2 with 1024 positions, use 256)."""
        if not is_int(block_size, allow_numpy=False) or not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be an int in [1, {self.config.block_size}], got {block_size!r}")
        self.config.block_size = block_size
        if self.wpe is not None:
            self.wpe.weight = nn.Parameter(self.wpe.weight.detach()[:block_size].clone())
            self.wpe.max_len = block_size

    # -- loading GPT-2 ---------------------------------------------------------------------------
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
    def from_hf_mixtral(cls, hf_model) -> "GPT":
        """Copy a Hugging Face ``MixtralForCausalLM`` into a new :class:`GPT` with MoE layers
        (see :func:`utils.moe.gpt_from_hf_mixtral`)."""
        from utils.moe import gpt_from_hf_mixtral

        return gpt_from_hf_mixtral(hf_model, cls)

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> "GPT":
        """Download OpenAI's GPT-2 weights via Hugging Face (needs internet; never used by the tests).
        ``name`` is one of "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"."""
        if name not in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
            raise ValueError(f"unknown GPT-2 size {name!r}; choose gpt2, gpt2-medium, gpt2-large or gpt2-xl")
        from transformers import GPT2LMHeadModel

        hf_model = GPT2LMHeadModel.from_pretrained(name)
        return cls.from_hf_gpt2(hf_model.eval())
