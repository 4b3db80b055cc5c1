"""Expert parallelism (utils/moe_parallel.py) on 2 local processes with gloo: same output as one process."""

import pytest
import torch

from utils.moe import MoEConfig, MoELayer
from utils.moe_parallel import ExpertParallelMoE, run_expert_parallel


def test_expert_parallel_output_equals_the_single_process_layer_on_two_processes():
    # (a routed scaling factor other than 1 checks that the expert-parallel combine scales as the layer does)
    results = run_expert_parallel(world_size=2, n_embd=32, n_expert=4, top_k=2, expert_hidden=24, batch=(2, 16),
                                  routed_scaling_factor=2.5)
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["local_experts"] for r in results] == [[0, 1], [2, 3]]
    for r in results:
        assert r["max_abs_diff_output"] < 1e-5
        assert r["max_abs_diff_input_grad"] < 1e-5
        assert r["max_rel_diff_expert_grad"] < 1e-5
        # every token goes to 2 experts and each row is 32 fp32 numbers; some rows stay on their own rank
        assert r["bytes"]["dispatch"] == 32 * 2 * 32 * 4
        assert 0 < r["bytes"]["to_other_ranks"] <= r["bytes"]["dispatch"] + r["bytes"]["combine"]
    # what rank 0 sends rank 1 is what rank 1 receives from rank 0, and back
    assert results[0]["bytes"]["dispatch"] + results[1]["bytes"]["dispatch"] == \
        results[0]["bytes"]["combine"] + results[1]["bytes"]["combine"]


def test_expert_parallel_needs_an_initialised_process_group_and_a_plain_layer():
    layer = MoELayer(MoEConfig(n_embd=8, n_expert=4, expert_hidden=8))
    with pytest.raises(RuntimeError, match="init_process_group"):
        ExpertParallelMoE(layer)
    with pytest.raises(TypeError, match="MoELayer"):
        ExpertParallelMoE(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="divisible"):
        run_expert_parallel(world_size=3, n_expert=4)
