"""The training loop, the schedule, parameter groups, precision (utils/training.py, utils/precision.py)."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.metrics import bits_per_character, sum_token_nll
from utils.training import TrainConfig, enable_gradient_checkpointing, lr_schedule, train


pytestmark = pytest.mark.usefixtures("one_thread")


from tiny_models import TinyConfig, TinyLM  # noqa: E402


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


def _record_optimizer_lrs(monkeypatch):
    """Every optimizer step's actual ``param_groups[i]["lr"]`` (what AdamW multiplies the update by)."""
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def test_the_optimizer_uses_the_scheduled_learning_rate_at_every_step(monkeypatch):
    seen = _record_optimizer_lrs(monkeypatch)
    model = TinyLM(TinyConfig())
    result = train(model, _corpus(), None, _quiet(max_steps=20, warmup_steps=5, lr=1e-2, min_lr=1e-3, log_interval=7))
    expected = [lr_schedule(s, lr=1e-2, min_lr=1e-3, warmup_steps=5, total_steps=20) for s in range(20)]
    assert len(seen) == 20
    for step, group_lrs in enumerate(seen):
        assert group_lrs == pytest.approx([expected[step]] * len(group_lrs)), step
    assert [lr for _, lr in result.lrs] == pytest.approx([expected[s - 1] for s, _ in result.lrs])  # and it logs them


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
    from utils.measure import peak_tensor_memory

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
    with pytest.raises(ValueError, match="train_data"):
        train(TinyLM(TinyConfig()), None, None, _quiet(max_steps=1))


def test_auto_precision_is_bf16_exactly_where_the_hardware_makes_it_fast(monkeypatch):
    from utils import precision as training

    assert training.resolve_precision("cpu", "fp32") == "fp32"
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: True)
    assert training.resolve_precision("cpu", "auto") == "bf16"
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: False)
    assert training.resolve_precision("cpu", "auto") == "fp32"


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True),
                                                        (False, False, False)])
def test_cpu_has_fast_bf16_reports_the_amx_and_avx512_bf16_probes(monkeypatch, amx, avx512_bf16, expected):
    from utils import precision as training

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert training.cpu_has_fast_bf16() is expected


def test_cpu_has_fast_bf16_is_false_on_a_torch_without_the_probes(monkeypatch):
    from utils import precision as training

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


# --------------------------------------------------------------------------------------------- parameter groups


def test_param_groups_scale_the_scheduled_lr_per_group_and_set_their_own_weight_decay(monkeypatch):
    seen_lrs = _record_optimizer_lrs(monkeypatch)
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    head = [model.head.weight, model.head.bias]
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    groups = [{"params": rest, "weight_decay": 0.5}, {"params": head, "weight_decay": 0.0, "lr_scale": 0.25}]
    captured = {}
    original_init = torch.optim.AdamW.__init__

    def spy_init(self, params, *args, **kwargs):
        original_init(self, params, *args, **kwargs)
        captured["groups"] = [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in self.param_groups]

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy_init)
    train(model, _corpus(), None, _quiet(max_steps=6, warmup_steps=2, lr=1e-2, min_lr=1e-3), param_groups=groups)
    assert captured["groups"] == [(len(rest), 0.5, 1.0), (2, 0.0, 0.25)]
    expected = [lr_schedule(s, lr=1e-2, min_lr=1e-3, warmup_steps=2, total_steps=6) for s in range(6)]
    assert [lrs for lrs in seen_lrs] == [pytest.approx([e, 0.25 * e]) for e in expected]


def test_param_groups_may_be_a_function_of_the_model_and_lr_scale_zero_freezes_a_group():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    before = model.head.weight.detach().clone()

    def groups(m):
        head = list(m.head.parameters())
        return [{"params": [p for p in m.parameters() if all(p is not q for q in head)]},
                {"params": head, "lr_scale": 0.0}]

    train(model, _corpus(), None, _quiet(max_steps=3, lr=1e-2, weight_decay=0.0), param_groups=groups)
    assert torch.equal(model.head.weight, before)
    assert not torch.equal(model.emb.weight, TinyLM(TinyConfig()).emb.weight)


def test_only_parameters_that_require_grad_are_optimised(monkeypatch):
    optimised = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        optimised.append({id(p) for g in self.param_groups for p in g["params"]})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    model.emb.weight.requires_grad_(False)  # a frozen base, as with LoRA
    frozen = model.emb.weight.detach().clone()
    train(model, _corpus(), None, _quiet(max_steps=3, lr=1e-2, weight_decay=1.0))  # decay would move it too
    assert torch.equal(model.emb.weight, frozen)
    assert id(model.emb.weight) not in optimised[0] and id(model.head.weight) in optimised[0]


