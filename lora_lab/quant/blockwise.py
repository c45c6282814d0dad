"""4-bit quantization from first principles: codebooks, blockwise absmax, double quantization.

A 4-bit codebook is 16 numbers in [-1, 1]. A tensor is flattened, cut into blocks of
``blocksize`` values, each block is scaled by its absolute maximum (``absmax``) into
[-1, 1], and every value is replaced by the index of its nearest code:

    q_i = argmin_k |x_i / absmax_b - code_k|,        x̂_i = code[q_i] * absmax_b

Two 4-bit indices are packed per byte (first element in the high nibble). The byte
layout and the arithmetic follow bitsandbytes' CPU path exactly, so ``packed`` and
``absmax`` are byte-identical to ``bitsandbytes.functional.quantize_4bit`` for nf4/fp4.
The frozen 4-bit layer built on this lives in :mod:`lora_lab.quant.linear4bit`; error metrics
in :mod:`lora_lab.quant.metrics`.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch
from scipy.stats import norm
from torch import Tensor

from lora_lab.quant.blockwise8 import dequantize_blockwise_8bit, dynamic_map_8bit, quantize_blockwise_8bit

CODEBOOKS = ("nf4", "fp4", "int4")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NF4_OFFSET = 0.9677083  # outermost quantile: QLoRA's choice, 1/2 (1/(2·15) + 1/(2·16)) from 1


def nf4_codebook(offset: float = NF4_OFFSET) -> Tensor:
    """NormalFloat4: 16 quantiles of N(0, 1), normalized to [-1, 1] (QLoRA, Dettmers et al. 2023).

    The positive side takes 9 evenly spaced probabilities from ``offset`` down to 0.5
    (8 values plus the 0.5 → 0 point), the negative side 8 (7 values plus 0.5), so the
    type is asymmetric: 8 positive codes, 7 negative codes and an exact zero. Each value
    is Φ⁻¹(p) (``scipy.stats.norm.ppf``), then all are divided by the largest. Computed in
    the same precision as bitsandbytes (fp32 probabilities, fp64 ppf, fp32 division),
    so the result equals its NF4 table bit for bit.

    Returns:
        Tensor (16,) float32, sorted ascending, from -1.0 to 1.0, ``code[7] == 0``.
    """
    pos = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy())    # 8 quantiles > 0
    neg = -norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())   # 7 quantiles < 0
    values = torch.tensor([*pos.tolist(), 0.0, *neg.tolist()], dtype=torch.float32).sort().values
    return values / values.max()                                    # Φ⁻¹(offset) ↦ 1.0


def fp4_codebook() -> Tensor:
    """bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit) in its bit order.

    Not the OCP/MX E2M1 value set {0, 0.5, 1, 1.5, 2, 3, 4, 6} (see :func:`e2m1_codebook`):
    scaled to [-1, 1] the two agree except for the smallest non-zero level, 0.0625/12 ≈ 0.0052
    here against 0.5/6 ≈ 0.083 in E2M1.

    Index bits are ``s e1 e0 m``. bitsandbytes stores the exponent field reversed: field
    1, 2, 3 means 2³, 2², 2¹, so the magnitude is ``2**(4-e) * (1 + m/2)`` for e ≥ 1 and
    the subnormal ``m * 0.0625`` for e = 0. Magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12}
    are divided by 12; the sign bit (index + 8) negates. Zero appears twice (indices 0 and 8,
    both +0.0 in bitsandbytes' table).

    Returns:
        Tensor (16,) float32 in code (index) order, NOT sorted.
    """
    mags = [(2.0 ** (4 - (b >> 1)) * (1 + (b & 1) / 2)) if b >> 1 else (b & 1) * 0.0625 for b in range(8)]
    values = torch.tensor(mags + [-m if m else 0.0 for m in mags], dtype=torch.float32)  # +0.0 at 8, as bnb
    return values / values.abs().max()


def e2m1_codebook() -> Tensor:
    """OCP/MX FP4 E2M1 magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}, divided by 6, with a sign bit.

    For comparison with bitsandbytes' FP4 (:func:`fp4_codebook`), which shares the sign,
    exponent and mantissa widths but not the values. Index ``s·8 + magnitude index``; zero
    appears twice (+0.0 at 0 and 8, as in :func:`fp4_codebook`). It is not one of
    :data:`CODEBOOKS` (bitsandbytes has no such type); use it with
    :func:`lora_lab.quant.metrics.fake_quantize`.

    Returns:
        Tensor (16,) float32 in index order, NOT sorted.
    """
    mags = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    return torch.tensor(mags + [-m if m else 0.0 for m in mags], dtype=torch.float32) / 6


def nf4_paper_codebook(k: int = 4, offset: float = NF4_OFFSET) -> Tensor:
    """The QLoRA paper's NF4 formula, made finite: averages of adjacent normal quantiles.

    The paper (Dettmers et al. 2023, eq. 4) writes q_i = ½ (Q(i/(2^k+1)) + Q((i+1)/(2^k+1))),
    i = 0 … 2^k − 1, with Q = Φ⁻¹ the N(0, 1) quantile function. Taken literally its first
    point is p = 0, where Q = −∞. Here the 2^k + 1 probabilities are spread evenly over
    [1 − offset, offset] instead (bitsandbytes' offset by default), each adjacent pair of
    quantiles is averaged and the result divided by its largest value. The type is
    symmetric, with no exact zero. bitsandbytes' NF4 (:func:`nf4_codebook`) is built
    differently: no averaging, 8 positive and 7 negative quantiles plus an exact 0.

    Returns:
        Tensor (2^k,) float64, sorted ascending, from -1.0 to 1.0.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 8:
        raise ValueError(f"k must be an integer number of bits in [1, 8], got k={k!r}")
    if not 0.5 < offset < 1:
        raise ValueError(f"offset must be in (0.5, 1), got offset={offset!r}")
    p = torch.linspace(1 - offset, offset, 2 ** k + 1, dtype=torch.float64).numpy()
    z = torch.from_numpy(norm.ppf(p))                               # (2^k + 1,) quantiles
    q = (z[:-1] + z[1:]) / 2                                         # (2^k,) adjacent averages
    return q / q.abs().max()


def int4_codebook() -> Tensor:
    """Linear symmetric int4: k/7 for k = -7..7, as round(7·x/absmax) would give.

    Symmetric absmax int4 has only 15 distinct levels; the 16th code is a second zero
    (as in bitsandbytes' "int4" type), which the sign of tiny values picks.

    Returns:
        Tensor (16,) float32, sorted ascending: -1, -6/7, ..., 0, 0, ..., 6/7, 1.
    """
    k = torch.tensor([*range(-7, 1), *range(0, 8)], dtype=torch.float32)
    return k / 7


def get_codebook(codebook: str) -> Tensor:
    """The 16 code values (index order) for ``codebook`` in {"nf4", "fp4", "int4"}."""
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}, got {codebook!r}")
    return {"nf4": nf4_codebook, "fp4": fp4_codebook, "int4": int4_codebook}[codebook]()


