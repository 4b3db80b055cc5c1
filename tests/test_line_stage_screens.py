"""benchmarks/line_stage_screens.py: the recipe with a line stage, screened on the validation plays (quick runs)."""
import json
import shutil

import pytest
import torch

from utils.instruct import prepare_instruct_model, run_line_stage, train_instruct_model
from utils.pretrain import load_course_model


@pytest.fixture(scope="module")
def screens(load_script):
    return load_script("benchmarks/line_stage_screens.py")


def test_an_every_weight_line_stage_before_the_mixed_stage_gives_exactly_train_instruct_models_model(screens):
    r = screens.recipe(quick=True)
    stage = {"n": 8, "replay": 0, "epochs": 1.0, "lr": 1e-3}
    ref, _, _ = train_instruct_model(method=r["method"], n_per_task=r["n_per_task"], task_counts=r["task_counts"],
                                     epochs=r["epochs"], lr=r["lr"], seed=0, balance_genres=r["balance_genres"],
                                     genre_stage=r["genre_stage"], line_stage=stage)
    got, _, n_trainable, _ = screens.train_screen(seed=0, n=8, train="all", where="before", quick=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    sd_ref, sd_got = ref.state_dict(), got.state_dict()
    assert sd_ref.keys() == sd_got.keys()
    assert all(torch.equal(sd_ref[k], sd_got[k]) for k in sd_ref)
    assert n_trainable == sum(p.numel() for p in got.parameters())


def test_an_anchored_line_stage_trains_on_the_same_examples_and_seeds_as_run_line_stage(screens):
    # an anchor too weak to move anything takes the anchored path: the same model as the plain line stage
    plain, _, _, _ = screens.train_screen(seed=0, n=8, quick=True)
    weak, _, _, _ = screens.train_screen(seed=0, n=8, quick=True, anchor=1e-12)
    strong, _, _, _ = screens.train_screen(seed=0, n=8, quick=True, anchor=50.0)
    a, b, c = plain.state_dict(), weak.state_dict(), strong.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _line_stage_moves(screens, train, blocks):
    """Which parameters (and which qkv rows) one quick line stage of this kind changes."""
    model, tok = load_course_model()
    tok2 = prepare_instruct_model(model, tok, "full")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    restore, n_trainable = screens.freeze_for_line_stage(model, train, blocks)
    run_line_stage(model, tok2, {"n": 16, "replay": 0, "epochs": 1.0, "lr": 1e-2}, 0)
    restore()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    return {n: ~torch.isclose(p.detach(), before[n], rtol=0, atol=0).all(dim=-1) for n, p in model.named_parameters()}, \
        n_trainable, model.config


def test_an_attention_qk_line_stage_moves_only_the_query_and_key_rows(screens):
    moved, n_trainable, cfg = _line_stage_moves(screens, "attention_qk", None)
    c = cfg.n_embd
    for name, rows in moved.items():
        if name.endswith("qkv_proj.weight"):
            assert rows[:2 * c].all() and not rows[2 * c:].any(), name  # q, k rows move; value rows do not
        else:
            assert not rows.any(), name  # out_proj, MLPs, norms, embeddings: frozen
    assert n_trainable == cfg.n_layer * 2 * c * c


def test_an_attention_line_stage_of_chosen_blocks_leaves_every_other_weight(screens):
    moved, n_trainable, cfg = _line_stage_moves(screens, "attention", [0])
    changed = {n for n, rows in moved.items() if rows.any()}
    assert changed == {"blocks.0.attn.qkv_proj.weight", "blocks.0.attn.out_proj.weight"}
    assert n_trainable == 4 * cfg.n_embd * cfg.n_embd


def test_the_screen_appends_its_entry_atomically_and_judges_it_against_the_recipe_of_its_seed(screens, tmp_path, capsys):
    out = tmp_path / "screens.json"
    base = {**_entry(0.0, 0.0, 0.0, 0.0, 0.5, n=0), "quick": True, "twin_pairs": 2, "same_answer": 2}  # a recipe row
    out.write_text(json.dumps({"rule": screens.RULE, "screens": [base]}))
    entry = screens.main(["--quick", "--n", "8", "--train", "attention", "--blocks", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["screens"] == [base, entry]
    assert entry["variant"] == {"n": 8, "lr": 1e-3, "replay": 0, "train": "attention", "blocks": [1], "where": "before"}
    assert entry["line_stage_trainable"] == 4 * 192 * 192 and entry["quick"] is True
    assert set(entry["exact_match"]) == {"genre", "first_speaker", "line_speaker", "speakers"}
    assert all(0.0 <= v <= 1.0 for v in entry["choice"].values()) and entry["val_per_task"] == 4
    assert not out.with_suffix(".tmp").exists()
    picks = entry["genre_picks"]  # the genre items' picks, from the same scores as the choice accuracy
    assert sum(sum(row.values()) for row in picks["confusion"].values()) == 4
    assert sum(picks["picked"].values()) == pytest.approx(1.0) and picks["choice"] == entry["choice"]["genre"]
    printed = capsys.readouterr().out
    assert "Genre picks (validation plays):" in printed and "| calibrated |" in printed
    assert "| 0 | recipe (no line stage) |" in printed and "| baseline |" in printed
    assert "8 examples, attention of blocks 1, before the mixed stage" in printed
    assert printed.count("| pass |") + printed.count("| fail: ") == 1  # judged against the quick recipe row
    entry = screens.main(["--quick", "--n", "8", "--anchor", "10", "--out", str(out)])
    assert entry["variant"]["anchor"] == 10.0
    assert "8 examples, every weight, before the mixed stage, lr 0.001, anchored to its start (L2-SP 10)" in \
        capsys.readouterr().out


def test_genre_picks_tell_a_moved_prior_from_a_lost_answer(screens):
    from utils.instruct import Example

    genres = ("comedy", "history", "tragedy")
    items = [Example("genre", "Which?", f"passage {i}", genres[i % 3], "play", genres) for i in range(9)]
    # evidence +1 on the true genre, and a prior of +5 on "comedy" whatever the passage: every item is "comedy"
    moved = [[1.0 * (g == e.response) + 5.0 * (g == "comedy") for g in genres] for e in items]
    got = screens.genre_picks(items, moved)
    assert got["choice"] == pytest.approx(3 / 9) and got["calibrated_choice"] == 1.0
    assert got["picked"] == {"comedy": 1.0, "history": 0.0, "tragedy": 0.0}
    assert got["confusion"] == {"comedy": {"comedy": 3}, "history": {"comedy": 3}, "tragedy": {"comedy": 3}}
    # no evidence at all (the true genre scores like the others): removing the prior does not bring it back
    lost = [[5.0 * (g == "comedy") + 0.1 * ((i + k) % 3) for k, g in enumerate(genres)] for i, e in enumerate(items)]
    got = screens.genre_picks(items, lost)
    assert got["calibrated_choice"] <= 1 / 3 + 1e-9
    with pytest.raises(ValueError, match="one score list per genre item"):
        screens.genre_picks(items, moved[:-1])
    with pytest.raises(ValueError, match="3 choices but 2 scores"):
        screens.genre_picks(items[:1], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="not among its choices"):  # e.g. an item without choices
        screens.genre_picks([Example("genre", "Which?", "p", "comedy", "play")], [[]])


def _entry(genre, first, line, speakers, choice, n=32000):
    return {"seed": 0, "quick": False, "variant": {"n": n}, "exact_match": {"genre": genre, "first_speaker": first,
            "line_speaker": line, "speakers": speakers}, "choice": {"line_speaker": choice}}


def test_the_screening_rule_needs_the_lookup_and_no_other_task_more_than_005_below_the_recipe(screens):
    base = _entry(0.535, 0.740, 0.410, 0.225, 0.52, n=0)
    assert screens.verdict(_entry(0.490, 0.700, 0.5, 0.180, 0.60), base) == "pass"
    assert screens.verdict(_entry(0.450, 0.845, 0.575, 0.445, 0.685), base) == "fail: genre 0.450 < 0.535 - 0.05"
    assert screens.verdict(_entry(0.510, 0.850, 0.455, 0.390, 0.500), base).startswith("fail: line_speaker choice")
    assert screens.verdict(_entry(0.5, 0.8, 0.5, 0.3, 0.7), None) == "no baseline"
    assert screens.verdict(base, None) == "baseline"


@pytest.mark.parametrize("kwargs, match", [({"train": "mlp"}, "train must be one of"),
                                           ({"train": "attention", "blocks": [4]}, "blocks must be None"),
                                           ({"train": "attention", "blocks": []}, "blocks must be None")])
def test_a_line_stage_of_an_unknown_kind_or_missing_block_is_refused(screens, kwargs, match):
    model, _ = load_course_model()
    with pytest.raises(ValueError, match=match):
        screens.freeze_for_line_stage(model, **kwargs)


def test_a_scaled_mixed_stage_is_a_variant_not_the_recipe(screens):
    assert screens.is_recipe({"n": 0}) and not screens.is_recipe({"n": 0, "mixed_scale": 3})
    assert screens.describe({"n": 0, "mixed_scale": 3}) == "no line stage, the mixed stage's examples x3"
    base = _entry(0.5, 0.745, 0.35, 0.285, 0.52, n=0)
    scaled = {**_entry(0.49, 0.8, 0.5, 0.3, 0.61, n=0), "variant": {"n": 0, "mixed_scale": 3}}
    assert screens.verdict(scaled, base) == "pass"  # judged like a line stage, not taken for the recipe row
    rows = screens.table([{**scaled, "twin_pairs": 1, "same_answer": 0}, {**base, "twin_pairs": 1, "same_answer": 1}])
    assert rows.splitlines()[2].startswith("| 0 | recipe (no line stage) |") and rows.endswith("| pass |")


def test_the_mixed_stage_gets_mixed_counts_examples_of_those_tasks_and_the_recipe_counts_for_the_rest(screens,
                                                                                                    monkeypatch):
    seen = []
    real = screens.instruct_training_set

    def spy(corpus, n_per_task, task_counts=None, seed=0, balance_genres=False):
        seen.append((n_per_task, dict(task_counts)))
        return real(corpus, n_per_task, task_counts, seed, balance_genres)

    monkeypatch.setattr(screens, "instruct_training_set", spy)
    n = screens.recipe(quick=True)["n_per_task"]
    screens.train_screen(seed=0, n=0, quick=True, mixed_scale=2, mixed_counts={"line_speaker": 7, "genre": 6})
    screens.train_screen(seed=0, n=0, quick=True, mixed_scale=2)
    assert seen == [(2 * n, {"line_speaker": 7, "genre": 6}), (2 * n, {})]
    variant = {"n": 0, "mixed_scale": 3, "mixed_counts": {"line_speaker": 32000, "genre": 14400}}
    assert not screens.is_recipe(variant) and not screens.is_recipe({"n": 0, "mixed_counts": {"line_speaker": 4800}})
    assert screens.describe(variant) == ("no line stage, the mixed stage's examples x3, its line_speaker examples "
                                         "32,000, its genre examples 14,400")
    assert screens.parse_counts(["line_speaker=32000", "genre=14400"]) == variant["mixed_counts"]
    with pytest.raises(SystemExit, match="TASK=N"):
        screens.parse_counts(["line_speaker:32000"])
    with pytest.raises(SystemExit, match="twice"):
        screens.parse_counts(["line_speaker=32000", "line_speaker=16000"])


@pytest.mark.parametrize("kwargs, match", [({"where": "middle"}, "where must be one of"), ({"n": -1}, "n must be"),
                                           ({"mixed_scale": 0}, "mixed_scale must be"),
                                           ({"mixed_scale": 1.5}, "mixed_scale must be"),
                                           ({"mixed_counts": {"line_speaker": 0}}, "mixed_counts must map"),
                                           ({"mixed_counts": {"line_speaker": True}}, "mixed_counts must map"),
                                           ({"mixed_counts": {"line_speaker": 3.0}}, "mixed_counts must map"),
                                           ({"mixed_counts": {"who_speaks": 3}}, "mixed_counts must map")])
def test_a_screen_with_an_impossible_place_or_size_is_refused(screens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        screens.train_screen(quick=True, **kwargs)


def test_a_screen_on_another_base_records_which_base_it_trained(screens, tmp_path):
    from utils.pretrain import CHECKPOINT_PATH, TOKENIZER_PATH

    shutil.copy(CHECKPOINT_PATH, tmp_path / "other-gpt.pt")  # the course model under another name: a valid base
    shutil.copy(TOKENIZER_PATH, tmp_path / "other-tokenizer.json")
    entry = screens.run(seed=0, n=0, quick=True, base=tmp_path / "other-gpt.pt")
    assert entry["base"] == {"checkpoint": "other-gpt.pt", "n_layer": 4, "n_head": 4, "n_embd": 192,
                             "parameters": entry["base"]["parameters"]}
    assert entry["base"]["parameters"] > 2_000_000
    assert "base" not in screens.run(seed=0, n=0, quick=True)  # the course model: no base field


@pytest.mark.parametrize("in_file, asked", [(None, ["--base", "other-gpt.pt"]), ("other-gpt.pt", []),
                                            ("other-gpt.pt", ["--base", "third-gpt.pt"])])
def test_screens_of_two_base_models_are_refused_in_one_file_before_any_training(screens, tmp_path, in_file, asked):
    out = tmp_path / "screens.json"
    row = {**_entry(0.5, 0.745, 0.35, 0.285, 0.52, n=0), **({"base": {"checkpoint": in_file}} if in_file else {})}
    out.write_text(json.dumps({"rule": screens.RULE, "screens": [row]}))
    with pytest.raises(SystemExit, match="another base model"):
        screens.main(["--n", "0", "--out", str(out), *asked])  # would train for minutes if not refused first
    assert json.loads(out.read_text())["screens"] == [row]
