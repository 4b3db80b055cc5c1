"""Exercises of notebook 02 (attention).

Each test compares the learner's function with PyTorch's own implementation (or with a value
computed by formula) on several inputs, and says what differs when it does.
"""

from utils.exercises import Exercise


# ---------------------------------------------------------------------------------------------
# 1. The causal mask
# ---------------------------------------------------------------------------------------------

def _test_causal_mask(fn):
    import torch

    for T in (5, 2, 17, 1):  # T = 1 last: there an inverted mask and a missing diagonal look alike
        got = fn(T)
        assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
        assert got.shape == (T, T), f"causal_mask({T}) has shape {tuple(got.shape)}, expected ({T}, {T})"
        assert got.dtype == torch.bool, (f"return a boolean mask (True = may attend), got dtype {got.dtype}; "
                                         "convert with .bool()")
        expected = torch.ones(T, T).tril().bool()
        if not torch.equal(got, expected):
            if torch.equal(got, ~expected):
                raise AssertionError("your mask is inverted: True must mean 'may attend' (the lower "
                                     "triangle and the diagonal), False 'must not'")
            if torch.equal(got, expected.T):
                raise AssertionError("your mask is transposed: row i (the query) may attend to columns "
                                     "j <= i (the keys), so the True entries are in the LOWER triangle")
            if torch.equal(got, torch.ones(T, T).tril(-1).bool()):
                raise AssertionError("a token must be allowed to attend to itself: keep the diagonal")
            raise AssertionError(f"causal_mask({T}) differs from the expected lower-triangular mask")


causal_mask = Exercise(
    title="build the causal mask",
    test=_test_causal_mask,
    hint="query i may look at keys j <= i: torch.tril of a (T, T) matrix of ones, as booleans",
    solution_code='''
import torch

def causal_mask(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))
''',
    answer_name="causal_mask",
)


# ---------------------------------------------------------------------------------------------
# 2. Softmax attention for one head
# ---------------------------------------------------------------------------------------------

def _test_attention_one_head(fn):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    for Tq, Tk, d, dv in ((1, 1, 4, 4), (5, 5, 8, 8), (3, 7, 16, 5)):
        q = torch.randn(Tq, d, generator=g)
        k = torch.randn(Tk, d, generator=g)
        v = torch.randn(Tk, dv, generator=g)
        got = fn(q, k, v)
        assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
        assert got.shape == (Tq, dv), (f"with q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                                       f"the output has shape {tuple(got.shape)}, expected ({Tq}, {dv})")
        expected = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
            unscaled = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=1.0)[0]
            if torch.allclose(got, unscaled, atol=1e-5, rtol=1e-4):
                raise AssertionError("you forgot the scale: divide the scores by sqrt(d) before the softmax")
            raise AssertionError(f"output differs from softmax(q k^T / sqrt(d)) v by up to "
                                 f"{(got - expected).abs().max().item():.3g} (Tq={Tq}, Tk={Tk}, d={d}); "
                                 "is the softmax taken over the keys (the last dimension)?")
        mask = torch.rand(Tq, Tk, generator=g) > 0.4
        mask[:, 0] = True  # every query sees at least one key
        got = fn(q, k, v, mask)
        expected = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask[None])[0]
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
            raise AssertionError("with a mask the output is wrong: set the scores where mask is False to "
                                 "-inf BEFORE the softmax (masked_fill(~mask, float('-inf')))")


attention_one_head = Exercise(
    title="softmax attention for one head",
    test=_test_attention_one_head,
    hint="scores = q @ k.T / sqrt(d); masked_fill(~mask, -inf) when a mask is given; "
         "softmax over the last dim; then weights @ v",
    solution_code='''
import math
import torch

def attention_one_head(q, k, v, mask=None):
    scores = q @ k.T / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v
''',
    answer_name="attention_one_head",
)


# ---------------------------------------------------------------------------------------------
# 3. The size of a KV cache
# ---------------------------------------------------------------------------------------------

def _kv_cache_bytes(config, seq_len, batch_size=1, bytes_per_value=2):
    n_kv_head = config.n_head if config.n_kv_head is None else config.n_kv_head
    head_dim = config.n_embd // config.n_head
    return 2 * config.n_layer * n_kv_head * head_dim * seq_len * batch_size * bytes_per_value


