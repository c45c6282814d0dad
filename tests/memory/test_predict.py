"""lora_lab.memory.predict: storage formulas against bitsandbytes and torch, properties of the
predictor, the notebook's numbers, one target rule with add_lora / quantize_model, bad input."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from lora_lab.lora.layer import find_target_modules
from lora_lab.memory.measure import quantize_linears_4bit, storage_bytes
from lora_lab.memory.predict import (
    BASE_DTYPES,
    OPTIMIZERS,
    bytes_per_trainable_param,
    optimizer_state_bytes,
    quantized_linear_bytes,
    training_memory,
)
from lora_lab.memory.shapes import ModelShape, shape_from_config
from lora_lab.quant.blockwise import bits_per_param

warnings.filterwarnings("ignore", message=".*kernels.*")

def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


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


# -- one target rule; the notebook's numbers (issue 11, item 8) -----------------------------

def test_one_helper_everywhere():
    """add_lora, quantize_model and the memory prediction select the same layers."""
    from lora_lab.lora import layer as lora
    from lora_lab.memory import predict as memory
    from lora_lab.quant import linear4bit as qlinear
    from lora_lab.quant.linear4bit import FrozenLinear4bit, quantize_model
    for mod in (lora, qlinear, memory):
        src = open(mod.__file__).read()
        assert "select_targets" in src or "select_modules" in src
        assert 'endswith("." + t)' not in src  # no private copy of the rule left
    cfg = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=97, n_positions=16)
    for targets in (r".*\.c_(attn|fc)", ["c_proj"], ["attn.c_proj", "c_fc"], "all-linear"):
        wrapped = find_target_modules(tiny_gpt2(n_layer=3), targets)
        q = quantize_model(tiny_gpt2(n_layer=3), targets)
        quantized = [n for n, m in q.named_modules() if isinstance(m, FrozenLinear4bit)]
        assert quantized == wrapped
        predicted = memory._targets(shape_from_config(cfg), targets)
        short = {"attn.c_attn": "c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "c_fc",
                 "mlp.c_proj": "mlp.c_proj"}
        per_block = sorted({short[n.split(".", 3)[3]] for n in wrapped})
        assert sorted(name for name, *_ in predicted) == per_block
    with pytest.raises(ValueError, match="same adapters in every block"):
        memory.training_memory(shape_from_config(cfg), "lora", target_modules=r".*\.0\.attn\.c_attn")


def test_memory_predictions_unchanged_for_the_notebook_inputs():
    """The numbers chapter 04 prints (computed before the change)."""
    from lora_lab.memory.predict import training_memory
    for args, total in [(("gpt2", "lora", ("c_attn",)), 584_102_500), (("gpt2", "qlora", ("c_attn",)), 458_100_676),
                        (("llama-2-7b", "lora", ("q_proj", "v_proj")), 15_910_973_956),
                        (("llama-2-7b", "qlora", ("q_proj", "v_proj")), 6_299_978_628),
                        (("gpt2", "lora", ("c_proj",)), 614_109_892), (("gpt2", "lora", "all-linear"), 647_508_868)]:
        model, recipe, targets = args
        assert training_memory(model, recipe, r=8, target_modules=targets, batch_size=1, seq_len=512).total == total
    same = training_memory("gpt2", "lora", target_modules=r"transformer\.h\.\d+\.attn\.c_attn")
    assert same.total == training_memory("gpt2", "lora", target_modules=["c_attn"]).total
