"""Learning BPE merges: the two primitives, the textbook trainer and the fast incremental one.

    from utils.bpe_train import get_stats, merge, train_naive, train_incremental
    get_stats([1, 2, 3, 1, 2])            # {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    merge([1, 2, 3, 1, 2], (1, 2), 4)     # [4, 3, 4]
    merges = train_naive(text, 512)                      # {(a, b): new_id} in the order learned
    merges, counts = train_incremental(text, 512)        # the same merges, much faster

Both trainers work on the chunks of :func:`utils.pretokenize.split_text` (merges never cross a
chunk boundary) and learn ``vocab_size - 256`` merges (fewer if the text runs out of pairs).

*Tie-breaking* is deterministic: the pair with the highest count wins; among equal counts, the
smallest pair ``(a, b)`` (compared as a tuple of ids) wins. Both trainers use this rule, so they
produce the same merges.

*The incremental trainer* works on the **unique** chunks with their frequencies (the course corpus
has about a million chunks but only ~32k distinct ones). It keeps, for every adjacent pair of ids,
its count (weighted by chunk frequency) and the set of chunks that contain it, and a max-heap of
counts. A merge only rewrites the chunks that contain the pair and only changes the counts of the
pairs around each merge site, so its cost is proportional to what it touches, not to the corpus.
:class:`utils.tokenizer.BPETokenizer.train` uses it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

from utils.checks import check_bool, check_int
from utils.pretokenize import GPT4_SPLIT_PATTERN, check_pattern, split_text

__all__ = ["get_stats", "merge", "train_naive", "train_incremental"]


# ---------------------------------------------------------------------------------------------
# The two BPE primitives (what the notebook builds first)
# ---------------------------------------------------------------------------------------------

def _check_ids_arg(name: str, ids) -> None:
    if isinstance(ids, str) or not isinstance(ids, (Sequence, bytes)):
        raise TypeError(f"{name} must be a list of token ids (ints), got {type(ids).__name__}"
                        + ("; encode text first, e.g. list(text.encode('utf-8'))" if isinstance(ids, str) else ""))


def get_stats(ids: Sequence[int], counts: dict | None = None) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: ``[1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Pass ``counts`` to add into an existing dict (counting over many chunks).
    """
    _check_ids_arg("ids", ids)
    if counts is not None and not isinstance(counts, dict):
        raise TypeError(f"counts must be a dict (or None for a new one), got {type(counts).__name__}")
    return _count_pairs(ids, {} if counts is None else counts)


def _count_pairs(ids, counts: dict) -> dict:
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], idx: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` (scanning left to right) by ``idx``.

    ``merge([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]``; overlapping occurrences are taken from the
    left: ``merge([5, 5, 5], (5, 5), 6) -> [6, 5]``.
    """
    _check_ids_arg("ids", ids)
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(f"pair must be a tuple of two token ids such as (101, 32), got {pair!r}")
    return _merge(ids, pair, check_int("idx (the new token id)", idx, minimum=0))


def _merge(ids, pair: tuple[int, int], idx: int) -> list[int]:
    """:func:`merge` without the argument checks (the trainers and the encoder call it in loops)."""
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
# Argument checks shared by both trainers (and BPETokenizer.train)
# ---------------------------------------------------------------------------------------------

def check_train_args(text, vocab_size, pattern, special_tokens, verbose=False) -> tuple[list[str], int]:
    """Validate trainer arguments; returns (special tokens as a list, number of merges to learn)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; decode bytes first "
                        "(e.g. data.decode('utf-8')) or join a list of strings")
    vocab_size = check_int("vocab_size", vocab_size)
    check_pattern(pattern)
    check_bool("verbose", verbose)
    specials = check_special_list(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs 256 byte tokens"
            + (f" plus {len(specials)} special token(s)" if specials else "")
            + f", so vocab_size must be at least {256 + len(specials)}")
    return specials, vocab_size - 256 - len(specials)


def check_special_list(special_tokens) -> list[str]:
    """``special_tokens`` (None or an iterable of distinct non-empty strings) as a list."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, (str, bytes, dict)) or not isinstance(special_tokens, Iterable):
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
# The straightforward trainer (for teaching and for the benchmark)
# ---------------------------------------------------------------------------------------------

def train_naive(text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN,
                verbose: bool = False) -> dict[tuple[int, int], int]:
    """The textbook trainer: after every merge, recount every pair of every chunk.

    Returns the merges ``{(a, b): new_id}`` in the order learned. Same tie-breaking as
    :func:`train_incremental`, hence the same merges, only much slower (each merge costs a pass
    over the whole pre-tokenized text).
    """
    _, num_merges = check_train_args(text, vocab_size, pattern, None, verbose)
    chunks = [list(c.encode("utf-8")) for c in split_text(text, pattern)]
    merges: dict[tuple[int, int], int] = {}
    for i in range(num_merges):
        stats: dict[tuple[int, int], int] = {}
        for ids in chunks:
            _count_pairs(ids, stats)
        if not stats:
            break
        pair = _best_pair(stats)
        idx = 256 + i
        chunks = [_merge(ids, pair, idx) for ids in chunks]
        merges[pair] = idx
        if verbose:
            print(f"merge {i + 1}/{num_merges}: {pair} -> {idx} ({stats[pair]} occurrences)")
    return merges


# ---------------------------------------------------------------------------------------------
# The incremental trainer
# ---------------------------------------------------------------------------------------------

def train_incremental(text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN,
                      special_tokens: Sequence[str] | None = None,
                      verbose: bool = False) -> tuple[dict[tuple[int, int], int], list[int]]:
    """Learn up to ``vocab_size - 256 - len(special_tokens)`` merges; returns ``(merges, merge_counts)``
    where ``merge_counts[k]`` is how often merge k's pair occurred when it was learned.

    Same merges as :func:`train_naive` (same tie-breaking); the special tokens only reserve ids.
    """
    _, num_merges = check_train_args(text, vocab_size, pattern, special_tokens, verbose)
    return _train_on_chunks(Counter(split_text(text, pattern)), num_merges, verbose)


def _train_on_chunks(chunk_counts: Counter, num_merges: int, verbose: bool = False):
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
