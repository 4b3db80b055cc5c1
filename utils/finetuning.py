"""Fine-tuning the course GPT: freezing, counting, a classification head, a loop, and the genre task.

- :func:`freeze`, :func:`count_trainable`: choose what trains, and measure how much of the model it is.
- :class:`SequenceClassifier`: a GPT backbone + a linear head over pooled hidden states ("last"
  real token or "mean" over real tokens) of a right-padded batch; optional :class:`PrefixTuning` or
  :class:`PromptTuning` (utils.adapters) in front of the input.
- :func:`finetune_classifier`: trains it with :func:`utils.training.train` (same optimizer,
  schedule, clipping, progress bar), only parameters with ``requires_grad``; :func:`accuracy`.
- :func:`genre_dataset`: passages of comedies, histories and tragedies, split by play, as padded
  token ids + labels (the task of notebook 07's table).
- :func:`training_step_memory`: peak bytes of tensors allocated by one training step (forward,
  backward, optimizer step), so methods are compared on what training them costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.adapters import PrefixTuning, PromptTuning, soft_prompt_hidden_states

__all__ = ["freeze", "count_trainable", "SequenceClassifier", "ClassifierData", "genre_dataset",
           "pad_right", "FinetuneConfig", "finetune_classifier", "accuracy", "training_step_memory",
           "GENRE_CLASSES", "POOLINGS", "predict", "tfidf_baseline", "METHODS", "METHOD_LR", "prepare_method", "method_lr", "train_genre_classifier", "INIT_TEXT", "run_method",
           "GENRE_RECIPE", "FinetunedConfig", "FinetunedWeights", "trained_tensors", "save_finetuned",
           "load_genre_classifier", "load_instruct_model", "GENRE_CLASSIFIER_FILE", "INSTRUCT_MODEL_FILE",
           "LINE_ADAPTER_FILE"]

GENRE_CLASSES = ("comedies", "histories", "tragedies")
POOLINGS = ("last", "mean")


def freeze(model: nn.Module, trainable: bool = False) -> nn.Module:
    """Set ``requires_grad`` of every parameter of ``model`` to ``trainable`` (default: freeze)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze needs an nn.Module, got {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(trainable)
    return model


def count_trainable(model: nn.Module) -> dict[str, float]:
    """{"trainable": n, "total": n, "percent": 100 * trainable / total}, tied weights counted once."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def _check_right_padded(mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.shape != idx.shape:
        raise ValueError(f"attention_mask must be (B, T) = {tuple(idx.shape)} like idx, got "
                         f"{getattr(mask, 'shape', type(mask).__name__)}")
    mask = mask.bool()
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("a row of attention_mask has no real token")
    expected = torch.arange(idx.shape[1], device=idx.device)[None] < lengths[:, None]
    if not torch.equal(mask, expected):
        raise ValueError("attention_mask must be right-padded (1...1 0...0 in every row); pad on the right "
                         "with utils.finetuning.pad_right")
    return mask


class SequenceClassifier(nn.Module):
    """GPT backbone + linear head: idx (B, T) right-padded, attention_mask (B, T) -> logits (B, n_classes).

    ``pooling="last"``: the hidden state of each row's last real token (in a causal model the only
    position that has read the whole input); ``"mean"``: the average over real tokens.
    ``prefix`` / ``prompt``: a :class:`PrefixTuning` or :class:`PromptTuning` to run with the
    backbone (at most one). The head is ``head`` (n_embd -> n_classes); its parameters train unless
    you freeze them.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, pooling: str = "last",
                 prefix: PrefixTuning | None = None, prompt: PromptTuning | None = None):
        super().__init__()
        if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if prefix is not None and prompt is not None:
            raise ValueError("use a prefix or a soft prompt, not both")
        if prefix is not None and not isinstance(prefix, PrefixTuning):
            raise TypeError(f"prefix must be a PrefixTuning, got {type(prefix).__name__}")
        if prompt is not None and not isinstance(prompt, PromptTuning):
            raise TypeError(f"prompt must be a PromptTuning, got {type(prompt).__name__}")
        self.backbone, self.pooling, self.n_classes = backbone, pooling, n_classes
        self.prefix, self.prompt = prefix, prompt
        p0 = next(backbone.parameters())
        self.head = nn.Linear(backbone.config.n_embd, n_classes).to(device=p0.device)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.backbone.config

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, n_embd): the backbone's final-norm output for the real tokens (prefix/prompt applied)."""
        if self.prompt is not None:
            return soft_prompt_hidden_states(self.backbone, idx, self.prompt)
        if self.prefix is not None:
            return self.backbone.hidden_states(idx, attention_mask=attention_mask, past_key_values=self.prefix(1))
        if hasattr(self.backbone, "hidden_states"):
            return self.backbone.hidden_states(idx, attention_mask=attention_mask)
        return soft_prompt_hidden_states(self.backbone, idx, None)

    def features(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (B, n_embd)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(idx, dtype=torch.bool)
        mask = _check_right_padded(attention_mask, idx)
        h = self.hidden_states(idx, mask)
        if self.pooling == "last":
            return h[torch.arange(idx.shape[0], device=idx.device), mask.sum(1) - 1]
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(idx, attention_mask))


