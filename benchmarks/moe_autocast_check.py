"""Does ``dispatch="auto"`` give the same layer under bf16 autocast, with fp32 weights?

Training runs the MoE layer with fp32 weights inside ``torch.autocast(dtype=torch.bfloat16)``. There
``utils.moe.resolve_dispatch`` picks ``grouped_mm`` (on a CPU, and on a CUDA GPU of compute capability
>= 9.0), which casts the fp32 expert weights to bf16 itself. This script runs one layer, same weights and
tokens, three ways and prints how far apart they are:

* ``auto`` under bf16 autocast (the design it resolved to is printed);
* ``sort`` under bf16 autocast (the reference design, same precision);
* ``sort`` in fp32 (what both approximate).

For the output and for every parameter's gradient: the largest difference relative to the largest value of
the fp32 reference. bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.0039), so both autocast runs
should sit within a few of those steps of fp32 and of each other; the check fails above ``--tol``.

    python benchmarks/moe_autocast_check.py                       # CPU
    python benchmarks/moe_autocast_check.py --device cuda --out /tmp/moe_autocast.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.moe import MoEConfig, MoELayer, resolve_dispatch  # noqa: E402


def run(layer: MoELayer, x: torch.Tensor, dispatch: str, autocast: bool) -> dict[str, torch.Tensor]:
    """Output and parameter gradients (of a fixed random projection of the output) in fp32."""
    layer.dispatch = dispatch
    layer.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y, stats = layer(xi)
    g = torch.Generator(device="cpu").manual_seed(1)
    probe = torch.randn(y.shape, generator=g).to(y.device)
    ((y.float() * probe).sum() + stats["aux_loss"].float()).backward()
    out = {"output": y.detach().float(), "input grad": xi.grad.detach().float()}
    out.update({f"grad {n}": p.grad.detach().float() for n, p in layer.named_parameters() if p.grad is not None})
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the reference)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--tol", type=float, default=0.05, help="largest relative difference allowed (default 0.05)")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {a.device}: no CUDA GPU is visible to this PyTorch ({torch.__version__})", file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(n_embd=192, n_expert=a.experts, top_k=2, expert_hidden=256)).to(dev)
    x = torch.randn(8, 256, 192, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        resolved = resolve_dispatch("auto", x.reshape(-1, 192), 192, 256)
    ref = run(layer, x, "sort", autocast=False)
    sort_bf16 = run(layer, x, "sort", autocast=True)
    auto_bf16 = run(layer, x, "auto", autocast=True)
    rows = [{"tensor": k, "auto_bf16_vs_fp32": rel(auto_bf16[k], ref[k]),
             "sort_bf16_vs_fp32": rel(sort_bf16[k], ref[k]), "auto_bf16_vs_sort_bf16": rel(auto_bf16[k], sort_bf16[k])}
            for k in ref]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}: 'auto' under bf16 autocast resolves to {resolved!r}; "
          f"{a.experts} experts, fp32 weights, 8 x 256 tokens of width 192")
    print(f"{'tensor':28s} {'auto bf16 vs fp32':>18s} {'sort bf16 vs fp32':>18s} {'auto vs sort (bf16)':>20s}")
    for r in rows:
        print(f"{r['tensor']:28s} {r['auto_bf16_vs_fp32']:18.4f} {r['sort_bf16_vs_fp32']:18.4f} "
              f"{r['auto_bf16_vs_sort_bf16']:20.4f}")
    worst = max(max(r["auto_bf16_vs_fp32"], r["auto_bf16_vs_sort_bf16"]) for r in rows)
    ok = worst <= a.tol
    print(f"largest relative difference of 'auto': {worst:.4f} ({'within' if ok else 'ABOVE'} --tol {a.tol})")
    if a.out:
        Path(a.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "resolved": resolved,
                                           "experts": a.experts, "tol": a.tol, "rows": rows}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
