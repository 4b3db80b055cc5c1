"""The "who speaks the line" adapter: a LoRA adapter on the frozen instruct model, switched on for that question only
(utils.lora.lora_disabled, utils.instruct.train_line_adapter / score_routed / answer_routed, the saved adapter)."""

import pytest
import torch

from utils.checkpoint import CheckpointError, weights_sha256
from utils.finetuning import load_instruct_model, save_finetuned
from utils.instruct import (ADAPTER_TASKS, LINE_ADAPTER, TASKS, adapter_for, instruction_data, score_routed, task_of,
                            train_line_adapter)
from utils.lora import apply_lora, lora_disabled, lora_layers, merge_lora, unmerge_lora
from utils.model import GPT, GPTConfig


def _adapted_gpt(seed=0):
    """A small random GPT and a copy of it with LoRA on every linear layer, every LoRA B randomised (B = 0 would
    make "adapter off" and "adapter on" trivially equal)."""
    torch.manual_seed(seed)
    base = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
    model = GPT(base.config)
    model.load_state_dict(base.state_dict())
    apply_lora(model, ("qkv_proj", "out_proj", "gate_up_proj", "down_proj") if base.config.mlp == "swiglu"
               else ("qkv_proj", "out_proj", "up_proj", "down_proj"), r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model):
            for B in layer.lora_B:
                B.normal_(0, 0.5)
    return base.eval(), model.eval()


def test_lora_disabled_computes_exactly_the_base_model_and_switches_back_even_after_an_error():
    base, model = _adapted_gpt()
    x = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        want_base, want_adapted = base(x)[0], model(x)[0]
        assert not torch.allclose(want_base, want_adapted, atol=1e-3)  # the adapter does change the output
        with lora_disabled(model):
            assert torch.equal(model(x)[0], want_base)
        assert torch.equal(model(x)[0], want_adapted)
        with pytest.raises(RuntimeError, match="boom"):
            with lora_disabled(model):
                raise RuntimeError("boom")
        assert all(layer.enabled for layer in lora_layers(model))
        assert torch.equal(model(x)[0], want_adapted)


def test_lora_disabled_refuses_a_model_without_lora_or_with_a_merged_layer_and_merge_refuses_inside_it():
    base, model = _adapted_gpt()
    with pytest.raises(ValueError, match="no LoRALinear"):
        with lora_disabled(base):
            pass
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with lora_disabled(model):
            pass
    unmerge_lora(model)
    with lora_disabled(model):
        with pytest.raises(ValueError, match="switched off"):
            merge_lora(model)
    assert not any(layer.merged for layer in lora_layers(model))


@pytest.fixture(scope="module")
def corpus():
    from utils.data import load_corpus

    return load_corpus()


def test_task_of_names_the_task_of_every_instruction_the_data_makes_and_none_for_other_text(corpus):
    examples = instruction_data(corpus, "val", n_per_task=20, seed=3)
    assert {e.task for e in examples} == set(TASKS)
    for e in examples:
        assert task_of(e.instruction) == e.task, e.instruction
    for other in ("Who speaks?", 'Who speaks the line ""?', "Tell me a story.", "Continue this speech", ""):
        assert task_of(other) is None, other
    with pytest.raises(TypeError, match="str"):
        task_of(None)


def test_score_routed_answers_the_adapter_tasks_with_the_adapter_on_and_every_other_task_with_it_off(monkeypatch,
                                                                                                     corpus):
    import utils.instruct

    _, model = _adapted_gpt()
    model.adapter_tasks = ADAPTER_TASKS  # as train_line_adapter and load_instruct_model(line_adapter=True) mark it
    seen = {}

    def fake_scores(m, tok, template, es, *args):
        seen.setdefault("scores", []).append(({e.task for e in es}, lora_layers(m)[0].enabled))
        return {es[0].task: {"exact_match": 0.5}}

    def fake_choice(m, tok, template, es, *args):
        seen.setdefault("choice", []).append(({e.task for e in es}, lora_layers(m)[0].enabled))
        return {es[0].task: 0.25}

    monkeypatch.setattr(utils.instruct, "score_tasks", fake_scores)
    monkeypatch.setattr(utils.instruct, "choice_accuracy", fake_choice)
    examples = [e for e in instruction_data(corpus, "val", n_per_task=3, seed=1) if e.task != "continue"]
    scores, choice = score_routed(model, None, None, examples)
    assert set(scores) == {"genre", "first_speaker", "line_speaker", "speakers"}
    assert set(choice) == {"genre", "first_speaker", "line_speaker"}  # "speakers" has no choices
    for tasks, on in seen["scores"] + seen["choice"]:
        assert len(tasks) == 1  # one task per call, so that each call has one adapter setting
        assert on == (next(iter(tasks)) in ADAPTER_TASKS)
    assert all(layer.enabled for layer in lora_layers(model))  # switched back on afterwards
    base, lora_tuned = _adapted_gpt()
    with adapter_for(base, "genre"):  # a model without LoRA is left as it is
        pass
    with adapter_for(lora_tuned, "genre"):  # LoRA as its own fine-tuning (no task adapter): never switched off
        assert all(layer.enabled for layer in lora_layers(lora_tuned))
    with pytest.raises(ValueError, match="empty"):
        score_routed(model, None, None, [])


