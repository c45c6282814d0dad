"""One small training run, described by a :class:`RunSpec`, that every rank builds the same way.

The multi-process chapter compares a run under DDP or FSDP with the same run in one process;
:func:`prepare_run` is the one place both build it (model, tokenizer, examples, config), so the
comparison differs only in how many processes share each batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_lab.corpus.task import make_split
from lora_lab.finetune.models import load_tokenizer
from lora_lab.finetune.recipe import prepare_model
from lora_lab.finetune.trainer import TrainConfig, train
from lora_lab.lora.layer import LoraConfig
from lora_lab.memory.predict import RECIPES


@dataclass(frozen=True)
class RunSpec:
    """A chapter-05 recipe run small enough for tests: ``recipe`` (``"qlora"``, ``"lora"``,
    ``"full"``) on ``model``, ``steps`` AdamW steps of a global batch of ``batch_size`` drawn from
    ``train_examples`` story questions. ``lora_dropout`` is 0 so that the split batch draws no
    different dropout masks."""

    model: str = "data/lab-gpt2"
    recipe: str = "lora"
    steps: int = 3
    batch_size: int = 16
    train_examples: int = 64
    r: int = 8
    lora_alpha: float = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    lr: float = 5e-3
    warmup_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {self.recipe!r}")
        if isinstance(self.train_examples, bool) or not isinstance(self.train_examples, int) \
                or self.train_examples < 1:
            raise ValueError(f"train_examples must be an integer >= 1, got {self.train_examples!r}")
        self.train_config()  # validates steps, batch_size, lr, ...

    def lora_config(self) -> LoraConfig | None:
        return None if self.recipe == "full" else LoraConfig(r=self.r, lora_alpha=self.lora_alpha,
                                                             target_modules=self.target_modules)

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, seed=self.seed)


def prepare_run(spec: RunSpec, model=None):
    """``(model, tokenizer, examples, train_config)`` for ``spec`` on the CPU; ``model`` replaces
    :func:`lora_lab.finetune.recipe.prepare_model`'s (a QLoRA base built another way)."""
    if model is None:
        model = prepare_model(spec.model, spec.recipe, lora_config=spec.lora_config(), device="cpu",
                              seed=spec.seed)
    return model, load_tokenizer(spec.model), make_split("train", spec.train_examples, seed=spec.seed), \
        spec.train_config()


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Every trainable weight by name, as full CPU tensors (an FSDP shard gathered from all
    ranks: call it on every rank; a DDP wrapper's ``module.`` prefix dropped)."""
    inner = getattr(model, "module", model)
    out = {}
    for name, p in inner.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = full.detach().cpu().clone()
    return out


def run_single(spec: RunSpec) -> dict:
    """``spec`` in this one process: ``{"trainable": trainable_state, "losses": [...]}``."""
    model, tokenizer, examples, config = prepare_run(spec)
    result = train(model, tokenizer, examples, config, progress=False)
    return {"trainable": trainable_state(model), "losses": result.losses}
