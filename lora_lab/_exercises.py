"""Checkers for the end-of-chapter exercises, one module per chapter.

Each ``check_exercise_*`` function returns an :class:`ExerciseResult`: ``ok`` and a
message that, for a wrong answer, gives a hint rather than the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ExerciseResult:
    """Outcome of checking one answer; ``str()`` gives the learner-facing message."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return ("Correct! " if self.ok else "Not yet. ") + self.message

    def _repr_markdown_(self) -> str:  # rendered nicely in Jupyter
        return ("✅ **Correct!** " if self.ok else "❌ **Not yet.** ") + self.message


def is_placeholder(answer) -> bool:
    """True for the ``None`` (or ``...``) a notebook leaves for the learner to replace."""
    return answer is None or answer is Ellipsis


def check_number(answer, expected: float, *, rel_tol: float = 1e-3, abs_tol: float = 0.0,
                 hint: str, explain: str = "",
                 mistakes: tuple[tuple[float, str], ...] = ()) -> ExerciseResult:
    """Compare a numeric answer with ``expected``; a wrong answer gets ``hint``.

    Args:
        mistakes: (wrong value, what that answer means) pairs for common slips, matched with
            the same tolerance; the learner gets that explanation before the hint.
    """
    if is_placeholder(answer):
        return ExerciseResult(False, f"replace None with your number. {hint}")
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return ExerciseResult(False, f"expected a number, got {answer!r}. {hint}")
    def close(a, b):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=max(abs_tol, 1e-12))

    if close(value, expected):
        return ExerciseResult(True, explain or f"{value:g} is right.")
    for wrong, meaning in mistakes:
        if close(value, wrong):
            return ExerciseResult(False, f"{meaning} {hint}")
    direction = "too high" if value > expected else "too low"
    return ExerciseResult(False, f"{value:g} is {direction}. {hint}")


def check_choice(answer, expected, *, allowed, hint: str, explain: str = "") -> ExerciseResult:
    """Check a multiple-choice answer (case-insensitive for strings)."""
    if is_placeholder(answer):
        return ExerciseResult(False, f"replace None with one of {list(allowed)}. {hint}")
    def norm(a):
        return a.strip().lower() if isinstance(a, str) else a

    allowed_norm = [norm(a) for a in allowed]
    if norm(answer) not in allowed_norm:
        return ExerciseResult(False, f"{answer!r} is not one of the options {list(allowed)}. {hint}")
    if norm(answer) == norm(expected):
        return ExerciseResult(True, explain or f"{answer!r} is right.")
    return ExerciseResult(False, hint)
