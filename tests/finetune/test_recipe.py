"""Recipes and the adapter round trip lora_lab <-> PEFT on the bitsandbytes 4-bit model."""

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

from lora_lab.corpus.task import make_split
from lora_lab.finetune.evaluate import evaluate_task
from lora_lab.finetune.models import load_model, load_tokenizer
from lora_lab.finetune.recipe import memory_report, prepare_model
from lora_lab.finetune.trainer import TrainConfig, collate, encode_examples, train
from lora_lab.lora.io import load_adapter, save_adapter
from lora_lab.lora.layer import LoraConfig

CONFIG = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
EVAL = make_split("eval", 60)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def trained_adapter(tok, tmp_path_factory):
    model = prepare_model("data/lab-gpt2", "qlora", lora_config=CONFIG, seed=0)
    train(model, tok, make_split("train", 400), TrainConfig(steps=40, batch_size=8), progress=False)
    path = save_adapter(model, tmp_path_factory.mktemp("adapter"), CONFIG)
    return model, path


def logits(model, tok):
    batch = collate(encode_examples(tok, EVAL[:8]), tok.pad_token_id, "cpu")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_lora_lab_adapter_loads_in_peft_with_the_same_metric(trained_adapter, tok):
    ours, path = trained_adapter
    peft_model = PeftModel.from_pretrained(load_model(quantization="nf4"), str(path))
    a, b = evaluate_task(ours, tok, EVAL), evaluate_task(peft_model, tok, EVAL)
    assert a.exact_match > 0.2  # it learned something, so the comparison means something
    assert abs(a.percent - b.percent) <= 1.0
    assert torch.allclose(logits(ours, tok), logits(peft_model, tok), atol=1e-4)


def test_adapter_reloads_into_a_fresh_quantized_base(trained_adapter, tok):
    ours, path = trained_adapter
    fresh = load_adapter(load_model(quantization="nf4"), path)
    assert evaluate_task(fresh, tok, EVAL).predictions == evaluate_task(ours, tok, EVAL).predictions


def test_peft_trained_adapter_loads_in_lora_lab(tok, tmp_path):
    base = prepare_model_for_kbit_training(load_model(quantization="nf4"), use_gradient_checkpointing=False)
    peft_model = get_peft_model(base, PeftLoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     task_type="CAUSAL_LM"))
    train(peft_model, tok, make_split("train", 64), TrainConfig(steps=3, batch_size=4), progress=False)
    peft_model.save_pretrained(tmp_path)
    ours = load_adapter(load_model(quantization="nf4"), tmp_path)
    assert torch.allclose(logits(peft_model, tok), logits(ours, tok), atol=1e-4)


def test_corrupt_or_mismatched_adapter_is_a_clear_error(trained_adapter, tmp_path):
    _, path = trained_adapter
    (tmp_path / "adapter_config.json").write_text((path / "adapter_config.json").read_text())
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="safetensors"):
        load_adapter(load_model(quantization="nf4"), tmp_path)
    other = prepare_model("data/lab-gpt2", "qlora", lora_config=LoraConfig(r=4, lora_alpha=8,
                                                                          target_modules="all-linear"))
    with pytest.raises(ValueError, match="r=4"):
        load_adapter(other, path)


def test_prepare_model_recipes():
    full = prepare_model("data/lab-gpt2", "full")
    assert all(p.requires_grad for p in full.parameters())
    lora = prepare_model("data/lab-gpt2", "lora", lora_config=CONFIG)
    assert type(lora.transformer.h[0].attn.c_attn.base_layer).__name__ == "Conv1D"
    q = prepare_model("data/lab-gpt2", "qlora", lora_config=CONFIG, backend="lora_lab")
    assert type(q.transformer.h[0].attn.c_attn.base_layer).__name__ == "FrozenLinear4bit"
    with pytest.raises(ValueError, match="recipe"):
        prepare_model("data/lab-gpt2", "dora")
    with pytest.raises(ValueError, match="quantization"):
        prepare_model("data/lab-gpt2", "qlora", quantization=None)


@pytest.mark.parametrize("recipe", ["qlora", "lora", "full"])
def test_memory_report_predicts_the_measured_step_and_leaves_the_model_unchanged(recipe):
    model = prepare_model("data/lab-gpt2", recipe, lora_config=CONFIG)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    report = memory_report(model, recipe, batch_size=2, seq_len=32)
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(before, after)) and all(p.grad is None for p in after)
    assert report.measured["optimizer state"] == pytest.approx(2 * report.measured["trainable weights"], rel=1e-3)
    assert report.predicted_total == pytest.approx(report.measured_total, rel=0.1)
