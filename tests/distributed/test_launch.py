"""The launcher's environment, and the adapter rank 0 publishes in one rename."""

import json

import pytest
import torch

from lora_lab.distributed import launch
from lora_lab.distributed.launch import free_port, launched_world, save_adapter_atomic, spawn
from lora_lab.lora.io import CONFIG_NAME, WEIGHTS_NAME, adapter_state_dict, load_adapter
from lora_lab.lora.layer import LoraConfig, add_lora


def test_launched_world_reads_torchrun_variables():
    assert launched_world({}) == (0, 1)
    assert launched_world({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    for env, needle in [({"RANK": "0"}, "set both"), ({"RANK": "a", "WORLD_SIZE": "2"}, "set both"),
                        ({"RANK": "2", "WORLD_SIZE": "2"}, "0 <= RANK < WORLD_SIZE")]:
        with pytest.raises(ValueError, match=needle):
            launched_world(env)


def test_spawn_and_free_port_check_their_input():
    assert 0 < free_port() < 65536
    with pytest.raises(ValueError, match="world_size must be an integer >= 1"):
        spawn(print, 0)


def mlp(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    add_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]),
             generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    return model


def same_adapter(a, b) -> bool:
    a, b = adapter_state_dict(a), adapter_state_dict(b)
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_adapter_appears_whole_or_the_previous_one_stays(tmp_path, monkeypatch):
    path = tmp_path / "adapter"
    first, second = mlp(0), mlp(1)
    save_adapter_atomic(first, path)
    assert not same_adapter(first, second)
    save_adapter_atomic(second, path)  # replaces a complete folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folders left
    check = mlp(2)
    load_adapter(check, path)
    assert same_adapter(check, second)

    def crash(model, folder, *args, **kwargs):  # a failure after writing half an adapter
        (folder / CONFIG_NAME).write_text(json.dumps({"r": 2}))
        raise RuntimeError("disk full")

    monkeypatch.setattr(launch, "save_adapter", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_adapter_atomic(first, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    load_adapter(check := mlp(2), path)  # still the second adapter
    assert same_adapter(check, second)


def test_torchrun_streams_the_log_and_returns_the_exit_code():
    lines = []
    done = launch.torchrun(["--help"], 1, log=lines.append)  # one process: plain python -m lora_lab
    assert done.returncode == 0 and done.args[1:] == ["-m", "lora_lab", "--help"]
    assert lines and "\n".join(lines) + "\n" == done.stdout and "qlora" in done.stdout
    bad = launch.torchrun(["no-such-command"], 1, log=None)
    assert bad.returncode == 2 and "invalid choice" in bad.stdout  # stderr merged into the log
    for kw in ({"nproc_per_node": 0}, {"threads": 0}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            launch.torchrun(["--help"], **kw)
