"""lora_lab.lora.baselayer: PEFT's target_modules rule as plain functions (issue 11, item 8).
Matching whole models against PEFT is in test_layer.py (find_target_modules, add_lora)."""

from lora_lab.lora.baselayer import check_target_modules, select_targets, target_matches


def test_target_helpers_directly():
    assert target_matches(("c_attn",), "transformer.h.0.attn.c_attn")
    assert not target_matches(("attn",), "transformer.h.0.attn.c_attn")
    assert target_matches(r".*attn\.c_attn", "transformer.h.0.attn.c_attn")
    assert not target_matches("c_attn", "transformer.h.0.attn.c_attn")  # fullmatch, not search
    assert check_target_modules(["a", "b", "a"]) == ("a", "b")
    assert select_targets(["x"], ["", "m.x", "m.y"], ["m.x", "m.y"]) == ["m.x"]

