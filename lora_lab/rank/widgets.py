"""Explorer for the rank chapter: how many numbers a LoRA update stores vs a full update."""

from __future__ import annotations

import ipywidgets as W

from lora_lab._widgets import build_explorer
from lora_lab.rank.lowrank import compare_param_counts
from lora_lab.rank.plots import plot_param_counts

D_MIN, D_MAX, D_STEP = 8, 8192, 8
R_MIN, R_MAX = 1, 512


def param_count_readout(d_out: int, d_in: int, r: int) -> str:
    """HTML summary of :func:`compare_param_counts` for the explorer's readout."""
    c = compare_param_counts(d_out, d_in, r)
    html = (f"full update: <b>{c.full:,}</b> parameters &nbsp;|&nbsp; "
            f"LoRA r={c.r}: <b>{c.lora:,}</b> = {c.fraction:.3%} of full "
            f"({c.reduction:.2%} fewer, {c.times_fewer:,.1f}× fewer)")
    if c.rank_exceeds_shape:
        html += (f"<br>⚠️ r={c.r} exceeds min(d_out, d_in) = {c.max_rank}: "
                 f"the update cannot have rank above {c.max_rank}, so the extra parameters add nothing.")
    elif c.fraction >= 1:
        html += "<br>⚠️ at this r LoRA stores at least as many numbers as the full matrix."
    return html


def param_count_explorer(d_in: int = 4096, d_out: int = 4096, r: int = 8) -> W.VBox:
    """Sliders d_in, d_out and r; readout of full vs LoRA counts; plot of parameters vs r."""
    def slider(value, lo, hi, step, description):
        return W.IntSlider(value=value, min=lo, max=hi, step=step, description=description,
                           continuous_update=False, style={"description_width": "initial"},
                           layout=W.Layout(width="480px"))

    controls = {
        "d_in": slider(d_in, D_MIN, D_MAX, D_STEP, "d_in"),
        "d_out": slider(d_out, D_MIN, D_MAX, D_STEP, "d_out"),
        "r": slider(r, R_MIN, R_MAX, 1, "rank r"),
    }

    def update(d_in, d_out, r):
        fig = plot_param_counts(d_out, d_in, r, r_max=max(64, 2 * r))
        return param_count_readout(d_out, d_in, r), fig

    return build_explorer(controls, update, title="Full vs LoRA parameters for one weight matrix")