@pytest.mark.parametrize("groups, error, phrase", [
    (lambda m: [{"params": [m.head.weight]}], ValueError, "in no group"),
    (lambda m: [{"params": list(m.parameters())}, {"params": [m.head.bias]}], ValueError, "one group"),
    (lambda m: [{"params": list(m.parameters()), "lr": 1e-3}], ValueError, "lr_scale"),
    (lambda m: [{"params": list(m.parameters()), "lr_scale": -1}], ValueError, "lr_scale"),
    (lambda m: [{"params": list(m.parameters()), "weight_decay": float("nan")}], ValueError, "weight_decay"),
    (lambda m: [{"params": list(TinyLM(TinyConfig()).parameters())}], ValueError, "not in this model"),
    (lambda m: [], TypeError, "non-empty list"),
    (lambda m: [list(m.parameters())], TypeError, "'params' entry"),
])
def test_bad_param_groups_are_refused_before_anything_changes(groups, error, phrase):
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=phrase):
        train(model, _corpus(), None, _quiet(max_steps=2), param_groups=groups)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_make_optimizer_replaces_adamw_and_the_schedule_drives_its_groups():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    seen, lrs = {}, []

    def sgd(m, groups, config):
        seen["groups"] = [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in groups]
        seen["lr"] = config.lr
        return torch.optim.SGD(groups, lr=config.lr)

    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        lrs.append([g["lr"] for g in self.param_groups])
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = step
    try:
        before = model.head.weight.detach().clone()
        train(model, _corpus(), None, _quiet(max_steps=4, warmup_steps=2, lr=1e-2, min_lr=1e-3), make_optimizer=sgd)
    finally:
        torch.optim.SGD.step = original
    assert seen["lr"] == 1e-2 and len(seen["groups"]) == 2  # the default groups: decayed and not
    expected = [lr_schedule(s, lr=1e-2, min_lr=1e-3, warmup_steps=2, total_steps=4) for s in range(4)]
    assert lrs == [pytest.approx([e, e]) for e in expected]
    assert not torch.equal(model.head.weight, before)


@pytest.mark.parametrize("make, error, phrase", [
    ("not a function", TypeError, "make_optimizer must be a function"),
    (lambda m, groups, config: torch.optim.SGD(m.parameters(), lr=0.1), ValueError, "lr_scale"),
    (lambda m, groups, config: None, ValueError, "make_optimizer"),
])
def test_bad_make_optimizer_is_refused_by_name(make, error, phrase):
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    with pytest.raises(error, match=phrase):
        train(model, _corpus(), None, _quiet(max_steps=2), make_optimizer=make)


# --------------------------------------------------------------------------------------------- auxiliary losses


class AuxLM(TinyLM):
    """Sets ``loss_parts`` like a GPT with a Mixture-of-Experts MLP: the loss is lm + aux.

    Here aux = 0.001 * (mean input token id), so the logged value is known from the batches alone."""

    def forward(self, idx, targets=None):
        logits, lm = super().forward(idx, targets)
        if targets is None:
            return logits, None
        aux = 0.001 * idx.float().mean() + 0 * self.head.bias.sum()
        self.loss_parts = {"lm": lm.detach(), "aux": aux.detach()}
        return logits, lm + aux


def test_auxiliary_losses_are_logged_beside_the_training_loss():
    torch.manual_seed(0)
    calls = {"n": 0}

    def batches(split):  # micro-batches alternate between all-1 and all-3 inputs: aux 0.001 and 0.003
        calls["n"] += 1
        token = 1 if calls["n"] % 2 else 3
        return torch.full((2, 8), token), torch.full((2, 8), token)

    result = train(AuxLM(TinyConfig()), config=_quiet(max_steps=6, log_interval=2, grad_accum_steps=2,
                                                      eval_iters=1), get_batch=batches)
    assert [s for s, _ in result.aux_losses] == [s for s, _ in result.train_losses] == [1, 2, 4, 6]
    assert [aux for _, aux in result.aux_losses] == pytest.approx([0.002] * 4)  # mean of the step's micro-batches
    assert all(loss > aux for (_, loss), (_, aux) in zip(result.train_losses, result.aux_losses))
    assert train(TinyLM(TinyConfig()), _corpus(), None, _quiet(max_steps=2)).aux_losses == []


# --------------------------------------------------------------------------------------------- non-finite losses


