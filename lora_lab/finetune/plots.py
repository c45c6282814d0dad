"""Figures for the QLoRA chapter. Each function returns a matplotlib Figure and never shows it."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lora_lab._plots import figure_and_axes


def plot_loss_curves(losses: Mapping[str, Sequence[float]], *, smooth: int = 10,
                     evals: Mapping[str, Sequence[tuple[int, float]]] | None = None,
                     ax: Axes | None = None) -> Figure:
    """Training loss per step (log scale), one line per run, with a ``smooth``-step moving
    average drawn over the raw values; optional held-out exact match (%) on a right axis.

    Args:
        losses: run name -> loss per step.
        smooth: moving-average window (>= 1).
        evals: run name -> [(step, exact match in [0, 1]), ...].
    """
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    fig, ax = figure_and_axes(ax, (6.4, 3.6))
    for i, (name, ys) in enumerate(losses.items()):
        ys = np.asarray(ys, dtype=float)
        steps = np.arange(1, len(ys) + 1)
        color = f"C{i}"
        ax.plot(steps, ys, color=color, alpha=0.25, lw=0.8)
        if len(ys) >= smooth:
            avg = np.convolve(ys, np.ones(smooth) / smooth, mode="valid")
            ax.plot(steps[smooth - 1:], avg, color=color, lw=2, label=f"{name} (loss, {smooth}-step mean)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.grid(True, alpha=0.3)
    if evals:
        ax2 = ax.twinx()
        for i, (name, points) in enumerate(evals.items()):
            if points:
                s, v = zip(*points)
                ax2.plot(s, 100 * np.asarray(v), "o--", color=f"C{i}", ms=5, label=f"{name} (exact match)")
        ax2.set_ylabel("held-out exact match (%)")
        ax2.set_ylim(0, 100)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    else:
        ax.legend(fontsize=8)
    ax.set_title("Fine-tuning on the story questions")
    return fig
