"""The chapter's variants runs: LoRA, PiSSA, LoftQ and DoRA on one NF4 base, same adapter and schedule.

    python -m lora_lab.adapters.variants_run run            # the runs data/adapters/variants.jsonl lacks
    python -m lora_lab.adapters.variants_run run --lrs 0.002  # only one learning rate of the sweep
    python -m lora_lab.adapters.variants_run list           # what is recorded
    python -m lora_lab.adapters.variants_run rerun <id>     # re-run one record, print both

Each variant trains chapter 07's cipher adapter (:func:`lora_lab.adapters.pair.adapter_config`:
K = 16 cipher, r = 8, lora_alpha = 16, all-linear, 80 steps of 8, one seed each of
:data:`~lora_lab.adapters.pair.SEEDS`) at each learning rate of :data:`LRS` (the chapter's
comparison is at the adapter's own lr, :data:`CHAPTER_LR` = 5e-3; the lower two ask whether a
variant needs a smaller step) in the QLoRA setting (NF4 blocks of 64, double
quantization, fp32 compute; chapter 06's ``qlora`` base). Chapter 06's records decide the task:
on QA every rank from 4 up, and full fine-tuning, reach the same exact match (it saturates),
while on the K = 16 cipher LoRA stops far below full fine-tuning and the init moves the result.

- ``"lora"``: PEFT's default init (A Kaiming-uniform, B = 0) on the NF4 base.
- ``"pissa"``, ``"loftq"``: initialized on the *float* weights (PiSSA: A, B from the top r
  singular vectors, base = the residual; LoftQ, one iteration: base = NF4(W − scaling·B A) and
  B A from the SVD of what NF4 missed); the bases are quantized after.
- ``"dora"``: the default init plus DoRA's magnitude, computed on the NF4 base (PEFT's order
  for a 4-bit model).

A record holds chapter 06's keys (``config`` is the :class:`ExperimentConfig`'s, the variant
is ``record["variant"]``; the id hashes both) plus ``init_error``: the error each variant
starts from, ‖W − W_eff‖_F over every adapted layer together (the square root of the sum of
squares), with W the float weight and W_eff the weight the model computes with at step 0
(``layer.merged_weight()``: W_dq + scaling·B A, DoRA's magnitude included), and
``init_error_rel`` = that / ‖W‖_F. Records are appended atomically one by one: an interrupted
run keeps what it finished and a restarted one skips it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.utils import benchmark

from lora_lab.adapters.pair import RESULTS, SEEDS, adapter_config, nf4_base
from lora_lab.experiments.analysis import Point, points
from lora_lab.experiments.engine import MODEL, ExperimentConfig, binomial_se, datasets, versions
from lora_lab.experiments.sweep import append_record, read_records
from lora_lab.finetune.evaluate import evaluate_task
from lora_lab.finetune.models import load_model, load_tokenizer
from lora_lab.finetune.trainer import TrainConfig, collate, encode_examples, train
from lora_lab.lora import add_lora
from lora_lab.lora.baselayer import get_weight, select_modules
from lora_lab.lora.layer import LoraConfig, changes_base, lora_layers
from lora_lab.quant.linear4bit import FrozenLinear4bit

TASK = "cipher"  # the adapter of chapter 07 the variants train (pair.TASKS key)
#: variant -> the LoraConfig fields it sets on top of the chapter's adapter config
VARIANTS = {
    "lora": {},
    "pissa": {"init_lora_weights": "pissa"},
    "loftq": {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 1}},
    "dora": {"use_dora": True},
}
LRS = (1e-3, 2e-3, 5e-3)  # the learning rates every variant × seed is run at
CHAPTER_LR = adapter_config(TASK, 0).lr  # the adapter's own lr: the chapter's main comparison
NF4 = dict(codebook="nf4", blocksize=64, double_quant=True, compute_dtype=torch.float32)  # nf4_base's


def variants_path(folder: str | Path | None = None) -> Path:
    return Path(folder or RESULTS) / "variants.jsonl"


def check_variant(variant) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got variant={variant!r}")
    return variant


def variant_lora_config(variant: str, config: ExperimentConfig) -> LoraConfig:
    """``config``'s adapter (r, lora_alpha, targets, ...) with ``variant``'s init / DoRA."""
    return replace(config.lora_config(), **VARIANTS[check_variant(variant)])


def variant_id(variant: str, config: ExperimentConfig) -> str:
    """A stable 12-hex-digit name of (variant, config)."""
    key = {"variant": check_variant(variant), "config": asdict(config)}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def build_variant(variant: str, config: ExperimentConfig, *, model_path: str | Path = MODEL):
    """(model, float weights): the shipped GPT-2 on an NF4 base with ``variant``'s adapter (A drawn
    from ``config.seed`` where the init is random), and {layer: W (out, in)} of every adapted layer
    before anything changed it."""
    lora_config = variant_lora_config(variant, config)
    model = load_model(model_path, None, device="cpu", compute_dtype=torch.float32)
    weights = {n: get_weight(model.get_submodule(n)).detach().float().clone()
               for n in select_modules(model, lora_config.target_modules)}
    generator = torch.Generator().manual_seed(config.seed)
    if not changes_base(lora_config.init_lora_weights):  # quantize first, as chapter 06's qlora
        model = nf4_base(model=model)
        add_lora(model, lora_config, generator=generator)
        return model, weights
    add_lora(model, lora_config, generator=generator)  # PiSSA / LoftQ need the float weight
    new = {f"{n}.base_layer": FrozenLinear4bit.from_linear(layer.base_layer, **NF4) for n, layer in lora_layers(model)}
    for name, layer in new.items():
        model.set_submodule(name, layer)
    return model, weights


@torch.no_grad()
def init_error(model, weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(‖W − W_eff‖_F, ‖W − W_eff‖_F / ‖W‖_F) over every adapted layer together: W_eff is the
    weight the layer computes with (base + adapter, DoRA's magnitude included)."""
    err = norm = 0.0
    for name, layer in lora_layers(model):
        w = weights[name]
        err += float((w - layer.merged_weight().float()).pow(2).sum())
        norm += float(w.pow(2).sum())
    return err ** 0.5, (err / norm) ** 0.5


