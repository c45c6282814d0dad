"""lora_lab.adapters.variants_run: the committed variants records, their step-0 errors, a short run."""

import math
from dataclasses import asdict, replace

import pytest

from lora_lab.adapters.pair import SEEDS, adapter_config
from lora_lab.adapters.run import train_records
from lora_lab.adapters.variants_run import (
    CHAPTER_LR,
    LRS,
    TASK,
    VARIANTS,
    build_variant,
    check_variant,
    init_error,
    run_variant,
    run_variants,
    variant_configs,
    variant_id,
    variant_points,
    variant_records,
)
from lora_lab.experiments.engine import binomial_se
from lora_lab.lora.layer import lora_layers

RECORDS = variant_records()
KEYS = {"id", "variant", "config", "metric", "metric_se", "n_eval", "init_error", "init_error_rel", "loss_at_init",
        "curve", "trainable", "step_seconds_median", "train_seconds", "seconds", "versions", "cpu", "threads"}


def by_variant(seed, lr=CHAPTER_LR):
    return {r["variant"]: r for r in RECORDS if r["config"]["seed"] == seed and r["config"]["lr"] == lr}


def test_records_well_formed():
    assert RECORDS, "data/adapters/variants.jsonl is empty: python -m lora_lab.adapters.variants_run run"
    assert len({r["id"] for r in RECORDS}) == len(RECORDS)
    for r in RECORDS:
        assert set(r) == KEYS
        assert r["config"]["lr"] in LRS
        config = replace(adapter_config(TASK, r["config"]["seed"]), lr=r["config"]["lr"])
        assert r["config"] == asdict(config) and r["id"] == variant_id(r["variant"], config)
        assert len(r["curve"]) == config.steps and all(math.isfinite(x) for x in r["curve"])
        assert 0 <= r["metric"] <= 1 and r["n_eval"] == config.eval_examples
        assert r["metric_se"] == pytest.approx(binomial_se(r["metric"], r["n_eval"]))
        assert 0 < r["init_error_rel"] < 0.2 and r["step_seconds_median"] > 0


def test_three_seeds_per_variant_and_learning_rate():
    for v in VARIANTS:
        for lr in LRS:
            seeds = [r["config"]["seed"] for r in RECORDS if r["variant"] == v and r["config"]["lr"] == lr]
            assert sorted(seeds) == sorted(SEEDS), (v, lr)
    assert {variant_id(v, c) for v, c in variant_configs()} == {r["id"] for r in RECORDS}
    assert CHAPTER_LR == adapter_config(TASK, 0).lr and CHAPTER_LR in LRS


def test_points_per_learning_rate():
    for lr in LRS:
        pts = variant_points(RECORDS, lr=lr)
        assert set(pts) == set(VARIANTS) and all(p.config["lr"] == lr and p.n_seeds == len(SEEDS)
                                                 for p in pts.values())
    assert variant_points(RECORDS) == variant_points(RECORDS, lr=CHAPTER_LR)
    with pytest.raises(ValueError, match=r"lr must be one of \(0.001, 0.002, 0.005\), got 0.01"):
        variant_points(RECORDS, lr=0.01)


def test_step0_errors_recomputed_for_seed_0():
    """Each variant's recorded initial error, rebuilt from scratch (seed 0); DoRA's magnitude
    counted: DoRA's effective weight is the NF4 base's, as plain LoRA's."""
    recorded = by_variant(seed=0)
    config = adapter_config(TASK, 0)
    for v in VARIANTS:
        model, weights = build_variant(v, config)
        error, rel = init_error(model, weights)
        assert error == pytest.approx(recorded[v]["init_error"], rel=1e-4), v
        assert rel == pytest.approx(recorded[v]["init_error_rel"], rel=1e-4), v
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == recorded[v]["trainable"], v
    out_features = sum(layer.out_features for _, layer in lora_layers(model))  # the last one: DoRA
    assert recorded["dora"]["trainable"] - recorded["lora"]["trainable"] == out_features


def test_loftq_and_pissa_start_closer_to_w_than_plain_nf4():
    for seed in SEEDS:
        r = by_variant(seed)
        assert r["loftq"]["init_error"] < r["lora"]["init_error"]
        assert r["pissa"]["init_error"] < r["lora"]["init_error"]
        assert r["dora"]["init_error"] == pytest.approx(r["lora"]["init_error"], rel=1e-6)


def test_lora_variant_is_chapter_07s_cipher_adapter():
    """The "lora" variant is the committed cipher adapter's run (same config, same engine pieces)."""
    committed = {r["id"]: r for r in train_records()}
    for seed in SEEDS:
        mine, theirs = by_variant(seed)["lora"], committed[adapter_config(TASK, seed).id]
        assert mine["loss_at_init"] == pytest.approx(theirs["loss_at_init"], rel=1e-5)
        assert mine["curve"][:5] == pytest.approx(theirs["curve"][:5], abs=1e-3)


def test_short_run_reproducible_and_resumable(tmp_path):
    config = replace(adapter_config(TASK, 1), steps=3, warmup_steps=1, train_examples=64, eval_examples=8)
    new = run_variants(folder=tmp_path, progress=False, todo=[("loftq", config)])
    assert len(new) == 1 and variant_records(tmp_path) == new
    assert run_variants(folder=tmp_path, progress=False, todo=[("loftq", config)]) == []
    again = run_variant("loftq", config)
    for key in ("id", "metric", "init_error", "init_error_rel", "loss_at_init", "trainable"):
        assert again[key] == new[0][key], key
    assert again["curve"] == pytest.approx(new[0]["curve"], rel=1e-6)


def test_bad_variant():
    with pytest.raises(ValueError, match="variant must be one of .*'qlora'"):
        check_variant("qlora")
    with pytest.raises(ValueError, match="variant"):
        variant_configs(["lora", "vera"])
    with pytest.raises(ValueError, match="lr must be one of"):
        variant_configs(["lora"], lrs=[3e-3])
