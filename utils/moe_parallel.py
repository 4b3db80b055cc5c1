"""Expert parallelism: one :class:`utils.moe.MoELayer` with its experts spread over N processes.

Every process (rank) holds the router (replicated) and ``n_expert / world_size`` of the experts, and
feeds its own tokens (data parallelism for everything but the experts). One forward:

1. route the local tokens (same router everywhere) and sort the token-expert assignments by expert:
   experts live on ranks in contiguous blocks, so the sorted list is already grouped by destination;
2. ``all_to_all`` #1 of the counts (how many rows each rank will receive for each of its experts);
3. ``all_to_all`` #2 of the token vectors (dispatch): every rank receives the rows for its experts;
4. each local expert runs once on its rows;
5. ``all_to_all`` #3 sends the results back (combine), and each rank mixes them with its routing weights.

Backward runs the same exchanges in reverse (:class:`AllToAll` is an autograd function). Communication
per step is counted in :attr:`ExpertParallelMoE.last_bytes`. Uses ``torch.distributed`` with "gloo" on
CPU (or "nccl" on GPUs). No capacity limit here (every assignment is computed), so the output equals
the single-process layer's on the same tokens (tested with 2 processes).

Run it on 2 local processes (a notebook cell can call :func:`run_expert_parallel`)::

    python -m utils.moe_parallel --world-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.moe import MoEConfig, MoELayer, balance_loss, z_loss

__all__ = ["AllToAll", "ExpertParallelMoE", "run_expert_parallel"]


class AllToAll(torch.autograd.Function):
    """``dist.all_to_all_single`` with a backward: rows ``x[sum(in_splits[:r]) : ...]`` go to rank r;
    the gradient travels back the same way with the split sizes swapped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None) -> torch.Tensor:
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.new_empty((sum(ctx.in_splits), *grad.shape[1:]))
        dist.all_to_all_single(g, grad.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return g, None, None, None


class ExpertParallelMoE(nn.Module):
    """The experts of ``layer`` split over the ranks of ``group``: ``forward(x (B, T, C)) -> (y, stats)``.

    ``layer`` is a full :class:`MoELayer` (same weights on every rank, e.g. built with the same seed);
    this rank keeps experts ``[rank * E / W, (rank + 1) * E / W)`` and the router. Token-choice routers
    without a capacity limit only. ``last_bytes``: bytes this rank sent in the last forward, as
    ``{"dispatch": ..., "combine": ..., "counts": ..., "to_other_ranks": ...}`` (rows for its own
    experts do not leave the process; the backward sends the same amounts again).
    """

    def __init__(self, layer: MoELayer, group=None):
        super().__init__()
        if not isinstance(layer, MoELayer):
            raise TypeError(f"layer must be a utils.moe.MoELayer, got {type(layer).__name__}")
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call dist.init_process_group('gloo', ...) "
                               "first (see run_expert_parallel)")
        cfg = layer.config
        if cfg.router == "expert_choice" or cfg.capacity_factor is not None or cfg.n_shared_expert or cfg.hybrid:
            raise ValueError("ExpertParallelMoE supports token-choice routers without capacity limit, shared "
                             f"experts or hybrid (got router={cfg.router!r}, capacity_factor={cfg.capacity_factor}, "
                             f"n_shared_expert={cfg.n_shared_expert}, hybrid={cfg.hybrid})")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if cfg.n_expert % self.world:
            raise ValueError(f"n_expert ({cfg.n_expert}) must be divisible by the number of processes ({self.world})")
        self.config = cfg
        self.n_local = cfg.n_expert // self.world
        self.first = self.rank * self.n_local
        self.router = layer.router
        sl = slice(self.first, self.first + self.n_local)
        self.w_in = nn.Parameter(layer.experts.w_in.detach()[sl].clone())
        self.w_out = nn.Parameter(layer.experts.w_out.detach()[sl].clone())
        self._experts = layer.experts  # for its activation (the local weights are passed explicitly)
        self.last_bytes: dict[str, int] = {}

    def _local_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        return F.linear(self._experts._act(F.linear(x, self.w_in[e])), self.w_out[e])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.n_embd:
            raise ValueError(f"x must be (B, T, C={cfg.n_embd}), got {tuple(x.shape)}")
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        n, E, k, W, L = flat.shape[0], cfg.n_expert, cfg.top_k, self.world, self.n_local
        routing = self.router(flat)
        expert_of = routing.index.reshape(-1)
        token_of = torch.arange(n, device=x.device).repeat_interleave(k)
        order = torch.argsort(expert_of, stable=True)
        tok, w = token_of[order], routing.weight.reshape(-1)[order] * cfg.routed_scaling_factor
        per_expert = torch.bincount(expert_of, minlength=E)  # rows this rank sends to each expert
        # 1. counts: recv[r, j] = rows rank r sends to my local expert j
        recv = torch.empty(W * L, dtype=per_expert.dtype, device=x.device)
        dist.all_to_all_single(recv, per_expert.contiguous(), group=self.group)
        recv = recv.view(W, L)
        send_splits = per_expert.view(W, L).sum(1).tolist()
        recv_splits = recv.sum(1).tolist()
        # 2. dispatch
        rows = AllToAll.apply(flat.index_select(0, tok), recv_splits, send_splits, self.group)
        # 3. local experts: received rows are grouped by source rank, then by expert; regroup by expert
        local_e = torch.repeat_interleave(torch.arange(L, device=x.device).repeat(W), recv.reshape(-1))
        by_e = torch.argsort(local_e, stable=True)
        counts = recv.sum(0).tolist()
        chunks = torch.split(rows.index_select(0, by_e), counts)
        outs = torch.cat([self._local_expert(j, c) if cnt else c for j, (cnt, c) in enumerate(zip(counts, chunks))])
        outs = torch.empty_like(outs).index_copy(0, by_e, outs) if len(outs) else outs
        # 4. combine: results travel back to the ranks their tokens came from
        back = AllToAll.apply(outs, send_splits, recv_splits, self.group)
        y = torch.zeros_like(flat).index_add_(0, tok, back * w[:, None].to(back.dtype))
        row_bytes = C * flat.element_size()
        own = send_splits[self.rank]
        self.last_bytes = {"dispatch": sum(send_splits) * row_bytes, "combine": sum(recv_splits) * row_bytes,
                           "counts": E * per_expert.element_size(),
                           "to_other_ranks": (sum(send_splits) - own + sum(recv_splits) - recv_splits[self.rank])
                           * row_bytes}
        bal, zl = balance_loss(routing.probs, routing.mask), z_loss(routing.logits)
        stats = {"aux_loss": cfg.aux_loss_coef * bal + cfg.z_loss_coef * zl, "balance_loss": bal, "z_loss": zl,
                 "tokens_per_expert": routing.mask.sum(0), "rows_received": int(sum(recv_splits))}
        return y.view(B, T, C), stats


