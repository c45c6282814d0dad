"""lora_lab.adapters.exercises: right answers pass, typical wrong ones get their hint."""

import bitsandbytes.functional as F
import pytest
import torch

from lora_lab.adapters.exercises import (
    cat_rank,
    check_exercise_cat_rank,
    check_exercise_exact_combination,
    check_exercise_loftq_one_iteration,
    check_exercise_merged_copies_ratio,
    check_exercise_svd_full_rank_error,
    loftq_exercise_weight,
    loftq_one_iteration_errors,
    merged_copies_ratio,
)
from lora_lab.adapters.serving import serving_memory


def test_cat_rank():
    assert cat_rank() == 16
    assert check_exercise_cat_rank(16) and check_exercise_cat_rank("16")
    wrong = check_exercise_cat_rank(8)
    assert not wrong and "linear" in str(wrong)
    assert not check_exercise_cat_rank(64) and "too high" in str(check_exercise_cat_rank(64))


def test_exact_combination():
    assert check_exercise_exact_combination("cat") and check_exercise_exact_combination(" CAT ")
    for wrong in ("linear", "svd"):
        result = check_exercise_exact_combination(wrong)
        assert not result and "cross terms" in str(result)
    assert "not one of the options" in str(check_exercise_exact_combination("ties"))


def test_svd_full_rank_error():
    assert check_exercise_svd_full_rank_error(0) and check_exercise_svd_full_rank_error(1e-4)
    assert not check_exercise_svd_full_rank_error(0.09) and "Eckart" in str(check_exercise_svd_full_rank_error(0.09))


def test_merged_copies_ratio():
    m = serving_memory("llama-2-7b", 10, r=8, base_dtype="bf16", adapter_dtype="bf16")
    want = 10 * m.base_bytes / (m.base_bytes + 10 * m.adapter_bytes)
    assert merged_copies_ratio() == want and 9.5 < want < 9.9
    assert check_exercise_merged_copies_ratio(round(want, 2))
    assert "adapters' own memory" in str(check_exercise_merged_copies_ratio(10))
    assert not check_exercise_merged_copies_ratio(1 / want)


def test_loftq_one_iteration():
    """The answer, recomputed here from scratch: NF4 round trip (bitsandbytes, blocks of 64), then
    the best rank-4 fit of what it missed (scaling 1, one iteration)."""
    w = loftq_exercise_weight()
    assert tuple(w.shape) == (64, 128) and abs(float(w.std()) - 0.02) < 2e-3
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    residual = w - F.dequantize_4bit(q, state)
    s = torch.linalg.svdvals(residual)
    plain, after = loftq_one_iteration_errors()
    assert plain == pytest.approx(float(residual.norm()), rel=1e-5)
    assert after == pytest.approx(float(s[4:].norm()), rel=1e-4)  # Eckart–Young
    want = after / plain
    assert 0.5 < want < 1
    assert check_exercise_loftq_one_iteration(want) and check_exercise_loftq_one_iteration(f"{want:.4f}")
    for wrong, says in ((1.0, "removes nothing"), (after, "not its fraction"), (plain, "plain NF4's error")):
        result = check_exercise_loftq_one_iteration(wrong)
        assert not result and says in str(result)
    assert "too low" in str(check_exercise_loftq_one_iteration(want * 0.9))
    assert "replace None" in str(check_exercise_loftq_one_iteration(None))
