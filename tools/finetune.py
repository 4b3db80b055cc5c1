"""Rebuild data/finetuned/: the fine-tuned course models that notebooks 07 and 08 use (`make finetune`).

- ``genre-classifier.pt``: notebook 07's LoRA r=8 genre classifier (LoRA on the q and v rows + a
  linear head), trained by :func:`utils.finetuning.train_genre_classifier` with
  :data:`utils.finetuning.GENRE_RECIPE` (notebook 07's default-mode settings);
- ``instruct-model.pt``: notebook 07's instruction-tuned model, trained by
  :func:`utils.instruct.train_instruct_model` with :data:`utils.instruct.INSTRUCT_RECIPE`;
- ``line-speaker-adapter.pt``: a LoRA adapter on that (frozen) instruct model for "who speaks the line",
  trained by :func:`utils.instruct.train_line_adapter` with :data:`utils.instruct.LINE_ADAPTER` and switched on
  for that question only (:func:`utils.instruct.score_routed`); it needs ``instruct-model.pt`` first.

Each file holds only the trained tensors (LoRA A/B, the head, the new special tokens' embedding
rows) and the recipe that rebuilds the model around the committed course model; it is written
atomically with a sha256 of its weights (utils.checkpoint). The held-out scores measured right after
training are stored in the file's metadata. Load them with
:func:`utils.finetuning.load_genre_classifier` and :func:`utils.finetuning.load_instruct_model`.

    python tools/finetune.py                 # all three (about 13 minutes on 2 CPU cores)
    python tools/finetune.py --only genre    # or --only instruct, --only adapter
    python tools/finetune.py --seeds         # the instruct recipe's spread over 3 seeds (benchmarks/results/)
    python tools/finetune.py --adapter-seeds # the line adapter's spread over 3 seeds (benchmarks/results/)
    python tools/finetune.py --base data/checkpoints/course8-gpt.pt   # the instruct recipe on another base model

``--base`` asks whether a task needs more capacity: it trains the instruct recipe (seed 0) on a base model
made by ``python -m utils.pretrain --n-layer ... --out ...`` and scores it, beside the saved course-model
instruct model, on the validation plays and on the held-out test plays; it writes
``benchmarks/results/finetuning_instruct_base.json`` and saves no model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils.runtime  # noqa: E402,F401  (first: passive OpenMP waits)
import torch  # noqa: E402


def build_genre(out_dir: Path, device=None) -> dict:
    from utils.checkpoint import weights_sha256
    from utils.data import load_corpus
    from utils.finetuning import (GENRE_CLASSES, GENRE_CLASSIFIER_FILE, GENRE_RECIPE, accuracy, genre_dataset,
                                  save_finetuned, train_genre_classifier)
    from utils.pretrain import load_course_model

    base, _ = load_course_model()
    base_sha = weights_sha256(base.state_dict())
    r = GENRE_RECIPE
    torch.manual_seed(r["seed"])
    t0 = time.perf_counter()
    clf, tok, result = train_genre_classifier(r["method"], per_class=r["per_class"], epochs=r["epochs"],
                                              max_tokens=r["max_tokens"], pooling=r["pooling"], seed=r["seed"],
                                              device=device)
    seconds = time.perf_counter() - t0
    test = genre_dataset(load_corpus(), tok, "test", max_tokens=r["max_tokens"])
    acc = accuracy(clf, test)
    meta = {"test_accuracy": acc, "test_passages": len(test), "test_majority_rate": test.majority_rate(),
            "test_plays": sorted(set(test.plays)), "train_seconds": seconds, "device": str(device or "cpu"),
            "built_by": "tools/finetune.py"}
    path = out_dir / GENRE_CLASSIFIER_FILE
    save_finetuned(path, clf, "genre-classifier", {**r, "classes": list(GENRE_CLASSES)}, base_sha, metadata=meta)
    print(f"{path}: test accuracy {acc:.3f} on {len(test)} passages of the test plays "
          f"(majority {test.majority_rate():.3f}), trained in {seconds:.1f} s, {path.stat().st_size:,} bytes")
    return meta


def build_instruct(out_dir: Path, device=None) -> dict:
    from utils.checkpoint import weights_sha256
    from utils.finetuning import INSTRUCT_MODEL_FILE, save_finetuned
    from utils.instruct import INSTRUCT_RECIPE, INSTRUCT_TEMPLATE, choice_accuracy, score_tasks, task_baselines
    from utils.pretrain import load_course_model

    base, tok = load_course_model()
    base_sha = weights_sha256(base.state_dict())
    r = INSTRUCT_RECIPE
    model, tok2, seconds = _train_instruct(r, r["seed"], device)
    full = r["method"] == "full"
    test = _held_out(r)
    scores = score_tasks(model, tok2, INSTRUCT_TEMPLATE, test)
    meta = {"held_out_scores": scores, "held_out_choice": choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, test),
            "baselines": task_baselines(test), "train_seconds": seconds, "device": str(device or "cpu"),
            "built_by": "tools/finetune.py"}
    path = out_dir / INSTRUCT_MODEL_FILE
    save_finetuned(path, model, "instruct", dict(r), base_sha, new_rows_from=None if full else tok.vocab_size,
                   metadata=meta, dtype=torch.bfloat16 if full else None)
    print(f"{path}: held-out exact match " + ", ".join(f"{t} {d['exact_match']:.3f}" for t, d in scores.items())
          + f"; trained in {seconds:.1f} s, {path.stat().st_size:,} bytes")
    return meta


def _line_adapter_scores(model, tok2) -> dict:
    """The scores of an instruct model with its line adapter: on the held-out test plays with the adapter
    routed (on for utils.instruct.ADAPTER_TASKS only) and, to show what the routing keeps, with it on for every
    task; the counterfactual twins of the test plays' line_speaker items (routed); and line_speaker on the
    validation plays (the items the adapter's rule was checked on)."""
    from utils.data import load_corpus
    from utils.instruct import (INSTRUCT_RECIPE, INSTRUCT_TEMPLATE, choice_accuracy, choice_picks, instruction_data,
                                line_twin, score_routed, score_tasks)

    r = INSTRUCT_RECIPE
    test = _held_out(r)

    def table(scores, choice):
        return {t: {"exact_match": d["exact_match"], **({"f1": d["f1"]} if "f1" in d else {}),
                    **({"choice": choice[t]} if t in choice else {})} for t, d in scores.items()}

    out = {"test_routed": table(*score_routed(model, tok2, INSTRUCT_TEMPLATE, test)),
           "test_adapter_on_every_task": table(score_tasks(model, tok2, INSTRUCT_TEMPLATE, test),
                                               choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, test))}
    pairs = [(e, line_twin(e)) for e in test if e.task == "line_speaker"]
    pairs = [(a, b) for a, b in pairs if b is not None]
    pa = choice_picks(model, tok2, INSTRUCT_TEMPLATE, [a for a, _ in pairs])
    pb = choice_picks(model, tok2, INSTRUCT_TEMPLATE, [b for _, b in pairs])
    out["test_twins"] = {"pairs": len(pairs), "same_answer": sum(x == y for x, y in zip(pa, pb)),
                         "both_right": sum(x == a.response and y == b.response for (a, b), x, y in zip(pairs, pa, pb))}
    val = [e for e in instruction_data(load_corpus(), "val", n_per_task=r["test_per_task"], seed=r["test_seed"])
           if e.task == "line_speaker"]
    out["val_line_speaker"] = table(*score_routed(model, tok2, INSTRUCT_TEMPLATE, val))["line_speaker"]
    return out


