"""Auto-checked exercises: pass/fail with hints that come only after an attempt, and a hidden solution.

Each notebook's exercises live in their own module (``utils/exercises/ch01.py`` for notebook 01)
as plain :class:`Exercise` objects. In a notebook::

    from utils.exercises import ch01
    def my_merges_from_ranks(ranks): ...          # your answer (a name the notebook does not use)
    ch01.merges_from_ranks.check(my_merges_from_ranks)   # ✅, or ❌ and what went wrong
    ch01.merges_from_ranks.solution()             # a collapsed "Show solution" block

Hints escalate: nothing before a first attempt; the first wrong attempt shows the conceptual
``hint``; a second wrong attempt adds the specific ``hint2``. An unfinished stub (``...`` or
``raise NotImplementedError``) is not an attempt and shows no hint.
"""

from __future__ import annotations

import html
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Exercise"]


@dataclass
class Exercise:
    """One exercise.

    ``test(answer)`` raises ``AssertionError`` (with a message a learner can act on) when the
    answer is wrong. ``hint`` is conceptual (after the first failed check), ``hint2`` specific
    (after the second). ``solution_code`` is source code that defines ``answer_name``;
    ``wrong_code`` defines it with a realistic mistake (an off-by-one, a missing normalisation...),
    which the test-suite checks is rejected.
    """

    title: str
    test: Callable[[Any], None]
    hint: str
    solution_code: str
    answer_name: str
    hint2: str = ""
    wrong_code: str = ""
    failures: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("title", "hint", "solution_code", "answer_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"Exercise.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if not callable(self.test):
            raise TypeError(f"Exercise.test must be callable, got {type(self.test).__name__}")

    def passes(self, answer: Any) -> tuple[bool, str]:
        """(passed, message) without printing or counting; used by ``check`` and by the test-suite."""
        try:
            self.test(answer)
        except NotImplementedError:
            return False, "not implemented yet: replace the `...` / `raise NotImplementedError` with your code."
        except AssertionError as exc:
            return False, str(exc) or "the answer does not match the expected result."
        except Exception as exc:  # a crash in learner code is a failed attempt, not a notebook error
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return False, f"your code raised {last}"
        return True, "correct!"

    def _is_stub(self, answer: Any) -> bool:
        try:
            self.test(answer)
        except NotImplementedError:
            return True
        except Exception:
            return False
        return False

    def check(self, answer: Any) -> bool:
        """Print ✅, or ❌ with what went wrong and (from the first failed attempt on) a hint;
        return whether the answer passed. Never raises."""
        ok, message = self.passes(answer)
        if ok:
            print(f"✅ {self.title}: {message}")
            return True
        if message.startswith("not implemented yet"):
            print(f"❌ {self.title}: {message}")  # not an attempt: no hint yet
            return False
        self.failures += 1
        lines = [f"❌ {self.title}: {message}", f"   Hint: {self.hint}"]
        if self.failures >= 2 and self.hint2:
            lines.append(f"   More specific: {self.hint2}")
        if self.failures >= 2:
            lines.append(f"   Stuck? Show the solution with .solution().")
        print("\n".join(lines))
        return False

    def _exec(self, code: str, label: str) -> Any:
        namespace: dict[str, Any] = {}
        exec(compile(code, f"<{label}: {self.title}>", "exec"), namespace)
        if self.answer_name not in namespace:
            raise RuntimeError(f"the {label} of {self.title!r} does not define {self.answer_name!r}")
        return namespace[self.answer_name]

    def reference(self) -> Any:
        """The object the solution code defines (executes ``solution_code``)."""
        return self._exec(self.solution_code, "solution")

    def wrong_answer(self) -> Any:
        """The realistic wrong answer that ``wrong_code`` defines (for the test-suite)."""
        if not self.wrong_code.strip():
            raise RuntimeError(f"exercise {self.title!r} has no wrong_code")
        return self._exec(self.wrong_code, "wrong answer")

    def solution(self):
        """A collapsed 'Show solution' block: hidden by default, one click to open."""
        from IPython.display import HTML

        code = html.escape(self.solution_code.strip())
        return HTML(f"<details><summary><b>Show solution: {html.escape(self.title)}</b></summary>"
                    f"<pre><code>{code}</code></pre></details>")
