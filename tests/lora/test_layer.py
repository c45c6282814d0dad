"""lora_lab.lora.layer: shapes, init, scaling, merge, injection, PEFT parity (fp32, fp16/bf16, 4-bit bases),
PEFT's target matching, bad input (ValueError, model unchanged)."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from lora_lab.lora.layer import (
    LoraConfig,
    LoRALinear,
    add_lora,
    find_target_modules,
    lora_layers,
    merge_lora,
    trainable_parameters,
    trainable_report,
)
from tests.helpers import assert_same, snapshot, tiny_gpt2

peft = pytest.importorskip("peft")




def make_base(kind, d_in, d_out, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        layer = nn.Linear(d_in, d_out)
        layer.weight.data = torch.randn(d_out, d_in, generator=g)
    else:
        layer = Conv1D(d_out, d_in)  # Conv1D(nf=out, nx=in), weight (in, out)
        layer.weight.data = torch.randn(d_in, d_out, generator=g)
    layer.bias.data = torch.randn(d_out, generator=g)
    return layer


class One(nn.Module):
    """A model with one linear layer (nn.Linear or GPT-2's Conv1D), for PEFT."""

    def __init__(self, kind="linear", d_in=64, d_out=48):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out) if kind == "linear" else Conv1D(d_out, d_in)

    def forward(self, x):
        return self.lin(x)






# ---------------------------------------------------------------- the layer itself

@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("d_in,d_out,r", [(16, 24, 1), (32, 8, 4), (20, 20, 16)])
def test_shapes_and_zero_init(kind, d_in, d_out, r):
    base = make_base(kind, d_in, d_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = LoRALinear(base, r=r, lora_alpha=2 * r)
    assert layer.lora_A["default"].weight.shape == (r, d_in)
    assert layer.lora_B["default"].weight.shape == (d_out, r)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert torch.count_nonzero(layer.lora_A["default"].weight) > 0
    assert layer.delta_weight().shape == (d_out, d_in)
    x = torch.randn(3, 5, d_in)
    assert torch.equal(layer(x), base(x))  # ΔW = 0: exactly unchanged at step 0


def test_first_gradient_reaches_B_not_A():
    layer = LoRALinear(make_base("linear", 16, 12), r=4)
    layer(torch.randn(8, 16)).pow(2).sum().backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() == 0  # dL/dA = B^T (...) = 0 while B = 0
    assert layer.lora_B["default"].weight.grad.abs().sum() > 0   # dL/dB = (...) (A x)^T, A x != 0
    assert layer.base_layer.weight.grad is None or not layer.base_layer.weight.requires_grad


def test_random_B_moves_output():
    base = make_base("linear", 16, 12)
    layer = LoRALinear(base, r=4, init_lora_weights=False, generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 16)
    assert (layer(x) - base(x)).abs().max() > 1e-3


@pytest.mark.parametrize("rs", [False, True])
def test_scaling(rs):
    layer = LoRALinear(make_base("linear", 64, 64), r=16, lora_alpha=32, use_rslora=rs)
    assert layer.scaling["default"] == pytest.approx(32 / (math.sqrt(16) if rs else 16))
    assert LoraConfig(r=16, lora_alpha=32, use_rslora=rs).scaling == layer.scaling["default"]


def test_gaussian_init_std():
    layer = LoRALinear(make_base("linear", 512, 512), r=4, init_lora_weights="gaussian",
                       generator=torch.Generator().manual_seed(0))
    assert layer.lora_A["default"].weight.std().item() == pytest.approx(1 / 4, rel=0.05)


def test_dropout_only_on_adapter_path():
    base = make_base("linear", 16, 12)
    layer = LoRALinear(base, r=4, lora_dropout=0.5, init_lora_weights=False).train()
    x = torch.randn(64, 16)
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    assert torch.allclose(layer(x), layer(x))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_unmerge(kind):
    base = make_base(kind, 24, 16)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, lora_alpha=8, init_lora_weights=False)
    x = torch.randn(5, 24)
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base(x), before, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()


# ---------------------------------------------------------------- properties (hypothesis)

