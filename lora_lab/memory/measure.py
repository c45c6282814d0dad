"""Memory measured on real modules: bytes read from tensor storages, not process RSS.

After one real optimizer step we read the storages of parameters (plus bitsandbytes'
quantization constants), gradients and optimizer state, each storage counted once
(GPT-2's tied ``lm_head`` shares ``wte``'s storage). Activations are the storages
autograd saves for backward, seen through ``torch.autograd.graph.saved_tensors_hooks``
during the forward pass (loss included), each storage once and parameters excluded.
On a GPU we also report ``torch.cuda.max_memory_allocated`` for the step.

:func:`apply_recipe` sets a model up for ``"full"``, ``"lora"`` or ``"qlora"`` (used by
:func:`build_model`, from a config, and by ``finetune.prepare_model``, from weights);
:func:`predict_and_measure` predicts one step of it and measures it (used by :func:`compare`
and by ``finetune.memory_report``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lora_lab._util import enable_gradient_checkpointing, is_bnb_4bit
from lora_lab.lora.baselayer import ALL_LINEAR
from lora_lab.lora.layer import LoraConfig, add_lora, find_target_modules
from lora_lab.memory.predict import COMPONENTS, RECIPES, MemoryBreakdown, training_memory
from lora_lab.memory.shapes import shape_from_config
from lora_lab.quant.linear4bit import FrozenLinear4bit, quantize_model

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
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _has_4bit_layers(model: nn.Module) -> bool:
    return any(is_bnb_4bit(m) or isinstance(m, FrozenLinear4bit) for m in model.modules())


def apply_recipe(model: nn.Module, recipe: str = "lora", lora_config: LoraConfig | None = None, *,
                 dtype: torch.dtype | None = None, generator: torch.Generator | None = None,
                 gradient_checkpointing: bool = False) -> nn.Module:
    """Set ``model`` up, in place, to train with ``recipe``; returns it.

    ``"full"``: every parameter trains. ``"lora"``: the base is frozen and ``lora_config``'s
    adapters (default r=8, lora_alpha=16, all-linear) are added, A drawn from ``generator``,
    in fp32 even on a 16-bit base (PEFT's ``autocast_adapter_dtype``). ``"qlora"``: the same
    on a base whose block linears are 4-bit: the model's own if it has any (loaded so, e.g.
    ``finetune.load_model(quantization="nf4")``), else quantized here as transformers'
    ``BitsAndBytesConfig`` loads them (:func:`quantize_linears_4bit`: NF4, double quantization,
    compute dtype the model's). ``dtype``: cast the model to it first (the frozen base's and
    the compute dtype); None keeps it. ``gradient_checkpointing``: one checkpoint per block.

    Raises:
        ValueError: an unknown recipe or dtype, a ``lora_config`` that is not a LoraConfig or
            selects no layer of ``model``; the model is then unchanged.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be None or one of {tuple(_DTYPE_NAMES)}, got {dtype!r}")
    if gradient_checkpointing and not hasattr(model, "gradient_checkpointing_enable"):
        raise ValueError(f"gradient_checkpointing=True needs a transformers model, got {type(model).__name__}")
    if recipe == "full":
        model = model if dtype is None else model.to(dtype)
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        config = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR) if lora_config is None else lora_config
        if not isinstance(config, LoraConfig):
            raise ValueError(f"lora_config must be a lora_lab LoraConfig or None, got {type(config).__name__}")
        find_target_modules(model, config.target_modules)  # raises before anything changes
        model = model if dtype is None else model.to(dtype)
        if recipe == "qlora" and not _has_4bit_layers(model):
            compute = next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)
            model = quantize_linears_4bit(model, compute_dtype=compute)
        add_lora(model, config, generator=generator)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # adapters train in fp32, as PEFT's autocast_adapter_dtype
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def build_model(config, recipe: str = "lora", *, r: int = 8, target_modules=("c_attn",),
                seed: int = 0, device: str = "cpu", gradient_checkpointing: bool = False,
                base_dtype: str = "fp32"):
    """A random-weight model from ``config`` set up for ``recipe`` (:func:`apply_recipe`),
    in train mode, and its AdamW optimizer.

    ``"lora"``: frozen base in ``base_dtype`` (``"fp32"``, or ``"bf16"`` as QLoRA's
    unquantized parts and compute), fp32 adapters, torch AdamW. ``"qlora"``: NF4 +
    double-quant base (bnb Linear4bit), everything else bf16, adapters in fp32 (PEFT's
    default), torch AdamW (fp32 states). ``"full"``: every weight trains in fp32.
    Adapters: ``LoraConfig(r, lora_alpha=2r, target_modules)``. ``base_dtype`` applies to
    ``"lora"`` only.
    """
    if base_dtype not in LORA_BASE_DTYPES:
        raise ValueError(f"base_dtype must be one of {LORA_BASE_DTYPES}, got {base_dtype!r}")
    if base_dtype != "fp32" and recipe != "lora":
        raise ValueError(f"base_dtype={base_dtype!r} applies to recipe 'lora' only, got {recipe!r}")
    lora_config = None if recipe == "full" else LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules)
    # transformers is imported here, not at the top: chapter 04's predictions do not need it
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
    bf16 = recipe == "qlora" or base_dtype == "bf16"
    model = apply_recipe(model.to(device), recipe, lora_config, dtype=torch.bfloat16 if bf16 else None,
                         generator=gen, gradient_checkpointing=gradient_checkpointing)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-3)


