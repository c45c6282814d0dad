"""How ``r`` and ``lora_alpha`` set the size of a LoRA update, and what merging costs.

The update is ΔW = (B A) · scaling with scaling = lora_alpha / r (rsLoRA: lora_alpha / √r).
With A and B of a fixed per-entry size, ‖B A‖_F grows like √r, so α/r shrinks the update
as r grows (∝ 1/√r) while α/√r keeps it roughly constant: that is rsLoRA's argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lora_lab.lora.layer import LoRALinear


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


def merge_flop_ratio(d_in: int, d_out: int, r: int) -> float:
    """Multiply-adds per token of an unmerged LoRA layer over those of the merged (plain) layer:
    (d_in·d_out + r·(d_in + d_out)) / (d_in·d_out) = 1 + r(d_in + d_out)/(d_in·d_out).

    The scaling and the addition of the two paths (2·d_out per token) are left out.
    """
    for name, value in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return 1 + r * (d_in + d_out) / (d_in * d_out)


TIMING_METHOD = ("median of torch.utils.benchmark.Timer.blocked_autorange "
                 "(min_run_time={min_run_time:g} s, {num_threads} thread{s}), "
                 "unmerged and merged alternated over {rounds} rounds, median of the rounds")


def time_forward(module: nn.Module, x: torch.Tensor, *, min_run_time: float = 0.2,
                 num_threads: int = 1) -> float:
    """Median wall time of ``module(x)`` in seconds, without autograd.

    Measured with ``torch.utils.benchmark.Timer(...).blocked_autorange``: it warms up, picks
    how many calls to time per block so that the timer's resolution does not matter, runs
    blocks for at least ``min_run_time`` seconds and returns the median block time per call
    (it also synchronizes CUDA). ``num_threads`` fixes torch's intra-op threads for the
    measurement (default 1: on a shared or busy machine, several threads waiting for each
    other make every parallel op cost a scheduler time slice, which times the scheduler, not
    the layer).
    """
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got min_run_time={min_run_time!r}")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got num_threads={num_threads!r}")
    from torch.utils.benchmark import Timer

    def forward():
        with torch.no_grad():
            module(x)

    timer = Timer("forward()", globals={"forward": forward}, num_threads=num_threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


@dataclass(frozen=True)
class MergeLatency:
    """Forward time of one LoRA layer with the adapter separate and merged into W."""

    unmerged: float          # seconds per forward, median
    merged: float            # seconds per forward, median
    flop_ratio: float        # unmerged / merged multiply-adds (:func:`merge_flop_ratio`)
    method: str              # how it was measured, in words

    @property
    def ratio(self) -> float:
        """unmerged / merged time."""
        return self.unmerged / self.merged

    def __iter__(self):      # ``t_unmerged, t_merged = compare_merge_latency(...)``
        return iter((self.unmerged, self.merged))


def compare_merge_latency(layer, x: torch.Tensor, *, rounds: int = 5, min_run_time: float = 0.2,
                          num_threads: int = 1) -> MergeLatency:
    """Median forward times of a :class:`LoRALinear` unmerged and merged.

    The two are measured alternately, ``rounds`` times each with :func:`time_forward`, so that
    machine noise hits both alike; each figure is the median of its rounds. Leaves the layer
    unmerged (it must be unmerged on entry). Unpacks as ``(unmerged, merged)``.
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got rounds={rounds!r}")
    if layer.merged:
        raise ValueError("layer is merged: call layer.unmerge() first, so that both variants are timed")
    unmerged, merged = [], []
    try:
        for _ in range(rounds):
            unmerged.append(time_forward(layer, x, min_run_time=min_run_time, num_threads=num_threads))
            layer.merge()
            merged.append(time_forward(layer, x, min_run_time=min_run_time, num_threads=num_threads))
            layer.unmerge()
    finally:
        if layer.merged:
            layer.unmerge()
    method = TIMING_METHOD.format(min_run_time=min_run_time, num_threads=num_threads,
                                  s="" if num_threads == 1 else "s", rounds=rounds)
    return MergeLatency(sorted(unmerged)[rounds // 2], sorted(merged)[rounds // 2],
                        merge_flop_ratio(layer.in_features, layer.out_features, layer.r), method)
