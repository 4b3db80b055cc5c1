"""Where the course recipe loses to the baby GPT: bits per character by kind of text.

    python benchmarks/pretrain_gap.py                     # seed 0: the baby and ours, 180 s each (~7 min)
    python benchmarks/pretrain_gap.py --rows baby ours "ours smear=True" --out benchmarks/results/x.json

``benchmarks/pretrain_cpu.py`` measures one number per run: bits per character of the reporting half. Its
ratio ours / baby is ~0.78 on the half's first part (*The Taming of the Shrew*, a play the training text
contains) and ~0.90 on the second (*The Tempest*, which it lacks). This script asks which characters make
that difference. Each row trains exactly as a ``pretrain_cpu.py --explore --split heldout-play`` run (2
threads, 180 s, best checkpoint on the tuning text; *Measure for Measure* cut out of the training text, so
the tuning text also holds a play the model never read), then every character of the **tuning text** and of
the **reporting half** gets the loss of the token that predicts it (a token's NLL split evenly over its
characters; the baby's tokens are characters), from the protocol's own sliding-window scoring
(``utils.metrics.perplexity(per_token=True)``). The kinds of character:

* **speaker line**: a line that ends in ``:`` right after a blank line, with its newline (``PROSPERO:``);
* **word in the training text** / **word not in it**: a run of letters and apostrophes, with the space before it
  (so that where a tokenizer puts the space does not move loss between kinds);
* **other**: punctuation, newlines, other spaces.

Per part (seen play, unseen play) and kind: characters, each model's bits per character, the ratio, and the
kind's **share of the distance from the goal**, (sum ours - 0.85 x sum baby) / characters of the part, in
bits: positive where ours is above 0.85 x the baby. Then the speaker lines of each unseen play, in bits per
line: the name's first line, and its later lines with and without the same name in the 400 characters
before (about ours' context of 128 tokens): a model that copies names from its context pays less there.

Results: ``benchmarks/results/pretrain_gap.json`` (an existing file is not overwritten). Choosing a lever from
the reporting half's table would tune on the reported text: levers are chosen and judged on the tuning text.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as pretrain_cpu.py's runs (before torch loads)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pretrain_cpu as P  # noqa: E402
from utils.metrics import perplexity  # noqa: E402

OUT = P.RESULTS / "pretrain_gap.json"
GOAL = P.GOAL
KINDS = ("speaker line", "word in the training text", "word not in it", "other")
RECENT = 400  # characters before a speaker line searched for the same name (~ ours' 128-token context)
SPEAKER = re.compile(r"(?:(?<=\n\n)|^)([^\n]+:)\n")
WORD = re.compile(r" ?[A-Za-z']+")


def char_nll(model, ids: torch.Tensor, text: str, decode) -> torch.Tensor:
    """(len(text),) NLL in nats of each character of ``text``, whose tokens are ``ids`` after a first
    newline token (as :func:`pretrain_cpu.score_bpc` scores it): a token's NLL split evenly over its
    characters. Sums to the NLL that ``score_bpc`` turns into bits per character."""
    res = perplexity(model, ids, stride=model.config.block_size // 2, batch_size=32, per_token=True)
    lengths = [len(decode([int(i)])) for i in ids[1:]]
    if sum(lengths) != len(text):
        raise ValueError(f"the tokens decode to {sum(lengths)} characters one by one, the text has {len(text)}: "
                         "a token that is part of a character cannot be split evenly")
    per = torch.repeat_interleave(res.token_nll[1:] / torch.tensor(lengths), torch.tensor(lengths))
    if not math.isclose(per.sum().item(), res.nll, rel_tol=1e-4):
        raise RuntimeError(f"per-character NLL sums to {per.sum().item():.3f}, the scoring to {res.nll:.3f}")
    return per


def char_kinds(text: str, train_words: set[str]) -> list[str]:
    """The kind (:data:`KINDS`) of every character of ``text``."""
    kind = ["other"] * len(text)
    for m in WORD.finditer(text):
        word = m.group().lstrip(" ")
        kind[m.start():m.end()] = ["word in the training text" if word in train_words else "word not in it"] * len(m.group())
    for m in SPEAKER.finditer(text):
        kind[m.start(1):m.end(1) + 1] = ["speaker line"] * (m.end(1) + 1 - m.start(1))
    return kind


def speaker_lines(text: str, start: int = 0) -> list[dict]:
    """Speaker lines from ``start`` on: name, span (with the newline), its occurrence number, and whether the
    same name is in the :data:`RECENT` characters before it."""
    seen: dict[str, int] = {}
    out = []
    for m in SPEAKER.finditer(text, start):
        name = m.group(1)
        out.append({"name": name, "span": (m.start(1), m.end(1) + 1), "occurrence": seen.get(name, 0),
                    "recent": name in text[max(0, m.start(1) - RECENT):m.start(1)]})
        seen[name] = seen.get(name, 0) + 1
    return out


def text_parts(name: str, text: str) -> dict[str, tuple[int, int]]:
    """(start, end) of the seen and unseen play in the tuning text or the reporting half."""
    marker = P.HELDOUT_PLAY if name == "tuning text" else P.UNSEEN_PLAY
    cut = text.find(marker)
    if cut < 0:
        raise ValueError(f"the {name} has no {marker!r}: not Tiny Shakespeare's split")
    return {"seen play": (0, cut + 2), "unseen play": (cut + 2, len(text))}


def gap_table(nll: dict[str, torch.Tensor], kinds: list[str], lo: int, hi: int, ours: str, baby: str) -> dict:
    """Per kind, in ``text[lo:hi]``: characters, bits per character of each row, ours / baby, and the
    share of the distance from the goal (see the module docstring)."""
    out = {}
    for kind in KINDS + ("all",):
        mask = torch.tensor([kind in ("all", k) for k in kinds[lo:hi]])
        n = int(mask.sum())
        if not n:
            continue
        sums = {row: v[lo:hi][mask].sum().item() / math.log(2) for row, v in nll.items()}
        out[kind] = {"chars": n, **{f"bpc {row}": round(s / n, 4) for row, s in sums.items()},
                     "ours / baby": round(sums[ours] / sums[baby], 3),
                     "distance from goal, bits per char of the part": round((sums[ours] - GOAL * sums[baby]) / (hi - lo), 4)}
    keep = torch.tensor([k != "speaker line" for k in kinds[lo:hi]])
    out["without speaker lines: ours / baby"] = round((nll[ours][lo:hi][keep].sum() / nll[baby][lo:hi][keep].sum()).item(), 3)
    return out


def speaker_table(nll: dict[str, torch.Tensor], lines: list[dict]) -> dict:
    """Bits per speaker line of each row: first occurrences, repeats with the name recent, repeats without."""
    groups = {"first line of a name": lambda s: s["occurrence"] == 0,
              f"repeat, name in the {RECENT} characters before": lambda s: s["occurrence"] > 0 and s["recent"],
              f"repeat, not in the {RECENT} before": lambda s: s["occurrence"] > 0 and not s["recent"]}
    out = {"names": sorted({s["name"] for s in lines})}
    for label, keep in groups.items():
        sel = [s for s in lines if keep(s)]
        if sel:
            out[label] = {"lines": len(sel), **{f"bits per line {row}": round(
                sum(v[a:b].sum().item() for a, b in (s["span"] for s in sel)) / len(sel) / math.log(2), 1)
                for row, v in nll.items()}}
    return out


def train_and_score(row: str, seed: int, budget: float, texts: dict[str, str]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train one row (``pretrain_cpu.explore_recipe`` syntax, e.g. ``"ours smear=True"``) as an ``--explore
    --split heldout-play`` run; return its summary and the per-character NLL of each text."""
    recipe, threads = P.explore_recipe(row if row in P.ROWS else f"{row} threads=2")
    torch.set_num_threads(threads)
    keep: dict = {}
    result = P.run(row, recipe, budget, seed, split="heldout-play", keep=keep)
    nll = {name: char_nll(keep["model"], torch.tensor(keep["encode"]("\n" + text)), text, keep["decode"])
           for name, text in texts.items()}
    summary = {k: result[k] for k in ("row", "seed", "threads", "steps", "best_step", "tune_bpc", "report_bpc",
                                      "report_parts", "wall_s")}
    return summary, nll


