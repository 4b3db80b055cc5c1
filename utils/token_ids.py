"""Token ids as the tokenizer and the budget helpers accept them: one sequence of ints.

    from utils.token_ids import as_token_ids
    as_token_ids(torch.tensor([15339, 1917]))     # [15339, 1917]
    as_token_ids(i for i in [1, 2, 3])            # [1, 2, 3] (a generator is read once)
    as_token_ids("hello")                         # TypeError: a str is text, not ids

:meth:`utils.tokenizer.BPETokenizer.decode`, :func:`utils.tokens.truncate` and
:func:`utils.tokens.sliding_windows` read their ``ids`` argument through :func:`as_token_ids`, so
they take a list, a tuple, a generator, numpy integers, a 1-D integer torch tensor (``generate``'s
output for one prompt) or a 1-D numpy array, and refuse with a clear message what would otherwise
give a silent wrong answer: text, bytes, an unordered set, floats, bools, a single id, or a batch
(a 2-D tensor such as ``generate``'s ``(B, T)`` output: decode each row).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

__all__ = ["as_token_ids", "as_token_id"]


def as_token_ids(ids, name: str = "ids") -> list[int]:
    """``ids`` as a list of Python ints, read once (so a generator or iterator works).

    Accepts a list/tuple/iterable of ints (numpy integers too), a 1-D integer torch tensor or numpy
    array. Raises ``TypeError`` for text, bytes, sets, dicts, floats, bools, a single int or a 0-d
    tensor, and ``ValueError`` for a tensor or array with more than one dimension (a batch).
    """
    if isinstance(ids, str):
        raise TypeError(f"{name} must be token ids (a list of ints), got a str {ids[:30]!r}; "
                        "to turn text into ids use tokenizer.encode(text)")
    if isinstance(ids, (bytes, bytearray)):
        raise TypeError(f"{name} must be token ids (a list of ints), got {type(ids).__name__}; "
                        "to turn bytes into text use data.decode('utf-8')")
    if isinstance(ids, (set, frozenset, Mapping)):
        raise TypeError(f"{name} must be an ordered sequence of token ids, got a {type(ids).__name__} "
                        "(no order); pass a list")
    if isinstance(ids, bool) or hasattr(ids, "__index__") and not hasattr(ids, "ndim"):
        raise TypeError(f"{name} must be a sequence of token ids, got the single {type(ids).__name__} "
                        f"{ids!r}; write [{ids!r}]")
    if hasattr(ids, "ndim") and hasattr(ids, "tolist"):  # a torch tensor or a numpy array
        shape = tuple(ids.shape)
        if ids.ndim != 1:
            if ids.ndim == 0:
                raise TypeError(f"{name} is a 0-d {type(ids).__name__} (one id, {ids.tolist()!r}); "
                                f"write [{ids.tolist()!r}] or [x.item()]")
            raise ValueError(f"{name} must be 1-D (one sequence of ids), got a {type(ids).__name__} of shape "
                             f"{shape}; for a batch such as generate's (B, T) output decode each row: "
                             f"[tok.decode(row) for row in {name}] (or {name}[0] for one prompt)")
        ids = ids.tolist()
    elif not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be an iterable of token ids (ints), got {type(ids).__name__}")
    out = list(ids)  # a new list, even for a list: callers may keep or change it
    if not set(map(type, out)) <= {int}:
        out = [as_token_id(x, f"{name}[{k}]") for k, x in enumerate(out)]
    return out


def as_token_id(x, name: str = "token_id") -> int:
    """One token id: an int, a numpy integer or a one-element integer tensor; bools and floats refused."""
    if not isinstance(x, (bool, float)) and getattr(x, "ndim", 0) == 0:
        try:
            return operator.index(x)
        except TypeError:
            pass
    hint = ("; for a batch decode each row: [tok.decode(row) for row in batch]"
            if isinstance(x, (list, tuple)) or getattr(x, "ndim", 0) else "")
    raise TypeError(f"{name} must be an int token id, got {type(x).__name__} {x!r}{hint}")
