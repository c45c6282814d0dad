"""lora_lab.quant.metrics: NF4 wins on normal data, bins, outliers and blocks."""

import math

import pytest
import torch

from lora_lab.quant.blockwise import dequantize_4bit, quantize_4bit
from lora_lab.quant.metrics import compare_codebooks, fake_quantize, outlier_damage, quantization_error, scaled_blocks


def _normal(n=64 * 1024, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.02


def test_nf4_has_lowest_error_on_normal_data():
    errs = {e.codebook: e for e in compare_codebooks(_normal())}
    assert errs["nf4"].mse < errs["fp4"].mse and errs["nf4"].mse < errs["int4"].mse
    assert errs["nf4"].usage_entropy > errs["int4"].usage_entropy
    assert errs["nf4"].usage_entropy > 3.8                    # close to the 4-bit maximum


def test_metrics_are_what_they_say():
    x = _normal(4096, seed=1)
    e = quantization_error(x, "fp4", 128)
    err = dequantize_4bit(quantize_4bit(x, "fp4", 128)) - x
    assert e.mse == pytest.approx(float((err ** 2).mean()))
    assert e.max_abs_error == pytest.approx(float(err.abs().max()))
    assert int(e.bin_counts.sum()) == 4096 and e.bits_per_param == 4 + 32 / 128
    assert e.rmse == pytest.approx(e.mse ** 0.5)


@pytest.mark.parametrize("codebook", ["nf4", "fp4", "int4"])
@pytest.mark.parametrize("blocksize", [32, 64, 4096])
def test_fake_quantize_equals_the_real_thing(codebook, blocksize):
    x = _normal(5000, seed=2)
    assert torch.allclose(fake_quantize(x, codebook, blocksize),
                          dequantize_4bit(quantize_4bit(x, codebook, blocksize)), atol=1e-7)


def test_scaled_blocks_in_unit_range():
    s = scaled_blocks(_normal(1000), 64)
    assert s.abs().max() == 1 and s.shape == (1000,)
    assert scaled_blocks(_normal(1000), None).abs().max() == 1


def test_one_outlier_hurts_a_whole_tensor_but_only_one_block():
    x = _normal(16384, seed=3)
    tensor_wide = outlier_damage(x, outlier=50, blocksize=None)
    blocked = outlier_damage(x, outlier=50, blocksize=64)
    assert tensor_wide.damage > 10 * blocked.damage and blocked.damage < 2
    assert tensor_wide.zeroed_fraction > 0.5 > blocked.zeroed_fraction
    assert blocked.bits_per_param == 4.5 and tensor_wide.bits_per_param == 4 + 32 / 16384
    assert outlier_damage(x, outlier=1, blocksize=None).damage == pytest.approx(1, rel=0.05)
    with pytest.raises(ValueError, match="position"):
        outlier_damage(x, 5, position=10**6)
    with pytest.raises(ValueError, match="blocksize"):
        fake_quantize(x, "nf4", 0)


def test_levels_merge_duplicate_zeros():
    x = _normal(64 * 256, seed=4)
    errs = {e.codebook: e for e in compare_codebooks(x)}
    assert [errs[c].levels.numel() for c in ("nf4", "fp4", "int4")] == [16, 15, 15]
    for e in errs.values():
        assert int(e.level_counts.sum()) == x.numel() == int(e.bin_counts.sum())
        assert torch.equal(e.levels, e.levels.sort().values)
        assert e.usage_entropy <= math.log2(e.levels.numel()) + 1e-12
    int4 = errs["int4"]   # int4's codes 7 and 8 are both 0: one level holding both counts
    assert int(int4.level_counts[7]) == int(int4.bin_counts[7] + int4.bin_counts[8])
    fp4 = errs["fp4"]     # FP4's zeros are codes 0 and 8
    zero = int((fp4.levels == 0).nonzero())
    assert int(fp4.level_counts[zero]) == int(fp4.bin_counts[0] + fp4.bin_counts[8])
    p = int4.level_counts.double() / x.numel()
    p = p[p > 0]
    assert int4.usage_entropy == pytest.approx(float(-(p * p.log2()).sum()))


def test_fake_quantize_accepts_a_codebook_tensor():
    from lora_lab.quant.blockwise import e2m1_codebook, get_codebook
    x = _normal(4096, seed=5)
    assert torch.equal(fake_quantize(x, get_codebook("fp4"), 64), fake_quantize(x, "fp4", 64))
    e2m1 = fake_quantize(x, e2m1_codebook(), 64)
    levels = (e2m1.reshape(-1, 64) / x.reshape(-1, 64).abs().amax(1, keepdim=True)).reshape(-1)
    allowed = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6])
    assert torch.isin((levels * 6).abs().round(decimals=4), allowed).all()   # every x̂ is ±E2M1 · absmax
