"""The pretraining benchmark's protocol (benchmarks/pretrain_cpu.py): the tuning/reporting split, the
scoring of exactly the same characters by both models, the pass cap, the stopping rule and the
paired per-seed ratios of the report."""

import math

import pytest
import torch

from utils.pretrain import BABY_GPT, COURSE_RECIPE, Recipe


def _play(n_speeches: int) -> str:
    return "".join(f"SPEAKER {i % 7}:\nLine number {i} of the play, with words.\nAnd one more.\n\n"
                   for i in range(n_speeches))


def test_split_gives_disjoint_halves_that_start_with_a_speech(bench):
    text = _play(400)
    train, tune, report = bench.split_text(text)
    n = int(0.9 * len(text))
    assert train == text[:n]
    held = text[n:]
    assert held.endswith(tune + report)  # contiguous, in order, nothing after the reporting half
    assert len(held) - len(tune) - len(report) == held.find("\n\n") + 2  # only a cut speech's end is unused
    assert tune.startswith("SPEAKER") and report.startswith("SPEAKER")
    assert abs(len(tune) - len(report)) < len(held) // 4  # two halves


def test_split_refuses_text_without_blank_lines(bench):
    with pytest.raises(ValueError, match="blank lines"):
        bench.split_text("a" * 1000)


@pytest.mark.parametrize("recipe", [BABY_GPT, COURSE_RECIPE.with_(vocab_size=300)])
def test_both_tokenizations_score_exactly_the_characters_of_each_half(bench, recipe):
    text = _play(300)
    train, tune, report = bench.split_text(text)
    train_ids, scored, vocab, enc, dec = bench.encode(recipe, train, {"tune": tune, "report": report}, text)
    assert vocab == (len(set(text)) if recipe.vocab_size is None else 300)
    for name, half in (("tune", tune), ("report", report)):
        ids = scored[name]
        if recipe.vocab_size is None:
            assert len(ids) == len(half) + 1  # the given newline, then one prediction per character
        assert ids.dim() == 1 and ids.dtype == torch.long
        assert dec(ids[1:].tolist()) == half and dec(ids[:1].tolist()) == "\n"
    assert enc("\n" + report) == scored["report"].tolist()


def test_reporting_half_parts_cut_where_the_unseen_play_starts(bench):
    seen, unseen = "BAPTISTA:\nWell.\n\n", "Master:\nBoatswain!\n\nBoatswain:\nHere, master.\n"
    parts = bench.report_parts(seen + unseen)
    assert parts == {"seen play": seen, "unseen play": unseen}
    assert bench.report_parts("no such play\n") == {}


def test_sliding_window_score_equals_the_sum_of_per_token_nll_with_full_context(bench):
    from utils.model import GPT

    torch.manual_seed(0)
    model = GPT(BABY_GPT.with_(block_size=8, n_layer=1, n_embd=16, n_head=2).model_config(11)).eval()
    ids = torch.randint(11, (30,))
    bpc = bench.score_bpc(model, ids, n_chars=29)
    # reference: each token t >= 1 predicted from the (up to 8) tokens before it, but windows move by 4:
    # the first window scores targets 1..8 with all context it has; later windows score only their last 4
    nll, done, s = 0.0, 0, 0
    with torch.no_grad():
        while done < 29:
            length = min(8, 29 - s)
            logits = model(ids[s:s + length][None])[0][0].log_softmax(-1)
            for j in range(length):
                if s + j + 1 > done:
                    nll -= logits[j, ids[s + j + 1]].item()
            done, s = s + length, s + 4
    assert bpc == pytest.approx(nll / 29 / math.log(2), rel=1e-5)


def test_pass_cap_turns_into_steps(bench):
    recipe = COURSE_RECIPE.with_(max_passes=2.0, batch_size=4, block_size=9)
    assert bench.max_steps_for(recipe, 1001) == math.ceil(2 * (1000 // 10) / 4)  # 100 windows a pass -> 50 steps
    assert bench.max_steps_for(COURSE_RECIPE.with_(max_passes=None), 1001) == 10**9


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "3"])
def test_recipe_refuses_a_bad_pass_cap(bad):
    with pytest.raises(ValueError, match="max_passes must be None or a number of passes > 0"):
        Recipe(max_passes=bad)


