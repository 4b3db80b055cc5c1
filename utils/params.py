"""Counting parameters and the memory they take, by formula.

- :class:`Architecture` — the hyper-parameters that decide a transformer's parameter count (a
  superset of :class:`utils.model.GPTConfig`'s: BERT's segment embeddings and pooler, Mixture of
  Experts); :data:`PUBLISHED_ARCHITECTURES` holds GPT-2, BERT, Llama 2 and Mixtral.
- :func:`architecture_parameters` — the count, total and active per token.
- :func:`count_parameters` — the same formula for a ``GPTConfig`` (equals the built model's numel, tested).
- :func:`memory_footprint` and :data:`BYTES_PER_PARAM` — bytes of the weights at each precision.

The KV cache's size is :func:`utils.kv_cache.kv_cache_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.checks import check_bool, check_int, check_number
from utils.model import MLPS, NORMS, GPTConfig

__all__ = ["Architecture", "architecture_parameters", "count_parameters", "memory_footprint", "BYTES_PER_PARAM",
           "PUBLISHED_ARCHITECTURES"]

BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclass
class Architecture:
    """The hyper-parameters that decide a transformer's parameter count (names as in ``GPTConfig``).

    n_embd: width. ffn_hidden: MLP width (None = 4 * n_embd). n_kv_head: key/value heads (None =
    n_head). bias: biases in attention and MLP linear layers. norm_bias: LayerNorm has a bias
    (default: bias, for layernorm; RMSNorm never has one). n_positions: rows of a learned position
    table (0 for RoPE). n_token_types, embedding_norm, pooler: BERT's segment embeddings, its
    LayerNorm after the embeddings and its [CLS] pooler. final_norm: a norm after the last block
    (pre-norm models). tie_weights: output matrix shared with the token embedding. n_expert / top_k:
    Mixture-of-Experts MLPs (n_expert copies of the MLP per layer plus a router; top_k of them run
    per token).
    """

    name: str
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int | None = None
    ffn_hidden: int | None = None
    mlp: str = "gelu"
    norm: str = "layernorm"
    bias: bool = True
    norm_bias: bool | None = None
    n_positions: int = 0
    n_token_types: int = 0
    embedding_norm: bool = False
    final_norm: bool = True
    pooler: bool = False
    tie_weights: bool = True
    n_expert: int = 1
    top_k: int = 1
    router_bias: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Architecture.name must be a str, got {type(self.name).__name__}")
        for field, minimum in (("vocab_size", 1), ("n_embd", 1), ("n_layer", 1), ("n_head", 1), ("n_positions", 0),
                               ("n_token_types", 0), ("n_expert", 1), ("top_k", 1)):
            check_int(f"Architecture.{field}", getattr(self, field), minimum)
        for field in ("n_kv_head", "ffn_hidden"):
            value = getattr(self, field)
            if value is not None:
                check_int(f"Architecture.{field} (or None)", value, 1)
        for field in ("bias", "embedding_norm", "final_norm", "pooler", "tie_weights", "router_bias"):
            check_bool(f"Architecture.{field}", getattr(self, field))
        if self.norm_bias is not None and not isinstance(self.norm_bias, bool):
            raise TypeError(f"Architecture.norm_bias must be True, False or None, got {self.norm_bias!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"Architecture.mlp={self.mlp!r} is not one of {MLPS}")
        if self.norm not in NORMS:
            raise ValueError(f"Architecture.norm={self.norm!r} is not one of {NORMS}")
        if self.n_embd % self.n_head:
            raise ValueError(f"Architecture.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"Architecture.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.top_k > self.n_expert:
            raise ValueError(f"Architecture.top_k ({self.top_k}) must be in [1, n_expert={self.n_expert}]")

    @classmethod
    def from_config(cls, config: GPTConfig, name: str = "GPTConfig") -> "Architecture":
        """The architecture of ``GPT(config)``."""
        if not isinstance(config, GPTConfig):
            raise TypeError(f"Architecture.from_config needs a GPTConfig, got {type(config).__name__}")
        return cls(name=name, vocab_size=config.vocab_size, n_embd=config.n_embd, n_layer=config.n_layer,
                   n_head=config.n_head, n_kv_head=config.n_kv_head, ffn_hidden=config.resolved_ffn_hidden,
                   mlp=config.mlp, norm=config.norm, bias=config.bias,
                   n_positions=config.block_size if config.pos == "learned" else 0,
                   final_norm=config.norm_position == "pre", tie_weights=config.tie_weights)


def architecture_parameters(arch: Architecture) -> dict[str, int]:
    """Parameter count of an :class:`Architecture` by formula: {"total": ..., "active": ...}.

    "active" counts what one token uses: with a Mixture of Experts only ``top_k`` of the
    ``n_expert`` MLPs run per token, while attention, norms and embeddings are shared.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"architecture_parameters needs an Architecture, got {type(arch).__name__}")
    d, L = arch.n_embd, arch.n_layer
    hd = d // arch.n_head
    kv = (arch.n_kv_head or arch.n_head) * hd
    f = arch.ffn_hidden or 4 * d
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
    head = 0 if arch.tie_weights else arch.vocab_size * d
    rest = embeddings + head + (norm if arch.final_norm else 0) + ((d * d + d) if arch.pooler else 0)
    return {"total": rest + L * (shared_layer + arch.n_expert * expert),
            "active": rest + L * (shared_layer + arch.top_k * expert)}


