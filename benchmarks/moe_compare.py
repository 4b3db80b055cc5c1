"""Dense vs MoE vs hybrid language models at equal active parameters and equal wall-clock (notebook 05's table).

    python benchmarks/moe_compare.py             # every missing run (about 15 min on 2 idle cores)
    python benchmarks/moe_compare.py --next 4    # only the next 4 missing runs (resumable: results are kept)
    python benchmarks/moe_compare.py --report    # print the table of benchmarks/results/moe_compare.json
    python benchmarks/moe_compare.py --models dense MoE --dense-steps 750 --out benchmarks/results/moe_compare_long.json
                                                 # the same protocol, 3x the dense steps (about 15 min)
    python benchmarks/moe_compare.py --models dense "MoE x2" MoE --dense-steps 750 --val-start 200000 --seeds 0 \
        --timing-rounds 20 --out benchmarks/results/moe_compare_screen.json
                                                 # a screen: candidates scored on validation text the tables never report

The protocol of notebook 05's "Dense vs MoE vs hybrid" section, with more seeds than the notebook runs live.
Models of the course shape (``COURSE_RECIPE``: 4 layers, width 192, context 128, SwiGLU, RoPE, vocabulary
2048), all with the same active parameters:

- ``dense``: one SwiGLU MLP of width H = 512 per block;
- ``MoE``: 8 experts of width H/2, top-2 (Mixtral-style fine-grained experts);
- ``hybrid``: a dense MLP of width H/2 plus 8 experts of width H/4, top-2 (DeepSpeed's residual MoE);
- ``MoE top-1``: 8 experts of width H, top-1 (Switch Transformer style: same active parameters, half the
  token-expert assignments to route, each expert as wide as the dense MLP).

1. **Step times** (measured once, on the first invocation, and stored, so that resumed invocations use
   the same budgets): one fp32 training step of each model as ``train()`` runs it, on this process's
   threads (``--threads``, default 2), interleaved rounds, median.
2. **Budget**: the dense model gets ``--dense-steps`` steps; each other model the steps that fit in the
   same time (``round(budget / its step time)``), with the same learning-rate schedule shape (warm-up 10%,
   cosine to the end of its own budget), training text (the course corpus's training split) and seeds.
3. **Score**: bits per character on the first ``--val-chars`` characters of the validation split (what the
   notebook reports; no setting here was chosen by looking at it), and (runs made since 2026-12-02, ``train_bpc``)
   on as many characters of the training text, which every run reads: validation minus training shows how much of
   a model's fit is memorised. Runs go round robin (seed 0 of every
   model, then seed 1, ...), so an interrupted benchmark leaves balanced results.

**Screens.** A change to the MoE (the candidates of ``CANDIDATES``) is first tried on a screening slice
(``--val-start 200000``: validation characters [200,000, 260,000), which no reported table scores), and only a
winner is run on the reported slice (round 7's winner, ``MoE shared alternate``, was; it did not hold there).
``MoE x2`` and ``MoE`` have the same step cost (the factor multiplies the
n x k routing weights); timing them separately shows the timing noise.

Everything trains in fp32 (notebook 05 shows why: in bf16 on a CPU the MoE step gains less from bf16 than
the dense step). The MoE layers use the layer's default dispatch, recorded in the results as
``moe_dispatch`` (``"auto"``, which runs ``grouped_mm`` on a CPU whose PyTorch has it; files without the
field were made when the default was ``"sort"``). Results: ``benchmarks/results/moe_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.moe import cpu_name  # noqa: E402
from utils.data import load_corpus  # noqa: E402
from utils.metrics import bits_per_character  # noqa: E402
from utils.model import GPT  # noqa: E402
from utils.moe import resolve_dispatch  # noqa: E402
from utils.params import count_parameters  # noqa: E402
from utils.pretrain import COURSE_RECIPE, EOT, load_course_model, training_text  # noqa: E402
from utils.runtime import set_seed  # noqa: E402
from utils.training import train  # noqa: E402

MODELS = ("dense", "MoE", "hybrid", "MoE top-1")
# Screening candidates (run with --models and scored with --val-start on text the table never reports)
CANDIDATES = ("MoE x2", "MoE x2 alternate", "MoE top-1 x8", "MoE x2 alternate x16", "MoE fine alternate",
              "MoE x2 alternate x4", "MoE x2 x4", "MoE shared alternate", "MoE shared")
OUT = ROOT / "benchmarks" / "results" / "moe_compare.json"


def model_configs(vocab_size: int) -> dict:
    """The four configurations of the comparison (see the module docstring), then the screening
    candidates: ``MoE x2`` is ``MoE`` with ``routed_scaling_factor=2`` (top-2 weights sum to 1 over experts
    of half the dense width, so the plain MoE's output starts at about half the dense MLP's; the factor
    restores the dense scale), ``MoE x2 alternate`` the same in every other block (blocks 1 and 3, counted from
    0; dense MLPs in 0 and 2, as GShard and Switch alternate), ``MoE top-1 x8`` the Switch-style top-1 MoE with
    a factor of 8: its weight is the raw router probability (about 1/8 at the start), so its output starts
    at about 1/8 of the dense MLP's. ``MoE x2 alternate x16`` doubles the experts of ``MoE x2 alternate`` (16 of half
    the dense width: twice the parameters, the same active ones); ``MoE fine alternate`` splits them finer
    (DeepSeekMoE's fine-grained experts: 16 of a quarter of the dense width, top-4, factor 4, since four weights
    that sum to 1 over experts of a quarter width start at about a quarter of the dense output). ``MoE x2 alternate
    x4`` and ``MoE x2 x4`` go the other way: 4 experts of half the dense width (each sees twice the tokens of one
    of 8), in blocks 1 and 3 or in every block. ``MoE shared alternate`` and ``MoE shared`` add DeepSeekMoE's
    always-on shared expert: a shared MLP of half the dense width beside 8 routed experts of a quarter width, top-2,
    factor 2 (the shared half starts at about half the dense output, the two routed quarters with the factor at
    the other half; active width H/2 + 2 * H/4 = H), in blocks 1 and 3 or in every block."""
    dense = COURSE_RECIPE.model_config(vocab_size)
    H = dense.resolved_ffn_hidden
    moe = replace(dense, n_expert=8, top_k=2, expert_hidden=H // 2)
    shared = replace(dense, n_expert=8, top_k=2, expert_hidden=H // 4, n_shared_expert=2, routed_scaling_factor=2.0)
    return {"dense": dense,
            "MoE": moe,
            "hybrid": replace(dense, n_expert=8, top_k=2, expert_hidden=H // 4, ffn_hidden=H // 2, moe_hybrid=True),
            "MoE top-1": replace(dense, n_expert=8, top_k=1, expert_hidden=H),
            "MoE x2": replace(moe, routed_scaling_factor=2.0),
            "MoE x2 alternate": replace(moe, routed_scaling_factor=2.0, moe_layers=(1, 3)),
            "MoE top-1 x8": replace(dense, n_expert=8, top_k=1, expert_hidden=H, routed_scaling_factor=8.0),
            "MoE x2 alternate x16": replace(moe, n_expert=16, routed_scaling_factor=2.0, moe_layers=(1, 3)),
            "MoE fine alternate": replace(dense, n_expert=16, top_k=4, expert_hidden=H // 4, routed_scaling_factor=4.0,
                                          moe_layers=(1, 3)),
            "MoE x2 alternate x4": replace(moe, n_expert=4, routed_scaling_factor=2.0, moe_layers=(1, 3)),
            "MoE x2 x4": replace(moe, n_expert=4, routed_scaling_factor=2.0),
            "MoE shared alternate": replace(shared, moe_layers=(1, 3)),
            "MoE shared": shared}


def step_timer(cfg, train_ids: torch.Tensor):
    """One fp32 training step of a fresh model of ``cfg`` (forward, backward, AdamW), as ``train()`` runs it."""
    set_seed(0)
    m = GPT(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    n, bs = cfg.block_size * COURSE_RECIPE.batch_size, COURSE_RECIPE.batch_size
    xb, yb = train_ids[:n].view(bs, -1), train_ids[1:n + 1].view(bs, -1)

    def one():
        _, loss = m(xb, yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    one()
    return one


def measure_step_times(cfgs: dict, train_ids: torch.Tensor, rounds: int) -> dict:
    timers = {name: step_timer(c, train_ids) for name, c in cfgs.items()}
    times = {name: [] for name in timers}
    for _ in range(rounds):
        for name, fn in timers.items():  # interleaved: a slow moment of the machine hits every model alike
            t0 = time.perf_counter()
            fn()
            fn()
            times[name].append((time.perf_counter() - t0) / 2)
    return {name: statistics.median(v) for name, v in times.items()}


def load_texts(val_start: int, val_chars: int) -> tuple:
    """``(tokenizer, training ids, texts)`` of the comparison: the course tokenizer, the course corpus's
    training split as ids, and ``texts = {"val": (ids, text), "seen": (ids, text)}``: validation characters
    ``[val_start, val_start + val_chars)``, and as many characters of *training* text (read by every run;
    within the first play, so no end-of-text token): validation minus training bits/char shows how much of
    a model's fit is memorised."""
    _, tok = load_course_model()
    corpus = load_corpus()
    train_ids = torch.tensor(tok.encode(training_text(corpus, "train"), allowed_special={EOT}))
    val_text = corpus.text("val")[val_start:val_start + val_chars]
    if len(val_text) < val_chars:
        raise SystemExit(f"the validation split has {len(corpus.text('val')):,} characters: [{val_start:,}, "
                         f"{val_start + val_chars:,}) does not fit; lower --val-start or --val-chars")
    seen_text = training_text(corpus, "train")[:val_chars].split(EOT)[0]
    return tok, train_ids, {name: (torch.tensor(tok.encode(t)), t) for name, t in (("val", val_text), ("seen", seen_text))}


