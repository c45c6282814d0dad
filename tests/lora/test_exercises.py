"""Chapter 02's exercise checkers: every right form passes, every typical mistake gets its hint."""

from __future__ import annotations

import math

import pytest

from lora_lab._exercises import ExerciseResult
from lora_lab.lora.exercises import (
    check_exercise_c_attn_params,
    check_exercise_first_gradient,
    check_exercise_rslora_scaling,
)

C_ATTN_R16 = 12 * 16 * (768 + 2304)  # 12 layers × r·(in + out), c_attn: 768 -> 3·768

RIGHT = [
    (check_exercise_c_attn_params, C_ATTN_R16),
    (check_exercise_c_attn_params, "589824"),
    (check_exercise_c_attn_params, float(C_ATTN_R16)),
    (check_exercise_first_gradient, "B"),
    (check_exercise_first_gradient, " b "),
    (check_exercise_rslora_scaling, 2.0),
    (check_exercise_rslora_scaling, 16 / math.sqrt(64)),
    (check_exercise_rslora_scaling, "2"),
]

WRONG = [  # (checker, answer, a phrase the hint must contain)
    (check_exercise_c_attn_params, 12 * 16 * (768 + 768), "768 -> 2304"),     # c_attn taken as square
    (check_exercise_c_attn_params, 16 * (768 + 2304), "12 layers"),           # one layer only
    (check_exercise_c_attn_params, 12 * 8 * (768 + 2304), "too low"),         # r = 8
    (check_exercise_c_attn_params, 12 * 768 * 2304, "too high"),              # the full update
    (check_exercise_c_attn_params, C_ATTN_R16 + 1, "too high"),               # exact: rel_tol = 0
    (check_exercise_c_attn_params, "lots", "expected a number"),
    (check_exercise_first_gradient, "A", "Which of those is zero when B = 0"),
    (check_exercise_first_gradient, "both", "dL/dA is multiplied by Bᵀ"),
    (check_exercise_first_gradient, "neither", "(Ax)ᵀ"),
    (check_exercise_first_gradient, "C", "not one of the options"),
    (check_exercise_rslora_scaling, 16 / 64, "√r"),                           # plain LoRA's α/r
    (check_exercise_rslora_scaling, 64 / 16, "√r"),
    (check_exercise_rslora_scaling, "two", "expected a number"),
]


@pytest.mark.parametrize("checker, answer", RIGHT)
def test_right_answers_pass(checker, answer):
    result = checker(answer)
    assert isinstance(result, ExerciseResult) and result.ok, str(result)
    assert str(result).startswith("Correct!")


@pytest.mark.parametrize("checker, answer, phrase", WRONG)
def test_wrong_answers_get_a_hint(checker, answer, phrase):
    result = checker(answer)
    assert isinstance(result, ExerciseResult) and not result.ok
    assert phrase in result.message, result.message
    assert str(result).startswith("Not yet.")


@pytest.mark.parametrize("checker", [check_exercise_c_attn_params, check_exercise_first_gradient,
                                     check_exercise_rslora_scaling])
def test_placeholder_none_is_a_wrong_answer_not_an_error(checker):
    result = checker(None)
    assert not result.ok and "None" in result.message


def test_right_answer_explains_why():
    assert "768 + 2304" in check_exercise_c_attn_params(C_ATTN_R16).message
    assert "dL/dB" in check_exercise_first_gradient("B").message
    assert "√64" in check_exercise_rslora_scaling(2).message
