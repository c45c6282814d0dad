"""A frozen 4-bit linear layer from scratch: QLoRA's storage for the base weight W.

It keeps W only as packed 4-bit codes plus absmax scales (a :class:`QuantizedTensor`
in buffers) and dequantizes on the fly in every forward:

    y = x @ dequantize(W_q).T + b        # W_q: ceil(out·in/2) bytes, no fp copy kept

Nothing in it is trainable; gradients flow through it to the input (and so to a LoRA
adapter wrapped around it, see :class:`lora_lab.lora.layer.LoRALinear`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from lora_lab._util import is_bnb_4bit, is_conv1d
from lora_lab.lora.baselayer import select_modules
from lora_lab.quant.blockwise import QuantizedTensor, _check_blocksize, dequantize_4bit, get_codebook, quantize_4bit

_BUFFERS = ("packed", "absmax", "nested_absmax", "nested_offset", "nested_code")


class FrozenLinear4bit(nn.Module):
    """Linear layer whose weight is stored blockwise-quantized to 4 bits (like bnb's Linear4bit).

    Args:
        weight: (out_features, in_features) float tensor to quantize (not kept).
        bias: (out_features,) or None; kept in ``compute_dtype``, frozen.
        codebook, blocksize, double_quant: as :func:`lora_lab.quant.blockwise.quantize_4bit`.
        compute_dtype: dtype of the dequantized weight and of the matmul (default: weight's).

    Forward: x (..., in_features) -> (..., out_features), returned in x's dtype.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, codebook: str = "nf4",
                 blocksize: int = 64, double_quant: bool = False,
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.codebook, self.blocksize, self.double_quant = codebook, blocksize, double_quant
        self.compute_dtype = compute_dtype or weight.dtype
        self.bias = None if bias is None else nn.Parameter(
            bias.detach().to(self.compute_dtype).clone(), requires_grad=False)
        self.requantize_(weight)

    @classmethod
    def from_linear(cls, layer: nn.Module, **kwargs) -> "FrozenLinear4bit":
        """Build from ``nn.Linear`` (weight (out, in)) or GPT-2's ``Conv1D`` (weight (in, out))."""
        if isinstance(layer, nn.Linear):
            weight = layer.weight
        elif is_conv1d(layer):
            weight = layer.weight.T                                       # (in, out) -> (out, in)
        else:
            raise ValueError(f"layer must be nn.Linear or transformers Conv1D, got {type(layer).__name__}")
        kwargs.setdefault("compute_dtype", weight.dtype)
        return cls(weight.detach(), layer.bias, **kwargs)

    @torch.no_grad()
    def requantize_(self, weight: Tensor) -> None:
        """Replace the stored codes by those of a new (out, in) weight (used by LoRA merge)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must have shape {(self.out_features, self.in_features)}, "
                             f"got {tuple(weight.shape)}")
        q = quantize_4bit(weight.detach().to(self.compute_dtype), self.codebook, self.blocksize,
                          self.double_quant)
        device = self.packed.device if hasattr(self, "packed") else weight.device
        for name in _BUFFERS:
            value = getattr(q, name)
            self.register_buffer(name, None if value is None else value.to(device))
        self.register_buffer("code", q.code.to(self.packed.device))

    def quantized_weight(self) -> QuantizedTensor:
        """The stored weight as a :class:`QuantizedTensor` (views of the buffers)."""
        return QuantizedTensor(packed=self.packed, absmax=self.absmax,
                               shape=torch.Size((self.out_features, self.in_features)),
                               dtype=self.compute_dtype, blocksize=self.blocksize,
                               codebook=self.codebook, code=self.code,
                               nested_absmax=self.nested_absmax, nested_offset=self.nested_offset,
                               nested_code=self.nested_code)

    def dequantize_weight(self) -> Tensor:
        """W ≈ code[q] · absmax, (out_features, in_features) in ``compute_dtype``."""
        return dequantize_4bit(self.quantized_weight())

    @property
    def weight_nbytes(self) -> int:
        """Bytes that hold W: packed codes + scales (bias not included)."""
        return self.quantized_weight().nbytes

    def forward(self, x: Tensor) -> Tensor:
        w = self.dequantize_weight()                                      # (out, in), temporary
        y = nn.functional.linear(x.to(self.compute_dtype), w, self.bias)  # (..., out)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        dq = ", double_quant=True" if self.double_quant else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"codebook={self.codebook!r}, blocksize={self.blocksize}{dq}, "
                f"compute_dtype={self.compute_dtype}, bias={self.bias is not None}")


BACKENDS = ("bitsandbytes", "lora_lab")


def bnb_linear4bit(layer: nn.Module, *, codebook: str = "nf4", blocksize: int = 64, double_quant: bool = False,
                   compute_dtype: torch.dtype | None = None) -> nn.Module:
    """bitsandbytes' ``Linear4bit`` holding ``layer``'s weight (nn.Linear or GPT-2 Conv1D), as
    transformers' ``BitsAndBytesConfig(load_in_4bit=True)`` builds it; the bias stays unquantized."""
    import bitsandbytes as bnb  # here: only this backend needs it, and importing it probes for CUDA

    weight = layer.weight.detach().float()
    weight = weight.T.contiguous() if is_conv1d(layer) else weight  # Conv1D stores (in, out)
    compute_dtype = compute_dtype or layer.weight.dtype
    out_f, in_f = weight.shape
    new = bnb.nn.Linear4bit(in_f, out_f, bias=layer.bias is not None, compute_dtype=compute_dtype,
                            compress_statistics=double_quant, quant_type=codebook)
    new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=double_quant,
                                   quant_type=codebook, blocksize=blocksize)
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach().to(compute_dtype), requires_grad=False)
    return new.to(layer.weight.device)  # bitsandbytes quantizes on this move


