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
def test_a_realistic_wrong_answer_fails(exercise):
    assert exercise.wrong_code.strip(), f"{exercise.title!r} needs wrong_code: a realistic mistake the check must catch"
    ok, message = exercise.passes(exercise.wrong_answer())
    assert not ok and message, f"the check of {exercise.title!r} accepts the wrong answer in wrong_code"


@pytest.mark.parametrize("exercise", ALL)
def test_every_exercise_has_two_levels_of_hint(exercise):
    assert exercise.hint.strip() and exercise.hint2.strip() and exercise.hint != exercise.hint2
    assert exercise.hint.strip() not in exercise.solution_code, "the conceptual hint must not be the solution"


def test_hints_escalate_only_after_failed_attempts(capsys):
    exercise = ALL[0].values[0]
    fresh = type(exercise)(title=exercise.title, test=exercise.test, hint=exercise.hint, hint2=exercise.hint2,
                           solution_code=exercise.solution_code, answer_name=exercise.answer_name,
                           wrong_code=exercise.wrong_code)
    wrong = fresh.wrong_answer()
    assert fresh.check(wrong) is False
    first = capsys.readouterr().out
    assert fresh.hint in first and fresh.hint2 not in first
    assert fresh.check(wrong) is False
    second = capsys.readouterr().out
    assert fresh.hint2 in second and ".solution()" in second


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
    assert "❌" in out and "not implemented yet" in out
    assert "Hint" not in out, "an unfinished stub is not an attempt: no hint before a first try"


def test_check_prints_success_for_the_reference(capsys):
    exercise = ALL[0].values[0]
    assert exercise.check(exercise.reference()) is True
    assert "✅" in capsys.readouterr().out


def test_solution_is_hidden_in_a_collapsed_block():
    exercise = ALL[0].values[0]
    html = exercise.solution().data
    assert html.startswith("<details>") and "<summary>" in html and "open" not in html.split(">")[0]
