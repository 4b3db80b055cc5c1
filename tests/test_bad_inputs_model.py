"""Bad inputs to the model modules (model, kv_cache, positions, attention, encoders, params, measure,
generation) raise ValueError/TypeError naming the argument, and leave the state as it was."""

import math

import numpy as np
import pytest
import torch

from utils.attention import MultiHeadAttention, attend, causal_mask, flash_attention, scaled_dot_product_attention
from utils.encoders import EncoderDecoder, EncoderModel
from utils.generation import (apply_repetition_penalty, generate, next_token_probs, pad_prompts, sample_next_token,
                              top_k_filter, top_p_filter, window_start)
from utils.kv_cache import KVCache, kv_cache_bytes
from utils.measure import peak_tensor_memory, saved_tensor_bytes, time_fn, torch_threads
from utils.model import GPT, GPTConfig, LayerNorm, RMSNorm, make_norm
from utils.params import Architecture, architecture_parameters, count_parameters, memory_footprint
from utils.positions import LearnedPositionalEmbedding, RotaryEmbedding, sinusoidal_positions

V = 61
BASE = dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32)


def cfg(**kw):
    return GPTConfig(**{**BASE, **kw})


def gpt(**kw):
    torch.manual_seed(0)
    return GPT(cfg(**kw)).eval()


def ids(B=2, T=5):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def qkv(d=8):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 2, 4, d, generator=g) for _ in range(3))


def arch(**kw):
    return Architecture(**{**dict(name="x", vocab_size=10, n_embd=12, n_layer=1, n_head=3), **kw})


def pkv(shape=(1, 4, 3, 8), n=2, dtype=torch.float32):
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(n)]


CACHE = dict(n_layer=2, batch_size=1, n_kv_head=4, max_len=8, head_dim=8)
F32 = torch.randn(2, 10)

