"""Instruction tuning: templates, special tokens, instruction data from the corpus, response-only loss.

- :class:`Template`: how an (instruction, input, response) triple becomes text. The prompt ends with
  a **response marker** (``"### Response:\\n"``, or ``"<|assistant|>\\n"`` for chat); everything
  after it is the response, the only part the loss is computed on (:func:`encode_example`).
  :data:`INSTRUCT_TEMPLATE` (Alpaca-style, plain text + ``<|endoftext|>``) and
  :data:`CHAT_TEMPLATE` (role tokens ``<|user|>``, ``<|assistant|>``, ``<|end|>``).
- :func:`add_special_tokens`: a tokenizer with new special tokens (new ids after the last one) and
  the model's embedding (tied output) grown to match; new rows start at the mean embedding.
- :func:`instruction_data`: tasks built from the corpus metadata (genre, which of two speakers,
  who speaks in an exchange, continue as a speaker), split by play like the corpus.
- A task adapter: :func:`train_line_adapter` puts a LoRA adapter for "who speaks the line" on the frozen
  instruct model; :func:`score_routed` / :func:`answer_routed` switch it on for that question only
  (:func:`task_of` reads the task from the question's wording).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

__all__ = ["Template", "INSTRUCT_TEMPLATE", "CHAT_TEMPLATE", "CHAT_SPECIALS", "render", "encode_example",
           "add_special_tokens", "Example", "instruction_data", "TASKS", "FACTUAL_TASKS", "batch_examples",
           "finetune_lm", "example_mean_loss", "answer", "answer_batch", "exact_match", "task_baselines", "choice_accuracy",
           "EXTRACTIVE_TASKS", "join_names", "split_names", "names_f1", "score_tasks", "INSTRUCT_METHODS", "INSTRUCT_LORA",
           "INSTRUCT_LR", "INSTRUCT_RECIPE", "INSTRUCT_SEEDS", "instruct_training_set", "response_loss", "train_new_token_rows", "prepare_instruct_model", "instruct_pairs", "train_instruct_model",
           "genre_stage_set", "run_genre_stage", "line_twin", "choice_picks", "choice_scores", "LINE_ADAPTER",
           "ADAPTER_TASKS", "LINE_ADAPTER_SEEDS", "task_of", "train_line_adapter", "adapter_for", "score_routed",
           "answer_routed"]

EOT = "<|endoftext|>"
CHAT_SPECIALS = ("<|user|>", "<|assistant|>", "<|end|>")


@dataclass(frozen=True)
class Template:
    """``format`` with ``{instruction}``, ``{input}`` and ``{response}``; ``response_marker`` must end
    the text before ``{response}`` (it is where the model starts answering)."""

    name: str
    format: str
    response_marker: str

    def __post_init__(self) -> None:
        for field in ("{instruction}", "{input}", "{response}"):
            if self.format.count(field) != 1:
                raise ValueError(f"template {self.name!r}: format must contain {field} exactly once, got "
                                 f"{self.format!r}")
        if not self.response_marker:
            raise ValueError(f"template {self.name!r}: response_marker is empty; it must be the text that "
                             "ends the prompt, e.g. '### Response:\\n'")
        if not self.format.split("{response}")[0].endswith(self.response_marker):
            raise ValueError(f"template {self.name!r}: the response marker {self.response_marker!r} must come "
                             f"right before {{response}} in the format; got {self.format!r}")


INSTRUCT_TEMPLATE = Template("instruct", "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                             "### Response:\n{response}" + EOT, "### Response:\n")
CHAT_TEMPLATE = Template("chat", "<|user|>\n{instruction}\n\n{input}<|end|>\n<|assistant|>\n{response}<|end|>",
                         "<|assistant|>\n")


def render(template: Template, instruction: str, input: str = "", response: str = "") -> tuple[str, str]:
    """(prompt, completion): the prompt ends with the response marker; the completion is the
    response and whatever the template puts after it (the end token)."""
    if not isinstance(template, Template):
        raise TypeError(f"template must be a Template, got {type(template).__name__}")
    before, after = template.format.split("{response}")
    prompt = before.replace("{instruction}", instruction).replace("{input}", input)
    return prompt, response + after


def encode_example(tokenizer, template: Template, instruction: str, input: str, response: str,
                   mask_prompt: bool = True, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(x, y) for next-token training: x = tokens[:-1], y = tokens[1:], with y = -100 (ignored by the
    loss) wherever the target is a prompt token when ``mask_prompt``. Prompt and completion are
    tokenized separately, so the boundary falls exactly at the response marker. ``max_len``: cut
    the prompt's *start* so that x fits (the response is kept whole)."""
    prompt, completion = render(template, instruction, input, response)
    p = tokenizer.encode(prompt, allowed_special="all")
    c = tokenizer.encode(completion, allowed_special="all")
    if not c:
        raise ValueError("the completion is empty: nothing to learn")
    if max_len is not None and len(p) + len(c) - 1 > max_len:
        keep = max_len + 1 - len(c)
        if keep < 1:
            raise ValueError(f"the response alone ({len(c)} tokens) does not fit max_len={max_len}")
        p = p[-keep:]
    ids = p + c
    labels = ([-100] * len(p) if mask_prompt else list(p)) + c
    return ids[:-1], labels[1:]


