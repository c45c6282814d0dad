"""lora_lab.memory.predict / shapes / activations / measure: predicted bytes against measured bytes."""

import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from lora_lab.memory import shapes
from lora_lab.memory.measure import compare, measure_training_step, quantize_linears_4bit, storage_bytes
from lora_lab.memory.predict import (
    BASE_DTYPES,
    COMPONENTS,
    OPTIMIZERS,
    bytes_per_trainable_param,
    optimizer_state_bytes,
    quantized_linear_bytes,
    training_memory,
)
from lora_lab.memory.shapes import PRESETS, ModelShape, model_shape, shape_from_config
from lora_lab.quant.blockwise import bits_per_param

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


# -- storage formulas ---------------------------------------------------------------------

@pytest.mark.parametrize("in_f,out_f", [(4096, 4096), (4096, 11008), (768, 2304), (128, 96)])
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_equal_bits_per_param_plus_codebooks(in_f, out_f, double_quant):
    n = in_f * out_f
    codebooks = 64 + (1024 + 4 if double_quant else 0)
    got = quantized_linear_bytes(in_f, out_f, "nf4", double_quant)
    if n % (64 * 256) == 0:
        assert got == n * bits_per_param(64, double_quant) / 8 + codebooks
    assert abs(got - codebooks - n * bits_per_param(64, double_quant) / 8) <= 8


@pytest.mark.parametrize("in_f,out_f", [(256, 512), (96, 200)])
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_match_bitsandbytes(in_f, out_f, double_quant):
    model = torch.nn.Sequential(torch.nn.Linear(in_f, out_f, bias=False))
    quantize_linears_4bit(model, double_quant=double_quant)
    from lora_lab.memory.measure import quant_tensors
    assert storage_bytes(quant_tensors(model[0].weight)) == quantized_linear_bytes(in_f, out_f, "nf4", double_quant)


def test_bytes_per_param_recipes():
    assert bytes_per_trainable_param("bf16", "adamw", True) == 16  # 2 + 2 + 4 master + 8
    assert bytes_per_trainable_param("fp32", "adamw", False) == 16
    assert bytes_per_trainable_param("bf16", "adamw", False) == 8  # torch keeps bf16 moments
    assert bytes_per_trainable_param("bf16", "adamw-8bit", False) == 6
    assert bytes_per_trainable_param("fp16", "none", False) == 4