def report(texts: dict[str, str], nll: dict[str, dict[str, torch.Tensor]], train_text: str, ours: str, baby: str) -> dict:
    train_words = set(w.lstrip(" ") for w in WORD.findall(train_text))
    out = {}
    for name, text in texts.items():
        kinds = char_kinds(text, train_words)
        parts = text_parts(name, text)
        per_row = {row: v[name] for row, v in nll.items()}
        out[name] = {part: gap_table(per_row, kinds, lo, hi, ours, baby) for part, (lo, hi) in parts.items()}
        out[name]["speaker lines of the unseen play"] = speaker_table(per_row, speaker_lines(text, parts["unseen play"][0]))
    return out


def print_report(data: dict) -> None:
    rows = [r["row"] for r in data["runs"]]
    for r in data["runs"]:
        print(f"{r['row']:>18}: {r['steps']} steps, tuning text {r['tune_bpc']}, reporting half {r['report_bpc']}")
    for name, parts in data["report"].items():
        for part, table in parts.items():
            print(f"\n== {name}, {part}")
            if part.startswith("speaker"):
                print("   names:", ", ".join(table["names"]))
                for label, v in table.items():
                    if label != "names":
                        print(f"   {label:>42}: {v['lines']:4d} lines  " + "  ".join(
                            f"{row} {v[f'bits per line {row}']:5.1f}" for row in rows))
                continue
            for kind, v in table.items():
                if kind.startswith("without"):
                    print(f"   {kind}: {v}")
                    continue
                print(f"   {kind:>26}: {v['chars']:6d} chars  " + "  ".join(f"{row} {v[f'bpc {row}']:.3f}" for row in rows)
                      + f"  ours/baby {v['ours / baby']:.3f}  distance {v['distance from goal, bits per char of the part']:+.4f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=["baby", "ours"],
                        help="rows as pretrain_cpu.py --explore names them (the first 'baby' and 'ours' are compared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if "baby" not in args.rows or "ours" not in args.rows:
        parser.error("--rows needs 'baby' and 'ours' (the table compares them)")
    if args.out.exists():
        parser.error(f"{args.out} exists; give another --out (results are not overwritten)")
    train_text, tune_text, report_text = P.split_text_heldout_play(P.load_tinyshakespeare())
    texts = {"tuning text": tune_text, "reporting half": report_text}
    runs, nll = [], {}
    for row in args.rows:
        summary, nll[row] = train_and_score(row, args.seed, args.budget, texts)
        runs.append(summary)
    data = {"runs": runs, "report": report(texts, nll, train_text, "ours", "baby"), "budget_s": args.budget,
            "environment": P.environment(), "command": "python benchmarks/pretrain_gap.py " + " ".join(argv or sys.argv[1:])}
    print_report(data)
    P.save_results(args.out, data)
    return data


if __name__ == "__main__":
    main()
