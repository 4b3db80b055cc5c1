"""Speed of a Mixture-of-Experts layer: its dispatch designs against a dense SwiGLU MLP.

    python benchmarks/moe.py                     # 2 threads, 8 and 32 experts, CPU
    python benchmarks/moe.py --threads 1 --out benchmarks/results/moe_1thread.json
    python benchmarks/moe.py --repeats 9 --device cuda --dtype bf16   # where a GPU is available

Forward + backward of one layer on a batch of 8 x 256 tokens of width 192: the MoE layer
(``utils.moe.MoELayer``, SwiGLU experts of hidden width 256, top-2, load-balancing and z-loss included
in the backward) against a dense SwiGLU MLP with the same *active* parameters (hidden 2 x 256 = 512).
Designs, same numbers (tested), different speed:

- ``sort``: one stable sort groups the token-expert assignments by expert, one
  gather, each expert runs once on its contiguous slice, one ``index_add_`` back (no limit); the experts
  run as one autograd node whose matmuls write into preallocated buffers (``Experts.run_sorted``);
- ``sort, autograd per expert``: the same with one ``F.linear`` pair per expert built from ordinary
  autograd operations (``Experts.run_sorted_autograd``: split, per-expert activation, concatenation,
  and a stack of the per-expert weight gradients in the backward);
- ``grouped_mm``: the layer's ``grouped_mm`` dispatch: the same sorted rows through PyTorch's
  ``F.grouped_mm`` (where this PyTorch has it);

  the layer's default, ``"auto"``, runs ``grouped_mm`` where this PyTorch has it and the widths suit it, on a
  CPU and in bf16 on a GPU of compute capability 9.0 or later, and ``sort`` elsewhere
  (``utils.moe.resolve_dispatch``; the results file records what it picked here);
- ``loop``: the loop over experts with a boolean mask over all assignments that most tutorials write;
- ``bmm``: capacity factor 1.25, every expert's tokens in padded slots (E, capacity, C), one batched
  matmul pair for all experts; assignments over capacity are dropped (their share is printed);
- ``sort, w[e] indexed``: ``sort`` but each expert's weights taken as ``w_in[e]`` from the stacked
  parameter (as Hugging Face's eager ``MixtralExperts`` loop does) instead of one ``unbind``: the
  backward of every ``w_in[e]`` is a full-size zero gradient of all experts, so the cost grows as E^2.

The input batch and the weights are the same every step, so the routing (and every matmul's shape) repeats:
in CPU bf16 this hides the cost of oneDNN compiling a kernel per new shape that training pays when the
per-expert row counts change (``Experts.run_sorted`` pads them for that; notebook 05 times a training step).

Every step starts with the gradients set to None, as a training step does after ``zero_grad()``.
``--device cuda --dtype bf16`` times the same designs on a GPU (synchronising before and after each
timed block; results then go to ``benchmarks/results/moe_cuda.json`` unless ``--out`` says otherwise). It ran
once on an NVIDIA H200 (``benchmarks/gpu_check.sh``): ``moe_cuda.json`` at this shape and ``moe_cuda_large.json``
at batch 16 x 2048, width 1024, experts of width 1024.

``keep_freed_memory()`` is on, as in ``train()``. The machine may be shared: every round runs all designs one after the other (interleaved), each
timed over ``--iters`` steps after a warm-up, and the table reports the **median** over ``--repeats``
rounds, relative to the dense MLP's median, and also the median CPU time of the process per step (all
threads), which other processes disturb less. Results go to ``benchmarks/results/moe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.moe import Experts, MoEConfig, MoELayer, resolve_dispatch  # noqa: E402
from utils.runtime import keep_freed_memory  # noqa: E402


class IndexedExperts(Experts):
    """Experts whose per-expert weights are taken by indexing the stacked parameter (``w_in[e]``)."""

    def per_expert_weights(self):
        return (tuple(self.w_in[e] for e in range(self.n_expert)),
                tuple(self.w_out[e] for e in range(self.n_expert)))

    def run_sorted(self, xs, counts):
        return self.run_sorted_autograd(xs, counts)


class AutogradExperts(Experts):
    """Experts run by one ``F.linear`` pair per expert in ordinary autograd operations."""

    def run_sorted(self, xs, counts):
        return self.run_sorted_autograd(xs, counts)


DESIGNS = ["dense", "sort", "sort, autograd per expert", "grouped_mm", "loop", "bmm", "sort, w[e] indexed"]
EXPERT_CLASSES = {"sort, autograd per expert": AutogradExperts, "sort, w[e] indexed": IndexedExperts}


def make_step(kind: str, n_expert: int, args, device, dtype):
    """A closure running one forward + backward of the design ``kind`` (one of DESIGNS)."""
    torch.manual_seed(0)
    C, H, k = args.width, args.expert_hidden, args.top_k
    x = torch.randn(args.batch, args.seq, C, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    info = {}
    if kind == "dense":
        dense = Experts(1, C, k * H, "swiglu").to(device=device, dtype=dtype)

        def step():
            x.grad = None
            dense.zero_grad(set_to_none=True)
            y = dense.expert(0, x)
            (y * g).sum().backward()
        return step, info
    cfg = MoEConfig(n_embd=C, n_expert=n_expert, top_k=k, expert_hidden=H, dispatch=kind.split(",")[0],
                    capacity_factor=args.capacity_factor if kind == "bmm" else None)
    layer = MoELayer(cfg).to(device=device, dtype=dtype)
    if kind in EXPERT_CLASSES:
        layer.experts.__class__ = EXPERT_CLASSES[kind]

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        y, stats = layer(x)
        ((y * g).sum() + stats["aux_loss"]).backward()
        info["dropped_fraction"] = stats["dropped_fraction"]
    return step, info


def time_steps(step, iters: int, device) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process summed over its threads) per step, mean over
    ``iters`` consecutive steps. CPU time is less disturbed by other processes than wall-clock time."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median reported)")
    parser.add_argument("--iters", type=int, default=5, help="steps timed per design per round")
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--expert-hidden", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/moe.json (moe_cuda.json with --device cuda)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train() does: freed activations stay in the heap, no page faults every step
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("moe_cuda.json" if device.type == "cuda" else "moe.json")
    designs = [d for d in DESIGNS if d != "grouped_mm" or hasattr(F, "grouped_mm")]
    tokens = args.batch * args.seq
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    tables = []
    for E in args.experts:
        steps = {d: make_step(d, E, args, device, dtype) for d in designs}
        for d, (step, _) in list(steps.items()):  # warm-up
            try:
                for _ in range(2):
                    step()
            except (RuntimeError, NotImplementedError) as err:  # e.g. F.grouped_mm without a kernel here
                if d != "grouped_mm":
                    raise
                print(f"{d}: not available on {args.device} {args.dtype} ({str(err).splitlines()[0][:120]})")
                del steps[d]
        designs = list(steps)
        sys.stdout.flush()
        times = {d: [] for d in designs}
        cpu = {d: [] for d in designs}
        for _ in range(args.repeats):
            for d in designs:
                wall, c = time_steps(steps[d][0], args.iters, device)
                times[d].append(wall)
                cpu[d].append(c)
        med = {d: statistics.median(v) for d, v in times.items()}
        med_cpu = {d: statistics.median(v) for d, v in cpu.items()}
        rows = []
        for d in designs:
            rows.append({"design": d, "median_ms": 1e3 * med[d], "x_dense": med[d] / med["dense"],
                         "tokens_per_s": tokens / med[d],
                         "spread_ms": [1e3 * min(times[d]), 1e3 * max(times[d])],
                         "cpu_ms": 1e3 * med_cpu[d], "cpu_x_dense": med_cpu[d] / med_cpu["dense"],
                         "dropped_fraction": steps[d][1].get("dropped_fraction", 0.0)})
        tables.append({"n_expert": E, "rows": rows,
                       "loop_over_sort": med["loop"] / med["sort"], "loop_over_bmm": med["loop"] / med["bmm"]})
        print(f"\n{E} experts, top-{args.top_k}, expert hidden {args.expert_hidden}; dense SwiGLU hidden "
              f"{args.top_k * args.expert_hidden} (same active parameters); batch {args.batch}x{args.seq}, width "
              f"{args.width}, forward+backward, {args.device} {args.dtype}, {args.threads} threads; median of "
              f"{args.repeats} interleaved rounds x {args.iters} steps")
        print("| design | ms/step (median) | x dense | tokens/s | min-max ms | CPU ms/step | CPU x dense | dropped |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['design']} | {r['median_ms']:.1f} | {r['x_dense']:.2f} | {r['tokens_per_s']:,.0f} | "
                  f"{r['spread_ms'][0]:.1f}-{r['spread_ms'][1]:.1f} | {r['cpu_ms']:.1f} | {r['cpu_x_dense']:.2f} | "
                  f"{100 * r['dropped_fraction']:.1f}% |")
        print(f"loop / sort = {med['loop'] / med['sort']:.2f}x, loop / bmm = {med['loop'] / med['bmm']:.2f}x", flush=True)
    probe = torch.empty(1, args.width, device=device, dtype=dtype)
    default = resolve_dispatch("auto", probe, args.width, args.expert_hidden)
    print(f"the layer's default dispatch (\"auto\") runs {default!r} here")
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "default_dispatch": default,
              "environment": {"cpu": cpu_name(), "torch": torch.__version__,
                              "threads": args.threads,
                              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "load_average_before": load_before,
                              "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                              "note": "medians of interleaved rounds; the machine may have been shared"},
              "tables": tables}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
