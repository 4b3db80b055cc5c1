"""Exercises of notebook 02 (attention).

Each test compares the learner's function with PyTorch's own implementation (or with a value
computed by formula) on several inputs, and says what differs when it does.
"""

from utils.exercises import Exercise


# ---------------------------------------------------------------------------------------------
# 1. A sliding window with attention sinks (StreamingLLM)
# ---------------------------------------------------------------------------------------------

def _sink_mask(T, window, n_sink):
    import torch

    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & ((j > i - window) | (j < n_sink))


def _test_sink_window_mask(fn):
    import torch

    for T, window, n_sink in ((8, 3, 2), (6, 2, 1), (10, 4, 0), (5, 10, 2), (7, 1, 3)):
        got = fn(T, window, n_sink)
        assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
        assert got.shape == (T, T), f"sink_window_mask({T}, {window}, {n_sink}) has shape {tuple(got.shape)}"
        assert got.dtype == torch.bool, f"return a boolean mask (True = may attend), got dtype {got.dtype}"
        expected = _sink_mask(T, window, n_sink)
        if torch.equal(got, expected):
            continue
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        if torch.equal(got, (j > i - window) | (j < n_sink)):
            raise AssertionError(f"T={T}, window={window}, n_sink={n_sink}: the sinks must stay causal too: a query "
                                 "at position 0 cannot see sink token 1 (j <= i always)")
        if torch.equal(got, (j <= i) & (j > i - window)):
            raise AssertionError(f"T={T}, window={window}, n_sink={n_sink}: that is the plain sliding window; the "
                                 f"first {n_sink} tokens must stay visible to every later query")
        if torch.equal(got, (j <= i) & ((j >= i - window) | (j < n_sink))):
            raise AssertionError(f"T={T}, window={window}: each query's window holds {window + 1} keys; a window of "
                                 f"{window} means the query itself and the {window - 1} before it")
        raise AssertionError(f"T={T}, window={window}, n_sink={n_sink}: wrong mask; query i may see key j when "
                             "j <= i and (j > i - window or j < n_sink)")


sink_window_mask = Exercise(
    title="a sliding window with attention sinks",
    test=_test_sink_window_mask,
    hint=("StreamingLLM (Xiao et al. 2023) found that a model run with a plain sliding window breaks once the "
          "first tokens leave the window, because many heads park their attention on them; keeping the first "
          "few tokens visible to every query (the 'sinks') fixes it"),
    hint2=("start from the notebook's band mask (key j <= query i and j > i - window) and OR in the sink "
           "columns j < n_sink, without losing causality"),
    solution_code='''
import torch

def sink_window_mask(T, window, n_sink):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & ((j > i - window) | (j < n_sink))
''',
    wrong_code='''
import torch

def sink_window_mask(T, window, n_sink):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return ((j <= i) & (j > i - window)) | (j < n_sink)   # the sinks leak into the past of early queries
''',
    answer_name="sink_window_mask",
)


# ---------------------------------------------------------------------------------------------
# 2. Merge two blocks of an online softmax (the heart of flash attention)
# ---------------------------------------------------------------------------------------------

def _block_stats(scores, v):
    import torch

    m = scores.max(dim=-1).values
    p = torch.exp(scores - m[:, None])
    return m, p.sum(-1), p @ v