def _train_line_adapter(seed: int, device=None, instruct_path=None):
    """(model with its adapter, tokenizer, seconds, sha256 of the instruct model's weights): the line adapter
    (utils.instruct.LINE_ADAPTER) trained with ``seed`` on the saved instruct model, its LoRA weights rounded to
    bfloat16 (how it is stored), so that its scores are those of the saved adapter."""
    from utils.checkpoint import weights_sha256
    from utils.finetuning import load_instruct_model
    from utils.instruct import LINE_ADAPTER, train_line_adapter
    from utils.lora import lora_layers

    model, tok2 = load_instruct_model(device=device, path=instruct_path)
    sha = weights_sha256(model.state_dict())
    t0 = time.perf_counter()
    train_line_adapter(model, tok2, LINE_ADAPTER, seed, progress=True)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for layer in lora_layers(model):
            for p in list(layer.lora_A) + list(layer.lora_B):
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return model.eval(), tok2, seconds, sha


def build_line_adapter(out_dir: Path, device=None) -> dict:
    from utils.finetuning import INSTRUCT_MODEL_FILE, LINE_ADAPTER_FILE, save_finetuned
    from utils.instruct import INSTRUCT_RECIPE, LINE_ADAPTER, task_baselines

    model, tok2, seconds, sha = _train_line_adapter(LINE_ADAPTER["seed"], device, out_dir / INSTRUCT_MODEL_FILE)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    meta = {**_line_adapter_scores(model, tok2), "baselines": task_baselines(_held_out(INSTRUCT_RECIPE)),
            "adapter_parameters": n_lora, "model_parameters": sum(p.numel() for p in model.parameters()) - n_lora,
            "train_seconds": seconds, "device": str(device or "cpu"), "built_by": "tools/finetune.py"}
    path = out_dir / LINE_ADAPTER_FILE
    save_finetuned(path, model, "line-adapter", dict(LINE_ADAPTER), sha, metadata=meta, dtype=torch.bfloat16)
    ls = meta["test_routed"]["line_speaker"]
    print(f"{path}: held-out line_speaker exact match {ls['exact_match']:.3f}, best-scored choice {ls['choice']:.3f} "
          f"(adapter routed); {n_lora:,} parameters; trained in {seconds:.1f} s, {path.stat().st_size:,} bytes")
    return meta


