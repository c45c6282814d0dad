"""Named grids of experiments, a resumable sweep runner and committed-record lookup.

    python -m lora_lab sweep --grid rank          # runs what data/experiments/rank.jsonl lacks
    python -m lora_lab sweep --list               # the grids, their sizes and what is done
    python -m lora_lab sweep --rerun 3f2a9c01b7d4 # re-run one committed record, print it

Each finished experiment is appended to ``data/experiments/<grid>.jsonl`` as one JSON
line; the file is rewritten atomically (temp file + rename), so an interrupted sweep
leaves every finished record intact and a restarted one skips them (records are keyed
by the config's :attr:`~lora_lab.experiments.engine.ExperimentConfig.id`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from lora_lab._util import atomic_write_text
from lora_lab.experiments.engine import ExperimentConfig, run_experiment

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "data" / "experiments"
SEEDS = (0, 1, 2)
RANKS = (1, 2, 4, 8, 16, 32, 64)
#: the tasks every section compares: chapter 05's format change and two cipher sizes
TASK_SET = ({"task": "qa"}, {"task": "cipher", "k": 4}, {"task": "cipher", "k": 16})
CIPHER = {"task": "cipher", "k": 16}
BASE = ExperimentConfig()  # r=8, lora_alpha=16, all-linear, lr 5e-3, 80 steps of 8
FULL_LR = 5e-4  # full fine-tuning's default learning rate (swept in the "lr" grid)
LR_GRID = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
FULL_LR_GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3)
EXAMPLES_SEEN = 640  # batch-size grid: batch × steps held fixed (80 × 8)


def _seeded(configs: Iterable[ExperimentConfig]) -> list[ExperimentConfig]:
    out, seen = [], set()
    for c in configs:
        for s in SEEDS:
            x = replace(c, seed=s)
            if x.id not in seen:
                seen.add(x.id)
                out.append(x)
    return out


def _grid_rank():
    for t in TASK_SET:
        for r in RANKS:
            yield replace(BASE, **t, r=r)
        yield replace(BASE, **t, recipe="full", lr=FULL_LR)


def _grid_alpha():
    for r in (1, 4, 16, 64):
        for rule in ("r", "2r", "rslora"):
            alpha = {"r": r, "2r": 2 * r, "rslora": 16}[rule]
            yield replace(BASE, **CIPHER, r=r, lora_alpha=alpha, use_rslora=rule == "rslora")
    for alpha, lr in ((32, 2.5e-3), (8, 1e-2)):  # α·lr held at chapter 05's 16 · 5e-3
        yield replace(BASE, **CIPHER, lora_alpha=alpha, lr=lr)


def _grid_lr():
    for r in (1, 8, 64):
        for lr in LR_GRID:
            yield replace(BASE, **CIPHER, r=r, lr=lr)
    for lr in FULL_LR_GRID:
        yield replace(BASE, **CIPHER, recipe="full", lr=lr)
    for b in (2, 8, 32):  # 320, 80 and 20 steps  # same examples seen, fewer and larger steps
        steps = EXAMPLES_SEEN // b
        for recipe, lr in (("lora", BASE.lr), ("full", FULL_LR)):
            yield replace(BASE, **CIPHER, recipe=recipe, lr=lr, batch_size=b, steps=steps,
                          warmup_steps=max(1, steps // 10))


#: equal trainable-parameter budget to all-linear at r=8 (3,072 r per block):
#: attention (c_attn + attn.c_proj) trains 1,152 r, MLP (c_fc + mlp.c_proj) 1,920 r
EQUAL_BUDGET = {"attention": 21, "mlp": 13, "attn-qkv": 32}


def _grid_targets():
    for t in ({"task": "qa"}, CIPHER):
        for targets in ("attention", "mlp", "attn-qkv"):
            yield replace(BASE, **t, targets=targets)
            yield replace(BASE, **t, targets=targets, r=EQUAL_BUDGET[targets])


def _grid_init():
    for t in ({"task": "qa"}, CIPHER):
        for init in ("gaussian", "random"):
            yield replace(BASE, **t, init=init)


def _grid_quant():
    for t in ({"task": "qa"}, CIPHER):
        for q in ("nf4", "fp4", "int4"):
            yield replace(BASE, **t, recipe="qlora", quant_type=q)


def _grid_update():  # adapters kept (data/experiments/adapters/<id>/) for the §7 analysis
    for r in (8, 64):
        yield replace(BASE, **CIPHER, targets="attn-qkv", r=r)


GRIDS = {
    "rank": _grid_rank,
    "alpha": _grid_alpha,
    "lr": _grid_lr,
    "targets": _grid_targets,
    "init": _grid_init,
    "quant": _grid_quant,
    "update": _grid_update,
}
#: grids whose runs also save their adapter (PEFT format) under data/experiments/adapters/<id>/
SAVE_ADAPTERS = ("update",)


def grid(name: str) -> list[ExperimentConfig]:
    """The configs of grid ``name`` (each point × :data:`SEEDS`), in run order."""
    if name not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}, got grid={name!r}")
    return _seeded(GRIDS[name]())


def results_path(name: str, folder: str | Path | None = None) -> Path:
    return Path(folder or RESULTS) / f"{name}.jsonl"


def read_records(path: str | Path) -> list[dict]:
    """The records of one JSONL file (missing file: none). A corrupt line is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i} is not a JSON record ({err})") from err
        if not isinstance(rec, dict) or "id" not in rec or "config" not in rec:
            raise ValueError(f"{path}:{i} is not an experiment record (needs 'id' and 'config')")
        out.append(rec)
    return out


