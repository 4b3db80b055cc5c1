"""Quantization of the course model: quality per bit, size, and speed (issue 16).

    python benchmarks/quantization.py                  # everything, 2 threads (about 10 min on a quiet 2-core CPU)
    python benchmarks/quantization.py --fast           # a smoke run (small slices, few rounds)
    python benchmarks/quantization.py --only speed     # one part: quality | size | speed | gpu | decode
    python benchmarks/quantization.py --only quality --bits 3 2   # some bit widths; rows merge into the last results

Tables (also written to ``benchmarks/results/quantization.json`` and ``quantization.md``):

1. **Bits per weight**: validation bits/char and perplexity of the course model with its 16 block
   linear layers at 16, 8, 6, 5, 4, 3 and 2 bits: RTN per channel, RTN groups of 128 (64 in the
   192-wide layers, which 128 does not divide) and of 32, NF4 (groups of 64), GPTQ (per channel and
   groups of 32, act-order, true-sequential, 128 calibration windows of 128 tokens from the *train*
   split, never the evaluation text) and QAT (groups of 32, fine-tuned on
   the train split with fake quantization; with a control run: the same fine-tuning without fake
   quantization, then RTN). Scores on the whole validation split (333k characters, 113k tokens; the
   first ``--val-chars`` characters with that option): a 60k-character slice was too noisy to separate
   methods whose perplexities differ by under 1% (see the per-window bootstrap in the closing note).
2. **Size**: state-dict bytes and checkpoint bytes on disk, relative to fp32.
3. **Speed** of one 4096x4096 linear layer on the CPU at 1 and 32 rows, with 2 threads (``--threads``)
   and 1: fp32, bf16, torchao int8 (dynamic activations; weight-only, fp32 and bf16 activations), ours
   (W8A8 with ``torch._int_mm``; int8 weight-only, also with bf16 activations, where it runs on torch's
   fused ``_weight_int8pack_mm``; int4 weight-only). One table, with the goal lines (W8A8 at 32 rows
   >= 2x fp32 and <= 1.2x torchao's time).
   **GPU** (``--only gpu``; skipped without CUDA): the same layer in bf16 vs int8 (ours W8A8, torchao
   dynamic and weight-only) vs int4 weight-only (ours; torchao's ``Int4WeightOnlyConfig``), CUDA-event
   timed. Run once on an NVIDIA H200 (``benchmarks/results/quantization_gpu.json``, ``benchmarks/gpu_check.sh``).
4. **Decode** tokens/s of the course model on the CPU (greedy, KV cache), per thread count.

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


def quality(model, val_ids, n_chars, train_ids, calib, qat_steps, bits_list, log_rows, control_bits=None):
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
            if bits == (control_bits if control_bits is not None else min(bits_list)):
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
    for name, cfg, dtype in (("torchao int8 dynamic (W8A8)", Int8DynamicActivationInt8WeightConfig(), torch.float32),
                             ("torchao int8 weight-only", Int8WeightOnlyConfig(), torch.float32),
                             ("torchao int8 weight-only, bf16 x", Int8WeightOnlyConfig(), torch.bfloat16)):
        m = nn.Sequential(copy.deepcopy(lin).to(dtype))
        quantize_(m, cfg)
        out[name] = m
    return out


def _bf16_input(name: str) -> bool:
    return name == "bf16" or "bf16 x" in name


def _cpu_layers(lin):
    layers = {"fp32": lin, "bf16": copy.deepcopy(lin).to(torch.bfloat16)}
    layers.update(torchao_layers(lin))
    layers["ours W8A8 (torch._int_mm)"] = W8A8Linear.from_linear(lin)
    layers["ours int8 weight-only"] = QuantLinear.from_linear(lin, 8, True, "channel")
    layers["ours int8 weight-only, bf16 x (_weight_int8pack_mm)"] = layers["ours int8 weight-only"]
    layers["ours int4 group 32 weight-only"] = QuantLinear.from_linear(lin, 4, True, "group", 32)
    return layers


@torch.no_grad()
def speed(dim, rows_list, rounds, calls, threads_list):
    """CPU timings (explicitly on the CPU): every variant at every row count, for each thread count."""
    torch.manual_seed(0)
    lin = nn.Linear(dim, dim, bias=False, device="cpu")
    layers = _cpu_layers(lin)
    out = []
    before = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for rows in rows_list:
                x = torch.randn(rows, dim)
                xb = x.to(torch.bfloat16)
                variants = {name: (lambda m=m, name=name: m(xb if _bf16_input(name) else x))
                            for name, m in layers.items()}
                t = interleaved(variants, rounds, calls)
                ref = t["fp32"]
                for name in layers:
                    ratios = [r / v for r, v in zip(ref, t[name])]
                    out.append({"device": "cpu", "threads": threads, "rows": rows, "variant": name,
                                "ms": 1e3 * statistics.median(t[name]), "speedup_vs_fp32": statistics.median(ratios),
                                "ms_all_rounds": [round(1e3 * v, 3) for v in t[name]]})
                    if name.startswith("ours W8A8") and "torchao int8 dynamic (W8A8)" in t:
                        out[-1]["time_vs_torchao_dynamic"] = statistics.median(
                            [v / a for v, a in zip(t[name], t["torchao int8 dynamic (W8A8)"])])
                    log(f"  CPU {threads} thr rows={rows:<3} {name:<32} {out[-1]['ms']:8.2f} ms  "
                        f"{out[-1]['speedup_vs_fp32']:.2f}x fp32")
    finally:
        torch.set_num_threads(before)
    return out


def _cuda_timer(fn, calls):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed():
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    return timed


@torch.no_grad()
def speed_gpu(dim, rows_list, rounds, calls):
    """The same layer on a CUDA GPU: bf16 vs int8 (W8A8 on torch._int_mm, torchao's dynamic int8) vs int4
    weight-only (torchao's tinygemm kernel where it installs; ours dequantizes on the fly). Timed with CUDA
    events after a synchronize. Skipped (returns []) without a GPU."""
    if not torch.cuda.is_available():
        log("  no CUDA GPU: the GPU table is skipped")
        return []
    dev = torch.device("cuda")
    torch.manual_seed(0)
    lin = nn.Linear(dim, dim, bias=False).to(dev)
    lin_bf16 = copy.deepcopy(lin).to(torch.bfloat16)
    layers = {"fp32": lin, "bf16": lin_bf16,
              "ours W8A8 (torch._int_mm)": W8A8Linear.from_linear(lin),
              "ours int8 weight-only (bf16 compute)": QuantLinear.from_linear(lin_bf16, 8, True, "channel"),
              "ours int4 group 32 weight-only (bf16 compute)": QuantLinear.from_linear(lin_bf16, 4, True, "group", 32)}
    try:
        from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8WeightOnlyConfig, quantize_)
        for name, cfg in (("torchao int8 dynamic (W8A8)", Int8DynamicActivationInt8WeightConfig()),
                          ("torchao int8 weight-only", Int8WeightOnlyConfig()),
                          ("torchao int4 weight-only group 128", Int4WeightOnlyConfig(group_size=128))):
            try:
                m = nn.Sequential(copy.deepcopy(lin_bf16))
                quantize_(m, cfg)
                m(torch.randn(32, dim, device=dev, dtype=torch.bfloat16))
                layers[name] = m
            except Exception as exc:  # a kernel missing for this GPU/torch: say so, keep the rest
                log(f"  {name}: skipped ({type(exc).__name__}: {str(exc)[:120]})")
    except ImportError:
        log("  torchao is not installed: its GPU rows are skipped")
    out = []
    for rows in rows_list:
        x = torch.randn(rows, dim, device=dev)
        xb = x.to(torch.bfloat16)
        variants = {}
        for name, m in layers.items():
            xin = x if name in ("fp32", "ours W8A8 (torch._int_mm)") else xb
            variants[name] = _cuda_timer(lambda m=m, xin=xin: m(xin), calls)
        times = {k: [] for k in variants}
        for fn in variants.values():
            fn()
        for _ in range(rounds):
            for name, fn in variants.items():
                times[name].append(fn())
        for name in layers:
            ratios = [r / v for r, v in zip(times["bf16"], times[name])]
            out.append({"device": torch.cuda.get_device_name(), "rows": rows, "variant": name,
                        "ms": 1e3 * statistics.median(times[name]), "speedup_vs_bf16": statistics.median(ratios)})
            log(f"  GPU rows={rows:<3} {name:<44} {out[-1]['ms']:8.3f} ms  {out[-1]['speedup_vs_bf16']:.2f}x bf16")
    return out


@torch.no_grad()
def decode(model, tok, n_new, rounds, threads_list):
    """Greedy decode tokens/s of the course model on the CPU, per thread count."""
    model = model.to("cpu")
    prompt = tok.encode("ROMEO:\n")
    variants = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16),
                "ours int8 weight-only": quantize_model(copy.deepcopy(model), QuantConfig(bits=8)),
                "ours int8 weight-only, bf16 model": quantize_model(copy.deepcopy(model).to(torch.bfloat16),
                                                                    QuantConfig(bits=8)),
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
    out = []
    before = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            t = interleaved(fns, rounds, 1)
            for name in variants:
                ratios = [r / v for r, v in zip(t["fp32"], t[name])]
                out.append({"threads": threads, "variant": name, "tokens_per_s": n_new / statistics.median(t[name]),
                            "speedup_vs_fp32": statistics.median(ratios)})
                log(f"  CPU {threads} thr {name:<28} {out[-1]['tokens_per_s']:8.1f} tokens/s  "
                    f"{out[-1]['speedup_vs_fp32']:.2f}x fp32")
    finally:
        torch.set_num_threads(before)
    return out


def speed_table(res) -> str:
    """One table: a row per variant, a column pair (ms, x fp32) per (threads, rows)."""
    rows = res["speed"]
    cols = sorted({(r["threads"], r["rows"]) for r in rows}, key=lambda c: (-c[0], c[1]))
    names = list(dict.fromkeys(r["variant"] for r in rows))
    get = {(r["threads"], r["rows"], r["variant"]): r for r in rows}
    head = "| variant | " + " | ".join(f"{t} thr, {n} row{'s' if n > 1 else ''}: ms | × fp32" for t, n in cols) + " |"
    md = [head, "|---|" + "---|---|" * len(cols)]
    for v in names:
        cells = []
        for t, n in cols:
            r = get.get((t, n, v))
            cells += [f"{r['ms']:.2f}", f"{r['speedup_vs_fp32']:.2f}"] if r else ["", ""]
        md.append(f"| {v} | " + " | ".join(cells) + " |")
    goals = []
    for r in rows:
        if r["variant"].startswith("ours W8A8") and r["rows"] == 32:
            g = (f"- W8A8 at 32 rows, {r['threads']} thread{'s' if r['threads'] > 1 else ''}: "
                 f"{r['speedup_vs_fp32']:.2f}× fp32 (goal ≥ 2×)")
            if "time_vs_torchao_dynamic" in r:
                g += f"; time {r['time_vs_torchao_dynamic']:.2f}× torchao's dynamic int8 (goal ≤ 1.2×)"
            goals.append(g)
    return "\n".join(md) + ("\n\n" + "\n".join(goals) if goals else "")


# ---------------------------------------------------------------------------------------------

def markdown(res) -> str:
    md = [f"# Quantization benchmark\n\n{res['environment']}\n"]
    if "quality" in res:
        q = res["quality"]
        md.append(f"## Bits per weight (course model, {q['val_chars']:,} validation characters, "
                  f"{q['val_tokens']:,} tokens; GPTQ: {q['calibration']} calibration windows of 128 train tokens, "
                  f"act-order, true-sequential; QAT: {q['qat_steps']} steps)\n\n"
                  f"fp32: {q['base']['bpc']:.4f} bits/char, perplexity "
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
        md.append(f"\n## One {res['speed_dim']}x{res['speed_dim']} linear layer on the CPU "
                  f"({res.get('speed_rounds', '?')} "
                  f"interleaved rounds of {res.get('speed_calls', '?')} calls; medians; × fp32 = median of per-round "
                  "ratios)\n\n" + speed_table(res))
    if res.get("speed_gpu"):
        md.append(f"\n## The same layer on a GPU ({res['speed_gpu'][0]['device']})\n\n| rows | variant | ms | × bf16 |"
                  "\n|---|---|---|---|")
        for r in res["speed_gpu"]:
            md.append(f"| {r['rows']} | {r['variant']} | {r['ms']:.3f} | {r['speedup_vs_bf16']:.2f} |")
    if "decode" in res:
        md.append(f"\n## Decode, course model on the CPU, greedy, KV cache, {res['decode_tokens']} tokens\n\n"
                  "| threads | variant | tokens/s | × fp32 |\n|---|---|---|---|")
        for r in res["decode"]:
            md.append(f"| {r.get('threads', res.get('threads'))} | {r['variant']} | {r['tokens_per_s']:.1f} | "
                      f"{r['speedup_vs_fp32']:.2f} |")
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="a smoke run: small slices, few rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["quality", "size", "speed", "gpu", "decode"], action="append")
    p.add_argument("--speed-threads", type=int, nargs="+", default=None,
                   help="CPU thread counts of the speed and decode tables (default: --threads and 1)")
    p.add_argument("--val-chars", type=int, default=None)
    p.add_argument("--qat-steps", type=int, default=None)
    p.add_argument("--bits", type=int, nargs="+", default=None,
                   help="quality: only these bit widths; their rows replace those of the last results (same settings)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "quantization.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.only or ["quality", "size", "speed", "gpu", "decode"]
    threads_list = args.speed_threads or sorted({args.threads, 1}, reverse=True)
    fast = args.fast
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = (f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average before "
           f"{load:.1f} (a shared machine: read the ratios)")
    log(env)
    model, tok = load_course_model()
    res = {"environment": env, "threads": args.threads}
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    if old:  # keep the parts not re-run
        res.update({k: v for k, v in old.items() if k not in parts and k not in ("environment", "threads")})
    if "quality" in parts:
        corpus = load_corpus()
        val_chars = args.val_chars or (20_000 if fast else None)  # default: the whole validation split
        val = corpus.text("val")[:val_chars]
        val_ids = torch.tensor(tok.encode(val))
        train_ids = torch.tensor(tok.encode(training_text(corpus, "train")[:(300_000 if fast else 2_000_000)],
                                            allowed_special={EOT}))
        g = torch.Generator().manual_seed(0)
        n_cal = 32 if fast else 128
        starts = torch.randint(len(train_ids) - 129, (n_cal,), generator=g)
        calib = torch.stack([train_ids[s:s + 128] for s in starts])
        all_bits = [8, 4, 2] if fast else [8, 6, 5, 4, 3, 2]
        bits_list = args.bits or all_bits
        qat_steps = args.qat_steps if args.qat_steps is not None else (10 if fast else 150)
        log(f"quality: {len(val):,} val characters, {len(val_ids):,} tokens; calibration {n_cal} x 128 train tokens")

        def log_row(r, secs):
            log(f"  {r['method']:<44} {r['bits']:>2} bits  {r['bpc']:.4f} bpc  ppl {r['ppl']:.3f} "
                f"({r['d_ppl_pct']:+.2f}%)  {r['linear_bits_per_weight']:.2f} b/w  [{secs:.0f}s]")
        base, rows = quality(model, val_ids, len(val), train_ids, calib, qat_steps, bits_list, log_row,
                             control_bits=min(all_bits))
        old_q = old.get("quality")
        if args.bits and old_q and (old_q["val_chars"], old_q["calibration"], old_q["qat_steps"]) == (
                len(val), n_cal, qat_steps):  # merge: the other bit widths' rows from the last run
            ref_rows = [r for r in rows if r["bits"] > 8]
            by_bits = {b: [r for r in (rows if b in bits_list else old_q["rows"]) if r["bits"] == b]
                       for b in sorted({r["bits"] for r in rows + old_q["rows"] if r["bits"] <= 8}, reverse=True)}
            rows = ref_rows + [r for b in by_bits.values() for r in b]
        res["quality"] = {"val_chars": len(val), "val_tokens": len(val_ids), "calibration": n_cal,
                          "qat_steps": qat_steps, "base": base, "rows": rows}
    if "size" in parts:
        log("size:")
        res["size"] = sizes(model)
    if "speed" in parts:
        dim = 1024 if fast else 4096
        rounds = args.rounds or (3 if fast else 9)
        calls = 3 if fast else 10
        log(f"speed (CPU): {dim}x{dim} layer, {rounds} interleaved rounds of {calls} calls, threads {threads_list}")
        res.update(speed_dim=dim, speed_rounds=rounds, speed_calls=calls)
        res["speed"] = speed(dim, [1, 32], rounds, calls, threads_list)
    if "gpu" in parts:
        log("speed (GPU):")
        res["speed_gpu"] = speed_gpu(1024 if fast else 4096, [1, 32], args.rounds or (3 if fast else 9), 20)
    if "decode" in parts:
        n_new = 16 if fast else 64
        log(f"decode (CPU): {n_new} greedy tokens, threads {threads_list}")
        res["decode_tokens"] = n_new
        res["decode"] = decode(model, tok, n_new, args.rounds or (2 if fast else 5), threads_list)
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
