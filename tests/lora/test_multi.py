"""lora_lab.lora.multi: named adapters on one base, as PEFT (issue 13): add, switch, disable,
delete, mixed batches and weighted combinations, with PEFT parity (fp32, 1e-5) and bad inputs."""

import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from lora_lab.lora.layer import LoraConfig, LoRALinear, add_lora, lora_layers, merge_lora, unmerge_lora
from lora_lab.lora.multi import (
    active_adapter,
    adapter_names,
    add_weighted_adapter,
    delete_adapter,
    disable_adapters,
    forward,
    mixed_batch,
    set_adapter,
)

peft = pytest.importorskip("peft")
TOL = dict(atol=1e-5, rtol=1e-5)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.lin2 = nn.Linear(10, 20), nn.Linear(20, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


def fresh(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP().eval()
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                      bos_token_id=0, eos_token_id=0)).eval()


X = {"mlp": torch.randn(4, 10, generator=torch.Generator().manual_seed(1)),
     "gpt2": torch.randint(0, 100, (4, 6), generator=torch.Generator().manual_seed(1))}
T1 = {"mlp": ["lin0", "lin1"], "gpt2": ["c_attn", "c_proj"]}   # targets of "default"
T2 = {"mlp": ["lin1", "lin2"], "gpt2": ["c_attn", "c_fc"]}     # "b": one shared, one new layer kind


def out(model, kind, x=None):
    with torch.no_grad():
        y = model(X[kind] if x is None else x)
    return y.logits if hasattr(y, "logits") else y


def two_adapters(kind, r2=2, same_targets=False, rs=False):
    """"default" (r=4) and "b" (r=r2), both random (init_lora_weights=False)."""
    model = add_lora(fresh(kind), LoraConfig(r=4, lora_alpha=8, target_modules=T1[kind], init_lora_weights=False,
                                             use_rslora=rs), generator=torch.Generator().manual_seed(1))
    add_lora(model, LoraConfig(r=r2, lora_alpha=6, target_modules=T1[kind] if same_targets else T2[kind],
                               init_lora_weights=False, use_rslora=rs),
             adapter_name="b", generator=torch.Generator().manual_seed(2))
    return model


def peft_twin(model, kind):
    """A PeftModel with the same adapters (names, r, lora_alpha, targets) and the same tensors."""
    configs = model.lora_configs
    ref = None
    for name, cfg in configs.items():
        pcfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                               use_rslora=cfg.use_rslora)
        if ref is None:
            ref = peft.get_peft_model(fresh(kind), pcfg, adapter_name=name)
        else:
            ref.add_adapter(name, pcfg)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                params["base_model.model." + n].copy_(p)
    return ref.eval()


def snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [(n, type(m).__name__) for n, m in model.named_modules()],
            [(layer.active_adapter, list(layer.lora_A), list(layer.merged_adapters))
             for _, layer in lora_layers(model)])


def assert_same(model, snap):
    now = snapshot(model)
    assert sorted(now[0]) == sorted(snap[0])
    for k, v in snap[0].items():
        assert torch.equal(now[0][k], v), k
    assert now[1:] == snap[1:]


# ------------------------------------------------------------------ the layer holds adapters by name

def test_layer_keys_adapters_by_name_like_peft():
    layer = LoRALinear(nn.Linear(10, 6), r=2, lora_alpha=4)
    assert isinstance(layer.lora_A, nn.ModuleDict) and list(layer.lora_A) == ["default"]
    assert (layer.r, layer.lora_alpha, layer.scaling) == ({"default": 2}, {"default": 4}, {"default": 2.0})
    assert layer.active_adapter == "default" and layer.merged_adapters == [] and not layer.disable_adapters
    assert sorted(k for k in layer.state_dict() if "lora" in k) == ["lora_A.default.weight", "lora_B.default.weight"]
    layer.update_layer("b", 3, 3, init_lora_weights=False, generator=torch.Generator().manual_seed(0))
    assert list(layer.lora_A) == ["default", "b"] and layer.r["b"] == 3 and layer.scaling["b"] == 1.0
    assert not layer.lora_A["b"].weight.requires_grad  # not active: frozen, as PEFT
    x = torch.randn(5, 10)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ layer.delta_weight().T, **TOL)
    layer.set_adapter("b")
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ layer.delta_weight("b").T, **TOL)
    assert layer.lora_A["b"].weight.requires_grad and not layer.lora_A["default"].weight.requires_grad
    with pytest.raises(ValueError, match=r"adapter_name='zz' is not in this layer; it holds \['default', 'b'\]"):
        layer.delta_weight("zz")


@pytest.mark.parametrize("bad", ["", "a.b", "__base__", 3, "keys"])
def test_bad_adapter_names(bad):
    model = fresh("mlp")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="adapter_name must be a non-empty string"):
        add_lora(model, LoraConfig(r=2, target_modules=["lin0"]), adapter_name=bad)
    assert_same(model, snap)


