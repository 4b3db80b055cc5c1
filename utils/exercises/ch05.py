"""Exercises of notebook 05 (Mixture of Experts)."""

from utils.exercises import Exercise


# -- 1. batch-prioritised routing ------------------------------------------------------------------------

def _test_priority_keep(fn):
    import torch

    # 6 tokens, top-1; experts of each token and the router probability of that choice
    expert = torch.tensor([0, 0, 0, 1, 0, 1])
    prob = torch.tensor([0.30, 0.90, 0.50, 0.60, 0.80, 0.70])
    keep = fn(expert, prob, 2, 2)
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and keep.shape == expert.shape, \
        "return a bool tensor shaped like expert_of (one entry per assignment)"
    expected = [False, True, False, True, True, True]
    if keep.tolist() == [True, True, False, True, False, True]:
        raise AssertionError("you kept the first assignments in token order (what MoELayer does); keep each "
                             "expert's most confident assignments instead")
    assert keep.tolist() == expected, f"got {keep.tolist()}, expected {expected}"
    # random cases against a plain loop: every expert keeps min(count, capacity) assignments, the likeliest ones
    g = torch.Generator().manual_seed(0)
    for n_expert, cap in ((4, 3), (3, 1), (5, 10)):
        e = torch.randint(0, n_expert, (40,), generator=g)
        p = torch.rand(40, generator=g)
        k = fn(e, p, n_expert, cap)
        for j in range(n_expert):
            sel = (e == j).nonzero().flatten()
            best = sel[p[sel].argsort(descending=True)[:cap]]
            want = torch.zeros(40, dtype=torch.bool)
            want[best] = True
            assert torch.equal(k & (e == j), want & (e == j)), \
                f"expert {j} with capacity {cap}: kept the wrong assignments (or too many)"


priority_keep = Exercise(
    title="batch-prioritised routing: keep the most confident assignments",
    test=_test_priority_keep,
    hint=("MoELayer keeps each expert's first `capacity` assignments in token order, so late tokens are the ones "
          "dropped. V-MoE's batch-prioritised routing keeps each expert's `capacity` assignments with the highest "
          "router probability: rank the assignments within their expert by probability instead of position"),
    hint2=("sort the assignments by probability (descending), then compute each one's rank within its expert as "
           "utils.moe._position_in_expert does (a stable sort by expert + a running count); keep rank < capacity "
           "and scatter the answer back to the original order"),
    solution_code='''
import torch

def priority_keep(expert_of, prob, n_expert, capacity):
    by_prob = torch.argsort(prob, descending=True)                 # most confident first
    e = expert_of[by_prob]
    order = torch.argsort(e, stable=True)                          # group by expert, keeping that priority
    counts = torch.bincount(e, minlength=n_expert)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(len(e)) - starts[e[order]]
    rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)   # rank within expert, by_prob order
    keep = torch.zeros(len(e), dtype=torch.bool)
    keep[by_prob] = rank < capacity                                # back to the original order
    return keep
''',
    wrong_code='''
import torch

def priority_keep(expert_of, prob, n_expert, capacity):
    keep = torch.zeros(len(expert_of), dtype=torch.bool)
    for j in range(n_expert):
        sel = (expert_of == j).nonzero().flatten()
        keep[sel[:capacity]] = True            # the first ones in token order, not the most confident
    return keep
''',
    answer_name="priority_keep",
)


# -- 2. Shazeer's importance loss -------------------------------------------------------------------------

def _test_importance_loss(fn):
    import torch

    probs = torch.full((10, 4), 0.25, requires_grad=True)
    out = fn(probs)
    assert isinstance(out, torch.Tensor) and out.dim() == 0, "return a scalar tensor"
    assert abs(out.item()) < 1e-10, f"a perfectly balanced router must give 0, got {out.item():.4g}"
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 6, generator=g) * 2
    p = logits.softmax(-1)
    importance = p.sum(0)
    expected = (importance.std() / importance.mean()) ** 2
    got = fn(p)
    if abs(got.item() - ((importance.std(unbiased=False) / importance.mean()) ** 2).item()) < 1e-6 \
            and abs(got.item() - expected.item()) > 1e-6:
        raise AssertionError("use the sample standard deviation (torch.std's default), as Shazeer et al.")
    assert abs(got.item() - expected.item()) < 1e-5 * max(1.0, expected.item()), \
        f"got {got.item():.6f}, expected {expected.item():.6f}"
    p2 = logits.clone().requires_grad_(True)
    fn(p2.softmax(-1)).backward()
    assert p2.grad is not None and p2.grad.abs().sum() > 0, "the loss must be differentiable (no .item(), no argmax)"


