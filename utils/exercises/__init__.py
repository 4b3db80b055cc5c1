"""Auto-checked exercises: pass/fail with a hint, and a solution hidden until you ask for it.

Each notebook's exercises live in their own module (``utils/exercises/ch01.py`` for notebook 01)
as plain :class:`Exercise` objects. In a notebook::

    from utils.exercises import ch01
    def get_stats(ids): ...           # your answer
    ch01.get_stats.check(get_stats)   # prints ✅ or ❌ with a hint; never raises
    ch01.get_stats.solution()         # a collapsed "Show solution" block (click to open)
"""

from __future__ import annotations

import html
import traceback
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Exercise:
    """One exercise.

    ``test(answer)`` raises ``AssertionError`` (with a message a learner can act on) when the
    answer is wrong. ``solution_code`` is source code that defines ``answer_name``.
    """

    title: str
    test: Callable[[Any], None]
    hint: str
    solution_code: str
    answer_name: str

    def passes(self, answer: Any) -> tuple[bool, str]:
        """(passed, message) without printing; used by ``check`` and by the test-suite."""
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

    def check(self, answer: Any) -> bool:
        """Print ✅ or ❌ (with the hint) and return whether the answer passed."""
        ok, message = self.passes(answer)
        if ok:
            print(f"✅ {self.title}: {message}")
        else:
            print(f"❌ {self.title}: {message}\n   Hint: {self.hint}")
        return ok

    def reference(self) -> Any:
        """The object the solution code defines (executes ``solution_code``)."""
        namespace: dict[str, Any] = {}
        exec(compile(self.solution_code, f"<solution: {self.title}>", "exec"), namespace)
        if self.answer_name not in namespace:
            raise RuntimeError(f"solution of {self.title!r} does not define {self.answer_name!r}")
        return namespace[self.answer_name]

    def solution(self):
        """A collapsed 'Show solution' block: hidden by default, one click to open."""
        from IPython.display import HTML

        code = html.escape(self.solution_code.strip())
        return HTML(f"<details><summary><b>Show solution: {html.escape(self.title)}</b></summary>"
                    f"<pre><code>{code}</code></pre></details>")
