"""Evaluation metrics of the course, each written out from its definition.

- :func:`sum_token_nll` and :func:`bits_per_character`: how well a language model predicts a
  whole text, in a unit (bits per character) that does not depend on the tokenizer.

Notebook 08 adds the text metrics (BLEU, chrF, ROUGE, METEOR, WER/CER, ...), each checked against
its reference library in ``tests/``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["sum_token_nll", "bits_per_character"]


@torch.no_grad()
def sum_token_nll(model: nn.Module, ids: torch.Tensor | list[int], block_size: int | None = None,
                  batch_size: int = 16, device: torch.device | str | None = None) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (nats) over a whole token stream.

    The stream is cut into **non-overlapping** windows of ``block_size`` inputs (each window's
    targets are its inputs shifted by one, so consecutive windows share one token); every token
    except the very first is predicted exactly once, with the context available inside its window.
    Returns ``(sum_nll, n_predicted_tokens)``.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if len(ids) < 2:
        raise ValueError(f"need at least 2 tokens to score, got {len(ids)}")
    if block_size is None:
        block_size = model.config.block_size
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts = list(range(0, len(ids) - 1, block_size))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        lengths = [min(block_size, len(ids) - 1 - s) for s in chunk]
        full = [s for s, n in zip(chunk, lengths) if n == block_size]
        if full:  # equal-length windows go through as one batch
            offs = torch.arange(block_size)
            idx = torch.tensor(full)[:, None] + offs
            x, y = ids[idx].to(device), ids[idx + 1].to(device)
            logits, _ = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        for s, n in zip(chunk, lengths):  # the last, shorter window
            if n < block_size:
                x, y = ids[s:s + n][None].to(device), ids[s + 1:s + n + 1][None].to(device)
                logits, _ = model(x)
                total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
                count += n
    model.train(was_training)
    return total, count


def bits_per_character(model: nn.Module, ids: torch.Tensor | list[int], n_characters: int,
                       block_size: int | None = None, batch_size: int = 16,
                       device: torch.device | str | None = None) -> float:
    """Bits per character of a text: (sum of token NLL in nats) / characters / ln 2.

    ``ids`` is the *whole* text tokenized at once and ``n_characters`` its length in characters,
    so models with different tokenizers (characters, BPE) are compared on the same text. Uses
    :func:`sum_token_nll` (non-overlapping windows).
    """
    if n_characters <= 0:
        raise ValueError(f"n_characters must be positive, got {n_characters}")
    nll, _ = sum_token_nll(model, ids, block_size=block_size, batch_size=batch_size, device=device)
    return nll / n_characters / math.log(2)
