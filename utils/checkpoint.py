"""Checkpoints you can trust: save and load a model with its config, tokenizer and metadata.

- :func:`save_checkpoint` writes model config + every tensor of the state dict (weights and buffers,
  e.g. int8 codes and scales of a quantized layer) + the class name of every module + tokenizer +
  JSON-like metadata to one file, atomically (:func:`atomic_write`), with a sha256 of the weights.
- :func:`load_checkpoint` verifies the file (format, sha256), rebuilds the model from the stored
  config, lets ``prepare(model)`` swap modules the config cannot express (a quantized or
  LoRA-wrapped linear layer, a Mixture-of-Experts MLP), checks that every module now has the class it
  had when saved, and loads the weights. A truncated, tampered or mismatched file fails loudly with
  :class:`CheckpointError`.
- :func:`weights_sha256`, :func:`file_sha256`, :func:`text_sha256`: the hashes used here and by
  :mod:`utils.data` / :mod:`utils.pretrain`; :func:`atomic_write_bytes` / :func:`atomic_write_text`:
  the one way the course writes a file that readers must never see half-written.

Usage::

    from utils.checkpoint import save_checkpoint, load_checkpoint
    save_checkpoint("run.pt", model, tokenizer=tok, metadata={"steps": 500})
    loaded = load_checkpoint("run.pt")                       # loaded.model, loaded.metadata
    loaded = load_checkpoint("q.pt", prepare=lambda m: quantize_model(m, qcfg))   # swapped modules
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import torch
import torch.nn as nn

CHECKPOINT_FORMAT = "llm-internals/checkpoint"
CHECKPOINT_VERSION = 1  # "module_classes" was added without a version bump: files without it still load
_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, tampered with, or for another model."""


# ---------------------------------------------------------------------------------------------
# Hashes and atomic writes
# ---------------------------------------------------------------------------------------------