def train_and_score(model: GPT, steps: int, seed: int, train_ids: torch.Tensor, texts: dict) -> dict:
    """Train ``model`` in place for ``steps`` fp32 steps (the course recipe's settings; warm-up 10%, cosine
    to the end of its own steps) and score it on ``texts`` (:func:`load_texts`): the fields of one run."""
    val_ids, val_text = texts["val"]
    seen_ids, seen_text = texts["seen"]
    run = train(model, train_ids, val_ids, COURSE_RECIPE.train_config(
        max_steps=steps, warmup_steps=max(steps // 10, 1), eval_interval=0, eval_iters=2, seed=seed,
        precision="fp32", progress=False))
    return {"steps": run.steps, "seconds": run.seconds, "tokens_per_s": run.tokens / run.seconds,
            "bpc": bits_per_character(model, val_ids, len(val_text)),
            "train_bpc": bits_per_character(model, seen_ids, len(seen_text)), "train_chars": len(seen_text),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def save(bench: dict, path: Path) -> None:
    """Write a results file (after every run, so that an interrupted benchmark keeps what it has)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bench, indent=1) + "\n")


def print_report(bench: dict) -> dict:
    """Print the table of a results file; returns {model: mean val bits/char over its runs}."""
    cfg = bench["config"]
    start = cfg.get("val_start", 0)
    where = (f"the first {cfg['val_chars']:,} characters" if not start else
             f"characters [{start:,}, {start + cfg['val_chars']:,}) (a screening slice)")
    print(f"Course corpus, {bench['budget_s']:.0f} s of fp32 training per model (the dense model's "
          f"{cfg['dense_steps']} steps), {bench['threads']} threads, CPU {bench['cpu']}; bits/char on {where} of "
          f"the validation split.")
    print(f"MoE layers dispatched with {bench.get('moe_dispatch', 'sort (the default when this file was made)')}")
    print("step times (s/step, median): " + ", ".join(
        f"{n} {1e3 * s:.0f} ms ({s / bench['sec_per_step']['dense']:.2f}x dense)" for n, s in bench["sec_per_step"].items()))
    w = max(17, *(len(n) for n in bench["models"]))
    header = (f"{'model':<{w}} {'total params':>12} {'active params':>13} {'steps':>5} {'train s':>7} {'tokens/s':>8}  "
              f"val bits/char per seed{'':<8} mean")
    print(header)
    print("-" * len(header))
    means = {}
    gaps = []
    for name in bench["models"]:
        runs = sorted((r for r in bench["runs"] if r["model"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        means[name] = statistics.mean(r["bpc"] for r in runs)
        per_seed = ", ".join(f"{r['bpc']:.3f}" for r in runs)
        print(f"{name:<{w}} {runs[0]['total_params']:>12,} {runs[0]['active_params']:>13,} {runs[0]['steps']:>5} "
              f"{statistics.mean(r['seconds'] for r in runs):>7.0f} "
              f"{statistics.mean(r['tokens_per_s'] for r in runs):>8,.0f}  {per_seed:<30} {means[name]:.3f}")
        if all("train_bpc" in r for r in runs):
            gaps.append(f"{name} " + ", ".join(f"{r['train_bpc']:.3f} (val - train {r['bpc'] - r['train_bpc']:+.3f})"
                                               for r in runs))
    if gaps:  # runs made since the field was added
        n_seen = next(r["train_chars"] for r in bench["runs"] if "train_chars" in r)
        print(f"bits/char on the first {n_seen:,} characters of the training text (seen in training), per seed: "
              + "; ".join(gaps))
    return means


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + CANDIDATES)
    parser.add_argument("--dense-steps", type=int, default=250)
    parser.add_argument("--val-chars", type=int, default=60_000)
    parser.add_argument("--val-start", type=int, default=0,
                        help="score on validation characters [val-start, val-start + val-chars): screens use 200000, "
                             "text the reported table (val-start 0) never sees")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="interleaved timing rounds (2 steps of each model per round); the median is kept")
    parser.add_argument("--next", type=int, default=None, help="run only the next N missing runs")
    parser.add_argument("--report", action="store_true", help="only print the table of the results file")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for flag, value, least in (("--val-start", args.val_start, 0), ("--val-chars", args.val_chars, 1),
                               ("--dense-steps", args.dense_steps, 1), ("--threads", args.threads, 1),
                               ("--timing-rounds", args.timing_rounds, 1), ("--next", 1 if args.next is None else args.next, 1)):
        if value < least:  # a negative start would silently score text from the end of the split
            raise SystemExit(f"{flag} must be {least} or more, not {value}")
    bench = load(args.out)
    if args.report:
        if bench is None:
            raise SystemExit(f"no results yet: {args.out}")
        print_report(bench)
        return bench
    torch.set_num_threads(args.threads)
    config = {"dense_steps": args.dense_steps, "val_chars": args.val_chars, "precision": "fp32",
              "timing_rounds": args.timing_rounds}
    if args.val_start:  # (files of the reported table have no such key)
        config["val_start"] = args.val_start
    if bench is not None and (bench["config"] != config or bench["threads"] != args.threads):
        raise SystemExit(f"{args.out} was made with {bench['config']} on {bench['threads']} threads, not {config} on "
                         f"{args.threads}: use another --out")
    tok, train_ids, texts = load_texts(args.val_start, args.val_chars)
    cfgs_all = model_configs(tok.vocab_size)
    cfgs = {name: c for name, c in cfgs_all.items() if name in args.models}
    missing = [name for name in cfgs if bench is not None and name not in bench["sec_per_step"]]
    if missing:  # a candidate added to an existing file: timed beside dense, kept at its ratio to the stored dense
        sec = measure_step_times({name: cfgs_all[name] for name in ["dense", *missing]}, train_ids,
                                 args.timing_rounds)
        for name in missing:
            bench["sec_per_step"][name] = sec[name] / sec["dense"] * bench["sec_per_step"]["dense"]
            bench["steps"][name] = max(2, round(bench["budget_s"] / bench["sec_per_step"][name]))
            bench["models"].append(name)
        print("step times added: " + ", ".join(f"{n} {sec[n] / sec['dense']:.3f}x dense" for n in missing)
              + f" -> steps {[bench['steps'][n] for n in missing]}", flush=True)
    if bench is None:
        cfgs_all = {name: c for name, c in cfgs_all.items() if name == "dense" or name in cfgs}
        sec = measure_step_times(cfgs_all, train_ids, args.timing_rounds)
        moe = model_configs(tok.vocab_size)["MoE"]
        budget = args.dense_steps * sec["dense"]
        bench = {"config": config, "threads": args.threads, "cpu": cpu_name(), "torch": torch.__version__,
                 "sec_per_step": sec, "budget_s": budget, "models": list(cfgs_all),
                 "moe_dispatch": "auto -> " + resolve_dispatch("auto", train_ids.new_empty(1, 1, dtype=torch.float32),
                                                               moe.n_embd, moe.expert_hidden),
                 "steps": {name: max(2, round(budget / s)) for name, s in sec.items()},
                 "command": " ".join(["python benchmarks/moe_compare.py", *(sys.argv[1:] if argv is None else argv)]),
                 "runs": []}
        print("step times: " + ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in sec.items())
              + f"; budget {budget:.0f} s -> steps {bench['steps']}", flush=True)
    done = {(r["model"], r["seed"]) for r in bench["runs"]}
    todo = [(name, seed) for seed in args.seeds for name in cfgs if (name, seed) not in done]
    if args.next is not None:
        todo = todo[:args.next]
    for name, seed in todo:
        set_seed(seed)
        run = train_and_score(GPT(cfgs[name]), bench["steps"][name], seed, train_ids, texts)
        bench["runs"].append({"model": name, "seed": seed, **run,
                              "total_params": count_parameters(cfgs[name]),
                              "active_params": count_parameters(cfgs[name], active=True)})
        print(f"{name} seed {seed}: {run['steps']} steps in {run['seconds']:.0f} s, val bits/char {run['bpc']:.3f}, "
              f"train-text bits/char {run['train_bpc']:.3f}", flush=True)
        save(bench, args.out)  # after every run: resumable
    save(bench, args.out)
    print_report(bench)
    return bench


if __name__ == "__main__":
    main(sys.argv[1:])