def _train_instruct(r: dict, seed: int, device=None, base=None):
    """(model, tokenizer, seconds): the instruct recipe ``r`` trained with ``seed``; a fully fine-tuned
    model is rounded to bfloat16 (how it is stored), so that its scores are those of the saved model."""
    from utils.instruct import train_instruct_model

    t0 = time.perf_counter()
    model, tok2, _ = train_instruct_model(method=r["method"], n_per_task=r["n_per_task"],
                                          task_counts=r.get("task_counts"), epochs=r["epochs"], lr=r["lr"], seed=seed,
                                          device=device, progress=True, balance_genres=r.get("balance_genres", False),
                                          loss_per_example=r.get("loss_per_example", False), base=base,
                                          genre_stage=r.get("genre_stage"), line_stage=r.get("line_stage"))
    seconds = time.perf_counter() - t0
    if r["method"] == "full":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return model, tok2, seconds


def _held_out(r: dict) -> list:
    """The held-out factual instructions of the test plays that every instruct score is measured on."""
    from utils.data import load_corpus
    from utils.instruct import FACTUAL_TASKS, instruction_data

    return [e for e in instruction_data(load_corpus(), "test", n_per_task=r["test_per_task"], seed=r["test_seed"])
            if e.task in FACTUAL_TASKS]


SEEDS_RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "finetuning_instruct_seeds.json"


