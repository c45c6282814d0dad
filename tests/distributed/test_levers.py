"""Gradient checkpointing and 8-bit AdamW measured on real steps equal chapter 04's predictions
(ratio 1.00 within 1%), save what they promise, and checkpointing costs step time, not less."""

import pytest
import torch

from lora_lab.distributed import LEVER_MODELS, LeverRow, lever_config, measure_levers, step_times
from lora_lab.memory.predict import ADAM8_MIN_SIZE
from lora_lab.memory.shapes import model_shape, shape_from_config

RATIO_TOL = 0.01  # chapter 04's predictor counts storages exactly here (measured: ratio 1.0000)


@pytest.fixture(scope="module")
def lab():
    return {(row.lever, row.setting): row for row in measure_levers("lab-gpt2", batch_size=2, seq_len=64)}


def test_every_measurement_is_the_prediction(lab):
    assert len(lab) == 4 and all(isinstance(row, LeverRow) for row in lab.values())
    for row in lab.values():
        assert row.measured > 0 and abs(row.ratio - 1) < RATIO_TOL, row


def test_checkpointing_stores_block_inputs_only(lab):
    off, on = lab["gradient checkpointing", "off"], lab["gradient checkpointing", "on"]
    assert on.measured < off.measured / 5  # 4 blocks' saved tensors -> their 4 inputs (+ what follows the blocks)
    shape = model_shape("lab-gpt2")
    tokens = 2 * 64
    block_inputs = shape.n_layers * tokens * shape.d_model * 4
    after_blocks = tokens * shape.d_model * 4 + tokens * shape.vocab_size * 4  # ln_f's input, fp32 log-softmax
    assert block_inputs + after_blocks <= on.measured < block_inputs + after_blocks + 64 * tokens  # + stats, targets


def test_8bit_adamw_keeps_2_bytes_per_big_tensor_weight_and_8_for_small_ones(lab):
    adamw, adam8 = lab["optimizer", "adamw"], lab["optimizer", "adamw-8bit"]
    assert adamw.measured == 8 * 98_304 + 4 * 32  # two fp32 moments per adapter weight + a step per tensor
    # lab-gpt2 r=8, per block: lora_A of c_attn, attn.c_proj, c_fc and lora_B of attn.c_proj, mlp.c_proj are
    # 8 x 192 = 1,536 values, under bitsandbytes' 4,096: they stay 32-bit. The big ones (c_attn's B 576 x 8,
    # c_fc's B 768 x 8, mlp.c_proj's A 8 x 768): 2 uint8 moments + 2 fp32 absmax per 256; + two 256-entry maps
    assert ADAM8_MIN_SIZE == 4096
    small = 5 * 1536 * 8
    big = sum(2 * n + 2 * 4 * -(-n // 256) for n in (4608, 6144, 6144))
    assert adam8.measured == 4 * (small + big) + 2 * 256 * 4
    assert 2 < adamw.measured / adam8.measured < 4  # not 4x: the small tensors


def test_gpt2_small_shape_is_gpt2_small():
    assert shape_from_config(lever_config("gpt2")).n_params() == model_shape("gpt2").n_params()
    assert shape_from_config(lever_config("lab-gpt2")).n_params() == model_shape("lab-gpt2").n_params()
    assert LEVER_MODELS == ("lab-gpt2", "gpt2")
    with pytest.raises(ValueError, match="model must be one of"):
        lever_config("gpt3")


def test_checkpointing_costs_time():
    times = step_times("lab-gpt2", batch_size=1, seq_len=32, min_run_time=0.3)
    assert set(times) == {"off", "on"}
    assert times["on"].median > 0.9 * times["off"].median  # a recomputed forward: never cheaper (loosely)
    with pytest.raises(ValueError, match="min_run_time"):
        step_times(min_run_time=0)


def test_bad_recipe_names_the_argument():
    with pytest.raises(ValueError, match="recipe must be one of"):
        measure_levers("lab-gpt2", recipe="qlorra")
    assert torch.is_grad_enabled()
