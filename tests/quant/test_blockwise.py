"""lora_lab.quant.blockwise / quant8: codebooks, byte-exact parity with bitsandbytes, error bounds, storage."""

import dataclasses
import math

import bitsandbytes.functional as bnbF
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_lab.quant.blockwise import (
    CODEBOOKS,
    QuantizedTensor,
    bin_edges,
    bits_per_param,
    check_quantized,
    dequantize_4bit,
    fp4_codebook,
    get_codebook,
    int4_codebook,
    nearest_code_index,
    nf4_codebook,
    quantize_4bit,
    unpack_codes,
)
from lora_lab.quant.blockwise8 import dynamic_map_8bit

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randn(shape, dtype=torch.float32, seed=0, std=0.02):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


def assert_matches_bnb(x, codebook, blocksize=64, double_quant=False):
    """Packed bytes, absmax (and nested state) and the dequantized tensor equal bitsandbytes'."""
    q = quantize_4bit(x, codebook, blocksize, double_quant)
    packed, state = bnbF.quantize_4bit(x, blocksize=blocksize, quant_type=codebook,
                                       compress_statistics=double_quant)
    assert torch.equal(q.packed, packed.reshape(-1))
    assert q.absmax.dtype == state.absmax.dtype and torch.equal(q.absmax, state.absmax)
    if double_quant:
        assert torch.equal(q.nested_absmax, state.state2.absmax)
        assert torch.equal(q.nested_offset, state.offset)
        assert torch.equal(q.nested_code, state.state2.code)
    ours, theirs = dequantize_4bit(q), bnbF.dequantize_4bit(packed, state)
    assert ours.shape == x.shape and ours.dtype == theirs.dtype == x.dtype
    assert torch.equal(ours.reshape(-1), theirs.reshape(-1))  # bnb returns (1, n) for some 1-D inputs
    return q


# ----------------------------------------------------------------------------- codebooks
def test_nf4_is_derived_and_equals_bitsandbytes_bit_for_bit():
    code = nf4_codebook()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert torch.equal(code, bnbF.get_4bit_type("nf4", device="cpu"))
    assert (code.view(torch.int32) == bnbF.get_4bit_type("nf4", device="cpu").view(torch.int32)).all()
    assert code[0] == -1 and code[-1] == 1 and code[7] == 0
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7  # asymmetric: 8 positive, 7 negative


def test_nf4_offset_changes_the_table():
    assert not torch.equal(nf4_codebook(0.99), nf4_codebook())


def test_fp4_matches_bitsandbytes_order_and_is_e2m1():
    code = fp4_codebook()
    assert torch.equal(code.view(torch.int32), bnbF.get_4bit_type("fp4", device="cpu").view(torch.int32))
    mags = sorted(set((code[:8] * 12).tolist()))
    assert mags == [0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]  # E2M1 magnitudes (bnb's bias)
    assert torch.equal(code[8:], -code[:8])                      # index + 8 = sign bit


def test_int4_is_linear_symmetric():
    code = int4_codebook()
    assert code.shape == (16,) and torch.equal(code, code.sort().values)
    assert torch.allclose(code.unique() * 7, torch.arange(-7, 8, dtype=torch.float32))
    assert torch.equal(code, -code.flip(0))


@pytest.mark.parametrize("name", CODEBOOKS)
def test_bin_edges_are_midpoints_of_sorted_codes(name):
    edges, s = bin_edges(name), get_codebook(name).sort().values
    assert edges.shape == (15,)
    assert torch.equal(edges, (s[:-1] + s[1:]) / 2)
    assert (edges[1:] >= edges[:-1]).all()


def test_dynamic_map_equals_bitsandbytes():
    assert torch.equal(dynamic_map_8bit(), bnbF.create_dynamic_map())


# ----------------------------------------------------------------------------- parity with bitsandbytes
@pytest.mark.parametrize("codebook", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_large_matrix_matches_bnb(codebook, double_quant):
    assert_matches_bnb(_randn((4096, 4096), seed=1), codebook, 64, double_quant)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_matrix_half_precision_matches_bnb(dtype):
    assert_matches_bnb(_randn((4096, 4096), dtype, seed=2), "nf4", 64, True)


@pytest.mark.parametrize("shape", [(768, 2304), (257, 3), (1,), (7,), (63,), (65,), (1001,), (3, 5, 7),
                                   (2, 64), (50257, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codebook", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_shapes_and_dtypes_match_bnb(shape, dtype, codebook, double_quant):
    assert_matches_bnb(_randn(shape, dtype, seed=3), codebook, 64, double_quant)


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 512, 1024, 2048, 4096])
@pytest.mark.parametrize("codebook", ["nf4", "fp4"])
def test_every_blocksize_matches_bnb(blocksize, codebook):
    assert_matches_bnb(_randn((300, 37), seed=blocksize), codebook, blocksize, double_quant=True)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), blocksize=st.sampled_from([32, 64, 128, 256, 1024, 4096]),
       codebook=st.sampled_from(["nf4", "fp4"]), dtype=st.sampled_from(DTYPES),
       double_quant=st.booleans(), scale=st.floats(1e-4, 1e3), seed=st.integers(0, 2**31))
