"""How much a small CPU training loop slows when another process shares the cores, per thread setting.

    python benchmarks/contention.py                      # notebook-03-sized model, 3 repeats
    python benchmarks/contention.py --size recipe --load busy,trainer

A notebook cell that trained small models took 100 s instead of 10 s while another CPU-bound process
ran. The cause is OpenMP's wait policy: PyTorch's CPU build (GNU OpenMP) keeps its worker threads
spinning at every barrier of a parallel region; when another process holds one of the cores, the thread
that is running spins for its whole time slice waiting for the one that is not, and each of the
thousands of small parallel regions in a training step can cost a scheduler time slice.

Each run is a fresh process (the OpenMP settings are read once, when torch loads): a few warm-up steps,
then ``--steps`` timed training steps of a small pre-norm transformer written with ``torch.nn`` (so the
benchmark measures the runtime, not the course's model code). Settings compared:

- ``torch default``: 2 threads (one per core), GNU OpenMP's default spin-then-sleep waits;
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once);
- ``1 thread``: ``torch.set_num_threads(1)``;
- ``utils.runtime``: whatever importing ``utils.runtime`` before torch applies (what the notebooks get).

Loads: ``none`` (nothing of ours beside it), ``busy`` (one ``while True: pass`` Python process),
``trainer`` (a second copy of the same training loop with the same setting, as when two notebooks run).
Runs alternate setting by setting and load by load, ``--repeats`` times, so a drift of the machine's
speed hits all alike; the median of each cell is reported with the slowdown = loaded / unloaded of the
same setting, and ``vs default alone`` = loaded time / ``torch default`` time without load (what a
learner feels). Results go to ``benchmarks/results/contention.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SIZES = {  # (vocab, n_embd, n_layer, context, batch)
    "small": (512, 64, 8, 64, 16),  # notebook 03's norm/dropout experiments
    "recipe": (2048, 192, 4, 128, 16),  # the course recipe's shape (utils.pretrain)
}

SETTINGS = {  # name -> (environment additions, torch threads or 0 for torch's choice, import utils.runtime first)
    "torch default": ({}, 0, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0, False),
    "1 thread": ({}, 1, False),
    "utils.runtime": ({}, 0, True),
}

CHILD = r"""
import json, os, sys, time
if sys.argv[3] == "1":
    import utils.runtime  # applies the course's CPU settings before torch loads
import torch, torch.nn as nn, torch.nn.functional as F
V, C, L, T, B = json.loads(sys.argv[1])
steps, threads = int(sys.argv[2]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(C, 4, 4 * C, dropout=0.0, batch_first=True,
                                                               norm_first=True) for _ in range(L))
        self.ln, self.head = nn.LayerNorm(C), nn.Linear(C, V)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))

    def forward(self, x, y):
        h = self.wte(x) + self.wpe.weight[: x.shape[1]]
        for block in self.blocks:
            h = block(h, src_mask=self.mask, is_causal=True)
        return F.cross_entropy(self.head(self.ln(h)).flatten(0, 1), y.flatten())

model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.randint(0, V, (100_000,))

def step():
    ix = torch.randint(0, len(data) - T - 1, (B,))
    x = torch.stack([data[i:i + T] for i in ix])
    y = torch.stack([data[i + 1:i + T + 1] for i in ix])
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

for _ in range(3):
    step()
if steps < 0:  # a contender: train until killed
    while True:
        step()
t, c = time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}))
"""


def _child_cmd(size: str, steps: int, setting: str) -> tuple[list[str], dict]:
    env_add, threads, via_runtime = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update(env_add)
    env["PYTHONPATH"] = str(ROOT)
    return [sys.executable, "-c", CHILD, json.dumps(SIZES[size]), str(steps), "1" if via_runtime else "0",
            str(threads)], env


def _start_load(load: str, size: str, setting: str) -> subprocess.Popen | None:
    if load == "none":
        return None
    if load == "busy":
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    elif load == "trainer":
        cmd, env = _child_cmd(size, -1, setting)
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    else:
        raise ValueError(f"unknown load {load!r}; choose from none, busy, trainer")
    time.sleep(1.0)  # let it start (and the trainer warm up) before we time anything
    return proc


def run_once(size: str, steps: int, setting: str, load: str) -> dict:
    contender = _start_load(load, size, setting)
    try:
        cmd, env = _child_cmd(size, steps, setting)
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if contender is not None:
            contender.kill()
            contender.wait()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--load", default="none,busy", help="comma-separated: none, busy, trainer")
    parser.add_argument("--out", type=Path, default=RESULTS / "contention.json")
    args = parser.parse_args(argv)
    settings = args.settings.split(",")
    loads = args.load.split(",")
    for s in settings:
        if s not in SETTINGS:
            parser.error(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    if "none" not in loads:
        loads.insert(0, "none")
    runs: dict[str, dict[str, list[dict]]] = {s: {ld: [] for ld in loads} for s in settings}
    load_before = os.getloadavg()
    print(f"{args.size} model {SIZES[args.size]} (vocab, n_embd, n_layer, context, batch), {args.steps} timed "
          f"steps per run, {os.cpu_count()} CPUs, load average before {load_before[0]:.2f}")
    for r in range(args.repeats):
        for load in loads:
            for s in settings:
                row = run_once(args.size, args.steps, s, load)
                runs[s][load].append(row)
                print(f"  round {r + 1}  load={load:<8} {s:<14} {row['wall_s']:7.2f} s wall "
                      f"{row['cpu_s']:7.2f} s CPU", flush=True)
    base = statistics.median(x["wall_s"] for x in runs.get("torch default", {}).get("none", [])) \
        if "torch default" in runs else None
    table = []
    print(f"\n{'setting':<14} {'load':<8} {'wall s (median)':>15} {'CPU s':>7} {'slowdown':>9} {'vs default alone':>17}")
    for s in settings:
        alone = statistics.median(x["wall_s"] for x in runs[s]["none"])
        for load in loads:
            wall = statistics.median(x["wall_s"] for x in runs[s][load])
            cpu = statistics.median(x["cpu_s"] for x in runs[s][load])
            row = {"setting": s, "load": load, "wall_s": wall, "cpu_s": cpu, "slowdown": wall / alone,
                   "vs_default_alone": wall / base if base else None,
                   "walls": [x["wall_s"] for x in runs[s][load]], "threads": runs[s][load][0]["threads"],
                   "wait_policy": runs[s][load][0]["wait_policy"]}
            table.append(row)
            vs = f"{row['vs_default_alone']:.2f}x" if base else "-"
            print(f"{s:<14} {load:<8} {wall:>15.2f} {cpu:>7.2f} {row['slowdown']:>8.2f}x {vs:>17}")
    result = {"size": args.size, "shape": SIZES[args.size], "steps": args.steps, "repeats": args.repeats,
              "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "note": "machine shared with other jobs; load average shows how busy it was", "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return result


if __name__ == "__main__":
    main()
