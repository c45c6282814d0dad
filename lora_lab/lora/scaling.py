"""How ``r`` and ``lora_alpha`` set the size of a LoRA update, and what merging costs.

The update is ΔW = (B A) · scaling with scaling = lora_alpha / r (rsLoRA: lora_alpha / √r).

Two different facts about r, kept apart here:

* For *random* A and B with entries of a fixed size (the stand-ins of
  :func:`compute_alpha_effect`), ‖B A‖_F grows like √r, so α/r shrinks ‖ΔW‖ like 1/√r and
  α/√r keeps it roughly constant. That is an illustration of the exponent only.
* rsLoRA's argument (Kalajdzievski 2023) is about learning: B starts at 0 and the learned
  B is built from gradient outer products g (A x)ᵀ, so the learned update's output on x
  carries (A x_k)ᵀ(A x), a sum of r terms. Keeping the adapter's activations and gradients
  Θ(1) as r grows needs scaling² · r = Θ(1), i.e. scaling ∝ 1/√r.

:func:`fit_lora` trains a small adapter (seeded, float64) to measure how lora_alpha and the
learning rate trade off under Adam and SGD.
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
    fixed size: A ~ N(0, 0.2²), B ~ N(0, 0.02²), seeded) and measure the update's norm and
    the relative output shift.

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
    with torch.no_grad():  # stand-in for trained adapters: A entries of std 0.2, B entries of std 0.02
        layer.lora_A["default"].weight.normal_(0, 0.2, generator=g)
        layer.lora_B["default"].weight.normal_(0, 0.02, generator=g)
    x = torch.randn(64, d, generator=g)
    with torch.no_grad():
        h_base, h = base(x), layer(x)
    return AlphaEffect(r, float(lora_alpha), use_rslora, layer.scaling["default"],
                       layer.delta_weight().norm().item(), base.weight.norm().item(),
                       ((h - h_base).norm() / h_base.norm()).item())


@dataclass(frozen=True)
class LoraFit:
    """One training run of :func:`fit_lora`."""

    optimizer: str
    lora_alpha: float
    lr: float
    init_scale: float
    losses: tuple[float, ...]    # loss before step 1, ..., after the last step (steps + 1 values)
    delta_weight: torch.Tensor   # the final ΔW = scaling · B A, (d, d) float64

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


OPTIMIZERS = ("adam", "sgd")


def fit_lora(lora_alpha: float, lr: float, optimizer: str = "adam", *, r: int = 4, d: int = 32,
             n: int = 256, steps: int = 100, init_scale: float = 1.0, seed: int = 0) -> LoraFit:
    """Fit a rank-``r`` LoRA adapter on a frozen d×d layer to a rank-``r`` change; full batch.

    The task: a frozen base W₀ (entries N(0, 1/d)), a target W₀ + ΔW* with ΔW* of rank ``r``
    (a product of two standard-normal (d, r), (r, d) matrices times 0.1/√r: entries of std 0.1),
    n inputs x ~ N(0, I), and the loss mean(((W₀ + ΔW) x − (W₀ + ΔW*) x)²). The adapter is
    :class:`LoRALinear` with PEFT's init (A Kaiming-uniform, B = 0), A then multiplied by
    ``init_scale``. Everything is float64 and seeded, so a run depends only on its arguments.

    Because ΔW = (α/r)·B A, multiplying α by c is the same as dividing A and B by √c, and the
    optimizer undoes that exactly if lr is divided by √c (Adam, whose steps do not depend on
    the gradient's scale; up to its eps) or by c (SGD). So ``fit_lora(c·α, lr/√c, "adam",
    init_scale=1/√c)`` and ``fit_lora(c·α, lr/c, "sgd", init_scale=1/√c)`` repeat
    ``fit_lora(α, lr, ...)`` step for step.

    Args:
        lora_alpha: > 0; scaling = lora_alpha / r.
        lr: learning rate, > 0.
        optimizer: "adam" (``torch.optim.Adam``, default betas and eps) or "sgd" (plain SGD).
        r, d, n, steps: rank, width, number of inputs, optimizer steps (integers >= 1).
        init_scale: factor on A's initial values (> 0).
        seed: same seed, same task, inputs and initial A.

    Raises:
        ValueError: for an unknown optimizer or a non-positive number.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    for name, value in (("lora_alpha", lora_alpha), ("lr", lr), ("init_scale", init_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    for name, value in (("r", r), ("d", d), ("n", n), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(d, d, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.normal_(0, 1 / math.sqrt(d), generator=g)
    change = (torch.randn(d, r, generator=g, dtype=torch.float64)
              @ torch.randn(r, d, generator=g, dtype=torch.float64)) * (0.1 / math.sqrt(r))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ (base.weight.detach() + change).T                         # (n, d) targets
    layer = LoRALinear(base, r=r, lora_alpha=lora_alpha, generator=g)
    with torch.no_grad():
        layer.lora_A["default"].weight.mul_(init_scale)
    params = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = (layer(x) - y).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append((layer(x) - y).pow(2).mean().item())
        delta = layer.delta_weight().detach().clone()
    return LoraFit(optimizer, float(lora_alpha), float(lr), float(init_scale), tuple(losses), delta)


def scaling_curves(ranks, lora_alpha: float = 16) -> dict[str, list[float]]:
    """scaling for each r under the two rules: {"lora": α/r, "rslora": α/√r}."""
    return {"lora": [lora_alpha / r for r in ranks],
            "rslora": [lora_alpha / math.sqrt(r) for r in ranks]}


def update_norm_vs_rank(ranks, lora_alpha: float = 16, *, d: int = 256, seed: int = 0,
                        alpha_equals_r: bool = False) -> dict[str, list[float]]:
    """‖ΔW‖_F against r under α/r and α/√r, adapters drawn as in :func:`compute_alpha_effect`.

    With ``alpha_equals_r`` the dict also has ``"alpha_eq_r"``: lora_alpha = r at each r, i.e.
    scaling 1 everywhere (the ``lora_alpha`` argument is not used for that curve).
    """
    out = {name: [compute_alpha_effect(r, lora_alpha, rs, d=d, seed=seed).delta_norm for r in ranks]
           for name, rs in (("lora", False), ("rslora", True))}
    if alpha_equals_r:
        out["alpha_eq_r"] = [compute_alpha_effect(r, r, False, d=d, seed=seed).delta_norm for r in ranks]
    return out


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
                        merge_flop_ratio(layer.in_features, layer.out_features, layer.r[layer.active_adapter]),
                        method)
