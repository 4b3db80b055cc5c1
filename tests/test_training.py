"""The training loop, the schedule, bits per character, and checkpoints (utils/training.py)."""

import math
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.metrics import bits_per_character, sum_token_nll
from utils.training import (CheckpointError, TrainConfig, enable_gradient_checkpointing,
                            load_checkpoint, lr_schedule, read_checkpoint, save_checkpoint,
                            train, weights_sha256)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids thread-pool overhead (and contention on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class TinyConfig:
    vocab_size: int = 16
    block_size: int = 8
    n_embd: int = 16


class TinyLM(nn.Module):
    """A stand-in language model (embedding -> MLP -> logits), enough to exercise the loop."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(config.n_embd, config.n_embd), nn.GELU())])
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx, targets=None):
        h = self.emb(idx)
        for block in self.blocks:
            h = h + block(h)
        logits = self.head(h)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def _corpus(n=2000):
    # a predictable stream: 0 1 2 ... 15 0 1 2 ... (the next token is a function of the current one)
    return torch.arange(n) % 16


def _quiet(**kw):
    base = dict(progress=False, eval_interval=0, eval_iters=2, warmup_steps=2, log_interval=1)
    base.update(kw)
    return TrainConfig(**base)


def test_a_few_steps_of_training_reduce_the_loss_on_a_tiny_corpus():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    data = _corpus()
    result = train(model, data[:1600], data[1600:], _quiet(max_steps=60, batch_size=8, lr=3e-2, min_lr=3e-3))
    first, last = result.train_losses[0][1], result.train_losses[-1][1]
    assert first > 2.0  # about ln(16) = 2.77 at initialisation
    assert last < 0.5 * first
    assert result.steps == 60 and result.tokens == 60 * 8 * 8
    assert result.final_val_loss < 1.0


def test_epoch_sampling_trains_on_every_window_of_a_pass(monkeypatch):
    import utils.data

    seen = []
    original = utils.data.EpochSampler.next_batch

    def spy(self):
        x, y = original(self)
        seen.append(x[:, 0].clone())
        return x, y

    monkeypatch.setattr(utils.data.EpochSampler, "next_batch", spy)
    torch.manual_seed(0)
    data = torch.arange(720)  # token = position, so a window's first input says where it starts
    model = TinyLM(TinyConfig(vocab_size=720))
    result = train(model, data, None, _quiet(max_steps=10, batch_size=8, lr=3e-2, sampling="epochs"))
    assert result.steps == 10 and len(seen) == 10
    first_pass = torch.cat(seen)[:79].tolist()  # a pass has 79 or 80 windows of block_size + 1 = 9 tokens
    assert len(set(first_pass)) == 79  # no window twice
    assert len({start % 9 for start in first_pass}) == 1  # non-overlapping: one offset for the pass
    with pytest.raises(ValueError, match="sampling"):
        TrainConfig(sampling="shuffled")


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)
    lrs = [lr_schedule(s, **kw) for s in range(130)]
    warm = lrs[:10]
    assert all(b > a for a, b in zip(warm, warm[1:]))
    assert warm[0] == pytest.approx(1e-3 / 11) and warm[4] == pytest.approx(5e-3 / 11)
    assert lrs[10] == pytest.approx(1e-3)  # peak right after warmup
    assert lrs[60] == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the cosine
    decay = lrs[10:111]
    assert all(b <= a for a, b in zip(decay, decay[1:]))
    assert lrs[110] == pytest.approx(1e-4) and lrs[129] == pytest.approx(1e-4)


def test_the_loop_applies_the_schedule_it_reports():
    model = TinyLM(TinyConfig())
    result = train(model, _corpus(), None, _quiet(max_steps=20, warmup_steps=5, lr=1e-2, min_lr=1e-3))
    expected = [lr_schedule(s - 1, lr=1e-2, min_lr=1e-3, warmup_steps=5, total_steps=20) for s, _ in result.lrs]
    assert [lr for _, lr in result.lrs] == pytest.approx(expected)


def test_gradient_accumulation_matches_one_big_batch():
    data = _corpus()
    x = torch.stack([data[i:i + 8] for i in range(0, 64, 8)])
    y = torch.stack([data[i + 1:i + 9] for i in range(0, 64, 8)])
    halves = iter([])

    def big(split):
        return x, y

    def small(split):
        nonlocal halves
        try:
            return next(halves)
        except StopIteration:
            halves = iter([(x[:4], y[:4]), (x[4:], y[4:])])
            return next(halves)

    torch.manual_seed(0)
    a = TinyLM(TinyConfig())
    b = TinyLM(TinyConfig())
    b.load_state_dict(a.state_dict())
    train(a, config=_quiet(max_steps=3, batch_size=8, lr=1e-2), get_batch=big)
    train(b, config=_quiet(max_steps=3, batch_size=4, grad_accum_steps=2, lr=1e-2), get_batch=small)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_a_time_budget_stops_training_early():
    model = TinyLM(TinyConfig())
    result = train(model, _corpus(), None, _quiet(max_steps=10**6, time_budget_s=0.3))
    assert result.stopped_by == "time_budget"
    assert 0 < result.steps < 10**6 and result.seconds >= 0.3


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    x = _corpus()[:32].view(4, 8)
    _, loss = model(x, x)
    loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    enable_gradient_checkpointing(model.blocks)
    _, loss = model(x, x)
    loss.backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(plain, model.parameters()))
    enable_gradient_checkpointing(model.blocks, enabled=False)
    assert "_unckpt_forward" not in model.blocks[0].__dict__


def test_gradient_checkpointing_lowers_peak_memory():
    from utils.attention import peak_tensor_memory

    torch.manual_seed(0)
    model = TinyLM(TinyConfig(n_embd=64))
    model.blocks = nn.ModuleList([nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)) for _ in range(4)])
    x = torch.randint(16, (64, 8))
    peaks = []
    for enabled in (False, True):
        enable_gradient_checkpointing(model.blocks, enabled)
        _, peak = peak_tensor_memory(lambda: model(x, x)[1].backward())
        peaks.append(peak)
    assert peaks[1] < 0.7 * peaks[0]


def test_bits_per_character_of_a_uniform_model_is_log2_of_the_vocabulary():
    class Uniform(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = TinyConfig(vocab_size=256, block_size=7)
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, idx, targets=None):
            return torch.zeros(*idx.shape, 256) * self.w, None

    ids = list(range(100))  # 100 characters, 99 of them predicted (8 bits each)
    assert bits_per_character(Uniform(), ids, n_characters=100, batch_size=3) == pytest.approx(8 * 99 / 100)
    nll, n = sum_token_nll(Uniform(), ids, batch_size=3)
    assert n == 99 and nll == pytest.approx(99 * math.log(256))


def test_bad_training_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="int8")
    with pytest.raises(ValueError, match="fp16"):
        train(TinyLM(TinyConfig()), _corpus(), None, _quiet(max_steps=1, precision="fp16"), device="cpu")
    with pytest.raises(ValueError, match="train_data"):
        train(TinyLM(TinyConfig()), None, None, _quiet(max_steps=1))


def test_auto_precision_is_bf16_exactly_where_the_hardware_makes_it_fast(monkeypatch):
    from utils import training

    assert training.resolve_precision("cpu", "fp32") == "fp32"
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: True)
    assert training.resolve_precision("cpu", "auto") == "bf16"
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: False)
    assert training.resolve_precision("cpu", "auto") == "fp32"


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True),
                                                        (False, False, False)])
def test_cpu_has_fast_bf16_reports_the_amx_and_avx512_bf16_probes(monkeypatch, amx, avx512_bf16, expected):
    from utils import training

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert training.cpu_has_fast_bf16() is expected


def test_cpu_has_fast_bf16_is_false_on_a_torch_without_the_probes(monkeypatch):
    from utils import training

    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert training.cpu_has_fast_bf16() is False  # an older torch: stay in fp32


def test_bf16_autocast_training_step_stays_close_to_fp32():
    from utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, norm="rmsnorm",
                          mlp="swiglu", pos="rope", bias=False))
    x = torch.randint(0, 64, (4, 16))
    _, loss32 = model(x, x)
    loss32.backward()
    g32 = model.blocks[0].attn.qkv_proj.weight.grad.clone()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(x, x)
    loss16.backward()
    g16 = model.blocks[0].attn.qkv_proj.weight.grad
    assert loss16.dtype == torch.float32  # the loss is computed in fp32 from bf16 logits
    assert abs(loss16.item() - loss32.item()) < 0.02
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99


# --------------------------------------------------------------------------------------------- checkpoints


def _trained_tiny():
    torch.manual_seed(1)
    model = TinyLM(TinyConfig())
    train(model, _corpus(), None, _quiet(max_steps=5))
    return model


def test_checkpoint_round_trips_bit_exactly(tmp_path):
    model = _trained_tiny()
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
    model = _trained_tiny()
    save_checkpoint(tmp_path / "a.pt", model)
    save_checkpoint(tmp_path / "b.pt", model, dtype=torch.bfloat16)
    raw = read_checkpoint(tmp_path / "b.pt")
    assert raw["weights_dtype"] == "bfloat16"
    loaded = load_checkpoint(tmp_path / "b.pt", model_cls=TinyLM)
    assert loaded.model.head.weight.dtype == torch.float32
    assert torch.equal(loaded.model.head.weight, model.head.weight.to(torch.bfloat16).float())


def test_truncated_checkpoint_raises_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained_tiny())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, model_cls=TinyLM)


def test_tampered_weights_are_detected_by_the_sha256(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained_tiny())
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.bias"][0] += 1e-3  # change one weight, keep the recorded hash
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, model_cls=TinyLM)


def test_flipped_bytes_inside_the_weights_are_detected(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = _trained_tiny()
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
    save_checkpoint(path, _trained_tiny())
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
    model = _trained_tiny()
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
