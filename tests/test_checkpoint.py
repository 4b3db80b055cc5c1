"""Checkpoints (utils/checkpoint.py): round trips, corruption, swapped modules, metadata, atomic writes."""

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils.checkpoint as checkpoint
from utils.checkpoint import (CheckpointError, atomic_write_bytes, atomic_write_text, file_sha256, load_checkpoint,
                              read_checkpoint, save_checkpoint, text_sha256, weights_sha256)


from tiny_models import TinyConfig, TinyLM  # noqa: E402


def _random_tiny(seed=1):
    torch.manual_seed(seed)
    model = TinyLM(TinyConfig())
    with torch.no_grad():
        for p in model.parameters():  # every parameter random (a bias left at zero would hide a missed copy)
            p.normal_()
    return model


class Int8Linear(nn.Module):
    """A stand-in for a quantized linear layer: int8 codes and a per-row scale, held as buffers."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127
        self.register_buffer("codes", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.float16))
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x):
        return F.linear(x, self.codes.float() * self.scale.float(), self.bias)


def _quantize_head(model):
    model.head = Int8Linear(model.head)
    return model


# --------------------------------------------------------------------------------------------- round trips


def test_checkpoint_round_trips_bit_exactly(tmp_path):
    model = _random_tiny()
    path = tmp_path / "ckpt.pt"
    digest = save_checkpoint(path, model, tokenizer="merges...", metadata={"steps": 5, "val_loss": 1.25})
    loaded = load_checkpoint(path, model_cls=TinyLM)
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert loaded.config == model.config and loaded.weights_sha256 == digest == weights_sha256(model.state_dict())
    assert loaded.metadata == {"steps": 5, "val_loss": 1.25} and loaded.tokenizer_text == "merges..."
    assert not loaded.model.training
    fresh = TinyLM(TinyConfig())  # loading into an existing model of the same config also works
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary files left behind


def test_bf16_checkpoint_halves_the_weights_and_loads_back_as_fp32(tmp_path):
    model = _random_tiny()
    save_checkpoint(tmp_path / "a.pt", model)
    save_checkpoint(tmp_path / "b.pt", model, dtype=torch.bfloat16)
    raw = read_checkpoint(tmp_path / "b.pt")
    assert raw["weights_dtype"] == "bfloat16"
    assert (tmp_path / "b.pt").stat().st_size < 0.75 * (tmp_path / "a.pt").stat().st_size
    loaded = load_checkpoint(tmp_path / "b.pt", model_cls=TinyLM)
    assert loaded.model.head.weight.dtype == torch.float32
    assert torch.equal(loaded.model.head.weight, model.head.weight.to(torch.bfloat16).float())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", torch.float16])
def test_load_dtype_may_be_named_and_converts_the_parameters(tmp_path, dtype):
    model = _random_tiny()
    save_checkpoint(tmp_path / "a.pt", model)
    loaded = load_checkpoint(tmp_path / "a.pt", model_cls=TinyLM, dtype=dtype)
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert {p.dtype for p in loaded.model.parameters()} == {want}
    assert torch.equal(loaded.model.head.weight, model.head.weight.to(want))


# --------------------------------------------------------------------------------------------- damaged files


def test_truncated_checkpoint_raises_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _random_tiny())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, model_cls=TinyLM)


def test_tampered_weights_are_detected_by_the_sha256(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _random_tiny())
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.bias"][0] += 1e-3  # change one weight, keep the recorded hash
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, model_cls=TinyLM)


def test_flipped_bytes_inside_the_weights_are_detected(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = _random_tiny()
    save_checkpoint(path, model)
    data = bytearray(path.read_bytes())
    needle = model.emb.weight.detach().numpy().tobytes()[:16]
    at = bytes(data).find(needle)
    assert at > 0
    data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, model_cls=TinyLM)


def test_a_checkpoint_for_another_config_raises_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _random_tiny())
    other = TinyLM(TinyConfig(n_embd=32))
    with pytest.raises(CheckpointError, match="n_embd: checkpoint=16 vs model=32"):
        load_checkpoint(path, other)


def test_not_a_checkpoint_and_missing_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an LLM Internals checkpoint"):
        load_checkpoint(tmp_path / "other.pt", model_cls=TinyLM)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", model_cls=TinyLM)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model = _random_tiny()
    save_checkpoint(path, model, metadata={"version": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, metadata={"version": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert load_checkpoint(path, model_cls=TinyLM).metadata == {"version": 1}


def test_saving_a_model_without_a_config_is_refused(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("metadata, phrase", [
    ({"p": Path("/tmp/x")}, r"metadata\['p'\] is a PosixPath.*str\(path\)"),
    ({"loss": torch.tensor(1.5)}, r"metadata\['loss'\] is a Tensor.*\.item\(\)"),
    ({"runs": [1, {"when": object()}]}, r"metadata\['runs'\]\[1\]\['when'\] is a object"),
    ({3: "three"}, "keys must be str"),
    ({"s": {1, 2}}, "is a set"),
])
def test_metadata_that_json_cannot_hold_is_refused_at_save_time(tmp_path, metadata, phrase):
    with pytest.raises(TypeError, match=phrase):
        save_checkpoint(tmp_path / "x.pt", _random_tiny(), metadata=metadata)
    assert not os.listdir(tmp_path)  # nothing written: no file that fails to load later


def test_json_like_metadata_round_trips(tmp_path):
    meta = {"steps": 3, "lr": 1e-3, "ok": True, "none": None, "betas": [0.9, 0.99], "nested": {"a": ["b", 1]},
            "nan": float("nan")}
    save_checkpoint(tmp_path / "x.pt", _random_tiny(), metadata=meta)
    got = load_checkpoint(tmp_path / "x.pt", model_cls=TinyLM).metadata
    assert got.pop("nan") != got.get("nan", 0.0)  # NaN != NaN: it is a float nan
    meta.pop("nan")
    assert got == meta


# --------------------------------------------------------------------------------------------- swapped modules


def test_a_model_with_a_swapped_linear_loads_only_with_prepare_and_keeps_its_int8_buffers_exactly(tmp_path):
    model = _quantize_head(_random_tiny())
    path = tmp_path / "q.pt"
    save_checkpoint(path, model)
    assert read_checkpoint(path)["module_classes"]["head"] == "Int8Linear"
    with pytest.raises(CheckpointError, match=r"head: checkpoint=Int8Linear vs model=Linear(.|\n)*prepare="):
        load_checkpoint(path, model_cls=TinyLM)
    loaded = load_checkpoint(path, model_cls=TinyLM, prepare=_quantize_head).model
    assert loaded.head.codes.dtype == torch.int8 and torch.equal(loaded.head.codes, model.head.codes)
    assert loaded.head.scale.dtype == torch.float16 and torch.equal(loaded.head.scale, model.head.scale)
    x = torch.randint(16, (2, 8))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


def test_prepare_may_work_in_place_and_a_prepare_that_swaps_other_modules_is_refused(tmp_path):
    model = _quantize_head(_random_tiny())
    save_checkpoint(tmp_path / "q.pt", model)

    def in_place(m):
        m.head = Int8Linear(m.head)  # returns None

    loaded = load_checkpoint(tmp_path / "q.pt", model_cls=TinyLM, prepare=in_place).model
    assert torch.equal(loaded.head.codes, model.head.codes)

    def wrong(m):
        m.blocks[0][0] = Int8Linear(m.blocks[0][0])
        return m

    with pytest.raises(CheckpointError, match=r"2 module\(s\) differ(.|\n)*blocks.0.0: checkpoint=Linear vs "
                                              r"model=Int8Linear(.|\n)*did not swap the same modules"):
        load_checkpoint(tmp_path / "q.pt", model_cls=TinyLM, prepare=wrong)


class TinyMoE(nn.Module):
    """Two experts and a router, not expressible by GPTConfig."""

    def __init__(self, n_embd):
        super().__init__()
        self.router = nn.Linear(n_embd, 2, bias=False)
        self.experts = nn.ModuleList(nn.Linear(n_embd, n_embd) for _ in range(2))

    def forward(self, x):
        gate = self.router(x).softmax(-1)
        return sum(gate[..., i:i + 1] * e(x) for i, e in enumerate(self.experts))


def _moe(model):
    for block in model.blocks:
        block.mlp = TinyMoE(model.config.n_embd)
    return model


def test_a_gpt_whose_mlps_were_replaced_round_trips_with_prepare(tmp_path):
    from utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = _moe(GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    save_checkpoint(tmp_path / "moe.pt", model, metadata={"experts": 2})
    with pytest.raises(CheckpointError, match=r"blocks.0.mlp: checkpoint=TinyMoE vs model=MLP"):
        load_checkpoint(tmp_path / "moe.pt")
    loaded = load_checkpoint(tmp_path / "moe.pt", prepare=_moe).model
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randint(32, (2, 8))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


def test_a_gpt_with_the_previous_token_smear_round_trips_and_rebuilds_from_its_config(tmp_path):
    from utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, smear=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    save_checkpoint(tmp_path / "smear.pt", model)
    loaded = load_checkpoint(tmp_path / "smear.pt").model  # rebuilt from the stored config alone
    assert loaded.config.smear and torch.equal(loaded.smear, model.smear)
    x = torch.randint(32, (2, 8))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


# --------------------------------------------------------------------------------------------- hashes and writes


def test_the_hash_helpers_match_hashlib(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"\x00abc" * 1000)
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(b"\x00abc" * 1000).hexdigest()
    assert text_sha256("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    a, b = {"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.float64)}
    assert weights_sha256(a) != weights_sha256(b)  # the dtype is part of the hash


def test_atomic_writes_fsync_the_data_before_the_rename_and_keep_newlines(tmp_path, monkeypatch):
    synced = []  # (is a regular file, its size) of every fsynced descriptor
    real = os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync",
                        lambda fd: (synced.append((stat.S_ISREG(os.fstat(fd).st_mode), os.fstat(fd).st_size)), real(fd)))
    atomic_write_text(tmp_path / "a.txt", "x\r\ny\n")
    assert (tmp_path / "a.txt").read_bytes() == b"x\r\ny\n"
    assert (True, 5) in synced  # the temporary file, with all its bytes, before the rename
    atomic_write_bytes(tmp_path / "b.bin", b"\x01\x02")
    assert (tmp_path / "b.bin").read_bytes() == b"\x01\x02"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_an_atomic_write_gives_a_new_file_the_usual_permissions_and_keeps_an_existing_files(tmp_path):
    atomic_write_text(tmp_path / "new.txt", "x")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644  # not mkstemp's private 0o600
    os.chmod(tmp_path / "new.txt", 0o640)
    atomic_write_text(tmp_path / "new.txt", "y")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    def fail(f):
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old" and len(os.listdir(tmp_path)) == 1


# --------------------------------------------------------------------------------------------- the course model


def test_the_committed_course_model_loads_with_its_tokenizer():
    from utils.pretrain import CHECKPOINT_PATH, course_model_info, load_course_model

    assert CHECKPOINT_PATH.stat().st_size <= 20 * 10**6
    model, tok = load_course_model()
    info = course_model_info()
    assert model.config.vocab_size == tok.vocab_size == info["tokenizer_vocab_size"]
    assert not model.training and info["val_bpc"] > 0 and info["steps"] > 0
    ids = tok.encode("ROMEO:\n")
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), tok.vocab_size) and torch.isfinite(logits).all()


def test_a_missing_course_model_says_how_to_rebuild_it(tmp_path):
    from utils.pretrain import load_course_model

    with pytest.raises(FileNotFoundError, match="make pretrain"):
        load_course_model(tmp_path / "course-gpt.pt")


def test_a_tokenizer_that_does_not_belong_to_the_checkpoint_is_refused(tmp_path):
    import shutil

    from utils.pretrain import CHECKPOINT_PATH, TOKENIZER_PATH, load_course_model

    shutil.copy(CHECKPOINT_PATH, tmp_path / "course-gpt.pt")
    text = TOKENIZER_PATH.read_text(encoding="utf-8")
    (tmp_path / "course-tokenizer.json").write_text(text.replace('"merges"', '"merges" ', 1), encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_course_model(tmp_path / "course-gpt.pt")
