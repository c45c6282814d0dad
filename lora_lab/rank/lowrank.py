"""Rank, the singular value decomposition, best rank-r approximations and LoRA's parameter counts.

A weight matrix ``W`` of shape (d_out, d_in) has the SVD ``W = U diag(σ) Vᵀ`` with
``σ_1 ≥ σ_2 ≥ ... ≥ 0``. Its rank is the number of non-zero σ. Keeping the ``r`` largest
gives ``W_r``, the best rank-r approximation (Eckart–Young), with error
``‖W - W_r‖_F = sqrt(σ_{r+1}² + ... )``. LoRA stores an update ``ΔW = B A`` with
``B`` (d_out, r) and ``A`` (r, d_in): ``r (d_in + d_out)`` numbers instead of ``d_in d_out``.

Functions take tensors (NumPy arrays and nested lists are accepted and converted) and
return tensors, numbers or small dataclasses. Nothing here prints, plots or seeds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from lora_lab._util import warn_rank_above_min

__all__ = [
    "ParamCounts", "ReconstructionErrors",
    "singular_values", "matrix_rank", "low_rank_approx", "approx_error", "eckart_young_error",
    "energy_captured", "reconstruction_errors", "random_low_rank",
    "full_param_count", "lora_param_count", "compression_ratio", "break_even_rank",
    "compare_param_counts",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- validation
def _as_matrix(W, name: str = "W") -> Tensor:
    """Return ``W`` as a finite 2-D floating tensor, or raise ValueError naming ``name``."""
    if not isinstance(W, Tensor):
        try:
            W = torch.as_tensor(W)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a 2-D tensor or array of numbers, got {type(W).__name__}") from err
    if W.ndim != 2:
        raise ValueError(f"{name} must be 2-D (d_out, d_in), got {W.ndim}-D with shape {tuple(W.shape)}")
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(W.shape)}")
    if W.is_complex():
        raise ValueError(f"{name} must be real, got dtype {W.dtype}")
    if not W.is_floating_point():  # integer / bool matrices (e.g. the 3×3 examples)
        W = W.to(torch.get_default_dtype())
    if not torch.isfinite(W).all():
        bad = "NaN" if torch.isnan(W).any() else "inf"
        raise ValueError(f"{name} must be finite, but it contains {bad} (allowed: finite real numbers)")
    return W


def _check_rank_arg(r, name: str = "r") -> int:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {r!r}")
    return r


def _check_dim(d, name: str) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {d!r}")
    return d


def _svd(W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD, computed in fp32 for fp16/bf16 inputs (no half-precision SVD on CPU)."""
    work = W.float() if W.dtype in _LOW_PRECISION else W
    return torch.linalg.svd(work, full_matrices=False)  # U (m, k), S (k,), Vh (k, n), k = min(m, n)


# ----------------------------------------------------------------------------- spectrum, rank
def singular_values(W) -> Tensor:
    """Singular values of ``W`` in descending order.

    Args:
        W: matrix of shape (d_out, d_in).

    Returns:
        Tensor of shape (min(d_out, d_in),), σ_1 ≥ σ_2 ≥ ... ≥ 0 (fp32 for fp16/bf16 input).
    """
    W = _as_matrix(W)
    work = W.float() if W.dtype in _LOW_PRECISION else W
    return torch.linalg.svdvals(work)


def matrix_rank(W, tol: float | None = None) -> int:
    """Numerical rank: the number of singular values larger than ``tol``.

    With ``tol=None`` the threshold is NumPy's and PyTorch's default,
    ``tol = max(d_out, d_in) · eps(dtype) · σ_max``: singular values below it are
    indistinguishable from rounding error. (eps is that of ``W``'s dtype, so an fp16
    matrix is judged at fp16 precision.)

    Args:
        W: matrix of shape (d_out, d_in); integer matrices are converted to float.
        tol: absolute threshold ``>= 0``, or None for the default above.

    Returns:
        An integer in [0, min(d_out, d_in)].

    Raises:
        ValueError: if ``W`` is not a finite 2-D matrix, or ``tol`` is negative or not finite.
    """
    W = _as_matrix(W)
    S = singular_values(W)
    if tol is None:
        tol = max(W.shape) * torch.finfo(W.dtype).eps * S[0].item()
    elif isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 or None, got {tol!r}")
    return int((S > tol).sum().item())


