"""utils/kv_cache.py: one size formula, and training through a cache (gradients) equals training without."""

import pytest
import torch

from utils.kv_cache import KVCache, kv_cache_bytes
from utils.model import GPT, GPTConfig

ATOL = 1e-5


from tiny_models import random_ids as _ids  # noqa: E402
from tiny_models import tiny_gpt_config as _cfg  # noqa: E402


def test_kv_cache_bytes_is_the_formula_and_what_the_cache_allocates():
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 32 * 32 * 128 * 4096 * 2  # Llama-2-7B, bf16: 2 GiB
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 2**30
    assert kv_cache_bytes(32, 8, 128, 4096) * 4 == kv_cache_bytes(32, 32, 128, 4096)  # GQA-8: 4x smaller
    assert kv_cache_bytes(2, 3, 4, 5, batch_size=6, bytes_per_value=0.5) == 2 * 2 * 3 * 4 * 5 * 6 // 2
    for n_kv in (4, 2, 1):
        model = GPT(_cfg(n_kv_head=n_kv))
        cache = model.new_kv_cache(3)
        allocated = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
        assert cache.nbytes == allocated == kv_cache_bytes(2, n_kv, 8, 32, batch_size=3, bytes_per_value=4)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_backward_through_the_cache_gives_the_gradients_of_the_full_forward(pos):
    torch.manual_seed(0)
    model = GPT(_cfg(pos=pos, n_kv_head=2))
    idx = _ids(2, 12)
    # reference: one forward over all 12 tokens, loss on the last 5 predictions
    targets = idx.roll(-1, 1)
    full_logits, _ = model(idx)
    ref = torch.nn.functional.cross_entropy(full_logits[:, 7:].reshape(-1, 61), targets[:, 7:].reshape(-1))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    # through a cache: prefill 4, then 3, then 5 tokens one chunk at a time, loss on the last chunk
    cache = model.new_kv_cache(2)
    model(idx[:, :4], kv_cache=cache)
    model(idx[:, 4:7], kv_cache=cache)
    _, loss = model(idx[:, 7:], targets[:, 7:], kv_cache=cache)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_a_learned_prefix_written_into_the_cache_trains_like_past_key_values():
    torch.manual_seed(0)
    model = GPT(_cfg(pos="rope")).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg, P = model.config, 3
    prefix = [(torch.randn(1, cfg.resolved_n_kv_head, P, cfg.head_dim, requires_grad=True),
               torch.randn(1, cfg.resolved_n_kv_head, P, cfg.head_dim, requires_grad=True)) for _ in range(cfg.n_layer)]
    idx, targets = _ids(2, 6, seed=1), _ids(2, 6, seed=2)

    def loss_via_cache():
        cache = model.new_kv_cache(2)
        for layer, (k, v) in enumerate(prefix):
            cache.update(layer, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1))
        cache.advance(P)  # the new tokens then take positions P, P+1, ...
        return model(idx, targets, kv_cache=cache)[1]

    def loss_via_past_key_values():
        return model(idx, targets, past_key_values=prefix, position_ids=torch.arange(P, P + 6))[1]

    a, b = loss_via_cache(), loss_via_past_key_values()
    grads_a = torch.autograd.grad(a, [t for pair in prefix for t in pair])
    grads_b = torch.autograd.grad(b, [t for pair in prefix for t in pair])
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert all(g.abs().sum() > 0 for g in grads_a)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
    # and training the prefix through the cache lowers the loss
    opt = torch.optim.Adam([t for pair in prefix for t in pair], lr=0.3)
    losses = []
    for _ in range(15):
        loss = loss_via_cache()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1 and all(b < a for a, b in zip(losses, losses[1:])), losses


def test_out_of_place_writes_then_trim_and_reset_keep_the_cache_consistent():
    torch.manual_seed(0)
    model = GPT(_cfg(pos="rope", n_layer=1))
    idx = _ids(1, 10)
    cache = model.new_kv_cache(1, max_len=8)
    model(idx[:, :8], kv_cache=cache)  # gradients on: out-of-place
    k_before = cache.k.detach().clone()
    cache.trim(5)
    torch.testing.assert_close(cache.k[:, :, :, :5], k_before[:, :, :, 3:8])
    assert cache.length == 5 and cache.next_position == 8
    cache.reset()
    assert cache.length == 0 and cache.k.data_ptr() == cache._k.data_ptr()  # back on the pre-allocated buffer
    with torch.no_grad():
        model(idx[:, :4], kv_cache=cache)
    assert cache.k.data_ptr() == cache._k.data_ptr()  # no-grad writes stay in place


def test_kv_cache_reports_its_shape():
    cache = KVCache(n_layer=3, batch_size=2, n_kv_head=4, max_len=10, head_dim=8, dtype=torch.bfloat16)
    assert (cache.n_layer, cache.batch_size, cache.n_kv_head, cache.max_len, cache.head_dim) == (3, 2, 4, 10, 8)
    assert cache.dtype == torch.bfloat16 and cache.nbytes == kv_cache_bytes(3, 4, 8, 10, 2, 2)
    assert len(cache) == 0 and "length=0/10" in repr(cache)
