"""Loading the shipped model, 4-bit backends, and the error for unknown names."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from lora_lab.corpus.task import make_split
from lora_lab.finetune.models import (
    SHIPPED_MODEL,
    ModelLoadError,
    dequantize_model,
    load_model,
    load_tokenizer,
    model_bytes,
    quantized_layers,
)
from lora_lab.finetune.trainer import collate, encode_examples


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer()
    return collate(encode_examples(tok, make_split("eval", 16)), tok.pad_token_id, "cpu")


@pytest.fixture(scope="module")
def fp_logits(batch):
    with torch.no_grad():
        return load_model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_shipped_model_loads_like_any_hub_model():
    model = AutoModelForCausalLM.from_pretrained("data/lab-gpt2")
    tok = AutoTokenizer.from_pretrained("data/lab-gpt2")
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.n_positions == 256 and model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|endoftext|>"
    assert tok.decode(tok("Tom found a red ball.")["input_ids"]) == "Tom found a red ball."
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 4e6
    disk = sum(f.stat().st_size for f in SHIPPED_MODEL.iterdir())
    assert disk <= 15e6, disk
    card = (SHIPPED_MODEL / "README.md").read_text()
    metrics = json.loads((SHIPPED_MODEL / "build_metrics.json").read_text())
    assert f"{metrics['heldout_loss']:.3f}" in card


def test_shipped_model_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_tokenizer("data/lab-gpt2").pad_token == "<|endoftext|>"
    assert load_model("lab-gpt2").config.n_layer == 4


def test_generation_reads_as_english():
    tok, model = load_tokenizer(), load_model()
    ids = tok("Once upon a time,", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0])
    assert text.count(" ") > 15 and "." in text


@pytest.mark.parametrize("backend", ["bitsandbytes", "lora_lab"])
def test_4bit_forward_close_to_fp(backend, batch, fp_logits):
    """NF4 + double quant: relative RMS error of the logits <= 12%, top-1 token agreement >= 88%
    (measured 8.9% and 92% for the shipped model)."""
    model = load_model(quantization="nf4", backend=backend)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["attention_mask"].bool()
    diff, ref = (logits - fp_logits)[keep], fp_logits[keep]
    rel = (diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    top1 = (logits.argmax(-1) == fp_logits.argmax(-1))[keep].float().mean().item()
    assert 0 < rel <= 0.12 and top1 >= 0.88, (rel, top1)


def test_backends_agree_and_nf4_beats_fp4(batch, fp_logits):
    def logits(**kw):
        with torch.no_grad():
            return load_model(**kw)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    bnb, ours = logits(quantization="nf4"), logits(quantization="nf4", backend="lora_lab")
    assert torch.allclose(bnb, ours, atol=1e-4)  # same codebook, blocks and double quantization
    fp4 = logits(quantization="fp4")
    assert (bnb - fp_logits).pow(2).mean() < (fp4 - fp_logits).pow(2).mean()


def test_which_layers_are_quantized():
    model = load_model(quantization="nf4")
    quantized, kept = quantized_layers(model)
    assert len(quantized) == 4 * 4  # c_attn, c_proj (attention), c_fc, c_proj (MLP) per block
    assert all(".h." in n for n in quantized)
    assert "transformer.wte" in kept and "transformer.ln_f" in kept
    assert model_bytes(load_model()) > 3 * model_bytes(model)


def test_bad_arguments():
    with pytest.raises(ValueError, match="quantization"):
        load_model(quantization="int3")
    with pytest.raises(ValueError, match="backend"):
        load_model(quantization="nf4", backend="gptq")


def test_unknown_model_offline_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as err:
        load_model("no-such-model-xyz")
    msg = str(err.value)
    assert "local folder" in msg and "Hub" in msg and "data/lab-gpt2" in msg


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(str(tmp_path))


def test_dequantize_model_makes_merging_exact(batch):
    """dequantize_model keeps the 4-bit model's function (it holds W_dq in fp32), and
    merging an adapter into it equals the unmerged 4-bit model."""
    from lora_lab.lora.io import load_adapter, save_adapter
    from lora_lab.lora.layer import LoraConfig, add_lora, merge_lora

    def logits(m):
        with torch.no_grad():
            return m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    q = load_model(quantization="nf4")
    dq = dequantize_model(load_model(quantization="nf4"))
    assert not quantized_layers(dq)[0]
    assert torch.allclose(logits(q), logits(dq), atol=1e-4)
    add_lora(q, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for name, p in q.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        save_adapter(q, d)
        merged = merge_lora(load_adapter(dequantize_model(load_model(quantization="nf4")), d))
        rounded = merge_lora(load_adapter(load_model(quantization="nf4"), d))
    exact_gap = (logits(merged) - logits(q)).abs().max()
    rounded_gap = (logits(rounded) - logits(q)).abs().max()
    assert exact_gap < 1e-3 < rounded_gap
