"""The chapter's committed runs: two adapters per seed on one NF4 base, then every combination.

    python -m lora_lab.adapters.run train     # the adapters data/adapters/train.jsonl lacks
    python -m lora_lab.adapters.run combine   # the settings data/adapters/combine.jsonl lacks
    python -m lora_lab.adapters.run list      # what is recorded

``train``: for each seed of :data:`~lora_lab.adapters.pair.SEEDS`, one adapter per task
(chapter 05's QA format and chapter 06's K = 16 cipher), each trained by chapter 06's engine
(:func:`lora_lab.experiments.engine.run_experiment`, ``recipe="qlora"``, NF4) and saved in
PEFT's format under ``data/adapters/adapters/<record id>/``. The configs are chapter 06's
``quant`` grid points, so the same ids (and metrics) are in ``data/experiments/quant.jsonl``.

``combine``: both adapters of a seed on one NF4 base; held-out exact match on both tasks
(n = 200 each, chapter 06's sets and :func:`lora_lab.finetune.evaluate_task`) for the base
(adapters disabled), each adapter alone, and each combination type of :data:`COMBINATIONS` at
every weight pair of :data:`WEIGHTS`. Records are appended atomically one by one (chapter 06's
JSONL helpers): an interrupted run keeps what it finished and a restarted one skips it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from lora_lab.adapters.pair import RESULTS, SEEDS, TASKS, adapter_config, adapter_dir, eval_sets, load_pair, measure
from lora_lab.experiments.engine import MODEL, ExperimentConfig, binomial_se, run_experiment, versions
from lora_lab.experiments.sweep import adapter_path, append_record, read_records
from lora_lab.finetune.models import load_tokenizer

COMBINATIONS = ("linear", "cat", "svd")
WEIGHTS = (0.0, 0.5, 1.0, 1.5)  # each adapter's weight in a combination


def train_path(folder: str | Path | None = None) -> Path:
    return Path(folder or RESULTS) / "train.jsonl"


def combine_path(folder: str | Path | None = None) -> Path:
    return Path(folder or RESULTS) / "combine.jsonl"


def train_adapters(seeds=SEEDS, *, folder: str | Path | None = None, progress: bool = True,
                   configs: list[ExperimentConfig] | None = None) -> list[dict]:
    """Train (and save) every adapter of ``seeds`` not yet recorded; returns the new records.

    Args:
        configs: train these instead (tests); recorded and saved in the same places.
    """
    folder = Path(folder or RESULTS)
    configs = [adapter_config(n, s) for s in seeds for n in TASKS] if configs is None else configs
    done = {r["id"] for r in read_records(train_path(folder))}
    new = []
    for config in configs:
        if config.id in done and (adapter_path(config.id, folder) / "adapter_model.safetensors").is_file():
            continue
        record = run_experiment(config, progress=progress, save_adapter_to=adapter_path(config.id, folder))
        record["adapter"] = next(n for n, t in TASKS.items() if t["task"] == config.task)
        append_record(train_path(folder), record)
        new.append(record)
    return new


def settings() -> list[dict]:
    """Every setting one seed is measured in: the base, each adapter, each combination × weights."""
    out = [{"kind": "base"}] + [{"kind": "adapter", "adapter": n} for n in TASKS]
    for ctype in COMBINATIONS:
        for w_qa in WEIGHTS:
            for w_cipher in WEIGHTS:
                if w_qa or w_cipher:
                    out.append({"kind": "combination", "combination_type": ctype, "weights": [w_qa, w_cipher]})
    return out


def setting_id(setting: dict, seed: int) -> str:
    """A stable 12-hex-digit name of (setting, seed, the two adapters' config ids)."""
    key = {**setting, "seed": seed, "adapters": {n: adapter_config(n, seed).id for n in TASKS}}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def measure_record(model, tokenizer, setting: dict, seed: int, sets: dict[str, list]) -> dict:
    """Measure ``setting`` on ``model`` (seed ``seed``'s pair) and return its JSON-able record."""
    t0 = time.time()
    scores = measure(model, tokenizer, setting, sets)
    n = {name: len(examples) for name, examples in sets.items()}
    return {
        "id": setting_id(setting, seed),
        "config": {**setting, "seed": seed, "adapters": {name: adapter_config(name, seed).id for name in TASKS}},
        "metrics": scores,
        "metric_se": {name: binomial_se(p, n[name]) for name, p in scores.items()},
        "n_eval": n,
        "seconds": round(time.time() - t0, 2),
        "versions": versions(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def run_combinations(seeds=SEEDS, *, folder: str | Path | None = None, adapters_folder: str | Path | None = None,
                     only: list[dict] | None = None, n_eval: int | None = None, progress: bool = True) -> list[dict]:
    """Measure every setting (or those of ``only``) of ``seeds`` not yet recorded; returns the new records.

    Args:
        folder: where combine.jsonl is (default data/adapters); adapters_folder: where the adapters are.
        n_eval: held-out examples per task (default: chapter 06's 200); tests use fewer.
    """
    from tqdm.auto import tqdm

    path = combine_path(folder)
    done = {r["id"] for r in read_records(path)}
    tokenizer = load_tokenizer(MODEL)
    sets = eval_sets(n_eval)
    new = []
    for seed in seeds:
        todo = [s for s in (only or settings()) if setting_id(s, seed) not in done]
        if not todo:
            continue
        model = load_pair(seed, adapters_folder or folder)
        for setting in tqdm(todo, desc=f"seed {seed}", unit="setting", disable=not progress):
            record = measure_record(model, tokenizer, setting, seed, sets)
            append_record(path, record)
            new.append(record)
    return new


def train_records(folder: str | Path | None = None) -> list[dict]:
    """The committed adapter-training records (chapter 06's record format, plus "adapter")."""
    return read_records(train_path(folder))


def combine_records(folder: str | Path | None = None) -> list[dict]:
    """The committed measurements: one per (seed, setting)."""
    return read_records(combine_path(folder))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.adapters.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("train", "combine", "list"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--folder", default=None, help="results folder (default: data/adapters)")
    args = parser.parse_args(argv)
    if args.stage == "train":
        new = train_adapters(args.seeds, folder=args.folder)
    elif args.stage == "combine":
        new = run_combinations(args.seeds, folder=args.folder)
    else:
        new = []
        for name, recs in (("train", train_records(args.folder)), ("combine", combine_records(args.folder))):
            print(f"{name}: {len(recs)} records")
        print(f"settings per seed: {len(settings())}; adapters: "
              f"{[str(adapter_dir(n, s, args.folder)) for s in args.seeds for n in TASKS]}")
    if args.stage != "list":
        print(f"{len(new)} new records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
