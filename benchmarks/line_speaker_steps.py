"""How many steps does the course model need to learn "who speaks the line"?

"Who speaks the line '...'?" (utils.instruct, task "line_speaker") asks for one of the two speakers of a
two-speech passage: the model has to find the quoted line in the passage, then the tag above it. The saved
instruct recipe of earlier sessions left it at chance. This script fine-tunes the course model (every weight) on
that task alone, on fresh examples of the training plays (speakers renamed), and measures the best-scored choice
(utils.instruct.choice_accuracy, chance 0.5) every ``--eval-every`` steps: on the validation plays (never trained
on) and on held-out examples of the training plays. A curve that stays at 0.5 says the model cannot learn the
lookup; one that rises late says it needs steps.

Settings: AdamW (betas 0.9, 0.95, no weight decay), lr ``--lr`` after 100 warmup steps, then constant, gradient
clipping at 1.0, batch 16, the instruct and chat templates alternating (utils.instruct.instruct_pairs, as in the
instruct recipe), loss on the response tokens only.

    python benchmarks/line_speaker_steps.py --seed 0 --steps 8000 --max-seconds 1500
    python benchmarks/line_speaker_steps.py --steps 20 --eval-every 10 --draws 1 --out /tmp/quick.json  # quick
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.moe import cpu_name  # noqa: E402
from utils.data import load_corpus  # noqa: E402
from utils.instruct import (EOT, INSTRUCT_TEMPLATE, batch_examples, choice_accuracy, instruct_pairs,  # noqa: E402
                            instruction_data, prepare_instruct_model)
from utils.pretrain import load_course_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH, WARMUP = 16, 100


def run(seed: int = 0, steps: int = 8000, max_seconds: float = 1500.0, lr: float = 1e-3, eval_every: int = 500,
        draws: int = 2, threads: int = 2, examples: int | None = None, held: int = 200) -> dict:
    """Train on line_speaker alone; returns {"settings", "hist": [{"step", "s", "loss", "val_choice",
    "train_choice"}, ...]}. ``draws``: rename seeds of the training plays' examples (about 40,000 each);
    ``examples``: keep only that many of them (default: all); ``held``: items scored on each side."""
    settings = {"steps": steps, "eval_every": eval_every, "draws": draws, "max_seconds": max_seconds, "lr": lr,
                "held": held, "examples": 1 if examples is None else examples}
    bad = {k: v for k, v in settings.items() if not v > 0}
    if bad:
        raise ValueError(f"steps, eval_every, draws, max_seconds, lr, held and examples must be positive; got {bad}")
    torch.set_num_threads(threads)
    corpus = load_corpus()
    model, tok = load_course_model()
    tok2 = prepare_instruct_model(model, tok, "full")
    pool = []
    for d in range(draws):
        pool += instruction_data(corpus, "train", n_per_task=100000, seed=100 * seed + d, tasks=("line_speaker",),
                                 rename_speakers=True)
    random.Random(seed).shuffle(pool)
    held_train, pool = pool[:held], pool[held:held + examples if examples else None]  # held: never trained on
    val = instruction_data(corpus, "val", n_per_task=held, seed=1, tasks=("line_speaker",))
    pairs = instruct_pairs(tok2, pool, True, model.config.block_size)
    pad = tok2.special_tokens[EOT]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(pairs), generator=gen).tolist(), 0
    hist, losses = [], []
    t0 = time.perf_counter()

    def evaluate(step: int) -> None:
        model.eval()
        v = choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, val)["line_speaker"]
        t = choice_accuracy(model, tok2, INSTRUCT_TEMPLATE, held_train)["line_speaker"]
        model.train()
        hist.append({"step": step, "s": round(time.perf_counter() - t0, 1),
                     "loss": round(sum(losses) / len(losses), 4) if losses else None, "val_choice": v, "train_choice": t})
        losses.clear()
        print(json.dumps(hist[-1]), flush=True)

    model.train()
    evaluate(0)
    for step in range(1, steps + 1):
        if pos + BATCH > len(order):
            order, pos = torch.randperm(len(pairs), generator=gen).tolist(), 0
        x, y = batch_examples([pairs[i] for i in order[pos:pos + BATCH]], pad)
        pos += BATCH
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / WARMUP)
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        out_of_time = time.perf_counter() - t0 > max_seconds
        if step % eval_every == 0 or out_of_time or step == steps:
            if not hist or hist[-1]["step"] != step:
                evaluate(step)
            if out_of_time:
                break
    settings = {"seed": seed, "steps": steps, "max_seconds": max_seconds, "lr": lr, "eval_every": eval_every,
                "draws": draws, "threads": threads, "batch": BATCH, "warmup": WARMUP, "training_examples": len(pairs),
                "held_out": {"val_plays": len(val), "training_plays": len(held_train)}}
    return {"settings": settings, "hist": hist}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--max-seconds", type=float, default=1500.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--examples", type=int, default=None, help="keep only this many training examples (default: all)")
    ap.add_argument("--held", type=int, default=200, help="held-out items scored on each side (default 200)")
    ap.add_argument("--out", type=Path, default=RESULTS / "line_speaker_steps.json")
    a = ap.parse_args(argv)
    res = run(a.seed, a.steps, a.max_seconds, a.lr, a.eval_every, a.draws, a.threads, a.examples, a.held)
    res["environment"] = {"cpu": cpu_name(), "torch": torch.__version__,
                          "date": time.strftime("%Y-%m-%d")}
    print("| step | seconds | train loss | best-scored choice, validation plays | same, training plays |")
    print("|---|---|---|---|---|")
    for h in res["hist"]:
        loss = "–" if h["loss"] is None else f"{h['loss']:.3f}"
        print(f"| {h['step']} | {h['s']:.0f} | {loss} | {h['val_choice']:.3f} | {h['train_choice']:.3f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(a.out)  # atomic: a killed run leaves the old file
    return res


if __name__ == "__main__":
    main()
