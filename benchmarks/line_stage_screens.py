"""Line-stage screens: can a stage of "who speaks the line" teach the lookup without costing the other tasks?

``benchmarks/line_speaker_steps.py`` shows that the course model learns the lookup of "who speaks the line" after
about 2,000 steps of that task alone, far more than the instruct recipe's mixed stage gives it. This script trains
the recipe (utils.instruct.INSTRUCT_RECIPE) with an extra **line stage** of line_speaker examples
(utils.instruct.line_stage_set, data seed + 2) and scores the result on the *validation* plays (where recipes are
chosen; never the test plays): exact match of the four factual tasks, best-scored choice, and the counterfactual
twins (utils.instruct.line_twin: how often the model gives the same name when the other speech's line is quoted).
Each entry also keeps ``genre_picks`` (:func:`genre_picks`): which genre the model picks for each true genre, and its
genre accuracy with each answer's prior removed, to tell a genre answer that leans one way from one that no longer
reads the passage.

A variant says which weights the line stage trains and where it runs:

- ``--train all``: every weight; ``attention``: only the attention matrices (qkv_proj, out_proj; MLPs, norms and
  embeddings frozen in that stage); ``attention_qk``: only the query and key rows of qkv_proj (what attention
  looks at, not what it writes);
- ``--blocks 0 1``: only those blocks' attention (default: every block);
- ``--where before`` (before the mixed stage) or ``after`` (between the mixed and the genre stage);
- ``--n 0``: no line stage: the recipe itself, the baseline of the screening rule;
- ``--genre-lr``: the genre stage's peak learning rate instead of the recipe's;
- ``--anchor``: L2-SP in the line stage (``utils.instruct.finetune_lm(anchor=...)``): after every step the trained
  weights are pulled toward their values before the stage by ``anchor`` x the step's learning rate, so that the
  stage keeps what the weights knew (the hypothesis: the genre answer is lost to the weights' drift, not to the
  lookup itself);
- ``--mixed-scale K``: the mixed stage with K times the recipe's examples of every task (fresh draws, still one
  epoch), i.e. K times its steps, all tasks together; with ``--n 0``, instead of a line stage;
- ``--mixed-count line_speaker=N genre=M``: these tasks' examples in the mixed stage (default: the recipe's times
  ``--mixed-scale``); with ``--n 0`` and many line_speaker examples, the lookup's steps *interleaved* with every
  other task's instead of a stage of their own;
- ``--base PATH``: another base model than the course model (e.g. one with twice the blocks, ``python -m
  utils.pretrain --n-layer 8 --out PATH``): does the competition between tasks go away with more capacity? Its
  screens belong in a results file of their own, with that base's recipe row.

The stages run in the order of utils.instruct.train_instruct_model (a test checks that ``--train all --where
before`` gives exactly its model); the weights are rounded to bfloat16 before scoring, as the saved model is
stored. Each run appends one entry to the results file (atomically). The screening rule (fixed before the first
screen): line_speaker best-scored choice >= 0.60, and no other task's exact match more than 0.05 below the recipe's
at the same seed, on two training seeds. (The committed file's ``rule.written_with`` keeps the recipe's numbers the
rule was first written with, from an earlier run; the verdicts printed here use the recipe rows of this script.)

    python benchmarks/line_stage_screens.py --seed 0 --train attention --blocks 0 1 --n 32000
    python benchmarks/line_stage_screens.py --seed 0 --n 0                  # the recipe (baseline row)
    python benchmarks/line_stage_screens.py --seed 0 --anchor 10 \
        --out benchmarks/results/line_stage_screens_anchor.json             # every weight, anchored (L2-SP)
    python benchmarks/line_stage_screens.py --seed 0 --n 0 --mixed-scale 3  # no line stage, 3x the mixed stage
    python benchmarks/line_stage_screens.py --seed 0 --n 0 --mixed-scale 3 --mixed-count line_speaker=32000
    python -m utils.pretrain --n-layer 8 --out /tmp/course8-gpt.pt           # a base with twice the blocks, then:
    python benchmarks/line_stage_screens.py --seed 0 --n 0 --base /tmp/course8-gpt.pt \
        --out benchmarks/results/line_stage_screens_base8.json              # its recipe row (and its variants)
    python benchmarks/line_stage_screens.py --quick --out /tmp/quick.json  # a few examples per stage (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.moe import cpu_name  # noqa: E402
from utils.data import load_corpus  # noqa: E402
from utils.instruct import (EOT, FACTUAL_TASKS, INSTRUCT_RECIPE, INSTRUCT_TEMPLATE, choice_accuracy,  # noqa: E402
                            choice_picks, choice_scores, finetune_lm, instruct_pairs, instruct_training_set,
                            instruction_data, line_stage_set, line_twin, prepare_instruct_model, run_genre_stage,
                            run_line_stage, TASKS, score_tasks)
from utils.pretrain import load_course_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = ("all", "attention", "attention_qk")
WHERE = ("before", "after")
RULE = {"line_choice": 0.60, "max_drop": 0.05}
# --quick: a few examples per stage, so that the tests run in seconds (its numbers mean nothing)
QUICK = {"n_per_task": 4, "task_counts": {}, "genre_stage": {"n": 3, "replay": 1, "epochs": 1.0, "lr": 1e-4},
         "val_per_task": 4}


def recipe(quick: bool = False) -> dict:
    """INSTRUCT_RECIPE, or its --quick version."""
    return {**INSTRUCT_RECIPE, **({k: v for k, v in QUICK.items() if k != "val_per_task"} if quick else {})}


def freeze_for_line_stage(model: torch.nn.Module, train: str = "all", blocks: list[int] | None = None):
    """Make only the weights a line stage of kind ``train`` trains require a gradient. Returns ``(restore,
    n_trainable)``: ``restore()`` puts every ``requires_grad`` back and removes the gradient hooks. For
    "attention_qk" a hook zeroes the value rows' gradient of qkv_proj (rows 2C:3C of the (3C, C) weight); with no
    weight decay (finetune_lm's), AdamW then leaves them exactly as they were."""
    if train not in TRAIN:
        raise ValueError(f"train must be one of {TRAIN}, got {train!r}")
    n_layer = model.config.n_layer
    if blocks is not None and (not blocks or any(not isinstance(b, int) or not 0 <= b < n_layer for b in blocks)):
        raise ValueError(f"blocks must be None (every block) or block indices in [0, {n_layer}), got {blocks!r}")
    if train == "attention_qk" and model.config.n_kv_head not in (None, model.config.n_head):
        raise ValueError("attention_qk assumes one key/value head per query head (qkv_proj rows q | k | v)")
    kept = {n: p.requires_grad for n, p in model.named_parameters()}
    in_blocks = (lambda n: True) if blocks is None else (lambda n: any(n.startswith(f"blocks.{b}.") for b in blocks))
    hooks = []
    if train != "all":
        for n, p in model.named_parameters():
            attn = ".attn." in n and in_blocks(n) and n.endswith("weight")
            p.requires_grad_(attn and (train == "attention" or n.endswith("qkv_proj.weight")))
    if train == "attention_qk":
        c = model.config.n_embd
        keep = torch.ones(3 * c, 1)
        keep[2 * c:] = 0.0
        for p in model.parameters():
            if p.requires_grad:
                hooks.append(p.register_hook(lambda g, k=keep: g * k.to(g.device, g.dtype)))
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if train == "attention_qk":
        n_trainable = n_trainable * 2 // 3

    def restore() -> None:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(kept[n])

    return restore, n_trainable


def train_screen(seed: int = 0, n: int = 32000, lr: float = 1e-3, replay: int = 0, train: str = "all",
                 blocks: list[int] | None = None, where: str = "before", quick: bool = False, corpus=None,
                 genre_lr: float | None = None, anchor: float = 0.0, mixed_scale: int = 1,
                 mixed_counts: dict | None = None, base: Path | None = None):
    """The recipe with a line stage of this variant (``n=0``: without one; ``genre_lr``: the genre stage's peak
    learning rate instead of the recipe's; ``anchor``: L2-SP strength in the line stage, 0 = off; ``mixed_scale``:
    the mixed stage's examples of every task times this; ``mixed_counts``: {task: examples} in the mixed stage
    instead of the recipe's times ``mixed_scale``; ``base``: a base model's checkpoint instead of the course model). Returns
    ``(model, tokenizer, n_trainable in the line stage, seconds)``, the model in eval mode, rounded to bfloat16."""
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0 (line_speaker examples; 0 = no line stage), got {n!r}")
    if not isinstance(mixed_scale, int) or mixed_scale < 1:
        raise ValueError(f"mixed_scale must be an int >= 1 (times the mixed stage's examples), got {mixed_scale!r}")
    mixed_counts = dict(mixed_counts or {})
    bad = {t: c for t, c in mixed_counts.items()
           if t not in TASKS or not isinstance(c, int) or isinstance(c, bool) or c < 1}
    if bad:
        raise ValueError(f"mixed_counts must map tasks of {TASKS} to ints >= 1 (examples in the mixed stage), "
                         f"got {bad!r}")
    r = recipe(quick)
    corpus = corpus if corpus is not None else load_corpus()
    stage = {"n": n, "replay": replay, "epochs": 1.0, "lr": lr}
    t0 = time.perf_counter()
    model, tok = load_course_model(base) if base is not None else load_course_model()
    tok2 = prepare_instruct_model(model, tok, r["method"])
    n_trainable = 0

    def line_stage():
        restore, k = freeze_for_line_stage(model, train, blocks)
        try:
            if anchor:  # run_line_stage's stage, with the anchor (same examples, data and training seeds)
                pairs = instruct_pairs(tok2, line_stage_set(corpus, stage, seed), True, model.config.block_size)
                finetune_lm(model, pairs, epochs=stage["epochs"], lr=stage["lr"], pad_id=tok2.special_tokens[EOT],
                            seed=seed + 2, progress=False, anchor=anchor)
            else:
                run_line_stage(model, tok2, stage, seed, corpus=corpus)
        finally:
            restore()
        return k

    if n and where == "before":
        n_trainable = line_stage()
    counts = {t: c * mixed_scale for t, c in r["task_counts"].items()}
    counts.update(mixed_counts)
    examples = instruct_training_set(corpus, r["n_per_task"] * mixed_scale, counts, seed, r["balance_genres"])
    finetune_lm(model, instruct_pairs(tok2, examples, True, model.config.block_size), epochs=r["epochs"],
                lr=r["lr"], pad_id=tok2.special_tokens[EOT], seed=seed, progress=False)
    if n and where == "after":
        n_trainable = line_stage()
    run_genre_stage(model, tok2, {**r["genre_stage"], **({"lr": genre_lr} if genre_lr else {})}, seed, corpus=corpus)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return model, tok2, n_trainable, time.perf_counter() - t0


def genre_picks(examples: list, scores: list[list[float]]) -> dict:
    """What the model picks on the genre items, to tell a lost answer from a moved prior.

    ``examples``: genre items (with ``choices`` and the true ``response``); ``scores``: their
    :func:`utils.instruct.choice_scores`. Returns ``confusion`` ({true genre: {picked genre: count}}), ``picked``
    (the share of items each genre is picked for), ``choice`` (best-scored accuracy) and ``calibrated_choice``: the
    accuracy after each genre's score has its mean over these items subtracted, i.e. with the prior the model gives
    that answer whatever the passage removed (no label is used). If a screen loses ``choice`` but keeps
    ``calibrated_choice``, the passages' evidence survived and only the prior moved."""
    if len(examples) != len(scores) or not examples:
        raise ValueError(f"need one score list per genre item, got {len(examples)} items and {len(scores)} scores")
    sums: dict[str, list[float]] = {}
    for e, sc in zip(examples, scores):
        if e.response not in e.choices:  # its accuracy could not count it: say so instead of scoring it wrong
            raise ValueError(f"an item's answer {e.response!r} is not among its choices {e.choices!r}")
        if len(sc) != len(e.choices):
            raise ValueError(f"an item has {len(e.choices)} choices but {len(sc)} scores")
        for c, v in zip(e.choices, sc):
            sums.setdefault(c, []).append(v)
    prior = {c: sum(v) / len(v) for c, v in sums.items()}
    confusion: dict[str, dict[str, int]] = {}
    hits = calibrated = 0
    for e, sc in zip(examples, scores):
        pick = e.choices[max(range(len(sc)), key=sc.__getitem__)]
        adj = [v - prior[c] for c, v in zip(e.choices, sc)]
        confusion.setdefault(e.response, {}).setdefault(pick, 0)
        confusion[e.response][pick] += 1
        hits += pick == e.response
        calibrated += e.choices[max(range(len(adj)), key=adj.__getitem__)] == e.response
    n = len(examples)
    picked = {c: sum(row.get(c, 0) for row in confusion.values()) / n for c in sorted(prior)}
    return {"confusion": confusion, "picked": picked, "choice": hits / n, "calibrated_choice": calibrated / n}


def run(seed: int = 0, n: int = 32000, lr: float = 1e-3, replay: int = 0, train: str = "all",
        blocks: list[int] | None = None, where: str = "before", quick: bool = False, threads: int = 2,
        genre_lr: float | None = None, anchor: float = 0.0, mixed_scale: int = 1,
        mixed_counts: dict | None = None, base: Path | None = None) -> dict:
    """Train one variant and score it on the validation plays; returns the entry the results file keeps."""
    torch.set_num_threads(threads)
    corpus = load_corpus()
    model, tok2, n_trainable, secs = train_screen(seed, n, lr, replay, train, blocks, where, quick, corpus, genre_lr,
                                                  anchor, mixed_scale, mixed_counts, base)
    per_task = QUICK["val_per_task"] if quick else INSTRUCT_RECIPE["test_per_task"]
    val = [e for e in instruction_data(corpus, "val", n_per_task=per_task, seed=INSTRUCT_RECIPE["test_seed"])
           if e.task in FACTUAL_TASKS]
    em = {t: d["exact_match"] for t, d in score_tasks(model, tok2, INSTRUCT_TEMPLATE, val).items()}
    choice = choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, val)
    genres = [e for e in val if e.task == "genre"]
    picks = genre_picks(genres, choice_scores(model, tok2, INSTRUCT_TEMPLATE, genres))
    twins = [(e, line_twin(e)) for e in val if e.task == "line_speaker"]
    twins = [(a, b) for a, b in twins if b is not None]
    same = 0
    if twins:
        pa = choice_picks(model, tok2, INSTRUCT_TEMPLATE, [a for a, _ in twins])
        pb = choice_picks(model, tok2, INSTRUCT_TEMPLATE, [b for _, b in twins])
        same = sum(x == y for x, y in zip(pa, pb))
    variant = {"n": n, "lr": lr, "replay": replay, "train": train, "blocks": blocks, "where": where}
    if not n:
        variant = {"n": 0}
    if genre_lr:
        variant["genre_lr"] = genre_lr
    if anchor and n:
        variant["anchor"] = anchor
    if mixed_scale != 1:
        variant["mixed_scale"] = mixed_scale
    if mixed_counts:
        variant["mixed_counts"] = dict(mixed_counts)
    entry = {"seed": seed, "variant": variant, "quick": quick, "line_stage_trainable": n_trainable,
            "train_s": round(secs, 1), "val_per_task": per_task, "exact_match": em, "choice": choice,
            "twin_pairs": len(twins), "same_answer": same, "genre_picks": picks,
            "run_as": "benchmarks/line_stage_screens.py",
            "environment": {"cpu": cpu_name(), "torch": torch.__version__,
                            "date": time.strftime("%Y-%m-%d")}}
    if base is not None:  # which base, so that its rows are never judged against another base's recipe row
        c = model.config
        entry["base"] = {"checkpoint": Path(base).name, "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                         "parameters": sum(p.numel() for p in model.parameters())}
    return entry


def is_recipe(variant: dict) -> bool:
    """Whether a screen's variant is the recipe itself (no line stage, the recipe's mixed stage)."""
    return variant.get("n", 0) == 0 and variant.get("mixed_scale", 1) == 1 and not variant.get("mixed_counts")


def verdict(entry: dict, baseline: dict | None) -> str:
    """"pass" / "fail: ..." under RULE against the recipe's entry of the same seed; "no baseline" without one."""
    if is_recipe(entry["variant"]):
        return "baseline"
    if baseline is None:
        return "no baseline"
    why = []
    if entry["choice"]["line_speaker"] < RULE["line_choice"]:
        why.append(f"line_speaker choice {entry['choice']['line_speaker']:.3f} < {RULE['line_choice']}")
    for t, v in baseline["exact_match"].items():
        if t != "line_speaker" and entry["exact_match"][t] < v - RULE["max_drop"] - 1e-9:
            why.append(f"{t} {entry['exact_match'][t]:.3f} < {v:.3f} - {RULE['max_drop']}")
    return "pass" if not why else "fail: " + "; ".join(why)


def describe(variant: dict) -> str:
    if is_recipe(variant):
        return "recipe (no line stage)"
    scale = variant.get("mixed_scale", 1)
    line = "".join(f", its {t} examples {c:,}" for t, c in variant.get("mixed_counts", {}).items())
    if variant.get("n", 0) == 0:
        return f"no line stage, the mixed stage's examples x{scale}{line}"
    blocks = "every block" if variant.get("blocks") is None else "blocks " + ", ".join(map(str, variant["blocks"]))
    what = {"all": "every weight", "attention": f"attention of {blocks}",
            "attention_qk": f"query/key rows of {blocks}"}[variant["train"]]
    extra = f", replay {variant['replay']}" if variant.get("replay") else ""
    extra += f", genre stage lr {variant['genre_lr']:g}" if variant.get("genre_lr") else ""
    extra += f", anchored to its start (L2-SP {variant['anchor']:g})" if variant.get("anchor") else ""
    extra += f", the mixed stage's examples x{scale}" if scale != 1 else ""
    extra += line
    return f"{variant['n']:,} examples, {what}, {variant['where']} the mixed stage, lr {variant['lr']:g}{extra}"


def table(screens: list[dict]) -> str:
    """Markdown: one row per screen (the recipe's rows first), with its verdict against the recipe of its seed."""
    base = {(e["seed"], e["quick"]): e for e in screens if is_recipe(e["variant"])}
    rows = ["| seed | line stage | genre EM | first_speaker EM | line_speaker EM | speakers EM | line_speaker choice | "
            "same answer for twins | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    first = sorted((e for e in screens if is_recipe(e["variant"])), key=lambda e: (e["quick"], e["seed"]))
    for e in first + [e for e in screens if not is_recipe(e["variant"])]:  # the recipe rows first
        em = e["exact_match"]
        rows.append(f"| {e['seed']} | {describe(e['variant'])} | {em['genre']:.3f} | {em['first_speaker']:.3f} | "
                    f"{em['line_speaker']:.3f} | {em['speakers']:.3f} | {e['choice']['line_speaker']:.3f} | "
                    f"{e['same_answer']}/{e['twin_pairs']} | {verdict(e, base.get((e['seed'], e['quick'])))} |")
    return "\n".join(rows)


def genre_table(screens: list[dict]) -> str:
    """Markdown: for the screens that recorded ``genre_picks`` (from this option on), how often each genre is
    picked, the best-scored genre accuracy and the accuracy with each answer's prior removed."""
    rows = [e for e in screens if e.get("genre_picks")]
    if not rows:
        return ""
    names = sorted(rows[0]["genre_picks"]["picked"])
    out = ["| seed | line stage | " + " | ".join(f"picks {g}" for g in names) + " | genre choice | calibrated |",
           "|---|---|" + "---|" * (len(names) + 2)]
    for e in rows:
        g = e["genre_picks"]
        out.append(f"| {e['seed']} | {describe(e['variant'])} | " + " | ".join(f"{g['picked'].get(c, 0):.2f}"
                   for c in names) + f" | {g['choice']:.3f} | {g['calibrated_choice']:.3f} |")
    return "\n".join(out)


def parse_counts(items: list[str]) -> dict:
    """``["line_speaker=32000", "genre=14400"]`` -> ``{"line_speaker": 32000, "genre": 14400}``."""
    out = {}
    for item in items:
        task, _, n = item.partition("=")
        if not n.strip().isdigit():
            raise SystemExit(f"--mixed-count takes TASK=N with N a whole number, e.g. line_speaker=32000; got {item!r}")
        if task.strip() in out:  # a second count for one task would silently replace the first
            raise SystemExit(f"--mixed-count names {task.strip()!r} twice; give each task one count")
        out[task.strip()] = int(n)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=32000, help="line_speaker examples in the line stage (0: the recipe)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--replay", type=int, default=0, help="examples of each other task in the line stage")
    ap.add_argument("--train", choices=TRAIN, default="all")
    ap.add_argument("--blocks", type=int, nargs="+", default=None, help="only these blocks' attention (default: all)")
    ap.add_argument("--where", choices=WHERE, default="before")
    ap.add_argument("--genre-lr", type=float, default=None, help="the genre stage's lr (default: the recipe's)")
    ap.add_argument("--anchor", type=float, default=0.0,
                    help="L2-SP strength in the line stage: pull toward the start by anchor x lr per step (0: off)")
    ap.add_argument("--mixed-scale", type=int, default=1,
                    help="the mixed stage's examples of every task times this (1: the recipe's)")
    ap.add_argument("--mixed-count", nargs="+", default=[], metavar="TASK=N",
                    help="these tasks' examples in the mixed stage (default: the recipe's times --mixed-scale)")
    ap.add_argument("--base", type=Path, default=None, help="another base model's checkpoint (default: the course model)")
    ap.add_argument("--quick", action="store_true", help="a few examples per stage (for the tests)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "line_stage_screens.json")
    a = ap.parse_args(argv)
    data = json.loads(a.out.read_text()) if a.out.exists() else {"rule": RULE, "screens": []}
    mine = a.base.name if a.base is not None else None
    theirs = {(e.get("base") or {}).get("checkpoint") for e in data["screens"] if not e["quick"]}
    if not a.quick and theirs - {mine}:  # the verdicts compare rows of one file: one base per file (checked first)
        raise SystemExit(f"{a.out} holds screens of another base model ({sorted(map(str, theirs))}); write the "
                         f"screens of base {mine or 'the course model'} to a file of their own (--out)")
    entry = run(a.seed, a.n, a.lr, a.replay, a.train, a.blocks, a.where, a.quick, a.threads, a.genre_lr, a.anchor,
                a.mixed_scale, parse_counts(a.mixed_count), a.base)
    data["screens"].append(entry)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(a.out)  # atomic: a killed run leaves the old file
    print(table(data["screens"]))
    if genre_table(data["screens"]):
        print("\nGenre picks (validation plays):\n" + genre_table(data["screens"]))
    return entry


if __name__ == "__main__":
    main()
