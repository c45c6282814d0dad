"""DDP: every process holds the whole model, trains on its share of the global batch, and
all-reduces (averages) the gradients before the identical optimizer steps.

torch's ``DistributedDataParallel`` puts only parameters with ``requires_grad`` in its
reducer, so a LoRA run all-reduces the adapters' gradients and nothing of the frozen base.
:class:`AllReduceCounter` is a DDP communication hook that counts the bytes of every bucket
it all-reduces (then all-reduces it as DDP would); per step that is the trainable weights
times the bytes of a gradient. :func:`allreduce_bytes_per_step` predicts the same number for
any model shape from the memory chapter's parameter counts. (A ring all-reduce sends and
receives about twice that per process; the buffer size is what the recipe decides.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from lora_lab.distributed.runs import RunSpec, prepare_run, trainable_state
from lora_lab.finetune.trainer import TrainResult, train
from lora_lab.memory.predict import DTYPE_BYTES, training_memory
from lora_lab.memory.shapes import ModelShape


@dataclass
class AllReduceCounter:
    """A DDP communication hook that counts bytes: ``per_step[k]`` is what step k all-reduced
    (:meth:`end_step` closes a step), ``buckets`` the bucket sizes of the step in progress."""

    per_step: list[int] = field(default_factory=list)
    buckets: list[int] = field(default_factory=list)

    def hook(self, process_group, bucket):  # no return annotation: DDP checks it, and it is a string here
        buffer = bucket.buffer()
        self.buckets.append(buffer.numel() * buffer.element_size())
        return allreduce_hook(process_group, bucket)

    def end_step(self, *_) -> None:
        """Close the step (usable as ``train``'s ``step_callback``)."""
        self.per_step.append(sum(self.buckets))
        self.buckets = []


def wrap_ddp(model: torch.nn.Module) -> tuple[DistributedDataParallel, AllReduceCounter]:
    """``model`` in torch's DDP (process group already joined; CPU, or the model's GPU), with an
    :class:`AllReduceCounter` registered as its communication hook."""
    device = next(model.parameters()).device
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    counter = AllReduceCounter()
    ddp.register_comm_hook(None, counter.hook)
    return ddp, counter


def train_ddp(model, tokenizer, examples, config, *, rank: int, world_size: int,
              **train_kwargs) -> tuple[TrainResult, AllReduceCounter]:
    """:func:`lora_lab.finetune.train` of ``model`` wrapped by :func:`wrap_ddp`, this process
    taking its share of every global batch of ``config.batch_size``; returns the result and the
    byte counter (``step_callback`` in ``train_kwargs`` is still called)."""
    ddp, counter = wrap_ddp(model)
    user_callback = train_kwargs.pop("step_callback", None)

    def callback(step, loss):
        counter.end_step()
        if user_callback is not None:
            user_callback(step, loss)

    result = train(ddp, tokenizer, examples, config, rank=rank, world_size=world_size, step_callback=callback,
                   **train_kwargs)
    return result, counter


def run_ddp(rank: int, world_size: int, *specs: RunSpec) -> list[dict]:
    """Each of ``specs`` under DDP as process ``rank`` (for :func:`lora_lab.distributed.spawn`;
    several runs in one launch, as starting processes is the slow part): per spec
    ``{"trainable", "losses", "bytes_per_step", "trainable_params"}``."""
    out = []
    for spec in specs:
        model, tokenizer, examples, config = prepare_run(spec)
        result, counter = train_ddp(model, tokenizer, examples, config, rank=rank, world_size=world_size,
                                    progress=False)
        out.append({"trainable": trainable_state(model), "losses": result.losses,
                    "bytes_per_step": counter.per_step, "trainable_params": trainable_numel(model)})
    return out


def trainable_numel(model: torch.nn.Module) -> int:
    """Number of weights with ``requires_grad`` (what DDP all-reduces)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def allreduce_bytes_per_step(model: str | ModelShape = "gpt2", recipe: str = "lora", *, r: int = 8,
                             target_modules="all-linear", grad_dtype: str = "fp32") -> int:
    """Bytes DDP all-reduces per optimizer step: the trainable weights of ``recipe`` on
    ``model`` (a preset name such as ``"lab-gpt2"``, ``"gpt2"``, ``"llama-2-7b"``, or a
    ModelShape), counted by :func:`lora_lab.memory.training_memory`, times the bytes of one
    gradient in ``grad_dtype`` (``"fp32"``: adapters train in fp32; ``"bf16"`` for 16-bit full
    fine-tuning)."""
    if grad_dtype not in DTYPE_BYTES:
        raise ValueError(f"grad_dtype must be one of {tuple(DTYPE_BYTES)}, got {grad_dtype!r}")
    counts = training_memory(model, recipe, r=r, target_modules=target_modules).counts
    return counts["trainable params"] * DTYPE_BYTES[grad_dtype]


def allreduce_table(models: Sequence[str | ModelShape] = ("lab-gpt2", "gpt2", "llama-2-7b"), *, r: int = 8,
                    target_modules="all-linear", grad_dtype: str = "fp32") -> list[dict]:
    """Per model: trainable weights and bytes all-reduced per step for LoRA (``r``,
    ``target_modules``) and for full fine-tuning, and their ratio (full / LoRA)."""
    rows = []
    for model in models:
        lora = allreduce_bytes_per_step(model, "lora", r=r, target_modules=target_modules, grad_dtype=grad_dtype)
        full = allreduce_bytes_per_step(model, "full", grad_dtype=grad_dtype)
        size = DTYPE_BYTES[grad_dtype]
        rows.append({"model": getattr(model, "name", model), "lora_params": lora // size, "full_params": full // size,
                     "lora_bytes": lora, "full_bytes": full, "ratio": full / lora})
    return rows
