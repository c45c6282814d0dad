"""lora_lab.scaling, the alpha explorer and chapter 02's exercise checkers."""

import math

import pytest
import torch
from torch import nn

from lora_lab.exercises.lora import (check_exercise_c_attn_params, check_exercise_first_gradient,
                                     check_exercise_rslora_scaling)
from lora_lab.lora import LoRALinear
from lora_lab.scaling import (compare_merge_latency, compute_alpha_effect, scaling_curves,
                              update_norm_vs_rank)
from lora_lab.widgets.lora import alpha_explorer


def test_delta_is_linear_in_alpha():
    a, b = compute_alpha_effect(8, 8), compute_alpha_effect(8, 24)
    assert b.delta_norm / a.delta_norm == pytest.approx(3, rel=1e-5)
    assert b.output_shift > a.output_shift


def test_rslora_keeps_update_size():
    ranks = [1, 4, 16, 64]
    norms = update_norm_vs_rank(ranks, 16)
    assert all(x > y for x, y in zip(norms["lora"], norms["lora"][1:]))  # shrinks with r
    assert max(norms["rslora"]) / min(norms["rslora"]) < 1.25           # roughly constant
    assert scaling_curves([4], 16) == {"lora": [4.0], "rslora": [8.0]}


def test_compare_merge_latency_leaves_layer_unmerged():
    layer = LoRALinear(nn.Linear(32, 32), r=2)
    un, me = compare_merge_latency(layer, torch.randn(4, 32), rounds=1, repeats=2)
    assert un > 0 and me > 0 and not layer.merged


def _readout(box):
    return box.readout.value


@pytest.mark.parametrize("name", ["r", "lora_alpha"])
def test_alpha_explorer_sliders_change_readout_and_work_at_extremes(name):
    box = alpha_explorer()
    slider = box.controls[name]
    before = _readout(box)
    for value in (slider.min, slider.max):
        slider.value = value
        assert "scaling" in _readout(box) and box.figure is not None
    assert _readout(box) != before


def test_alpha_explorer_directions():
    box = alpha_explorer(r=8, lora_alpha=16)
    scale = lambda: float(_readout(box).split("scaling = ")[1].split()[0])
    s0 = scale()
    box.controls["lora_alpha"].value = 32
    assert scale() == pytest.approx(2 * s0)
    box.controls["r"].value = 32
    assert scale() == pytest.approx(1.0)
    box.controls["use_rslora"].value = True
    assert scale() == pytest.approx(32 / math.sqrt(32), rel=1e-3)
    box.controls["use_rslora"].value = False
    assert scale() == pytest.approx(1.0)


def test_exercise_checkers_right_and_wrong():
    assert check_exercise_c_attn_params(12 * 16 * (768 + 2304))
    wrong = check_exercise_c_attn_params(12 * 16 * (768 + 768))
    assert not wrong and "2304" in wrong.message
    assert not check_exercise_c_attn_params("lots")
    assert check_exercise_first_gradient("b") and check_exercise_first_gradient("B")
    assert not check_exercise_first_gradient("A")
    assert "options" in check_exercise_first_gradient("C").message
    assert check_exercise_rslora_scaling(2.0)
    assert "√r" in check_exercise_rslora_scaling(0.25).message