# ----------------------------------------------------------------------------- best rank-r approximation
def low_rank_approx(W, r: int) -> Tensor:
    """Best rank-``r`` approximation of ``W`` (Eckart–Young), by truncated SVD.

    ``W_r = U[:, :r] diag(σ[:r]) Vh[:r, :]`` minimises ‖W - X‖ over all X of rank ≤ r,
    in both the Frobenius and the spectral norm.

    Args:
        W: matrix of shape (d_out, d_in).
        r: target rank, an integer >= 1. Above min(d_out, d_in) it warns and returns W.

    Returns:
        Tensor of shape (d_out, d_in) and ``W``'s floating dtype, of rank ≤ r.

    Raises:
        ValueError: for a non-2-D or non-finite ``W`` or an ``r`` below 1.
    """
    W = _as_matrix(W)
    r = _check_rank_arg(r)
    warn_rank_above_min(r, *W.shape)
    U, S, Vh = _svd(W)
    k = min(r, S.numel())
    W_r = (U[:, :k] * S[:k]) @ Vh[:k, :]  # (d_out, k) · (k, d_in) -> (d_out, d_in)
    return W_r.to(W.dtype)


def eckart_young_error(W, r: int) -> float:
    """Frobenius error of the best rank-``r`` approximation: ``sqrt(Σ_{i>r} σ_i²)``.

    Args:
        W: matrix of shape (d_out, d_in).
        r: rank kept, an integer >= 1 (0.0 is returned when r >= min(d_out, d_in)).
    """
    r = _check_rank_arg(r)
    S = singular_values(W).double()
    return float(S[r:].square().sum().sqrt())


def approx_error(W, W_approx) -> float:
    """Measured Frobenius error ``‖W - W_approx‖_F`` (both of shape (d_out, d_in))."""
    W = _as_matrix(W)
    W_approx = _as_matrix(W_approx, "W_approx")
    if W.shape != W_approx.shape:
        raise ValueError(f"W_approx must have W's shape {tuple(W.shape)}, got {tuple(W_approx.shape)}")
    return float(torch.linalg.matrix_norm(W.double() - W_approx.double()))


def energy_captured(W, r: int) -> float:
    """Fraction of ``‖W‖_F² = Σ σ_i²`` kept by the best rank-``r`` approximation, in [0, 1]."""
    r = _check_rank_arg(r)
    S2 = singular_values(W).double().square()
    total = S2.sum()
    return 1.0 if total == 0 else float(S2[:r].sum() / total)


@dataclass(frozen=True)
class ReconstructionErrors:
    """Errors of the best rank-r approximations of one matrix, for several r.

    Attributes:
        ranks: the ranks r.
        frobenius: measured ‖W - low_rank_approx(W, r)‖_F for each r.
        eckart_young: sqrt(Σ_{i>r} σ_i²) for each r (equal to ``frobenius`` up to rounding).
        relative: frobenius / ‖W‖_F.
    """

    ranks: tuple[int, ...]
    frobenius: tuple[float, ...]
    eckart_young: tuple[float, ...]
    relative: tuple[float, ...]


def reconstruction_errors(W, ranks: Iterable[int] | None = None) -> ReconstructionErrors:
    """Measured and predicted (Eckart–Young) error of the rank-r approximation for each r.

    One SVD serves every r. Args: ``W`` (d_out, d_in); ``ranks``: integers in
    [1, min(d_out, d_in)], default all of them.
    """
    W = _as_matrix(W)
    k = min(W.shape)
    ranks = tuple(range(1, k + 1)) if ranks is None else tuple(ranks)
    for r in ranks:
        _check_rank_arg(r, "each of ranks")
        if r > k:
            raise ValueError(f"each of ranks must be in [1, min(d_out, d_in)] = [1, {k}], got {r}")
    U, S, Vh = _svd(W.double())
    norm = float(S.square().sum().sqrt())
    frob, ey, rel = [], [], []
    for r in ranks:
        W_r = (U[:, :r] * S[:r]) @ Vh[:r, :]
        frob.append(float(torch.linalg.matrix_norm(W.double() - W_r)))
        ey.append(float(S[r:].square().sum().sqrt()))
        rel.append(frob[-1] / norm if norm > 0 else 0.0)
    return ReconstructionErrors(ranks, tuple(frob), tuple(ey), tuple(rel))


