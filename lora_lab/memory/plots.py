"""Figures for the memory chapter: the stacked memory hierarchy and predicted vs measured."""

from __future__ import annotations

from matplotlib.figure import Figure

from lora_lab._plots import figure_and_axes
from lora_lab.memory.predict import COMPONENTS

COLORS = {
    "quantized base": "#1f4e79", "unquantized base": "#6fa8dc", "trainable weights": "#e69138",
    "gradients": "#cc0000", "optimizer state": "#6aa84f", "master weights": "#b4a7d6",
    "activations": "#999999",
}


def plot_memory_breakdown(breakdowns: dict, *, ax=None, unit: float = 1e9,
                          unit_name: str = "GB", title: str = "") -> Figure:
    """Stacked bars, one per setup, one segment per component.

    Args:
        breakdowns: label -> a :class:`MemoryBreakdown` (predicted) or a mapping component ->
            bytes (measured, e.g. ``MemoryReport.measured``).

    Totals are written above the bars; components that are zero everywhere are left out
    of the legend.
    """
    fig, ax = figure_and_axes(ax, (7.5, 4.2), constrained=False)
    labels = list(breakdowns)
    parts = {k: getattr(b, "components", b) for k, b in breakdowns.items()}
    bottoms = [0.0] * len(labels)
    for comp in COMPONENTS:
        heights = [parts[k].get(comp, 0) / unit for k in labels]
        if not any(heights):
            continue
        ax.bar(labels, heights, bottom=bottoms, color=COLORS[comp], label=comp,
               hatch="//" if comp == "quantized base" else None, edgecolor="white", linewidth=0.5)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total:,.1f} {unit_name}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(f"memory ({unit_name})")
    ax.set_ylim(0, max(bottoms) * 1.15 if max(bottoms) > 0 else 1)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_predicted_vs_measured(pairs: dict, *, ax=None, tolerance: float = 0.01) -> Figure:
    """Ratio predicted/measured per component, for each setup (label -> (predicted, measured)).

    The shaded band is ±``tolerance``; components measured as zero are skipped.
    """
    fig, ax = figure_and_axes(ax, (7.5, 3.6), constrained=False)
    comps = [c for c in COMPONENTS if any(m.components[c] for _, m in pairs.values())]
    width = 0.8 / max(len(pairs), 1)
    for j, (label, (pred, meas)) in enumerate(pairs.items()):
        xs, ys = [], []
        for i, c in enumerate(comps):
            if meas.components[c]:
                xs.append(i + (j - (len(pairs) - 1) / 2) * width)
                ys.append(pred.components[c] / meas.components[c])
        ax.plot(xs, ys, "o", label=label, markersize=7)
    ax.axhspan(1 - tolerance, 1 + tolerance, color="#6aa84f", alpha=0.25, label=f"±{tolerance:.0%}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(comps)), comps, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("predicted / measured")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
