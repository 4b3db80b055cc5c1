"""A plain training loop for the course's language models (nanoGPT's ``train.py`` as a library).

- :class:`TrainConfig` + :func:`train`: AdamW (weight decay on matrices only, or your own parameter
  groups), linear warmup then cosine decay (:func:`lr_schedule`), gradient clipping, gradient
  accumulation, periodic evaluation (:func:`estimate_loss`), a ``tqdm`` progress bar, a live loss
  plot in notebooks (:class:`LiveLossPlot`), mixed precision (:mod:`utils.precision`), optional
  ``torch.compile``, an optional wall-clock budget, auxiliary losses logged separately, and a
  clear stop on a non-finite loss.
- :func:`enable_gradient_checkpointing`: recompute activations in the backward pass.

Checkpoints live in :mod:`utils.checkpoint`, metrics in :mod:`utils.metrics`.

Usage::

    from utils.training import TrainConfig, train
    result = train(model, train_ids, val_ids, TrainConfig(max_steps=500, batch_size=16))
    result.val_losses[-1]          # (step, loss) of the last evaluation
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from utils.data import EpochSampler, check_token_stream
from utils.data import get_batch as _get_batch
from utils.precision import (PRECISIONS, as_device, autocast_context, cpu_has_fast_bf16,  # noqa: F401
                             make_grad_scaler, resolve_precision)
from utils.runtime import keep_freed_memory

Batch = tuple[torch.Tensor, ...]
SAMPLINGS = ("random", "epochs")
GROUP_KEYS = ("params", "weight_decay", "lr_scale", "name")

# ---------------------------------------------------------------------------------------------
# Configuration and schedule
# ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """How to train (not what to train: that is the model's own config).

    ``batch_size`` is the micro-batch; each optimizer step sees ``batch_size * grad_accum_steps``
    sequences of ``block_size`` tokens (``None`` = the model's ``config.block_size``).
    ``max_steps`` is the number of optimizer steps; with ``time_budget_s`` set, training also stops
    when that many seconds of training have passed (evaluation time is not counted) and the cosine
    decays over the number of steps expected to fit the budget (re-estimated as it runs).
    ``precision``: "fp32", "bf16" (autocast), "fp16" (autocast + gradient scaling) or "auto" (bf16
    where the hardware runs it fast: :func:`utils.precision.resolve_precision`, otherwise fp32).
    ``sampling`` (with ``train_data``): "random" windows, each drawn independently (nanoGPT), or
    "epochs": shuffled non-overlapping windows, every training token once per pass
    (:class:`utils.data.EpochSampler`). ``eval_interval=0`` evaluates at the end only.
    """

    max_steps: int = 2000
    batch_size: int = 12
    block_size: int | None = None
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    eval_batch_size: int | None = None
    time_budget_s: float | None = None
    precision: str = "fp32"
    sampling: str = "random"
    compile: bool = False
    seed: int = 1337
    progress: bool = True
    live_plot: bool = False
    log_interval: int = 10

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_iters", "log_interval"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_interval"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {value!r}"
                                 + (" (0: evaluate at the end only)" if name == "eval_interval" else ""))
        for name in ("block_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"TrainConfig.{name} must be None or an int >= 1, got {value!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"TrainConfig.seed must be an int in [0, 2**63), got {self.seed!r}")
        if not (_is_real(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not (_is_real(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"TrainConfig.min_lr must be a number with 0 <= min_lr <= lr={self.lr}, got {self.min_lr!r}")
        if not (_is_real(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(_is_real(b) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), e.g. (0.9, 0.99), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.grad_clip is not None and not (_is_real(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be a number > 0, or None to disable clipping; "
                             f"got {self.grad_clip!r}")
        if self.time_budget_s is not None and not (_is_real(self.time_budget_s) and self.time_budget_s > 0):
            raise ValueError(f"TrainConfig.time_budget_s must be seconds > 0 or None, got {self.time_budget_s!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"TrainConfig.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        for name in ("compile", "progress", "live_plot"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}")


def lr_schedule(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr``.

    During warmup the rate rises linearly to ``lr`` (reaching it at step ``warmup_steps``); from
    ``warmup_steps`` to ``total_steps`` it follows half a cosine down to ``min_lr``; after
    ``total_steps`` it stays at ``min_lr``.
    """
    if not _is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if not (_is_real(lr) and lr > 0 and _is_real(min_lr) and 0 <= min_lr <= lr):
        raise ValueError(f"need finite lr > 0 and 0 <= min_lr <= lr, got lr={lr!r}, min_lr={min_lr!r}")
    if not _is_int(warmup_steps) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not (_is_real(total_steps) and total_steps >= 0):
        raise ValueError(f"total_steps must be a finite number >= 0, got {total_steps!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    span = max(total_steps - warmup_steps, 1e-9)
    progress = (step - warmup_steps) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


# ---------------------------------------------------------------------------------------------
# The optimizer and its parameter groups
# ---------------------------------------------------------------------------------------------

def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear and embedding weights, ``dim >= 2``), none on biases and norms."""
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())  # tied weights once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "name": "decay"},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"}]


def resolve_param_groups(model: nn.Module, weight_decay: float,
                         param_groups: list[dict[str, Any]] | Callable[[nn.Module], list[dict[str, Any]]] | None = None,
                         ) -> list[dict[str, Any]]:
    """Checked parameter groups: each ``{"params": [...], "weight_decay": float, "lr_scale": float}``.

    ``param_groups``: ``None`` (:func:`default_param_groups`), a list of dicts, or a function
    ``model -> list of dicts``. A dict holds ``params`` and optionally ``weight_decay`` (default
    ``weight_decay``), ``lr_scale`` (multiplies the scheduled learning rate; default 1) and ``name``.
    Parameters with ``requires_grad=False`` are left out; every trainable parameter of the model
    must be in exactly one group.
    """
    if callable(param_groups):
        made = param_groups(model)
        where = f"param_groups(model) (the function {getattr(param_groups, '__name__', param_groups)!r})"
    else:
        made, where = param_groups, "param_groups"
    if made is None:
        made, where = default_param_groups(model, weight_decay), "the default groups"
    if not isinstance(made, (list, tuple)) or not made:
        raise TypeError(f"{where} must be a non-empty list of dicts, got {type(made).__name__} {made!r:.80}")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    groups, owner = [], {}
    for i, group in enumerate(made):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{where}[{i}] must be a dict with a 'params' entry, got {group!r:.80}")
        unknown = set(group) - set(GROUP_KEYS)
        if unknown:
            hint = " (the schedule sets lr every step; scale it with lr_scale)" if "lr" in unknown else ""
            raise ValueError(f"{where}[{i}] has unknown key(s) {sorted(unknown)}; allowed: {list(GROUP_KEYS)}{hint}")
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        wd = group.get("weight_decay", weight_decay)
        scale = group.get("lr_scale", 1.0)
        if not (_is_real(wd) and wd >= 0):
            raise ValueError(f"{where}[{i}]['weight_decay'] must be a finite number >= 0, got {wd!r}")
        if not (_is_real(scale) and scale >= 0):
            raise ValueError(f"{where}[{i}]['lr_scale'] must be a finite number >= 0, got {scale!r}")
        kept = []
        for p in params:
            if not isinstance(p, nn.Parameter):
                raise TypeError(f"{where}[{i}]['params'] holds a {type(p).__name__}; pass the model's parameters")
            if id(p) not in names:
                raise ValueError(f"{where}[{i}]['params'] holds a parameter of shape {tuple(p.shape)} that is not "
                                 "in this model (were the groups made from another copy of it?)")
            if not p.requires_grad or id(p) in {id(q) for q in kept}:
                continue  # frozen (e.g. a LoRA base) or listed twice in one group (tied weights)
            if id(p) in owner:
                raise ValueError(f"parameter {names[id(p)]!r} is in {where}[{owner[id(p)]}] and [{i}]; "
                                 "each parameter belongs to one group")
            owner[id(p)] = i
            kept.append(p)
        out = {"params": kept, "weight_decay": float(wd), "lr_scale": float(scale)}
        if "name" in group:
            out["name"] = str(group["name"])
        groups.append(out)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if missing:
        raise ValueError(f"{len(missing)} trainable parameter(s) are in no group of {where}, so they would not be "
                         f"trained: {missing[:5]}{' ...' if len(missing) > 5 else ''}; add them to a group or set "
                         "requires_grad=False")
    if not owner:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    return groups


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.99), *,
                        param_groups: list[dict[str, Any]] | Callable[[nn.Module], list[dict[str, Any]]] | None = None,
                        ) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, grouped by :func:`resolve_param_groups`.

    Each optimizer group keeps its ``lr_scale``: :func:`train` sets ``group["lr"]`` to the
    scheduled rate times it every step.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (_is_real(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (_is_real(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_is_real(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    groups = resolve_param_groups(model, weight_decay, param_groups)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    params = [p for g in groups for p in g["params"]]
    # One fused kernel for all parameters instead of ~10 small ops each (PyTorch >= 2.4 on CPU).
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    except (RuntimeError, TypeError):  # an older torch without the CPU kernel, or unusual dtypes
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token loss: ``batch = (x, y)`` of shape (B, T); the model returns ``(logits, loss)``."""
    x, y = batch
    _, loss = model(x, y)
    return loss


@torch.no_grad()
def estimate_loss(model: nn.Module, get_batch: Callable[[str], Batch], splits: Iterable[str] = ("train", "val"),
                  eval_iters: int = 20, compute_loss: Callable[[nn.Module, Batch], torch.Tensor] = default_loss,
                  ctx=None) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches per split, with the model in eval mode (restored after)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, fn in (("get_batch", get_batch), ("compute_loss", compute_loss)):
        if not callable(fn):
            raise TypeError(f"{name} must be a function, got {type(fn).__name__}")
    splits = [splits] if isinstance(splits, str) else list(splits)
    if not splits or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"splits must be a non-empty list of split names such as ['train', 'val'], got {splits!r}")
    if not _is_int(eval_iters) or eval_iters < 1:
        raise ValueError(f"eval_iters must be an int >= 1, got {eval_iters!r}")
    was_training = model.training
    model.eval()
    out = {}
    try:
        for split in splits:
            total = 0.0
            for _ in range(eval_iters):
                with ctx if ctx is not None else contextlib.nullcontext():
                    total += compute_loss(model, get_batch(split)).float().item()
            out[split] = total / eval_iters
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train` did: losses per logged step, evaluations, time and tokens seen.

    ``train_losses``: (step, loss of that step's batch, auxiliary losses included);
    ``aux_losses``: (step, auxiliary part) when the model sets ``loss_parts = {"lm": ..., "aux": ...}``
    (e.g. a Mixture-of-Experts load-balancing loss); ``lrs``: (step, scheduled learning rate).
    """

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_by: str = "max_steps"
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    aux_losses: list[tuple[int, float]] = field(default_factory=list)
    lrs: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final_val_loss(self) -> float | None:
        return self.val_losses[-1][1] if self.val_losses else None


class LiveLossPlot:
    """A loss plot that redraws in place in a notebook (``IPython.display`` with a display id).

    Outside IPython it does nothing. ``update(result)`` redraws from a :class:`TrainResult`.
    """

    def __init__(self, title: str = "training loss") -> None:
        self.title = title
        self.handle = None
        try:
            from IPython import get_ipython

            self.enabled = get_ipython() is not None
        except ImportError:
            self.enabled = False

    def update(self, result: TrainResult) -> None:
        if not self.enabled or not result.train_losses:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        steps, losses = zip(*result.train_losses)
        ax.plot(steps, losses, lw=1, alpha=0.8, label="train (micro-batch)")
        if result.val_losses:
            vs, vl = zip(*result.val_losses)
            ax.plot(vs, vl, "o-", label="val")
        if result.aux_losses:
            a_s, a_l = zip(*result.aux_losses)
            ax.plot(a_s, a_l, lw=1, label="auxiliary part")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(self.title)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


def _unwrap(model: nn.Module) -> nn.Module:
    """The original module behind ``torch.compile`` (its parameters are shared)."""
    return getattr(model, "_orig_mod", model)


def _nonfinite_error(step: int, value: float, lr: float, precision: str, config: TrainConfig,
                     what: str = "training loss") -> FloatingPointError:
    if step == 1 and what == "training loss":
        cause = ("it happened at step 1, before any update, so the model or the data produce it (check the "
                 "inputs and the initialisation), not the learning rate")
    elif precision == "fp16":
        cause = (f"fp16 precision: float16 holds at most 65504, and activations or logits overflowed; use "
                 f"precision='bf16' or 'fp32' (or a lower learning rate than {config.lr:g})")
    else:
        cause = (f"a learning rate too high for this model (lr={config.lr:g}, {lr:.3g} at this step): lower "
                 "TrainConfig.lr (e.g. 10x), keep warmup_steps > 0 and grad_clip set"
                 + ("; or bf16 precision, try 'fp32'" if precision == "bf16" else ""))
    return FloatingPointError(f"training stopped: the {what} became {value} at step {step} "
                              f"(precision {precision}). Likely cause: {cause}. The model's weights are "
                              "probably no longer finite; rebuild or reload it before training again.")


def _check_train_args(model, train_data, val_data, config, get_batch, compute_loss, callback, param_groups,
                      make_optimizer=None):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (or None for the defaults), got {type(config).__name__}")
    for name, fn in (("get_batch", get_batch), ("callback", callback), ("make_optimizer", make_optimizer)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a function or None, got {type(fn).__name__}")
    if not callable(compute_loss):
        raise TypeError(f"compute_loss must be a function (model, batch) -> loss, got {type(compute_loss).__name__}")
    if param_groups is not None and not callable(param_groups) and not isinstance(param_groups, (list, tuple)):
        raise TypeError(f"param_groups must be a list of dicts, a function model -> list, or None; "
                        f"got {type(param_groups).__name__}")
    if get_batch is not None:
        if train_data is not None or val_data is not None:
            raise ValueError("pass either train_data/val_data (token streams) or get_batch(split), not both")
        return
    if train_data is None:
        raise ValueError("pass train_data (a 1-D tensor of token ids) or a get_batch(split) function")


def train(model: nn.Module, train_data: torch.Tensor | None = None, val_data: torch.Tensor | None = None,
          config: TrainConfig | None = None, *, device: torch.device | str | None = None,
          get_batch: Callable[[str], Batch] | None = None,
          compute_loss: Callable[[nn.Module, Batch], torch.Tensor] = default_loss,
          callback: Callable[[int, TrainResult], None] | None = None,
          param_groups: list[dict[str, Any]] | Callable[[nn.Module], list[dict[str, Any]]] | None = None,
          make_optimizer: Callable[[nn.Module, list[dict[str, Any]], "TrainConfig"], Any] | None = None,
          ) -> TrainResult:
    """Train ``model`` in place and return a :class:`TrainResult`.

    Data: either 1-D token tensors ``train_data``/``val_data`` (windows via :mod:`utils.data`), or
    your own ``get_batch(split) -> batch`` together with ``compute_loss(model, batch) -> scalar``
    (used for the MLM and span-corruption objectives). ``callback(step, result)`` runs after each
    optimizer step. ``param_groups``: see :func:`resolve_param_groups` (only parameters with
    ``requires_grad=True`` are trained; ``lr_scale`` multiplies the schedule per group).
    ``make_optimizer(model, groups, config)`` replaces the default AdamW (:func:`configure_optimizer`):
    it gets the resolved groups and returns an object with ``param_groups`` (each keeping its
    ``lr_scale``, which the schedule multiplies every step), ``step()`` and ``zero_grad()``.
    A NaN or infinite loss stops training with ``FloatingPointError`` naming the step: every step's
    loss is kept on the device and read back at the next log step, evaluation or the end (the
    reads the loop makes anyway), so the check adds no host synchronisation.
    """
    _check_train_args(model, train_data, val_data, config, get_batch, compute_loss, callback, param_groups,
                      make_optimizer)
    config = config or TrainConfig()
    raw = _unwrap(model)
    device = as_device(device) if device is not None else next(raw.parameters()).device
    precision = resolve_precision(device, config.precision)
    own_batches = get_batch is None
    if own_batches:
        model_block = getattr(getattr(raw, "config", None), "block_size", None)
        block_size = config.block_size or model_block
        if block_size is None:
            raise ValueError(f"{type(raw).__name__} has no config.block_size; set TrainConfig.block_size")
        if model_block is not None and block_size > model_block:
            raise ValueError(f"TrainConfig.block_size={block_size} exceeds the model's block_size={model_block}")
        vocab = getattr(getattr(raw, "config", None), "vocab_size", None)
        for name, stream in (("train_data", train_data), ("val_data", val_data)):
            if stream is not None:
                check_token_stream(stream, max(config.batch_size, config.eval_batch_size or 1), block_size,
                                   name=name, vocab_size=vocab)
    groups = resolve_param_groups(raw, config.weight_decay, param_groups)  # validated before any change

    raw.to(device)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on the activations every step re-allocates
    ctx = autocast_context(device, precision)
    scaler = make_grad_scaler(device, precision)
    if own_batches:
        gen = torch.Generator().manual_seed(config.seed)
        val_gen = torch.Generator()
        data = {"train": train_data, "val": val_data if val_data is not None else train_data}
        eval_bs = config.eval_batch_size or config.batch_size
        epochs = (EpochSampler(train_data, config.batch_size, block_size, device=device, generator=gen)
                  if config.sampling == "epochs" else None)

        def get_batch(split: str, _eval: bool = False) -> Batch:
            if epochs is not None and split == "train" and not _eval:
                return epochs.next_batch()
            return _get_batch(data[split], eval_bs if _eval else config.batch_size, block_size,
                              device=device, generator=val_gen if _eval else gen)

        def eval_batch(split: str) -> Batch:
            return get_batch(split, _eval=True)
        splits = ("train", "val") if val_data is not None else ("train",)
    else:
        eval_batch = get_batch
        splits = ("train", "val")

    if make_optimizer is None:
        optimizer = configure_optimizer(raw, config.lr, config.weight_decay, config.betas, param_groups=groups)
    else:
        optimizer = make_optimizer(raw, groups, config)
        made = getattr(optimizer, "param_groups", None)
        if not (isinstance(made, list) and made and all(isinstance(g, dict) and "lr_scale" in g for g in made)
                and callable(getattr(optimizer, "step", None)) and callable(getattr(optimizer, "zero_grad", None))):
            raise ValueError("make_optimizer(model, groups, config) must return an optimizer with step(), zero_grad() "
                             "and param_groups that each keep the 'lr_scale' of the groups it was given, "
                             f"got {type(optimizer).__name__}")
    step_model = torch.compile(model) if config.compile else model
    result = TrainResult()
    plot = LiveLossPlot() if config.live_plot else None
    pending: list[tuple[int, torch.Tensor, float]] = []  # (step, loss on the device, lr) not yet read back

    def read_back(extra: list[torch.Tensor] = ()) -> list[float]:
        """One host read for every pending step's loss (+ ``extra``); raise on the first non-finite one."""
        values = torch.stack([v for _, v, _ in pending] + list(extra)).tolist() if pending or extra else []
        for (s, _, lr_s), v in zip(pending, values):
            if not math.isfinite(v):
                raise _nonfinite_error(s, v, lr_s, precision, config)
        pending.clear()
        return values

    def evaluate(step: int) -> None:
        read_back()
        if own_batches:
            val_gen.manual_seed(config.seed + 1)  # the same evaluation batches every time
        losses = estimate_loss(step_model, eval_batch, splits, config.eval_iters, compute_loss, ctx)
        value = losses.get("val", losses["train"])
        if not math.isfinite(value):
            raise _nonfinite_error(step, value, lr, precision, config, what="evaluation loss")
        result.val_losses.append((step, value))

    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc="training", unit="step", dynamic_ncols=True)
    model.train()
    total_est = float(config.max_steps)
    train_seconds = 0.0
    step = 0
    try:
        while step < config.max_steps:
            t0 = time.perf_counter()
            if config.time_budget_s is not None and step > max(config.warmup_steps // 4, 5):
                # cosine over the steps expected to fit the budget (re-estimated every step)
                total_est = min(config.max_steps, step * config.time_budget_s / max(train_seconds, 1e-9))
            lr = lr_schedule(step, lr=config.lr, min_lr=config.min_lr,
                             warmup_steps=config.warmup_steps, total_steps=total_est)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss_sum, aux_sum = 0.0, None
            for _ in range(config.grad_accum_steps):
                batch = get_batch("train")
                if "loss_parts" in raw.__dict__:
                    raw.loss_parts = None  # so a stale value from an earlier forward is never logged
                with ctx:
                    loss = compute_loss(step_model, batch)
                parts = getattr(raw, "loss_parts", None)
                if isinstance(parts, dict) and parts.get("aux") is not None:
                    aux = torch.as_tensor(parts["aux"]).detach().float().to(loss.device)
                    if aux.numel() != 1:
                        raise ValueError(f"model.loss_parts['aux'] must be a scalar, got shape {tuple(aux.shape)}")
                    aux = aux.reshape(())
                    aux_sum = aux if aux_sum is None else aux_sum + aux
                loss_sum = loss_sum + loss.detach().float()
                loss = loss / config.grad_accum_steps
                (scaler.scale(loss) if scaler else loss).backward()
                result.tokens += batch[0].numel()
            if scaler:
                scaler.unscale_(optimizer)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), config.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending.append((step, (loss_sum / config.grad_accum_steps).reshape(()), lr))  # (1,)-shaped losses too
            if step % config.log_interval == 0 or step == 1:
                extra = [] if aux_sum is None else [aux_sum / config.grad_accum_steps]
                values = read_back(extra)
                value = values[len(values) - len(extra) - 1]
                result.train_losses.append((step, value))
                if extra:
                    result.aux_losses.append((step, values[-1]))
                result.lrs.append((step, lr))
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
            elif len(pending) >= 256:  # a huge log_interval: bound the memory the pending losses hold
                read_back()
            train_seconds += time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            result.steps, result.seconds = step, train_seconds
            budget_done = config.time_budget_s is not None and train_seconds >= config.time_budget_s
            if (config.eval_interval and step % config.eval_interval == 0) or step == config.max_steps or budget_done:
                evaluate(step)
                if plot is not None:
                    plot.update(result)
            if callback is not None:
                callback(step, result)
            if budget_done:
                result.stopped_by = "time_budget"
                break
        read_back()
    finally:
        if bar is not None:
            bar.close()
    return result


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------

def enable_gradient_checkpointing(blocks: Iterable[nn.Module], enabled: bool = True) -> None:
    """Recompute each block's activations in the backward pass instead of storing them.

    ``blocks`` are the transformer blocks (e.g. ``model.blocks``). While training with gradients,
    each block's forward runs under ``torch.utils.checkpoint`` (only its input is kept); peak
    memory drops at the cost of one extra forward per block. ``enabled=False`` restores them.
    """
    from torch.utils.checkpoint import checkpoint

    if isinstance(blocks, nn.Module) and not isinstance(blocks, nn.ModuleList):
        blocks = [blocks]  # one block
    try:
        blocks = list(blocks)
    except TypeError:
        raise TypeError(f"blocks must be an iterable of nn.Modules such as model.blocks, got {type(blocks).__name__}") from None
    if not all(isinstance(b, nn.Module) for b in blocks):
        raise TypeError("blocks must be nn.Modules, e.g. model.blocks (an nn.ModuleList)")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    for block in blocks:
        original = block.__dict__.get("_unckpt_forward")
        if not enabled:
            if original is not None:
                block.forward = original
                del block.__dict__["_unckpt_forward"]
            continue
        if original is not None:
            continue
        forward = block.forward

        def wrapped(*args, _forward=forward, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.__dict__["_unckpt_forward"] = forward
        block.forward = wrapped


__all__ = [
    "TrainConfig", "TrainResult", "train", "lr_schedule", "SAMPLINGS", "configure_optimizer",
    "default_param_groups", "resolve_param_groups", "estimate_loss", "default_loss", "LiveLossPlot",
    "enable_gradient_checkpointing",
]
