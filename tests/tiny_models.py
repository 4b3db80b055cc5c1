"""A stand-in language model shared by the training, checkpoint and bad-input tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TinyConfig:
    vocab_size: int = 16
    block_size: int = 8
    n_embd: int = 16


class TinyLM(nn.Module):
    """Embedding -> one residual MLP block -> logits: ``forward(idx, targets=None) -> (logits, loss)``."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None):
        super().__init__()
        self.config = config or TinyConfig()
        self.emb = nn.Embedding(self.config.vocab_size, self.config.n_embd)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(self.config.n_embd, self.config.n_embd), nn.GELU())])
        self.head = nn.Linear(self.config.n_embd, self.config.vocab_size)

    def forward(self, idx, targets=None):
        h = self.emb(idx)
        for block in self.blocks:
            h = h + block(h)
        logits = self.head(h)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def tiny_gpt_config(**overrides):
    """A 2-layer GPTConfig small enough for exact, fast tests (vocab 61, context 32, width 32)."""
    from utils.model import GPTConfig

    base = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32)
    base.update(overrides)
    return GPTConfig(**base)


def random_ids(B, T, vocab=61, seed=0):
    """(B, T) random token ids from a seeded generator."""
    import torch

    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))
