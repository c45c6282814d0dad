"""Checkers for the exercises of chapter 06 (experiments): predict, then run; the answers
are computed from the committed records (data/experiments/), never typed in."""

from __future__ import annotations

from lora_lab._exercises import ExerciseResult, check_choice, check_number
from lora_lab.experiments import analysis as A
from lora_lab.experiments.sweep import BASE, all_records

RANK_SWEEP = dict(recipe="lora", lora_alpha=BASE.lora_alpha, lr=BASE.lr, targets="all-linear", init="kaiming",
                  batch_size=BASE.batch_size, use_rslora=False, steps=BASE.steps)


def smallest_rank_near_best(task: str = "cipher", k: int = 16, records=None) -> int:
    """The smallest r whose accuracy the data cannot tell apart from the best r (|z| ≤ 2)."""
    ps = A.series(records or all_records(), "r", task=task, k=k, **RANK_SWEEP)
    return min(p.config["r"] for p in A.indistinguishable_from_best(ps))


def best_lr(recipe: str, r: int = 8, records=None) -> float:
    """The learning rate with the highest mean accuracy on cipher K=16 (LoRA at rank r, or full)."""
    where = dict(task="cipher", k=16, batch_size=BASE.batch_size, steps=BASE.steps)
    if recipe == "lora":
        where.update(RANK_SWEEP, r=r)
        where.pop("lr")
    else:
        where.update(recipe="full")
    return A.best(A.series(records or all_records(), "lr", **where)).config["lr"]


def worst_targets(records=None) -> str:
    """The target set with the lowest accuracy on cipher K=16 at r = 8."""
    where = {**RANK_SWEEP, "task": "cipher", "k": 16, "r": 8}
    where.pop("targets")
    ps = {t: A.one(records or all_records(), targets=t, **where)
          for t in ("all-linear", "attention", "mlp", "attn-qkv")}
    return min(ps, key=lambda t: ps[t].mean)


def check_exercise_first_rank(answer) -> ExerciseResult:
    """Ex. 1: on cipher K = 16, the smallest r that the data cannot tell from the best r."""
    want = smallest_rank_near_best()
    return check_number(answer, want, rel_tol=0,
                        hint="Look at the rank figure for cipher K = 16: which is the first r whose error bar "
                             "overlaps the best point's (|Δ| ≤ 2 se)? Try it in the explorer.",
                        explain=f"r = {want}: below it accuracy is clearly lower; above it the extra rank "
                                "buys nothing the seeds can resolve.")


def check_exercise_lr_ratio(answer) -> ExerciseResult:
    """Ex. 2: best LoRA lr (r = 8) divided by the best full fine-tuning lr, on cipher K = 16."""
    want = best_lr("lora") / best_lr("full")
    return check_number(answer, want, rel_tol=1e-6,
                        hint="Read the best learning rate of each line of the learning-rate figure "
                             "(r = 8 and full fine-tuning) and divide.",
                        mistakes=((1 / want, "That is full fine-tuning's lr over LoRA's; invert it."),),
                        explain=f"{best_lr('lora'):g} / {best_lr('full'):g} = {want:g}: LoRA wants a "
                                "several-times larger learning rate than full fine-tuning.")


def check_exercise_worst_targets(answer) -> ExerciseResult:
    """Ex. 3: which target set scores lowest on cipher K = 16 at r = 8?"""
    want = worst_targets()
    return check_choice(answer, want, allowed=("all-linear", "attention", "mlp", "attn-qkv"),
                        hint="Predict first, then compare the bars of the 'which weights' section: the "
                             "cipher must map names to other names inside attention's copy.",
                        explain=f"{want}: on this task the MLP alone cannot route the answer; attention can.")
