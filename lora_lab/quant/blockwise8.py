"""8-bit blockwise quantization with bitsandbytes' "dynamic" map: QLoRA's double quantization.

Double quantization stores each 4-bit block's fp32 absmax as an 8-bit code: the absmax
vector has its mean subtracted, then is quantized blockwise (256 values per block, one
fp32 scale each) onto a 256-value map that is dense near zero. This module reproduces
bitsandbytes' CPU arithmetic exactly, so the codes and scales are byte-identical.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def dynamic_map_8bit() -> Tensor:
    """bitsandbytes' signed 8-bit "dynamic" map (Dettmers 2015), used for double quantization.

    For i = 0..6 it places 2**i values at 10**(i-6) × the midpoints of a linspace(0.1, 1)
    (both signs), plus 0 and 1.0: 256 sorted values in [-0.993, 1.0], dense near zero.
    """
    data: list[float] = []
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        data += ((10 ** (i - 6)) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(data + [0.0, 1.0]), dtype=torch.float32)


@lru_cache(maxsize=4)
def _lut_8bit(code: tuple[float, ...]) -> Tensor:
    """bitsandbytes' CPU lookup table: 65536 points of [-1, 1] -> index of the nearest code."""
    c = torch.tensor(code, dtype=torch.float32)
    mids = (c[:-1] + c[1:]) / 2
    grid = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32)) / 65535   # fp32, as in C
    return torch.searchsorted(mids, grid)                               # number of midpoints < v


def quantize_blockwise_8bit(x: Tensor, code: Tensor, blocksize: int = 256) -> tuple[Tensor, Tensor]:
    """Blockwise 8-bit quantization of a 1-D fp32 tensor, as bitsandbytes' CPU kernel does it.

    Returns (uint8 codes (n,), float32 absmax (ceil(n/blocksize),)).

    Per block: ``v = x * (1/absmax)``; v is rounded onto a 65536-point grid of [-1, 1]
    (``trunc(fma((v+1)/2, 65535, 0.5))``) and the grid point's nearest code is looked up
    in a precomputed table. An all-zero block stores code 0 and absmax 0.
    """
    n = x.numel()
    nblocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(x, (0, nblocks * blocksize - n)).view(nblocks, blocksize)
    absmax = padded.abs().amax(dim=1)                                   # (nblocks,)
    v = torch.clamp(padded * (1.0 / absmax)[:, None], -1, 1)
    half = (v + 1) * 0.5                                                # fp32, as in C
    grid = ((half.double() * 65535 + 0.5).float()).long()               # one rounding, like fma
    q = _lut_8bit(tuple(code.tolist()))[grid.clamp(0, 65535)]
    q = torch.where((absmax == 0)[:, None], 0, q)
    return q.reshape(-1)[:n].to(torch.uint8), absmax


def dequantize_blockwise_8bit(codes: Tensor, absmax: Tensor, code: Tensor, blocksize: int = 256) -> Tensor:
    """x̂ = code[q] · absmax_block, float32 (n,) — bitsandbytes' ``dequantize_blockwise``."""
    n = codes.numel()
    scales = absmax.repeat_interleave(blocksize)[:n]                    # (n,)
    return code[codes.long()] * scales
