"""Two task adapters on one NF4 base: which adapters, where their files are, and how a setting
(base, one adapter, a combination) is scored on both tasks.

    model = load_pair(seed=0)                   # NF4 lab-gpt2 + adapters "qa" and "cipher"
    scores = measure(model, tokenizer, {"kind": "adapter", "adapter": "cipher"}, eval_sets())
    scores["qa"], scores["cipher"]              # held-out exact match on each task

The adapters are chapter 06's ``quant``-grid fine-tunes (r = 8, lora_alpha = 16, all-linear,
80 steps of 8 at lr 5e-3 on an NF4 + double-quantized base), trained and saved by
:mod:`lora_lab.adapters.run` under ``data/adapters/adapters/<record id>/``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lora_lab.experiments.engine import MODEL, ExperimentConfig, datasets
from lora_lab.experiments.sweep import BASE, adapter_path
from lora_lab.finetune.evaluate import evaluate_task
from lora_lab.finetune.models import load_model
from lora_lab.lora import (
    COMBINATION_TYPES,
    adapter_names,
    add_weighted_adapter,
    delete_adapter,
    disable_adapters,
    load_adapter,
    set_adapter,
)
from lora_lab.quant.linear4bit import quantize_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "data" / "adapters"
SEEDS = (0, 1, 2)
#: adapter name -> the task it is trained on (chapter 05's QA format, chapter 06's K = 16 cipher)
TASKS = {"qa": {"task": "qa"}, "cipher": {"task": "cipher", "k": 16}}
KINDS = ("base", "adapter", "combination")
MIX = "mix"  # the name a combination is added under while it is measured


def adapter_config(name: str, seed: int) -> ExperimentConfig:
    """The chapter-06 config that trains adapter ``name`` ("qa" or "cipher") with ``seed``."""
    if name not in TASKS:
        raise ValueError(f"name must be one of {tuple(TASKS)}, got name={name!r}")
    return replace(BASE, **TASKS[name], recipe="qlora", quant_type="nf4", seed=seed)


def adapter_dir(name: str, seed: int, folder: str | Path | None = None) -> Path:
    """The folder (PEFT format) holding adapter ``name`` of ``seed``."""
    return adapter_path(adapter_config(name, seed).id, folder or RESULTS)


def nf4_base(device: str = "cpu", model=None):
    """The shipped GPT-2, its block linears in NF4 + double quantization (lora_lab's 4-bit layer,
    bitsandbytes' bytes; chapter 06's qlora base), fp32 compute; no adapter yet. ``model``: quantize
    this float GPT-2 (in place) instead of loading one."""
    model = load_model(MODEL, None, device=device, compute_dtype=torch.float32) if model is None else model
    return quantize_model(model, "all-linear", codebook="nf4", blocksize=64, double_quant=True,
                          compute_dtype=torch.float32)


def load_pair(seed: int = 0, folder: str | Path | None = None, device: str = "cpu"):
    """One NF4 base holding the committed adapters of ``seed`` as "qa" (active) and "cipher"."""
    model = nf4_base(device)
    for name in TASKS:
        path = adapter_dir(name, seed, folder)
        if not (path / "adapter_model.safetensors").is_file():
            raise ValueError(f"no adapter {name!r} for seed={seed} in {path} "
                             "(python -m lora_lab.adapters.run train makes it)")
        load_adapter(model, path, adapter_name=name)
    return model


def eval_sets(n: int | None = None) -> dict[str, list]:
    """The held-out examples of each task (chapter 06's, the same for every seed): {adapter: examples}."""
    return {name: datasets(replace(adapter_config(name, 0), **({"eval_examples": n} if n else {})))[1]
            for name in TASKS}


def check_setting(setting: dict) -> dict:
    """A setting, validated: {"kind": "base"} | {"kind": "adapter", "adapter": name} |
    {"kind": "combination", "combination_type": "linear"|"cat"|"svd", "weights": [w_qa, w_cipher]}."""
    kind = setting.get("kind") if isinstance(setting, dict) else None
    if kind not in KINDS:
        raise ValueError(f"setting['kind'] must be one of {KINDS}, got setting={setting!r}")
    if kind == "adapter" and setting.get("adapter") not in TASKS:
        raise ValueError(f"setting['adapter'] must be one of {tuple(TASKS)}, got setting={setting!r}")
    if kind == "combination":
        if setting.get("combination_type") not in COMBINATION_TYPES:
            raise ValueError(f"setting['combination_type'] must be one of {COMBINATION_TYPES}, got setting={setting!r}")
        w = setting.get("weights")
        if not isinstance(w, (list, tuple)) or len(w) != len(TASKS):
            raise ValueError(f"setting['weights'] must hold one weight per adapter {tuple(TASKS)}, "
                             f"got setting={setting!r}")
    return setting


def apply_setting(model, setting: dict):
    """Make ``model`` (from :func:`load_pair`) compute ``setting``; returns a context manager
    for the "base" setting (adapters disabled), else None. A combination is added as :data:`MIX`
    (replacing an earlier one) and made active."""
    check_setting(setting)
    if setting["kind"] == "base":
        return disable_adapters(model)
    set_adapter(model, next(iter(TASKS)))
    if MIX in adapter_names(model):
        delete_adapter(model, MIX)
    if setting["kind"] == "adapter":
        set_adapter(model, setting["adapter"])
        return None
    add_weighted_adapter(model, list(TASKS), [float(w) for w in setting["weights"]], MIX,
                         combination_type=setting["combination_type"])
    set_adapter(model, MIX)
    return None


def measure(model, tokenizer, setting: dict, sets: dict[str, list]) -> dict[str, float]:
    """Held-out exact match of ``setting`` on each task of ``sets`` ({task: fraction})."""
    context = apply_setting(model, setting)

    def score():
        return {name: evaluate_task(model, tokenizer, examples, max_new_tokens=4).exact_match
                for name, examples in sets.items()}

    if context is None:
        return score()
    with context:
        return score()
