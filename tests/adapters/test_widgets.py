"""lora_lab.adapters.widgets: the combination explorer (committed points; live ΔW with a model)."""

import pytest

from lora_lab.adapters.combine import summarize
from lora_lab.adapters.widgets import combination_explorer, combination_readout
from lora_lab.lora import adapter_names


def _records():
    recs = []
    for seed in range(3):
        def rec(config, qa, cipher):
            return {"id": f"{config}{seed}", "config": {**config, "seed": seed},
                    "metrics": {"qa": qa, "cipher": cipher}, "n_eval": {"qa": 200, "cipher": 200}}
        recs += [rec({"kind": "base"}, 0.0, 0.0), rec({"kind": "adapter", "adapter": "qa"}, 0.9, 0.0),
                 rec({"kind": "adapter", "adapter": "cipher"}, 0.0, 0.3)]
        for i, ctype in enumerate(("svd", "linear", "cat")):
            for wq in (0.0, 0.5, 1.0, 1.5):
                for wc in (0.0, 0.5, 1.0, 1.5):
                    if wq or wc:
                        recs.append(rec({"kind": "combination", "combination_type": ctype, "weights": [wq, wc]},
                                        0.1 * wq + 0.01 * i, 0.1 * wc + 0.01 * seed))
    return recs


SUMMARY = summarize(_records())


def test_every_control_changes_the_readout_and_the_figure():
    box = combination_explorer(SUMMARY)
    assert "cat" in box.readout.value and "3 seeds" in box.readout.value and box.figure is not None
    for name, value in (("w_qa", 1.5), ("w_cipher", 0.5), ("combination_type", "linear")):
        before, fig = box.readout.value, box.figure
        box.controls[name].value = value
        assert box.readout.value != before and box.figure is not fig, name
    box.controls["w_qa"].value = 0.0
    box.controls["w_cipher"].value = 0.0
    assert "the base" in box.readout.value


def test_readout_numbers_come_from_the_points():
    html = combination_readout(SUMMARY, 1.5, 1.0, "svd")
    assert "15.0% ± " in html and "its adapter alone 90.0%" in html and "ΔW" not in html


def test_with_a_model_the_readout_shows_the_combined_delta(pair):
    html = combination_readout(SUMMARY, 1.0, 1.0, "cat", model=pair)
    assert "rank r = 8" in html and "= 0.00" in html
    assert "rank r = 4" in combination_readout(SUMMARY, 1.0, 1.0, "linear", model=pair)
    assert adapter_names(pair) == ["qa", "cipher"]


def test_a_setting_that_was_not_measured_is_an_error():
    with pytest.raises(ValueError, match="no committed measurement"):
        combination_readout(SUMMARY, 2.0, 1.0, "cat")
