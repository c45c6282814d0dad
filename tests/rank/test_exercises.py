"""The rank chapter's exercise checkers accept right answers and give hints for wrong ones."""

from __future__ import annotations

import math

import pytest

from lora_lab._exercises import ExerciseResult
from lora_lab.rank.exercises import (
    check_exercise_break_even,
    check_exercise_eckart_young,
    check_exercise_lora_params,
    check_exercise_rank,
    check_exercise_seed_percentage,
)

RIGHT = [
    (check_exercise_lora_params, 24_576),
    (check_exercise_lora_params, "24576"),
    (check_exercise_eckart_young, math.sqrt(1.25)),
    (check_exercise_eckart_young, 1.118),
    (check_exercise_break_even, 256),
    (check_exercise_seed_percentage, "0.39%"),
    (check_exercise_seed_percentage, " 0.39% "),
    (check_exercise_rank, 2),
]

WRONG = [  # (checker, answer, a phrase the hint must contain)
    (check_exercise_lora_params, 12_288, "square"),
    (check_exercise_lora_params, 768 * 2304, "full matrix"),
    (check_exercise_lora_params, 30_000, "too high"),
    (check_exercise_lora_params, "many", "expected a number"),
    (check_exercise_eckart_young, 1.5, "squares"),
    (check_exercise_eckart_young, 1.25, "square root"),
    (check_exercise_eckart_young, 3.0, "Eckart–Young"),
    (check_exercise_break_even, 128, "too low"),
    (check_exercise_break_even, 512, "r·(d_in + d_out) = d_in·d_out"),
    (check_exercise_seed_percentage, "0.1%", "2r/d"),
    (check_exercise_seed_percentage, "2%", "not one of the options"),
    (check_exercise_rank, 4, "row 2 with row 1"),
    (check_exercise_rank, 3, "too high"),
    (check_exercise_rank, 1, "too low"),
]

CHECKERS = [check_exercise_lora_params, check_exercise_eckart_young, check_exercise_break_even,
            check_exercise_seed_percentage, check_exercise_rank]


@pytest.mark.parametrize("checker, answer", RIGHT)
def test_right_answers_pass(checker, answer):
    result = checker(answer)
    assert isinstance(result, ExerciseResult) and result.ok, str(result)
    assert str(result).startswith("Correct!")


@pytest.mark.parametrize("checker, answer, phrase", WRONG)
def test_wrong_answers_get_a_hint(checker, answer, phrase):
    result = checker(answer)
    assert not result.ok
    assert phrase in result.message
    assert str(result).startswith("Not yet.")


@pytest.mark.parametrize("checker", CHECKERS)
def test_placeholder_none_gets_a_hint_not_an_error(checker):
    result = checker(None)
    assert not result.ok and "replace None" in result.message and len(result.message) > 40
