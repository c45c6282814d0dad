"""The three fine-tuning recipes the course compares, set up the same way.

    qlora  frozen base with its block linears in 4 bits (NF4 + double quantization),
           LoRA adapters in fp32 on top (Dettmers et al., 2023)
    lora   frozen base in full precision, LoRA adapters (Hu et al., 2021)
    full   every weight trains

:func:`prepare_model` loads the weights and sets them up with chapter 04's
:func:`lora_lab.memory.measure.apply_recipe`; :func:`memory_report` predicts and measures one
training step with chapter 04's :func:`lora_lab.memory.measure.predict_and_measure` (then puts
the weights back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_lab.finetune.models import load_model
from lora_lab.lora.layer import LoraConfig
from lora_lab.memory.measure import apply_recipe, predict_and_measure
from lora_lab.memory.predict import RECIPES


def prepare_model(name_or_path: str = "data/lab-gpt2", recipe: str = "qlora", *,
                  lora_config: LoraConfig | None = None, quantization: str = "nf4",
                  double_quant: bool = True, backend: str = "bitsandbytes", device: str | None = None,
                  compute_dtype: torch.dtype | None = None, seed: int = 0):
    """Load ``name_or_path`` and make it ready to train with ``recipe``.

    Args:
        recipe: "qlora", "lora" or "full".
        lora_config: adapters for "qlora"/"lora" (default: r=8, alpha=16, all-linear).
        quantization, double_quant, backend: the 4-bit base of "qlora" (see :func:`load_model`).
        seed: seeds the adapters' A initialization (B starts at zero).

    Returns:
        The model; for "full" every parameter requires grad.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    quant = quantization if recipe == "qlora" else None
    if recipe == "qlora" and quantization not in ("nf4", "fp4"):
        raise ValueError(f"qlora needs quantization 'nf4' or 'fp4', got {quantization!r}")
    model = load_model(name_or_path, quant, double_quant, backend, compute_dtype=compute_dtype, device=device)
    return apply_recipe(model, recipe, lora_config, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class MemoryReport:
    """Predicted and measured training memory (bytes per component) for one recipe."""

    predicted: dict[str, int]
    measured: dict[str, int]
    batch_size: int
    seq_len: int
    cuda_max_allocated: int | None = None

    @property
    def predicted_total(self) -> int:
        return sum(self.predicted.values())

    @property
    def measured_total(self) -> int:
        return sum(self.measured.values())


def memory_report(model, recipe: str, *, batch_size: int, seq_len: int,
                  lora_config: LoraConfig | None = None, double_quant: bool = True,
                  gradient_checkpointing: bool = False, seed: int = 0) -> MemoryReport:
    """Predict, then measure, the memory of one training step of ``model`` (as prepared by
    :func:`prepare_model`) on a (batch_size, seq_len) batch of random tokens.

    The measured step runs a throwaway AdamW; the trainable weights are restored after it,
    so the model is exactly as before.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    predicted, measured = predict_and_measure(
        model, recipe, torch.optim.AdamW(params, lr=1e-3), batch_size=batch_size, seq_len=seq_len, seed=seed,
        lora_config=lora_config, double_quant=double_quant, gradient_checkpointing=gradient_checkpointing)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
            p.grad = None
    return MemoryReport(dict(predicted.components), dict(measured.components), batch_size, seq_len,
                        measured.cuda_max_allocated)