def run_variant(variant: str, config: ExperimentConfig, *, tokenizer=None, progress: bool = False,
                model_path: str | Path = MODEL) -> dict:
    """Train and measure ``variant`` with ``config`` (its task, schedule, seed); returns the record."""
    t0 = time.time()
    tokenizer = tokenizer or load_tokenizer(model_path)
    train_set, eval_set = datasets(config)
    model, weights = build_variant(variant, config, model_path=model_path)
    error, rel = init_error(model, weights)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    with torch.no_grad():  # the loss before any update, on the batch chapter 06 uses
        loss0 = float(model(**collate(encode_examples(tokenizer, train_set[:64]), pad, "cpu")).loss)
    stamps = [time.perf_counter()]
    t_train = time.time()
    result = train(model, tokenizer, train_set, TrainConfig(
        steps=config.steps, batch_size=config.batch_size, lr=config.lr, seed=config.seed, optimizer=config.optimizer,
        warmup_steps=min(config.warmup_steps, config.steps - 1)), progress=progress,
        step_callback=lambda step, loss: stamps.append(time.perf_counter()))
    train_seconds = time.time() - t_train
    score = evaluate_task(model, tokenizer, eval_set, max_new_tokens=4)
    steps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return {
        "id": variant_id(variant, config),
        "variant": variant,
        "config": asdict(config),
        "metric": score.exact_match,
        "metric_se": binomial_se(score.exact_match, len(eval_set)),
        "n_eval": len(eval_set),
        "init_error": round(error, 6),
        "init_error_rel": round(rel, 8),
        "loss_at_init": round(loss0, 6),
        "curve": [round(x, 5) for x in result.losses],
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_seconds_median": round(steps[len(steps) // 2], 4) if steps else None,
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.time() - t0, 2),
        "versions": versions(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def step_seconds(model, batch: dict, *, min_run_time: float = 0.5) -> float:
    """Median seconds of one training step's forward + backward on ``batch`` (a collated batch with
    labels), torch.utils.benchmark's ``blocked_autorange``; gradients cleared after each step."""
    def step():
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    return benchmark.Timer("step()", globals={"step": step}, num_threads=1).blocked_autorange(
        min_run_time=min_run_time).median


def check_lr(lr) -> float:
    if lr not in LRS:
        raise ValueError(f"lr must be one of {LRS}, got {lr!r}")
    return lr


def variant_configs(variants=tuple(VARIANTS), seeds=SEEDS, lrs=LRS) -> list[tuple[str, ExperimentConfig]]:
    """Every (variant, config) the chapter records: each lr × seed × variant, chapter 07's cipher adapter."""
    return [(check_variant(v), replace(adapter_config(TASK, s), lr=check_lr(lr))) for lr in lrs for s in seeds
            for v in variants]


def run_variants(variants=tuple(VARIANTS), seeds=SEEDS, lrs=LRS, *, folder: str | Path | None = None,
                 progress: bool = True, todo: list[tuple[str, ExperimentConfig]] | None = None) -> list[dict]:
    """Run every (variant, seed) not yet in variants.jsonl; returns the new records.

    Args:
        todo: run these (variant, config) pairs instead (tests); recorded in the same place.
    """
    path = variants_path(folder)
    done = {r["id"] for r in read_records(path)}
    tokenizer = load_tokenizer(MODEL)
    new = []
    for variant, config in variant_configs(variants, seeds, lrs) if todo is None else todo:
        if variant_id(variant, config) in done:
            continue
        record = run_variant(variant, config, tokenizer=tokenizer, progress=progress)
        append_record(path, record)
        new.append(record)
    return new


def variant_records(folder: str | Path | None = None) -> list[dict]:
    """The committed variants records (one per variant and seed)."""
    return read_records(variants_path(folder))


def variant_points(records: list[dict], value="metric", *, lr: float = CHAPTER_LR) -> dict[str, Point]:
    """{variant: its point at learning rate ``lr``} over seeds (chapter 06's mean ± se; the binomial
    floor for "metric"); ``value`` is a record key or a function of a record, as
    :func:`lora_lab.experiments.analysis.points`."""
    check_lr(lr)
    out = {}
    for v in VARIANTS:
        found = points([r for r in records if r["variant"] == v and r["config"]["lr"] == lr], value)
        if len(found) > 1:
            raise ValueError(f"variant {v!r} has records of {len(found)} different configs; expected one")
        out.update({v: found[0]} if found else {})
    return out


def rerun(record_id: str, folder: str | Path | None = None) -> tuple[dict, dict]:
    """(committed record, the same run again) for the record named ``record_id``."""
    found = [r for r in variant_records(folder) if r["id"] == record_id]
    if not found:
        raise ValueError(f"no variants record with id={record_id!r} in {variants_path(folder)}")
    return found[0], run_variant(found[0]["variant"], ExperimentConfig.from_dict(found[0]["config"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.adapters.variants_run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("run", "list", "rerun"))
    parser.add_argument("id", nargs="?", help="record id (rerun)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS), choices=list(LRS))
    parser.add_argument("--folder", default=None, help="results folder (default: data/adapters)")
    args = parser.parse_args(argv)
    if args.stage == "run":
        print(f"{len(run_variants(args.variants, args.seeds, args.lrs, folder=args.folder))} new records")
    elif args.stage == "rerun":
        old, new = rerun(args.id, args.folder)
        for key in ("metric", "init_error", "loss_at_init", "trainable"):
            print(f"{key}: committed {old[key]}  rerun {new[key]}")
        same = max(abs(a - b) for a, b in zip(old["curve"], new["curve"]))
        print(f"curve: max |committed - rerun| = {same:.2e} over {len(new['curve'])} steps")
    else:
        for r in variant_records(args.folder):
            print(f"{r['id']}  {r['variant']:6s} lr {r['config']['lr']:g} seed {r['config']['seed']}  "
                  f"metric {r['metric']:.3f}  "
                  f"init_error_rel {r['init_error_rel']:.4f}  loss_at_init {r['loss_at_init']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
