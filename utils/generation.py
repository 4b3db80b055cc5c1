"""Text generation: greedy, temperature, top-k and nucleus sampling, penalties, stops, a KV cache.

:func:`generate` is the one entry point::

    from utils.generation import generate
    ids = tokenizer.encode("ROMEO:\\n")
    out = generate(model, ids, max_new_tokens=100, temperature=0.8, top_k=50)   # list in, list out
    print(tokenizer.decode(out))

- ``temperature=0`` means **greedy** decoding (always the most likely token; ``top_k``/``top_p``
  are then irrelevant, the repetition penalty still applies).
- Batched prompts of different lengths: pass a list of id lists; they are left-padded into one
  tensor with an attention mask (and position ids that start at 0 at each prompt's first real
  token), so every row gives exactly what it would give alone.
- ``use_cache=True`` runs the prompt once (prefill), then feeds one token per step through the
  model's pre-allocated KV cache; ``use_cache=False`` recomputes the whole context every step
  (the slow reference the cache is checked against).
- Past the model's context (``block_size``) both paths use the same sliding window: when the
  sequence outgrows the context, the window jumps forward so that only the last ``window_keep``
  tokens stay, and the cached path *re-encodes* that window (one prefill every
  ``block_size - window_keep`` steps). Simply dropping the oldest cache entries would be cheaper but
  not exact: in layer 2 and above, the kept keys/values were computed while the dropped tokens were
  still visible, so they differ from a recomputation on the window.

The building blocks (:func:`top_k_filter`, :func:`top_p_filter`, :func:`apply_repetition_penalty`,
:func:`next_token_probs`) are public so notebook 04 can plot what each one does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from utils.checks import is_int, is_number

# ---------------------------------------------------------------------------------------------
# Logit processors (shape (B, V) in, (B, V) out)
# ---------------------------------------------------------------------------------------------


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() not in (1, 2):
        raise TypeError(f"logits must be a floating-point tensor (V,) or (B, V), got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)} {tuple(getattr(logits, 'shape', ()))}")


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None,
                         repetition_penalty: float) -> None:
    if not is_number(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not (is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token) or None, got {top_p!r}")
    if not is_number(repetition_penalty) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0 = off, >1 discourages repeats), "
                         f"got {repetition_penalty!r}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to -inf. (B, V) -> (B, V).

    Ties at the k-th value are all kept.
    """
    _check_logits(logits)
    if not is_int(k) or k < 1:
        raise ValueError(f"top_k must be a positive int, got {k!r}")
    k = int(k)
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p.

    (B, V) -> (B, V) with the tokens outside the nucleus at -inf. The most likely token is always
    kept, so ``p`` close to 0 becomes greedy.
    """
    _check_logits(logits)
    if not is_number(p) or not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly before each token
    remove_sorted = before >= p  # the token is not needed to reach p
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on tokens already present: positive logits / penalty, negative * penalty.

    ``seen`` is a (B, V) boolean mask of tokens that occurred (prompt and generated so far).
    ``penalty > 1`` makes repeats less likely; 1.0 changes nothing.
    """
    _check_logits(logits)
    if not isinstance(seen, torch.Tensor) or seen.dtype != torch.bool or seen.shape != logits.shape:
        raise ValueError(f"seen must be a bool tensor of the logits' shape {tuple(logits.shape)}, got "
                         f"{getattr(seen, 'dtype', type(seen).__name__)} {tuple(getattr(seen, 'shape', ()))}")
    if not is_number(penalty) or penalty <= 0:
        raise ValueError(f"penalty must be a finite number > 0 (1.0 = off), got {penalty!r}")
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    """The distribution the sampler draws from: temperature, then top-k, then top-p, then softmax.

    ``logits``: (V,) or (B, V); returns probabilities of the same shape (greedy, temperature 0,
    puts all the mass on the argmax).
    """
    _check_logits(logits)
    _check_sampling_args(temperature, top_k, top_p, 1.0)
    squeeze = logits.dim() == 1
    logits = logits[None] if squeeze else logits
    logits = logits.float()
    if temperature == 0:
        probs = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    else:
        logits = logits / temperature
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None:
            logits = top_p_filter(logits, top_p)
        probs = torch.softmax(logits, dim=-1)
    return probs[0] if squeeze else probs


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row from (B, V) logits: argmax when ``temperature == 0``, else a draw. -> (B,)."""
    _check_sampling_args(temperature, top_k, top_p, 1.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Prompts, windows, stops
# ---------------------------------------------------------------------------------------------


def pad_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts of different lengths. Returns ``ids`` (B, T) and ``mask`` (B, T) bool (True = real).

    Each prompt is a sequence of ints (numpy integers and 1-D integer arrays/tensors are fine)."""
    if not is_int(pad_token_id) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be an int >= 0, got {pad_token_id!r}")
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}"
                         + (" (empty)" if isinstance(prompts, Sequence) and len(prompts) == 0 else ""))
    prompts = [_as_id_list(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError("every prompt needs at least one token (e.g. an end-of-text or newline token)")
    T = max(lengths)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, T - len(p):] = True
    return ids, mask


def _as_id_list(p, name: str) -> list[int]:
    """A prompt as a list of python ints (from a list/tuple of ints, numpy ints, or a 1-D array/tensor)."""
    if isinstance(p, (torch.Tensor, np.ndarray)):
        if p.ndim != 1 or not (p.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
                               or (isinstance(p, np.ndarray) and np.issubdtype(p.dtype, np.integer))):
            raise TypeError(f"{name} must be a 1-D integer array of token ids, got {p.dtype} of shape {tuple(p.shape)}")
        return [int(t) for t in p.tolist()]
    if isinstance(p, (list, tuple)) and all(is_int(t) for t in p):
        return [int(t) for t in p]
    raise TypeError(f"{name} must be a list of int token ids, got {type(p).__name__}"
                    + (f" holding {type(next(t for t in p if not is_int(t))).__name__}" if isinstance(p, (list, tuple)) else ""))


def window_start(length: int, block_size: int, keep: int) -> int:
    """Where the context window starts when ``length`` tokens exist and the next one is predicted.

    0 while everything fits; past ``block_size`` the window jumps forward in strides of
    ``block_size - keep`` so that it always holds between ``keep + 1`` and ``block_size`` tokens.
    Both the cached and the recompute paths use this, so they see the same tokens.
    """
    for name, value in (("length", length), ("block_size", block_size), ("keep", keep)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if not 0 < keep < block_size:
        raise ValueError(f"keep must be in [1, block_size - 1] = [1, {block_size - 1}], got {keep}")
    if length <= block_size:
        return 0
    stride = block_size - keep
    shifts = -(-(length - block_size) // stride)  # ceil
    return shifts * stride


def _as_batch(idx, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Normalise the prompt argument to (ids (B, T), left-padding mask or None, kind); lists are
    left-padded later by :func:`pad_prompts` (kind "lists")."""
    if isinstance(idx, np.ndarray):
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"idx must hold integer token ids, got a numpy array of dtype {idx.dtype}")
        idx = torch.as_tensor(idx)
    if isinstance(idx, torch.Tensor):
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.dim() == 1:
            idx = idx[None]
            kind = "tensor1d"
        elif idx.dim() == 2:
            kind = "tensor"
        else:
            raise ValueError(f"idx must be (T,) or (B, T), got shape {tuple(idx.shape)}")
        if idx.size(0) == 0:
            raise ValueError(f"idx is a batch of 0 prompts (shape {tuple(idx.shape)}); give at least one")
        if idx.size(1) == 0:
            raise ValueError("the prompt is empty; give at least one token")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.numel() != idx.numel() \
                    or attention_mask.dim() not in (1, 2) or attention_mask.shape[-1] != idx.shape[1]:
                raise ValueError(f"attention_mask must be a tensor of the prompt's shape {tuple(idx.shape)}, got "
                                 f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
            if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("attention_mask must hold only True/False or 1/0 (1 = real token)")
            attention_mask = attention_mask.to(torch.bool).reshape(idx.shape)
            if (~attention_mask[:, -1]).any():
                raise ValueError("attention_mask: prompts must be LEFT-padded (the last position of every row real)")
        return idx.long(), attention_mask, kind
    if attention_mask is not None:
        raise ValueError("attention_mask is only for tensor input; lists are padded for you")
    if isinstance(idx, (list, tuple)):
        if len(idx) == 0:
            raise ValueError("the prompt is empty; give at least one token")
        if all(is_int(t) for t in idx):
            return torch.tensor([[int(t) for t in idx]], dtype=torch.long), None, "list"
        if all(isinstance(p, (list, tuple, np.ndarray, torch.Tensor)) for p in idx):
            return idx, None, "lists"
    raise TypeError("idx must be a LongTensor (T,) or (B, T), a list of token ids, or a list of such lists; "
                    f"got {type(idx).__name__}"
                    + (f" holding {type(next((t for t in idx if not is_int(t)), None)).__name__}"
                       if isinstance(idx, (list, tuple)) else ""))


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a (left-padded) mask: 0 at each row's first real token. (B, T) -> (B, T)."""
    return (mask.long().cumsum(-1) - 1).clamp_(min=0)


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def generate(model: nn.Module, idx, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop=None, use_cache: bool = True, *, eos_token_id: int | None = None,
             pad_token_id: int = 0, attention_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, tokenizer=None, window_keep: int | None = None,
             callback=None):
    """Continue prompt(s) with up to ``max_new_tokens`` tokens.

    ``idx``: a list of ids -> returns a list of ids (prompt + continuation); a list of id lists ->
    a list of such lists (batched, left-padded internally); a LongTensor (B, T) (optionally with a
    left-padding ``attention_mask``) -> a LongTensor (B, T + n) where n <= ``max_new_tokens`` and
    positions after a row has stopped hold ``pad_token_id``; a (T,) tensor -> a (T + n,) tensor.

    ``temperature=0`` is greedy decoding. ``top_k``: sample only among the k most likely tokens;
    ``top_p``: only among the smallest set with probability >= top_p (nucleus).
    ``repetition_penalty`` > 1 discourages tokens already present (prompt included).
    ``stop``: a token-id sequence, a list of them, or string(s) (then pass ``tokenizer``); a row
    stops right after generating one (the stop tokens are kept), or after ``eos_token_id``.
    ``use_cache``: the KV-cache path (fast) or full recomputation (reference).
    ``window_keep``: tokens kept when the context slides (default ``block_size // 2``).
    ``callback(step, tokens)``: called after each step with the new tokens (B,), e.g. to stream
    text or time each step.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a language model with a .config (e.g. utils.model.GPT), got "
                        f"{type(model).__name__}")
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    _check_sampling_args(temperature, top_k, top_p, repetition_penalty)
    config = model.config
    block_size, vocab = config.block_size, config.vocab_size
    if not is_int(pad_token_id) or not 0 <= pad_token_id < vocab:
        raise ValueError(f"pad_token_id must be a token id in [0, vocab_size={vocab}), got {pad_token_id!r}")
    if eos_token_id is not None and (not is_int(eos_token_id) or not 0 <= eos_token_id < vocab):
        raise ValueError(f"eos_token_id must be None or a token id in [0, vocab_size={vocab}), got {eos_token_id!r}")
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (step, tokens) or None, got {type(callback).__name__}")
    keep = block_size // 2 if window_keep is None else window_keep
    if not is_int(keep) or not 0 < keep < block_size:
        raise ValueError(f"window_keep must be an int in [1, block_size-1] = [1, {block_size - 1}], got {keep!r}")
    pad_token_id, keep = int(pad_token_id), int(keep)
    ids, mask, kind = _as_batch(idx, attention_mask)
    if kind == "lists":
        ids, mask = pad_prompts(ids, pad_token_id)
        mask = None if bool(mask.all()) else mask
    B, T = ids.shape
    if T > block_size:
        raise ValueError(f"the prompt has {T} tokens but the model's context (block_size) is {block_size}; "
                         f"keep its last {block_size} tokens (e.g. truncate(ids, {block_size}, side='left')) "
                         "or use a shorter prompt")
    real = ids if mask is None else ids[mask]
    lo, hi = int(real.min()), int(real.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"the prompt's token ids must be in [0, vocab_size={vocab}); got ids from {lo} to {hi}")
    stop_ids, stop_strs = _parse_stop(stop, tokenizer)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = T + max_new_tokens
    out = torch.full((B, total), pad_token_id, dtype=torch.long, device=device)
    out[:, :T] = ids.to(device)
    full_mask = None
    if mask is not None:
        full_mask = torch.ones((B, total), dtype=torch.bool, device=device)
        full_mask[:, :T] = mask.to(device)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros((B, vocab), dtype=torch.bool, device=device)
        seen.scatter_(1, out[:, :T], full_mask[:, :T] if full_mask is not None else True)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    ends = torch.zeros(B, dtype=torch.long, device=device)  # length at which each row stopped (0: not)
    stop_tensors = [torch.tensor(s, dtype=torch.long, device=device) for s in stop_ids]
    max_stop_chars = max((len(s) for s in stop_strs), default=0)
    can_stop = eos_token_id is not None or bool(stop_tensors) or bool(stop_strs)

    cache = None
    cache_start = -1  # window start the cache was filled from
    length = T
    steps = 0
    try:
        for _ in range(max_new_tokens):
            start = window_start(length, block_size, keep)
            if use_cache and cache is not None and start == cache_start:
                x = out.narrow(1, length - 1, 1)  # narrow/select: cheaper than out[:, a:b] on every token
                m = None if full_mask is None else full_mask[:, start:length]
                pos = None if full_mask is None else _positions(full_mask[:, start:length])[:, -1:]
                logits = _forward(model, x, cache, m, pos)
            else:
                x = out[:, start:length]
                m = None if full_mask is None else full_mask[:, start:length]
                pos = None if full_mask is None else _positions(m)
                if use_cache:
                    if cache is None:
                        cache = model.new_kv_cache(B, max_len=block_size, device=device)
                    else:
                        cache.reset()
                    cache_start = start
                logits = _forward(model, x, cache if use_cache else None, m, pos)
            logits = logits.float()
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            nxt = sample_next_token(logits, temperature, top_k, top_p, generator)
            if can_stop:  # rows that have stopped get padding (without stop criteria no row ever stops)
                nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            out.select(1, length).copy_(nxt)
            if seen is not None:
                seen.scatter_(1, nxt[:, None], ~finished[:, None])
            length += 1
            steps += 1
            if callback is not None:
                callback(steps, nxt)
            if can_stop:
                newly = _stopped(out, length, T, nxt, eos_token_id, stop_tensors, stop_strs,
                                 max_stop_chars, tokenizer, finished)
                ends[newly] = length
                finished |= newly
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    out = out[:, :length].cpu()
    return _format_output(out, None if full_mask is None else full_mask.cpu(), T, kind, ends.cpu())


def _forward(model, x, cache, mask, pos) -> torch.Tensor:
    """Last-position logits (B, V) for input x (B, t)."""
    kwargs = {}
    if cache is not None:
        kwargs["kv_cache"] = cache
    if mask is not None:
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = pos
    logits, _ = model(x, **kwargs)
    return logits.select(1, -1)


def _parse_stop(stop, tokenizer) -> tuple[list[list[int]], list[str]]:
    if stop is None:
        return [], []
    if isinstance(stop, str):
        stop = [stop]
    elif isinstance(stop, (list, tuple)) and stop and all(is_int(t) for t in stop):
        stop = [[int(t) for t in stop]]
    if not isinstance(stop, (list, tuple)):
        raise TypeError(f"stop must be a string, a list of token ids, or a list of those; got {type(stop).__name__}")
    ids, strs = [], []
    for s in stop:
        if isinstance(s, str):
            if not s:
                raise ValueError("an empty stop string would stop immediately; remove it")
            strs.append(s)
        elif isinstance(s, (list, tuple)) and s and all(is_int(t) for t in s):
            ids.append([int(t) for t in s])
        else:
            raise TypeError(f"each stop must be a non-empty string or list of token ids, got {s!r}")
    if strs and tokenizer is None:
        raise ValueError("stop strings need the tokenizer to decode: pass tokenizer=..., or give token-id sequences")
    if strs and not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must have a decode(ids) method, got {type(tokenizer).__name__}")
    return ids, strs


def _stopped(out, length, prompt_len, nxt, eos_token_id, stop_tensors, stop_strs, max_stop_chars,
             tokenizer, finished) -> torch.Tensor:
    """Which rows have just completed a stop condition. -> (B,) bool."""
    hit = torch.zeros_like(finished)
    if eos_token_id is not None:
        hit |= nxt == eos_token_id
    for s in stop_tensors:
        n = len(s)
        if length - n >= prompt_len:  # the whole stop sequence was generated
            hit |= (out[:, length - n:length] == s).all(dim=1)
    if stop_strs:
        tail = max_stop_chars + 8  # a token is at least one byte; a few extra for partial UTF-8
        for b in range(out.size(0)):
            if finished[b] or hit[b]:
                continue
            text = tokenizer.decode(out[b, max(prompt_len, length - tail):length].tolist())
            if any(s in text for s in stop_strs):
                hit[b] = True
    return hit & ~finished


def _format_output(out, full_mask, T, kind, ends):
    if kind in ("tensor", "tensor1d"):
        return out[0] if kind == "tensor1d" else out
    rows = []
    for b in range(out.size(0)):
        end = int(ends[b]) if int(ends[b]) > 0 else out.size(1)
        n_pad = int((~full_mask[b, :T]).sum()) if full_mask is not None else 0
        rows.append(out[b, n_pad:end].tolist())
    return rows[0] if kind == "list" else rows


__all__ = ["generate", "top_k_filter", "top_p_filter", "apply_repetition_penalty", "next_token_probs",
           "sample_next_token", "pad_prompts", "window_start"]