def random_low_rank(d_out: int, d_in: int, r: int, *, generator: torch.Generator | None = None,
                    scale: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """A random update ``ΔW = B A`` of rank ``r`` (almost surely), like a trained LoRA delta.

    ``B`` (d_out, r) and ``A`` (r, d_in) have i.i.d. N(0, 1) entries; the product is
    scaled by ``scale / sqrt(r)`` so its entries have standard deviation ``scale``
    whatever ``r``.

    Args:
        d_out, d_in: shape of the update, integers >= 1.
        r: rank, an integer in [1, min(d_out, d_in)].
        generator: a seeded ``torch.Generator`` for reproducible draws.
        scale: standard deviation of the entries, > 0.
        dtype: floating dtype of the result.

    Returns:
        Tensor of shape (d_out, d_in).
    """
    _check_dim(d_out, "d_out")
    _check_dim(d_in, "d_in")
    r = _check_rank_arg(r)
    if r > min(d_out, d_in):
        raise ValueError(f"r must be in [1, min(d_out, d_in)] = [1, {min(d_out, d_in)}] for a "
                         f"rank-r matrix, got {r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    B = torch.randn(d_out, r, generator=generator, dtype=torch.float64)  # (d_out, r)
    A = torch.randn(r, d_in, generator=generator, dtype=torch.float64)   # (r, d_in)
    return (B @ A * (scale / math.sqrt(r))).to(dtype)                    # (d_out, d_in), rank r


# ----------------------------------------------------------------------------- parameter counts
def full_param_count(d_out: int, d_in: int) -> int:
    """Entries of a full (d_out, d_in) weight update: ``d_out · d_in``."""
    return _check_dim(d_out, "d_out") * _check_dim(d_in, "d_in")


def lora_param_count(d_out: int, d_in: int, r: int) -> int:
    """Trainable entries of a LoRA update ``B A``: ``r · (d_in + d_out)``.

    ``A`` is (r, d_in) and ``B`` is (d_out, r). Warns when ``r > min(d_out, d_in)``:
    such an ``r`` costs parameters but cannot add rank.

    Raises:
        ValueError: if any argument is not an integer >= 1.
    """
    _check_dim(d_out, "d_out")
    _check_dim(d_in, "d_in")
    r = _check_rank_arg(r)
    warn_rank_above_min(r, d_out, d_in)
    return r * (d_in + d_out)


def compression_ratio(d_out: int, d_in: int, r: int) -> float:
    """LoRA parameters over full parameters: ``r (d_in + d_out) / (d_in d_out)`` (``2r/d`` if square)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = lora_param_count(d_out, d_in, r)
    return lora / full_param_count(d_out, d_in)


def break_even_rank(d_out: int, d_in: int) -> float:
    """The r at which LoRA stores as many numbers as the full matrix: ``d_in d_out / (d_in + d_out)``.

    For a square d × d matrix this is d/2; below it LoRA is smaller.
    """
    return full_param_count(d_out, d_in) / (d_in + d_out)


@dataclass(frozen=True)
class ParamCounts:
    """Full vs LoRA parameter counts for one (d_out, d_in) matrix at rank r.

    Attributes:
        d_out, d_in, r: the inputs.
        full: d_out · d_in.
        lora: r · (d_in + d_out).
        fraction: lora / full (the "percent trained"; 2r/d if square).
        reduction: 1 - fraction (the "percent fewer").
        times_fewer: full / lora.
        max_rank: min(d_out, d_in), the largest rank any update of this shape can have.
    """

    d_out: int
    d_in: int
    r: int
    full: int
    lora: int
    fraction: float
    reduction: float
    times_fewer: float
    max_rank: int

    @property
    def rank_exceeds_shape(self) -> bool:
        """True when r > min(d_out, d_in): the extra rank cannot be used."""
        return self.r > self.max_rank


def compare_param_counts(d_out: int, d_in: int, r: int) -> ParamCounts:
    """Full vs LoRA parameter counts (see :class:`ParamCounts`); never warns, check ``rank_exceeds_shape``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = lora_param_count(d_out, d_in, r)
    full = full_param_count(d_out, d_in)
    return ParamCounts(d_out=d_out, d_in=d_in, r=r, full=full, lora=lora, fraction=lora / full,
                       reduction=1 - lora / full, times_fewer=full / lora, max_rank=min(d_out, d_in))
