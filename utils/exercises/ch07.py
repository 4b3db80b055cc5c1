"""Exercises of notebook 07 (fine-tuning): LoRA's cost at scale, merging into a fused matrix, and IPO."""

import math

import torch

from utils.exercises import Exercise


def _lora_count_reference(n_layer, n_embd, n_head, n_kv_head, r):
    hd = n_embd // n_head
    return n_layer * (r * n_embd + n_head * hd * r + r * n_embd + n_kv_head * hd * r)


def _test_lora_param_count(fn):
    got = fn(32, 4096, 32, 32, 8)
    assert got == 4_194_304, (f"Llama-2-7B (32 layers, width 4096, 32 heads, 32 key/value heads), LoRA r=8 on q and "
                              f"v: 4,194,304 trainable parameters; got {got!r}")
    for args in [(2, 64, 8, 2, 4), (32, 4096, 32, 8, 16), (4, 192, 4, 4, 8), (3, 96, 6, 1, 2)]:
        expected = _lora_count_reference(*args)
        got = fn(*args)
        if got != expected:
            n_layer, d, n_head, n_kv_head, r = args
            if got == n_layer * 4 * r * d:
                raise AssertionError(f"{args}: with {n_kv_head} key/value heads the v projection's output has "
                                     f"n_kv_head * head_dim = {n_kv_head * d // n_head} rows, not {d}: B_v is smaller")
            raise AssertionError(f"(n_layer, n_embd, n_head, n_kv_head, r) = {args}: expected {expected:,}, got {got!r}")


lora_param_count = Exercise(
    title="LoRA's trainable parameters on q and v of a grouped-query model",
    test=_test_lora_param_count,
    hint=("each adapted matrix W (out x in) gets A (r x in) and B (out x r); count them for W_q and W_v of every "
          "layer"),
    hint2=("W_q maps n_embd -> n_head * head_dim; W_v maps n_embd -> n_kv_head * head_dim (grouped-query "
           "attention); so per layer r*n_embd + n_head*head_dim*r + r*n_embd + n_kv_head*head_dim*r"),
    solution_code='''
def lora_param_count(n_layer, n_embd, n_head, n_kv_head, r):
    head_dim = n_embd // n_head
    q = r * n_embd + n_head * head_dim * r       # A_q (r x in) + B_q (out_q x r)
    v = r * n_embd + n_kv_head * head_dim * r    # A_v + B_v: v has only n_kv_head heads
    return n_layer * (q + v)
''',
    wrong_code='''
def lora_param_count(n_layer, n_embd, n_head, n_kv_head, r):
    return n_layer * 2 * (r * n_embd + n_embd * r)   # as if v were n_embd wide
''',
    answer_name="lora_param_count",
)


def _test_merge_qv(fn):
    g = torch.Generator().manual_seed(0)
    for n_embd, n_head, n_kv_head, r, alpha in [(8, 2, 1, 2, 4.0), (12, 3, 3, 3, 6.0), (16, 4, 2, 1, 1.0)]:
        hd = n_embd // n_head
        q_dim, kv_dim = n_head * hd, n_kv_head * hd
        W = torch.randn(q_dim + 2 * kv_dim, n_embd, generator=g)
        Aq, Bq = torch.randn(r, n_embd, generator=g), torch.randn(q_dim, r, generator=g)
        Av, Bv = torch.randn(r, n_embd, generator=g), torch.randn(kv_dim, r, generator=g)
        expected = W.clone()
        expected[:q_dim] += alpha / r * Bq @ Aq
        expected[q_dim + kv_dim:] += alpha / r * Bv @ Av
        W_in = W.clone()
        got = fn(W_in, Aq, Bq, Av, Bv, alpha, r, n_head, n_kv_head)
        assert isinstance(got, torch.Tensor) and got.shape == W.shape, \
            f"return the merged matrix of shape {tuple(W.shape)}, got {getattr(got, 'shape', type(got).__name__)}"
        if not torch.allclose(got, expected, atol=1e-4):
            k_rows = slice(q_dim, q_dim + kv_dim)
            if not torch.allclose(got[k_rows], W[k_rows], atol=1e-4):
                raise AssertionError("the k rows changed: the v update belongs to the LAST n_kv_head*head_dim rows "
                                     "(q rows, then k rows, then v rows)")
            if torch.allclose(got[:q_dim], W[:q_dim] + Bq @ Aq, atol=1e-4) and alpha != r:
                raise AssertionError("the update is scaled by alpha / r")
            raise AssertionError(f"n_embd={n_embd}, n_head={n_head}, n_kv_head={n_kv_head}, r={r}: merged matrix differs")


