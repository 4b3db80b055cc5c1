"""utils/model.py: GPT equals Hugging Face GPT-2, the KV cache equals recompute, counts equal numel."""

import math

import pytest
import torch

from utils.encoders import EncoderDecoder, EncoderModel
from utils.kv_cache import KVCache
from utils.model import GPT, GPTConfig, RMSNorm
from utils.params import PUBLISHED_ARCHITECTURES, architecture_parameters, count_parameters, memory_footprint

ATOL = 1e-5


from tiny_models import random_ids as _ids  # noqa: E402
from tiny_models import tiny_gpt_config as _cfg  # noqa: E402


# ---- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(n_kv_head=3), "multiple of n_kv_head"),
    (dict(norm="batchnorm"), "norm='batchnorm' is not one of"),
    (dict(mlp="tanh"), "mlp='tanh'"),
    (dict(pos="alibi"), "pos='alibi'"),
    (dict(dropout=1.0), "dropout"),
    (dict(attn_dropout=-0.1), "attn_dropout"),
    (dict(n_layer=0), "n_layer must be a positive int"),
    (dict(n_embd=12, n_head=4, pos="rope"), "must be even"),
])
def test_config_rejects_bad_values_with_clear_messages(kw, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**kw)


def test_attn_dropout_sets_the_attention_weight_rate_apart_from_the_residual_rate():
    both = GPT(_cfg(dropout=0.1))
    resid_only = GPT(_cfg(dropout=0.1, attn_dropout=0.0))
    assert both.blocks[0].attn.dropout == 0.1 and resid_only.blocks[0].attn.dropout == 0.0
    assert resid_only.blocks[0].attn.resid_dropout.p == 0.1 and resid_only.blocks[0].mlp.dropout.p == 0.1
    resid_only.train()
    torch.manual_seed(0)
    out1, _ = resid_only(_ids(2, 8))
    out2, _ = resid_only(_ids(2, 8))
    assert not torch.equal(out1, out2)  # the residual branches still drop
    resid_only.eval()
    assert torch.equal(resid_only(_ids(2, 8))[0], resid_only(_ids(2, 8))[0])


# ---- parameter counting --------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(),
    dict(bias=False, norm="rmsnorm", mlp="swiglu", pos="rope"),
    dict(n_kv_head=1, tie_weights=False),
    dict(n_kv_head=2, mlp="relu", norm_position="post", ffn_hidden=40),
    dict(n_layer=3, n_head=2, n_embd=48, mlp="swiglu", bias=True, pos="rope", n_kv_head=1),
    dict(smear=True, pos="rope"),
])
def test_count_parameters_equals_numel_of_the_built_model(kw):
    cfg = _cfg(**kw)
    model = GPT(cfg)
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())


def test_published_model_sizes_are_reproduced_within_one_percent():
    published = {"GPT-2 small": 124e6, "BERT-base": 110e6, "Llama-2-7B": 6.7e9, "Mixtral-8x7B": 46.7e9}
    for name, size in published.items():
        total = architecture_parameters(PUBLISHED_ARCHITECTURES[name])["total"]
        assert abs(total / size - 1) < 0.01, (name, total)
    mixtral = architecture_parameters(PUBLISHED_ARCHITECTURES["Mixtral-8x7B"])
    assert abs(mixtral["active"] / 12.9e9 - 1) < 0.01, mixtral
    assert architecture_parameters(PUBLISHED_ARCHITECTURES["GPT-2 small"])["total"] == 124_439_808  # exact HF count


def test_memory_footprint_scales_with_bytes_per_parameter():
    assert memory_footprint(1000) == {"fp32": 4000, "bf16": 2000, "int8": 1000, "int4": 500}
    with pytest.raises(ValueError):
        memory_footprint(-1)


