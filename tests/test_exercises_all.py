"""The contract every chapter's exercise checkers keep, discovered so that new chapters are covered.

Per-chapter tests (tests/<chapter>/test_exercises.py) check
the right answers and the hint for each typical mistake. This file checks, for every
``check_exercise_*`` in a chapter's ``lora_lab/<chapter>/exercises.py`` and every chapter notebook:

- each chapter (01 and on) ends with exercises that call a library checker;
- each checker is used by a notebook and unit-tested somewhere under tests/;
- no answer, of any type, makes a checker raise: a learner's wrong answer (the placeholder
  ``None``, text, a list, NaN) gets an ``ExerciseResult`` with a hint, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import pkgutil
import re
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lora_lab
from lora_lab._exercises import ExerciseResult

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00_"))


def discover_checkers():
    found = []
    chapters = [info.name for info in pkgutil.iter_modules(lora_lab.__path__) if info.ispkg]
    for chapter in chapters:
        if importlib.util.find_spec(f"lora_lab.{chapter}.exercises") is None:
            continue
        module = importlib.import_module(f"lora_lab.{chapter}.exercises")
        found += [fn for name, fn in inspect.getmembers(module, inspect.isfunction)
                  if name.startswith("check_exercise_") and fn.__module__ == module.__name__]
    return found


CHECKERS = discover_checkers()
IDS = [f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}" for c in CHECKERS]
JUNK = [None, "", "   ", "banana", [], {}, (1, 2), float("nan"), float("-inf"), -1, 10 ** 30, object()]
ANY_ANSWER = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                       st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _call(checker, answer):
    """Give ``answer`` to every required argument of the checker (all take one answer today)."""
    required = [p for p in inspect.signature(checker).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return checker(*[answer] * max(1, len(required)))


def _code(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_checkers_are_found():
    assert len(CHECKERS) >= 5, [c.__name__ for c in CHECKERS]


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_ends_with_checked_exercises(notebook):
    nb = nbformat.read(notebook, as_version=4)
    calls = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and re.search(r"check_exercise_\w+\(", c.source)]
    assert calls, f"{notebook.name} has no exercise checked by a library check_exercise_* function"
    headings = [i for i, c in enumerate(nb.cells)
                if c.cell_type == "markdown" and re.search(r"^#+ .*exercise", c.source, re.I | re.M)]
    assert headings and headings[-1] < calls[0], f"{notebook.name}: exercises should sit under an 'Exercises' heading"
    code_after = [c for c in nb.cells[calls[-1] + 1:] if c.cell_type == "code" and c.source.strip()]
    assert len(code_after) <= 2, \
        f"{notebook.name}: the exercises should close the chapter ({len(code_after)} code cells follow)"


@pytest.mark.parametrize("checker", CHECKERS, ids=IDS)
def test_every_checker_is_used_by_a_notebook(checker):
    users = [p.name for p in (REPO / "notebooks").glob("*.ipynb") if checker.__name__ in _code(p)]
    assert users, f"{checker.__name__} is not used by any notebook"


@pytest.mark.parametrize("checker", CHECKERS, ids=IDS)
def test_every_checker_has_its_own_unit_tests(checker):
    this = Path(__file__).name
    tests = [p.name for p in (REPO / "tests").rglob("test_*.py")
             if p.name != this and re.search(rf"\b{checker.__name__}\b", p.read_text())]
    assert tests, f"{checker.__name__} is not referenced by any unit test (test its right and wrong answers)"


@pytest.mark.parametrize("checker", CHECKERS, ids=IDS)
def test_checker_has_a_docstring_saying_which_exercise(checker):
    assert checker.__doc__ and checker.__doc__.strip(), f"{checker.__name__} has no docstring"


@pytest.mark.parametrize("checker", CHECKERS, ids=IDS)
@pytest.mark.parametrize("answer", JUNK, ids=[repr(j)[:12] for j in JUNK])
def test_junk_answers_get_a_hint_not_an_exception(checker, answer):
    result = _call(checker, answer)
    assert isinstance(result, ExerciseResult), f"{checker.__name__}({answer!r}) returned {result!r}"
    assert not result.ok, f"{checker.__name__} accepted {answer!r}"
    assert len(result.message.strip()) >= 20, f"{checker.__name__}({answer!r}): no real hint: {result.message!r}"
    assert str(result).startswith("Not yet.") and "Not yet" in result._repr_markdown_()


@pytest.mark.parametrize("checker", CHECKERS, ids=IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=ANY_ANSWER)
def test_any_answer_returns_a_result(checker, answer):
    result = _call(checker, answer)
    assert isinstance(result, ExerciseResult) and isinstance(result.message, str) and result.message
    if isinstance(answer, float) and not math.isfinite(answer):
        assert not result.ok