def predict_and_measure(model: nn.Module, recipe: str, optimizer: torch.optim.Optimizer, *,
                        batch_size: int = 1, seq_len: int = 32, seed: int = 0,
                        lora_config: LoraConfig | None = None, double_quant: bool = True,
                        gradient_checkpointing: bool = False) -> tuple[MemoryBreakdown, Measured]:
    """Predict with :func:`training_memory` one training step of ``model`` (a transformers
    causal LM set up for ``recipe`` by :func:`apply_recipe`), then measure it
    (:func:`measure_training_step`, in train mode) on a (batch_size, seq_len) batch of
    random tokens drawn with ``seed``.

    The prediction reads the setup off the model: r and target_modules from ``lora_config``
    (default: the model's own, set by ``add_lora``), the frozen base's dtype (NF4 for
    ``"qlora"``) and compute dtype (its unquantized frozen weights', else its weights'),
    attention implementation and device; fp32 adapters, torch AdamW, no autocast. The step
    changes the trainable weights and fills ``optimizer``'s state.
    """
    params = list(model.parameters())
    frozen = [p for p in params if p.dtype.is_floating_point and not p.requires_grad]
    dtype = (frozen or params)[0].dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"the model's weights are {dtype}; the prediction knows {tuple(_DTYPE_NAMES)}")
    config = lora_config or getattr(model, "lora_config", None)
    device = params[0].device
    predicted = training_memory(
        shape_from_config(model.config), recipe, r=config.r if config else 8,
        target_modules=config.target_modules if config else ALL_LINEAR,
        base_dtype="nf4" if recipe == "qlora" else _DTYPE_NAMES[dtype], double_quant=double_quant,
        trainable_dtype="fp32", compute_dtype=_DTYPE_NAMES[dtype], optimizer="adamw", master_weights=False,
        batch_size=batch_size, seq_len=seq_len, attn_implementation=model.config._attn_implementation or "sdpa",
        device=device.type, gradient_checkpointing=gradient_checkpointing, autocast=False)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    was_training = model.training
    model.train()
    measured = measure_training_step(model, optimizer, ids)
    model.train(was_training)
    return predicted, measured


def compare(config, recipe: str = "lora", *, r: int = 8, target_modules=("c_attn",),
            batch_size: int = 1, seq_len: int = 32, seed: int = 0, device: str = "cpu",
            gradient_checkpointing: bool = False,
            base_dtype: str = "fp32") -> tuple[MemoryBreakdown, Measured]:
    """:func:`build_model`, then :func:`predict_and_measure` one real step of it.

    ``base_dtype``: the frozen base of ``"lora"`` (``"fp32"`` or ``"bf16"``, see
    :func:`build_model`); ``"bf16"`` compares LoRA with QLoRA at the same compute dtype.
    With gradient checkpointing the hooks see what the forward pass stores (each block's
    input); compare it with ``predicted.activation_detail["stored"]``.
    """
    model, opt = build_model(config, recipe, r=r, target_modules=target_modules, seed=seed,
                             device=device, gradient_checkpointing=gradient_checkpointing,
                             base_dtype=base_dtype)
    return predict_and_measure(model, recipe, opt, batch_size=batch_size, seq_len=seq_len, seed=seed + 1,
                               gradient_checkpointing=gradient_checkpointing)


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
