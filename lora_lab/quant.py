"""4-bit quantization from first principles: codebooks, blockwise absmax, double quantization.

(Skeleton: the quantization chapter fills this module in.)
"""

from __future__ import annotations


def bits_per_param(blocksize: int = 64, double_quant: bool = False, *,
                   dq_blocksize: int = 256) -> float:
    """Exact storage, in bits per weight, of blockwise 4-bit quantization.

    Without double quantization each block of ``blocksize`` weights stores one fp32
    absmax: ``4 + 32/blocksize`` (4.5 at 64). With it, each absmax is an 8-bit code
    and each group of ``dq_blocksize`` codes shares one fp32 scale:
    ``4 + 8/blocksize + 32/(blocksize*dq_blocksize)`` (≈4.127 at 64, 256).

    Args:
        blocksize: weights per block, a power of two in [32, 4096].
        double_quant: whether the absmax constants are themselves quantized to 8 bits.
        dq_blocksize: absmax values per second-level block (bitsandbytes uses 256).

    Raises:
        ValueError: if ``blocksize`` is not a power of two in [32, 4096].
    """
    if not isinstance(blocksize, int) or blocksize < 32 or blocksize > 4096 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two in [32, 4096] (bitsandbytes' range), got {blocksize!r}")
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 4 + 32 / blocksize
