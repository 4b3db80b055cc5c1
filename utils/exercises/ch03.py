"""Exercises of notebook 03 (transformer blocks): count and cost configurations the notebook did not."""

import torch

from utils.exercises import Exercise


def _llama_config(vocab_size, n_layer, n_embd, n_head, n_kv_head, ffn_hidden):
    from utils.model import GPTConfig

    return GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     n_kv_head=n_kv_head, ffn_hidden=ffn_hidden, norm="rmsnorm", mlp="swiglu", pos="rope",
                     bias=False, tie_weights=False)


def _test_llama_param_count(fn):
    from utils.params import count_parameters

    got = fn(32000, 32, 4096, 32, 32, 11008)
    assert got == 6_738_415_616, (f"Llama-2-7B (vocab 32000, 32 layers, width 4096, 32 heads, FFN 11008) has "
                                  f"6,738,415,616 parameters; got {got!r}")
    for args in [(100, 1, 16, 4, 2, 40), (512, 3, 64, 8, 1, 176), (32000, 2, 256, 8, 4, 688)]:
        expected = count_parameters(_llama_config(*args))
        got = fn(*args)
        if got != expected:
            vocab, n_layer, d, n_head, n_kv_head, hidden = args
            head_dim = d // n_head
            if got - expected == n_layer * 2 * d * (d - n_kv_head * head_dim):
                raise AssertionError(f"{args}: with {n_kv_head} key/value heads the k and v projections map d={d} "
                                     f"to n_kv_head * head_dim = {n_kv_head * head_dim}, not to d")
            raise AssertionError(f"(vocab, n_layer, n_embd, n_head, n_kv_head, ffn_hidden) = {args}: expected "
                                 f"{expected:,}, got {got!r}")


llama_param_count = Exercise(
    title="count a Llama-style model's parameters",
    test=_test_llama_param_count,
    hint=("list what differs from GPT-2: no biases, RMSNorm has only a weight, SwiGLU has three matrices, "
          "grouped-query attention shrinks k and v, RoPE has no position table, the output layer is not tied"),
    hint2=("per layer: q and out d*d each, k and v d*(n_kv_head*head_dim) each, SwiGLU 3*d*ffn_hidden, two norms "
           "d each; plus embeddings vocab*d, a final norm d and an untied lm_head vocab*d"),
    solution_code='''
def llama_param_count(vocab_size, n_layer, n_embd, n_head, n_kv_head, ffn_hidden):
    d, head_dim = n_embd, n_embd // n_head
    attention = 2 * d * d + 2 * d * n_kv_head * head_dim   # q, out; k, v (grouped-query)
    mlp = 3 * d * ffn_hidden                               # gate, up, down
    norms = 2 * d                                          # two RMSNorm weights
    return vocab_size * d + n_layer * (attention + mlp + norms) + d + vocab_size * d
''',
    wrong_code='''
def llama_param_count(vocab_size, n_layer, n_embd, n_head, n_kv_head, ffn_hidden):
    d = n_embd
    attention = 4 * d * d                                  # as if every head had its own k and v
    return vocab_size * d + n_layer * (attention + 3 * d * ffn_hidden + 2 * d) + d + vocab_size * d
''',
    answer_name="llama_param_count",
)


def _test_ffn_flops(fn):
    cases = [(768, 3072, "gelu", 2 * 2 * 768 * 3072), (4096, 11008, "swiglu", 2 * 3 * 4096 * 11008),
             (64, 256, "relu", 2 * 2 * 64 * 256), (192, 512, "swiglu", 2 * 3 * 192 * 512)]
    for d, hidden, kind, expected in cases:
        got = fn(d, hidden, kind)
        if got == expected:
            continue
        if got * 2 == expected:
            raise AssertionError(f"d={d}, hidden={hidden}, {kind}: got {got:,}, half the answer: a multiply-add "
                                 "is 2 floating-point operations")
        if kind == "swiglu" and got == 2 * 2 * d * hidden:
            raise AssertionError(f"SwiGLU has THREE matrices (gate, up, down), not two")
        raise AssertionError(f"d={d}, hidden={hidden}, {kind}: expected {expected:,} FLOPs per token, got {got!r}")


ffn_flops_per_token = Exercise(
    title="FLOPs per token of a feed-forward network",
    test=_test_ffn_flops,
    hint=("a token's vector goes through each weight matrix of the MLP once; a matrix of m x n weights costs one "
          "multiply and one add per weight; the activation itself is negligible"),
    hint2="2 * (number of weights): gelu/relu have 2 * d * hidden weights (up, down), swiglu 3 * d * hidden",
    solution_code='''
def ffn_flops_per_token(n_embd, hidden, kind):
    n_matrices = 3 if kind == "swiglu" else 2
    return 2 * n_matrices * n_embd * hidden
''',
    wrong_code='''
def ffn_flops_per_token(n_embd, hidden, kind):
    return 2 * 2 * n_embd * hidden   # forgets SwiGLU's third matrix
''',
    answer_name="ffn_flops_per_token",
)


def _test_gpt2_param_count(fn):
    from utils.model import GPTConfig
    from utils.params import count_parameters

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
    hint=("go through the model top to bottom: embeddings, then per block the attention projections, the MLP "
          "and the norms, then the final norm and the output layer; weights AND biases; a tied matrix counts once"),
    hint2=("embeddings (vocab + block) * d; per layer: attention 4*d*d + 4*d, MLP 8*d*d + 5*d, two LayerNorms 4*d; "
           "a final LayerNorm 2*d; the output layer is tied (0 extra)"),
    wrong_code='''
def gpt2_param_count(vocab_size, block_size, n_layer, n_embd):
    d = n_embd
    per_layer = 4 * d * d + 8 * d * d      # attention and MLP matrices, but no biases or norms
    return (vocab_size + block_size) * d + n_layer * per_layer
''',
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