def _check_path(path: Any, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or str(path) == "":
        raise TypeError(f"{name} must be a non-empty str or pathlib.Path, got {type(path).__name__} {path!r}")
    return Path(path)


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes (in sorted name order)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    for name, t in state_dict.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict must map str names to tensors; entry {name!r} holds {type(t).__name__}")
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file_sha256: no file at {path}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    """sha256 of a string's UTF-8 bytes."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    Readers see the old file or the complete new one, never half a file, even if ``write`` raises
    or the machine crashes (the data is on disk before the rename; the folder is fsynced after it
    where the OS allows). On an error the temporary file is removed and the old file is untouched.
    """
    path = _check_path(path)
    if not callable(write):
        raise TypeError(f"write must be a function f(file) -> None, got {type(write).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # keep the permissions of the file being replaced; a new file gets the usual rw-r--r--
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")  # created rw-------
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (POSIX; Windows cannot open a folder)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically, newlines as given (no translation)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def _check_json_like(value: Any, where: str) -> None:
    """Raise TypeError naming the first value that JSON cannot hold (tuples are fine: lists in JSON)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_like(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r} of type {type(key).__name__}; "
                                "checkpoint metadata keys must be str (JSON objects)")
            _check_json_like(item, f"{where}[{key!r}]")
        return
    hint = " (use str(path))" if isinstance(value, os.PathLike) else \
        " (use .item() or .tolist())" if isinstance(value, torch.Tensor) or hasattr(value, "item") else ""
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r:.60}), which JSON cannot hold; checkpoint "
                    f"metadata must be JSON-serialisable: str, int, float, bool, None, lists and dicts{hint}")


def _as_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """``None``, a floating torch dtype, or its name ("float16", "bfloat16", "float32")."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.replace("torch.", "")
        if key not in _FLOAT_DTYPES:
            raise ValueError(f"{name}={dtype!r} is not a floating-point dtype name; use one of "
                             f"{sorted(_FLOAT_DTYPES)} or a torch dtype such as torch.bfloat16")
        return _FLOAT_DTYPES[key]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch floating dtype (e.g. torch.bfloat16), its name, or None; "
                        f"got {type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"{name}={dtype} is not a floating-point dtype; use e.g. torch.float32 or torch.bfloat16")
    return dtype


def module_classes(model: nn.Module) -> dict[str, str]:
    """``{module name: class name}`` for every submodule ("" is the model itself)."""
    return {name: type(module).__qualname__ for name, module in model.named_modules()}


def _tokenizer_to_text(tokenizer: Any) -> str | None:
    """The tokenizer's file contents (a str is taken as already serialised)."""
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(path)
        files = sorted(Path(tmp).iterdir())
        return files[0].read_text(encoding="utf-8") if len(files) == 1 else path.read_text(encoding="utf-8")


def tokenizer_from_text(text: str):
    """Rebuild a :class:`utils.tokenizer.BPETokenizer` from the text its ``save`` wrote."""
    from utils.tokenizer import BPETokenizer

    if not isinstance(text, str):
        raise TypeError(f"text must be the str a tokenizer's save() wrote, got {type(text).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(text, encoding="utf-8")
        return BPETokenizer.load(path)


def save_checkpoint(path: str | Path, model: nn.Module, *, tokenizer: Any = None,
                    metadata: dict[str, Any] | None = None, dtype: torch.dtype | str | None = None) -> str:
    """Write model config + state dict (+ tokenizer, metadata) to ``path`` atomically; return the weights' sha256.

    ``model`` must have a dataclass ``config``. The full state dict is saved (parameters and
    persistent buffers, any dtype) together with the class name of every module, so a model whose
    modules were swapped can be rebuilt with ``load_checkpoint(path, prepare=...)``.
    ``dtype`` optionally casts floating-point tensors (e.g. ``torch.bfloat16`` halves the file).
    ``tokenizer``: an object with ``.save(path)`` (its file contents are embedded) or a str.
    ``metadata``: a dict of JSON-serialisable values (checked here, so the file always loads).
    """
    path = _check_path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = getattr(model, "_orig_mod", model)  # the module behind torch.compile
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{type(model).__name__} has no dataclass .config; save_checkpoint needs one to rebuild the model")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    _check_json_like(dict(metadata or {}), "metadata")
    config_dict = dataclasses.asdict(config)
    _check_json_like(config_dict, f"{type(config).__name__} field")
    dtype = _as_float_dtype(dtype)
    if tokenizer is not None and not isinstance(tokenizer, str) and not callable(getattr(tokenizer, "save", None)):
        raise TypeError(f"tokenizer must be None, a str, or have a .save(path) method; got {type(tokenizer).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        cast: dict[int, torch.Tensor] = {}
        for k, v in state.items():  # keep tied weights tied (same storage, saved once)
            if v.is_floating_point():
                key = v.data_ptr()
                cast.setdefault(key, v.to(dtype))
                state[k] = cast[key]
    digest = weights_sha256(state)
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "config": config_dict,
        "module_classes": module_classes(model),
        "state_dict": state,
        "weights_sha256": digest,
        "weights_dtype": str(floats[0]).replace("torch.", "") if floats else None,
        "tokenizer": _tokenizer_to_text(tokenizer),
        "metadata": dict(metadata or {}),
        "torch_version": str(torch.__version__),
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return digest


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

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


def _check_map_location(map_location: Any) -> None:
    if isinstance(map_location, torch.device):
        return
    if not isinstance(map_location, str):
        raise TypeError(f"map_location must be a device string such as 'cpu' or a torch.device, "
                        f"got {type(map_location).__name__} {map_location!r}")
    try:
        torch.device(map_location)
    except RuntimeError:
        raise ValueError(f"map_location={map_location!r} is not a device; use 'cpu', 'cuda', 'cuda:0' or 'mps'") from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dictionary, after checking format and weights sha256 (no model built)."""
    path = _check_path(path)
    _check_map_location(map_location)
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


def _module_diff(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    rows = []
    for name in sorted(set(stored) | set(current), key=lambda n: (n.count("."), n)):
        a, b = stored.get(name, "<absent>"), current.get(name, "<absent>")
        if a != b:
            rows.append(f"{name or '<model>'}: checkpoint={a} vs model={b}")
    return rows


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


def load_checkpoint(path: str | Path, model: nn.Module | None = None, *, model_cls: type | None = None,
                    prepare: Callable[[nn.Module], nn.Module | None] | None = None,
                    map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | str | None = torch.float32) -> LoadedCheckpoint:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying it first.

    Without ``model``, a model of the stored class (looked up in ``utils.model`` unless
    ``model_cls`` is given) is built from the stored config; with ``model``, its config must equal
    the stored one (else :class:`CheckpointError` listing the differing fields). Then
    ``prepare(model)`` runs if given: the code that swaps the modules the config cannot express
    (e.g. ``prepare=lambda m: quantize_model(m, qcfg)``; return the model, or ``None`` if it works in
    place). Every module must then have the class it had when saved, else :class:`CheckpointError`
    names the modules that differ. The state dict is loaded strictly; buffers (int8 codes, scales)
    keep their saved dtype and values. ``dtype`` (default float32; ``None`` keeps the model's)
    converts the floating-point *parameters* afterwards. The model is returned in eval mode.
    """
    path = _check_path(path)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if model is not None and model_cls is not None:
        raise ValueError("pass either model (load into it) or model_cls (build one), not both")
    if model_cls is not None and not (isinstance(model_cls, type) and issubclass(model_cls, nn.Module)):
        raise TypeError(f"model_cls must be an nn.Module subclass, got {model_cls!r}")
    if prepare is not None and not callable(prepare):
        raise TypeError(f"prepare must be a function model -> model (or None), got {type(prepare).__name__}")
    dtype = _as_float_dtype(dtype)
    payload = read_checkpoint(path, map_location=map_location)
    stored = payload["config"]
    if model is None:
        if model_cls is None:
            import utils.model as model_module

            name = payload.get("model_class", "GPT")
            model_cls = getattr(model_module, name, None)
            if model_cls is None:
                raise CheckpointError(f"{path} holds a {name!r}, which utils.model does not define; "
                                      "pass model_cls= (the class that was saved)")
        config_cls = _config_class_for(model_cls)
        try:
            config = config_cls(**stored)
        except TypeError as exc:
            raise CheckpointError(f"{path}: the stored config does not fit {config_cls.__name__} ({exc}); "
                                  "the checkpoint was written by a different version of the model code") from exc
        model = model_cls(config)
    else:
        model = getattr(model, "_orig_mod", model)
        if not dataclasses.is_dataclass(getattr(model, "config", None)):
            raise TypeError(f"{type(model).__name__} has no dataclass .config to compare with the checkpoint's")
        current = dataclasses.asdict(model.config)
        diff = _config_diff(stored, current)
        if diff:
            raise CheckpointError(f"{path} was saved for a different model configuration:\n  " + "\n  ".join(diff)
                                  + "\nBuild the model from the checkpoint instead: load_checkpoint(path).")
        config = model.config
    if prepare is not None:
        prepared = prepare(model)
        if prepared is not None:
            if not isinstance(prepared, nn.Module):
                raise TypeError(f"prepare returned {type(prepared).__name__}; return the model or None")
            model = prepared
    if "module_classes" in payload:  # files written before this field existed skip the check
        diff = _module_diff(payload["module_classes"], module_classes(model))
        if diff:
            shown = diff[:8] + ([f"... and {len(diff) - 8} more"] if len(diff) > 8 else [])
            hint = ("pass prepare= a function that swaps the same modules before the weights are loaded, "
                    "e.g. load_checkpoint(path, prepare=lambda m: quantize_model(m, qcfg))"
                    if prepare is None else "the prepare function did not swap the same modules as the saved model")
            raise CheckpointError(f"{path}: {len(diff)} module(s) differ from the saved model:\n  "
                                  + "\n  ".join(shown) + f"\n{hint}.")
    state = payload["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})") from exc
    if dtype is not None:
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    model.eval()
    return LoadedCheckpoint(model=model, config=config, metadata=payload.get("metadata", {}),
                            tokenizer_text=payload.get("tokenizer"), weights_sha256=payload["weights_sha256"],
                            path=path)


__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "LoadedCheckpoint", "save_checkpoint",
    "load_checkpoint", "read_checkpoint", "module_classes", "weights_sha256", "file_sha256", "text_sha256",
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "tokenizer_from_text",
]
