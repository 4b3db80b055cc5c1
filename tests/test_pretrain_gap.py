"""benchmarks/pretrain_gap.py: per-character losses, kinds of character, speaker lines and the gap table."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import pretrain_gap as G  # noqa: E402
from utils.model import GPT, GPTConfig  # noqa: E402
from utils.tokenizer import BPETokenizer  # noqa: E402

TEXT = ("ANNA:\nGood morrow, Bob.\n\nBOB:\nMorrow, Anna! Zyx.\n\nANNA:\nAnd to thee.\n\n"
        "BOB:\nFarewell.\n")


def test_char_nll_spreads_each_token_over_its_characters_and_sums_to_the_bits_per_character():
    tok = BPETokenizer.train(TEXT * 3, 280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = torch.tensor(tok.encode("\n" + TEXT))
    per = G.char_nll(model, ids, TEXT, tok.decode)
    assert per.shape == (len(TEXT),)
    bpc = G.P.score_bpc(model, ids, len(TEXT))
    assert per.sum().item() / len(TEXT) / math.log(2) == pytest.approx(bpc, rel=1e-5)
    first = tok.decode([int(ids[1])])  # the first token's characters share its loss equally
    assert len(first) > 1 and torch.allclose(per[:len(first)], per[0].expand(len(first)))


def test_char_nll_refuses_tokens_that_do_not_decode_to_whole_characters():
    model = GPT(GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.raises(ValueError, match="cannot be split evenly"):
        G.char_nll(model, torch.tensor([10, 11, 12]), "abcd", lambda ids: "a")


def test_char_kinds_puts_speaker_lines_and_words_with_their_space_apart():
    kinds = G.char_kinds(TEXT, train_words={"Good", "morrow", "Morrow", "And", "to", "thee"})
    at = {k: "".join(c for c, kk in zip(TEXT, kinds) if kk == k) for k in G.KINDS}
    assert at["speaker line"] == "ANNA:\nBOB:\nANNA:\nBOB:\n"
    assert at["word in the training text"] == "Good morrowMorrowAnd to thee"
    assert at["word not in it"] == " Bob Anna ZyxFarewell"
    assert at["other"] == ",.\n\n,!.\n\n.\n\n.\n"


def test_speaker_lines_count_occurrences_and_see_a_recent_name():
    lines = G.speaker_lines(TEXT)
    assert [(s["name"], s["occurrence"], s["recent"]) for s in lines] == [
        ("ANNA:", 0, False), ("BOB:", 0, False), ("ANNA:", 1, True), ("BOB:", 1, True)]
    assert TEXT[slice(*lines[1]["span"])] == "BOB:\n"
    assert [s["name"] for s in G.speaker_lines(TEXT, start=TEXT.index("\n\nANNA:") + 2)] == ["ANNA:", "BOB:"]


def test_gap_table_measures_each_kind_and_its_distance_from_the_goal():
    kinds = ["speaker line"] * 2 + ["other"] * 2
    nll = {"ours": torch.tensor([4.0, 4.0, 1.0, 1.0]) * math.log(2), "baby": torch.tensor([2.0, 2.0, 2.0, 2.0]) * math.log(2)}
    t = G.gap_table(nll, kinds, 0, 4, "ours", "baby")
    assert t["speaker line"] == {"chars": 2, "bpc ours": 4.0, "bpc baby": 2.0, "ours / baby": 2.0,
                                 "distance from goal, bits per char of the part": round((8 - 0.85 * 4) / 4, 4)}
    assert t["all"]["ours / baby"] == round(10 / 8, 3) and t["without speaker lines: ours / baby"] == 0.5


def test_text_parts_cut_at_the_unseen_play_and_refuse_another_text():
    report = "A:\nhi\n" + G.P.UNSEEN_PLAY + "sir\n"
    parts = G.text_parts("reporting half", report)
    assert report[slice(*parts["unseen play"])].startswith("Master:\n") and parts["seen play"][0] == 0
    with pytest.raises(ValueError, match="not Tiny Shakespeare"):
        G.text_parts("tuning text", report)


def test_main_refuses_rows_without_both_models_and_an_existing_results_file(tmp_path):
    with pytest.raises(SystemExit):
        G.main(["--rows", "ours", "--out", str(tmp_path / "x.json")])
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SystemExit):
        G.main(["--out", str(tmp_path / "x.json")])
