"""FSDP: each of N processes keeps 1/N of every parameter (its shard, ``DTensor``); a block's
full weights are all-gathered just before its forward and backward and freed after, and the
gradients are reduce-scattered so each process updates only its shard.

:func:`shard_model` applies torch's FSDP2 ``fully_shard`` to each transformer block and then
the whole model; :func:`local_param_bytes` measures what one process keeps. With LoRA the
frozen base is sharded too, so its per-process bytes halve on 2 processes; the 4-bit QLoRA
base shards the same way (FSDP2 shards every parameter by itself, of any dtype, so the
bitsandbytes ``uint8`` codes need no ``bnb_4bit_quant_storage``; FSDP1's flat parameters
did). :func:`qlora_quant_storage_probe` runs the recipe on a float ``bnb_4bit_quant_storage``
(Answer.AI's FSDP1 setting): the same codes, retyped, give the same logits; :func:`fsdp_memory` is the
per-GPU arithmetic for a large model on N GPUs.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lora_lab.distributed.runs import RunSpec, prepare_run, trainable_state
from lora_lab.finetune.models import keep_bnb_layout, resolve_model_path
from lora_lab.finetune.trainer import train
from lora_lab.lora.layer import LoraConfig, add_lora
from lora_lab.memory.measure import quant_tensors
from lora_lab.memory.predict import DTYPE_BYTES, quantized_linear_bytes, training_memory
from lora_lab.memory.shapes import ModelShape, model_shape

QUANT_STORAGES = ("uint8", "bfloat16", "float16", "float32")
# What qlora_quant_storage_probe reported for a float quant storage while lora_lab's add_lora checked a 4-bit
# layer's packed codes for NaN/inf as if they were values (it no longer does: the probe works, same logits).
FLOAT_STORAGE_FAILURE = "NaN/inf values; LoRA needs a finite base weight"


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks: GPT-2's ``transformer.h``, Llama's ``model.layers``."""
    for path in ("transformer.h", "model.layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise ValueError(f"model {type(model).__name__} has no transformer.h or model.layers block list to shard")


def shard_model(model: torch.nn.Module, world_size: int | None = None) -> torch.nn.Module:
    """``fully_shard`` each transformer block, then the model (embeddings, final norm, head),
    over a 1-D mesh of ``world_size`` processes (default: the whole process group). The model
    is changed in place (FSDP2 keeps module names) and returned."""
    world_size = world_size or torch.distributed.get_world_size()
    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world_size,))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def local_param_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes this process keeps: ``"frozen"`` and ``"trainable"`` parameters (an FSDP parameter
    counts its local shard, ``DTensor.to_local()``), and ``"quant state"``: the 4-bit layers'
    absmax and codebooks, which live on the module, not in a parameter, so FSDP does not shard
    them."""
    out = {"frozen": 0, "trainable": 0, "quant state": 0}
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        out["trainable" if p.requires_grad else "frozen"] += local.numel() * local.element_size()
    for module in model.modules():  # bitsandbytes keeps the state on Linear4bit (FSDP drops the weight's)
        if getattr(module, "quant_state", None) is not None:
            constants = quant_tensors(SimpleNamespace(quant_state=module.quant_state))[1:]
            out["quant state"] += sum(t.numel() * t.element_size() for t in constants)
    return out


def run_fsdp(rank: int, world_size: int, *specs: RunSpec) -> list[dict]:
    """Each of ``specs`` with its model sharded by :func:`shard_model`, as process ``rank`` (for
    :func:`lora_lab.distributed.spawn`): per spec ``{"trainable"`` (gathered), ``"losses"``,
    ``"bytes_before"``, ``"bytes_after"`` (:func:`local_param_bytes` before and after sharding)``}``."""
    out = []
    for spec in specs:
        model, tokenizer, examples, config = prepare_run(spec)
        before = local_param_bytes(model)
        shard_model(model, world_size)
        after = local_param_bytes(model)
        result = train(model, tokenizer, examples, config, rank=rank, world_size=world_size, progress=False)
        out.append({"trainable": trainable_state(model), "losses": result.losses, "bytes_before": before,
                    "bytes_after": after})
    return out


def load_qlora_base(name_or_path: str = "data/lab-gpt2", quant_storage: str = "uint8", *,
                    double_quant: bool = True):
    """The NF4 (+ double quant) base on CPU through transformers' ``BitsAndBytesConfig``, its
    packed codes stored as ``bnb_4bit_quant_storage=quant_storage`` (fp32 compute)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quant_storage not in QUANT_STORAGES:
        raise ValueError(f"quant_storage must be one of {QUANT_STORAGES}, got {quant_storage!r}")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                                bnb_4bit_compute_dtype=torch.float32,
                                bnb_4bit_quant_storage=getattr(torch, quant_storage))
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), dtype=torch.float32,
                                                 quantization_config=config, device_map={"": "cpu"})
    return keep_bnb_layout(model).eval()