dims = st.integers(min_value=1, max_value=24)


@settings(max_examples=30, deadline=None)
@given(d_in=dims, d_out=dims, r=st.integers(1, 8), alpha=st.floats(0.1, 64), kind=st.sampled_from(["linear", "conv1d"]),
       seed=st.integers(0, 2**16))
def test_property_zero_init_is_identity(d_in, d_out, r, alpha, kind, seed):
    base = make_base(kind, d_in, d_out, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = LoRALinear(base, r=r, lora_alpha=alpha, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(3, d_in, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(layer(x), base(x))


@settings(max_examples=30, deadline=None)
@given(d_in=dims, d_out=dims, r=st.integers(1, 8), alpha=st.floats(0.1, 64), kind=st.sampled_from(["linear", "conv1d"]),
       rs=st.booleans(), seed=st.integers(0, 2**16))
def test_property_merge_roundtrip(d_in, d_out, r, alpha, kind, rs, seed):
    base = make_base(kind, d_in, d_out, seed)
    w0 = base.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = LoRALinear(base, r=r, lora_alpha=alpha, use_rslora=rs, init_lora_weights=False,
                           generator=torch.Generator().manual_seed(seed))
    x = torch.randn(3, d_in, generator=torch.Generator().manual_seed(seed + 1))
    unmerged = layer(x)
    layer.merge()
    merged = layer(x)
    tol = 1e-4 * (1 + unmerged.abs().max().item())
    assert (merged - unmerged).abs().max().item() <= tol  # merged forward == unmerged forward
    layer.unmerge()
    assert (base.weight - w0).abs().max().item() <= 1e-4 * (1 + w0.abs().max().item())


# ---------------------------------------------------------------- parity with PEFT

@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("d_in,d_out", [(16, 24), (40, 8), (33, 33)])
@pytest.mark.parametrize("r", [1, 4, 16])
@pytest.mark.parametrize("rs", [False, True])
def test_layer_matches_peft(kind, d_in, d_out, r, rs):
    from peft.tuners.lora.layer import Linear as PeftLinear
    base = make_base(kind, d_in, d_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = LoRALinear(base, r=r, lora_alpha=8, use_rslora=rs, init_lora_weights=False)
        from peft import LoraConfig as PeftConfig
        pcfg = PeftConfig(r=r, lora_alpha=8, lora_dropout=0.0, use_rslora=rs,
                          fan_in_fan_out=(kind == "conv1d"))
        ref = PeftLinear(base, "default", pcfg, r=r, lora_alpha=8, lora_dropout=0.0, use_rslora=rs,
                         fan_in_fan_out=(kind == "conv1d"), init_lora_weights=True)
    with torch.no_grad():
        ref.lora_A["default"].weight.copy_(ours.lora_A["default"].weight)
        ref.lora_B["default"].weight.copy_(ours.lora_B["default"].weight)
    x = torch.randn(2, 7, d_in)
    assert ours.scaling["default"] == pytest.approx(ref.scaling["default"])
    ref_delta = ref.get_delta_weight("default")
    ref_delta = ref_delta.T if kind == "conv1d" else ref_delta  # PEFT returns it in the base's layout
    torch.testing.assert_close(ours.delta_weight(), ref_delta, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)


def test_gpt2_small_counts_match_peft():
    from peft import LoraConfig as PeftConfig
    from peft import get_peft_model
    model = GPT2LMHeadModel(GPT2Config())
    add_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"]))
    assert trainable_parameters(model) == (405_504, 124_845_312)
    assert trainable_report(model).endswith("trainable%: 0.3248")
    ref = get_peft_model(GPT2LMHeadModel(GPT2Config()),
                         PeftConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"]))
    assert ref.get_nb_trainable_parameters() == trainable_parameters(model)
    all_linear = add_lora(GPT2LMHeadModel(GPT2Config(n_layer=12)), LoraConfig(r=8, target_modules="all-linear"))
    assert trainable_parameters(all_linear)[0] == 1_179_648


def test_all_linear_skips_head_and_freezes_rest():
    model = add_lora(tiny_gpt2(), LoraConfig(r=2, target_modules="all-linear"))
    names = [n for n, _ in lora_layers(model)]
    assert len(names) == 2 * 4 and not any("lm_head" in n for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("bias,expect", [("none", 0), ("all", None), ("lora_only", 2 * 2)])
def test_bias_modes(bias, expect):
    model = add_lora(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn", "c_fc"], bias=bias))
    n_bias = sum(1 for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias"))
    all_bias = sum(1 for n, _ in model.named_parameters() if n.endswith("bias"))
    assert n_bias == (all_bias if expect is None else expect)


# ---------------------------------------------------------------- fp16/bf16 bases as PEFT (issue 11, item 3)

def _pair(kind, dtype, dropout=0.0):
    """lora_lab's and PEFT's LoRA on the same 16-bit base, with the same fp32 adapters."""
    torch.manual_seed(0)
    fp32 = One(kind)
    ref = peft.get_peft_model(One(kind), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["lin"],
                                                         lora_dropout=dropout, init_lora_weights=False))
    peft_layer = ref.base_model.model.lin
    peft_layer.base_layer.load_state_dict(fp32.lin.state_dict())
    ref = ref.to(dtype)
    for name, p in ref.named_parameters():  # PEFT's autocast_adapter_dtype: adapters stay fp32
        if "lora_" in name:
            p.data = p.data.float()
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(8, 64, generator=g) / 8, torch.randn(48, 8, generator=g)
    base = One(kind).lin
    base.load_state_dict(fp32.lin.state_dict())
    ours = LoRALinear(base.to(dtype), r=8, lora_alpha=16, lora_dropout=dropout, init_lora_weights=False)
    with torch.no_grad():
        for layer_A, layer_B in ((ours.lora_A["default"], ours.lora_B["default"]),
                                 (peft_layer.lora_A["default"], peft_layer.lora_B["default"])):
            layer_A.weight.copy_(A)
            layer_B.weight.copy_(B)
    assert peft_layer.lora_A["default"].weight.dtype == torch.float32
    return ours, peft_layer, fp32, A, B


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_equals_peft_bitwise(kind, dtype):
    ours, ref, fp32, A, B = _pair(kind, dtype)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, peft_out = ours(x.to(dtype)), ref(x.to(dtype))
        exact = fp32.lin(x) + x @ A.T @ B.T * 2.0
    assert out.dtype == peft_out.dtype == dtype
    # before the fix: up to 0.0156 (fp16) / 0.0625 (bf16) apart, on ~440 of 1536 outputs
    assert torch.equal(out, peft_out)
    err = (out.float() - exact).abs().mean()
    assert err == (peft_out.float() - exact).abs().mean()  # the same error as PEFT's, not 1.2x it


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dropout_as_peft(dtype):
    """PEFT casts the input to the adapter dtype *before* dropout: same masks, same values."""
    ours, ref, *_ = _pair("linear", dtype, dropout=0.25)
    ours.train(), ref.train()
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3)).to(dtype)
    torch.manual_seed(5)
    a = ours(x)
    torch.manual_seed(5)
    b = ref(x)
    assert torch.equal(a, b)


def test_bnb_4bit_base_rounds_update_first_as_peft():
    """On a bitsandbytes 4-bit base PEFT's Linear4bit rounds the update to the output
    dtype before adding it; lora_lab does the same there."""
    bnb = pytest.importorskip("bitsandbytes")
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    def base():
        torch.manual_seed(0)
        fp = nn.Linear(64, 48)
        q = bnb.nn.Linear4bit(64, 48, compute_dtype=torch.bfloat16, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(fp.weight.data.clone(), requires_grad=False, quant_type="nf4")
        q.bias = nn.Parameter(fp.bias.data.to(torch.bfloat16), requires_grad=False)
        q.support_avx512bf16_for_cpu = False  # keep the standard layout (see models.keep_bnb_layout)
        return q.to("cpu")

    ours = LoRALinear(base(), r=8, lora_alpha=16, init_lora_weights=False)
    holder = nn.Module()
    holder.lin = base()
    holder.is_loaded_in_4bit = True  # what transformers sets with BitsAndBytesConfig (chapter 05)
    wrapped = peft.get_peft_model(holder, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["lin"],
                                                          init_lora_weights=False))
    ref = wrapped.base_model.model.lin
    assert isinstance(ref, PeftLinear4bit) and ref.lora_A["default"].weight.dtype == torch.float32
    with torch.no_grad():
        ref.lora_A["default"].weight.copy_(ours.lora_A["default"].weight)
        ref.lora_B["default"].weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
        ours.lora_B["default"].weight.copy_(ref.lora_B["default"].weight)
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        out = ours(x)
        assert out.dtype == torch.bfloat16 and torch.equal(out, ref(x))


def test_fp32_forward_unchanged():
    """fp32 bases: the sum was and is formed in fp32 (one rounding = none)."""
    base = nn.Linear(16, 8)
    layer = LoRALinear(base, r=2, init_lora_weights=False, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 16)
    with torch.no_grad():
        A, B = layer.lora_A["default"], layer.lora_B["default"]
        assert torch.equal(layer(x), base(x) + B(A(x)) * layer.scaling["default"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_merge_rounds_once_as_peft_default(dtype):
    ours, ref, *_ = _pair("linear", dtype)
    with torch.no_grad():
        ours.merge()
        ref.merge()  # PEFT's default (safe_merge=False): weight.data += delta_weight (fp32)
    assert torch.equal(ours.base_layer.weight, ref.base_layer.weight)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(r=0), r"r must be a positive integer.*r=0"),
    (dict(r=-2), r"r=-2"),
    (dict(r=2.5), r"r=2.5"),
    (dict(lora_alpha=0), r"lora_alpha must be .*> 0.*lora_alpha=0"),
    (dict(lora_alpha=-1.0), r"lora_alpha=-1.0"),
    (dict(lora_dropout=1.0), r"lora_dropout must be in \[0, 1\).*1.0"),
    (dict(lora_dropout=-0.1), r"lora_dropout=-0.1"),
    (dict(bias="some"), r"bias must be one of"),
    (dict(init_lora_weights="olora"), r"init_lora_weights must be one of"),  # a PEFT init lora_lab lacks
    (dict(target_modules=[]), r"target_modules"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


def test_layer_errors_and_rank_warning():
    with pytest.raises(ValueError, match="r=0"):
        LoRALinear(nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="base_layer must be"):
        LoRALinear(nn.Embedding(4, 4), r=1)
    with pytest.warns(UserWarning, match=r"r=8 is larger than min\(out_features, in_features\)=4"):
        LoRALinear(nn.Linear(4, 16), r=8)


def test_unknown_target_names_existing_modules():
    with pytest.raises(ValueError, match=r"'q_proj' matches no module.*'c_attn'"):
        add_lora(tiny_gpt2(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"'wte'.*Embedding"):
        add_lora(tiny_gpt2(), LoraConfig(target_modules=["wte"]))
    assert find_target_modules(tiny_gpt2(), ["attn.c_proj"]) == ["transformer.h.0.attn.c_proj",
                                                                  "transformer.h.1.attn.c_proj"]


# ---------------------------------------------------------------- add_lora: check, then change (issue 11, item 4)

def test_add_lora_failing_half_way_leaves_model_unchanged():
    model = tiny_gpt2()
    model.transformer.h[1].mlp.c_fc.weight.data[0, 0] = float("nan")  # a *later* target
    model.transformer.wte.weight.requires_grad_(True)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight has 1 NaN/inf.*not changed"):
        add_lora(model, LoraConfig(r=2, target_modules="all-linear"))
    assert_same(model, snap)  # before the fix: every parameter frozen, 5 layers wrapped
    assert not hasattr(model, "lora_config")


def test_add_lora_rolls_back_when_building_a_wrapper_fails(monkeypatch):
    model = tiny_gpt2()
    snap = snapshot(model)
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    calls = []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return original(self, *a, **k)
    original = LoRALinear.reset_lora_parameters
    monkeypatch.setattr(LoRALinear, "reset_lora_parameters", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        add_lora(model, LoraConfig(r=2, target_modules=["c_attn", "c_fc"]), generator=gen)
    assert_same(model, snap)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("call,match", [
    (lambda m: add_lora(m, {"r": 2}), r"config must be a lora_lab LoraConfig, got dict"),
    (lambda m: add_lora(m, peft.LoraConfig(r=2)), r"config must be a lora_lab LoraConfig.*peft"),
    (lambda m: add_lora(m, LoraConfig(r=2), generator=0), r"generator must be a torch.Generator"),
    (lambda m: add_lora(m, LoraConfig(target_modules=["q_proj"])), r"'q_proj' matches no module"),
    (lambda m: add_lora(m, LoraConfig(target_modules="c_attn")), r"regex.*\['c_attn'\]"),
    (lambda m: add_lora(m, LoraConfig(target_modules=["drop"])), r"'transformer.drop', a Dropout"),
    (lambda m: add_lora("gpt2", LoraConfig()), r"model must be a torch.nn.Module, got str"),
])
def test_add_lora_bad_input_changes_nothing(call, match):
    model = tiny_gpt2()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        call(model)
    assert_same(model, snap)


# ---------------------------------------------------------------- merging a broken adapter (issue 11, item 5)

def _broken_layer(kind="linear"):
    base = nn.Linear(8, 6) if kind == "linear" else Conv1D(6, 8)
    layer = LoRALinear(base, r=2, init_lora_weights=False, generator=torch.Generator().manual_seed(0))
    layer.lora_B["default"].weight.data[1, 1] = float("nan")
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_safe_merge_refuses_nan_and_keeps_base(kind):
    layer = _broken_layer(kind)
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"8 NaN/inf.*left unchanged"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, w0) and not layer.merged


def test_peft_safe_merge_raises_too():
    model = peft.get_peft_model(One(), peft.LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False))
    model.base_model.model.lin.lora_B["default"].weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.base_model.model.lin.merge(safe_merge=True)


def test_unsafe_merge_writes_but_warns():
    layer = _broken_layer()
    with pytest.warns(RuntimeWarning, match=r"8 NaN/inf.*safe_merge=False"):
        layer.merge()  # PEFT's default writes too, silently; lora_lab never silently
    assert layer.merged and torch.isnan(layer.base_layer.weight).sum() == 8  # B[1,1] = NaN: row 1 of B A


def test_fp16_overflow_is_caught():
    base = nn.Linear(4, 4).half()
    base.weight.data.fill_(60000.0)  # fp16 max is 65504
    layer = LoRALinear(base, r=1, lora_alpha=1, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_A["default"].weight.fill_(100.0)
        layer.lora_B["default"].weight.fill_(100.0)
    with pytest.raises(ValueError, match="overflows"):
        layer.merge(safe_merge=True)
    assert (base.weight == 60000.0).all()


def test_merge_lora_safe_merge_is_all_or_nothing():
    model = add_lora(tiny_gpt2(), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    names = [n for n, _ in lora_layers(model)]
    dict(lora_layers(model))[names[-1]].lora_A["default"].weight.data[0, 0] = float("inf")  # the *last* layer
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"layer '{names[-1]}'.*nothing was merged"):
        merge_lora(model, safe_merge=True)
    assert_same(model, snap)
    assert not any(layer.merged for _, layer in lora_layers(model))
    with pytest.raises(ValueError, match="safe_merge must be True or False"):
        merge_lora(model, safe_merge="yes")


def test_merge_of_finite_adapter_unchanged():
    layer = LoRALinear(nn.Linear(8, 6), r=2, init_lora_weights=False)
    w = layer.base_layer.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, w + layer.delta_weight())


# ---------------------------------------------------------------- every LoraConfig field (issue 11, item 7)

@pytest.mark.parametrize("field,value,match", [
    ("target_modules", "", r"target_modules must not be an empty string.*allowed"),
    ("target_modules", "   ", r"target_modules must not be an empty string"),
    ("target_modules", None, r"target_modules must be a string or a list of strings, got target_modules=None"),
    ("target_modules", 3, r"target_modules=3 \(int\)"),
    ("target_modules", [], r"target_modules must not be empty"),
    ("target_modules", ["c_attn", ""], r"entries must be non-empty strings.*''"),
    ("target_modules", ["c_attn", 1], r"entries must be non-empty strings.*got 1"),
    ("target_modules", "c_attn(", r"not a valid regular expression"),
    ("use_rslora", "yes", r"use_rslora must be True or False.*use_rslora='yes'"),
    ("use_rslora", 1, r"use_rslora=1"),
    ("use_rslora", None, r"use_rslora=None"),
    ("init_lora_weights", 1, r"init_lora_weights must be one of.*got init_lora_weights=1"),
    ("init_lora_weights", 1.0, r"init_lora_weights=1.0"),
    ("init_lora_weights", "Gaussian", r"init_lora_weights='Gaussian'"),
    ("init_lora_weights", None, r"init_lora_weights=None"),
    ("bias", None, r"bias must be one of.*bias=None"),
    ("bias", ["none"], r"bias=\['none'\]"),
    ("r", True, r"r must be a positive integer.*r=True"),
    ("r", "8", r"r='8'"),
    ("r", None, r"r=None"),
    ("lora_alpha", True, r"lora_alpha must be a finite number > 0.*lora_alpha=True"),
    ("lora_alpha", float("inf"), r"lora_alpha=inf"),
    ("lora_alpha", float("nan"), r"lora_alpha=nan"),
    ("lora_alpha", "16", r"lora_alpha='16'"),
    ("lora_dropout", True, r"lora_dropout must be in \[0, 1\).*lora_dropout=True"),
    ("lora_dropout", float("nan"), r"lora_dropout=nan"),
    ("lora_dropout", "0.1", r"lora_dropout='0.1'"),
])
def test_config_field_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**{field: value})


def test_config_accepted_forms():
    assert LoraConfig(target_modules="ALL-LINEAR").target_modules == "all-linear"  # PEFT lower-cases it
    assert LoraConfig(target_modules={"c_fc", "c_attn"}).target_modules == ("c_attn", "c_fc")
    assert LoraConfig(target_modules=["c_attn", "c_attn"]).target_modules == ("c_attn",)
    assert LoraConfig(target_modules=r".*\.c_attn").target_modules == r".*\.c_attn"  # a regex stays a string
    assert LoraConfig(init_lora_weights="gaussian", use_rslora=True, lora_dropout=0).use_rslora is True


def test_layer_checks_the_same_fields():
    with pytest.raises(ValueError, match="use_rslora must be True or False"):
        LoRALinear(nn.Linear(4, 4), r=2, use_rslora="yes")
    with pytest.raises(ValueError, match="init_lora_weights must be one of"):
        LoRALinear(nn.Linear(4, 4), r=2, init_lora_weights=1.0)


# ---------------------------------------------------------------- PEFT's target-matching rule (issue 11, item 8)

def _peft_targets(model, target_modules):
    from peft.tuners.lora import LoraLayer
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=target_modules))
    return sorted(n.removeprefix("base_model.model.") for n, m in wrapped.named_modules()
                  if isinstance(m, LoraLayer))


TARGETS = [
    ["c_attn"], ["c_proj"], ["attn.c_proj"], ("c_attn", "c_fc"), {"c_fc", "mlp.c_proj"},
    ["transformer.h.1.attn.c_attn"], ["h.0.mlp.c_fc", "c_attn"],
    r".*\.0\.attn\.c_attn", r".*c_attn", r"transformer\.h\.\d+\.mlp\.c_(fc|proj)", r".*\.(c_attn|c_fc)",
    r"transformer\.h\.1\..*c_proj", "all-linear", "All-Linear",
]


def _target_id(targets):
    """The test id: a set in sorted order, so that it does not change with PYTHONHASHSEED."""
    return "{" + ", ".join(map(repr, sorted(targets))) + "}" if isinstance(targets, set) else str(targets)


@pytest.mark.parametrize("targets", TARGETS, ids=_target_id)
@pytest.mark.parametrize("n_layer", [2, 3])
def test_matching_equals_peft(targets, n_layer):
    ours = find_target_modules(tiny_gpt2(n_layer=n_layer), targets)
    assert sorted(ours) == _peft_targets(tiny_gpt2(n_layer=n_layer), targets)


def test_all_linear_excludes_the_untied_head_as_peft():
    model = tiny_gpt2(tie_word_embeddings=False)
    assert "lm_head" not in find_target_modules(model, "all-linear")
    assert sorted(find_target_modules(model, "all-linear")) == _peft_targets(tiny_gpt2(tie_word_embeddings=False),
                                                                             "all-linear")


@pytest.mark.parametrize("targets", ["c_attn", r"transformer\.h\.0\.attn"])
def test_string_that_peft_rejects_is_rejected_with_a_hint(targets):
    with pytest.raises(ValueError):
        _peft_targets(tiny_gpt2(), targets)
    with pytest.raises(ValueError, match="regex that must match the whole module name|GPT2Attention"):
        find_target_modules(tiny_gpt2(), targets)
    with pytest.raises(ValueError, match=r"for a name or suffix pass a list: \['c_attn'\]"):
        find_target_modules(tiny_gpt2(), "c_attn")


# ---------------------------------------------------------------- bitsandbytes 4-bit base

def _bnb_layer(d_in=64, d_out=48, seed=0, device="cpu", compute_dtype=torch.float32):
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(seed)
    fp = nn.Linear(d_in, d_out)
    q = bnb.nn.Linear4bit(d_in, d_out, bias=True, compute_dtype=compute_dtype, quant_type="nf4",
                          compress_statistics=True)
    q.weight = bnb.nn.Params4bit(fp.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                 compress_statistics=True)
    q.bias = nn.Parameter(fp.bias.data.clone(), requires_grad=False)
    return q.to(device), fp


def test_wraps_bnb_linear4bit_trains_and_merges():
    q, fp = _bnb_layer()
    layer = LoRALinear(q, r=4, lora_alpha=8, init_lora_weights=False,
                       generator=torch.Generator().manual_seed(0))
    assert (layer.in_features, layer.out_features) == (64, 48)
    x = torch.randn(5, 64)
    out = layer(x)
    out.pow(2).sum().backward()
    assert layer.lora_A["default"].weight.grad is not None and layer.lora_B["default"].weight.grad is not None
    assert not q.weight.requires_grad
    # the 4-bit base stays close to the fp layer it came from (NF4 error, not a bug)
    assert (q(x) - fp(x)).abs().max() < 0.2 * fp(x).abs().max()
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        merged = layer(x)
    # merging into a 4-bit base re-quantizes: close, but not exact
    assert (merged - unmerged).abs().max() < 0.2 * unmerged.abs().max()
    assert type(q.weight).__name__ == "Params4bit"


def test_add_lora_on_bnb_quantized_gpt2_counts_like_peft():
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_gpt2()
    from transformers import BitsAndBytesConfig  # noqa: F401  (the ecosystem path is in chapter 05)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                q = bnb.nn.Linear4bit(child.weight.shape[0], child.weight.shape[1], quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data.T.contiguous(), requires_grad=False,
                                             quant_type="nf4")
                q.bias = nn.Parameter(child.bias.data.clone())
                setattr(module, child_name, q.to("cpu"))
    fp_total = sum(p.numel() for p in tiny_gpt2().parameters())
    add_lora(model, LoraConfig(r=2, target_modules="all-linear"))
    trainable, total = trainable_parameters(model)
    assert trainable == sum(2 * (m.in_features + m.out_features) for _, m in lora_layers(model))
    assert total == fp_total + trainable  # Params4bit counted as the weights it stands for


def test_adapters_fp32_on_half_precision_base_like_peft():
    base = nn.Linear(16, 8).to(torch.bfloat16)
    layer = LoRALinear(base, r=2, init_lora_weights=False)
    assert layer.lora_A["default"].weight.dtype == layer.lora_B["default"].weight.dtype == torch.float32
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
