"""The chapter-05 QLoRA recipe through the trainers practitioners use: TRL's ``SFTTrainer``
(``peft_config`` + a ``BitsAndBytesConfig`` NF4 + double-quant base) and transformers' ``Trainer``
(a PEFT model), beside lora_lab's own loop (:func:`lora_lab.experiments.engine.run_experiment`).

All three train the same adapters (r=8, lora_alpha=16, all-linear, dropout 0) on the same QA
examples (:func:`lora_lab.experiments.engine.datasets`) with the same AdamW, learning rate, warm-up
plus cosine schedule, gradient clipping, batch size and steps, on CPU in fp32, and are scored by
the same held-out exact match (:func:`lora_lab.finetune.evaluate.evaluate_task`). What differs is
what the trainers choose for you: the batch order (their seeded sampler), the warm-up's first
step (transformers' starts at lr 0, lora_lab's at lr/warmup), and the 4-bit base (bitsandbytes'
``Linear4bit`` here, lora_lab's equal-bytes NF4 layer in the engine). TRL 1.13 casts QLoRA adapters
to bf16 (the paper's GPU recipe); they are cast back to fp32 here so that the three runs differ
only in the trainer. :data:`TRAINER_ARGUMENTS` maps each argument to the part of the course that
explains it.

    record = sft_trainer_run(seed=0, steps=80)     # like run_experiment's record
    record["metric"], record["metric_se"]          # held-out exact match and its binomial SE

``python -m lora_lab trainers`` (or ``python -m lora_lab.distributed.trainers``) writes
:data:`TRAINERS_FILE` (3 seeds per trainer).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import datasets as datasets_lib
import peft
import torch
import transformers
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from lora_lab._util import atomic_write_bytes, atomic_write_text
from lora_lab.experiments.engine import MODEL, ExperimentConfig, binomial_se, datasets, run_experiment, versions
from lora_lab.finetune.evaluate import evaluate_task
from lora_lab.finetune.models import load_model, load_tokenizer
from lora_lab.finetune.trainer import collate, encode_examples
from lora_lab.lora.io import CONFIG_NAME, WEIGHTS_NAME

#: the chapter-05 QLoRA recipe as chapter 06's engine spells it (lora_lab's loop runs exactly this)
RECIPE = ExperimentConfig(task="qa", recipe="qlora", quant_type="nf4", r=8, lora_alpha=16.0, targets="all-linear",
                          init="kaiming", lr=5e-3, steps=80, batch_size=8, warmup_steps=8, optimizer="adamw")
TRAINERS = ("sft", "trainer", "lora_lab")  # TRL's SFTTrainer, transformers' Trainer, lora_lab's train()
MIN_LR_RATIO = 0.1  # lora_lab.finetune.trainer.TrainConfig's default: cosine decays to lr / 10
MAX_GRAD_NORM = 1.0  # TrainConfig's default, transformers' default
FEW_POINTS = 0.05  # "within a few points": 5 points of exact match
TRAINERS_FILE = Path(__file__).resolve().parents[2] / "data" / "trainers" / "trainers.jsonl"
VERSION_PACKAGES = ("trl", "accelerate", "datasets")
# transformers 5 renamed gradient_checkpointing (kept as a deprecated alias) to activation_checkpointing
CHECKPOINTING = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                     if name in transformers.TrainingArguments.__dataclass_fields__)


def bnb_config() -> transformers.BitsAndBytesConfig:
    """QLoRA's 4-bit base as transformers asks for it: NF4 (say so: bitsandbytes' default is
    fp4), double quantization, fp32 compute on CPU. :func:`lora_lab.finetune.models.load_model`
    with ``quantization="nf4"`` builds exactly this."""
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)


def load_base(config: ExperimentConfig = RECIPE):
    """The shipped GPT-2 with its block linears in bitsandbytes' 4 bits (:func:`bnb_config`), on CPU."""
    quant = bnb_config()
    return load_model(MODEL, quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant, "bitsandbytes",
                      compute_dtype=quant.bnb_4bit_compute_dtype, device="cpu")