# (id, call, exception type, phrase of the message)
CASES = [
    # ---- GPTConfig
    ("config bias='no'", lambda: cfg(bias="no"), TypeError, "GPTConfig.bias must be True or False"),
    ("config tie_weights='no'", lambda: cfg(tie_weights="no"), TypeError, "GPTConfig.tie_weights must be True or False"),
    ("config bias=1", lambda: cfg(bias=1), TypeError, "GPTConfig.bias must be True or False, got 1"),
    ("config rope_base=0", lambda: cfg(pos="rope", rope_base=0), ValueError, "rope_base must be a finite number > 0, got 0"),
    ("config rope_base=-1", lambda: cfg(rope_base=-1.0), ValueError, "rope_base must be a finite number > 0, got -1.0"),
    ("config rope_base=nan", lambda: cfg(rope_base=float("nan")), ValueError, "rope_base must be a finite number > 0"),
    ("config norm_eps=0", lambda: cfg(norm_eps=0), ValueError, "norm_eps must be a finite number > 0"),
    ("config vocab_size=2.5", lambda: cfg(vocab_size=2.5), ValueError, "vocab_size must be a positive int, got 2.5"),
    ("config n_layer=True", lambda: cfg(n_layer=True), ValueError, "n_layer must be a positive int, got True"),
    ("config dropout='0.1'", lambda: cfg(dropout="0.1"), ValueError, "dropout must be a number in [0, 1), got '0.1'"),
    ("config dropout=nan", lambda: cfg(dropout=float("nan")), ValueError, "dropout must be a number in [0, 1)"),
    ("config attn_dropout=1", lambda: cfg(attn_dropout=1.0), ValueError, "attn_dropout must be a number in [0, 1)"),
    ("config n_kv_head=0", lambda: cfg(n_kv_head=0), ValueError, "multiple of n_kv_head (0)"),
    ("config n_kv_head=2.0", lambda: cfg(n_kv_head=2.0), ValueError, "multiple of n_kv_head (2.0)"),
    ("config ffn_hidden=0", lambda: cfg(ffn_hidden=0), ValueError, "ffn_hidden must be a positive int or None, got 0"),
    ("config norm=list", lambda: cfg(norm=["layernorm"]), ValueError, "GPTConfig.norm=['layernorm'] is not one of"),
    ("config attn_impl", lambda: cfg(attn_impl="flash"), ValueError, "attn_impl='flash' is not one of"),
    ("config odd rope head_dim", lambda: cfg(n_embd=12, n_head=4, pos="rope"), ValueError, "must be even"),
    # ---- GPT
    ("GPT(dict)", lambda: GPT(BASE), TypeError, "GPT needs a GPTConfig, got dict"),
    ("idx list", lambda: gpt()([1, 2, 3]), TypeError, "idx must be a torch.Tensor of token ids (B, T), got list"),
    ("idx numpy", lambda: gpt()(np.array([[1, 2]])), TypeError, "got ndarray"),
    ("idx 3-D", lambda: gpt()(torch.zeros(1, 2, 3, dtype=torch.long)), ValueError, "idx must have shape (B, T)"),
    ("idx float", lambda: gpt()(torch.zeros(1, 3)), TypeError, "idx must hold integer token ids, got dtype torch.float32"),
    ("idx batch of 0", lambda: gpt()(torch.zeros(0, 5, dtype=torch.long)), ValueError, "batch of 0 sequences"),
    ("idx batch of 0 with targets", lambda: gpt()(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long)),
     ValueError, "batch of 0 sequences"),
    ("idx id = vocab", lambda: gpt()(torch.full((1, 3), V)), ValueError, "token id 61, outside [0, vocab_size=61)"),
    ("idx too long", lambda: gpt()(torch.zeros(1, 33, dtype=torch.long)), ValueError, "longer than the context window"),
    ("targets id = vocab", lambda: gpt()(ids(), ids().fill_(V)), ValueError, "targets hold token id 61, outside [0, vocab_size=61)"),
    ("targets id -5", lambda: gpt()(ids(), ids().fill_(-5)), ValueError, "targets hold token id -5"),
    ("targets float", lambda: gpt()(ids(), ids().float()), TypeError, "targets must hold integer token ids"),
    ("targets list", lambda: gpt()(ids(), [[1] * 5] * 2), TypeError, "targets must be a torch.Tensor"),
    ("targets shape", lambda: gpt()(ids(2, 5), ids(2, 4)), ValueError, "targets must have the same shape as the input (2, 5)"),
    ("position_ids negative (rope)", lambda: gpt(pos="rope")(ids(1, 3), position_ids=torch.tensor([0, -1, 1])),
     ValueError, "position_ids must be >= 0, got a minimum of -1"),
    ("position_ids negative (learned)", lambda: gpt()(ids(1, 3), position_ids=torch.tensor([0, -1, 1])),
     ValueError, "positions must be >= 0"),
    ("position_ids float", lambda: gpt()(ids(1, 3), position_ids=torch.arange(3.0)), ValueError,
     "position_ids must be an integer tensor"),
    ("position_ids shape", lambda: gpt()(ids(1, 3), position_ids=torch.arange(4)), ValueError,
     "position_ids must be an integer tensor (B=1, T=3) or (T,), got torch.Size([4])"),
    ("attention_mask values 2", lambda: gpt()(ids(1, 3), attention_mask=torch.tensor([[1, 2, 1]])), ValueError,
     "attention_mask must hold only True/False or 1/0"),
    ("attention_mask list", lambda: gpt()(ids(1, 3), attention_mask=[[1, 1, 1]]), TypeError,
     "attention_mask (B, past + T) or (B, T) must be a (B=1, T=3) tensor"),
    ("attention_mask columns", lambda: gpt()(ids(1, 3), attention_mask=torch.ones(1, 4, dtype=torch.bool)), ValueError,
     "has 4 columns, expected 3"),
    ("kv_cache wrong type", lambda: gpt()(ids(1, 3), kv_cache={}), TypeError, "kv_cache must be a KVCache"),
    ("kv_cache wrong heads", lambda: gpt()(ids(1, 3), kv_cache=KVCache(2, 1, 1, 8, 8)), ValueError,
     "the KV cache holds 1 heads of 8 dimensions, this model 4 of 8"),
    ("kv_cache too short", lambda: gpt()(ids(1, 9), kv_cache=KVCache(2, 1, 4, 8, 8)), ValueError, "the KV cache is full"),
    ("past_key_values length", lambda: gpt()(ids(1, 3), past_key_values=pkv(n=1)), ValueError,
     "past_key_values must be a list of 2 (k, v) pairs"),
    ("past_key_values shape", lambda: gpt()(ids(1, 3), past_key_values=pkv(shape=(1, 2, 3, 8))), ValueError,
     "past_key_values[0] k must be (B=1 or 1, n_kv_head=4, P, head_dim=8)"),
    ("past_key_values int", lambda: gpt()(ids(1, 3), past_key_values=pkv(dtype=torch.long)), TypeError,
     "past_key_values[0] k must be a floating-point tensor"),
    ("past_key_values not pairs", lambda: gpt()(ids(1, 3), past_key_values=[1, 2]), ValueError,
     "past_key_values[0] must be a pair (k, v), got int"),
    ("crop_block_size 2.5", lambda: gpt().crop_block_size(2.5), ValueError, "block_size must be an int in [1, 32], got 2.5"),
    ("crop_block_size 64", lambda: gpt().crop_block_size(64), ValueError, "block_size must be an int in [1, 32], got 64"),
    ("hidden_states list", lambda: gpt().hidden_states([[1, 2]]), TypeError, "idx must be a torch.Tensor"),
    ("new_kv_cache batch 0", lambda: gpt().new_kv_cache(0), ValueError, "batch_size must be an int >= 1, got 0"),
    # ---- norms and blocks
    ("RMSNorm(0)", lambda: RMSNorm(0), ValueError, "d must be a positive int"),
    ("LayerNorm eps=0", lambda: LayerNorm(8, eps=0), ValueError, "eps must be a finite number > 0"),
    ("LayerNorm bias='no'", lambda: LayerNorm(8, bias="no"), TypeError, "bias must be True or False"),
    ("make_norm(dict)", lambda: make_norm(BASE), TypeError, "make_norm needs a GPTConfig, got dict"),
    ("RMSNorm wrong width", lambda: RMSNorm(8)(torch.zeros(2, 7)), ValueError, "RMSNorm(8) got x of shape (2, 7)"),
    # ---- generate and its pieces
    ("generate temperature=nan", lambda: generate(gpt(), [1, 2], 3, temperature=float("nan")), ValueError,
     "temperature must be a finite number >= 0"),
    ("generate temperature=inf", lambda: generate(gpt(), [1, 2], 3, temperature=math.inf), ValueError,
     "temperature must be a finite number >= 0"),
    ("generate pad_token_id=99", lambda: generate(gpt(), [[1, 2], [3]], 3, pad_token_id=99), ValueError,
     "pad_token_id must be a token id in [0, vocab_size=61), got 99"),
    ("generate pad_token_id=-1", lambda: generate(gpt(), [[1, 2], [3]], 3, pad_token_id=-1), ValueError,
     "pad_token_id must be a token id"),
    ("generate eos_token_id=1000", lambda: generate(gpt(), [1], 3, eos_token_id=1000), ValueError,
     "eos_token_id must be None or a token id in [0, vocab_size=61)"),
    ("generate top_k=2.0", lambda: generate(gpt(), [1], 3, top_k=2.0), ValueError, "top_k must be a positive int or None"),
    ("generate top_p=nan", lambda: generate(gpt(), [1], 3, top_p=float("nan")), ValueError, "top_p must be in (0, 1]"),
    ("generate repetition_penalty=nan", lambda: generate(gpt(), [1], 3, repetition_penalty=float("nan")), ValueError,
     "repetition_penalty must be a finite number > 0"),
    ("generate max_new_tokens=2.0", lambda: generate(gpt(), [1], 2.0), ValueError, "max_new_tokens must be an int >= 0"),
    ("generate use_cache='yes'", lambda: generate(gpt(), [1], 3, use_cache="yes"), TypeError,
     "use_cache must be True or False"),
    ("generate generator=5", lambda: generate(gpt(), [1], 3, generator=5), TypeError, "generator must be a torch.Generator"),
    ("generate callback=3", lambda: generate(gpt(), [1], 3, callback=3), TypeError, "callback must be callable"),
    ("generate window_keep=0", lambda: generate(gpt(), [1], 3, window_keep=0), ValueError, "window_keep must be an int in"),
    ("generate mask shape", lambda: generate(gpt(), ids(2, 3), 3, attention_mask=torch.ones(2, 4, dtype=torch.bool)),
     ValueError, "attention_mask must be a tensor of the prompt's shape (2, 3)"),
    ("generate float numpy prompt", lambda: generate(gpt(), np.array([1.0, 2.0]), 3), TypeError, "integer token ids"),
    ("generate batch of 0", lambda: generate(gpt(), torch.zeros(0, 3, dtype=torch.long), 3), ValueError,
     "batch of 0 prompts"),
    ("generate prompt with a str", lambda: generate(gpt(), [1, "a"], 3), TypeError, "holding str"),
    ("generate prompt id = vocab", lambda: generate(gpt(), [1, V], 3), ValueError,
     "the prompt's token ids must be in [0, vocab_size=61)"),
    ("generate model=str", lambda: generate("gpt2", [1], 3), TypeError, "model must be a language model"),
    ("generate stop strings, bad tokenizer", lambda: generate(gpt(), [1], 3, stop="x", tokenizer=3), TypeError,
     "tokenizer must have a decode(ids) method"),
    ("top_k_filter k=0", lambda: top_k_filter(F32, 0), ValueError, "top_k must be a positive int, got 0"),
    ("top_p_filter list", lambda: top_p_filter([[0.1, 0.2]], 0.5), TypeError, "logits must be a floating-point tensor"),
    ("top_p_filter p=nan", lambda: top_p_filter(F32, float("nan")), ValueError, "top_p must be in (0, 1]"),
    ("next_token_probs int logits", lambda: next_token_probs(torch.zeros(3, dtype=torch.long)), TypeError,
     "logits must be a floating-point tensor"),
    ("sample_next_token temperature=-1", lambda: sample_next_token(F32, temperature=-1), ValueError,
     "temperature must be a finite number >= 0"),
    ("repetition penalty seen shape", lambda: apply_repetition_penalty(F32, torch.zeros(2, 9, dtype=torch.bool), 1.2),
     ValueError, "seen must be a bool tensor of the logits' shape (2, 10)"),
    ("repetition penalty=0", lambda: apply_repetition_penalty(F32, torch.zeros(2, 10, dtype=torch.bool), 0), ValueError,
     "penalty must be a finite number > 0"),
    ("pad_prompts empty prompt", lambda: pad_prompts([[1], []]), ValueError, "every prompt needs at least one token"),
    ("pad_prompts str", lambda: pad_prompts("abc"), ValueError, "prompts must be a non-empty list of token-id lists"),
    ("pad_prompts float array", lambda: pad_prompts([np.array([1.5])]), TypeError, "prompts[0] must be a 1-D integer array"),
    ("pad_prompts pad=-1", lambda: pad_prompts([[1]], pad_token_id=-1), ValueError, "pad_token_id must be an int >= 0"),
    ("window_start keep=block", lambda: window_start(10, 8, 8), ValueError, "keep must be in [1, block_size - 1]"),
    # ---- attention
    ("sdpa dtypes differ", lambda: scaled_dot_product_attention(qkv()[0], qkv()[1].double(), qkv()[2]), TypeError,
     "q, k and v must have the same dtype"),
    ("sdpa is_causal='yes'", lambda: scaled_dot_product_attention(*qkv(), is_causal="yes"), TypeError,
     "is_causal must be True or False"),
    ("sdpa dropout_p=1", lambda: scaled_dot_product_attention(*qkv(), dropout_p=1.0), ValueError,
     "dropout_p must be a finite number in [0, 1)"),
    ("sdpa scale=0", lambda: scaled_dot_product_attention(*qkv(), scale=0), ValueError, "scale (None = 1/sqrt(d)) must be a finite number > 0"),
    ("sdpa q list", lambda: scaled_dot_product_attention([[1.0]], *qkv()[1:]), TypeError, "q must be a torch.Tensor"),
    ("sdpa int q", lambda: scaled_dot_product_attention(qkv()[0].long(), *qkv()[1:]), TypeError,
     "q must be a floating-point tensor"),
    ("sdpa mask long", lambda: scaled_dot_product_attention(*qkv(), mask=torch.ones(4, 4, dtype=torch.long)), TypeError,
     "mask must be bool"),
    ("flash block_size=2.5", lambda: flash_attention(*qkv(), block_size=2.5), ValueError, "block_size must be an int >= 1, got 2.5"),
    ("attend impl='cuda'", lambda: attend(*qkv(), impl="cuda"), ValueError, "unknown attention impl 'cuda'"),
    ("attend mask shape", lambda: attend(*qkv(), mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, "does not broadcast"),
    ("attend k list", lambda: attend(qkv()[0], [1.0], qkv()[2]), TypeError, "k must be a torch.Tensor"),
    ("causal_mask tq=0", lambda: causal_mask(0, 3), ValueError, "tq must be an int >= 1, got 0"),
    ("causal_mask tq > tk", lambda: causal_mask(4, 3), ValueError, "more queries (4) than keys (3)"),
    ("MHA bias='no'", lambda: MultiHeadAttention(16, 2, bias="no"), TypeError, "bias must be True or False"),
    ("MHA n_head=2.0", lambda: MultiHeadAttention(16, 2.0), ValueError, "n_head must be an int >= 1, got 2.0"),
    ("MHA dropout=1.5", lambda: MultiHeadAttention(16, 2, dropout=1.5), ValueError, "dropout must be a finite number in [0, 1)"),
    ("MHA rope head_dim", lambda: MultiHeadAttention(16, 2, rope=RotaryEmbedding(4)), ValueError, "rope is for heads of 4"),
    ("MHA x list", lambda: MultiHeadAttention(16, 2)([[0.0] * 16]), TypeError, "x must be a torch.Tensor"),
    ("MHA mask shape", lambda: MultiHeadAttention(16, 2)(torch.zeros(1, 3, 16), mask=torch.ones(1, 1, 3, 4, dtype=torch.bool)),
     ValueError, "does not broadcast"),
    # ---- positions
    ("RoPE base=0", lambda: RotaryEmbedding(8, base=0), ValueError, "base must be a finite number > 0"),
    ("RoPE odd head_dim", lambda: RotaryEmbedding(7), ValueError, "even"),
    ("RoPE int start -1", lambda: RotaryEmbedding(8).cos_sin(-1, 4), ValueError, "position_ids (an int start) must be >= 0"),
    ("RoPE negative position", lambda: RotaryEmbedding(8).cos_sin(torch.tensor([0, -1])), ValueError,
     "position_ids must be >= 0"),
    ("RoPE float positions", lambda: RotaryEmbedding(8).cos_sin(torch.tensor([0.0, 1.0])), TypeError,
     "position_ids must hold integers"),
    ("RoPE start without T", lambda: RotaryEmbedding(8).cos_sin(3), ValueError, "give the number of positions T"),
    ("sinusoidal odd d", lambda: sinusoidal_positions(4, 5), ValueError, "needs an even d"),
    ("sinusoidal T=0", lambda: sinusoidal_positions(0, 4), ValueError, "T must be an int >= 1"),
    ("learned positions negative", lambda: LearnedPositionalEmbedding(8, 4)(torch.tensor([-1])), ValueError,
     "positions must be >= 0"),
    ("learned positions max_len=0", lambda: LearnedPositionalEmbedding(0, 4), ValueError, "max_len must be an int >= 1"),
    # ---- KV cache
    ("KVCache n_layer=0", lambda: KVCache(**{**CACHE, "n_layer": 0}), ValueError, "n_layer must be an int >= 1, got 0"),
    ("KVCache dtype long", lambda: KVCache(**CACHE, dtype=torch.long), TypeError, "dtype must be a floating-point torch.dtype"),
    ("KVCache device 'gpu'", lambda: KVCache(**CACHE, device="gpu"), ValueError, "device must be a torch.device"),
    ("KVCache.update layer 5", lambda: KVCache(**CACHE).update(5, torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8)),
     ValueError, "layer_idx must be an int in [0, n_layer=2), got 5"),
    ("KVCache.update list", lambda: KVCache(**CACHE).update(0, [0.0], torch.zeros(1, 4, 1, 8)), TypeError,
     "k and v must be tensors"),
    ("KVCache.update shape", lambda: KVCache(**CACHE).update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8)),
     ValueError, "do not fit the cache"),
    ("KVCache.update full", lambda: KVCache(**CACHE).update(0, torch.zeros(1, 4, 9, 8), torch.zeros(1, 4, 9, 8)),
     ValueError, "the KV cache is full"),
    ("KVCache.update int", lambda: KVCache(**CACHE).update(0, torch.zeros(1, 4, 1, 8, dtype=torch.long),
                                                           torch.zeros(1, 4, 1, 8, dtype=torch.long)),
     TypeError, "k and v must be floating point"),
    ("KVCache.advance -1", lambda: KVCache(**CACHE).advance(-1), ValueError, "n must be an int in [0, max_len - length = 8]"),
    ("KVCache.advance past max_len", lambda: KVCache(**CACHE).advance(9), ValueError, "n must be an int in [0"),
    ("KVCache.trim True", lambda: KVCache(**CACHE).trim(True), ValueError, "keep must be an int in [0, length=0]"),
    ("kv_cache_bytes n_layer=0", lambda: kv_cache_bytes(0, 1, 1, 1), ValueError, "n_layer must be an int >= 1"),
    ("kv_cache_bytes bytes=0", lambda: kv_cache_bytes(1, 1, 1, 1, bytes_per_value=0), ValueError,
     "bytes_per_value must be a finite number > 0"),
    ("kv_cache_bytes tokens=-1", lambda: kv_cache_bytes(1, 1, 1, -1), ValueError, "tokens must be an int >= 0"),
    # ---- params
    ("count_parameters(dict)", lambda: count_parameters(BASE), TypeError, "count_parameters needs a GPTConfig, got dict"),
    ("memory_footprint(-1)", lambda: memory_footprint(-1), ValueError, "n_params must be a finite number >= 0, got -1"),
    ("memory_footprint(nan)", lambda: memory_footprint(float("nan")), ValueError, "n_params must be a finite number >= 0"),
    ("Architecture n_embd % n_head", lambda: arch(n_embd=10), ValueError, "n_embd (10) must be divisible by n_head (3)"),
    ("Architecture tie_weights='no'", lambda: arch(tie_weights="no"), TypeError, "tie_weights must be True or False"),
    ("Architecture top_k > n_expert", lambda: arch(n_expert=2, top_k=3), ValueError, "top_k (3) must be in [1, n_expert=2]"),
    ("Architecture mlp", lambda: arch(mlp="tanh"), ValueError, "Architecture.mlp='tanh' is not one of"),
    ("architecture_parameters(config)", lambda: architecture_parameters(cfg()), TypeError, "needs an Architecture"),
    ("Architecture.from_config(dict)", lambda: Architecture.from_config(BASE), TypeError, "needs a GPTConfig"),
    # ---- encoders
    ("EncoderModel(dict)", lambda: EncoderModel(BASE), TypeError, "EncoderModel needs a GPTConfig"),
    ("EncoderModel targets", lambda: EncoderModel(cfg())(ids(), ids().fill_(V)), ValueError, "targets hold token id 61"),
    ("EncoderModel mask values", lambda: EncoderModel(cfg())(ids(1, 3), attention_mask=torch.tensor([[1, 0, 3]])),
     ValueError, "attention_mask must hold only True/False or 1/0"),
    ("EncoderDecoder src list", lambda: EncoderDecoder(cfg())([[1, 2]], ids()), TypeError, "src must be a torch.Tensor"),
    ("EncoderDecoder batch sizes", lambda: EncoderDecoder(cfg())(ids(2, 3), ids(3, 3)), ValueError, "the same batch size"),
    ("EncoderDecoder start_id", lambda: EncoderDecoder(cfg()).generate(ids(), 3, start_id=99), ValueError,
     "start_id must be a token id in [0, vocab_size=61), got 99"),
    ("EncoderDecoder eos_id", lambda: EncoderDecoder(cfg()).generate(ids(), 3, start_id=0, eos_id=-1), ValueError,
     "eos_id must be None or a token id"),
    ("EncoderDecoder max_new_tokens", lambda: EncoderDecoder(cfg()).generate(ids(), 1.5, start_id=0), ValueError,
     "max_new_tokens must be an int >= 0, got 1.5"),
    ("EncoderDecoder.decode memory", lambda: EncoderDecoder(cfg()).decode(ids(2, 3), torch.zeros(2, 4, 7)), ValueError,
     "memory must be the encoder output (B=2, S, n_embd=32)"),
    # ---- measure
    ("time_fn not callable", lambda: time_fn(3), TypeError, "fn must be callable"),
    ("time_fn repeats=0", lambda: time_fn(lambda: None, repeats=0), ValueError, "repeats must be an int >= 1, got 0"),
    ("time_fn number=1.5", lambda: time_fn(lambda: None, number=1.5), ValueError, "number must be an int >= 1"),
    ("peak_tensor_memory str", lambda: peak_tensor_memory("f"), TypeError, "fn must be callable"),
    ("saved_tensor_bytes None", lambda: saved_tensor_bytes(None), TypeError, "fn must be callable"),
    ("torch_threads(0)", lambda: torch_threads(0).__enter__(), ValueError, "n must be an int >= 1, got 0"),
]