def quantize_model(model: nn.Module, target_modules: Iterable[str] | str = "all-linear",
                   backend: str = "lora_lab", **kwargs) -> nn.Module:
    """Replace Linear/Conv1D submodules by 4-bit layers in place (QLoRA step 1): this
    chapter's :class:`FrozenLinear4bit` (``backend="lora_lab"``) or bitsandbytes'
    ``Linear4bit`` (``backend="bitsandbytes"``, codebook "nf4" or "fp4").

    Args:
        target_modules: which layers, by PEFT's rule (the same as :func:`lora_lab.lora.layer.add_lora`):
            ``"all-linear"`` (every Linear/Conv1D except a transformers model's output head,
            GPT-2's ``lm_head``), a list of names/suffixes such as ``["c_attn", "c_fc"]``, or a
            string, which is a regex that must match the whole module name.
        backend: "lora_lab" or "bitsandbytes".
        **kwargs: codebook, blocksize, double_quant, compute_dtype.

    Returns:
        ``model``, with every parameter outside the replaced layers left as it was.

    Raises:
        ValueError: a bad ``target_modules`` (an entry that matches nothing, a match that is
            not a Linear/Conv1D) or option; the model is unchanged then.
    """
    unknown = set(kwargs) - {"codebook", "blocksize", "double_quant", "compute_dtype"}
    if unknown:
        raise ValueError(f"quantize_model got unknown options {sorted(unknown)}; allowed: codebook, "
                         "blocksize, double_quant, compute_dtype")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    get_codebook(kwargs.get("codebook", "nf4"))  # validate early
    if backend == "bitsandbytes" and kwargs.get("codebook", "nf4") not in ("nf4", "fp4"):
        raise ValueError(f"codebook must be 'nf4' or 'fp4' with backend='bitsandbytes', got {kwargs['codebook']!r}")
    _check_blocksize(kwargs.get("blocksize", 64))
    if not isinstance(kwargs.get("double_quant", False), bool):
        raise ValueError(f"double_quant must be True or False, got {kwargs['double_quant']!r}")
    dtype = kwargs.get("compute_dtype")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"compute_dtype must be None, torch.float32, torch.float16 or torch.bfloat16, "
                         f"got {dtype!r}")
    names = select_modules(model, target_modules,
                           lambda m: (isinstance(m, nn.Linear) or is_conv1d(m)) and not is_bnb_4bit(m),
                           what="Linear/Conv1D layers", action="quantize_model cannot quantize")
    new = {}
    for name in names:  # build every replacement first: an error leaves the model unchanged
        build = FrozenLinear4bit.from_linear if backend == "lora_lab" else bnb_linear4bit
        new[name] = build(model.get_submodule(name), **kwargs)
    for name, layer in new.items():
        model.set_submodule(name, layer)
    return model