def bin_edges(codebook: str | Tensor) -> Tensor:
    """Decision boundaries: the 15 midpoints between consecutive sorted code values.

    A scaled value v goes to sorted bin i when ``edges[i-1] < v <= edges[i]`` (a tie at an
    edge goes to the lower bin, as ``torch.bucketize`` and bitsandbytes do).
    """
    code = get_codebook(codebook) if isinstance(codebook, str) else codebook
    s = code.sort(stable=True).values
    return (s[:-1] + s[1:]) / 2


def _check_blocksize(blocksize) -> int:
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or not 32 <= blocksize <= 4096 \
            or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two in [32, 4096] (bitsandbytes' range), got {blocksize!r}")
    return blocksize


def bits_per_param(blocksize: int = 64, double_quant: bool = False, *,
                   dq_blocksize: int = 256) -> float:
    """Exact storage, in bits per weight, of blockwise 4-bit quantization.

    Without double quantization each block of ``blocksize`` weights stores one fp32
    absmax: ``4 + 32/blocksize`` (4.5 at 64). With it, each absmax is an 8-bit code
    and each group of ``dq_blocksize`` codes shares one fp32 scale:
    ``4 + 8/blocksize + 32/(blocksize*dq_blocksize)`` (≈4.127 at 64, 256). (The single
    fp32 mean subtracted before the second quantization is O(1/n) and left out.)

    Args:
        blocksize: weights per block, a power of two in [32, 4096].
        double_quant: whether the absmax constants are themselves quantized to 8 bits.
        dq_blocksize: absmax values per second-level block (bitsandbytes uses 256).

    Raises:
        ValueError: if ``blocksize`` is not a power of two in [32, 4096].
    """
    _check_blocksize(blocksize)
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 4 + 32 / blocksize


# --------------------------------------------------------------------------- 4-bit quantization
@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A 4-bit quantized tensor; field names follow bitsandbytes' ``QuantState``.

    Attributes:
        packed: uint8 (ceil(n/2),), two codes per byte, element 2j in the high nibble.
        absmax: one per block: float32 (n_blocks,), or with ``double_quant`` the uint8
            8-bit codes of ``absmax - nested_offset`` (bitsandbytes' ``state.absmax``).
        shape, dtype: of the original tensor (dequantization returns this dtype).
        blocksize: values per block; codebook: "nf4" | "fp4" | "int4"; code: its (16,) values.
        nested_absmax: float32 (ceil(n_blocks/256),) scales of the 8-bit codes, or None.
        nested_offset: float32 scalar, the mean subtracted before double quantization, or None.
        nested_code: the (256,) 8-bit dynamic map, or None.
    """

    packed: Tensor
    absmax: Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    codebook: str
    code: Tensor
    nested_absmax: Tensor | None = None
    nested_offset: Tensor | None = None
    nested_code: Tensor | None = None
    nested_blocksize: int = 256

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: packed codes + absmax (+ nested scales and the offset)."""
        parts = [self.packed, self.absmax, self.nested_absmax, self.nested_offset]
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.numel

    def absmax_float(self) -> Tensor:
        """The float32 per-block absmax used by dequantization (undoing double quantization)."""
        if not self.double_quant:
            return self.absmax
        return dequantize_blockwise_8bit(self.absmax, self.nested_absmax, self.nested_code,
                                         self.nested_blocksize) + self.nested_offset


def _sorted_order(code: Tensor) -> Tensor:
    return torch.argsort(code, stable=True)  # for fp4 this equals bitsandbytes' order, ties included


_GRID = 2048  # cells over [-1, 1] for the fast search; each holds at most one bin edge


@lru_cache(maxsize=8)
def _grid_tables(code: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Per grid cell g (v ∈ [-1 + 2g/K, -1 + 2(g+1)/K]): edges below it, and the one edge inside."""
    edges = bin_edges(torch.tensor(code, dtype=torch.float32)).double()          # (15,)
    lo = -1 + torch.arange(_GRID + 1, dtype=torch.float64) * 2 / _GRID - 1e-6   # margin >> fp32 rounding
    hi = lo + 2 / _GRID + 2e-6
    inside = (edges[None, :] >= lo[:, None]) & (edges[None, :] <= hi[:, None])  # (K+1, 15)
    if inside.sum(dim=1).max() > 1:
        raise ValueError("codebook edges closer than the search grid; use torch.bucketize")
    below = (edges[None, :] < lo[:, None]).sum(dim=1)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    thr = torch.where(inside.any(dim=1), edges[inside.double().argmax(dim=1)], inf)
    return below.to(torch.uint8), thr.float()


def nearest_code_index(scaled: Tensor, code: Tensor) -> Tensor:
    """Index of the nearest code for each scaled value in [-1, 1] (ties at an edge go down).

    The reference is ``order[torch.bucketize(scaled, bin_edges(code))]``, with ``order``
    the stable argsort of ``code`` (identity for nf4/int4). This computes the same result
    faster: ``scaled`` picks one of 2048 grid cells, a table gives the number of edges
    below the cell, and one comparison with the single edge inside the cell finishes it.

    Args:
        scaled: float32 (n,) in [-1, 1]; code: (16,) codebook in index order.

    Returns:
        uint8 (n,) code indices.
    """
    below, thr = _grid_tables(tuple(code.tolist()))
    cell = (scaled + 1).mul_(_GRID / 2).int()                          # fp32, error << margin
    idx = torch.index_select(below, 0, cell)
    idx += scaled > torch.index_select(thr, 0, cell)                   # sorted-bin index
    order = _sorted_order(code)
    if not torch.equal(order, torch.arange(16)):
        idx = torch.index_select(order.to(torch.uint8), 0, idx.int())  # back to code index (fp4)
    return idx


def quantize_4bit(x: Tensor, codebook: str = "nf4", blocksize: int = 64,
                  double_quant: bool = False) -> QuantizedTensor:
    """Blockwise 4-bit quantization of any-shape float tensor (flattened, row-major).

    Full blocks are scaled by ``x * (1/absmax)``, a trailing partial block by
    ``x / absmax`` (bitsandbytes' arithmetic), both clamped to [-1, 1]; each value takes
    the nearest code (``bucketize`` on :func:`bin_edges`, ties to the lower bin; see
    :func:`nearest_code_index`).
    With ``double_quant`` the absmax vector has its mean subtracted and is quantized to
    8 bits in blocks of 256 with :func:`dynamic_map_8bit`.

    Args:
        x: float32/float16/bfloat16 tensor, any shape, at least one element, all finite.
        codebook: "nf4", "fp4" or "int4".
        blocksize: a power of two in [32, 4096].
        double_quant: also quantize the absmax constants (QLoRA's double quantization).

    Returns:
        A :class:`QuantizedTensor` with ceil(n/2) packed bytes and ceil(n/blocksize) scales.

    Raises:
        ValueError: empty tensor, non-float dtype, NaN/inf, bad blocksize or codebook.
    """
    code = get_codebook(codebook)
    _check_blocksize(blocksize)
    if not isinstance(x, Tensor) or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be a float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.numel() == 0:
        raise ValueError(f"x must have at least one element, got shape {tuple(x.shape)}")
    flat = x.detach().reshape(-1).float()                               # (n,)
    if not torch.isfinite(flat).all():
        raise ValueError("x must be finite: it contains NaN or inf (absmax scaling would poison its block)")
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = flat[:full].view(-1, blocksize)                            # (n // blocksize, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)
    if rem:
        tail_absmax = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_absmax[None]])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_absmax, -1, 1)])
    if n % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))               # pad to whole bytes
    q = nearest_code_index(scaled, code)                                # (n_even,) uint8
    packed = (q[0::2] << 4) | q[1::2]                                   # high nibble first
    fields = dict(packed=packed, absmax=absmax, shape=torch.Size(x.shape), dtype=x.dtype,
                  blocksize=blocksize, codebook=codebook, code=code)
    if double_quant:
        offset = absmax.mean()
        dyn = dynamic_map_8bit()
        codes, scales = quantize_blockwise_8bit(absmax - offset, dyn, 256)
        fields.update(absmax=codes, nested_absmax=scales, nested_offset=offset, nested_code=dyn)
    return QuantizedTensor(**fields)


def unpack_codes(q: QuantizedTensor) -> Tensor:
    """The 4-bit indices, int64 (n,), element order (high nibble first).

    Raises:
        ValueError: if the fields of ``q`` do not fit together (:func:`check_quantized`).
    """
    check_quantized(q)
    packed = q.packed.reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return codes[: q.numel].long()


@lru_cache(maxsize=8)
def _word_table(code: tuple[float, ...]) -> Tensor:
    """(65536,) complex128 used as 16 raw bytes: the 4 fp32 codes packed in a 2-byte word.

    Word w (little-endian) holds byte b0 = w & 255 then b1 = w >> 8, i.e. the codes
    (b0 >> 4, b0 & 15, b1 >> 4, b1 & 15) in element order.
    """
    c = torch.tensor(code, dtype=torch.float32)
    b = torch.arange(256)
    pairs = torch.stack([c[b >> 4], c[b & 15]], dim=1)                  # (256, 2)
    w = torch.arange(65536)
    quads = torch.cat([pairs[w & 255], pairs[w >> 8]], dim=1)           # (65536, 4)
    return quads.contiguous().view(torch.complex128).reshape(65536)


def _decode_blocks(words: Tensor, table: Tensor, absmax: Tensor, blocksize: int, out: Tensor) -> None:
    """out (fp32, 4·len(words)) = table[words] · absmax per block, for whole blocks only."""
    torch.index_select(table, 0, words.int(), out=out.view(torch.complex128))  # 4 codes per word
    out.view(-1, blocksize).mul_(absmax[:, None])                         # x̂ = code · absmax


def _size_error(field: str, expected: int, got: int, why: str) -> ValueError:
    return ValueError(f"{field} has {got} elements, expected {expected} ({why}); the QuantizedTensor's "
                      "fields do not belong together")


def check_quantized(q: "QuantizedTensor") -> None:
    """Check that the fields of ``q`` fit together before decoding it.

    Checked: ``shape`` (non-negative ints, at least one element), ``dtype`` (float32/16,
    bfloat16), ``blocksize`` (power of two in [32, 4096]), ``codebook`` and ``code`` (16
    finite floats), ``packed`` (uint8, ceil(n/2) bytes), ``absmax`` (ceil(n/blocksize)
    values: finite floats, or uint8 codes with double quantization) and, with double
    quantization, ``nested_absmax`` (ceil(n_blocks/nested_blocksize) floats),
    ``nested_offset`` (one float) and ``nested_code`` (256 floats).

    Raises:
        ValueError: naming the first field at fault, with the expected and actual sizes.
    """
    if not isinstance(q, QuantizedTensor):
        raise ValueError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    try:
        shape = torch.Size(q.shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a tuple of non-negative ints, got shape={q.shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must have non-negative sizes, got shape={tuple(shape)}")
    if shape.numel() == 0:
        raise ValueError(f"shape must describe at least one element, got shape={tuple(shape)}")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got dtype={q.dtype!r}")
    _check_blocksize(q.blocksize)
    if q.codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}, got codebook={q.codebook!r}")
    for field in ("packed", "absmax", "code"):
        if not isinstance(getattr(q, field), Tensor):
            raise ValueError(f"{field} must be a torch.Tensor, got {type(getattr(q, field)).__name__}")
    if not q.code.dtype.is_floating_point or q.code.numel() != 16 or not torch.isfinite(q.code).all():
        raise ValueError(f"code must hold 16 finite float values (the codebook), got {q.code.numel()} "
                         f"values of dtype {q.code.dtype}")
    n = shape.numel()
    if q.packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8 (two 4-bit codes per byte), got dtype {q.packed.dtype}")
    if q.packed.numel() != (n + 1) // 2:
        raise _size_error("packed", (n + 1) // 2, q.packed.numel(), f"ceil(n/2) bytes for shape {tuple(shape)}, n={n}")
    nblocks = -(-n // q.blocksize)
    if q.absmax.numel() != nblocks:
        raise _size_error("absmax", nblocks, q.absmax.numel(),
                          f"one per block: ceil({n}/{q.blocksize}) for shape {tuple(shape)}, blocksize={q.blocksize}")
    nested = [q.nested_absmax, q.nested_offset, q.nested_code]
    if q.nested_absmax is None:
        if any(t is not None for t in nested):
            raise ValueError("nested_offset/nested_code are set but nested_absmax is None: double quantization "
                             "needs all three")
        if not q.absmax.dtype.is_floating_point or not torch.isfinite(q.absmax).all():
            raise ValueError(f"absmax must hold finite float scales (no double quantization), got dtype "
                             f"{q.absmax.dtype}" + ("" if not q.absmax.dtype.is_floating_point else " with NaN/inf"))
        return
    for field, t in zip(("nested_absmax", "nested_offset", "nested_code"), nested):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point or not torch.isfinite(t).all():
            raise ValueError(f"{field} must be a finite float tensor with double quantization, got "
                             f"{type(t).__name__ if not isinstance(t, Tensor) else t.dtype}")
    if q.absmax.dtype != torch.uint8:
        raise ValueError(f"absmax must be uint8 8-bit codes with double quantization, got dtype {q.absmax.dtype}")
    nb = q.nested_blocksize
    if isinstance(nb, bool) or not isinstance(nb, int) or nb < 1:
        raise ValueError(f"nested_blocksize must be a positive int, got nested_blocksize={nb!r}")
    if q.nested_absmax.numel() != -(-nblocks // nb):
        raise _size_error("nested_absmax", -(-nblocks // nb), q.nested_absmax.numel(),
                          f"one per {nb} absmax codes: ceil({nblocks}/{nb})")
    if q.nested_offset.numel() != 1:
        raise _size_error("nested_offset", 1, q.nested_offset.numel(), "one scalar mean")
    if q.nested_code.numel() != 256:
        raise _size_error("nested_code", 256, q.nested_code.numel(), "the 8-bit dynamic map")


def dequantize_4bit(q: QuantizedTensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """x̂ = code[q] · absmax_block in float32, then cast to ``dtype`` (default: the original).

    Two packed bytes (four codes) are decoded at once through a 65536-entry table, so the
    work is one gather per four values and one multiply per block. Large tensors are split
    into ranges of whole blocks decoded on torch's intra-op thread count (the gather is
    single-threaded in torch).

    Returns:
        Tensor of ``q.shape``.

    Raises:
        ValueError: if a field of ``q`` is inconsistent (see :func:`check_quantized`) or
            ``dtype`` is not a float dtype.
    """
    check_quantized(q)
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be None or one of {FLOAT_DTYPES}, got dtype={dtype!r}")
    if q.packed.dim() != 1:  # bitsandbytes keeps its codes as (n/2, 1)
        q = dataclasses.replace(q, packed=q.packed.reshape(-1))
    n, bs = q.numel, q.blocksize
    absmax = q.absmax_float().reshape(-1)
    nblocks = absmax.numel()
    if sys.byteorder != "little":  # pragma: no cover - the word table assumes little-endian bytes
        values = torch.nn.functional.pad(q.code[unpack_codes(q)], (0, nblocks * bs - n))
        return (values.view(nblocks, bs) * absmax[:, None]).view(-1)[:n].to(dtype or q.dtype).reshape(q.shape)
    table = _word_table(tuple(q.code.tolist()))
    if n == nblocks * bs:                                               # whole blocks: no padding
        words = q.packed.view(torch.uint16)                            # (n/4,), n is a multiple of 32
        out = torch.empty(n, dtype=torch.float32)
        k = min(torch.get_num_threads(), nblocks) if n >= 1 << 20 else 1
        if k > 1:
            bounds = [nblocks * i // k for i in range(k + 1)]
            jobs = [(words[a * bs // 4: b * bs // 4], absmax[a:b], out[a * bs: b * bs])
                    for a, b in zip(bounds[:-1], bounds[1:])]
            with ThreadPoolExecutor(k) as pool:
                list(pool.map(lambda j: _decode_blocks(j[0], table, j[1], bs, j[2]), jobs))
        else:
            _decode_blocks(words, table, absmax, bs, out)
    else:                                                               # odd length / partial block
        packed = q.packed if q.packed.numel() % 2 == 0 else torch.cat([q.packed, q.packed.new_zeros(1)])
        values = torch.index_select(table, 0, packed.view(torch.uint16).int()).view(torch.float32)
        values = torch.nn.functional.pad(values[:n], (0, nblocks * bs - n))
        out = values.view(nblocks, bs).mul_(absmax[:, None]).view(-1)[:n]
    return out.to(dtype or q.dtype).reshape(q.shape)