def test_random_tensors_match_bnb(n, blocksize, codebook, dtype, double_quant, scale, seed):
    assert_matches_bnb(_randn((n,), dtype, seed, std=scale), codebook, blocksize, double_quant)


@pytest.mark.parametrize("codebook", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_at_bin_edges_and_partial_block(codebook, dtype):
    edges = bin_edges(codebook)
    ulp = torch.finfo(torch.float32).eps
    # one full block with absmax exactly 1 (so x / absmax == x), then a partial block (absmax 3)
    near = torch.cat([edges, edges * (1 + ulp), edges * (1 - ulp), torch.tensor([0.0, -0.0, 1.0, -1.0])])
    full = torch.cat([torch.tensor([1.0]), near])[:64]
    full = torch.nn.functional.pad(full, (0, 64 - full.numel()))
    tail = torch.cat([torch.tensor([3.0]), edges * 3, torch.tensor([-3.0, 0.0])])
    assert_matches_bnb(torch.cat([full, tail]).to(dtype), codebook, 64, double_quant=False)
    assert_matches_bnb(torch.cat([full, tail]).to(dtype), codebook, 32, double_quant=True)


@pytest.mark.parametrize("x", [torch.zeros(100), torch.ones(4096 * 3), torch.full((1,), -2.5),
                               torch.tensor([0.0, 1e-30, -1e-30]), torch.tensor([65504.0, -1.0])])
@pytest.mark.parametrize("double_quant", [False, True])
def test_degenerate_inputs_match_bnb(x, double_quant):
    assert_matches_bnb(x, "nf4", 64, double_quant)


# ----------------------------------------------------------------------------- the fast search
@pytest.mark.parametrize("codebook", CODEBOOKS)
def test_nearest_code_index_equals_bucketize(codebook):
    code, edges = get_codebook(codebook), bin_edges(codebook)
    g = torch.Generator().manual_seed(0)
    probes = [torch.rand(200_000, generator=g) * 2 - 1, edges, torch.nextafter(edges, torch.tensor(2.0)),
              torch.nextafter(edges, torch.tensor(-2.0)), torch.tensor([-1.0, 1.0, 0.0, -0.0]),
              torch.linspace(-1, 1, 4097)]
    v = torch.cat(probes).clamp(-1, 1)
    ref = torch.argsort(code, stable=True)[torch.bucketize(v, edges)]
    assert torch.equal(nearest_code_index(v.clone(), code).long(), ref)


# ----------------------------------------------------------------------------- structure and errors
def test_quantized_tensor_fields_and_packing():
    x = _randn((10, 7))
    q = quantize_4bit(x, "nf4", 32)
    assert isinstance(q, QuantizedTensor)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == 35
    assert q.absmax.shape == (math.ceil(70 / 32),) and q.shape == x.shape and q.dtype == x.dtype
    assert q.blocksize == 32 and q.codebook == "nf4" and torch.equal(q.code, nf4_codebook())
    codes = unpack_codes(q)
    assert torch.equal(q.packed, (codes[0::2] << 4 | codes[1::2]).to(torch.uint8))  # first element high
    assert not q.double_quant and q.nested_absmax is None


def test_int4_roundtrip_is_nearest_level():
    x = _randn((64,), seed=5)
    xhat = dequantize_4bit(quantize_4bit(x, "int4", 64))
    levels = x.abs().max() * torch.arange(-7, 8) / 7
    nearest = levels[(x[:, None] - levels[None, :]).abs().argmin(dim=1)]
    assert torch.allclose(xhat, nearest, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), blocksize=st.sampled_from([32, 64, 256, 4096]),
       codebook=st.sampled_from(CODEBOOKS), double_quant=st.booleans(),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31))
