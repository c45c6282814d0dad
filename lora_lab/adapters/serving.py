"""Serving many adapters from one base: memory, FLOPs and measured latency.

    serving_memory("llama-2-7b", n_adapters=10)   # one base + 10 adapters vs 10 merged copies
    adapter_flop_ratio(model)                      # unmerged / merged multiply-adds per token
    serving_latency(model, input_ids, ["qa", "cipher"])   # medians of torch.utils.benchmark

Memory is counted with chapter 04's :func:`lora_lab.memory.training_memory` (the same layer
rule and byte counts), so every figure is an exact integer. A merged copy is a whole model
(W + ΔW in every adapted layer): serving N tasks merged costs N bases; unmerged costs one
base and N adapters of r·(in + out) weights per adapted layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from lora_lab.lora import disable_adapters, lora_layers, merge_lora, mixed_batch, time_forward
from lora_lab.memory.predict import DTYPE_BYTES, training_memory
from lora_lab.memory.shapes import ModelShape

SERVING_BASE_DTYPES = ("fp32", "bf16", "fp16", "nf4")
TIMING_METHOD = ("median of torch.utils.benchmark.Timer.blocked_autorange (min_run_time={min_run_time:g} s, "
                 "1 thread) per setting, the four settings alternated over {rounds} rounds, median of the rounds")


@dataclass(frozen=True)
class ServingMemory:
    """Bytes of serving ``n_adapters`` tasks from one base, against one merged copy per task."""

    model: str
    n_adapters: int
    base_bytes: int          # one copy of the model's weights in ``base_dtype``
    adapter_bytes: int       # one adapter's A and B in ``adapter_dtype``
    adapter_params: int      # one adapter's weights: Σ r·(in + out) over the adapted layers

    @property
    def shared(self) -> int:
        """One base and N adapters."""
        return self.base_bytes + self.n_adapters * self.adapter_bytes

    @property
    def merged_copies(self) -> int:
        """N merged models, each a full copy of the weights."""
        return self.n_adapters * self.base_bytes

    @property
    def ratio(self) -> float:
        """merged copies / shared base: how many times more memory merging every task costs."""
        return self.merged_copies / self.shared


def serving_memory(model: str | ModelShape = "gpt2", n_adapters: int = 10, *, r: int = 8,
                   target_modules="all-linear", base_dtype: str = "bf16",
                   adapter_dtype: str = "bf16") -> ServingMemory:
    """Weights in memory to serve ``n_adapters`` tasks: one shared base vs merged copies.

    Args:
        model: a preset of :data:`lora_lab.memory.PRESET_NAMES` or a ModelShape.
        n_adapters: how many task adapters (>= 1).
        r, target_modules: every adapter's rank and layers (chapter 04's rule).
        base_dtype: the base's storage, one of :data:`SERVING_BASE_DTYPES` (``"nf4"``: NF4 with
            double quantization, the parts it leaves unquantized in bf16; merged copies are then
            re-quantized merged models, as chapter 05's "merged into 4 bits").
        adapter_dtype: the adapters' dtype ("fp32", "bf16" or "fp16").

    Raises:
        ValueError: naming the argument, for an unknown dtype or preset or a count < 1.
    """
    if isinstance(n_adapters, bool) or not isinstance(n_adapters, int) or n_adapters < 1:
        raise ValueError(f"n_adapters must be an integer >= 1, got n_adapters={n_adapters!r}")
    if base_dtype not in SERVING_BASE_DTYPES:
        raise ValueError(f"base_dtype must be one of {SERVING_BASE_DTYPES}, got base_dtype={base_dtype!r}")
    if adapter_dtype not in DTYPE_BYTES:
        raise ValueError(f"adapter_dtype must be one of {tuple(DTYPE_BYTES)}, got adapter_dtype={adapter_dtype!r}")
    m = training_memory(model, "lora", r=r, target_modules=target_modules, base_dtype=base_dtype,
                        trainable_dtype=adapter_dtype, double_quant=True)
    c = m.components
    return ServingMemory(m.assumptions["model"], n_adapters, c["quantized base"] + c["unquantized base"],
                         c["trainable weights"], m.counts["trainable params"])


def adapter_flop_ratio(model) -> float:
    """Multiply-adds per token of the linear layers with the adapters unmerged, over merged.

    Σ (in·out + r·(in + out)) / Σ in·out over the LoRA layers of ``model`` (the active
    adapter's r), the output head (vocab × d, unadapted) added to both sides. Attention's
    own products (which grow with the sequence) and the scaling are left out: the ratio
    counts what an adapter adds, 1 + r(in + out)/(in·out) per layer (chapter 02's
    :func:`lora_lab.lora.merge_flop_ratio`), weighted by each layer's size.
    """
    base = extra = 0
    for _, layer in lora_layers(model):
        base += layer.in_features * layer.out_features
        name = layer.active_adapter
        extra += layer.r[name] * (layer.in_features + layer.out_features) if name in layer.lora_A else 0
    if base == 0:
        raise ValueError("model has no LoRA layers: add or load an adapter first")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        base += head.weight.numel()
    return (base + extra) / base


@dataclass(frozen=True)
class ServingLatency:
    """Median seconds per forward of one batch in four ways of serving (see :func:`serving_latency`)."""

    seconds: dict[str, float]
    flop_ratio: dict[str, float]
    method: str


def serving_latency(model, input_ids: torch.Tensor, adapter_names: list[str], *, rounds: int = 3,
                    min_run_time: float = 0.2) -> ServingLatency:
    """Forward time of the batch ``input_ids`` (B, T) served four ways, alternated over ``rounds``:

    ``base``: adapters disabled; ``unmerged``: the active adapter (B A beside W);
    ``mixed``: example i through ``adapter_names[i]`` (one batch, several adapters);
    ``merged``: the active adapter folded into W (one matmul per layer, like the base), in a
    copy of the model (merging into a 4-bit base re-quantizes it, so ``model`` is never merged).

    Each setting is timed with chapter 02's :func:`lora_lab.lora.time_forward` (1 thread);
    the figure is the median over rounds. ``model`` is left as it was.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, seq) tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    if len(adapter_names) != input_ids.shape[0]:
        raise ValueError(f"adapter_names must name one adapter per example: {input_ids.shape[0]} examples, "
                         f"got {len(adapter_names)} names")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got rounds={rounds!r}")
    unmerged = adapter_flop_ratio(model)  # also checks that the model has adapters
    merged = merge_lora(copy.deepcopy(model))

    def forward(ids, m=model):
        return m(input_ids=ids).logits

    def base(ids):
        with disable_adapters(model):
            return forward(ids)

    def mixed(ids):
        with mixed_batch(model, adapter_names):
            return forward(ids)

    def merged_forward(ids):
        return forward(ids, merged)

    settings = {"base": base, "unmerged": forward, "mixed": mixed, "merged": merged_forward}
    times = {k: [] for k in settings}
    for _ in range(rounds):
        for key, fn in settings.items():
            times[key].append(time_forward(fn, input_ids, min_run_time=min_run_time))
    flops = {"base": 1.0, "unmerged": unmerged, "mixed": unmerged, "merged": 1.0}
    return ServingLatency({k: sorted(v)[rounds // 2] for k, v in times.items()}, flops,
                          TIMING_METHOD.format(min_run_time=min_run_time, rounds=rounds))
