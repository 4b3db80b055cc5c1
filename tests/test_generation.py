"""Decoding (utils/generation.py): the KV cache equals recomputation, filters keep their promises."""

import pytest
import torch

from utils.generation import (apply_repetition_penalty, generate, next_token_probs, pad_prompts,
                              sample_next_token, top_k_filter, top_p_filter, window_start)
from utils.model import GPT, GPTConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(pos="rope", block_size=16, seed=0, **kw):
    """A small random GPT with large weights, so that its greedy outputs vary (not one repeated token)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, block_size=block_size, n_layer=2, n_head=2, n_embd=32, pos=pos,
                    tie_weights=False, **kw)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


# --------------------------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_generation_is_identical_with_and_without_the_kv_cache(pos):
    model = _model(pos)
    prompt = [1, 2, 3]
    cached = generate(model, prompt, 12, temperature=0, use_cache=True)
    recomputed = generate(model, prompt, 12, temperature=0, use_cache=False)
    assert cached == recomputed
    assert len(cached) == 15 and len(set(cached[3:])) > 3  # a real sequence, not one repeated token


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_past_the_context_the_cached_sliding_window_equals_recomputation(pos):
    model = _model(pos, block_size=16)
    prompt = [5, 7, 11, 13]
    for keep in (8, 15):
        cached = generate(model, prompt, 45, temperature=0, window_keep=keep)
        recomputed = generate(model, prompt, 45, temperature=0, use_cache=False, window_keep=keep)
        assert len(cached) == 49 and cached == recomputed


def test_the_window_always_holds_between_keep_plus_one_and_block_size_tokens():
    assert [window_start(n, 8, 4) for n in (1, 8, 9, 12, 13, 16, 17)] == [0, 0, 4, 4, 8, 8, 12]
    for n in range(9, 100):
        s = window_start(n, 8, 5)
        assert 5 < n - s <= 8


def test_sampling_with_a_seeded_generator_is_repeatable_and_equal_with_the_cache():
    model = _model("rope")
    kw = dict(temperature=1.0, top_k=10)
    a = generate(model, [1, 2], 20, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, [1, 2], 20, generator=torch.Generator().manual_seed(3), **kw)
    c = generate(model, [1, 2], 20, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert a == b == c


# --------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_generation_of_different_lengths_equals_one_by_one(pos, use_cache):
    model = _model(pos)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    batched = generate(model, prompts, 6, temperature=0, use_cache=use_cache)
    single = [generate(model, p, 6, temperature=0, use_cache=use_cache) for p in prompts]
    assert batched == single
    assert [len(r) for r in batched] == [9, 13, 7]


def test_tensor_input_with_a_left_padding_mask_matches_the_list_form():
    model = _model("rope")
    prompts = [[3, 4], [5, 6, 7, 8]]
    ids, mask = pad_prompts(prompts, pad_token_id=0)
    assert ids.tolist() == [[0, 0, 3, 4], [5, 6, 7, 8]] and mask.tolist()[0] == [False, False, True, True]
    out = generate(model, ids, 5, temperature=0, attention_mask=mask)
    assert out.shape == (2, 9)
    lists = generate(model, prompts, 5, temperature=0)
    assert out[0, 2:].tolist() == lists[0] and out[1].tolist() == lists[1]


# --------------------------------------------------------------------------------------------- filters


def test_top_k_never_samples_outside_the_k_most_likely():
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    allowed = torch.topk(logits, 5).indices
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        tok = sample_next_token(logits, temperature=1.5, top_k=5, generator=gen)
        assert all(int(t) in allowed[i].tolist() for i, t in enumerate(tok))
    filtered = top_k_filter(logits, 5)
    assert (filtered > float("-inf")).sum(1).tolist() == [5, 5, 5, 5]


def test_top_p_never_samples_outside_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    kept = (top_p_filter(logits, 0.75) > float("-inf"))[0].tolist()
    assert kept == [True, True, False, False, False]  # 0.5 + 0.3 >= 0.75; nothing more is needed
    assert (top_p_filter(logits, 0.79) > float("-inf"))[0].tolist() == [True, True, False, False, False]
    assert (top_p_filter(logits, 0.81) > float("-inf"))[0].tolist() == [True, True, True, False, False]
    assert (top_p_filter(logits, 0.01) > float("-inf"))[0].tolist() == [True, False, False, False, False]
    torch.manual_seed(1)
    logits = torch.randn(3, 60) * 3
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(logits, -1)
    for _ in range(300):
        tok = sample_next_token(logits, temperature=1.0, top_p=0.6, generator=gen)
        for row, t in enumerate(tok.tolist()):
            mass_before = probs[row][probs[row] > probs[row, t]].sum()  # tokens strictly more likely
            assert mass_before < 0.6


def test_generated_tokens_respect_top_k_under_the_model_itself():
    model = _model("rope")
    out = generate(model, [1, 2, 3], 10, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(torch.tensor([out[:-1]]))
    for i in range(3, len(out)):
        assert out[i] in torch.topk(logits[0, i - 1], 3).indices.tolist()


def test_temperature_zero_is_greedy_and_probabilities_sum_to_one():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    assert sample_next_token(logits, temperature=0).tolist() == [1, 2]
    assert next_token_probs(logits[0], temperature=0).tolist() == [0.0, 1.0, 0.0]
    p = next_token_probs(logits, temperature=0.7, top_k=2)
    assert torch.allclose(p.sum(-1), torch.ones(2)) and p[0, 0] == 0
    hot, cold = next_token_probs(logits[0], 2.0), next_token_probs(logits[0], 0.5)
    assert hot.max() < cold.max()  # higher temperature flattens the distribution


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 3.0, 0.5]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_a_repetition_penalty_reduces_repeats_in_greedy_output():
    model = _model("rope", seed=2)
    plain = generate(model, [1, 2, 3], 14, temperature=0)[3:]
    penalised = generate(model, [1, 2, 3], 14, temperature=0, repetition_penalty=1e4)[3:]
    assert len(set(penalised)) > len(set(plain))
    assert len(set(penalised)) == len(penalised)  # a huge penalty forbids every repeat here


# --------------------------------------------------------------------------------------------- stops


def test_eos_and_stop_sequences_end_generation_early():
    model = _model("rope")
    free = generate(model, [1, 2, 3], 12, temperature=0)
    eos = free[6]
    first = free.index(eos, 3)
    assert generate(model, [1, 2, 3], 12, temperature=0, eos_token_id=eos) == free[:first + 1]
    seq = free[7:9]
    out = generate(model, [1, 2, 3], 12, temperature=0, stop=seq)
    assert out == free[:9] or out[-2:] == seq and len(out) < 9
    tensor_out = generate(model, torch.tensor([[1, 2, 3]]), 12, temperature=0, eos_token_id=eos)
    assert tensor_out.shape == (1, first + 1)


def test_batched_rows_stop_independently():
    model = _model("rope")
    prompts = [[1, 2, 3], [9, 8]]
    free = generate(model, prompts, 8, temperature=0)
    eos = free[0][4]
    out = generate(model, prompts, 8, temperature=0, eos_token_id=eos)
    lengths = []
    for row, full, prompt in zip(out, free, prompts):
        gen = full[len(prompt):]
        expected = len(prompt) + gen.index(eos) + 1 if eos in gen else len(full)
        assert row == full[:expected]
        lengths.append(len(row))
    assert lengths[0] == 5  # the first row stopped at its eos; the other row went on independently


def test_stop_strings_use_the_tokenizer():
    class Chars:  # a stand-in tokenizer: token id i is the character chr(97 + i % 26)
        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    model = _model("rope")
    free = generate(model, [1, 2, 3], 12, temperature=0)
    target = Chars().decode(free[6:8])
    out = generate(model, [1, 2, 3], 12, temperature=0, stop=target, tokenizer=Chars())
    assert Chars().decode(out[3:]).endswith(target) and len(out) <= 8
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, [1, 2, 3], 5, stop="ab")


# --------------------------------------------------------------------------------------------- errors


def test_bad_arguments_raise_clear_errors():
    model = _model("rope", block_size=16)
    with pytest.raises(ValueError, match="context"):
        generate(model, list(range(17)), 1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], -1)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match="top_p"):
            generate(model, [1], 3, top_p=bad)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, [1], 3, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], 3, temperature=-1)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="token ids"):
        generate(model, [1, 99], 3)
    with pytest.raises(TypeError):
        generate(model, "hello", 3)
    assert generate(model, [4, 5], 0) == [4, 5]


@pytest.mark.parametrize("use_cache", [True, False])
def test_repetition_penalty_in_a_left_padded_batch_ignores_the_padding(use_cache):
    model = _model("rope", block_size=32)
    short, long = [5, 9], [3, 8, 1, 7, 2, 6]
    alone_plain = generate(model, short, 6, temperature=0)
    # pad with the token the short prompt would generate first: counting the padding as "seen"
    # would penalise exactly that token and change the short row's output
    pad = alone_plain[len(short)]
    alone = [generate(model, p, 6, temperature=0, repetition_penalty=3.0, use_cache=use_cache) for p in (short, long)]
    batched = generate(model, [short, long], 6, temperature=0, repetition_penalty=3.0, pad_token_id=pad,
                       use_cache=use_cache)
    assert batched == alone
    assert alone[0] != generate(model, short, 6, temperature=0)  # the penalty does change this output
