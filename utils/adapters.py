"""Additive parameter-efficient methods: bottleneck adapters, prefix tuning and prompt tuning.

- :class:`Adapter` (Houlsby et al. 2019): ``h + up(gelu(down(h)))`` with a small bottleneck; the
  up-projection starts at zero, so a freshly added adapter is the identity. :func:`add_adapters`
  puts one after the attention and one after the MLP of every block (on the sub-layer's output,
  before it joins the residual stream), through forward hooks, so module names stay as they are.
- :class:`PrefixTuning` (Li & Liang 2021): learned keys and values, ``prefix_len`` per layer, that
  every real token can attend to; fed to ``GPT.forward(..., past_key_values=prefix())``.
- :class:`PromptTuning` (Lester et al. 2021): ``n_tokens`` learned input embeddings put in front of
  the real tokens' embeddings (a "soft prompt"); :func:`soft_prompt_hidden_states` runs the model on
  them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Adapter", "add_adapters", "remove_adapters", "PrefixTuning", "PromptTuning",
           "soft_prompt_hidden_states"]


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Adapter(nn.Module):
    """Bottleneck adapter: (..., d) -> (..., d), ``h + up(gelu(down(h)))``.

    ``down``: d -> bottleneck (small random init), ``up``: bottleneck -> d (zero init: identity at start).
    """

    def __init__(self, d: int, bottleneck: int = 16):
        super().__init__()
        _positive_int("d", d)
        _positive_int("bottleneck", bottleneck)
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


def _adapter_hook(module, args, output):
    adapter = module._course_adapter
    if isinstance(output, tuple):  # (y, attention weights) or an MoE MLP's (y, stats)
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def add_adapters(model: nn.Module, bottleneck: int = 16, freeze_base: bool = True) -> nn.Module:
    """Add an :class:`Adapter` after the attention and after the MLP of every block (in place).

    The adapters are registered as ``block.attn_adapter`` and ``block.mlp_adapter`` (so they are in
    ``state_dict`` and ``parameters()``), and a forward hook applies each to its sub-layer's output.
    ``freeze_base`` sets ``requires_grad=False`` on everything else first. Returns ``model``.
    """
    _positive_int("bottleneck", bottleneck)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise TypeError(f"add_adapters needs a model with .blocks (a GPT), got {type(model).__name__}")
    if any(hasattr(b, "attn_adapter") for b in blocks):
        raise ValueError("this model already has adapters")
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    d = model.config.n_embd
    p0 = next(model.parameters())
    for block in blocks:
        for sub in ("attn", "mlp"):
            adapter = Adapter(d, bottleneck).to(device=p0.device, dtype=p0.dtype)
            block.add_module(f"{sub}_adapter", adapter)
            target = getattr(block, sub)
            # plain attributes, not submodules (the adapter is registered once, on the block)
            object.__setattr__(target, "_course_adapter", adapter)
            object.__setattr__(target, "_course_adapter_handle", target.register_forward_hook(_adapter_hook))
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`add_adapters` (hooks and modules); returns ``model``."""
    for block in model.blocks:
        for sub in ("attn", "mlp"):
            target = getattr(block, sub)
            handle = target.__dict__.pop("_course_adapter_handle", None)
            if handle is not None:
                handle.remove()
            target.__dict__.pop("_course_adapter", None)
            if f"{sub}_adapter" in block._modules:
                del block._modules[f"{sub}_adapter"]
    return model