@pytest.mark.parametrize("call, exc, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, exc, phrase):
    with pytest.raises(exc) as info:
        call()
    assert phrase in str(info.value), f"{type(info.value).__name__}: {info.value}"


def test_there_are_at_least_100_bad_inputs_with_distinct_names():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


# ---- nothing changes before validation passes ------------------------------------------------------

def test_a_refused_crop_leaves_the_config_and_the_positions_as_they_were():
    model = gpt()
    before = model.wpe.weight.detach().clone()
    for bad in (2.5, 0, 64, "8", True):
        with pytest.raises(ValueError):
            model.crop_block_size(bad)
    assert model.config.block_size == 32 and torch.equal(model.wpe.weight, before)


def test_a_refused_forward_leaves_the_kv_cache_as_it_was():
    model = gpt(pos="rope")
    cache = model.new_kv_cache(2)
    with torch.no_grad():
        model(ids(2, 4), kv_cache=cache)
        k_before = cache.k.clone()
        bad_calls = [
            lambda: model(ids(2, 1), ids(2, 1).fill_(V), kv_cache=cache),  # bad targets
            lambda: model(torch.tensor([[1], [V]]), kv_cache=cache),  # bad id (caught from the embedding)
            lambda: model(ids(2, 2), kv_cache=cache, attention_mask=torch.tensor([[1, 1], [1, 2]])),  # bad mask
            lambda: model(ids(2, 1), kv_cache=cache, position_ids=torch.tensor([[-1], [0]])),  # negative position
            lambda: model(ids(2, 29), kv_cache=cache),  # does not fit
        ]
        for call in bad_calls:
            with pytest.raises((ValueError, TypeError)):
                call()
            assert cache.length == 4 and cache.pad_mask is None and cache.n_real is None
        assert torch.equal(cache.k, k_before)
        # and the cache still works: the next token equals a full recomputation
        x = ids(2, 5)
        cache.reset()
        model(x[:, :4], kv_cache=cache)
        step, _ = model(x[:, 4:], kv_cache=cache)
        torch.testing.assert_close(step[:, 0], model(x)[0][:, -1], atol=1e-5, rtol=0)


def test_a_refused_generate_leaves_the_model_in_training_mode():
    model = gpt().train()
    with pytest.raises(ValueError):
        generate(model, [[1, 2], [3]], 3, pad_token_id=V)
    assert model.training


def test_generate_accepts_numpy_integer_prompts():
    model = gpt()
    ref = generate(model, [1, 2, 3], 4, temperature=0)
    assert generate(model, [np.int64(1), np.int32(2), np.int16(3)], 4, temperature=0) == ref
    assert generate(model, [np.array([1, 2, 3]), [5]], 4, temperature=0)[0] == ref
    assert generate(model, np.array([1, 2, 3]), 4, temperature=0).tolist() == ref
    assert generate(model, [1, 2, 3], np.int64(4), temperature=0, top_k=np.int64(5)) == ref