# ---- structure and initialisation ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_torch_rmsnorm_values_and_gradients(dtype):
    torch.manual_seed(0)
    ours, ref = RMSNorm(48, eps=1e-5), torch.nn.RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x = (torch.randn(3, 5, 48) * 3).to(dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = ours.to(dtype)(x1)
    y2 = torch.nn.functional.rms_norm(x2.float(), (48,), ref.weight.float(), 1e-5).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y1.dtype == dtype
    torch.testing.assert_close(y1, y2, atol=tol, rtol=tol)
    y1.float().pow(2).sum().backward()
    y2.float().pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=tol * 10, rtol=tol)
    tiny = torch.zeros(1, 48)  # eps keeps an all-zero vector finite, as in torch's
    assert torch.equal(RMSNorm(48)(tiny), torch.nn.RMSNorm(48, eps=1e-5)(tiny))


def test_weights_are_tied_unless_asked_otherwise():
    model = GPT(_cfg())
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(_cfg(tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_residual_projections_get_the_scaled_gpt2_init():
    torch.manual_seed(0)
    model = GPT(_cfg(n_layer=8, n_embd=256, n_head=4, vocab_size=10))
    assert model.blocks[0].attn.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.qkv_proj.bias.abs().max() == 0


def test_gpt_is_causal_and_loss_is_cross_entropy():
    model = GPT(_cfg()).eval()
    idx = _ids(2, 10)
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 10, 61)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 61
    logits2, _ = model(changed)
    torch.testing.assert_close(logits2[:, :7], logits[:, :7])  # the past does not see the future
    assert not torch.allclose(logits2[:, 7:], logits[:, 7:])
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 61), idx.reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_our_attention_and_torch_attention_give_the_same_model():
    torch.manual_seed(0)
    a = GPT(_cfg(pos="rope", n_kv_head=2)).eval()
    b = GPT(_cfg(pos="rope", n_kv_head=2, attn_impl="ours")).eval()
    b.load_state_dict(a.state_dict())
    idx = _ids(2, 12)
    torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=ATOL, rtol=0)


def test_attention_weights_are_returned_per_layer():
    model = GPT(_cfg(n_layer=3)).eval()
    maps = model.attention_weights(_ids(2, 6))
    assert len(maps) == 3 and maps[0].shape == (2, 4, 6, 6)
    assert maps[2].triu(1).abs().max() == 0


def test_crop_block_size_shrinks_positions():
    model = GPT(_cfg())
    model.crop_block_size(8)
    assert model.wpe.weight.shape == (8, 32) and model.config.block_size == 8
    with pytest.raises(ValueError, match="block_size=8"):
        model(_ids(1, 9))


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    model = GPT(_cfg())
    with pytest.raises(ValueError, match="longer than the context window block_size=32"):
        model(_ids(1, 33))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="outside \\[0, vocab_size=61\\)"):
        model(torch.full((1, 3), 61))
    with pytest.raises(ValueError, match="token id -1, outside"):  # on CPU caught from the embedding lookup
        model(torch.tensor([[3, -1, 4]]))
    cache = model.new_kv_cache(1)
    model(_ids(1, 4), kv_cache=cache)
    with pytest.raises(ValueError, match="token id 99, outside"):  # a decoding step, too
        model(torch.tensor([[99]]), kv_cache=cache)
    with pytest.raises(ValueError, match="targets must have the same shape"):
        model(_ids(2, 5), _ids(2, 4))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"vocab_size": 3})


# ---- Hugging Face GPT-2 parity ---------------------------------------------------------------------

@pytest.mark.parametrize("hf_kwargs", [
    dict(vocab_size=101, n_positions=40, n_embd=48, n_layer=2, n_head=4),
    dict(vocab_size=77, n_positions=24, n_embd=36, n_layer=3, n_head=3, n_inner=50, layer_norm_epsilon=1e-6),
])
def test_logits_and_loss_equal_hugging_face_gpt2(hf_kwargs):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_kwargs = dict(hf_kwargs, bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(GPT2Config(**hf_kwargs)).eval()
    ours = GPT.from_hf_gpt2(hf)
    assert not ours.training
    idx = _ids(3, 19, vocab=hf_kwargs["vocab_size"])
    with torch.no_grad():
        out = hf(idx, labels=idx)
        logits, _ = ours(idx)
        _, loss = ours(idx[:, :-1], idx[:, 1:])  # HF shifts the labels inside
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=ATOL, rtol=0)
    assert count_parameters(ours.config) == sum(p.numel() for p in hf.parameters())


