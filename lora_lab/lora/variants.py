"""PiSSA, LoftQ and DoRA from scratch: pure tensor functions, no model surgery.

Every weight is an (out_features, in_features) matrix like ``nn.Linear.weight`` (for GPT-2's
``Conv1D`` pass ``layer.weight.T``, what PEFT does with ``fan_in_fan_out=True``). Each function
reproduces PEFT 0.21.2 (``peft/tuners/lora/layer.py``, ``dora.py``, ``utils/loftq_utils.py``)
in fp32 to 1e-5; the tests check that on nn.Linear and GPT-2 layers.

PiSSA (Meng et al. 2024): W = U S Vᵀ; the adapter takes the top ``r`` singular triplets,
    lora_A = √(S_r/scaling) V_rᵀ,   lora_B = U_r √(S_r/scaling),
    residual_weight = W − scaling · lora_B lora_A        (the new frozen base),
so the layer's output is unchanged at step 0 and training moves the principal directions.

LoftQ (Li et al. 2023): alternate T times
    Q_t = dequant(quant(W − L_{t−1} R_{t−1})),   L_t R_t = best rank-r approximation of W − Q_t,
with L_0 R_0 = 0; the base becomes Q_T, lora_B = L_T, lora_A = R_T (both √S-scaled, as PiSSA).
PEFT's quantizer is bitsandbytes: NF4 with blocks of 64 and no double quantization
(``num_bits=4``) or LLM.int8's row-wise absmax int8 (``num_bits=8``). PEFT does *not* divide
by ``scaling`` (so W ≈ Q + B A, and the adapter reproduces W only when scaling = 1; PEFT issue
#1982); :func:`loftq_init` does the same unless it is given the layer's ``scaling``, which
``LoRALinear`` (``init_lora_weights="loftq"``) always passes: Q + scaling · B A ≈ W for any lora_alpha.

DoRA (Liu et al. 2024): W' = m · (W + ΔW) / ‖W + ΔW‖_row, with ΔW = scaling · B A, the norm
taken over the input dimension (one per output unit, PEFT's ``dim=1``), the magnitude ``m``
(out_features,) a trainable vector initialized to that norm, and the norm treated as a constant
in the backward pass (the paper's section 4.3; PEFT detaches it).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_BITS = (4, 8)          # LoftQ's quantizers, as PEFT: 4 = NF4 (blocks of 64), 8 = LLM.int8 row-wise
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class PissaInit(NamedTuple):
    """What :func:`pissa_init` returns."""

    lora_A: Tensor             # (r, in_features), float32
    lora_B: Tensor             # (out_features, r), float32
    residual_weight: Tensor    # (out_features, in_features), the weight's dtype: the new frozen base


class LoftQInit(NamedTuple):
    """What :func:`loftq_init` returns."""

    dequantized_weight: Tensor  # (out_features, in_features), the weight's dtype: Q_T, the new base
    lora_A: Tensor              # (r, in_features), float32
    lora_B: Tensor              # (out_features, r), float32
    errors: tuple[float, ...]   # ‖W − (Q_t + scaling·B_t A_t)‖_F for t = 0 (plain quantization), 1, ..., num_iter


# --------------------------------------------------------------------------- argument checks
def _check_weight(weight, name: str = "weight") -> None:
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        what = f"shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 2-D (out_features, in_features) tensor, got {what}")
    if weight.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must have a float dtype {FLOAT_DTYPES}, got {name}.dtype={weight.dtype}")
    bad = int((~torch.isfinite(weight)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN/inf entries; the variants need a finite weight")


def _check_rank(r, weight: Tensor) -> None:
    d_out, d_in = weight.shape
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(d_out, d_in):
        raise ValueError(f"r must be an integer in [1, min(out_features, in_features)] = [1, {min(d_out, d_in)}] "
                         f"for a ({d_out}, {d_in}) weight (an SVD has no more directions), got r={r!r}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """PEFT's ``scaling``: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA."""
    _check_int("r", r, 1)
    _check_positive("lora_alpha", lora_alpha)
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False (a bool), got use_rslora={use_rslora!r}")
    return lora_alpha / (math.sqrt(r) if use_rslora else r)