def instruct_seeds(device=None, out: Path = SEEDS_RESULT) -> dict:
    """The instruct recipe's spread over :data:`utils.instruct.INSTRUCT_SEEDS`: seed 0 is the saved
    model (data/finetuned/instruct-model.pt, which must have been built with the current recipe), the
    other seeds are trained here (data sampling, renaming and batch order all change with the seed) and
    not saved. Every model is scored on the same held-out items; writes ``out`` (JSON) and returns it."""
    import json
    import os
    import statistics

    from utils.finetuning import load_instruct_model
    from utils.instruct import (INSTRUCT_RECIPE, INSTRUCT_SEEDS, INSTRUCT_TEMPLATE, choice_accuracy, score_tasks,
                                task_baselines)

    r = INSTRUCT_RECIPE
    test = _held_out(r)
    per_seed, seconds = {}, {}
    for seed in INSTRUCT_SEEDS:
        if seed == r["seed"]:
            model, tok2 = load_instruct_model(device=device)
            saved = model.finetune_metadata["recipe"]
            if saved != r:
                raise RuntimeError(f"data/finetuned/instruct-model.pt was built with recipe {saved}, not the current "
                                   f"{r}: run `python tools/finetune.py --only instruct` first")
            seconds[seed] = model.finetune_metadata["train_seconds"]
        else:
            model, tok2, seconds[seed] = _train_instruct(r, seed, device)
        sc = score_tasks(model, tok2, INSTRUCT_TEMPLATE, test)
        ca = choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, test)
        per_seed[seed] = {t: {**{"exact_match": d["exact_match"]}, **({"f1": d["f1"]} if "f1" in d else {}),
                              **({"choice": ca[t]} if t in ca else {})} for t, d in sc.items()}
        print(f"seed {seed}: " + ", ".join(f"{t} EM {d['exact_match']:.3f}" for t, d in per_seed[seed].items()), flush=True)
    summary = {}
    for t in per_seed[INSTRUCT_SEEDS[0]]:
        summary[t] = {}
        for metric in per_seed[INSTRUCT_SEEDS[0]][t]:
            v = [per_seed[s][t][metric] for s in INSTRUCT_SEEDS]
            summary[t][metric] = {"mean": statistics.mean(v), "std": statistics.stdev(v), "min": min(v), "max": max(v)}
    result = {"recipe": r, "seeds": list(INSTRUCT_SEEDS), "template": INSTRUCT_TEMPLATE.name,
              "held_out": {"split": "test", "per_task": r["test_per_task"], "seed": r["test_seed"]},
              "baselines": task_baselines(test), "per_seed": {str(s): v for s, v in per_seed.items()},
              "summary": summary, "train_seconds": {str(s): v for s, v in seconds.items()},
              "device": str(device or "cpu"), "torch_threads": torch.get_num_threads(), "built_by": "tools/finetune.py --seeds"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"{out}: " + "; ".join(f"{t} EM {d['exact_match']['mean']:.3f} ± {d['exact_match']['std']:.3f}"
                                  for t, d in summary.items()))
    return result


ADAPTER_SEEDS_RESULT = SEEDS_RESULT.with_name("finetuning_line_adapter_seeds.json")


def line_adapter_seeds(device=None, out: Path = ADAPTER_SEEDS_RESULT) -> dict:
    """The line adapter's spread over :data:`utils.instruct.LINE_ADAPTER_SEEDS` on the saved instruct model: seed 0 is
    the saved adapter (data/finetuned/line-speaker-adapter.pt, which must have been built with the current recipe),
    the other seeds are trained here (LoRA's start, the data draw and the batch order change with the seed) and not
    saved. Writes ``out`` (JSON) and returns it."""
    from utils.finetuning import load_instruct_model
    from utils.instruct import LINE_ADAPTER, LINE_ADAPTER_SEEDS

    per_seed, seconds = {}, {}
    for seed in LINE_ADAPTER_SEEDS:
        if seed == LINE_ADAPTER["seed"]:
            model, tok2 = load_instruct_model(device=device, line_adapter=True)
            if model.adapter_metadata["recipe"] != LINE_ADAPTER:
                raise RuntimeError(f"data/finetuned/line-speaker-adapter.pt was built with {model.adapter_metadata['recipe']}, "
                                   f"not the current {LINE_ADAPTER}: run `python tools/finetune.py --only adapter` first")
            seconds[seed] = model.adapter_metadata["train_seconds"]
        else:
            model, tok2, seconds[seed], _ = _train_line_adapter(seed, device)
        per_seed[seed] = _line_adapter_scores(model, tok2)
        ls = per_seed[seed]["test_routed"]["line_speaker"]
        print(f"adapter seed {seed}: line_speaker EM {ls['exact_match']:.3f}, choice {ls['choice']:.3f}", flush=True)
    return write_line_adapter_seeds(per_seed, seconds, device, "tools/finetune.py --adapter-seeds", out)


