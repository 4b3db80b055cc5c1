import random

import numpy as np
import pytest
import torch

from utils.runtime import environment_report, get_device, is_fast, pick, set_seed


def test_pick_returns_fast_value_in_fast_mode(monkeypatch):
    monkeypatch.setenv("LLM_COURSE_FAST", "1")
    assert is_fast() is True
    assert pick(default=2000, fast=50) == 50


def test_pick_returns_default_value_when_fast_mode_is_off(monkeypatch):
    for off in ("0", "", "false"):
        monkeypatch.setenv("LLM_COURSE_FAST", off)
        assert is_fast() is False
        assert pick(default=2000, fast=50) == 2000
    monkeypatch.delenv("LLM_COURSE_FAST")
    assert pick(default="big", fast="small") == "big"


def test_unrecognised_fast_mode_value_is_an_error(monkeypatch):
    monkeypatch.setenv("LLM_COURSE_FAST", "maybe")
    with pytest.raises(ValueError, match="LLM_COURSE_FAST"):
        is_fast()


def test_set_seed_makes_python_numpy_and_torch_repeatable():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    set_seed(1234)
    first = draw()
    set_seed(1234)
    assert draw() == first
    set_seed(1235)
    assert draw() != first


@pytest.mark.parametrize("bad", [-1, 1.5, "7", True])
def test_set_seed_rejects_non_integer_or_negative_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        set_seed(bad)


def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("LLM_COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.runtime._mps_available", lambda: False)
    assert get_device() == torch.device("cpu")
    monkeypatch.setattr("utils.runtime._mps_available", lambda: True)
    assert get_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")


def test_get_device_override_and_environment_variable(monkeypatch):
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_rejects_unknown_or_unavailable_devices(monkeypatch):
    with pytest.raises(ValueError, match="unknown device"):
        get_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="cuda"):
        get_device("cuda")


def test_environment_report_names_versions_and_mode():
    report = environment_report()
    assert report["torch"] == torch.__version__
    assert report["fast mode"] in ("True", "False")
