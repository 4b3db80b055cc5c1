"""Applying learned merges to one pre-tokenized chunk: the textbook rescan, and a heap for long chunks.

BPE encoding of a chunk repeatedly merges the adjacent pair with the lowest merge id (the merge
learned first), everywhere it occurs (left to right), until no adjacent pair has a merge::

    from utils.bpe_encode import encode_chunk
    encode_chunk(list(b"hihi"), {(104, 105): 256, (256, 256): 257})   # [257]

Two implementations give the same ids:

- :func:`encode_chunk_rescan` (the textbook loop): scan all pairs, merge the best one, scan again.
  Fast for short chunks (most chunks of natural text are a word: a few bytes), but each merge
  rescans the chunk, so a chunk of n bytes costs O(n²): 64,000 random letters take seconds.
- :func:`encode_chunk_heap`: the parts in a doubly linked list and the candidate merges in a
  min-heap keyed by (merge id, position). Popping gives the next merge the rescan would apply;
  a merge only creates the two pairs around it (pushed), and entries made stale by earlier merges
  are skipped when popped (their pair no longer has that merge id). O(n log n).

:func:`encode_chunk` uses the rescan below :data:`LONG_CHUNK` ids and the heap from there on
(benchmarks/tokenizer_train.py measures both around the threshold).

Why the heap gives the same ids: applying merge r creates token r, and a pair that contains token r
can only have a merge id larger than r (a merge's parts must exist before it; the tokenizer's
constructor checks this). So no merge creates a pair that should have been applied earlier, and
popping (merge id, position) in order applies all occurrences of the best pair left to right,
exactly like one pass of the rescan, before any pair with a larger merge id.

**BPE-dropout** (Provilkov et al. 2020, "BPE-Dropout: Simple and Effective Subword
Regularization"): :func:`encode_chunk_dropout` runs the rescan, but at every step each adjacent
pair that has a merge is dropped from the candidates with probability ``p``; the best surviving
pair is merged at its surviving positions (as subword-nmt's reference implementation does), and the
chunk is done when no candidate survives. ``p=0`` gives :func:`encode_chunk`'s ids, ``p=1`` the
bytes; every outcome decodes to the same bytes. It is for training text only (a model sees several
segmentations of the same word); evaluation uses the deterministic encoding.
"""

from __future__ import annotations

import random
from heapq import heapify, heappop, heappush

__all__ = ["LONG_CHUNK", "encode_chunk", "encode_chunk_rescan", "encode_chunk_heap", "encode_chunk_dropout"]

# Chunks of at least this many ids use the heap; shorter ones (most words) the rescan, whose simple
# loop is as fast or faster there (crossover table in benchmarks/tokenizer_train.py, section 2c).
LONG_CHUNK = 16


def _check(ids, merges) -> None:
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"ids must be a list of token ids, got {type(ids).__name__}")
    if not isinstance(merges, dict):
        raise TypeError(f"merges must be a dict {{(a, b): new_id}}, got {type(merges).__name__}")


def encode_chunk(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """BPE-encode one chunk given as the ids of its bytes; picks the rescan or the heap by length."""
    _check(ids, merges)
    return _encode(list(ids), merges)


def encode_chunk_rescan(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """The textbook loop: find the pair with the lowest merge id, merge it everywhere, repeat. O(n²)."""
    _check(ids, merges)
    return _rescan(list(ids), merges)


def encode_chunk_heap(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """Same ids as :func:`encode_chunk_rescan` in O(n log n): a heap of candidate merges over a
    linked list of parts. Token ids must be non-negative."""
    _check(ids, merges)
    return _heap(list(ids), merges)


def check_dropout(p, rng=None) -> None:
    """Raise a clear error unless ``p`` is a probability in [0, 1] and ``rng`` is None or a ``random.Random``."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p (the BPE-dropout probability) must be a number in [0, 1], got {p!r}")
    if rng is not None and not isinstance(rng, random.Random):
        raise TypeError(f"rng must be None or a random.Random (e.g. random.Random(0)), got {type(rng).__name__}")


def encode_chunk_dropout(ids: list[int], merges: dict[tuple[int, int], int], p: float,
                         rng: random.Random | None = None) -> list[int]:
    """BPE-dropout on one chunk: like the rescan, but each candidate pair is skipped with
    probability ``p`` at every step (``rng``: a ``random.Random``, for reproducible draws; default
    a fresh unseeded one). ``p=0`` equals :func:`encode_chunk`; ``p=1`` returns the ids unmerged."""
    _check(ids, merges)
    check_dropout(p, rng)
    ids = list(ids)
    if p == 0.0:
        return _encode(ids, merges)
    return _rescan_dropout(ids, merges, float(p), (rng or random.Random()).random)


def _rescan_dropout(ids: list[int], merges: dict, p: float, draw) -> list[int]:
    get = merges.get
    while len(ids) >= 2:
        best_rank = None
        keep = []  # positions whose pair survived this step's draws (with their merge id)
        for i in range(len(ids) - 1):
            rank = get((ids[i], ids[i + 1]))
            if rank is not None and draw() >= p:
                keep.append((i, rank))
                if best_rank is None or rank < best_rank:
                    best_rank = rank
        if best_rank is None:
            break
        out: list[int] = []
        i = 0
        for j, rank in keep:  # the best pair at its surviving positions, left to right, no overlaps
            if rank != best_rank or j < i:
                continue
            out.extend(ids[i:j])
            out.append(best_rank)
            i = j + 2
        out.extend(ids[i:])
        ids = out
    return ids


def _encode(ids: list[int], merges: dict) -> list[int]:
    return _heap(ids, merges) if len(ids) >= LONG_CHUNK else _rescan(ids, merges)


def _rescan(ids: list[int], merges: dict) -> list[int]:
    get = merges.get
    while len(ids) >= 2:
        best = None
        best_rank = None
        prev = ids[0]
        for cur in ids[1:]:
            rank = get((prev, cur))
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = (prev, cur), rank
            prev = cur
        if best is None:
            break
        a, b = best  # merge every occurrence, left to right (inlined utils.bpe_train.merge)
        out: list[int] = []
        i, n = 0, len(ids)
        while i < n:
            if i + 1 < n and ids[i] == a and ids[i + 1] == b:
                out.append(best_rank)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids


def _heap(ids: list[int], merges: dict) -> list[int]:
    n = len(ids)
    if n < 2:
        return ids
    get = merges.get
    vals = ids                       # vals[i]: the token at node i, -1 once merged into its left neighbour
    nxt = list(range(1, n + 1))      # nxt[i]: the next live node (n: end)
    prv = list(range(-1, n - 1))     # prv[i]: the previous live node (-1: start)
    # one int per candidate, (merge id << shift) | position: ints compare faster than tuples
    shift = n.bit_length()
    mask = (1 << shift) - 1
    heap = [r << shift | i for i, r in enumerate(map(get, zip(ids, ids[1:]))) if r is not None]
    heapify(heap)
    while heap:
        key = heappop(heap)
        rank = key >> shift
        i = key & mask
        j = nxt[i]
        if j >= n or get((vals[i], vals[j])) != rank:
            continue  # stale: node i was merged away, or its pair changed since this entry was pushed
        vals[i] = rank
        vals[j] = -1
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            r = get((rank, vals[k]))
            if r is not None:
                heappush(heap, r << shift | i)
        p = prv[i]
        if p >= 0:
            r = get((vals[p], rank))
            if r is not None:
                heappush(heap, r << shift | p)
    out = []
    i = 0
    while i < n:
        out.append(vals[i])
        i = nxt[i]
    return out