def test_from_hf_gpt2_refuses_other_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(TypeError, match="GPT-2"):
        GPT.from_hf_gpt2(llama)


# ---- KV cache ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(pos="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu")])
def test_kv_cache_prefill_then_one_token_at_a_time_equals_recompute(kw):
    torch.manual_seed(0)
    model = GPT(_cfg(n_layer=3, **kw)).eval()
    idx = _ids(2, 20)
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(2)
        k_ptr = cache.k.data_ptr()
        pieces = [model(idx[:, :7], kv_cache=cache)[0], model(idx[:, 7:11], kv_cache=cache)[0]]  # chunked prefill
        for t in range(11, 20):
            pieces.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL, rtol=0)
    assert cache.length == 20 and cache.k.data_ptr() == k_ptr  # written in place, never re-allocated
    assert cache.k.shape == (3, 2, model.config.resolved_n_kv_head, 32, 8)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padded_batch_equals_each_row_alone(pos):
    torch.manual_seed(0)
    model = GPT(_cfg(pos=pos)).eval()
    rows = [_ids(1, 12, seed=1)[0], _ids(1, 5, seed=2)[0], _ids(1, 9, seed=3)[0]]
    T = max(len(r) for r in rows)
    idx = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, T - len(r):], mask[i, T - len(r):] = r, True
    with torch.no_grad():
        batched, _ = model(idx, attention_mask=mask)
        cache = model.new_kv_cache(3)
        steps = [model(idx[:, :6], kv_cache=cache, attention_mask=mask[:, :6])[0]]
        for t in range(6, T):  # the mask given as (B, past + T)
            steps.append(model(idx[:, t:t + 1], kv_cache=cache, attention_mask=mask[:, :t + 1])[0])
        cached = torch.cat(steps, 1)
        nxt = torch.tensor([[1], [2], [3]])
        after, _ = model(nxt, kv_cache=cache)  # no mask: the cache remembers the padding
        for i, r in enumerate(rows):
            alone, _ = model(r[None])
            torch.testing.assert_close(batched[i, T - len(r):], alone[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(cached[i, T - len(r):], alone[0], atol=ATOL, rtol=0)
            alone_next, _ = model(torch.cat([r, nxt[i]])[None])
            torch.testing.assert_close(after[i, 0], alone_next[0, -1], atol=ATOL, rtol=0)
    assert torch.isfinite(batched).all() and torch.isfinite(cached).all()


def test_trimmed_rope_cache_equals_recompute_on_the_window_for_one_layer():
    # one layer: cached keys depend only on their own token and position, so after a sliding-window
    # trim, decoding equals running the model on the window alone (RoPE scores are relative)
    torch.manual_seed(0)
    model = GPT(_cfg(n_layer=1, pos="rope", block_size=16)).eval()
    idx = _ids(2, 20)
    with torch.no_grad():
        cache = model.new_kv_cache(2, max_len=12)
        model(idx[:, :12], kv_cache=cache)
        cache.trim(8)
        assert cache.length == 8 and cache.next_position == 12
        step, _ = model(idx[:, 12:13], kv_cache=cache)
        window, _ = model(idx[:, 4:13])
    torch.testing.assert_close(step[:, 0], window[:, -1], atol=ATOL, rtol=0)


def test_kv_cache_also_works_with_autograd_on():
    model = GPT(_cfg(pos="rope"))
    ids = _ids(1, 6)
    cache = model.new_kv_cache(1)
    model(ids[:, :5], kv_cache=cache)  # grad mode on: the cache's per-layer views are written in place
    step, _ = model(ids[:, 5:], kv_cache=cache)
    full, _ = model(ids)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=0)


def test_kv_cache_limits_raise_clear_errors():
    model = GPT(_cfg(block_size=8)).eval()
    cache = model.new_kv_cache(1, max_len=6)
    with torch.no_grad():
        model(_ids(1, 6), kv_cache=cache)
        with pytest.raises(ValueError, match="cache is full"):
            model(_ids(1, 1), kv_cache=cache)
        cache.trim(4)
        model(_ids(1, 2), kv_cache=cache)  # positions 6 and 7: the last learned ones
        cache.trim(4)
        with pytest.raises(ValueError, match="cannot continue past block_size"):  # position 8 does not exist
            model(_ids(1, 1), kv_cache=cache)
        with pytest.raises(ValueError, match="keep must be"):
            cache.trim(5)
        with pytest.raises(ValueError, match="made for batch 1"):
            model(_ids(2, 1), kv_cache=cache)
        hd = model.config.head_dim
        with pytest.raises(ValueError, match=r"k must be \(B, n_kv_head, T, head_dim\)"):
            cache.update(0, torch.zeros(4, 1, hd), torch.zeros(4, 1, hd))
        with pytest.raises(ValueError, match="do not fit the cache"):
            cache.update(0, torch.zeros(1, 4, 1, hd + 1), torch.zeros(1, 4, 1, hd + 1))
    assert isinstance(cache, KVCache) and "length=4/6" in repr(cache)


# ---- encoder-only and encoder-decoder --------------------------------------------------------------

def test_encoder_is_bidirectional_and_mlm_loss_ignores_unmasked_positions():
    torch.manual_seed(0)
    model = EncoderModel(_cfg()).eval()
    idx = _ids(2, 10)
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 61
    assert not torch.allclose(model(changed)[0][:, 0], logits[:, 0])  # early tokens see later ones
    targets = torch.full_like(idx, -100)
    targets[:, [2, 5]] = idx[:, [2, 5]]
    _, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, [2, 5]].reshape(-1, 61), idx[:, [2, 5]].reshape(-1))
    torch.testing.assert_close(loss, expected)
    padded = torch.cat([idx[:1], torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 3)], 1).bool()
    torch.testing.assert_close(model(padded, attention_mask=mask)[0][:, :10], logits[:1], atol=ATOL, rtol=0)


