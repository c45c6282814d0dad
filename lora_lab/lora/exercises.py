"""Checkers for the exercises of chapter 02 (the LoRA layer)."""

from __future__ import annotations

from transformers import GPT2Config

from lora_lab._exercises import ExerciseResult, check_choice, check_number


def _gpt2_small_c_attn_params(r: int) -> int:
    cfg = GPT2Config()
    d = cfg.n_embd
    return cfg.n_layer * r * (d + 3 * d)  # c_attn: (in=768) -> (out=3*768 = Q, K, V fused)


def check_exercise_c_attn_params(answer) -> ExerciseResult:
    """Ex. 1: trainable parameters of r=16 LoRA on GPT-2 small's c_attn only."""
    return check_number(answer, _gpt2_small_c_attn_params(16), rel_tol=0,
                        hint="c_attn maps 768 -> 2304 (Q, K and V together), not 768 -> 768; "
                             "each layer adds r·(in + out) and GPT-2 small has 12 layers.",
                        explain="12 layers × 16 × (768 + 2304).")


def check_exercise_first_gradient(answer) -> ExerciseResult:
    """Ex. 2: which matrix gets a non-zero gradient at step 0 with B = 0?"""
    return check_choice(answer, "B", allowed=["A", "B", "both", "neither"],
                        hint="Write h = B(Ax). dL/dA is multiplied by Bᵀ; dL/dB by (Ax)ᵀ. "
                             "Which of those is zero when B = 0?",
                        explain="dL/dB = g (A x)ᵀ ≠ 0, while dL/dA = Bᵀ g xᵀ = 0 until B moves.")


def check_exercise_rslora_scaling(answer) -> ExerciseResult:
    """Ex. 3: scaling for r=64, lora_alpha=16 with rsLoRA."""
    return check_number(answer, 16 / 64 ** 0.5, rel_tol=1e-6,
                        hint="rsLoRA divides lora_alpha by √r, not by r.",
                        explain="16 / √64 = 2.")
