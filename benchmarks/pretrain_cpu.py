"""Learning per CPU minute: the course recipe vs nanoGPT's "baby GPT", same text, same wall clock.

    python benchmarks/pretrain_cpu.py --next 3      # run the next 3 slots of the protocol (~10 min), append
    python benchmarks/pretrain_cpu.py --report      # the table: every row's mean and spread over seeds
    python benchmarks/pretrain_cpu.py --explore --rows "ours, 2 threads" --budget 60   # exploration only
    python benchmarks/pretrain_cpu.py --ablation --threads 1 --jobs 2   # each lever (tuning half), two at a time
    python benchmarks/pretrain_cpu.py --step-time                       # one step with AdamW vs Muon (~15 s)
    python benchmarks/pretrain_cpu.py --next 15 --candidate "n_embd=128" --out benchmarks/results/x.json \
        --rows "baby GPT, 2 threads" "ours, 2 threads" "ours n_embd=128, 2 threads"   # a candidate beside the recipe
    python benchmarks/pretrain_cpu.py --next 2 --rows "baby GPT, 2 threads" "ours, 2 threads" \
        --omp-wait-policy default --out benchmarks/results/pretrain_cpu_omp_default.json   # OpenMP's default waits

Protocol (``--next`` / ``--report``; results in ``benchmarks/results/pretrain_cpu.json``)
-----------------------------------------------------------------------------------------
* **Text**: Tiny Shakespeare (``utils.data.load_tinyshakespeare()``), first 90% train (as nanoGPT's
  ``prepare.py``). The held-out last 10% is cut in two at the first blank line after its middle:
  the **tuning half** (first; it starts at the held-out text's first blank line, so that both
  halves start with a speech) and the **reporting half** (second). Every choice of the recipe and of
  the stopping rule, and every checkpoint selection inside a run, looks only at the tuning half;
  the tables report the reporting half. (The recipe's earlier settings were tuned on the whole
  held-out 10%, which contains the reporting half; the stopping rule below was chosen on the
  tuning half with the ``--explore`` runs listed in the results file.)
* **Budget**: a fixed wall clock per run (``--budget``, default 180 s) that contains *everything*
  before the final score: tokenizer training and encoding (ours), the checks on the tuning half of
  the stopping rule (both models), and training. The run measures one check on the untrained model
  first and trains for ``budget - setup - (checks + 1) * check time``, corrected at every check
  by the time actually left (so the loop's own overheads count too); the table's "wall s" column
  is the measured total.
* **Stopping rule (both models)**: at 50, 60, ..., 100% of the training time the model is scored on
  the tuning half; the best of these checkpoints is kept (best-checkpoint selection). A recipe may
  also stop after ``Recipe.max_passes`` passes over its training text; the course recipe does not:
  on the tuning half, a 2-thread run given 300 s (11 passes, like a faster machine's 180 s; the
  earlier protocol saw the recipe get worse there) scored better with the best-checkpoint rule
  alone than capped at 7 passes (``--explore`` runs in ``pretrain_cpu_explore.json``).
* **Score**: bits per character on the reporting half = (sum of token NLL in nats) / characters /
  ln 2. Each half is scored as ``"\\n" + half`` with the newline given, so the two models predict
  exactly the same characters, every one of them. A **sliding window** of each model's context
  moves by half a context (``utils.metrics.perplexity(stride=block_size // 2)``): the first window
  scores all its tokens, every later one only its last half, so every character is predicted with
  at least half a context before it (the baby: 32-64 characters; ours: 64-128 tokens, ~180-360
  characters) and exactly once. (The earlier protocol's non-overlapping windows gave a character
  half a context on average; each run also records that score, ``report_bpc_nonoverlapping``.) In fp32 for both.
* **Rows**: the baby GPT (fp32, as nanoGPT on CPU) and ours at 2 threads; ours forced to fp32 at
  2 threads (its own row: the ratio a CPU without bf16 matrix instructions gets); and both models
  at 1 thread, i.e. at a lower step rate (how much lower: the steps column). Ours uses bf16
  autocast only where ``utils.precision.cpu_has_fast_bf16()`` (AMX or AVX-512 BF16: Intel Xeon
  4th gen+, AMD Zen 4+); elsewhere ``precision="auto"`` is fp32, which is the fp32 row. The two 1-thread runs of a seed
  run side by side, one core each (same slot, same conditions for both).
* **Seeds and order**: seeds 0, 1, 2 (``--seeds``); the slots run round robin (seed s: baby 2t,
  ours 2t, ours fp32 2t, [baby 1t | ours 1t]; then seed s+1), so a drift in the machine's speed
  hits every row alike. ``--next K`` runs the next K slots not yet in the results file and
  appends them, so the protocol runs as several short commands.
* **Report**: per row, mean and standard deviation (and min-max) over seeds of the reporting-half
  bits per character, steps, passes and **characters per second** (tokens/s x characters per
  token of the training text: 1 for the baby); the ratios ours / baby per seed at 2 threads (bf16
  where fast, and fp32) and at 1 thread, with their mean and spread. Goal: ours <= 0.85 x baby.

Exploration (``--explore``) uses the same run function with any budget and rows, scores only the
tuning half and writes ``benchmarks/results/pretrain_cpu_explore.json``: it is for choosing, not
for reporting. The ablation (``--ablation``) is the older tool for choosing levers, now
scored on the tuning half too.

Second round: levers for the reporting half's gap (tuning half only)
--------------------------------------------------------------------
The protocol's 2-thread ratio is above the goal on the reporting half, 62% of which is the start
of *The Tempest*, a play the training text lacks (per part, ours / baby is ~0.90 there and ~0.78 on
the Shrew part). Levers tried with ``--explore`` (seed 0, 2 threads, 180 s, one run each; rows
``"ours bpe_dropout=0.1 threads=2"`` etc.), compared with the course recipe's two seed-0 2-thread runs
on the tuning half (1.9095 in the protocol, 1.9399 in an earlier ``--explore`` run: that spread is the
noise of one run). The rule, fixed after the BPE-dropout runs and before the other three: a lever wins
if it beats both. (The optimiser, tried last, used two seeds: see its item.)

* **BPE-dropout** (``Recipe.bpe_dropout``; Provilkov et al. 2020): each applicable merge skipped with
  probability p when the *training* text is encoded, a fresh segmentation at every pass
  (:class:`DropoutSegmentations`: 8 dropout segmentations per distinct chunk, drawn in the run's setup,
  ~1 s inside the budget; :class:`ResegmentingSampler`: the passes of ``sampling="epochs"``). Scoring
  always uses the deterministic encoding. p=0.05: 1.9816; p=0.1: 2.0689 - worse the more dropout, at
  about the same number of steps (shorter tokens: 2.88 and 2.68 characters per training token
  instead of 3.16, so fewer characters per step).
* **Learning rate 3e-3** (min 3e-4) instead of 2e-3: 1.9364.
* **Weight averaging** (``Recipe.ema=0.99``, an exponential moving average of the weights, scored and
  kept at the stopping rule's checks): 1.9294.
* **Vocabulary 1024** instead of 2048 (2.62 characters per token instead of 3.16): 1.9667.
* **Width 128** (the baby's) instead of 192, the best single change of the earlier ablation (which was
  scored on the whole held-out 10%): 1,193 steps instead of ~1,000-1,100, 1.9676.

* **The optimiser: Muon** (``Recipe.optimizer="muon"``; :func:`utils.pretrain.make_optimizer`, used
  through :func:`utils.pretrain.train_recipe`): ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5
  Newton-Schulz steps) for the 16 hidden matrices (attention and MLP projections), AdamW for the tied
  embedding / LM head and the norm weights, one schedule for both (the split of Jordan's Muon and of
  Moonshot's "Muon is Scalable"). On this CPU the orthogonalisation costs time: one training step of the
  course shape (batch 16 x 128, 2 threads, bf16; medians of 40 steps, ``--step-time``) took 149.5 ms
  against 124.9 ms with AdamW before the runs (1.20x; ``optimizer.step()`` 26.9 ms against 2.2 ms) and
  170.0 ms against 134.1 ms after them (1.27x; 35.2 ms against 2.7 ms), so in 180 s Muon made 716-811
  steps where the recipe made 975-1,108. Seeds 0 and 1, and a rule written before the first Muon run: a setting wins if
  it beats every same-seed run of the recipe at both seeds (seed 0: 1.9095, 1.9399; seed 1: 1.9143 in the
  protocol and 1.9148 in a fresh run alternated with the Muon runs, 1,042 steps). A setting that lost at
  seed 0 had lost already.

  - Moonshot's scaling (``muon_adjust_lr="match_rms_adamw"``) with the recipe's lr 2e-3 and weight decay
    1.0: seed 0 1.9809 (811 steps).
  - Jordan's scaling (``"original"``), Muon lr 0.02, weight decay 0.1 (the same shrink per step as AdamW's
    2e-3 x 1.0): seed 0 1.9547 (793 steps), seed 1 1.9598 (767 steps).
  - The same at lr 0.04, weight decay 0.05: seed 0 2.0113 (716 steps).

  None won. A diagnostic (not a candidate) asked whether Muon learns more per *step* and loses only
  on its step rate: both capped at 4.5 passes (693 steps each, each schedule decaying over them; seed 0,
  one run each), Muon (``"original"``, lr 0.02, weight decay 0.1) scored 1.9942 and the recipe with AdamW
  2.0052 (Muon 153 s of training, AdamW 112 s). 0.011 is within the 0.030 between the recipe's two
  seed-0 runs: no clear gain per step either, for a model this small and a run this short.

No lever won, so no lever was run on the reporting half and the protocol's rows are unchanged; the
course recipe (``COURSE_RECIPE``, ``make pretrain``) does not use them (``bpe_dropout=0``, ``ema=0``,
``optimizer="adamw"``). Caveat: the tuning half is *The Taming of the Shrew*, which the training
text partly contains, so a lever that helps only on an unseen play (what BPE-dropout is meant for) could
lose there and still help on the reporting half's *Tempest*; a split whose tuning half also holds an
unseen play would let tuning see that, and was not tried.

Third round (tuning half; the same two-seed rule, seed 0 first, a setting that lost at seed 0 skipped its
seed 1): a longer context at equal tokens per step (``"ours block_size=256 batch_size=8 threads=2"``: each
step 9% dearer in a step-time probe, 116.9 against 107.2 ms) scored 1.9446 (1,011 steps); the cosine decaying
to zero (``"ours min_lr=0 threads=2"``) 1.9195 (1,111 steps). Both lost; the recipe is unchanged.

Fourth round, on a slower CPU: the model's width (a candidate protocol, ``--candidate``)
-----------------------------------------------------------------------------------------
On a 2-core AMD EPYC without bf16 matrix instructions (ours in fp32) the recipe makes ~690 steps in 180 s at
2 threads (the Xeon: ~1,060 in bf16), and every run of ``pretrain_cpu_epyc.json`` kept its last checkpoint:
short of compute, not overfitting. Two levers that buy more updates per second were screened there with
``--explore`` (``pretrain_cpu_explore_epyc.json``; rule written before the runs: beat the recipe's fresh
same-seed run by >= 0.020 on the tuning half at seeds 0 and 1): ``batch_size=8`` (twice the updates at the same
tokens) 2.0101 against the recipe's 2.0055 at seed 0 (lost, no seed-1 run); ``n_embd=128`` 1.9749 / 1.9623
against 2.0055 / 2.0038 (won). The winner then ran the protocol on the reporting half beside fresh runs of the
recipe and the baby, 3 seeds (``--next --candidate n_embd=128 --out pretrain_cpu_epyc_width128.json``): width
128 2.2180 +- 0.0068 against the recipe's 2.2185 +- 0.0149 (per seed -0.011, +0.001, +0.008: not lower in every
seed); ours / baby 0.875 +- 0.011 against 0.876 +- 0.015 (goal not met); at 1 thread width 128 gets 0.848 +-
0.005 (met on average, not by every seed). Per part of the reporting half, width 128 was better on the Shrew
part (a play the training text contains) and worse on The Tempest (one it lacks) in 2 of 3 seeds: with 7.8
passes instead of 4.5 the smaller model fits the text it read. The tuning half, all Shrew, could not see
that. The course recipe is unchanged.

Fifth round: ``torch.compile`` (``Recipe.compile``), the recipe's own step made faster
------------------------------------------------------------------------------------
A profile of one 2-thread bf16 step under the protocol's PASSIVE wait policy found no single large cost, but
many small element-wise operations (each a parallel region whose threads must wake). Fusing them with
``torch.compile`` made the step 31% shorter in a probe (145 -> 100 ms/step; regional compilation, one block at a
time: 107 ms) for ~25 s of compiling inside the budget. Screens on the tuning half (``--explore``, a cold
inductor cache for every run; the two-seed rule of the first rounds): ``compile=True`` 1.9094 (1,390 steps) at
seed 0 and 1.9051 (1,419) at seed 1, against the recipe's 1.9095 and 1.9143: it won, by 0.0001 and 0.009.
With the steps spent on capacity instead, ``compile=True n_layer=6`` scored 1.9577 (940 steps) and
``compile=True dropout=0.1 attn_dropout=0`` 1.9834 (1,014 steps) at seed 0: both lost. The winner then ran the
candidate protocol beside fresh runs of the recipe and the baby, 3 seeds, 2 threads, each slot its own command
with a cold cache (``--next 1 --candidate compile=True --out pretrain_cpu_compile.json``): on the reporting half
compile 2.1768 +- 0.0058 against the recipe's 2.1777 +- 0.0092 (per seed -0.005, +0.001, +0.001), ours / baby
0.861 +- 0.009 against 0.861 +- 0.010, although it made 1,411 steps against 1,172. (Its runs took 186.9 s of
wall clock instead of 180, with the same training time, 169.6-170.1 s against 170.4-170.8: the extra ~7 s come
after training, where ``train()``'s closing evaluation compiles an inference graph (7.4 s in a probe), which
neither the score nor the kept checkpoint uses.) On the tuning half (all Shrew) the compiled runs were better in every seed
(-0.011, -0.007, -0.018): the extra passes (9.2 instead of 7.6) fit the play the training text contains, not
The Tempest. The course recipe is unchanged (``compile=False``); the fresh recipe runs of this round give
0.861 +- 0.010, the committed protocol 0.859 +- 0.003.

Sixth round: levers chosen on a tuning text that holds an unseen play (``--split heldout-play``)
-----------------------------------------------------------------------------------------------
The rounds above chose on the tuning half, all *Shrew*, a play the training text contains, while ours loses
ground on The Tempest, which it lacks. ``--explore --split heldout-play`` (:func:`split_text_heldout_play`) cuts the
whole of *Measure for Measure* out of the training text (883,892 characters left of 1,003,854) and tunes on the
tuning half's first 21,298 characters followed by the play's first 34,717: the reporting half's mix of a seen and
an unseen play, with names and speeches the model never read. Levers that lost on the tuning half because they
trade fit for generalisation could show a gain there. Rule, written before the runs: a lever wins if it beats the
recipe's run on this text at seed 0 and at seed 1 (2 threads, 180 s; ``pretrain_cpu_explore_heldout_play.json``).
The recipe scored 2.1231 (seed 0) and 2.1078 (seed 1). At seed 0: BPE-dropout 0.05 2.1168 and weight decay 2.0
2.1172 (both won), vocabulary 1024 2.1348 and dropout 0.1 (attention 0) 2.1472 (both lost). At seed 1:
BPE-dropout 2.1299 and weight decay 2.0 2.1128, both above the recipe. No lever won, so none ran on the reporting
half; the recipe is unchanged.

Seventh round: where the gap is, and two levers aimed at it
-----------------------------------------------------------
``benchmarks/pretrain_gap.py`` gives every character the loss of the token that predicts it (each model trained as a
``--split heldout-play`` exploration run, seed 0; ``pretrain_gap.json``). On The Tempest, the speaker lines (``PROSPERO:``,
``GONZALO:``...: none of these names speaks in the training text) are 7.7% of the characters and cost ours 5.60 bits per
character against the baby's 4.44 (1.26x), while on the words the training text has ours needs 0.82x the baby's bits.
Of that part's distance from the goal, +0.147 bits per character (sum of ours less 0.85 x the baby's), the speaker
lines make +0.141; without them ours / baby would be 0.853 there (0.797 on the Shrew part, where ours knows the
names: 0.53x the baby's bits on them). A name with the same name in the 400 characters before costs ours 52.1 bits per
line, its first line 48.5: in 1,146 steps it has not learned to copy names from its context (nor has the baby, 42.5
against 40.5). The tuning text's unseen play shows the same (*Measure for Measure*: speaker lines 1.15x the baby's
bits). That table explains a reported number; the levers below were chosen and judged on the tuning text only, with
the sixth round's rule (beat the recipe's 2.1231 and 2.1078 on the heldout-play tuning text at seeds 0 and 1). Both first
ran in a patched copy of :func:`run` before their fields existed (recorded, with a note, in
``pretrain_cpu_explore_heldout_play.json``; the first diagnostic of this round was a similar probe):

* ``pretokenizer="gpt4-caps-split"`` (:data:`utils.pretokenize.CAPS_SPLIT_PATTERN`: a word in capitals that starts a
  line, as a speaker name does, spelled in single letters, so BPE learns no pieces of names; 2.96 characters per
  training token instead of 3.16): 2.1674 at seed 0,
  lost. In ``pretrain_gap.json`` it made the unseen plays' speaker lines dearer, not cheaper (5.09 bits per character
  on Measure for Measure's against the recipe's 4.92).
* ``smear=True`` (:class:`utils.model.GPTConfig` ``smear``: each token embedding plus a learned per-channel multiple of
  the previous one, so that one attention layer can find the token after an earlier copy of the current one, the
  first step of copying): 2.1140 and 2.1074, a win by 0.009 and 0.0004. On the reporting half (``--next 9 --candidate
  smear=True --out pretrain_cpu_smear.json``, 3 seeds beside fresh runs of the recipe and the baby): 2.1813 +- 0.0073
  against the recipe's 2.1756 +- 0.0120 (per seed +0.0079, +0.0142, -0.0049), ours / baby 0.860 +- 0.007 against
  0.858 +- 0.008. Not lower in every seed: the recipe is unchanged. Its speaker lines of Measure for Measure were
  cheaper (4.57 against 4.92), The Tempest's barely (5.53 against 5.60).

The recipe's fresh 2-thread runs of this round give ours / baby 0.865, 0.850 and 0.859 (seeds 0, 1, 2); the committed
protocol 0.859 +- 0.003.

The machine's step rate: the OpenMP wait policy (``--omp-wait-policy``)
-----------------------------------------------------------------------
``utils.runtime`` sets ``OMP_WAIT_POLICY=PASSIVE`` for the course, and every run of the committed protocol
inherited it: on this idle machine each 2-thread step then took ~1.5x as long as with OpenMP's default
(see :data:`OMP_WAIT_POLICIES`). ``--omp-wait-policy default`` runs the children without the variable and
records each run's policy (``omp_wait_policy``). The 2-thread rows under it (seeds 0 and 1, alternating,
``benchmarks/results/pretrain_cpu_omp_default.json``; not a lever, not tuned on): the baby 6,034 and 6,119
steps, reporting half 2.3890 and 2.3970 (PASSIVE: 2.5256, 2.5468); ours 1,668 and 1,487 steps, 2.1805 and
2.1613 (PASSIVE: 2.1795, 2.1806); ours / baby 0.913 and 0.902 against 0.863 and 0.856. At the machine's full
step rate the baby catches up and the 2-thread goal is further away; the whole protocol under the default
policy has not been run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.data import EpochSampler, load_tinyshakespeare  # noqa: E402
from utils.metrics import perplexity  # noqa: E402
from utils.model import GPT  # noqa: E402
from utils.precision import cpu_has_fast_bf16, resolve_precision  # noqa: E402
from utils.pretrain import BABY_GPT, COURSE_RECIPE, Recipe, train_recipe  # noqa: E402
from utils.runtime import set_seed  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROTOCOL_FILE = RESULTS / "pretrain_cpu.json"
EXPLORE_FILE = RESULTS / "pretrain_cpu_explore.json"
CHECKS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # fractions of the training time at which the tuning half is scored

BABY, OURS, OURS_FP32 = "baby GPT", "ours", "ours, fp32"
# row name -> (recipe, torch threads)
ROWS: dict[str, tuple[Recipe, int]] = {
    f"{BABY}, 2 threads": (BABY_GPT, 2),
    f"{OURS}, 2 threads": (COURSE_RECIPE, 2),
    f"{OURS_FP32}, 2 threads": (COURSE_RECIPE.with_(precision="fp32"), 2),
    f"{BABY}, 1 thread": (BABY_GPT, 1),
    f"{OURS}, 1 thread": (COURSE_RECIPE, 1),
}
# one round = these slots in this order; the runs of a slot run side by side (1 thread each)
SLOTS = ((f"{BABY}, 2 threads",), (f"{OURS}, 2 threads",), (f"{OURS_FP32}, 2 threads",),
         (f"{BABY}, 1 thread", f"{OURS}, 1 thread"))
# the ratios ours / baby: (label, ours row, baby row)
RATIOS = (("2 threads, ours as run here (bf16 where fast)", f"{OURS}, 2 threads", f"{BABY}, 2 threads"),
          ("2 threads, ours in fp32", f"{OURS_FP32}, 2 threads", f"{BABY}, 2 threads"),
          ("1 thread (a lower step rate)", f"{OURS}, 1 thread", f"{BABY}, 1 thread"))
GOAL = 0.85


def protocol(candidate: str | None = None) -> tuple[dict[str, tuple[Recipe, int]], tuple, tuple]:
    """(rows, slots, ratios) of the protocol; with ``candidate`` (changes to the course recipe, e.g.
    ``"n_embd=128"``, see :func:`explore_recipe`) also the rows ``"ours <candidate>, 2 threads"`` and
    ``", 1 thread"``, run in the same round robin (after the recipe's 2-thread slot; at 1 thread beside the
    baby, in the place of the recipe's 1-thread run) and paired with the baby's runs by seed like the
    recipe's. A results file records its candidate (``--next --candidate``), so that ``--report``
    rebuilds the same rows."""
    if candidate is None:
        return ROWS, SLOTS, RATIOS
    name = f"{OURS} {candidate}"
    rows = dict(ROWS)
    for threads in (2, 1):
        recipe, _ = explore_recipe(f"ours {candidate} threads={threads}")
        rows[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = (recipe, threads)
    slots = (SLOTS[0], SLOTS[1], (f"{name}, 2 threads",), SLOTS[2], (f"{BABY}, 1 thread", f"{name}, 1 thread"))
    ratios = RATIOS + ((f"2 threads, {name}", f"{name}, 2 threads", f"{BABY}, 2 threads"),
                       (f"1 thread, {name}", f"{name}, 1 thread", f"{BABY}, 1 thread"))
    return rows, slots, ratios


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def split_text(text: str) -> tuple[str, str, str]:
    """(train, tuning half, reporting half): the first 90% of ``text``, then the held-out 10% cut
    at the first blank line after its middle. Both halves start at the beginning of a speech: the
    tuning half after the first blank line of the held-out text (the few characters before it, the
    end of a speech cut by the 90% mark, are not used)."""
    n = int(0.9 * len(text))
    train_text, held = text[:n], text[n:]
    start, cut = held.find("\n\n"), held.find("\n\n", len(held) // 2)
    if start < 0 or cut <= start:
        raise ValueError("the held-out text needs blank lines (between speeches) to cut at")
    return train_text, held[start + 2:cut + 2], held[cut + 2:]


# Measure for Measure's first speech, and the next play's (The Taming of the Shrew's): --split heldout-play cuts
# the whole of Measure for Measure out of the training text
HELDOUT_PLAY, NEXT_PLAY = "\n\nDUKE VINCENTIO:\nEscalus.\n", "\n\nSLY:\nI'll pheeze you"


def split_text_heldout_play(text: str) -> tuple[str, str, str]:
    """(train, tuning text, reporting half) for ``--explore --split heldout-play``: a tuning text that, like the
    reporting half, holds a play the training text contains *and* one it lacks. The whole of *Measure for
    Measure* (12% of the training text) is cut out of the training text; the tuning text is the tuning half's
    first characters (as many as the reporting half's seen part, to the next blank line), then the play's opening
    (as many characters as the reporting half's unseen part, to the next blank line): names, words and speeches
    the model never read, as in The Tempest. The reporting half is unchanged; nothing here scores it."""
    train_text, tune_text, report_text = split_text(text)
    parts = report_parts(report_text)
    start, end = train_text.find(HELDOUT_PLAY) + 2, train_text.find(NEXT_PLAY) + 2
    if not parts or not 2 <= start < end:
        raise ValueError("--split heldout-play needs Tiny Shakespeare (The Tempest in the reporting half, "
                         "Measure for Measure and then The Taming of the Shrew in the training text)")
    open_end = train_text.find("\n\n", start + len(parts["unseen play"]))
    seen_end = tune_text.find("\n\n", len(parts["seen play"]))
    if not start < open_end < end or seen_end < 0:  # a cut past the play's end, or no blank line to cut at
        raise ValueError(f"--split heldout-play: the held-out play ({end - start:,} characters) or the tuning half "
                         f"({len(tune_text):,}) is too short to give the reporting half's {len(parts['unseen play']):,} "
                         f"unseen and {len(parts['seen play']):,} seen characters")
    return train_text[:start] + train_text[end:], tune_text[:seen_end + 2] + train_text[start:open_end + 2], report_text


SPLITS = {"halves": split_text, "heldout-play": split_text_heldout_play}


def encode(recipe: Recipe, train_text: str, scored: dict[str, str], full_text: str):
    """Token ids of the train text and of each scored text (given as ``"\\n" + text``, the newline
    a token of its own), and the vocabulary size: characters, or BPE trained on ``train_text``."""
    return _encode(recipe, train_text, scored, full_text)[:5]


def _encode(recipe: Recipe, train_text: str, scored: dict[str, str], full_text: str):
    """:func:`encode`, and the BPE tokenizer (``None`` for characters)."""
    tok = None
    if recipe.vocab_size is None:
        chars = sorted(set(full_text))  # as nanoGPT's prepare.py: the alphabet of the whole file
        stoi = {c: i for i, c in enumerate(chars)}

        def enc(s):
            return [stoi[c] for c in s]

        def dec(ids):
            return "".join(chars[i] for i in ids)
        vocab = len(chars)
    else:
        from utils.tokenizer import BPETokenizer

        tok = BPETokenizer.train(train_text, recipe.vocab_size, pattern=recipe.split_pattern)
        enc, dec, vocab = tok.encode, tok.decode, tok.vocab_size
    out = {}
    for name, s in scored.items():
        ids = enc("\n" + s)
        if dec(ids[:1]) != "\n" or dec(ids[1:]) != s:  # so both models predict exactly the characters of s
            raise RuntimeError(f"the {name} text does not tokenize as '\\n' + its own tokens")
        out[name] = torch.tensor(ids)
    return torch.tensor(enc(train_text)), out, vocab, enc, dec, tok


# ---------------------------------------------------------------------------------------------
# BPE-dropout: the training text re-segmented at every pass
# ---------------------------------------------------------------------------------------------

DROPOUT_VARIANTS = 8  # BPE-dropout segmentations drawn per distinct chunk of the training text


class DropoutSegmentations:
    """The training text's chunks (pre-tokenized as the tokenizer does), each distinct chunk encoded
    ``variants`` times with BPE-dropout (:func:`utils.bpe_encode.encode_chunk_dropout`, merges
    skipped with probability ``p``). :meth:`stream` draws one variant per occurrence of a chunk:
    a fresh segmentation of the whole text for each pass, in a few tens of milliseconds (encoding the
    whole text with dropout would take about a second per pass; precomputing the variants takes
    about as long once, inside the run's budget). Every stream decodes to the training text."""

    def __init__(self, tok, text: str, p: float, variants: int = DROPOUT_VARIANTS, seed: int = 0):
        import random

        from utils.bpe_encode import encode_chunk_dropout
        from utils.pretokenize import split_text

        if not isinstance(variants, int) or isinstance(variants, bool) or variants < 1:
            raise ValueError(f"variants must be an int >= 1, got {variants!r}")
        rng = random.Random(seed)
        index: dict[str, int] = {}
        occurrences = [index.setdefault(c, len(index)) for c in split_text(text, tok.pattern)]
        flat: list[int] = []
        starts, lengths = [], []
        to_id = tok.byte_to_id
        for chunk in index:  # insertion order = the chunk's id
            ids = [to_id[b] for b in chunk.encode("utf-8")]
            for _ in range(variants):
                seg = encode_chunk_dropout(ids, tok.merges, p, rng)
                starts.append(len(flat))
                lengths.append(len(seg))
                flat.extend(seg)
        self.p, self.variants, self.n_chars = p, variants, len(text)
        self.flat = torch.tensor(flat)
        self.starts = torch.tensor(starts).view(len(index), variants)
        self.lengths = torch.tensor(lengths).view(len(index), variants)
        self.occurrences = torch.tensor(occurrences)
        # expected tokens per pass: each occurrence's mean variant length
        self.tokens_per_pass = float(self.lengths.float().mean(1)[self.occurrences].sum())

    def stream(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One segmentation of the whole text: a variant drawn at random for every chunk occurrence."""
        pick = torch.randint(self.variants, (len(self.occurrences),), generator=generator)
        starts = self.starts[self.occurrences, pick]
        lengths = self.lengths[self.occurrences, pick]
        total = int(lengths.sum())
        shift = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
        return self.flat[shift + torch.arange(total)]


class ResegmentingSampler(EpochSampler):
    """``utils.data.EpochSampler``'s passes (non-overlapping windows at a random offset, shuffled,
    every token once per pass) over a token stream that is drawn anew for every pass
    (:meth:`DropoutSegmentations.stream`). ``next_batch()`` -> ``(x, y)`` of shape (batch, block)."""

    def __init__(self, segmentations: DropoutSegmentations, batch_size: int, block_size: int,
                 generator: torch.Generator, device: torch.device | str | None = None):
        # not EpochSampler.__init__: its checks need a stream, and each pass draws its own (_new_pass)
        self.seg, self.batch_size, self.block_size = segmentations, batch_size, block_size
        self.generator, self.device = generator, device
        self.passes, self.tokens_drawn = 0, 0
        self._order, self._next, self.data = torch.empty(0, dtype=torch.long), 0, None

    def _new_pass(self) -> None:
        self.data = self.seg.stream(self.generator)
        self.tokens_drawn += len(self.data)
        super()._new_pass()


UNSEEN_PLAY = "\n\nMaster:\n"  # The Tempest's first speech: the reporting half ends with a play the training text lacks


def report_parts(report_text: str) -> dict[str, str]:
    """The reporting half cut where a play that is not in the training text starts (Tiny Shakespeare:
    The Taming of the Shrew, whose beginning is in the training text, then The Tempest)."""
    cut = report_text.find(UNSEEN_PLAY)
    if cut < 0:
        return {}
    return {"seen play": report_text[:cut + 2], "unseen play": report_text[cut + 2:]}


def score_bpc(model, ids: torch.Tensor, n_chars: int, stride: int | None = None) -> float:
    """Bits per character of the text ``ids`` encodes (its first token, the newline, is given):
    sliding window of the model's context, moved by ``stride`` (default half a context)."""
    block = model.config.block_size
    res = perplexity(model, ids, stride=stride or block // 2, batch_size=32)
    return res.nll / n_chars / math.log(2)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

def max_steps_for(recipe: Recipe, n_train_tokens: int) -> int:
    """Optimizer steps in ``recipe.max_passes`` passes over the training tokens (no cap: 10**9)."""
    if recipe.max_passes is None:
        return 10**9
    windows_per_pass = (n_train_tokens - 1) // (recipe.block_size + 1)
    return max(1, math.ceil(recipe.max_passes * windows_per_pass / recipe.batch_size))


def run(row: str, recipe: Recipe, budget: float, seed: int, *, checks=CHECKS, score_report: bool = True,
        text: str | None = None, split: str = "halves", keep: dict | None = None) -> dict:
    """Train ``recipe`` for ``budget`` seconds of wall clock (setup and stopping-rule checks
    included), keep the best checkpoint on the tuning half, then score the reporting half. ``split``:
    the texts (:data:`SPLITS`; ``"heldout-play"`` only for exploration, see :func:`split_text_heldout_play`).
    ``keep`` (a dict): filled with the scored ``"model"`` and the tokenizer's ``"encode"`` / ``"decode"``
    (for ``benchmarks/pretrain_gap.py``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    t_start = time.perf_counter()
    text = text if text is not None else load_tinyshakespeare()
    train_text, tune_text, report_text = SPLITS[split](text)
    train_ids, scored, vocab, enc, dec, tok = _encode(recipe, train_text, {"tune": tune_text, "report": report_text},
                                                      text)
    tune_ids = scored["tune"]
    # BPE-dropout: variants of every chunk drawn now (their cost is setup, inside the budget)
    segs = DropoutSegmentations(tok, train_text, recipe.bpe_dropout, seed=seed) if recipe.bpe_dropout else None
    set_seed(seed)
    model = GPT(recipe.model_config(vocab))
    n_params = sum(p.numel() for p in model.parameters())
    setup = time.perf_counter() - t_start

    # the price of one check, paid once on the untrained model and budgeted for every check
    t0 = time.perf_counter()
    untrained_tune = score_bpc(model, tune_ids, len(tune_text))
    check_s = time.perf_counter() - t0
    train_budget = budget - setup - check_s * (len(checks) + 1)
    if train_budget < 0.2 * budget:
        raise RuntimeError(f"{row}: setup {setup:.1f}s and checks ({len(checks) + 1} x {check_s:.1f}s) leave "
                           f"only {train_budget:.1f}s of a {budget:.0f}s budget for training")
    n_train_tokens = round(segs.tokens_per_pass) if segs is not None else len(train_ids)
    max_steps = max_steps_for(recipe, n_train_tokens)
    state = {"next": 0, "best": math.inf, "best_step": 0, "weights": None, "seconds": check_s}
    history = [(0, 0.0, round(untrained_tune, 4))]

    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params] if recipe.ema else None

    def check(step: int, result) -> None:
        if ema is not None:  # the average moves every step (debiased early: decay (1 + step) / (10 + step) at first)
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - min(recipe.ema, (1 + step) / (10 + step)))
        final = step >= max_steps or result.seconds >= cfg.time_budget_s
        if not final and (state["next"] >= len(checks) or result.seconds < checks[state["next"]] * train_budget):
            return
        while state["next"] < len(checks) and result.seconds >= checks[state["next"]] * train_budget:
            state["next"] += 1
        t = time.perf_counter()
        if ema is not None:  # score (and keep) the averaged weights; training goes on from its own
            with torch.no_grad():
                own = [p.detach().clone() for p in params]
                torch._foreach_copy_(params, ema)
        bpc = score_bpc(model, tune_ids, len(tune_text))
        if bpc < state["best"]:
            state.update(best=bpc, best_step=step,
                         weights={k: v.detach().clone() for k, v in model.state_dict().items()})
        if ema is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, own)
        state["seconds"] += time.perf_counter() - t
        history.append((step, round(result.seconds, 1), round(bpc, 4)))
        if not final:  # keep the whole run inside the budget: what is left, less the checks still to come
            left = budget - (time.perf_counter() - t_start) - (len(checks) - state["next"]) * state["seconds"] / len(history)
            cfg.time_budget_s = result.seconds + max(left, 1e-3)

    cfg = recipe.train_config(max_steps=max_steps, time_budget_s=train_budget, eval_interval=0, eval_iters=1,
                              progress=False, seed=seed)
    if segs is None:
        result = train_recipe(recipe, model, train_ids, tune_ids, cfg, callback=check)
    else:  # the same passes as sampling="epochs", over a segmentation drawn anew for every pass
        gen, val_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        sampler = ResegmentingSampler(segs, recipe.batch_size, recipe.block_size, gen)
        block = recipe.block_size

        def get_batch(split: str):  # "val": the loss train() logs at its end (not used here)
            if split == "train":
                return sampler.next_batch()
            starts = torch.randint(len(tune_ids) - block - 1, (recipe.batch_size,), generator=val_gen)
            w = tune_ids[starts[:, None] + torch.arange(block + 1)]
            return w[:, :-1], w[:, 1:]
        result = train_recipe(recipe, model, config=cfg, get_batch=get_batch, callback=check)
    if state["weights"] is not None and (state["best_step"] != result.steps or ema is not None):
        model.load_state_dict(state["weights"])
    wall = time.perf_counter() - t_start
    if keep is not None:
        keep.update(model=model, encode=enc, decode=dec)

    t1 = time.perf_counter()
    report_bpc = score_bpc(model, scored["report"], len(report_text)) if score_report else None
    eval_s = time.perf_counter() - t1
    # the earlier protocol's scoring, for comparison: non-overlapping windows (less context on average)
    report_nonoverlap = (score_bpc(model, scored["report"], len(report_text), stride=recipe.block_size)
                         if score_report else None)
    parts = {}  # the reporting half's two parts scored apart (each from its own start)
    for name, part in (report_parts(report_text) if score_report else {}).items():
        ids = enc("\n" + part)
        if dec(ids[:1]) != "\n" or dec(ids[1:]) != part:
            raise RuntimeError(f"the reporting half's {name} part does not tokenize as '\\n' + its own tokens")
        parts[name] = {"chars": len(part), "bpc": round(score_bpc(model, torch.tensor(ids), len(part)), 4)}
    chars_per_token = len(train_text) / n_train_tokens  # with BPE-dropout: of the re-segmented passes
    windows_per_pass = (n_train_tokens - 1) // (recipe.block_size + 1)
    return {
        "row": row, "seed": seed, "threads": torch.get_num_threads(), "recipe": asdict(recipe),
        **({"split": split} if split != "halves" else {}),
        "precision": resolve_precision("cpu", recipe.precision), "vocab": vocab, "params": n_params,
        "steps": result.steps, "max_steps": max_steps if max_steps < 10**9 else None,
        "stopped_by": "max_passes" if result.steps >= max_steps else "time_budget",
        "passes": round(result.steps * recipe.batch_size / windows_per_pass, 2),
        "tokens": result.tokens, "setup_s": round(setup, 2), "check_s": round(state["seconds"], 1),
        "train_s": round(result.seconds, 1), "wall_s": round(wall, 1),
        "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9)),
        "chars_per_token": round(chars_per_token, 3),
        "chars_per_s": round(result.tokens / max(result.seconds, 1e-9) * chars_per_token),
        "best_step": state["best_step"], "tune_bpc": round(state["best"], 4),
        "checks": history, "report_bpc": None if report_bpc is None else round(report_bpc, 4),
        "report_bpc_nonoverlapping": None if report_nonoverlap is None else round(report_nonoverlap, 4),
        "report_parts": parts,
        "eval_s": round(eval_s, 1), "load_avg": [round(x, 2) for x in os.getloadavg()],
        **({"bpe_dropout": {"p": recipe.bpe_dropout, "variants": segs.variants,
                            "chars_per_token_deterministic": round(len(train_text) / len(train_ids), 3),
                            "text_passes": sampler.passes}} if segs is not None else {}),
    }


def _worker(args: tuple) -> dict:
    from utils.runtime import openmp_wait_policy

    threads, row, recipe, budget, seed, kw = args
    torch.set_num_threads(threads)
    return run(row, recipe, budget, seed, **kw) | {"omp_wait_policy": openmp_wait_policy()}


# How the runs' OpenMP threads wait between parallel regions (``--omp-wait-policy``). "passive": they sleep
# (``OMP_WAIT_POLICY=PASSIVE``, which ``utils.runtime`` sets for the course and the runs inherit; every run of
# the committed protocol). "default": OpenMP's own default, the runs' environment without the variable
# (GNU OpenMP: spin a while, then sleep; what nanoGPT gets). On this idle 2-core machine a 2-thread step of
# ours took 153.5 ms with "passive" and 103.3 ms with "default", the baby's 47.4 and 33.1 ms (40 s runs,
# seed 0, under the lock); a 1-thread run has no threads to wait for.
OMP_WAIT_POLICIES = ("passive", "default")


@contextlib.contextmanager
def omp_environment(policy: str):
    """The environment that processes started inside this block copy: ``OMP_WAIT_POLICY=PASSIVE`` for
    ``"passive"``, no ``OMP_WAIT_POLICY`` for ``"default"``; restored on exit. (A spawned run loads torch
    before ``utils.runtime``, when this script is its main module, so ``utils.runtime`` cannot set PASSIVE
    there; :func:`run_slot` checks what each run reports.)"""
    if policy not in OMP_WAIT_POLICIES:
        raise ValueError(f"omp_wait_policy must be one of {OMP_WAIT_POLICIES}, got {policy!r}")
    saved = os.environ.get("OMP_WAIT_POLICY")
    if policy == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = saved


def check_run_policy(policy: str, run_: dict) -> None:
    """Raise if a run's torch did not load with ``policy`` (``run_["omp_wait_policy"]`` is what
    ``utils.runtime.openmp_wait_policy()`` said inside the run)."""
    got = run_.get("omp_wait_policy", "")
    if (policy == "passive") != (got == "PASSIVE") or (policy == "default" and not got.startswith("OpenMP default")):
        raise RuntimeError(f"{run_.get('row')}: asked for omp_wait_policy={policy!r} but the run's OpenMP wait policy "
                           f"was {got!r} (its torch must load before utils.runtime: run this script as the main module)")


def run_slot(jobs: list[tuple[str, Recipe, int]], budget: float, seed: int, omp_wait_policy: str = "passive",
             **kw) -> list[dict]:
    """Run ``(row, recipe, threads)`` jobs side by side, each in a fresh process whose torch loads with
    ``omp_wait_policy`` (see :data:`OMP_WAIT_POLICIES`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with omp_environment(omp_wait_policy):  # the spawned processes copy it when they start
        with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, (threads, row, recipe, budget, seed, kw)) for row, recipe, threads in jobs]
            results = [f.result() for f in futures]
    for r in results:
        check_run_policy(omp_wait_policy, r)
    return results


# ---------------------------------------------------------------------------------------------
# Files and tables
# ---------------------------------------------------------------------------------------------

def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    probes = {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
              for name in ("amx_tile", "avx512_bf16")}
    return {"torch": str(torch.__version__), "cpu": cpu, "cpu_count": os.cpu_count(),
            "cpu_has_fast_bf16": cpu_has_fast_bf16(), **{f"has_{k}": v for k, v in probes.items()},
            "ours_precision_auto": resolve_precision("cpu", COURSE_RECIPE.precision)}


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"runs": []}


def save_results(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation (0 for one value), min, max)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0), min(values), max(values)


def summarize(data: dict) -> dict:
    """Per row and per ratio: mean, std, min, max over seeds (ratios per seed, paired)."""
    runs = [r for r in data["runs"] if r.get("report_bpc") is not None]
    row_names, _, ratio_rows = protocol(data.get("candidate"))
    rows = {}
    for name in row_names:
        rs = sorted((r for r in runs if r["row"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        rows[name] = {"n": len(rs), "seeds": [r["seed"] for r in rs],
                      "report_bpc": spread([r["report_bpc"] for r in rs]),
                      "per_seed_bpc": [r["report_bpc"] for r in rs],
                      "steps": spread([r["steps"] for r in rs]), "passes": spread([r["passes"] for r in rs]),
                      "chars_per_s": spread([r["chars_per_s"] for r in rs]),
                      "wall_s": spread([r["wall_s"] for r in rs]),
                      "best_at_end": sum(r["best_step"] == r["steps"] for r in rs),
                      "precision": rs[0]["precision"], "params": rs[0]["params"], "vocab": rs[0]["vocab"]}
    ratios = {}
    for label, a, b in ratio_rows:
        by_seed = {r["seed"]: r["report_bpc"] for r in runs if r["row"] == b}
        pairs = [(r["seed"], r["report_bpc"] / by_seed[r["seed"]]) for r in runs if r["row"] == a and r["seed"] in by_seed]
        if pairs:
            pairs.sort()
            ratios[label] = {"per_seed": [(s, round(x, 4)) for s, x in pairs], "stats": spread([x for _, x in pairs])}
    return {"rows": rows, "ratios": ratios}


def print_report(data: dict) -> dict:
    summary = summarize(data)
    env = data.get("environment", {})
    print(f"Tiny Shakespeare, {data.get('budget_s', 180):.0f} s wall clock per run (setup and stopping-rule checks "
          f"included), scored on the reporting half ({data.get('report_chars', '?'):,} characters), sliding window.")
    print(f"CPU: {env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores; bf16 matrix instructions: "
          f"{env.get('cpu_has_fast_bf16')} (AMX {env.get('has_amx_tile')}, AVX-512 BF16 {env.get('has_avx512_bf16')}); "
          f"so ours runs in {env.get('ours_precision_auto', '?')} here. OpenMP wait policy of the runs: "
          f"{data.get('omp_wait_policy', 'passive')}.")
    w = max([22] + [len(n) for n in summary["rows"]])
    head = (f"{'row':<{w}} {'prec':>5} {'seeds':>5} {'val bits/char (mean ± std)':>27} {'min–max':>13} "
            f"{'steps':>6} {'passes':>6} {'chars/s':>8} {'wall s':>6}")
    print(head)
    print("-" * len(head))
    for name, s in summary["rows"].items():
        m, sd, lo, hi = s["report_bpc"]
        print(f"{name:<{w}} {s['precision']:>5} {s['n']:>5} {m:>19.4f} ± {sd:.4f} {lo:>6.4f}–{hi:.4f} "
              f"{s['steps'][0]:>6.0f} {s['passes'][0]:>6.2f} {s['chars_per_s'][0]:>8,.0f} {s['wall_s'][0]:>6.1f}")
    print("\nours / baby GPT bits per character (paired by seed):")
    lw = max([46] + [len(label) for label in summary["ratios"]])
    for label, r in summary["ratios"].items():
        m, sd, lo, hi = r["stats"]
        per = ", ".join(f"seed {s}: {x:.3f}" for s, x in r["per_seed"])
        print(f"  {label:<{lw}} {m:.3f} ± {sd:.3f} (min–max {lo:.3f}–{hi:.3f}; {per}) "
              f"goal <= {GOAL}: {'met' if hi <= GOAL else ('met on average' if m <= GOAL else 'NOT met')}")
    print("\nper run (reporting-half bpc, tuning-half bpc of the kept checkpoint, step kept / steps):")
    order = list(protocol(data.get("candidate"))[0])
    for r in sorted(data["runs"], key=lambda r: (r["seed"], order.index(r["row"]) if r["row"] in order else 99)):
        print(f"  seed {r['seed']} {r['row']:<{w}} report {r['report_bpc']:.4f}  tune {r['tune_bpc']:.4f}  "
              f"step {r['best_step']}/{r['steps']} ({r['stopped_by']}), {r['chars_per_s']:,} chars/s, "
              f"wall {r['wall_s']:.1f}s, load {r['load_avg'][0]}")
    return summary


# ---------------------------------------------------------------------------------------------
# Step time of an optimiser (the price of a lever in steps per budget)
# ---------------------------------------------------------------------------------------------

def step_times(recipes: dict[str, Recipe], vocab: int = 2048, steps: int = 8, rounds: int = 6) -> dict[str, dict]:
    """Median seconds of one training step (forward, backward, clipping, ``optimizer.step()``) and of
    ``optimizer.step()`` alone, per recipe, on random tokens: ``rounds`` rounds of ``steps`` steps per
    recipe taking turns (the first round is warm-up and not counted), in each recipe's precision."""
    from utils.precision import autocast_context
    from utils.pretrain import make_optimizer

    models, opts, out = {}, {}, {}
    for name, recipe in recipes.items():
        set_seed(0)
        models[name] = GPT(recipe.model_config(vocab))
        opts[name] = make_optimizer(recipe, models[name])
        out[name] = {"step": [], "optimizer_step": []}
    gen = torch.Generator().manual_seed(0)
    for rnd in range(rounds):
        for name, recipe in recipes.items():
            model, opt = models[name], opts[name]
            ctx = autocast_context(torch.device("cpu"), resolve_precision("cpu", recipe.precision))
            for _ in range(steps):
                x = torch.randint(vocab, (recipe.batch_size, recipe.block_size), generator=gen)
                t0 = time.perf_counter()
                with ctx:
                    _, loss = model(x, torch.roll(x, -1, 1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                t1 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                t2 = time.perf_counter()
                if rnd:
                    out[name]["step"].append(t2 - t0)
                    out[name]["optimizer_step"].append(t2 - t1)
    return {name: {k: statistics.median(v) for k, v in d.items()} | {"n": len(d["step"])} for name, d in out.items()}


# ---------------------------------------------------------------------------------------------
# Ablation (tuning half)
# ---------------------------------------------------------------------------------------------

def ablation_recipes() -> list[tuple[str, Recipe]]:
    """Each row changes ONE thing relative to the course recipe (leave-one-out), plus the two ends."""
    ours = COURSE_RECIPE
    rows = [("baby GPT (chars, baseline)", BABY_GPT), ("baby GPT + BPE-2048 only", BABY_GPT.with_(vocab_size=2048)),
            ("ours (course recipe)", ours)]
    rows += [(f"ours, vocab {v}", ours.with_(vocab_size=v)) for v in (1024, 4096) if v != ours.vocab_size]
    rows += [
        (f"ours, context {ours.block_size // 2}", ours.with_(block_size=ours.block_size // 2)),
        ("ours, learned positions (no RoPE)", ours.with_(pos="learned")),
        ("ours, LayerNorm (no RMSNorm)", ours.with_(norm="layernorm")),
        ("ours, GELU MLP (no SwiGLU)", ours.with_(mlp="gelu")),
        ("ours, width 128 (baby's)", ours.with_(n_embd=128)),
        ("ours, lr 1e-3 (baby's)", ours.with_(lr=1e-3, min_lr=1e-4)),
        ("ours, batch 12 (baby's)", ours.with_(batch_size=12)),
        ("ours, dropout 0 (residual branches)", ours.with_(dropout=0.0)),
        (f"ours, weight decay {BABY_GPT.weight_decay} (baby's)", ours.with_(weight_decay=BABY_GPT.weight_decay)),
        ("ours, fp32 (no bf16 autocast)", ours.with_(precision="fp32")),
        ("ours, random windows (nanoGPT)", ours.with_(sampling="random")),
        ("ours, no pass cap", ours.with_(max_passes=None)),
    ]
    return rows


def explore_recipe(name: str) -> tuple[Recipe, int]:
    """A candidate for ``--explore``: a protocol row name, or ``"ours|baby field=value ... threads=N"``
    (e.g. ``"ours dropout=0.1 max_passes=7 threads=2"``; ``max_passes=none`` for no cap)."""
    if name in ROWS:
        return ROWS[name]
    base, *pairs = name.split()
    recipe = {"ours": COURSE_RECIPE, "baby": BABY_GPT}.get(base)
    if recipe is None or not all("=" in p for p in pairs):
        raise ValueError(f"explore row {name!r}: a protocol row ({list(ROWS)}) or 'ours|baby field=value ... threads=N'")
    changes, threads = {}, 2
    for p in pairs:
        k, v = p.split("=", 1)
        if k == "threads":
            threads = int(v)
            continue
        if not hasattr(recipe, k):
            raise ValueError(f"explore row {name!r}: {k!r} is not a Recipe field (fields: {list(asdict(recipe))})")
        default = getattr(recipe, k)
        if isinstance(default, bool):  # bool("False") would be True
            if v not in ("True", "False"):
                raise ValueError(f"explore row {name!r}: {k} must be True or False, got {v!r}")
            changes[k] = v == "True"
            continue
        changes[k] = None if v == "none" else type(default if default is not None else 1.0)(v)
    return recipe.with_(**changes), threads


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--next", type=int, default=None, metavar="K",
                        help="protocol: run the next K slots not yet in the results file and append them")
    parser.add_argument("--report", action="store_true", help="protocol: print the table of the results file")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=180.0, help="wall-clock seconds per run (default 180)")
    parser.add_argument("--candidate", default=None, metavar="CHANGES",
                        help='--next: also run the course recipe with these changes (e.g. "n_embd=128") as protocol rows; '
                             "needs --out (a file records one candidate)")
    parser.add_argument("--explore", action="store_true", help="exploration runs (tuning half only)")
    parser.add_argument("--split", choices=list(SPLITS), default="halves",
                        help="--explore: the tuning text: the tuning half (halves), or a part of the tuning half and "
                             "a play's opening cut out of the training text (heldout-play; results go to "
                             "pretrain_cpu_explore_heldout_play.json)")
    parser.add_argument("--rows", nargs="*", default=None, help="--explore: row names (see explore_recipe); --next: only the slots of these protocol rows")
    parser.add_argument("--threads", type=int, default=2, help="--ablation: torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="--ablation: runs side by side")
    parser.add_argument("--ablation", action="store_true", help="run every lever (tuning half)")
    parser.add_argument("--only", nargs="*", default=None, help="--ablation: only these rows (substring match)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--omp-wait-policy", choices=OMP_WAIT_POLICIES, default="passive",
                        help="how the runs' OpenMP threads wait: passive (sleep; the committed protocol) or "
                             "default (OpenMP's own: spin a while, then sleep)")
    parser.add_argument("--step-time", action="store_true",
                        help="median step time of the course recipe with AdamW and with Muon (--threads, default 2)")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be > 0 seconds, got {args.budget}")
    if args.next is not None and args.next < 1:
        parser.error(f"--next must be >= 1, got {args.next}")
    if args.split != "halves" and not args.explore:
        parser.error("--split goes with --explore (the protocol always uses the two halves)")
    env = environment()

    if args.report or args.next is not None:
        out = args.out or PROTOCOL_FILE
        data = load_results(out)
        if args.candidate is not None:
            if args.next is None or args.out is None:
                parser.error("--candidate goes with --next and --out (the committed protocol file has no candidate)")
            if data["runs"] and data.get("candidate") != args.candidate:
                parser.error(f"{out} holds runs of candidate {data.get('candidate')!r}; use the same one (or another --out)")
            try:
                protocol(args.candidate)
            except (ValueError, TypeError) as err:
                parser.error(f"--candidate {args.candidate!r}: {err}")
            data["candidate"] = args.candidate
        rows_map, slots_all, _ = protocol(data.get("candidate"))
        if args.next is not None:
            if data["runs"] and data.get("budget_s") != args.budget:
                parser.error(f"{out} holds runs with a {data.get('budget_s')} s budget; use the same --budget")
            # arguments first: a bad one fails at once, before the text is loaded
            if data["runs"] and data.get("omp_wait_policy", "passive") != args.omp_wait_policy:
                parser.error(f"{out} holds runs with --omp-wait-policy {data.get('omp_wait_policy', 'passive')}; "
                             "use the same one (or another --out)")
            unknown = [row for row in args.rows or [] if row not in rows_map]
            if unknown:
                parser.error(f"--next --rows: not protocol rows: {unknown}; rows: {list(rows_map)}")
            _, tune_text, report_text = split_text(load_tinyshakespeare())
            data.update(budget_s=args.budget, environment=env, seeds=args.seeds, checks=list(CHECKS),
                        tune_chars=len(tune_text), report_chars=len(report_text),
                        command=f"python benchmarks/pretrain_cpu.py --next K --budget {args.budget:g} "
                                f"--seeds {' '.join(map(str, args.seeds))}"
                                + (f" --omp-wait-policy {args.omp_wait_policy}" if args.omp_wait_policy != "passive" else "")
                                + (f" --candidate {args.candidate!r}" if args.candidate else "")
                                + (" --rows " + " ".join(repr(r) for r in args.rows) if args.rows else ""))
            data.setdefault("invocations", []).append(
                {"argv": ["python", "benchmarks/pretrain_cpu.py", *(argv if argv is not None else sys.argv[1:])],
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_avg": list(os.getloadavg())})
            data["omp_wait_policy"] = args.omp_wait_policy
            slots = [tuple(row for row in slot if not args.rows or row in args.rows) for slot in slots_all]
            done = {(r["row"], r["seed"]) for r in data["runs"]}
            todo = [(seed, slot) for seed in args.seeds for slot in slots
                    if slot and not all((row, seed) in done for row in slot)]
            if not todo:
                print("every slot of the protocol is done")
            for seed, slot in todo[:args.next]:
                print(f"{time.strftime('%H:%M:%S')} seed {seed}: {' | '.join(slot)} "
                      f"(load {os.getloadavg()[0]:.2f})", flush=True)
                rows = run_slot([(row, *rows_map[row]) for row in slot if (row, seed) not in done], args.budget, seed,
                                omp_wait_policy=args.omp_wait_policy)
                for r in rows:
                    print(f"  {r['row']}: report {r['report_bpc']:.4f} bpc, tune {r['tune_bpc']:.4f}, "
                          f"{r['steps']} steps ({r['passes']} passes, kept {r['best_step']}), "
                          f"{r['chars_per_s']:,} chars/s, wall {r['wall_s']}s", flush=True)
                data["runs"].extend(rows)
                save_results(out, data)
        if data["runs"]:
            print()
            print_report(data)
        return

    if args.explore:
        out = args.out or (EXPLORE_FILE if args.split == "halves" else RESULTS / "pretrain_cpu_explore_heldout_play.json")
        if not args.rows:
            parser.error("--explore needs --rows (see explore_recipe)")
        recipes = {row: explore_recipe(row) for row in args.rows}
        data = load_results(out)
        data["note"] = ("exploration: tuning half only, used to choose the stopping rule and to try the second round's "
                        "levers (BPE-dropout, lr, weight averaging, vocabulary, width, the Muon optimiser) and the third "
                        "round's (context 256 at equal tokens per step, min_lr 0); "
                        "not a reported result") if out == EXPLORE_FILE else (
                        "exploration: tuning half only, for choosing; not a reported result") if args.split == "halves" else (
                        "exploration with --split heldout-play: the tuning text is the tuning half's first part and the "
                        "opening of Measure for Measure, cut out of the training text; for choosing, not a reported result")
        data.setdefault("environment", env)  # the machine of the file's first runs
        for seed in args.seeds:
            jobs = [(row, *recipes[row]) for row in args.rows]
            # 1-thread rows two at a time; 2-thread rows one at a time
            while jobs:
                take = [jobs.pop(0)]
                if take[0][2] == 1 and jobs and jobs[0][2] == 1:
                    take.append(jobs.pop(0))
                for r in run_slot(take, args.budget, seed, score_report=False, omp_wait_policy=args.omp_wait_policy,
                                  split=args.split):
                    r["budget_s"] = args.budget
                    r["side_by_side"] = len(take)
                    data["runs"].append(r)
                    print(f"{r['row']:<32} seed {seed} budget {args.budget:.0f}s: tune {r['tune_bpc']:.4f} "
                          f"(kept step {r['best_step']}/{r['steps']}, {r['passes']} passes, {r['stopped_by']}), "
                          f"{r['chars_per_s']:,} chars/s, checks {r['checks']}", flush=True)
                save_results(out, data)
        return

    torch.set_num_threads(args.threads)
    if args.step_time:
        recipes = {"AdamW (the recipe)": COURSE_RECIPE, "Muon + AdamW": COURSE_RECIPE.with_(optimizer="muon")}
        res = step_times(recipes)
        print(f"one training step of the course shape (batch {COURSE_RECIPE.batch_size} x {COURSE_RECIPE.block_size}, "
              f"{torch.get_num_threads()} threads, {resolve_precision('cpu', COURSE_RECIPE.precision)}), medians:")
        for name, r in res.items():
            print(f"  {name:<20} step {r['step'] * 1e3:6.1f} ms   optimizer.step() {r['optimizer_step'] * 1e3:5.2f} ms "
                  f"(n={r['n']})")
        a, m = (res[k]["step"] for k in recipes)
        print(f"  Muon / AdamW step time: {m / a:.3f}")
        return
    if args.ablation:
        recipes = ablation_recipes()
        if args.only:
            recipes = [(n, r) for n, r in recipes if any(s in n for s in args.only)]
        jobs = [(n, r, args.threads) for n, r in recipes]
        rows = []
        for i in range(0, len(jobs), args.jobs):
            rows += run_slot(jobs[i:i + args.jobs], args.budget, 0, score_report=False)
            for r in rows[-args.jobs:]:
                print(f"{r['row']:<40} tune {r['tune_bpc']:.4f} ({r['steps']} steps)", flush=True)
        out = args.out or RESULTS / "pretrain_cpu_ablation.json"
        save_results(out, {"environment": env, "budget_s": args.budget, "threads": args.threads,
                           "jobs": args.jobs, "note": "tuning half", "runs": rows})
        return
    parser.error("choose --next K, --report, --explore, --ablation or --step-time")


if __name__ == "__main__":
    main()
