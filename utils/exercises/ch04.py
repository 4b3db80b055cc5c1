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
    hint="total nats = loss * n_tokens; divide by n_characters for nats/char; divide by ln 2 for bits",
    solution_code='''
import math

def bits_per_character(loss_nats_per_token, n_tokens, n_characters):
    return loss_nats_per_token * n_tokens / n_characters / math.log(2)
''',
    answer_name="bits_per_character",
)


def _test_top_k(fn):
    import torch

    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [0.0, -1.0, 2.0, 1.0, -2.0]])
    out = fn(logits.clone(), 2)
    assert isinstance(out, torch.Tensor) and out.shape == logits.shape, "return a tensor shaped like the logits"
    kept = (out > float("-inf")).tolist()
    assert kept == [[False, True, False, False, True], [False, False, True, True, False]], (
        f"kept {kept}; keep the 2 largest logits of EACH row and set the others to -inf")
    assert torch.equal(out[0, 1], logits[0, 1]), "the kept logits must be unchanged"
    assert torch.equal(fn(logits.clone(), 5), logits), "k = vocabulary size keeps everything"


top_k_filter = Exercise(
    title="top-k filtering",
    test=_test_top_k,
    hint="torch.topk(logits, k).values[..., -1:] is each row's k-th largest value; "
         "logits.masked_fill(logits < kth, float('-inf'))",
    solution_code='''
import torch

def top_k_filter(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))
''',
    answer_name="top_k_filter",
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
    hint="sort descending, cumulative sum of softmax; drop a token when the mass BEFORE it is already >= p; "
         "scatter the mask back to the original order",
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


def _test_lr_schedule(fn):
    from utils.training import lr_schedule

    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100)
    for step in (0, 4, 9, 10, 30, 55, 99, 100, 150):
        got = fn(step, **kw)
        want = lr_schedule(step, **kw)
        assert got is not None and abs(got - want) < 1e-12, (
            f"at step {step} you give {got}, expected {want:.3e} (warmup: lr*(step+1)/(warmup+1); then "
            "min_lr + 0.5*(1+cos(pi*progress))*(lr-min_lr); min_lr after total_steps)")


lr_schedule = Exercise(
    title="warmup + cosine learning-rate schedule",
    test=_test_lr_schedule,
    hint="three cases: step < warmup_steps, step >= total_steps, and the cosine in between with "
         "progress = (step - warmup_steps) / (total_steps - warmup_steps)",
    solution_code='''
import math

def lr_schedule(step, lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
''',
    answer_name="lr_schedule",
)
