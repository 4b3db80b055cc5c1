"""The checks of notebook 02's exercises catch the typical mistakes and say what is wrong."""

import math

import torch

from utils.exercises import ch02


def _message(exercise, answer):
    ok, message = exercise.passes(answer)
    assert not ok
    return message


def test_sink_window_check_names_leaky_sinks_a_missing_sink_and_an_off_by_one_window():
    def grid(T):
        return torch.arange(T)[:, None], torch.arange(T)[None, :]

    def leaky(T, w, n):
        i, j = grid(T)
        return (j > i - w) | (j < n)

    def no_sinks(T, w, n):
        i, j = grid(T)
        return (j <= i) & (j > i - w)

    def one_too_many(T, w, n):
        i, j = grid(T)
        return (j <= i) & ((j >= i - w) | (j < n))

    assert "causal" in _message(ch02.sink_window_mask, leaky)
    assert "plain sliding window" in _message(ch02.sink_window_mask, no_sinks)
    assert "keys" in _message(ch02.sink_window_mask, one_too_many)


def test_softmax_merge_check_names_a_missing_rescale_and_an_overflow():
    def no_rescale(m1, l1, a1, m2, l2, a2):
        return torch.maximum(m1, m2), l1 + l2, a1 + a2

    def raw_exp(m1, l1, a1, m2, l2, a2):  # undoes the max subtraction: overflows on large scores
        m = torch.maximum(m1, m2)
        return m, l1 * torch.exp(m1) + l2 * torch.exp(m2), a1 * torch.exp(m1)[:, None] + a2 * torch.exp(m2)[:, None]

    assert "rescale" in _message(ch02.merge_softmax_blocks, no_rescale)
    message = _message(ch02.merge_softmax_blocks, raw_exp)
    assert "l is wrong" in message or "inf/NaN" in message


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
