"""lora_lab.memory.measure: predicted bytes against bytes measured on real modules."""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from lora_lab.lora.layer import LoraConfig
from lora_lab.memory.measure import apply_recipe, compare, measure_training_step, predict_and_measure
from lora_lab.memory.predict import COMPONENTS
from lora_lab.memory.shapes import shape_from_config
from lora_lab.quant.linear4bit import quantize_model

warnings.filterwarnings("ignore", message=".*kernels.*")


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


# -- apply_recipe: the one setup of full / lora / qlora (build_model, finetune.prepare_model) --------

def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [(n, type(m).__name__) for n, m in model.named_modules()])


def _same(model, state):
    tensors, flags, types = _state(model)
    assert sorted(tensors) == sorted(state[0]) and all(torch.equal(tensors[k], v) for k, v in state[0].items())
    assert (flags, types) == state[1:]


def _tiny(seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                                       n_positions=32))


@pytest.mark.parametrize("kw,match", [
    (dict(recipe="dora"), r"recipe must be one of \('full', 'lora', 'qlora'\), got 'dora'"),
    (dict(dtype=torch.int8), r"dtype must be None or one of .*torch.int8"),
    (dict(lora_config={"r": 2}), r"lora_config must be a lora_lab LoraConfig or None, got dict"),
    (dict(recipe="qlora", lora_config=LoraConfig(target_modules=["q_proj"]), dtype=torch.bfloat16), r"'q_proj'"),
    (dict(recipe="full", gradient_checkpointing=True, model=torch.nn.Linear(4, 4)), r"needs a transformers model"),
])
def test_apply_recipe_bad_input_changes_nothing(kw, match):
    model = kw.pop("model", None) or _tiny()
    state = _state(model)
    with pytest.raises(ValueError, match=match):
        apply_recipe(model, **kw)
    _same(model, state)


def test_apply_recipe_sets_up_each_recipe():
    full = apply_recipe(_tiny().requires_grad_(False), "full")
    assert all(p.requires_grad for p in full.parameters())
    lora = apply_recipe(_tiny(), "lora", LoraConfig(r=2, target_modules=["c_attn"]), dtype=torch.bfloat16,
                        generator=torch.Generator().manual_seed(0))
    trainable = {n: p.dtype for n, p in lora.named_parameters() if p.requires_grad}
    assert len(trainable) == 4 and all(".attn.c_attn.lora_" in n for n in trainable)  # A and B in 2 blocks
    assert set(trainable.values()) == {torch.float32}  # fp32 adapters on a bf16 base, as PEFT
    assert lora.transformer.h[0].attn.c_attn.base_layer.weight.dtype == torch.bfloat16
    q = apply_recipe(_tiny(), "qlora", LoraConfig(r=2, target_modules="all-linear"), dtype=torch.bfloat16)
    base = q.transformer.h[0].mlp.c_fc.base_layer
    assert type(base).__name__ == "Linear4bit" and base.weight.quant_state.quant_type == "nf4"
    assert base.compute_dtype == torch.bfloat16 and type(q.lm_head).__name__ == "Linear"
    own = quantize_model(_tiny(), "all-linear")  # already 4-bit (lora_lab's layer): kept, not quantized again
    own = apply_recipe(own, "qlora", LoraConfig(r=2, target_modules="all-linear"))
    assert type(own.transformer.h[0].mlp.c_fc.base_layer).__name__ == "FrozenLinear4bit"


def test_apply_recipe_draws_adapters_from_the_generator():
    def adapters(seed):
        model = apply_recipe(_tiny(), "lora", LoraConfig(r=2, target_modules=["c_fc"]),
                             generator=torch.Generator().manual_seed(seed))
        return torch.cat([p.flatten() for p in model.parameters() if p.requires_grad])
    assert torch.equal(adapters(3), adapters(3)) and not torch.equal(adapters(3), adapters(4))


def test_predict_and_measure_reads_the_setup_off_the_model():
    model = apply_recipe(_tiny(), "lora", LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]),
                         dtype=torch.bfloat16)
    model.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    pred, meas = predict_and_measure(model, "lora", opt, batch_size=2, seq_len=16)
    assert not model.training  # mode restored
    a = pred.assumptions
    assert (a["r"], a["target_modules"], a["base_dtype"], a["device"]) == (4, ("c_attn", "c_fc"), "bf16", "cpu")
    _check(pred, meas)
    assert set(meas.components) == set(COMPONENTS) and opt.state  # the step ran
