"""lora_lab.memory.shapes: the preset shapes against transformers' configs, validation."""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from lora_lab.memory import shapes
from lora_lab.memory.predict import training_memory
from lora_lab.memory.shapes import PRESETS, ModelShape, model_shape, shape_from_config

warnings.filterwarnings("ignore", message=".*kernels.*")


# -- shapes ------------------------------------------------------------------------------

LLAMA_CONFIGS = {  # the published configs of the presets (numbers only)
    "llama-2-7b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                       intermediate_size=11008, vocab_size=32000),
    "llama-3-8b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256),
}


@pytest.mark.parametrize("name,config", [
    ("gpt2", GPT2Config()), ("gpt2-medium", GPT2Config(n_layer=24, n_embd=1024, n_head=16)),
    *[(k, LlamaConfig(**v)) for k, v in LLAMA_CONFIGS.items()]])
def test_preset_parameter_counts_match_transformers(name, config):
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    real = sum(p.numel() for p in model.parameters())  # tied weights listed once
    assert PRESETS[name].n_params() == real
    assert sorted(PRESETS[name].param_numels()) == sorted(p.numel() for p in model.parameters())
    assert shape_from_config(config).n_params() == real


def test_context_lengths():
    assert [model_shape(m).max_seq_len for m in ("gpt2", "llama-2-7b", "llama-3-8b", "llama-65b")] == \
        [1024, 4096, 8192, 2048]
    assert shape_from_config(LlamaConfig(**LLAMA_CONFIGS["llama-3-8b"], max_position_embeddings=8192)) \
        .max_seq_len == 8192
    assert model_shape("lab-gpt2").max_rank == 192 and model_shape("llama-3-8b").max_rank == 1024


def test_published_sizes():
    assert PRESETS["gpt2"].n_params() == 124_439_808
    assert round(PRESETS["llama-2-7b"].n_params() / 1e9, 2) == 6.74
    assert round(PRESETS["llama-65b"].n_params() / 1e9, 1) == 65.3
    assert round(PRESETS["llama-2-70b"].n_params() / 1e9, 1) == 69.0


def test_lab_gpt2_loads_lazily(tmp_path, monkeypatch):
    missing = tmp_path / "nope.json"
    monkeypatch.setattr(shapes, "LAB_GPT2_CONFIG", missing)
    with pytest.raises(ValueError, match="lab-gpt2"):
        model_shape("lab-gpt2")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=4096).to_dict()))
    monkeypatch.setattr(shapes, "LAB_GPT2_CONFIG", cfg)
    s = model_shape("lab-gpt2")
    assert (s.n_layers, s.d_model, s.vocab_size, s.name) == (4, 256, 4096, "lab-gpt2")
    assert training_memory("lab-gpt2", "lora").total > 0


@pytest.mark.parametrize("field,value", [("n_layers", 0), ("d_model", -8), ("n_heads", 5),
                                         ("vocab_size", 1.5), ("arch", "rnn"), ("dropout", 1.0)])
def test_shape_validation_names_field(field, value):
    kw = dict(name="x", arch="gpt2", n_layers=2, d_model=64, n_heads=4, vocab_size=100, d_ff=256)
    kw[field] = value
    with pytest.raises(ValueError, match="n_heads" if field == "n_heads" else field):
        ModelShape(**kw)


