"""Direct Preference Optimization (Rafailov et al. 2023), written out.

Given a prompt x with a preferred response y_w and a rejected one y_l, a policy pi and a frozen
reference pi_ref (the model before tuning)::

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

- :func:`dpo_loss`: the formula, from summed response log-probabilities;
- :func:`response_logprobs`: sum of log pi(token) over the response tokens of each row;
- :func:`preference_pairs`: pairs built from the corpus (the true next speech vs a speech of another
  play, same speaker cue), split by play;
- :func:`mean_kl`: how far the policy drifted from the reference (mean per-token KL on given text).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["dpo_loss", "response_logprobs", "PreferencePair", "preference_pairs", "encode_pairs", "mean_kl"]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Mean DPO loss over a batch; each argument (B,) holds summed response log-probabilities.

    When policy == reference the margin is 0 and the loss is log 2; when chosen == rejected the two
    terms cancel and the gradient is zero."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-probability tensors must have the same shape (B,), got {sorted(shapes)}")
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def response_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(y_t | x_<=t) where y_t != -100: (B,). x, y (B, T) as from
    :func:`utils.instruct.batch_examples` (targets -100 on the prompt and padding)."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    logits, _ = model(x)
    logp = logits.float().log_softmax(-1)
    keep = y != -100
    tok = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
    return (tok * keep).sum(-1)


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    play: str


def preference_pairs(corpus, split: str, n: int = 200, seed: int = 0, max_chars: int = 160) -> list[PreferencePair]:
    """Pairs from one split: prompt = a speech and the next speaker's cue ("NAME:\\n"); chosen = the
    speech that really follows (in-scene, in-character); rejected = a speech of the same length class
    from a different play (out of context). Both cut to ``max_chars`` at a line end."""
    from utils.data import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(seed)
    ps = [p for p in corpus.passages if p.split == split]
    pool = [p for p in corpus.passages if p.split == split and len(p.text) >= 80]

    def body(text):
        lines, out = text.rstrip("\n").split("\n")[1:], ""
        for line in lines:
            if out and len(out) + len(line) + 1 > max_chars:
                break
            out += line + "\n"
        return out[:max_chars]

    cand = [(a, b) for a, b in zip(ps, ps[1:]) if a.play == b.play and a.scene == b.scene and len(b.text) >= 80]
    out = []
    for a, b in rng.sample(cand, min(n, len(cand))):
        other = rng.choice(pool)
        while other.play == b.play:
            other = rng.choice(pool)
        prompt = b.text.split("\n")[0] + "\n" if len(a.text) > 2 * max_chars else a.text + "\n" + b.text.split("\n")[0] + "\n"
        out.append(PreferencePair(prompt[-2 * max_chars:], body(b.text), body(other.text), b.play))
    return out


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenize pairs into right-padded (x, y) tensors for chosen and rejected (responses cut to the
    same number of tokens so that log-probabilities compare like with like)."""
    from utils.instruct import batch_examples

    eot = tokenizer.special_tokens.get("<|endoftext|>", 0)
    chosen, rejected = [], []
    for pair in pairs:
        p = tokenizer.encode(pair.prompt)
        c, r = tokenizer.encode(pair.chosen), tokenizer.encode(pair.rejected)
        k = min(len(c), len(r), max_len // 2)
        p = p[-(max_len + 1 - k):]
        for seq, store in ((c[:k], chosen), (r[:k], rejected)):
            ids = p + seq
            store.append((ids[:-1], [-100] * (len(p) - 1) + seq))
    xc, yc = batch_examples(chosen, eot)
    xr, yr = batch_examples(rejected, eot)
    return {"x_chosen": xc, "y_chosen": yc, "x_rejected": xr, "y_rejected": yr}


@torch.no_grad()
def mean_kl(policy: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the positions where y != -100 of KL(policy || reference) of the next-token
    distributions (nats per token)."""
    device = next(policy.parameters()).device
    x, y = x.to(device), y.to(device)
    lp = policy(x)[0].float().log_softmax(-1)
    lq = reference(x)[0].float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    keep = y != -100
    return float((kl * keep).sum() / keep.sum())
