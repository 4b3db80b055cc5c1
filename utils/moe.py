"""Mixture-of-Experts feed-forward layers: a router picks a few expert MLPs for every token.

- :class:`MoEConfig` — the layer's hyper-parameters, validated on creation (``moe_config(gpt_config)``
  builds one from the MoE fields of :class:`utils.model.GPTConfig`).
- :class:`TopKRouter` — router logits (computed in fp32) and the routing decision: ``"topk"``
  (Mixtral, Switch), ``"noisy_topk"`` (Shazeer et al. 2017: learned Gaussian noise before the top-k,
  training only) or ``"expert_choice"`` (Zhou et al. 2022: every expert picks its top tokens).
- :class:`Experts` — ``n_expert`` MLPs stored as two stacked weight tensors (Hugging Face Mixtral's
  layout), run by one of four dispatch designs: ``"sort"`` (tokens sorted by expert, one matmul pair
  per expert on a contiguous slice, all experts in one autograd node), ``"grouped_mm"`` (the same sorted
  rows through PyTorch's ``F.grouped_mm``, where this PyTorch has it), ``"bmm"`` (capacity-padded slots,
  one batched matmul for all experts) and ``"loop"`` (the loop over experts with boolean masks that most
  tutorials write). The default, ``"auto"``, picks one per forward (:func:`resolve_dispatch`):
  ``"grouped_mm"`` where it was measured fastest (a PyTorch that has it, aligned widths, on a CPU or in
  bf16 on a Hopper or later GPU), else ``"sort"``.
- :class:`MoELayer` — ``forward(x (B, T, C)) -> (y (B, T, C), stats)``: router + experts, optional
  capacity limit (assignments over capacity are dropped: their token passes through the block's
  residual unchanged, and they are counted), optional always-on shared experts (DeepSeek-MoE) and an
  optional hybrid dense MLP mixed in with learned per-token coefficients (DeepSpeed's residual MoE).

``stats["aux_loss"]`` is ``aux_loss_coef * balance_loss + z_loss_coef * z_loss``, already weighted:
:class:`utils.model.GPT` adds it to the training loss. ``balance_loss`` is the Switch Transformer
load-balancing loss ``N * sum_i f_i * P_i`` with ``f_i`` the fraction of the ``tokens x top_k``
assignments routed to expert ``i`` and ``P_i`` the mean router probability of expert ``i``: 1 for a
perfectly balanced router, ``N`` when one expert takes everything. Hugging Face's
``load_balancing_loss_func`` counts assignments per token instead (its ``f`` sums to ``top_k``), so for
one layer it equals ``top_k * balance_loss``; over several layers it pools the counts and
probabilities of all layers before multiplying (tested in ``tests/test_moe_mixtral.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ROUTERS", "DISPATCHES", "resolve_dispatch", "MoEConfig", "moe_config", "check_moe_fields", "gpt_from_hf_mixtral", "TopKRouter", "Routing", "Experts", "MoELayer",
           "capacity", "balance_loss", "z_loss", "moe_parameter_counts"]

ROUTERS = ("topk", "noisy_topk", "expert_choice")
DISPATCHES = ("auto", "sort", "bmm", "loop", "grouped_mm")
EXPERT_ACTIVATIONS = ("swiglu", "gelu", "relu")


def _check_grouped_mm() -> None:
    if not hasattr(F, "grouped_mm"):
        raise RuntimeError(f"dispatch 'grouped_mm' needs torch.nn.functional.grouped_mm, which this PyTorch "
                           f"({torch.__version__}) does not have: use dispatch 'sort' (same numbers) or a newer PyTorch")


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass
class MoEConfig:
    """Hyper-parameters of one :class:`MoELayer`.

    n_embd: model width C. n_expert: routed experts E. top_k: experts per token (token-choice
    routers) or the average number of experts per token (``expert_choice``: each expert takes
    ``capacity_factor * tokens * top_k / n_expert`` tokens). expert_hidden: inner width of each expert.
    mlp: expert activation ("swiglu" | "gelu" | "relu"). capacity_factor: None = no limit (every
    assignment is computed); else each expert takes at most ``ceil(capacity_factor * tokens * top_k /
    n_expert)`` assignments per forward, in token order. router: "topk" | "noisy_topk" |
    "expert_choice". aux_loss_coef / z_loss_coef: weights of the load-balancing loss and the router
    z-loss in ``stats["aux_loss"]``. n_shared_expert: always-on experts (DeepSeek-MoE), run as one MLP of
    width ``n_shared_expert * expert_hidden``. hybrid: a dense MLP of width ``dense_hidden`` beside the
    experts, ``out = moe(x) * c0 + mlp(x) * c1`` with ``c = softmax(Linear(x))`` per token (DeepSpeed).
    routed_scaling_factor: multiplies the routed experts' weighted sum (DeepSeek-V2/V3's name; 1.0 =
    Mixtral). With top-k weights that sum to 1 over experts of width H/k, the routed output starts at
    about 1/k of a dense MLP of width H; a factor of k restores the dense scale.
    No Linear layer of the experts has a bias (as in Mixtral). dropout: on the layer's output.
    dispatch: "auto" | "sort" | "bmm" | "loop" | "grouped_mm" (same numbers, different speed; see
    ``benchmarks/moe.py``; "grouped_mm" needs ``torch.nn.functional.grouped_mm``; "auto", the default,
    chooses per forward with :func:`resolve_dispatch`).
    """

    n_embd: int
    n_expert: int = 8
    top_k: int = 2
    expert_hidden: int = 256
    mlp: str = "swiglu"
    capacity_factor: float | None = None
    router: str = "topk"
    aux_loss_coef: float = 1e-2
    z_loss_coef: float = 1e-3
    n_shared_expert: int = 0
    hybrid: bool = False
    dense_hidden: int | None = None
    routed_scaling_factor: float = 1.0
    dropout: float = 0.0
    dispatch: str = "auto"

    def __post_init__(self) -> None:
        _positive_int("n_embd", self.n_embd)
        _positive_int("n_expert", self.n_expert)
        _positive_int("top_k", self.top_k)
        _positive_int("expert_hidden", self.expert_hidden)
        _positive_int("n_shared_expert", self.n_shared_expert, minimum=0)
        if self.top_k > self.n_expert:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_expert ({self.n_expert}): a token cannot go to "
                             "more experts than there are")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {self.dispatch!r}")
        if self.dispatch == "grouped_mm":
            _check_grouped_mm()
        if self.mlp not in EXPERT_ACTIVATIONS:
            raise ValueError(f"mlp must be one of {EXPERT_ACTIVATIONS}, got {self.mlp!r}")
        cf = self.capacity_factor
        if cf is not None and (isinstance(cf, bool) or not isinstance(cf, (int, float)) or not cf > 0
                               or not math.isfinite(cf)):
            raise ValueError(f"capacity_factor must be a number > 0 (1.0 = exactly the balanced share) or None "
                             f"(no limit), got {cf!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        r = self.routed_scaling_factor
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < math.inf:
            raise ValueError(f"routed_scaling_factor must be a finite number > 0 (1.0 = Mixtral, top_k = the dense "
                             f"MLP's scale), got {r!r}")
        for name in ("hybrid",):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.dense_hidden is not None:
            _positive_int("dense_hidden", self.dense_hidden)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def moe_config(config, dispatch: str = "auto") -> MoEConfig:
    """The :class:`MoEConfig` of the MoE layers of a :class:`utils.model.GPTConfig` (its ``n_expert``,
    ``top_k``, ``expert_hidden``, ``capacity_factor``, ``router``, ``aux_loss_coef``, ``z_loss_coef``,
    ``n_shared_expert``, ``moe_hybrid`` and ``routed_scaling_factor`` fields)."""
    n_expert = getattr(config, "n_expert", 0)
    if not n_expert:
        raise ValueError("this GPTConfig has no experts (n_expert = 0): set n_expert >= 1 for an MoE model")
    return MoEConfig(n_embd=config.n_embd, n_expert=n_expert, top_k=config.top_k,
                     expert_hidden=config.expert_hidden or config.resolved_ffn_hidden, mlp=config.mlp,
                     capacity_factor=config.capacity_factor, router=config.router,
                     aux_loss_coef=config.aux_loss_coef, z_loss_coef=config.z_loss_coef,
                     n_shared_expert=config.n_shared_expert, hybrid=config.moe_hybrid,
                     dense_hidden=config.resolved_ffn_hidden,
                     routed_scaling_factor=getattr(config, "routed_scaling_factor", 1.0),
                     dropout=config.dropout, dispatch=dispatch)


def check_moe_fields(config) -> None:
    """Validate the Mixture-of-Experts fields of a :class:`utils.model.GPTConfig` (its ``validate``
    calls this): ``n_expert`` 0 (dense) or >= 1, ``moe_layers`` distinct layer indices or None, and the
    rest as :class:`MoEConfig` checks them. A list ``moe_layers`` is stored as a tuple."""
    n = config.n_expert
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"GPTConfig.n_expert must be an int >= 0 (0 = dense MLPs), got {n!r}")
    layers = config.moe_layers
    if n == 0:
        if layers is not None or config.n_shared_expert or config.moe_hybrid or config.routed_scaling_factor != 1.0:
            raise ValueError("GPTConfig.moe_layers, n_shared_expert, moe_hybrid and routed_scaling_factor need experts: "
                             f"set n_expert >= 1 (got n_expert=0, moe_layers={layers!r}, n_shared_expert="
                             f"{config.n_shared_expert!r}, moe_hybrid={config.moe_hybrid!r}, routed_scaling_factor="
                             f"{config.routed_scaling_factor!r})")
        return
    if layers is not None:
        if not isinstance(layers, (list, tuple)) or not layers or any(
                not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < config.n_layer for i in layers) \
                or len(set(layers)) != len(layers):
            raise ValueError(f"GPTConfig.moe_layers must be None (every layer) or a non-empty list of distinct layer "
                             f"indices in [0, n_layer={config.n_layer}), got {layers!r}")
        config.moe_layers = tuple(layers)
    if config.expert_hidden is not None:
        _positive_int("GPTConfig.expert_hidden", config.expert_hidden)
    moe_config(config)  # the remaining fields, checked by MoEConfig


# ---------------------------------------------------------------------------------------------
# Losses and capacity
# ---------------------------------------------------------------------------------------------

def capacity(n_tokens: int, n_expert: int, top_k: int, capacity_factor: float | None) -> int | None:
    """Slots per expert: ``ceil(capacity_factor * n_tokens * top_k / n_expert)`` (None = no limit)."""
    if capacity_factor is None:
        return None
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_expert))


def balance_loss(probs: torch.Tensor, expert_mask: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``N * sum_i f_i * P_i``.

    probs (tokens, N): router probabilities (softmax over all experts). expert_mask (tokens, N) bool or
    0/1: which experts each token was routed to. ``f_i`` = share of all assignments that went to expert
    ``i`` (no gradient: it comes from an argmax), ``P_i`` = mean probability of expert ``i`` (the
    gradient path to the router). Minimum 1 when both are uniform; N when one expert gets everything.
    """
    if probs.dim() != 2 or expert_mask.shape != probs.shape:
        raise ValueError(f"probs and expert_mask must both be (tokens, n_expert), got {tuple(probs.shape)} and "
                         f"{tuple(expert_mask.shape)}")
    counts = expert_mask.float().sum(0)
    f = counts / counts.sum().clamp(min=1)
    P = probs.float().mean(0)
    return probs.shape[1] * (f * P).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss (ST-MoE, Zoph et al. 2022): mean over tokens of ``logsumexp(logits)^2``; keeps the
    router logits small so that the softmax stays in a range where fp32/bf16 round-off does not bite."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# Router