def qlora_quant_storage_probe(quant_storage: str = "bfloat16", name_or_path: str = "data/lab-gpt2") -> dict:
    """Try the QLoRA recipe on a base whose 4-bit codes are stored as ``quant_storage``; one
    process, no sharding (the step that fails today fails before any). Returns ``{"works":
    bool, "error": "ExceptionType: message" or None, "max_abs_logit_diff"}``: the difference of
    its logits from the ``uint8``-stored base's (same codes, so 0 if it works)."""
    if quant_storage not in QUANT_STORAGES:
        raise ValueError(f"quant_storage must be one of {QUANT_STORAGES}, got {quant_storage!r}")
    ids = torch.arange(16).reshape(2, 8)
    want = load_qlora_base(name_or_path, "uint8")(input_ids=ids).logits
    try:
        model = load_qlora_base(name_or_path, quant_storage)
        add_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
                 generator=torch.Generator().manual_seed(0))
        got = model(input_ids=ids).logits
    except (ValueError, RuntimeError, TypeError, AssertionError) as err:
        return {"works": False, "error": f"{type(err).__name__}: {err}", "max_abs_logit_diff": None}
    return {"works": True, "error": None, "max_abs_logit_diff": (got - want).abs().max().item()}


def fsdp_memory(model: str | ModelShape = "llama-2-70b", recipe: str = "qlora", *, world_size: int = 2,
                gpu_gib: float = 24, r: int = 8, target_modules="all-linear", batch_size: int = 1,
                seq_len: int = 2048, gradient_checkpointing: bool = True, prefetch_blocks: int = 2) -> dict:
    """Per-GPU training memory of ``recipe`` on ``model`` sharded by FSDP over ``world_size`` GPUs.

    From :func:`lora_lab.memory.training_memory`: the frozen base, trainable weights, gradients
    and optimizer state are divided by ``world_size``; activations stay per GPU (each trains on
    its own share of the batch: ``batch_size`` is per GPU); and ``prefetch_blocks`` blocks are
    held unsharded at once (the one computing and the next, all-gathered ahead). Returns
    ``{"components": bytes per GPU, "total", "total_gib", "gpu_gib", "fits"}``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if not (isinstance(gpu_gib, (int, float)) and gpu_gib > 0):
        raise ValueError(f"gpu_gib must be a number > 0, got {gpu_gib!r}")
    shape = model_shape(model)
    mem = training_memory(shape, recipe, r=r, target_modules=target_modules, batch_size=batch_size,
                          seq_len=seq_len, gradient_checkpointing=gradient_checkpointing)
    base = mem.assumptions["base_dtype"]
    block = sum(quantized_linear_bytes(i, o, base, mem.assumptions["double_quant"]) if base == "nf4"
                else i * o * DTYPE_BYTES.get(base, 1) for _, i, o, _ in shape.block_linears())
    components = {k: (v if k == "activations" else math.ceil(v / world_size)) for k, v in mem.components.items()}
    components["gathered blocks"] = prefetch_blocks * block * (world_size - 1) // world_size
    total = sum(components.values())
    return {"components": components, "total": total, "total_gib": total / 2**30, "gpu_gib": gpu_gib,
            "fits": total <= gpu_gib * 2**30, "world_size": world_size, "model": shape.name, "recipe": recipe}
