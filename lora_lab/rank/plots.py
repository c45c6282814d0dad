"""Figures for the rank chapter. Each function returns a matplotlib Figure and never shows it."""

from __future__ import annotations

from typing import Mapping

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lora_lab._plots import figure_and_axes
from lora_lab.rank.lowrank import ReconstructionErrors, break_even_rank, compare_param_counts


def plot_singular_values(spectra: Mapping[str, torch.Tensor], *, relative: bool = True,
                         floor: float = 1e-16, ax: Axes | None = None) -> Figure:
    """Singular values σ_i against their index i, on a log scale, one line per matrix.

    Args:
        spectra: label -> descending singular values (from ``singular_values``).
        relative: divide each spectrum by its σ_1 so that matrices of different size compare.
        floor: values below it (exact zeros) are drawn at ``floor`` so the log scale shows them.
        ax: draw on this Axes instead of a new Figure.
    """
    fig, ax = figure_and_axes(ax, (6.4, 3.8))
    for label, S in spectra.items():
        S = torch.as_tensor(S, dtype=torch.float64)
        y = S / S[0] if relative and S[0] > 0 else S
        ax.semilogy(range(1, len(y) + 1), y.clamp_min(floor).numpy(), marker="o", ms=3, label=label)
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i / σ_1" if relative else "σ_i")
    ax.set_title("Singular spectrum")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return fig


def plot_approx_error(curves: Mapping[str, ReconstructionErrors], *, ax: Axes | None = None) -> Figure:
    """Relative error of the best rank-r approximation against r, with Eckart–Young's prediction.

    Lines are measured ``‖W - W_r‖_F / ‖W‖_F``; crosses are ``sqrt(Σ_{i>r} σ_i²) / ‖W‖_F``.

    Args:
        curves: label -> :class:`ReconstructionErrors` (from ``reconstruction_errors``).
        ax: draw on this Axes instead of a new Figure.
    """
    fig, ax = figure_and_axes(ax, (6.4, 3.8))
    for label, c in curves.items():
        line, = ax.plot(c.ranks, c.relative, label=f"{label}: measured")
        norm = c.frobenius[0] / c.relative[0] if c.relative[0] > 0 else 1.0
        ax.plot(c.ranks, [e / norm for e in c.eckart_young], "x", color=line.get_color(), ms=5,
                label=f"{label}: Eckart–Young")
    ax.set_xlabel("rank r kept")
    ax.set_ylabel("‖W - W_r‖_F / ‖W‖_F")
    ax.set_ylim(bottom=0)
    ax.set_title("Error of the best rank-r approximation")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_param_counts(d_out: int, d_in: int, r: int, *, r_max: int | None = None,
                      ax: Axes | None = None) -> Figure:
    """Trainable parameters of a LoRA update against r, beside the full matrix's count.

    Draws ``r (d_in + d_out)`` for r in [1, r_max], the flat line ``d_out · d_in``, the
    break-even rank ``d_in d_out / (d_in + d_out)`` and a marker at the chosen ``r``, on
    log-log axes.

    Args:
        d_out, d_in: shape of the weight matrix.
        r: the chosen rank, marked on the curve.
        r_max: right end of the r axis (default: max(2 r, 64)).
        ax: draw on this Axes instead of a new Figure.
    """
    counts = compare_param_counts(d_out, d_in, r)
    r_max = r_max or max(2 * r, 64)
    fig, ax = figure_and_axes(ax, (6.4, 3.8))
    ranks = list(range(1, r_max + 1))
    ax.plot(ranks, [k * (d_in + d_out) for k in ranks], label="LoRA: r (d_in + d_out)")
    ax.axhline(counts.full, color="C3", ls="--", label=f"full: d_out·d_in = {counts.full:,}")
    r_even = break_even_rank(d_out, d_in)
    if r_even <= r_max:
        ax.axvline(r_even, color="grey", ls=":", label=f"break-even r = {r_even:.1f}")
    ax.plot([r], [counts.lora], "o", color="C0", ms=8, label=f"r = {r}: {counts.lora:,} ({counts.fraction:.2%})")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters")
    ax.set_xscale("log")
    ax.set_yscale("log")  # log-log: r (d_in + d_out) is a straight line of slope 1
    ax.set_title(f"{d_out} × {d_in} weight: LoRA vs full update")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig
