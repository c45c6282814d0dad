"""Chapter 03 explorer and figures."""

import pytest
import torch
from matplotlib.figure import Figure

from lora_lab.quant.blockwise import CODEBOOKS, bin_edges, get_codebook, nf4_codebook
from lora_lab.quant.metrics import compare_codebooks, outlier_damage, scaled_blocks
from lora_lab.quant.plots import (
    plot_bin_usage,
    plot_codebooks,
    plot_nf4_construction,
    plot_outlier_damage,
    plot_quant_errors,
    plot_weight_histogram,
)
from lora_lab.quant.widgets import BLOCKSIZES, WHOLE_TENSOR, outlier_explorer

X = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.02


@pytest.fixture
def box():
    return outlier_explorer(X)


def test_explorer_shape(box):
    assert set(box.controls) == {"blocksize", "outlier"}
    assert "bits/param" in box.readout.value and isinstance(box.figure, Figure)


@pytest.mark.parametrize("name", ["blocksize", "outlier"])
def test_each_control_changes_the_readout(box, name):
    before = box.readout.value
    control = box.controls[name]
    control.value = WHOLE_TENSOR if name == "blocksize" else 500.0
    assert box.readout.value != before


def test_controls_at_extremes(box):
    box.controls["outlier"].value = 10 ** box.controls["outlier"].max    # 1000 std (log slider: max is 3)
    for value in (32, WHOLE_TENSOR):                                # smallest block, whole tensor
        box.controls["blocksize"].value = value
        assert "×" in box.readout.value and isinstance(box.figure, Figure)
    whole = box.readout.value
    assert "100.0%" in whole and "4.008 bits/param" in whole        # 4 + 32/4096
    box.controls["outlier"].value = 10 ** box.controls["outlier"].min   # 1 std: no outlier at all
    assert "1.00×" in box.readout.value
    box.controls["blocksize"].value = 32
    assert "5.000 bits/param" in box.readout.value
    assert [o[1] for o in box.controls["blocksize"].options][-1] == WHOLE_TENSOR
    assert len(box.controls["blocksize"].options) == len(BLOCKSIZES)


def test_figures_are_figures():
    errs = compare_codebooks(X)
    figs = [plot_weight_histogram(scaled_blocks(X), {"int4": bin_edges("int4"), "nf4": bin_edges("nf4")}),
            plot_bin_usage({e.codebook: e.bin_counts for e in errs}),
            plot_nf4_construction(torch.linspace(0.9677083, 0.5, 9)[:-1], torch.linspace(0.9677083, 0.5, 8)[:-1],
                                  nf4_codebook()),
            plot_codebooks({c: get_codebook(c) for c in CODEBOOKS}),
            plot_quant_errors({"normal": errs, "again": errs}),
            plot_outlier_damage([outlier_damage(X, 20, b) for b in (32, None)], current=None)]
    assert all(isinstance(f, Figure) and f.axes for f in figs)


def test_bin_usage_plots_levels_of_different_counts():
    errs = {e.codebook: e for e in compare_codebooks(X)}
    fig = plot_bin_usage({c: errs[c].level_counts for c in ("int4", "nf4")})
    bars = [len(c) for c in fig.axes[0].containers]
    assert bars == [15, 16]
