"""The Mixture-of-Experts layer (utils/moe.py): routing, losses, capacity, dispatch designs, bad configs."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.moe import (DISPATCHES, ROUTERS, resolve_dispatch, Experts, MoEConfig, MoELayer, TopKRouter, balance_loss, capacity,
                       moe_parameter_counts, z_loss)

HAS_GROUPED_MM = hasattr(F, "grouped_mm")
# every design this PyTorch can run ("grouped_mm" needs torch.nn.functional.grouped_mm)
RUNNABLE_DISPATCHES = tuple(d for d in DISPATCHES if d != "grouped_mm" or HAS_GROUPED_MM)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _layer(seed=0, **kw) -> MoELayer:
    torch.manual_seed(seed)
    cfg = dict(n_embd=16, n_expert=4, top_k=2, expert_hidden=24)
    cfg.update(kw)
    layer = MoELayer(MoEConfig(**cfg))
    _randomise(layer, seed)
    return layer.eval()


def _output_and_grads(layer: MoELayer, x: torch.Tensor) -> list[torch.Tensor]:
    """A training step's output, input gradient and every parameter's gradient (loss: y² + aux loss)."""
    xi = x.clone().requires_grad_(True)
    y, stats = layer(xi)
    (y.square().sum() + stats["aux_loss"]).backward()
    return [y.detach(), xi.grad] + [p.grad for p in layer.parameters()]


def _swiglu(x, w_in, w_out):
    gate, up = F.linear(x, w_in).chunk(2, -1)
    return F.linear(F.silu(gate) * up, w_out)


# -- gradients --------------------------------------------------------------------------------------

def test_aux_loss_alone_gives_the_router_a_gradient():
    layer = _layer().train()
    _, stats = layer(torch.randn(2, 12, 16))
    stats["aux_loss"].backward()
    g = layer.router.weight.grad
    assert g is not None and g.abs().sum() > 0
    # the balance loss alone also reaches the router (through P, the mean router probability)
    layer.zero_grad()
    _, stats = layer(torch.randn(2, 12, 16))
    stats["balance_loss"].backward()
    assert layer.router.weight.grad.abs().sum() > 0
    assert layer.experts.w_in.grad is None or layer.experts.w_in.grad.abs().sum() == 0


def test_experts_get_gradients_only_from_the_tokens_routed_to_them():
    layer = _layer(n_expert=6, top_k=2)
    x = torch.randn(1, 10, 16)
    _, stats = layer(x)
    for t in range(10):
        layer.zero_grad()
        y, _ = layer(x)
        y[0, t].sum().backward()
        chosen = set(stats["expert_index"][0, t].tolist())
        for e in range(6):
            g_in = layer.experts.w_in.grad[e].abs().sum().item()
            g_out = layer.experts.w_out.grad[e].abs().sum().item()
            if e in chosen:
                assert g_in > 0 and g_out > 0
            else:
                assert g_in == 0 and g_out == 0


# -- the load-balancing loss and the z-loss ---------------------------------------------------------

def test_balanced_routing_gives_the_balance_loss_its_minimum_of_one():
    n, E = 64, 8
    probs = torch.full((n, E), 1 / E)
    mask = F.one_hot(torch.arange(n) % E, E).bool()
    assert balance_loss(probs, mask).item() == pytest.approx(1.0, abs=1e-6)
    # one expert takes everything, with probability 1: N
    collapsed = F.one_hot(torch.zeros(n, dtype=torch.long), E).float()
    assert balance_loss(collapsed, collapsed.bool()).item() == pytest.approx(E)
    # a family of increasingly skewed routers, top-2: the loss grows toward E / 2 (two experts share
    # every assignment, the top one with probability ~1)
    values = []
    for s in (0.0, 1.0, 2.0, 4.0, 8.0):
        logits = torch.randn(n, E, generator=torch.Generator().manual_seed(0)) + s * torch.arange(E).float()
        p = logits.softmax(-1)
        m = torch.zeros(n, E, dtype=torch.bool).scatter_(1, p.topk(2, -1).indices, True)
        values.append(balance_loss(p, m).item())
    assert values[0] >= 1.0 - 1e-6
    assert values == sorted(values) and values[-1] == pytest.approx(E / 2, rel=0.01)


def test_z_loss_is_the_mean_squared_logsumexp_and_reaches_the_router():
    logits = torch.randn(5, 4)
    assert z_loss(logits).item() == pytest.approx((torch.logsumexp(logits, -1) ** 2).mean().item(), rel=1e-6)
    layer = _layer(aux_loss_coef=0.0, z_loss_coef=1.0)
    layer.train()
    _, stats = layer(torch.randn(2, 5, 16))
    assert torch.allclose(stats["aux_loss"], stats["z_loss"])
    stats["aux_loss"].backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_aux_loss_is_weighted_by_the_coefficients():
    layer = _layer(aux_loss_coef=0.25, z_loss_coef=0.5)
    _, s = layer(torch.randn(2, 7, 16))
    assert s["aux_loss"].item() == pytest.approx(0.25 * s["balance_loss"].item() + 0.5 * s["z_loss"].item(), rel=1e-6)


# -- equalities with dense layers ---------------------------------------------------------------------

def test_one_expert_top1_equals_the_dense_swiglu_mlp():
    from utils.model import MLP, GPTConfig

    layer = _layer(n_expert=1, top_k=1, expert_hidden=40)
    mlp = MLP(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=16, mlp="swiglu", bias=False,
                        ffn_hidden=40)).eval()
    with torch.no_grad():
        mlp.gate_up_proj.weight.copy_(layer.experts.w_in[0])
        mlp.down_proj.weight.copy_(layer.experts.w_out[0])
    x = torch.randn(3, 9, 16)
    y, stats = layer(x)
    torch.testing.assert_close(y, mlp(x), rtol=1e-5, atol=1e-6)
    assert stats["tokens_per_expert"].tolist() == [27] and stats["balance_loss"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("dispatch", RUNNABLE_DISPATCHES)
def test_top_k_equal_to_n_expert_is_the_probability_weighted_mixture(dispatch):
    layer = _layer(n_expert=4, top_k=4, dispatch=dispatch)
    x = torch.randn(2, 6, 16)
    y, _ = layer(x)
    flat = x.reshape(-1, 16)
    probs = F.linear(flat, layer.router.weight).softmax(-1)
    ref = sum(probs[:, e:e + 1] * _swiglu(flat, layer.experts.w_in[e], layer.experts.w_out[e]) for e in range(4))
    torch.testing.assert_close(y.reshape(-1, 16), ref, rtol=1e-5, atol=1e-6)


def test_top2_weights_are_renormalised_and_top1_keeps_the_raw_probability():
    router = TopKRouter(8, 5, top_k=2)
    _randomise(router)
    x = torch.randn(11, 8)
    r = router(x)
    torch.testing.assert_close(r.weight.sum(-1), torch.ones(11))
    torch.testing.assert_close(r.weight, r.probs.gather(1, r.index) / r.probs.gather(1, r.index).sum(-1, keepdim=True))
    r1 = TopKRouter(8, 5, top_k=1)
    _randomise(r1)
    out = r1(x)
    torch.testing.assert_close(out.weight[:, 0], out.probs.max(-1).values)


@pytest.mark.parametrize("dispatch", RUNNABLE_DISPATCHES)
@pytest.mark.parametrize("router", ROUTERS)
def test_routed_scaling_factor_multiplies_only_the_routed_experts_output(dispatch, router):
    x = torch.randn(2, 7, 16)
    y1, s1 = _layer(seed=5, router=router, dispatch=dispatch, n_shared_expert=1)(x)
    y2, s2 = _layer(seed=5, router=router, dispatch=dispatch, n_shared_expert=1, routed_scaling_factor=2.5)(x)
    shared = _layer(seed=5, router=router, n_shared_expert=1).shared.expert(0, x.reshape(-1, 16)).view_as(x)
    # routed part scaled by 2.5, the always-on shared expert not; the routing and its losses unchanged
    torch.testing.assert_close(y2 - shared, 2.5 * (y1 - shared), rtol=1e-5, atol=1e-6)
    assert (y2 - y1).abs().max() > 1e-3
    torch.testing.assert_close(s2["aux_loss"], s1["aux_loss"])
    assert torch.equal(s2["expert_mask"], s1["expert_mask"])


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "2"])
def test_a_routed_scaling_factor_that_is_not_a_positive_number_is_rejected(bad):
    with pytest.raises(ValueError, match="routed_scaling_factor"):
        MoEConfig(n_embd=16, routed_scaling_factor=bad)


def test_a_dense_gpt_config_with_a_routed_scaling_factor_is_rejected():
    from utils.model import GPTConfig
    with pytest.raises(ValueError, match="routed_scaling_factor need experts"):
        GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, routed_scaling_factor=2.0)
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, n_expert=4, routed_scaling_factor=2.0)
    from utils.model import GPT
    assert GPT(cfg).blocks[0].mlp.config.routed_scaling_factor == 2.0


# -- dispatch designs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("capacity_factor", [None, 1.0, 0.5])
def test_all_dispatch_designs_give_the_same_output_and_gradients(router, capacity_factor):
    x = torch.randn(3, 10, 16, generator=torch.Generator().manual_seed(7))
    results = []
    for dispatch in RUNNABLE_DISPATCHES:
        layer = _layer(seed=3, n_expert=5, router=router, capacity_factor=capacity_factor, dispatch=dispatch,
                       n_shared_expert=1, hybrid=True)
        xi = x.clone().requires_grad_(True)
        y, stats = layer(xi)
        (y.square().sum() + stats["aux_loss"]).backward()
        results.append((y.detach(), xi.grad, layer.experts.w_in.grad, layer.router.weight.grad, stats["dropped"]))
    for other in results[1:]:
        for a, b in zip(results[0][:4], other[:4]):
            # fp32 sums in another order: the error scales with the largest value summed (CPUs differ here)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(a.abs().max())))
        assert other[4] == results[0][4]


@pytest.mark.parametrize("router,capacity_factor", [("topk", None), ("topk", 0.5), ("expert_choice", None)])
def test_all_dispatch_designs_agree_under_cpu_bf16_autocast(router, capacity_factor):
    x = torch.randn(2, 9, 16)
    results = {}
    for dispatch in RUNNABLE_DISPATCHES:
        layer = _layer(seed=4, router=router, capacity_factor=capacity_factor, dispatch=dispatch).train()
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, stats = layer(xi)
        (y.float().square().sum() + stats["aux_loss"]).backward()
        results[dispatch] = (y.float(), xi.grad, layer.experts.w_in.grad, layer.router.weight.grad)
    assert results["loop"][2].dtype == torch.float32  # the fp32 weights get fp32 gradients
    for dispatch, res in results.items():  # bf16 round-off, relative to each tensor's largest entry
        for a, b in zip(results["sort"], res):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * a.abs().max().item(), msg=dispatch)


def test_the_mask_loop_is_makemoes_loop_line_for_line():
    """The baseline must not be faster than the tutorial code it stands for: per expert a boolean mask over the
    tokens from ``(indices == i).any(dim=-1)``, ``flat_x[flat_mask]``, the gating column, a masked ``+=``."""
    import inspect

    from utils.moe import _dispatch_loop
    src = inspect.getsource(_dispatch_loop)
    for line in ("expert_mask = (indices == i).any(dim=-1)", "flat_mask = expert_mask.view(-1)",
                 "if flat_mask.any():", "expert_input = flat_x[flat_mask]",
                 "gating_scores = flat_gating_output[flat_mask, i].unsqueeze(1)",
                 "weighted_output = expert_output * gating_scores",
                 "final_output[expert_mask] += weighted_output.squeeze(1)"):
        assert line in src, line
    assert "index_add" not in src.split('"""')[-1]  # no vectorised scatter in the loop's code


