"""Chapter 03 exercise checkers (lora_lab/quant/exercises.py): right answers pass, wrong ones get a hint."""

from lora_lab.quant.exercises import (
    EX4_OPTIONS,
    EX5_OPTIONS,
    check_exercise_7b_size,
    check_exercise_bits_per_param,
    check_exercise_nf4_index,
    check_exercise_paged_cpu,
    check_exercise_what_is_4bit,
)


def test_exercise_checkers():
    assert check_exercise_bits_per_param(4 + 8 / 128 + 32 / (128 * 256))
    assert not check_exercise_bits_per_param(4.25)                 # no double quantization
    assert "without double" in check_exercise_bits_per_param(4.25).message
    assert not check_exercise_bits_per_param(None) and not check_exercise_bits_per_param("x")
    assert check_exercise_7b_size(3.61) and not check_exercise_7b_size(3.5) and not check_exercise_7b_size(14)
    assert "scales" in check_exercise_7b_size(3.5).message
    assert check_exercise_nf4_index(12)
    assert not check_exercise_nf4_index(9) and "scale by the absmax" in check_exercise_nf4_index(9).message
    assert not check_exercise_nf4_index(10)
    assert not check_exercise_nf4_index(16) and not check_exercise_nf4_index(None)
    assert check_exercise_what_is_4bit("W") and not check_exercise_what_is_4bit("lora_A")
    assert not check_exercise_what_is_4bit("bias")
    assert check_exercise_paged_cpu("falls back to ordinary memory")
    assert not check_exercise_paged_cpu("pages to disk")
    assert set(EX4_OPTIONS) >= {"W"} and len(EX5_OPTIONS) == 4
    assert str(check_exercise_nf4_index(12)).startswith("Correct")
