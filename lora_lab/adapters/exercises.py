"""Checkers for the exercises of chapter 07 (many adapters on one base); the answers are
computed by the library (the adapters' configs, chapter 04's byte counts, LoftQ), never typed in."""

from __future__ import annotations

import torch

from lora_lab._exercises import ExerciseResult, check_choice, check_number
from lora_lab.adapters.pair import TASKS, adapter_config
from lora_lab.adapters.serving import serving_memory
from lora_lab.lora import COMBINATION_TYPES
from lora_lab.lora.variants import loftq_init

EX3_SETUP = dict(model="llama-2-7b", n_adapters=10, r=8, target_modules="all-linear", base_dtype="bf16",
                 adapter_dtype="bf16")


def cat_rank() -> int:
    """The rank of a "cat" combination of the chapter's adapters: the sum of their ranks."""
    return sum(adapter_config(name, 0).r for name in TASKS)


def check_exercise_cat_rank(answer) -> ExerciseResult:
    """Ex. 1: the rank r of a combination_type="cat" adapter made from the "qa" and "cipher" adapters."""
    want, r = cat_rank(), adapter_config("qa", 0).r
    return check_number(answer, want, rel_tol=0,
                        hint='"cat" stacks the A matrices (rows) and the B matrices (columns) of the adapters it '
                             "combines. How many rows does the stacked A have?",
                        mistakes=((r, f"{r} is the rank of a 'linear' (or default 'svd') combination, which keeps "
                                      "one adapter's rank."),),
                        explain=f"{want} = {' + '.join(str(adapter_config(n, 0).r) for n in TASKS)}: the ranks add, "
                                "so B A = Σ wᵢ ΔWᵢ holds exactly.")


def check_exercise_exact_combination(answer) -> ExerciseResult:
    """Ex. 2: which combination_type gives exactly Σ wᵢ ΔWᵢ for any weights (at its default rank)?"""
    why = ('"cat": its B A is Σ wᵢ sᵢ Bᵢ Aᵢ term by term. "linear" adds the cross terms Bᵢ Aⱼ; "svd" at the '
           f"default rank (the largest rᵢ, {adapter_config('qa', 0).r} here) truncates a sum of rank up to Σ rᵢ.")
    return check_choice(answer, "cat", allowed=COMBINATION_TYPES, explain=why,
                        hint="Write out B A for each type. Which one has cross terms Bᵢ Aⱼ (i ≠ j), and which one "
                             "throws away singular values when the sum has a larger rank than it keeps?")


def check_exercise_svd_full_rank_error(answer) -> ExerciseResult:
    """Ex. 3: the relative error ‖ΔW_svd − Σ wᵢΔWᵢ‖ / ‖Σ wᵢΔWᵢ‖ of combination_type="svd" with
    svd_rank = r₁ + r₂ (16 here)."""
    return check_number(answer, 0.0, abs_tol=1e-3,
                        hint="Eckart–Young: the error of the best rank-k approximation is made of the singular "
                             "values beyond k. What is the largest rank Σ wᵢ BᵢAᵢ can have?",
                        explain="0 (up to rounding): the sum of two rank-8 updates has rank at most 16, so a "
                                "rank-16 SVD keeps every non-zero singular value, as exact as \"cat\".")


def merged_copies_ratio() -> float:
    """Memory of 10 merged bf16 copies of Llama-2-7B over one base + 10 r = 8 adapters (:data:`EX3_SETUP`)."""
    return serving_memory(**EX3_SETUP).ratio


def check_exercise_merged_copies_ratio(answer) -> ExerciseResult:
    """Ex. 4: 10 tasks on Llama-2-7B (bf16, r = 8 all-linear adapters in bf16): memory of 10 merged
    copies divided by the memory of one base plus 10 adapters."""
    want = merged_copies_ratio()
    m = serving_memory(**EX3_SETUP)
    return check_number(answer, want, rel_tol=5e-3,
                        hint="Use serving_memory (or count: a copy is every weight in 2 bytes; an adapter is "
                             "r·(in + out) weights per adapted layer in 2 bytes). Divide 10 copies by one copy "
                             "plus 10 adapters.",
                        mistakes=((m.n_adapters, "That leaves out the adapters' own memory."),),
                        explain=f"{want:.2f}: 10 × {m.base_bytes / 1e9:.2f} GB against {m.base_bytes / 1e9:.2f} GB + "
                                f"10 × {m.adapter_bytes / 1e6:.0f} MB.")


EX5_SETUP = dict(shape=(64, 128), std=0.02, seed=0, r=4)


def loftq_exercise_weight() -> torch.Tensor:
    """Ex. 5's weight: (64, 128), N(0, 0.02²) drawn from ``torch.Generator().manual_seed(0)``."""
    g = torch.Generator().manual_seed(EX5_SETUP["seed"])
    return torch.randn(*EX5_SETUP["shape"], generator=g) * EX5_SETUP["std"]


def loftq_one_iteration_errors() -> tuple[float, float]:
    """(‖W − Q(W)‖_F, ‖W − (Q₁ + B₁A₁)‖_F) of Ex. 5's weight: plain NF4 and LoftQ after one
    iteration at r = 4, from :func:`lora_lab.lora.variants.loftq_init`."""
    errors = loftq_init(loftq_exercise_weight(), EX5_SETUP["r"], num_iter=1).errors
    return errors[0], errors[1]


def check_exercise_loftq_one_iteration(answer) -> ExerciseResult:
    """Ex. 5: on Ex. 5's weight, LoftQ's error after one iteration (r = 4) as a fraction of plain
    NF4's error, ‖W − (Q₁ + B₁A₁)‖_F / ‖W − Q(W)‖_F."""
    errors = loftq_one_iteration_errors()
    want = errors[1] / errors[0]
    return check_number(answer, want, rel_tol=2e-3,
                        hint="loftq_init(W, r=4, num_iter=1).errors holds (plain NF4 error, error after one "
                             "iteration); divide the second by the first.",
                        mistakes=((1.0, "1 would mean the rank-4 correction removes nothing."),
                                  (errors[1], "That is the error itself, not its fraction of plain NF4's."),
                                  (errors[0], "That is plain NF4's error ‖W − Q(W)‖_F.")),
                        explain=f"{want:.3f}: B₁A₁ is the best rank-4 fit of W − Q(W) (Eckart–Young), but NF4's "
                                "error on a Gaussian weight is noise-like, spread over all 64 singular directions, "
                                f"so 4 of them remove only {100 * (1 - want):.0f}% of it.")
