"""The three fine-tuning recipes the course compares, set up the same way.

    qlora  frozen base with its block linears in 4 bits (NF4 + double quantization),
           LoRA adapters in fp32 on top (Dettmers et al., 2023)
    lora   frozen base in full precision, LoRA adapters (Hu et al., 2021)
    full   every weight trains

:func:`prepare_model` builds one; :func:`memory_report` predicts its training memory with
:func:`lora_lab.memory.predict.training_memory` and measures one real step with
:func:`lora_lab.memory.measure.measure_training_step` (then puts the weights back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_lab.finetune.models import load_model
from lora_lab.lora.layer import LoraConfig, add_lora
from lora_lab.memory.measure import measure_training_step
from lora_lab.memory.predict import training_memory
from lora_lab.memory.shapes import shape_from_config

METHODS = ("qlora", "lora", "full")


def prepare_model(name_or_path: str = "data/lab-gpt2", method: str = "qlora", *,
                  lora_config: LoraConfig | None = None, quantization: str = "nf4",
                  double_quant: bool = True, backend: str = "bitsandbytes", device: str | None = None,
                  compute_dtype: torch.dtype | None = None, seed: int = 0):
    """Load ``name_or_path`` and make it ready to train with ``method``.

    Args:
        method: "qlora", "lora" or "full".
        lora_config: adapters for "qlora"/"lora" (default: r=8, alpha=16, all-linear).
        quantization, double_quant, backend: the 4-bit base of "qlora" (see :func:`load_model`).
        seed: seeds the adapters' A initialization (B starts at zero).

    Returns:
        The model; for "full" every parameter requires grad.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    quant = quantization if method == "qlora" else None
    if method == "qlora" and quantization not in ("nf4", "fp4"):
        raise ValueError(f"qlora needs quantization 'nf4' or 'fp4', got {quantization!r}")
    model = load_model(name_or_path, quant, double_quant, backend, compute_dtype=compute_dtype, device=device)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    config = lora_config or LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    add_lora(model, config, generator=torch.Generator().manual_seed(seed))
    for p in model.parameters():  # adapters train in fp32 even on a 16-bit base (as PEFT does)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


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


def memory_report(model, method: str, *, batch_size: int, seq_len: int,
                  lora_config: LoraConfig | None = None, double_quant: bool = True,
                  gradient_checkpointing: bool = False, seed: int = 0) -> MemoryReport:
    """Predict, then measure, the memory of one training step of ``model`` (as prepared by
    :func:`prepare_model`) on a (batch_size, seq_len) batch of random tokens.

    The measured step runs a throwaway AdamW; the trainable weights are restored after it,
    so the model is exactly as before.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    compute = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point and not p.requires_grad),
                   torch.float32)
    config = lora_config or getattr(model, "lora_config", None)
    predicted = training_memory(
        shape_from_config(model.config), method, r=config.r if config else 8,
        target_modules=config.target_modules if config else "all-linear",
        base_dtype="nf4" if method == "qlora" else "fp32", double_quant=double_quant,
        trainable_dtype="fp32", compute_dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute, "fp32"),
        optimizer="adamw", master_weights=False, batch_size=batch_size, seq_len=seq_len,
        attn_implementation=model.config._attn_implementation or "sdpa", device=device.type,
        gradient_checkpointing=gradient_checkpointing, autocast=False)
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    was_training = model.training
    model.train()
    measured = measure_training_step(model, torch.optim.AdamW(params, lr=1e-3), ids)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
            p.grad = None
    model.train(was_training)
    return MemoryReport(dict(predicted.components), dict(measured.components), batch_size, seq_len,
                        measured.cuda_max_allocated)
