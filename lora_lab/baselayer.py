"""What LoRA needs from the layer it wraps: its sizes and its weight as an (out, in) matrix.

Four kinds of base layer are handled, each of which stores its weight differently:

    nn.Linear                 weight (out, in)
    transformers Conv1D       weight (in, out)  -- GPT-2; PEFT calls this fan_in_fan_out
    bitsandbytes Linear4bit   packed 4-bit codes + quant_state (absmax, codebook)
    lora_lab 4-bit layer      anything with in_features, out_features,
                              dequantize_weight() -> (out, in) and requantize_(weight)
"""

from __future__ import annotations

import torch
from torch import nn


def _is_conv1d(layer: nn.Module) -> bool:
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf")


def _is_bnb_4bit(layer: nn.Module) -> bool:
    return type(getattr(layer, "weight", None)).__name__ == "Params4bit"


def _is_lora_lab_4bit(layer: nn.Module) -> bool:
    return all(hasattr(layer, a) for a in ("in_features", "out_features", "dequantize_weight",
                                           "requantize_"))


def is_wrappable(layer: nn.Module) -> bool:
    """True for the linear layers LoRA can wrap (see module docstring)."""
    return (isinstance(layer, nn.Linear) or _is_conv1d(layer) or _is_bnb_4bit(layer)
            or _is_lora_lab_4bit(layer))


def layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a wrappable layer."""
    if _is_conv1d(layer):
        d_in, d_out = layer.weight.shape  # Conv1D stores (in, out)
        return int(d_in), int(d_out)
    return int(layer.in_features), int(layer.out_features)


def get_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight as an (out, in) tensor (a dequantized copy for 4-bit layers)."""
    if _is_lora_lab_4bit(layer):
        return layer.dequantize_weight()
    if _is_bnb_4bit(layer):
        import bitsandbytes.functional as bnbF
        w = layer.weight
        return bnbF.dequantize_4bit(w.data, w.quant_state)  # (out, in)
    if _is_conv1d(layer):
        return layer.weight.data.T  # (in, out) -> (out, in)
    return layer.weight.data


@torch.no_grad()
def set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store an (out, in) weight back, re-quantizing for 4-bit layers."""
    if _is_lora_lab_4bit(layer):
        layer.requantize_(weight)
    elif _is_bnb_4bit(layer):
        import bitsandbytes as bnb
        old = layer.weight
        qs = old.quant_state
        new = bnb.nn.Params4bit(weight.to("cpu").contiguous(), requires_grad=False,
                                blocksize=qs.blocksize, compress_statistics=qs.nested,
                                quant_type=qs.quant_type, quant_storage=old.quant_storage)
        layer.weight = new.to(old.device)  # .to() quantizes
    elif _is_conv1d(layer):
        layer.weight.data.copy_(weight.T)
    else:
        layer.weight.data.copy_(weight)