def test_first_adapter_may_have_any_name():
    model = add_lora(fresh("mlp"), LoraConfig(r=2, target_modules=["lin0"]), adapter_name="task1")
    assert adapter_names(model) == ["task1"] and active_adapter(model) == "task1"
    assert model.lin0.lora_A["task1"].weight.requires_grad


# ------------------------------------------------------------------ add_lora twice (PEFT's add_adapter)

@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_second_adapter_is_added_inactive_and_frozen(kind):
    one = add_lora(fresh(kind), LoraConfig(r=4, lora_alpha=8, target_modules=T1[kind], init_lora_weights=False),
                   generator=torch.Generator().manual_seed(1))
    flags = {n: p.requires_grad for n, p in one.named_parameters()}
    before = out(one, kind)
    add_lora(one, LoraConfig(r=2, lora_alpha=6, target_modules=T2[kind], init_lora_weights=False),
             adapter_name="b", generator=torch.Generator().manual_seed(2))
    assert adapter_names(one) == ["default", "b"] and active_adapter(one) == "default"
    assert torch.equal(out(one, kind), before)  # "b" is random but not active
    now = {n: p.requires_grad for n, p in one.named_parameters()}
    assert all(not now[n] for n in now if ".lora_A.b." in n or ".lora_B.b." in n)
    new_wrapped = [n for n in now if n not in flags and ".lora_" not in n]  # base_layer of the new wrappers
    assert all(not now[n] for n in new_wrapped)
    assert all(now[n] == f for n, f in flags.items() if n in now)
    layers = dict(lora_layers(one))
    shared = [n for n in layers if "b" in layers[n].lora_A and "default" in layers[n].lora_A]
    only_b = [n for n in layers if list(layers[n].lora_A) == ["b"]]
    assert shared and only_b and all(layers[n].active_adapter == "default" for n in only_b)
    ref = peft_twin(one, kind)  # PEFT: add_adapter does not activate either
    assert ref.active_adapter == "default"
    torch.testing.assert_close(out(ref, kind), out(one, kind), **TOL)


def test_same_name_twice_changes_nothing():
    model = two_adapters("mlp")
    snap = snapshot(model)
    for name in ("default", "b"):
        with pytest.raises(ValueError, match=rf"adapter_name='{name}' is already loaded.*\['default', 'b'\]"):
            add_lora(model, LoraConfig(r=2, target_modules=["lin2"]), adapter_name=name)
    with pytest.raises(ValueError, match="a further adapter must have bias='none'"):
        add_lora(model, LoraConfig(r=2, target_modules=["lin2"], bias="all"), adapter_name="c")
    assert_same(model, snap)


# ------------------------------------------------------------------ switch, disable, delete

@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_set_adapter_equals_a_model_with_that_adapter_alone(kind):
    model = two_adapters(kind)
    alone = add_lora(fresh(kind), LoraConfig(r=2, lora_alpha=6, target_modules=T2[kind], init_lora_weights=False),
                     adapter_name="b", generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(out(model, kind), out(alone, kind))
    set_adapter(model, "b")
    assert active_adapter(model) == "b" and model.lora_config is model.lora_configs["b"]
    torch.testing.assert_close(out(model, kind), out(alone, kind), **TOL)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains and all(".b." in n for n in trains)  # as PEFT: the active adapter trains
    ref = peft_twin(model, kind)
    ref.set_adapter("b")
    torch.testing.assert_close(out(ref, kind), out(model, kind), **TOL)


def test_set_adapter_unknown_name_lists_loaded():
    model = two_adapters("mlp")
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"adapter_name='c' is not a loaded adapter; loaded adapters: "
                                         r"\['default', 'b'\]"):
        set_adapter(model, "c")
    assert_same(model, snap)
    with pytest.raises(ValueError, match="model has no LoRA layers"):
        set_adapter(fresh("mlp"), "default")


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_disable_adapters_gives_exactly_the_base(kind):
    model = two_adapters(kind)
    with_adapter = out(model, kind)
    with disable_adapters(model):
        assert torch.equal(out(model, kind), out(fresh(kind), kind))
    assert torch.equal(out(model, kind), with_adapter)
    with pytest.raises(RuntimeError), disable_adapters(model):  # restored on error too
        raise RuntimeError
    assert torch.equal(out(model, kind), with_adapter)
    merge_lora(model)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with disable_adapters(model):
            pass
    assert_same(model, snap)


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_delete_adapter_leaves_the_other_alone(kind):
    model = two_adapters(kind)
    alone = add_lora(fresh(kind), LoraConfig(r=4, lora_alpha=8, target_modules=T1[kind], init_lora_weights=False),
                     generator=torch.Generator().manual_seed(1))
    delete_adapter(model, "b")
    assert adapter_names(model) == ["default"] and "b" not in model.lora_configs
    want, got = alone.state_dict(), model.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in alone.named_modules()]