def _factors(U: Tensor, S: Tensor, Vh: Tensor, r: int, scaling: float) -> tuple[Tensor, Tensor]:
    """(lora_A, lora_B) = (√(S_r/scaling) Vh_r, U_r √(S_r/scaling)): scaling · B A = U_r S_r Vh_r."""
    root = torch.sqrt(S[:r] / scaling)
    return root[:, None] * Vh[:r], U[:, :r] * root


# --------------------------------------------------------------------------- PiSSA
@torch.no_grad()
def pissa_init(weight: Tensor, r: int, lora_alpha: float, *, use_rslora: bool = False,
               niter: int | None = None) -> PissaInit:
    """PiSSA's initial adapter and residual base, PEFT's ``init_lora_weights="pissa"``.

    Args:
        weight: (out_features, in_features), float32/16/bf16 and finite; computed in float32.
        r: 1 <= r <= min(out_features, in_features).
        lora_alpha: > 0; ``scaling = lora_alpha / r`` (rsLoRA: ``/ sqrt(r)``).
        use_rslora: a bool.
        niter: None for the exact SVD (``torch.linalg.svd``, PEFT's "pissa"); an integer >= 0 for
            ``torch.svd_lowrank(W, r, niter=niter)`` (PEFT's "pissa_niter_<niter>"), which draws
            its random projection from torch's global generator: the same ``torch.manual_seed``
            state gives PEFT's factors.

    Returns:
        :class:`PissaInit` ``(lora_A, lora_B, residual_weight)``; residual + scaling · B A = W.
    """
    _check_weight(weight)
    _check_rank(r, weight)
    scaling = lora_scaling(r, lora_alpha, use_rslora)
    w = weight.detach().to(torch.float32)
    if niter is None:
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    else:
        _check_int("niter", niter, 0)
        U, S, V = torch.svd_lowrank(w, r, niter=niter)
        Vh = V.t()
    lora_A, lora_B = _factors(U, S, Vh, r, scaling)
    residual = w - scaling * lora_B @ lora_A
    return PissaInit(lora_A, lora_B, residual.to(weight.dtype))


# --------------------------------------------------------------------------- LoftQ
def _bnb_round_trip(num_bits: int) -> Callable[[Tensor], Tensor]:
    """PEFT's LoftQ quantizer: W ↦ dequant(quant(W)) with bitsandbytes, float32 on W's device."""
    import bitsandbytes as bnb  # here: only LoftQ needs it, and importing it probes for CUDA

    def nf4(w: Tensor) -> Tensor:  # Params4bit's defaults: blocks of 64, fp32 absmax
        q = bnb.nn.Params4bit(w.to("cpu"), requires_grad=False, compress_statistics=False,
                              quant_type="nf4").to(w.device)
        return bnb.functional.dequantize_4bit(q.data, q.quant_state).float()

    def int8(w: Tensor) -> Tensor:  # Int8Params: via float16, one absmax per row
        q = bnb.nn.Int8Params(w.to("cpu"), requires_grad=False).to(w.device)
        return bnb.functional.int8_vectorwise_dequant(q.data, q.SCB).float()

    return nf4 if num_bits == 4 else int8


