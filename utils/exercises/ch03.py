"""Exercises of notebook 03 (transformer blocks)."""

import torch

from utils.exercises import Exercise


def _test_rms_norm(fn):
    from utils.model import RMSNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=g) * 3 + 2  # an offset: RMSNorm must NOT subtract the mean
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16, generator=g) + 0.5)
        expected = norm(x)
    got = fn(x, norm.weight.detach(), 1e-5)
    assert isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}"
    assert got.shape == x.shape, f"the output must keep the input's shape {tuple(x.shape)}, got {tuple(got.shape)}"
    centred = torch.nn.functional.layer_norm(x, (16,), norm.weight.detach(), None, 1e-5)
    assert not torch.allclose(got, centred, atol=1e-3), "that is LayerNorm: RMSNorm does not subtract the mean"
    assert torch.allclose(got, expected, atol=1e-5), (
        "values differ from RMSNorm: divide by sqrt(mean(x**2) over the last dim + eps), then multiply by weight")


rms_norm = Exercise(
    title="RMSNorm by hand",
    test=_test_rms_norm,
    hint="x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight",
    solution_code='''
import torch

def rms_norm(x, weight, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight
''',
    answer_name="rms_norm",
)


def _test_swiglu(fn):
    from utils.model import MLP, GPTConfig

    torch.manual_seed(0)
    mlp = MLP(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=24, mlp="swiglu", bias=False))
    x = torch.randn(3, 4, 24)
    with torch.no_grad():
        expected = mlp(x)
        w_gate, w_up = mlp.gate_up_proj.weight.chunk(2, dim=0)  # stacked in one nn.Linear
        got = fn(x, w_gate, w_up, mlp.down_proj.weight)
    assert isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}"
    assert got.shape == x.shape, f"the output must have the input's shape {tuple(x.shape)}, got {tuple(got.shape)}"
    assert torch.allclose(got, expected, atol=1e-5), (
        "values differ: gate with silu(x @ w_gate.T), multiply by x @ w_up.T, then project with w_down.T")


swiglu = Exercise(
    title="the SwiGLU feed-forward network",
    test=_test_swiglu,
    hint="nn.Linear computes x @ W.T; SwiGLU is (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T",
    solution_code='''
import torch.nn.functional as F

def swiglu(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T
''',
    answer_name="swiglu",
)


def _test_gpt2_param_count(fn):
    from utils.model import GPTConfig, count_parameters

    assert fn(50257, 1024, 12, 768) == 124_439_808, (
        f"GPT-2 small should give 124,439,808, got {fn(50257, 1024, 12, 768)!r}")
    for vocab, block, layers, width in [(100, 16, 1, 8), (512, 64, 4, 64), (50257, 1024, 24, 1024)]:
        cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=4, n_embd=width)
        got = fn(vocab, block, layers, width)
        assert got == count_parameters(cfg), (
            f"vocab={vocab}, block={block}, n_layer={layers}, n_embd={width}: expected "
            f"{count_parameters(cfg):,}, got {got!r}")


gpt2_param_count = Exercise(
    title="count GPT-2's parameters by hand",
    test=_test_gpt2_param_count,
    hint=("embeddings (vocab + block) * d; per layer: attention 4*d*d + 4*d, MLP 8*d*d + 5*d, two LayerNorms 4*d; "
          "a final LayerNorm 2*d; the output layer is tied (0 extra)"),
    solution_code='''
def gpt2_param_count(vocab_size, block_size, n_layer, n_embd):
    d = n_embd
    embeddings = (vocab_size + block_size) * d
    attention = 4 * d * d + 4 * d          # q, k, v, out projections with biases
    mlp = 2 * (4 * d) * d + 4 * d + d      # up (d -> 4d) and down (4d -> d) with biases
    norms = 2 * 2 * d                      # two LayerNorms (weight + bias) per block
    return embeddings + n_layer * (attention + mlp + norms) + 2 * d   # + final LayerNorm
''',
    answer_name="gpt2_param_count",
)


def _test_kv_cache_bytes(fn):
    from utils.model import KVCache

    cache = KVCache(n_layer=3, batch_size=2, n_kv_head=4, max_len=10, head_dim=8, dtype=torch.float32)
    expected = cache.k.numel() * cache.k.element_size() * 2
    got = fn(3, 4, 8, 10, 2, 4)
    assert got == expected, f"a fp32 cache of 3 layers, 4 kv heads, head_dim 8, 10 tokens, batch 2 holds {expected} bytes, got {got!r}"
    llama = fn(32, 32, 128, 4096, 1, 2)
    assert llama == 2 * 32 * 32 * 128 * 4096 * 2, (
        f"Llama-2-7B at 4096 tokens in bf16 needs exactly 2 GiB (2,147,483,648 bytes), got {llama!r}; "
        "did you count both keys and values?")
    assert fn(32, 8, 128, 4096, 1, 2) == llama // 4, "with 8 key/value heads instead of 32 the cache is 4x smaller"


kv_cache_bytes = Exercise(
    title="the size of a KV cache",
    test=_test_kv_cache_bytes,
    hint="keys AND values: 2 * n_layer * n_kv_head * head_dim * seq_len * batch_size * bytes_per_value",
    solution_code='''
def kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch_size=1, bytes_per_value=2):
    return 2 * n_layer * n_kv_head * head_dim * seq_len * batch_size * bytes_per_value
''',
    answer_name="kv_cache_bytes",
)