importance_loss = Exercise(
    title="the importance loss of Shazeer et al. (2017)",
    test=_test_importance_loss,
    hint=("before the Switch loss, the sparsely-gated MoE paper balanced experts with an 'importance' loss: the "
          "importance of an expert is the sum of its router probabilities over the batch, and the loss is the "
          "squared coefficient of variation of the importances (0 when all experts are equally important)"),
    hint2="importance = probs.sum(0); return (importance.std() / importance.mean()) ** 2",
    solution_code='''
def importance_loss(probs):
    importance = probs.sum(0)              # (n_expert,): total router probability per expert
    return (importance.std() / importance.mean()) ** 2
''',
    wrong_code='''
def importance_loss(probs):
    importance = probs.mean(1)             # averaged over experts instead of summed over tokens
    return (importance.std() / importance.mean()) ** 2
''',
    answer_name="importance_loss",
)


# -- 3. all-to-all traffic of expert parallelism ------------------------------------------------------------

def _test_dispatch_bytes(fn):
    import torch

    # 2 ranks, 4 experts (rank 0: experts 0-1, rank 1: experts 2-3); this is rank 0's routing, top-2
    idx = torch.tensor([[0, 2], [3, 1], [2, 3], [1, 0]])
    got = fn(idx, rank=0, world_size=2, n_expert=4, n_embd=8, bytes_per_value=2)
    assert isinstance(got, int), f"return an int (bytes), got {type(got).__name__}"
    # 4 of the 8 assignments go to experts 2-3 (rank 1): 4 rows of 8 bf16 values, there and back
    expected = 4 * 8 * 2 * 2
    if got == expected // 2:
        raise AssertionError("count both directions: the rows go to the expert's rank and the results come back")
    if got == 8 * 8 * 2 * 2:
        raise AssertionError("rows for this rank's own experts never leave the process: do not count them")
    assert got == expected, f"got {got} bytes, expected {expected}"
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 8, (30, 2), generator=g)
    for rank in range(4):
        remote = int(((idx // 2) != rank).sum())
        assert fn(idx, rank=rank, world_size=4, n_expert=8, n_embd=16, bytes_per_value=4) == remote * 16 * 4 * 2, \
            f"wrong count for rank {rank} of 4 (experts are split in contiguous blocks of n_expert / world_size)"


dispatch_bytes = Exercise(
    title="bytes a rank sends in expert parallelism",
    test=_test_dispatch_bytes,
    hint=("with experts split in contiguous blocks over the ranks, every assignment whose expert lives on another "
          "rank sends one row of n_embd values there (dispatch) and receives one row back (combine)"),
    hint2=("owner = expert_index // (n_expert // world_size); remote = (owner != rank).sum(); "
           "bytes = remote * n_embd * bytes_per_value * 2"),
    solution_code='''
def dispatch_bytes(expert_index, rank, world_size, n_expert, n_embd, bytes_per_value):
    owner = expert_index // (n_expert // world_size)     # the rank that holds each chosen expert
    remote = int((owner != rank).sum())                  # assignments that leave this process
    return remote * n_embd * bytes_per_value * 2         # there (dispatch) and back (combine)
''',
    wrong_code='''
def dispatch_bytes(expert_index, rank, world_size, n_expert, n_embd, bytes_per_value):
    owner = expert_index % world_size                    # experts dealt round-robin: not how they are placed
    remote = int((owner != rank).sum())
    return remote * n_embd * bytes_per_value * 2
''',
    answer_name="dispatch_bytes",
)