@torch.no_grad()
def loftq_init(weight: Tensor, r: int, *, num_bits: int = 4, num_iter: int = 1,
               scaling: float = 1.0) -> LoftQInit:
    """LoftQ's quantized base and initial adapter, PEFT's ``init_lora_weights="loftq"``
    (``LoftQConfig(loftq_bits=num_bits, loftq_iter=num_iter)``; PEFT calls ``r`` ``reduced_rank``).

    Args:
        weight: (out_features, in_features), float32/16/bf16 and finite; computed in float32.
        r: 1 <= r <= min(out_features, in_features).
        num_bits: 4 (bitsandbytes NF4, blocks of 64, no double quantization) or 8 (int8, one
            absmax per row), as PEFT.
        num_iter: alternating steps T >= 1.
        scaling: the adapter's ``lora_alpha / r``. PEFT ignores it, i.e. uses 1.0 (the
            default, for parity); pass the layer's scaling so that Q + scaling · B A ≈ W.

    Returns:
        :class:`LoftQInit` ``(dequantized_weight, lora_A, lora_B, errors)``; ``errors[0]`` is
        plain quantization's ‖W − Q(W)‖_F, ``errors[t]`` the error after step t.
    """
    _check_weight(weight)
    _check_rank(r, weight)
    if num_bits not in NUM_BITS or isinstance(num_bits, bool):
        raise ValueError(f"num_bits must be one of {NUM_BITS} (NF4 or int8, as PEFT), got num_bits={num_bits!r}")
    _check_int("num_iter", num_iter, 1)
    _check_positive("scaling", scaling)
    round_trip = _bnb_round_trip(num_bits)
    w = weight.detach().to(torch.float32)
    low_rank = torch.zeros_like(w)
    errors = []
    for _ in range(num_iter):
        dequantized = round_trip(w - low_rank)
        if not errors:
            errors.append(torch.linalg.norm(w - dequantized).item())
        U, S, Vh = torch.linalg.svd(w - dequantized, full_matrices=False)
        lora_A, lora_B = _factors(U, S, Vh, r, scaling)
        low_rank = scaling * lora_B @ lora_A
        errors.append(torch.linalg.norm(w - dequantized - low_rank).item())
    return LoftQInit(dequantized.to(weight.dtype), lora_A, lora_B, tuple(errors))


# --------------------------------------------------------------------------- DoRA
def _check_adapter(weight: Tensor, lora_A: Tensor, lora_B: Tensor, magnitude: Tensor | None = None) -> None:
    d_out, d_in = weight.shape
    if not isinstance(lora_A, Tensor) or lora_A.ndim != 2 or lora_A.shape[1] != d_in:
        raise ValueError(f"lora_A must be (r, in_features={d_in}), got "
                         f"{tuple(lora_A.shape) if isinstance(lora_A, Tensor) else type(lora_A).__name__}")
    if not isinstance(lora_B, Tensor) or tuple(lora_B.shape) != (d_out, lora_A.shape[0]):
        raise ValueError(f"lora_B must be (out_features, r) = ({d_out}, {lora_A.shape[0]}), got "
                         f"{tuple(lora_B.shape) if isinstance(lora_B, Tensor) else type(lora_B).__name__}")
    if magnitude is not None and (not isinstance(magnitude, Tensor) or tuple(magnitude.shape) != (d_out,)):
        raise ValueError(f"magnitude must be (out_features,) = ({d_out},), got "
                         f"{tuple(magnitude.shape) if isinstance(magnitude, Tensor) else type(magnitude).__name__}")


def _check_norm(weight_norm, magnitude: Tensor) -> None:
    if not isinstance(weight_norm, Tensor) or weight_norm.shape != magnitude.shape:
        raise ValueError(f"weight_norm must be (out_features,) = {tuple(magnitude.shape)}, got "
                         f"{tuple(weight_norm.shape) if isinstance(weight_norm, Tensor) else weight_norm!r}")


def dora_weight_norm(weight: Tensor, delta_weight: Tensor | None = None) -> Tensor:
    """‖W + ΔW‖ over the input dimension: (out_features,), one norm per output unit (PEFT's
    ``get_weight_norm``, ``torch.linalg.norm(W + ΔW, dim=1)``; the paper's column norm of Wᵀ).
    ``delta_weight`` is the scaled update ``scaling · B A`` (None: 0)."""
    if delta_weight is not None:
        if not isinstance(delta_weight, Tensor) or delta_weight.shape != weight.shape:
            raise ValueError(f"delta_weight must have the weight's shape {tuple(weight.shape)}, got "
                             f"{tuple(delta_weight.shape) if isinstance(delta_weight, Tensor) else delta_weight!r}")
        weight = weight + delta_weight
    return torch.linalg.norm(weight, dim=1).to(weight.dtype)


def dora_init_magnitude(weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float) -> Tensor:
    """DoRA's initial magnitude m = ‖W + scaling · B A‖_row, (out_features,), detached (PEFT's
    ``DoraLinearLayer.update_layer``; with the default B = 0 it is ‖W‖_row)."""
    _check_weight(weight)
    _check_adapter(weight, lora_A, lora_B)
    _check_positive("scaling", scaling)
    with torch.no_grad():
        return dora_weight_norm(weight, scaling * (lora_B @ lora_A)).detach()


