"""benchmarks/moe_compare.py: the four models of notebook 05's dense-vs-MoE table and its results file."""

import importlib.util
import json

import pytest

from utils.params import count_parameters
from utils.runtime import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("moe_compare", REPO_ROOT / "benchmarks" / "moe_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_four_models_have_the_same_active_parameters_within_half_a_percent():
    module = _module()
    cfgs = module.model_configs(2048)
    assert list(cfgs) == ["dense", "MoE", "hybrid", "MoE top-1", "MoE x2", "MoE x2 alternate", "MoE top-1 x8",
                          "MoE x2 alternate x16", "MoE fine alternate", "MoE x2 alternate x4", "MoE x2 x4",
                          "MoE shared alternate", "MoE shared"]
    assert module.MODELS + module.CANDIDATES == tuple(cfgs)
    dense = count_parameters(cfgs["dense"], active=True)
    for name, cfg in cfgs.items():
        assert abs(count_parameters(cfg, active=True) / dense - 1) < 0.005, name
    assert cfgs["MoE top-1"].top_k == 1 and cfgs["MoE top-1"].expert_hidden == cfgs["dense"].resolved_ffn_hidden
    assert count_parameters(cfgs["MoE top-1"]) > count_parameters(cfgs["MoE"]) > count_parameters(cfgs["dense"])
    assert cfgs["MoE x2"].routed_scaling_factor == 2.0 and cfgs["MoE"].routed_scaling_factor == 1.0
    assert cfgs["MoE x2 alternate"].moe_layer_indices == (1, 3)
    assert count_parameters(cfgs["dense"]) < count_parameters(cfgs["MoE x2 alternate"]) < count_parameters(cfgs["MoE x2"])
    assert count_parameters(cfgs["MoE x2 alternate x16"]) > count_parameters(cfgs["MoE x2 alternate"])
    fine = cfgs["MoE fine alternate"]
    assert (fine.n_expert, fine.top_k, fine.routed_scaling_factor, fine.moe_layer_indices) == (16, 4, 4.0, (1, 3))
    assert count_parameters(fine) == count_parameters(cfgs["MoE x2 alternate"]) - 2 * 8 * 192 + 2 * 16 * 192
    assert count_parameters(cfgs["dense"]) < count_parameters(cfgs["MoE x2 alternate x4"]) < count_parameters(cfgs["MoE x2 x4"])
    assert cfgs["MoE x2 x4"].n_expert == 4 and cfgs["MoE x2 x4"].moe_layer_indices == (0, 1, 2, 3)
    shared, H = cfgs["MoE shared alternate"], cfgs["dense"].resolved_ffn_hidden
    assert (shared.n_shared_expert * shared.expert_hidden, shared.expert_hidden, shared.top_k) == (H // 2, H // 4, 2)
    assert shared.moe_layer_indices == (1, 3) and cfgs["MoE shared"].moe_layer_indices == (0, 1, 2, 3)


def test_a_results_file_made_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "moe_compare.json"
    out.write_text(json.dumps({"config": {"dense_steps": 250, "val_chars": 60_000, "precision": "fp32",
                                          "timing_rounds": 5}, "threads": 2, "runs": []}))
    with pytest.raises(SystemExit, match="was made with"):
        _module().main(["--dense-steps", "100", "--out", str(out)])


@pytest.mark.parametrize("flag, value", [("--val-start", "-60000"), ("--val-chars", "0"), ("--dense-steps", "0"),
                                         ("--threads", "0"), ("--timing-rounds", "0"), ("--next", "0")])
def test_a_negative_or_zero_setting_is_refused_before_any_work(tmp_path, flag, value):
    out = tmp_path / "moe_compare.json"
    with pytest.raises(SystemExit, match=f"{flag} must be . or more, not {value}"):
        _module().main([flag, value, "--out", str(out)])
    assert not out.exists()


def test_the_report_averages_the_runs_of_each_model(capsys):
    bench = {"config": {"dense_steps": 10, "val_chars": 100}, "threads": 2, "cpu": "x", "budget_s": 2.0,
             "sec_per_step": {"dense": 0.2, "MoE": 0.25}, "models": ["dense", "MoE", "hybrid"],
             "runs": [dict(model=m, seed=s, bpc=b, steps=10, seconds=2.0, tokens_per_s=100.0, total_params=5,
                           active_params=5)
                      for m, s, b in (("dense", 0, 2.5), ("dense", 1, 2.7), ("MoE", 0, 2.9))]}
    means = _module().print_report(bench)
    assert means == pytest.approx({"dense": 2.6, "MoE": 2.9})  # no runs of the hybrid: no row
    out = capsys.readouterr().out
    assert "2.500, 2.700" in out and "1.25x dense" in out and "hybrid" not in out


def test_the_report_gives_train_text_bits_per_char_and_the_gap_when_runs_have_them(capsys):
    bench = {"config": {"dense_steps": 10, "val_chars": 100}, "threads": 2, "cpu": "x", "budget_s": 2.0,
             "sec_per_step": {"dense": 0.2, "MoE": 0.25}, "models": ["dense", "MoE"],
             "runs": [dict(model=m, seed=0, bpc=b, train_bpc=t, train_chars=90, steps=10, seconds=2.0,
                           tokens_per_s=100.0, total_params=5, active_params=5)
                      for m, b, t in (("dense", 2.0, 1.9), ("MoE", 2.1, 1.8))]}
    _module().print_report(bench)
    out = capsys.readouterr().out
    assert "first 90 characters of the training text" in out
    assert "dense 1.900 (val - train +0.100)" in out and "MoE 1.800 (val - train +0.300)" in out
    bench["runs"] = [{k: v for k, v in r.items() if k not in ("train_bpc", "train_chars")} for r in bench["runs"]]
    _module().print_report(bench)
    assert "training text" not in capsys.readouterr().out  # older files: no such line