def test_delete_active_or_unknown_adapter_changes_nothing():
    model = two_adapters("gpt2")
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"adapter_name='default' is the active adapter.*\['default', 'b'\]"):
        delete_adapter(model, "default")
    with pytest.raises(ValueError, match=r"adapter_name='nope' is not a loaded adapter; loaded adapters"):
        delete_adapter(model, "nope")
    assert_same(model, snap)


def test_merge_uses_the_active_adapter_only():
    model = two_adapters("mlp", same_targets=True)
    set_adapter(model, "b")
    y = out(model, "mlp")
    merge_lora(model)
    assert all(layer.merged_adapters == ["b"] for _, layer in lora_layers(model))
    torch.testing.assert_close(out(model, "mlp"), y, **TOL)
    with pytest.warns(UserWarning, match="unmerging them first"):
        set_adapter(model, "default")  # as PEFT: switching unmerges
    assert not any(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(out(model, "mlp"), out(two_adapters("mlp", same_targets=True), "mlp"), **TOL)
    merge_lora(model)
    unmerge_lora(model)
    assert not any(layer.merged for _, layer in lora_layers(model))


# ------------------------------------------------------------------ mixed batches

@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_mixed_batch_equals_one_adapter_at_a_time_and_peft(kind):
    model = two_adapters(kind)
    names = ["b", "default", "__base__", "b"]
    with mixed_batch(model, names):
        mixed = out(model, kind)
    assert active_adapter(model) == "default"
    for i, name in enumerate(names):
        if name == "__base__":
            with disable_adapters(model):
                want = out(model, kind, X[kind][i:i + 1])
        else:
            set_adapter(model, name)
            want = out(model, kind, X[kind][i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], want, **TOL)
    set_adapter(model, "default")
    with torch.no_grad():
        got = forward(model, X[kind], adapter_names=names)
    torch.testing.assert_close(got.logits if kind == "gpt2" else got, mixed, **TOL)
    ref = peft_twin(model, kind)
    with torch.no_grad():
        want = ref(X[kind], adapter_names=names)
    torch.testing.assert_close(mixed, want.logits if kind == "gpt2" else want, **TOL)


def test_mixed_batch_bad_input():
    model = two_adapters("mlp")
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"adapter_names entry='c' is not a loaded adapter; loaded adapters: "
                                         r"\['default', 'b'\]"):
        with mixed_batch(model, ["default", "c", "b", "b"]):
            pass
    with pytest.raises(ValueError, match="adapter_names must be a non-empty list"):
        with mixed_batch(model, "default"):
            pass
    with pytest.raises(ValueError, match="adapter_names has 2 names but the batch has 4 examples"):
        with mixed_batch(model, ["default", "b"]):
            out(model, "mlp")
    assert_same(model, snap)
    merge_lora(model)
    with pytest.raises(ValueError, match="mixed_batch: layer 'lin0' has an adapter merged"):
        with mixed_batch(model, ["default"] * 4):
            pass


# ------------------------------------------------------------------ add_weighted_adapter

def _deltas(model, name):
    return {n: layer.delta_weight(name).detach() for n, layer in lora_layers(model) if name in layer.lora_A}


def _peft_deltas(ref, name):
    from peft.tuners.lora import LoraLayer
    out = {}
    for n, m in ref.base_model.model.named_modules():
        if isinstance(m, LoraLayer) and name in m.lora_A:
            d = m.get_delta_weight(name).detach()
            out[n] = d.T if m.fan_in_fan_out else d
    return out


CASES = [("linear", None, 4), ("cat", None, 4), ("cat", None, 2), ("svd", None, 2), ("svd", 3, 2), ("svd", 6, 4)]


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("combination_type,svd_rank,r2", CASES)
def test_weighted_adapter_matches_peft(kind, combination_type, svd_rank, r2):
    model = two_adapters(kind, r2=r2, same_targets=True)
    ref = peft_twin(model, kind)
    weights = [0.7, -0.4]
    add_weighted_adapter(model, ["default", "b"], weights, "mix", combination_type=combination_type,
                         svd_rank=svd_rank)
    ref.add_weighted_adapter(["default", "b"], weights, "mix", combination_type=combination_type, svd_rank=svd_rank)
    new_r = {"linear": 4, "cat": 4 + r2, "svd": svd_rank or max(4, r2)}[combination_type]
    layer = next(layer for _, layer in lora_layers(model))
    assert (layer.r["mix"], layer.lora_alpha["mix"], layer.scaling["mix"]) == (new_r, new_r, 1.0)
    assert active_adapter(model) == "default" and not layer.lora_A["mix"].weight.requires_grad
    ours, theirs = _deltas(model, "mix"), _peft_deltas(ref, "mix")
    assert sorted(ours) == sorted(theirs)
    for n in ours:
        torch.testing.assert_close(ours[n], theirs[n], **TOL)
    set_adapter(model, "mix")
    ref.set_adapter("mix")
    torch.testing.assert_close(out(model, kind), out(ref, kind), **TOL)