def test_encoder_decoder_decoder_is_causal_and_reads_the_source():
    torch.manual_seed(0)
    model = EncoderDecoder(_cfg(pos="rope")).eval()
    src, tgt = _ids(2, 9, seed=1), _ids(2, 6, seed=2)
    logits, loss = model(src, tgt, tgt)
    assert logits.shape == (2, 6, 61) and torch.isfinite(loss)
    tgt2 = tgt.clone()
    tgt2[:, 4] = (tgt2[:, 4] + 1) % 61
    torch.testing.assert_close(model(src, tgt2)[0][:, :4], logits[:, :4])
    assert not torch.allclose(model((src + 1) % 61, tgt)[0], logits)
    assert model.generate(src, 5, start_id=0).shape == (2, 6)


@pytest.mark.parametrize("kind", ["gpt", "encoder", "encdec"])
def test_a_few_training_steps_reduce_the_loss(kind):
    torch.manual_seed(0)
    cfg = _cfg(vocab_size=20, n_embd=32, n_layer=1)
    model = {"gpt": GPT, "encoder": EncoderModel, "encdec": EncoderDecoder}[kind](cfg)
    idx = _ids(4, 12, vocab=20)
    args = (idx, idx, idx) if kind == "encdec" else (idx, idx)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        _, loss = model(*args)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---- extension points: hidden states, replaceable MLP with aux loss, past keys/values ----------------

