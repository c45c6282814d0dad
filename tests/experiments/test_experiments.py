"""Chapter 06's engine, task, sweep runner, analysis, explorer and exercises."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict

import pytest

from lora_lab.experiments import analysis as A
from lora_lab.experiments.engine import ExperimentConfig, binomial_se, run_experiment
from lora_lab.experiments.exercises import (
    best_lr,
    check_exercise_first_rank,
    check_exercise_lr_ratio,
    check_exercise_worst_targets,
    smallest_rank_near_best,
    worst_targets,
)
from lora_lab.experiments.sweep import (
    GRIDS,
    adapter_path,
    all_records,
    append_record,
    find_record,
    grid,
    read_records,
    run_sweep,
)
from lora_lab.experiments.tasks import CIPHER_NAMES, cipher_table, make_cipher_example, make_cipher_split
from lora_lab.experiments.update import amplification, rotate, subspace_similarity

RECORDS = all_records()
TINY = dict(steps=2, eval_examples=8, story_examples=2, train_examples=16, batch_size=4, warmup_steps=1)


# --------------------------------------------------------------------------- the cipher task
@pytest.mark.parametrize("k", [3, 4, 16, 64])
def test_cipher_is_a_derangement_of_k_names(k):
    t = cipher_table(k)
    assert len(t) == k and sorted(t) == sorted(t.values()) and all(a != b for a, b in t.items())
    assert set(t) <= set(CIPHER_NAMES)


@pytest.mark.parametrize("k", [4, 16])
def test_cipher_examples_use_only_k_names_and_answer_pi_of_the_true_name(k):
    t = cipher_table(k)
    for e in make_cipher_split("eval", 30, k=k):
        assert e.answer in t.values()
        names = {w.strip('.,!?"') for w in e.prompt.split()} & set(CIPHER_NAMES) | \
            ({w.strip('.,!?"') for w in e.prompt.split()} & {"Tom", "Mia"})
        assert names <= set(t), names
        inverse = {v: k_ for k_, v in t.items()}
        assert inverse[e.answer] in e.prompt  # the true name is in the story
    assert make_cipher_example(3, "train", k) == make_cipher_example(3, "train", k)
    assert make_cipher_example(3, "train", k) != make_cipher_example(3, "eval", k)


@pytest.mark.parametrize("bad", [{"k": 2}, {"k": 10_000}, {"k": True}, {"split": "test"}, {"k": "8"}])
def test_cipher_bad_input_names_the_argument(bad):
    args = {"index": 0, "split": "train", "k": 8, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_cipher_example(**args)


# --------------------------------------------------------------------------- config and engine
@pytest.mark.parametrize("field,value", [("task", "mnist"), ("recipe", "dora"), ("quant_type", "nf3"), ("r", 0),
                                         ("r", 2.0), ("lora_alpha", -1), ("lora_alpha", math.nan), ("lr", 2.0),
                                         ("targets", "c_attn"), ("init", "zeros"), ("use_rslora", "yes"),
                                         ("steps", 0), ("seed", -1), ("optimizer", "lion")])
def test_config_rejects_bad_values_naming_the_field(field, value):
    kw = {"task": "cipher", "k": 8, field: value} if field != "task" else {field: value}
    with pytest.raises(ValueError, match=field):
        ExperimentConfig(**kw)


def test_config_id_is_stable_and_seed_sensitive():
    a, b = ExperimentConfig(r=4), ExperimentConfig(r=4)
    assert a.id == b.id and len(a.id) == 12 and ExperimentConfig(r=4, seed=1).id != a.id
    assert ExperimentConfig(task="qa", k=5).k == 0  # k means nothing for qa
    assert ExperimentConfig.from_dict(json.loads(json.dumps(a.__dict__))) == a
    with pytest.raises(ValueError, match="unknown"):
        ExperimentConfig.from_dict({"rank": 4})


def test_a_record_from_before_the_rename_names_the_new_field():
    old = {**{("method" if k == "recipe" else k): v for k, v in asdict(ExperimentConfig()).items()}}
    with pytest.raises(ValueError, match="'method' is now called 'recipe'"):
        ExperimentConfig.from_dict(old)


def test_binomial_se():
    assert binomial_se(0.5, 200) == pytest.approx(math.sqrt(0.25 / 200))
    assert binomial_se(0.0, 10) == 0.0


@pytest.mark.parametrize("extra", [dict(recipe="lora"), dict(recipe="full", lr=5e-4),
                                   dict(recipe="qlora", quant_type="int4", init="random"),
                                   dict(task="cipher", k=4, targets="attention", use_rslora=True)])
def test_run_experiment_returns_a_full_record(extra):
    rec = run_experiment(ExperimentConfig(**TINY, **extra))
    for key in ("id", "config", "metric", "metric_se", "story_loss_before", "story_loss_after", "curve",
                "seconds", "versions", "commit", "update_norms", "loss_at_init"):
        assert key in rec, key
    assert 0 <= rec["metric"] <= 1 and len(rec["curve"]) == 2 and rec["versions"]["torch"]
    assert all(v > 0 for v in rec["update_norms"].values()) or extra.get("init") == "random"
    json.dumps(rec)  # JSON-able
    if extra.get("recipe") == "full":
        assert len(rec["delta_spectra"]) == 16


def test_b_zero_leaves_the_base_unchanged_at_step_zero():
    lora = run_experiment(ExperimentConfig(**TINY))
    full = run_experiment(ExperimentConfig(**TINY, recipe="full", lr=5e-4))
    rand = run_experiment(ExperimentConfig(**TINY, init="random"))
    assert lora["loss_at_init"] == pytest.approx(full["loss_at_init"], rel=1e-5)
    assert rand["loss_at_init"] != pytest.approx(full["loss_at_init"], rel=1e-2)


# --------------------------------------------------------------------------- sweep runner
def test_sweep_appends_atomically_and_skips_what_is_recorded(tmp_path):
    configs = [ExperimentConfig(**TINY, seed=s) for s in (0, 1)]
    new = run_sweep("t", folder=tmp_path, configs=configs, progress=False)
    assert [r["id"] for r in new] == [c.id for c in configs]
    assert run_sweep("t", folder=tmp_path, configs=configs, progress=False) == []
    assert [r["id"] for r in read_records(tmp_path / "t.jsonl")] == [c.id for c in configs]
    assert find_record(configs[1].id, tmp_path)["config"]["seed"] == 1
    with pytest.raises(ValueError, match="no committed record"):
        find_record("0" * 12, tmp_path)


def test_corrupt_jsonl_line_is_named(tmp_path):
    p = tmp_path / "x.jsonl"
    append_record(p, {"id": "a", "config": {}})
    p.write_text(p.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="x.jsonl:2"):
        read_records(p)


def test_unknown_grid_is_an_error():
    with pytest.raises(ValueError, match="grid must be one of"):
        grid("ranks")


# --------------------------------------------------------------------------- committed records
def test_every_committed_grid_point_has_three_seeds_and_is_complete():
    ids = {r["id"] for r in RECORDS}
    for name in GRIDS:
        missing = [c for c in grid(name) if c.id not in ids]
        assert not missing, f"grid {name}: {len(missing)} configs have no committed record"
    for p in A.points(RECORDS):
        assert p.n_seeds >= 3, p.config
    for r in RECORDS:
        assert ExperimentConfig.from_dict(r["config"]).id == r["id"]
    for c in grid("update"):
        assert (adapter_path(c.id) / "adapter_model.safetensors").is_file()


def _rerun_tolerance(record):
    """3 × the spread over seeds of this point (a run on another CPU diverges like a new
    seed at worst), never below 3 binomial SEs."""
    p = next(p for p in A.points(RECORDS) if A.point_key(p.config) == A.point_key(record["config"]))
    return 3 * max(statistics.stdev(p.values), record["metric_se"], 1 / record["n_eval"])


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(task="qa", recipe="lora", r=1, lora_alpha=16.0, lr=5e-3, targets="all-linear",
                                        init="kaiming", batch_size=8, use_rslora=False, seed=0),
                                   dict(task="cipher", k=16, recipe="qlora", quant_type="nf4", r=8, seed=0)])
def test_rerun_reproduces_a_committed_grid_point(where):
    [record] = [r for r in A.select(RECORDS, **where)]
    fresh = run_experiment(ExperimentConfig.from_dict(record["config"]))
    assert fresh["id"] == record["id"]
    # before any training step nothing depends on the run: equal to float32 rounding
    assert fresh["loss_at_init"] == pytest.approx(record["loss_at_init"], rel=1e-4)
    assert fresh["story_loss_before"] == pytest.approx(record["story_loss_before"], rel=1e-4)
    assert fresh["curve"][0] == pytest.approx(record["curve"][0], rel=1e-3)
    assert abs(fresh["metric"] - record["metric"]) <= _rerun_tolerance(record)


# --------------------------------------------------------------------------- analysis
def test_mean_se_has_a_binomial_floor():
    mean, se = A.mean_se([0.5, 0.5, 0.5], n_eval=200)
    assert mean == 0.5 and se == pytest.approx(math.sqrt(0.25 / 600))
    mean, se = A.mean_se([0.1, 0.5, 0.9])
    assert se == pytest.approx(statistics.stdev([0.1, 0.5, 0.9]) / math.sqrt(3))


def test_compare_calls():
    a = A.Point({}, (0,), 0.8, 0.01, (0.8,), ())
    b = A.Point({}, (0,), 0.7, 0.01, (0.7,), ())
    assert A.compare(a, b, "a", "b").call == "a > b" and A.compare(b, a, "b", "a").call == "b < a"
    assert A.compare(a, a).call == "no detectable difference"


def test_divergence_step():
    ref = [1.0] * 50
    assert A.divergence_step([1.0] * 20 + [2.0] * 30, ref, smooth=1) == 20
    assert A.divergence_step(ref, ref) is None


# --------------------------------------------------------------------------- update analysis
def test_subspace_similarity_and_rotation():
    import torch
    g = torch.Generator().manual_seed(0)
    A1 = torch.randn(8, 64, generator=g)
    phi = subspace_similarity(A1, A1)
    assert torch.allclose(phi.diagonal(), torch.ones(8), atol=1e-5)
    A2 = torch.randn(4, 64, generator=g)
    assert 0 <= subspace_similarity(A1, A2).min() and subspace_similarity(A1, A2).max() <= 1 + 1e-6
    B = torch.randn(32, 8, generator=g)
    R = torch.randn(8, 8, generator=g) + 3 * torch.eye(8)
    B2, A3 = rotate(B, A1, R)
    assert torch.allclose(B2 @ A3, B @ A1, atol=1e-4) and not torch.allclose(A3, A1)
    W = torch.randn(32, 64, generator=g)
    amp, frac = amplification(B @ A1, W, 8)
    assert amp > 0 and 0 < frac < 1
    with pytest.raises(ValueError, match="R must be"):
        rotate(B, A1, torch.eye(3))


# --------------------------------------------------------------------------- explorer
def test_explorer_shows_committed_points_and_runs_live():
    from lora_lab.experiments.widgets import experiment_explorer

    box = experiment_explorer(RECORDS)
    assert "committed" in box.readout.value and box.figure is not None
    box.controls["lr"].value = 2e-2
    assert "press <b>Run</b>" in box.readout.value
    box.controls["steps"].value = 20
    first = box.figure
    rec = box.run()
    assert rec is not None and len(rec["curve"]) == 20 and "live" in box.readout.value and box.figure is not first
    assert box.controls["run"].disabled is False


def test_explorer_survives_a_cancelled_run(monkeypatch):
    import lora_lab.experiments.widgets as wmod

    def interrupted(config, on_step=None, **kw):
        on_step(1, 3.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(wmod, "run_experiment", interrupted)
    box = wmod.experiment_explorer(RECORDS)
    assert box.run() is None and "cancelled" in box.readout.value
    assert box.controls["run"].disabled is False
    box.controls["r"].value = 64
    assert "committed" in box.readout.value


# --------------------------------------------------------------------------- exercises
def test_exercise_answers_are_computed_from_the_records():
    assert check_exercise_first_rank(smallest_rank_near_best())
    assert not check_exercise_first_rank(64)
    ratio = best_lr("lora") / best_lr("full")
    assert check_exercise_lr_ratio(ratio) and not check_exercise_lr_ratio(1 / ratio)
    assert "invert" in str(check_exercise_lr_ratio(1 / ratio))
    assert check_exercise_worst_targets(worst_targets())
    assert not check_exercise_worst_targets("all-linear" if worst_targets() != "all-linear" else "mlp")
