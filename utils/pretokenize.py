r"""Pre-tokenization: cut text into chunks with a regex before BPE, exactly as tiktoken does.

BPE merges never cross a chunk boundary, so the split pattern decides what can become a token::

    from utils.pretokenize import GPT4_SPLIT_PATTERN, split_text
    split_text("Hello world, it's 2024!", GPT4_SPLIT_PATTERN)
    # ['Hello', ' world', ',', ' it', "'s", ' ', '202', '4', '!']

*Unicode version*: ``\p{L}`` and ``\p{N}`` depend on the Unicode tables of the regex engine.
tiktoken's Rust regex uses Unicode 16.0; the ``regex`` module may be newer (or older). When a text
contains one of the few characters on which they disagree, :func:`split_text` uses a copy of the
pattern whose letter and number classes are pinned to Unicode 16.0 (:mod:`utils.unicode_tables`),
so chunks, and therefore ids, are tiktoken's for every text. Other texts use the plain, faster
pattern.
"""

from __future__ import annotations

import functools

import regex

from utils.unicode_tables import UNICODE16_LETTERS, UNICODE16_NUMBERS, parse_ranges

__all__ = ["GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN", "CAPS_SPLIT_PATTERN", "split_text", "compile_split_pattern", "check_pattern"]

# GPT-2's split pattern as tiktoken writes it (r50k_base): equivalent to the original GPT-2 regex
# r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""" but faster.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's (cl100k_base) split pattern, exactly tiktoken's string: case-insensitive contractions,
# letters with at most one leading non-letter, numbers in groups of at most 3 digits, punctuation
# runs that swallow following newlines, and whitespace runs that leave their last space to the next word.
GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""

# GPT-4's pattern, except that a capital letter followed by another capital is a chunk of its own: a word in
# capitals that starts a line (a speaker name such as "PROSPERO:") is spelled in single letters, so BPE learns no
# pieces of it. (After a space GPT-4's alternative wins: " AND" stays one chunk with its space.)
# A pretraining lever tried by benchmarks/pretrain_cpu.py (its seventh round; ``Recipe.pretokenizer``).
CAPS_SPLIT_PATTERN = r"\p{Lu}(?=\p{Lu})|" + GPT4_SPLIT_PATTERN


def split_text(text: str, pattern: str | None) -> list[str]:
    """Pre-tokenize ``text`` into chunks with ``pattern`` (``None``: the whole text is one chunk),
    using tiktoken's Unicode version for letters and numbers. ``"".join(chunks)`` is ``text`` when
    the pattern matches every character (both GPT patterns do)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if pattern is None:
        return [text] if text else []
    plain, pinned, differ = compile_split_pattern(pattern)
    if pinned is not None and not text.isascii() and not differ.isdisjoint(text):
        return pinned.findall(text)  # rare: the text has a character whose class changed after 16.0
    return plain.findall(text)


def check_pattern(pattern) -> None:
    """Raise a clear error unless ``pattern`` is None or a regex string that compiles."""
    if pattern is not None:
        compile_split_pattern(pattern)


def compile_split_pattern(pattern: str):
    """(plain compiled pattern, Unicode-16-pinned pattern or None, the characters on which they differ).

    Raises ``TypeError`` for a non-str ``pattern`` and ``ValueError`` (naming the pattern) when it
    does not compile. Cached: each pattern is compiled once per process.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a regex string (e.g. GPT4_SPLIT_PATTERN) or None, "
                        f"got {type(pattern).__name__}")
    return _compile(pattern)


@functools.lru_cache(maxsize=32)
def _compile(pattern: str):
    try:
        plain = regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"pattern={pattern!r} is not a valid regex: {exc}") from exc
    pinned_src = _pin_pattern(pattern)
    if pinned_src is None:
        return plain, None, None
    try:
        pinned = regex.compile(pinned_src, regex.V1)
    except regex.error:  # an unusual pattern we cannot rewrite: keep the installed Unicode tables
        return plain, None, None
    chars = frozenset(chr(cp) for extra, missing in _unicode_fixes().values() for cp in _expand(extra + missing))
    return plain, pinned, chars


# ---------------------------------------------------------------------------------------------
# Pinning \p{L} and \p{N} to Unicode 16.0
# ---------------------------------------------------------------------------------------------

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
    for name, packed in (("L", UNICODE16_LETTERS), ("N", UNICODE16_NUMBERS)):
        have = {(m.start(), m.end() - 1) for m in regex.finditer(r"\p{%s}+" % name, every)}
        want = set(parse_ranges(packed))
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