def test_run_keeps_the_best_tuning_checkpoint_within_the_budget(bench):
    torch.set_num_threads(1)
    text = _play(1500)
    recipe = BABY_GPT.with_(n_layer=1, n_embd=32, n_head=2, block_size=32, warmup_steps=2)
    r = bench.run("tiny", recipe, budget=3.0, seed=0, text=text)
    assert r["wall_s"] <= 3.0 * 1.15  # setup, the checks and training share the budget
    steps = [s for s, _, _ in r["checks"]]
    assert steps[0] == 0 and steps[-1] == r["steps"] and steps == sorted(steps)
    best = min(c[2] for c in r["checks"][1:])
    # the kept checkpoint is a best one (the stored scores are rounded to 4 decimals, so two checks can tie)
    assert r["tune_bpc"] == best and (r["best_step"], best) in [(s, b) for s, _, b in r["checks"][1:]]
    assert r["report_bpc"] is not None and 0 < r["report_bpc"] < 8
    assert r["chars_per_s"] == pytest.approx(r["tokens_per_s"] * r["chars_per_token"], rel=0.01)


def test_report_pairs_ratios_by_seed(bench):
    def run(row, seed, bpc):
        return {"row": row, "seed": seed, "report_bpc": bpc, "steps": 10, "passes": 1.0, "chars_per_s": 100,
                "wall_s": 180.0, "best_step": 10, "precision": "fp32", "params": 1, "vocab": 65}
    data = {"runs": [run("baby GPT, 2 threads", 0, 2.0), run("ours, 2 threads", 0, 1.6),
                     run("baby GPT, 2 threads", 1, 2.5), run("ours, 2 threads", 1, 2.25),
                     run("ours, 2 threads", 2, 1.0)]}  # seed 2 has no baby run: no ratio
    summary = bench.summarize(data)
    r = summary["ratios"]["2 threads, ours as run here (bf16 where fast)"]
    assert r["per_seed"] == [(0, 0.8), (1, 0.9)]
    mean, std, lo, hi = r["stats"]
    assert (mean, lo, hi) == pytest.approx((0.85, 0.8, 0.9)) and std == pytest.approx(0.0707, abs=1e-4)
    assert summary["rows"]["ours, 2 threads"]["n"] == 3


# ---------------------------------------------------------------------------------------------
# BPE-dropout: the training text re-segmented at every pass
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_bpe():
    from utils.tokenizer import BPETokenizer

    text = _play(200)
    return BPETokenizer.train(text, 300), text


