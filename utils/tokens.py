"""Token budgets in practice: count, truncate, slide windows over, and chunk text.

Every helper takes a tokenizer with ``encode(text)`` and ``decode(ids)``, so it works with our
:class:`utils.tokenizer.BPETokenizer` and with a ``tiktoken.Encoding`` alike. Helpers on ids
(:func:`truncate`, :func:`sliding_windows`) take a list of ints, a 1-D tensor or array, and return
lists; they refuse a str (a string is not token ids: use :func:`truncate_text` for text)::

    from utils.tokens import count_tokens, truncate, sliding_windows, chunk_text
    n = count_tokens(text, tok)                          # how many tokens?
    ids = truncate(tok.encode(text), 1000, side="left")  # keep the last 1000 (drop from the left)
    windows = sliding_windows(ids, window=512, stride=384)   # 128 tokens of overlap
    chunks = chunk_text(text, tok, max_tokens=300, overlap=30)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from utils.checks import check_int, check_number
from utils.token_ids import as_token_ids

__all__ = ["count_tokens", "encode_plain", "truncate", "truncate_text", "sliding_windows",
           "chunk_text", "api_cost"]


def encode_plain(text: str, tokenizer: Any) -> list[int]:
    """``tokenizer.encode(text)`` with special-token strings treated as ordinary text.

    (This is how chat APIs count a document that happens to contain "<|endoftext|>".) Tokenizers
    without tiktoken's ``disallowed_special`` argument are called as ``encode(text)``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "decode"):
        raise TypeError(f"tokenizer must have encode() and decode() methods, got {type(tokenizer).__name__}")
    try:
        return list(tokenizer.encode(text, disallowed_special=()))
    except TypeError:
        return list(tokenizer.encode(text))


def count_tokens(text: str, tokenizer: Any) -> int:
    """Number of tokens ``tokenizer`` uses for ``text`` (special-token strings count as text)."""
    return len(encode_plain(text, tokenizer))


_SIDES = ("left", "right", "middle")


def _check_side(side) -> None:
    if side not in _SIDES:
        raise ValueError(f"side must be 'left', 'right' or 'middle' (where tokens are removed), got {side!r}")


def _ids_arg(ids, func: str) -> list[int]:
    """``ids`` as a list of ints; a str gets a message pointing to the text helper."""
    if isinstance(ids, str):
        hint = ("truncate_text(text, tokenizer, max_tokens)" if func == "truncate"
                else "ids = tokenizer.encode(text) first")
        raise TypeError(f"ids must be token ids (a list of ints), got a str {ids[:30]!r}: {func}() would "
                        f"cut its characters, not its tokens; use {hint}")
    return as_token_ids(ids)


def truncate(ids: Sequence[int], max_tokens: int,
             side: Literal["left", "right", "middle"] = "right") -> list[int]:
    """At most ``max_tokens`` ids; ``side`` is where tokens are **removed**.

    - ``"right"``: keep the beginning (drop the end), e.g. a document's opening.
    - ``"left"``: keep the end (drop the beginning), e.g. the latest turns of a chat.
    - ``"middle"``: keep the beginning and the end (the extra token, if odd, goes to the beginning).

    ``ids``: a list of ints, a 1-D tensor or array (a str is refused: see :func:`truncate_text`).
    """
    check_int("max_tokens", max_tokens, minimum=0)
    _check_side(side)
    ids = _ids_arg(ids, "truncate")
    if len(ids) <= max_tokens:
        return ids
    if side == "right":
        return ids[:max_tokens]
    if side == "left":
        return ids[len(ids) - max_tokens:]
    head = (max_tokens + 1) // 2
    tail = max_tokens - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def truncate_text(text: str, tokenizer: Any, max_tokens: int,
                  side: Literal["left", "right", "middle"] = "right", marker: str = "") -> str:
    """Cut ``text`` to at most ``max_tokens`` tokens (see :func:`truncate`) and decode it.

    For ``side="middle"`` the ``marker`` (e.g. ``"\\n[...]\\n"``) is put where text was removed;
    its tokens count towards the budget. Cuts are on token boundaries, so a character split
    between two tokens may show as '�' at the cut.
    """
    check_int("max_tokens", max_tokens, minimum=0)
    _check_side(side)
    if not isinstance(marker, str):
        raise TypeError(f"marker must be a str such as '\\n[...]\\n', got {type(marker).__name__}")
    ids = encode_plain(text, tokenizer)
    if len(ids) <= max_tokens:
        return text
    if side != "middle" or not marker:
        return tokenizer.decode(truncate(ids, max_tokens, side))
    mark = encode_plain(marker, tokenizer)
    room = max_tokens - len(mark)
    if room < 2:
        raise ValueError(f"max_tokens={max_tokens} leaves no room beside the marker ({len(mark)} tokens)")
    head = (room + 1) // 2
    return tokenizer.decode(ids[:head]) + marker + tokenizer.decode(ids[len(ids) - (room - head):])


def sliding_windows(ids: Sequence[int], window: int, stride: int) -> list[list[int]]:
    """Windows of ``window`` ids starting every ``stride`` ids until one reaches the end.

    Consecutive windows overlap by ``window - stride`` ids (the context a model keeps when it
    scores or reads a long text piece by piece); every id is in at least one window, and only the
    last window may be shorter. ``stride`` must be between 1 and ``window`` (a larger stride would
    skip ids). An empty input gives no windows.
    """
    check_int("window", window, minimum=1)
    check_int("stride", stride, minimum=1)
    if stride > window:
        raise ValueError(f"stride={stride} > window={window} would skip tokens; use stride <= window")
    ids = _ids_arg(ids, "sliding_windows")
    out = []
    start = 0
    while start < len(ids):
        out.append(ids[start:start + window])
        if start + window >= len(ids):
            break
        start += stride
    return out


