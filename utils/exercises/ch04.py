"""Exercises of notebook 04 (pretraining and generation)."""

import math

from utils.exercises import Exercise


def _test_bits_per_character(fn):
    got = fn(2.0, 1000, 3000)
    expected = 2.0 * 1000 / 3000 / math.log(2)
    assert isinstance(got, float), f"return a float, got {type(got).__name__}"
    assert abs(got - expected) < 1e-9, (f"got {got:.4f} for loss 2.0 nats/token, 1000 tokens, 3000 characters; "
                                        f"expected {expected:.4f}: total nats / characters / ln 2")
    assert abs(fn(math.log(2), 10, 10) - 1.0) < 1e-9, "ln 2 nats per token, one token per character is 1 bit/char"


bits_per_character = Exercise(
    title="bits per character from a loss",
    test=_test_bits_per_character,
    hint="a loss in nats per token is an average; turn it back into a total, spread it over characters, "
         "and change the logarithm's base from e to 2",
    hint2="total nats = loss * n_tokens; divide by n_characters for nats/char; divide by ln 2 for bits",
    wrong_code='''
import math

def bits_per_character(loss_nats_per_token, n_tokens, n_characters):
    return loss_nats_per_token / math.log(2)   # bits per TOKEN: forgets that a token spans several characters
''',
    solution_code='''
import math

def bits_per_character(loss_nats_per_token, n_tokens, n_characters):
    return loss_nats_per_token * n_tokens / n_characters / math.log(2)
''',
    answer_name="bits_per_character",
)


def _test_min_p(fn):
    import torch

    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04], [0.02, 0.9, 0.05, 0.02, 0.01]])
    logits = probs.log() + torch.tensor([[1.0], [-3.0]])  # logits, not probabilities: a shift changes nothing
    for min_p, expected in ((0.1, [[True, True, True, True, False], [False, True, False, False, False]]),
                            (0.5, [[True, True, False, False, False], [False, True, False, False, False]]),
                            (0.0, [[True] * 5, [True] * 5])):
        out = fn(logits.clone(), min_p)
        assert isinstance(out, torch.Tensor) and out.shape == logits.shape, "return a tensor shaped like the logits"
        kept = (out > float("-inf")).tolist()
        if kept != expected:
            absolute = (torch.softmax(logits, -1) >= min_p).tolist()
            if kept == absolute:
                raise AssertionError(f"min_p={min_p}: you compared each probability with min_p itself; min-p "
                                     "scales the threshold by the row's top probability (min_p * p_max)")
            raise AssertionError(f"min_p={min_p}: kept {kept}, expected {expected}")
        assert torch.equal(out[kept_mask := out > float("-inf")], logits[kept_mask]), "kept logits must be unchanged"


min_p_filter = Exercise(
    title="min-p filtering",
    test=_test_min_p,
    hint=("top-p keeps a fixed probability mass; min-p (Nguyen et al. 2024) keeps every token that is at least "
          "a fraction min_p as likely as the most likely token, so the cut adapts to how confident the model is"),
    hint2=("probs = softmax(logits); threshold = min_p * probs.max(-1, keepdim=True); "
           "logits.masked_fill(probs < threshold, -inf)"),
    solution_code='''
import torch

def min_p_filter(logits, min_p):
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))
''',
    wrong_code='''
import torch

def min_p_filter(logits, min_p):
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p, float("-inf"))   # not scaled by the top probability
''',
    answer_name="min_p_filter",
)


def _test_top_p(fn):
    import torch

    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04], [0.04, 0.06, 0.1, 0.3, 0.5]])
    logits = probs.log()
    for p, expected in ((0.7, 2), (0.85, 3), (0.3, 1), (1.0, 5)):
        out = fn(logits.clone(), p)
        assert isinstance(out, torch.Tensor) and out.shape == logits.shape, "return a tensor shaped like the logits"
        kept = (out > float("-inf")).sum(-1).tolist()
        assert kept == [expected, expected], (
            f"with p={p} you kept {kept} tokens per row, expected {expected}: the smallest set of most "
            "likely tokens whose probabilities add up to at least p")
    out = fn(logits.clone(), 0.7)
    assert (out[1] > float("-inf")).tolist() == [False, False, False, True, True], \
        "sort each row by probability: the nucleus of row 2 is its LAST two tokens"


top_p_filter = Exercise(
    title="nucleus (top-p) filtering",
    test=_test_top_p,
    hint="keep the most likely tokens, in order of probability, until together they hold at least p of the "
         "probability mass; the token that crosses p is kept too",
    hint2="sort descending, cumulative sum of softmax; drop a token when the mass BEFORE it is already >= p; "
          "scatter the mask back to the original order",
    wrong_code='''
import torch

def top_p_filter(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    remove_sorted = probs.cumsum(dim=-1) > p                 # drops the token that crosses p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
''',
    solution_code='''
import torch

def top_p_filter(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs
    remove_sorted = before >= p
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
''',
    answer_name="top_p_filter",
)


def _wsd(step, lr, min_lr, warmup_steps, total_steps, decay_steps):
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return lr
    return lr - (lr - min_lr) * (step - decay_start) / decay_steps


def _test_wsd_schedule(fn):
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100, decay_steps=20)
    for step in (0, 4, 9, 10, 30, 79, 80, 85, 99, 100, 150):
        got = fn(step, **kw)
        want = _wsd(step, **kw)
        assert isinstance(got, float), f"return a float learning rate, got {type(got).__name__} at step {step}"
        if abs(got - want) > 1e-12:
            phase = ("warmup" if step < 10 else "the stable phase" if step < 80 else
                     "the decay" if step < 100 else "after total_steps")
            raise AssertionError(f"at step {step} ({phase}) you give {got:.4e}, expected {want:.4e}")


wsd_schedule = Exercise(
    title="warmup-stable-decay learning-rate schedule",
    test=_test_wsd_schedule,
    hint=("the cosine schedule of this notebook commits to a length in advance; warmup-stable-decay keeps the "
          "peak rate for most of training and decays only over the last decay_steps, so a run can be extended "
          "and decayed later"),
    hint2=("warmup exactly as lr_schedule (lr*(step+1)/(warmup+1)); lr until total_steps - decay_steps; then a "
           "straight line down to min_lr at total_steps; min_lr afterwards"),
    solution_code='''
def wsd_schedule(step, lr, min_lr, warmup_steps, total_steps, decay_steps):
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return float(min_lr)
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return float(lr)
    return lr - (lr - min_lr) * (step - decay_start) / decay_steps
''',
    wrong_code='''
def wsd_schedule(step, lr, min_lr, warmup_steps, total_steps, decay_steps):
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return float(min_lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)   # decays from the end of warmup on
    return lr - (lr - min_lr) * progress
''',
    answer_name="wsd_schedule",
)
