"""The recipe's optimiser (utils.pretrain: Recipe.optimizer, make_optimizer, train_recipe): "adamw" is the
training loop's own AdamW; "muon" puts exactly the hidden matrices into torch.optim.Muon and the rest
into AdamW, both driven by the loop's one learning-rate schedule."""


import pytest
import torch

import utils.training as training
from utils.model import GPT
from utils.pretrain import (BABY_GPT, COURSE_RECIPE, MuonWithAdamW, Recipe, make_optimizer, muon_parameter_split,
                            train_recipe)
from utils.training import lr_schedule

TINY = dict(vocab_size=300, n_layer=2, n_embd=32, n_head=2, block_size=16, warmup_steps=3)
HIDDEN = ("attn.qkv_proj.weight", "attn.out_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight")


def _names(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def _data(n=4000, period=23):
    return torch.arange(n) % period  # a repeating sequence: learnable in a few steps


def test_muon_recipe_puts_exactly_the_hidden_matrices_into_muon():
    recipe = COURSE_RECIPE.with_(optimizer="muon", **TINY)
    torch.manual_seed(0)
    model = GPT(recipe.model_config(300))
    opt = make_optimizer(recipe, model)
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, torch.optim.Muon)
    assert isinstance(opt.adamw, torch.optim.AdamW)
    muon = [p for g in opt.muon.param_groups for p in g["params"]]
    adamw = {g["name"]: g["params"] for g in opt.adamw.param_groups}
    assert _names(model, muon) == sorted(f"blocks.{i}.{h}" for i in range(2) for h in HIDDEN)
    assert all(p.dim() == 2 for p in muon)
    # the tied token embedding / LM head is a matrix but not a hidden one: AdamW with decay
    assert model.wte.weight is model.lm_head.weight
    assert _names(model, adamw["decay"]) == ["wte.weight"]
    assert _names(model, adamw["no_decay"]) == sorted(["ln_f.weight"] + [f"blocks.{i}.ln_{j}.weight"
                                                                        for i in range(2) for j in (1, 2)])
    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))


def test_muon_split_keeps_biases_and_learned_positions_on_adamw():
    recipe = BABY_GPT.with_(vocab_size=None, n_layer=1, n_embd=32, n_head=2, block_size=16, bias=True)
    model = GPT(recipe.model_config(40))
    split = muon_parameter_split(model)
    assert all(n.startswith("blocks.0.") and n.endswith(".weight") for n in _names(model, split["muon"]))
    assert len(split["muon"]) == 4  # qkv, out, MLP up and down
    assert "wpe.weight" in _names(model, split["adamw_decay"])
    no_decay = _names(model, split["adamw_no_decay"])
    assert no_decay and all(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_f") for n in no_decay)
    assert any(n.endswith(".bias") for n in no_decay)


def test_muon_groups_take_the_recipes_lr_weight_decay_and_scaling():
    recipe = COURSE_RECIPE.with_(optimizer="muon", muon_lr=0.02, muon_weight_decay=0.1, muon_adjust_lr="original",
                                 **TINY)
    opt = make_optimizer(recipe, GPT(recipe.model_config(300)))
    (g,) = opt.muon.param_groups
    assert g["lr_scale"] == pytest.approx(0.02 / recipe.lr) and g["lr"] == pytest.approx(0.02)
    assert g["weight_decay"] == 0.1 and g["adjust_lr_fn"] == "original"
    wd = {g["name"]: (g["weight_decay"], g["lr_scale"]) for g in opt.adamw.param_groups}
    assert wd == {"decay": (recipe.weight_decay, 1.0), "no_decay": (0.0, 1.0)}
    default = make_optimizer(COURSE_RECIPE.with_(optimizer="muon", **TINY), GPT(recipe.model_config(300)))
    (g,) = default.muon.param_groups  # defaults: the recipe's own lr and weight decay, Moonshot's scaling
    assert (g["lr_scale"], g["weight_decay"], g["adjust_lr_fn"]) == (1.0, recipe.weight_decay, "match_rms_adamw")


def test_adamw_recipe_is_the_training_loops_own_optimiser():
    recipe = COURSE_RECIPE.with_(**TINY)
    opt = make_optimizer(recipe, GPT(recipe.model_config(300)))
    assert type(opt) is torch.optim.AdamW
    losses = []
    for run in (train_recipe, None):
        torch.manual_seed(0)
        model = GPT(recipe.model_config(300))
        cfg = recipe.train_config(max_steps=6, progress=False, eval_interval=0, eval_iters=1, log_interval=1)
        res = run(recipe, model, _data(), None, cfg) if run else training.train(model, _data(), None, cfg)
        losses.append([v for _, v in res.train_losses])
    assert losses[0] == losses[1]


def test_a_few_muon_steps_reduce_the_loss_with_the_schedule_on_both_optimisers(monkeypatch):
    recipe = COURSE_RECIPE.with_(optimizer="muon", muon_lr=0.02, muon_adjust_lr="original", muon_weight_decay=0.1,
                                 precision="fp32", **TINY)
    seen = []
    muon_step = torch.optim.Muon.step

    def counting_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return muon_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Muon, "step", counting_step)
    torch.manual_seed(0)
    model = GPT(recipe.model_config(300))
    cfg = recipe.train_config(max_steps=30, progress=False, eval_interval=0, eval_iters=1, log_interval=1)
    res = train_recipe(recipe, model, _data(), None, cfg)
    losses = [v for _, v in res.train_losses]
    assert len(seen) == 30  # Muon stepped once per optimizer step
    expected = [0.02 / recipe.lr * lr_schedule(s, lr=recipe.lr, min_lr=recipe.min_lr, warmup_steps=3, total_steps=30)
                for s in range(30)]
    assert seen == pytest.approx(expected)
    assert [lr for _, lr in res.lrs] == pytest.approx([expected[s - 1] * recipe.lr / 0.02 for s, _ in res.lrs])
    assert losses[-1] < 0.75 * losses[0], losses  # from ln(300) = 5.7 nats to below 4.3


