"""How ``r`` and ``lora_alpha`` set the size of a LoRA update, and what merging costs.

The update is ΔW = (B A) · scaling with scaling = lora_alpha / r (rsLoRA: lora_alpha / √r).
With A and B of a fixed per-entry size, ‖B A‖_F grows like √r, so α/r shrinks the update
as r grows (∝ 1/√r) while α/√r keeps it roughly constant: that is rsLoRA's argument.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from lora_lab.lora import LoRALinear


@dataclass(frozen=True)
class AlphaEffect:
    """What one (r, lora_alpha) choice does to a layer (see :func:`compute_alpha_effect`)."""

    r: int
    lora_alpha: float
    use_rslora: bool
    scaling: float
    delta_norm: float        # ‖ΔW‖_F
    weight_norm: float       # ‖W‖_F of the frozen base
    output_shift: float      # ‖h_lora − h_base‖ / ‖h_base‖ on a fixed batch


def compute_alpha_effect(r: int, lora_alpha: float, use_rslora: bool = False, *,
                         d: int = 256, seed: int = 0) -> AlphaEffect:
    """Build a d×d layer with a "trained-looking" adapter (A and B both random, entries of
    fixed size, seeded) and measure the update's norm and the relative output shift.

    Args:
        r: rank, >= 1 (a warning if above d).
        lora_alpha: > 0.
        use_rslora: scale by α/√r instead of α/r.
        d: layer width.
        seed: the same seed gives the same base, adapter directions and inputs.
    """
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        base.weight.normal_(0, 1 / math.sqrt(d), generator=g)  # like a trained layer's scale
    layer = LoRALinear(base, r=r, lora_alpha=lora_alpha, use_rslora=use_rslora)
    with torch.no_grad():  # stand-in for trained adapters: entries of size 0.02 and 0.02
        layer.lora_A.weight.normal_(0, 0.02 * 10, generator=g)
        layer.lora_B.weight.normal_(0, 0.02, generator=g)
    x = torch.randn(64, d, generator=g)
    with torch.no_grad():
        h_base, h = base(x), layer(x)
    return AlphaEffect(r, float(lora_alpha), use_rslora, layer.scaling,
                       layer.delta_weight().norm().item(), base.weight.norm().item(),
                       ((h - h_base).norm() / h_base.norm()).item())


def scaling_curves(ranks, lora_alpha: float = 16) -> dict[str, list[float]]:
    """scaling for each r under the two rules: {"lora": α/r, "rslora": α/√r}."""
    return {"lora": [lora_alpha / r for r in ranks],
            "rslora": [lora_alpha / math.sqrt(r) for r in ranks]}


def update_norm_vs_rank(ranks, lora_alpha: float = 16, *, d: int = 256, seed: int = 0
                        ) -> dict[str, list[float]]:
    """‖ΔW‖_F against r under α/r and α/√r, adapters drawn as in :func:`compute_alpha_effect`."""
    return {name: [compute_alpha_effect(r, lora_alpha, rs, d=d, seed=seed).delta_norm for r in ranks]
            for name, rs in (("lora", False), ("rslora", True))}


def time_forward(module: nn.Module, x: torch.Tensor, *, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall time of ``module(x)`` in seconds (no grad)."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            module(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def compare_merge_latency(layer, x: torch.Tensor, *, rounds: int = 5, repeats: int = 20
                          ) -> tuple[float, float]:
    """(unmerged, merged) median forward times of a LoRALinear, measured alternately so that
    machine noise hits both alike; leaves the layer unmerged."""
    unmerged, merged = [], []
    for _ in range(rounds):
        unmerged.append(time_forward(layer, x, repeats=repeats))
        layer.merge()
        merged.append(time_forward(layer, x, repeats=repeats))
        layer.unmerge()
    return sorted(unmerged)[rounds // 2], sorted(merged)[rounds // 2]
