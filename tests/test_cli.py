"""``python -m lora_lab qlora``: a few-step run, SIGINT + --resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_lab.cli import EXIT_INTERRUPTED, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--train-examples", "64", "--eval-examples", "16", "--batch-size", "4", "--no-progress"]


def test_few_step_run_prints_the_figures_and_saves_a_peft_adapter(tmp_path, capsys):
    code = main(["qlora", "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path), *SMALL])
    assert code == 0
    out = capsys.readouterr().out
    for text in ("exact match before fine-tuning", "trainable params:", "training memory", "predicted",
                 "measured", "exact match after 4 steps", "adapter saved", "wall time", "NF4 + double quant"):
        assert text in out, text
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json",
                                                                  "adapter_model.safetensors"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 4 and len(metrics["losses"]) == 4
    assert 0 <= metrics["exact_match_before"] <= 1 and metrics["memory_predicted"]["activations"] > 0


def test_method_is_a_deprecated_alias_of_recipe(capsys):
    parser = build_parser()
    assert parser.parse_args(["qlora"]).recipe == "qlora"
    assert parser.parse_args(["qlora", "--method", "full"]).recipe == "full"
    assert "--method is deprecated; use --recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["qlora", "--method", "dora"])
    assert "invalid choice: 'dora'" in capsys.readouterr().err


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lora_lab", "qlora", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigint_then_resume_continues_from_the_last_checkpoint(tmp_path):
    args = ["--steps", "400", "--checkpoint-every", "5", "--recipe", "lora", "--out", str(tmp_path), *SMALL]
    proc = _cli(*args)
    ckpt = tmp_path / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, out
    assert "interrupted at step" in out and "--resume" in out
    stopped = int(out.split("interrupted at step ")[1].split("/")[0])
    assert 5 <= stopped < 400
    done = _cli(*[a if a != "400" else str(stopped + 3) for a in args], "--resume")
    out2, _ = done.communicate(timeout=180)
    assert done.returncode == 0, out2
    assert f"resumed from step {stopped}" in out2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["start_step"] == stopped and metrics["steps"] == stopped + 3


@pytest.mark.parametrize("argv, needle", [
    (["--r", "0"], "r must be a positive integer"),
    (["--lora-alpha", "-1"], "lora_alpha"),
    (["--lr", "0"], "lr must be"),
    (["--steps", "0"], "steps must be"),
    (["--target-modules", "nonexistent"], "nonexistent"),
    (["--eval-examples", "0"], "--eval-examples"),
])
def test_invalid_hyperparameters_exit_2_with_the_reason(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["qlora", "--out", str(tmp_path), *SMALL, *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_unknown_model_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert main(["qlora", "--model", "no-such-model", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Tried" in err and "--model data/lab-gpt2" in err


@pytest.mark.parametrize("env, needle", [({"RANK": "0"}, "set both"),
                                         ({"RANK": "0", "WORLD_SIZE": "2"}, "--resume: checkpoints are single")])
def test_a_bad_launch_environment_exits_2_before_joining_a_group(env, needle, tmp_path, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exc:
        main(["qlora", "--out", str(tmp_path), "--resume", *SMALL])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_trainers_subcommand_writes_what_is_missing_then_prints_the_verdict(tmp_path, capsys, monkeypatch):
    from lora_lab.distributed import trainers

    committed = trainers.read_records()
    calls = []

    def write_trainers(path, *, seeds, steps, progress, log):
        calls.append((path, seeds, steps, progress))
        return committed

    monkeypatch.setattr(trainers, "write_trainers", write_trainers)
    assert main(["trainers", "--out", str(tmp_path / "t.jsonl"), "--seeds", "0", "1", "2", "--no-progress"]) == 0
    assert calls == [(str(tmp_path / "t.jsonl"), (0, 1, 2), trainers.RECIPE.steps, False)]
    assert "points of lora_lab's loop" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["trainers", "--steps", "0"])
    assert stop.value.code == 2 and "--steps must be >= 1, got 0" in capsys.readouterr().err
    assert len(calls) == 1  # refused before any run
