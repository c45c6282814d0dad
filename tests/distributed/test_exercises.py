"""Chapter 08's exercise checkers: the right answers pass, each typical mistake gets its own hint."""

import pytest

from lora_lab.distributed import (
    EX2_CHOICES,
    allreduce_bytes_per_step,
    check_exercise_allreduce_bytes,
    check_exercise_fsdp_base_gb,
    check_exercise_per_process_batch,
    check_exercise_writer_rank,
    fsdp_memory,
)

# LoRA r=16 on GPT-2 small's 4 block linears, 12 blocks: 16 (768+2304 + 768+768 + 768+3072 + 3072+768) x 12
GPT2_R16_PARAMS = 16 * (3072 + 1536 + 3840 + 3840) * 12


def test_allreduce_bytes():
    assert GPT2_R16_PARAMS == 2_359_296
    assert check_exercise_allreduce_bytes(4 * GPT2_R16_PARAMS).ok
    assert check_exercise_allreduce_bytes("9437184").ok
    assert "number of gradients" in check_exercise_allreduce_bytes(GPT2_R16_PARAMS).message
    half = check_exercise_allreduce_bytes(2 * GPT2_R16_PARAMS).message  # r=8 in fp32 = r=16 in bf16
    assert "r = 8" in half and "2-byte" in half
    assert allreduce_bytes_per_step("gpt2", "lora", r=8) == 2 * GPT2_R16_PARAMS
    assert "full fine-tuning" in check_exercise_allreduce_bytes(allreduce_bytes_per_step("gpt2", "full")).message
    assert not check_exercise_allreduce_bytes(4 * GPT2_R16_PARAMS * 1.01).ok


def test_writer_rank():
    assert check_exercise_writer_rank("rank 0").ok and check_exercise_writer_rank(" Rank 0 ").ok
    for wrong in EX2_CHOICES[1:]:
        result = check_exercise_writer_rank(wrong)
        assert not result.ok and "race" in result.message
    assert "not one of the options" in check_exercise_writer_rank("rank 1").message


def test_per_process_batch():
    assert check_exercise_per_process_batch(4).ok
    assert "global batch" in check_exercise_per_process_batch(16).message
    assert "per_device_train_batch_size" in check_exercise_per_process_batch(64).message
    assert "too low" in check_exercise_per_process_batch(2).message


@pytest.mark.parametrize("world_size", [4])
def test_fsdp_base_gb(world_size):
    per_gpu = fsdp_memory("llama-2-70b", "qlora", world_size=world_size)["components"]["quantized base"] / 1e9
    assert 8 < per_gpu < 9.5  # 70B weights at ~4.13 bits = ~35 GB, in 4 shards
    assert check_exercise_fsdp_base_gb(per_gpu).ok and check_exercise_fsdp_base_gb(round(per_gpu, 1)).ok
    assert "whole base" in check_exercise_fsdp_base_gb(4 * per_gpu).message
    assert "2 GPUs" in check_exercise_fsdp_base_gb(2 * per_gpu).message
    assert not check_exercise_fsdp_base_gb(1.1 * per_gpu).ok