_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")  # a blank line (and any whitespace after it)


def _paragraphs(text: str) -> list[str]:
    """Split into paragraphs that keep their trailing blank lines: ``"".join(result) == text``."""
    out, start = [], 0
    for m in _PARAGRAPH_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


def _token_cuts(text: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids of ``text`` and, for each token boundary, its character offset (or -1 if the
    boundary falls inside a character)."""
    ids = encode_plain(text, tokenizer)
    data = text.encode("utf-8")
    decode_bytes = getattr(tokenizer, "decode_single_token_bytes", None) or getattr(tokenizer, "token_bytes", None)
    if decode_bytes is None:  # a tokenizer without byte access: fall back on decoded prefixes
        offsets = [0]
        for k in range(1, len(ids) + 1):
            prefix = tokenizer.decode(ids[:k])
            offsets.append(len(prefix) if text.startswith(prefix) else -1)
        return ids, offsets
    byte_offsets = [0]
    for i in ids:
        byte_offsets.append(byte_offsets[-1] + len(decode_bytes(i)))
    if byte_offsets[-1] != len(data):
        raise ValueError("the tokenizer's tokens do not add up to the text's bytes; chunk_text needs "
                         "a byte-level tokenizer (or one whose decode reproduces its input)")
    char_at_byte = {}
    pos = 0
    for ch_index, ch in enumerate(text):
        char_at_byte[pos] = ch_index
        pos += len(ch.encode("utf-8"))
    char_at_byte[pos] = len(text)
    return ids, [char_at_byte.get(b, -1) for b in byte_offsets]


def _split_long(text: str, tokenizer: Any, budget: int) -> list[str]:
    """Cut ``text`` at token boundaries (that are also character boundaries) into pieces of at most
    ``budget`` tokens each (re-encoded), ``"".join(pieces) == text``."""
    ids, offsets = _token_cuts(text, tokenizer)
    pieces = []
    k = 0  # token index where the current piece starts
    while k < len(ids):
        end = min(k + budget, len(ids))
        while True:
            while end > k + 1 and offsets[end] < 0:
                end -= 1
            if offsets[end] < 0:  # a single token that ends inside a character: extend instead
                end = k + 1
                while offsets[end] < 0:
                    end += 1
            piece = text[offsets[k]:offsets[end]]
            # a piece re-encoded on its own can take more tokens than its slice; shrink until it fits
            if end == k + 1 or count_tokens(piece, tokenizer) <= budget:
                break
            end -= 1
        pieces.append(piece)
        k = end
    return pieces


def chunk_text(text: str, tokenizer: Any, max_tokens: int, overlap: int = 0) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens, keeping paragraphs whole.

    Paragraphs (separated by blank lines) are packed greedily into a chunk while it fits; a
    paragraph longer than the budget is cut at token boundaries. Every chunk is an exact substring
    of ``text``: with ``overlap=0`` the chunks concatenate back to ``text``. With ``overlap > 0``
    each chunk after the first starts with (about) the last ``overlap`` tokens of the previous one,
    so a fact cut at a chunk border appears whole in one of them. Each chunk, encoded on its own,
    has at most ``max_tokens`` tokens (a single token that is longer than a character boundary
    allows is the only exception and cannot happen with ``max_tokens >= 4``).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    encode_plain("", tokenizer)  # checks the tokenizer
    check_int("max_tokens", max_tokens, minimum=1)
    check_int("overlap", overlap, minimum=0)
    if overlap >= max_tokens:
        raise ValueError(f"overlap={overlap} must be smaller than max_tokens={max_tokens}")
    if not text:
        return []
    budget = max_tokens - overlap  # room for new text in each chunk
    units: list[str] = []
    for para in _paragraphs(text):
        if count_tokens(para, tokenizer) <= budget:
            units.append(para)
        else:
            units.extend(_split_long(para, tokenizer, budget))

    chunks: list[str] = []
    prefix = ""  # the overlap carried over from the previous chunk
    body = ""    # the whole units added to the current chunk
    for unit in units:
        if body and count_tokens(prefix + body + unit, tokenizer) <= max_tokens:
            body += unit
            continue
        if body:  # the current chunk is full: emit it, start the next one with its tail
            chunks.append(prefix + body)
            prefix = _tail(prefix + body, tokenizer, overlap)
        if prefix and count_tokens(prefix + unit, tokenizer) > max_tokens:
            prefix = ""  # re-encoding made prefix + unit a token too long: drop the overlap
        body = unit
    if body:
        chunks.append(prefix + body)
    return chunks


def _tail(chunk: str, tokenizer: Any, n_tokens: int) -> str:
    """The suffix of ``chunk`` made of (about) its last ``n_tokens`` tokens, cut at a character boundary."""
    if n_tokens == 0:
        return ""
    ids, offsets = _token_cuts(chunk, tokenizer)
    k = max(0, len(ids) - n_tokens)
    while k < len(ids) and offsets[k] < 0:
        k += 1
    return chunk[offsets[k]:] if k < len(ids) else ""


def api_cost(n_tokens: int, price_per_million: float) -> float:
    """Dollars for ``n_tokens`` at ``price_per_million`` dollars per million tokens."""
    check_int("n_tokens", n_tokens, minimum=0)
    check_number("price_per_million", price_per_million, minimum=0)
    return n_tokens * price_per_million / 1_000_000
