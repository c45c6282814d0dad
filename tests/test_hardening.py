"""Issue 11, "Hardening": regression tests for the defects found by running PEFT's and
bitsandbytes' own test suites against lora_lab, plus bad inputs of the functions touched.

Being taken apart into the mirrored files (issue 10). Moved: 6 (dequantize_4bit input checks)
to tests/quant/test_blockwise.py; quantize_model's bad targets to tests/quant/test_linear4bit.py;
the one target rule across add_lora / quantize_model / the memory prediction and chapter 04's
numbers to tests/memory/test_predict.py. Left here until their files are free: 3 (fp16/bf16
forward as PEFT), 4 (add_lora atomic), 5 (safe merge), 7 (LoraConfig fields) and 8 (PEFT's
target matching) for tests/lora/test_layer.py (test_target_helpers_directly for
tests/lora/test_baselayer.py); 9 (checkpoints read with weights_only=True) for
tests/finetune/test_trainer.py.
"""

import os
import warnings

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from lora_lab.finetune import trainer as train_mod
from lora_lab.lora.baselayer import check_target_modules, select_targets, target_matches
from lora_lab.lora.layer import LoraConfig, LoRALinear, add_lora, find_target_modules, lora_layers, merge_lora

peft = pytest.importorskip("peft")


def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


class One(nn.Module):
    """A model with one linear layer (nn.Linear or GPT-2's Conv1D), for PEFT."""

    def __init__(self, kind="linear", d_in=64, d_out=48):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out) if kind == "linear" else Conv1D(d_out, d_in)

    def forward(self, x):
        return self.lin(x)


def snapshot(model):
    """Everything add_lora/merge may change: tensors, requires_grad flags, module types."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [(n, type(m).__name__) for n, m in model.named_modules()])


def assert_same(model, snap):
    tensors, flags, types = snap
    now = model.state_dict()
    assert sorted(now) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(now[k].nan_to_num(), v.nan_to_num()) and torch.equal(now[k].isnan(), v.isnan()), k
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == types


# ------------------------------------------------------------------ 3. fp16/bf16 as PEFT

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


# ------------------------------------------------------------------ 4. add_lora: check, then change

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


# ------------------------------------------------------------------ 5. merging a broken adapter

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


# ------------------------------------------------------------------ 7. every LoraConfig field

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


# ------------------------------------------------------------------ 8. PEFT's target-matching rule

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


@pytest.mark.parametrize("targets", TARGETS, ids=str)
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


def test_target_helpers_directly():
    assert target_matches(("c_attn",), "transformer.h.0.attn.c_attn")
    assert not target_matches(("attn",), "transformer.h.0.attn.c_attn")
    assert target_matches(r".*attn\.c_attn", "transformer.h.0.attn.c_attn")
    assert not target_matches("c_attn", "transformer.h.0.attn.c_attn")  # fullmatch, not search
    assert check_target_modules(["a", "b", "a"]) == ("a", "b")
    assert select_targets(["x"], ["", "m.x", "m.y"], ["m.x", "m.y"]) == ["m.x"]


# ------------------------------------------------------------------ 9. checkpoints: weights_only=True

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def small():
    model = add_lora(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]),
                     generator=torch.Generator().manual_seed(0))
    opt = train_mod.make_optimizer([p for p in model.parameters() if p.requires_grad], train_mod.TrainConfig())
    model(torch.randint(0, 97, (2, 8))).logits.sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_under_weights_only(small, tmp_path):
    import numpy as np
    model, opt = small
    result = train_mod.TrainResult(losses=[1.0, 0.5], lrs=[1e-3, 1e-3], step=2,
                                   evals=[(2, {"exact_match": np.float64(0.25), "n": np.int64(3)})])
    path = train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, result, train_mod.TrainConfig())
    ckpt = torch.load(path, weights_only=True)  # loads with the safe unpickler
    assert ckpt["evals"] == [(2, {"exact_match": 0.25, "n": 3})] and type(ckpt["evals"][0][1]["n"]) is int
    assert "step" in ckpt["optimizer"]["state"][0] and isinstance(ckpt["rng"], torch.Tensor)
    assert train_mod.load_checkpoint(path, model, opt)["step"] == 2


def test_checkpoint_with_arbitrary_objects_is_refused_not_run(small, tmp_path):
    model, opt = small
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": train_mod.CHECKPOINT_FORMAT, "step": 0, "x": _Evil(str(marker))}, path)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        train_mod.load_checkpoint(path, model, opt)
    assert not marker.exists()  # before the fix (weights_only=False) the payload ran
    assert_same(model, snap)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip", "missing", "not_dict", "no_format",
                                    "bad_entry", "nan_weight"])
def test_corrupt_checkpoint_clear_error_model_unchanged(small, tmp_path, damage):
    model, opt = small
    path = train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, train_mod.TrainResult(step=1),
                                     train_mod.TrainConfig())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip":
        path.write_bytes(data[:64] + bytes(b ^ 0xFF for b in data[64:600]) + data[600:])
    elif damage == "missing":
        path.unlink()
    else:
        ckpt = torch.load(path, weights_only=True)
        if damage == "not_dict":
            ckpt = [1, 2, 3]
        elif damage == "no_format":
            del ckpt["format"]
        elif damage == "bad_entry":
            ckpt["step"] = "one"
        else:
            next(iter(ckpt["trainable"].values()))[0, 0] = float("nan")
        torch.save(ckpt, path)
    snap, opt_state = snapshot(model), opt.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(ValueError, match="checkpoint"):
        train_mod.load_checkpoint(path, model, opt)
    assert_same(model, snap)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt_state)


def test_checkpoint_for_another_optimizer_changes_nothing(small, tmp_path):
    model, opt = small
    path = train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, train_mod.TrainResult(step=1),
                                     train_mod.TrainConfig())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    snap = snapshot(model)
    params = [p for p in model.parameters() if p.requires_grad]
    other = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}])  # two groups, not one
    with pytest.raises(ValueError, match="optimizer state does not fit"):
        train_mod.load_checkpoint(path, model, other)
    assert_same(model, snap)  # before the fix: weights were copied, then the optimizer failed


def test_save_checkpoint_refuses_unstorable_objects(small, tmp_path):
    model, opt = small
    result = train_mod.TrainResult(evals=[(1, {"score": object()})])
    with pytest.raises(ValueError, match="evals holds a object"):
        train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, result, train_mod.TrainConfig())
    assert not (tmp_path / "c.pt").exists()
