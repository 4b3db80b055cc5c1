"""utils/attention.py: our attention equals PyTorch's, flash equals both, RoPE is relative."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from utils.attention import MultiHeadAttention, attend, causal_mask, flash_attention, scaled_dot_product_attention
from utils.measure import peak_tensor_memory
from utils.positions import (LearnedPositionalEmbedding, RotaryEmbedding, apply_rope, apply_rope_rolled,
                             sinusoidal_positions)

ATOL = 1e-5


def _qkv(*batch, tq, tk, d, seed=0, hk=None):
    g = torch.Generator().manual_seed(seed)
    kv_batch = batch if hk is None else (*batch[:-1], hk)
    return (torch.randn(*batch, tq, d, generator=g), torch.randn(*kv_batch, tk, d, generator=g),
            torch.randn(*kv_batch, tk, d, generator=g))


# ---- scaled_dot_product_attention vs torch -----------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 4), (2, 3, 7, 7, 8), (3, 2, 13, 13, 5), (1, 4, 1, 9, 16),
                                   (2, 1, 17, 33, 3)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_matches_torch_on_random_shapes(shape, is_causal):
    B, H, tq, tk, d = shape
    q, k, v = _qkv(B, H, tq=tq, tk=tk, d=d)
    ours = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    # torch aligns is_causal top-left; with an explicit end-aligned mask it matches our convention
    mask = causal_mask(tq, tk) if is_causal else None
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert ours.shape == (B, H, tq, d)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_sdpa_causal_equals_torch_is_causal_for_square_scores():
    q, k, v = _qkv(2, 3, tq=11, tk=11, d=8)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=0)


def test_causal_mask_is_aligned_to_the_end_for_a_kv_cache():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # one new query sees every cached key; attention over the full sequence gives its last row
    q, k, v = _qkv(1, 2, tq=6, tk=6, d=4)
    full = scaled_dot_product_attention(q, k, v, is_causal=True)
    last = scaled_dot_product_attention(q[..., -2:, :], k, v, is_causal=True)
    torch.testing.assert_close(last, full[..., -2:, :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("mask_shape", [(2, 3, 5, 9), (2, 1, 1, 9), (5, 9), (1, 3, 5, 1)])
def test_sdpa_boolean_mask_matches_torch(mask_shape):
    q, k, v = _qkv(2, 3, tq=5, tk=9, d=6)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(mask_shape, generator=g) > 0.3
    mask[..., 0] = True  # no fully masked row (torch returns NaN there)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=0)


def test_sdpa_additive_mask_matches_torch_and_combines_with_causal():
    q, k, v = _qkv(2, 2, tq=7, tk=7, d=4)
    additive = torch.randn(2, 1, 7, 7, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=additive),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=additive), atol=ATOL, rtol=0)
    both = additive.masked_fill(~causal_mask(7, 7), float("-inf"))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=additive, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=both), atol=ATOL, rtol=0)


@pytest.mark.parametrize("n_kv", [1, 2, 3])
def test_sdpa_grouped_query_attention_matches_torch(n_kv):
    q, k, v = _qkv(2, 6, tq=9, tk=9, d=8, hk=n_kv)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    theirs = F.scaled_dot_product_attention(q, k.repeat_interleave(6 // n_kv, 1), v.repeat_interleave(6 // n_kv, 1),
                                            is_causal=True)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(attend(q, k, v, is_causal=True, impl="torch"), theirs, atol=ATOL, rtol=0)


def test_attend_torch_path_uses_end_aligned_causal_mask():
    q, k, v = _qkv(2, 2, tq=3, tk=8, d=4)
    torch.testing.assert_close(attend(q, k, v, is_causal=True, impl="torch"),
                               scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=0)


def test_returned_weights_are_the_softmax_of_scaled_scores():
    q, k, v = _qkv(1, 2, tq=4, tk=4, d=8)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    expected = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~causal_mask(4, 4), -math.inf), -1)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 4))
    assert w[0, 0, 0, 1:].abs().max() == 0  # the first token sees only itself
    torch.testing.assert_close(out, w @ v)


def test_fully_masked_boolean_row_gives_finite_output():
    q, k, v = _qkv(1, 1, tq=2, tk=3, d=4)
    mask = torch.tensor([[False, False, False], [True, True, False]])
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()


# ---- flash attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [1, 7, 16, 64])
@pytest.mark.parametrize("T", [1, 13, 50, 65])
@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_attention_matches_torch(block_size, T, is_causal):
    q, k, v = _qkv(2, 3, tq=T, tk=T, d=8, seed=T)
    torch.testing.assert_close(flash_attention(q, k, v, is_causal=is_causal, block_size=block_size),
                               F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), atol=ATOL, rtol=0)


@pytest.mark.parametrize("block_size", [3, 16])
def test_flash_attention_with_fewer_queries_and_gqa(block_size):
    q, k, v = _qkv(2, 4, tq=5, tk=23, d=8, hk=2)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                              attn_mask=causal_mask(5, 23))
    torch.testing.assert_close(flash_attention(q, k, v, is_causal=True, block_size=block_size), expected,
                               atol=ATOL, rtol=0)


class _RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_flash_attention_never_builds_the_full_score_matrix():
    q, k, v = _qkv(1, 2, tq=40, tk=48, d=8)
    with _RecordShapes() as naive:
        scaled_dot_product_attention(q, k, v)
    with _RecordShapes() as tiled:
        flash_attention(q, k, v, block_size=16)
    assert any(s[-2:] == (40, 48) for s in naive.shapes)  # the naive version does build it
    assert max(s[-2] * s[-1] for s in tiled.shapes if len(s) >= 2) <= 40 * 8  # tiles and outputs only


# ---- positional encodings ----------------------------------------------------------------------

def test_rope_dot_product_depends_only_on_relative_position():
    rope = RotaryEmbedding(16, max_seq_len=64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    cos, sin = rope.cos_sin(torch.arange(64))

    def score(m, n):
        return float(apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n]))

    for m, n in [(5, 2), (9, 9), (3, 20)]:
        for shift in (1, 17, 40):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3  # but it does depend on the distance


def test_rope_preserves_norms_and_position_zero_is_identity():
    rope = RotaryEmbedding(8, max_seq_len=16)
    x = torch.randn(1, 2, 16, 8)
    y, _ = rope(x, x, torch.arange(16))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])


def test_rope_matches_hugging_face_llama_rotate_half():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rope = RotaryEmbedding(8, max_seq_len=32, base=10000.0)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    pos = torch.arange(10).expand(2, 10)
    cos, sin = rope.cos_sin(pos)  # (B, 1, T, hd)
    theirs = apply_rotary_pos_emb(q, k, cos[:, 0], sin[:, 0])  # HF expects (B, T, hd), unsqueezes dim 1
    ours = rope(q, k, pos)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])


def test_rope_int_start_equals_explicit_positions_and_extends_its_table():
    rope = RotaryEmbedding(4, max_seq_len=8)
    q = torch.randn(1, 1, 5, 4)
    a, _ = rope(q, q, 6)  # positions 6..10, beyond the initial table
    b, _ = rope(q, q, torch.arange(6, 11))
    torch.testing.assert_close(a, b)
    assert rope.max_seq_len >= 11


def test_rolled_rope_equals_the_rotate_half_formula_for_every_kind_of_positions():
    rope = RotaryEmbedding(8, max_seq_len=4)
    x = torch.randn(2, 3, 6, 8)
    for positions in (2, torch.arange(5, 11), torch.tensor([[0, 1, 2, 3, 4, 5], [9, 8, 7, 6, 5, 4]])):
        cos, sin = rope.cos_sin(positions, 6)
        cos_s, sin_signed = rope.cos_sin(positions, 6, signed=True)
        torch.testing.assert_close(cos_s, cos)
        torch.testing.assert_close(apply_rope_rolled(x, cos, sin_signed), apply_rope(x, cos, sin), atol=1e-6, rtol=0)
    assert rope.max_seq_len >= 11 and rope.sin_signed.shape == rope.sin.shape  # tables rebuilt together


def test_attention_with_shared_rope_angles_equals_angles_from_positions_and_apply_rope():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, max_seq_len=16)
    mha = MultiHeadAttention(32, 4, n_kv_head=2, rope=rope, bias=False)
    x = torch.randn(2, 5, 32)
    for positions in (3, torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]])):
        y_pos = mha(x, position_ids=positions)
        y_shared = mha(x, position_ids=positions, rope_cos_sin=rope.cos_sin(positions, 5, signed=True))
        torch.testing.assert_close(y_shared, y_pos, atol=0, rtol=0)
        # the same attention written the slow way: separate q/k/v, apply_rope on each
        w_q, w_k, w_v = mha.qkv_weights()
        q = (x @ w_q.T).view(2, 5, 4, 8).transpose(1, 2)
        k = (x @ w_k.T).view(2, 5, 2, 8).transpose(1, 2)
        v = (x @ w_v.T).view(2, 5, 2, 8).transpose(1, 2)
        cos, sin = rope.cos_sin(positions, 5)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        y_ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 5, 32)
        torch.testing.assert_close(y_pos, mha.out_proj(y_ref), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rope_cos_sin must be"):
        mha(x, rope_cos_sin=rope.cos_sin(0, 4, signed=True))  # angles for 4 positions, input has 5


def test_bf16_autocast_attention_on_cpu_runs_in_fp32_and_returns_bf16():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, causal=True)
    x = torch.randn(2, 9, 32)
    ref = mha(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_sinusoidal_positions_follow_the_formula():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    t, i = 7, 3
    assert float(pe[t, 2 * i]) == pytest.approx(math.sin(t / 10000 ** (2 * i / 16)), abs=1e-6)
    assert float(pe[t, 2 * i + 1]) == pytest.approx(math.cos(t / 10000 ** (2 * i / 16)), abs=1e-6)


def test_learned_positions_refuse_positions_beyond_their_table():
    emb = LearnedPositionalEmbedding(8, 4)
    assert emb(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match="beyond the 8 learned positions"):
        emb(torch.arange(9))


# ---- MultiHeadAttention ------------------------------------------------------------------------

def test_multihead_attention_matches_torch_nn_multiheadattention():
    torch.manual_seed(0)
    C, H, T = 24, 4, 9
    ours = MultiHeadAttention(C, H, causal=True).eval()
    theirs = torch.nn.MultiheadAttention(C, H, batch_first=True).eval()
    with torch.no_grad():
        # both stack q, k, v rows in one input projection
        theirs.in_proj_weight.copy_(ours.qkv_proj.weight)
        theirs.in_proj_bias.copy_(ours.qkv_proj.bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
        x = torch.randn(2, T, C)
        expected, _ = theirs(x, x, x, attn_mask=~causal_mask(T, T))  # torch: True = NOT allowed
        torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=0)


def test_grouped_query_attention_equals_full_attention_with_shared_kv_heads():
    torch.manual_seed(0)
    C, H, Hkv, hd = 32, 8, 2, 4
    gqa = MultiHeadAttention(C, H, n_kv_head=Hkv).eval()
    full = MultiHeadAttention(C, H).eval()
    with torch.no_grad():
        full.out_proj.load_state_dict(gqa.out_proj.state_dict())
        w_q, w_k, w_v = gqa.qkv_proj.weight.split([C, Hkv * hd, Hkv * hd])
        b_q, b_k, b_v = gqa.qkv_proj.bias.split([C, Hkv * hd, Hkv * hd])

        def repeat_heads(t):  # each kv head used by H/Hkv query heads
            return t.view(Hkv, hd, -1).repeat_interleave(H // Hkv, 0).reshape(C, -1)
        full.qkv_proj.weight.copy_(torch.cat([w_q, repeat_heads(w_k), repeat_heads(w_v)]))
        full.qkv_proj.bias.copy_(torch.cat([b_q, repeat_heads(b_k[:, None])[:, 0], repeat_heads(b_v[:, None])[:, 0]]))
        x = torch.randn(2, 7, C)
        torch.testing.assert_close(gqa(x), full(x), atol=ATOL, rtol=0)
    assert gqa.qkv_proj.weight.shape == (C + 2 * Hkv * hd, C)
    assert [w.shape for w in gqa.qkv_weights()] == [(C, C), (Hkv * hd, C), (Hkv * hd, C)]
    assert MultiHeadAttention(C, H, n_kv_head=1).qkv_weights()[2].shape == (hd, C)  # multi-query


def _mha_reference(mha, x, mask=None):
    """Multi-head attention written out in float64 from the module's weights: the reference both
    implementations are compared with. Returns (out (B, T, C), weights (B, H, T, T))."""
    B, T, C = x.shape
    H, Hkv, hd = mha.n_head, mha.n_kv_head, mha.head_dim
    w_q, w_k, w_v = (w.double() for w in mha.qkv_weights())
    b_q, b_k, b_v = mha.qkv_proj.bias.double().split([H * hd, Hkv * hd, Hkv * hd])
    xd = x.double()
    q = (xd @ w_q.T + b_q).view(B, T, H, hd).transpose(1, 2)
    k = (xd @ w_k.T + b_k).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = (xd @ w_v.T + b_v).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask
    weights = torch.softmax(scores.masked_fill(~allowed, -math.inf), -1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, H * hd)
    return y @ mha.out_proj.weight.double().T + mha.out_proj.bias.double(), weights


@pytest.mark.parametrize("impl", ["torch", "ours"])
@pytest.mark.parametrize("n_kv", [4, 2])
def test_multihead_attention_equals_a_float64_reference_and_returns_causal_weights(impl, n_kv):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_head=n_kv, impl=impl).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.5)  # every weight and bias random (zero biases would hide a bias bug)
    x = torch.randn(3, 5, 16)
    pad = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    pad[1, ..., :2] = False  # row 1: two padding keys (each query still sees itself: the diagonal is kept)
    pad = pad | torch.eye(5, dtype=torch.bool)
    with torch.no_grad():
        ref_out, ref_w = _mha_reference(mha, x)
        out, w = mha(x, need_weights=True)
        torch.testing.assert_close(mha(x).double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.double(), ref_w, atol=1e-6, rtol=1e-5)
        ref_masked, _ = _mha_reference(mha, x, pad)
        torch.testing.assert_close(mha(x, mask=pad, is_causal=True).double(), ref_masked, atol=1e-5, rtol=1e-5)
    assert w.shape == (3, 4, 5, 5)
    assert w.triu(1).abs().max() == 0
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 5))


def test_cross_attention_reads_the_context():
    mha = MultiHeadAttention(16, 4, cross=True).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 11, 16)
    out, w = mha(x, context=ctx, need_weights=True)
    assert out.shape == (2, 3, 16) and w.shape == (2, 4, 3, 11)
    assert not torch.allclose(out, mha(x, context=ctx + 1.0))
    pad = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    pad[1, ..., 6:] = False
    _, w = mha(x, context=ctx, mask=pad, need_weights=True)
    assert w[1, ..., 6:].abs().max() == 0


# ---- errors ------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 2, tq=4, tk=5, d=8)
    with pytest.raises(ValueError, match="same last dimension"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same length Tk"):
        scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="more queries"):
        scaled_dot_product_attention(k, q, q, is_causal=True)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        scaled_dot_product_attention(torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="block_size"):
        flash_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="divisible by n_head"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        MultiHeadAttention(12, 4, n_kv_head=3)
    with pytest.raises(ValueError, match=r"\(B, T, n_embd=16\)"):
        MultiHeadAttention(16, 2)(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="needs `context`"):
        MultiHeadAttention(16, 2, cross=True)(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)


def test_peak_tensor_memory_sees_the_quadratic_score_matrix_only_in_naive_attention():
    q, k, v = _qkv(1, 2, tq=256, tk=256, d=16)
    scores_bytes = 2 * 256 * 256 * 4
    out, naive = peak_tensor_memory(scaled_dot_product_attention, q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    _, tiled = peak_tensor_memory(flash_attention, q, k, v, block_size=32)
    assert naive >= scores_bytes
    assert tiled < scores_bytes / 4
