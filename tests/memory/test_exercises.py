"""Chapter 04 exercise checkers: right answers pass, wrong ones get a hint."""

import pytest

from lora_lab.memory.exercises import (
    check_exercise_adapter_bytes,
    check_exercise_largest_component,
    check_exercise_nf4_base,
    check_exercise_packed_numel,
)
from lora_lab.memory.predict import training_memory


def test_adapter_bytes():
    assert check_exercise_adapter_bytes(16 * 16 * 8192)
    wrong = check_exercise_adapter_bytes(2 * 16 * 8192)
    assert not wrong and "gradient" in wrong.message


def test_nf4_base():
    b = training_memory("llama-2-13b", "qlora")
    right = (b.components["quantized base"] + b.components["unquantized base"]) / 1e9
    assert check_exercise_nf4_base(right) and check_exercise_nf4_base(round(right, 2))
    assert not check_exercise_nf4_base(13.0 / 2)  # 4 bits flat, no constants, no 16-bit leftovers
    assert not check_exercise_nf4_base(26.0)


def test_packed_numel():
    assert check_exercise_packed_numel(4096 * 4096 // 2)
    wrong = check_exercise_packed_numel(4096 * 4096)
    assert not wrong and "uint8" in wrong.message


def test_largest_component():
    assert check_exercise_largest_component("activations")
    assert check_exercise_largest_component("Activations ")
    assert not check_exercise_largest_component("quantized base")


@pytest.mark.parametrize("check", [check_exercise_adapter_bytes, check_exercise_nf4_base,
                                   check_exercise_packed_numel, check_exercise_largest_component])
def test_placeholder_gets_hint(check):
    result = check(None)
    assert not result and "None" in result.message
