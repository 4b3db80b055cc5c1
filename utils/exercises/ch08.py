"""Exercises of notebook 08 (evaluation)."""

import math

from utils.exercises import Exercise


def _test_mer(fn):
    import jiwer

    cases = [("to be or not to be", "to be or to bee and"), ("yes", "yes yes indeed my lord yes"),
             ("the cat sat", "the cat sat"), ("a b c d", "x")]
    for ref, hyp in cases:
        got = fn(ref, hyp)
        assert isinstance(got, float), f"return a float, got {type(got).__name__}"
        expected = jiwer.mer(ref, hyp)
        assert abs(got - expected) < 1e-9, (f"MER({ref!r}, {hyp!r}): got {got:.4f}, expected {expected:.4f} "
                                            "(errors / (hits + substitutions + deletions + insertions))")
        assert got <= 1.0, "MER can never exceed 1: insertions are in the denominator too"
    refs, hyps = ["a b c", "d e"], ["a x c y", "d"]
    got, expected = fn(refs, hyps), jiwer.mer(refs, hyps)
    assert abs(got - expected) < 1e-9, (f"on lists, got {got:.4f}, expected {expected:.4f}: sum the counts over "
                                        "the sentences first, then divide (not the mean of sentence MERs)")


mer = Exercise(
    title="match error rate",
    test=_test_mer,
    hint="MER divides the same errors as WER by the number of ALIGNED positions, which includes the insertions",
    hint2="c = M.error_counts(reference, hypothesis); errors = c.substitutions + c.deletions + c.insertions; "
          "return errors / (c.hits + errors)",
    solution_code='''
from utils import metrics as M

def mer(reference, hypothesis):
    c = M.error_counts(reference, hypothesis)
    errors = c.substitutions + c.deletions + c.insertions
    return errors / (c.hits + c.substitutions + c.deletions + c.insertions)
''',
    wrong_code='''
from utils import metrics as M

def mer(reference, hypothesis):
    c = M.error_counts(reference, hypothesis)
    errors = c.substitutions + c.deletions + c.insertions
    return errors / (c.hits + c.substitutions + c.deletions)   # that is WER: the insertions are missing below
''',
    answer_name="mer",
)


def _wilson_reference(k, n, z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _test_wilson(fn):
    for k, n in ((0, 10), (3, 10), (50, 100), (10, 10), (1, 400)):
        got = fn(k, n)
        assert isinstance(got, tuple) and len(got) == 2, "return a tuple (low, high)"
        lo, hi = _wilson_reference(k, n, 1.96)
        assert abs(got[0] - lo) < 1e-9 and abs(got[1] - hi) < 1e-9, (
            f"for {k}/{n} expected ({lo:.4f}, {hi:.4f}), got ({got[0]:.4f}, {got[1]:.4f})")
    assert fn(0, 10)[1] > 0.2, "0 successes out of 10 does not prove the rate is 0: the upper bound stays well above 0"
    lo, hi = fn(30, 100, z=2.576)
    rlo, rhi = _wilson_reference(30, 100, 2.576)
    assert abs(lo - rlo) < 1e-9 and abs(hi - rhi) < 1e-9, "use the z you are given (2.576 is a 99% interval)"


wilson_interval = Exercise(
    title="Wilson score interval",
    test=_test_wilson,
    hint="the Wilson interval solves |p - p_hat| = z * sqrt(p (1 - p) / n) for p: its centre is pulled towards 1/2",
    hint2="centre = (p + z^2/(2n)) / (1 + z^2/n); half-width = z * sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n), p = k/n",
    solution_code='''
import math

def wilson(k, n, z=1.96):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
''',
    wrong_code='''
import math

def wilson(k, n, z=1.96):
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n)       # the Wald interval: width 0 at k = 0
    return p - half, p + half
''',
    answer_name="wilson",
)


def _fleiss_reference(counts):
    n_items = len(counts)
    n_raters = sum(counts[0])
    n_cat = len(counts[0])
    p_j = [sum(row[j] for row in counts) / (n_items * n_raters) for j in range(n_cat)]
    P_i = [(sum(c * c for c in row) - n_raters) / (n_raters * (n_raters - 1)) for row in counts]
    P_bar = sum(P_i) / n_items
    P_e = sum(p * p for p in p_j)
    return (P_bar - P_e) / (1 - P_e)


# Fleiss (1971) / Wikipedia's worked example: 10 items, 14 raters, 5 categories -> kappa = 0.210
_WIKI = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
         [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def _test_fleiss(fn):
    got = fn(_WIKI)
    assert isinstance(got, float), f"return a float, got {type(got).__name__}"
    assert abs(got - 0.20993070442195522) < 1e-9, (f"on Fleiss's worked example (10 items, 14 raters) got {got:.4f}, "
                                                   "expected 0.2099")
    perfect = [[3, 0], [0, 3], [3, 0]]
    assert abs(fn(perfect) - 1.0) < 1e-9, "when every rater agrees on every item kappa is 1"
    other = [[1, 1, 0], [0, 2, 0], [2, 0, 0], [0, 1, 1]]
    assert abs(fn(other) - _fleiss_reference(other)) < 1e-9, "check with 2 raters and 3 categories too"


fleiss_kappa = Exercise(
    title="Fleiss' kappa",
    test=_test_fleiss,
    hint="observed agreement of an item = the share of rater PAIRS that agree on it; chance = the sum over "
         "categories of (overall share of that category)^2",
    hint2="P_i = (sum_j counts[i][j]^2 - r) / (r (r - 1)) with r raters; P_bar = mean of P_i; "
          "p_j = column total / (items * r); P_e = sum p_j^2; kappa = (P_bar - P_e) / (1 - P_e)",
    solution_code='''
def fleiss_kappa(counts):
    n_items, r = len(counts), sum(counts[0])
    p_j = [sum(row[j] for row in counts) / (n_items * r) for j in range(len(counts[0]))]
    P_i = [(sum(c * c for c in row) - r) / (r * (r - 1)) for row in counts]
    P_bar = sum(P_i) / n_items
    P_e = sum(p * p for p in p_j)
    return (P_bar - P_e) / (1 - P_e)
''',
    wrong_code='''
def fleiss_kappa(counts):
    n_items, r = len(counts), sum(counts[0])
    p_j = [sum(row[j] for row in counts) / (n_items * r) for j in range(len(counts[0]))]
    P_i = [sum(c * c for c in row) / (r * r) for row in counts]   # counts each rater agreeing with itself
    P_bar = sum(P_i) / n_items
    P_e = sum(p * p for p in p_j)
    return (P_bar - P_e) / (1 - P_e)
''',
    answer_name="fleiss_kappa",
)