def peft_lora_config(config: ExperimentConfig = RECIPE) -> peft.LoraConfig:
    """PEFT's ``LoraConfig`` of ``config``'s adapters (the same fields as lora_lab's LoraConfig)."""
    wanted = {"recipe": "qlora", "quant_type": "nf4", "targets": "all-linear", "init": "kaiming", "use_rslora": False,
              "optimizer": "adamw"}
    got = {name: getattr(config, name) for name in wanted}
    if got != wanted:
        raise ValueError(f"the trainers run the QLoRA recipe ({wanted}); other fields may change, got "
                         + ", ".join(f"{k}={v!r}" for k, v in got.items() if v != wanted[k]))
    return peft.LoraConfig(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                           bias="none", init_lora_weights=True, task_type="CAUSAL_LM")


def training_arguments(trainer: str, config: ExperimentConfig, out_dir: str | os.PathLike, *,
                       progress: bool = False, **overrides):
    """``SFTConfig`` (trainer "sft") or ``TrainingArguments`` ("trainer") for ``config``'s
    schedule on CPU, fp32, logging every step, saving nothing (the adapter is saved after).

    ``overrides`` replace single arguments (e.g. ``optim="paged_adamw_8bit"``)."""
    kwargs = dict(output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, seed=config.seed,
                  max_steps=config.steps, per_device_train_batch_size=config.batch_size,
                  gradient_accumulation_steps=1, learning_rate=config.lr, weight_decay=0.0,
                  max_grad_norm=MAX_GRAD_NORM, optim="adamw_torch",
                  warmup_steps=min(config.warmup_steps, config.steps - 1),
                  lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATIO},
                  logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=not progress, push_to_hub=False, dataloader_num_workers=0)
    kwargs[CHECKPOINTING] = False  # TRL's default is True
    if trainer == "sft":
        kwargs.update(completion_only_loss=True, packing=False, dataset_num_proc=None)
        return SFTConfig(**{**kwargs, **overrides})
    if trainer == "trainer":
        kwargs.update(remove_unused_columns=False, label_names=["labels"])
        return transformers.TrainingArguments(**{**kwargs, **overrides})
    raise ValueError(f"trainer must be 'sft' or 'trainer' (lora_lab's loop takes no TrainingArguments), "
                     f"got trainer={trainer!r}")


def sft_dataset(tokenizer, examples) -> Dataset:
    """TRL's prompt-completion format: the prompt starts with EOS (the shipped model's
    start-of-document marker, as :func:`lora_lab.finetune.trainer.encode_examples`); SFTTrainer
    appends EOS to the completion and masks the prompt out of the loss."""
    return Dataset.from_list([{"prompt": tokenizer.eos_token + e.prompt, "completion": e.completion}
                              for e in examples])


def token_dataset(tokenizer, examples) -> Dataset:
    """lora_lab's (input_ids, labels) per example (:func:`encode_examples`), for transformers' Trainer."""
    return Dataset.from_list([{"input_ids": x, "labels": y} for x, y in encode_examples(tokenizer, examples)])


class _Collator:
    """transformers' ``data_collator`` over lora_lab's :func:`collate` (right padding, -100 labels)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features):
        return collate([(f["input_ids"], f["labels"]) for f in features], self.pad_id, "cpu")


def build_trainer(trainer: str, config: ExperimentConfig, out_dir: str | os.PathLike, *, tokenizer=None,
                  train_set=None, progress: bool = False, **overrides):
    """A ready-to-``.train()`` ``SFTTrainer`` ("sft") or ``Trainer`` ("trainer") on the 4-bit base.

    "sft" hands TRL the base model and ``peft_config``; "trainer" does what a ``Trainer`` user
    writes: ``prepare_model_for_kbit_training`` then ``get_peft_model``. Both seed the adapters'
    A initialization with ``config.seed`` (``transformers.set_seed``)."""
    if trainer not in TRAINERS[:2]:
        raise ValueError(f"trainer must be 'sft' or 'trainer', got trainer={trainer!r}")
    tokenizer = tokenizer or load_tokenizer(MODEL)
    train_set = train_set if train_set is not None else datasets(config)[0]
    args = training_arguments(trainer, config, out_dir, progress=progress, **overrides)
    lora = peft_lora_config(config)
    base = load_base(config)
    transformers.set_seed(config.seed)
    if trainer == "sft":
        built = SFTTrainer(model=base, args=args, train_dataset=sft_dataset(tokenizer, train_set),
                           processing_class=tokenizer, peft_config=lora)
        for p in built.model.parameters():  # TRL 1.13 casts a quantized model's adapters to bf16; keep fp32
            if p.requires_grad:
                p.data = p.data.float()
        return built
    model = peft.get_peft_model(peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False), lora)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return transformers.Trainer(model=model, args=args, train_dataset=token_dataset(tokenizer, train_set),
                                data_collator=_Collator(pad))


def save_peft_adapter(model, path: str | os.PathLike) -> Path:
    """PEFT's ``save_pretrained`` files (adapter_config.json, adapter_model.safetensors) of
    ``model``, each written atomically into ``path`` (made first into a temporary folder)."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".trainers-adapter.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):  # weights first: a config never points at missing weights
            atomic_write_bytes(path / name, (Path(tmp) / name).read_bytes())
    return path