class PrefixTuning(nn.Module):
    """Learned key/value prefixes, ``prefix_len`` positions in every layer.

    ``forward(batch_size=1)`` returns ``past_key_values``: a list (one per layer) of ``(k, v)``, each
    (batch_size, n_kv_head, prefix_len, head_dim), for ``GPT.forward(idx, past_key_values=...)``.
    Initialised from the keys and values the frozen model computes for real tokens
    (:meth:`init_from_tokens`), or small random values; Li & Liang found real-word initialisation
    trains more stably than random.
    """

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, prefix_len: int = 8):
        super().__init__()
        for name, v in (("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim),
                        ("prefix_len", prefix_len)):
            _positive_int(name, v)
        self.prefix_len = prefix_len
        self.k = nn.Parameter(torch.randn(n_layer, n_kv_head, prefix_len, head_dim) * 0.02)
        self.v = nn.Parameter(torch.randn(n_layer, n_kv_head, prefix_len, head_dim) * 0.02)

    @classmethod
    def for_model(cls, model: nn.Module, prefix_len: int = 8) -> "PrefixTuning":
        cfg = model.config
        return cls(cfg.n_layer, cfg.resolved_n_kv_head, cfg.head_dim, prefix_len).to(next(model.parameters()).device)

    @torch.no_grad()
    def init_from_tokens(self, model: nn.Module, ids: torch.Tensor) -> "PrefixTuning":
        """Set the prefix to the keys/values ``model`` computes for ``ids`` (prefix_len,) token ids."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if len(ids) != self.prefix_len:
            raise ValueError(f"ids must hold prefix_len={self.prefix_len} token ids, got {len(ids)}")
        cache = model.new_kv_cache(1, max_len=self.prefix_len)
        was = model.training
        model.eval()
        model(ids[None].to(self.k.device), kv_cache=cache)
        model.train(was)
        self.k.copy_(cache.k[:, 0, :, :self.prefix_len].to(self.k.dtype))
        self.v.copy_(cache.v[:, 0, :, :self.prefix_len].to(self.v.dtype))
        return self

    def forward(self, batch_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        _positive_int("batch_size", batch_size)
        return [(k[None].expand(batch_size, -1, -1, -1), v[None].expand(batch_size, -1, -1, -1))
                for k, v in zip(self.k, self.v)]


class PromptTuning(nn.Module):
    """A soft prompt: ``n_tokens`` learned input embeddings (n_tokens, n_embd).

    ``forward(x)`` with token embeddings x (B, T, C) returns (B, n_tokens + T, C). Initialise it from
    the embeddings of real tokens with :meth:`init_from_tokens` (Lester et al.: better than random).
    """

    def __init__(self, n_embd: int, n_tokens: int = 8):
        super().__init__()
        _positive_int("n_embd", n_embd)
        _positive_int("n_tokens", n_tokens)
        self.n_tokens = n_tokens
        self.embeddings = nn.Parameter(torch.randn(n_tokens, n_embd) * 0.02)

    @classmethod
    def for_model(cls, model: nn.Module, n_tokens: int = 8) -> "PromptTuning":
        return cls(model.config.n_embd, n_tokens).to(next(model.parameters()).device)

    @torch.no_grad()
    def init_from_tokens(self, model: nn.Module, ids: torch.Tensor) -> "PromptTuning":
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if len(ids) != self.n_tokens:
            raise ValueError(f"ids must hold n_tokens={self.n_tokens} token ids, got {len(ids)}")
        self.embeddings.copy_(model.wte.weight[ids.to(model.wte.weight.device)])
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embeddings.shape[1]:
            raise ValueError(f"x must be token embeddings (B, T, {self.embeddings.shape[1]}), got {tuple(x.shape)}")
        return torch.cat([self.embeddings.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)


def soft_prompt_hidden_states(model: nn.Module, idx: torch.Tensor, prompt: PromptTuning | None = None) -> torch.Tensor:
    """Final-norm hidden states (B, T, C) of the real tokens of a right-padded batch ``idx`` (B, T),
    with the soft prompt in front (positions 0..n_tokens-1; the real tokens follow).

    Causal attention means a real token never sees the padding after it, so right-padded batches
    need no mask here. ``n_tokens + T`` must fit in ``block_size`` for learned positions.
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got {getattr(idx, 'shape', type(idx).__name__)}")
    x = model.wte(idx)
    P = 0
    if prompt is not None:
        x = prompt(x)
        P = prompt.n_tokens
    T = x.shape[1]
    if model.wpe is not None:
        if T > model.config.block_size:
            raise ValueError(f"soft prompt ({P}) + input ({idx.shape[1]}) = {T} tokens exceed block_size="
                             f"{model.config.block_size}")
        x = x + model.wpe.weight[:T]
    rope = model.rope.cos_sin(0, T, signed=True) if model.rope is not None else None
    for block in model.blocks:
        x = block(x, position_ids=0, is_causal=True, rope_cos_sin=rope)
    return model.ln_f(x)[:, P:]