def append_record(path: str | Path, record: dict) -> Path:
    """Add one record to a JSONL file atomically (the old file or the new one, never half)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def run_sweep(name: str, *, folder: str | Path | None = None, progress: bool = True,
              limit: int | None = None, configs: list[ExperimentConfig] | None = None) -> list[dict]:
    """Run every config of grid ``name`` not yet in its JSONL file; returns the new records.

    Args:
        limit: run at most this many new experiments (None: all).
        configs: run these instead of the named grid (tests); stored in the grid's file.
    """
    from tqdm.auto import tqdm

    configs = grid(name) if configs is None else configs
    path = results_path(name, folder)
    done = {r["id"] for r in all_records(path.parent)}  # a point another grid ran is not re-run
    save = name in SAVE_ADAPTERS
    todo = [c for c in configs if c.id not in done or save and not adapter_path(c.id, folder).exists()][:limit]
    new = []
    bar = tqdm(todo, desc=f"sweep {name}", unit="run", disable=not progress)
    for config in bar:
        record = run_experiment(config, save_adapter_to=adapter_path(config.id, folder) if save else None)
        record["grid"] = name
        append_record(path, record)
        new.append(record)
        bar.set_postfix(metric=f"{record['metric']:.2f}", refresh=False)
    return new


def adapter_path(record_id: str, folder: str | Path | None = None) -> Path:
    """Where a grid of :data:`SAVE_ADAPTERS` keeps the adapter of record ``record_id``."""
    return Path(folder or RESULTS) / "adapters" / record_id


def all_records(folder: str | Path | None = None) -> list[dict]:
    """Every committed record, from every grid's file (one per id: the first one found)."""
    out, seen = [], set()
    for p in sorted(Path(folder or RESULTS).glob("*.jsonl")):
        for r in read_records(p):
            if r["id"] not in seen:
                seen.add(r["id"])
                out.append(r)
    return out


def find_record(record_id: str, folder: str | Path | None = None) -> dict:
    """The committed record with this id (ValueError naming the id if there is none)."""
    for r in all_records(folder):
        if r["id"] == record_id:
            return r
    raise ValueError(f"no committed record has id={record_id!r} (see data/experiments/*.jsonl)")


def rerun(record_id: str, folder: str | Path | None = None) -> dict:
    """Re-run a committed record from its stored config; returns the fresh record."""
    return run_experiment(ExperimentConfig.from_dict(find_record(record_id, folder)["config"]))