def _test_merge_softmax_blocks(fn):
    import torch

    g = torch.Generator().manual_seed(0)
    for Tq, k1, k2, d, shift in ((3, 4, 5, 8, 0.0), (1, 1, 1, 2, 0.0), (4, 6, 2, 3, 80.0)):
        scores = torch.randn(Tq, k1 + k2, generator=g, dtype=torch.float64) * 3
        scores[:, k1:] += shift  # the second block's scores are much larger: the maxima differ a lot
        v = torch.randn(k1 + k2, d, generator=g, dtype=torch.float64)
        b1 = _block_stats(scores[:, :k1], v[:k1])
        b2 = _block_stats(scores[:, k1:], v[k1:])
        got = fn(*b1, *b2)
        assert isinstance(got, tuple) and len(got) == 3, "return a tuple (m, l, acc)"
        m, l, acc = got
        ref_m, ref_l, ref_acc = _block_stats(scores, v)
        assert m.shape == (Tq,) and l.shape == (Tq,) and acc.shape == (Tq, d), (
            f"shapes: m and l ({Tq},), acc ({Tq}, {d}); got {tuple(m.shape)}, {tuple(l.shape)}, {tuple(acc.shape)}")
        assert torch.allclose(m, ref_m), "m must be the running maximum: the larger of the two blocks' maxima"
        assert torch.isfinite(l).all() and torch.isfinite(acc).all(), (
            "you got inf/NaN: never exponentiate a raw score; only differences of maxima (which are <= 0)")
        assert torch.allclose(l, ref_l, rtol=1e-9), (
            "l is wrong: each block's sum was taken relative to ITS OWN max; rescale it by exp(m_block - m) "
            "before adding")
        assert torch.allclose(acc, ref_acc, rtol=1e-9, atol=1e-12), (
            "acc is wrong: rescale each block's accumulator by exp(m_block - m) too")
        out = acc / l[:, None]
        assert torch.allclose(out, torch.softmax(scores, -1) @ v, rtol=1e-9, atol=1e-12)


merge_softmax_blocks = Exercise(
    title="merge two online-softmax blocks",
    test=_test_merge_softmax_blocks,
    hint=("each block kept its scores' max m, the sum l of exp(score - m) and acc = sum of exp(score - m) * v; "
          "to combine them, express both relative to one common maximum"),
    hint2=("m = max(m1, m2); a1 = exp(m1 - m), a2 = exp(m2 - m); l = l1 * a1 + l2 * a2; "
           "acc = acc1 * a1[:, None] + acc2 * a2[:, None]"),
    solution_code='''
import torch

def merge_softmax_blocks(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, l1 * a1 + l2 * a2, acc1 * a1[:, None] + acc2 * a2[:, None]
''',
    wrong_code='''
import torch

def merge_softmax_blocks(m1, l1, acc1, m2, l2, acc2):
    return torch.maximum(m1, m2), l1 + l2, acc1 + acc2   # forgets to rescale to the common max
''',
    answer_name="merge_softmax_blocks",
)


# ---------------------------------------------------------------------------------------------
# 3. The size of a KV cache
# ---------------------------------------------------------------------------------------------

def _kv_cache_bytes(config, seq_len, batch_size=1, bytes_per_value=2):
    from utils.kv_cache import kv_cache_bytes

    return kv_cache_bytes(config.n_layer, config.resolved_n_kv_head, config.head_dim, seq_len, batch_size,
                          bytes_per_value)


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
    hint="the cache keeps, for every layer and every past token of every sequence, the keys and the values "
         "of each key/value head",
    hint2="each layer stores a K and a V vector of head_dim = n_embd // n_head numbers per KV head, per token, "
          "per sequence; n_kv_head=None means n_head KV heads",
    wrong_code='''
def kv_cache_bytes(config, seq_len, batch_size=1, bytes_per_value=2):
    head_dim = config.n_embd // config.n_head
    return 2 * config.n_layer * config.n_head * head_dim * seq_len * batch_size * bytes_per_value  # every query head
''',
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
    hint="two rules at once: a query sees no future key, and no query sees a padding key; with LEFT padding "
         "the real tokens of a sequence of length n are its last n positions",
    hint2="AND the (T, T) causal mask with a (B, 1, 1, T) 'key is a real token' mask: "
          "arange(T) >= T - lengths[:, None]",
    wrong_code='''
import torch

def causal_padding_mask(lengths, T):
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    real_key = torch.arange(T)[None, :] < lengths[:, None]             # as if padded on the right
    return causal[None, None] & real_key[:, None, None, :]
''',
    solution_code='''
import torch

def causal_padding_mask(lengths, T):
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))            # (T, T)
    real_key = torch.arange(T)[None, :] >= T - lengths[:, None]        # (B, T): the last n are real
    return causal[None, None] & real_key[:, None, None, :]             # (B, 1, T, T)
''',
    answer_name="causal_padding_mask",
)
