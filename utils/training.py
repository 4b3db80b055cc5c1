"""A plain training loop for the course's language models, and checkpoints you can trust.

Everything a small pretraining run needs, in one readable file (nanoGPT's ``train.py`` as a
library):

- :class:`TrainConfig` + :func:`train`: AdamW (weight decay on matrices only), linear warmup then
  cosine decay (:func:`lr_schedule`), gradient clipping, gradient accumulation, periodic
  evaluation, a ``tqdm`` progress bar, a live loss plot in notebooks, mixed precision through
  ``torch.autocast`` (:func:`autocast_context`), optional ``torch.compile``, and an optional
  wall-clock budget (the cosine then decays over the steps expected to fit the budget).
- :func:`save_checkpoint` / :func:`load_checkpoint`: model config + weights + tokenizer + training
  metadata in one file, written atomically, with a sha256 of the weights checked at load time, so a
  truncated, tampered or mismatched file fails loudly with :class:`CheckpointError`.

Usage::

    from utils.training import TrainConfig, train
    result = train(model, train_ids, val_ids, TrainConfig(max_steps=500, batch_size=16))
    result.val_losses[-1]          # (step, loss) of the last evaluation
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.data import EpochSampler
from utils.data import get_batch as _get_batch
from utils.runtime import keep_freed_memory

Batch = tuple[torch.Tensor, ...]

# ---------------------------------------------------------------------------------------------
# Configuration and schedule
# ---------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
SAMPLINGS = ("random", "epochs")


@dataclass
class TrainConfig:
    """How to train (not what to train: that is the model's own config).

    ``batch_size`` is the micro-batch; each optimizer step sees ``batch_size * grad_accum_steps``
    sequences of ``block_size`` tokens (``None`` = the model's ``config.block_size``).
    ``max_steps`` is the number of optimizer steps; with ``time_budget_s`` set, training also stops
    when that many seconds of training have passed (evaluation time is not counted) and the cosine
    decays over the number of steps expected to fit the budget (re-estimated as it runs).
    ``precision``: "fp32", "bf16" (autocast), "fp16" (autocast + gradient scaling, CUDA only) or
    "auto" (bf16 where the hardware runs it fast: :func:`resolve_precision`, otherwise fp32).
    ``sampling`` (with ``train_data``): "random" windows, each drawn independently (nanoGPT), or
    "epochs": shuffled non-overlapping windows, every training token once per pass
    (:class:`utils.data.EpochSampler`).
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
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if self.warmup_steps < 0 or self.eval_interval < 0:
            raise ValueError("warmup_steps and eval_interval must be >= 0 (eval_interval=0: evaluate at the end only)")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive or None, got {self.time_budget_s}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be positive, or None to disable clipping")


def lr_schedule(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr``.

    During warmup the rate rises linearly to ``lr`` (reaching it at step ``warmup_steps``); from
    ``warmup_steps`` to ``total_steps`` it follows half a cosine down to ``min_lr``; after
    ``total_steps`` it stays at ``min_lr``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    span = max(total_steps - warmup_steps, 1e-9)
    progress = (step - warmup_steps) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.99)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights) and none on biases/norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    seen: set[int] = set()
    decay, no_decay = [], []
    for p in params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel for all parameters instead of ~10 small ops each (PyTorch >= 2.4 on CPU):
    # 0.7 ms instead of 3.7 ms per step for the course recipe's 26 tensors on a 2-core CPU.
    fused = bool(params) and all(p.device.type in ("cuda", "cpu") for p in params)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    except (RuntimeError, TypeError):  # an older torch without the CPU kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def autocast_context(device: torch.device | str, precision: str = "fp32"):
    """A context manager for the forward pass: ``torch.autocast`` for bf16/fp16, else a no-op.

    "auto" picks bf16 on CUDA GPUs that support it and on CPUs with bf16 matrix instructions (AMX
    or AVX-512 BF16, :func:`cpu_has_fast_bf16`), and fp32 elsewhere (on CPUs without them, bf16 autocast is
    *slower* than fp32; notebook 04 measures it on the machine it runs on).
    """
    device = torch.device(device)
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions, where oneDNN runs bf16 matrix multiplies faster
    than fp32: AMX tile units (Intel Xeon 4th gen and later; 3.3x for the course model's training
    step, measured with the profiler on a 2-core Xeon) or AVX-512 BF16 dot products (AMD Zen 4 and
    later, Intel Cooper Lake; a bf16 training step of the course recipe takes about 0.65x the fp32
    time on a 2-core AMD EPYC: benchmarks/pretrain_cpu.py's tokens/s). CPUs with neither (most laptops before 2023): False, stay in fp32."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(device: torch.device | str, precision: str) -> str:
    """Turn "auto" into a concrete precision for ``device`` and reject unsupported combinations."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA GPU (gradient scaling); use precision='bf16' or 'fp32'")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"bf16 autocast is not supported on {device.type}; use precision='fp32'")
    return precision


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
    was_training = model.training
    model.eval()
    out = {}
    for split in splits:
        total = 0.0
        for _ in range(eval_iters):
            with ctx if ctx is not None else contextlib.nullcontext():
                total += compute_loss(model, get_batch(split)).float().item()
        out[split] = total / eval_iters
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train` did: losses per logged step, evaluations, time and tokens seen."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_by: str = "max_steps"
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
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
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss (nats/token)")
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


def train(model: nn.Module, train_data: torch.Tensor | None = None, val_data: torch.Tensor | None = None,
          config: TrainConfig | None = None, *, device: torch.device | str | None = None,
          get_batch: Callable[[str], Batch] | None = None,
          compute_loss: Callable[[nn.Module, Batch], torch.Tensor] = default_loss,
          callback: Callable[[int, TrainResult], None] | None = None) -> TrainResult:
    """Train ``model`` in place and return a :class:`TrainResult`.

    Data: either 1-D token tensors ``train_data``/``val_data`` (random windows via
    :func:`utils.data.get_batch`), or your own ``get_batch(split) -> batch`` together with
    ``compute_loss(model, batch) -> scalar`` (used for the MLM and span-corruption objectives).
    ``callback(step, result)`` runs after each optimizer step (return value ignored).
    """
    config = config or TrainConfig()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on the activations every step re-allocates
    precision = resolve_precision(device, config.precision)
    ctx = autocast_context(device, precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    own_batches = get_batch is None
    if own_batches:
        if train_data is None:
            raise ValueError("pass train_data (a 1-D tensor of token ids) or a get_batch(split) function")
        block_size = config.block_size or _unwrap(model).config.block_size
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

    optimizer = configure_optimizer(_unwrap(model), config.lr, config.weight_decay, config.betas)
    step_model = torch.compile(model) if config.compile else model
    result = TrainResult()
    plot = LiveLossPlot() if config.live_plot else None

    def evaluate(step: int) -> None:
        if own_batches:
            val_gen.manual_seed(config.seed + 1)  # the same evaluation batches every time
        losses = estimate_loss(step_model, eval_batch, splits, config.eval_iters, compute_loss, ctx)
        result.val_losses.append((step, losses.get("val", losses["train"])))

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
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(config.grad_accum_steps):
                batch = get_batch("train")
                with ctx:
                    loss = compute_loss(step_model, batch)
                loss_sum += loss.detach().float()
                loss = loss / config.grad_accum_steps
                (scaler.scale(loss) if scaler else loss).backward()
                result.tokens += batch[0].numel()
            if scaler:
                scaler.unscale_(optimizer)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % config.log_interval == 0 or step == 1:
                value = (loss_sum / config.grad_accum_steps).item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"the loss became {value} at step {step}; lower the learning rate")
                result.train_losses.append((step, value))
                result.lrs.append((step, lr))
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
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


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "llm-internals/checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, tampered with, or for another model."""


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes (in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tokenizer_to_text(tokenizer: Any) -> str | None:
    """The tokenizer's file contents (a str is taken as already serialised)."""
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    if not hasattr(tokenizer, "save"):
        raise TypeError(f"tokenizer must be None, a str, or have a .save(path) method; got {type(tokenizer).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(path)
        files = sorted(Path(tmp).iterdir())
        return files[0].read_text(encoding="utf-8") if len(files) == 1 else path.read_text(encoding="utf-8")


def tokenizer_from_text(text: str):
    """Rebuild a :class:`utils.tokenizer.BPETokenizer` from the text its ``save`` wrote."""
    from utils.tokenizer import BPETokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(text, encoding="utf-8")
        return BPETokenizer.load(path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: nn.Module, *, tokenizer: Any = None,
                    metadata: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> str:
    """Write model config + weights (+ tokenizer, metadata) to ``path`` atomically; return the weights' sha256.

    ``model`` must have a dataclass ``config``. ``dtype`` optionally casts floating-point weights
    (e.g. ``torch.bfloat16`` to halve the file); by default they are saved as they are.
    ``tokenizer`` is an object with ``.save(path)`` (its file contents are embedded) or a str.
    The write goes to a temporary file that is renamed into place, so a crash never leaves a
    half-written checkpoint behind.
    """
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(model).__name__} has no dataclass .config; save_checkpoint needs one to rebuild the model")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        cast: dict[int, torch.Tensor] = {}
        for k, v in state.items():  # keep tied weights tied (same storage, saved once)
            if v.is_floating_point():
                key = v.data_ptr()
                cast.setdefault(key, v.to(dtype))
                state[k] = cast[key]
    digest = weights_sha256(state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "config": dataclasses.asdict(config),
        "state_dict": state,
        "weights_sha256": digest,
        "weights_dtype": str(next(iter(state.values())).dtype).replace("torch.", "") if state else None,
        "tokenizer": _tokenizer_to_text(tokenizer),
        "metadata": dict(metadata or {}),
        "torch_version": str(torch.__version__),
    }
    _atomic_torch_save(payload, Path(path))
    return digest


@dataclass
class LoadedCheckpoint:
    """The result of :func:`load_checkpoint`: a ready model (eval mode) and what was stored with it."""

    model: nn.Module
    config: Any
    metadata: dict[str, Any]
    tokenizer_text: str | None
    weights_sha256: str
    path: Path

    def tokenizer(self):
        """The stored tokenizer rebuilt as a ``BPETokenizer`` (``None`` if none was stored)."""
        return None if self.tokenizer_text is None else tokenizer_from_text(self.tokenizer_text)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dictionary, after checking format and weights sha256 (no model built)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickle errors...
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not a torch file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Restore the file (e.g. `git checkout` it) or rebuild it (`make pretrain`)."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a torch file but not an LLM Internals checkpoint "
                              f"(missing format marker {CHECKPOINT_FORMAT!r})")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')}, "
                              f"this code reads version {CHECKPOINT_VERSION}")
    for key in ("config", "state_dict", "weights_sha256"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks the field {key!r}; the file is damaged")
    digest = weights_sha256(payload["state_dict"])
    if digest != payload["weights_sha256"]:
        raise CheckpointError(
            f"{path}: the weights' sha256 is {digest[:16]}..., but the checkpoint records "
            f"{payload['weights_sha256'][:16]}...: the weights were modified or corrupted after saving. "
            "Restore the file or rebuild it (`make pretrain`)."
        )
    return payload


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: checkpoint={a.get(k, '<missing>')!r} vs model={b.get(k, '<missing>')!r}"
            for k in keys if a.get(k, "<missing>") != b.get(k, "<missing>")]


def load_checkpoint(path: str | Path, model: nn.Module | None = None, *, model_cls: type | None = None,
                    map_location: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32) -> LoadedCheckpoint:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying it first.

    With ``model`` given, its config must equal the stored one (else :class:`CheckpointError`
    listing the differing fields) and the weights are loaded into it. Without it, a model of the
    stored class (looked up in ``utils.model`` unless ``model_cls`` is given) is built from the
    stored config. Floating-point weights are converted to ``dtype`` (``None``: keep as stored).
    The model is returned in eval mode.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location=map_location)
    stored = payload["config"]
    if model is None:
        if model_cls is None:
            import utils.model as model_module

            name = payload.get("model_class", "GPT")
            model_cls = getattr(model_module, name, None)
            if model_cls is None:
                raise CheckpointError(f"{path} holds a {name!r}, which utils.model does not define")
        config_cls = _config_class_for(model_cls)
        try:
            config = config_cls(**stored)
        except TypeError as exc:
            raise CheckpointError(f"{path}: the stored config does not fit {config_cls.__name__} ({exc}); "
                                  "the checkpoint was written by a different version of utils/model.py") from exc
        model = model_cls(config)
    else:
        model = _unwrap(model)
        current = dataclasses.asdict(model.config)
        diff = _config_diff(stored, current)
        if diff:
            raise CheckpointError(f"{path} was saved for a different model configuration:\n  " + "\n  ".join(diff)
                                  + "\nBuild the model from the checkpoint instead: load_checkpoint(path).")
        config = model.config
    state = payload["state_dict"]
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})") from exc
    model.eval()
    return LoadedCheckpoint(model=model, config=config, metadata=payload.get("metadata", {}),
                            tokenizer_text=payload.get("tokenizer"), weights_sha256=payload["weights_sha256"],
                            path=path)


def _config_class_for(model_cls: type) -> type:
    import inspect
    import typing

    if getattr(model_cls, "config_class", None) is not None:
        return model_cls.config_class
    hints = typing.get_type_hints(model_cls.__init__)
    cls = hints.get("config")
    if cls is None:
        params = list(inspect.signature(model_cls.__init__).parameters.values())[1:]
        raise CheckpointError(f"cannot tell which config class {model_cls.__name__} takes (parameters {params})")
    return cls


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = [
    "TrainConfig", "TrainResult", "train", "lr_schedule", "SAMPLINGS", "configure_optimizer", "autocast_context",
    "resolve_precision", "cpu_has_fast_bf16", "estimate_loss", "LiveLossPlot",
    "enable_gradient_checkpointing", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "LoadedCheckpoint", "CheckpointError", "weights_sha256", "file_sha256", "text_sha256",
    "tokenizer_from_text",
]