@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_hidden_states_of_real_tokens_do_not_depend_on_padding(pos, side):
    torch.manual_seed(0)
    model = GPT(_cfg(pos=pos, norm="rmsnorm")).eval()
    rows = [_ids(1, 9, seed=1)[0], _ids(1, 4, seed=2)[0], _ids(1, 6, seed=3)[0]]
    T = 11  # every row padded, by at least 2
    idx = torch.full((3, T), 7, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)  # 0/1 masks are accepted as well as bool
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        idx[i, sl], mask[i, sl] = r, 1
    with torch.no_grad():
        h = model.hidden_states(idx, mask)
        other_padding = model.hidden_states(torch.where(mask.bool(), idx, 60), attention_mask=mask)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            alone = model.hidden_states(r[None])
            torch.testing.assert_close(h[i, sl], alone[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(other_padding[i, sl], alone[0], atol=ATOL, rtol=0)
            # what lm_head reads: the logits are lm_head(hidden_states)
            torch.testing.assert_close(model.lm_head(alone), model(r[None])[0], atol=ATOL, rtol=0)
    assert h.shape == (3, T, 32) and torch.isfinite(h).all()


class _AuxMLP(torch.nn.Module):
    """Wraps a block's MLP and reports a made-up auxiliary loss: coef * mean(y^2)."""

    def __init__(self, mlp, coef):
        super().__init__()
        self.inner, self.coef = mlp, coef

    def forward(self, x):
        y = self.inner(x)
        return y, {"aux_loss": self.coef * y.pow(2).mean(), "note": "dummy"}


def test_an_mlp_returning_an_aux_loss_adds_it_to_the_training_loss_only():
    torch.manual_seed(0)
    model = GPT(_cfg(n_layer=3))
    idx = _ids(2, 10)
    model.eval()
    _, plain = model(idx, idx)
    assert model.aux_stats == [] and float(model.loss_parts["aux"]) == 0.0
    for i in (0, 2):  # two of three blocks swapped
        model.blocks[i].mlp = _AuxMLP(model.blocks[i].mlp, coef=10.0 * (i + 1))
    _, eval_loss = model(idx, idx)
    torch.testing.assert_close(eval_loss, plain)  # eval: pure cross-entropy, comparable across models
    model.train()  # dropout is 0: the same forward, now in training mode
    _, train_loss = model(idx, idx)
    assert len(model.aux_stats) == 2 and model.aux_stats[0]["note"] == "dummy"
    aux = model.aux_stats[0]["aux_loss"] + model.aux_stats[1]["aux_loss"]
    assert float(aux.detach()) > 1e-3
    torch.testing.assert_close(train_loss, plain + aux)
    torch.testing.assert_close(model.loss_parts["lm"], plain)
    torch.testing.assert_close(model.loss_parts["aux"], aux.detach())
    assert not model.loss_parts["lm"].requires_grad
    train_loss.backward()  # the aux loss reaches the swapped MLPs' weights
    assert model.blocks[0].mlp.inner.up_proj.weight.grad.abs().sum() > 0
    model(idx)
    assert model.loss_parts is None and len(model.aux_stats) == 2


def test_an_mlp_returning_a_bad_tuple_is_named_in_the_error():
    model = GPT(_cfg())
    model.blocks[1].mlp = type("Broken", (torch.nn.Module,), {"forward": lambda self, x: (x, 3.0)})()
    with pytest.raises(TypeError, match=r"block.mlp \(Broken\) returned a tuple.*aux_loss"):
        model(_ids(1, 4))


def _prefix_from_tokens(model, prefix_ids):
    """Keys/values of real tokens, taken from a cache: past_key_values that must equal the tokens."""
    cache = model.new_kv_cache(prefix_ids.shape[0])
    model(prefix_ids, kv_cache=cache)
    P = prefix_ids.shape[1]
    return [(cache.k[i, :, :, :P], cache.v[i, :, :, :P]) for i in range(model.config.n_layer)]


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_past_key_values_of_real_tokens_equal_running_those_tokens_first(pos):
    torch.manual_seed(0)
    model = GPT(_cfg(pos=pos, n_kv_head=2)).eval()
    prefix, x = _ids(2, 5, seed=1), _ids(2, 7, seed=2)
    with torch.no_grad():
        past = _prefix_from_tokens(model, prefix)
        full, _ = model(torch.cat([prefix, x], 1))
        # the prefix is "virtual": new positions start at 0 unless told otherwise
        shifted, _ = model(x, past_key_values=past, position_ids=torch.arange(5, 12))
        torch.testing.assert_close(shifted, full[:, 5:], atol=ATOL, rtol=0)
        # batch dimension 1 broadcasts over the batch
        one = [(k[:1], v[:1]) for k, v in past]
        both, _ = model(x, past_key_values=one, position_ids=torch.arange(5, 12))
        torch.testing.assert_close(both[0], shifted[0], atol=ATOL, rtol=0)
        # with left padding of the new tokens, each row equals the row alone
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[1, :3] = False
        padded, _ = model(x, past_key_values=past, attention_mask=mask)
        alone, _ = model(x[1:, 3:], past_key_values=[(k[1:], v[1:]) for k, v in past])
        torch.testing.assert_close(padded[1, 3:], alone[0], atol=ATOL, rtol=0)
        # generation-style: prefix + cache for the new tokens, one token at a time
        cache = model.new_kv_cache(2)
        steps = [model(x[:, :4], past_key_values=past, kv_cache=cache)[0]]
        for t in range(4, 7):
            steps.append(model(x[:, t:t + 1], past_key_values=past, kv_cache=cache)[0])
        torch.testing.assert_close(torch.cat(steps, 1), model(x, past_key_values=past)[0], atol=ATOL, rtol=0)


def test_a_learned_prefix_trains_through_past_key_values_with_the_model_frozen():
    torch.manual_seed(0)
    model = GPT(_cfg(pos="rope"))
    for p in model.parameters():
        p.requires_grad_(False)
    cfg, P = model.config, 4
    prefix = [(torch.zeros(1, cfg.resolved_n_kv_head, P, cfg.head_dim, requires_grad=True),
               torch.zeros(1, cfg.resolved_n_kv_head, P, cfg.head_dim, requires_grad=True)) for _ in range(cfg.n_layer)]
    idx, targets = _ids(3, 8, seed=1), _ids(3, 8, seed=2)
    opt = torch.optim.Adam([t for pair in prefix for t in pair], lr=0.3)
    losses = []
    for _ in range(15):
        _, loss = model(idx, targets, past_key_values=prefix)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for pair in prefix for t in pair)
    assert losses[-1] < losses[0] - 0.1, losses


# ---- forward numerics against a hand-written float64 reference -------------------------------------

def _reference_logits(model, idx):
    """The GPT forward written out in float64 from the state dict (learned positions, gelu/relu MLP)."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    B, T = idx.shape
    H, hd = cfg.n_head, cfg.head_dim
    Hkv = cfg.resolved_n_kv_head

    def norm(x, prefix):
        if cfg.norm == "rmsnorm":
            return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * sd[prefix + ".weight"]
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + cfg.norm_eps) * sd[prefix + ".weight"] + sd.get(prefix + ".bias", 0.0)

    def linear(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd.get(prefix + ".bias", 0.0)

    def attention(x, p):
        q, k, v = linear(x, p + "attn.qkv_proj").split([H * hd, Hkv * hd, Hkv * hd], -1)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        v = v.view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
        y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H * hd)
        return linear(y, p + "attn.out_proj")

    def mlp(x, p):
        h = linear(x, p + "mlp.up_proj")
        if cfg.mlp == "relu":
            h = torch.clamp(h, min=0)
        else:  # GPT-2's tanh-approximated GELU
            h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        return linear(h, p + "mlp.down_proj")

    x = sd["wte.weight"][idx] + sd["wpe.weight"][:T]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        if cfg.norm_position == "post":  # norm(x + f(x)): the 2017 Transformer
            x = norm(x + attention(x, p), p + "ln_1")
            x = norm(x + mlp(x, p), p + "ln_2")
        else:  # x + f(norm(x))
            x = x + attention(norm(x, p + "ln_1"), p)
            x = x + mlp(norm(x, p + "ln_2"), p)
    if cfg.norm_position == "pre":
        x = norm(x, "ln_f")
    return x @ sd["lm_head.weight"].T


@pytest.mark.parametrize("kw", [
    dict(norm_position="post", mlp="relu"),
    dict(norm_position="post", mlp="relu", norm="rmsnorm", bias=False, n_kv_head=2),
    dict(norm_position="pre", mlp="relu", tie_weights=False),
    dict(norm_position="pre", mlp="gelu", norm="rmsnorm"),
])
def test_forward_equals_a_hand_written_float64_reference(kw):
    torch.manual_seed(0)
    model = GPT(_cfg(n_layer=2, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # every parameter random, norms and biases included
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 1.0) + (1.0 if name.endswith("ln_1.weight") else 0.0))
    idx = _ids(2, 9)
    with torch.no_grad():
        logits, _ = model(idx)
    ref = _reference_logits(model, idx)
    assert ref.abs().max() > 1.0  # the numbers are not all tiny
    torch.testing.assert_close(logits.double(), ref, atol=2e-4, rtol=1e-4)


def test_encoder_decoder_generate_stops_at_eos_and_keeps_finished_rows_at_eos():
    torch.manual_seed(0)
    model = EncoderDecoder(_cfg(pos="rope", tie_weights=False))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)  # large weights: varied greedy outputs
    model.train()
    src = _ids(3, 7, seed=4)
    free = model.generate(src, 8, start_id=0)  # no eos: 8 new tokens for every row
    assert free.shape == (3, 9) and model.training  # generate restores the mode it found
    # eos = the token row 0 produces at step 2: row 0 must stop there, the others go on
    eos = int(free[0, 2])
    out = model.generate(src, 8, start_id=0, eos_id=eos)
    for b in range(3):
        row, ref = out[b].tolist(), free[b].tolist()
        first = ref.index(eos, 1) if eos in ref[1:] else None
        if first is None:
            assert row == ref[:len(row)]
        else:
            assert row[:first + 1] == ref[:first + 1] and all(t == eos for t in row[first + 1:])
    ends = [free[b].tolist().index(eos, 1) if eos in free[b].tolist()[1:] else 8 for b in range(3)]
    assert out.shape[1] == 1 + max(ends) if max(ends) < 8 else out.shape[1] == 9
    # every row stops at eos -> generation ends early
    all_stop = model.generate(src[:1], 8, start_id=0, eos_id=eos)
    assert all_stop.tolist() == [free[0, :3].tolist()]


# ---- previous-token smear (GPTConfig.smear) ------------------------------------------------------

def test_smear_adds_its_multiple_of_the_previous_token_embedding_to_each_position():
    import torch.nn.functional as F
    torch.manual_seed(0)
    smeared = GPT(_cfg(smear=True, pos="rope"))
    with torch.no_grad():  # every parameter random, the smear included (it starts at 0)
        for p in smeared.parameters():
            p.normal_(0, 0.5)
    plain = GPT(_cfg(pos="rope"))
    plain.load_state_dict({k: v for k, v in smeared.state_dict().items() if k != "smear"})
    # the textbook formula on the plain model: x_t + smear * x_{t-1}, nothing before the first token
    plain.wte.register_forward_hook(lambda m, i, out: out + smeared.smear * F.pad(out, (0, 0, 1, 0))[:, :-1])
    idx = _ids(3, 12)
    torch.testing.assert_close(smeared(idx)[0], plain(idx)[0], atol=ATOL, rtol=0)
    plain_again = GPT(_cfg(pos="rope"))
    plain_again.load_state_dict(plain.state_dict())
    assert (smeared(idx)[0] - plain_again(idx)[0]).abs().max() > 1e-2  # and the smear does change the output


def test_smear_starts_at_zero_so_the_model_starts_as_the_plain_gpt():
    torch.manual_seed(1)
    smeared = GPT(_cfg(smear=True))
    assert torch.equal(smeared.smear, torch.zeros(smeared.config.n_embd))
    plain = GPT(_cfg())
    plain.load_state_dict({k: v for k, v in smeared.state_dict().items() if k != "smear"})
    idx = _ids(2, 10)
    assert torch.equal(smeared(idx)[0], plain(idx)[0])


def test_smear_refuses_what_it_cannot_carry_with_a_clear_error():
    model = GPT(_cfg(smear=True))
    with pytest.raises(NotImplementedError, match="use_cache=False"):
        model(_ids(1, 4), kv_cache=model.new_kv_cache(1))
    with pytest.raises(NotImplementedError, match="padding mask"):
        model(_ids(1, 4), attention_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="smear must be True or False"):
        _cfg(smear="yes")
    for cls in (EncoderModel, EncoderDecoder):
        with pytest.raises(ValueError, match="decoder GPT only"):
            cls(_cfg(smear=True))