merge_qv_into_fused = Exercise(
    title="merge q and v LoRA updates into a fused qkv matrix",
    test=_test_merge_qv,
    hint="the fused matrix stacks rows: q first, then k, then v; each update (alpha/r) B @ A goes on its own rows",
    hint2=("q rows are [0, n_head*hd), k rows the next n_kv_head*hd, v rows the last n_kv_head*hd, with "
           "hd = n_embd // n_head; add (alpha / r) * Bq @ Aq and (alpha / r) * Bv @ Av there"),
    solution_code='''
def merge_qv(W, Aq, Bq, Av, Bv, alpha, r, n_head, n_kv_head):
    hd = W.shape[1] // n_head
    q_dim, kv_dim = n_head * hd, n_kv_head * hd
    merged = W.clone()
    merged[:q_dim] += (alpha / r) * Bq @ Aq
    merged[q_dim + kv_dim:] += (alpha / r) * Bv @ Av
    return merged
''',
    wrong_code='''
def merge_qv(W, Aq, Bq, Av, Bv, alpha, r, n_head, n_kv_head):
    hd = W.shape[1] // n_head
    q_dim, kv_dim = n_head * hd, n_kv_head * hd
    merged = W.clone()
    merged[:q_dim] += (alpha / r) * Bq @ Aq
    merged[q_dim:q_dim + kv_dim] += (alpha / r) * Bv @ Av   # the k rows, not the v rows
    return merged
''',
    answer_name="merge_qv",
)


def _test_ipo(fn):
    cases = [([-3.0, -5.0], [-4.0, -2.0], [-3.5, -4.0], [-3.0, -2.5], 0.5),
             ([-1.0], [-1.0], [-1.0], [-1.0], 0.1), ([-10.0, -2.0, -7.0], [-9.0, -8.0, -1.0], [-9.5, -3.0, -6.0], [-9.0, -7.0, -2.0], 1.0)]
    for pc, pr, rc, rr, tau in cases:
        t = [torch.tensor(v) for v in (pc, pr, rc, rr)]
        h = (t[0] - t[2]) - (t[1] - t[3])
        expected = float(((h - 1 / (2 * tau)) ** 2).mean())
        got = fn(*t, tau)
        got = float(got)
        if not math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-7):
            wrong_ref = float((((t[0] - t[1]) - 1 / (2 * tau)) ** 2).mean())
            if math.isclose(got, wrong_ref, rel_tol=1e-5):
                raise AssertionError("the reference model's log-probabilities are missing: the margin is "
                                     "(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))")
            raise AssertionError(f"tau={tau}: expected {expected:.6f}, got {got:.6f}")


ipo_loss = Exercise(
    title="the IPO loss (a DPO variant)",
    test=_test_ipo,
    hint=("IPO (Azar et al. 2023) keeps DPO's margin h = (log-ratio of the chosen) - (log-ratio of the rejected) "
          "but, instead of -log sigmoid(beta h), regresses h to a fixed target, so it cannot push the margin to infinity"),
    hint2="loss = mean over the batch of (h - 1 / (2 * tau))**2, with h computed exactly as in dpo_loss",
    solution_code='''
def my_ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, tau):
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return ((h - 1 / (2 * tau)) ** 2).mean()
''',
    wrong_code='''
def my_ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, tau):
    h = policy_chosen - policy_rejected          # forgot the reference model
    return ((h - 1 / (2 * tau)) ** 2).mean()
''',
    answer_name="my_ipo_loss",
)
