"""lora_lab.lora.layer: shapes, init, scaling, merge, injection, PEFT parity, adapter files, bad input."""

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from lora_lab.lora.io import load_adapter, save_adapter
from lora_lab.lora.layer import (
    LoraConfig,
    LoRALinear,
    add_lora,
    find_target_modules,
    lora_layers,
    merge_lora,
    trainable_parameters,
    trainable_report,
    unmerge_lora,
)

peft = pytest.importorskip("peft")


def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16,
               bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


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


# ---------------------------------------------------------------- adapter files

def _trained(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B["default"].weight.normal_(0, 0.5, generator=g)
    return model


@pytest.mark.parametrize("rs", [False, True])
def test_roundtrip_lora_lab_to_peft(tmp_path, rs):
    from peft import PeftModel
    ours = _trained(add_lora(tiny_gpt2(), LoraConfig(r=4, lora_alpha=16, use_rslora=rs,
                                                       target_modules=["c_attn", "c_proj"])))
    save_adapter(ours, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["fan_in_fan_out"] is True
    ref = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "ad").eval()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    base_logits = tiny_gpt2()(ids).logits
    ours_logits = ours(ids).logits
    assert (ours_logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(ref(input_ids=ids).logits, ours_logits, atol=1e-5, rtol=1e-5)


def test_roundtrip_peft_to_lora_lab(tmp_path):
    from peft import LoraConfig as PeftConfig
    from peft import get_peft_model
    ref = get_peft_model(tiny_gpt2(), PeftConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"],
                                                 init_lora_weights=False)).eval()
    ref.save_pretrained(tmp_path / "peft")
    ours = load_adapter(tiny_gpt2(), tmp_path / "peft").eval()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    # and into a model that already has matching (untrained) adapters
    again = load_adapter(add_lora(tiny_gpt2(), LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"])),
                         tmp_path / "peft")
    torch.testing.assert_close(again(ids).logits, ours(ids).logits)


def test_save_is_safetensors_and_atomic(tmp_path):
    model = _trained(add_lora(tiny_gpt2(), LoraConfig(r=2)))
    out = save_adapter(model, tmp_path / "a")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (out / "adapter_model.safetensors").read_bytes().startswith(b"\x80")  # no pickle


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
    (dict(init_lora_weights="pissa"), r"init_lora_weights must be one of"),
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


def test_nan_weights_rejected(tmp_path):
    base = nn.Linear(4, 4)
    base.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="base_layer.weight has 1 NaN/inf"):
        LoRALinear(base, r=2)
    model = _trained(add_lora(tiny_gpt2(), LoraConfig(r=2)))
    next(layer for _, layer in lora_layers(model)).lora_B["default"].weight.data[0, 0] = float("inf")
    save_adapter(model, tmp_path / "nan")
    with pytest.raises(ValueError, match="lora_B contains NaN/inf"):
        load_adapter(tiny_gpt2(), tmp_path / "nan")


def test_unknown_target_names_existing_modules():
    with pytest.raises(ValueError, match=r"'q_proj' matches no module.*'c_attn'"):
        add_lora(tiny_gpt2(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"'wte'.*Embedding"):
        add_lora(tiny_gpt2(), LoraConfig(target_modules=["wte"]))
    assert find_target_modules(tiny_gpt2(), ["attn.c_proj"]) == ["transformer.h.0.attn.c_proj",
                                                                  "transformer.h.1.attn.c_proj"]


def test_mismatched_adapter_names_layer(tmp_path):
    save_adapter(_trained(add_lora(tiny_gpt2(), LoraConfig(r=4))), tmp_path / "a")
    bigger = tiny_gpt2(n_embd=64)
    with pytest.raises(ValueError, match=r"layer 'transformer.h.0.attn.c_attn' expects lora_A of shape"):
        load_adapter(bigger, tmp_path / "a")
    deeper = save_adapter(_trained(add_lora(tiny_gpt2(n_layer=3), LoraConfig(r=4))), tmp_path / "b")
    with pytest.raises(ValueError, match=r"'transformer.h.2.attn.c_attn'"):
        load_adapter(tiny_gpt2(), deeper)
    other_r = add_lora(tiny_gpt2(), LoraConfig(r=2))
    with pytest.raises(ValueError, match=r"r=2"):
        load_adapter(other_r, tmp_path / "a")


def test_corrupt_adapter_files(tmp_path):
    good = save_adapter(_trained(add_lora(tiny_gpt2(), LoraConfig(r=4))), tmp_path / "a")
    weights = (good / "adapter_model.safetensors").read_bytes()
    (good / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_adapter(tiny_gpt2(), good)
    (good / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(tiny_gpt2(), good)
    (good / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 0, "lora_alpha": 8,
                                                          "target_modules": ["c_attn"]}))
    with pytest.raises(ValueError, match="r=0"):
        load_adapter(tiny_gpt2(), good)
    with pytest.raises(ValueError, match="adapter_config.json is missing"):
        load_adapter(tiny_gpt2(), tmp_path / "nowhere")


def test_merge_model_and_save_refuses_merged(tmp_path):
    model = _trained(add_lora(tiny_gpt2(), LoraConfig(r=4, target_modules="all-linear")))
    ids = torch.randint(0, 97, (1, 8))
    before = model(ids).logits
    merge_lora(model)
    torch.testing.assert_close(model(ids).logits, before, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unmerge"):
        save_adapter(model, tmp_path / "m")
    unmerge_lora(model)
    save_adapter(model, tmp_path / "m")


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
