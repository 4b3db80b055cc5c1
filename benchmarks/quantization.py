"""Quantization of the course model: quality per bit, size, and speed (issue 16).

    python benchmarks/quantization.py                  # everything, 2 threads (~15-25 min on a quiet 2-core CPU)
    python benchmarks/quantization.py --fast           # a smoke run (small slices, few rounds)
    python benchmarks/quantization.py --only speed     # one part: quality | size | speed | decode

Tables (also written to ``benchmarks/results/quantization.json`` and ``quantization.md``):

1. **Bits per weight**: validation bits/char and perplexity of the course model with its 16 block
   linear layers at 16, 8, 6, 5, 4, 3 and 2 bits: RTN per channel, RTN groups of 128 (64 in the
   192-wide layers, which 128 does not divide) and of 32, NF4 (groups of 64), GPTQ (per channel and
   groups of 32, 128 calibration windows from the *train* split) and QAT (groups of 32, fine-tuned on
   the train split with fake quantization; with a control run: the same fine-tuning without fake
   quantization, then RTN). Scores on the first ``--val-chars`` characters of the validation plays.
2. **Size**: state-dict bytes and checkpoint bytes on disk, relative to fp32.
3. **Speed** of one 4096x4096 linear layer at 1 and 32 rows: fp32, bf16, torchao int8 (dynamic
   activations; weight-only), ours (W8A8 with ``torch._int_mm``; int8 and int4 weight-only).
4. **Decode** tokens/s of the course model (greedy, KV cache).

Timings: the variants run in interleaved rounds (A, B, C, ..., then again) and each figure is the
median over rounds; ratios are taken within a round, then the median of the ratios. On a shared
machine absolute times drift; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.data import load_corpus  # noqa: E402
from utils.generation import generate  # noqa: E402
from utils.metrics import sum_token_nll  # noqa: E402
from utils.pretrain import EOT, load_course_model, training_text  # noqa: E402
from utils.quantization import (QuantConfig, W8A8Linear, QuantLinear, convert_qat, gptq_quantize_model,  # noqa: E402
                                model_size_bytes, prepare_qat, quantize_model, quantized_modules, round_to_format)

RESULTS = ROOT / "benchmarks" / "results"


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------

def score(model, ids, n_chars):
    nll, n = sum_token_nll(model, ids)
    return {"bpc": nll / n_chars / math.log(2), "ppl": math.exp(nll / n)}


def linear_bits_per_weight(model):
    mods = quantized_modules(model)
    if not mods:
        return 32.0
    n = sum(m.in_features * m.out_features for m in mods.values())
    b = sum(sum(t.numel() * t.element_size() for t in m.state_dict().values() if t is not None)
            - (m.bias.numel() * 4 if getattr(m, "bias", None) is not None else 0) for m in mods.values())
    return 8 * b / n


def float_weights(model, fmt):
    """The model with its block linear weights rounded to a 16-bit float format (computed in fp32)."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if type(mod) is nn.Linear and mod.weight is not m.wte.weight:
            mod.weight.data = round_to_format(mod.weight.data, fmt)
    return m


