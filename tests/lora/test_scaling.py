"""lora_lab.lora.scaling, the alpha explorer and chapter 02's exercise checkers."""

import math

import pytest
import torch
from torch import nn

from lora_lab.lora.exercises import (
    check_exercise_c_attn_params,
    check_exercise_first_gradient,
    check_exercise_rslora_scaling,
)
from lora_lab.lora.layer import LoRALinear
from lora_lab.lora.scaling import (
    compare_merge_latency,
    compute_alpha_effect,
    merge_flop_ratio,
    scaling_curves,
    time_forward,
    update_norm_vs_rank,
)
from lora_lab.lora.widgets import alpha_explorer


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
    un, me = compare_merge_latency(layer, torch.randn(4, 32), rounds=1, min_run_time=0.01)
    assert un > 0 and me > 0 and not layer.merged


def test_compare_merge_latency_reports_ratio_flops_and_method():
    layer = LoRALinear(nn.Linear(48, 32), r=4)
    lat = compare_merge_latency(layer, torch.randn(8, 48), rounds=3, min_run_time=0.01)
    assert lat.ratio == lat.unmerged / lat.merged
    assert lat.flop_ratio == merge_flop_ratio(48, 32, 4) == 1 + 4 * (48 + 32) / (48 * 32)
    assert "blocked_autorange" in lat.method and "3 rounds" in lat.method and "1 thread" in lat.method
    assert not layer.merged


def test_compare_merge_latency_rejects_a_merged_layer_and_bad_rounds():
    layer = LoRALinear(nn.Linear(16, 16), r=2)
    with pytest.raises(ValueError, match="rounds=0"):
        compare_merge_latency(layer, torch.randn(2, 16), rounds=0)
    layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        compare_merge_latency(layer, torch.randn(2, 16))


def test_time_forward_is_a_median_without_autograd():
    calls = []

    class Probe(nn.Module):
        def forward(self, x):
            calls.append(torch.is_grad_enabled())
            return x

    t = time_forward(Probe(), torch.randn(2), min_run_time=0.01)
    assert t > 0 and calls and not any(calls)
    with pytest.raises(ValueError, match="min_run_time=0"):
        time_forward(Probe(), torch.randn(2), min_run_time=0)
    with pytest.raises(ValueError, match="num_threads=0"):
        time_forward(Probe(), torch.randn(2), num_threads=0)


def test_merge_flop_ratio():
    assert merge_flop_ratio(1024, 1024, 16) == pytest.approx(1.03125)   # 2r/d for a square layer
    assert merge_flop_ratio(4096, 4096, 8) == pytest.approx(1 + 16 / 4096)
    with pytest.raises(ValueError, match="r must be a positive integer, got r=0"):
        merge_flop_ratio(8, 8, 0)


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

    def scale():
        return float(_readout(box).split("scaling = ")[1].split()[0])

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


def test_fit_lora_exact_equivalences():
    """ΔW = (α/r)·B A: doubling α equals halving A and B's scale... undone exactly by the lr."""
    from lora_lab.lora.scaling import fit_lora
    for opt, lr, lr_factor in (("adam", 3e-3, 2 ** -0.5), ("sgd", 0.3, 0.5)):
        ref = fit_lora(8, lr, opt, steps=20)
        same = fit_lora(16, lr * lr_factor, opt, steps=20, init_scale=2 ** -0.5)
        rel = max(abs(a - b) / a for a, b in zip(ref.losses, same.losses))
        assert rel < (1e-4 if opt == "adam" else 1e-10), (opt, rel)   # Adam: only eps differs
        assert len(ref.losses) == 21 and ref.final_loss < ref.losses[0]


def test_fit_lora_early_steps_adam_alpha_times_lr_sgd_alpha_squared():
    from lora_lab.lora.scaling import fit_lora
    def drop(f):
        return f.losses[0] - f.losses[5]
    adam = drop(fit_lora(8, 3e-3, "adam", steps=5))
    assert 0.8 < drop(fit_lora(16, 1.5e-3, "adam", steps=5)) / adam < 1.2      # α·lr
    assert 1.5 < drop(fit_lora(16, 3e-3, "adam", steps=5)) / adam < 2.5
    sgd = drop(fit_lora(8, 0.3, "sgd", steps=5))
    assert 0.8 < drop(fit_lora(16, 0.075, "sgd", steps=5)) / sgd < 1.2         # α²·lr
    assert 1.5 < drop(fit_lora(16, 0.15, "sgd", steps=5)) / sgd < 2.5


def test_fit_lora_rejects_bad_arguments():
    from lora_lab.lora.scaling import fit_lora
    with pytest.raises(ValueError, match="optimizer"):
        fit_lora(8, 1e-3, "rmsprop")
    with pytest.raises(ValueError, match="lr=0"):
        fit_lora(8, 0)
    with pytest.raises(ValueError, match="steps=0"):
        fit_lora(8, 1e-3, steps=0)


def test_alpha_equals_r_is_not_rank_independent():
    norms = update_norm_vs_rank([1, 16, 64], 16, alpha_equals_r=True)
    assert set(norms) == {"lora", "rslora", "alpha_eq_r"}
    grow = norms["alpha_eq_r"][-1] / norms["alpha_eq_r"][0]
    assert 5 < grow < 12                                    # ~√64 = 8: nothing compensates for r
    assert "alpha_eq_r" not in update_norm_vs_rank([1], 16)


def test_plots_can_add_the_alpha_equals_r_curve():
    from lora_lab.lora.plots import plot_scaling_vs_rank, plot_update_norm_vs_rank
    for plot in (plot_scaling_vs_rank, plot_update_norm_vs_rank):
        plain, extra = plot([1, 4, 16]), plot([1, 4, 16], alpha_equals_r=True)
        assert len(extra.axes[0].lines) == len(plain.axes[0].lines) + 1
        assert any("α = r" in line.get_label() for line in extra.axes[0].lines)