def count_parameters(config: GPTConfig, active: bool = False) -> int:
    """Number of parameters of ``GPT(config)`` computed from the config alone (tied embeddings once).

    Equals ``sum(p.numel() for p in GPT(config).parameters())`` (tested). ``active=True``: the
    parameters one token uses, which differ for a Mixture of Experts (``config.n_expert``): each MoE
    layer then counts its router, ``top_k`` experts, shared experts and hybrid dense part
    (:func:`utils.moe.moe_parameter_counts`) instead of the dense MLP."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"count_parameters needs a GPTConfig, got {type(config).__name__}")
    if not isinstance(active, bool):
        raise TypeError(f"active must be True or False, got {active!r}")
    count = architecture_parameters(Architecture.from_config(config))["total"]
    n_moe = len(config.moe_layer_indices)
    if n_moe:
        from utils.moe import moe_config, moe_parameter_counts

        C, f, b = config.n_embd, config.resolved_ffn_hidden, int(config.bias)
        dense_mlp = 3 * C * f + b * (2 * f + C) if config.mlp == "swiglu" else 2 * C * f + b * (f + C)
        moe = moe_parameter_counts(moe_config(config))["active" if active else "total"]
        count += n_moe * (moe - dense_mlp)
    return count + (config.n_embd if config.smear else 0)  # the smear's per-channel multiple


def memory_footprint(n_params: int) -> dict[str, float]:
    """Bytes needed to hold ``n_params`` weights at each precision (weights only: no activations,
    KV cache, gradients or optimizer state): {"fp32": ..., "bf16": ..., "int8": ..., "int4": ...}."""
    check_number("n_params", n_params, 0)
    return {k: n_params * v for k, v in BYTES_PER_PARAM.items()}


# Published models, with the hyper-parameters from their papers / released configs.
PUBLISHED_ARCHITECTURES: dict[str, Architecture] = {
    "GPT-2 small": Architecture(
        "GPT-2 small", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, ffn_hidden=3072, mlp="gelu",
        norm="layernorm", bias=True, n_positions=1024, tie_weights=True,
        source="Radford et al. 2019; Hugging Face config of `gpt2`"),
    "BERT-base": Architecture(
        "BERT-base", vocab_size=30522, n_embd=768, n_layer=12, n_head=12, ffn_hidden=3072, mlp="gelu",
        norm="layernorm", bias=True, n_positions=512, n_token_types=2, embedding_norm=True,
        final_norm=False, pooler=True, tie_weights=True,
        source="Devlin et al. 2019; config of `bert-base-uncased` (post-norm, with pooler, no MLM head)"),
    "Llama-2-7B": Architecture(
        "Llama-2-7B", vocab_size=32000, n_embd=4096, n_layer=32, n_head=32, n_kv_head=32, ffn_hidden=11008,
        mlp="swiglu", norm="rmsnorm", bias=False, tie_weights=False,
        source="Touvron et al. 2023; config of `Llama-2-7b-hf`"),
    "Mixtral-8x7B": Architecture(
        "Mixtral-8x7B", vocab_size=32000, n_embd=4096, n_layer=32, n_head=32, n_kv_head=8, ffn_hidden=14336,
        mlp="swiglu", norm="rmsnorm", bias=False, tie_weights=False, n_expert=8, top_k=2,
        source="Jiang et al. 2024; config of `Mixtral-8x7B-v0.1`"),
}