def test_error_at_most_half_the_widest_bin_times_block_absmax(n, blocksize, codebook, double_quant, scale, seed):
    x = _randn((n,), seed=seed, std=scale)
    q = quantize_4bit(x, codebook, blocksize, double_quant)
    err = (dequantize_4bit(q) - x).abs()
    s = get_codebook(codebook).sort().values
    half_widest = float((s[1:] - s[:-1]).max()) / 2
    absmax = q.absmax_float().repeat_interleave(blocksize)[:n]     # the scale each value used
    true_absmax = torch.nn.functional.pad(x.abs(), (0, -n % blocksize)).view(-1, blocksize).amax(1)
    true_absmax = true_absmax.repeat_interleave(blocksize)[:n]
    if not double_quant:
        assert torch.equal(absmax, true_absmax)
    # codes are picked with the true absmax; a double-quantized absmax adds its own error (|code| <= 1)
    bound = half_widest * true_absmax + (absmax - true_absmax).abs()
    assert (err <= bound + 1e-6 * true_absmax + 1e-30).all()


@settings(max_examples=40, deadline=None)
@given(codes=st.lists(st.integers(0, 15), min_size=1, max_size=200), codebook=st.sampled_from(CODEBOOKS),
       scale=st.floats(1e-3, 1e3), blocksize=st.sampled_from([32, 64]))
