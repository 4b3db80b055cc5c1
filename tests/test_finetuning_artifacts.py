"""Saved fine-tuned models (data/finetuned/, tools/finetune.py) and the reading tasks of instruction tuning."""

import pytest
import torch

from utils.checkpoint import CheckpointError, weights_sha256
from utils.finetuning import (GENRE_CLASSES, load_genre_classifier, load_instruct_model, prepare_method,
                              save_finetuned, trained_tensors)
from utils.instruct import (EXTRACTIVE_TASKS, INSTRUCT_TEMPLATE, instruction_data, join_names, names_f1,
                            prepare_instruct_model, split_names)
from utils.pretrain import CHECKPOINT_PATH, load_course_model


def _randomize(model, seed=3, new_rows_from=None):
    """Move every trained tensor (of the embedding only the new rows) away from its start."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                target = p[new_rows_from:] if name.endswith("wte.weight") and new_rows_from else p
                target.add_(torch.randn(target.shape, generator=g) * 0.05)


def _genre_file(tmp_path):
    model, tok = load_course_model()
    sha = weights_sha256(model.state_dict())
    clf = prepare_method(model, "lora-r8", 3, pooling="mean")
    _randomize(clf)
    recipe = {"method": "lora-r8", "pooling": "mean", "classes": list(GENRE_CLASSES)}
    path = tmp_path / "genre.pt"
    save_finetuned(path, clf, "genre-classifier", recipe, sha, metadata={"test_accuracy": 0.5})
    return path, clf.eval(), tok


def test_a_saved_genre_classifier_reloads_with_identical_logits_and_holds_only_trained_tensors(tmp_path):
    path, clf, tok = _genre_file(tmp_path)
    loaded, tok2 = load_genre_classifier(path=path)
    ids = torch.tensor([tok.encode("O, what a rogue and peasant slave am I!")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), clf(ids))
    assert loaded.finetune_metadata["test_accuracy"] == 0.5
    assert not any(p.requires_grad for p in loaded.parameters())
    names = list(trained_tensors(clf))
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    # LoRA r=8 on q, v + head: a small fraction of the 8.7 MB course model file
    assert path.stat().st_size < 0.05 * CHECKPOINT_PATH.stat().st_size


def test_a_saved_instruct_model_reloads_with_identical_logits_including_the_new_token_rows(tmp_path):
    model, tok = load_course_model()
    sha = weights_sha256(model.state_dict())
    tok2 = prepare_instruct_model(model, tok, "lora")
    V = tok.vocab_size
    _randomize(model, new_rows_from=V)
    old_rows = load_course_model()[0].wte.weight
    assert torch.equal(model.wte.weight[:V], old_rows)  # only the new rows may differ
    path = tmp_path / "instruct.pt"
    save_finetuned(path, model, "instruct", {"method": "lora"}, sha, new_rows_from=V)
    loaded, tok3 = load_instruct_model(path=path)
    assert tok3.special_tokens == tok2.special_tokens
    ids = torch.tensor([tok2.encode("<|user|>\nWho speaks first?<|end|>\n<|assistant|>\n", allowed_special="all")])
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model.eval()(ids)[0])
    saved = dict(trained_tensors(model, new_rows_from=V))
    assert saved["wte.weight"].shape == (3, model.config.n_embd)


def test_the_new_token_rows_train_and_the_old_rows_stay_exactly_unchanged():
    model, tok = load_course_model()
    prepare_instruct_model(model, tok, "lora")
    V = tok.vocab_size
    before = model.wte.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x = torch.tensor([[5, V, 7, V + 1, V + 2, 9]])
    for _ in range(2):
        _, loss = model(x, x.roll(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(model.wte.weight[:V], before[:V])
    assert not torch.equal(model.wte.weight[V:], before[V:])


def test_loaders_name_make_finetune_when_the_file_is_missing_corrupt_or_for_another_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="make finetune"):
        load_genre_classifier(path=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="make finetune"):
        load_instruct_model(path=tmp_path / "nope.pt")
    path, _, _ = _genre_file(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="make finetune"):
        load_genre_classifier(path=bad)
    with pytest.raises(CheckpointError, match="not a 'instruct'|make finetune"):
        load_instruct_model(path=path)  # a genre file is not an instruct model
    model, _ = load_course_model()
    clf = prepare_method(model, "lora-r8", 3)
    other = tmp_path / "other.pt"
    save_finetuned(other, clf, "genre-classifier", {"method": "lora-r8", "pooling": "mean",
                                                     "classes": list(GENRE_CLASSES)}, "0" * 64)
    with pytest.raises(CheckpointError, match="another course model.*make finetune"):
        load_genre_classifier(path=other)


def test_the_committed_finetuned_models_load_and_answer():
    clf, tok = load_genre_classifier()
    assert clf.finetune_metadata["recipe"]["method"] == "lora-r8"
    ids = torch.tensor([tok.encode("My liege, the French are bravely in their battles set")])
    with torch.no_grad():
        assert clf(ids).shape == (1, 3)
    model, tok2 = load_instruct_model()
    assert {"<|user|>", "<|assistant|>", "<|end|>"} <= set(tok2.special_tokens)
    from utils.instruct import answer

    out = answer(model, tok2, INSTRUCT_TEMPLATE, "Who speaks first in this passage?",
                 "IAGO:\nI am not what I am.\nRODERIGO:\nWhat a full fortune does the thick-lips owe")
    assert isinstance(out, str) and out
    assert set(model.finetune_metadata["held_out_scores"]) >= set(EXTRACTIVE_TASKS)


@pytest.fixture(scope="module")
def corpus():
    from utils.data import load_corpus

    return load_corpus()


def test_reading_tasks_have_their_answer_in_the_passage(corpus):
    for e in instruction_data(corpus, "test", n_per_task=30, seed=2, tasks=EXTRACTIVE_TASKS):
        tags = [line[:-1] for line in e.input.split("\n") if line.endswith(":") and line[:-1] in e.input]
        speakers = list(dict.fromkeys(t for t in tags))
        if e.task == "first_speaker":
            assert e.input.startswith(e.response + ":\n")
        elif e.task == "speakers":
            assert split_names(e.response) == [s.upper() for s in speakers]
        else:  # line_speaker: the line is in the speech under the answer's tag
            line = e.instruction.split('"')[1]
            speech = e.input.split(e.response + ":\n", 1)[1].split(":\n")[0]
            assert line in speech
            assert e.response in e.choices and len(e.choices) == 2


def test_renamed_speakers_replace_every_tag_consistently_and_never_keep_the_real_name(corpus):
    plain = instruction_data(corpus, "train", n_per_task=20, seed=4, tasks=("first_speaker",))
    renamed = instruction_data(corpus, "train", n_per_task=20, seed=4, tasks=("first_speaker",), rename_speakers=True)
    assert len(plain) == len(renamed)
    real_tags = {e.response for e in plain}
    assert sum(e.response in real_tags for e in renamed) < len(renamed) // 2
    for e in renamed:
        assert e.input.startswith(e.response + ":\n") and e.response in e.choices


def test_names_f1_and_join_split_names():
    assert join_names(["A"]) == "A" and join_names(["A", "B", "C"]) == "A, B and C"
    assert split_names("Don Pedro and BENEDICK") == ["DON PEDRO", "BENEDICK"]
    assert names_f1("BENEDICK and DON PEDRO", "DON PEDRO and BENEDICK") == 1.0
    assert names_f1("BENEDICK", "DON PEDRO and BENEDICK") == pytest.approx(2 / 3)
    assert names_f1("IAGO", "OTHELLO") == 0.0


def test_made_up_speaker_names_look_like_tags_and_vary():
    import random

    from utils.instruct import _made_up_name

    rng = random.Random(0)
    names = [_made_up_name(rng) for _ in range(400)]
    assert all(n and ":" not in n and "\n" not in n and n == n.strip() for n in names)
    # shaped like the corpus's tags: mostly one upper-case word, some with a title or two words, some capitalised
    one_word = sum(n.isupper() and " " not in n for n in names) / len(names)
    assert 0.4 < one_word < 0.7
    assert any(n.startswith("SIR ") or n.startswith("DUKE OF ") for n in names)
    assert any(not n.isupper() and n[0].isupper() for n in names)
    assert len(set(names)) > 0.95 * len(names)  # random letters, not a small set of syllables


def test_instruct_training_set_has_the_requested_counts_and_rejects_unknown_tasks(corpus):
    from collections import Counter

    from utils.instruct import TASKS, instruct_training_set

    ex = instruct_training_set(corpus, 12, {"line_speaker": 30, "continue": 0}, seed=3)
    counts = Counter(e.task for e in ex)
    assert counts == {t: (30 if t == "line_speaker" else 12) for t in TASKS if t != "continue"}
    assert {e.play for e in ex} <= {p.play for p in corpus.passages if p.split == "train"}
    assert [e.task for e in ex] != sorted(e.task for e in ex)  # shuffled
    with pytest.raises(ValueError, match="task_counts has unknown task"):
        instruct_training_set(corpus, 12, {"translate": 5})


def test_the_committed_seed_spread_is_of_the_saved_models_recipe_and_includes_its_scores():
    import json
    import statistics
    from pathlib import Path

    from utils.instruct import INSTRUCT_RECIPE, INSTRUCT_SEEDS

    res = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" /
                      "finetuning_instruct_seeds.json").read_text())
    assert res["recipe"] == INSTRUCT_RECIPE and res["seeds"] == list(INSTRUCT_SEEDS) and len(res["seeds"]) >= 3
    model, _ = load_instruct_model()
    meta = model.finetune_metadata
    assert meta["recipe"] == INSTRUCT_RECIPE
    saved = res["per_seed"][str(INSTRUCT_RECIPE["seed"])]
    for task, d in meta["held_out_scores"].items():  # seed 0 of the spread is the saved model, same items
        assert saved[task]["exact_match"] == pytest.approx(d["exact_match"])
    for task, d in res["summary"].items():
        values = [res["per_seed"][str(s)][task]["exact_match"] for s in res["seeds"]]
        assert d["exact_match"]["mean"] == pytest.approx(statistics.mean(values))
        assert d["exact_match"]["min"] <= d["exact_match"]["mean"] <= d["exact_match"]["max"]
    assert res["baselines"]["line_speaker"]["chance"] == pytest.approx(0.5)
    assert all(b["n"] == INSTRUCT_RECIPE["test_per_task"] for b in res["baselines"].values())


def test_balanced_genre_examples_have_equal_counts_per_genre_and_the_flag_must_be_a_bool(corpus):
    from collections import Counter

    plain = instruction_data(corpus, "train", n_per_task=300, seed=5, tasks=("genre",))
    balanced = instruction_data(corpus, "train", n_per_task=300, seed=5, tasks=("genre",), balance_genres=True)
    # the training plays are about half histories: drawn in proportion, the genres are far from equal
    assert max(Counter(e.response for e in plain).values()) > 130
    assert Counter(e.response for e in balanced) == {"comedy": 100, "history": 100, "tragedy": 100}
    assert len({e.input for e in balanced}) == 300  # no passage twice
    # the other tasks do not change with the flag
    a = instruction_data(corpus, "train", n_per_task=20, seed=5, tasks=("first_speaker",))
    b = instruction_data(corpus, "train", n_per_task=20, seed=5, tasks=("first_speaker",), balance_genres=True)
    assert a == b
    with pytest.raises(ValueError, match="balance_genres must be True or False"):
        instruction_data(corpus, "train", n_per_task=30, tasks=("genre",), balance_genres="yes")


def test_example_mean_loss_weighs_every_example_equally_whatever_its_answer_length():
    from utils.instruct import example_mean_loss
    from utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(0, 40, (3, 8))
    y = torch.randint(0, 40, (3, 8))
    y[:, :4] = -100
    _, token_mean = model(x, y)  # the default: mean over all targets
    assert example_mean_loss(model, (x, y)).item() == pytest.approx(token_mean.item(), rel=1e-5)  # equal lengths
    y[0, 4:7] = -100  # example 0: one target; examples 1 and 2: four each
    logp = model(x)[0].log_softmax(-1)
    per_example = [-logp[i][y[i] != -100].gather(-1, y[i][y[i] != -100][:, None]).mean() for i in range(3)]
    expected = sum(per_example) / 3
    assert example_mean_loss(model, (x, y)).item() == pytest.approx(expected.item(), rel=1e-5)
    assert model(x, y)[1].item() != pytest.approx(expected.item(), rel=1e-3)  # the token mean weighs it 1/9, not 1/3
    y[2] = -100  # an example without targets does not count
    expected2 = (per_example[0] + per_example[1]) / 2
    assert example_mean_loss(model, (x, y)).item() == pytest.approx(expected2.item(), rel=1e-5)
    with pytest.raises(ValueError, match="no target"):
        example_mean_loss(model, (x, torch.full_like(y, -100)))


class _Stop(Exception):
    pass


def _finetune_tool():
    """tools/finetune.py as a module (it is a script, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("finetune_tool", Path(__file__).resolve().parents[1] / "tools" / "finetune.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _record_training(monkeypatch) -> dict:
    """Replaces train_instruct_model by one that records its arguments and stops (raises _Stop)."""
    import utils.instruct

    seen = {}

    def fake_train(**kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(utils.instruct, "train_instruct_model", fake_train)
    return seen


def test_tools_finetune_trains_the_instruct_recipe_with_every_one_of_its_options(monkeypatch):
    from utils.instruct import INSTRUCT_RECIPE

    tool, seen = _finetune_tool(), _record_training(monkeypatch)
    with pytest.raises(_Stop):
        tool._train_instruct(INSTRUCT_RECIPE, seed=7)
    r = INSTRUCT_RECIPE
    assert seen["seed"] == 7 and seen["method"] == r["method"] and seen["n_per_task"] == r["n_per_task"]
    assert seen["task_counts"] == r["task_counts"] and seen["epochs"] == r["epochs"] and seen["lr"] == r["lr"]
    assert seen["balance_genres"] is r.get("balance_genres", False)
    assert seen["loss_per_example"] is r.get("loss_per_example", False)
    assert seen["genre_stage"] == r.get("genre_stage") and seen["line_stage"] == r.get("line_stage")
    # an option of the recipe that the tool would drop on the floor fails here
    passed = {"method", "n_per_task", "task_counts", "epochs", "lr", "balance_genres", "loss_per_example", "genre_stage",
              "line_stage"}
    assert set(r) - passed <= {"seed", "rename_speakers", "test_per_task", "test_seed"}


def test_tools_finetune_base_trains_on_the_given_base_and_refuses_a_missing_one(monkeypatch, tmp_path):
    from utils.instruct import INSTRUCT_RECIPE

    tool = _finetune_tool()
    with pytest.raises(FileNotFoundError, match="--n-layer"):
        tool.instruct_on_base(tmp_path / "missing-gpt.pt", out=tmp_path / "out.json")
    seen = _record_training(monkeypatch)
    with pytest.raises(_Stop):
        tool._train_instruct(INSTRUCT_RECIPE, seed=0, base=tmp_path / "big-gpt.pt")
    assert seen["base"] == tmp_path / "big-gpt.pt"


def test_train_instruct_model_loads_its_base_from_the_given_checkpoint(monkeypatch):
    import utils.instruct
    import utils.pretrain

    asked = {}

    def fake_load(path=None, device=None):
        asked["path"] = path
        raise _Stop

    monkeypatch.setattr(utils.pretrain, "load_course_model", fake_load)
    with pytest.raises(_Stop):
        utils.instruct.train_instruct_model(base="data/checkpoints/other-gpt.pt")
    assert asked["path"] == "data/checkpoints/other-gpt.pt"


def test_a_genre_stage_draws_balanced_genres_anew_replays_each_other_task_and_trains_only_on_them(corpus):
    from collections import Counter

    from utils.instruct import genre_stage_set, instruct_training_set, run_genre_stage, train_instruct_model

    stage = {"n": 30, "replay": 4, "epochs": 1.0, "lr": 1e-4}
    ex = genre_stage_set(corpus, stage, seed=5)
    assert Counter(e.task for e in ex) == {"genre": 30, "first_speaker": 4, "line_speaker": 4, "speakers": 4, "continue": 4}
    assert Counter(e.response for e in ex if e.task == "genre") == {"comedy": 10, "history": 10, "tragedy": 10}
    first = [e for e in instruct_training_set(corpus, 0, {"genre": 30}, 5, balance_genres=True)]
    assert {e.input for e in ex if e.task == "genre"} != {e.input for e in first}  # not the first stage's draw
    assert {e.play for e in ex} <= {p.play for p in corpus.passages if p.split == "train"}
    model, tok = load_course_model()
    tok2 = prepare_instruct_model(model, tok, "full")
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    out, result = run_genre_stage(model, tok2, {"n": 6, "replay": 0, "epochs": 1.0, "lr": 1e-4}, seed=0, corpus=corpus)
    assert out is model and not model.training and result.steps == 1  # 6 examples, batches of 16: one step
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for bad, word in (({"n": 30}, "keys"), ({**stage, "n": 2}, "'n'"), ({**stage, "replay": -1}, "'replay'"),
                      ({**stage, "lr": 0}, "'lr'")):
        with pytest.raises(ValueError, match=word):
            genre_stage_set(corpus, bad)
    with pytest.raises(ValueError, match="genre_stage"):  # refused before any training
        train_instruct_model(genre_stage={"n": 30})


def test_a_line_stage_draws_renamed_line_speaker_examples_anew_replays_each_other_task_and_refuses_too_many(corpus):
    from collections import Counter

    from utils.instruct import line_stage_set, run_line_stage, train_instruct_model

    stage = {"n": 40, "replay": 3, "epochs": 1.0, "lr": 1e-4}
    both = line_stage_set(corpus, stage, seed=5)
    assert Counter(e.task for e in both) == {"line_speaker": 40, "first_speaker": 3, "speakers": 3, "continue": 3,
                                             "genre": 3}
    assert Counter(e.response for e in both if e.task == "genre") == {"comedy": 1, "history": 1, "tragedy": 1}
    ex = [e for e in both if e.task == "line_speaker"]
    assert {e.play for e in ex} <= {p.play for p in corpus.passages if p.split == "train"}
    mixed = instruction_data(corpus, "train", n_per_task=40, seed=5, tasks=("line_speaker",), rename_speakers=True)
    assert {e.input for e in ex} != {e.input for e in mixed}  # not the mixed stage's draw
    real = {p.speaker.strip() for p in corpus.passages if p.split == "train"}
    assert sum(e.response not in real for e in ex) >= 20  # renamed: most answers are made-up names
    assert all(e.response in e.choices and f"{e.response}:\n" in e.input for e in ex)
    with pytest.raises(ValueError, match="hold only"):
        line_stage_set(corpus, {**stage, "n": 10 ** 7})
    for bad, word in (({"n": 30}, "keys"), ({**stage, "n": 0}, "'n'"), ({**stage, "replay": -1}, "'replay'"),
                      ({**stage, "epochs": 0}, "'epochs'"), ({**stage, "lr": -1e-3}, "'lr'")):
        with pytest.raises(ValueError, match=word):
            line_stage_set(corpus, bad)
    with pytest.raises(ValueError, match="line_stage"):  # refused before any training
        train_instruct_model(line_stage={"n": 30})
    model, tok = load_course_model()
    tok2 = prepare_instruct_model(model, tok, "full")
    before = [p.detach().clone() for p in model.parameters()]
    out, result = run_line_stage(model, tok2, {"n": 6, "replay": 0, "epochs": 1.0, "lr": 1e-4}, seed=0, corpus=corpus)
    assert out is model and not model.training and result.steps == 1  # 6 examples, batches of 16: one step
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_instruct_model_runs_the_line_stage_first_then_the_mixed_stage_then_the_genre_stage(monkeypatch, corpus):
    import utils.instruct as I

    order = []
    monkeypatch.setattr(I, "run_line_stage", lambda m, t, st, seed, progress=False: order.append(("line", st, seed)))
    monkeypatch.setattr(I, "finetune_lm", lambda *a, **k: order.append(("mixed", len(a[1]))))
    monkeypatch.setattr(I, "run_genre_stage", lambda m, t, st, seed, progress=False: order.append(("genre", st, seed)))
    line = {"n": 5, "replay": 0, "epochs": 1.0, "lr": 1e-3}
    genre = {"n": 3, "replay": 0, "epochs": 1.0, "lr": 1e-4}
    examples = instruction_data(corpus, "train", n_per_task=4, tasks=("genre",))
    I.train_instruct_model(examples, method="full", seed=3, line_stage=line, genre_stage=genre)
    assert order == [("line", line, 3), ("mixed", len(examples)), ("genre", genre, 3)]


def test_tools_finetune_trains_the_line_adapter_recipe_with_the_given_seed_and_needs_every_seed(monkeypatch, tmp_path):
    import utils.instruct
    from utils.instruct import LINE_ADAPTER

    seen = {}

    def fake_train(model, tokenizer, adapter, seed, progress=False):
        seen.update(adapter=adapter, seed=seed, lora=any("lora_" in n for n, _ in model.named_parameters()))
        raise _Stop

    monkeypatch.setattr(utils.instruct, "train_line_adapter", fake_train)
    tool = _finetune_tool()
    with pytest.raises(_Stop):
        tool._train_line_adapter(5)
    assert seen == {"adapter": LINE_ADAPTER, "seed": 5, "lora": False}  # on the plain saved instruct model
    with pytest.raises(ValueError, match="seeds"):
        tool.write_line_adapter_seeds({0: {}}, {0: 1.0}, None, "a test", out=tmp_path / "seeds.json")
    assert not (tmp_path / "seeds.json").exists()


def test_the_committed_line_adapter_keeps_every_other_answer_and_its_seed_spread_includes_it():
    import json

    from utils.instruct import ADAPTER_TASKS, LINE_ADAPTER, LINE_ADAPTER_SEEDS, answer_routed, task_of

    model, tok2 = load_instruct_model(line_adapter=True)
    meta = model.adapter_metadata
    assert meta["recipe"] == LINE_ADAPTER
    saved = load_instruct_model()[0].finetune_metadata["held_out_scores"]
    routed = meta["test_routed"]
    assert set(routed) == set(saved)
    for t in saved:  # answered by the saved model itself: its held-out exact match, to the last digit
        if t not in ADAPTER_TASKS:
            assert routed[t]["exact_match"] == saved[t]["exact_match"], t
    tool = _finetune_tool()
    spread = json.loads(tool.ADAPTER_SEEDS_RESULT.read_text())
    assert spread["adapter"] == json.loads(json.dumps(LINE_ADAPTER))  # JSON keeps the targets' tuple as a list
    assert spread["seeds"] == list(LINE_ADAPTER_SEEDS)
    assert spread["per_seed"][str(LINE_ADAPTER["seed"])]["test_routed"] == routed
    question = 'Who speaks the line "I am not what I am."?'
    assert task_of(question) == "line_speaker"
    out = answer_routed(model, tok2, INSTRUCT_TEMPLATE, question,
                        "RODERIGO:\nI would not follow him then.\n\nIAGO:\nI am not what I am.")
    assert isinstance(out, str) and out
