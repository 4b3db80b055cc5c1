"""Naive attention vs our flash_attention vs torch SDPA: time and peak memory over sequence lengths.

    .venv/bin/python benchmarks/attention.py            # B=1, H=4, d=64, causal, fp32, CPU
    .venv/bin/python benchmarks/attention.py --device cuda --lengths 1024 4096 16384

Time: median wall-clock of ``--repeats`` calls after one warm-up (on CUDA with synchronisation).
Peak memory: bytes of the tensors each call allocates, at their peak.
- On CPU it is measured op by op with ``utils.measure.peak_tensor_memory`` (a TorchDispatchMode
  that counts every output storage while it is alive; inputs are not counted, the output is).
  ``tracemalloc`` is useless here (torch allocates outside Python's allocator). For torch's fused
  SDPA kernel, buffers it allocates and frees internally are invisible to this count, so its
  figure is a lower bound (those buffers are per-thread tiles, independent of T).
- On CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
The last column is the size of one full (B, H, T, T) fp32 score matrix, for reference.

A second table times one training step of torch's SDPA (forward + backward) in fp32 and in bf16
at the course model's attention shape (``--train-shape B H T d``): the reason
``utils.attention.attend`` runs train-time attention on CPU in fp32 even under bf16 autocast.
Results are written to ``benchmarks/results/attention.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.attention import flash_attention, scaled_dot_product_attention  # noqa: E402
from utils.measure import peak_tensor_memory, time_fn  # noqa: E402

MiB = 2**20


def _timed(fn, repeats: int) -> float:
    with torch.no_grad():
        return time_fn(fn, repeats=repeats, warmup=1).median


def _peak(fn, q, k, v, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            out = fn(q, k, v)
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - before
    _, peak = peak_tensor_memory(fn, q, k, v)
    return peak


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=128, help="flash_attention tile size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-causal", action="store_true")
    parser.add_argument("--train-shape", type=int, nargs=4, default=[32, 6, 128, 32], metavar=("B", "H", "T", "d"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "attention.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    causal = not args.no_causal
    impls = {
        "naive": lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal),
        "flash": lambda q, k, v: flash_attention(q, k, v, is_causal=causal, block_size=args.block_size),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={device} threads={torch.get_num_threads()} B={args.batch} H={args.heads} d={args.head_dim} "
          f"fp32 causal={causal} flash block={args.block_size} torch={torch.__version__} load avg={load:.2f}")
    memory_how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else \
        "peak live tensor bytes counted op by op (peak_tensor_memory; SDPA: lower bound)"
    print(f"peak memory: {memory_how}")
    header = (f"{'T':>6} | {'naive ms':>9} {'flash ms':>9} {'sdpa ms':>9} | "
              f"{'naive MiB':>9} {'flash MiB':>9} {'sdpa MiB':>9} | {'scores MiB':>10} | {'max |flash-sdpa|':>16}")
    print(header)
    print("-" * len(header))
    rows = []
    g = torch.Generator().manual_seed(0)
    for T in args.lengths:
        shape = (args.batch, args.heads, T, args.head_dim)
        q, k, v = (torch.randn(shape, generator=g).to(device) for _ in range(3))
        row = {"T": T}
        for name, fn in impls.items():
            row[f"{name}_ms"] = 1e3 * _timed(lambda: fn(q, k, v), args.repeats)
            row[f"{name}_mib"] = _peak(fn, q, k, v, device) / MiB
        with torch.no_grad():
            row["err"] = (impls["flash"](q, k, v) - impls["sdpa"](q, k, v)).abs().max().item()
        row["scores_mib"] = args.batch * args.heads * T * T * 4 / MiB
        rows.append(row)
        print(f"{T:>6} | {row['naive_ms']:>9.2f} {row['flash_ms']:>9.2f} {row['sdpa_ms']:>9.2f} | "
              f"{row['naive_mib']:>9.2f} {row['flash_mib']:>9.2f} {row['sdpa_mib']:>9.2f} | "
              f"{row['scores_mib']:>10.2f} | {row['err']:>16.2e}", flush=True)

    train = _train_step_table(args.train_shape, args.repeats, device, causal)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "load_avg": load,
                                    "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
                                    "causal": causal, "rows": rows, "train_step": train}, indent=1) + "\n")
    return rows


def _train_step_table(shape, repeats: int, device: torch.device, causal: bool) -> dict:
    """Forward + backward of torch SDPA in fp32 and bf16 (inputs in that dtype): ms per step."""
    B, H, T, d = shape
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(B, H, T, d, generator=g).to(device) for _ in range(3)]
    result = {"shape": list(shape)}
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (t.to(dtype).requires_grad_() for t in base)

        def step():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal).float().sum().backward()

        result[str(dtype).removeprefix("torch.") + "_ms"] = 1e3 * time_fn(step, repeats=repeats, warmup=1).median
    result["bf16_over_fp32"] = result["bfloat16_ms"] / result["float32_ms"]
    print(f"\none training step of torch SDPA (forward + backward), B={B} H={H} T={T} d={d}: "
          f"fp32 {result['float32_ms']:.2f} ms, bf16 {result['bfloat16_ms']:.2f} ms "
          f"(bf16 / fp32 = {result['bf16_over_fp32']:.2f})")
    return result


if __name__ == "__main__":
    main()