def test_values_on_a_code_are_reconstructed_exactly(codes, codebook, scale, blocksize):
    code = get_codebook(codebook)
    s = torch.tensor(scale, dtype=torch.float32)
    x = code[torch.tensor(codes)] * s
    x = x.view(-1)
    x[:: blocksize] = s                                  # every block holds its scale: absmax = s
    q = quantize_4bit(x, codebook, blocksize)
    assert torch.equal(dequantize_4bit(q), x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_raise(bad):
    x = torch.zeros(10)
    x[3] = bad
    with pytest.raises(ValueError, match="finite"):
        quantize_4bit(x)


@pytest.mark.parametrize("blocksize", [0, 16, 48, 100, 8192, 64.0, True, "64"])
def test_bad_blocksize_raises(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        quantize_4bit(torch.ones(10), blocksize=blocksize)
    with pytest.raises(ValueError, match="blocksize"):
        bits_per_param(blocksize)


def test_unknown_codebook_empty_and_int_tensors_raise():
    with pytest.raises(ValueError, match="codebook"):
        quantize_4bit(torch.ones(10), codebook="nf3")
    with pytest.raises(ValueError, match="at least one element"):
        quantize_4bit(torch.ones(0))
    with pytest.raises(ValueError, match="float"):
        quantize_4bit(torch.ones(10, dtype=torch.int32))
    with pytest.raises(ValueError, match="QuantizedTensor"):
        dequantize_4bit(torch.ones(3))


# ----------------------------------------------------------------------------- storage accounting
def test_bits_per_param_formula():
    assert bits_per_param(64) == 4.5
    assert abs(bits_per_param(64, double_quant=True) - 4.127) < 0.001
    assert bits_per_param(64, True) == 4 + 8 / 64 + 32 / (64 * 256)
    saving = bits_per_param(64) - bits_per_param(64, True)
    assert abs(saving - 0.373) < 0.001
    assert abs(saving * 65e9 / 8 / 1e9 - 3.03) < 0.01   # ≈ 3 GB saved on a 65B model


@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_param_equals_stored_bytes(double_quant):
    x = _randn((4096, 4096), seed=7)
    q = quantize_4bit(x, "nf4", 64, double_quant)
    expected_bytes = x.numel() // 2 + (x.numel() // 64) * (1 if double_quant else 4)
    if double_quant:
        expected_bytes += 4 * (x.numel() // 64 // 256) + 4      # fp32 scale per 256 absmax + the mean
    assert q.nbytes == expected_bytes
    offset_bits = 32 / x.numel() if double_quant else 0.0
    assert q.bits_per_param == pytest.approx(bits_per_param(64, double_quant) + offset_bits, abs=1e-12)
    assert q.bits_per_param == pytest.approx(bits_per_param(64, double_quant), abs=1e-5)


def test_bnb_fp4_is_not_ocp_e2m1():
    from lora_lab.quant.blockwise import e2m1_codebook
    bnb_fp4 = bnbF.get_4bit_type("fp4", device="cpu")
    assert torch.equal(fp4_codebook(), bnb_fp4)
    assert sorted(set((bnb_fp4.abs() * 12).tolist())) == [0, 0.0625, 2, 3, 4, 6, 8, 12]
    e2m1 = e2m1_codebook()
    assert sorted(set((e2m1.abs() * 6).tolist())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    diff = (e2m1.sort().values - fp4_codebook().sort().values).abs()
    assert int((diff > 1e-7).sum()) == 2                            # only ±(smallest non-zero level)
    assert diff.max() == pytest.approx(0.5 / 6 - 0.0625 / 12)


def test_nf4_paper_formula_differs_from_bitsandbytes():
    from scipy.stats import norm

    from lora_lab.quant.blockwise import nf4_paper_codebook
    paper = nf4_paper_codebook()
    assert paper.shape == (16,) and paper.dtype == torch.float64
    assert torch.allclose(paper, -paper.flip(0)) and not (paper == 0).any()   # symmetric, no zero
    assert paper[0] == -1 and paper[-1] == 1 and torch.equal(paper, paper.sort().values)
    p = torch.linspace(1 - 0.9677083, 0.9677083, 17, dtype=torch.float64).numpy()
    z = norm.ppf(p)
    assert paper[3].item() == pytest.approx((z[3] + z[4]) / 2 / ((z[-1] + z[-2]) / 2))
    assert float((paper - nf4_codebook().double()).abs().max()) > 0.04
    assert norm.ppf(0.0) == -math.inf                               # the literal formula's first point
    with pytest.raises(ValueError, match="offset"):
        nf4_paper_codebook(offset=1.0)
    with pytest.raises(ValueError, match="k must be"):
        nf4_paper_codebook(k=0)


# -- dequantize_4bit checks its input (issue 11, item 6) --------------------------------------------

Q = quantize_4bit(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))
QD = quantize_4bit(torch.randn(130, 70, generator=torch.Generator().manual_seed(0)), double_quant=True)


@pytest.mark.parametrize("q,fields,match", [
    (Q, dict(packed=Q.packed[:100]), r"packed has 100 elements, expected 2048"),   # was: uninitialized memory
    (Q, dict(packed=torch.cat([Q.packed, Q.packed])), r"packed has 4096 elements, expected 2048"),
    (Q, dict(packed=Q.packed.to(torch.int8)), r"packed must be uint8"),
    (Q, dict(packed=Q.packed.tolist()), r"packed must be a torch.Tensor"),
    (Q, dict(absmax=Q.absmax[:10]), r"absmax has 10 elements, expected 64"),        # was: RuntimeError
    (Q, dict(absmax=Q.absmax.clone().fill_(float("nan"))), r"absmax must hold finite"),
    (Q, dict(shape=(64, 65)), r"packed has 2048 elements, expected 2080"),
    (Q, dict(shape=(0, 64)), r"shape must describe at least one element"),
    (Q, dict(shape=(-64, -64)), r"shape must have non-negative sizes"),
    (Q, dict(shape="64x64"), r"shape must be a tuple of non-negative ints"),
    (Q, dict(blocksize=128), r"absmax has 64 elements, expected 32"),
    (Q, dict(blocksize=48), r"blocksize must be a power of two"),
    (Q, dict(dtype=torch.int8), r"dtype must be one of"),
    (Q, dict(codebook="nf3"), r"codebook must be one of"),
    (Q, dict(code=Q.code[:8]), r"code must hold 16 finite float values"),
    (QD, dict(absmax=QD.absmax[:5]), r"absmax has 5 elements, expected 143"),
    (QD, dict(absmax=QD.absmax.float()), r"absmax must be uint8 8-bit codes"),
    (QD, dict(nested_absmax=QD.nested_absmax[:0]), r"nested_absmax has 0 elements, expected 1"),
    (QD, dict(nested_offset=torch.zeros(3)), r"nested_offset has 3 elements, expected 1"),
    (QD, dict(nested_code=None), r"nested_code must be a finite float tensor"),
    (QD, dict(nested_code=QD.nested_code[:255]), r"nested_code has 255 elements, expected 256"),
    (Q, dict(nested_offset=torch.zeros(())), r"nested_absmax is None"),
])
def test_dequantize_rejects_inconsistent_fields(q, fields, match):
    bad = dataclasses.replace(q, **fields)
    with pytest.raises(ValueError, match=match):
        dequantize_4bit(bad)
    with pytest.raises(ValueError, match=match):
        check_quantized(bad)


def test_dequantize_still_exact_and_accepts_bnb_layout():
    bnbF = pytest.importorskip("bitsandbytes.functional")
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    packed, state = bnbF.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert packed.shape == (2048, 1)  # bitsandbytes' layout
    ours = dequantize_4bit(dataclasses.replace(Q, packed=packed))
    assert torch.equal(ours, dequantize_4bit(Q))
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        dequantize_4bit(Q, dtype=torch.int32)
    with pytest.raises(ValueError, match="q must be a QuantizedTensor"):
        dequantize_4bit(x)
