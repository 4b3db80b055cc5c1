"""benchmarks/line_speaker_steps.py: the learning curve of "who speaks the line" (a tiny run)."""
import json

import pytest


@pytest.fixture(scope="module")
def steps(load_script):
    return load_script("benchmarks/line_speaker_steps.py")


def test_the_line_speaker_curve_evaluates_at_the_start_every_interval_and_the_end_and_writes_its_file(steps, tmp_path):
    out = tmp_path / "curve.json"
    res = steps.main(["--steps", "3", "--eval-every", "2", "--draws", "1", "--examples", "48", "--held", "20", "--out", str(out)])
    assert [h["step"] for h in res["hist"]] == [0, 2, 3]
    assert res["hist"][0]["loss"] is None and all(h["loss"] > 0 for h in res["hist"][1:])
    assert all(0.0 <= h[k] <= 1.0 for h in res["hist"] for k in ("val_choice", "train_choice"))
    assert res["settings"]["training_examples"] == 48
    assert res["settings"]["held_out"] == {"val_plays": 20, "training_plays": 20}
    assert json.loads(out.read_text())["hist"] == res["hist"] and not out.with_suffix(".tmp").exists()


@pytest.mark.parametrize("bad", [{"steps": 0}, {"eval_every": 0}, {"lr": 0.0}, {"examples": 0}, {"held": 0}])
def test_the_line_speaker_curve_refuses_a_non_positive_setting(steps, bad):
    with pytest.raises(ValueError, match="must be positive"):
        steps.run(**bad)
