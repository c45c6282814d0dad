"""DDP with 2 gloo processes equals one process on the whole batch; the hook counts the bytes."""

import pytest

from lora_lab.distributed import (
    AllReduceCounter,
    RunSpec,
    allreduce_bytes_per_step,
    allreduce_table,
    run_ddp,
    run_single,
    spawn,
    trainable_numel,
)
from lora_lab.finetune.exercises import lora_params_all_linear
from lora_lab.finetune.recipe import prepare_model
from lora_lab.memory.shapes import model_shape

LORA = RunSpec(recipe="lora", steps=3, batch_size=16)  # 2 processes x 8 examples vs 1 x 16
FULL = RunSpec(recipe="full", steps=1, batch_size=4, lr=1e-4)
# 3 AdamW steps at lr 5e-3 on fp32: the runs differ only in float summation order (measured ~3e-6)
ADAPTER_ATOL = 5e-5


@pytest.fixture(scope="module")
def runs():
    ranks = spawn(run_ddp, 2, LORA, FULL)
    return {"single": run_single(LORA), "ranks": ranks}


def max_abs_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b) and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_processes_of_8_train_the_adapter_one_process_of_16_does(runs):
    single, (rank0, rank1) = runs["single"], runs["ranks"]
    assert max_abs_diff(rank0[0]["trainable"], rank1[0]["trainable"]) == 0  # DDP keeps the replicas identical
    assert max_abs_diff(rank0[0]["trainable"], single["trainable"]) < ADAPTER_ATOL
    assert all(".lora_A." in k or ".lora_B." in k for k in single["trainable"])
    moved = max(v.abs().max().item() for k, v in single["trainable"].items() if "lora_B" in k)
    assert moved > 100 * ADAPTER_ATOL  # lora_B left zero: the comparison above says something
    assert rank0[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)  # the logged loss is the global one


def test_the_hook_counts_trainable_params_times_4_bytes_per_step(runs):
    lora, full = runs["ranks"][0]
    n_lora = trainable_numel(prepare_model("data/lab-gpt2", "lora", device="cpu"))
    n_full = trainable_numel(prepare_model("data/lab-gpt2", "full", device="cpu"))
    assert lora["trainable_params"] == n_lora and full["trainable_params"] == n_full
    assert lora["bytes_per_step"] == [4 * n_lora] * LORA.steps  # only the adapters' fp32 gradients
    assert full["bytes_per_step"] == [4 * n_full] * FULL.steps
    assert n_full > 20 * n_lora
    # the prediction from the memory chapter's shapes agrees with the count
    assert allreduce_bytes_per_step("lab-gpt2", "lora") == 4 * n_lora
    assert allreduce_bytes_per_step("lab-gpt2", "full") == 4 * n_full


def test_allreduce_bytes_for_gpt2_small_and_a_7b_model_at_r8_all_linear():
    rows = {row["model"]: row for row in allreduce_table(("gpt2", "llama-2-7b"), r=8)}
    gpt2 = model_shape("gpt2")
    assert rows["gpt2"]["lora_params"] == lora_params_all_linear(8, gpt2.n_layers, gpt2.d_model)
    assert rows["gpt2"]["full_params"] == gpt2.n_params()
    # Llama-2-7B: q, k, v, o (4096 -> 4096), gate, up (4096 -> 11008), down (11008 -> 4096), 32 blocks
    assert rows["llama-2-7b"]["lora_params"] == 32 * 8 * (4 * 2 * 4096 + 3 * (4096 + 11008))
    assert rows["llama-2-7b"]["lora_bytes"] == 4 * rows["llama-2-7b"]["lora_params"]
    assert 300 < rows["llama-2-7b"]["ratio"] < 400 and 100 < rows["gpt2"]["ratio"] < 110
    assert allreduce_bytes_per_step("gpt2", "full", grad_dtype="bf16") == 2 * gpt2.n_params()
    with pytest.raises(ValueError, match="grad_dtype must be one of"):
        allreduce_bytes_per_step("gpt2", grad_dtype="int8")


def test_counter_sums_buckets_per_step():
    counter = AllReduceCounter()
    counter.buckets += [10, 20]
    counter.end_step(1, 0.5)
    counter.end_step()
    assert counter.per_step == [30, 0]


def test_bad_spec_names_the_argument():
    with pytest.raises(ValueError, match="recipe must be one of"):
        RunSpec(recipe="qlorra")
    with pytest.raises(ValueError, match="batch_size"):
        RunSpec(batch_size=0)
