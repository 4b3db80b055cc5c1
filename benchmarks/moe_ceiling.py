"""How much could the MoE's extra parameters buy per step? A dense upper bound at the MoE's own step count.

    python benchmarks/moe_ceiling.py --dense-steps 250            # notebook 05's budget (about 10 min on 2 cores)
    python benchmarks/moe_ceiling.py --dense-steps 750 --out benchmarks/results/moe_ceiling_750.json
    python benchmarks/moe_ceiling.py --report --out benchmarks/results/moe_ceiling_750.json

A diagnostic for notebook 05's "dense vs MoE at equal wall-clock" table (``benchmarks/moe_compare.py``), not a
candidate. A Mixture-of-Experts layer with E experts of width h, top-k, computes for each token a weighted sum of k
of the E expert MLPs; the dense MLP of width E*h that every token uses *whole* holds the same parameters with none
of the routing's restrictions (each token gets all E*h hidden units instead of k*h, with no router to learn), so
per optimizer step it is the usual upper bound on what that MoE can learn (Clark et al. 2022, "Unified Scaling Laws
for Routed Language Models": a routed model's effective size lies between its active and its total parameter count;
usual, not sure: the wide MLP trains with the recipe's settings, chosen for the dense width). Here, for each MoE of the
comparison:

- ``dense``: the course shape (SwiGLU MLPs of width H = 512), ``--dense-steps`` steps;
- ``<MoE>``: the MoE itself, for the steps that fit in the dense model's time (as in ``moe_compare.py``);
- ``<MoE> ceiling``: the MoE's MLP layers replaced by dense SwiGLU MLPs of its total expert width (8 x H/2 = 4H:
  the parameters of the MoE's experts), trained for the number of steps **the MoE** gets at equal wall-clock
  (``dense steps x dense step time / MoE step time``, both timed here, interleaved);

same seeds, schedule shape, training text and validation text as ``moe_compare.py``'s reported table. If a ceiling
scores no better than ``dense``, the MoE (at best as good per step, and given exactly those steps) cannot beat
the dense model at equal wall-clock at this budget: its step is too slow for what its parameters can add. If the
ceiling does beat it, the parameters could pay for the slower step, and the MoE's own score shows how much of that
its routing captures. The MoEs (``--moes``): ``MoE x2`` (every block; the default) and ``MoE x2 alternate`` (blocks
1 and 3, whose step costs least); see ``moe_compare.py`` for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.moe import cpu_name  # noqa: E402
from benchmarks.moe_compare import load_texts, measure_step_times, model_configs, save, train_and_score  # noqa: E402
from utils.model import GPT  # noqa: E402
from utils.runtime import set_seed  # noqa: E402

MOES = ("MoE x2", "MoE x2 alternate")  # the MoEs this can bound (--moes)
OUT = ROOT / "benchmarks" / "results" / "moe_ceiling.json"


def ceiling_model(moe_cfg, dense_cfg) -> GPT:
    """A dense GPT of ``dense_cfg`` whose MLPs in the MoE layers of ``moe_cfg`` are SwiGLU MLPs of the MoE's
    total expert width (n_expert x expert_hidden), initialised as the GPT initialises its MLPs."""
    wide_cfg = replace(dense_cfg, ffn_hidden=moe_cfg.n_expert * moe_cfg.expert_hidden)
    model, wide = GPT(dense_cfg), GPT(wide_cfg)
    for i in moe_cfg.moe_layer_indices:
        model.blocks[i].mlp = wide.blocks[i].mlp
    return model


def print_report(bench: dict) -> None:
    print(f"Course corpus, dense {bench['dense_steps']} steps ({bench['budget_s']:.0f} s of fp32 training), "
          f"{bench['threads']} threads, CPU {bench['cpu']}; bits/char on the first {bench['val_chars']:,} characters "
          f"of the validation split.")
    print("step times (median of interleaved rounds): " + ", ".join(
        f"{n} {1e3 * s:.0f} ms ({s / bench['sec_per_step']['dense']:.2f}x dense)" for n, s in bench["sec_per_step"].items()))
    header = f"{'model':<26} {'params':>10} {'steps':>5}  val bits/char per seed{'':<8} mean   vs dense (per seed)"
    print(header)
    print("-" * len(header))
    dense = {r["seed"]: r["bpc"] for r in bench["runs"] if r["model"] == "dense"}
    for name in bench["models"]:
        runs = sorted((r for r in bench["runs"] if r["model"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        per_seed = ", ".join(f"{r['bpc']:.3f}" for r in runs)
        diffs = ", ".join(f"{r['bpc'] - dense[r['seed']]:+.3f}" for r in runs if r["seed"] in dense)
        print(f"{name:<26} {runs[0]['params']:>10,} {runs[0]['steps']:>5}  {per_seed:<30} "
              f"{statistics.mean(r['bpc'] for r in runs):.3f}  {diffs if name != 'dense' else ''}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-steps", type=int, default=250)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--moes", nargs="+", default=["MoE x2"], choices=MOES)
    parser.add_argument("--val-chars", type=int, default=60_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-rounds", type=int, default=10)
    parser.add_argument("--report", action="store_true", help="only print the table of the results file")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for flag, value in (("--dense-steps", args.dense_steps), ("--val-chars", args.val_chars),
                        ("--threads", args.threads), ("--timing-rounds", args.timing_rounds)):
        if value < 1:
            raise SystemExit(f"{flag} must be 1 or more, not {value}")
    if args.report:
        if not args.out.exists():
            raise SystemExit(f"no results yet: {args.out}")
        bench = json.loads(args.out.read_text())
        print_report(bench)
        return bench
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: use --report, or another --out")
    torch.set_num_threads(args.threads)
    tok, train_ids, texts = load_texts(0, args.val_chars)
    cfgs = model_configs(tok.vocab_size)
    sec = measure_step_times({name: cfgs[name] for name in ("dense", *args.moes)}, train_ids, args.timing_rounds)
    budget = args.dense_steps * sec["dense"]
    steps = {"dense": args.dense_steps}
    for m in args.moes:  # the MoE and its ceiling: the same steps, those that fit in the dense model's time
        steps[m] = steps[f"{m} ceiling"] = max(2, round(budget / sec[m]))
    bench = {"dense_steps": args.dense_steps, "val_chars": args.val_chars, "threads": args.threads,
             "timing_rounds": args.timing_rounds, "cpu": cpu_name(), "torch": torch.__version__,
             "sec_per_step": sec, "budget_s": budget, "models": list(steps), "steps": steps,
             "command": " ".join(["python benchmarks/moe_ceiling.py", *(sys.argv[1:] if argv is None else argv)]),
             "runs": []}
    print("step times: " + ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in sec.items()) + f" -> steps {steps}", flush=True)
    for seed in args.seeds:  # round robin: a slow moment of the machine hits every model alike
        for name, n in steps.items():
            set_seed(seed)
            model = (ceiling_model(cfgs[name.removesuffix(" ceiling")], cfgs["dense"]) if name.endswith(" ceiling")
                     else GPT(cfgs[name]))
            run = train_and_score(model, n, seed, train_ids, texts)
            bench["runs"].append({"model": name, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
                                  **run})
            print(f"{name} seed {seed}: {run['steps']} steps in {run['seconds']:.0f} s, val bits/char "
                  f"{run['bpc']:.3f}", flush=True)
            save(bench, args.out)
    print_report(bench)
    return bench


if __name__ == "__main__":
    main(sys.argv[1:])
