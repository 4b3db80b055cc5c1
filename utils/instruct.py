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
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["Template", "INSTRUCT_TEMPLATE", "CHAT_TEMPLATE", "CHAT_SPECIALS", "render", "encode_example",
           "add_special_tokens", "Example", "instruction_data", "TASKS", "FACTUAL_TASKS", "batch_examples",
           "finetune_lm", "answer", "answer_batch", "exact_match", "task_baselines", "choice_accuracy"]

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


TASKS = ("genre", "speaker_choice", "speakers", "continue")
FACTUAL_TASKS = ("genre", "speaker_choice", "speakers")
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


def instruction_data(corpus, split: str, n_per_task: int = 200, seed: int = 0, max_chars: int = 160,
                     tasks=TASKS) -> list[Example]:
    """Instruction examples built from the passages of one split (so splits never share a play).

    - "genre": *Is this passage from a comedy, a history or a tragedy?* (3 choices);
    - "speaker_choice": *Who speaks these lines: X or Y?* (the true speaker and another speaker of
      the same scene, in random order);
    - "speakers": *Who speaks in this exchange?* (two consecutive speeches; answer "A and B");
    - "continue": *Continue this speech as SPEAKER.* (the next line; generative).
    """
    from utils.data import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
    if not isinstance(n_per_task, int) or n_per_task < 1:
        raise ValueError(f"n_per_task must be a positive int, got {n_per_task!r}")
    rng = random.Random(seed)
    ps = [p for p in corpus.passages if p.split == split and p.text.count("\n") >= 2]
    by_scene: dict[tuple, list] = {}
    for i, p in enumerate(ps):
        by_scene.setdefault((p.play, p.act, p.scene), []).append(i)
    out: list[Example] = []
    if "genre" in tasks:
        cand = [p for p in ps if p.genre in _GENRE_WORD and len(p.text) >= 120]
        for p in rng.sample(cand, min(n_per_task, len(cand))):
            out.append(Example("genre", "Is this passage from a comedy, a history or a tragedy?",
                               _body(p.text, max_chars), _GENRE_WORD[p.genre], p.play,
                               tuple(_GENRE_WORD.values())))
    if "speaker_choice" in tasks:
        cand = []
        for idxs in by_scene.values():
            names = {_name(ps[i].speaker) for i in idxs}
            if len(names) >= 2:
                cand += [(i, sorted(names - {_name(ps[i].speaker)})) for i in idxs if len(ps[i].text) >= 60]
        for i, others in rng.sample(cand, min(n_per_task, len(cand))):
            p = ps[i]
            true, other = _name(p.speaker), rng.choice(others)
            a, b = (true, other) if rng.random() < 0.5 else (other, true)
            out.append(Example("speaker_choice", f"Who speaks these lines: {a} or {b}?", _body(p.text, max_chars),
                               true, p.play, (a, b)))
    if "speakers" in tasks:
        cand = [(i, j) for idxs in by_scene.values() for i, j in zip(idxs, idxs[1:])
                if _name(ps[i].speaker) != _name(ps[j].speaker)]
        for i, j in rng.sample(cand, min(n_per_task, len(cand))):
            a, b = ps[i], ps[j]
            text = a.text.split("\n")[0] + "\n" + _body(a.text, max_chars // 2) + "\n" + \
                b.text.split("\n")[0] + "\n" + _body(b.text, max_chars // 2)
            out.append(Example("speakers", "Who speaks in this exchange?", text,
                               f"{_name(a.speaker)} and {_name(b.speaker)}", a.play))
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
                compute_loss=None):
    """Next-token training on (x, y) pairs (y = -100 where no loss) with :func:`utils.training.train`;
    returns its TrainResult. ``compute_loss(model, (X, Y))`` defaults to the model's own
    cross-entropy (which ignores -100)."""
    import math

    from utils.training import TrainConfig, default_loss, train

    if not pairs:
        raise ValueError("pairs is empty")
    n = len(pairs)
    steps = max(1, math.ceil(epochs * n / batch_size))
    gen = torch.Generator().manual_seed(seed)
    state = {"order": torch.randperm(n, generator=gen), "pos": 0}

    def get_batch(split: str):
        if split != "train":
            return batch_examples(pairs[:batch_size], pad_id)
        if state["pos"] + batch_size > n:
            state["order"], state["pos"] = torch.randperm(n, generator=gen), 0
        sel = state["order"][state["pos"]:state["pos"] + batch_size].tolist()
        state["pos"] += batch_size
        return batch_examples([pairs[i] for i in sel], pad_id)

    tcfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 10),
                       weight_decay=0.0, eval_interval=0, eval_iters=1, seed=seed, progress=progress,
                       log_interval=max(1, steps // 20))
    torch.manual_seed(seed)
    return train(model, config=tcfg, get_batch=get_batch, compute_loss=compute_loss or default_loss)


def answer(model: nn.Module, tokenizer, template: Template | None, instruction: str, input: str = "",
           max_new_tokens: int = 24, stop: str | None = None) -> str:
    """Greedy answer of ``model`` to one instruction; ``template=None`` feeds the plain text
    ``instruction + "\\n" + input + "\\n"`` (a base model's "text" flavour). Stops at ``<|endoftext|>``,
    at the template's end token (``<|end|>`` for chat) or at ``stop``."""
    return answer_batch(model, tokenizer, template, [(instruction, input)], max_new_tokens, stop)[0]


@torch.no_grad()
def answer_batch(model: nn.Module, tokenizer, template: Template | None, items: list[tuple[str, str]],
                 max_new_tokens: int = 24, stop: str | None = None) -> list[str]:
    """:func:`answer` for many (instruction, input) pairs at once (batched greedy decoding)."""
    from utils.generation import generate

    if template is None:
        prompts = [f"{ins}\n{inp}\n" for ins, inp in items]
    else:
        prompts = [render(template, ins, inp)[0] for ins, inp in items]
    block = model.config.block_size
    ids = [tokenizer.encode(p, allowed_special="all")[-(block - max_new_tokens):] for p in prompts]
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


def exact_match(model: nn.Module, tokenizer, template: Template | None, examples: list[Example],
                batch_size: int = 32, max_new_tokens: int = 12) -> dict[str, float]:
    """Exact-match accuracy per task (answers compared after stripping and lower-casing)."""
    hits: dict[str, list[int]] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        got = answer_batch(model, tokenizer, template, [(e.instruction, e.input) for e in chunk], max_new_tokens,
                           stop="\n" if template is None else None)
        for e, g in zip(chunk, got):
            hits.setdefault(e.task, []).append(int(g.strip().lower() == e.response.strip().lower()))
    return {t: sum(v) / len(v) for t, v in hits.items()}


def task_baselines(examples: list[Example]) -> dict[str, dict[str, float]]:
    """Per task: "chance" (1 / number of choices; 0 for free-form answers) and "majority" (the rate
    of the most common answer among ``examples``, or of always picking the same option position,
    whichever is higher)."""
    from collections import Counter

    out = {}
    for task in dict.fromkeys(e.task for e in examples):
        es = [e for e in examples if e.task == task]
        majority = Counter(e.response for e in es).most_common(1)[0][1] / len(es)
        if es[0].choices:  # also "always pick the k-th option" (choices that change per example)
            for k in range(len(es[0].choices)):
                majority = max(majority, sum(e.choices[k] == e.response for e in es) / len(es))
        out[task] = {"n": len(es), "chance": (1 / len(es[0].choices)) if es[0].choices else 0.0,
                     "majority": majority}
    return out


@torch.no_grad()
def choice_accuracy(model: nn.Module, tokenizer, template: Template, examples: list[Example],
                    batch_size: int = 64) -> dict[str, float]:
    """Multiple-choice accuracy per task: the model "answers" the choice whose completion (response +
    end token) it gives the highest log-probability after the prompt. Only examples with ``choices``."""
    from utils.dpo import response_logprobs

    es = [e for e in examples if e.choices]
    if not es:
        raise ValueError("no example with choices")
    pairs, owner = [], []
    for k, e in enumerate(es):
        for c in e.choices:
            pairs.append(encode_example(tokenizer, template, e.instruction, e.input, c,
                                        max_len=model.config.block_size))
            owner.append(k)
    pad = tokenizer.special_tokens.get(EOT, 0)
    was = model.training
    model.eval()
    scores = torch.cat([response_logprobs(model, *batch_examples(pairs[i:i + batch_size], pad))
                        for i in range(0, len(pairs), batch_size)])
    model.train(was)
    hits: dict[str, list[int]] = {}
    pos = 0
    for e in es:
        n = len(e.choices)
        best = e.choices[int(scores[pos:pos + n].argmax())]
        pos += n
        hits.setdefault(e.task, []).append(int(best == e.response))
    return {t: sum(v) / len(v) for t, v in hits.items()}
