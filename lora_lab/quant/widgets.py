"""Explorer for the quantization chapter: one outlier, block size, error and bits/param."""

from __future__ import annotations

import ipywidgets as W
import torch

from lora_lab._widgets import build_explorer
from lora_lab.quant.metrics import outlier_damage
from lora_lab.quant.plots import plot_outlier_damage

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, None)   # None: one absmax for the whole tensor
WHOLE_TENSOR = 0                                              # the slider's value for None
OUTLIER_MIN, OUTLIER_MAX = 1.0, 1000.0                        # in multiples of the weights' std


def outlier_readout(d) -> str:
    """HTML summary of one :class:`~lora_lab.quant.metrics.OutlierDamage`."""
    where = "for the whole tensor" if d.blocksize is None else f"per block of {d.blocksize}"
    return (f"one absmax {where}: <b>{d.bits_per_param:.3f} bits/param</b> &nbsp;|&nbsp; "
            f"MSE of the other weights: {d.mse_clean:.3e} without the outlier, "
            f"{d.mse_with_outlier:.3e} with it (<b>{d.damage:.2f}×</b>) &nbsp;|&nbsp; "
            f"rounded to exactly 0: <b>{d.zeroed_fraction:.1%}</b>")


def outlier_explorer(x: torch.Tensor | None = None, *, blocksize: int | None = 64,
                     outlier: float = 20.0, codebook: str = "nf4") -> W.VBox:
    """Sliders for block size and outlier size (in std); readout of error and bits/param.

    Args:
        x: the weights to quantize (default: 16384 seeded N(0, 0.02²) values).
    """
    if x is None:
        x = torch.randn(16384, generator=torch.Generator().manual_seed(0)) * 0.02
    options = [("tensor", WHOLE_TENSOR) if b is None else (str(b), b) for b in BLOCKSIZES]
    controls = {
        "blocksize": W.SelectionSlider(options=options, value=WHOLE_TENSOR if blocksize is None else blocksize,
                                       description="block size",
                                       continuous_update=False, style={"description_width": "initial"},
                                       layout=W.Layout(width="480px")),
        "outlier": W.FloatLogSlider(value=outlier, base=10, min=0, max=3, step=0.05,
                                    description="outlier (× std)", continuous_update=False,
                                    style={"description_width": "initial"}, layout=W.Layout(width="480px")),
    }

    def update(blocksize, outlier):
        blocksize = None if blocksize == WHOLE_TENSOR else blocksize
        results = [outlier_damage(x, outlier, b, codebook) for b in BLOCKSIZES]
        current = next(r for r in results if r.blocksize == blocksize)
        return outlier_readout(current), plot_outlier_damage(results, current=blocksize)

    return build_explorer(controls, update, title="One outlier vs block size (NF4)")
