"""lora_lab.adapters.serving: memory of N adapters vs N merged copies, FLOP ratio, latency."""

import pytest
import torch

from lora_lab.adapters.serving import adapter_flop_ratio, serving_latency, serving_memory
from lora_lab.finetune import load_model
from lora_lab.lora import LoraConfig, active_adapter, adapter_names, add_lora, lora_layers, trainable_parameters
from lora_lab.memory import model_shape, quantized_linear_bytes


def test_serving_memory_counts_the_shipped_model_exactly():
    model = load_model("data/lab-gpt2")
    n_params = sum(p.numel() for p in model.parameters())
    add_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    trainable, _ = trainable_parameters(model)
    m = serving_memory("lab-gpt2", 5, r=8, base_dtype="fp32", adapter_dtype="fp32")
    assert m.base_bytes == 4 * n_params and m.adapter_params == trainable and m.adapter_bytes == 4 * trainable
    assert m.shared == 4 * n_params + 5 * 4 * trainable and m.merged_copies == 5 * 4 * n_params
    assert m.ratio == pytest.approx(m.merged_copies / m.shared)


def test_serving_memory_gpt2_small_and_7b_by_hand():
    gpt2 = serving_memory("gpt2", 10)  # bf16 base and adapters, r = 8, all-linear
    assert gpt2.base_bytes == 2 * 124_439_808  # GPT-2 small's parameters (tied head counted once)
    assert gpt2.adapter_params == 12 * 8 * ((768 + 2304) + (768 + 768) + (768 + 3072) + (3072 + 768))
    llama = serving_memory("llama-2-7b", 10)
    assert llama.base_bytes == 2 * model_shape("llama-2-7b").n_params() == 2 * 6_738_415_616
    assert llama.adapter_params == 32 * 8 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))
    assert 9 < llama.ratio < 10 and llama.merged_copies == 10 * llama.base_bytes
    nf4 = serving_memory("llama-2-7b", 10, base_dtype="nf4")
    shape = model_shape("llama-2-7b")
    quant = 32 * sum(quantized_linear_bytes(i, o, "nf4", True) for _, i, o, _ in shape.block_linears())
    assert nf4.base_bytes == quant + 2 * sum(shape.other_params().values())


@pytest.mark.parametrize("kw,match", [(dict(n_adapters=0), "n_adapters"), (dict(n_adapters=True), "n_adapters"),
                                      (dict(base_dtype="int4"), "base_dtype"),
                                      (dict(adapter_dtype="nf4"), "adapter_dtype"), (dict(model="gpt5"), "model"),
                                      (dict(r=0), "r")])
def test_serving_memory_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        serving_memory(**{"model": "gpt2", "n_adapters": 2, **kw})


def test_flop_ratio_is_the_weighted_merge_ratio(pair):
    base = extra = 0
    for _, layer in lora_layers(pair):
        base += layer.in_features * layer.out_features
        extra += 4 * (layer.in_features + layer.out_features)
    head = 100 * 32
    assert adapter_flop_ratio(pair) == pytest.approx((base + head + extra) / (base + head), rel=1e-12)
    with pytest.raises(ValueError, match="no LoRA layers"):
        adapter_flop_ratio(torch.nn.Linear(3, 3))


def test_serving_latency_times_four_settings_and_leaves_the_model_as_it_was(pair):
    ids = torch.arange(16).view(4, 4) % 100
    before = pair(input_ids=ids).logits
    lat = serving_latency(pair, ids, ["qa", "cipher", "__base__", "qa"], rounds=1, min_run_time=0.01)
    assert set(lat.seconds) == {"base", "unmerged", "mixed", "merged"} and all(v > 0 for v in lat.seconds.values())
    assert lat.flop_ratio["base"] == lat.flop_ratio["merged"] == 1 and lat.flop_ratio["mixed"] > 1
    assert "median" in lat.method
    assert torch.equal(pair(input_ids=ids).logits, before) and active_adapter(pair) == "qa"
    assert adapter_names(pair) == ["qa", "cipher"] and not any(layer.merged for _, layer in lora_layers(pair))
    with pytest.raises(ValueError, match="one adapter per example"):
        serving_latency(pair, ids, ["qa"])
    with pytest.raises(ValueError, match="input_ids"):
        serving_latency(pair, ids[0], ["qa"])
    with pytest.raises(ValueError, match="rounds"):
        serving_latency(pair, ids, ["qa"] * 4, rounds=0)
