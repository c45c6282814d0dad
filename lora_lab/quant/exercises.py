"""Checkers for the exercises of chapter 03 (4-bit quantization, NF4, double quantization, QLoRA)."""

from __future__ import annotations

import torch

from lora_lab._exercises import ExerciseResult, check_choice, check_number, is_placeholder
from lora_lab.quant.blockwise import bits_per_param, nf4_codebook

# Ex. 1: storage of blocksize-128 NF4 with double quantization (bits per parameter).
EX1_BLOCKSIZE = 128
# Ex. 2: a 7B-parameter model stored as NF4, blocksize 64, double quantization, in GB (1e9 bytes).
EX2_PARAMS = 7e9
# Ex. 3: a block whose absmax is 0.5 holds the weight 0.2: which NF4 index (0..15) stores it?
EX3_ABSMAX, EX3_VALUE = 0.5, 0.2
# Ex. 4: in QLoRA, which of these is stored in 4 bits?
EX4_OPTIONS = ("W", "lora_A", "lora_B", "optimizer state", "gradients")
# Ex. 5: bitsandbytes' PagedAdamW on a CPU-only machine.
EX5_OPTIONS = ("pages to disk", "pages to GPU", "falls back to ordinary memory", "raises an error")


def check_exercise_bits_per_param(answer) -> ExerciseResult:
    """Ex. 1: bits/param of NF4 with blocksize 128 and double quantization."""
    expected = bits_per_param(EX1_BLOCKSIZE, double_quant=True)
    hint = ("4 bits per weight, plus each block's absmax spread over its 128 weights: with double "
            "quantization that absmax is 8 bits, and every 256 absmax values share one fp32 scale.")
    mistakes = ((bits_per_param(EX1_BLOCKSIZE), "that is without double quantization (an fp32 absmax "
                                                "per block)."),)
    return check_number(answer, expected, rel_tol=1e-4, hint=hint, mistakes=mistakes,
                        explain=f"4 + 8/128 + 32/(128·256) = {expected:.4f} bits per parameter.")


def check_exercise_7b_size(answer) -> ExerciseResult:
    """Ex. 2: GB (1e9 bytes) for 7e9 weights in NF4, blocksize 64, double quantization."""
    expected = EX2_PARAMS * bits_per_param(64, double_quant=True) / 8 / 1e9
    hint = "multiply the parameter count by bits/param (≈4.127), divide by 8 for bytes and by 1e9 for GB."
    mistakes = ((EX2_PARAMS * 4 / 8 / 1e9, "3.5 GB counts only the 4-bit codes; the block scales add to it."),)
    return check_number(answer, expected, rel_tol=0.01, hint=hint, mistakes=mistakes,
                        explain=f"7e9 × 4.127 / 8 ≈ {expected:.2f} GB (16-bit would be 14 GB).")


def check_exercise_nf4_index(answer) -> ExerciseResult:
    """Ex. 3: index of the NF4 code that stores 0.2 in a block with absmax 0.5."""
    code = nf4_codebook()
    scaled = EX3_VALUE / EX3_ABSMAX
    expected = int((code - scaled).abs().argmin())
    hint = (f"first divide by the block's absmax ({EX3_VALUE} / {EX3_ABSMAX}), then find the nearest "
            "value in nf4_codebook() and give its position (0 = -1.0, 15 = 1.0).")
    if is_placeholder(answer):
        return ExerciseResult(False, f"replace None with an index 0..15. {hint}")
    if isinstance(answer, bool) or not isinstance(answer, (int, torch.Tensor)) or not 0 <= int(answer) <= 15:
        return ExerciseResult(False, f"expected an integer index 0..15, got {answer!r}. {hint}")
    if int(answer) == int((code - EX3_VALUE).abs().argmin()):
        return ExerciseResult(False, "that is the nearest code to 0.2 itself: scale by the absmax first. " + hint)
    return check_number(int(answer), expected, rel_tol=0, abs_tol=0, hint=hint,
                        explain=f"0.2 / 0.5 = 0.4, nearest NF4 value {float(code[expected]):.4f} "
                                f"at index {expected}; it dequantizes to {float(code[expected]) * 0.5:.4f}.")


def check_exercise_what_is_4bit(answer) -> ExerciseResult:
    """Ex. 4: which part of a QLoRA setup is stored in 4 bits."""
    return check_choice(answer, "W", allowed=EX4_OPTIONS,
                        hint="Only the frozen base weight is quantized; everything that trains (the "
                             "adapters, their gradients and Adam's moments) stays in 16/32-bit.",
                        explain="only the frozen base weight W is 4-bit; A, B, their gradients and "
                                "the optimizer state stay in higher precision.")


def check_exercise_paged_cpu(answer) -> ExerciseResult:
    """Ex. 5: what bitsandbytes' paged optimizer does without CUDA."""
    return check_choice(answer, "falls back to ordinary memory", allowed=EX5_OPTIONS,
                        hint="Paging relies on CUDA unified memory. Look at the warning the optimizer "
                             "printed in the paged-optimizer section, and at the type of its state tensors.",
                        explain="on CPU it warns and allocates ordinary tensors: nothing is paged.")
