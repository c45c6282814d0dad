"""Figures for the experiments chapter. Each function returns a matplotlib Figure."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lora_lab._plots import figure_and_axes
from lora_lab.experiments.analysis import Point


def plot_points(lines: Mapping[str, Sequence[Point]], x: str, *, logx: bool = True, base: int = 2,
                ylabel: str = "held-out exact match", xlabel: str | None = None, title: str = "",
                percent: bool = True, ax: Axes | None = None) -> Figure:
    """One line per label: mean over seeds at each value of config field ``x``, ± 1 se bars."""
    fig, ax = figure_and_axes(ax)
    scale = 100.0 if percent else 1.0
    for label, ps in lines.items():
        xs = [p.config[x] for p in ps]
        ax.errorbar(xs, [scale * p.mean for p in ps], yerr=[scale * p.se for p in ps], marker="o", ms=4,
                    capsize=3, label=f"{label}")
    if logx:
        ax.set_xscale("log", base=base)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    return fig


def plot_curves(curves: Mapping[str, Sequence[float]], *, title: str = "training loss", logy: bool = True,
                highlight: str | None = None, ax: Axes | None = None) -> Figure:
    """Training loss per step, one line per label (``highlight`` drawn thick and black)."""
    fig, ax = figure_and_axes(ax)
    for label, c in curves.items():
        style = {"color": "black", "lw": 2.2, "zorder": 5} if label == highlight else {"lw": 1.2, "alpha": 0.85}
        ax.plot(range(1, len(c) + 1), c, label=label, **style)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per answer token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return fig


def plot_bars(points: Mapping[str, Point], *, ylabel: str = "held-out exact match", percent: bool = True,
              title: str = "", ax: Axes | None = None) -> Figure:
    """One bar per labelled point, ± 1 se."""
    fig, ax = figure_and_axes(ax)
    scale = 100.0 if percent else 1.0
    labels = list(points)
    ax.bar(range(len(labels)), [scale * points[k].mean for k in labels],
           yerr=[scale * points[k].se for k in labels], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_subspace_similarity(phi: torch.Tensor, *, i_label: str = "i (r = 8)", j_label: str = "j (r = 64)",
                             title: str = "φ(A₁, A₂, i, j)", ax: Axes | None = None) -> Figure:
    """Heatmap of the normalized subspace similarity φ(i, j) in [0, 1] (LoRA paper, Fig. 3)."""
    fig, ax = figure_and_axes(ax, (6.4, 3.0))
    im = ax.imshow(phi.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower",
                   extent=(0.5, phi.shape[1] + 0.5, 0.5, phi.shape[0] + 0.5))
    ax.set_xlabel(j_label)
    ax.set_ylabel(i_label)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return fig
