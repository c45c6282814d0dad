"""Figures for the LoRA-layer chapter. Each function returns a Figure and shows nothing."""

from __future__ import annotations

from matplotlib.figure import Figure

from lora_lab._plots import figure_and_axes
from lora_lab.lora.scaling import scaling_curves, update_norm_vs_rank


def plot_scaling_vs_rank(ranks, lora_alpha: float = 16, *, mark_r: int | None = None,
                         alpha_equals_r: bool = False, ax=None) -> Figure:
    """scaling = α/r and α/√r (rsLoRA) against r, on log axes (``alpha_equals_r``: also α = r)."""
    fig, ax = figure_and_axes(ax, (6, 3.6), constrained=False)
    curves = scaling_curves(ranks, lora_alpha)
    ax.plot(ranks, curves["lora"], "o-", label="LoRA: α / r")
    ax.plot(ranks, curves["rslora"], "s-", label="rsLoRA: α / √r")
    if alpha_equals_r:
        ax.plot(ranks, [1.0] * len(ranks), "^--", color="tab:red", label="α = r: scaling 1")
    if mark_r is not None:
        ax.axvline(mark_r, color="grey", ls=":", label=f"r = {mark_r}")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="scaling",
           title=f"How the update is scaled (lora_alpha = {lora_alpha:g})")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_update_norm_vs_rank(ranks, lora_alpha: float = 16, *, d: int = 256, seed: int = 0,
                             alpha_equals_r: bool = False, ax=None) -> Figure:
    """‖ΔW‖_F against r for random adapters: α/r shrinks the update as r grows, α/√r does not
    (``alpha_equals_r``: also α = r, scaling 1, where nothing compensates for r)."""
    fig, ax = figure_and_axes(ax, (6, 3.6), constrained=False)
    norms = update_norm_vs_rank(ranks, lora_alpha, d=d, seed=seed, alpha_equals_r=alpha_equals_r)
    ax.plot(ranks, norms["lora"], "o-", label="α / r")
    ax.plot(ranks, norms["rslora"], "s-", label="α / √r (rsLoRA)")
    if alpha_equals_r:
        ax.plot(ranks, norms["alpha_eq_r"], "^--", color="tab:red", label="α = r (scaling 1)")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="‖ΔW‖_F",
           title="Size of the update for adapters of the same entry size")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_alpha_effect(effect, *, ax=None) -> Figure:
    """Bars: ‖W‖_F of the frozen layer beside ‖ΔW‖_F of the adapter, with the output shift."""
    fig, ax = figure_and_axes(ax, (5, 3.2), constrained=False)
    ax.bar(["‖W‖ (frozen)", "‖ΔW‖ (adapter)"], [effect.weight_norm, effect.delta_norm],
           color=["#999999", "#d62728"])
    ax.set(ylabel="Frobenius norm",
           title=f"r={effect.r}, α={effect.lora_alpha:g}: output moves {100 * effect.output_shift:.1f}%")
    fig.tight_layout()
    return fig
