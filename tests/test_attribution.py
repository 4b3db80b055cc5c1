"""Attributions of a fine-tuned classifier (notebook 07's SequenceClassifier, LoRA included) through
``utils.attribution.embeddings_forward``: the function of embeddings is the classifier, integrated
gradients satisfy completeness, occlusion measures real drops, and bad input is refused."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import random_ids, tiny_gpt_config  # noqa: E402
from utils.attribution import embedding_forward, embeddings_forward, integrated_gradients, occlusion  # noqa: E402
from utils.finetuning import SequenceClassifier  # noqa: E402
from utils.lora import apply_lora  # noqa: E402
from utils.model import GPT  # noqa: E402


def _classifier(pooling="mean", lora=False, seed=0):
    torch.manual_seed(seed)
    backbone = GPT(tiny_gpt_config())
    if lora:
        apply_lora(backbone, ("q", "v"), r=4)
    clf = SequenceClassifier(backbone, 3, pooling=pooling)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # LoRA's B starts at zero: randomise every parameter
    return clf.eval()


@pytest.mark.parametrize("pooling,lora", [("mean", False), ("last", False), ("mean", True)])
def test_function_of_embeddings_equals_the_classifier_on_the_real_embeddings(pooling, lora):
    clf = _classifier(pooling, lora)
    ids = random_ids(1, 9)[0]
    f = embeddings_forward(lambda batch: clf(batch)[:, 2], clf.backbone.wte, ids)
    x = clf.backbone.wte(ids).detach()
    with torch.no_grad():
        assert f(x[None]).item() == pytest.approx(clf(ids[None])[0, 2].item(), abs=1e-6)
        other = torch.randn_like(x)  # other embeddings change the score: the hook really replaces the lookup
        assert abs(f(other[None]).item() - f(x[None]).item()) > 1e-4


@pytest.mark.parametrize("lora", [False, True])
def test_integrated_gradients_of_a_classifier_logit_satisfy_completeness(lora):
    clf = _classifier("mean", lora, seed=1)
    ids = random_ids(1, 7, seed=3)[0]
    f = embeddings_forward(lambda batch: clf(batch)[:, 0], clf.backbone.wte, ids)
    x = clf.backbone.wte(ids).detach()
    baseline = clf.backbone.wte(torch.full_like(ids, 5)).detach()
    attr = integrated_gradients(f, x, baseline, steps=64)
    with torch.no_grad():
        gap = (f(x[None]) - f(baseline[None])).item()
    assert abs(gap) > 1e-3  # a real difference to explain
    assert attr.sum().item() == pytest.approx(gap, rel=1e-3, abs=1e-5)


def test_embedding_forward_is_embeddings_forward_with_a_hidden_state_head():
    torch.manual_seed(0)
    model = GPT(tiny_gpt_config()).eval()
    w = torch.randn(32)
    head = lambda h, mask: h.mean(1) @ w  # noqa: E731
    ids = random_ids(1, 6, seed=2)[0]
    a = embedding_forward(model, head, ids)
    b = embeddings_forward(lambda batch: head(model.hidden_states(batch), None), model.wte, ids)
    e = torch.randn(3, 6, 32)
    with torch.no_grad():
        assert torch.allclose(a(e), b(e), atol=1e-6)


def test_occlusion_of_a_classifier_is_the_drop_of_its_logit():
    clf = _classifier("mean", seed=2)
    ids = random_ids(1, 5, seed=4)[0]
    with torch.no_grad():
        drops = occlusion(lambda batch: clf(batch)[:, 1], ids, replacement_id=0)
        full = clf(ids[None])[0, 1]
        for i in range(len(ids)):
            changed = ids.clone()
            changed[i] = 0
            assert drops[i].item() == pytest.approx((full - clf(changed[None])[0, 1]).item(), abs=1e-6)


def test_embeddings_forward_refuses_bad_input():
    clf = _classifier()
    ids = random_ids(1, 4)[0]
    with pytest.raises(TypeError, match="embedding must be the nn.Module"):
        embeddings_forward(lambda b: clf(b)[:, 0], clf.backbone.wte.weight, ids)
    with pytest.raises(ValueError, match="ids is empty"):
        embeddings_forward(lambda b: clf(b)[:, 0], clf.backbone.wte, torch.tensor([], dtype=torch.long))
    f = embeddings_forward(lambda b: clf(b)[:, 0], clf.backbone.wte, ids)
    with pytest.raises(ValueError, match=r"embeddings must be \(N, 4, C\)"):
        f(torch.zeros(1, 5, 32))
