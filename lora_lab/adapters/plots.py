"""Figures for the many-adapters chapter. Each function returns a matplotlib Figure."""

from __future__ import annotations

from typing import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lora_lab.adapters.combine import lookup
from lora_lab.adapters.pair import TASKS
from lora_lab.adapters.variants_run import variant_points
from lora_lab.experiments.analysis import mean_curve
from lora_lab.experiments.plots import plot_bars, plot_curves
from lora_lab.lora import COMBINATION_TYPES

TASK_LABELS = {"qa": "QA (chapter 05)", "cipher": "cipher K = 16 (chapter 06)"}


def plot_interference(summary: dict, weights: Sequence[float], *, title: str = "") -> Figure:
    """One panel per task: its exact match (± 1 se over seeds) with its own adapter at weight 1
    and the *other* adapter's weight on the x axis, one line per combination type; dashed:
    its adapter alone, dotted: the base."""
    names = list(TASKS)
    fig = Figure(figsize=(9.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True)
    for i, (ax, task) in enumerate(zip(axes, names)):
        other = names[1 - i]
        for ctype in COMBINATION_TYPES:
            pts = [lookup(summary, "combination", None, ctype, [1.0, w] if i == 0 else [w, 1.0])[task]
                   for w in weights]
            ax.errorbar(list(weights), [100 * p.mean for p in pts], yerr=[100 * p.se for p in pts], marker="o",
                        ms=4, capsize=3, label=ctype)
        alone = lookup(summary, "adapter", task)[task]
        base = lookup(summary, "base")[task]
        ax.axhline(100 * alone.mean, ls="--", color="grey", lw=1, label=f"{task} adapter alone")
        ax.axhline(100 * base.mean, ls=":", color="black", lw=1, label="base")
        ax.set_xlabel(f"weight of the {other} adapter ({task} adapter at 1)")
        ax.set_title(TASK_LABELS[task], fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("held-out exact match (%)")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_weight_grid(summary: dict, combination_type: str, weights: Sequence[float],
                     highlight: tuple[float, float] | None = None, *, title: str = "") -> Figure:
    """Heatmaps of each task's mean exact match over the grid of (w_qa, w_cipher) for one
    combination type ((0, 0) is the base); ``highlight`` boxes one cell."""
    names = list(TASKS)
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    axes = fig.subplots(1, len(names))
    for ax, task in zip(axes, names):
        grid = [[100 * _cell(summary, combination_type, (wq, wc))[task].mean for wc in weights] for wq in weights]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", origin="lower")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if v < 60 else "black")
        ticks = [f"{w:g}" for w in weights]
        ax.set_xticks(range(len(weights)), ticks)
        ax.set_yticks(range(len(weights)), ticks)
        ax.set_xlabel("weight of the cipher adapter")
        ax.set_ylabel("weight of the QA adapter")
        ax.set_title(f"{TASK_LABELS[task]}", fontsize=10)
        if highlight is not None:
            i, j = list(weights).index(highlight[0]), list(weights).index(highlight[1])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        fig.colorbar(im, ax=ax, shrink=0.8, label="exact match (%)")
    fig.suptitle(title or f'combination_type="{combination_type}": mean over seeds', fontsize=11)
    return fig


def _cell(summary: dict, combination_type: str, weights: tuple[float, float]) -> Mapping:
    if not any(weights):
        return lookup(summary, "base")
    return lookup(summary, "combination", None, combination_type, weights)



def plot_variants(records: list[dict], *, smooth: int = 5, title: str = "") -> Figure:
    """Left: each variant's training loss, averaged over seeds (running mean of ``smooth`` steps);
    right: its held-out exact match, mean ± 1 se over seeds."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    pts = variant_points(records)
    plot_curves({f"{v} ({p.n_seeds} seeds)": mean_curve(p.records, smooth) for v, p in pts.items()},
                title=f"training loss (mean over seeds, running mean of {smooth})", ax=left)
    plot_bars(pts, title="held-out exact match after training", ax=right)
    if title:
        fig.suptitle(title)
    return fig
