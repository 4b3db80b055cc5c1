"""What glibc's allocator costs a CPU training step, with and without ``keep_freed_memory()``.

    python benchmarks/allocator.py                 # course recipe, 2 threads, bf16 where fast
    python benchmarks/allocator.py --precision fp32

Each setting runs in a fresh process (the allocator setting is process-wide and cannot be undone),
alternating, ``--repeats`` times: warm-up steps, then ``--steps`` timed training steps of the course
recipe's model on random tokens. Printed per run: milliseconds per step and minor page faults per
step (``getrusage``). The lowest time of each setting is the headline; results also go to
``benchmarks/results/allocator.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

CHILD = """
import json, resource, sys, time, torch
from utils.runtime import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
torch.set_num_threads(int(sys.argv[2]))
from utils.data import get_batch
from utils.model import GPT
from utils.pretrain import COURSE_RECIPE
from utils.precision import autocast_context, resolve_precision
from utils.training import configure_optimizer
recipe = COURSE_RECIPE.with_(precision=sys.argv[3])
torch.manual_seed(0)
model = GPT(recipe.model_config(2048)).train()
opt = configure_optimizer(model, recipe.lr, recipe.weight_decay, recipe.betas)
data = torch.randint(0, 2048, (400_000,))
ctx = autocast_context("cpu", recipe.precision)
def step():
    x, y = get_batch(data, recipe.batch_size, recipe.block_size)
    with ctx:
        _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(5):
    step()
n = int(sys.argv[4])
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = time.perf_counter()
for _ in range(n):
    step()
ms = (time.perf_counter() - t) / n * 1000
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n
print(json.dumps({"tuned": tuned, "precision": resolve_precision("cpu", recipe.precision),
                  "ms_per_step": ms, "page_faults_per_step": faults}))
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "allocator.json")
    args = parser.parse_args(argv)
    runs = {"default": [], "tuned": []}
    print(f"course recipe training step, {args.threads} threads, precision={args.precision}, "
          f"{args.steps} timed steps per run")
    print(f"{'allocator':<28} {'ms/step':>8} {'page faults/step':>17}")
    for _ in range(args.repeats):
        for mode in runs:  # alternate, so a drift in machine speed hits both alike
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.threads), args.precision,
                                  str(args.steps)], capture_output=True, text=True, check=True, cwd=ROOT)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(row)
            label = "glibc default" if mode == "default" else f"keep_freed_memory() ({row['tuned']})"
            print(f"{label:<28} {row['ms_per_step']:>8.1f} {row['page_faults_per_step']:>17,.0f}", flush=True)
    best = {mode: min(rows, key=lambda r: r["ms_per_step"]) for mode, rows in runs.items()}
    speedup = best["default"]["ms_per_step"] / best["tuned"]["ms_per_step"]
    print(f"\nbest of {args.repeats}: {best['default']['ms_per_step']:.1f} ms/step by default, "
          f"{best['tuned']['ms_per_step']:.1f} ms/step with keep_freed_memory() -> {speedup:.2f}x "
          f"(precision {best['tuned']['precision']})")
    result = {"threads": args.threads, "steps": args.steps, "runs": runs, "best": best, "speedup": speedup}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