@pytest.mark.parametrize("optimizer", ["adamw-8bit", "adamw-32bit"])
def test_bnb_optimizer_state_matches_prediction(optimizer):
    import bitsandbytes as bnb
    params = [torch.nn.Parameter(torch.randn(n)) for n in (100, 4096, 5000, 70_000)]
    cls = bnb.optim.AdamW8bit if optimizer == "adamw-8bit" else bnb.optim.AdamW32bit
    opt = cls(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert storage_bytes(state) == optimizer_state_bytes([p.numel() for p in params], optimizer, 4)


def test_torch_sgd_momentum_state():
    params = [torch.nn.Parameter(torch.randn(n, dtype=torch.bfloat16)) for n in (10, 300)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert storage_bytes(state) == optimizer_state_bytes([10, 300], "sgd-momentum", 2)


# -- predicted vs measured on real modules -------------------------------------------------

def _check(pred, meas, act_tol=0.05):
    for comp in COMPONENTS:
        p, m = pred.components[comp], meas.components[comp]
        if comp == "activations":
            assert abs(p / m - 1) < act_tol, (comp, p, m)
        elif m == 0:
            assert p == 0, (comp, p)
        else:
            assert abs(p / m - 1) < 0.01, (comp, p, m)


def gpt2(n_layer=2, n_embd=128, n_head=4, vocab=1000, attn="sdpa", drop=0.1, act="gelu_new"):
    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=128,
                      resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop, attn_implementation=attn,
                      activation_function=act)


def llama(layers=2, h=128, heads=4, kv=2, ff=344, vocab=1000, attn="sdpa"):
    return LlamaConfig(num_hidden_layers=layers, hidden_size=h, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=ff, vocab_size=vocab,
                       attn_implementation=attn)


CASES = [  # (config, recipe, target_modules, batch, seq)
    (gpt2(), "lora", ("c_attn",), 2, 24),
    (gpt2(attn="eager", drop=0.0), "lora", "all-linear", 1, 40),
    (gpt2(n_layer=3, n_embd=96, n_head=3, vocab=517, drop=0.0), "qlora", ("c_attn", "c_fc"), 2, 17),
    (gpt2(act="gelu_pytorch_tanh"), "qlora", "all-linear", 1, 32),
    (gpt2(n_layer=1), "full", None, 2, 16),
    (llama(), "lora", ("q_proj", "v_proj"), 2, 20),
    (llama(kv=4, attn="eager"), "qlora", "all-linear", 1, 24),
    (llama(layers=1, h=64, heads=2, kv=1, ff=160), "full", None, 2, 12),
]


@pytest.mark.parametrize("config,recipe,targets,batch,seq", CASES)
def test_predicted_equals_measured(config, recipe, targets, batch, seq):
    pred, meas = compare(config, recipe, r=4, target_modules=targets, batch_size=batch, seq_len=seq)
    _check(pred, meas)


@pytest.mark.parametrize("config,targets", [(gpt2(), ("c_attn",)), (gpt2(attn="eager", drop=0.0), "all-linear"),
                                            (llama(), ("q_proj", "v_proj"))])
def test_lora_on_bf16_base_matches_and_equals_qlora_activations(config, targets):
    pred, meas = compare(config, "lora", r=4, target_modules=targets, batch_size=2, seq_len=20, base_dtype="bf16")
    _check(pred, meas)
    qpred, qmeas = compare(config, "qlora", r=4, target_modules=targets, batch_size=2, seq_len=20)
    assert meas.components["activations"] == qmeas.components["activations"]  # same compute dtype
    frozen = qmeas.components["quantized base"] + qmeas.components["unquantized base"]
    assert meas.components["unquantized base"] > frozen


def test_build_model_base_dtype_is_checked():
    with pytest.raises(ValueError, match="base_dtype"):
        compare(gpt2(), "lora", base_dtype="fp16")
    with pytest.raises(ValueError, match="base_dtype"):
        compare(gpt2(), "qlora", base_dtype="bf16")


def test_param_bytes_by_dtype_sees_peft_kbit_cast():
    from peft import prepare_model_for_kbit_training

    from lora_lab.memory.measure import build_model, param_bytes_by_dtype
    model, _ = build_model(gpt2(drop=0.0), "qlora", r=4)
    before = param_bytes_by_dtype(model)
    assert set(before) == {"quantized", "bfloat16", "float32"}  # 4-bit base, bf16 rest, fp32 adapters
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    after = param_bytes_by_dtype(model)
    assert "bfloat16" not in after and after["quantized"] == before["quantized"]
    assert after["float32"] == before["float32"] + 2 * before["bfloat16"]


def test_gpt2_small_lora_within_one_percent():
    pred, meas = compare(GPT2Config(), "lora", r=8, target_modules=("c_attn",), seq_len=16)
    _check(pred, meas)
    assert pred.components["trainable weights"] == 12 * 8 * (768 + 2304) * 4


@pytest.mark.parametrize("config", [gpt2(n_layer=3), llama(layers=3)])
def test_gradient_checkpointing_stores_block_inputs(config):
    pred, meas = compare(config, "lora", r=4, target_modules="all-linear", batch_size=2, seq_len=24,
                         gradient_checkpointing=True)
    stored = pred.activation_detail["stored"]
    assert abs(stored / meas.components["activations"] - 1) < 0.05
    plain, _ = compare(config, "lora", r=4, target_modules="all-linear", batch_size=2, seq_len=24)
    assert pred.components["activations"] < plain.components["activations"]


def test_measure_dedupes_tied_embeddings():
    model = AutoModelForCausalLM.from_config(gpt2(drop=0.0))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    meas = measure_training_step(model, opt, torch.zeros(1, 8, dtype=torch.long))
    assert meas.components["trainable weights"] == 4 * shape_from_config(model.config).n_params()
    assert meas.cuda_max_allocated is None


# -- properties of the predictor -------------------------------------------------------------

shapes_st = st.builds(
    lambda arch, L, heads, hd, V, ff: ModelShape("h", arch, L, heads * hd, heads, V, ff,
                                                 n_positions=64 if arch == "gpt2" else 0),
    st.sampled_from(["gpt2", "llama"]), st.integers(1, 8), st.integers(1, 8), st.integers(4, 64),
    st.integers(10, 5000), st.integers(8, 1024))


@settings(max_examples=40, deadline=None)
@given(shape=shapes_st, r=st.integers(1, 4), batch=st.integers(1, 4), seq=st.integers(1, 256))
def test_monotone_in_every_knob(shape, r, batch, seq):
    kw = dict(batch_size=batch, seq_len=seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = training_memory(shape, "lora", r=r, **kw)
        assert training_memory(shape, "lora", r=2 * r, **kw).components["trainable weights"] > \
            base.components["trainable weights"]
        assert training_memory(shape, "lora", r=r, batch_size=batch + 1, seq_len=seq).components["activations"] > \
            base.components["activations"]
        q = training_memory(shape, "qlora", r=r, **kw)
        assert q.components["quantized base"] + q.components["unquantized base"] < \
            base.components["unquantized base"] or \
            min(i * o for _, i, o, _ in shape.block_linears()) < 16384  # codebooks (1 KB/layer) win
        full = training_memory(shape, "full", **kw)
        assert full.counts["trainable params"] == shape.n_params()
        assert full.components["master weights"] == 4 * shape.n_params()


def test_checkpointing_saves_activations_at_scale():
    a = training_memory("llama-2-7b", "qlora", batch_size=4, seq_len=2048)
    b = training_memory("llama-2-7b", "qlora", batch_size=4, seq_len=2048, gradient_checkpointing=True)
    assert b.components["activations"] < a.components["activations"] / 5


@pytest.mark.parametrize("dtype,smaller", [("fp32", "bf16"), ("bf16", "int8"), ("int8", "nf4")])
def test_base_precision_order(dtype, smaller):
    big = training_memory("llama-2-7b", "lora", base_dtype=dtype)
    small = training_memory("llama-2-7b", "lora", base_dtype=smaller)
    assert small.total < big.total


def test_optimizer_order():
    totals = [training_memory("gpt2", "full", optimizer=o).components["optimizer state"] for o in
              ("adamw", "sgd-momentum", "adamw-8bit", "none")]  # 8, 4, ~2, 0 bytes per weight
    assert totals == sorted(totals, reverse=True) and totals[-1] == 0


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,name", [
    (dict(batch_size=0), "batch_size"), (dict(seq_len=-1), "seq_len"), (dict(r=0), "r"),
    (dict(base_dtype="fp8"), "base_dtype"), (dict(optimizer="adam9"), "optimizer"),
    (dict(recipe="prefix"), "recipe"), (dict(model="gpt5"), "model"),
    (dict(target_modules=("q_proj",)), "target_modules"), (dict(trainable_dtype="int4"), "trainable_dtype"),
    (dict(attn_implementation="flash9"), "attn_implementation"), (dict(device="tpu"), "device"),
])
def test_bad_input_names_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        training_memory(**{"model": "gpt2", **kw})


def test_full_finetuning_of_quantized_base_is_an_error():
    with pytest.raises(ValueError, match="base_dtype"):
        training_memory("gpt2", "full", base_dtype="nf4")


def test_rank_above_width_warns():
    tiny = ModelShape("tiny", "llama", 1, 32, 4, 100, 64)
    with pytest.warns(UserWarning, match="r=48"):
        training_memory(tiny, "lora", r=48)


def test_all_choices_run():
    for base in BASE_DTYPES:
        for opt in OPTIMIZERS:
            assert training_memory("gpt2-medium", "lora", base_dtype=base, optimizer=opt).total > 0