def test_a_huge_learning_rate_stops_training_with_an_error_naming_the_step_and_the_cause():
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match=r"the training loss became nan at step [2-9] .*learning rate too high.*lr=1e\+06"):
        train(TinyLM(TinyConfig()), _corpus(), None, _quiet(max_steps=50, lr=1e6, min_lr=0.0, log_interval=10))


class NaNAfter(TinyLM):
    """Returns a NaN loss from its ``n``-th forward on: a fault at a step that is not a log step."""

    def __init__(self, config, n):
        super().__init__(config)
        self.calls, self.n = 0, n

    def forward(self, idx, targets=None):
        logits, loss = super().forward(idx, targets)
        self.calls += 1
        return logits, (loss * float("nan") if self.calls >= self.n and loss is not None else loss)


def test_a_nan_between_log_steps_is_reported_with_its_own_step():
    with pytest.raises(FloatingPointError, match="became nan at step 3 ") as info:
        train(NaNAfter(TinyConfig(), n=3), _corpus(), None, _quiet(max_steps=30, log_interval=10))
    assert "precision fp32" in str(info.value)
    with pytest.raises(FloatingPointError, match="at step 1, before any update"):
        train(NaNAfter(TinyConfig(), n=1), _corpus(), None, _quiet(max_steps=30, log_interval=10))
    with pytest.raises(FloatingPointError, match="step 7 .*fp16 precision: float16 holds at most 65504"):
        train(NaNAfter(TinyConfig(), n=7), _corpus(), None, _quiet(max_steps=8, log_interval=100, precision="fp16"))


# --------------------------------------------------------------------------------------------- precision and compile


def test_fp16_on_cpu_trains_with_a_gradient_scaler(monkeypatch):
    scales, dtypes = [], []
    original = torch.amp.GradScaler.update

    def update(self, *args, **kwargs):
        scales.append(self.get_scale())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    model.head.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    result = train(model, _corpus(), None, _quiet(max_steps=40, batch_size=8, lr=3e-2, min_lr=3e-3,
                                                  precision="fp16"))
    assert len(scales) == 40 and scales[0] == 65536.0  # the scaler ran every step, from its initial scale
    assert set(dtypes) == {torch.float16}  # the forward really computed in float16
    assert result.train_losses[-1][1] < 0.5 * result.train_losses[0][1]


def test_compiled_training_learns_the_tiny_corpus(monkeypatch):
    # torch.compile's TorchDynamo graph capture and AOTAutograd (forward + backward graphs) run for real;
    # only Inductor's C++ code generation is swapped for eager kernels ("aot_eager"): it took ~100 s here.
    compiled, real_compile = [], torch.compile

    def compile_fast(model, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_fast)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    result = train(model, _corpus(), None, _quiet(max_steps=30, batch_size=8, lr=3e-2, min_lr=3e-3, compile=True))
    assert compiled == [model]
    assert result.train_losses[-1][1] < 0.5 * result.train_losses[0][1]
    assert not hasattr(model, "_orig_mod")  # trained in place: the caller's module holds the weights
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 1  # the forward really went through a captured graph


class _AuxMLP(nn.Module):
    """An MLP that also returns an auxiliary loss (as a Mixture-of-Experts router does)."""

    def __init__(self, n_embd):
        super().__init__()
        self.fc = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        y = self.fc(x)
        return y, {"aux_loss": 0.01 * y.pow(2).mean()}


def test_a_gpt_with_an_auxiliary_loss_mlp_logs_the_aux_part_beside_the_total():
    from utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=16))
    for block in model.blocks:
        block.mlp = _AuxMLP(16)
    result = train(model, _corpus(), None, _quiet(max_steps=30, batch_size=8, lr=1e-2, min_lr=1e-3, log_interval=5))
    assert [s for s, _ in result.aux_losses] == [s for s, _ in result.train_losses] == [1, 5, 10, 15, 20, 25, 30]
    aux = [a for _, a in result.aux_losses]
    assert all(a > 0 for a in aux) and all(a < total for a, (_, total) in zip(aux, result.train_losses))
    assert result.final_val_loss < result.train_losses[0][1]  # the validation loss is pure cross-entropy


def test_a_loss_of_shape_one_is_logged_like_a_scalar():
    def loss_of_shape_one(model, batch):
        x, y = batch
        return model(x, y)[1].reshape(1)

    torch.manual_seed(0)
    result = train(TinyLM(TinyConfig()), _corpus(), None, _quiet(max_steps=3), compute_loss=loss_of_shape_one)
    assert all(isinstance(v, float) and v > 0 for _, v in result.train_losses)
