"""Encoder-only (BERT-like) and encoder-decoder (T5-like) transformers, built from the same
:class:`utils.model.Block` as the decoder-only :class:`utils.model.GPT`.

- :class:`EncoderModel` — bidirectional blocks (every token sees every other) + a masked-language-
  model head: ``forward(idx, targets=None, *, attention_mask=None) -> (logits, loss)``;
- :class:`EncoderDecoder` — a bidirectional encoder reads the source, a causal decoder writes the
  target and reads the encoder's output through cross-attention:
  ``forward(src, tgt, targets=None, *, src_mask=None) -> (logits, loss)``; ``generate`` decodes greedily.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import is_int
from utils.model import (Block, GPTConfig, _check_config, _check_idx, _check_mask_2d, _check_targets, _init_weights,
                         _loss, make_norm)
from utils.positions import LearnedPositionalEmbedding, RotaryEmbedding

__all__ = ["EncoderModel", "EncoderDecoder"]


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


def _refuse_smear(config: GPTConfig, who: str) -> None:
    if config.smear:
        raise ValueError(f"GPTConfig.smear=True is for the decoder GPT only (each token mixed with the one before "
                         f"it); {who} does not apply it, so build it with smear=False")


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
        _check_config(config, "EncoderModel")
        _refuse_smear(config, "EncoderModel")
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
        if targets is not None:
            _check_idx(idx, self.config.vocab_size, check_values=False)
            _check_targets(targets, idx.shape, self.config.vocab_size)
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
        _check_config(config, "EncoderDecoder")
        _refuse_smear(config, "EncoderDecoder")
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
        if not isinstance(memory, torch.Tensor) or memory.dim() != 3 or memory.shape[0] != tgt.shape[0] \
                or memory.shape[2] != self.config.n_embd:
            raise ValueError(f"memory must be the encoder output (B={tgt.shape[0]}, S, n_embd={self.config.n_embd}), "
                             f"got {getattr(memory, 'shape', type(memory).__name__)}")
        ctx_mask = _key_padding_mask(src_mask, memory.shape[0], memory.shape[1], "src_mask")
        x = self.dec_embed(tgt)
        for block in self.decoder:
            x = block(x, context=memory, context_mask=ctx_mask)
        return self.lm_head(self.dec_ln(x))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None, *,
                src_mask: torch.Tensor | None = None):
        _check_idx(src, self.config.vocab_size, "src")
        _check_idx(tgt, self.config.vocab_size, "tgt")
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src (B, S) and tgt (B, T) must have the same batch size, got "
                             f"{tuple(src.shape)} and {tuple(tgt.shape)}")
        if targets is not None:
            _check_targets(targets, tgt.shape, self.config.vocab_size)
        logits = self.decode(tgt, self.encode(src, src_mask), src_mask)
        return logits, _loss(logits, targets, tgt.shape)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: int, start_id: int, eos_id: int | None = None,
                 src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding (no cache; small models only): returns (B, 1 + n) starting with ``start_id``.

        With ``eos_id``, a row that has produced it gets ``eos_id`` again at every later step (its
        output is finished), and decoding stops once every row has produced it."""
        V = self.config.vocab_size
        if not is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not is_int(start_id) or not 0 <= start_id < V:
            raise ValueError(f"start_id must be a token id in [0, vocab_size={V}), got {start_id!r}")
        if eos_id is not None and (not is_int(eos_id) or not 0 <= eos_id < V):
            raise ValueError(f"eos_id must be None or a token id in [0, vocab_size={V}), got {eos_id!r}")
        _check_idx(src, V, "src")
        was_training = self.training
        self.eval()
        try:
            return self._greedy(src, max_new_tokens, start_id, eos_id, src_mask)
        finally:
            self.train(was_training)

    def _greedy(self, src, max_new_tokens, start_id, eos_id, src_mask) -> torch.Tensor:
        memory = self.encode(src, src_mask)
        out = torch.full((src.shape[0], 1), start_id, dtype=torch.long, device=src.device)
        for _ in range(min(max_new_tokens, self.config.block_size - 1)):
            logits = self.decode(out, memory, src_mask)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            if eos_id is not None:
                nxt = nxt.masked_fill((out == eos_id).any(1, keepdim=True), eos_id)  # finished rows stay finished
            out = torch.cat([out, nxt], dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return out