def batch_examples(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (x, y) pairs into (X (B, T), Y (B, T)); padded targets are -100."""
    T = max(len(x) for x, _ in pairs)
    X = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    Y = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        X[i, :len(x)] = torch.tensor(x)
        Y[i, :len(y)] = torch.tensor(y)
    return X, Y


def add_special_tokens(tokenizer, model: nn.Module, tokens=CHAT_SPECIALS):
    """A copy of ``tokenizer`` with ``tokens`` as new special tokens (ids vocab_size, vocab_size+1, ...),
    and ``model``'s token embedding (and tied output layer) grown in place to the new vocabulary.
    New rows are the mean of the existing embeddings (a neutral start: their logits equal the average
    token's). Returns the new tokenizer. Tokens already special are an error."""
    from utils.tokenizer import BPETokenizer

    tokens = list(tokens)
    if not tokens or any(not isinstance(t, str) or not t for t in tokens) or len(set(tokens)) != len(tokens):
        raise ValueError(f"tokens must be distinct non-empty strings, got {tokens!r}")
    clash = [t for t in tokens if t in tokenizer.special_tokens]
    if clash:
        raise ValueError(f"{clash} are already special tokens of this tokenizer")
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {model.config.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}")
    V = tokenizer.vocab_size
    specials = {**tokenizer.special_tokens, **{t: V + i for i, t in enumerate(tokens)}}
    new_tok = BPETokenizer(dict(tokenizer.merges), tokenizer.pattern, specials, tokenizer.byte_to_id)
    old = model.wte.weight
    new = nn.Embedding(V + len(tokens), old.shape[1]).to(device=old.device, dtype=old.dtype)
    with torch.no_grad():
        new.weight[:V] = old
        new.weight[V:] = old.mean(0)
    tied = model.lm_head.weight is old
    model.wte = new
    if tied:
        model.lm_head.weight = new.weight
    else:
        head = nn.Linear(old.shape[1], V + len(tokens), bias=False).to(device=old.device, dtype=old.dtype)
        with torch.no_grad():
            head.weight[:V] = model.lm_head.weight
            head.weight[V:] = model.lm_head.weight.mean(0)
        model.lm_head = head
    model.config.vocab_size = V + len(tokens)
    return new_tok


# ---------------------------------------------------------------------------------------------
# Instruction data from the corpus metadata
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    task: str
    instruction: str
    input: str
    response: str
    play: str
    choices: tuple[str, ...] = ()  # for multiple-choice tasks: the possible answers


TASKS = ("genre", "first_speaker", "line_speaker", "speakers", "continue")
FACTUAL_TASKS = ("genre", "first_speaker", "line_speaker", "speakers")
# tasks whose answer can be read off the given passage (copying a speaker tag); "genre" needs knowledge
EXTRACTIVE_TASKS = ("first_speaker", "line_speaker", "speakers")
_GENRE_WORD = {"comedies": "comedy", "histories": "history", "tragedies": "tragedy"}


def _body(text: str, max_chars: int) -> str:
    """The lines of a passage without its "SPEAKER:" line, cut at a line end within max_chars."""
    lines = text.rstrip("\n").split("\n")[1:]
    out = ""
    for line in lines:
        if out and len(out) + len(line) + 1 > max_chars:
            break
        out += line + "\n"
    return out[:max_chars].rstrip("\n")


def _name(speaker: str) -> str:
    return speaker.strip()  # as the text writes it (upper case): answers can copy it token for token


def join_names(names) -> str:
    """["A"] -> "A", ["A", "B"] -> "A and B", ["A", "B", "C"] -> "A, B and C"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def split_names(answer: str) -> list[str]:
    """The inverse of :func:`join_names` (upper-cased, stripped): "Iago and Othello" -> ["IAGO", "OTHELLO"]."""
    parts = re.split(r",|\band\b", answer.strip().upper().replace(" AND ", " , "))
    return [p.strip() for p in parts if p.strip()]


# Renamed speakers (training sets): this share is another speaker of the split, the rest are made up.
# A quarter, not more: the split has only ~570 speaker names, and a model trained on them half of the
# time learned them as a prior (on new plays it wrote "Host" or "Carrier" instead of copying the tag).
# Made-up names come from random letters, not from a fixed set of syllables, for the same reason: with
# 28 syllables the model learned to write syllables ("QUIBETH" for MACBETH) instead of copying. With
# both changes (and INSTRUCT_RECIPE's task counts), exact match on the validation plays went from 0.51
# to 0.79 (who speaks first) and from 0.05 to 0.30 (which speakers), against the previous recipe
# (half pool names, syllable names, the same 2,400 examples of every task).
_RENAME_POOL_FRACTION = 0.25
_CONSONANTS, _VOWELS = "BCDFGHJKLMNPRSTVWZ", "AEIOUY"
_TITLES = ("SIR", "LORD", "LADY", "KING", "QUEEN", "DUKE", "DON", "PRINCE", "DUKE OF", "EARL OF", "BISHOP OF",
           "FIRST", "SECOND")


def _made_up_word(rng: random.Random) -> str:
    """A pronounceable random word of 3 to 9 letters (consonant-vowel syllables, some closed)."""
    out, length = ("" if rng.random() < 0.7 else rng.choice(_VOWELS)), rng.randint(3, 9)
    while len(out) < length:
        out += rng.choice(_CONSONANTS) + rng.choice(_VOWELS) + (rng.choice(_CONSONANTS) if rng.random() < 0.3 else "")
    return out


def _made_up_name(rng: random.Random) -> str:
    """A made-up speaker tag shaped like the corpus's: mostly one upper-case word ("VORALIN"), sometimes
    with a title ("SIR DAMOLE", "DUKE OF FENIRA") or two words, sometimes capitalised ("Tovarin",
    "Second Belamo")."""
    u = rng.random()
    if u < 0.55:
        return _made_up_word(rng)
    if u < 0.75:
        return rng.choice(_TITLES) + " " + _made_up_word(rng)
    if u < 0.85:
        return _made_up_word(rng) + " " + _made_up_word(rng)
    word = _made_up_word(rng).capitalize()
    return word if rng.random() < 0.6 else rng.choice(("First", "Second", "Third", "Old")) + " " + word


def _quotable(body: list[str], other: list[str]) -> list[str]:
    """The lines of one speech a "line_speaker" question may quote: long enough to find (20+ characters) and
    not also a line of the other speech."""
    return [line for line in body if len(line) >= 20 and line not in other]


def _line_question(line: str) -> str:
    return f'Who speaks the line "{line}"?'


def line_twin(example: Example) -> Example | None:
    """The counterfactual twin of a "line_speaker" example: the same passage and names, the first quotable
    line of the *other* speech quoted, and the answer flipped to the other speaker. A model that reads the
    quoted line answers the two differently; one that ignores it gives both the same name, so exactly one
    of the two is right. ``None`` when the other speech has no quotable line (see :func:`instruction_data`)."""
    if not isinstance(example, Example) or example.task != "line_speaker":
        raise ValueError(f"line_twin needs a 'line_speaker' Example, got {getattr(example, 'task', example)!r}")
    speeches = example.input.split("\n\n")
    if len(speeches) != 2 or any(":\n" not in s for s in speeches):
        raise ValueError("a line_speaker input is two speeches, each 'NAME:' on its own line then its lines, "
                         f"separated by a blank line; got {example.input!r}")
    names = [s.split(":\n", 1)[0] for s in speeches]
    bodies = [s.split(":\n", 1)[1].split("\n") for s in speeches]
    if example.response not in names:
        raise ValueError(f"the answer {example.response!r} is not one of the passage's speakers {names}")
    k = names.index(example.response)
    lines = _quotable(bodies[1 - k], bodies[k])
    if not lines:
        return None
    return replace(example, instruction=_line_question(lines[0]), response=names[1 - k])


def instruction_data(corpus, split: str, n_per_task: int = 200, seed: int = 0, max_chars: int = 128,
                     tasks=TASKS, rename_speakers: bool = False, balance_genres: bool = False) -> list[Example]:
    """Instruction examples built from the passages of one split (so splits never share a play).

    Knowledge (the answer is not in the input):

    - "genre": *Is this passage from a comedy, a history or a tragedy?* (3 choices; the speaker line
      is dropped).

    Reading (the answer is a speaker tag of the input, to be copied; the input is two or three
    consecutive speeches of one scene, each with its "SPEAKER:" line and cut to ``max_chars // 2``):

    - "first_speaker": *Who speaks first in this passage?* (choices: the passage's speakers);
    - "line_speaker": *Who speaks the line "..."?* (one line of one of two speeches; 2 choices);
    - "speakers": *Which speakers appear in this passage?* (answer "A and B" or "A, B and C", in order
      of appearance; scored by exact match and by F1 over the names).

    Generative: "continue": *Continue this speech as SPEAKER.* (the next line).

    ``rename_speakers=True`` (for training sets) gives the speakers of the reading tasks other names:
    a quarter from the other speakers of the split, the rest made up (e.g. "VORALIN", "SIR DAMOLE",
    "Second Belamo": random letters, shaped like the corpus's tags), consistently within an
    example. A model pretrained on these plays could otherwise answer from memory of who says what;
    with random names only reading the passage works, which is what carries over to unseen plays.

    ``balance_genres=True`` (for training sets) draws the "genre" passages ``n_per_task // 3`` per
    genre (all of a genre's passages if it has fewer) instead of in the split's proportions: the
    training plays' passages are about half histories, the validation and test plays' about a third.
    """
    from utils.data import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
    if not isinstance(n_per_task, int) or n_per_task < 1:
        raise ValueError(f"n_per_task must be a positive int, got {n_per_task!r}")
    if not isinstance(balance_genres, bool):
        raise ValueError(f"balance_genres must be True or False, got {balance_genres!r}")
    rng = random.Random(seed)
    ps = [p for p in corpus.passages if p.split == split and p.text.count("\n") >= 2]
    by_scene: dict[tuple, list] = {}
    for i, p in enumerate(ps):
        by_scene.setdefault((p.play, p.act, p.scene), []).append(i)
    half = max_chars // 2
    pool = sorted({_name(p.speaker) for p in ps})

    def names_for(run) -> dict[str, str]:
        real = list(dict.fromkeys(_name(ps[i].speaker) for i in run))
        if not rename_speakers:
            return {n: n for n in real}
        new: list[str] = []
        while len(new) < len(real):
            cand = rng.choice(pool) if rng.random() < _RENAME_POOL_FRACTION else _made_up_name(rng)
            if cand not in new and cand not in real:
                new.append(cand)
        return dict(zip(real, new))

    def exchange(run) -> tuple[str, dict[str, str]]:
        ren = names_for(run)
        text = "\n\n".join(ren[_name(ps[i].speaker)] + ":\n" + "\n".join(bodies[i]) for i in run)  # as in the corpus
        return text, ren
    # runs of 2 or 3 consecutive speeches of one scene, neighbours by different speakers (only the reading tasks
    # need them; each passage's cut body is computed once, as a passage belongs to up to five runs)
    runs: dict[int, list] = {2: [], 3: []}
    reading = any(t in tasks for t in EXTRACTIVE_TASKS)
    bodies = [_body(p.text, half).split("\n") for p in ps] if reading else []
    tag_like = [any(line.endswith(":") for line in b) for b in bodies]
    for idxs in by_scene.values() if reading else ():
        for k in (2, 3):
            for s in range(len(idxs) - k + 1):
                run = idxs[s:s + k]
                names = [_name(ps[i].speaker) for i in run]
                # a body line ending in ":" would read like a speaker tag: skip such runs
                if all(a != b for a, b in zip(names, names[1:])) and not any(tag_like[i] for i in run):
                    runs[k].append(run)
    out: list[Example] = []
    if "genre" in tasks:
        cand = [p for p in ps if p.genre in _GENRE_WORD and len(p.text) >= 120]
        if balance_genres:
            per_genre = [[p for p in cand if p.genre == g] for g in _GENRE_WORD]
            chosen = [p for c in per_genre for p in rng.sample(c, min(n_per_task // 3, len(c)))]
        else:
            chosen = rng.sample(cand, min(n_per_task, len(cand)))
        for p in chosen:
            out.append(Example("genre", "Is this passage from a comedy, a history or a tragedy?",
                               _body(p.text, max_chars), _GENRE_WORD[p.genre], p.play,
                               tuple(_GENRE_WORD.values())))
    if "first_speaker" in tasks:
        cand = runs[2] + runs[3]
        for run in rng.sample(cand, min(n_per_task, len(cand))):
            text, ren = exchange(run)
            names = list(ren.values())
            out.append(Example("first_speaker", "Who speaks first in this passage?", text,
                               names[0], ps[run[0]].play, tuple(sorted(names))))
    if "line_speaker" in tasks:
        cand = []
        for run in runs[2]:
            pair = [bodies[i] for i in run]
            # a line that only one of the two speeches has, long enough to find
            cand += [(run, k, line) for k in (0, 1) for line in _quotable(pair[k], pair[1 - k])]
        for run, k, line in rng.sample(cand, min(n_per_task, len(cand))):
            text, ren = exchange(run)
            out.append(Example("line_speaker", _line_question(line), text,
                               ren[_name(ps[run[k]].speaker)], ps[run[0]].play, tuple(sorted(ren.values()))))
    if "speakers" in tasks:
        cand = runs[2] + runs[3]
        for run in rng.sample(cand, min(n_per_task, len(cand))):
            text, ren = exchange(run)
            out.append(Example("speakers", "Which speakers appear in this passage?", text,
                               join_names(list(ren.values())), ps[run[0]].play))
    if "continue" in tasks:
        cand = [p for p in ps if p.text.count("\n") >= 3]
        for p in rng.sample(cand, min(n_per_task, len(cand))):
            lines = p.text.rstrip("\n").split("\n")
            out.append(Example("continue", f"Continue this speech as {_name(p.speaker)}.", lines[1],
                               lines[2], p.play))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------
# Training on examples and answering
# ---------------------------------------------------------------------------------------------

def finetune_lm(model: nn.Module, pairs: list[tuple[list[int], list[int]]], *, epochs: float = 1.0,
                batch_size: int = 16, lr: float = 1e-3, pad_id: int = 0, seed: int = 0, progress: bool = True,
                compute_loss=None, anchor: float = 0.0):
    """Next-token training on (x, y) pairs (y = -100 where no loss) with :func:`utils.training.train`;
    returns its TrainResult. ``compute_loss(model, (X, Y))`` defaults to the model's own
    cross-entropy (which ignores -100).

    ``anchor`` (>= 0; 0 = off): L2-SP (Li et al. 2018) in its decoupled form. After every optimizer step each
    trainable weight is pulled toward its value at the start, ``w <- w - anchor * lr_t * (w - w_start)``, as
    AdamW's weight decay pulls toward zero: a direction the gradients keep pushing still moves, the random walk of
    noisy coordinates away from what the weights knew before does not."""
    import math

    from utils.training import TrainConfig, default_loss, lr_schedule, train

    if not pairs:
        raise ValueError("pairs is empty")
    if isinstance(anchor, bool) or not (isinstance(anchor, (int, float)) and math.isfinite(anchor) and anchor >= 0):
        raise ValueError(f"anchor must be a finite number >= 0 (0 = off), got {anchor!r}")
    n = len(pairs)
    steps = max(1, math.ceil(epochs * n / batch_size))
    gen = torch.Generator().manual_seed(seed)
    state = {"order": torch.randperm(n, generator=gen), "pos": 0}
    device = next(model.parameters()).device

    def get_batch(split: str):
        if split != "train":
            x, y = batch_examples(pairs[:batch_size], pad_id)
        else:
            if state["pos"] + batch_size > n:
                state["order"], state["pos"] = torch.randperm(n, generator=gen), 0
            sel = state["order"][state["pos"]:state["pos"] + batch_size].tolist()
            state["pos"] += batch_size
            x, y = batch_examples([pairs[i] for i in sel], pad_id)
        return x.to(device), y.to(device)

    tcfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 10),
                       weight_decay=0.0, eval_interval=0, eval_iters=1, seed=seed, progress=progress,
                       log_interval=max(1, steps // 20))
    callback = None
    if anchor:
        params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())  # tied weights once
        start = [p.detach().clone() for p in params]

        def callback(step: int, result) -> None:  # step counts the steps done; the one just taken used step - 1
            lr_t = lr_schedule(step - 1, lr=tcfg.lr, min_lr=tcfg.min_lr, warmup_steps=tcfg.warmup_steps,
                               total_steps=tcfg.max_steps)
            with torch.no_grad():
                torch._foreach_lerp_(params, start, min(1.0, anchor * lr_t))
    torch.manual_seed(seed)
    return train(model, config=tcfg, get_batch=get_batch, compute_loss=compute_loss or default_loss, callback=callback)


def example_mean_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy averaged over each example's own targets, then over the examples: every example
    weighs the same, whatever the length of its answer. (The default, the mean over all the batch's
    targets, gave the one-word genre answers 8.7% of the targets of the previous recipe's training set,
    against 33% for the long answers of "which speakers".) ``batch = (X, Y)`` (B, T), Y = -100 where no loss."""
    import torch.nn.functional as F

    x, y = batch
    logits, _ = model(x)
    keep = y != -100
    if not bool(keep.any()):
        raise ValueError("the batch has no target (every y is -100)")
    nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none").view(y.shape)
    rows = keep.any(1)
    return ((nll * keep).sum(1)[rows] / keep.sum(1)[rows]).mean()


def answer(model: nn.Module, tokenizer, template: Template | None, instruction: str, input: str = "",
           max_new_tokens: int = 24, stop: str | None = None) -> str:
    """Greedy answer of ``model`` to one instruction; ``template=None`` feeds the plain text
    ``instruction + "\\n" + input + "\\n"`` (a base model's "text" flavour). Stops at ``<|endoftext|>``,
    at the template's end token (``<|end|>`` for chat) or at ``stop``."""
    return answer_batch(model, tokenizer, template, [(instruction, input)], max_new_tokens, stop)[0]


@torch.no_grad()
def answer_batch(model: nn.Module, tokenizer, template: Template | None, items: list[tuple[str, str]],
                 max_new_tokens: int = 24, stop: str | None = None) -> list[str]:
    """:func:`answer` for many (instruction, input) pairs at once (batched greedy decoding).

    A prompt longer than the context leaves room for (``block_size - max_new_tokens`` tokens) loses its first
    tokens, as a chat window drops the oldest text; a warning says how many prompts were cut, since the cut
    part may hold what the question needs (a line_speaker prompt's quoted line comes first)."""
    import warnings

    from utils.generation import generate

    if template is None:
        prompts = [f"{ins}\n{inp}\n" for ins, inp in items]
    else:
        prompts = [render(template, ins, inp)[0] for ins, inp in items]
    block = model.config.block_size
    if max_new_tokens >= block:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {block} tokens")
    full = [tokenizer.encode(p, allowed_special="all") for p in prompts]
    ids = [f[-(block - max_new_tokens):] for f in full]
    n_cut = sum(len(f) > len(i) for f, i in zip(full, ids))
    if n_cut:
        warnings.warn(f"{n_cut} of {len(prompts)} prompts are longer than {block - max_new_tokens} tokens (the context "
                      f"of {block} less max_new_tokens={max_new_tokens}); their first tokens were cut", stacklevel=3)
    ends = [s for s in ("<|endoftext|>", "<|end|>") if s in tokenizer.special_tokens]
    eos = tokenizer.special_tokens.get("<|endoftext|>")
    stops = [[tokenizer.special_tokens[s]] for s in ends]
    if stop is not None:
        stops.append(tokenizer.encode(stop))
    was = model.training
    model.eval()
    outs = generate(model, ids, max_new_tokens, temperature=0.0, stop=stops or None, eos_token_id=eos,
                    pad_token_id=eos or 0)
    model.train(was)
    texts = []
    for p, o in zip(ids, outs):
        new = [t for t in o[len(p):] if t not in tokenizer.inverse_special_tokens]
        text = tokenizer.decode(new)
        if stop is not None and stop in text:
            text = text[:text.index(stop)]
        texts.append(text.strip())
    return texts


def names_f1(predicted: str, reference: str) -> float:
    """F1 between the sets of names in two answers (:func:`split_names`): 1.0 when they name the same
    speakers in any order, 0.0 when they share none."""
    p, r = set(split_names(predicted)), set(split_names(reference))
    if not p or not r:
        return float(p == r)
    tp = len(p & r)
    return 0.0 if tp == 0 else 2 * tp / (len(p) + len(r))


def score_tasks(model: nn.Module, tokenizer, template: Template | None, examples: list[Example],
                batch_size: int = 32, max_new_tokens: int = 16) -> dict[str, dict[str, float]]:
    """Per task: {"exact_match": fraction of greedy answers equal to the reference (stripped,
    lower-cased)}; for "speakers" also "f1" (:func:`names_f1`, averaged)."""
    em: dict[str, list[float]] = {}
    f1: dict[str, list[float]] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        got = answer_batch(model, tokenizer, template, [(e.instruction, e.input) for e in chunk], max_new_tokens,
                           stop="\n" if template is None else None)
        for e, g in zip(chunk, got):
            em.setdefault(e.task, []).append(float(g.strip().lower() == e.response.strip().lower()))
            if e.task == "speakers":
                f1.setdefault(e.task, []).append(names_f1(g, e.response))
    out = {t: {"exact_match": sum(v) / len(v)} for t, v in em.items()}
    for t, v in f1.items():
        out[t]["f1"] = sum(v) / len(v)
    return out


def exact_match(model: nn.Module, tokenizer, template: Template | None, examples: list[Example],
                batch_size: int = 32, max_new_tokens: int = 16) -> dict[str, float]:
    """Exact-match accuracy per task (answers compared after stripping and lower-casing)."""
    return {t: d["exact_match"] for t, d in score_tasks(model, tokenizer, template, examples, batch_size,
                                                        max_new_tokens).items()}


def task_baselines(examples: list[Example]) -> dict[str, dict[str, float]]:
    """Per task: "n", "chance" (the mean of 1 / number of choices; 0 for free-form answers) and
    "majority" (the rate of the most common answer among ``examples``, or of always picking the
    option at the same position, whichever is higher)."""
    from collections import Counter

    out = {}
    for task in dict.fromkeys(e.task for e in examples):
        es = [e for e in examples if e.task == task]
        majority = Counter(e.response for e in es).most_common(1)[0][1] / len(es)
        has_choices = all(e.choices for e in es)
        if has_choices:  # also "always pick the k-th option" (choices that change per example)
            for k in range(max(len(e.choices) for e in es)):
                majority = max(majority, sum(len(e.choices) > k and e.choices[k] == e.response for e in es) / len(es))
        chance = sum(1 / len(e.choices) for e in es) / len(es) if has_choices else 0.0
        out[task] = {"n": len(es), "chance": chance, "majority": majority}
    return out


@torch.no_grad()
def choice_scores(model: nn.Module, tokenizer, template: Template, examples: list[Example],
                  batch_size: int = 64) -> list[list[float]]:
    """For each example (all must have ``choices``), the log-probability the model gives each choice's completion
    (choice + end token) after the prompt, in the order of ``e.choices``: a list of ``len(e.choices)`` floats."""
    from utils.dpo import response_logprobs

    if not examples or any(not e.choices for e in examples):
        raise ValueError("choice_scores needs examples that all have choices")
    pairs = [encode_example(tokenizer, template, e.instruction, e.input, c, max_len=model.config.block_size)
             for e in examples for c in e.choices]
    pad = tokenizer.special_tokens.get(EOT, 0)
    was = model.training
    model.eval()
    scores = torch.cat([response_logprobs(model, *batch_examples(pairs[i:i + batch_size], pad))
                        for i in range(0, len(pairs), batch_size)]).tolist()
    model.train(was)
    out, pos = [], 0
    for e in examples:
        out.append(scores[pos:pos + len(e.choices)])
        pos += len(e.choices)
    return out


def choice_picks(model: nn.Module, tokenizer, template: Template, examples: list[Example],
                 batch_size: int = 64) -> list[str]:
    """The choice the model "answers" for each example (all must have ``choices``): the one whose completion
    (choice + end token) it gives the highest log-probability after the prompt (:func:`choice_scores`)."""
    if not examples or any(not e.choices for e in examples):
        raise ValueError("choice_picks needs examples that all have choices")
    return [e.choices[max(range(len(s)), key=s.__getitem__)]
            for e, s in zip(examples, choice_scores(model, tokenizer, template, examples, batch_size))]


def choice_accuracy(model: nn.Module, tokenizer, template: Template, examples: list[Example],
                    batch_size: int = 64) -> dict[str, float]:
    """Multiple-choice accuracy per task: the model "answers" the choice whose completion (response +
    end token) it gives the highest log-probability after the prompt (:func:`choice_picks`). Only examples
    with ``choices``."""
    es = [e for e in examples if e.choices]
    if not es:
        raise ValueError("no example with choices")
    hits: dict[str, list[int]] = {}
    for e, pick in zip(es, choice_picks(model, tokenizer, template, es, batch_size)):
        hits.setdefault(e.task, []).append(int(pick == e.response))
    return {t: sum(v) / len(v) for t, v in hits.items()}


# ---------------------------------------------------------------------------------------------
# The instruction-tuned course model (notebook 07 trains it; tools/finetune.py saves it for notebook 08)
# ---------------------------------------------------------------------------------------------

INSTRUCT_METHODS = ("lora", "full")
# LoRA on every linear layer of every block (copying names from the prompt needs the attention *and*
# the MLPs to change), plus the rows of the three new special tokens (which start as the mean embedding).
INSTRUCT_LORA = {"targets": ("qkv_proj", "out_proj", "gate_up_proj", "down_proj"), "r": 16, "alpha": 32}
INSTRUCT_LR = {"lora": 3e-3, "full": 1e-3}


def train_new_token_rows(model: nn.Module, first_new_id: int) -> nn.Module:
    """Make only the embedding rows ``first_new_id:`` trainable (the tied output layer shares them):
    the gradient of the other rows is zeroed by a hook, so AdamW (no weight decay) leaves them exactly
    as they were."""
    if not isinstance(first_new_id, int) or not 0 < first_new_id < model.wte.weight.shape[0]:
        raise ValueError(f"first_new_id must be an int in (0, {model.wte.weight.shape[0]}), got {first_new_id!r}")
    w = model.wte.weight
    w.requires_grad_(True)
    keep = torch.zeros(w.shape[0], 1, device=w.device, dtype=w.dtype)
    keep[first_new_id:] = 1.0
    w.register_hook(lambda g: g * keep)
    return model


def prepare_instruct_model(model: nn.Module, tokenizer, method: str = "lora") -> object:
    """Turn the course ``model`` (in place) into one ready for instruction tuning by ``method``
    ("lora": :data:`INSTRUCT_LORA` + the new tokens' rows train, the rest is frozen; "full": every
    weight trains). Adds the chat special tokens; returns the new tokenizer."""
    from utils.lora import apply_lora

    if method not in INSTRUCT_METHODS:
        raise ValueError(f"method must be one of {INSTRUCT_METHODS}, got {method!r}")
    V = tokenizer.vocab_size
    tok2 = add_special_tokens(tokenizer, model)
    if method == "lora":
        apply_lora(model, INSTRUCT_LORA["targets"], r=INSTRUCT_LORA["r"], alpha=INSTRUCT_LORA["alpha"])
        train_new_token_rows(model, V)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return tok2


def instruct_pairs(tokenizer, examples: list[Example], mask_prompt: bool = True, max_len: int = 128):
    """(x, y) pairs for :func:`finetune_lm`: every other example in the instruct template, the others in
    the chat template (so the tuned model answers in both)."""
    return [encode_example(tokenizer, INSTRUCT_TEMPLATE if i % 2 == 0 else CHAT_TEMPLATE, ex.instruction, ex.input,
                           ex.response, mask_prompt=mask_prompt, max_len=max_len)
            for i, ex in enumerate(examples)]


def instruct_training_set(corpus, n_per_task: int, task_counts: dict | None = None, seed: int = 0,
                          balance_genres: bool = False) -> list[Example]:
    """The training instructions of the instruction-tuned model: for every task of :data:`TASKS`,
    ``task_counts.get(task, n_per_task)`` examples of the training plays (speakers renamed; with
    ``balance_genres``, as many "genre" examples of each genre), shuffled."""
    task_counts = dict(task_counts or {})
    unknown = [t for t in task_counts if t not in TASKS]
    if unknown:
        raise ValueError(f"task_counts has unknown task(s) {unknown}; choose from {TASKS}")
    out = []
    for task in TASKS:
        n = task_counts.get(task, n_per_task)
        if n:
            out += instruction_data(corpus, "train", n_per_task=n, seed=seed, tasks=(task,), rename_speakers=True,
                                    balance_genres=balance_genres)
    random.Random(seed).shuffle(out)
    return out


_STAGE_KEYS = ("n", "replay", "epochs", "lr")


def _check_stage(stage: dict, name: str = "genre_stage", min_n: int = 3,
                 what_n: str = "genre examples, a third per genre") -> dict:
    """Check an extra stage's settings (``genre_stage`` or ``line_stage`` of :func:`train_instruct_model`)."""
    if not isinstance(stage, dict) or set(stage) != set(_STAGE_KEYS):
        raise ValueError(f"{name} must be a dict with the keys {_STAGE_KEYS}, got {stage!r}")
    if not isinstance(stage["n"], int) or stage["n"] < min_n:
        raise ValueError(f"{name}['n'] must be an int >= {min_n} ({what_n}), got {stage['n']!r}")
    if not isinstance(stage["replay"], int) or stage["replay"] < 0:
        raise ValueError(f"{name}['replay'] must be an int >= 0 (examples of each other task), got {stage['replay']!r}")
    for k in ("epochs", "lr"):
        if not isinstance(stage[k], (int, float)) or not stage[k] > 0:
            raise ValueError(f"{name}[{k!r}] must be a positive number, got {stage[k]!r}")
    return stage


def _check_line_stage(stage: dict) -> dict:
    return _check_stage(stage, "line_stage", 1, "line_speaker examples")


def genre_stage_set(corpus, stage: dict, seed: int = 0) -> list[Example]:
    """The examples of a second, genre stage (``stage`` as in :func:`run_genre_stage`): ``stage["n"]`` "genre"
    examples of the training plays, a third per genre, and ``stage["replay"]`` examples of each other task
    (speakers renamed), drawn with data seed ``seed + 1`` (so not the first stage's draw), shuffled."""
    stage = _check_stage(stage)
    return instruct_training_set(corpus, stage["replay"], {"genre": stage["n"]}, seed + 1, balance_genres=True)


def run_genre_stage(model: nn.Module, tokenizer, stage: dict, seed: int = 0, corpus=None, progress: bool = False):
    """Fine-tune an instruct ``model`` further (in place) on :func:`genre_stage_set` for ``stage["epochs"]`` at
    peak learning rate ``stage["lr"]`` (``stage = {"n": ..., "replay": ..., "epochs": ..., "lr": ...}``).
    Returns ``(model in eval mode, TrainResult)``."""
    from utils.data import load_corpus

    examples = genre_stage_set(corpus if corpus is not None else load_corpus(), stage, seed)
    return _run_stage(model, tokenizer, examples, stage, seed + 1, progress)


def _run_stage(model: nn.Module, tokenizer, examples: list[Example], stage: dict, seed: int, progress: bool):
    """One extra stage of :func:`train_instruct_model`: ``stage["epochs"]`` over ``examples`` at peak learning
    rate ``stage["lr"]``."""
    pairs = instruct_pairs(tokenizer, examples, True, model.config.block_size)
    result = finetune_lm(model, pairs, epochs=stage["epochs"], lr=stage["lr"], pad_id=tokenizer.special_tokens[EOT],
                         seed=seed, progress=progress)
    return model.eval(), result


def line_stage_set(corpus, stage: dict, seed: int = 0) -> list[Example]:
    """The examples of a first, "who speaks the line" stage (``stage = {"n": ..., "replay": ..., "epochs": ...,
    "lr": ...}``): ``stage["n"]`` "line_speaker" examples of the training plays and ``stage["replay"]`` examples of
    each other task (genres balanced; speakers renamed), drawn with data seed ``seed + 2`` (neither the mixed
    stage's draw nor the genre stage's), shuffled. More line_speaker examples than the training plays hold is an
    error, not a silently smaller stage."""
    stage = _check_line_stage(stage)
    out = instruct_training_set(corpus, stage["replay"], {"line_speaker": stage["n"]}, seed + 2, balance_genres=True)
    got = sum(e.task == "line_speaker" for e in out)
    if got < stage["n"]:
        raise ValueError(f"line_stage['n']={stage['n']} but the training plays hold only {got} line_speaker "
                         "examples; ask for at most that many (or more epochs)")
    return out


def run_line_stage(model: nn.Module, tokenizer, stage: dict, seed: int = 0, corpus=None, progress: bool = False):
    """Fine-tune a model prepared for instruction tuning (in place) on :func:`line_stage_set` for
    ``stage["epochs"]`` at peak learning rate ``stage["lr"]``. Returns ``(model in eval mode, TrainResult)``.

    Why a stage of its own: the lookup this task needs (find the quoted line in the passage, then the tag above it)
    appears only after thousands of steps of this task. Screened (benchmarks/line_stage_screens.py), not (yet) in
    :data:`INSTRUCT_RECIPE`: every variant that taught the lookup cost the genre answer (:data:`LINE_ADAPTER`, an
    adapter switched on for this question only, does not)."""
    from utils.data import load_corpus

    examples = line_stage_set(corpus if corpus is not None else load_corpus(), stage, seed)
    return _run_stage(model, tokenizer, examples, stage, seed + 2, progress)


def train_instruct_model(examples: list[Example] | None = None, *, method: str = "lora", mask_prompt: bool = True,
                         n_per_task: int = 300, task_counts: dict | None = None, epochs: float = 4.0,
                         lr: float | None = None, batch_size: int = 16, seed: int = 0, device=None,
                         progress: bool = False, balance_genres: bool = False, loss_per_example: bool = False,
                         base=None, genre_stage: dict | None = None, line_stage: dict | None = None):
    """The course model instruction-tuned on ``examples`` (default: :func:`instruct_training_set`:
    ``n_per_task`` examples per task or ``task_counts[task]``, speakers renamed, genres balanced if
    ``balance_genres``; with ``loss_per_example``, the loss is :func:`example_mean_loss`). Returns ``(model, tokenizer, result)``: the
    model in eval mode on ``device`` (default CPU), the tokenizer with the chat special tokens, and
    :func:`finetune_lm`'s TrainResult. ``base``: a checkpoint path for :func:`utils.pretrain.load_course_model`
    (default: the committed course model), e.g. a larger model from ``python -m utils.pretrain --n-layer 8
    --out ...``. ``line_stage``: before that training, a stage on "line_speaker" examples only
    (:func:`run_line_stage`). ``genre_stage``: after it, a stage on "genre" examples (:func:`run_genre_stage`).
    The TrainResult returned is the mixed stage's. Notebook 07 and ``tools/finetune.py`` both call this."""
    from utils.data import load_corpus
    from utils.pretrain import load_course_model

    if genre_stage is not None:
        _check_stage(genre_stage)
    if line_stage is not None:
        _check_line_stage(line_stage)
    model, tok = load_course_model(base, device=device)
    tok2 = prepare_instruct_model(model, tok, method)
    if line_stage is not None:
        run_line_stage(model, tok2, line_stage, seed, progress=progress)
    if examples is None:
        examples = instruct_training_set(load_corpus(), n_per_task, task_counts, seed, balance_genres)
    if any(e.task not in TASKS for e in examples):
        raise ValueError("examples must come from instruction_data")
    pairs = instruct_pairs(tok2, examples, mask_prompt, model.config.block_size)
    result = finetune_lm(model, pairs, epochs=epochs, batch_size=batch_size, lr=lr or INSTRUCT_LR[method],
                         pad_id=tok2.special_tokens[EOT], seed=seed, progress=progress,
                         compute_loss=example_mean_loss if loss_per_example else None)
    if genre_stage is not None:
        run_genre_stage(model, tok2, genre_stage, seed, progress=progress)
    return model.eval(), tok2, result


# the instruction-tuned model saved by tools/finetune.py (the settings of notebook 07's default mode)
# Full fine-tuning: LoRA (r=16 on every linear layer) did not learn to copy names in the same number of
# steps (held-out exact match <= 0.03 on every reading task), full fine-tuning did.
# Twice the examples of "who speaks the line" (the hardest reading task); chosen on the validation plays, never on
# the test plays. The extra examples did not teach the choice between the passage's two speakers (it stayed at
# chance on the validation plays, as it did after 1,200 steps of that task alone: it rises later, see "Steps, not
# capacity" below); the renamed speakers (above) made the copying better.
# Genre: with the genre examples drawn in the training plays' proportions (1,233 history, 625 comedy, 542 tragedy
# of 2,400) and half the "continue" examples (1,200), the genre answer collapsed to "history". On the validation
# plays (200 items per task, training seeds 0 / 1; genre majority rate 0.370), genre exact match:
#   that recipe                                        0.330 / 0.335  ("history" for 199 and 200 of 200)
#   genre examples balanced by genre (balance_genres)  0.330 / 0.360
#   balanced, 3,300 genre examples                     0.465 / 0.340
#   balanced, example_mean_loss                        0.335 / not run (seed 0 had collapsed)
#   balanced, "continue" back to 2,400 (this recipe)   0.515 / 0.450
# The rule, fixed before the runs: genre >= majority + 0.05 on both seeds, and no reading task's 2-seed mean
# exact match below the old recipe's by more than its seed range (at least 0.03). Only this recipe passed
# (first_speaker 0.770 / 0.835, line_speaker 0.395 / 0.430, speakers 0.235 / 0.260; the old recipe 0.865 / 0.740,
# 0.405 / 0.355, 0.345 / 0.195). Why it helps is a guess: "continue" is the one task that trains on the plays' own
# text, where the genre signal lives. Its genre answers are still skewed: seed 1 answered "comedy" for 182 of 200 passages. On the test
# plays (reported, never chosen on; 3 seeds) genre exact match is 0.390 / 0.360 / 0.360 against a majority rate of
# 0.350 (the old recipe: 0.340 on every seed): above it, but by much less than on the validation plays.
# Genre stage (run_genre_stage): the genre answer of that recipe still leaned to one or two genres (seed 0 never said
# "tragedy" on the validation plays). A second stage after the mixed training: 2,400 more genre examples (a third per
# genre, data seed + 1) and `replay` examples of each other task, one epoch. Validation plays, 200 items per task,
# exact match genre | first_speaker | line_speaker | speakers (genre majority 0.370, chance 0.333):
#   no genre stage (seeds 0 / 1 / 2)            0.515 / 0.450 / 0.495 | 0.770 / 0.835 / 0.780 | 0.395 / 0.430 / 0.385 | 0.235 / 0.260 / 0.290
#   genre only, lr 3e-4 (seed 0)                 0.595 | 0.405 | 0.310 | 0.170  (the reading answers are forgotten)
#   genre only, lr 1e-3 (seed 0)                 0.570 | 0.000 | 0.000 | 0.000
#   replay 600 each, lr 3e-4 (seed 0)            0.505 | 0.735 | 0.360 | 0.250
#   replay 150 each, lr 3e-4 (seeds 0 / 1)       0.625 / 0.565 | 0.710 / 0.665 | 0.375 / 0.325 | 0.240 / 0.215
#   replay 300 each, lr 3e-4 (seeds 0 / 1)       0.550 / 0.575 | 0.715 / 0.690 | 0.445 / 0.385 | 0.270 / 0.245
#   replay 300 each, lr 1e-4 (seeds 0 / 1 / 2)   0.535 / 0.580 / 0.565 | 0.740 / 0.815 / 0.775 | 0.410 / 0.425 / 0.420 | 0.225 / 0.245 / 0.320
# Rules fixed before each run: genre well above the first stage's (seed 0 >= 0.550, seed 1 >= 0.500, mean +0.05) with no
# reading task's mean lower by more than the first stage's seed range (at least 0.03). Replay 150 and 300 at lr 3e-4
# lost too much first_speaker (means 0.688 and 0.703 against 0.803). The lr 1e-4 stage (this recipe) kept the reading
# tasks but missed the seed-0 gate by 0.015; it was adopted on a fresh, paired check on training seed 2 (genre >= the
# first stage's + 0.05, reading tasks within the ranges), fixed before that run. Seed 0's stages in this table ran on
# the saved model of that time (the first stage rounded to bfloat16); the recipe runs the stage on the fp32 weights.
# Counterfactual twins (line_twin: the same passage, the other speech's line quoted, the answer flipped): the saved model
# gives the same name to a line_speaker question and its twin for 167 of 176 validation passages (161 of 176 on the
# test plays): it ignores the quoted line. Tried: the 4,800 line_speaker examples as 2,400 training passages asked both
# ways (each beside its twin, so that ignoring the quote cannot lower the loss), the rest of the recipe unchanged (genre
# stage included). The rule, fixed before the runs: best-scored choice >= 0.60 on both seeds and every other task's exact
# match within 0.05 of this recipe's. Validation plays, 200 items per task, seeds 0 / 1: line_speaker best-scored choice
# 0.565 / 0.500, the same name for both twins in 154 / 156 of 166 passages; exact match genre 0.515 / 0.540,
# first_speaker 0.765 / 0.765, speakers 0.280 / 0.315. Not adopted: the model still does not read the quote.
# Steps, not capacity (benchmarks/line_speaker_steps.py -> results/line_speaker_steps.json): fine-tuned on line_speaker
# alone (fresh renamed examples of the training plays, lr 1e-3, batch 16, seed 0), the best-scored choice on the
# validation plays is 0.585 after 1,000 steps, 0.720 after 2,000 and 0.885 after 5,965 (new items of the training plays
# 0.940): the model learns to read the quote, late. This recipe gives the task 4,800 examples in its mixed stage (300
# batches). Line-stage screens (benchmarks/line_stage_screens.py -> results/line_stage_screens.json, one entry per run;
# notebook 07 shows the table): this recipe with an extra stage of line_speaker examples (run_line_stage, 1,000 or
# 2,000 steps) that trains every weight, the attention matrices of every block or of some, or only their query/key rows,
# before or after the mixed stage. The rule, fixed before the first screen: line_speaker best-scored choice >= 0.60 and
# no other task's exact match more than 0.05 below this recipe's, on seeds 0 and 1 (validation plays). It was written
# with this recipe's seed-0 numbers of that time (genre 0.535, first_speaker 0.740, speakers 0.225: a run whose genre
# stage started from weights rounded to bfloat16); the recipe run by the screening script itself (every stage on fp32
# weights) has genre 0.485, first_speaker 0.745, speakers 0.285. Seed 0: every variant that taught the lookup lowered
# genre (0.370 to 0.450); attention of the upper two blocks alone kept genre (0.510) but not the lookup (choice 0.500),
# of the lower two alone neither (0.420, 0.540), the query/key rows alone neither (0.315, 0.480). One variant, the
# attention of every block before the mixed stage (genre 0.450, choice 0.685), passes against the script's own recipe
# run and fails against the numbers the rule was written with. At seed 1 (a confirmatory run, its rule fixed before) it
# lost the genre answer outright: 0.285 against the recipe's 0.585 (choice 0.690). Not adopted.
# L2-SP line stage (finetune_lm(anchor=...), line_stage_screens.py --anchor; results/line_stage_screens_anchor.json, an
# Intel Xeon, so its own recipe row: genre 0.500, first_speaker 0.745, speakers 0.285, choice 0.520 at seed 0). The
# hypothesis: genre is lost to the weights' drift, so a pull toward the pre-stage weights keeps it. The first variant
# above (every weight, before) with anchor 10 / 3 / 5 (the ladder fixed before the runs): choice 0.530 / 0.620 / 0.550,
# genre 0.410 / 0.445 / 0.460. No pass (3 lost genre, 5 and 10 the lookup); at 10 genre fell although the lookup did
# not form. Not adopted.
# More steps (line_stage_screens.py --mixed-scale 3: the mixed stage's examples of every task x3, one epoch; same Xeon,
# same recipe row, one rule fixed before each run, seed 0): without a line stage, choice 0.490 (no lookup) but genre
# 0.540, first_speaker 0.870, speakers 0.560 (every other task up; the rule for adopting it came after this run: below);
# after the attention line stage, choice 0.865 (the same name for both twins in 52 of 166 passages) but genre 0.360;
# the same with the genre stage at lr 3e-4, choice 0.820, genre 0.340. Not adopted: the lookup and genre compete.
# Mixed x3 without a line stage as a recipe for the other tasks (a rule written before its seed-1 run: genre,
# first_speaker and speakers >= the same-seed recipe row at seeds 0 and 1, choice within 0.05): at seed 1 (recipe row on
# this Xeon: genre 0.550, first_speaker 0.780, speakers 0.255) it scored 0.540, 0.885, 0.510: genre 0.010 short, so not
# adopted, although first_speaker and speakers rose at both seeds.
# Interleaved (line_stage_screens.py --n 0 --mixed-scale 3 --mixed-count ...; same Xeon, same rule, seed 0, each run's
# ladder fixed before it): the lookup's examples spread through the mixed stage instead of a stage of their own
# (line_speaker 32,000 among 7,200 of every other task): choice 0.770, first_speaker 0.900, speakers 0.530, but genre
# 0.435 (sequential: 0.360). With genre's share of the stage restored (genre 14,400): genre 0.405, choice 0.590. Not
# adopted: interleaving shrinks the genre cost but does not remove it, and more genre examples do not buy it back.
# Capacity (line_stage_screens.py --base, results/line_stage_screens_base8.json): the interleaved variant on a base
# with twice the blocks (python -m utils.pretrain --n-layer 8; 3.9M parameters), against that base's recipe rows.
# Seed 0: genre 0.555 (its recipe 0.555), choice 0.655 (0.495): pass. Seed 1: genre 0.480 (0.505), choice 0.530
# (0.500): the lookup did not form. With line_speaker 64,000 at seed 1: choice 0.775 but genre 0.410, so once the
# lookup forms the competition is there on the bigger base too: more capacity of this kind does not remove it.
# What is lost (genre_picks, reruns that repeated those rows exactly; results/line_stage_screens_*genre_picks.json):
# with each answer's prior removed, genre accuracy falls as much or more (course model seed 0: 0.525 -> 0.460;
# 8-block seed 1: 0.595 -> 0.460): the lookup costs the reading of the passage's genre evidence, not a lean.
INSTRUCT_RECIPE = {"method": "full", "n_per_task": 2400, "task_counts": {"line_speaker": 4800}, "balance_genres": True,
                   "epochs": 1.0, "lr": 1e-3, "genre_stage": {"n": 2400, "replay": 300, "epochs": 1.0, "lr": 1e-4},
                   "seed": 0, "rename_speakers": True, "test_per_task": 200, "test_seed": 1}
# the seeds whose spread tools/finetune.py --seeds measures (seed 0 is the saved model)
INSTRUCT_SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------
# A task adapter: capacity for "who speaks the line" that shares no weight with the other tasks
# ---------------------------------------------------------------------------------------------

# Every screen above that taught the lookup in the shared weights cost the genre answer. A LoRA adapter on the FROZEN
# saved instruct model, trained on line_speaker examples only and switched on for that question alone
# (utils.lora.lora_disabled for every other), leaves every other answer exactly the saved model's. The rule, fixed before
# the runs: line_speaker best-scored choice >= 0.60 on the validation plays (200 items) at every adapter seed
# (results/line_adapter_screens.json; an Intel Xeon, 2 cores). 32,000 examples, one epoch (2,000 steps): seed 0 0.755,
# seed 1 0.570 (fail). Then, written after that failure and so with a fresh seed 2: the same examples twice (4,000
# steps; the training plays hold about 40,000 such examples): seeds 1 / 2 / 0 0.895 / 0.865 / 0.875, all pass: this
# recipe. On the test plays (reported, never chosen on; results/finetuning_line_adapter_seeds.json), routed, exact match
# 0.897 +- 0.015 and best-scored choice 0.918 +- 0.013 over the 3 seeds (the saved model alone: 0.410 and 0.525;
# chance 0.500). Left on for every question, the same adapter wipes out the genre and "which speakers" answers (test
# genre exact match 0.000 to 0.030 over the seeds): the routing is what keeps them.
LINE_ADAPTER = {"targets": INSTRUCT_LORA["targets"], "r": 16, "alpha": 32, "n": 32000, "epochs": 2.0, "lr": 3e-3,
                "seed": 0}
# the tasks answered with the adapter on (every other task with it off)
ADAPTER_TASKS = ("line_speaker",)
# the adapter seeds whose spread tools/finetune.py --adapter-seeds measures (seed 0 is the saved adapter)
LINE_ADAPTER_SEEDS = (0, 1, 2)
_FIXED_QUESTIONS = {"Is this passage from a comedy, a history or a tragedy?": "genre",
                    "Who speaks first in this passage?": "first_speaker",
                    "Which speakers appear in this passage?": "speakers"}


def task_of(instruction: str) -> str | None:
    """The task of :data:`TASKS` whose question ``instruction`` is (in :func:`instruction_data`'s wording), or
    ``None`` for any other instruction (e.g. one typed by a user)."""
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    text = instruction.strip()
    if text in _FIXED_QUESTIONS:
        return _FIXED_QUESTIONS[text]
    head, tail = _line_question("\0").split("\0")
    if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
        return "line_speaker"
    if text.startswith("Continue this speech as ") and text.endswith("."):
        return "continue"
    return None


def train_line_adapter(model: nn.Module, tokenizer, adapter: dict | None = None, seed: int | None = None,
                       corpus=None, progress: bool = False):
    """Put a LoRA adapter (``adapter``, default :data:`LINE_ADAPTER`: targets, r, alpha) on an instruct ``model``
    whose own weights stay frozen, and train it (in place) on ``adapter["n"]`` line_speaker examples of the training
    plays (:func:`line_stage_set` with no replay: data seed ``seed + 2``, speakers renamed) for ``adapter["epochs"]``
    at peak learning rate ``adapter["lr"]``. LoRA's A matrices are drawn after ``torch.manual_seed(seed)``.
    Returns ``(model in eval mode, TrainResult)``; answer with :func:`score_routed` / :func:`answer_routed`."""
    from utils.data import load_corpus
    from utils.lora import apply_lora, lora_layers

    adapter = dict(LINE_ADAPTER if adapter is None else adapter)
    missing = [k for k in LINE_ADAPTER if k not in adapter]
    if missing:
        raise ValueError(f"adapter lacks {missing}; give every key of LINE_ADAPTER: {sorted(LINE_ADAPTER)}")
    if lora_layers(model):
        raise ValueError("this model already has LoRA layers (an instruct model of recipe 'lora'?); the line adapter "
                         "needs a model whose own weights it can leave frozen: use a fully fine-tuned instruct model")
    seed = adapter["seed"] if seed is None else seed
    torch.manual_seed(seed)
    apply_lora(model, adapter["targets"], r=adapter["r"], alpha=adapter["alpha"])  # freezes every other weight
    model.adapter_tasks = ADAPTER_TASKS  # what adapter_for routes to the adapter
    stage = {"n": adapter["n"], "replay": 0, "epochs": adapter["epochs"], "lr": adapter["lr"]}
    return run_line_stage(model, tokenizer, stage, seed, corpus=corpus if corpus is not None else load_corpus(),
                          progress=progress)


def adapter_for(model: nn.Module, task: str | None):
    """A context in which ``model`` answers ``task``: for a model with a task adapter (``model.adapter_tasks``, set by
    :func:`train_line_adapter` and by ``load_instruct_model(line_adapter=True)``) the adapter is on for those tasks
    and off (:func:`utils.lora.lora_disabled`) for any other task or an unknown one (``None``). Any other model,
    including one whose own LoRA layers are its fine-tuning, is left as it is."""
    import contextlib

    from utils.lora import lora_disabled

    tasks = getattr(model, "adapter_tasks", None)
    if tasks is None or task in tasks:
        return contextlib.nullcontext(model)
    return lora_disabled(model)


def score_routed(model: nn.Module, tokenizer, template: Template, examples: list[Example], batch_size: int = 32,
                 max_new_tokens: int = 16) -> tuple[dict, dict]:
    """:func:`score_tasks` and :func:`choice_accuracy` with each task answered in its :func:`adapter_for` context
    (the line adapter on for :data:`ADAPTER_TASKS` only). Returns ``(scores, choice)`` as those two functions do."""
    if not examples:
        raise ValueError("examples is empty")
    scores, choice = {}, {}
    for task in dict.fromkeys(e.task for e in examples):
        es = [e for e in examples if e.task == task]
        with adapter_for(model, task):
            scores.update(score_tasks(model, tokenizer, template, es, batch_size, max_new_tokens))
            if all(e.choices for e in es):
                choice.update(choice_accuracy(model, tokenizer, template, es))
    return scores, choice


def answer_routed(model: nn.Module, tokenizer, template: Template | None, instruction: str, input: str = "",
                  max_new_tokens: int = 24, stop: str | None = None) -> str:
    """:func:`answer` in the :func:`adapter_for` context of the instruction's task (:func:`task_of`)."""
    with adapter_for(model, task_of(instruction)):
        return answer(model, tokenizer, template, instruction, input, max_new_tokens, stop)


@torch.no_grad()
def response_loss(model: nn.Module, tokenizer, template: Template, examples: list[Example],
                  batch_size: int = 32) -> float:
    """Mean cross-entropy (nats per token) of the reference responses (and end token) after their
    prompts: how well the model predicts the right answer, even when its greedy answer is wrong."""
    from utils.dpo import response_logprobs

    if not examples:
        raise ValueError("examples is empty")
    pairs = [encode_example(tokenizer, template, e.instruction, e.input, e.response, max_len=model.config.block_size)
             for e in examples]
    pad = tokenizer.special_tokens.get(EOT, 0)
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        x, y = batch_examples(pairs[i:i + batch_size], pad)
        total -= float(response_logprobs(model, x, y).sum())
        count += int((y != -100).sum())
    model.train(was)
    return total / count