def run_trainer(trainer: str, seed: int = 0, steps: int = RECIPE.steps, *, config: ExperimentConfig | None = None,
                adapter_dir: str | os.PathLike | None = None, tokenizer=None, progress: bool = False, **overrides):
    """Train ``config`` (default :data:`RECIPE` with ``seed``, ``steps``) with trainer "sft" or
    "trainer", save the adapter to ``adapter_dir`` (if given), score it; returns (record, the
    trained PEFT model).

    The record has :func:`lora_lab.experiments.engine.run_experiment`'s keys that apply here
    (id, config, metric, metric_se, leading_match, n_eval, curve, trainable, seconds,
    train_seconds, versions, cpu, threads) plus ``trainer``, ``lrs`` and ``arguments``."""
    config = config or replace(RECIPE, seed=seed, steps=steps)
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    t0 = time.time()
    tokenizer = tokenizer or load_tokenizer(MODEL)
    train_set, eval_set = datasets(config)
    bars = datasets_lib.is_progress_bar_enabled()
    with tempfile.TemporaryDirectory(prefix="lora_lab-trainers-") as out_dir:
        if not progress:  # no per-step log lines, no dataset-preparation bars
            datasets_lib.disable_progress_bars()
        try:
            built = build_trainer(trainer, config, out_dir, tokenizer=tokenizer, train_set=train_set,
                                  progress=progress, **overrides)
        finally:
            if bars:
                datasets_lib.enable_progress_bars()
        if not progress:
            built.remove_callback(transformers.PrinterCallback)
        t_train = time.time()
        built.train()
        train_seconds = time.time() - t_train
        leftovers = sorted(p.name for p in Path(out_dir).iterdir())
    if leftovers:  # save_strategy="no": the trainer must not have written checkpoints
        raise RuntimeError(f"{trainer} wrote {leftovers} although save_strategy='no'")
    model = built.model.eval()
    if adapter_dir is not None:
        save_peft_adapter(model, adapter_dir)
    score = evaluate_task(model, tokenizer, eval_set, max_new_tokens=4)
    logs = [entry for entry in built.state.log_history if "loss" in entry]
    args = built.args
    record = {
        "id": config.id,
        "trainer": trainer,
        "config": asdict(config),
        "metric": score.exact_match,
        "metric_se": binomial_se(score.exact_match, len(eval_set)),
        "leading_match": score.leading_match,
        "n_eval": len(eval_set),
        "curve": [round(float(e["loss"]), 5) for e in logs],
        "lrs": [float(e["learning_rate"]) for e in logs],
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter_dtype": str(next(p.dtype for p in model.parameters() if p.requires_grad)).replace("torch.", ""),
        "arguments": {name: _plain(getattr(args, name)) for name in _RECORDED_ARGUMENTS},
        "seconds": round(time.time() - t0, 2),
        "train_seconds": round(train_seconds, 2),
        "versions": {**versions(), **{p: md.version(p) for p in VERSION_PACKAGES}},
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    return record, model


_RECORDED_ARGUMENTS = ("optim", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                       "max_steps", "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm", "bf16",
                       CHECKPOINTING, "seed")


def _plain(value):
    value = getattr(value, "value", value)  # transformers' str enums (OptimizerNames, SchedulerType)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def sft_trainer_run(seed: int = 0, steps: int = RECIPE.steps, **kwargs) -> dict:
    """:func:`run_trainer` with TRL's ``SFTTrainer``; returns the record."""
    return run_trainer("sft", seed, steps, **kwargs)[0]


def hf_trainer_run(seed: int = 0, steps: int = RECIPE.steps, **kwargs) -> dict:
    """:func:`run_trainer` with transformers' ``Trainer``; returns the record."""
    return run_trainer("trainer", seed, steps, **kwargs)[0]


def lora_lab_run(seed: int = 0, steps: int = RECIPE.steps, *, tokenizer=None, progress: bool = False) -> dict:
    """lora_lab's own loop on the same recipe: :func:`run_experiment` of :data:`RECIPE`, tagged
    ``trainer="lora_lab"``."""
    record = run_experiment(replace(RECIPE, seed=seed, steps=steps), tokenizer=tokenizer, progress=progress)
    return {"trainer": "lora_lab", **record}


RUNS = {"sft": sft_trainer_run, "trainer": hf_trainer_run, "lora_lab": lora_lab_run}


def read_records(path: str | os.PathLike = TRAINERS_FILE) -> list[dict]:
    """The records of a trainers JSONL file ([] if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_trainers(path: str | os.PathLike = TRAINERS_FILE, *, seeds=(0, 1, 2), steps: int = RECIPE.steps,
                   trainers=TRAINERS, progress: bool = False, log=print) -> list[dict]:
    """Run every (seed, trainer) not yet in ``path`` and rewrite the file atomically after each
    run (an interrupted run loses at most the run in progress). Returns all records."""
    for name in trainers:
        if name not in RUNS:
            raise ValueError(f"trainers must be among {TRAINERS}, got {name!r}")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be integers >= 0 (at least one), got seeds={seeds!r}")
    records = read_records(path)
    done = {(r["trainer"], r["config"]["seed"], r["config"]["steps"]) for r in records}
    tokenizer = load_tokenizer(MODEL)
    for seed in seeds:
        for name in trainers:
            if (name, seed, steps) in done:
                continue
            record = RUNS[name](seed, steps, tokenizer=tokenizer, progress=progress)
            records.append(record)
            atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            log(f"{name:9s} seed {seed}: exact match {record['metric']:.3f} ± {record['metric_se']:.3f} "
                f"({record['seconds']:.0f} s)")
    return records


@dataclass(frozen=True)
class TrainerSummary:
    """One trainer's held-out exact match over seeds: mean ± SE (= stdev / sqrt(n))."""

    trainer: str
    n: int
    mean: float
    se: float
    seconds: float  # median wall time of a run


@dataclass(frozen=True)
class Agreement:
    """Each trainer's mean beside lora_lab's loop: the gaps (points of exact match), their SE
    (the two SEs combined) and the verdict |gap| <= tolerance."""

    summaries: dict[str, TrainerSummary]
    gaps: dict[str, float]
    gap_se: dict[str, float]
    tolerance: float

    @property
    def agree(self) -> bool:
        return all(abs(g) <= self.tolerance for g in self.gaps.values())

    def verdict(self) -> str:
        lines = [f"{s.trainer:9s} exact match {s.mean:.3f} ± {s.se:.3f} (n = {s.n} seeds)"
                 for s in self.summaries.values()]
        lines += [f"{t} − lora_lab: {100 * g:+.1f} ± {100 * self.gap_se[t]:.1f} points" for t, g in self.gaps.items()]
        word = "within" if self.agree else "NOT within"
        lines.append(f"{word} {100 * self.tolerance:.0f} points of lora_lab's loop")
        return "\n".join(lines)


def summarize(records, *, min_seeds: int = 3) -> dict[str, TrainerSummary]:
    """:class:`TrainerSummary` per trainer in ``records``; each needs ``min_seeds`` distinct seeds of one config."""
    out = {}
    for name in TRAINERS:
        mine = [r for r in records if r["trainer"] == name]
        if not mine:
            continue
        configs = {json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True) for r in mine}
        seeds = {r["config"]["seed"] for r in mine}
        if len(configs) != 1 or len(seeds) != len(mine) or len(mine) < min_seeds:
            raise ValueError(f"trainer {name!r} needs one config run with >= {min_seeds} distinct seeds, "
                             f"got {len(mine)} records, seeds {sorted(seeds)}, {len(configs)} configs")
        metrics = [r["metric"] for r in mine]
        out[name] = TrainerSummary(name, len(mine), statistics.fmean(metrics),
                                   statistics.stdev(metrics) / math.sqrt(len(mine)),
                                   statistics.median(r["seconds"] for r in mine))
    return out


