"""lora_lab.adapters.pair and .run: the two adapters, the settings, the runner and the committed records."""

import json
import math
from dataclasses import replace

import pytest
import torch

from lora_lab.adapters.pair import (
    RESULTS,
    SEEDS,
    TASKS,
    adapter_config,
    adapter_dir,
    apply_setting,
    check_setting,
    eval_sets,
    load_pair,
    measure,
    nf4_base,
)
from lora_lab.adapters.run import (
    COMBINATIONS,
    WEIGHTS,
    combine_records,
    main,
    run_combinations,
    setting_id,
    settings,
    train_adapters,
    train_records,
)
from lora_lab.experiments.sweep import find_record
from lora_lab.finetune import load_tokenizer
from lora_lab.lora import active_adapter, adapter_names, mixed_batch

TRAIN = train_records()
COMBINE = combine_records()
TINY = dict(steps=2, eval_examples=8, story_examples=2, train_examples=16, batch_size=4, warmup_steps=1)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("data/lab-gpt2")


@pytest.fixture(scope="module")
def model():
    return load_pair(0)


# --------------------------------------------------------------------------- configs and settings
def test_adapters_are_chapter_06_quant_grid_points_with_the_same_results():
    assert {r["id"] for r in TRAIN} == {adapter_config(n, s).id for n in TASKS for s in SEEDS}
    for rec in TRAIN:
        c = rec["config"]
        assert c["recipe"] == "qlora" and c["quant_type"] == "nf4" and c["r"] == 8
        assert c["task"] == TASKS[rec["adapter"]]["task"]
        ch06 = find_record(rec["id"])  # the same config was run by chapter 06's quant grid
        assert abs(ch06["metric"] - rec["metric"]) <= 3 * max(rec["metric_se"], 1 / rec["n_eval"])
        assert (adapter_dir(rec["adapter"], c["seed"]) / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("bad", [{"kind": "both"}, {"kind": "adapter", "adapter": "math"}, "base",
                                 {"kind": "combination", "combination_type": "ties", "weights": [1, 1]},
                                 {"kind": "combination", "combination_type": "cat", "weights": [1]}])
def test_bad_settings_name_what_is_allowed(bad):
    with pytest.raises(ValueError, match="setting"):
        check_setting(bad)
    with pytest.raises(ValueError, match="name"):
        adapter_config("math", 0)


def test_settings_cover_every_combination_and_weight_pair():
    s = settings()
    assert len(s) == 3 + len(COMBINATIONS) * (len(WEIGHTS) ** 2 - 1)
    assert len({setting_id(x, 0) for x in s}) == len(s) and setting_id(s[0], 0) != setting_id(s[0], 1)


def test_every_setting_is_committed_for_every_seed():
    ids = {r["id"] for r in COMBINE}
    missing = [(x, seed) for seed in SEEDS for x in settings() if setting_id(x, seed) not in ids]
    assert not missing, f"{len(missing)} settings lack a record, e.g. {missing[:2]}"
    for r in COMBINE:
        assert set(r["metrics"]) == set(TASKS) and r["n_eval"] == {"qa": 200, "cipher": 200}
        assert all(0 <= p <= 1 for p in r["metrics"].values())


# --------------------------------------------------------------------------- one base, two adapters
def test_pair_switch_disable_and_mixed_batch(model):
    assert adapter_names(model) == ["qa", "cipher"] and active_adapter(model) == "qa"
    ids = torch.tensor([[0, 5, 9, 13, 2, 7], [0, 11, 3, 8, 1, 4], [0, 6, 6, 2, 9, 10]])
    with torch.no_grad():
        base = nf4_base()(input_ids=ids).logits
        with apply_setting(model, {"kind": "base"}):
            assert torch.equal(model(input_ids=ids).logits, base)  # disabled: the base, bit for bit
        outs = {}
        for name in TASKS:
            apply_setting(model, {"kind": "adapter", "adapter": name})
            outs[name] = model(input_ids=ids).logits
        assert (outs["qa"] - outs["cipher"]).abs().max() > 1e-2
        with mixed_batch(model, ["qa", "cipher", "__base__"]):
            mixed = model(input_ids=ids).logits
    for i, ref in enumerate([outs["qa"][0], outs["cipher"][1], base[2]]):
        assert torch.allclose(mixed[i], ref, atol=1e-5), i


def test_measure_and_a_combination_that_is_one_adapter(model, tokenizer):
    sets = eval_sets(16)
    alone = measure(model, tokenizer, {"kind": "adapter", "adapter": "qa"}, sets)
    same = measure(model, tokenizer, {"kind": "combination", "combination_type": "linear", "weights": [1.0, 0.0]},
                   sets)
    assert alone == same and alone["qa"] > 0.5  # one adapter at weight 1: "linear" is that adapter
    assert "mix" in adapter_names(model)
    measure(model, tokenizer, {"kind": "combination", "combination_type": "cat", "weights": [0.5, 0.5]}, sets)
    assert adapter_names(model).count("mix") == 1


def test_load_pair_names_a_missing_adapter(tmp_path):
    with pytest.raises(ValueError, match="no adapter 'qa' for seed=7"):
        load_pair(7, tmp_path)


# --------------------------------------------------------------------------- the runner
def test_runner_records_and_skips(tmp_path, monkeypatch):
    configs = [replace(adapter_config(n, 0), **TINY) for n in TASKS]
    new = train_adapters(folder=tmp_path, configs=configs, progress=False)
    assert [r["adapter"] for r in new] == list(TASKS)
    assert train_adapters(folder=tmp_path, configs=configs, progress=False) == []
    # the combine stage on committed adapters (seed 0), two settings, 8 examples per task
    only = [settings()[0], settings()[-1]]
    recs = run_combinations([0], folder=tmp_path, adapters_folder=RESULTS, only=only, n_eval=8, progress=False)
    assert [r["config"]["kind"] for r in recs] == ["base", "combination"] and recs[0]["metrics"]["qa"] == 0
    assert run_combinations([0], folder=tmp_path, only=only, n_eval=8, progress=False) == []
    json.dumps(recs)
    assert main(["list", "--folder", str(tmp_path)]) == 0


def _tolerance(point_values, p, n):
    """3 × the spread over seeds of this setting (a run on another CPU diverges like a new seed
    at worst), never below 3 binomial SEs."""
    mean = sum(point_values) / len(point_values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in point_values) / (len(point_values) - 1))
    return 3 * max(sd, math.sqrt(p * (1 - p) / n), 1 / n)


