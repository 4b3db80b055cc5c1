"""Learning per CPU minute: the course recipe vs nanoGPT's "baby GPT", same text, same wall clock.

    python benchmarks/pretrain_cpu.py                      # baseline, ours, its variants: 180 s each (~16 min)
    python benchmarks/pretrain_cpu.py --repeats 2          # baseline and ours twice, alternating
    python benchmarks/pretrain_cpu.py --budget 60          # quicker
    python benchmarks/pretrain_cpu.py --ablation --threads 1 --jobs 2   # each lever, two runs at a time
    python benchmarks/pretrain_cpu.py --vocab-sweep        # vocab size on the course corpus

Protocol
--------
* 2 torch threads (``--threads``), a fixed wall-clock **training** budget per model (``--budget``,
  default 180 s). Everything that happens before the first step and is specific to a recipe —
  training the BPE tokenizer and encoding the text — is *subtracted from its budget*;
  ``torch.compile`` time, when used, falls inside the budget too (it happens in the first steps).
  Evaluation is not counted.
* Text: Tiny Shakespeare (``utils.data.load_tinyshakespeare()``), first 90% train, last 10% val,
  as nanoGPT's ``prepare.py``.
* Baseline: nanoGPT's baby GPT config on characters (4 layers, 4 heads, width 128, context 64,
  batch 12, dropout 0, no biases, LayerNorm, GELU, learned positions, AdamW(0.9, 0.99), weight decay
  0.1, lr 1e-3 with 100 warmup steps then cosine to 1e-4 over the steps expected to fit the budget,
  grad clip 1.0, N(0, 0.02) init), built with our :class:`utils.model.GPT`.
* Ours: :data:`utils.pretrain.COURSE_RECIPE` with a BPE tokenizer trained on the train part:
  bf16 autocast where the CPU has bf16 matrix instructions (AMX or AVX-512 BF16), else fp32, and
  shuffled non-overlapping windows (every training token once per pass). The headline also runs it
  with each of those two choices undone, and with the baby's weight decay.
* ``--repeats N`` runs the baseline and ours N times, alternating, and reports the mean ratio: a
  shared machine's speed drifts by 10-20% between runs, and each run's bits per character follow it.
* Metric: validation **bits per character** = (sum of token NLL in nats over the val text) /
  (val characters) / ln 2, the val text tokenized as a whole and scored with **non-overlapping
  windows** of each model's context (every token but the first predicted once), so both models are
  scored on exactly the same characters.

Results are printed as a table and written to ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.data import load_tinyshakespeare  # noqa: E402
from utils.model import GPT  # noqa: E402
from utils.pretrain import BABY_GPT, COURSE_RECIPE, Recipe  # noqa: E402
from utils.runtime import set_seed  # noqa: E402
from utils.metrics import bits_per_character  # noqa: E402
from utils.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from utils.training import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def split_text(text: str) -> tuple[str, str]:
    n = int(0.9 * len(text))
    return text[:n], text[n:]


def encode(recipe: Recipe, train_text: str, val_text: str, full_text: str):
    """Token ids of train and val text for a recipe: characters, or BPE trained on ``train_text``."""
    if recipe.vocab_size is None:
        chars = sorted(set(full_text))  # as nanoGPT's prepare.py: the alphabet of the whole file
        stoi = {c: i for i, c in enumerate(chars)}
        return (torch.tensor([stoi[c] for c in train_text]), torch.tensor([stoi[c] for c in val_text]), len(chars))
    from utils.tokenizer import BPETokenizer

    tok = BPETokenizer.train(train_text, recipe.vocab_size)
    return (torch.tensor(tok.encode(train_text)), torch.tensor(tok.encode(val_text)), tok.vocab_size)


def run(name: str, recipe: Recipe, budget: float, seed: int = 1337, text: str | None = None,
        train_val: tuple[str, str] | None = None) -> dict:
    """Train ``recipe`` for ``budget`` seconds of wall clock (setup included) and score val bpc."""
    text = text if text is not None else load_tinyshakespeare()
    train_text, val_text = train_val if train_val is not None else split_text(text)
    t0 = time.perf_counter()
    train_ids, val_ids, vocab = encode(recipe, train_text, val_text, text)
    setup = time.perf_counter() - t0
    set_seed(seed)
    model = GPT(recipe.model_config(vocab))
    n_params = sum(p.numel() for p in model.parameters())
    cfg = recipe.train_config(time_budget_s=max(budget - setup, 1.0), eval_interval=0, eval_iters=1,
                              progress=False, seed=seed)
    result = train(model, train_ids, val_ids, cfg)
    t1 = time.perf_counter()
    bpc = bits_per_character(model, val_ids, len(val_text), batch_size=32)
    return {
        "name": name, "recipe": asdict(recipe), "precision": resolve_precision("cpu", recipe.precision),
        "vocab": vocab, "params": n_params,
        "steps": result.steps, "tokens": result.tokens, "setup_s": round(setup, 2),
        "train_s": round(result.seconds, 1), "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9)),
        "chars_per_token": round(len(val_text) / len(val_ids), 3), "val_bpc": round(bpc, 4),
        "eval_s": round(time.perf_counter() - t1, 1),
    }


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_many(recipes: list[tuple[str, Recipe]], budget: float, seed: int, threads: int, jobs: int) -> list[dict]:
    """Run recipes one after the other (``jobs=1``) or ``jobs`` at a time in separate processes,
    each with ``threads`` torch threads (so ``jobs * threads`` should not exceed the cores)."""
    if jobs <= 1:
        rows = []
        for name, recipe in recipes:
            rows.append(run(name, recipe, budget, seed))
            print_table(rows[-1:])
        return rows
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(run, name, recipe, budget, seed) for name, recipe in recipes]
        rows = []
        for f in futures:
            rows.append(f.result())
            print_table(rows[-1:])
    return rows


def environment(threads: int) -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": str(torch.__version__), "threads": threads, "cpu": cpu,
            "cpu_count": os.cpu_count(), "cpu_has_fast_bf16": cpu_has_fast_bf16(),
            "load_avg_before": [round(x, 2) for x in load]}


def print_table(rows: list[dict], reference: str | None = None, title: str = "") -> None:
    ref = next((r["val_bpc"] for r in rows if r["name"] == reference), None)
    if title:
        print(f"\n{title}")
    head = f"{'run':<34} {'vocab':>6} {'params':>9} {'steps':>6} {'tok/s':>7} {'train s':>7} {'val bpc':>8}"
    head += f" {'ratio':>6}" if ref else ""
    print(head)
    print("-" * len(head))
    for r in rows:
        line = (f"{r['name']:<34} {r['vocab']:>6} {r['params']:>9,} {r['steps']:>6} {r['tokens_per_s']:>7,} "
                f"{r['train_s']:>7.1f} {r['val_bpc']:>8.4f}")
        if ref:
            line += f" {r['val_bpc'] / ref:>6.3f}"
        print(line, flush=True)


# Each row changes ONE thing relative to the course recipe (leave-one-out), plus the two ends.
def ablation_recipes() -> list[tuple[str, Recipe]]:
    ours = COURSE_RECIPE
    rows = [
        ("baby GPT (chars, baseline)", BABY_GPT),
        ("baby GPT + BPE-2048 only", BABY_GPT.with_(vocab_size=2048)),
        ("ours (course recipe)", ours),
    ]
    alt_vocab = [v for v in (1024, 4096) if v != ours.vocab_size]
    rows += [(f"ours, vocab {v}", ours.with_(vocab_size=v)) for v in alt_vocab]
    rows += [
        (f"ours, context {ours.block_size // 2}", ours.with_(block_size=ours.block_size // 2)),
        ("ours, learned positions (no RoPE)", ours.with_(pos="learned")),
        ("ours, LayerNorm (no RMSNorm)", ours.with_(norm="layernorm")),
        ("ours, GELU MLP (no SwiGLU)", ours.with_(mlp="gelu")),
        ("ours, width 128 (baby's)", ours.with_(n_embd=128)),
        ("ours, lr 1e-3 (baby's)", ours.with_(lr=1e-3, min_lr=1e-4)),
        ("ours, batch 12 (baby's)", ours.with_(batch_size=12)),
        ("ours + dropout 0.1 (residual branches)", ours.with_(dropout=0.1, attn_dropout=0.0)),
        (f"ours, weight decay {BABY_GPT.weight_decay} (baby's)", ours.with_(weight_decay=BABY_GPT.weight_decay)),
        ("ours, fp32 (no bf16 autocast)", ours.with_(precision="fp32")),
        ("ours, random windows (nanoGPT)", ours.with_(sampling="random")),
        ("ours + torch.compile", ours.with_(compile=not ours.compile)),
    ]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="wall-clock seconds per model (default 180)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ablation", action="store_true", help="run every lever (see ablation_recipes)")
    parser.add_argument("--ablation-budget", type=float, default=None,
                        help="seconds per ablation run (default: --budget)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="ablation runs side by side, each with --threads threads (default 1)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these ablation rows (substring match)")
    parser.add_argument("--vocab-sweep", action="store_true",
                        help="bpc at fixed compute for several vocab sizes on the course corpus")
    parser.add_argument("--vocab-sizes", type=int, nargs="*", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--repeats", type=int, default=1,
                        help="headline: run the baseline and ours this many times, alternating (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    env["jobs"] = args.jobs if args.ablation else 1
    print(f"torch {env['torch']}, {args.threads} threads, load average before: {env['load_avg_before']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)

    if args.vocab_sweep:
        from utils.data import load_corpus

        corpus = load_corpus()
        tv = (corpus.text("train"), corpus.text("val"))
        rows = []
        for v in args.vocab_sizes:
            rows.append(run(f"course corpus, vocab {v}", COURSE_RECIPE.with_(vocab_size=v), args.budget,
                            args.seed, text=tv[0] + tv[1], train_val=tv))
            print_table(rows[-1:])
        print_table(rows, title=f"Vocab sweep: course recipe, course corpus, {args.budget:.0f} s each")
        out = args.out or RESULTS / "vocab_sweep.json"
    elif args.ablation:
        budget = args.ablation_budget or args.budget
        recipes = ablation_recipes()
        if args.only:
            recipes = [(n, r) for n, r in recipes if any(s in n for s in args.only)]
        rows = run_many(recipes, budget, args.seed, args.threads, args.jobs)
        print_table(rows, reference="baby GPT (chars, baseline)",
                    title=f"Ablation: Tiny Shakespeare, {budget:.0f} s per run, {args.threads} thread(s) each, "
                          f"{args.jobs} run(s) at a time (ratio = val bpc / baseline's)")
        out = args.out or RESULTS / "pretrain_ablation.json"
    else:
        base, ours = "baby GPT (chars, baseline)", "ours (course recipe)"
        rows, pairs = [], []
        for i in range(args.repeats):  # alternate, so a drift in machine speed hits both alike
            suffix = f" #{i + 1}" if args.repeats > 1 else ""
            rows.append(run(base + suffix, BABY_GPT, args.budget, args.seed))
            print_table(rows[-1:])
            rows.append(run(ours + suffix, COURSE_RECIPE, args.budget, args.seed))
            print_table(rows[-1:])
            pairs.append(rows[-1]["val_bpc"] / rows[-2]["val_bpc"])
        # each of the recipe's two training choices undone, and the lever that needs several
        # passes over the text to show (weight decay)
        variants = [(f"ours, random windows (nanoGPT)", COURSE_RECIPE.with_(sampling="random")),
                    (f"ours, weight decay {BABY_GPT.weight_decay} (baby's)",
                     COURSE_RECIPE.with_(weight_decay=BABY_GPT.weight_decay))]
        if resolve_precision("cpu", COURSE_RECIPE.precision) != "fp32":
            variants.insert(0, ("ours, fp32 (no bf16 autocast)", COURSE_RECIPE.with_(precision="fp32")))
        for name, recipe in variants:
            rows.append(run(name, recipe, args.budget, args.seed))
            print_table(rows[-1:])
        print_table(rows, reference=base + (" #1" if args.repeats > 1 else ""),
                    title=f"Tiny Shakespeare, {args.budget:.0f} s wall clock per model, {args.threads} threads")
        ratio = sum(pairs) / len(pairs)
        print(f"\nours / baseline bits per character: {ratio:.3f} (goal <= 0.85)"
              + (f"; mean of {len(pairs)} alternating pairs: " + ", ".join(f"{p:.3f}" for p in pairs)
                 if len(pairs) > 1 else ""))
        env["pair_ratios"] = [round(p, 4) for p in pairs]
        env["ratio"] = round(ratio, 4)
        out = args.out or RESULTS / "pretrain_cpu.json"
    env["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps({"environment": env, "budget_s": args.ablation_budget or args.budget,
                               "rows": rows}, indent=1) + "\n")
    print(f"load average after: {env['load_avg_after']}; wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
