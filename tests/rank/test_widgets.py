"""Widget tests for the rank chapter's explorer (built with build_explorer)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from lora_lab.rank.lowrank import compare_param_counts, random_low_rank, reconstruction_errors, singular_values
from lora_lab.rank.plots import plot_approx_error, plot_param_counts, plot_singular_values
from lora_lab.rank.widgets import param_count_explorer, param_count_readout


@pytest.fixture
def box():
    return param_count_explorer()


def test_explorer_shape(box):
    assert set(box.controls) == {"d_in", "d_out", "r"}
    assert all(not c.continuous_update for c in box.controls.values())
    assert isinstance(box.figure, Figure)
    assert "16,777,216" in box.readout.value and "65,536" in box.readout.value


@pytest.mark.parametrize("name, value", [("d_in", 768), ("d_out", 2304), ("r", 16)])
def test_each_slider_changes_readout_and_figure(box, name, value):
    before_html, before_fig = box.readout.value, box.figure
    box.controls[name].value = value
    assert box.readout.value != before_html
    assert box.figure is not before_fig
    values = {k: c.value for k, c in box.controls.items()}
    c = compare_param_counts(values["d_out"], values["d_in"], values["r"])
    assert f"{c.full:,}" in box.readout.value and f"{c.lora:,}" in box.readout.value


@pytest.mark.parametrize("name", ["d_in", "d_out", "r"])
@pytest.mark.parametrize("end", ["min", "max"])
def test_each_slider_at_its_extremes(box, name, end):
    slider = box.controls[name]
    slider.value = getattr(slider, end)
    assert slider.value == getattr(slider, end)
    values = {k: c.value for k, c in box.controls.items()}
    c = compare_param_counts(values["d_out"], values["d_in"], values["r"])
    assert f"{c.lora:,}" in box.readout.value
    assert isinstance(box.figure, Figure) and box.figure.axes


def test_readout_warns_when_r_exceeds_shape(box):
    box.controls["d_in"].value = 8
    box.controls["r"].value = 100
    assert "exceeds min(d_out, d_in) = 8" in box.readout.value
    assert "exceeds" not in param_count_readout(4096, 4096, 8)


def test_plots_return_figures_and_use_given_ax():
    fig = plot_param_counts(4096, 4096, 8)
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()[:3]) == [8192, 16384, 24576]
    S = {"low-rank": singular_values(random_low_rank(16, 16, 2, generator=torch.Generator().manual_seed(0))),
         "full": singular_values(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))}
    fig2 = Figure()
    ax = fig2.subplots()
    assert plot_singular_values(S, ax=ax) is fig2 and len(ax.lines) == 2
    rec = reconstruction_errors(torch.randn(8, 8, generator=torch.Generator().manual_seed(2)))
    fig3 = plot_approx_error({"random": rec})
    assert len(fig3.axes[0].lines) == 2