def test_rerun_reproduces_a_committed_combination(model, tokenizer):
    setting = {"kind": "combination", "combination_type": "cat", "weights": [1.0, 1.0]}
    [rec] = [r for r in COMBINE if r["id"] == setting_id(setting, 0)]
    fresh = measure(model, tokenizer, setting, eval_sets())
    for task in TASKS:
        seeds = [r["metrics"][task] for r in COMBINE if r["id"] in {setting_id(setting, s) for s in SEEDS}]
        assert abs(fresh[task] - rec["metrics"][task]) <= _tolerance(seeds, rec["metrics"][task], 200), task


@pytest.mark.slow
def test_retraining_an_adapter_reproduces_its_record(tmp_path):
    rec = next(r for r in TRAIN if r["adapter"] == "cipher" and r["config"]["seed"] == 0)
    [fresh] = train_adapters(folder=tmp_path, configs=[adapter_config("cipher", 0)], progress=False)
    assert fresh["id"] == rec["id"] and fresh["loss_at_init"] == pytest.approx(rec["loss_at_init"], rel=1e-4)
    seeds = [r["metric"] for r in TRAIN if r["adapter"] == "cipher"]
    assert abs(fresh["metric"] - rec["metric"]) <= _tolerance(seeds, rec["metric"], rec["n_eval"])