@pytest.mark.parametrize("kwargs, config_changes, message", [
    (dict(param_groups=[]), {}, "param_groups cannot be combined with optimizer='muon'"),
    (dict(make_optimizer=lambda m, g, c: None), {}, "make_optimizer cannot be combined with optimizer='muon'"),
    ({}, dict(weight_decay=0.1), "the TrainConfig's lr/weight_decay/betas .* differ from the recipe's"),
])
def test_train_recipe_refuses_settings_its_optimiser_would_ignore(kwargs, config_changes, message):
    recipe = COURSE_RECIPE.with_(optimizer="muon", **TINY)
    cfg = recipe.train_config(max_steps=1, progress=False, **config_changes)
    with pytest.raises(ValueError, match=message):
        train_recipe(recipe, GPT(recipe.model_config(300)), _data(), None, cfg, **kwargs)


@pytest.mark.parametrize("changes, message", [
    (dict(optimizer="sgd"), r"Recipe.optimizer must be one of \('adamw', 'muon'\), got 'sgd'"),
    (dict(optimizer="Muon"), r"Recipe.optimizer must be one of"),
    (dict(optimizer=None), r"Recipe.optimizer must be one of"),
    (dict(optimizer="muon", muon_lr=0), r"Recipe.muon_lr must be None \(the recipe's lr\) or a finite number > 0"),
    (dict(optimizer="muon", muon_lr=float("nan")), r"Recipe.muon_lr must be"),
    (dict(optimizer="muon", muon_weight_decay=-0.1), r"Recipe.muon_weight_decay must be None"),
    (dict(optimizer="muon", muon_adjust_lr="moonshot"), r"Recipe.muon_adjust_lr must be one of"),
    (dict(muon_lr=0.02), r"Recipe sets muon_lr=0.02 but optimizer='adamw'"),
])
def test_recipe_refuses_a_bad_optimizer_setting_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        COURSE_RECIPE.with_(**changes)


def test_course_recipe_and_baby_keep_adamw():
    assert COURSE_RECIPE.optimizer == BABY_GPT.optimizer == Recipe().optimizer == "adamw"


def test_explore_rows_name_the_muon_settings(bench):
    recipe, threads = bench.explore_recipe(
        "ours optimizer=muon muon_adjust_lr=original muon_lr=0.02 muon_weight_decay=0.1 threads=2")
    assert threads == 2
    assert (recipe.optimizer, recipe.muon_adjust_lr, recipe.muon_lr, recipe.muon_weight_decay) == \
        ("muon", "original", 0.02, 0.1)
    assert recipe.with_(optimizer="adamw", muon_adjust_lr="match_rms_adamw", muon_lr=None,
                        muon_weight_decay=None) == COURSE_RECIPE


def test_benchmark_run_trains_a_muon_recipe_within_the_budget(bench, monkeypatch):
    torch.set_num_threads(1)
    calls = []
    muon_step = torch.optim.Muon.step
    monkeypatch.setattr(torch.optim.Muon, "step", lambda self, *a, **k: (calls.append(1), muon_step(self, *a, **k))[1])
    text = "".join(f"SPEAKER {i % 7}:\nLine number {i} of the play, with words.\nAnd one more.\n\n" for i in range(1500))
    recipe = BABY_GPT.with_(n_layer=1, n_embd=32, n_head=2, block_size=32, warmup_steps=2, optimizer="muon")
    r = bench.run("tiny muon", recipe, budget=3.0, seed=0, text=text)
    assert r["wall_s"] <= 3.0 * 1.15
    assert len(calls) == r["steps"] > 0 and r["recipe"]["optimizer"] == "muon"
    assert r["report_bpc"] is not None and 0 < r["report_bpc"] < 8


def test_step_times_time_each_recipe_with_its_own_optimiser(bench, monkeypatch):
    calls = []
    muon_step = torch.optim.Muon.step
    monkeypatch.setattr(torch.optim.Muon, "step", lambda self, *a, **k: (calls.append(1), muon_step(self, *a, **k))[1])
    tiny = COURSE_RECIPE.with_(**TINY)
    res = bench.step_times({"adamw": tiny, "muon": tiny.with_(optimizer="muon")}, vocab=300, steps=2, rounds=3)
    assert set(res) == {"adamw", "muon"} and res["muon"]["n"] == res["adamw"]["n"] == 4  # the first round not counted
    assert len(calls) == 6  # Muon stepped in every round, only for its own recipe
    assert all(0 < r["optimizer_step"] < r["step"] for r in res.values())


@pytest.mark.parametrize("argv, phrase", [
    (["--n-embd", "190"], "divisible by n_head"),
    (["--n-layer", "0"], "--n-layer must be >= 1"),
    (["--n-layer", "8"], "write it elsewhere with --out"),  # never over the committed course model
])
def test_make_pretrain_shape_options_refuse_bad_shapes_before_any_work(argv, phrase, capsys):
    from utils.pretrain import main

    with pytest.raises(SystemExit):
        main(argv)
    assert phrase in capsys.readouterr().err