def write_line_adapter_seeds(per_seed: dict, seconds: dict, device, built_by: str, out: Path = ADAPTER_SEEDS_RESULT) -> dict:
    """Write the line adapter's per-seed scores (:func:`_line_adapter_scores` per seed of
    :data:`utils.instruct.LINE_ADAPTER_SEEDS`) and their spread to ``out`` (JSON, atomically); returns the result."""
    import json
    import os
    import statistics

    from utils.instruct import INSTRUCT_RECIPE, LINE_ADAPTER, LINE_ADAPTER_SEEDS, task_baselines

    if sorted(per_seed) != sorted(LINE_ADAPTER_SEEDS):
        raise ValueError(f"need the scores of seeds {LINE_ADAPTER_SEEDS}, got {sorted(per_seed)}")
    summary = {}
    for key in ("exact_match", "choice"):
        v = [per_seed[s]["test_routed"]["line_speaker"][key] for s in LINE_ADAPTER_SEEDS]
        summary[key] = {"mean": statistics.mean(v), "std": statistics.stdev(v), "min": min(v), "max": max(v)}
    r = INSTRUCT_RECIPE
    result = {"adapter": LINE_ADAPTER, "seeds": list(LINE_ADAPTER_SEEDS), "instruct_recipe": r,
              "held_out": {"split": "test", "per_task": r["test_per_task"], "seed": r["test_seed"]},
              "baselines": task_baselines(_held_out(r)), "per_seed": {str(s): per_seed[s] for s in LINE_ADAPTER_SEEDS},
              "line_speaker_summary": summary, "train_seconds": {str(s): seconds[s] for s in LINE_ADAPTER_SEEDS},
              "device": str(device or "cpu"), "torch_threads": torch.get_num_threads(), "built_by": built_by}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"{out}: line_speaker EM {summary['exact_match']['mean']:.3f} ± {summary['exact_match']['std']:.3f}, "
          f"choice {summary['choice']['mean']:.3f} ± {summary['choice']['std']:.3f}")
    return result


BASE_RESULT = SEEDS_RESULT.with_name("finetuning_instruct_base.json")
VAL_PER_TASK, VAL_SEED = 200, 2  # the validation items the instruct recipe was chosen on