def qat_finetune(model, cfg, train_ids, steps, seed, fake=True):
    from utils.training import TrainConfig, train

    m = copy.deepcopy(model)
    if fake:
        prepare_qat(m, cfg)
    tc = TrainConfig(max_steps=steps, batch_size=16, lr=3e-4, min_lr=3e-5, warmup_steps=max(steps // 10, 1),
                     weight_decay=0.0, eval_interval=0, eval_iters=1, precision="fp32", sampling="epochs",
                     progress=False, seed=seed)
    train(m, train_ids, None, tc)
    m.eval()
    return convert_qat(m, cfg) if fake else quantize_model(m, cfg)


def quality(model, val_ids, n_chars, train_ids, calib, qat_steps, bits_list, log_rows):
    rows = []
    base = score(model, val_ids, n_chars)

    def add(method, bits, m, extra=None):
        t0 = time.perf_counter()
        s = score(m, val_ids, n_chars)
        row = {"method": method, "bits": bits, **s, "d_ppl_pct": 100 * (s["ppl"] / base["ppl"] - 1),
               "linear_bits_per_weight": round(linear_bits_per_weight(m), 3),
               "model_bytes": model_size_bytes(m), **(extra or {})}
        rows.append(row)
        log_rows(row, time.perf_counter() - t0)

    add("fp32 (reference)", 32, model)
    add("fp16 weights", 16, float_weights(model, "fp16"), {"linear_bits_per_weight": 16})
    add("bf16 weights", 16, float_weights(model, "bf16"), {"linear_bits_per_weight": 16})
    for bits in bits_list:
        schemes = [("RTN per channel", QuantConfig(bits=bits, symmetric=False)),
                   ("RTN group 128", QuantConfig(bits=bits, symmetric=False, granularity="group", group_size=128,
                                                 fit_group_size=True)),
                   ("RTN group 32", QuantConfig(bits=bits, symmetric=False, granularity="group", group_size=32))]
        if bits == 8:
            schemes.insert(0, ("RTN per channel, symmetric", QuantConfig(bits=8)))
        for name, cfg in schemes:
            add(name, bits, quantize_model(copy.deepcopy(model), cfg))
        if bits == 4:
            add("NF4 group 64", 4, quantize_model(copy.deepcopy(model), QuantConfig(
                bits=4, format="nf4", granularity="group", group_size=64)))
        for name, cfg in (("GPTQ per channel", QuantConfig(bits=bits, symmetric=False)),
                          ("GPTQ group 32", QuantConfig(bits=bits, symmetric=False, granularity="group", group_size=32))):
            t0 = time.perf_counter()
            m = gptq_quantize_model(copy.deepcopy(model), calib, cfg, act_order=True)
            add(name, bits, m, {"quantize_s": round(time.perf_counter() - t0, 1)})
        if bits <= 4 and qat_steps:
            cfg = QuantConfig(bits=bits, symmetric=False, granularity="group", group_size=32)
            add(f"QAT group 32 ({qat_steps} steps)", bits, qat_finetune(model, cfg, train_ids, qat_steps, seed=bits))
            if bits == min(bits_list):
                add(f"control: {qat_steps} float steps, then RTN group 32", bits,
                    qat_finetune(model, cfg, train_ids, qat_steps, seed=bits, fake=False))
    return base, rows


# ---------------------------------------------------------------------------------------------
# Size
# ---------------------------------------------------------------------------------------------

def sizes(model):
    from utils.checkpoint import save_checkpoint

    configs = [
        ("fp32", None, None),
        ("bf16 (every float)", "bf16", None),
        ("int8 per channel, block linears", QuantConfig(bits=8), None),
        ("int8 per channel, + embedding/head", QuantConfig(bits=8, skip=(), include_embeddings=True), None),
        ("int4 group 32 (fp16 scales), + embedding/head",
         QuantConfig(bits=4, granularity="group", group_size=32, scale_dtype="float16", skip=(),
                     include_embeddings=True), None),
        ("int4 group 32 (fp32 scales), + embedding/head",
         QuantConfig(bits=4, granularity="group", group_size=32, skip=(), include_embeddings=True), None),
        ("NF4 group 64, + embedding/head",
         QuantConfig(bits=4, format="nf4", granularity="group", group_size=64, skip=(), include_embeddings=True), None),
    ]
    out = []
    ref = model_size_bytes(model)
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg, _ in configs:
            if cfg is None:
                m = model
            elif cfg == "bf16":
                m = copy.deepcopy(model).to(torch.bfloat16)
            else:
                m = quantize_model(copy.deepcopy(model), cfg)
            path = Path(tmp) / "m.pt"
            meta = {"quant": cfg.to_dict()} if isinstance(cfg, QuantConfig) else {}
            save_checkpoint(path, m, metadata=meta)
            mb = model_size_bytes(m)
            out.append({"config": name, "state_dict_bytes": mb, "x_fp32": mb / ref,
                        "file_bytes": path.stat().st_size})
            log(f"  {name:<50} {mb:>10,} B  {mb / ref:.3f}x  file {path.stat().st_size:,} B")
    return out


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------

def interleaved(variants: dict, rounds: int, calls: int):
    """{name: [seconds per call, one per round]} timing each variant once per round, in turn."""
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def torchao_layers(lin):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        log("  torchao is not installed: its rows are skipped")
        return {}
    out = {}
    for name, cfg in (("torchao int8 dynamic (W8A8)", Int8DynamicActivationInt8WeightConfig()),
                      ("torchao int8 weight-only", Int8WeightOnlyConfig())):
        m = nn.Sequential(copy.deepcopy(lin))
        quantize_(m, cfg)
        out[name] = m
    return out


@torch.no_grad()
def speed(dim, rows_list, rounds, calls):
    torch.manual_seed(0)
    lin = nn.Linear(dim, dim, bias=False)
    layers = {"fp32": lin, "bf16": copy.deepcopy(lin).to(torch.bfloat16)}
    layers.update(torchao_layers(lin))
    layers["ours W8A8 (torch._int_mm)"] = W8A8Linear.from_linear(lin)
    layers["ours int8 weight-only"] = QuantLinear.from_linear(lin, 8, True, "channel")
    layers["ours int4 group 32 weight-only"] = QuantLinear.from_linear(lin, 4, True, "group", 32)
    out = []
    for rows in rows_list:
        x = torch.randn(rows, dim)
        xb = x.to(torch.bfloat16)
        variants = {name: (lambda m=m, name=name: m(xb if name == "bf16" else x)) for name, m in layers.items()}
        t = interleaved(variants, rounds, calls)
        ref = t["fp32"]
        for name in layers:
            ratios = [r / v for r, v in zip(ref, t[name])]
            out.append({"rows": rows, "variant": name, "ms": 1e3 * statistics.median(t[name]),
                        "speedup_vs_fp32": statistics.median(ratios)})
            log(f"  rows={rows:<3} {name:<32} {out[-1]['ms']:8.2f} ms  {out[-1]['speedup_vs_fp32']:.2f}x fp32")
    return out


@torch.no_grad()
def decode(model, tok, n_new, rounds):
    prompt = tok.encode("ROMEO:\n")
    variants = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16),
                "ours int8 weight-only": quantize_model(copy.deepcopy(model), QuantConfig(bits=8)),
                "ours W8A8": quantize_model(copy.deepcopy(model), QuantConfig(kind="w8a8")),
                "ours int4 group 32": quantize_model(copy.deepcopy(model), QuantConfig(
                    bits=4, granularity="group", group_size=32))}
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for name, cfg in (("torchao int8 weight-only", Int8WeightOnlyConfig()),
                          ("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig())):
            m = copy.deepcopy(model)
            quantize_(m, cfg, filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and fqn != "lm_head")
            variants[name] = m
    except ImportError:
        log("  torchao is not installed: its rows are skipped")
    fns = {k: (lambda m=m: generate(m, prompt, n_new, temperature=0)) for k, m in variants.items()}
    t = interleaved(fns, rounds, 1)
    out = []
    for name in variants:
        ratios = [r / v for r, v in zip(t["fp32"], t[name])]
        out.append({"variant": name, "tokens_per_s": n_new / statistics.median(t[name]),
                    "speedup_vs_fp32": statistics.median(ratios)})
        log(f"  {name:<28} {out[-1]['tokens_per_s']:8.1f} tokens/s  {out[-1]['speedup_vs_fp32']:.2f}x fp32")
    return out


# ---------------------------------------------------------------------------------------------

def markdown(res) -> str:
    md = [f"# Quantization benchmark\n\n{res['environment']}\n"]
    if "quality" in res:
        q = res["quality"]
        md.append(f"## Bits per weight (course model, first {q['val_chars']:,} validation characters, "
                  f"{q['val_tokens']:,} tokens)\n\nfp32: {q['base']['bpc']:.4f} bits/char, perplexity "
                  f"{q['base']['ppl']:.3f}\n\n| method | bits | bits/char | perplexity | Δ perplexity | "
                  "linear bits/weight | model bytes |\n|---|---|---|---|---|---|---|")
        for r in q["rows"]:
            md.append(f"| {r['method']} | {r['bits']} | {r['bpc']:.4f} | {r['ppl']:.3f} | {r['d_ppl_pct']:+.2f}% | "
                      f"{r['linear_bits_per_weight']:.2f} | {r['model_bytes']:,} |")
    if "size" in res:
        md.append("\n## Size\n\n| config | state-dict bytes | × fp32 | checkpoint file bytes |\n|---|---|---|---|")
        for r in res["size"]:
            md.append(f"| {r['config']} | {r['state_dict_bytes']:,} | {r['x_fp32']:.3f} | {r['file_bytes']:,} |")
    if "speed" in res:
        md.append(f"\n## One {res['speed_dim']}x{res['speed_dim']} linear layer, {res['threads']} threads "
                  "(median of interleaved rounds)\n\n| rows | variant | ms | × fp32 speed |\n|---|---|---|---|")
        for r in res["speed"]:
            md.append(f"| {r['rows']} | {r['variant']} | {r['ms']:.2f} | {r['speedup_vs_fp32']:.2f} |")
    if "decode" in res:
        md.append(f"\n## Decode, course model, greedy, KV cache, {res['decode_tokens']} tokens\n\n"
                  "| variant | tokens/s | × fp32 |\n|---|---|---|")
        for r in res["decode"]:
            md.append(f"| {r['variant']} | {r['tokens_per_s']:.1f} | {r['speedup_vs_fp32']:.2f} |")
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="a smoke run: small slices, few rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["quality", "size", "speed", "decode"], action="append")
    p.add_argument("--val-chars", type=int, default=None)
    p.add_argument("--qat-steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "quantization.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.only or ["quality", "size", "speed", "decode"]
    fast = args.fast
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = (f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average before "
           f"{load:.1f} (a shared machine: read the ratios)")
    log(env)
    model, tok = load_course_model()
    res = {"environment": env, "threads": args.threads}
    if args.out.exists():  # keep the parts not re-run
        old = json.loads(args.out.read_text())
        res.update({k: v for k, v in old.items() if k not in parts and k not in ("environment", "threads")})
    if "quality" in parts:
        corpus = load_corpus()
        val_chars = args.val_chars or (20_000 if fast else 60_000)
        val = corpus.text("val")[:val_chars]
        val_ids = torch.tensor(tok.encode(val))
        train_ids = torch.tensor(tok.encode(training_text(corpus, "train")[:(300_000 if fast else 2_000_000)],
                                            allowed_special={EOT}))
        g = torch.Generator().manual_seed(0)
        n_cal = 32 if fast else 128
        starts = torch.randint(len(train_ids) - 129, (n_cal,), generator=g)
        calib = torch.stack([train_ids[s:s + 128] for s in starts])
        bits_list = [8, 4, 2] if fast else [8, 6, 5, 4, 3, 2]
        qat_steps = args.qat_steps if args.qat_steps is not None else (10 if fast else 150)
        log(f"quality: {len(val):,} val characters, {len(val_ids):,} tokens; calibration {n_cal} x 128 train tokens")

        def log_row(r, secs):
            log(f"  {r['method']:<44} {r['bits']:>2} bits  {r['bpc']:.4f} bpc  ppl {r['ppl']:.3f} "
                f"({r['d_ppl_pct']:+.2f}%)  {r['linear_bits_per_weight']:.2f} b/w  [{secs:.0f}s]")
        base, rows = quality(model, val_ids, len(val), train_ids, calib, qat_steps, bits_list, log_row)
        res["quality"] = {"val_chars": len(val), "val_tokens": len(val_ids), "calibration": n_cal,
                          "qat_steps": qat_steps, "base": base, "rows": rows}
    if "size" in parts:
        log("size:")
        res["size"] = sizes(model)
    if "speed" in parts:
        dim = 1024 if fast else 4096
        rounds = args.rounds or (3 if fast else 7)
        log(f"speed: {dim}x{dim} layer, {rounds} interleaved rounds")
        res["speed_dim"] = dim
        res["speed"] = speed(dim, [1, 32], rounds, calls=3 if fast else 10)
    if "decode" in parts:
        n_new = 16 if fast else 64
        log(f"decode: {n_new} greedy tokens")
        res["decode_tokens"] = n_new
        res["decode"] = decode(model, tok, n_new, args.rounds or (2 if fast else 5))
    res["environment"] = env
    if not fast:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
        args.out.with_suffix(".md").write_text(markdown(res))
        log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    else:
        log("(fast mode: nothing written)")
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
