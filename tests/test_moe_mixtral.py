"""MoE inside the course GPT: config fields, aux loss in training, parameter counts, checkpoints, and
equality with Hugging Face Mixtral (built locally from small configs, every parameter randomised)."""

import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.model import GPT, MLP, GPTConfig
from utils.moe import MoELayer
from utils.params import count_parameters

transformers = pytest.importorskip("transformers")
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func  # noqa: E402


def _cfg(**kw):
    base = dict(vocab_size=61, block_size=32, n_layer=3, n_head=4, n_embd=32, norm="rmsnorm", mlp="swiglu",
                pos="rope", bias=False, n_expert=4, top_k=2, expert_hidden=40)
    base.update(kw)
    return GPTConfig(**base)


def _randomised_mixtral(seed: int, **kw) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    model = MixtralForCausalLM(MixtralConfig(**kw)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return model


MIXTRALS = [
    dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64),
    dict(vocab_size=131, hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
         num_key_value_heads=1, num_local_experts=8, num_experts_per_tok=3, max_position_embeddings=48,
         rms_norm_eps=1e-6, rope_parameters={"rope_theta": 5000.0, "rope_type": "default"},
         router_aux_loss_coef=0.02),
]


# -- config and GPT ----------------------------------------------------------------------------------

def test_moe_layers_replace_the_dense_mlp_where_configured():
    model = GPT(_cfg(moe_layers=[0, 2]))
    kinds = [type(b.mlp).__name__ for b in model.blocks]
    assert kinds == ["MoELayer", "MLP", "MoELayer"]
    assert model.config.moe_layer_indices == (0, 2)
    assert isinstance(GPT(_cfg(n_expert=0)).blocks[0].mlp, MLP)


def test_training_loss_includes_the_aux_loss_and_eval_loss_does_not():
    torch.manual_seed(0)
    model = GPT(_cfg())
    idx = torch.randint(0, 61, (2, 16))
    model.train()
    _, loss = model(idx, idx)
    aux = sum(s["aux_loss"] for s in model.aux_stats)
    assert len(model.aux_stats) == 3
    torch.testing.assert_close(loss, model.loss_parts["lm"] + aux)
    loss.backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0
    model.eval()
    _, loss_eval = model(idx, idx)
    torch.testing.assert_close(loss_eval, model.loss_parts["lm"])


@pytest.mark.parametrize("kw", [dict(), dict(moe_layers=[1]), dict(n_shared_expert=2, moe_hybrid=True),
                                dict(router="noisy_topk", bias=True, expert_hidden=None),
                                dict(mlp="gelu", top_k=1, norm="layernorm", pos="learned")])
def test_count_parameters_total_and_active_for_moe_configs(kw):
    cfg = _cfg(**kw)
    model = GPT(cfg)
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())
    per_expert = model.blocks[cfg.moe_layer_indices[0]].mlp.experts.w_in[0].numel() + \
        model.blocks[cfg.moe_layer_indices[0]].mlp.experts.w_out[0].numel()
    unused = len(cfg.moe_layer_indices) * (cfg.n_expert - cfg.top_k) * per_expert
    assert count_parameters(cfg, active=True) == count_parameters(cfg) - unused


def test_mixtral_8x7b_parameter_counts_are_exact():
    mixtral = GPTConfig(vocab_size=32000, block_size=32768, n_layer=32, n_head=32, n_embd=4096, n_kv_head=8,
                        ffn_hidden=14336, mlp="swiglu", norm="rmsnorm", bias=False, tie_weights=False, pos="rope",
                        n_expert=8, top_k=2)
    assert count_parameters(mixtral) == 46_702_792_704
    assert count_parameters(mixtral, active=True) == 12_879_925_248


def test_checkpoint_rebuilds_an_moe_model_from_its_config(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(moe_layers=[0, 2], capacity_factor=1.5, router="noisy_topk", n_shared_expert=1, moe_hybrid=True)
    model = GPT(cfg).eval()
    save_checkpoint(tmp_path / "moe.pt", model)
    loaded = load_checkpoint(tmp_path / "moe.pt").model.eval()
    assert loaded.config == cfg and isinstance(loaded.blocks[2].mlp, MoELayer)
    idx = torch.randint(0, 61, (2, 12))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kw, words", [
    (dict(n_expert=-1), "n_expert must be an int >= 0"),
    (dict(n_expert=0, moe_layers=[0]), "need experts"),
    (dict(moe_layers=[3]), "moe_layers"),
    (dict(moe_layers=[0, 0]), "moe_layers"),
    (dict(top_k=5), r"top_k \(5\) must be <= n_expert \(4\)"),
    (dict(capacity_factor=0), "capacity_factor"),
    (dict(router="hash"), "router must be one of"),
    (dict(z_loss_coef=-0.1), "z_loss_coef"),
])
def test_bad_moe_fields_raise_clear_errors(kw, words):
    with pytest.raises(ValueError, match=words):
        _cfg(**kw)


# -- Hugging Face Mixtral --------------------------------------------------------------------------------

@pytest.mark.parametrize("hf_kw", MIXTRALS)
def test_logits_equal_hugging_face_mixtral(hf_kw):
    hf = _randomised_mixtral(1, **hf_kw)
    ours = GPT.from_hf_mixtral(hf).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert count_parameters(ours.config) == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, hf_kw["vocab_size"], (3, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(idx, output_router_logits=True)
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    # the same experts were chosen in every layer
    for layer, stats in enumerate(ours.aux_stats):
        hf_top = ref.router_logits[layer].softmax(-1).topk(hf_kw["num_experts_per_tok"], -1).indices
        assert torch.equal(stats["expert_index"].reshape(-1, hf_top.shape[-1]), hf_top)


@pytest.mark.parametrize("hf_kw", MIXTRALS)
def test_balance_loss_relates_exactly_to_load_balancing_loss_func(hf_kw):
    """HF counts assignments per token (its f sums to top_k) and pools all layers before multiplying:
    one layer: HF = top_k * ours; L layers: HF = top_k * E * sum_e mean_l(f_le) * mean_l(P_le)."""
    hf = _randomised_mixtral(3, **hf_kw)
    ours = GPT.from_hf_mixtral(hf).eval()
    idx = torch.randint(0, hf_kw["vocab_size"], (2, 23), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(idx, output_router_logits=True)
        ours(idx)
    k, E = hf_kw["num_experts_per_tok"], hf_kw["num_local_experts"]
    for layer, stats in enumerate(ours.aux_stats):
        one = load_balancing_loss_func((ref.router_logits[layer],), E, k)
        torch.testing.assert_close(one, k * stats["balance_loss"], rtol=1e-5, atol=1e-6)
    f = torch.stack([s["expert_fraction"] for s in ours.aux_stats]).mean(0)
    P = torch.stack([s["router_prob"] for s in ours.aux_stats]).mean(0)
    torch.testing.assert_close(ref.aux_loss, k * E * (f * P).sum(), rtol=1e-5, atol=1e-6)
    # and the HF model adds router_aux_loss_coef * that to its loss; ours adds aux_loss_coef * ours per layer
    assert ours.config.aux_loss_coef == hf.config.router_aux_loss_coef and ours.config.z_loss_coef == 0.0


def test_from_hf_mixtral_rejects_other_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(TypeError, match="Mixtral"):
        GPT.from_hf_mixtral(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10)))
