"""The memory explorer: every control moves the totals the right way and works at both ends."""

import re

import pytest
from matplotlib.figure import Figure

from lora_lab.memory.plots import plot_memory_breakdown, plot_predicted_vs_measured
from lora_lab.memory.predict import training_memory
from lora_lab.memory.shapes import model_shape
from lora_lab.memory.widgets import BATCH_MAX, RANKS, SEQ_LENS, memory_breakdowns, memory_explorer, model_bounds


def totals(box):
    """(full fine-tuning, adapters) totals in bytes, read from the readout's data attributes."""
    return tuple(int(v) for v in re.findall(r'data-total="(\d+)"', box.readout.value))


@pytest.fixture
def box():
    return memory_explorer(model="llama-2-7b", r=8, base_dtype="bf16", optimizer="adamw",
                           batch_size=2, seq_len=512, gradient_checkpointing=False)


def test_shape_of_explorer(box):
    assert set(box.controls) == {"model", "r", "base_dtype", "optimizer", "batch_size", "seq_len",
                                 "gradient_checkpointing"}
    assert len(totals(box)) == 2 and isinstance(box.figure, Figure)


def move(box, name, value):
    before = totals(box)
    box.controls[name].value = value
    return before, totals(box)


def test_rank_raises_adapter_total_only(box):
    (f0, a0), (f1, a1) = move(box, "r", 64)
    assert a1 > a0 and f1 == f0


@pytest.mark.parametrize("low,high", [("nf4", "int8"), ("int8", "bf16"), ("bf16", "fp32")])
def test_base_precision(box, low, high):
    box.controls["base_dtype"].value = high
    (_, a_high), (_, a_low) = move(box, "base_dtype", low)
    assert a_low < a_high


def test_optimizer(box):
    seen = []
    for opt in ("adamw", "sgd-momentum", "adamw-8bit", "none"):  # 8, 4, ~2, 0 bytes per weight
        box.controls["optimizer"].value = opt
        seen.append(totals(box))
    assert [f for f, _ in seen] == sorted((f for f, _ in seen), reverse=True)
    assert [a for _, a in seen] == sorted((a for _, a in seen), reverse=True)


@pytest.mark.parametrize("name,value", [("batch_size", 8), ("seq_len", 2048)])
def test_workload_raises_both(box, name, value):
    (f0, a0), (f1, a1) = move(box, name, value)
    assert f1 > f0 and a1 > a0


def test_checkpointing_lowers_both(box):
    (f0, a0), (f1, a1) = move(box, "gradient_checkpointing", True)
    assert f1 < f0 and a1 < a0


def test_bigger_model_costs_more(box):
    (f0, a0), (f1, a1) = move(box, "model", "llama-2-13b")
    assert f1 > f0 and a1 > a0


@pytest.mark.parametrize("name", ["model", "r", "base_dtype", "optimizer", "batch_size", "seq_len",
                                  "gradient_checkpointing"])
def test_every_control_at_both_ends(box, name):
    control = box.controls[name]
    ends = {"batch_size": (1, BATCH_MAX), "gradient_checkpointing": (False, True)}.get(name)
    ends = ends or (control.options[0], control.options[-1])
    for value in ends:
        control.value = value
        assert len(totals(box)) == 2 and all(t > 0 for t in totals(box))
        assert isinstance(box.figure, Figure)


def test_plots_return_figures():
    bars = {k: training_memory("gpt2", k) for k in ("full", "lora", "qlora")}
    fig = plot_memory_breakdown(bars)
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) > 0
    fig2 = plot_predicted_vs_measured({"x": (bars["lora"], bars["lora"])})
    assert isinstance(fig2, Figure)


@pytest.mark.parametrize("model", ["gpt2", "lab-gpt2", "llama-2-7b", "llama-3-8b", "llama-65b"])
def test_bounds_follow_the_model(model):
    shape, bounds = model_shape(model), model_bounds(model)
    assert max(bounds["seq_len"]) == shape.max_seq_len and set(bounds["seq_len"]) <= set(SEQ_LENS)
    assert max(bounds["r"]) <= shape.max_rank and set(bounds["r"]) <= set(RANKS)
    assert model_shape("gpt2").max_seq_len == 1024 and model_shape("llama-3-8b").max_seq_len == 8192


def test_changing_model_rebounds_and_clamps_sliders():
    box = memory_explorer(model="llama-2-7b", r=256, base_dtype="nf4", batch_size=2, seq_len=4096)
    box.controls["model"].value = "gpt2"  # context 1024
    seq = box.controls["seq_len"]
    assert max(seq.options) == 1024 and seq.value == 1024
    expect = memory_breakdowns("gpt2", r=256, base_dtype="nf4", batch_size=2, seq_len=1024)
    assert totals(box) == tuple(b.total for b in expect.values())  # readout = controls, clamped
    box.controls["model"].value = "lab-gpt2"  # width 192: r=256 is no rank of its layers
    assert box.controls["r"].value == 128 and max(box.controls["seq_len"].options) == 256
    box.controls["model"].value = "llama-3-8b"  # ranges grow back, values stay
    assert max(box.controls["seq_len"].options) == 8192 and box.controls["seq_len"].value == 256
    assert box.controls["r"].value == 128 and totals(box) == tuple(
        b.total for b in memory_breakdowns("llama-3-8b", r=128, base_dtype="nf4", batch_size=2,
                                           seq_len=256).values())


@pytest.mark.parametrize("base_dtype", ["fp32", "bf16", "fp16", "int8", "nf4"])
def test_bars_compare_like_with_like(base_dtype):
    full, adapters = memory_breakdowns("llama-2-7b", base_dtype=base_dtype, seq_len=1024,
                                       gradient_checkpointing=False).values()
    assert full.assumptions["compute_dtype"] == adapters.assumptions["compute_dtype"]
    assert adapters.components["activations"] < full.components["activations"]
