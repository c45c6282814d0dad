"""lora_lab.lora.io: adapter files in PEFT's format. Round trips with PEFT both ways, safetensors
only, bad files refused; adapters with trained biases load into a fresh base and the recorded
task_type fits the model so PEFT loads it (issue 11, items 1 and 2); several adapters in PEFT's
layout (issue 13); bad inputs change nothing."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model
from transformers.pytorch_utils import Conv1D

from lora_lab.lora.io import infer_task_type, load_adapter, save_adapter
from lora_lab.lora.layer import LoraConfig, LoRALinear, add_lora, lora_layers, merge_lora, unmerge_lora
from lora_lab.lora.multi import active_adapter, adapter_names, set_adapter

peft = pytest.importorskip("peft")


class MLP(nn.Module):
    """PEFT's test MLP (tests/test_custom_models.py), shortened."""

    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 2)

    def forward(self, x):
        return self.lin1(self.relu(self.lin0(x)))


class ModelConv1D(nn.Module):
    """PEFT's Embedding + Conv1D test model, shortened."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 5)
        self.conv1d = Conv1D(1, 5)
        self.lin0 = nn.Linear(10, 2)

    def forward(self, x):
        return self.lin0(self.conv1d(self.emb(x)).flatten(1))


def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16,
               bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()

def fresh(kind, seed=0):
    torch.manual_seed(seed)
    return {"mlp": MLP, "conv1d": ModelConv1D}[kind]().eval() if kind != "gpt2" else tiny_gpt2(seed)


INPUTS = {"mlp": lambda: torch.randn(4, 10, generator=torch.Generator().manual_seed(1)),
          "conv1d": lambda: torch.randint(0, 100, (4, 10), generator=torch.Generator().manual_seed(1)),
          "gpt2": lambda: torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1))}
TARGETS = {"mlp": ["lin0"], "conv1d": ["conv1d", "lin0"], "gpt2": ["c_attn", "c_fc"]}


def _out(model, kind):
    with torch.no_grad():
        out = model(INPUTS[kind]())
    return out.logits if hasattr(out, "logits") else out


def _train_biases_and_B(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:  # lora_B (zero at init) and the biases that train
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


# ------------------------------------------------------------------ round trips with PEFT, safetensors

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


# ------------------------------------------------------------------ refused: bad adapter files, a merged model

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


# ------------------------------------------------------------------ 1. bias="all" / "lora_only"

@pytest.mark.parametrize("kind", ["mlp", "conv1d", "gpt2"])
@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_adapter_saved_by_lora_lab_loads_into_fresh_base(tmp_path, kind, bias):
    ours = _train_biases_and_B(add_lora(fresh(kind), LoraConfig(r=2, target_modules=TARGETS[kind], bias=bias)))
    save_adapter(ours, tmp_path / "a")
    keys = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert any(k.endswith(".base_layer.bias") for k in keys)
    loaded = load_adapter(fresh(kind), tmp_path / "a")  # before: "... has no place in the model"
    assert torch.equal(_out(loaded, kind), _out(ours, kind))
    assert _out(loaded, kind).sub(_out(fresh(kind), kind)).abs().max() > 1e-3
    trains = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trains == {n for n, p in ours.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["mlp", "conv1d", "gpt2"])
@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_adapter_saved_by_peft_loads_into_fresh_base(tmp_path, kind, bias):
    ref = peft.get_peft_model(fresh(kind), peft.LoraConfig(r=2, target_modules=TARGETS[kind], bias=bias,
                                                           init_lora_weights=False))
    _train_biases_and_B(ref)
    ref.save_pretrained(tmp_path / "p")
    keys = load_file(tmp_path / "p" / "adapter_model.safetensors")
    assert any(k.endswith(".base_layer.bias") for k in keys)
    loaded = load_adapter(fresh(kind), tmp_path / "p")
    with torch.no_grad():
        want = ref(INPUTS[kind]())
    want = want.logits if hasattr(want, "logits") else want
    torch.testing.assert_close(_out(loaded, kind), want, atol=1e-6, rtol=1e-6)


def test_bias_adapter_also_fills_existing_lora_layers(tmp_path):
    ours = _train_biases_and_B(add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"], bias="all")))
    save_adapter(ours, tmp_path / "a")
    target = add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"], bias="all"),
                      generator=torch.Generator().manual_seed(9))  # other A, B = 0, untrained biases
    load_adapter(target, tmp_path / "a")
    assert torch.equal(_out(target, "mlp"), _out(ours, "mlp"))


def test_bias_tensor_of_wrong_shape_or_nan_changes_nothing(tmp_path):
    ours = _train_biases_and_B(add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"], bias="all")))
    folder = save_adapter(ours, tmp_path / "a")
    file = folder / "adapter_model.safetensors"
    good = load_file(file)
    for key, value, match in [("base_model.model.lin0.base_layer.bias", torch.zeros(7), r"shape \(7,\).*\(20,\)"),
                              ("base_model.model.lin1.bias", torch.full((2,), float("nan")), "NaN/inf"),
                              ("base_model.model.lin9.bias", torch.zeros(2), "no place in the model")]:
        save_file({**good, key: value}, file)
        model = fresh("mlp")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            load_adapter(model, folder)
        assert not list(lora_layers(model))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ------------------------------------------------------------------ 2. task_type

@pytest.mark.parametrize("kind,expected", [("mlp", None), ("conv1d", None), ("gpt2", "CAUSAL_LM")])
def test_task_type_fits_and_peft_loads_it(tmp_path, kind, expected):
    ours = _train_biases_and_B(add_lora(fresh(kind), LoraConfig(r=2, target_modules=TARGETS[kind])))
    save_adapter(ours, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["task_type"] == expected  # before: always "CAUSAL_LM"
    ref = peft.PeftModel.from_pretrained(fresh(kind), tmp_path / "a").eval()  # before: AttributeError for MLP
    with torch.no_grad():
        got = ref(INPUTS[kind]()) if kind != "gpt2" else ref(input_ids=INPUTS[kind]()).logits
    torch.testing.assert_close(got, _out(ours, kind), atol=1e-6, rtol=1e-6)
    if expected == "CAUSAL_LM":
        assert isinstance(ref, peft.PeftModelForCausalLM)


def test_infer_task_type():
    assert infer_task_type(tiny_gpt2()) == "CAUSAL_LM"
    assert infer_task_type(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2))) is None  # no LM head
    assert infer_task_type(MLP()) is None


def test_task_type_can_be_set(tmp_path):
    ours = add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"]))
    save_adapter(ours, tmp_path / "a", task_type="FEATURE_EXTRACTION")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["task_type"] == "FEATURE_EXTRACTION"


# ------------------------------------------------------------------ bad inputs: ValueError, nothing written

@pytest.mark.parametrize("kwargs,match", [
    (dict(task_type="CAUSAL"), r"task_type must be 'auto', None or one of .*task_type='CAUSAL'"),
    (dict(config={"r": 2}), r"config must be a lora_lab LoraConfig, got dict"),
    (dict(base_model_name_or_path=3), r"base_model_name_or_path must be a string or None, got 3"),
])
def test_save_adapter_bad_arguments_write_nothing(tmp_path, kwargs, match):
    ours = add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"]))
    with pytest.raises(ValueError, match=match):
        save_adapter(ours, tmp_path / "a", **kwargs)
    assert not (tmp_path / "a").exists()


def test_save_adapter_onto_a_file_or_bad_path(tmp_path):
    ours = add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"]))
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        save_adapter(ours, file)
    assert file.read_text() == "keep me"
    for bad in (None, 3, ""):
        with pytest.raises(ValueError, match="path must be a folder path"):
            save_adapter(ours, bad)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        save_adapter("model", tmp_path / "b")


def test_load_adapter_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got str"):
        load_adapter("gpt2", tmp_path)
    with pytest.raises(ValueError, match="path must be an adapter folder"):
        load_adapter(fresh("mlp"), None)


def test_saved_targets_select_exactly_the_wrapped_layers(tmp_path):
    """The target_modules written are short names only when PEFT's rule, applied to them,
    selects exactly the wrapped layers."""
    model = add_lora(tiny_gpt2(), LoraConfig(r=2, target_modules=r".*\.0\.attn\.c_attn"))
    save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["transformer.h.0.attn.c_attn"]
    ref = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "a")
    from peft.tuners.lora import LoraLayer
    assert [n for n, m in ref.named_modules() if isinstance(m, LoraLayer)] == [
        "base_model.model.transformer.h.0.attn.c_attn"]


# ------------------------------------------------------------------ several adapters (issue 13)

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _two(kind):
    """"default" on TARGETS[kind], "b" (another rank) on the first target only; both random."""
    model = add_lora(fresh(kind), LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS[kind], init_lora_weights=False),
                     generator=torch.Generator().manual_seed(1))
    return add_lora(model, LoraConfig(r=3, lora_alpha=6, target_modules=TARGETS[kind][:1], init_lora_weights=False),
                    adapter_name="b", generator=torch.Generator().manual_seed(2))


def _peft_out(ref, kind):
    with torch.no_grad():
        got = ref(INPUTS[kind]())
    return got.logits if hasattr(got, "logits") else got


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_several_adapters_saved_in_peft_layout_load_in_peft(tmp_path, kind):
    ours = _two(kind)
    want = {}
    for name in ("default", "b"):
        set_adapter(ours, name)
        want[name] = _out(ours, kind)
    set_adapter(ours, "default")
    save_adapter(ours, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [CONFIG, WEIGHTS, "b"]
    assert json.loads((tmp_path / "s" / "b" / "adapter_config.json").read_text())["r"] == 3
    ref = peft.PeftModel.from_pretrained(fresh(kind), tmp_path / "s").eval()
    ref.load_adapter(tmp_path / "s" / "b", adapter_name="b")
    for name in ("default", "b"):
        ref.set_adapter(name)
        torch.testing.assert_close(_peft_out(ref, kind), want[name], atol=1e-5, rtol=1e-5)
    only_b = peft.PeftModel.from_pretrained(fresh(kind), tmp_path / "s" / "b", adapter_name="b").eval()
    torch.testing.assert_close(_peft_out(only_b, kind), want["b"], atol=1e-5, rtol=1e-5)
    assert torch.equal(_out(ours, kind), want["default"])  # saving changed nothing


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_several_adapters_saved_by_peft_load_here(tmp_path, kind):
    ref = peft.get_peft_model(fresh(kind), peft.LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS[kind],
                                                           init_lora_weights=False))
    ref.add_adapter("b", peft.LoraConfig(r=3, lora_alpha=6, target_modules=TARGETS[kind][:1], init_lora_weights=False))
    ref.eval().save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "b" / "adapter_model.safetensors").is_file()
    ours = load_adapter(fresh(kind), tmp_path / "p")
    load_adapter(ours, tmp_path / "p" / "b", adapter_name="b")
    assert adapter_names(ours) == ["default", "b"] and active_adapter(ours) == "default"
    for name in ("default", "b"):
        ref.set_adapter(name)
        set_adapter(ours, name)
        torch.testing.assert_close(_out(ours, kind), _peft_out(ref, kind), atol=1e-5, rtol=1e-5)


def test_load_second_adapter_is_inactive_and_round_trips(tmp_path):
    ours = _two("gpt2")
    save_adapter(ours, tmp_path / "s")
    model = load_adapter(fresh("gpt2"), tmp_path / "s")
    before = _out(model, "gpt2")
    load_adapter(model, tmp_path / "s" / "b", adapter_name="b")
    assert torch.equal(_out(model, "gpt2"), before)  # not active, as PEFT's load_adapter
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".b." in n)
    got, want = model.state_dict(), ours.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    save_adapter(model, tmp_path / "again", selected_adapters=["b"])  # only b: in again/b/
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["b"]
    assert load_file(tmp_path / "again" / "b" / "adapter_model.safetensors").keys() == \
        load_file(tmp_path / "s" / "b" / "adapter_model.safetensors").keys()
    load_adapter(model, tmp_path / "s" / "b", adapter_name="b")  # same name again: fills it
    assert torch.equal(_out(model, "gpt2"), before)


def test_several_adapters_bad_input(tmp_path):
    ours = _two("mlp")
    for kwargs, match in [(dict(selected_adapters=["zz"]), r"selected_adapters entry='zz' is not a loaded adapter; "
                                                           r"loaded adapters: \['default', 'b'\]"),
                          (dict(selected_adapters="b"), r"selected_adapters must be a non-empty list"),
                          (dict(config=LoraConfig(r=2, target_modules=["lin0"])), r"config= describes one adapter")]:
        with pytest.raises(ValueError, match=match):
            save_adapter(ours, tmp_path / "x", **kwargs)
        assert not (tmp_path / "x").exists()
    bias = add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"], bias="all"))
    save_adapter(bias, tmp_path / "bias")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    for path, kw, match in [(tmp_path / "bias", dict(adapter_name="c"), "only a model's first adapter may carry"),
                            (tmp_path / "bias", dict(adapter_name="a.b"), "adapter_name must be a non-empty string")]:
        with pytest.raises(ValueError, match=match):
            load_adapter(ours, path, **kw)
    assert sorted(ours.state_dict()) == sorted(before)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in before.items())
    assert adapter_names(ours) == ["default", "b"]
