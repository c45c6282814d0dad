"""What combining two adapters does, to the weights and to the tasks.

    combination_errors(model, ["qa", "cipher"], [1.0, 1.0])   # ‖ΔW_comb − Σ wᵢΔWᵢ‖ / ‖Σ wᵢΔWᵢ‖ per type
    summary = summarize(combine_records())                    # setting -> {task: Point (3 seeds)}
    interference(summary, "cat")                              # each task: alone vs combined

Weights: :func:`lora_lab.lora.add_weighted_adapter` builds the combined adapter; the ideal is
the weighted sum of the updates, Σ wᵢ ΔWᵢ (what two adapters applied together compute).
"cat" is that sum exactly (rank r₁ + r₂); "svd" is its best rank-k approximation, so its error
is the discarded singular values (Eckart–Young); "linear" multiplies summed factors and adds
the cross terms Σ_{i≠j} cᵢcⱼ BᵢAⱼ.

Tasks: a *point* is chapter 06's: mean over seeds ± se (:func:`lora_lab.experiments.analysis.mean_se`,
with its binomial floor), and two points differ when |Δ| > 2 se (``analysis.compare``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lora_lab.adapters.pair import TASKS
from lora_lab.experiments.analysis import Point, Verdict, compare, mean_se
from lora_lab.lora import COMBINATION_TYPES, adapter_names, add_weighted_adapter, delete_adapter, lora_layers


@dataclass(frozen=True)
class CombinationError:
    """How far one combination type's ΔW is from Σ wᵢ ΔWᵢ, over every adapted layer."""

    combination_type: str
    r: int                     # the combined adapter's rank
    relative_error: float      # sqrt(Σ_layers ‖ΔW_comb − ideal‖²_F) / sqrt(Σ_layers ‖ideal‖²_F)
    eckart_young: float        # the same ratio from the singular values of the ideal beyond rank r


@torch.no_grad()
def combination_errors(model, adapters: Sequence[str], weights: Sequence[float], *, svd_rank: int | None = None,
                       combination_types: Sequence[str] = COMBINATION_TYPES) -> dict[str, CombinationError]:
    """For each of ``combination_types`` ("svd", "linear", "cat"): the combined adapter's rank and its relative
    error against Σ wᵢ ΔWᵢ, beside what Eckart–Young predicts for a best rank-r approximation
    (0 for r ≥ rank of the sum). The combined adapters are added, measured and deleted: the
    model is left as it was."""
    held = adapter_names(model)
    out = {}
    for ctype in combination_types:
        name = f"_combination_{ctype}"
        if name in held:
            raise ValueError(f"model already holds an adapter named {name!r}; delete it first")
        add_weighted_adapter(model, list(adapters), list(weights), name, combination_type=ctype,
                             svd_rank=svd_rank if ctype == "svd" else None)
        try:
            err = ideal_sq = tail_sq = 0.0
            r = 0
            for _, layer in lora_layers(model):
                ideal = sum(w * layer.delta_weight(a) for a, w in zip(adapters, weights))
                r = layer.r[name]
                err += float((layer.delta_weight(name) - ideal).square().sum())
                ideal_sq += float(ideal.square().sum())
                tail_sq += float(torch.linalg.svdvals(ideal)[r:].square().sum())
        finally:
            delete_adapter(model, name)
        scale = math.sqrt(ideal_sq) or 1.0
        out[ctype] = CombinationError(ctype, r, math.sqrt(err) / scale, math.sqrt(tail_sq) / scale)
    return out


def setting_key(config: dict) -> tuple:
    """What the seeds of one setting share: (kind, adapter, combination_type, weights)."""
    return (config["kind"], config.get("adapter"), config.get("combination_type"),
            tuple(float(w) for w in config.get("weights", ())))


def summarize(records: Sequence[dict]) -> dict[tuple, dict[str, Point]]:
    """{setting key: {task: Point}}: each task's exact match, mean over seeds ± se."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(setting_key(r["config"]), []).append(r)
    out = {}
    for key, recs in groups.items():
        recs = sorted(recs, key=lambda r: r["config"]["seed"])
        config = {k: v for k, v in recs[0]["config"].items() if k not in ("seed", "adapters")}
        seeds = tuple(r["config"]["seed"] for r in recs)
        out[key] = {}
        for task in TASKS:
            values = tuple(r["metrics"][task] for r in recs)
            mean, se = mean_se(values, recs[0]["n_eval"][task])
            out[key][task] = Point(config, seeds, mean, se, values, tuple(recs))
    return out


def lookup(summary: dict, kind: str, adapter: str | None = None, combination_type: str | None = None,
           weights: Sequence[float] = ()) -> dict[str, Point]:
    """The points of one setting (ValueError naming it if it was not measured)."""
    key = (kind, adapter, combination_type, tuple(float(w) for w in weights))
    if key not in summary:
        raise ValueError(f"no committed measurement of setting {key}; measured: {len(summary)} settings "
                         "(python -m lora_lab.adapters.run combine)")
    return summary[key]


@dataclass(frozen=True)
class Interference:
    """One task under one combination (weights 1, 1) against its own adapter alone."""

    task: str
    alone: Point
    combined: Point
    verdict: Verdict

    @property
    def drop(self) -> float:
        """Accuracy lost by adding the other adapter (alone − combined), a fraction."""
        return self.alone.mean - self.combined.mean


def interference(summary: dict, combination_type: str, weights: Sequence[float] = (1.0, 1.0)) -> list[Interference]:
    """For each task: its adapter alone vs the combination of both at ``weights`` (one per task)."""
    combined = lookup(summary, "combination", None, combination_type, weights)
    out = []
    for task in TASKS:
        alone = lookup(summary, "adapter", task)[task]
        out.append(Interference(task, alone, combined[task], compare(alone, combined[task], "alone", "combined")))
    return out