def _test_kv_cache_bytes(fn):
    from utils.model import GPTConfig

    cases = [  # (config, seq_len, batch_size, bytes_per_value), a description
        ((GPTConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_embd=4096), 4096, 1, 2),
         "Llama-2-7B (MHA) at 4,096 tokens in fp16"),
        ((GPTConfig(vocab_size=128256, block_size=8192, n_layer=32, n_head=32, n_embd=4096, n_kv_head=8),
          8192, 1, 2), "Llama-3-8B (GQA, 8 KV heads) at 8,192 tokens in fp16"),
        ((GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), 1024, 8, 4),
         "GPT-2 small, batch 8, 1,024 tokens in fp32"),
        ((GPTConfig(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=128, n_kv_head=1), 256, 3, 1),
         "a tiny MQA model (1 KV head), batch 3, in int8"),
    ]
    for (config, seq_len, batch_size, nbytes), what in cases:
        got = fn(config, seq_len, batch_size, nbytes)
        assert isinstance(got, int) and not isinstance(got, bool), (
            f"return an int number of bytes, got {type(got).__name__} {got!r}")
        expected = _kv_cache_bytes(config, seq_len, batch_size, nbytes)
        if got == expected:
            continue
        if got * 2 == expected:
            raise AssertionError(f"{what}: got {got:,}, half the answer; the cache stores K AND V")
        if config.n_kv_head is not None and got == expected // config.n_kv_head * config.n_head:
            raise AssertionError(f"{what}: got {got:,}; with grouped-query attention only the "
                                 f"{config.n_kv_head} KV heads are cached, not all {config.n_head} query heads")
        if got * batch_size == expected:
            raise AssertionError(f"{what}: got {got:,}; did you forget the batch size?")
        raise AssertionError(f"{what}: got {got:,} bytes, expected {expected:,} ({expected / 2**30:.3f} GiB); "
                             "multiply 2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes "
                             "per value, with head_dim = n_embd // n_head")


kv_cache_bytes = Exercise(
    title="compute the KV-cache size for a config",
    test=_test_kv_cache_bytes,
    hint="each layer stores a K and a V vector of head_dim = n_embd // n_head numbers per KV head, per token, "
         "per sequence; n_kv_head=None means n_head KV heads",
    solution_code='''
def kv_cache_bytes(config, seq_len, batch_size=1, bytes_per_value=2):
    n_kv_head = config.n_head if config.n_kv_head is None else config.n_kv_head
    head_dim = config.n_embd // config.n_head
    return 2 * config.n_layer * n_kv_head * head_dim * seq_len * batch_size * bytes_per_value
''',
    answer_name="kv_cache_bytes",
)


# ---------------------------------------------------------------------------------------------
# 4. Causal + padding mask for a left-padded batch
# ---------------------------------------------------------------------------------------------

def _test_causal_padding_mask(fn):
    import torch

    for lengths, T in (([3, 5, 1], 5), ([4], 4), ([2, 6], 7)):
        got = fn(torch.tensor(lengths), T)
        B = len(lengths)
        assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
        assert got.shape == (B, 1, T, T), (f"for {B} sequences of padded length {T} return shape "
                                           f"({B}, 1, {T}, {T}) (the 1 broadcasts over heads), "
                                           f"got {tuple(got.shape)}")
        assert got.dtype == torch.bool, f"return a boolean mask (True = may attend), got {got.dtype}"
        causal = torch.ones(T, T).tril().bool()
        for b, n in enumerate(lengths):
            real_key = torch.arange(T) >= T - n  # left padding: the real tokens are the LAST n
            expected = causal & real_key[None, :]
            if not torch.equal(got[b, 0], expected):
                if torch.equal(got[b, 0], causal):
                    raise AssertionError(f"sequence {b} (length {n}): the padding keys (the first {T - n} "
                                         "positions) must be masked out too")
                if torch.equal(got[b, 0], causal & (torch.arange(T) < n)[None, :]):
                    raise AssertionError(f"sequence {b}: you masked as if the padding were on the right; "
                                         f"with LEFT padding the real tokens are positions {T - n}..{T - 1}")
                if torch.equal(got[b, 0], real_key[None, :].expand(T, T)):
                    raise AssertionError(f"sequence {b}: the mask must also be causal (key j <= query i)")
                raise AssertionError(f"sequence {b} (length {n}) has a wrong mask; it must be True where "
                                     f"key j <= query i AND j >= {T - n}")


causal_padding_mask = Exercise(
    title="causal + padding mask for a left-padded batch",
    test=_test_causal_padding_mask,
    hint="AND the (T, T) causal mask with a (B, 1, 1, T) 'key is a real token' mask: "
         "arange(T) >= T - lengths[:, None]",
    solution_code='''
import torch

def causal_padding_mask(lengths, T):
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))            # (T, T)
    real_key = torch.arange(T)[None, :] >= T - lengths[:, None]        # (B, T): the last n are real
    return causal[None, None] & real_key[:, None, None, :]             # (B, 1, T, T)
''',
    answer_name="causal_padding_mask",
)