def test_dropout_streams_decode_to_the_training_text_and_differ_between_passes(bench, small_bpe):
    tok, text = small_bpe
    segs = bench.DropoutSegmentations(tok, text, 0.1, variants=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    a, b = segs.stream(gen), segs.stream(gen)
    assert tok.decode(a.tolist()) == text and tok.decode(b.tolist()) == text
    assert a.tolist() != b.tolist()  # a new segmentation for each pass
    ordinary = len(tok.encode(text))
    assert len(a) > ordinary and segs.tokens_per_pass > ordinary  # merges skipped: more tokens per pass
    assert abs(len(a) - segs.tokens_per_pass) < 0.05 * segs.tokens_per_pass


def test_dropout_at_p0_streams_the_ordinary_encoding(bench, small_bpe):
    tok, text = small_bpe
    segs = bench.DropoutSegmentations(tok, text, 0.0, variants=2)
    assert segs.stream(torch.Generator().manual_seed(3)).tolist() == tok.encode(text)
    assert segs.tokens_per_pass == len(tok.encode(text))


def test_dropout_segmentations_are_reproducible_by_seed(bench, small_bpe):
    tok, text = small_bpe
    one = bench.DropoutSegmentations(tok, text, 0.1, variants=3, seed=5).stream(torch.Generator().manual_seed(1))
    two = bench.DropoutSegmentations(tok, text, 0.1, variants=3, seed=5).stream(torch.Generator().manual_seed(1))
    assert torch.equal(one, two)
    with pytest.raises(ValueError, match="variants must be an int >= 1"):
        bench.DropoutSegmentations(tok, text, 0.1, variants=0)


def test_resegmenting_sampler_covers_each_pass_once_and_draws_a_new_stream_per_pass(bench, small_bpe):
    tok, text = small_bpe
    segs = bench.DropoutSegmentations(tok, text, 0.1, variants=4, seed=0)
    sampler = bench.ResegmentingSampler(segs, batch_size=5, block_size=8, generator=torch.Generator().manual_seed(0))
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    first = sampler.data
    windows = (len(first) - 9) // 9  # at least this many windows in one pass
    for _ in range(windows // 5 + 2):
        sampler.next_batch()
    assert sampler.passes == 1 and sampler.data is not first and sampler.tokens_drawn == len(first) + len(sampler.data)


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.1", float("nan")])
def test_recipe_refuses_a_bad_bpe_dropout(bad):
    with pytest.raises(ValueError, match="bpe_dropout must be a probability in \\[0, 1\\)"):
        Recipe(bpe_dropout=bad)
    with pytest.raises(ValueError, match="needs a BPE tokenizer"):
        BABY_GPT.with_(bpe_dropout=0.1)


def test_run_with_bpe_dropout_trains_on_resegmented_passes_within_the_budget(bench):
    torch.set_num_threads(1)
    recipe = COURSE_RECIPE.with_(vocab_size=300, n_layer=1, n_embd=32, n_head=2, block_size=32, warmup_steps=2,
                                 bpe_dropout=0.1)
    r = bench.run("tiny dropout", recipe, budget=3.0, seed=0, text=_play(1500))
    assert r["wall_s"] <= 3.0 * 1.15
    d = r["bpe_dropout"]
    assert d["p"] == 0.1 and d["text_passes"] >= 1
    assert r["chars_per_token"] < d["chars_per_token_deterministic"]  # the passes' tokens are shorter
    assert r["report_bpc"] is not None and 0 < r["report_bpc"] < 8


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.9"])
def test_recipe_refuses_a_bad_ema_decay(bad):
    with pytest.raises(ValueError, match="ema must be a decay in \\[0, 1\\)"):
        Recipe(ema=bad)


def test_run_with_ema_scores_and_keeps_the_averaged_weights(bench):
    torch.set_num_threads(1)
    recipe = BABY_GPT.with_(n_layer=1, n_embd=32, n_head=2, block_size=32, warmup_steps=2, ema=0.9)
    r = bench.run("tiny ema", recipe, budget=3.0, seed=0, text=_play(1500))
    assert r["wall_s"] <= 3.0 * 1.15
    best = min(c[2] for c in r["checks"][1:])
    # the kept checkpoint is a best one (the stored scores are rounded to 4 decimals, so two checks can tie)
    assert r["tune_bpc"] == best and (r["best_step"], best) in [(s, b) for s, _, b in r["checks"][1:]]
    assert r["report_bpc"] is not None and 0 < r["report_bpc"] < 8


# ---------------------------------------------------------------------------------------------
# The OpenMP wait policy of the runs (--omp-wait-policy)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("before", [None, "ACTIVE"])
def test_omp_environment_gives_each_policy_then_restores_the_variable(bench, monkeypatch, before):
    import os

    if before is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", before)
    with bench.omp_environment("passive"):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ.get("OMP_WAIT_POLICY") == before
    with bench.omp_environment("default"):
        assert "OMP_WAIT_POLICY" not in os.environ  # OpenMP's own default: no variable at all
    assert os.environ.get("OMP_WAIT_POLICY") == before


def test_run_slot_refuses_an_unknown_wait_policy_before_starting_a_run(bench):
    with pytest.raises(ValueError, match="omp_wait_policy must be one of"):
        bench.run_slot([("ours, 2 threads", COURSE_RECIPE, 2)], 180.0, 0, omp_wait_policy="spin")


def test_a_run_whose_torch_loaded_with_another_policy_is_rejected(bench):
    default = {"row": "ours, 2 threads", "omp_wait_policy": "OpenMP default (torch was imported before utils.runtime)"}
    passive = {"row": "ours, 2 threads", "omp_wait_policy": "PASSIVE"}
    bench.check_run_policy("default", default)
    bench.check_run_policy("passive", passive)
    with pytest.raises(RuntimeError, match="asked for omp_wait_policy='default'.*'PASSIVE'"):
        bench.check_run_policy("default", passive)
    with pytest.raises(RuntimeError, match="asked for omp_wait_policy='passive'"):
        bench.check_run_policy("passive", default)


def test_next_refuses_rows_that_are_not_protocol_rows(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--next", "1", "--rows", "ours, 3 threads", "--out", str(tmp_path / "r.json")])
    assert "not protocol rows: ['ours, 3 threads']" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_next_refuses_to_mix_wait_policies_in_one_results_file(bench, tmp_path, capsys):
    import json

    out = tmp_path / "r.json"
    out.write_text(json.dumps({"budget_s": 180.0, "omp_wait_policy": "passive", "runs": [{"row": "x", "seed": 0}]}))
    with pytest.raises(SystemExit):
        bench.main(["--next", "1", "--omp-wait-policy", "default", "--out", str(out)])
    assert "holds runs with --omp-wait-policy passive" in capsys.readouterr().err


def test_candidate_rows_change_only_the_named_fields_and_pair_with_the_baby(bench):
    rows, slots, ratios = bench.protocol("n_embd=128")
    cand2, cand1 = rows["ours n_embd=128, 2 threads"], rows["ours n_embd=128, 1 thread"]
    assert cand2 == (bench.COURSE_RECIPE.with_(n_embd=128), 2) and cand1 == (bench.COURSE_RECIPE.with_(n_embd=128), 1)
    assert rows["ours, 2 threads"] == bench.ROWS["ours, 2 threads"]  # the course recipe's rows stay
    flat = [row for slot in slots for row in slot]
    assert len(flat) == len(set(flat))  # every row runs once per seed
    assert ("baby GPT, 1 thread", "ours n_embd=128, 1 thread") in slots  # side by side, one core each
    assert ("2 threads, ours n_embd=128", "ours n_embd=128, 2 threads", "baby GPT, 2 threads") in ratios
    assert bench.protocol(None) == (bench.ROWS, bench.SLOTS, bench.RATIOS)


def test_report_of_a_candidate_file_pairs_its_runs_with_the_baby(bench):
    runs = [{"row": row, "seed": seed, "report_bpc": bpc, "steps": 1, "passes": 1.0, "chars_per_s": 1, "wall_s": 1.0,
             "best_step": 1, "precision": "fp32", "params": 1, "vocab": 1}
            for seed, (baby, cand) in enumerate([(2.6, 2.2), (2.5, 2.25)])
            for row, bpc in (("baby GPT, 2 threads", baby), ("ours n_embd=128, 2 threads", cand))]
    ratios = bench.summarize({"runs": runs, "candidate": "n_embd=128"})["ratios"]
    assert ratios["2 threads, ours n_embd=128"]["per_seed"] == [(0, round(2.2 / 2.6, 4)), (1, 0.9)]
    assert "2 threads, ours n_embd=128" not in bench.summarize({"runs": runs})["ratios"]  # no candidate: not a row


def test_candidate_needs_its_own_results_file_and_a_known_field(bench, tmp_path, capsys):
    import json

    with pytest.raises(SystemExit):
        bench.main(["--next", "1", "--candidate", "n_embd=128"])
    assert "--candidate goes with --next and --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--next", "1", "--candidate", "width=128", "--out", str(tmp_path / "r.json")])
    assert "--candidate 'width=128'" in capsys.readouterr().err
    out = tmp_path / "c.json"
    out.write_text(json.dumps({"budget_s": 180.0, "candidate": "n_embd=96", "runs": [{"row": "x", "seed": 0}]}))
    with pytest.raises(SystemExit):
        bench.main(["--next", "1", "--candidate", "n_embd=128", "--out", str(out)])
    assert "holds runs of candidate 'n_embd=96'" in capsys.readouterr().err


def _four_plays() -> str:
    """A play, Measure for Measure (opening with the Duke's first speech), the Shrew (opening with Sly's) and, in
    the reporting half, The Tempest (opening with the Master's): the landmarks of --split heldout-play."""
    first = _play(300)
    measure = "DUKE VINCENTIO:\nEscalus.\n\n" + "".join(f"ANGELO:\nMeasure line {i}.\n\n" for i in range(250))
    shrew = "SLY:\nI'll pheeze you, in faith.\n\n" + "".join(f"BAPTISTA:\nShrew line {i}.\n\n" for i in range(700))
    text = first + measure + shrew
    tempest = "Master:\nBoatswain!\n\n" + "".join(f"PROSPERO:\nTempest line {i}.\n\n" for i in range(40))
    return text + tempest


def test_heldout_play_split_cuts_the_whole_play_from_training_and_tunes_on_its_opening_after_seen_text(bench):
    text = _four_plays()
    train, tune, report = bench.split_text(text)
    parts = bench.report_parts(report)
    assert parts and "Master:" in parts["unseen play"]
    h_train, h_tune, h_report = bench.split_text_heldout_play(text)
    assert h_report == report  # the reporting half is untouched
    assert "ANGELO" not in h_train and "DUKE VINCENTIO" not in h_train  # no line of the held-out play is trained on
    assert h_train == train.replace(train[train.index("DUKE VINCENTIO"):train.index("SLY:")], "")
    seen, opening = h_tune.split("DUKE VINCENTIO:", 1)
    assert tune.startswith(seen) and seen.endswith("\n\n")  # the tuning half's start, cut at a blank line
    assert len(parts["seen play"]) <= len(seen) < len(parts["seen play"]) + 40
    assert len(parts["unseen play"]) <= len("DUKE VINCENTIO:" + opening) < len(parts["unseen play"]) + 40
    assert opening.startswith("\nEscalus.\n\nANGELO:") and opening.endswith("\n\n")


def test_heldout_play_split_refuses_a_text_without_its_plays(bench):
    with pytest.raises(ValueError, match="Measure for Measure"):
        bench.split_text_heldout_play(_play(400).replace("SPEAKER 0", "Master"))


def test_heldout_play_split_refuses_a_play_too_short_for_the_unseen_part_and_run_an_unknown_split(bench):
    text = _four_plays()
    short = text.replace("".join(f"ANGELO:\nMeasure line {i}.\n\n" for i in range(20, 250)), "")
    with pytest.raises(ValueError, match="too short"):
        bench.split_text_heldout_play(short)
    with pytest.raises(ValueError, match="split must be one of"):
        bench.run("tiny", BABY_GPT, budget=1.0, seed=0, text=text, split="halfs")


def test_a_run_on_the_heldout_play_split_records_it_and_the_protocol_refuses_the_split(bench, capsys):
    torch.set_num_threads(1)
    recipe = BABY_GPT.with_(n_layer=1, n_embd=32, n_head=2, block_size=32, warmup_steps=2)
    r = bench.run("tiny", recipe, budget=3.0, seed=0, text=_four_plays(), split="heldout-play", score_report=False)
    assert r["split"] == "heldout-play" and r["tune_bpc"] < 8
    assert "split" not in bench.run("tiny", recipe, budget=3.0, seed=0, text=_four_plays(), score_report=False)
    with pytest.raises(SystemExit):
        bench.main(["--next", "1", "--split", "heldout-play"])
    assert "--split goes with --explore" in capsys.readouterr().err


def test_explore_rows_read_true_and_false_for_bool_fields_and_refuse_anything_else(bench):
    assert bench.explore_recipe("ours smear=True threads=2")[0].smear is True
    assert bench.explore_recipe("ours compile=False threads=1") == (COURSE_RECIPE.with_(compile=False), 1)
    with pytest.raises(ValueError, match="smear must be True or False, got 'false'"):
        bench.explore_recipe("ours smear=false")  # bool("false") would have been True


def test_the_pretokenizer_of_a_recipe_chooses_the_bpe_split_and_bad_names_are_refused(bench):
    from utils.pretokenize import CAPS_SPLIT_PATTERN, GPT4_SPLIT_PATTERN

    assert COURSE_RECIPE.split_pattern == GPT4_SPLIT_PATTERN
    caps = COURSE_RECIPE.with_(vocab_size=300, pretokenizer="gpt4-caps-split")
    assert caps.split_pattern == CAPS_SPLIT_PATTERN
    with pytest.raises(ValueError, match="pretokenizer must be one of \\['gpt4', 'gpt4-caps-split'\\]"):
        Recipe(pretokenizer="gpt2")
    with pytest.raises(TypeError, match="Recipe: GPTConfig.smear must be True or False"):
        Recipe(smear="yes")
    text = _play(300)
    train, tune, report = bench.split_text(text)
    *_, dec = bench.encode(caps, train, {"tune": tune}, text)
    plain_ids, _, _, _, plain_dec = bench.encode(COURSE_RECIPE.with_(vocab_size=300), train, {}, text)
    caps_ids = bench.encode(caps, train, {}, text)[0]
    # the speaker names start their lines, so the caps split spells them in letters: no token holds two capitals
    assert not any(sum(ch.isupper() for ch in dec([int(i)])) > 1 for i in caps_ids.unique())
    assert any(sum(ch.isupper() for ch in plain_dec([int(i)])) > 1 for i in plain_ids.unique())


def test_caps_split_spells_a_capitalised_word_at_a_line_start_but_keeps_one_after_a_space():
    from utils.pretokenize import CAPS_SPLIT_PATTERN, split_text

    assert split_text("\n\nPROSPERO:\nWhy, AND I", CAPS_SPLIT_PATTERN) == [
        "\n\n", "P", "R", "O", "S", "P", "E", "R", "O", ":\n", "Why", ",", " AND", " I"]


def test_run_hands_back_the_model_it_scored_and_its_tokenizer_when_asked(bench):
    torch.set_num_threads(1)
    recipe = COURSE_RECIPE.with_(vocab_size=300, n_layer=1, n_embd=32, n_head=2, block_size=32, warmup_steps=2)
    text, keep = _play(1500), {}
    r = bench.run("tiny keep", recipe, budget=3.0, seed=0, text=text, keep=keep)
    report = bench.split_text(text)[2]
    ids = torch.tensor(keep["encode"]("\n" + report))
    assert keep["decode"](ids[1:].tolist()) == report
    assert round(bench.score_bpc(keep["model"], ids, len(report)), 4) == r["report_bpc"]
