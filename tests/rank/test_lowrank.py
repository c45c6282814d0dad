"""Tests for lora_lab.rank.lowrank: rank, best rank-r approximation (Eckart–Young), parameter counts."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_lab.rank.lowrank import (
    approx_error,
    break_even_rank,
    compare_param_counts,
    compression_ratio,
    eckart_young_error,
    energy_captured,
    full_param_count,
    lora_param_count,
    low_rank_approx,
    matrix_rank,
    random_low_rank,
    reconstruction_errors,
    singular_values,
)

SHAPES = [(1, 1), (3, 3), (5, 2), (2, 7), (16, 16), (24, 40), (64, 32)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# After rounding a result to the dtype, how close measured error and Eckart–Young can be.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the seed's 3×3 examples
SEED_RANK_1 = [[1, 2, 3], [2, 4, 6], [3, 6, 9]]
SEED_RANK_2 = [[1, 2, 3], [0, 1, 2], [1, 3, 5]]
SEED_FULL = [[1, 2, 3], [0, 1, 2], [0, 0, 1]]


@pytest.mark.parametrize("matrix, rank", [(SEED_RANK_1, 1), (SEED_RANK_2, 2), (SEED_FULL, 3)])
@pytest.mark.parametrize("as_type", [list, np.array, torch.tensor])
def test_matrix_rank_of_seed_examples(matrix, rank, as_type):
    assert matrix_rank(as_type(matrix)) == rank


@pytest.mark.parametrize("matrix", [SEED_RANK_1, SEED_RANK_2, SEED_FULL, [[0.0, 0.0], [0.0, 0.0]]])
def test_matrix_rank_agrees_with_torch_and_numpy(matrix):
    W = torch.tensor(matrix, dtype=torch.float64)
    assert matrix_rank(W) == int(torch.linalg.matrix_rank(W)) == int(np.linalg.matrix_rank(W.numpy()))


def test_matrix_rank_tol():
    W = torch.diag(torch.tensor([3.0, 1.0, 1e-3]))
    assert matrix_rank(W) == 3
    assert matrix_rank(W, tol=1e-2) == 2
    assert matrix_rank(W, tol=5.0) == 0
    assert matrix_rank(torch.zeros(3, 4)) == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", [1, 2, 4])
def test_random_low_rank_has_rank_r(shape, r):
    if r > min(shape):
        with pytest.raises(ValueError, match="r must be in"):
            random_low_rank(*shape, r, generator=_gen())
        return
    dW = random_low_rank(*shape, r, generator=_gen(r))
    assert dW.shape == shape and dW.dtype == torch.float32
    assert matrix_rank(dW) == r


def test_random_low_rank_is_seeded():
    a = random_low_rank(8, 6, 2, generator=_gen(1))
    assert torch.equal(a, random_low_rank(8, 6, 2, generator=_gen(1)))
    assert not torch.equal(a, random_low_rank(8, 6, 2, generator=_gen(2)))


# ----------------------------------------------------------------------------- Eckart–Young
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r", [1, 2, 5])
def test_low_rank_approx_shape_dtype_rank_and_error(shape, dtype, r):
    W = torch.randn(*shape, generator=_gen(7), dtype=torch.float64).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_r = low_rank_approx(W, r)
    assert W_r.shape == W.shape and W_r.dtype == dtype
    assert matrix_rank(W_r) <= min(r, *shape)
    measured = approx_error(W, W_r)
    predicted = eckart_young_error(W, r)
    scale = float(torch.linalg.matrix_norm(W.double()))
    assert measured == pytest.approx(predicted, rel=RTOL[dtype], abs=RTOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_rank_approx_beats_other_rank_r_matrices(dtype):
    """Eckart–Young: no other rank-r matrix (here: random ones and SVD-free projections) is closer."""
    W = torch.randn(20, 12, generator=_gen(3), dtype=dtype)
    best = approx_error(W, low_rank_approx(W, 3))
    for seed in range(5):
        B = torch.randn(20, 3, generator=_gen(seed), dtype=dtype)
        X = B @ torch.linalg.lstsq(B, W).solution   # best matrix with column space span(B)
        assert approx_error(W, X) >= best - 1e-5


def test_low_rank_approx_matches_svd_reference():
    W = torch.randn(10, 7, generator=_gen(5), dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    ref = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]
    torch.testing.assert_close(low_rank_approx(W, 2), ref)


def test_low_rank_approx_warns_above_min_dim_and_returns_W():
    W = torch.randn(4, 6, generator=_gen(0), dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"r=5 is larger than min\(d_out, d_in\)=4"):
        W5 = low_rank_approx(W, 5)
    torch.testing.assert_close(W5, W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low_rank_approx(W, 4)  # r == min(shape) is allowed silently


def test_reconstruction_errors_and_energy():
    W = torch.diag(torch.tensor([4.0, 3.0, 0.0], dtype=torch.float64))
    rec = reconstruction_errors(W)
    assert rec.ranks == (1, 2, 3)
    assert rec.eckart_young == pytest.approx((3.0, 0.0, 0.0))
    assert rec.frobenius == pytest.approx((3.0, 0.0, 0.0), abs=1e-12)
    assert rec.relative == pytest.approx((0.6, 0.0, 0.0), abs=1e-12)
    assert energy_captured(W, 1) == pytest.approx(16 / 25)
    assert energy_captured(torch.zeros(2, 2), 1) == 1.0
    with pytest.raises(ValueError, match=r"ranks must be in \[1, min\(d_out, d_in\)\] = \[1, 3\], got 4"):
        reconstruction_errors(W, ranks=[1, 4])


def test_singular_values_descending_and_fp32_for_half():
    S = singular_values(torch.tensor(SEED_FULL, dtype=torch.float16))
    assert S.dtype == torch.float32 and S.shape == (3,)
    assert torch.all(S[:-1] >= S[1:])


# ----------------------------------------------------------------------------- properties
finite = st.floats(-10, 10, allow_nan=False, width=64)


@st.composite
def matrices(draw, max_dim=8):
    m, n = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    values = draw(st.lists(finite, min_size=m * n, max_size=m * n))
    return torch.tensor(values, dtype=torch.float64).reshape(m, n)


@st.composite
def low_rank_matrices(draw, max_dim=8):
    """A product (m, k) @ (k, n) of random integer matrices: rank ≤ k."""
    m, n = draw(st.integers(1, max_dim)), draw(st.integers(1, max_dim))
    k = draw(st.integers(1, min(m, n)))
    ints = st.integers(-5, 5)
    B = torch.tensor(draw(st.lists(ints, min_size=m * k, max_size=m * k)), dtype=torch.float64).reshape(m, k)
    A = torch.tensor(draw(st.lists(ints, min_size=k * n, max_size=k * n)), dtype=torch.float64).reshape(k, n)
    return B @ A, k


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(matrices(), st.integers(1, 8))
def test_property_rank_of_approx_at_most_r(W, r):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_r = low_rank_approx(W, r)
    assert matrix_rank(W_r) <= r


@PROPS
@given(matrices(), st.integers(1, 8))
def test_property_error_is_eckart_young(W, r):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_r = low_rank_approx(W, r)
    scale = float(torch.linalg.matrix_norm(W)) + 1.0
    assert math.isclose(approx_error(W, W_r), eckart_young_error(W, r), rel_tol=1e-9, abs_tol=1e-9 * scale)


@PROPS
@given(low_rank_matrices(), st.integers(0, 3))
def test_property_r_at_least_rank_reconstructs_exactly(Wk, extra):
    W, k = Wk
    rank = matrix_rank(W)
    assert rank <= k
    r = max(rank, 1) + extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_r = low_rank_approx(W, r)
    torch.testing.assert_close(W_r, W, atol=1e-9 * (1 + float(W.abs().max())), rtol=0)


@PROPS
@given(st.integers(1, 10_000), st.integers(1, 10_000), st.integers(1, 512))
def test_property_param_counts(d_out, d_in, r):
    c = compare_param_counts(d_out, d_in, r)
    assert c.lora == r * (d_in + d_out) and c.full == d_in * d_out
    assert c.fraction == pytest.approx(compression_ratio(d_out, d_in, r))
    assert c.reduction == pytest.approx(1 - c.fraction)
    assert c.times_fewer == pytest.approx(1 / c.fraction)
    assert (c.lora < c.full) == (r < break_even_rank(d_out, d_in))


# ----------------------------------------------------------------------------- parameter counts (seeds' figures)
@pytest.mark.parametrize("d, r, lora, full", [
    (4096, 8, 65_536, 16_777_216),   # seeds 000/001
    (512, 8, 8_192, 262_144),        # seed 003
    (768, 4, 6_144, 589_824),        # seed 002 (c_attn "might be 768x768")
    (1000, 4, 8_000, 1_000_000),     # seed 002
])
def test_seed_param_counts(d, r, lora, full):
    assert lora_param_count(d, d, r) == lora
    assert full_param_count(d, d) == full
    assert compression_ratio(d, d, r) == pytest.approx(2 * r / d)


def test_seed_percentages():
    c = compare_param_counts(4096, 4096, 8)
    assert round(100 * c.fraction, 2) == 0.39 and round(100 * c.reduction, 1) == 99.6
    assert round(100 * compare_param_counts(512, 512, 8).reduction) == 97
    assert compare_param_counts(768, 768, 4).times_fewer == 96
    assert compare_param_counts(1000, 1000, 4).fraction == pytest.approx(0.008)


def test_rectangular_counts_and_break_even():
    assert lora_param_count(2304, 768, 8) == 8 * (768 + 2304)
    assert compression_ratio(2304, 768, 8) == pytest.approx(8 * 3072 / (768 * 2304))
    assert break_even_rank(512, 512) == 256
    assert break_even_rank(300, 600) == 200


def test_lora_param_count_warns_when_r_exceeds_shape():
    with pytest.warns(UserWarning, match="cannot add rank"):
        assert lora_param_count(4, 6, 5) == 50
    c = compare_param_counts(4, 6, 5)
    assert c.rank_exceeds_shape and c.max_rank == 4
    assert not compare_param_counts(4, 6, 4).rank_exceeds_shape


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_r", [0, -1, 2.0, True, "4", None])
def test_bad_r_raises(bad_r):
    W = torch.eye(3)
    with pytest.raises(ValueError, match=rf"r must be an integer >= 1, got {bad_r!r}"):
        low_rank_approx(W, bad_r)
    with pytest.raises(ValueError, match="r must be an integer >= 1"):
        lora_param_count(8, 8, bad_r)


@pytest.mark.parametrize("name, args", [("d_out", (0, 8, 2)), ("d_in", (8, -3, 2)), ("d_out", (8.0, 8, 2))])
def test_bad_dims_raise(name, args):
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= 1, got {args[0 if name == 'd_out' else 1]!r}"):
        lora_param_count(*args)


@pytest.mark.parametrize("W, match", [
    (torch.ones(3), r"W must be 2-D \(d_out, d_in\), got 1-D with shape \(3,\)"),
    (torch.ones(2, 2, 2), r"W must be 2-D .* got 3-D"),
    (torch.ones(0, 3), r"at least one row and one column, got shape \(0, 3\)"),
    (torch.tensor([[1.0, float("nan")]]), r"W must be finite, but it contains NaN"),
    (torch.tensor([[1.0, float("inf")]]), r"W must be finite, but it contains inf"),
    (torch.ones(2, 2, dtype=torch.complex64), r"W must be real"),
    ("abc", r"W must be 2-D|W must be a 2-D tensor"),
])
def test_bad_matrix_raises(W, match):
    for fn in (matrix_rank, singular_values, lambda M: low_rank_approx(M, 1)):
        with pytest.raises(ValueError, match=match):
            fn(W)


@pytest.mark.parametrize("tol", [-1.0, float("nan"), float("inf"), "0.1"])
def test_bad_tol_raises(tol):
    with pytest.raises(ValueError, match=r"tol must be a finite number >= 0 or None"):
        matrix_rank(torch.eye(2), tol=tol)


def test_approx_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"W_approx must have W's shape \(2, 2\), got \(2, 3\)"):
        approx_error(torch.eye(2), torch.ones(2, 3))


def test_random_low_rank_bad_scale():
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got 0"):
        random_low_rank(4, 4, 2, scale=0)
