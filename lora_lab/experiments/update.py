"""What the learned update looks like (LoRA paper §7), from saved adapters and the base.

    subspace_similarity(A1, A2)  φ(i, j) = ‖V1[:i] V2[:j]ᵀ‖_F² / min(i, j)   (paper, Fig. 3)
    amplification(dW, W)         ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F, U, V the top-r singular vectors of ΔW
    rotate(B, A, R)              (B R⁻¹, R A): another split of the very same ΔW = B A

V1, V2 are the right singular vectors (rows of Vh, shape (r, in)) of two ``lora_A``
matrices: φ(i, j) = 1 when the top-i directions of one lie inside the top-j of the
other, 0 when they are orthogonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lora_lab.rank.lowrank import _svd


def _right_vectors(A: Tensor) -> Tensor:
    if A.dim() != 2:
        raise ValueError(f"A must be a matrix (r, in_features), got shape {tuple(A.shape)}")
    return _svd(A.double())[2]  # (r, in), orthonormal rows, by decreasing singular value


def subspace_similarity(A1: Tensor, A2: Tensor) -> Tensor:
    """φ(i, j) for i = 1..r1, j = 1..r2 (shape (r1, r2), values in [0, 1])."""
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"A1 and A2 must share in_features, got {tuple(A1.shape)} and {tuple(A2.shape)}")
    V1, V2 = _right_vectors(A1), _right_vectors(A2)
    overlap = (V1 @ V2.T).square()  # (r1, r2): squared cosines between directions
    cum = overlap.cumsum(0).cumsum(1)  # ‖V1[:i] V2[:j]ᵀ‖_F²
    i = torch.arange(1, V1.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, V2.shape[0] + 1, dtype=torch.float64)[None, :]
    return (cum / torch.minimum(i, j)).float()


def amplification(delta: Tensor, weight: Tensor, r: int) -> tuple[float, float]:
    """(‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F, ‖Uᵀ W Vᵀ‖_F / ‖W‖_F) with U, V the top-``r`` singular vectors of ΔW.

    A large first number means ΔW amplifies directions that W itself barely uses (the
    paper finds ≈ 21 for r = 4 on GPT-3's W_q). Shapes: delta and weight (out, in).
    """
    if delta.shape != weight.shape:
        raise ValueError(f"delta and weight must have one shape, got {tuple(delta.shape)} and {tuple(weight.shape)}")
    U, _, Vh = _svd(delta.double())
    U, Vh = U[:, :r], Vh[:r]
    projected = U.T @ weight.double() @ Vh.T  # (r, r): W restricted to ΔW's subspaces
    p = float(projected.norm())
    return float(delta.double().norm()) / p, p / float(weight.double().norm())


def rotate(B: Tensor, A: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """(B R⁻¹, R A) for an invertible (r, r) matrix R: the same product B A, other "components"."""
    if R.shape != (A.shape[0], A.shape[0]):
        raise ValueError(f"R must be ({A.shape[0]}, {A.shape[0]}), got {tuple(R.shape)}")
    return B @ torch.linalg.inv(R), R @ A