def instruct_on_base(base: Path, device=None, out: Path = BASE_RESULT) -> dict:
    """The instruct recipe (seed 0) trained on the base model ``base`` and the saved instruct model (the
    committed course model as base), both scored on the validation plays and on the held-out test plays
    (exact match and best-scored choice). Writes ``out`` (JSON) and returns it; saves no model."""
    import json
    import os

    from utils.checkpoint import load_checkpoint
    from utils.data import load_corpus
    from utils.finetuning import load_instruct_model
    from utils.instruct import (FACTUAL_TASKS, INSTRUCT_RECIPE, INSTRUCT_TEMPLATE, choice_accuracy, instruction_data,
                                score_tasks, task_baselines)
    from utils.pretrain import CHECKPOINT_PATH

    r = INSTRUCT_RECIPE
    base = Path(base)
    if not base.is_file():
        raise FileNotFoundError(f"--base {base}: no such checkpoint; make one with `python -m utils.pretrain "
                                f"--n-layer 8 --out {base}`")
    sets = {"test": _held_out(r),
            "val": [e for e in instruction_data(load_corpus(), "val", n_per_task=VAL_PER_TASK, seed=VAL_SEED)
                    if e.task in FACTUAL_TASKS]}

    def scores(model, tok2) -> dict:
        out = {}
        for name, items in sets.items():
            sc, ca = score_tasks(model, tok2, INSTRUCT_TEMPLATE, items), choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, items)
            out[name] = {t: {"exact_match": d["exact_match"], **({"choice": ca[t]} if t in ca else {})} for t, d in sc.items()}
        return out

    rows = {}
    for saved, label, path in ((True, "course model", CHECKPOINT_PATH), (False, "base " + base.name, base)):
        meta = load_checkpoint(path, map_location="cpu").metadata
        info = {"checkpoint": path.name, "parameters": meta.get("parameters"), "val_bpc": meta.get("val_bpc"),
                "shape": {k: meta["recipe"][k] for k in ("n_layer", "n_head", "n_embd")}, "pretrain_seconds": meta.get("train_seconds")}
        if saved:  # the committed instruct model: the same recipe and seed on the course model
            model, tok2 = load_instruct_model(device=device)
            info["finetune_seconds"] = model.finetune_metadata["train_seconds"]
        else:
            model, tok2, info["finetune_seconds"] = _train_instruct(r, r["seed"], device, base=path)
        rows[label] = {**info, **scores(model, tok2)}
        print(f"{label} ({info['parameters']:,} parameters): " + "; ".join(
            f"{s} " + ", ".join(f"{t} {d['exact_match']:.3f}" + (f"/{d['choice']:.3f}" if "choice" in d else "")
                                for t, d in rows[label][s].items()) for s in sets), flush=True)
    result = {"recipe": r, "seed": r["seed"], "template": INSTRUCT_TEMPLATE.name,
              "sets": {"val": {"per_task": VAL_PER_TASK, "seed": VAL_SEED}, "test": {"per_task": r["test_per_task"], "seed": r["test_seed"]}},
              "baselines": {name: task_baselines(items) for name, items in sets.items()}, "models": rows,
              "device": str(device or "cpu"), "torch_threads": torch.get_num_threads(),
              "built_by": f"tools/finetune.py --base {base.name}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> None:
    from utils.finetuning import _finetuned_dir
    from utils.runtime import get_device

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("genre", "instruct", "adapter"), help="build only one of the three files")
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write (default data/finetuned/)")
    ap.add_argument("--device", default=None, help="cpu, cuda or mps (default: utils.runtime.get_device())")
    ap.add_argument("--seeds", action="store_true",
                    help="instead: train the instruct recipe's other seeds and write their held-out spread to "
                         "benchmarks/results/finetuning_instruct_seeds.json (seed 0 = the saved model)")
    ap.add_argument("--base", type=Path, default=None,
                    help="instead: train the instruct recipe on this base checkpoint and score it beside the saved "
                         "model (benchmarks/results/finetuning_instruct_base.json)")
    ap.add_argument("--adapter-seeds", action="store_true",
                    help="instead: train the line adapter's other seeds and write their held-out spread to "
                         "benchmarks/results/finetuning_line_adapter_seeds.json (seed 0 = the saved adapter)")
    args = ap.parse_args(argv)
    out = args.out_dir or _finetuned_dir()
    device = get_device(args.device)
    if args.base is not None:
        instruct_on_base(args.base, device)
        return
    if args.seeds:
        instruct_seeds(device)
        return
    if args.adapter_seeds:
        line_adapter_seeds(device)
        return
    if args.only in (None, "genre"):
        build_genre(out, device)
    if args.only in (None, "instruct"):
        build_instruct(out, device)
    if args.only in (None, "adapter"):
        build_line_adapter(out, device)


if __name__ == "__main__":
    main()