def pad_right(seqs: list[list[int]], pad_id: int, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (and crop to ``max_len``) token lists: (ids (N, T), mask (N, T) bool)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_right needs a non-empty list of non-empty token lists")
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return ids, mask


@dataclass
class ClassifierData:
    """Token ids (N, T) right-padded, mask (N, T), labels (N,), each row's play, and the text the
    ids decode to (what the model sees, for text baselines)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    plays: list[str]
    texts: list[str]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    def majority_rate(self) -> float:
        return max(self.class_counts().values()) / len(self)


def genre_dataset(corpus, tokenizer, split: str, *, min_chars: int = 200, max_tokens: int = 64,
                  per_class: int | None = None, seed: int = 0, with_speaker: bool = False) -> ClassifierData:
    """Genre classification (comedy / history / tragedy) of passages of one split of the corpus.

    Passages with at least ``min_chars`` characters (the speaker line included), tokenized and cut
    to their first ``max_tokens`` tokens. ``per_class``: draw at most that many per genre (seeded),
    to balance training sets; None keeps all. The split is by play (utils.data), so train and
    held-out passages never share a play. ``with_speaker=False`` (default) drops the "SPEAKER:"
    line: with it, fine-tuned models learn the character names of the training plays, a shortcut
    that fails on new plays (measured: LoRA r=8 then labelled most of *Othello*, whose Venetian
    names sound like the comedies', a comedy, and scored below chance on the test plays).
    """
    from utils.data import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2, got {max_tokens!r}")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    chosen = []
    gen = torch.Generator().manual_seed(seed)
    for label, genre in enumerate(GENRE_CLASSES):
        ps = [p for p in corpus.passages if p.split == split and p.genre == genre and len(p.text) >= min_chars]
        if per_class is not None and len(ps) > per_class:
            order = torch.randperm(len(ps), generator=gen)[:per_class].sort().values
            ps = [ps[i] for i in order]
        chosen += [(p, label) for p in ps]
    if not chosen:
        raise ValueError(f"no passage of >= {min_chars} characters in split {split!r}")
    eot = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>", 0)
    texts = [p.text if with_speaker else p.text.split("\n", 1)[1] for p, _ in chosen]
    seqs = [tokenizer.encode(t)[:max_tokens] for t in texts]
    ids, mask = pad_right(seqs, eot)
    return ClassifierData(ids, mask, torch.tensor([lab for _, lab in chosen]), [p.play for p, _ in chosen],
                          [tokenizer.decode(s) for s in seqs], GENRE_CLASSES)


@dataclass
class FinetuneConfig:
    """epochs over the training set, batch size, peak learning rate (warmup 10%, cosine to lr/10),
    weight decay (0: LoRA's A and B, prefixes and prompts are not decayed), seed, progress bar."""

    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def finetune_classifier(clf: SequenceClassifier, data: ClassifierData, config: FinetuneConfig | None = None):
    """Train ``clf`` on ``data`` with :func:`utils.training.train` (cross-entropy on the class
    logits; only ``requires_grad`` parameters are optimised). Returns the ``TrainResult``; its
    ``seconds`` divided by ``epochs`` is the time per epoch."""
    from utils.training import TrainConfig, train

    config = config or FinetuneConfig()
    if not any(p.requires_grad for p in clf.parameters()):
        raise ValueError("nothing to train: every parameter of the classifier is frozen")
    n = len(data)
    steps = max(1, math.ceil(config.epochs * n / config.batch_size))
    gen = torch.Generator().manual_seed(config.seed)
    state = {"order": torch.randperm(n, generator=gen), "pos": 0}
    device = next(clf.parameters()).device

    def get_batch(split: str):
        if split != "train":  # train() evaluates at the end: one fixed batch, cheap
            sel = torch.arange(min(n, config.batch_size))
        else:
            if state["pos"] + config.batch_size > n:
                state["order"], state["pos"] = torch.randperm(n, generator=gen), 0
            sel = state["order"][state["pos"]:state["pos"] + config.batch_size]
            state["pos"] += config.batch_size
        mask = data.mask[sel]
        T = int(mask.sum(1).max())  # crop the padding every row of this batch has
        return data.ids[sel, :T].to(device), mask[:, :T].to(device), data.labels[sel].to(device)

    def loss_fn(model, batch):
        ids, mask, labels = batch
        return F.cross_entropy(model(ids, mask).float(), labels)

    tcfg = TrainConfig(max_steps=steps, batch_size=config.batch_size, lr=config.lr, min_lr=config.lr / 10,
                       warmup_steps=max(1, steps // 10), weight_decay=config.weight_decay, eval_interval=0,
                       eval_iters=1, seed=config.seed, progress=config.progress, log_interval=max(1, steps // 20))
    torch.manual_seed(config.seed)
    return train(clf, config=tcfg, get_batch=get_batch, compute_loss=loss_fn)


@torch.no_grad()
def predict(clf: SequenceClassifier, data: ClassifierData, batch_size: int = 64) -> torch.Tensor:
    """Predicted class ids (N,)."""
    was = clf.training
    clf.eval()
    device = next(clf.parameters()).device
    out = []
    for i in range(0, len(data), batch_size):
        mask = data.mask[i:i + batch_size]
        T = int(mask.sum(1).max())
        out.append(clf(data.ids[i:i + batch_size, :T].to(device), mask[:, :T].to(device)).argmax(-1).cpu())
    clf.train(was)
    return torch.cat(out)


def accuracy(clf: SequenceClassifier, data: ClassifierData, batch_size: int = 64) -> float:
    """Fraction of ``data`` classified correctly."""
    return float((predict(clf, data, batch_size) == data.labels).float().mean())


def training_step_memory(clf: nn.Module, batch, loss_fn=None) -> dict[str, int]:
    """Memory of one training step: {"weights": bytes of parameters + buffers, "step": peak bytes of
    the tensors the step allocates (activations, gradients, AdamW's two moments, created on the first
    step), "total": their sum}. Measured with ``peak_tensor_memory`` (any device, CPU included)."""
    from utils.measure import peak_tensor_memory

    ids, mask, labels = batch
    loss_fn = loss_fn or (lambda m, b: F.cross_entropy(m(b[0], b[1]).float(), b[2]))
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-12)
    state = {n: p.detach().clone() for n, p in clf.named_parameters() if p.requires_grad}

    def step():
        loss = loss_fn(clf, (ids, mask, labels))
        loss.backward()
        opt.step()
        return None

    was = clf.training
    clf.train()
    _, peak = peak_tensor_memory(step)
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # leave the model exactly as it was
        for n, p in clf.named_parameters():
            if n in state:
                p.copy_(state[n])
    clf.train(was)
    seen, weights = set(), 0
    for t in list(clf.parameters()) + list(clf.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            weights += t.numel() * t.element_size()
    return {"weights": weights, "step": peak, "total": weights + peak}


# ---------------------------------------------------------------------------------------------
# One method of notebook 07's table, end to end
# ---------------------------------------------------------------------------------------------

METHODS = ("head-only", "full", "lora-r4", "lora-r8", "lora-r16", "adapters", "prefix", "prompt", "qlora-r8")
# Peak learning rates per family (the usual orders of magnitude: small for full fine-tuning, larger
# for few parameters, largest for soft prompts / prefixes). Chosen on the VALIDATION plays, never on
# the test plays: full fine-tuning at 1e-3 memorised the training passages (train loss 0.01) and
# scored below head-only on validation, so it uses 3e-4.
METHOD_LR = {"head-only": 3e-3, "full": 3e-4, "lora": 3e-3, "adapters": 3e-3, "prefix": 1e-2, "prompt": 3e-2,
             "qlora": 3e-3}
LORA_TARGETS_TABLE = ("q", "v")


def prepare_method(backbone: nn.Module, method: str, n_classes: int, *, pooling: str = "mean",
                   init_ids: torch.Tensor | None = None, quantize=None) -> SequenceClassifier:
    """Turn ``backbone`` (changed in place) into a classifier trained by ``method`` (one of
    :data:`METHODS`): which parameters train, and which modules are added. The head always trains.
    ``init_ids``: real token ids to initialise prefixes / soft prompts from. ``quantize``: for
    "qlora-*", a function ``model -> model`` that quantizes the backbone's linear layers."""
    from utils.adapters import add_adapters
    from utils.lora import apply_lora

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    prefix = prompt = None
    if method == "full":
        freeze(backbone, trainable=True)
    elif method.startswith(("lora", "qlora")):
        r = int(method.split("-r")[1])
        if method.startswith("qlora"):
            if quantize is None:
                raise ValueError("qlora needs quantize=: a function that quantizes the backbone to 4 bits")
            freeze(backbone)
            backbone = quantize(backbone) or backbone
        apply_lora(backbone, LORA_TARGETS_TABLE, r=r, alpha=2 * r)
    elif method == "adapters":
        add_adapters(backbone, bottleneck=8)
    else:
        freeze(backbone)
        n = 8
        if method == "prefix":
            prefix = PrefixTuning.for_model(backbone, n)
            if init_ids is not None:
                prefix.init_from_tokens(backbone, init_ids[:n])
        elif method == "prompt":
            prompt = PromptTuning.for_model(backbone, n)
            if init_ids is not None:
                prompt.init_from_tokens(backbone, init_ids[:n])
    return SequenceClassifier(backbone, n_classes, pooling=pooling, prefix=prefix, prompt=prompt)


def method_lr(method: str) -> float:
    return METHOD_LR[method.split("-r")[0]]


def tfidf_baseline(train: ClassifierData, test: ClassifierData, seed: int = 0) -> dict[str, float]:
    """TF-IDF (word 1-2-grams) + logistic regression (scikit-learn) on the same passages, cut to the
    same text the models see (the decoded first tokens). Returns {"accuracy", "seconds", "features"}."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    X = vec.fit_transform(train.texts)
    clf = LogisticRegression(max_iter=2000, C=4.0, random_state=seed).fit(X, train.labels.numpy())
    acc = float((clf.predict(vec.transform(test.texts)) == test.labels.numpy()).mean())
    return {"accuracy": acc, "seconds": time.perf_counter() - t0, "features": X.shape[1]}


def train_genre_classifier(method: str = "full", *, per_class: int = 200, epochs: float = 2.0,
                           max_tokens: int = 64, pooling: str = "mean", seed: int = 0, progress: bool = False,
                           quantize=None, device=None):
    """The course model fine-tuned by ``method`` on genre classification (train plays, ``per_class``
    passages per genre). Returns ``(clf, tokenizer, result)``; ``clf`` is in eval mode, on ``device``
    (default CPU). Evaluate on ``genre_dataset(load_corpus(), tokenizer, "test")`` (held-out plays)."""
    from utils.data import load_corpus
    from utils.pretrain import load_course_model

    model, tokenizer = load_course_model()
    data = genre_dataset(load_corpus(), tokenizer, "train", per_class=per_class, max_tokens=max_tokens, seed=seed)
    torch.manual_seed(seed)
    init = torch.tensor(tokenizer.encode(INIT_TEXT))
    clf = prepare_method(model, method, len(GENRE_CLASSES), pooling=pooling, init_ids=init, quantize=quantize)
    if device is not None:
        clf.to(torch.device(device))
    result = finetune_classifier(clf, data, FinetuneConfig(epochs=epochs, lr=method_lr(method), seed=seed,
                                                           progress=progress))
    return clf.eval(), tokenizer, result


# real text to initialise prefixes and soft prompts from (the first 8 tokens are used)
INIT_TEXT = "Is this a comedy, a history or a tragedy? The play"


def run_method(method: str, train_data: ClassifierData, test_data: ClassifierData, lm_eval: tuple, *,
               epochs: float = 2.0, batch_size: int = 16, seed: int = 0, quantize=None, progress: bool = False,
               model_loader=None, device=None) -> dict:
    """One row of notebook 07's table: fine-tune the course model by ``method`` on ``train_data``
    and measure it. ``lm_eval = (val_ids, n_characters)``: language-model text for forgetting
    (bits/char of the backbone before and after; LoRA and adapters stay active in it).

    Returns {"method", "trainable", "percent" (of the float model's + the head's parameters), "memory_mb" (weights + one training step's peak),
    "seconds_per_epoch" (wall clock, as measured), "accuracy", "bpc_before", "bpc_after"}."""
    from utils.metrics import bits_per_character
    from utils.pretrain import load_course_model

    model, tokenizer = (model_loader or load_course_model)()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    val_ids, n_chars = lm_eval
    bpc_before = bits_per_character(model, val_ids, n_chars)
    torch.manual_seed(seed)
    n_model = count_trainable(model)["total"]  # the float model, before any method changes it
    clf = prepare_method(model, method, len(train_data.classes), init_ids=torch.tensor(tokenizer.encode(INIT_TEXT)),
                         quantize=quantize).to(device)
    counts = count_trainable(clf)
    n_model += sum(p.numel() for p in clf.head.parameters())
    counts["percent"] = 100.0 * counts["trainable"] / n_model  # of model + head (4-bit codes are buffers, not parameters)
    sel = slice(0, batch_size)
    T = int(train_data.mask[sel].sum(1).max())
    mem = training_step_memory(clf, (train_data.ids[sel, :T].to(device), train_data.mask[sel, :T].to(device),
                                     train_data.labels[sel].to(device)))
    result = finetune_classifier(clf, train_data, FinetuneConfig(epochs=epochs, batch_size=batch_size,
                                                                 lr=method_lr(method), seed=seed, progress=progress))
    acc = accuracy(clf, test_data)
    bpc_after = bits_per_character(clf.backbone, val_ids, n_chars)
    return {"method": method, "trainable": counts["trainable"], "percent": counts["percent"],
            "memory_mb": mem["total"] / 2**20, "step_mb": mem["step"] / 2**20, "weights_mb": mem["weights"] / 2**20,
            "seconds_per_epoch": result.seconds / epochs, "accuracy": acc, "bpc_before": bpc_before,
            "bpc_after": bpc_after, "clf": clf}


# ---------------------------------------------------------------------------------------------
# Saved fine-tuned models (data/finetuned/): only the trained tensors, rebuilt around the course model
# ---------------------------------------------------------------------------------------------

def _finetuned_dir():
    from utils.runtime import DATA_DIR

    return DATA_DIR / "finetuned"


GENRE_CLASSIFIER_FILE = "genre-classifier.pt"
INSTRUCT_MODEL_FILE = "instruct-model.pt"
LINE_ADAPTER_FILE = "line-speaker-adapter.pt"  # a LoRA adapter on the instruct model (utils.instruct.LINE_ADAPTER)
# The genre classifier saved for notebook 08: the table's LoRA r=8 row, trained as in notebook 07's
# default mode (the same functions, data and settings).
GENRE_RECIPE = {"method": "lora-r8", "per_class": 200, "epochs": 2.0, "max_tokens": 64, "pooling": "mean", "seed": 0}
_REBUILD_HINT = "run `make finetune` (python tools/finetune.py, a few minutes on a CPU) to rebuild data/finetuned/"


@dataclass
class FinetunedConfig:
    """What a saved fine-tuning file holds: ``kind`` ("genre-classifier" or "instruct"), the
    ``recipe`` that rebuilds the trainable modules around the course model, the ``names`` and
    ``shapes`` of the saved tensors, and the weights sha256 of the course model they were trained on."""

    kind: str = ""
    recipe: dict = None
    names: list = None
    shapes: list = None
    base_sha256: str = ""


class FinetunedWeights(nn.Module):
    """Only the tensors fine-tuning trained (LoRA A/B, a head, new token rows), as buffers ``t0, t1, ...``,
    so that :func:`utils.checkpoint.save_checkpoint` writes them (atomic, sha256-checked) without the
    frozen course model they belong to."""

    config_class = FinetunedConfig

    def __init__(self, config: FinetunedConfig):
        super().__init__()
        self.config = config
        for i, shape in enumerate(config.shapes or []):
            self.register_buffer(f"t{i}", torch.zeros(shape))


def trained_tensors(model: nn.Module, new_rows_from: int | None = None) -> dict[str, torch.Tensor]:
    """{name: tensor} of every parameter of ``model`` with ``requires_grad`` (tied ones once).
    ``new_rows_from``: for the token embedding ("...wte.weight"), keep only rows ``new_rows_from:``
    (the new special tokens; the other rows are frozen by a gradient hook)."""
    out, seen = {}, set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        t = p.detach()
        if new_rows_from is not None and name.endswith("wte.weight"):
            t = t[new_rows_from:]
        out[name] = t.float().cpu().clone()
    return out


def save_finetuned(path, model: nn.Module, kind: str, recipe: dict, base_sha256: str, *,
                   new_rows_from: int | None = None, metadata: dict | None = None, dtype=None) -> str:
    """Write the trained tensors of ``model`` (:func:`trained_tensors`) and ``recipe`` to ``path`` with
    :func:`utils.checkpoint.save_checkpoint` (atomic, weights sha256); returns that sha256.
    ``dtype`` (e.g. ``torch.bfloat16``) halves the file of a fully fine-tuned model."""
    from utils.checkpoint import save_checkpoint

    tensors = trained_tensors(model, new_rows_from)
    if not tensors:
        raise ValueError("the model has no trainable parameter to save")
    cfg = FinetunedConfig(kind=kind, recipe=dict(recipe), names=list(tensors),
                          shapes=[list(t.shape) for t in tensors.values()], base_sha256=base_sha256)
    holder = FinetunedWeights(cfg)
    with torch.no_grad():
        for i, t in enumerate(tensors.values()):
            getattr(holder, f"t{i}").copy_(t)
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, holder, metadata=metadata, dtype=dtype)


def _read_finetuned(path, kind: str):
    from pathlib import Path

    from utils.checkpoint import CheckpointError, load_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"the fine-tuned model file {path} is missing: {_REBUILD_HINT}")
    try:
        loaded = load_checkpoint(path, model_cls=FinetunedWeights)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}\nThe fine-tuned model file {path} cannot be used: {_REBUILD_HINT}") from exc
    if loaded.config.kind != kind:
        raise CheckpointError(f"{path} holds a {loaded.config.kind!r} model, not a {kind!r}: {_REBUILD_HINT}")
    return loaded


def _course_model_checked(loaded, device):
    from utils.checkpoint import CheckpointError, weights_sha256
    from utils.pretrain import load_course_model

    model, tok = load_course_model()
    sha = weights_sha256(model.state_dict())
    if sha != loaded.config.base_sha256:
        raise CheckpointError(f"{loaded.path} was fine-tuned from another course model (base sha256 "
                              f"{loaded.config.base_sha256[:16]}..., the course model now is {sha[:16]}...): "
                              f"{_REBUILD_HINT}")
    return model, tok


def _fill(model: nn.Module, loaded, new_rows_from: int | None = None) -> None:
    from utils.checkpoint import CheckpointError

    params = dict(model.named_parameters())
    cfg = loaded.config
    missing = [n for n in cfg.names if n not in params]
    if missing:
        raise CheckpointError(f"{loaded.path}: the rebuilt model has no parameter(s) {missing[:4]}: {_REBUILD_HINT}")
    with torch.no_grad():
        for i, name in enumerate(cfg.names):
            t, p = getattr(loaded.model, f"t{i}"), params[name]
            target = p[new_rows_from:] if (new_rows_from is not None and name.endswith("wte.weight")) else p
            if tuple(target.shape) != tuple(t.shape):
                raise CheckpointError(f"{loaded.path}: {name} has shape {tuple(t.shape)}, the rebuilt model "
                                      f"{tuple(target.shape)}: {_REBUILD_HINT}")
            target.copy_(t.to(target.dtype))
    for p in model.parameters():
        p.requires_grad_(False)


def load_genre_classifier(device=None, path=None):
    """Notebook 07's genre classifier (LoRA r=8 on q and v + a linear head over mean-pooled hidden
    states; classes :data:`GENRE_CLASSES`), from ``data/finetuned/genre-classifier.pt``.

    Returns ``(clf, tokenizer)``: ``clf`` a :class:`SequenceClassifier` in eval mode on ``device``
    (default CPU); ``clf(ids, attention_mask)`` -> logits (B, 3) for right-padded ids
    (:func:`pad_right`); ``clf.finetune_metadata`` holds the recipe and the measured test accuracy.
    Raises ``FileNotFoundError`` / :class:`utils.checkpoint.CheckpointError` naming ``make finetune``
    when the file is missing, corrupt, or was trained on another course model."""
    from utils.precision import as_device

    loaded = _read_finetuned(path or _finetuned_dir() / GENRE_CLASSIFIER_FILE, "genre-classifier")
    model, tok = _course_model_checked(loaded, device)
    recipe = loaded.config.recipe
    torch.manual_seed(0)  # LoRA's A is drawn at random before being overwritten: keep the global RNG reproducible
    clf = prepare_method(model, recipe["method"], len(recipe["classes"]), pooling=recipe["pooling"])
    _fill(clf, loaded)
    clf.finetune_metadata = dict(loaded.metadata, recipe=recipe)
    if device is not None:
        clf.to(as_device(device))
    return clf.eval(), tok


def load_instruct_model(device=None, path=None, line_adapter: bool = False, adapter_path=None):
    """Notebook 07's instruction-tuned course model, from ``data/finetuned/instruct-model.pt``.

    Returns ``(model, tokenizer)``: a GPT (recipe "full": every weight fine-tuned, stored in bfloat16;
    recipe "lora": LoRA on every linear layer, :data:`utils.instruct.INSTRUCT_LORA`) in eval mode on ``device`` (default CPU), and the course
    tokenizer with the chat special tokens ``<|user|>``, ``<|assistant|>``, ``<|end|>``. Ask it with
    ``utils.instruct.answer(model, tokenizer, INSTRUCT_TEMPLATE or CHAT_TEMPLATE, instruction, input)``.
    ``model.finetune_metadata`` holds the recipe and the measured held-out scores. Raises
    ``FileNotFoundError`` / :class:`utils.checkpoint.CheckpointError` naming ``make finetune`` when the
    file is missing, corrupt, or was trained on another course model.

    ``line_adapter=True`` also loads the "who speaks the line" LoRA adapter (``data/finetuned/line-speaker-adapter.pt``
    or ``adapter_path``; :data:`utils.instruct.LINE_ADAPTER`) onto the model; answer with
    :func:`utils.instruct.score_routed` / :func:`utils.instruct.answer_routed`, which switch it on for that question
    only. ``model.adapter_metadata`` then holds its recipe and measured scores. The adapter file must have been
    trained on this very instruct model (checked by the weights' sha256)."""
    from utils.instruct import prepare_instruct_model
    from utils.precision import as_device

    loaded = _read_finetuned(path or _finetuned_dir() / INSTRUCT_MODEL_FILE, "instruct")
    model, tok = _course_model_checked(loaded, device)
    recipe = loaded.config.recipe
    torch.manual_seed(0)
    V = tok.vocab_size
    tok2 = prepare_instruct_model(model, tok, recipe["method"])
    _fill(model, loaded, new_rows_from=V if recipe["method"] == "lora" else None)
    model.finetune_metadata = dict(loaded.metadata, recipe=recipe)
    if line_adapter:
        _add_line_adapter(model, adapter_path or _finetuned_dir() / LINE_ADAPTER_FILE)
    if device is not None:
        model.to(as_device(device))
    return model.eval(), tok2


def _add_line_adapter(model: nn.Module, path) -> None:
    from utils.checkpoint import CheckpointError, weights_sha256
    from utils.instruct import ADAPTER_TASKS
    from utils.lora import apply_lora

    loaded = _read_finetuned(path, "line-adapter")
    sha = weights_sha256(model.state_dict())
    if sha != loaded.config.base_sha256:
        raise CheckpointError(f"{loaded.path} was trained on another instruct model (its sha256 "
                              f"{loaded.config.base_sha256[:16]}..., the instruct model now is {sha[:16]}...): "
                              f"{_REBUILD_HINT}")
    recipe = loaded.config.recipe
    torch.manual_seed(0)  # A is drawn before being overwritten: keep the global RNG reproducible
    apply_lora(model, recipe["targets"], r=recipe["r"], alpha=recipe["alpha"])
    _fill(model, loaded)
    model.adapter_metadata = dict(loaded.metadata, recipe=recipe)
    model.adapter_tasks = ADAPTER_TASKS  # what utils.instruct.adapter_for routes to the adapter