# ---------------------------------------------------------------------------------------------

@dataclass
class Routing:
    """A routing decision for ``n`` tokens and ``E`` experts.

    logits, probs (n, E): router logits (fp32) and their softmax. For token-choice routers:
    ``index`` (n, k) the chosen experts (best first) and ``weight`` (n, k) their mixing weights
    (the top-k probabilities renormalised to sum to 1 when k > 1, as Mixtral; the raw probability
    when k = 1, as Switch, so that the router still gets a gradient from the language-model loss).
    For ``expert_choice``: ``index`` (E, c) the tokens each expert chose and ``weight`` (E, c) their
    probabilities. ``mask`` (n, E) bool: token t was routed to expert e (before any capacity drop).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor
    mask: torch.Tensor
    expert_choice: bool = False


class TopKRouter(nn.Module):
    """Linear router ``x (n, C) -> logits (n, E)`` and the choice of experts (see :class:`Routing`).

    The logits are computed in fp32 even under autocast (Switch Transformer's "selective precision":
    a bf16 softmax over router logits changes which expert wins). ``noisy_topk`` adds
    ``N(0, 1) * softplus(x W_noise)`` to the logits before the top-k while training (Shazeer et al. 2017).
    ``expert_choice`` lets every expert take its ``capacity`` highest-probability tokens of the batch:
    perfectly balanced by construction, but a token's route depends on the other tokens of the batch,
    later ones included, so it is not causal (fine for training, a leak for autoregressive decoding).
    """

    def __init__(self, n_embd: int, n_expert: int, top_k: int = 2, kind: str = "topk"):
        super().__init__()
        _positive_int("n_embd", n_embd)
        _positive_int("n_expert", n_expert)
        _positive_int("top_k", top_k)
        if top_k > n_expert:
            raise ValueError(f"top_k ({top_k}) must be <= n_expert ({n_expert})")
        if kind not in ROUTERS:
            raise ValueError(f"router kind must be one of {ROUTERS}, got {kind!r}")
        self.n_expert, self.top_k, self.kind = n_expert, top_k, kind
        self.weight = nn.Parameter(torch.empty(n_expert, n_embd))
        self.noise = nn.Linear(n_embd, n_expert, bias=False) if kind == "noisy_topk" else None
        nn.init.normal_(self.weight, std=0.02)
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)

    def forward(self, x: torch.Tensor, expert_capacity: int | None = None) -> Routing:
        """x (n, C) -> :class:`Routing`. ``expert_capacity``: tokens per expert for ``expert_choice``
        (default ``n * top_k / n_expert``, rounded up)."""
        if x.dim() != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"x must be (tokens, {self.weight.shape[1]}), got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
            if self.noise is not None and self.training:
                logits = logits + torch.randn_like(logits) * F.softplus(F.linear(x.float(), self.noise.weight.float()))
        probs = logits.softmax(-1)
        n = x.shape[0]
        if self.kind == "expert_choice":
            c = expert_capacity or math.ceil(n * self.top_k / self.n_expert)
            c = min(c, n)
            weight, index = probs.t().topk(c, dim=-1)  # (E, c): each expert's favourite tokens
            mask = torch.zeros(n, self.n_expert, dtype=torch.bool, device=x.device)
            mask[index, torch.arange(self.n_expert, device=x.device)[:, None]] = True
            return Routing(logits, probs, index, weight, mask, expert_choice=True)
        top_p, index = probs.topk(self.top_k, dim=-1)
        weight = top_p / top_p.sum(-1, keepdim=True) if self.top_k > 1 else top_p
        mask = torch.zeros(n, self.n_expert, dtype=torch.bool, device=x.device).scatter_(1, index, True)
        return Routing(logits, probs, index, weight, mask)


# ---------------------------------------------------------------------------------------------
# Experts and the four dispatch designs
# ---------------------------------------------------------------------------------------------

class Experts(nn.Module):
    """``n_expert`` position-wise MLPs, stored stacked: ``w_in`` (E, 2H or H, C) and ``w_out`` (E, C, H),
    each slice laid out as an ``nn.Linear`` weight (for SwiGLU, rows ``[:H]`` of ``w_in[e]`` are the
    gate and ``[H:]`` the up projection: Hugging Face Mixtral's ``gate_up_proj``)."""

    def __init__(self, n_expert: int, n_embd: int, hidden: int, mlp: str = "swiglu", n_layer: int = 1):
        super().__init__()
        if mlp not in EXPERT_ACTIVATIONS:
            raise ValueError(f"mlp must be one of {EXPERT_ACTIVATIONS}, got {mlp!r}")
        _positive_int("n_layer", n_layer)
        self.kind = mlp
        rows = 2 * hidden if mlp == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.empty(n_expert, rows, n_embd))
        self.w_out = nn.Parameter(torch.empty(n_expert, n_embd, hidden))
        self.reset_parameters(n_layer)

    def reset_parameters(self, n_layer: int = 1) -> None:
        """GPT-2 initialisation: N(0, 0.02), and 0.02 / sqrt(2 * n_layer) for the output projections."""
        nn.init.normal_(self.w_in, std=0.02)
        nn.init.normal_(self.w_out, std=0.02 / math.sqrt(2 * n_layer))

    @property
    def n_expert(self) -> int:
        return self.w_in.shape[0]

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.gelu(h, approximate="tanh") if self.kind == "gelu" else F.relu(h)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` alone on x (..., C) -> (..., C)."""
        return F.linear(self._act(F.linear(x, self.w_in[e])), self.w_out[e])

    def per_expert_weights(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The experts' weights as views ``(w_in[0], ...), (w_out[0], ...)``, taken with ``unbind``: its
        backward stacks the per-expert gradients once, where indexing ``w_in[e]`` for each expert would
        build a full-size zero gradient per expert (E^2 work: 90% of the step at 32 experts)."""
        return self.w_in.unbind(0), self.w_out.unbind(0)

    def run_sorted(self, xs: torch.Tensor, counts: list[int], row_multiple: int | None = None) -> torch.Tensor:
        """xs (m, C) sorted by expert, ``counts[e]`` rows for expert e -> (m, C): one matmul pair per
        expert on its contiguous slice, as one autograd node (:class:`_SortedExpertsFn`): every matmul
        writes into one preallocated buffer, the activation runs once over all rows, and the backward
        writes each expert's weight gradient straight into its slice of the stacked gradient, so no
        per-expert concatenation, split or stack is left (``benchmarks/moe.py`` times both versions).
        ``row_multiple``: pad each expert's slice with zero rows to a multiple of this (same numbers);
        None = :data:`CPU_LOW_PRECISION_ROW_MULTIPLE` for bf16/fp16 on a CPU (autocast included), else 1.
        Where a second derivative may be needed (``create_graph``) use :meth:`run_sorted_autograd`."""
        if any(c < 0 for c in counts) or sum(counts) != xs.shape[0] or len(counts) != self.n_expert:
            raise ValueError(f"counts must be {self.n_expert} non-negative row counts summing to xs.shape[0] = "
                             f"{xs.shape[0]}, got {counts}")
        if row_multiple is not None:
            _positive_int("row_multiple", row_multiple)
        w_in, w_out = self.w_in, self.w_out
        device_type = xs.device.type
        if torch.is_autocast_enabled(device_type):  # cast once here (autocast would cast every expert's slice)
            dtype = torch.get_autocast_dtype(device_type)
            xs, w_in, w_out = xs.to(dtype), w_in.to(dtype), w_out.to(dtype)
            with torch.autocast(device_type, enabled=False):
                return _SortedExpertsFn.apply(xs, w_in, w_out, tuple(counts), self.kind,
                                              _row_multiple(xs, row_multiple))
        if not (xs.dtype == w_in.dtype == w_out.dtype):
            raise TypeError(f"xs ({xs.dtype}) and the experts' weights ({w_in.dtype}) must have the same dtype "
                            "outside autocast")
        return _SortedExpertsFn.apply(xs, w_in, w_out, tuple(counts), self.kind, _row_multiple(xs, row_multiple))

    def run_sorted_autograd(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """:meth:`run_sorted` built from ordinary autograd operations (one ``F.linear`` pair per expert
        on its slice of ``torch.split``, whose backward is one concatenation, where slicing ``xs[a:b]``
        per expert would add a full-size zero gradient per expert): same numbers, slower, twice
        differentiable."""
        w_in, w_out = self.per_expert_weights()
        chunks = torch.split(xs, counts)
        outs = [F.linear(self._act(F.linear(chunk, w_in[e])), w_out[e]) if c else chunk
                for e, (c, chunk) in enumerate(zip(counts, chunks))]
        return torch.cat(outs)

    def run_grouped(self, xs: torch.Tensor, counts: list[int], row_multiple: int | None = None) -> torch.Tensor:
        """:meth:`run_sorted` with PyTorch's ``F.grouped_mm``: one grouped matmul per layer of the MLP for all
        experts (offsets = the ends of the experts' slices), ordinary autograd. Needs a PyTorch that has
        ``torch.nn.functional.grouped_mm``, fp32/bf16/fp16, and rows of a multiple of 16 bytes (``n_embd``
        and ``expert_hidden`` multiples of 4 in fp32, of 8 in bf16). ``row_multiple`` as in :meth:`run_sorted`
        (same numbers; CPU bf16/fp16 pad to a multiple of 32 rows by default)."""
        _check_grouped_mm()
        if any(c < 0 for c in counts) or sum(counts) != xs.shape[0] or len(counts) != self.n_expert:
            raise ValueError(f"counts must be {self.n_expert} non-negative row counts summing to xs.shape[0] = "
                             f"{xs.shape[0]}, got {counts}")
        if row_multiple is not None:
            _positive_int("row_multiple", row_multiple)
        device_type = xs.device.type
        if torch.is_autocast_enabled(device_type):  # cast once, then run in that dtype
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return self._grouped(xs.to(dtype), self.w_in.to(dtype), self.w_out.to(dtype), counts, row_multiple)
        if not (xs.dtype == self.w_in.dtype == self.w_out.dtype):
            raise TypeError(f"xs ({xs.dtype}) and the experts' weights ({self.w_in.dtype}) must have the same dtype "
                            "outside autocast")
        return self._grouped(xs, self.w_in, self.w_out, counts, row_multiple)

    def _grouped(self, xs, w_in, w_out, counts, row_multiple):
        size = xs.element_size()
        for name, value in (("n_embd", w_in.shape[2]), ("expert_hidden", w_out.shape[2])):
            if value * size % 16:
                raise ValueError(f"dispatch 'grouped_mm' needs rows of a multiple of 16 bytes: {name} ({value}) must be "
                                 f"a multiple of {16 // math.gcd(16, size)} in {xs.dtype}; use dispatch 'sort'")
        starts = _row_offsets(counts, _row_multiple(xs, row_multiple))
        rows = _padded_rows(counts, starts, xs.device)
        if rows is not None:  # zero rows between the experts' slices (see _SortedExpertsFn)
            xs = xs.new_zeros(starts[-1], xs.shape[1]).index_copy(0, rows, xs)
        offs = torch.tensor(starts[1:], device=xs.device, dtype=torch.int32)
        h = F.grouped_mm(xs, w_in.transpose(1, 2), offs=offs)
        y = F.grouped_mm(self._act(h), w_out.transpose(1, 2), offs=offs)
        return y if rows is None else y.index_select(0, rows)

    def run_batched(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (E, c, C) -> (E, c, C): every expert on its ``c`` slots in one batched matmul per layer."""
        h = self._act(torch.bmm(slots, self.w_in.transpose(1, 2)))
        return torch.bmm(h, self.w_out.transpose(1, 2))


CPU_LOW_PRECISION_ROW_MULTIPLE = 32
"""Rows each expert's slice is padded to in :meth:`Experts.run_sorted` for bf16/fp16 on a CPU. There
oneDNN JIT-compiles a kernel for every new matmul shape (its cache holds the recent ones), and the
per-expert row counts change every step: without padding, the bf16 MoE training step of the course model
cost 3.5x the dense step instead of 1.3x in fp32. Rounding up to 32 rows keeps the set of shapes small
(mostly cached) for at most 31 zero rows per expert."""


def _row_multiple(xs: torch.Tensor, row_multiple: int | None) -> int:
    if row_multiple is not None:
        return row_multiple
    low = xs.dtype in (torch.bfloat16, torch.float16)
    return CPU_LOW_PRECISION_ROW_MULTIPLE if low and xs.device.type == "cpu" else 1


def _activation_forward(kind: str, h: torch.Tensor) -> torch.Tensor:
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(h, approximate="tanh") if kind == "gelu" else F.relu(h)


def _activation_backward(kind: str, h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d act(h) / dh applied to ``grad`` (the gradient of the activation's output), in one pass over all rows."""
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return torch.cat([torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)], dim=-1)
    if kind == "gelu":
        return torch.ops.aten.gelu_backward(grad, h, approximate="tanh")
    return grad * (h > 0).to(grad.dtype)


def _row_offsets(counts, multiple: int = 1) -> list[int]:
    """Start row of every expert's slice (and the end), each slice rounded up to a multiple of ``multiple`` rows."""
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + -(-c // multiple) * multiple)
    return starts


def _padded_rows(counts, starts: list[int], device) -> torch.Tensor | None:
    """Row of the padded layout ``starts`` (from :func:`_row_offsets`) of every sorted row; None if no padding."""
    m = sum(counts)
    if starts[-1] == m:
        return None
    shift = torch.tensor([s - p for s, p in zip(starts, _row_offsets(counts))][:-1], device=device)
    return torch.arange(m, device=device) + shift.repeat_interleave(torch.tensor(counts, device=device), output_size=m)


class _SortedExpertsFn(torch.autograd.Function):
    """xs (m, C) sorted by expert, stacked w_in (E, R, C), w_out (E, C, H) -> (m, C), each expert on its
    ``counts[e]`` rows. Forward and backward are written out: one matmul per expert and layer straight into
    a preallocated buffer (``out=``), the activation and its derivative once over all rows.

    ``row_multiple`` > 1 pads every expert's slice with zero rows up to a multiple of that many rows (the
    padding rows stay exactly zero through the activation and add nothing to any gradient), so that the
    matmul shapes repeat from step to step: on a CPU, bf16/fp16 matmuls go to oneDNN, which builds (JIT
    compiles) a new kernel for every new shape, about 10x the cost of the matmul itself at these sizes,
    and the per-expert row counts change every step (see :data:`CPU_LOW_PRECISION_ROW_MULTIPLE`)."""

    @staticmethod
    def forward(ctx, xs, w_in, w_out, counts, kind, row_multiple=1):
        m, C = xs.shape
        starts = _row_offsets(counts, row_multiple)
        rows = _padded_rows(counts, starts, xs.device)  # where each row of xs sits in the padded layout
        if rows is not None:
            xs = xs.new_zeros(starts[-1], C).index_copy_(0, rows, xs)
        M = starts[-1]
        h = xs.new_empty(M, w_in.shape[1])
        for e, c in enumerate(counts):
            if c:
                torch.mm(xs[starts[e]:starts[e + 1]], w_in[e].t(), out=h[starts[e]:starts[e + 1]])
        a = _activation_forward(kind, h)
        y = xs.new_empty(M, C)
        for e, c in enumerate(counts):
            if c:
                torch.mm(a[starts[e]:starts[e + 1]], w_out[e].t(), out=y[starts[e]:starts[e + 1]])
        ctx.save_for_backward(xs, w_in, w_out, h, a, rows)
        ctx.starts, ctx.kind = starts, kind
        return y if rows is None else y.index_select(0, rows)

    @staticmethod
    def backward(ctx, gy):
        xs, w_in, w_out, h, a, rows = ctx.saved_tensors
        starts, E = ctx.starts, w_in.shape[0]
        gy = gy.contiguous() if rows is None else gy.new_zeros(xs.shape).index_copy_(0, rows, gy)
        need_x, need_in, need_out = ctx.needs_input_grad[:3]
        ga = torch.empty_like(a)
        g_out = torch.zeros_like(w_out) if need_out else None
        for e in range(E):
            s, t = starts[e], starts[e + 1]
            if t > s:
                torch.mm(gy[s:t], w_out[e], out=ga[s:t])
                if need_out:
                    torch.mm(gy[s:t].t(), a[s:t], out=g_out[e])
        gh = _activation_backward(ctx.kind, h, ga)
        g_in = torch.zeros_like(w_in) if need_in else None
        gx = torch.empty_like(xs) if need_x else None
        for e in range(E):
            s, t = starts[e], starts[e + 1]
            if t > s:
                if need_in:
                    torch.mm(gh[s:t].t(), xs[s:t], out=g_in[e])
                if need_x:
                    torch.mm(gh[s:t], w_in[e], out=gx[s:t])
        if need_x and rows is not None:
            gx = gx.index_select(0, rows)
        return (gx, g_in, g_out) + (None,) * (len(ctx.needs_input_grad) - 3)


def _dispatch_sort(experts: Experts, x: torch.Tensor, expert_of: torch.Tensor, token_of: torch.Tensor,
                   weight_of: torch.Tensor) -> torch.Tensor:
    """Assignments (token_of[a] goes to expert_of[a] with weight_of[a]) -> output (n, C).

    One stable sort groups the assignments by expert; one gather builds the sorted token matrix; each
    expert runs once on its slice; one ``index_add_`` puts the weighted results back."""
    E = experts.n_expert
    order = torch.argsort(expert_of, stable=True)
    counts = torch.bincount(expert_of, minlength=E).tolist()
    tok = token_of[order]
    ys = experts.run_sorted(x.index_select(0, tok), counts) * weight_of[order, None].to(x.dtype)
    out = torch.zeros_like(x)
    return out.index_add_(0, tok, ys.to(x.dtype))


def _dispatch_grouped(experts: Experts, x: torch.Tensor, expert_of: torch.Tensor, token_of: torch.Tensor,
                      weight_of: torch.Tensor) -> torch.Tensor:
    """:func:`_dispatch_sort` with the experts run by ``F.grouped_mm`` (:meth:`Experts.run_grouped`)."""
    order = torch.argsort(expert_of, stable=True)
    counts = torch.bincount(expert_of, minlength=experts.n_expert).tolist()
    tok = token_of[order]
    ys = experts.run_grouped(x.index_select(0, tok), counts) * weight_of[order, None].to(x.dtype)
    out = torch.zeros_like(x)
    return out.index_add_(0, tok, ys.to(x.dtype))


def _dispatch_loop(experts: Experts, x: torch.Tensor, expert_of: torch.Tensor, token_of: torch.Tensor,
                   weight_of: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
    """The loop over experts with boolean masks that tutorials write, line for line as makeMoE
    (github.com/AviSoori1x/makeMoE, ``SparseMoE.forward``): for every expert a boolean mask over all
    tokens, the masked tokens through the expert, times their gating scores (a column of the (n, E)
    gating matrix, zero where a token does not go), added back with a masked ``+=``.

    ``indices`` (n, k): each token's experts, as makeMoE's router returns them; None (capacity drops,
    expert choice): an (n, E) table built from the assignments, -1 where a token does not go. Ours used
    to index with the assignment list and ``index_add`` the results back, which was 1.16x faster than
    makeMoE's lines at 8 and at 32 experts (CPU, 2 threads): a baseline faster than the code it stands for."""
    n, E = x.shape[0], experts.n_expert
    if indices is None:
        indices = torch.full((n, E), -1, dtype=expert_of.dtype, device=x.device).index_put(
            (token_of, expert_of), expert_of)
    flat_gating_output = x.new_zeros(n, E).index_put((token_of, expert_of), weight_of.to(x.dtype))
    final_output = torch.zeros_like(x)
    flat_x = x
    w_in, w_out = experts.per_expert_weights()  # (as separate nn.Linear experts would be)
    for i in range(E):
        expert_mask = (indices == i).any(dim=-1)
        flat_mask = expert_mask.view(-1)
        if flat_mask.any():
            expert_input = flat_x[flat_mask]
            expert_output = F.linear(experts._act(F.linear(expert_input, w_in[i])), w_out[i])
            gating_scores = flat_gating_output[flat_mask, i].unsqueeze(1)
            weighted_output = expert_output * gating_scores
            final_output[expert_mask] += weighted_output.squeeze(1)
    return final_output


def _dispatch_bmm(experts: Experts, x: torch.Tensor, expert_of: torch.Tensor, token_of: torch.Tensor,
                  weight_of: torch.Tensor, slot_of: torch.Tensor, cap: int) -> torch.Tensor:
    """Capacity-padded slots: assignment a goes to slot ``(expert_of[a], slot_of[a])`` of an
    (E, cap, C) buffer (empty slots stay zero), one ``bmm`` pair computes every expert, and each
    result is gathered back to its token."""
    E, C = experts.n_expert, x.shape[1]
    flat = expert_of * cap + slot_of
    slots = x.new_zeros(E * cap, C).index_copy(0, flat, x.index_select(0, token_of))
    ys = experts.run_batched(slots.view(E, cap, C)).reshape(E * cap, C).index_select(0, flat)
    out = torch.zeros_like(x)
    return out.index_add_(0, token_of, (ys * weight_of[:, None].to(ys.dtype)).to(x.dtype))


def resolve_dispatch(dispatch: str, x: torch.Tensor, n_embd: int, expert_hidden: int) -> str:
    """The design a layer runs for tokens ``x``: ``dispatch`` itself, except ``"auto"``, which is
    ``"grouped_mm"`` where it applies and was measured fastest, and ``"sort"`` (the same numbers) elsewhere.
    ``grouped_mm`` needs ``torch.nn.functional.grouped_mm`` in this PyTorch and ``n_embd`` and ``expert_hidden``
    rows of a multiple of 16 bytes in the compute dtype (autocast's, if on); it was measured fastest on a CPU
    (``benchmarks/results/moe.json``) and on an NVIDIA H200 in bf16 (``moe_cuda.json``, ``moe_cuda_large.json``),
    so on a CUDA GPU it is chosen in bf16 at compute capability 9.0 (Hopper) or later only: older GPUs and
    other dtypes were not timed."""
    if dispatch != "auto":
        return dispatch
    kind = x.device.type
    if not hasattr(F, "grouped_mm") or kind not in ("cpu", "cuda"):
        return "sort"
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    if kind == "cuda" and (dtype != torch.bfloat16 or torch.cuda.get_device_capability(x.device) < (9, 0)):
        return "sort"
    size = torch.empty((), dtype=dtype).element_size()
    return "grouped_mm" if n_embd * size % 16 == 0 and expert_hidden * size % 16 == 0 else "sort"


def _position_in_expert(expert_of: torch.Tensor, n_expert: int) -> torch.Tensor:
    """For assignments listed in priority order, the rank of each among those of its expert (0, 1, ...)."""
    order = torch.argsort(expert_of, stable=True)
    counts = torch.bincount(expert_of, minlength=n_expert)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(len(expert_of), device=expert_of.device) - starts[expert_of[order]]
    return torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

class MoELayer(nn.Module):
    """Mixture-of-Experts feed-forward layer: ``forward(x (B, T, C)) -> (y (B, T, C), stats)``.

    ``stats`` (all computed from this forward): ``aux_loss`` (scalar, weighted: what the model adds to
    its training loss), ``balance_loss`` and ``z_loss`` (unweighted), ``expert_fraction`` f (E,) and
    ``router_prob`` P (E,), ``tokens_per_expert`` (E,) assignments routed to each expert,
    ``kept_per_expert`` (E,) those computed after the capacity limit, ``dropped`` (int) and
    ``dropped_fraction`` (of all assignments) removed by the capacity limit, ``unrouted_tokens``
    (tokens that reach no expert at all: the layer adds nothing for them, only the shared/dense
    parts), ``expert_mask`` (B, T, E) bool routed assignments, and for token-choice routers
    ``expert_index`` (B, T, k) the experts of each token, best first.
    """

    def __init__(self, config: MoEConfig, n_layer: int = 1):
        super().__init__()
        if not isinstance(config, MoEConfig):
            raise TypeError(f"MoELayer needs a MoEConfig, got {type(config).__name__}")
        self.config = config
        self.router = TopKRouter(config.n_embd, config.n_expert, config.top_k, config.router)
        self.experts = Experts(config.n_expert, config.n_embd, config.expert_hidden, config.mlp, n_layer)
        # shared experts (DeepSeek-MoE) and the hybrid's dense MLP: always-on MLPs, run as 1-expert stacks
        H = config.expert_hidden
        self.shared = (Experts(1, config.n_embd, config.n_shared_expert * H, config.mlp, n_layer)
                       if config.n_shared_expert else None)
        self.dense = Experts(1, config.n_embd, config.dense_hidden or H, config.mlp, n_layer) if config.hybrid else None
        self.coefficient = nn.Linear(config.n_embd, 2, bias=True) if config.hybrid else None
        if self.coefficient is not None:
            nn.init.normal_(self.coefficient.weight, std=0.02)
            nn.init.zeros_(self.coefficient.bias)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def dispatch(self) -> str:
        return self.config.dispatch

    @dispatch.setter
    def dispatch(self, value: str) -> None:
        if value not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {value!r}")
        if value == "grouped_mm":
            _check_grouped_mm()
        self.config.dispatch = value

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != cfg.n_embd:
            raise ValueError(f"x must be a (B, T, C={cfg.n_embd}) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        n, E, k = flat.shape[0], cfg.n_expert, cfg.top_k
        design = resolve_dispatch(cfg.dispatch, flat, C, cfg.expert_hidden)
        cap = capacity(n, E, k, cfg.capacity_factor)
        routing = self.router(flat, expert_capacity=capacity(n, E, k, cfg.capacity_factor or 1.0))
        if routing.expert_choice:
            c = routing.index.shape[1]
            expert_of = torch.arange(E, device=x.device).repeat_interleave(c)
            token_of = routing.index.reshape(-1)
            weight_of = routing.weight.reshape(-1)
            slot_of = torch.arange(c, device=x.device).repeat(E)
            cap_used, dropped = c, 0
        else:
            # assignments in priority order: token 0's experts, token 1's, ... (earlier tokens first)
            expert_of = routing.index.reshape(-1)
            token_of = torch.arange(n, device=x.device).repeat_interleave(k)
            weight_of = routing.weight.reshape(-1)
            dropped, slot_of, cap_used = 0, None, 1
            if cap is not None or design == "bmm":
                slot_of = _position_in_expert(expert_of, E)
                cap_used = int(slot_of.max()) + 1 if cap is None else cap
            if cap is not None:
                keep = slot_of < cap
                dropped = int((~keep).sum())
                if dropped:
                    expert_of, token_of, weight_of, slot_of = (expert_of[keep], token_of[keep], weight_of[keep],
                                                               slot_of[keep])

        if cfg.routed_scaling_factor != 1.0:  # on the (n*k,) weights: cheaper than scaling the (n, C) output
            weight_of = weight_of * cfg.routed_scaling_factor
        if design == "bmm":
            y = _dispatch_bmm(self.experts, flat, expert_of, token_of, weight_of, slot_of, cap_used)
        elif design == "grouped_mm":
            y = _dispatch_grouped(self.experts, flat, expert_of, token_of, weight_of)
        elif design == "loop":
            y = _dispatch_loop(self.experts, flat, expert_of, token_of, weight_of,
                               routing.index if not (routing.expert_choice or dropped) else None)
        else:
            y = _dispatch_sort(self.experts, flat, expert_of, token_of, weight_of)

        if self.shared is not None:
            y = y + self.shared.expert(0, flat)
        if self.dense is not None:
            coef = self.coefficient(flat).float().softmax(-1).to(y.dtype)
            y = y * coef[:, :1] + self.dense.expert(0, flat) * coef[:, 1:]
        y = y.view(B, T, C)
        if self.dropout.p and self.training:
            y = self.dropout(y)

        bal = balance_loss(routing.probs, routing.mask)
        zl = z_loss(routing.logits)
        aux = zl * cfg.z_loss_coef
        if not routing.expert_choice:  # expert choice is balanced by construction
            aux = aux + bal * cfg.aux_loss_coef
        counts = routing.mask.sum(0)
        if dropped or routing.expert_choice:
            kept = torch.bincount(expert_of, minlength=E)
            reached = torch.zeros(n, dtype=torch.bool, device=x.device)
            reached[token_of] = True
            unrouted = int(n - reached.sum())
        else:  # nothing dropped: every token reached its k experts
            kept, unrouted = counts, 0
        n_assign = int(counts.sum())
        stats = {
            "aux_loss": aux,
            "balance_loss": bal,
            "z_loss": zl,
            "expert_fraction": counts.float() / max(n_assign, 1),
            "router_prob": routing.probs.mean(0),
            "tokens_per_expert": counts,
            "kept_per_expert": kept,
            "dropped": dropped,
            "dropped_fraction": dropped / max(n_assign, 1),
            "unrouted_tokens": unrouted,
            "expert_mask": routing.mask.view(B, T, E),
        }
        if not routing.expert_choice:
            stats["expert_index"] = routing.index.view(B, T, k)
        return y, stats


def moe_parameter_counts(config: MoEConfig) -> dict[str, int]:
    """Parameters of one :class:`MoELayer`: {"total", "active"} (active = what one token uses: the
    router, ``top_k`` routed experts, the shared experts and the dense part)."""
    if not isinstance(config, MoEConfig):
        raise TypeError(f"moe_parameter_counts needs a MoEConfig, got {type(config).__name__}")
    C, H = config.n_embd, config.expert_hidden
    m = 3 if config.mlp == "swiglu" else 2
    expert = m * C * H
    router = config.n_expert * C * (2 if config.router == "noisy_topk" else 1)

    extra = m * C * H * config.n_shared_expert
    if config.hybrid:
        extra += m * C * (config.dense_hidden or H) + 2 * C + 2  # the dense MLP and the coefficient layer
    return {"total": router + config.n_expert * expert + extra, "active": router + config.top_k * expert + extra}



# ---------------------------------------------------------------------------------------------
# Hugging Face Mixtral
# ---------------------------------------------------------------------------------------------

def gpt_from_hf_mixtral(hf_model, cls=None):
    """Copy a Hugging Face ``MixtralForCausalLM`` into a new :class:`utils.model.GPT` (``GPT.from_hf_mixtral``).

    Mixtral is a Llama-style decoder (RMSNorm, RoPE in the rotate-half convention, grouped-query
    attention, no biases, untied head) whose every MLP is a top-2 Mixture of SwiGLU experts. HF keeps
    the experts stacked as ``gate_up_proj`` (E, 2I, C) and ``down_proj`` (E, C, I): our
    :class:`Experts` layout, copied as is; q, k, v go into our fused ``qkv_proj``. The z-loss is off
    (Mixtral has none) and ``aux_loss_coef`` is ``router_aux_loss_coef``; see the module docstring for
    how HF's load-balancing loss is normalised differently.
    """
    from utils.model import GPT, GPTConfig

    cls = cls or GPT
    hf_cfg = hf_model.config
    if getattr(hf_cfg, "model_type", None) != "mixtral":
        raise TypeError(f"expected a Hugging Face Mixtral model, got model_type={getattr(hf_cfg, 'model_type', None)!r}")
    C, H = hf_cfg.hidden_size, hf_cfg.num_attention_heads
    if getattr(hf_cfg, "head_dim", None) not in (None, C // H):
        raise ValueError(f"head_dim ({hf_cfg.head_dim}) != hidden_size / num_attention_heads ({C // H}) is not supported")
    if getattr(hf_cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"only SiLU experts (SwiGLU) are supported, got hidden_act={hf_cfg.hidden_act!r}")
    if getattr(hf_cfg, "sliding_window", None):
        raise ValueError("sliding-window attention is not supported (set sliding_window=None)")
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only the default RoPE is supported, got rope_type={rope.get('rope_type')!r}")
    rope_base = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
    config = GPTConfig(vocab_size=hf_cfg.vocab_size, block_size=hf_cfg.max_position_embeddings,
                       n_layer=hf_cfg.num_hidden_layers, n_head=H, n_embd=C, n_kv_head=hf_cfg.num_key_value_heads,
                       bias=False, norm="rmsnorm", mlp="swiglu", pos="rope", ffn_hidden=hf_cfg.intermediate_size,
                       norm_eps=hf_cfg.rms_norm_eps, tie_weights=bool(hf_cfg.tie_word_embeddings),
                       rope_base=float(rope_base), n_expert=hf_cfg.num_local_experts,
                       top_k=hf_cfg.num_experts_per_tok, aux_loss_coef=float(hf_cfg.router_aux_loss_coef),
                       z_loss_coef=0.0)
    param = next(hf_model.parameters())
    model = cls(config).to(device=param.device, dtype=param.dtype)
    sd = {k.removeprefix("model."): v for k, v in hf_model.state_dict().items()}
    with torch.no_grad():
        model.wte.weight.copy_(sd["embed_tokens.weight"])
        for i, block in enumerate(model.blocks):
            p = f"layers.{i}."
            block.ln_1.weight.copy_(sd[p + "input_layernorm.weight"])
            block.ln_2.weight.copy_(sd[p + "post_attention_layernorm.weight"])
            block.attn.qkv_proj.weight.copy_(torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
            block.attn.out_proj.weight.copy_(sd[p + "self_attn.o_proj.weight"])
            block.mlp.router.weight.copy_(sd[p + "mlp.gate.weight"])
            block.mlp.experts.w_in.copy_(sd[p + "mlp.experts.gate_up_proj"])
            block.mlp.experts.w_out.copy_(sd[p + "mlp.experts.down_proj"])
        model.ln_f.weight.copy_(sd["norm.weight"])
        if not config.tie_weights:
            model.lm_head.weight.copy_(sd["lm_head.weight"])
    model.train(hf_model.training)
    return model
