"""Generation speed of the course model: KV cache vs recomputing the whole context every step.

    python benchmarks/generation.py                 # 2 threads, the committed course model
    python benchmarks/generation.py --threads 1 --repeats 5

Three tables:
1. 256 greedy tokens from a short prompt, cached vs recompute: tokens/s, speedup, identical tokens,
   and tokens/s over the first and the last 32 steps (the cached path should stay flat);
2. tokens/s both ways over output lengths;
3. tokens/s both ways over batch sizes (total tokens per second across the batch);
4. the headline again with the model under ``torch.compile`` (both paths compiled; ``--no-compile``
   skips it): what is left when the Python and small-op overhead of each step is compiled away.
Each number is the best of ``--repeats`` runs (least disturbed by other processes), the two paths
run alternately so that a drift in the machine's speed cannot favour one of them.
Results are also written to ``benchmarks/results/generation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.generation import generate  # noqa: E402
from utils.pretrain import load_course_model  # noqa: E402

PROMPT = "ROMEO:\n"


def timed_generate(model, prompt_ids, n, use_cache, batch=1):
    """(total seconds, per-step finish times, output) for one greedy generation."""
    stamps = []
    prompts = [prompt_ids] * batch if batch > 1 else prompt_ids
    t0 = time.perf_counter()
    out = generate(model, prompts, n, temperature=0, use_cache=use_cache,
                   callback=lambda step, tok: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    return total, [s - t0 for s in stamps], out


def best_of_alternating(repeats, fn_a, fn_b):
    """(best of fn_a, best of fn_b) over ``repeats`` rounds of a-then-b: on a shared machine whose
    speed drifts, alternating keeps a slow spell from landing on one path only."""
    runs_a, runs_b = [], []
    for _ in range(repeats):
        runs_a.append(fn_a())
        runs_b.append(fn_b())
    return min(runs_a, key=lambda r: r[0]), min(runs_b, key=lambda r: r[0])


def window_rate(stamps, first: bool, width: int = 32) -> float:
    """Tokens/s over the first or the last ``width`` steps (the first step includes the prefill)."""
    if first:
        return (width - 1) / (stamps[width - 1] - stamps[0])
    return width / (stamps[-1] - stamps[-width - 1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="*", default=[32, 64, 128, 256, 512])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile table")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_course_model()
    cfg = model.config
    prompt = tok.encode(PROMPT)
    n_params = sum(p.numel() for p in model.parameters())
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"course model: {n_params:,} parameters, {cfg.n_layer} layers x {cfg.n_embd}, context {cfg.block_size}, "
          f"pos={cfg.pos}; prompt {PROMPT!r} = {len(prompt)} tokens; {args.threads} threads; load average {load}")
    timed_generate(model, prompt, 16, True)  # warm up allocators and kernels
    timed_generate(model, prompt, 16, False)

    # 1. the headline: 256 greedy tokens
    n = args.tokens
    rec, cac = best_of_alternating(args.repeats, lambda: timed_generate(model, prompt, n, False),
                                   lambda: timed_generate(model, prompt, n, True))
    same = rec[2] == cac[2]
    headline = {
        "tokens": n, "recompute_tok_s": n / rec[0], "cached_tok_s": n / cac[0], "speedup": rec[0] / cac[0],
        "identical_tokens": same,
        "cached_first32_tok_s": window_rate(cac[1], True), "cached_last32_tok_s": window_rate(cac[1], False),
        "recompute_first32_tok_s": window_rate(rec[1], True), "recompute_last32_tok_s": window_rate(rec[1], False),
    }
    headline["cached_start_over_end"] = headline["cached_first32_tok_s"] / headline["cached_last32_tok_s"]
    slides = n + len(prompt) > cfg.block_size
    print(f"\n{n} greedy tokens from a {len(prompt)}-token prompt (best of {args.repeats})"
          + (f"; the context ({cfg.block_size}) slides during the run" if slides else ""))
    print(f"{'path':<12} {'tokens/s':>9} {'first 32 tok/s':>15} {'last 32 tok/s':>14}")
    print(f"{'recompute':<12} {headline['recompute_tok_s']:>9.1f} {headline['recompute_first32_tok_s']:>15.1f} "
          f"{headline['recompute_last32_tok_s']:>14.1f}")
    print(f"{'KV cache':<12} {headline['cached_tok_s']:>9.1f} {headline['cached_first32_tok_s']:>15.1f} "
          f"{headline['cached_last32_tok_s']:>14.1f}")
    print(f"speedup {headline['speedup']:.2f}x (goal >= 4x); identical tokens: {same}; cached tokens/s "
          f"first/last 32 = {headline['cached_start_over_end']:.2f} (goal within 1.5x)")

    # 2. over lengths
    print(f"\ntokens/s over output length (batch 1, best of {args.repeats})")
    print(f"{'new tokens':>10} {'recompute':>10} {'KV cache':>9} {'speedup':>8} {'same':>5}")
    lengths = []
    for L in args.lengths:
        r, c = best_of_alternating(args.repeats, lambda: timed_generate(model, prompt, L, False),
                                   lambda: timed_generate(model, prompt, L, True))
        row = {"new_tokens": L, "recompute_tok_s": L / r[0], "cached_tok_s": L / c[0], "speedup": r[0] / c[0],
               "identical_tokens": r[2] == c[2]}
        lengths.append(row)
        print(f"{L:>10} {row['recompute_tok_s']:>10.1f} {row['cached_tok_s']:>9.1f} {row['speedup']:>7.2f}x "
              f"{str(row['identical_tokens']):>5}")

    # 3. over batch sizes
    L = args.batch_tokens
    print(f"\ntotal tokens/s over batch size ({L} new tokens per row, best of {args.repeats})")
    print(f"{'batch':>6} {'recompute':>10} {'KV cache':>9} {'speedup':>8}")
    batches = []
    for B in args.batches:
        r, c = best_of_alternating(args.repeats, lambda: timed_generate(model, prompt, L, False, batch=B),
                                   lambda: timed_generate(model, prompt, L, True, batch=B))
        row = {"batch": B, "recompute_tok_s": B * L / r[0], "cached_tok_s": B * L / c[0], "speedup": r[0] / c[0]}
        batches.append(row)
        print(f"{B:>6} {row['recompute_tok_s']:>10.1f} {row['cached_tok_s']:>9.1f} {row['speedup']:>7.2f}x")

    # 4. both paths under torch.compile (C++ wrapper: the per-step launch code is compiled too)
    compiled = None
    if not args.no_compile:
        print(f"\n{n} greedy tokens, model under torch.compile (both paths; best of {args.repeats})")
        try:
            cmodel = torch.compile(model, options={"cpp_wrapper": True})
            t0 = time.perf_counter()
            timed_generate(cmodel, prompt, n, True)  # compiles the prefill and decoding graphs
            timed_generate(cmodel, prompt, n, False)  # and the recompute graph (dynamic length)
            compile_s = time.perf_counter() - t0
            rec_c, cac_c = best_of_alternating(args.repeats, lambda: timed_generate(cmodel, prompt, n, False),
                                               lambda: timed_generate(cmodel, prompt, n, True))
            compiled = {"tokens": n, "compile_and_first_runs_s": compile_s, "recompute_tok_s": n / rec_c[0],
                        "cached_tok_s": n / cac_c[0], "speedup": rec_c[0] / cac_c[0],
                        "identical_tokens": rec_c[2] == cac_c[2] == cac[2]}
            print(f"{'path':<12} {'tokens/s':>9} {'vs eager':>9}")
            print(f"{'recompute':<12} {compiled['recompute_tok_s']:>9.1f} "
                  f"{compiled['recompute_tok_s'] / headline['recompute_tok_s']:>8.2f}x")
            print(f"{'KV cache':<12} {compiled['cached_tok_s']:>9.1f} "
                  f"{compiled['cached_tok_s'] / headline['cached_tok_s']:>8.2f}x")
            print(f"speedup {compiled['speedup']:.2f}x; identical tokens (both paths and eager): "
                  f"{compiled['identical_tokens']}; compiling + first runs took {compile_s:.0f} s")
        except Exception as e:  # no C++ compiler, an unsupported platform: say so, keep the other tables
            compiled = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"torch.compile failed: {compiled['error']}")

    result = {"threads": args.threads, "load_avg_before": load, "load_avg_after": [round(x, 2) for x in os.getloadavg()],
              "params": n_params, "prompt_tokens": len(prompt), "headline": headline, "lengths": lengths,
              "batches": batches, "compiled": compiled}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nload average after: {result['load_avg_after']}")
    return result


if __name__ == "__main__":
    main()