def dora_forward(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, magnitude: Tensor, scaling: float, *,
                 bias: Tensor | None = None, dropout: Callable[[Tensor], Tensor] | None = None,
                 base_result: Tensor | None = None) -> Tensor:
    """Output of a DoRA layer, PEFT's ``lora.Linear.forward`` with ``use_dora=True``.

    With s = magnitude / ‖W + scaling · B A‖_row (the norm detached: no gradient flows through
    it) and x' = dropout(x):

        dropout None:   y = base + (s − 1) · (base − bias) + s · scaling · B A x          = s (W + scaling B A) x + bias
        dropout given:  y = base + (s − 1) · W x' + s · scaling · B A x'

    where base = W x + bias (``base_result`` if given, e.g. the 4-bit layer's own output).
    As in PEFT, the dropout case recomputes W x' with the dropped input, and only a training
    layer with p > 0 passes ``dropout`` (PEFT skips it for ``nn.Identity`` and in eval mode).

    Args:
        x: (..., in_features).
        weight: (out_features, in_features) base weight (dequantized for 4-bit layers).
        lora_A, lora_B: (r, in_features), (out_features, r).
        magnitude: (out_features,), the trainable m.
        scaling: the adapter's scaling, > 0.
        bias: (out_features,) or None, the base layer's bias.
        dropout: a callable on x for the adapter's input, or None.
        base_result: the base layer's output on x, bias included; None computes it.
    """
    _check_adapter(weight, lora_A, lora_B, magnitude)
    _check_positive("scaling", scaling)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must end in in_features={weight.shape[1]}, got x.shape={tuple(x.shape)}")
    result = F.linear(x, weight, bias) if base_result is None else base_result
    weight_norm = dora_weight_norm(weight, scaling * (lora_B @ lora_A).detach()).detach()
    mag_norm_scale = (magnitude / weight_norm).view(1, -1)
    if dropout is None:
        base = result if bias is None else result - bias
    else:
        x = dropout(x)
        base = F.linear(x, weight)
    lora_result = F.linear(F.linear(x, lora_A), lora_B)
    return result + ((mag_norm_scale - 1) * base + mag_norm_scale * lora_result * scaling)


def dora_merged_weight(weight: Tensor, lora_A: Tensor, lora_B: Tensor, magnitude: Tensor,
                       scaling: float, *, weight_norm: Tensor | None = None) -> Tensor:
    """The merged DoRA weight m / ‖W + ΔW‖_row · (W + ΔW), ΔW = (B A) · scaling, (out, in)
    (PEFT's ``DoraLinearVariant.merge_unsafe``). To unmerge later keep
    ``dora_weight_norm(weight, delta_weight)`` of the *unmerged* weight (:func:`dora_unmerged_weight`).

    ``weight_norm``: the norm to divide by (default ‖weight + ΔW‖_row). When ``weight`` already
    holds other merged adapters, pass that of the base without them, as PEFT does."""
    _check_adapter(weight, lora_A, lora_B, magnitude)
    _check_positive("scaling", scaling)
    delta_weight = (lora_B @ lora_A) * scaling
    if weight_norm is None:
        weight_norm = dora_weight_norm(weight, delta_weight)
    else:
        _check_norm(weight_norm, magnitude)
    dora_factor = (magnitude / weight_norm.detach()).view(-1, 1)
    return (dora_factor * (weight + delta_weight)).to(weight.dtype)


def dora_unmerged_weight(merged_weight: Tensor, lora_A: Tensor, lora_B: Tensor, magnitude: Tensor,
                         scaling: float, weight_norm: Tensor) -> Tensor:
    """Undo :func:`dora_merged_weight`: W = merged / (m / weight_norm)_row − (B A) · scaling
    (PEFT's ``DoraLinearVariant.unmerge``). ``weight_norm`` is ``dora_weight_norm(W, ΔW)`` taken
    at merge time, from the unmerged weight (PEFT caches it)."""
    _check_adapter(merged_weight, lora_A, lora_B, magnitude)
    _check_positive("scaling", scaling)
    _check_norm(weight_norm, magnitude)
    dora_factor = (magnitude / weight_norm).view(-1, 1)
    return (merged_weight / dora_factor - (lora_B @ lora_A) * scaling).to(merged_weight.dtype)
