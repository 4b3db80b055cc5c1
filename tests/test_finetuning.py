"""LoRA, adapters, prefix/prompt tuning, the classifier, DPO, instruction templates and data."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.adapters import Adapter, PrefixTuning, PromptTuning, add_adapters, remove_adapters, soft_prompt_hidden_states
from utils.dpo import dpo_loss, response_logprobs
from utils.finetuning import (SequenceClassifier, count_trainable, freeze, pad_right, training_step_memory)
from utils.instruct import (CHAT_TEMPLATE, INSTRUCT_TEMPLATE, Template, add_special_tokens, batch_examples,
                            encode_example, render)
from utils.lora import LoRALinear, apply_lora, lora_layers, merge_lora, qkv_segments, unmerge_lora
from utils.model import GPT, GPTConfig


def tiny(pos="rope", mlp="swiglu", n_kv_head=None, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, pos=pos, mlp=mlp,
                    n_kv_head=n_kv_head, norm="rmsnorm" if mlp == "swiglu" else "layernorm")
    return GPT(cfg).eval()


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            for B in layer.lora_B:
                B.copy_(torch.randn(B.shape, generator=g) * 0.1)


IDX = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(5))


# ---- LoRA ------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", [("qkv_proj",), ("q", "v"), ("q", "k", "v", "out_proj", "gate_up_proj", "down_proj")])
def test_lora_with_zero_B_leaves_outputs_unchanged(targets):
    model = tiny()
    before = model(IDX)[0]
    apply_lora(model, targets, r=4, alpha=8)
    assert lora_layers(model)
    assert torch.equal(model(IDX)[0], before)


def test_lora_merge_then_unmerge_restores_weights_and_merged_equals_unmerged():
    model = tiny(n_kv_head=2)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, ("q", "v", "out_proj"), r=4, alpha=16)
    randomize_lora(model)
    unmerged = model(IDX)[0]
    assert not torch.allclose(unmerged, GPT(model.config).eval()(IDX)[0])
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model))
    assert torch.allclose(model(IDX)[0], unmerged, atol=1e-5)
    base_weight = model.blocks[0].attn.qkv_proj.base.weight
    assert not torch.allclose(base_weight, w0["blocks.0.attn.qkv_proj.weight"])
    unmerge_lora(model)
    assert torch.allclose(model(IDX)[0], unmerged, atol=1e-5)
    assert torch.allclose(base_weight, w0["blocks.0.attn.qkv_proj.weight"], atol=1e-6)


def test_lora_on_q_and_v_changes_only_those_rows_of_the_fused_projection():
    model = tiny(n_kv_head=2)
    apply_lora(model, ("q", "v"), r=2)
    randomize_lora(model)
    layer = model.blocks[0].attn.qkv_proj
    attn = model.blocks[0].attn
    (qa, qb), (va, vb) = qkv_segments(attn, ("q", "v"))
    assert (qa, qb) == (0, 32) and (va, vb) == (48, 64)  # q: 4 heads x 8, k and v: 2 heads x 8
    delta = layer.delta_weight()
    assert delta[qb:va].abs().sum() == 0  # the k rows get no update
    assert delta[:qb].abs().sum() > 0 and delta[va:].abs().sum() > 0
    # the update equals two separate LoRA layers, one on W_q and one on W_v
    x = torch.randn(5, 32)
    Wq, Wk, Wv = layer.base.weight.split([32, 16, 16])
    s = layer.scaling
    q = x @ Wq.T + s * x @ layer.lora_A[0].T @ layer.lora_B[0].T
    v = x @ Wv.T + s * x @ layer.lora_A[1].T @ layer.lora_B[1].T
    out = layer(x)
    assert torch.allclose(out[:, :32], q, atol=1e-5)
    assert torch.allclose(out[:, 32:48], x @ Wk.T, atol=1e-6)
    assert torch.allclose(out[:, 48:], v, atol=1e-5)


def test_only_lora_adapter_prefix_and_prompt_parameters_get_gradients_with_a_frozen_base():
    for method in ("lora", "adapter", "prefix", "prompt"):
        model = tiny()
        prefix = prompt = None
        if method == "lora":
            apply_lora(model, ("q", "v"), r=2)
            randomize_lora(model)
        elif method == "adapter":
            add_adapters(model, bottleneck=4)
            with torch.no_grad():  # up starts at zero (identity), which would leave down without gradient
                for n, p in model.named_parameters():
                    if "adapter.up" in n:
                        p.normal_(std=0.1)
        else:
            freeze(model)
        if method == "prefix":
            prefix = PrefixTuning.for_model(model, 3)
            if not _has_prefix_support(model):
                continue
        if method == "prompt":
            prompt = PromptTuning.for_model(model, 3)
        clf = SequenceClassifier(model, 3, prefix=prefix, prompt=prompt)
        freeze(clf.head)
        ids, mask = pad_right([[1, 2, 3, 4], [5, 6]], 0)
        F.cross_entropy(clf(ids, mask), torch.tensor([0, 2])).backward()
        names = {"lora": "lora_", "adapter": "_adapter", "prefix": "prefix.", "prompt": "prompt."}[method]
        for n, p in clf.named_parameters():
            if names in n:
                assert p.grad is not None and p.grad.abs().sum() > 0, (method, n)
            else:
                assert p.grad is None, (method, n)


def _has_prefix_support(model):
    import inspect
    return "past_key_values" in inspect.signature(model.forward).parameters and hasattr(model, "hidden_states")


def test_lora_rejects_bad_input_with_clear_errors_and_changes_nothing():
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="rank r must be a positive int"):
        apply_lora(model, ("q",), r=0)
    with pytest.raises(ValueError, match="rank r must be a positive int"):
        LoRALinear(torch.nn.Linear(4, 4), r=-1)
    with pytest.raises(ValueError, match=r"unknown LoRA target module name\(s\) \['c_attn'\]"):
        apply_lora(model, ("c_attn",), r=4)
    with pytest.raises(ValueError, match="either 'qkv_proj'"):
        apply_lora(model, ("qkv_proj", "q"), r=4)
    with pytest.raises(ValueError, match=r"no layer named \['up_proj'\]"):
        apply_lora(model, ("up_proj",), r=4)  # a SwiGLU model has gate_up_proj
    with pytest.raises(ValueError, match="alpha"):
        apply_lora(model, ("q",), r=4, alpha=0)
    assert not lora_layers(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="segments"):
        LoRALinear(torch.nn.Linear(4, 6), r=2, segments=[(4, 2)])


def test_count_trainable_counts_tied_weights_once():
    model = tiny()
    total = sum(p.numel() for p in model.parameters())
    apply_lora(model, ("q", "v"), r=4)
    c = count_trainable(model)
    # per layer: q segment A (4 x 32) + B (32 x 4), v segment A (4 x 32) + B (32 x 4)
    assert c["trainable"] == 2 * (4 * 32 + 32 * 4) * 2
    assert c["total"] == total + c["trainable"]
    assert math.isclose(c["percent"], 100 * c["trainable"] / c["total"])


# ---- parity with peft --------------------------------------------------------------------------

def _random_hf_gpt2(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # every parameter random: LayerNorms and biases too
            p.copy_(torch.randn_like(p) * 0.2)
    return hf


@pytest.mark.parametrize("alpha", [8, 32])
def test_lora_matches_peft_on_a_random_gpt2_and_merge_matches_merge_and_unload(alpha):
    peft = pytest.importorskip("peft")
    hf = _random_hf_gpt2()
    ours = GPT.from_hf_gpt2(hf).eval()
    hf_lora = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=["c_attn"],
                                                      lora_dropout=0.0, fan_in_fan_out=True)).eval()
    apply_lora(ours, ("qkv_proj",), r=4, alpha=alpha)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i, block in enumerate(hf_lora.base_model.model.transformer.h):
            A = block.attn.c_attn.lora_A["default"].weight
            B = block.attn.c_attn.lora_B["default"].weight
            A.copy_(torch.randn(A.shape, generator=g) * 0.3)
            B.copy_(torch.randn(B.shape, generator=g) * 0.3)
            mine = ours.blocks[i].attn.qkv_proj
            mine.lora_A[0].copy_(A)
            mine.lora_B[0].copy_(B)
    idx = torch.randint(0, 64, (2, 16), generator=g)
    with torch.no_grad():
        ref = hf_lora(idx).logits
        out = ours(idx)[0]
        base = GPT.from_hf_gpt2(_random_hf_gpt2())(idx)[0]
    assert not torch.allclose(ref, base, atol=1e-3)  # LoRA really changed the outputs
    assert torch.allclose(out, ref, atol=1e-4)
    from utils.lora import lora_disabled

    with torch.no_grad(), hf_lora.disable_adapter(), lora_disabled(ours):  # both switched off: the same base model
        ref_off, out_off = hf_lora(idx).logits, ours(idx)[0]
    assert torch.allclose(out_off, ref_off, atol=1e-4) and torch.allclose(out_off, base, atol=1e-4)
    merged_hf = hf_lora.merge_and_unload()
    merge_lora(ours)
    for i, block in enumerate(merged_hf.transformer.h):
        assert torch.allclose(ours.blocks[i].attn.qkv_proj.base.weight, block.attn.c_attn.weight.T, atol=1e-5)


# ---- adapters, prefix, prompt ------------------------------------------------------------------

def test_fresh_adapters_are_the_identity_and_removing_them_restores_the_model():
    model = tiny()
    before = model(IDX)[0]
    add_adapters(model, bottleneck=4)
    assert torch.equal(model(IDX)[0], before)
    with torch.no_grad():
        model.blocks[0].mlp_adapter.up.weight.normal_()
    assert not torch.allclose(model(IDX)[0], before)
    remove_adapters(model)
    assert torch.equal(model(IDX)[0], before)
    assert not any("adapter" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="bottleneck must be a positive int"):
        Adapter(8, 0)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_soft_prompt_hidden_states_without_prompt_are_the_models(pos):
    model = tiny(pos=pos, mlp="gelu")
    h = soft_prompt_hidden_states(model, IDX)
    assert torch.allclose(model.lm_head(h), model(IDX)[0], atol=1e-5)
    prompt = PromptTuning.for_model(model, 4).init_from_tokens(model, IDX[0, :4])
    # a soft prompt equal to real token embeddings == those tokens in front of the input
    with_prompt = soft_prompt_hidden_states(model, IDX[:, 4:], prompt)
    full = soft_prompt_hidden_states(model, torch.cat([IDX[:1, :4].expand(3, 4), IDX[:, 4:]], 1))
    assert torch.allclose(with_prompt, full[:, 4:], atol=1e-5)


def test_classifier_last_and_mean_pooling_ignore_right_padding():
    model = tiny()
    for pooling in ("last", "mean"):
        clf = SequenceClassifier(model, 3, pooling=pooling).eval()
        ids, mask = pad_right([[1, 2, 3, 4, 5], [6, 7]], pad_id=9)
        both = clf(ids, mask)
        alone = clf(torch.tensor([[6, 7]]))
        assert torch.allclose(both[1], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="right-padded"):
        clf(torch.tensor([[1, 2, 3]]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(model, 3, pooling="cls")
    with pytest.raises(ValueError, match="n_classes"):
        SequenceClassifier(model, 1)


def test_training_step_memory_is_lower_for_lora_than_full_finetuning_and_leaves_weights():
    ids, mask = pad_right([[1, 2, 3, 4, 5, 6, 7, 8]] * 4, 0)
    batch = (ids, mask, torch.tensor([0, 1, 2, 0]))
    full = SequenceClassifier(tiny(), 3)
    lora_model = apply_lora(tiny(), ("q", "v"), r=2)
    lora = SequenceClassifier(lora_model, 3)
    w = {n: p.clone() for n, p in full.named_parameters()}
    m_full, m_lora = training_step_memory(full, batch), training_step_memory(lora, batch)
    assert m_lora["step"] < m_full["step"]
    assert all(torch.equal(w[n], p) for n, p in full.named_parameters())


# ---- DPO ---------------------------------------------------------------------------------------

def test_dpo_loss_equals_the_formula_on_a_constructed_example():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    beta = 0.5
    # row 0: (−3 + 3.5) − (−4 + 3) = 1.5; row 1: (−5 + 4) − (−2 + 2.5) = −1.5
    expected = (-math.log(1 / (1 + math.exp(-0.75))) - math.log(1 / (1 + math.exp(0.75)))) / 2
    assert math.isclose(dpo_loss(pc, pr, rc, rr, beta).item(), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0)


def test_dpo_loss_is_log2_when_policy_equals_reference_and_has_zero_gradient_when_chosen_equals_rejected():
    model = tiny()
    x = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    y = torch.cat([torch.full((2, 4), -100), x[:, 4:]], 1)
    with torch.no_grad():
        ref = response_logprobs(model, x, y)
    pol = response_logprobs(model, x, y)
    x2 = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref2 = response_logprobs(model, x2, y)
    loss = dpo_loss(pol, response_logprobs(model, x2, y), ref, ref2, beta=0.1)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    model.zero_grad()
    same = dpo_loss(pol, pol, ref, ref, beta=0.1)
    same.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.abs().max() == 0 for g in grads)


# ---- instruction templates and loss masking -----------------------------------------------------

class CharTok:
    """One token per character; specials as whole tokens."""
    special_tokens = {"<|endoftext|>": 0}

    def encode(self, text, allowed_special=()):
        out, i = [], 0
        while i < len(text):
            for s, j in self.special_tokens.items():
                if text.startswith(s, i):
                    out.append(j)
                    i += len(s)
                    break
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_response_only_loss_ignores_prompt_tokens_exactly():
    tok = CharTok()
    x, y = encode_example(tok, INSTRUCT_TEMPLATE, "Say hi", "", "hi")
    prompt, completion = render(INSTRUCT_TEMPLATE, "Say hi", "", "hi")
    assert prompt.endswith("### Response:\n") and completion == "hi<|endoftext|>"
    n_prompt = len(prompt)
    assert y == [-100] * (n_prompt - 1) + [ord("h"), ord("i"), 0]
    assert x == [ord(c) for c in prompt] + [ord("h"), ord("i")]
    # the masked loss is the mean over the three response targets only, whatever the prompt logits are
    torch.manual_seed(0)
    logits = torch.randn(len(x), 200)
    masked = F.cross_entropy(logits, torch.tensor(y), ignore_index=-100)
    manual = -logits.log_softmax(-1)[torch.arange(n_prompt - 1, len(x)), torch.tensor([ord("h"), ord("i"), 0])].mean()
    assert torch.allclose(masked, manual)
    logits2 = logits.clone()
    logits2[: n_prompt - 1] = torch.randn(n_prompt - 1, 200)  # change every prompt position's prediction
    assert torch.equal(F.cross_entropy(logits2, torch.tensor(y), ignore_index=-100), masked)
    _, y_all = encode_example(tok, INSTRUCT_TEMPLATE, "Say hi", "", "hi", mask_prompt=False)
    assert y_all == x[1:] + [0] and -100 not in y_all
    X, Y = batch_examples([(x, y), (x[:5], y[:5])], pad_id=0)
    assert X.shape == Y.shape == (2, len(x)) and (Y[1, 5:] == -100).all()


def _anchor_run(anchor, steps=3, seed=0):
    """A tiny model fine-tuned for ``steps`` steps by finetune_lm; returns (start weights, end weights)."""
    from utils.instruct import finetune_lm

    model = tiny(seed=seed).train()
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randint(0, 50, (10,), generator=g).tolist(), torch.randint(0, 50, (10,), generator=g).tolist())
             for _ in range(4 * steps)]
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    finetune_lm(model, pairs, epochs=1.0, batch_size=4, lr=1e-2, seed=seed, progress=False, anchor=anchor)
    return start, {k: v.detach().clone() for k, v in model.named_parameters()}


def test_finetune_anchor_pulls_each_step_toward_the_start_by_anchor_times_lr():
    from utils.training import lr_schedule

    start, free = _anchor_run(0.0, steps=1)
    _, anchored = _anchor_run(20.0, steps=1)
    # one step: the same AdamW step, then w <- w - anchor * lr_0 * (w - w_start); finetune_lm's schedule, lr 1e-2
    lr0 = lr_schedule(0, lr=1e-2, min_lr=1e-3, warmup_steps=1, total_steps=1)
    moved = 0
    for k in start:
        expect = free[k] - 20.0 * lr0 * (free[k] - start[k])
        assert torch.allclose(anchored[k], expect, atol=1e-7), k
        moved += int(not torch.equal(free[k], start[k]))
    assert moved > 0 and lr0 > 0
    # over several steps the anchored weights stay closer to the start than the free ones, and still move
    start, free = _anchor_run(0.0, steps=6)
    _, anchored = _anchor_run(20.0, steps=6)
    dist = lambda w: math.sqrt(sum(float((w[k] - start[k]).pow(2).sum()) for k in start))  # noqa: E731
    assert 0 < dist(anchored) < 0.9 * dist(free)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True])
def test_finetune_anchor_rejects_a_negative_or_non_finite_strength(bad):
    from utils.instruct import finetune_lm

    model = tiny()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(ValueError, match="anchor must be a finite number >= 0"):
        finetune_lm(model, [([1, 2, 3], [2, 3, 4])], progress=False, anchor=bad)
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_templates_reject_a_missing_response_marker_and_missing_fields():
    with pytest.raises(ValueError, match="response marker"):
        Template("broken", "Q: {instruction} {input}\nA: {response}", "### Response:\n")
    with pytest.raises(ValueError, match=r"\{response\}"):
        Template("broken", "Q: {instruction} {input}\n### Response:\n", "### Response:\n")
    with pytest.raises(ValueError, match="response_marker is empty"):
        Template("broken", "{instruction}{input}{response}", "")
    assert render(CHAT_TEMPLATE, "Hi", "")[0].endswith("<|assistant|>\n")


def test_add_special_tokens_grows_the_tied_embedding_and_keeps_old_logits():
    from utils.tokenizer import BPETokenizer

    with pytest.warns(UserWarning, match="merges"):  # the tiny text supports fewer merges than asked
        tok = BPETokenizer.train("to be or not to be " * 20, 300, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = torch.tensor([tok.encode("to be or not")])
    before = model(ids)[0]
    new_tok = add_special_tokens(tok, model, ("<|user|>", "<|end|>"))
    assert new_tok.vocab_size == tok.vocab_size + 2 == model.config.vocab_size
    assert model.lm_head.weight is model.wte.weight
    assert new_tok.encode("<|user|>hi<|end|>", allowed_special="all")[0] == tok.vocab_size
    after = model(ids)[0]
    assert torch.allclose(after[..., :tok.vocab_size], before, atol=1e-6)
    with pytest.raises(ValueError, match="already special"):
        add_special_tokens(new_tok, model, ("<|user|>",))


def test_answer_batch_warns_when_a_prompt_is_cut_to_fit_the_context():
    from utils.instruct import answer_batch
    from utils.tokenizer import BPETokenizer

    tok = BPETokenizer()  # bytes only: one token per character of this ASCII text
    model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.warns(UserWarning, match="1 of 2 prompts are longer than 28 tokens") as caught:
        answer_batch(model, tok, None, [("q", "short"), ("q" * 20, "x" * 20)], max_new_tokens=4)
    assert caught[0].filename == __file__  # it points at the caller, not at torch's no_grad wrapper
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cut: no warning
        answer_batch(model, tok, None, [("q", "short")], max_new_tokens=4)
    with pytest.raises(ValueError, match="leaves no room"):
        answer_batch(model, tok, None, [("q", "short")], max_new_tokens=32)


# ---- data built from the corpus ------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_and_tok():
    from utils.data import load_corpus
    from utils.pretrain import load_course_model

    return load_corpus(), load_course_model()[1]


def test_instruction_data_split_has_no_play_in_both_train_and_test(corpus_and_tok):
    from utils.instruct import TASKS, instruction_data

    corpus, _ = corpus_and_tok
    train = instruction_data(corpus, "train", n_per_task=40, seed=0)
    test = instruction_data(corpus, "test", n_per_task=40, seed=1)
    assert {e.task for e in train} == {e.task for e in test} == set(TASKS)
    assert not {e.play for e in train} & {e.play for e in test}
    assert {e.play for e in test} <= set(corpus.plays("test"))
    for e in test:
        if e.choices:
            assert e.response in e.choices
        if e.task == "genre":
            assert not any(line.endswith(":") and line == line.upper() for line in e.input.split("\n"))  # no SPEAKER: line
    with pytest.raises(ValueError, match="unknown task"):
        instruction_data(corpus, "train", tasks=("translate",))
    with pytest.raises(ValueError, match="split"):
        instruction_data(corpus, "dev")


def test_line_twin_quotes_the_other_speech_and_flips_the_answer(corpus_and_tok):
    from utils.instruct import Example, instruction_data, line_twin

    corpus, _ = corpus_and_tok
    made = 0
    for e in instruction_data(corpus, "val", n_per_task=60, seed=3, tasks=("line_speaker",), rename_speakers=True):
        t = line_twin(e)
        if t is None:
            continue
        made += 1
        speeches = dict(s.split(":\n", 1) for s in e.input.split("\n\n"))
        quoted = t.instruction.split('"')[1]
        assert t.input == e.input and t.choices == e.choices and t.play == e.play
        assert t.response != e.response and {t.response, e.response} == set(e.choices)
        assert quoted in speeches[t.response].split("\n") and quoted not in speeches[e.response].split("\n")
        assert line_twin(t).response == e.response  # the twin's twin answers as the original
    assert made >= 50
    # a constructed example: the other speech has no quotable line (too short) -> None
    e = Example("line_speaker", 'Who speaks the line "I know a bank where the wild thyme blows"?',
                "OBERON:\nI know a bank where the wild thyme blows\n\nPUCK:\nAy, my lord.", "OBERON", "x",
                ("OBERON", "PUCK"))
    assert line_twin(e) is None
    assert line_twin(Example("line_speaker", e.instruction, e.input, "PUCK", "x", e.choices)).response == "OBERON"
    with pytest.raises(ValueError, match="line_speaker"):
        line_twin(Example("genre", "Is this passage from a comedy?", "text", "comedy", "x"))
    with pytest.raises(ValueError, match="two speeches"):
        line_twin(Example("line_speaker", e.instruction, "OBERON:\nI know a bank", "OBERON", "x"))
    with pytest.raises(ValueError, match="not one of the passage's speakers"):
        line_twin(Example("line_speaker", e.instruction, e.input, "TITANIA", "x"))


def test_choice_scores_are_each_choices_response_logprob_and_picks_their_argmax_in_any_batch_size(corpus_and_tok):
    from utils.dpo import response_logprobs
    from utils.instruct import (EOT, INSTRUCT_TEMPLATE, Example, batch_examples, choice_accuracy, choice_picks,
                                choice_scores, encode_example, instruction_data)
    from utils.pretrain import load_course_model

    corpus, _ = corpus_and_tok
    model, tok = load_course_model()
    torch.manual_seed(0)
    with torch.no_grad():  # random weights: no tie between the choices' scores
        for p in model.parameters():
            p.normal_(0, 0.2)
    es = [e for e in instruction_data(corpus, "val", n_per_task=6, seed=2) if e.choices][:10]
    picks = choice_picks(model, tok, INSTRUCT_TEMPLATE, es, batch_size=3)
    assert picks == choice_picks(model, tok, INSTRUCT_TEMPLATE, es, batch_size=64)
    scores = choice_scores(model, tok, INSTRUCT_TEMPLATE, es, batch_size=4)
    assert [len(s) for s in scores] == [len(e.choices) for e in es]
    for e, pick, sc in zip(es, picks, scores):  # one example at a time, by hand
        with torch.no_grad():
            lp = [float(response_logprobs(model, *batch_examples([encode_example(
                tok, INSTRUCT_TEMPLATE, e.instruction, e.input, c, max_len=model.config.block_size)],
                tok.special_tokens[EOT]))[0]) for c in e.choices]
        assert pick == e.choices[max(range(len(lp)), key=lp.__getitem__)]
        assert sc == pytest.approx(lp, abs=1e-4)
    acc = choice_accuracy(model, tok, INSTRUCT_TEMPLATE, es)
    for task, value in acc.items():
        mine = [p == e.response for e, p in zip(es, picks) if e.task == task]
        assert value == sum(mine) / len(mine)
    with pytest.raises(ValueError, match="choices"):
        choice_picks(model, tok, INSTRUCT_TEMPLATE, [Example("continue", "Continue.", "a", "b", "x")])
    with pytest.raises(ValueError, match="choices"):
        choice_scores(model, tok, INSTRUCT_TEMPLATE, [])


def test_genre_dataset_is_split_by_play_balanced_and_right_padded(corpus_and_tok):
    from utils.dpo import preference_pairs
    from utils.finetuning import genre_dataset

    corpus, tok = corpus_and_tok
    train = genre_dataset(corpus, tok, "train", per_class=20, seed=0)
    test = genre_dataset(corpus, tok, "test")
    assert train.class_counts() == {"comedies": 20, "histories": 20, "tragedies": 20}
    assert not set(train.plays) & set(test.plays)
    assert set(test.plays) == set(corpus.plays("test"))
    lengths = train.mask.sum(1)
    assert torch.equal(train.mask, torch.arange(train.ids.shape[1])[None] < lengths[:, None])
    assert int(lengths.max()) <= 64
    assert test.majority_rate() == max(test.class_counts().values()) / len(test)
    pairs_tr, pairs_te = preference_pairs(corpus, "train", n=30), preference_pairs(corpus, "test", n=30)
    assert not {p.play for p in pairs_tr} & {p.play for p in pairs_te}
    assert all(p.chosen != p.rejected for p in pairs_te)
    with pytest.raises(ValueError, match="per_class"):
        genre_dataset(corpus, tok, "train", per_class=0)


def test_prepare_method_trains_what_each_method_says(corpus_and_tok):
    from utils.finetuning import METHODS, prepare_method

    def fresh():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, norm="rmsnorm",
                             mlp="swiglu", pos="rope", bias=False))

    counts = {}
    for method in METHODS:
        if method.startswith("qlora"):
            with pytest.raises(ValueError, match="quantize"):
                prepare_method(fresh(), method, 3)
            continue
        counts[method] = count_trainable(prepare_method(fresh(), method, 3))["trainable"]
    head = 32 * 3 + 3
    assert counts["head-only"] == head
    assert counts["lora-r8"] == head + 2 * 2 * (8 * 32 + 32 * 8)
    assert counts["lora-r16"] == 2 * counts["lora-r8"] - head
    assert counts["prefix"] == head + 2 * 2 * 4 * 8 * 8
    assert counts["prompt"] == head + 8 * 32
    assert counts["full"] == sum(p.numel() for p in fresh().parameters()) + head
    with pytest.raises(ValueError, match="unknown method"):
        prepare_method(fresh(), "bitfit", 3)


def test_merge_refuses_a_base_whose_weight_is_a_computed_copy():
    class FakeQuant(torch.nn.Module):  # like QuantLinear: .weight is a dequantized copy, not a Parameter
        in_features, out_features = 4, 6

        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(6, 4))

        @property
        def weight(self):
            return self.w.clone()

        def forward(self, x):
            return x @ self.w.T

    layer = LoRALinear(FakeQuant(), r=2)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), layer.base(x))
    with pytest.raises(TypeError, match="quantized base"):
        layer.merge()
    assert not layer.merged


def test_a_lora_model_round_trips_through_a_checkpoint_with_prepare(tmp_path):
    from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = apply_lora(tiny(), ("q", "v"), r=4, alpha=8)
    randomize_lora(model)
    path = tmp_path / "lora.pt"
    save_checkpoint(path, model, metadata={"lora": {"targets": ["q", "v"], "r": 4, "alpha": 8}})
    loaded = load_checkpoint(path, prepare=lambda m: apply_lora(m, ("q", "v"), r=4, alpha=8)).model.eval()
    assert torch.equal(loaded(IDX)[0], model(IDX)[0])
    with pytest.raises(CheckpointError, match="prepare"):
        load_checkpoint(path)


def test_task_baselines_give_chance_and_the_best_fixed_answer_rate():
    from utils.instruct import Example, task_baselines

    es = [Example("pick", "Who: A or B?", "", "A", "p", ("A", "B")),
          Example("pick", "Who: C or D?", "", "C", "p", ("C", "D")),
          Example("pick", "Who: F or E?", "", "E", "p", ("F", "E")),
          Example("free", "Name?", "", "X", "p"), Example("free", "Name?", "", "X", "p"),
          Example("free", "Name?", "", "Y", "p")]
    b = task_baselines(es)
    assert b["pick"] == {"n": 3, "chance": 0.5, "majority": 2 / 3}  # "always the first option" is right 2 of 3 times
    assert b["free"] == {"n": 3, "chance": 0.0, "majority": 2 / 3}
