"""The combination explorer: a weight slider per adapter and the combination type.

Every position is a committed measurement (:mod:`lora_lab.adapters.run`, 3 seeds): the readout
gives each task's held-out exact match ± se beside its adapter alone, and, when a model holding
both adapters is given, what the combined ΔW is (its rank and its distance from Σ wᵢ ΔWᵢ),
computed live with :func:`lora_lab.adapters.combine.combination_errors`. The figure shows the
whole weight grid of the chosen type with the current cell boxed.
"""

from __future__ import annotations

import ipywidgets as W

from lora_lab._widgets import build_explorer
from lora_lab.adapters.combine import combination_errors, lookup, summarize
from lora_lab.adapters.pair import TASKS
from lora_lab.adapters.plots import plot_weight_grid
from lora_lab.adapters.run import WEIGHTS, combine_records
from lora_lab.lora import COMBINATION_TYPES


def combination_readout(summary: dict, w_qa: float, w_cipher: float, combination_type: str, model=None) -> str:
    """The explorer's HTML: both tasks at this setting (mean ± se over seeds) and, with ``model``, its ΔW."""
    weights = (float(w_qa), float(w_cipher))
    if not any(weights):
        points, what = lookup(summary, "base"), "both weights 0: the base (adapters disabled)"
    else:
        points = lookup(summary, "combination", None, combination_type, weights)
        what = f'combination_type="{combination_type}", weights qa = {w_qa:g}, cipher = {w_cipher:g}'
    parts = []
    for task in TASKS:
        p, alone = points[task], lookup(summary, "adapter", task)[task]
        parts.append(f"<b>{task}</b> {100 * p.mean:.1f}% ± {100 * p.se:.1f} (its adapter alone "
                     f"{100 * alone.mean:.1f}%)")
    html = f"{what}<br>" + " &nbsp;|&nbsp; ".join(parts) + f" <small>({len(points['qa'].seeds)} seeds)</small>"
    if model is not None and any(weights):
        e = combination_errors(model, list(TASKS), list(weights), combination_types=[combination_type])[
            combination_type]
        html += (f"<br>ΔW (seed 0): rank r = {e.r}; ‖ΔW − Σ wᵢΔWᵢ‖ / ‖Σ wᵢΔWᵢ‖ = {e.relative_error:.2f} "
                 f"(best possible at rank {e.r}: {e.eckart_young:.2f})")
    return html


def combination_explorer(summary: dict | None = None, model=None) -> W.VBox:
    """Build the explorer (a VBox [title, controls, readout, plot], like every course explorer).

    Args:
        summary: :func:`lora_lab.adapters.combine.summarize` of the records (default: the committed ones).
        model: a model holding adapters "qa" and "cipher" (:func:`lora_lab.adapters.load_pair`),
            to show the combined ΔW too; left unchanged.
    """
    summary = summarize(combine_records()) if summary is None else summary
    opt = dict(continuous_update=False, style={"description_width": "130px"})
    controls = {
        "w_qa": W.SelectionSlider(options=WEIGHTS, value=1.0, description="weight of qa", **opt),
        "w_cipher": W.SelectionSlider(options=WEIGHTS, value=1.0, description="weight of cipher", **opt),
        "combination_type": W.Dropdown(options=COMBINATION_TYPES, value="cat", description="combination_type",
                                       style=opt["style"]),
    }

    def update(w_qa, w_cipher, combination_type):
        html = combination_readout(summary, w_qa, w_cipher, combination_type, model)
        return html, plot_weight_grid(summary, combination_type, WEIGHTS, highlight=(w_qa, w_cipher))

    return build_explorer(controls, update, title="Combine two adapters: a weight per adapter, and how")
