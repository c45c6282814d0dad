"""Chapter 05's exercise checkers (right and wrong answers) and figures."""

import pytest
from matplotlib.figure import Figure

from lora_lab.finetune import plot_loss_curves, plot_memory_breakdown
from lora_lab.finetune.exercises import (
    check_exercise_bits_per_weight,
    check_exercise_first_step_over,
    check_exercise_merge_recipe,
    check_exercise_trainable_params,
    lora_params_all_linear,
)
from lora_lab.finetune.models import load_model
from lora_lab.lora.layer import LoraConfig, add_lora, trainable_parameters


def test_trainable_params_matches_a_real_model():
    model = add_lora(load_model(), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    trainable, _ = trainable_parameters(model)
    assert lora_params_all_linear(16, 4, 192) == trainable
    assert check_exercise_trainable_params(trainable)
    wrong = check_exercise_trainable_params(trainable // 2)
    assert not wrong and "r·(in + out)" in wrong.message


def test_bits_per_weight():
    assert check_exercise_bits_per_weight(4.127)
    assert not check_exercise_bits_per_weight(4.5) and "absmax" in check_exercise_bits_per_weight(4.5).message
    assert not check_exercise_bits_per_weight("four")


def test_merge_recipe():
    assert check_exercise_merge_recipe("b") and check_exercise_merge_recipe("B")
    assert not check_exercise_merge_recipe("a")
    assert "not one of the options" in check_exercise_merge_recipe("d").message


def test_first_step_over():
    evals = [(50, {"exact_match": 0.8}), (100, {"exact_match": 0.93}), (150, {"exact_match": 0.96})]
    assert check_exercise_first_step_over(100, evals)
    assert not check_exercise_first_step_over(150, evals)
    assert check_exercise_first_step_over(None, [(50, {"exact_match": 0.1})])


def test_figures():
    fig = plot_loss_curves({"a": [3.0, 2.0, 1.0] * 10, "b": [2.0] * 30}, smooth=5,
                           evals={"a": [(10, 0.5), (30, 0.9)]})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig = plot_memory_breakdown({"x": {"trainable weights": 10**6, "activations": 2 * 10**6},
                                 "y": {"trainable weights": 10**5, "activations": 0}}, unit=1e6, unit_name="MB")
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "memory (MB)"
    assert fig.axes[0].texts[0].get_text() == "3.0 MB"  # a measured dict's components stack
    with pytest.raises(ValueError, match="smooth"):
        plot_loss_curves({"a": [1.0]}, smooth=0)