# ---------------------------------------------------------------------------------------------
# Running it on local processes
# ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_kw: dict, batch: tuple[int, int], seed: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(seed)  # the same full layer on every rank
        layer = MoELayer(MoEConfig(**cfg_kw))
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.3)
        ep = ExpertParallelMoE(layer)
        g = torch.Generator().manual_seed(seed + 1 + rank)  # each rank its own tokens
        x = torch.randn(*batch, cfg_kw["n_embd"], generator=g)
        x_ep = x.clone().requires_grad_(True)
        y_ep, _ = ep(x_ep)
        y_ep_value = y_ep.detach()
        y_ep.square().sum().backward()
        x_ref = x.clone().requires_grad_(True)
        y_ref, _ = layer(x_ref)  # the single-process layer, all experts, on the same tokens
        y_ref.square().sum().backward()
        sl = slice(ep.first, ep.first + ep.n_local)
        result = {"rank": rank, "tokens": x.shape[0] * x.shape[1],
                  "max_abs_diff_output": float((y_ep_value - y_ref.detach()).abs().max()),
                  "max_abs_diff_input_grad": float((x_ep.grad - x_ref.grad).abs().max()),
                  "local_experts": list(range(ep.first, ep.first + ep.n_local)),
                  "bytes": ep.last_bytes}
        # an expert's gradient comes from every rank's tokens: compare with the sum over ranks of the
        # single-process layer's gradients (relative: the sums run in a different order)
        full_grad = layer.experts.w_in.grad.clone()
        dist.all_reduce(full_grad)
        ref = full_grad[sl]
        result["max_rel_diff_expert_grad"] = float((ep.w_in.grad - ref).abs().max() / ref.abs().max())
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def run_expert_parallel(world_size: int = 2, n_embd: int = 64, n_expert: int = 8, top_k: int = 2,
                        expert_hidden: int = 96, batch: tuple[int, int] = (4, 32), seed: int = 0,
                        routed_scaling_factor: float = 1.0) -> list[dict]:
    """Spawn ``world_size`` local processes (gloo), run one forward + backward of the expert-parallel
    layer and of the single-process layer on each rank's tokens, and return one dict per rank: the
    largest differences of outputs and input gradients, the relative difference of the expert gradients (summed over ranks), and the bytes sent."""
    import torch.multiprocessing as mp

    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    cfg_kw = dict(n_embd=n_embd, n_expert=n_expert, top_k=top_k, expert_hidden=expert_hidden,
                  routed_scaling_factor=routed_scaling_factor)
    MoEConfig(**cfg_kw)  # validate before spawning
    if n_expert % world_size:
        raise ValueError(f"n_expert ({n_expert}) must be divisible by world_size ({world_size})")
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), cfg_kw, tuple(batch), seed, out_dir), nprocs=world_size,
                 join=True)
        results = []
        for r in range(world_size):
            with open(os.path.join(out_dir, f"rank{r}.json")) as f:
                results.append(json.load(f))
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m utils.moe_parallel", description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args(argv)
    results = run_expert_parallel(args.world_size, n_embd=args.width, n_expert=args.experts)
    for r in results:
        print(json.dumps(r))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
