"""benchmarks/moe_ceiling.py: the dense upper bound on what an MoE's parameters buy per step."""

import importlib.util
import json

import pytest
import torch

from utils.moe import MoELayer
from utils.params import count_parameters
from utils.runtime import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("moe_ceiling", REPO_ROOT / "benchmarks" / "moe_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("moe", ["MoE x2", "MoE x2 alternate"])
def test_the_ceiling_holds_the_moes_parameters_less_its_router_as_dense_mlps_in_its_moe_layers(moe):
    module = _module()
    cfgs = module.model_configs(2048)
    moe_cfg, dense_cfg = cfgs[moe], cfgs["dense"]
    model = module.ceiling_model(moe_cfg, dense_cfg)
    n_moe_layers = len(moe_cfg.moe_layer_indices)
    router = n_moe_layers * moe_cfg.n_expert * moe_cfg.n_embd
    assert sum(p.numel() for p in model.parameters()) == count_parameters(moe_cfg) - router
    for i, block in enumerate(model.blocks):
        assert not isinstance(block.mlp, MoELayer)
        want = moe_cfg.n_expert * moe_cfg.expert_hidden if i in moe_cfg.moe_layer_indices else 512
        assert block.mlp.down_proj.weight.shape == (dense_cfg.n_embd, want)
    # initialised as the GPT initialises a block's MLP: down projections at 0.02 / sqrt(2 * n_layer)
    down = model.blocks[moe_cfg.moe_layer_indices[0]].mlp.down_proj.weight
    assert down.std().item() == pytest.approx(0.02 / (2 * dense_cfg.n_layer) ** 0.5, rel=0.05)
    x = torch.randint(0, 2048, (2, 16))
    logits, _ = model(x)
    assert logits.shape == (2, 16, 2048)


def test_the_report_gives_each_ceilings_difference_from_dense_per_seed(capsys):
    bench = {"dense_steps": 10, "budget_s": 2.0, "threads": 2, "cpu": "x", "val_chars": 100,
             "sec_per_step": {"dense": 0.2, "MoE x2": 0.25}, "models": ["dense", "MoE x2 ceiling"],
             "runs": [dict(model=m, seed=s, bpc=b, steps=n, params=p)
                      for m, s, b, n, p in (("dense", 0, 2.5, 10, 5), ("dense", 1, 2.7, 10, 5),
                                            ("MoE x2 ceiling", 0, 2.45, 8, 9), ("MoE x2 ceiling", 1, 2.75, 8, 9))]}
    _module().print_report(bench)
    out = capsys.readouterr().out
    assert "MoE x2 250 ms (1.25x dense)" in out
    row = next(line for line in out.splitlines() if line.startswith("MoE x2 ceiling"))
    assert "2.450, 2.750" in row and "2.600" in row and "-0.050, +0.050" in row


def test_an_existing_results_file_is_not_overwritten_and_bad_settings_are_refused(tmp_path):
    out = tmp_path / "ceiling.json"
    out.write_text(json.dumps({"runs": []}))
    with pytest.raises(SystemExit, match="exists: use --report"):
        _module().main(["--out", str(out)])
    with pytest.raises(SystemExit, match="--dense-steps must be 1 or more, not 0"):
        _module().main(["--dense-steps", "0", "--out", str(tmp_path / "new.json")])
    assert not (tmp_path / "new.json").exists()
