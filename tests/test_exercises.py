"""Every auto-checked exercise in the course: its reference solution passes, a wrong answer fails."""

import importlib
import pkgutil

import pytest

import utils.exercises as exercises_pkg
from utils.exercises import Exercise


def _all_exercises():
    found = []
    for info in pkgutil.iter_modules(exercises_pkg.__path__):
        module = importlib.import_module(f"utils.exercises.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, Exercise):
                found.append(pytest.param(obj, id=f"{info.name}.{name}"))
    return found


ALL = _all_exercises()


def test_every_notebook_module_has_at_least_three_exercises():
    per_module = {}
    for param in ALL:
        module = param.id.split(".")[0]
        per_module[module] = per_module.get(module, 0) + 1
    assert per_module, "no exercise modules found"
    assert all(n >= 3 for n in per_module.values()), per_module


@pytest.mark.parametrize("exercise", ALL)
def test_reference_solution_passes_its_own_check(exercise):
    ok, message = exercise.passes(exercise.reference())
    assert ok, message


@pytest.mark.parametrize("exercise", ALL)
def test_a_missing_answer_fails_with_a_message(exercise):
    ok, message = exercise.passes(None)
    assert not ok and message


def _stub(*args, **kwargs):
    raise NotImplementedError


def test_check_reports_an_unfinished_stub_without_raising(capsys):
    exercise = ALL[0].values[0]
    assert exercise.check(_stub) is False
    out = capsys.readouterr().out
    assert "❌" in out and "not implemented yet" in out and "Hint:" in out


def test_check_prints_success_for_the_reference(capsys):
    exercise = ALL[0].values[0]
    assert exercise.check(exercise.reference()) is True
    assert "✅" in capsys.readouterr().out


def test_solution_is_hidden_in_a_collapsed_block():
    exercise = ALL[0].values[0]
    html = exercise.solution().data
    assert html.startswith("<details>") and "<summary>" in html and "open" not in html.split(">")[0]