@pytest.mark.parametrize("mlp", ["swiglu", "gelu", "relu"])
def test_fused_sorted_experts_equal_the_autograd_version_with_an_empty_expert(mlp):
    torch.manual_seed(0)
    experts = Experts(5, 12, 7, mlp).double()
    counts = [3, 0, 6, 1, 4]  # expert 1 gets no rows: its weight gradient must be exactly zero
    xs = torch.randn(14, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(14, 12, dtype=torch.float64)
    grads = []
    for run in (experts.run_sorted, experts.run_sorted_autograd):
        xs.grad = None
        experts.zero_grad(set_to_none=True)
        y = run(xs, counts)
        (y * g).sum().backward()
        grads.append((y.detach(), xs.grad, experts.w_in.grad, experts.w_out.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert grads[0][2][1].abs().max() == 0 and grads[0][3][1].abs().max() == 0
    assert grads[0][2][0].abs().max() > 0


def test_fused_sorted_experts_pass_gradcheck():
    from utils.moe import _SortedExpertsFn

    torch.manual_seed(1)
    experts = Experts(3, 6, 5, "swiglu").double()
    xs = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: _SortedExpertsFn.apply(x, a, b, (2, 0, 5), "swiglu"),
                                    (xs, experts.w_in, experts.w_out))


def test_fused_sorted_experts_under_bf16_autocast_match_autograd_and_keep_fp32_gradients():
    torch.manual_seed(2)
    experts = Experts(4, 16, 8)
    xs = torch.randn(10, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = experts.run_sorted(xs, [4, 3, 0, 3])
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert experts.w_in.grad.dtype == torch.float32 and xs.grad.dtype == torch.float32
    with torch.no_grad():
        ref = experts.run_sorted_autograd(xs.bfloat16().float(), [4, 3, 0, 3])
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-3)


@pytest.mark.parametrize("mlp", ["swiglu", "gelu", "relu"])
def test_padding_each_experts_rows_to_a_multiple_changes_no_number(mlp):
    torch.manual_seed(3)
    experts = Experts(5, 12, 7, mlp).double()
    counts = [3, 0, 6, 1, 4]
    xs = torch.randn(14, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(14, 12, dtype=torch.float64)
    grads = []
    for multiple in (1, 4, 32):
        xs.grad = None
        experts.zero_grad(set_to_none=True)
        y = experts.run_sorted(xs, counts, row_multiple=multiple)
        (y * g).sum().backward()
        grads.append((y.detach(), xs.grad, experts.w_in.grad, experts.w_out.grad))
    for padded in grads[1:]:
        for a, b in zip(grads[0], padded):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert grads[2][2][1].abs().max() == 0  # the empty expert still gets an exactly zero gradient


@pytest.mark.parametrize("bad", [0, -32, 2.5, True])
def test_a_row_multiple_that_is_not_a_positive_int_is_rejected_by_name(bad):
    experts = Experts(2, 8, 4, "swiglu")
    for run in (experts.run_sorted, experts.run_grouped) if HAS_GROUPED_MM else (experts.run_sorted,):
        with pytest.raises(ValueError, match="row_multiple must be an int >= 1"):
            run(torch.randn(3, 8), [2, 1], row_multiple=bad)


def test_padded_sorted_experts_pass_gradcheck():
    from utils.moe import _SortedExpertsFn

    torch.manual_seed(4)
    experts = Experts(3, 6, 5, "gelu").double()
    xs = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: _SortedExpertsFn.apply(x, a, b, (2, 0, 5), "gelu", 4),
                                    (xs, experts.w_in, experts.w_out))


def _matmul_rows(fn):
    """The row counts (M) of every aten.mm that ``fn()`` runs, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    rows = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.mm:
                rows.append(args[0].shape[0])
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return rows


def test_cpu_bf16_pads_expert_slices_to_a_multiple_of_32_rows_and_fp32_does_not():
    # oneDNN compiles a bf16 kernel per new matmul shape; padding makes the shapes repeat from step to step
    from utils.moe import CPU_LOW_PRECISION_ROW_MULTIPLE

    assert CPU_LOW_PRECISION_ROW_MULTIPLE == 32
    experts = Experts(4, 16, 8)
    counts = [5, 0, 40, 19]
    xs = torch.randn(64, 16, requires_grad=True)

    def step(autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = experts.run_sorted(xs, counts)
        y.float().sum().backward()

    bf16_rows = _matmul_rows(lambda: step(True))
    fp32_rows = _matmul_rows(lambda: step(False))
    # slices of 5, 40 and 19 rows run as 32, 64 and 32 rows in bf16; the weight-gradient matmuls (16 rows:
    # n_embd and 2 x hidden) do not depend on the counts
    assert set(bf16_rows) == {32, 64, 16}
    assert set(fp32_rows) == {5, 40, 19, 16}


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="this PyTorch has no torch.nn.functional.grouped_mm")
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_grouped_mm_dispatch_equals_sort_in_output_and_every_gradient(capacity_factor):
    x = torch.randn(4, 12, 16)
    results = {}
    for dispatch in ("sort", "grouped_mm"):
        layer = _layer(seed=5, n_expert=6, top_k=2, capacity_factor=capacity_factor, dispatch=dispatch).train()
        results[dispatch] = _output_and_grads(layer, x)
    assert len(results["sort"]) == 5  # output, input grad, router, w_in, w_out
    for a, b in zip(results["sort"], results["grouped_mm"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="this PyTorch has no torch.nn.functional.grouped_mm")
def test_grouped_mm_under_cpu_bf16_autocast_matches_sort():
    experts = Experts(4, 16, 8)
    xs = torch.randn(70, 16, requires_grad=True)
    counts = [10, 0, 41, 19]
    outs = []
    for run in (experts.run_sorted, experts.run_grouped):
        xs.grad = None
        experts.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(xs, counts)
        y.float().square().sum().backward()
        outs.append((y.float(), xs.grad, experts.w_in.grad, experts.w_out.grad))
    assert outs[1][0].dtype == torch.float32 and experts.w_in.grad.dtype == torch.float32
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_grouped_mm_dispatch_without_grouped_mm_or_with_unaligned_widths_raises_clear_errors(monkeypatch):
    if HAS_GROUPED_MM:
        with pytest.raises(ValueError, match=r"expert_hidden \(3\) must be a multiple of 4"):
            _layer(expert_hidden=3, dispatch="grouped_mm")(torch.randn(1, 5, 16))
    monkeypatch.delattr(F, "grouped_mm", raising=False)
    with pytest.raises(RuntimeError, match="needs torch.nn.functional.grouped_mm.*use dispatch 'sort'"):
        MoEConfig(n_embd=16, dispatch="grouped_mm")
    layer = _layer(dispatch="sort")
    with pytest.raises(RuntimeError, match="needs torch.nn.functional.grouped_mm"):
        layer.dispatch = "grouped_mm"
    assert layer.dispatch == "sort"


def test_auto_is_the_default_and_picks_grouped_mm_on_a_cpu_with_aligned_rows():
    assert MoEConfig(n_embd=16).dispatch == "auto" and _layer().dispatch == "auto"
    x = torch.randn(10, 16)
    assert resolve_dispatch("auto", x, 16, 24) == ("grouped_mm" if HAS_GROUPED_MM else "sort")
    assert resolve_dispatch("auto", x, 16, 3) == "sort"  # 12-byte rows: grouped_mm cannot take them
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 rows need widths that are multiples of 8
        assert resolve_dispatch("auto", x, 16, 12) == "sort"
        assert resolve_dispatch("auto", x, 16, 24) == ("grouped_mm" if HAS_GROUPED_MM else "sort")
    assert resolve_dispatch("auto", x.to("meta"), 16, 24) == "sort"  # neither a CPU nor a GPU: not timed there
    for d in ("sort", "loop", "bmm"):
        assert resolve_dispatch(d, x, 16, 3) == d  # an explicit design is kept


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="this PyTorch has no F.grouped_mm: auto is always sort")
def test_auto_picks_grouped_mm_on_a_cuda_gpu_only_in_bf16_at_hopper_or_later(monkeypatch):
    # no GPU here: a stand-in with a CUDA device and a dtype (all resolve_dispatch reads of x), and the
    # capability a GPU would report; the rule is what benchmarks/results/moe_cuda*.json measured on an H200
    from types import SimpleNamespace
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    bf16, fp32 = (SimpleNamespace(device=torch.device("cuda", 0), dtype=d) for d in (torch.bfloat16, torch.float32))
    assert resolve_dispatch("auto", bf16, 192, 256) == "grouped_mm"  # H100/H200 in bf16
    assert resolve_dispatch("auto", fp32, 192, 256) == "sort"  # fp32 on a GPU was not timed
    assert resolve_dispatch("auto", bf16, 192, 3) == "sort"  # 6-byte rows: grouped_mm cannot take them
    capability["value"] = (10, 0)
    assert resolve_dispatch("auto", bf16, 192, 256) == "grouped_mm"
    capability["value"] = (8, 0)  # A100: not timed
    assert resolve_dispatch("auto", bf16, 192, 256) == "sort"
    capability["value"] = (7, 5)  # Colab's T4
    assert resolve_dispatch("auto", bf16, 192, 256) == "sort"
    assert resolve_dispatch("bmm", bf16, 192, 256) == "bmm"  # an explicit design is kept


@pytest.mark.parametrize("expert_hidden", [24, 3])
def test_auto_dispatch_equals_sort_in_output_and_every_gradient(expert_hidden):
    x = torch.randn(4, 12, 16)
    results = {}
    for dispatch in ("sort", "auto"):
        layer = _layer(seed=3, n_expert=6, top_k=2, expert_hidden=expert_hidden, dispatch=dispatch).train()
        results[dispatch] = _output_and_grads(layer, x)
    for a, b in zip(results["sort"], results["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_auto_dispatch_falls_back_to_sort_without_grouped_mm(monkeypatch):
    monkeypatch.delattr(F, "grouped_mm", raising=False)
    layer = _layer(seed=2)  # no error: "auto" needs no grouped_mm
    assert resolve_dispatch("auto", torch.randn(3, 16), 16, 24) == "sort"
    x = torch.randn(2, 7, 16)
    y, _ = layer(x)
    layer.dispatch = "sort"
    torch.testing.assert_close(y, layer(x)[0], rtol=0, atol=0)


def test_sorted_experts_refuse_counts_that_do_not_match_the_rows():
    experts = Experts(3, 8, 4)
    with pytest.raises(ValueError, match="counts must be 3 non-negative row counts summing to xs.shape"):
        experts.run_sorted(torch.randn(5, 8), [2, 2, 2])
    with pytest.raises(ValueError, match="counts must be 3"):
        experts.run_sorted(torch.randn(4, 8), [2, 2])


# -- capacity --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dispatch", RUNNABLE_DISPATCHES)
@pytest.mark.parametrize("capacity_factor", [0.25, 0.5, 1.0, 1.25, 2.0])
def test_capacity_is_never_exceeded(dispatch, capacity_factor):
    layer = _layer(seed=1, n_expert=4, top_k=2, capacity_factor=capacity_factor, dispatch=dispatch)
    with torch.no_grad():
        layer.router.weight[0] += 2.0  # skew the router so that some experts overflow
    x = torch.randn(4, 16, 16)
    _, stats = layer(x)
    cap = capacity(64, 4, 2, capacity_factor)
    assert cap == math.ceil(capacity_factor * 64 * 2 / 4)
    assert int(stats["kept_per_expert"].max()) <= cap
    over = (stats["tokens_per_expert"] - cap).clamp(min=0).sum().item()
    assert stats["dropped"] == over
    assert stats["dropped_fraction"] == pytest.approx(over / 128)


def _constructed_layer(dispatch="sort"):
    """4 experts, top-1, width 4; tokens 0-5 go to expert 0 and tokens 6-7 to expert 1."""
    layer = MoELayer(MoEConfig(n_embd=4, n_expert=4, top_k=1, expert_hidden=4, capacity_factor=1.0,
                               dispatch=dispatch)).eval()
    _randomise(layer.experts)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4) * 10)
    x = torch.zeros(1, 8, 4)
    x[0, :6, 0] = 1.0
    x[0, 6:, 1] = 1.0
    return layer, x


@pytest.mark.parametrize("dispatch", RUNNABLE_DISPATCHES)
def test_dropped_tokens_are_counted_exactly_and_add_nothing(dispatch):
    layer, x = _constructed_layer(dispatch)
    y, stats = layer(x)
    # 8 tokens x top-1 / 4 experts x capacity factor 1 = 2 slots per expert: expert 0 keeps tokens 0 and 1
    assert stats["tokens_per_expert"].tolist() == [6, 2, 0, 0]
    assert stats["kept_per_expert"].tolist() == [2, 2, 0, 0]
    assert stats["dropped"] == 4 and stats["dropped_fraction"] == 0.5 and stats["unrouted_tokens"] == 4
    assert torch.all(y[0, 2:6] == 0)  # dropped: the block's residual carries them through unchanged
    assert torch.all(y[0, [0, 1, 6, 7]].abs().sum(-1) > 0)
    p = torch.softmax(torch.tensor([10.0, 0, 0, 0]), 0)[0]
    torch.testing.assert_close(y[0, 0], p * layer.experts.expert(0, x[0, 0]))


def test_expert_choice_fills_every_expert_exactly_and_skips_the_balance_loss():
    layer = _layer(router="expert_choice", capacity_factor=1.0)
    _, stats = layer(torch.randn(2, 10, 16))
    assert stats["tokens_per_expert"].tolist() == [10, 10, 10, 10]  # 20 tokens x 2 / 4 experts
    assert stats["dropped"] == 0 and "expert_index" not in stats
    assert stats["aux_loss"].item() == pytest.approx(layer.config.z_loss_coef * stats["z_loss"].item())
    assert stats["unrouted_tokens"] == int((stats["expert_mask"].sum(-1) == 0).sum())


def test_noisy_topk_is_random_in_training_and_deterministic_in_eval():
    layer = _layer(router="noisy_topk")
    with torch.no_grad():
        layer.router.noise.weight.fill_(1.0)
    x = torch.randn(2, 30, 16)
    torch.testing.assert_close(layer(x)[0], layer(x)[0])
    layer.train()
    a, b = layer(x)[1]["expert_index"], layer(x)[1]["expert_index"]
    assert not torch.equal(a, b)


# -- shared experts, hybrid, parameter counts --------------------------------------------------------------

def test_shared_experts_are_added_to_every_token():
    layer = _layer(n_shared_expert=2)
    ref = _layer(n_shared_expert=0)
    with torch.no_grad():
        ref.router.weight.copy_(layer.router.weight)
        ref.experts.w_in.copy_(layer.experts.w_in)
        ref.experts.w_out.copy_(layer.experts.w_out)
    x = torch.randn(2, 5, 16)
    shared = _swiglu(x, layer.shared.w_in[0], layer.shared.w_out[0])
    torch.testing.assert_close(layer(x)[0], ref(x)[0] + shared, rtol=1e-5, atol=1e-6)
    assert layer.shared.w_out.shape == (1, 16, 48)  # one MLP of width n_shared_expert * expert_hidden


def test_hybrid_mixes_moe_and_dense_with_learned_softmax_coefficients():
    layer = _layer(hybrid=True, dense_hidden=32)
    ref = _layer(hybrid=False)
    with torch.no_grad():
        ref.router.weight.copy_(layer.router.weight)
        ref.experts.w_in.copy_(layer.experts.w_in)
        ref.experts.w_out.copy_(layer.experts.w_out)
    x = torch.randn(2, 5, 16)
    c = layer.coefficient(x).softmax(-1)
    dense = _swiglu(x, layer.dense.w_in[0], layer.dense.w_out[0])
    torch.testing.assert_close(layer(x)[0], ref(x)[0] * c[..., :1] + dense * c[..., 1:], rtol=1e-5, atol=1e-6)
    y, _ = layer(x)
    y.sum().backward()
    assert layer.coefficient.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw", [dict(), dict(router="noisy_topk"), dict(n_shared_expert=2),
                                dict(hybrid=True, dense_hidden=40), dict(mlp="gelu", top_k=1)])
def test_parameter_counts_match_the_module(kw):
    cfg = MoEConfig(n_embd=16, n_expert=4, expert_hidden=24, **kw)
    layer = MoELayer(cfg)
    counts = moe_parameter_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in layer.parameters())
    per_expert = layer.experts.w_in[0].numel() + layer.experts.w_out[0].numel()
    assert counts["total"] - counts["active"] == (cfg.n_expert - cfg.top_k) * per_expert


# -- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, words", [
    (dict(top_k=5, n_expert=4), "top_k (5) must be <= n_expert (4)"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(capacity_factor=-1.0), "capacity_factor"),
    (dict(router="switch"), "router must be one of"),
    (dict(dispatch="magic"), "dispatch must be one of"),
    (dict(n_expert=0), "n_expert must be an int >= 1"),
    (dict(aux_loss_coef=-1.0), "aux_loss_coef"),
    (dict(mlp="tanh"), "mlp must be one of"),
])
def test_bad_configs_raise_clear_errors(kw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        MoEConfig(n_embd=16, **kw)


def test_bad_inputs_raise_clear_errors():
    layer = _layer()
    with pytest.raises(ValueError, match="C=16"):
        layer(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="C=16"):
        layer(torch.randn(6, 16))
    with pytest.raises(TypeError, match="MoEConfig"):
        MoELayer(dict(n_embd=16))
    with pytest.raises(ValueError, match="dispatch"):
        layer.dispatch = "fast"
    with pytest.raises(ValueError, match="mlp must be one of"):
        Experts(2, 4, 4, mlp="swish")
