"""One fine-tuning experiment from a small frozen config, returned as a JSON-able record.

    config = ExperimentConfig(task="cipher", k=8, r=4, lora_alpha=16, lr=5e-3, seed=1)
    record = run_experiment(config)
    record["metric"], record["metric_se"]    # held-out exact match and its binomial SE

A record holds what the experiments chapter plots and judges: the config, the training
loss per step (the learning curve), the held-out exact match p on n examples with
SE = sqrt(p (1 - p) / n), the held-out *pretraining-story* loss (mean NLL per token of
stories the base model never saw) before and after fine-tuning (forgetting), the
relative size of the update ‖ΔW‖_F / ‖W‖_F per adapted layer, wall time, library
versions and the git commit. Everything is seeded by ``config.seed``: adapter init,
batch order and dropout; the held-out sets are the same for every seed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from lora_lab.corpus.stories import iter_corpus
from lora_lab.corpus.task import make_split
from lora_lab.experiments.tasks import MIN_K, make_cipher_split
from lora_lab.finetune.evaluate import evaluate_task, perplexity
from lora_lab.finetune.models import load_model, load_tokenizer
from lora_lab.finetune.trainer import OPTIMIZERS as TRAIN_OPTIMIZERS
from lora_lab.finetune.trainer import TrainConfig, collate, encode_examples, train
from lora_lab.lora.baselayer import get_weight, is_wrappable
from lora_lab.lora.io import save_adapter
from lora_lab.lora.layer import LoraConfig, lora_layers
from lora_lab.memory.measure import apply_recipe
from lora_lab.memory.predict import RECIPES
from lora_lab.quant.linear4bit import quantize_model

TASKS = ("qa", "cipher")
QUANT_TYPES = ("nf4", "fp4", "int4")
#: named target sets of a GPT-2 block (lists follow PEFT's rule: exact name or ".suffix")
TARGETS = {
    "all-linear": "all-linear",
    "attention": ("c_attn", "attn.c_proj"),
    "mlp": ("c_fc", "mlp.c_proj"),
    "attn-qkv": ("c_attn",),
}
INITS = {"kaiming": True, "gaussian": "gaussian", "random": False}  # -> init_lora_weights
OPTIMIZERS = tuple(o for o in TRAIN_OPTIMIZERS if not o.startswith("paged"))  # those that run on CPU
STORY_START = 3_000_000  # the shipped model was pretrained on stories 0 .. 2,999,999
MODEL = "data/lab-gpt2"
VERSION_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "numpy")


@dataclass(frozen=True)
class ExperimentConfig:
    """What one experiment trains and measures (validated; errors name the field).

    Args:
        task: "qa" (chapter 05's question format) or "cipher" (answer with π(name), K names).
        k: the cipher's number of names (cipher only; ignored and stored as 0 for "qa").
        recipe: "lora" (fp32 base), "qlora" (4-bit base) or "full" (every weight trains).
        quant_type: the 4-bit codebook of a "qlora" base: "nf4", "fp4" or "int4".
        r, lora_alpha, use_rslora: the adapter (scaling = lora_alpha / r, or / sqrt(r)).
        targets: a key of :data:`TARGETS` ("all-linear", "attention", "mlp", "attn-qkv").
        init: "kaiming" (PEFT's default: A Kaiming-uniform, B = 0), "gaussian"
            (A ~ N(0, (1/r)²), B = 0) or "random" (A and B both random).
        lr, steps, batch_size, warmup_steps: the schedule of :func:`lora_lab.finetune.trainer.train`.
        optimizer: "adamw" or "sgd" (plain SGD, to contrast α under Adam and SGD).
        seed: seeds init, batch order and dropout.
        train_examples, eval_examples: sizes of the training pool and held-out set.
        story_examples: held-out pretraining stories scored before/after.
    """

    task: str = "qa"
    k: int = 0
    recipe: str = "lora"
    quant_type: str = "nf4"
    r: int = 8
    lora_alpha: float = 16.0
    use_rslora: bool = False
    targets: str = "all-linear"
    init: str = "kaiming"
    lr: float = 5e-3
    steps: int = 80
    batch_size: int = 8
    warmup_steps: int = 8
    optimizer: str = "adamw"
    seed: int = 0
    train_examples: int = 2000
    eval_examples: int = 200
    story_examples: int = 64

    def __post_init__(self):
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {tuple(allowed)}, got {name}={getattr(self, name)!r}")

        choice("task", TASKS)
        choice("recipe", RECIPES)
        choice("quant_type", QUANT_TYPES)
        choice("targets", TARGETS)
        choice("init", INITS)
        choice("optimizer", OPTIMIZERS)
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"use_rslora must be True or False, got use_rslora={self.use_rslora!r}")
        for name, low in (("r", 1), ("steps", 1), ("batch_size", 1), ("train_examples", 1),
                          ("eval_examples", 1), ("story_examples", 1), ("warmup_steps", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {name}={v!r}")
        if self.task == "cipher":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < MIN_K:
                raise ValueError(f"k must be an integer >= {MIN_K} for task='cipher', got k={self.k!r}")
        elif self.k != 0:
            object.__setattr__(self, "k", 0)
        for name in ("lora_alpha", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {name}={v!r}")
            object.__setattr__(self, name, float(v))
        if self.lr > 1:
            raise ValueError(f"lr must be in (0, 1], got lr={self.lr!r}")

    @property
    def id(self) -> str:
        """A stable 12-hex-digit name of this config (same fields, same id, on any machine)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        """The config stored in a record (unknown keys are an error, missing ones take defaults)."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if "method" in extra:  # records written before the field was renamed
            raise ValueError("config field 'method' is now called 'recipe' (and ids changed with it); "
                             "re-run the sweep or rename the key in the record")
        if extra:
            raise ValueError(f"unknown experiment config field(s) {extra}; known: {sorted(known)}")
        return cls(**d)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, target_modules=TARGETS[self.targets],
                          use_rslora=self.use_rslora, init_lora_weights=INITS[self.init])


def binomial_se(p: float, n: int) -> float:
    """Standard error of an exact-match rate p measured on n independent examples."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def datasets(config: ExperimentConfig):
    """(train, eval) examples of the config's task (deterministic; eval same for every seed)."""
    if config.task == "qa":
        return (make_split("train", config.train_examples, seed=config.seed),
                make_split("eval", config.eval_examples))
    return (make_cipher_split("train", config.train_examples, config.k),
            make_cipher_split("eval", config.eval_examples, config.k))


def build_model(config: ExperimentConfig, *, device: str = "cpu"):
    """The shipped GPT-2 ready to train as ``config`` says (fp32 compute; 4-bit base for qlora).

    The 4-bit base uses lora_lab's layer, which takes all three codebooks (bitsandbytes
    has no int4); its NF4/FP4 bytes equal bitsandbytes' (chapter 03).
    """
    model = load_model(MODEL, None, device=device, compute_dtype=torch.float32)
    if config.recipe == "qlora":  # quantized here, so that apply_recipe keeps this 4-bit base
        quantize_model(model, "all-linear", codebook=config.quant_type, blocksize=64, double_quant=True,
                       compute_dtype=torch.float32)
    lora_config = None if config.recipe == "full" else config.lora_config()
    return apply_recipe(model, config.recipe, lora_config, generator=torch.Generator().manual_seed(config.seed))


def story_loss(model, tokenizer, n: int = 64) -> float:
    """Mean NLL per token of ``n`` held-out pretraining stories (log of their perplexity)."""
    return math.log(perplexity(model, tokenizer, list(iter_corpus(n, start=STORY_START))))


def _weights(model) -> dict[str, torch.Tensor]:
    """The dense weight (out, in) of every block linear, as W (dequantized for 4-bit bases)."""
    out = {}
    for name, module in model.named_modules():
        if ".h." in f".{name}" and is_wrappable(module) and not name.endswith("lm_head"):
            out[name] = get_weight(module).detach().float().clone()
    return out


def update_norms(model, before: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """‖ΔW‖_F / ‖W‖_F per adapted layer: ΔW = B A · scaling for LoRA layers, or the change of
    the weight since ``before`` (full fine-tuning)."""
    if before is not None:
        now = _weights(model)
        return {n: float((now[n] - w).norm() / w.norm()) for n, w in before.items()}
    return {n: float(layer.delta_weight().detach().float().norm() / get_weight(layer.base_layer).float().norm())
            for n, layer in lora_layers(model)}


def delta_spectra(model, before: dict[str, torch.Tensor], top: int = 64) -> dict[str, list[float]]:
    """Singular values of ΔW (largest first, the top ``top``) per block linear (full fine-tuning)."""
    now = _weights(model)
    return {n: [round(float(s), 6) for s in torch.linalg.svdvals(now[n] - w)[:top]] for n, w in before.items()}


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


_BASE_CACHE: dict[tuple, float] = {}


def run_experiment(config: ExperimentConfig, *, tokenizer=None, progress: bool = False,
                   save_adapter_to: str | os.PathLike | None = None, on_step=None) -> dict:
    """Train and measure one experiment; returns its record (a JSON-able dict, see module doc).

    Args:
        config: :class:`ExperimentConfig`.
        tokenizer: the shipped tokenizer (loaded if None).
        progress: tqdm bar over the steps.
        save_adapter_to: also write the trained adapter there (PEFT format, safetensors).
        on_step: called as ``on_step(step, loss)`` after every step; raising from it stops the
            run (the exception propagates; nothing is recorded).
    """
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    t0 = time.time()
    tokenizer = tokenizer or load_tokenizer(MODEL)
    train_set, eval_set = datasets(config)
    model = build_model(config)
    base_key = (config.recipe == "qlora" and config.quant_type, config.story_examples)
    if base_key not in _BASE_CACHE:  # the base (after quantization) is the same for every seed
        _BASE_CACHE[base_key] = story_loss(model, tokenizer, config.story_examples) \
            if config.init != "random" or config.recipe == "full" else None
    before_loss = _BASE_CACHE[base_key]
    if config.init == "random" and config.recipe != "full":  # B ≠ 0: the model already moved
        before_loss = story_loss(model, tokenizer, config.story_examples)
    before = _weights(model) if config.recipe == "full" else None
    train_config = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                               warmup_steps=min(config.warmup_steps, config.steps - 1), seed=config.seed,
                               optimizer=config.optimizer)
    step_times: list[float] = []
    with torch.no_grad():  # the loss before any update (init matters here: B = 0 or not)
        enc = encode_examples(tokenizer, train_set[:64])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model.eval()
        step_loss0 = float(model(**collate(enc, pad, "cpu")).loss)
    t_train = time.time()
    result = train(model, tokenizer, train_set, train_config, progress=progress,
                   step_callback=_timer(step_times, on_step))
    train_seconds = time.time() - t_train
    score = evaluate_task(model, tokenizer, eval_set, max_new_tokens=4)
    after_loss = story_loss(model, tokenizer, config.story_examples)
    record = {
        "id": config.id,
        "config": asdict(config),
        "metric": score.exact_match,
        "metric_se": binomial_se(score.exact_match, len(eval_set)),
        "leading_match": score.leading_match,
        "n_eval": len(eval_set),
        "loss_at_init": round(step_loss0, 6),
        "story_loss_before": round(before_loss, 6),
        "story_loss_after": round(after_loss, 6),
        "curve": [round(x, 5) for x in result.losses],
        "update_norms": {n: round(v, 6) for n, v in update_norms(model, before).items()},
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds": round(time.time() - t0, 2),
        "train_seconds": round(train_seconds, 2),
        "step_seconds_median": round(sorted(step_times)[len(step_times) // 2], 4) if step_times else None,
        "versions": versions(),
        "commit": _commit(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if config.recipe == "full":
        record["delta_spectra"] = delta_spectra(model, before)
    if save_adapter_to is not None and config.recipe != "full":
        save_adapter(model, save_adapter_to, config.lora_config(), base_model_name_or_path=MODEL)
    return record


def _timer(step_times: list[float], on_step):
    last = [time.perf_counter()]

    def callback(step: int, loss: float) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        if on_step is not None:
            on_step(step, loss)

    return callback
