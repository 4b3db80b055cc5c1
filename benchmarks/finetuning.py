"""Fine-tuning methods on one task: genre classification (comedy / history / tragedy) of passages of
plays the model never saw, starting from the course model.

Rows: TF-IDF + logistic regression (scikit-learn), head-only, full fine-tuning, LoRA r = 4, 8, 16 (q and
v rows of every layer), bottleneck adapters, prefix tuning, prompt tuning, and QLoRA (LoRA r=8 over the
4-bit NF4 course model) when utils.quantization is available. Columns: trainable parameters, % of the
model, memory (weights + peak tensors of one training step), wall-clock time per epoch, test accuracy,
validation bits/char of the language model before -> after (forgetting).

Passages are speeches without their "SPEAKER:" line (character names are a shortcut that fails on new
plays: see utils.finetuning.genre_dataset). Every method sees the same passages (balanced per genre,
training plays), the same epochs and batch
size, a learning rate per family chosen on the validation plays (utils.finetuning.METHOD_LR), and ``--seeds``
seeds (mean and spread reported). Test = the corpus's test plays. Times are wall clock as measured
(say whether the machine was shared).

    python benchmarks/finetuning.py                  # default budget
    python benchmarks/finetuning.py --per-class 60 --epochs 1 --seeds 1   # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.data import load_corpus  # noqa: E402
from utils.finetuning import METHODS, genre_dataset, run_method, tfidf_baseline  # noqa: E402
from utils.pretrain import load_course_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def quantizer():
    try:
        from utils.quantization import QuantConfig, quantize_model

        return (lambda m: quantize_model(m, QuantConfig(bits=4, format="nf4", granularity="group", group_size=64))), None
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {exc}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=300, help="training passages per genre (default %(default)s)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lm-chars", type=int, default=60_000, help="validation characters for bits/char")
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "finetuning.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus()
    _, tok = load_course_model()
    test = genre_dataset(corpus, tok, "test")
    val_text = corpus.text("val")[:args.lm_chars]
    lm_eval = (torch.tensor(tok.encode(val_text)), len(val_text))
    quantize, q_missing = quantizer()
    methods = [m for m in args.methods if not m.startswith("qlora") or quantize is not None]

    per_seed: dict[str, list[dict]] = {}
    tfidf_acc = []
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        train = genre_dataset(corpus, tok, "train", per_class=args.per_class, seed=seed)
        tf = tfidf_baseline(train, test, seed=seed)
        tfidf_acc.append(tf["accuracy"])
        print(f"seed {seed}: TF-IDF {tf['accuracy']:.3f}", flush=True)
        for method in methods:
            row = run_method(method, train, test, lm_eval, epochs=args.epochs, seed=seed, quantize=quantize)
            row.pop("clf")
            per_seed.setdefault(method, []).append(row)
            print(f"  {method:10s} acc {row['accuracy']:.3f}  {row['seconds_per_epoch']:.1f} s/epoch  "
                  f"{row['memory_mb']:.1f} MB  bpc {row['bpc_before']:.3f} -> {row['bpc_after']:.3f}", flush=True)

    def agg(rows, key):
        vals = [r[key] for r in rows]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    lines = [f"Genre classification on the test plays ({len(test)} passages {test.class_counts()}, majority-class "
             f"rate {test.majority_rate():.3f}); training: {args.per_class} passages per genre from the training plays, "
             f"{args.epochs:g} epochs, batch 16, {args.seeds} seed(s) (mean ± std).", "",
             "| method | trainable params | % of model | memory (MB) | time / epoch (s) | test accuracy | val bits/char before → after |",
             "|---|---|---|---|---|---|---|",
             f"| TF-IDF + logistic regression | – | – | – | – | {statistics.mean(tfidf_acc):.3f} ± "
             f"{statistics.stdev(tfidf_acc) if len(tfidf_acc) > 1 else 0:.3f} | – |"]
    summary = {}
    for method, rows in per_seed.items():
        acc, acc_sd = agg(rows, "accuracy")
        sec, _ = agg(rows, "seconds_per_epoch")
        b0, _ = agg(rows, "bpc_before")
        b1, _ = agg(rows, "bpc_after")
        r0 = rows[0]
        summary[method] = {"accuracy": acc, "accuracy_std": acc_sd, "seconds_per_epoch": sec,
                           "trainable": r0["trainable"], "percent": r0["percent"], "memory_mb": r0["memory_mb"],
                           "bpc_before": b0, "bpc_after": b1, "runs": rows}
        lines.append(f"| {method} | {r0['trainable']:,} | {r0['percent']:.2f} | {r0['memory_mb']:.1f} | {sec:.1f} | "
                     f"{acc:.3f} ± {acc_sd:.3f} | {b0:.3f} → {b1:.3f} |")
    if q_missing:
        lines.append(f"\nQLoRA not run: {q_missing}")
    tf_mean = statistics.mean(tfidf_acc)
    goals = []
    if "full" in summary and "lora-r8" in summary:
        f, l = summary["full"], summary["lora-r8"]
        goals.append(f"LoRA r=8 vs full: {100 * (l['accuracy'] - f['accuracy']):+.1f} accuracy points (goal: within 1), "
                     f"{l['percent']:.2f}% trainable (goal < 2%), memory {l['memory_mb']:.1f} vs {f['memory_mb']:.1f} MB")
    below = [m for m, s in summary.items() if s["accuracy"] <= tf_mean]
    goals.append(f"rows at or below TF-IDF ({tf_mean:.3f}): {below or 'none'}")
    lines += [""] + goals + [f"\nTotal {time.perf_counter() - t_start:.0f} s on {platform.processor() or platform.machine()}, "
                             f"{torch.get_num_threads()} torch threads (wall clock, as measured)."]
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "test_counts": test.class_counts(), "majority_rate": test.majority_rate(), "tfidf": tfidf_acc,
           "methods": summary, "qlora_missing": q_missing, "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps(out, indent=1))
    args.out.with_suffix(".md").write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
