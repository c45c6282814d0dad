"""How good is a 4-bit codebook on a given tensor: error, bin usage, and what outliers do.

    mse = mean((x - x̂)²),   max_abs_error = max |x - x̂|
    usage entropy H = -Σ_k p_k log2 p_k over the codebook's *distinct levels*
    (4 bits = 16 distinct levels used equally; int4 and FP4 have 15, two codes meaning 0,
    so at most log2 15 ≈ 3.907 bits)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lora_lab.quant.blockwise import (
    CODEBOOKS,
    bin_edges,
    bits_per_param,
    dequantize_4bit,
    get_codebook,
    quantize_4bit,
    unpack_codes,
)


@dataclass(frozen=True)
class QuantError:
    """Error of one codebook on one tensor (see module docstring for the formulas)."""

    codebook: str
    blocksize: int
    mse: float
    max_abs_error: float
    bin_counts: Tensor          # (16,) int64: how many values took each code (index order)
    bits_per_param: float

    @property
    def rmse(self) -> float:
        return self.mse ** 0.5

    @property
    def levels(self) -> Tensor:
        """The codebook's distinct values, sorted ascending ((15,) for int4 and fp4, (16,) for nf4)."""
        return get_codebook(self.codebook).unique(sorted=True)

    @property
    def level_counts(self) -> Tensor:
        """How many values were reconstructed as each distinct level (order of :attr:`levels`).

        Codes with the same value (int4's and FP4's two zeros) are one level: they give the
        same reconstruction, so they are counted together.
        """
        code = get_codebook(self.codebook)
        which = torch.searchsorted(self.levels, code)                 # code index -> level index
        return torch.zeros(self.levels.numel(), dtype=torch.int64).index_add_(0, which, self.bin_counts)

    @property
    def usage_entropy(self) -> float:
        """Entropy of the level histogram in bits: at most log2(number of distinct levels),
        4.0 for NF4, log2 15 ≈ 3.907 for int4 and FP4 (their duplicate zero is one level)."""
        p = self.level_counts.double() / self.level_counts.sum()
        p = p[p > 0]
        return float(-(p * p.log2()).sum())


def quantization_error(x: Tensor, codebook: str = "nf4", blocksize: int = 64,
                       double_quant: bool = False) -> QuantError:
    """Quantize → dequantize ``x`` (any shape, float) and measure the damage.

    Raises:
        ValueError: as :func:`lora_lab.quant.blockwise.quantize_4bit`.
    """
    q = quantize_4bit(x, codebook, blocksize, double_quant)
    err = (dequantize_4bit(q, dtype=torch.float32) - x.detach().float()).reshape(-1)
    return QuantError(codebook=codebook, blocksize=blocksize, mse=float((err ** 2).mean()),
                      max_abs_error=float(err.abs().max()),
                      bin_counts=torch.bincount(unpack_codes(q), minlength=16),
                      bits_per_param=q.bits_per_param)


def compare_codebooks(x: Tensor, codebooks=CODEBOOKS, blocksize: int = 64) -> list[QuantError]:
    """:func:`quantization_error` of each codebook on the same tensor."""
    return [quantization_error(x, c, blocksize) for c in codebooks]


def scaled_blocks(x: Tensor, blocksize: int | None = 64) -> Tensor:
    """x / absmax of its block, float32 (n,) in [-1, 1]: what the codebook actually sees.

    ``blocksize=None`` scales by the whole tensor's absmax (one block).
    """
    flat = x.detach().reshape(-1).float()
    bs = flat.numel() if blocksize is None else blocksize
    nblocks = -(-flat.numel() // bs)
    padded = torch.nn.functional.pad(flat, (0, nblocks * bs - flat.numel())).view(nblocks, bs)
    absmax = padded.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)
    return (padded / absmax).reshape(-1)[: flat.numel()]


def fake_quantize(x: Tensor, codebook: str | Tensor = "nf4", blocksize: int | None = 64) -> Tensor:
    """Reference absmax quantize→dequantize for any block size, incl. ``None`` (whole tensor).

    The same math as :func:`quantize_4bit` (nearest code by :func:`bin_edges`), without
    packing, so that block sizes outside bitsandbytes' [32, 4096] can be explored.
    ``codebook`` is a name from ``CODEBOOKS`` or any tensor of code values in [-1, 1]
    (e.g. :func:`lora_lab.quant.blockwise.e2m1_codebook`).

    Returns:
        float32 tensor of ``x.shape``.
    """
    code = codebook.detach().float().reshape(-1) if isinstance(codebook, Tensor) else get_codebook(codebook)
    flat = x.detach().reshape(-1).float()
    bs = flat.numel() if blocksize is None else int(blocksize)
    if bs < 1:
        raise ValueError(f"blocksize must be >= 1 or None, got {blocksize!r}")
    nblocks = -(-flat.numel() // bs)
    padded = torch.nn.functional.pad(flat, (0, nblocks * bs - flat.numel())).view(nblocks, bs)
    absmax = padded.abs().amax(dim=1, keepdim=True)
    scaled = padded / absmax.clamp(min=1e-38)
    sorted_code = code.sort(stable=True).values
    xhat = sorted_code[torch.bucketize(scaled, bin_edges(code))] * absmax   # x̂ = code · absmax
    return xhat.reshape(-1)[: flat.numel()].reshape(x.shape)


@dataclass(frozen=True)
class OutlierDamage:
    """What one outlier does to a tensor's 4-bit error (see :func:`outlier_damage`)."""

    blocksize: int | None
    outlier: float                  # the outlier, in multiples of the weights' std
    mse_clean: float                # MSE of the ordinary weights, no outlier present
    mse_with_outlier: float         # MSE of the same ordinary weights, outlier present
    zeroed_fraction: float          # fraction of ordinary weights rounded to exactly 0
    bits_per_param: float

    @property
    def damage(self) -> float:
        return self.mse_with_outlier / self.mse_clean


def outlier_damage(x: Tensor, outlier: float, blocksize: int | None = 64, codebook: str = "nf4",
                   position: int = 0) -> OutlierDamage:
    """Put one weight of size ``outlier``·std(x) at ``position`` and measure the others' error.

    With one scale per tensor (``blocksize=None``) the outlier sets every weight's scale;
    with blocks only its own block suffers. Storage: 4 bits + one fp32 absmax per block.
    """
    flat = x.detach().reshape(-1).float()
    if not 0 <= position < flat.numel():
        raise ValueError(f"position must be in [0, {flat.numel()}), got {position}")
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[position] = False
    dirty = flat.clone()
    dirty[position] = outlier * flat.std()
    err_clean = (fake_quantize(flat, codebook, blocksize) - flat)[mask]
    deq = fake_quantize(dirty, codebook, blocksize)
    err_dirty = (deq - dirty)[mask]
    bs = flat.numel() if blocksize is None else blocksize
    if blocksize is not None and 32 <= bs <= 4096:
        bits = bits_per_param(bs)
    else:
        bits = 4 + 32 * (-(-flat.numel() // bs)) / flat.numel()
    return OutlierDamage(blocksize, float(outlier), float((err_clean ** 2).mean()),
                         float((err_dirty ** 2).mean()), float((deq[mask] == 0).double().mean()), bits)