def test_answer_routed_switches_the_adapter_on_only_for_a_question_of_its_task(monkeypatch):
    import utils.instruct
    from utils.instruct import answer_routed

    _, model = _adapted_gpt()
    model.adapter_tasks = ADAPTER_TASKS
    monkeypatch.setattr(utils.instruct, "answer", lambda m, *args: lora_layers(m)[0].enabled)
    assert answer_routed(model, None, None, 'Who speaks the line "I am not what I am."?', "IAGO:\nI am not what I am.")
    assert not answer_routed(model, None, None, "Who speaks first in this passage?", "IAGO:\nI am not what I am.")
    assert not answer_routed(model, None, None, "Who is the villain here?")  # a question of no task: adapter off
    assert lora_layers(model)[0].enabled


def test_train_line_adapter_trains_only_the_adapter_on_line_speaker_examples_and_refuses_bad_input(monkeypatch):
    import utils.instruct

    model, tok2 = load_instruct_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}
    real = utils.instruct.finetune_lm

    def recording_finetune(m, pairs, **kw):
        seen["pairs"], seen["kw"] = pairs, kw
        return real(m, pairs, **kw)

    monkeypatch.setattr(utils.instruct, "finetune_lm", recording_finetune)
    small = {**LINE_ADAPTER, "n": 16}
    train_line_adapter(model, tok2, small, seed=0)
    assert len(seen["pairs"]) == 16 and seen["kw"]["lr"] == LINE_ADAPTER["lr"]
    params = dict(model.named_parameters())
    for name, p in before.items():  # every weight of the instruct model is exactly as it was
        moved = name.replace("qkv_proj.weight", "qkv_proj.base.weight").replace("out_proj.weight", "out_proj.base.weight")
        moved = moved.replace("gate_up_proj.weight", "gate_up_proj.base.weight").replace("down_proj.weight",
                                                                                        "down_proj.base.weight")
        assert torch.equal(params[moved if moved in params else name], p), name
    assert any(B.abs().sum() > 0 for layer in lora_layers(model) for B in layer.lora_B)  # the adapter trained
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert model.adapter_tasks == ADAPTER_TASKS
    with pytest.raises(ValueError, match="already has LoRA"):
        train_line_adapter(model, tok2, small, seed=0)
    fresh, tok3 = load_instruct_model()
    with pytest.raises(ValueError, match="lacks"):
        train_line_adapter(fresh, tok3, {"r": 4})


def _adapter_file(tmp_path, sha=None):
    model, tok2 = load_instruct_model()
    sha = sha or weights_sha256(model.state_dict())
    torch.manual_seed(5)
    apply_lora(model, LINE_ADAPTER["targets"], r=LINE_ADAPTER["r"], alpha=LINE_ADAPTER["alpha"])
    with torch.no_grad():
        for layer in lora_layers(model):
            for B in layer.lora_B:
                B.normal_(0, 0.02)
    path = tmp_path / "adapter.pt"
    save_finetuned(path, model, "line-adapter", dict(LINE_ADAPTER), sha, metadata={"note": "test"})
    return path, model.eval(), tok2


def test_a_saved_line_adapter_reloads_with_identical_logits_on_and_off(tmp_path):
    path, model, tok2 = _adapter_file(tmp_path)
    loaded, tok3 = load_instruct_model(line_adapter=True, adapter_path=path)
    plain, _ = load_instruct_model()
    assert tok3.special_tokens == tok2.special_tokens
    ids = torch.tensor([tok2.encode('### Instruction:\nWho speaks the line "I am not what I am."?\n\n### Input:\n'
                                    "IAGO:\nI am not what I am.\n\n### Response:\n", allowed_special="all")])
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])
        with lora_disabled(loaded):
            assert torch.equal(loaded(ids)[0], plain(ids)[0])
    assert loaded.adapter_metadata["recipe"] == LINE_ADAPTER and loaded.adapter_metadata["note"] == "test"
    assert loaded.adapter_tasks == ADAPTER_TASKS
    assert not any(p.requires_grad for p in loaded.parameters())


def test_the_adapter_loader_refuses_a_missing_file_another_kind_or_one_trained_on_another_instruct_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="make finetune"):
        load_instruct_model(line_adapter=True, adapter_path=tmp_path / "nope.pt")
    path, _, _ = _adapter_file(tmp_path, sha="0" * 64)
    with pytest.raises(CheckpointError, match="another instruct model.*make finetune"):
        load_instruct_model(line_adapter=True, adapter_path=path)
    from utils.finetuning import _finetuned_dir, INSTRUCT_MODEL_FILE

    with pytest.raises(CheckpointError, match="not a 'line-adapter'"):
        load_instruct_model(line_adapter=True, adapter_path=_finetuned_dir() / INSTRUCT_MODEL_FILE)
