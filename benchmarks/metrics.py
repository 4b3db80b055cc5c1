"""Speed of our pure-Python metrics against the reference libraries on 10,000 sentence pairs.

    python benchmarks/metrics.py                # 10,000 pairs, 5 rounds
    python benchmarks/metrics.py --pairs 2000 --rounds 3

Pairs: 10,000 lines of the course corpus (test split) as references; each hypothesis is its
reference with random word edits (drop, repeat, swap, replace by another corpus word), so the
scores span the whole range. Three metrics, each on the same pairs both ways:

- BLEU: ``utils.metrics.bleu`` vs ``sacrebleu.corpus_bleu`` (one corpus call; our 13a cache is
  cleared before every run, as a fresh sacrebleu BLEU object starts with a cold cache);
- ROUGE-L: ``utils.metrics.rouge(..., rouge_types=["rougeL"])`` vs rouge-score's
  ``RougeScorer(["rougeL"]).score`` per pair (both pure Python; ours uses a bit-parallel LCS);
- WER: ``utils.metrics.wer`` vs ``jiwer.wer`` on the two lists (jiwer aligns with rapidfuzz's C++
  Levenshtein; ours is a bit-parallel Levenshtein on Python integers).

Rounds alternate library / ours (A/B/A/B), and each time is the median of ``--rounds`` runs, so a
slow spell of a shared machine does not land on one side only. Every run starts with ``gc.collect()``
(jiwer allocates many small objects, so its time depends on the garbage earlier runs left). The goal
is ours within 3x of each library's time. Results go to ``benchmarks/results/metrics.json`` and
``metrics.md`` (the table as printed, with the load average before the run, so an idle-machine run can
be told from a shared one); the values are checked equal.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import metrics as M  # noqa: E402
from utils.data import load_corpus  # noqa: E402


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` (reference, hypothesis) pairs from the corpus's test plays."""
    rng = random.Random(seed)
    lines = [line.strip() for p in load_corpus().filter(split="test") for line in p.text.split("\n")[1:]]
    lines = [line for line in lines if len(line.split()) >= 3]
    vocab = [w for line in lines[:5000] for w in line.split()]
    refs = [lines[i % len(lines)] for i in range(n)]
    hyps = []
    for ref in refs:
        words = ref.split()
        out = []
        for w in words:
            r = rng.random()
            if r < 0.08:
                continue  # drop
            if r < 0.16:
                out.append(rng.choice(vocab))  # replace
            elif r < 0.20:
                out += [w, w]  # repeat
            else:
                out.append(w)
        if len(out) > 2 and rng.random() < 0.3:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        hyps.append(" ".join(out) or words[0])
    return refs, hyps


def timed(fn):
    gc.collect()  # start every run from a collected heap: jiwer's time depends on the garbage collector's work
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import jiwer
    import sacrebleu
    from rouge_score import rouge_scorer

    from importlib.metadata import version

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    refs, hyps = make_pairs(args.pairs)
    scorer = rouge_scorer.RougeScorer(["rougeL"])

    def ours_bleu():
        M.tokenize_13a.cache_clear()
        return M.bleu(hyps, refs).score

    cases = {
        "BLEU": (lambda: sacrebleu.corpus_bleu(hyps, [refs]).score, ours_bleu),
        "ROUGE-L": (lambda: [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)],
                    lambda: [M.rouge(h, r, rouge_types=["rougeL"])["rougeL"].fmeasure for r, h in zip(refs, hyps)]),
        "WER": (lambda: jiwer.wer(refs, hyps), lambda: M.wer(refs, hyps)),
    }
    rows = []
    for name, (lib, ours) in cases.items():
        lib_t, our_t = [], []
        for _ in range(args.rounds):  # A/B/A/B
            t, lib_v = timed(lib)
            lib_t.append(t)
            t, our_v = timed(ours)
            our_t.append(t)
        equal = (all(abs(a - b) < 1e-9 for a, b in zip(lib_v, our_v)) if isinstance(lib_v, list)
                 else abs(lib_v - our_v) < 1e-9)
        lib_med, our_med = statistics.median(lib_t), statistics.median(our_t)
        rows.append({"metric": name, "pairs": args.pairs, "library_s": lib_med, "ours_s": our_med,
                     "ratio_ours_over_library": our_med / lib_med, "within_3x": our_med <= 3 * lib_med,
                     "equal_values": equal, "library_runs_s": lib_t, "ours_runs_s": our_t})
    versions = {name: version(name) for name in ("sacrebleu", "rouge-score", "jiwer", "rapidfuzz")}
    header = (f"{args.pairs:,} sentence pairs, median of {args.rounds} alternating rounds; Python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs, load average before the run {load_before:.2f}; "
              + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines = ["| metric | library (s) | ours (s) | ours / library | within 3x | same values |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['library_s']:.3f} | {r['ours_s']:.3f} | "
                     f"{r['ratio_ours_over_library']:.2f}x | {r['within_3x']} | {r['equal_values']} |")
    print(header)
    print("\n".join(lines))
    result = {"pairs": args.pairs, "rounds": args.rounds, "python": platform.python_version(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_before": load_before, "versions": versions, "rows": rows}
    out = ROOT / "benchmarks" / "results" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out.parent / "metrics.md").write_text("# Metrics speed benchmark\n\n" + header + "\n\n" + "\n".join(lines) + "\n",
                                           encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
