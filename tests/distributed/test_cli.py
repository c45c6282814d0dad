"""``torchrun --nproc_per_node 2 -m lora_lab qlora``: DDP over 2 gloo processes, one adapter
written by rank 0 (loads in PEFT, equals the single-process run's), and a failing process
failing the launch with no adapter left behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_lab.cli import main
from lora_lab.distributed import free_port
from lora_lab.finetune.models import load_model
from lora_lab.lora.io import WEIGHTS_NAME

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["qlora", "--train-examples", "32", "--eval-examples", "4", "--batch-size", "8", "--steps", "3",
        "--warmup-steps", "1", "--no-progress"]
# QLoRA, 3 AdamW steps at lr 5e-3: 2 x 4 and 1 x 8 examples differ in summation order only (tests/distributed)
ADAPTER_ATOL = 2e-4


def torchrun(*args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_trains_with_ddp_and_rank0_writes_the_adapter_peft_loads(tmp_path, capsys):
    run = torchrun("-m", "lora_lab", *ARGS, "--out", str(tmp_path / "ddp"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("DDP over 2 processes (gloo)") == 1  # rank 0 alone prints
    assert "all-reduced per step: 393,216 bytes" in run.stdout  # 98,304 fp32 adapter gradients
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["adapter", "metrics.json"]  # no temp folder
    assert main([*ARGS, "--out", str(tmp_path / "one"), "--checkpoint-every", "0"]) == 0
    capsys.readouterr()
    ddp, one = (load_file(tmp_path / d / "adapter" / WEIGHTS_NAME) for d in ("ddp", "one"))
    assert set(ddp) == set(one) and max((ddp[k] - one[k]).abs().max().item() for k in one) < ADAPTER_ATOL
    peft = pytest.importorskip("peft")
    model = peft.PeftModel.from_pretrained(load_model(device="cpu"), tmp_path / "ddp" / "adapter")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(ddp)
    for key, value in ddp.items():  # PEFT's key: ...c_attn.lora_A.default.weight for the file's ...lora_A.weight
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], value)


CRASH = '''
import os, sys
from lora_lab import cli
from lora_lab.finetune import trainer

if os.environ["RANK"] == "1":  # this process fails at its second training step
    real, steps = trainer.rank_share, []

    def rank_share(*args):
        steps.append(1)
        if len(steps) == 2:
            raise RuntimeError("simulated failure of one process")
        return real(*args)

    trainer.rank_share = rank_share
sys.exit(cli.main(sys.argv[1:]))
'''


def test_a_failing_process_fails_the_launch_and_leaves_no_adapter(tmp_path):
    script = tmp_path / "crash_rank1.py"
    script.write_text(CRASH)
    out = tmp_path / "run"
    run = torchrun(str(script), *ARGS, "--out", str(out))
    text = run.stdout + run.stderr
    assert run.returncode != 0, text
    assert "error: process RANK=1 of WORLD_SIZE=2 failed (RuntimeError: simulated failure of one process)" in text
    assert "no adapter is written" in text and "ChildFailedError" in text  # ours, then torchrun's summary
    assert not out.exists() or not any(out.iterdir())  # no adapter, no partial folder, no metrics
