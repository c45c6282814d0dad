"""Memory measured on real modules: bytes read from tensor storages, not process RSS.

After one real optimizer step we read the storages of parameters (plus bitsandbytes'
quantization constants), gradients and optimizer state, each storage counted once
(GPT-2's tied ``lm_head`` shares ``wte``'s storage). Activations are the storages
autograd saves for backward, seen through ``torch.autograd.graph.saved_tensors_hooks``
during the forward pass (loss included), each storage once and parameters excluded.
On a GPU we also report ``torch.cuda.max_memory_allocated`` for the step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lora_lab.lora.baselayer import ALL_LINEAR
from lora_lab.lora.layer import LoraConfig, add_lora
from lora_lab.memory.predict import COMPONENTS, MemoryBreakdown, training_memory
from lora_lab.memory.shapes import shape_from_config
from lora_lab.quant.linear4bit import quantize_model

METHOD = ("parameters, gradients, optimizer state: storage bytes after one optimizer step, "
          "each storage once; activations: storages packed by "
          "torch.autograd.graph.saved_tensors_hooks in the forward pass, parameters excluded")


def _key(t: torch.Tensor) -> tuple:
    st = t.untyped_storage()
    return (t.device.type, st.data_ptr(), st.nbytes())


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied weights once)."""
    seen = {_key(t): t.untyped_storage().nbytes() for t in tensors if isinstance(t, torch.Tensor)}
    return sum(seen.values())


def quant_tensors(p: torch.Tensor) -> list[torch.Tensor]:
    """A quantized parameter's storage plus its constants (absmax, codebooks, row scales)."""
    out = [p]
    qs = getattr(p, "quant_state", None)
    while qs is not None:  # bitsandbytes QuantState; double quantization nests a state2
        out += [getattr(qs, n) for n in ("absmax", "code", "offset")
                if isinstance(getattr(qs, n, None), torch.Tensor)]
        qs = getattr(qs, "state2", None)
    scb = getattr(p, "SCB", None)  # LLM.int8 row scales
    return out + ([scb] if isinstance(scb, torch.Tensor) else [])


def is_quantized(p: torch.Tensor) -> bool:
    return type(p).__name__ in ("Params4bit", "Int8Params") or (not p.dtype.is_floating_point)


@contextmanager
def saved_tensor_meter(exclude=()):
    """Count the storages autograd saves for backward inside the block.

    Yields a dict whose ``"bytes"`` and ``"tensors"`` fill in as the forward pass runs.
    Storages of ``exclude`` (the parameters) are not activations and are skipped.
    """
    skip = {_key(t) for t in exclude}
    seen: dict[tuple, int] = {}
    result = {"bytes": 0, "tensors": 0}

    def pack(t):
        k = _key(t)
        if k not in skip and k not in seen:
            seen[k] = t.untyped_storage().nbytes()
            result["bytes"] += seen[k]
            result["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result


@dataclass(frozen=True)
class Measured:
    """Measured bytes per component (keys as :data:`lora_lab.memory.predict.COMPONENTS`)."""

    components: dict[str, int]
    cuda_max_allocated: int | None
    method: str = METHOD


def measure_training_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                          input_ids: torch.Tensor) -> Measured:
    """Run forward (loss = next-token cross-entropy), backward and one optimizer step; measure.

    Shapes: ``input_ids`` (batch, seq) int64 on the model's device.
    """
    params = list(model.parameters())
    consts = [t for p in params if is_quantized(p) for t in quant_tensors(p)]
    cuda = input_ids.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with saved_tensor_meter(exclude=params + consts + list(model.buffers())) as saved:
        loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    trainable = [p for p in params if p.requires_grad]
    state = [t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    components = {
        "quantized base": storage_bytes(consts),
        "unquantized base": storage_bytes(p for p in params if not p.requires_grad and not is_quantized(p)),
        "trainable weights": storage_bytes(trainable),
        "gradients": storage_bytes(p.grad for p in trainable),
        "optimizer state": storage_bytes(state),
        "master weights": 0,
        "activations": saved["bytes"],
    }
    return Measured({k: components[k] for k in COMPONENTS}, peak)


def quantize_linears_4bit(model: nn.Module, *, compute_dtype=torch.bfloat16,
                          double_quant: bool = True, quant_type: str = "nf4") -> nn.Module:
    """The layout transformers' ``BitsAndBytesConfig(load_in_4bit=True)`` loads: every block
    linear (nn.Linear, GPT-2 Conv1D) as bnb ``Linear4bit``; the output head, embeddings and
    norms stay as they are, biases unquantized. :func:`lora_lab.quant.quantize_model` with
    ``backend="bitsandbytes"``."""
    return quantize_model(model, ALL_LINEAR, backend="bitsandbytes", codebook=quant_type,
                          double_quant=double_quant, compute_dtype=compute_dtype)


LORA_BASE_DTYPES = ("fp32", "bf16")  # the frozen base of recipe "lora" in build_model / compare


def build_model(config, recipe: str = "lora", *, r: int = 8, target_modules=("c_attn",),
                seed: int = 0, device: str = "cpu", gradient_checkpointing: bool = False,
                base_dtype: str = "fp32"):
    """A random-weight model from ``config`` set up for ``recipe``, and its AdamW optimizer.

    ``"lora"``: frozen base in ``base_dtype`` (``"fp32"``, or ``"bf16"`` as QLoRA's
    unquantized parts and compute), fp32 adapters, torch AdamW. ``"qlora"``: NF4 +
    double-quant base (bnb Linear4bit), everything else bf16, adapters in fp32 (PEFT's
    default), torch AdamW (fp32 states). ``"full"``: every weight trains in fp32.
    ``base_dtype`` applies to ``"lora"`` only.
    """
    if base_dtype not in LORA_BASE_DTYPES:
        raise ValueError(f"base_dtype must be one of {LORA_BASE_DTYPES}, got {base_dtype!r}")
    if base_dtype != "fp32" and recipe != "lora":
        raise ValueError(f"base_dtype={base_dtype!r} applies to recipe 'lora' only, got {recipe!r}")
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():  # bytes do not depend on values: skip transformers' slow init ...
        model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():  # ... and draw N(0, 0.02²) matrices from our own generator
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.02, generator=gen)
            else:  # norm scales 1, biases 0
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    model.tie_weights()  # GPT-2's lm_head shares wte's storage
    model = model.to(device)
    if recipe == "qlora":
        model = quantize_linears_4bit(model.to(torch.bfloat16))
    elif base_dtype == "bf16":
        model = model.to(torch.bfloat16)
    if recipe in ("lora", "qlora"):
        add_lora(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules), generator=gen)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # adapters train in fp32, as PEFT's autocast_adapter_dtype
    if gradient_checkpointing:  # one checkpoint per block, as Trainer does
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-3)


