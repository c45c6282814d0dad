"""Explorer for the LoRA-layer chapter: lora_alpha and r as a volume knob."""

from __future__ import annotations

import ipywidgets as W

from lora_lab._widgets import build_explorer
from lora_lab.lora.plots import plot_alpha_effect
from lora_lab.lora.scaling import compute_alpha_effect


def alpha_explorer(r: int = 8, lora_alpha: float = 16) -> W.VBox:
    """Sliders for r and lora_alpha (and rsLoRA) -> scaling, ‖ΔW‖ and how far the output moves."""
    controls = {
        "r": W.IntSlider(value=r, min=1, max=64, description="r", continuous_update=False),
        "lora_alpha": W.FloatSlider(value=lora_alpha, min=1, max=128, step=1,
                                    description="lora_alpha", continuous_update=False),
        "use_rslora": W.Checkbox(value=False, description="rsLoRA (α/√r)"),
    }

    def update(r, lora_alpha, use_rslora):
        e = compute_alpha_effect(r, lora_alpha, use_rslora)
        html = (f"scaling = {e.scaling:.4g} &nbsp;|&nbsp; ‖ΔW‖<sub>F</sub> = {e.delta_norm:.4g} "
                f"({100 * e.delta_norm / e.weight_norm:.2f}% of ‖W‖) &nbsp;|&nbsp; "
                f"output moves {100 * e.output_shift:.2f}%")
        return html, plot_alpha_effect(e)

    return build_explorer(controls, update, title="lora_alpha is a volume knob")
