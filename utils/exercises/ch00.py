"""Exercises of notebook 00 (welcome)."""

from utils.exercises import Exercise


def _test_count_speeches(fn):
    from utils.data import load_corpus

    corpus = load_corpus()
    got = fn(corpus, "HAMLET")
    expected = sum(p.speaker == "HAMLET" for p in corpus.passages)
    assert isinstance(got, int), f"return an int, got {type(got).__name__}"
    assert got == expected, f"got {got} speeches by HAMLET; look at every passage's .speaker field"
    assert fn(corpus, "NOBODY AT ALL") == 0, "a speaker who never speaks should give 0"


count_speeches = Exercise(
    title="count the speeches of one speaker",
    test=_test_count_speeches,
    hint="loop over corpus.passages and count those whose .speaker equals the name",
    solution_code='''
def count_speeches(corpus, speaker):
    return sum(p.speaker == speaker for p in corpus.passages)
''',
    answer_name="count_speeches",
)


def _test_split_fraction(fn):
    from utils.data import load_corpus

    corpus = load_corpus()
    got = fn(corpus, "val")
    total = len(corpus.text())
    expected = len(corpus.text("val")) / total
    assert isinstance(got, float), f"return a float, got {type(got).__name__}"
    assert abs(got - expected) < 1e-9, f"got {got:.4f}; divide the split's characters by the whole corpus's"


split_fraction = Exercise(
    title="fraction of the corpus in a split",
    test=_test_split_fraction,
    hint="len(corpus.text(split)) / len(corpus.text())",
    solution_code='''
def split_fraction(corpus, split):
    return len(corpus.text(split)) / len(corpus.text())
''',
    answer_name="split_fraction",
)


def _test_most_talkative(fn):
    from collections import Counter

    from utils.data import load_corpus

    corpus = load_corpus()
    lines = Counter()
    for p in corpus.filter(play="hamlet"):
        lines[p.speaker] += p.text.count("\n") - 1
    expected = lines.most_common(1)[0][0]
    got = fn(corpus, "hamlet")
    assert got == expected, f"got {got!r}; count lines (not speeches) per speaker in that play"


most_talkative = Exercise(
    title="the speaker with most lines in a play",
    test=_test_most_talkative,
    hint="for each passage of the play, its lines are p.text.count('\\n') - 1 (the first line is the name)",
    solution_code='''
from collections import Counter

def most_talkative(corpus, play):
    lines = Counter()
    for p in corpus.filter(play=play):
        lines[p.speaker] += p.text.count("\\n") - 1
    return lines.most_common(1)[0][0]
''',
    answer_name="most_talkative",
)
