"""Quantization (utils/quantization.py): round trips, packing, layers, GPTQ, QAT, checkpoints, parity
with torchao and bitsandbytes (test-only dependencies: skipped when they are not installed)."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.pretrain import CHECKPOINT_PATH as ROOT_CKPT
from utils.quantization import (FLOAT_FORMATS, FakeQuantLinear, Int8MixedLinear, QuantConfig, QuantEmbedding,
                                QuantLinear, W8A8Linear, convert_qat, dequantize, fake_quantize,
                                float_format, gptq_quantize, gptq_quantize_model, hessian_from_inputs,
                                linear_input_absmax, model_size_bytes, nf4_codebook, pack_codes, prepare_qat,
                                quantize, quantize_model, quantized_modules, representable_values, round_to_format,
                                unpack_codes)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_gpt(seed=0, **kw):
    from utils.model import GPT, GPTConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, norm="rmsnorm", mlp="swiglu",
               pos="rope", bias=False)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


SCHEMES = [(bits, sym, gran, gs) for bits in range(2, 9) for sym in (True, False)
           for gran, gs in (("tensor", None), ("channel", None), ("group", 16))]


# ---------------------------------------------------------------------------------------------
# Round trips and packing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,symmetric,granularity,group_size", SCHEMES)
def test_round_trip_error_is_at_most_half_a_step_for_every_scheme(bits, symmetric, granularity, group_size):
    torch.manual_seed(bits)
    # rows of very different magnitudes, so per-tensor / per-channel / per-group scales all differ
    w = torch.randn(12, 48) * torch.logspace(-3, 1, 12)[:, None]
    qt = quantize(w, bits, symmetric, granularity, group_size)
    err = (w - dequantize(qt)).abs()
    bound = qt.step() / 2
    assert torch.all(err <= bound * (1 + 1e-5) + 1e-12), f"max excess {(err - bound).max().item()}"
    # and round-to-nearest really uses the grid: the error is not trivially zero
    assert err.max() > 0


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
def test_low_precision_scales_are_rounded_up_so_the_bound_still_holds(scale_dtype):
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.02
    qt = quantize(w, 4, True, "group", 32, scale_dtype=scale_dtype)
    assert qt.scales.dtype == getattr(torch, scale_dtype)
    exact = w.reshape(16, 2, 32).abs().amax(-1) / 7
    assert torch.all(qt.scales.float() >= exact)  # never smaller: no code needs clipping
    assert torch.all((w - dequantize(qt)).abs() <= qt.step() / 2 * (1 + 1e-5))


def test_nf4_round_trip_within_half_the_largest_codebook_gap():
    torch.manual_seed(0)
    w = torch.randn(8, 128)
    qt = quantize(w, 4, granularity="group", group_size=64, format="nf4")
    gap = (nf4_codebook()[1:] - nf4_codebook()[:-1]).max()
    bound = w.reshape(8, 2, 64).abs().amax(-1, keepdim=True).expand(8, 2, 64).reshape(8, 128) * gap / 2
    assert torch.all((w - dequantize(qt)).abs() <= bound + 1e-6)
    # every value maps to its nearest codebook level
    levels = dequantize(qt).reshape(8, 2, 64) / qt.scales[..., None]
    nearest = nf4_codebook()[(w.reshape(8, 2, 64) / qt.scales[..., None])[..., None].sub(nf4_codebook()).abs().argmin(-1)]
    assert torch.allclose(levels, nearest, atol=1e-6)


@pytest.mark.parametrize("bits", range(2, 9))
def test_packing_round_trips_exactly_and_uses_bits_per_code(bits):
    g = torch.Generator().manual_seed(bits)
    for n in (1, 7, 8, 9, 1000, 1003):
        codes = torch.randint(0, 2 ** bits, (n,), generator=g, dtype=torch.uint8)
        packed = pack_codes(codes, bits)
        assert packed.dtype == torch.uint8
        assert packed.numel() == (n if bits == 8 else math.ceil(n / 8) * bits)
        assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_int4_packs_two_codes_per_byte_low_nibble_first_and_int2_four_per_byte():
    c4 = torch.tensor([1, 2, 3, 4, 5, 6, 7, 15], dtype=torch.uint8)
    assert pack_codes(c4, 4).tolist() == [1 | 2 << 4, 3 | 4 << 4, 5 | 6 << 4, 7 | 15 << 4]
    c2 = torch.tensor([1, 2, 3, 0, 3, 3, 0, 1], dtype=torch.uint8)
    assert pack_codes(c2, 2).tolist() == [1 | 2 << 2 | 3 << 4, 3 | 3 << 2 | 0 << 4 | 1 << 6]


def test_quantized_tensor_stores_packed_codes_and_reports_bits_per_weight():
    w = torch.randn(64, 128)
    qt4 = quantize(w, 4, True, "group", 32, scale_dtype="float16")
    assert qt4.codes.numel() == 64 * 128 // 2
    assert qt4.bits_per_weight == pytest.approx(4 + 16 / 32)
    qt3 = quantize(w, 3, False, "channel")
    assert qt3.codes.numel() == 64 * 128 * 3 // 8
    assert qt3.bits_per_weight == pytest.approx(3 + (32 + 8) / 128)
    assert torch.equal(qt3.int_codes(), unpack_codes(qt3.codes, 3, w.numel()).reshape(64, 128).to(torch.int16))


def test_asymmetric_uses_all_levels_on_an_all_positive_range_and_beats_symmetric():
    torch.manual_seed(0)
    w = torch.rand(16, 64) * 3 + 0.01  # all positive, like activations after a ReLU
    asym, sym = quantize(w, 4, False, "channel"), quantize(w, 4, True, "channel")
    assert torch.all(asym.zero_points == 0)  # the range [0, max] starts at code 0
    assert asym.int_codes().max() == 15  # ... and reaches the top code
    assert sym.int_codes().min() >= 0  # symmetric leaves every negative code unused
    err_a = (w - dequantize(asym)).abs().mean()
    err_s = (w - dequantize(sym)).abs().mean()
    assert err_a < 0.6 * err_s
    neg = -w  # all negative: the zero point sits at the top
    qn = quantize(neg, 4, False, "channel")
    assert torch.all(qn.zero_points == 15) and torch.all((neg - dequantize(qn)).abs() <= qn.step() / 2 * (1 + 1e-5))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("fmt", ["int", "nf4"])
def test_constant_and_zero_tensors_do_not_divide_by_zero(symmetric, fmt):
    if fmt == "nf4" and not symmetric:
        return
    for w in (torch.zeros(4, 32), torch.full((4, 32), 2.5), torch.full((4, 32), -0.75)):
        qt = quantize(w, 4, symmetric, "group", 16, format=fmt)
        d = dequantize(qt)
        assert torch.isfinite(qt.scales.float()).all() and torch.isfinite(d).all()
        assert torch.allclose(d, w, atol=1e-6)


def test_zero_is_exact_in_every_scheme():
    w = torch.randn(8, 32)
    w[:, ::3] = 0.0
    for bits, sym, gran, gs in [(2, False, "channel", None), (3, True, "group", 16), (8, False, "tensor", None)]:
        assert torch.all(dequantize(quantize(w, bits, sym, gran, gs))[:, ::3] == 0)
    assert torch.all(dequantize(quantize(w, 4, format="nf4"))[:, ::3] == 0)


def test_nf4_codebook_matches_the_paper_construction():
    cb = nf4_codebook()
    assert cb.shape == (16,) and cb[0] == -1 and cb[-1] == 1 and (cb == 0).sum() == 1
    assert torch.all(cb[1:] > cb[:-1])
    assert (cb > 0).sum() == 8 and (cb < 0).sum() == 7


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 9, 0, 16, 4.0, True])
def test_bits_outside_2_to_8_are_rejected(bits):
    with pytest.raises(ValueError, match="bits must be an int from 2 to 8"):
        quantize(torch.randn(4, 8), bits)


def test_group_size_that_does_not_divide_the_width_is_rejected_with_divisors():
    with pytest.raises(ValueError, match=r"group_size=24 does not divide the row width 64.*\[16, 32, 64\]"):
        quantize(torch.randn(4, 64), 4, granularity="group", group_size=24)
    with pytest.raises(ValueError, match="needs a positive int group_size"):
        quantize(torch.randn(4, 64), 4, granularity="group")
    with pytest.raises(ValueError, match="only applies to granularity='group'"):
        quantize(torch.randn(4, 64), 4, granularity="channel", group_size=32)


def test_non_float_tensors_and_other_bad_inputs_are_rejected():
    with pytest.raises(TypeError, match="floating-point tensor.*torch.int64"):
        quantize(torch.arange(16).reshape(4, 4), 8)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        quantize([[1.0, 2.0]], 8)
    with pytest.raises(ValueError, match="granularity must be one of"):
        quantize(torch.randn(4, 4), 8, granularity="row")
    with pytest.raises(ValueError, match="needs a 2-D"):
        quantize(torch.randn(4, 4, 4), 8, granularity="channel")
    with pytest.raises(ValueError, match="inf or nan"):
        quantize(torch.tensor([[1.0, float("nan")]]), 8)
    with pytest.raises(ValueError, match="4-bit format"):
        quantize(torch.randn(4, 4), 3, format="nf4")
    with pytest.raises(ValueError, match="scale_dtype"):
        quantize(torch.randn(4, 4), 8, scale_dtype="float64")
    with pytest.raises(ValueError, match="empty"):
        quantize(torch.zeros(0, 4), 8)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        dequantize(torch.randn(3))
    with pytest.raises(ValueError, match="QuantConfig.kind"):
        QuantConfig(kind="int3")
    with pytest.raises(ValueError, match="int8, symmetric, per channel"):
        QuantConfig(kind="w8a8", bits=4)


# ---------------------------------------------------------------------------------------------
# Layers and quantize_model
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,symmetric,granularity,group_size,fmt", [
    (8, True, "channel", None, "int"), (8, False, "group", 16, "int"), (4, True, "group", 16, "int"),
    (3, False, "channel", None, "int"), (4, True, "group", 16, "nf4"), (2, True, "tensor", None, "int")])
def test_quant_linear_equals_f_linear_with_the_dequantized_weight(bits, symmetric, granularity, group_size, fmt):
    torch.manual_seed(1)
    lin = nn.Linear(48, 24)
    q = QuantLinear.from_linear(lin, bits, symmetric, granularity, group_size, fmt)
    x = torch.randn(5, 7, 48)
    w = dequantize(quantize(lin.weight, bits, symmetric, granularity, group_size, format=fmt))
    torch.testing.assert_close(q(x), F.linear(x, w, lin.bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(q.weight, w)
    keys = set(q.state_dict())
    assert "codes" in keys and "scales" in keys and "weight" not in keys
    assert q.state_dict()["codes"].dtype == torch.uint8


@pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="this torch has no weight-only int8 kernel")
def test_int8_weight_only_with_bf16_inputs_uses_the_int8_kernel_and_follows_changed_codes():
    torch.manual_seed(4)
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_linear(lin, 8, True, "channel")
    x = torch.randn(3, 5, 64).to(torch.bfloat16)
    with torch.no_grad():
        y = q(x)
        ref = F.linear(x.float(), q.dequantized_weight(torch.float32), lin.bias.detach())
    assert y.dtype == torch.bfloat16 and y.shape == (3, 5, 32)
    assert (y.float() - ref).abs().max() <= 0.01 * ref.abs().max()  # bf16 rounding, not a wrong weight
    assert q._signed_int8_weight().dtype == torch.int8
    torch.testing.assert_close(q._signed_int8_weight().float(), q.quantized().int_codes().float(), rtol=0, atol=0)
    # codes replaced in place (as load_state_dict does): the cached int8 copy follows
    other = QuantLinear.from_linear(nn.Linear(64, 32), 8, True, "channel")
    q.load_state_dict({**other.state_dict(), "bias": lin.bias.detach()})
    with torch.no_grad():
        y2 = q(x)
        ref2 = F.linear(x.float(), other.dequantized_weight(torch.float32), lin.bias.detach())
    assert (y2.float() - ref2).abs().max() <= 0.01 * ref2.abs().max()


def test_quantize_model_skips_the_tied_head_and_stays_close_at_8_bits():
    model = _tiny_gpt()
    ref = copy.deepcopy(model)
    quantize_model(model, QuantConfig(bits=8))
    names = set(quantized_modules(model))
    assert names == {f"blocks.{i}.{p}" for i in range(2) for p in ("attn.qkv_proj", "attn.out_proj",
                                                                   "mlp.gate_up_proj", "mlp.down_proj")}
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.wte.weight  # still tied, still float
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(idx)[0], model(idx)[0]
    # stated tolerance at 8 bits per channel: logits within 1% of their spread
    assert (a - b).abs().max() < 0.01 * a.std()


def test_fused_qkv_per_channel_equals_quantizing_q_k_v_separately():
    model = _tiny_gpt()
    qkv = model.blocks[0].attn.qkv_proj
    d = model.config.n_embd
    for gran, gs in (("channel", None), ("group", 16)):
        fused = dequantize(quantize(qkv.weight, 4, False, gran, gs))
        parts = torch.cat([dequantize(quantize(w, 4, False, gran, gs)) for w in qkv.weight.split(d, 0)])
        assert torch.equal(fused, parts)
    # per tensor it is not: one scale for the stacked matrix differs from three
    fused_t = dequantize(quantize(qkv.weight, 4, True, "tensor"))
    parts_t = torch.cat([dequantize(quantize(w, 4, True, "tensor")) for w in qkv.weight.split(d, 0)])
    assert not torch.equal(fused_t, parts_t)


def test_quantized_embeddings_share_codes_with_the_tied_head():
    model = _tiny_gpt()
    ref = copy.deepcopy(model)
    quantize_model(model, QuantConfig(bits=8, skip=(), include_embeddings=True))
    assert isinstance(model.wte, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    assert model.lm_head.codes is model.wte.table.codes and model.lm_head.scales is model.wte.table.scales
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(idx)[0], model(idx)[0]
    assert (a - b).abs().max() < 0.05 * a.std()  # every matrix at 8 bits, embeddings included
    # the shared codes are counted once
    qsize = model_size_bytes(model)
    fsize = model_size_bytes(ref)
    assert qsize < 0.3 * fsize


def test_model_size_counts_codes_and_scales_and_tied_weights_once():
    model = _tiny_gpt()
    n_params = sum(p.numel() for p in model.parameters())  # tied: counted once by parameters()
    assert model_size_bytes(model) == 4 * n_params
    quantize_model(model, QuantConfig(bits=4, granularity="group", group_size=16))
    expected = 0
    for name, t in model.state_dict().items():
        if name != "lm_head.weight":  # the same tensor as wte.weight
            expected += t.numel() * t.element_size()
    assert model_size_bytes(model) == expected
    lin_bytes = sum(m.codes.numel() + 4 * m.scales.numel() for m in quantized_modules(model).values())
    n_lin = sum(m.in_features * m.out_features for m in quantized_modules(model).values())
    assert lin_bytes / (4 * n_lin) == pytest.approx((0.5 + 4 / 16) / 4)


def test_quantized_course_style_model_saves_codes_and_reloads_with_identical_logits(tmp_path):
    from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = _tiny_gpt(seed=3)
    cfg = QuantConfig(bits=4, granularity="group", group_size=16, symmetric=False, scale_dtype="float16")
    quantize_model(model, cfg)
    path = tmp_path / "q.pt"
    save_checkpoint(path, model, metadata={"quant": cfg.to_dict()})
    raw = torch.load(path, map_location="cpu", weights_only=False)
    sd = next(v for v in raw.values() if isinstance(v, dict) and "blocks.0.attn.qkv_proj.codes" in v)
    assert sd["blocks.0.attn.qkv_proj.codes"].dtype == torch.uint8
    assert sd["blocks.0.attn.qkv_proj.scales"].dtype == torch.float16
    assert not any(k.endswith("qkv_proj.weight") for k in sd)
    loaded = load_checkpoint(path, prepare=lambda m: quantize_model(m, QuantConfig.from_dict(
        read_meta(path)["quant"])))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded.model.eval()(idx)[0])
    with pytest.raises(CheckpointError, match="prepare"):
        load_checkpoint(path)


def read_meta(path):
    from utils.checkpoint import read_checkpoint

    return read_checkpoint(path)["metadata"]


# ---------------------------------------------------------------------------------------------
# W8A8 and LLM.int8
# ---------------------------------------------------------------------------------------------

def test_w8a8_matches_float_within_int8_error_and_uses_an_integer_product():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = W8A8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8
    x = torch.randn(4, 9, 64)
    ref = lin(x)
    err = (q(x) - ref).abs().max() / ref.abs().max()
    assert err < 0.02
    # exactly: int8(x) @ int8(w)^T in int32, times the two scales
    x2 = x.reshape(-1, 64)
    sx = x2.abs().amax(1, keepdim=True) / 127
    xq = torch.round(x2 / sx).clamp(-127, 127)
    manual = (xq @ q.qweight.float().t()) * sx * q.w_scale + lin.bias
    torch.testing.assert_close(q(x).reshape(-1, 32), manual, rtol=1e-5, atol=1e-5)


def test_llm_int8_keeps_outlier_features_in_float_and_fixes_their_damage():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = torch.randn(32, 128)
    x[:, 7] *= 60.0  # one outlier feature (as in large LLMs): all tokens, one column
    ref = lin(x)
    plain = W8A8Linear.from_linear(lin)(x)
    mixed_layer = Int8MixedLinear.from_linear(lin, threshold=6.0)
    mixed = mixed_layer(x)
    assert mixed_layer.last_outlier_columns.tolist() == [7]
    e_plain = (plain - ref).abs().mean()
    e_mixed = (mixed - ref).abs().mean()
    assert e_mixed < e_plain / 5
    # without outliers it is the plain W8A8 layer
    torch.testing.assert_close(mixed_layer(x[:, :] * (x.abs() < 5)), W8A8Linear.from_linear(lin)(x * (x.abs() < 5)))


def test_linear_input_absmax_sees_every_linear_input():
    model = _tiny_gpt()
    idx = torch.randint(0, 64, (2, 16))
    stats = linear_input_absmax(model, idx)
    assert "blocks.0.attn.qkv_proj" in stats and stats["blocks.0.mlp.down_proj"].shape == (model.config.resolved_ffn_hidden,)
    assert all(torch.all(v >= 0) for v in stats.values())


# ---------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------

def _correlated_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)
    scale = torch.logspace(-1, 0.5, d)
    return (torch.randn(n, d, generator=g) @ mix) * scale


@pytest.mark.parametrize("bits,group_size,act_order,symmetric", [
    (4, None, False, True), (3, None, False, False), (4, 16, False, True), (3, 16, True, False), (2, 32, True, False)])
def test_gptq_reconstruction_error_is_at_most_rtns(bits, group_size, act_order, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(48, 64) * 0.1
    x = _correlated_inputs()
    H = hessian_from_inputs(x)
    gran = "group" if group_size else "channel"
    q_gptq = gptq_quantize(w, H, bits, symmetric, group_size, act_order=act_order)
    q_rtn = quantize(w, bits, symmetric, gran, group_size)
    err_gptq = ((x @ (w - dequantize(q_gptq)).t()) ** 2).mean()
    err_rtn = ((x @ (w - dequantize(q_rtn)).t()) ** 2).mean()
    assert err_gptq <= err_rtn
    assert err_gptq < 0.95 * err_rtn  # and better by a margin on correlated inputs
    # same storage layout as RTN: a QuantLinear holds it
    assert q_gptq.scales.shape == q_rtn.scales.shape and q_gptq.codes.shape == q_rtn.codes.shape
    layer = QuantLinear.from_quantized(q_gptq)
    torch.testing.assert_close(layer(x), x @ dequantize(q_gptq).t())


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    q = gptq_quantize(w, torch.eye(32), 4, True, None, damp=0.0)
    assert torch.equal(dequantize(q), dequantize(quantize(w, 4, True, "channel")))


def test_gptq_quantize_model_quantizes_every_selected_layer_and_lowers_loss_vs_rtn():
    model = _tiny_gpt(seed=2)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 64, (16, 16), generator=g)
    cfg = QuantConfig(bits=2, granularity="group", group_size=16, symmetric=False)
    gptq = gptq_quantize_model(copy.deepcopy(model), calib, cfg)
    rtn = quantize_model(copy.deepcopy(model), cfg)
    assert set(quantized_modules(gptq)) == set(quantized_modules(rtn))
    with torch.no_grad():
        ref = model(calib)[0]
        e_g = ((gptq(calib)[0] - ref) ** 2).mean()
        e_r = ((rtn(calib)[0] - ref) ** 2).mean()
    assert e_g < e_r


def test_gptq_true_sequential_takes_each_hessian_from_the_already_quantized_layers_before_it():
    model = _tiny_gpt(seed=3)
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(bits=3, symmetric=False)
    seq = gptq_quantize_model(copy.deepcopy(model), calib, cfg, true_sequential=True)
    par = gptq_quantize_model(copy.deepcopy(model), calib, cfg, true_sequential=False)
    # the first layer of the first block sees float inputs either way
    assert torch.equal(seq.blocks[0].attn.qkv_proj.codes, par.blocks[0].attn.qkv_proj.codes)
    # block 0's down_proj: its Hessian comes from the model whose other block-0 layers are already quantized
    ref = copy.deepcopy(model)
    for name in ("attn.qkv_proj", "attn.out_proj", "mlp.gate_up_proj"):
        parent, _, child = name.rpartition(".")
        setattr(ref.blocks[0].get_submodule(parent), child, copy.deepcopy(seq.blocks[0].get_submodule(name)))
    cap = {}
    down = ref.blocks[0].mlp.down_proj
    h = down.register_forward_pre_hook(lambda mod, args: cap.update(x=args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        ref(calib)
    h.remove()
    x = cap["x"]
    H = 2.0 / x.shape[0] * (x.t() @ x)
    expected = gptq_quantize(model.blocks[0].mlp.down_proj.weight, H, 3, False, None)
    assert torch.equal(seq.blocks[0].mlp.down_proj.codes, expected.codes)
    assert not torch.equal(par.blocks[0].mlp.down_proj.codes, expected.codes)


def test_gptq_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"H must be \(32, 32\)"):
        gptq_quantize(torch.randn(8, 32), torch.eye(16), 4)
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize(torch.randn(8, 32), torch.eye(32), 4, group_size=12)
    with pytest.raises(ValueError, match="token ids"):
        gptq_quantize_model(_tiny_gpt(), torch.randn(2, 4), QuantConfig(bits=4))


# ---------------------------------------------------------------------------------------------
# QAT
# ---------------------------------------------------------------------------------------------

def test_fake_quantize_passes_gradients_straight_through():
    w = torch.randn(8, 16, requires_grad=True)
    out = fake_quantize(w, 3, True, "channel")
    assert torch.equal(out.detach(), dequantize(quantize(w.detach(), 3, True, "channel")))
    g = torch.randn(8, 16)
    out.backward(g)
    assert torch.equal(w.grad, g)  # identity gradient (rounding alone would give zero)


def test_a_few_qat_steps_reduce_the_quantized_models_loss_and_convert_exactly():
    model = _tiny_gpt(seed=4)
    cfg = QuantConfig(bits=2, granularity="group", group_size=16, symmetric=False)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 64, (8, 17), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    # teach the float model something first, so quantizing hurts
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        model.train()(x, y)[1].backward()
        opt.step()
    with torch.no_grad():
        before = quantize_model(copy.deepcopy(model), cfg).eval()(x, y)[1].item()
    prepare_qat(model, cfg)
    assert any(isinstance(m, FakeQuantLinear) for m in model.modules())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        loss = model.train()(x, y)[1]
        loss.backward()
        opt.step()
    with torch.no_grad():
        fake = model.eval()(x, y)[1].item()
        convert_qat(model, cfg)
        after = model.eval()(x, y)[1].item()
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert after == pytest.approx(fake, rel=1e-5, abs=1e-6)
    assert after < before


# ---------------------------------------------------------------------------------------------
# Floating-point formats
# ---------------------------------------------------------------------------------------------

def test_float_formats_have_the_documented_bits_range_and_precision():
    fp16, bf16 = float_format("fp16"), float_format("bf16")
    assert (fp16.exponent_bits, fp16.mantissa_bits, fp16.max) == (5, 10, 65504.0)
    assert (bf16.exponent_bits, bf16.mantissa_bits, bf16.eps) == (8, 7, 2 ** -7)
    e4m3, e5m2 = float_format("fp8_e4m3"), float_format("fp8_e5m2")
    assert (e4m3.max, e5m2.max) == (448.0, 57344.0)
    assert e4m3.min_subnormal == 2 ** -9 and e5m2.min_subnormal == 2 ** -16
    for f in FLOAT_FORMATS.values():
        assert 1 + f.exponent_bits + f.mantissa_bits == f.bits
    with pytest.raises(ValueError, match="unknown float format"):
        float_format("fp4")


def test_representable_values_count_every_finite_bit_pattern():
    assert len(representable_values("fp8_e4m3")) == 126  # 127 positive patterns minus NaN
    assert len(representable_values("fp8_e5m2")) == 123  # exponent 11111 is inf/NaN
    v = representable_values("fp16")
    assert v.max() == 65504 and v.min() == 2 ** -24 and len(v) == 31 * 1024 - 1
    assert torch.equal(round_to_format(torch.tensor([1000.0]), "fp8_e4m3"), torch.tensor([448.0]))
    assert round_to_format(torch.tensor([1e-8]), "fp16").item() == 0.0  # underflow: why fp16 needs loss scaling


# ---------------------------------------------------------------------------------------------
# Parity with torchao and bitsandbytes (test-only dependencies)
# ---------------------------------------------------------------------------------------------

def test_nf4_codebook_equals_bitsandbytes_nf4_values():
    F_bnb = pytest.importorskip("bitsandbytes.functional")
    theirs = F_bnb.get_4bit_type("nf4", device="cpu").float()
    torch.testing.assert_close(nf4_codebook(), theirs, rtol=0, atol=2e-7)


def test_per_channel_int8_equals_torchao_int8_weight_only_within_one_step():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    ours = QuantLinear.from_linear(lin, 8, True, "channel")
    theirs = copy.deepcopy(lin)
    quantize_(nn.Sequential(theirs), Int8WeightOnlyConfig())
    w_ours, w_theirs = ours.weight, theirs.weight.dequantize().float()
    step = ours.scales.float()  # (out, 1)
    assert torch.all((w_ours - w_theirs).abs() <= step * (1 + 1e-4))
    x = torch.randn(16, 256)
    y_ref = lin(x)
    y_ours, y_theirs = ours(x), theirs(x).float()
    assert (y_ours - y_theirs).abs().max() < 0.01 * y_ref.abs().max()


def test_int8_with_outlier_threshold_matches_bitsandbytes_linear8bitlt_on_cpu():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    lin = nn.Linear(128, 64).half().float()  # fp16-representable weights (bitsandbytes computes in fp16)
    x = torch.randn(16, 128)
    x[:, [3, 50]] *= 20.0
    x = x.half().float()
    theirs = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=6.0)
    theirs.load_state_dict(copy.deepcopy(lin).half().state_dict())
    theirs = theirs.to("cpu").eval()
    with torch.no_grad():
        y_theirs = theirs(x.half()).float()
        ours = Int8MixedLinear.from_linear(lin, threshold=6.0)
        y_ours = ours(x)
        y_ref = lin(x)
    assert sorted(ours.last_outlier_columns.tolist()) == [3, 50]
    scale = y_ref.abs().max()
    assert (y_ours - y_theirs).abs().max() < 0.01 * scale
    # both much closer to float than plain W8A8 without the decomposition
    plain = W8A8Linear.from_linear(lin)(x)
    assert (y_theirs - y_ref).abs().mean() < 0.5 * (plain - y_ref).abs().mean()


def test_the_quantized_course_model_reloads_from_its_checkpoint_with_identical_logits(tmp_path):
    from utils.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from utils.pretrain import load_course_model

    model, _ = load_course_model()
    cfg = QuantConfig(bits=4, format="nf4", granularity="group", group_size=64)
    quantize_model(model, cfg)
    path = tmp_path / "course-nf4.pt"
    save_checkpoint(path, model, metadata={"quant": cfg.to_dict()})
    assert path.stat().st_size < 0.45 * (ROOT_CKPT.stat().st_size)  # codes, not floats (the embedding stays fp32)
    meta = read_checkpoint(path)["metadata"]
    loaded = load_checkpoint(path, prepare=lambda m: quantize_model(m, QuantConfig.from_dict(meta["quant"]))).model
    assert set(quantized_modules(loaded)) == set(quantized_modules(model))
    idx = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(idx)[0], loaded.eval()(idx)[0])



def test_gptq_true_sequential_must_be_a_bool():
    model = _tiny_gpt(seed=3)
    calib = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="true_sequential must be True or False"):
        gptq_quantize_model(model, calib, QuantConfig(bits=4), true_sequential="yes")
