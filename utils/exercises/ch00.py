"""Exercises of notebook 00 (welcome).

``count_speeches`` is the worked example of the notebook's "how exercises work" cell; the
exercises at the end of the notebook extend what the notebook shows.
"""

from utils.exercises import Exercise


def _corpus():
    from utils.data import load_corpus

    return load_corpus()


def _test_count_speeches(fn):
    corpus = _corpus()
    got = fn(corpus, "HAMLET")
    expected = sum(p.speaker == "HAMLET" for p in corpus.passages)
    assert isinstance(got, int), f"return an int, got {type(got).__name__}"
    assert got == expected, f"got {got} speeches by HAMLET; look at every passage's .speaker field"
    assert fn(corpus, "NOBODY AT ALL") == 0, "a speaker who never speaks should give 0"


count_speeches = Exercise(
    title="count the speeches of one speaker",
    test=_test_count_speeches,
    hint="a speech is one passage; each passage knows who speaks it",
    hint2="loop over corpus.passages and count those whose .speaker equals the name",
    solution_code='''
def count_speeches(corpus, speaker):
    return sum(p.speaker == speaker for p in corpus.passages)
''',
    wrong_code='''
def count_speeches(corpus, speaker):
    return sum(speaker in p.text for p in corpus.passages)   # counts mentions, not speeches
''',
    answer_name="count_speeches",
)


def _test_genre_share(fn):
    corpus = _corpus()
    for split in ("train", "val"):
        got = fn(corpus, split)
        assert isinstance(got, dict), f"return a dict genre -> fraction, got {type(got).__name__}"
        total = sum(len(p.text) for p in corpus.passages if p.split == split)
        expected = {}
        for p in corpus.passages:
            if p.split == split:
                expected[p.genre] = expected.get(p.genre, 0) + len(p.text) / total
        assert set(got) == set(expected), (f"{split}: got genres {sorted(got)}, expected {sorted(expected)}: "
                                           "list only the genres that occur in that split")
        assert abs(sum(got.values()) - 1) < 1e-9, (f"{split}: your fractions sum to {sum(got.values()):.3f}; "
                                                   "divide by the characters of the split, not of the corpus")
        for g, v in expected.items():
            assert abs(got[g] - v) < 1e-9, f"{split}: got {got[g]:.4f} for {g}, expected {v:.4f}"


genre_share = Exercise(
    title="the genre mix of a split",
    test=_test_genre_share,
    hint="a held-out split is only a few plays, so its genre mix can differ a lot from the training split's; "
         "measure each genre's share of the split's own text",
    hint2="sum len(p.text) per p.genre over the passages with p.split == split, then divide every sum by the "
          "split's total characters",
    solution_code='''
from collections import Counter

def genre_share(corpus, split):
    chars = Counter()
    for p in corpus.passages:
        if p.split == split:
            chars[p.genre] += len(p.text)
    total = sum(chars.values())
    return {genre: n / total for genre, n in chars.items()}
''',
    wrong_code='''
from collections import Counter

def genre_share(corpus, split):
    chars = Counter()
    for p in corpus.passages:
        if p.split == split:
            chars[p.genre] += len(p.text)
    return {genre: n / len(corpus.text()) for genre, n in chars.items()}   # share of the whole corpus
''',
    answer_name="genre_share",
)


def _test_most_talkative(fn):
    from collections import Counter

    corpus = _corpus()
    for play in ("hamlet", "othello", "twelfth-night"):
        lines = Counter()
        for p in corpus.filter(play=play):
            lines[p.speaker] += p.text.count("\n") - 1
        expected = lines.most_common(1)[0][0]
        got = fn(corpus, play)
        assert got == expected, f"{play}: got {got!r}; count lines (not speeches) per speaker in that play"


most_talkative = Exercise(
    title="the speaker with most lines in a play",
    test=_test_most_talkative,
    hint="a long speech has many lines; count lines, not passages, and the first line of a passage is the name",
    hint2="for each passage of the play, its lines are p.text.count('\\n') - 1; sum them per p.speaker",
    solution_code='''
from collections import Counter

def most_talkative(corpus, play):
    lines = Counter()
    for p in corpus.filter(play=play):
        lines[p.speaker] += p.text.count("\\n") - 1
    return lines.most_common(1)[0][0]
''',
    wrong_code='''
from collections import Counter

def most_talkative(corpus, play):
    return Counter(p.speaker for p in corpus.filter(play=play)).most_common(1)[0][0]   # counts speeches
''',
    answer_name="most_talkative",
)


def _test_unseen_speakers(fn):
    corpus = _corpus()
    train = {p.speaker for p in corpus.passages if p.split == "train"}
    held = {p.speaker for p in corpus.passages if p.split in ("val", "test")}
    expected = held - train
    got = fn(corpus)
    assert isinstance(got, set), f"return a set of speaker names, got {type(got).__name__}"
    assert got <= held, "every name you return must speak in a validation or test play"
    missing, extra = expected - got, got - expected
    assert not extra, (f"{len(extra)} of your names also speak in a training play (e.g. {sorted(extra)[:3]}): "
                       "remove every name the training plays contain")
    assert not missing, f"{len(missing)} names are missing, e.g. {sorted(missing)[:3]}"


unseen_speakers = Exercise(
    title="speakers a model never meets in training",
    test=_test_unseen_speakers,
    hint="splitting by play means whole casts are held out; compare the set of names in the held-out plays "
         "with the set in the training plays",
    hint2="set of p.speaker over val and test passages, minus the set over train passages",
    solution_code='''
def unseen_speakers(corpus):
    train = {p.speaker for p in corpus.passages if p.split == "train"}
    held = {p.speaker for p in corpus.passages if p.split in ("val", "test")}
    return held - train
''',
    wrong_code='''
def unseen_speakers(corpus):
    return {p.speaker for p in corpus.passages if p.split in ("val", "test")}   # forgot to remove training names
''',
    answer_name="unseen_speakers",
)
