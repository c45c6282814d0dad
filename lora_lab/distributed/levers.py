"""Two memory levers measured beside the memory chapter's predictions (chapter 04).

**Gradient checkpointing** keeps only each block's input through the forward pass and
recomputes the block in the backward pass: activation bytes saved, step time paid.
**8-bit AdamW** (bitsandbytes' ``AdamW8bit``) keeps AdamW's two moments as uint8 codes with one
fp32 absmax per 256 values instead of two fp32 numbers: optimizer-state bytes saved. Tensors
under 4096 values stay 32-bit, which the prediction knows.

:func:`measure_levers` builds one random-weight model from a config (bytes do not depend on the
values) with :func:`lora_lab.memory.build_model` and measures one real step three times with
:func:`lora_lab.memory.predict_and_measure`: without checkpointing (torch AdamW), with it, and
with it and ``AdamW8bit``. The forward-pass hooks see what checkpointing *stores*; the block
recomputed during the backward pass (the prediction's ``"recompute peak"``) is invisible to
them, so it is predicted, not measured. :func:`step_times` times a whole step with and without
checkpointing (medians of ``torch.utils.benchmark``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils import benchmark
from transformers import GPT2Config

from lora_lab._util import enable_gradient_checkpointing
from lora_lab.memory.measure import build_model, predict_and_measure
from lora_lab.memory.predict import training_memory
from lora_lab.memory.shapes import LAB_GPT2_CONFIG, shape_from_config

#: "lab-gpt2": the shipped model's shape (4 x 192, 1,469 tokens); "gpt2": GPT-2 small's (12 x 768, 50,257)
LEVER_MODELS = ("lab-gpt2", "gpt2")


def lever_config(model: str = "lab-gpt2") -> GPT2Config:
    """The config of one of :data:`LEVER_MODELS` (its dropout as shipped: 0 for the lab model, 0.1 for GPT-2)."""
    if model == "lab-gpt2":
        return GPT2Config.from_json_file(LAB_GPT2_CONFIG)
    if model == "gpt2":
        return GPT2Config()  # transformers' defaults are GPT-2 small
    raise ValueError(f"model must be one of {LEVER_MODELS}, got {model!r}")


@dataclass(frozen=True)
class LeverRow:
    """One lever setting: the ``component`` it changes, predicted and measured bytes."""

    model: str
    lever: str       # "gradient checkpointing" or "optimizer"
    setting: str     # "off" / "on", or "adamw" / "adamw-8bit"
    component: str   # "activations" (stored through the forward pass) or "optimizer state"
    predicted: int
    measured: int

    @property
    def ratio(self) -> float:
        """measured / predicted."""
        return self.measured / self.predicted


def measure_levers(model: str = "lab-gpt2", *, recipe: str = "lora", r: int = 8, target_modules="all-linear",
                   batch_size: int = 2, seq_len: int = 64, seed: int = 0) -> list[LeverRow]:
    """Both levers on one model of :data:`LEVER_MODELS` (fp32 base, fp32 adapters): four rows,
    activations with checkpointing off and on, optimizer state with AdamW and 8-bit AdamW."""
    config = lever_config(model)
    net, adamw = build_model(config, recipe, r=r, target_modules=target_modules, seed=seed)
    step = dict(batch_size=batch_size, seq_len=seq_len, seed=seed + 1)
    off_pred, off = predict_and_measure(net, recipe, adamw, **step)
    enable_gradient_checkpointing(net)
    on_pred, on = predict_and_measure(net, recipe, adamw, gradient_checkpointing=True, **step)
    import bitsandbytes as bnb  # here, as elsewhere in lora_lab: importing it probes for CUDA

    adam8 = bnb.optim.AdamW8bit([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    _, on8 = predict_and_measure(net, recipe, adam8, gradient_checkpointing=True, **step)
    setup = {k: off_pred.assumptions[k] for k in ("base_dtype", "trainable_dtype", "master_weights")}
    pred8 = training_memory(shape_from_config(config), recipe, r=r, target_modules=target_modules,
                            optimizer="adamw-8bit", **setup)
    ckpt, opt, act = "gradient checkpointing", "optimizer", "activations"
    return [
        LeverRow(model, ckpt, "off", act, off_pred.activation_detail["stored"], off.components[act]),
        LeverRow(model, ckpt, "on", act, on_pred.activation_detail["stored"], on.components[act]),
        LeverRow(model, opt, "adamw", "optimizer state", off_pred.components["optimizer state"],
                 off.components["optimizer state"]),
        LeverRow(model, opt, "adamw-8bit", "optimizer state", pred8.components["optimizer state"],
                 on8.components["optimizer state"]),
    ]


def lever_table(models=LEVER_MODELS, **kwargs) -> list[LeverRow]:
    """:func:`measure_levers` of each model, rows in order."""
    return [row for model in models for row in measure_levers(model, **kwargs)]


def step_times(model: str = "lab-gpt2", *, recipe: str = "lora", r: int = 8, target_modules="all-linear",
               batch_size: int = 2, seq_len: int = 64, seed: int = 0,
               min_run_time: float = 1.0) -> dict[str, benchmark.Measurement]:
    """One training step (forward with the loss, backward, AdamW step) timed with
    ``torch.utils.benchmark`` without (``"off"``) and with (``"on"``) gradient checkpointing, on
    the same model and batch; read ``.median`` (seconds). Each setting runs one untimed step first."""
    if not (isinstance(min_run_time, (int, float)) and min_run_time > 0):
        raise ValueError(f"min_run_time must be a number of seconds > 0, got {min_run_time!r}")
    net, opt = build_model(lever_config(model), recipe, r=r, target_modules=target_modules, seed=seed)
    ids = torch.randint(0, net.config.vocab_size, (batch_size, seq_len),
                        generator=torch.Generator().manual_seed(seed + 1))

    def train_step():
        opt.zero_grad(set_to_none=True)
        net(ids, labels=ids).loss.backward()
        opt.step()

    out = {}
    for setting in ("off", "on"):
        if setting == "on":
            enable_gradient_checkpointing(net)
        train_step()
        timer = benchmark.Timer(stmt="train_step()", globals={"train_step": train_step},
                                label=f"{model} {recipe} step", sub_label=f"gradient checkpointing {setting}",
                                num_threads=torch.get_num_threads())
        out[setting] = timer.blocked_autorange(min_run_time=min_run_time)
    return out
