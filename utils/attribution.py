"""Which input tokens made the model decide? Three attribution methods written out (notebook 08).

- :func:`occlusion`: remove one token at a time, see how much the score drops.
- :func:`integrated_gradients`: average the gradient along the straight line from a baseline input
  to the real one, times (input - baseline) (Sundararajan et al. 2017). Attributions add up to
  ``f(x) - f(baseline)`` (*completeness*), checked in ``tests/test_metrics.py``; equal to captum's
  ``IntegratedGradients`` with the same integration rule (Gauss-Legendre by default, as captum).
- :func:`lime_surrogate`: switch random subsets of words off, fit a weighted linear model to the
  scores (Ribeiro et al. 2016, the ``lime`` package's recipe: cosine distance, exponential kernel,
  ridge regression); its coefficients are the attributions.

``f`` is any function of a batch: for the course GPT, :func:`embedding_forward` turns "model +
head on the hidden states" into a function of the token embeddings, and :func:`embeddings_forward`
does the same for any scorer of token ids that looks its tokens up in one embedding table (e.g.
notebook 07's ``SequenceClassifier``: ``lambda ids: clf(ids)[:, label]``).
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["occlusion", "integrated_gradients", "lime_surrogate", "embedding_forward", "embeddings_forward",
           "riemann_weights", "gauss_legendre_weights"]


def gauss_legendre_weights(steps: int) -> tuple[list[float], list[float]]:
    """Points ``alpha`` in (0, 1) and weights of the ``steps``-point Gauss-Legendre rule (captum's default)."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(steps)
    return list(0.5 * (1 + x)), list(0.5 * w)


def riemann_weights(steps: int, method: str = "trapezoid") -> tuple[list[float], list[float]]:
    """Points and weights of a Riemann sum on [0, 1]: ``left``, ``right``, ``middle`` or ``trapezoid``."""
    if method == "trapezoid":
        alphas = [i / (steps - 1) for i in range(steps)]
        w = [1 / (steps - 1)] * steps
        w[0] = w[-1] = 0.5 / (steps - 1)
        return alphas, w
    shift = {"left": 0.0, "right": 1.0, "middle": 0.5}[method]
    return [(i + shift) / steps for i in range(steps)], [1 / steps] * steps


def integrated_gradients(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor | None = None,
                         steps: int = 50, method: str = "gausslegendre", batch_size: int = 64) -> torch.Tensor:
    """Integrated gradients of the scalar score ``f`` at input ``x`` (any shape, one example).

    ``f`` maps a batch (N, *x.shape) to scores (N,). ``attr = (x - baseline) * sum_k w_k grad f(baseline
    + alpha_k (x - baseline))`` with the ``steps``-point rule ``method`` (``gausslegendre`` or
    ``riemann_trapezoid`` / ``_left`` / ``_right`` / ``_middle``). Same shape as ``x``; sums to about
    ``f(x) - f(baseline)`` (closer with more steps). ``baseline`` defaults to zeros."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError("x must be a floating-point tensor (e.g. token embeddings)")
    baseline = torch.zeros_like(x) if baseline is None else baseline
    if baseline.shape != x.shape:
        raise ValueError(f"baseline must have x's shape {tuple(x.shape)}, got {tuple(baseline.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if method == "gausslegendre":
        alphas, weights = gauss_legendre_weights(steps)
    elif method.startswith("riemann_") and method[8:] in ("trapezoid", "left", "right", "middle"):
        alphas, weights = riemann_weights(steps, method[8:])
    else:
        raise ValueError(f"method must be 'gausslegendre' or 'riemann_trapezoid'/'_left'/'_right'/'_middle', got {method!r}")
    x, baseline = x.detach(), baseline.detach()
    total = torch.zeros_like(x)
    for i in range(0, steps, batch_size):
        a = torch.tensor(alphas[i:i + batch_size], dtype=x.dtype, device=x.device).view(-1, *[1] * x.dim())
        w = torch.tensor(weights[i:i + batch_size], dtype=x.dtype, device=x.device).view(-1, *[1] * x.dim())
        path = (baseline + a * (x - baseline)).requires_grad_(True)
        with torch.enable_grad():
            out = f(path)
            if out.shape != (len(a),):
                raise ValueError(f"f must return one score per example, shape ({len(a)},), got {tuple(out.shape)}")
            (grad,) = torch.autograd.grad(out.sum(), path)
        total += (grad * w).sum(0)
    return (x - baseline) * total


@torch.no_grad()
def occlusion(f: Callable[[torch.Tensor], torch.Tensor], ids: Sequence[int] | torch.Tensor, replacement_id: int,
              batch_size: int = 64) -> torch.Tensor:
    """Score drop when each token is replaced by ``replacement_id``: ``f(ids) - f(ids with token i
    replaced)``, one value per token (T,). ``f`` maps (N, T) id batches to scores (N,); the batches
    are on ``ids``' device (a tensor keeps its device)."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("ids is empty: nothing to occlude")
    T = len(ids)
    variants = ids.repeat(T + 1, 1)
    variants[torch.arange(1, T + 1, device=ids.device), torch.arange(T, device=ids.device)] = replacement_id
    scores = torch.cat([f(variants[i:i + batch_size]) for i in range(0, T + 1, batch_size)])
    return scores[0] - scores[1:]


def lime_surrogate(f: Callable[[list[str]], Sequence[float]], words: Sequence[str], n_samples: int = 500,
                   kernel_width: float = 25.0, alpha: float = 1.0, seed: int = 0,
                   mask_token: str | None = None) -> list[float]:
    """LIME for text, written out: one weight per word of ``words``.

    Sample ``n_samples`` on/off masks (the first keeps every word; each other switches off a random
    number of random words), score the texts ``" ".join(kept words)`` with ``f`` (list of str ->
    scores), weight each sample by ``exp(-d^2 / width^2)`` with ``d`` = 100 x the cosine distance
    between its mask and all-ones, and fit a weighted ridge regression (penalty ``alpha``) of the
    scores on the masks: its coefficients. ``mask_token``: replace a switched-off word by this string
    instead of deleting it (the lime package's ``bow=False`` mode uses ``"UNKWORDZ"``)."""
    words = list(words)
    if not words or not all(isinstance(w, str) for w in words):
        raise ValueError("words must be a non-empty list of str")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    rng = random.Random(seed)
    d = len(words)
    masks = [[1] * d]
    for _ in range(n_samples - 1):
        off = set(rng.sample(range(d), rng.randint(1, d)))
        masks.append([0 if j in off else 1 for j in range(d)])
    if mask_token is None:
        texts = [" ".join(w for w, m in zip(words, mask) if m) for mask in masks]
    else:
        texts = [" ".join(w if m else mask_token for w, m in zip(words, mask)) for mask in masks]
    y = torch.tensor([float(v) for v in f(texts)], dtype=torch.float64)
    X = torch.tensor(masks, dtype=torch.float64)
    cos = X.sum(1) / (X.norm(dim=1) * math.sqrt(d)).clamp(min=1e-12)
    dist = (1 - cos) * 100
    sw = torch.exp(-dist ** 2 / kernel_width ** 2)
    # weighted ridge with an unpenalised intercept: centre by the weighted means
    xm = (sw[:, None] * X).sum(0) / sw.sum()
    ym = (sw * y).sum() / sw.sum()
    Xc, yc = X - xm, y - ym
    A = Xc.T @ (sw[:, None] * Xc) + alpha * torch.eye(d, dtype=torch.float64)
    coef = torch.linalg.solve(A, Xc.T @ (sw * yc))
    return coef.tolist()


@contextlib.contextmanager
def _embeddings_replaced(embedding: nn.Module, emb: torch.Tensor):
    handle = embedding.register_forward_hook(lambda mod, inp, out: emb)
    try:
        yield
    finally:
        handle.remove()


def embeddings_forward(score: Callable[[torch.Tensor], torch.Tensor], embedding: nn.Module,
                       ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of token embeddings (N, T, C) -> scores (N,): ``score`` maps token ids (N, T) to
    scores (N,) and looks the tokens up in ``embedding`` (e.g. ``clf.backbone.wte``); the given
    embeddings replace that lookup's output for the token ids ``ids`` (T,). For gradient methods
    (IG) on any model with an embedding table; the ids go to the embeddings' device."""
    if not isinstance(embedding, nn.Module):
        raise TypeError(f"embedding must be the nn.Module that embeds the tokens, got {type(embedding).__name__}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("ids is empty: nothing to attribute")

    def f(emb: torch.Tensor) -> torch.Tensor:
        if emb.dim() != 3 or emb.shape[1] != len(ids):
            raise ValueError(f"embeddings must be (N, {len(ids)}, C) for the {len(ids)} ids, got {tuple(emb.shape)}")
        batch = ids.to(emb.device).repeat(emb.shape[0], 1)
        with _embeddings_replaced(embedding, emb):
            return score(batch)

    return f


def embedding_forward(model: nn.Module, head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of token embeddings (N, T, C) -> scores (N,) for the course GPT: the embeddings
    replace the output of ``model.wte`` for the token ids ``ids`` (T,), and ``head(hidden (N, T, C),
    mask (N, T))`` turns the final hidden states into a score. For gradient methods (IG)."""
    from utils.metrics import hidden_states

    def score(batch: torch.Tensor) -> torch.Tensor:
        return head(hidden_states(model, batch), torch.ones(batch.shape, dtype=torch.bool, device=batch.device))

    return embeddings_forward(score, model.wte, ids)
