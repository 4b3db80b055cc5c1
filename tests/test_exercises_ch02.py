"""The checks of notebook 02's exercises catch the typical mistakes and say what is wrong."""

import math

import torch

from utils.exercises import ch02


def _message(exercise, answer):
    ok, message = exercise.passes(answer)
    assert not ok
    return message


def test_causal_mask_check_names_an_inverted_a_transposed_and_a_diagonal_free_mask():
    tril = lambda T: torch.ones(T, T).tril().bool()  # noqa: E731
    assert "inverted" in _message(ch02.causal_mask, lambda T: ~tril(T))
    assert "transposed" in _message(ch02.causal_mask, lambda T: tril(T).T)
    assert "itself" in _message(ch02.causal_mask, lambda T: torch.ones(T, T).tril(-1).bool())
    assert "dtype" in _message(ch02.causal_mask, lambda T: torch.ones(T, T).tril())


def test_attention_check_names_a_missing_scale_and_a_mask_applied_after_the_softmax():
    def unscaled(q, k, v, mask=None):
        scores = q @ k.T
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v

    def mask_after_softmax(q, k, v, mask=None):
        w = (q @ k.T / math.sqrt(q.shape[-1])).softmax(-1)
        if mask is not None:
            w = w * mask
        return w @ v

    assert "scale" in _message(ch02.attention_one_head, unscaled)
    assert "BEFORE the softmax" in _message(ch02.attention_one_head, mask_after_softmax)


def test_kv_cache_check_names_forgetting_v_and_caching_every_query_head():
    def only_k(config, seq_len, batch_size=1, bytes_per_value=2):
        kv = config.n_head if config.n_kv_head is None else config.n_kv_head
        return config.n_layer * kv * (config.n_embd // config.n_head) * seq_len * batch_size * bytes_per_value

    def ignores_gqa(config, seq_len, batch_size=1, bytes_per_value=2):
        return 2 * config.n_layer * config.n_embd * seq_len * batch_size * bytes_per_value

    assert "K AND V" in _message(ch02.kv_cache_bytes, only_k)
    assert "KV heads are cached" in _message(ch02.kv_cache_bytes, ignores_gqa)
    assert "int" in _message(ch02.kv_cache_bytes, lambda *a, **k: float(ch02._kv_cache_bytes(*a, **k)))


def test_padding_mask_check_names_right_padding_and_a_missing_causal_part():
    def right_padded(lengths, T):
        causal = torch.ones(T, T).tril().bool()
        return causal[None, None] & (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]

    def not_causal(lengths, T):
        real = torch.arange(T)[None, :] >= T - lengths[:, None]
        return real[:, None, None, :].expand(len(lengths), 1, T, T)

    assert "LEFT padding" in _message(ch02.causal_padding_mask, right_padded)
    assert "causal" in _message(ch02.causal_padding_mask, not_causal)
