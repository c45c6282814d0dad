"""Figures for the quantization chapter. Each function returns a matplotlib Figure, never shows it."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.stats import norm

from lora_lab._plots import figure_and_axes
from lora_lab.quant.metrics import OutlierDamage, QuantError

_COLORS = {"nf4": "tab:blue", "fp4": "tab:green", "int4": "tab:orange"}


def plot_weight_histogram(scaled: torch.Tensor, edges: Mapping[str, torch.Tensor], *, bins: int = 200,
                          title: str = "Weights / block absmax, with 4-bit bin edges",
                          ax: Axes | None = None) -> Figure:
    """Histogram of scaled weights in [-1, 1] with each codebook's bin edges as vertical lines.

    Args:
        scaled: (n,) values x / absmax_block (see ``quant_metrics.scaled_blocks``).
        edges: codebook name -> its 15 edges (``quant.bin_edges``).
    """
    fig, ax = figure_and_axes(ax, (7.5, 3.8))
    ax.hist(scaled.double().numpy(), bins=bins, range=(-1, 1), color="0.75", density=True)
    styles = ["-", "--", ":"]
    for k, (name, e) in enumerate(edges.items()):
        for j, v in enumerate(e.tolist()):
            ax.axvline(v, color=_COLORS.get(name, f"C{k}"), ls=styles[k % 3], lw=1.2,
                       label=f"{name} edges" if j == 0 else None)
    ax.set_xlabel("x / absmax of its block")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return fig


def plot_bin_usage(counts: Mapping[str, torch.Tensor], *, ax: Axes | None = None) -> Figure:
    """Share of values at each level (sorted by value), one bar group per codebook.

    ``counts`` maps a codebook name to its counts in value order: ``QuantError.level_counts``
    (one per distinct level: 15 for int4 and FP4, 16 for NF4) or any per-bin counts. An even
    1/16 = 6.25% line marks perfect use of 16 levels.
    """
    fig, ax = figure_and_axes(ax, (7.5, 3.4))
    width = 0.8 / max(len(counts), 1)
    n_max = max((c.numel() for c in counts.values()), default=16)
    for k, (name, c) in enumerate(counts.items()):
        share = (c.double() / c.sum()).numpy()
        ax.bar([i + (k - (len(counts) - 1) / 2) * width for i in range(c.numel())], 100 * share, width=width,
               color=_COLORS.get(name, f"C{k}"), label=f"{name} ({c.numel()} levels)")
    ax.axhline(100 / 16, color="k", ls=":", lw=1, label="even over 16 (6.25%)")
    ax.set_xticks(range(n_max))
    ax.set_xlabel("level (sorted from -1 to 1)")
    ax.set_ylabel("% of weights")
    ax.set_title("How many weights land on each level")
    ax.legend()
    return fig


def plot_nf4_construction(probs_pos: torch.Tensor, probs_neg: torch.Tensor, code: torch.Tensor, *,
                          ax: Axes | None = None) -> Figure:
    """The N(0,1) CDF with NF4's probability levels and the quantiles they give (before scaling).

    Args:
        probs_pos, probs_neg: the probabilities whose Φ⁻¹ gives the positive / negative codes.
        code: the final 16 NF4 values (drawn scaled back by Φ⁻¹(offset) for comparison).
    """
    fig, ax = figure_and_axes(ax, (7.0, 3.8))
    z = torch.linspace(-2.2, 2.2, 400, dtype=torch.float64)
    ax.plot(z.numpy(), norm.cdf(z.numpy()), color="0.4", label="Φ(z), CDF of N(0, 1)")
    zp, zn = norm.ppf(probs_pos.double().numpy()), -norm.ppf(probs_neg.double().numpy())
    ax.scatter(zp, probs_pos.numpy(), color="tab:blue", zorder=3, label="positive side: Φ⁻¹(p)")
    ax.scatter(zn, 1 - probs_neg.numpy(), color="tab:red", zorder=3, label="negative side: -Φ⁻¹(p)")
    for v in (code.double() * zp.max()).tolist():
        ax.axvline(v, color="tab:blue", alpha=0.25, lw=1)
    ax.set_xlabel("z (standard deviations)")
    ax.set_ylabel("cumulative probability")
    ax.set_title("NF4 codes are quantiles of the normal distribution")
    ax.legend(loc="upper left")
    return fig


def plot_codebooks(codebooks: Mapping[str, torch.Tensor], *, ax: Axes | None = None) -> Figure:
    """The 16 values of each codebook on the number line [-1, 1]."""
    fig, ax = figure_and_axes(ax, (7.0, 2.4))
    names = list(codebooks)
    for k, name in enumerate(names):
        v = codebooks[name].sort().values.numpy()
        ax.scatter(v, [k] * len(v), color=_COLORS.get(name, f"C{k}"), s=28, zorder=3)
        ax.hlines(k, -1, 1, color="0.85", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("code value")
    ax.set_title("Where each 4-bit codebook puts its 16 values")
    return fig


def plot_quant_errors(errors: Mapping[str, Sequence[QuantError]], *, ax: Axes | None = None) -> Figure:
    """Grouped bars: RMSE of each codebook (bars) on each tensor (groups), relative to int4's."""
    fig, ax = figure_and_axes(ax, (7.0, 3.6))
    groups = list(errors)
    books = [e.codebook for e in errors[groups[0]]]
    width = 0.8 / len(books)
    for k, book in enumerate(books):
        rel = []
        for g in groups:
            rmse = {e.codebook: e.rmse for e in errors[g]}
            rel.append(rmse[book] / rmse["int4"] if "int4" in rmse else rmse[book])
        ax.bar([i + (k - (len(books) - 1) / 2) * width for i in range(len(groups))], rel, width=width,
               color=_COLORS.get(book, f"C{k}"), label=book)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("RMSE / RMSE of int4" if "int4" in books else "RMSE")
    ax.set_title("Quantization error by codebook (blocksize 64, lower is better)")
    ax.legend()
    return fig


def plot_outlier_damage(results: Sequence[OutlierDamage], *, current: int | None | str = "unset",
                        ax: Axes | None = None) -> Figure:
    """Error of the ordinary weights (with outlier / without) against block size, plus bits/param.

    Args:
        results: one :class:`OutlierDamage` per block size (``None`` = whole tensor, drawn last).
        current: block size to highlight.
    """
    fig, ax = figure_and_axes(ax, (7.0, 3.6))
    labels = ["tensor" if r.blocksize is None else str(r.blocksize) for r in results]
    ax.plot(range(len(results)), [r.damage for r in results], marker="o", color="tab:red",
            label="MSE with outlier / MSE without")
    for i, r in enumerate(results):
        if r.blocksize == current:
            ax.scatter([i], [r.damage], s=160, facecolors="none", edgecolors="k", zorder=4)
    ax.set_yscale("log")
    ax.set_xticks(range(len(results)), labels)
    ax.set_xlabel("block size (values sharing one absmax)")
    ax.set_ylabel("error growth (×)")
    ax2 = ax.twinx()
    ax2.plot(range(len(results)), [r.bits_per_param for r in results], marker="s", color="tab:blue",
             ls="--", label="bits / param")
    ax2.set_ylabel("bits / param", color="tab:blue")
    ax.set_title(f"One outlier of {results[0].outlier:g}·std: smaller blocks contain the damage")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left")
    return fig