def test_cat_and_full_rank_svd_are_exact_linear_is_not():
    model = two_adapters("mlp", r2=4, same_targets=True)
    w = [0.7, -0.4]
    for ctype, rank in [("cat", None), ("svd", 8), ("linear", None), ("svd", 2)]:
        add_weighted_adapter(model, ["default", "b"], w, f"{ctype}{rank}", combination_type=ctype, svd_rank=rank)
    for n, layer in lora_layers(model):
        target = w[0] * layer.delta_weight("default") + w[1] * layer.delta_weight("b")
        torch.testing.assert_close(layer.delta_weight("catNone"), target, **TOL)
        torch.testing.assert_close(layer.delta_weight("svd8"), target, **TOL)
        # linear: (Σ cᵢBᵢ)(Σ cⱼAⱼ) has cross terms BᵢAⱼ; far from Σ wᵢΔWᵢ
        assert (layer.delta_weight("linearNone") - target).norm() > 0.1 * target.norm()
        # svd to rank 2: the best rank-2 approximation (Eckart-Young): error = the tail singular values
        s = torch.linalg.svdvals(target)
        err = (layer.delta_weight("svd2") - target).norm()
        torch.testing.assert_close(err, s[2:].norm(), atol=1e-4, rtol=1e-4)
    one = two_adapters("mlp", same_targets=True)
    add_weighted_adapter(one, ["b"], [-2.5], "neg", combination_type="svd")  # one adapter: linear, exact
    for _, layer in lora_layers(one):
        torch.testing.assert_close(layer.delta_weight("neg"), -2.5 * layer.delta_weight("b"), **TOL)


def test_weighted_adapter_with_rslora_is_exact_where_peft_is_sqrt_r_off():
    model = two_adapters("mlp", r2=4, same_targets=True, rs=True)
    ref = peft_twin(model, "mlp")
    add_weighted_adapter(model, ["default", "b"], [1.0, 0.5], "mix", combination_type="cat")
    ref.add_weighted_adapter(["default", "b"], [1.0, 0.5], "mix", combination_type="cat")
    ours, theirs = _deltas(model, "mix"), _peft_deltas(ref, "mix")
    for n, layer in lora_layers(model):
        target = layer.delta_weight("default") + 0.5 * layer.delta_weight("b")
        torch.testing.assert_close(ours[n], target, **TOL)
        torch.testing.assert_close(theirs[n], math.sqrt(8) * target, **TOL)  # PEFT keeps use_rslora: α/√r = √8


def test_weighted_adapter_bad_input_changes_nothing():
    model = two_adapters("mlp")  # "default" on lin0, lin1; "b" (r=2) on lin1, lin2
    add_lora(model, LoraConfig(r=2, target_modules=T1["mlp"], init_lora_weights=False), adapter_name="c",
             generator=torch.Generator().manual_seed(3))
    snap = snapshot(model)
    cases = [
        (dict(adapters=["default", "zz"]), r"adapters entry='zz' is not a loaded adapter; loaded adapters: "
                                           r"\['default', 'b', 'c'\]"),
        (dict(adapters=["default", "b"]), r"'default' and 'b' target different layers \(layer 'lin0'"),
        (dict(combination_type="linear"), r"'linear' needs adapters of one rank.*'default': 4, 'c': 2"),
        (dict(weights=[1.0, float("nan")]), r"weights must be finite numbers, got nan"),
        (dict(weights=[float("inf"), 1.0]), r"weights must be finite numbers, got inf"),
        (dict(weights=[1.0]), r"weights must be a list of 2 numbers"),
        (dict(combination_type="ties"), r"combination_type must be one of .*'cat'\), got combination_type='ties'"),
        (dict(adapter_name="b"), r"adapter_name='b' is already loaded"),
        (dict(svd_rank=11), r"svd_rank=11 is above min\(out_features, in_features\)=10 of layer 'lin0'"),
        (dict(svd_rank=0), r"svd_rank must be a positive integer or None"),
    ]
    for change, match in cases:
        kw = dict(adapters=["default", "c"], weights=[0.5, 0.5], adapter_name="mix", combination_type="svd")
        kw.update(change)
        with pytest.raises(ValueError, match=match):
            add_weighted_adapter(model, **kw)
        assert_same(model, snap)
