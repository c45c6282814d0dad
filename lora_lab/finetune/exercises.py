"""Checkers for the exercises of chapter 05 (a full QLoRA run on the shipped GPT-2)."""

from __future__ import annotations

import json
from typing import Sequence

from lora_lab._exercises import ExerciseResult, check_choice, check_number
from lora_lab.finetune.models import SHIPPED_MODEL
from lora_lab.quant.blockwise import bits_per_param


def _shipped_dims() -> tuple[int, int]:
    cfg = json.loads((SHIPPED_MODEL / "config.json").read_text())
    return cfg["n_layer"], cfg["n_embd"]


def lora_params_all_linear(r: int, n_layer: int, d: int) -> int:
    """r·(in + out) summed over a GPT-2 block's c_attn (d->3d), attn c_proj (d->d),
    c_fc (d->4d) and mlp c_proj (4d->d), times the number of blocks."""
    return n_layer * r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))


def check_exercise_trainable_params(answer, r: int = 16) -> ExerciseResult:
    """Ex. 1: trainable parameters of LoRA with rank ``r`` on all 16 block linears of lab-gpt2."""
    n_layer, d = _shipped_dims()
    return check_number(answer, lora_params_all_linear(r, n_layer, d), rel_tol=0,
                        hint=f"Each wrapped layer adds r·(in + out). A block has four linears: c_attn "
                             f"{d}->{3 * d}, attn.c_proj {d}->{d}, mlp.c_fc {d}->{4 * d}, mlp.c_proj "
                             f"{4 * d}->{d}; the model has {n_layer} blocks.",
                        explain=f"{n_layer} blocks × {r} × 12·{d} = {lora_params_all_linear(r, n_layer, d):,}.")


def check_exercise_bits_per_weight(answer) -> ExerciseResult:
    """Ex. 2: storage bits per weight of NF4 with double quantization (blocks of 64, 256)."""
    return check_number(answer, bits_per_param(64, True), rel_tol=1e-3,
                        hint="4 bits for the code, plus the block's absmax shared by 64 weights: "
                             "8 bits after double quantization, and one fp32 scale per 256 absmax values.",
                        explain="4 + 8/64 + 32/(64·256) ≈ 4.127 bits.")


def check_exercise_merge_recipe(answer) -> ExerciseResult:
    """Ex. 3: which way to ship a QLoRA-trained model as one set of weights?"""
    return check_choice(answer, "b", allowed=["a", "b", "c"],
                        hint="You evaluated W_dq + B A, where W_dq is the dequantized 4-bit weight. "
                             "Which option stores exactly that sum, and which rounds it to 4 bits again?",
                        explain="Merge into the dequantized (16/32-bit) base: W_dq + B A is stored exactly. "
                                "Merging into 4 bits re-quantizes the sum and loses part of B A.")


def check_exercise_first_step_over(answer, evals: Sequence[tuple[int, dict]], threshold: float = 0.9,
                                   key: str = "exact_match") -> ExerciseResult:
    """Ex. 4: the first evaluated step at which held-out exact match reached ``threshold``."""
    try:
        pairs = [(int(step), float(metrics[key])) for step, metrics in evals]
    except (TypeError, ValueError, KeyError, IndexError):
        return ExerciseResult(False, "the second argument must be result.evals from your training run: "
                                     f"a list of (step, {{'{key}': ...}}) pairs.")
    first = next((s for s, m in pairs if m >= threshold), None)
    if first is None:
        return ExerciseResult(answer is None, "No evaluation reached the threshold; the answer is None.")
    return check_number(answer, first, rel_tol=0,
                        hint="Look at result.evals: a list of (step, {'exact_match': ...}); take the "
                             f"smallest step whose exact match is at least {threshold}.",
                        explain=f"Step {first}.")