def compare(config, recipe: str = "lora", *, r: int = 8, target_modules=("c_attn",),
            batch_size: int = 1, seq_len: int = 32, seed: int = 0, device: str = "cpu",
            gradient_checkpointing: bool = False,
            base_dtype: str = "fp32") -> tuple[MemoryBreakdown, Measured]:
    """Predict with :func:`training_memory` and measure one real step of the same setup.

    ``base_dtype``: the frozen base of ``"lora"`` (``"fp32"`` or ``"bf16"``, see
    :func:`build_model`); ``"bf16"`` compares LoRA with QLoRA at the same compute dtype.
    With gradient checkpointing the hooks see what the forward pass stores (each block's
    input); compare it with ``predicted.activation_detail["stored"]``.
    """
    model, opt = build_model(config, recipe, r=r, target_modules=target_modules, seed=seed,
                             device=device, gradient_checkpointing=gradient_checkpointing,
                             base_dtype=base_dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    measured = measure_training_step(model, opt, ids)
    quant = recipe == "qlora"
    predicted = training_memory(
        shape_from_config(config), recipe, r=r, target_modules=target_modules,
        base_dtype="nf4" if quant else base_dtype if recipe == "lora" else "fp32", double_quant=True,
        trainable_dtype="fp32",
        compute_dtype="bf16", optimizer="adamw", master_weights=False, batch_size=batch_size,
        seq_len=seq_len, attn_implementation=config._attn_implementation or "sdpa", device=device,
        gradient_checkpointing=gradient_checkpointing, autocast=False)
    return predicted, measured


def param_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Storage bytes of a model's parameters by kind, each storage once (tied weights once).

    Keys: ``"quantized"`` (bitsandbytes ``Params4bit``/``Int8Params`` with their quantization
    constants) and one key per float dtype of the other parameters (``"float32"``,
    ``"bfloat16"``, ...), in first-seen order. Use it to see what a cast such as PEFT's
    ``prepare_model_for_kbit_training`` changes.
    """
    params = list(model.parameters())
    out: dict[str, list] = {}
    for p in params:
        key = "quantized" if is_quantized(p) else str(p.dtype).removeprefix("torch.")
        out.setdefault(key, []).extend(quant_tensors(p) if is_quantized(p) else [p])
    return {k: storage_bytes(v) for k, v in out.items()}