def compare_trainers(records, *, tolerance: float = FEW_POINTS, min_seeds: int = 3) -> Agreement:
    """How far each trainer's mean exact match is from lora_lab's loop (same config, same steps)."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1) (a fraction of exact match), got tolerance={tolerance!r}")
    summaries = summarize(records, min_seeds=min_seeds)
    if "lora_lab" not in summaries or len(summaries) < 2:
        raise ValueError(f"compare_trainers needs lora_lab's records and another trainer's, got {sorted(summaries)}")
    configs = {json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True) for r in records}
    if len(configs) != 1:
        raise ValueError(f"the trainers must run the same config (but the seed) to be compared, got {len(configs)}")
    ref = summaries["lora_lab"]
    others = [t for t in summaries if t != "lora_lab"]
    return Agreement(summaries, {t: summaries[t].mean - ref.mean for t in others},
                     {t: math.hypot(summaries[t].se, ref.se) for t in others}, tolerance)


class TrainerArgument(NamedTuple):
    """One row of :data:`TRAINER_ARGUMENTS`."""

    argument: str   # Owner.field, as a TRL / transformers / PEFT user writes it
    value: object   # the value used in this chapter's runs (CPU)
    lora_lab: str   # the lora_lab object that does or explains the same ("module:attr.attr")
    chapter: str    # the notebook that explains it
    note: str = ""


_CH02, _CH03, _CH04, _CH05, _CH06, _CH08 = ("02_lora_layer.ipynb", "03_quantization.ipynb", "04_memory.ipynb",
                                            "05_qlora_gpt2.ipynb", "06_experiments.ipynb", "08_scaling_out.ipynb")
_TRAIN = "lora_lab.finetune.trainer:TrainConfig"
#: each trainer argument of the runs here -> the piece of the course that explains it
TRAINER_ARGUMENTS: tuple[TrainerArgument, ...] = (
    TrainerArgument("LoraConfig.r", 8, "lora_lab.lora.layer:LoraConfig.r", _CH02, "rank of B A"),
    TrainerArgument("LoraConfig.lora_alpha", 16.0, "lora_lab.lora.layer:LoraConfig.scaling", _CH02,
                    "scaling = lora_alpha / r = 2"),
    TrainerArgument("LoraConfig.lora_dropout", 0.0, "lora_lab.lora.layer:LoraConfig.lora_dropout", _CH02),
    TrainerArgument("LoraConfig.target_modules", "all-linear", "lora_lab.lora.baselayer:ALL_LINEAR", _CH02,
                    "every block linear, not lm_head; chapter 06 compares target sets"),
    TrainerArgument("LoraConfig.bias", "none", "lora_lab.lora.layer:LoraConfig.bias", _CH02),
    TrainerArgument("LoraConfig.init_lora_weights", True, "lora_lab.lora.layer:LoraConfig.init_lora_weights", _CH02,
                    "A Kaiming-uniform, B = 0: the model starts as the base; chapter 06 tests it"),
    TrainerArgument("LoraConfig.task_type", "CAUSAL_LM", "lora_lab.lora.io:infer_task_type", _CH02),
    TrainerArgument("BitsAndBytesConfig.load_in_4bit", True, "lora_lab.quant.linear4bit:quantize_model", _CH03),
    TrainerArgument("BitsAndBytesConfig.bnb_4bit_quant_type", "nf4", "lora_lab.quant.blockwise:nf4_codebook", _CH03,
                    "bitsandbytes' default is fp4: always say nf4"),
    TrainerArgument("BitsAndBytesConfig.bnb_4bit_use_double_quant", True, "lora_lab.quant.blockwise:bits_per_param",
                    _CH03, "absmax constants quantized too: 4.127 instead of 4.5 bits per weight"),
    TrainerArgument("BitsAndBytesConfig.bnb_4bit_compute_dtype", "torch.float32",
                    "lora_lab.finetune.models:default_compute_dtype", _CH05, "bf16 on a GPU"),
    TrainerArgument("prepare_model_for_kbit_training", "use_gradient_checkpointing=False",
                    "lora_lab.memory.measure:apply_recipe", _CH04, "freeze the base, fp32 outside the 4-bit layers"),
    TrainerArgument("TrainingArguments.learning_rate", 5e-3, f"{_TRAIN}.lr", _CH05, "chapter 06 sweeps it"),
    TrainerArgument("TrainingArguments.per_device_train_batch_size", 8, f"{_TRAIN}.batch_size", _CH05),
    TrainerArgument("TrainingArguments.gradient_accumulation_steps", 1, "lora_lab.finetune.trainer:rank_share",
                    _CH08, "batch = per-device × accumulation × processes; activations grow with the per-device part"),
    TrainerArgument("TrainingArguments.max_steps", 80, f"{_TRAIN}.steps", _CH05),
    TrainerArgument("TrainingArguments.warmup_steps", 8, f"{_TRAIN}.warmup_steps", _CH05,
                    "transformers' warm-up starts at lr 0, lora_lab's at lr / warmup_steps"),
    TrainerArgument("TrainingArguments.lr_scheduler_type", "cosine_with_min_lr", "lora_lab.finetune.trainer:lr_at",
                    _CH05, "with lr_scheduler_kwargs min_lr_rate=0.1 = TrainConfig.min_lr_ratio"),
    TrainerArgument("TrainingArguments.weight_decay", 0.0, f"{_TRAIN}.weight_decay", _CH05),
    TrainerArgument("TrainingArguments.max_grad_norm", 1.0, f"{_TRAIN}.max_grad_norm", _CH05),
    TrainerArgument("TrainingArguments.optim", "adamw_torch", "lora_lab.finetune.trainer:make_optimizer", _CH05,
                    "TrainConfig.optimizer='adamw'"),
    TrainerArgument("TrainingArguments.optim (GPU)", "paged_adamw_8bit",
                    "lora_lab.memory.predict:optimizer_state_bytes", _CH04,
                    "QLoRA's choice on a GPU: 8-bit state (memory optimizer 'adamw-8bit'), paged to CPU; on CPU "
                    "bitsandbytes 0.50 warns and runs it unpaged (uint8 state for tensors of >= 4096 elements)"),
    TrainerArgument("TrainingArguments.activation_checkpointing", False, "lora_lab._util:enable_gradient_checkpointing",
                    _CH04, "gradient_checkpointing before transformers 5.x; activations recomputed in backward; "
                    "TRL's default is True"),
    TrainerArgument("TrainingArguments.bf16", False, "lora_lab.memory.predict:DTYPE_BYTES", _CH04,
                    "fp32 on CPU here; TRL's default is True"),
    TrainerArgument("TrainingArguments.seed", 0, f"{_TRAIN}.seed", _CH06, "3 seeds per point, mean ± SE"),
    TrainerArgument("TrainingArguments.logging_steps", 1, "lora_lab.finetune.plots:plot_loss_curves", _CH05,
                    "the loss curve, one value per step (TrainResult.losses)"),
    TrainerArgument("SFTConfig.completion_only_loss", True, "lora_lab.finetune.trainer:encode_examples", _CH05,
                    "labels -100 on the prompt: only the answer and its EOS are learned"),
    TrainerArgument("SFTTrainer.peft_config", "LoraConfig(...)", "lora_lab.lora.layer:add_lora", _CH02,
                    "TRL wraps the model with get_peft_model"),
    TrainerArgument("PeftModel.save_pretrained", "adapter_model.safetensors", "lora_lab.lora.io:load_adapter", _CH02,
                    "the adapter loads in lora_lab with the same outputs"),
)


def resolve_lora_lab(path: str):
    """The object a :data:`TRAINER_ARGUMENTS` ``lora_lab`` entry ("module:attr.attr") names."""
    module, _, attrs = path.partition(":")
    if not module.startswith("lora_lab") or not attrs:
        raise ValueError(f"path must be 'lora_lab.<module>:<attr>[.<attr>]', got path={path!r}")
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write data/trainers/trainers.jsonl: the QLoRA recipe through "
                                     "SFTTrainer, Trainer and lora_lab's loop, several seeds.")
    parser.add_argument("--out", default=str(TRAINERS_FILE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    args = parser.parse_args(argv)
    records = write_trainers(args.out, seeds=tuple(args.seeds), steps=args.steps)
    print(compare_trainers([r for r in records if r["config"]["steps"] == args.steps]).verdict())


if __name__ == "__main__":
    _main()
