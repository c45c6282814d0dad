"""Checkers for the exercises of chapter 01 (rank, SVD, LoRA's parameter counts)."""

from __future__ import annotations

from lora_lab._exercises import ExerciseResult, check_choice, check_number
from lora_lab.rank.lowrank import break_even_rank, eckart_young_error, lora_param_count, matrix_rank

# Exercise 1: GPT-2 small's attention input projection c_attn maps 768 -> 2304 (q, k, v).
C_ATTN_D_IN, C_ATTN_D_OUT, C_ATTN_R = 768, 2304, 8
# Exercise 2: a matrix with these singular values; error of its best rank-2 approximation.
EY_SIGMAS = (5.0, 3.0, 1.0, 0.5)
EY_R = 2
# Exercise 3: break-even rank of a square 512 x 512 matrix.
BREAK_EVEN_D = 512
# Exercise 4: which heading is right for 4096 x 4096 at r=8?
SEED_OPTIONS = ("0.1%", "0.39%", "1%")
# Exercise 5: the rank of this 4×4 matrix (row 2 = 2·row 1, row 4 = row 1 + row 3).
RANK_MATRIX = ((1, 2, 3, 4),
               (2, 4, 6, 8),
               (1, 0, 1, 0),
               (2, 2, 4, 4))


def check_exercise_lora_params(answer) -> ExerciseResult:
    """Ex. 1: trainable parameters of LoRA r=8 on GPT-2's c_attn (d_in=768, d_out=2304)."""
    expected = lora_param_count(C_ATTN_D_OUT, C_ATTN_D_IN, C_ATTN_R)
    hint = ("A is (r, d_in) and B is (d_out, r), so count r·d_in + d_out·r. "
            "c_attn is not square: it maps 768 inputs to 2304 = 3·768 outputs (q, k and v at once).")
    mistakes = ((2 * C_ATTN_R * C_ATTN_D_IN, "that is 2·r·d, the count for a square 768×768 matrix."),
                (C_ATTN_D_IN * C_ATTN_D_OUT, "that is the full matrix d_in·d_out, not the LoRA update."))
    return check_number(answer, expected, rel_tol=0, abs_tol=0.5, hint=hint, mistakes=mistakes,
                        explain=f"{expected:,} = 8·(768 + 2304), {expected / (768 * 2304):.2%} of the "
                                f"{768 * 2304:,} entries of c_attn.")


def check_exercise_eckart_young(answer) -> ExerciseResult:
    """Ex. 2: ‖W - W_2‖_F for a matrix with singular values 5, 3, 1, 0.5."""
    W = [[s if i == j else 0.0 for j in range(len(EY_SIGMAS))] for i, s in enumerate(EY_SIGMAS)]
    expected = eckart_young_error(W, EY_R)  # sqrt(1² + 0.5²)
    hint = ("Eckart–Young: the best rank-r approximation keeps the r largest singular values, and its "
            "Frobenius error is the square root of the sum of the squares of the ones it drops.")
    dropped = EY_SIGMAS[EY_R:]
    mistakes = ((sum(dropped), "you added the dropped singular values; add their squares, then take "
                               "the square root."),
                (sum(s * s for s in dropped), "that is the squared error; take the square root."))
    return check_number(answer, expected, rel_tol=1e-3, hint=hint, mistakes=mistakes,
                        explain=f"sqrt(1² + 0.5²) = {expected:.4f}.")


def check_exercise_break_even(answer) -> ExerciseResult:
    """Ex. 3: the rank r at which LoRA on a 512×512 matrix stores as many numbers as the matrix."""
    expected = break_even_rank(BREAK_EVEN_D, BREAK_EVEN_D)
    hint = "Solve r·(d_in + d_out) = d_in·d_out for r, with d_in = d_out = 512."
    return check_number(answer, expected, rel_tol=0, abs_tol=1e-6, hint=hint,
                        explain=f"r = d/2 = {expected:g}. Above that, LoRA is not even smaller, and "
                                f"any rank up to {BREAK_EVEN_D} is reachable with a full update.")


def check_exercise_seed_percentage(answer) -> ExerciseResult:
    """Ex. 4: which fraction of a 4096×4096 matrix does LoRA r=8 train: "0.1%", "0.39%" or "1%"?"""
    hint = "Compute r·(d_in + d_out) / (d_in·d_out) = 2r/d for d = 4096, r = 8, and write it as a percentage."
    expected = f"{100 * 2 * 8 / 4096:.2f}%"
    return check_choice(answer, expected, allowed=SEED_OPTIONS, hint=hint,
                        explain="65,536 / 16,777,216 = 0.39%: the seed's heading \"0.1%\" is wrong, "
                                "its body is right.")


def check_exercise_rank(answer) -> ExerciseResult:
    """Ex. 5: the rank of :data:`RANK_MATRIX` (worked out by hand, then checked with ``matrix_rank``)."""
    expected = matrix_rank(RANK_MATRIX)
    hint = ("Count the linearly independent rows: is any row a combination of the others? "
            "Or count the singular values that are not (numerically) zero.")
    mistakes = ((len(RANK_MATRIX), "4 would mean all rows are independent; compare row 2 with row 1."),)
    return check_number(answer, expected, rel_tol=0, abs_tol=0.5, hint=hint, mistakes=mistakes,
                        explain=f"rank {expected}: {expected} singular values are above the tolerance.")
