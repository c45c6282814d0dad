"""lora_lab.lora.variants: PiSSA, LoftQ and DoRA against PEFT 0.21.2 (fp32, 1e-5), on a seeded
nn.Linear MLP and a tiny GPT-2 (Conv1D, fan_in_fan_out=True), and bad input; then the same
variants wired into LoraConfig / add_lora / LoRALinear / adapter files, model against
``peft.get_peft_model`` with the same config and seed.

PEFT's ``loftq_init`` moves the weight to "cuda" unconditionally, so on a CPU-only torch it
cannot run; ``peft_loftq_cpu`` executes PEFT's own source with that one line pointed at the CPU
(the test fails if the line changes). PEFT also hands a Conv1D's stored (in, out) weight to
``loftq_init`` unchanged, so its LoftQ adapters for GPT-2 have the wrong shapes
(``test_peft_loftq_ignores_fan_in_fan_out``); on GPT-2 LoftQ is compared with PEFT's function
applied to the (out, in) weight instead.
"""

import copy
import inspect
import json
import textwrap

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from lora_lab.lora import (
    LoftQConfig,
    LoraConfig,
    LoRALinear,
    add_lora,
    add_weighted_adapter,
    lora_layers,
    merge_lora,
    mixed_batch,
    set_adapter,
    unmerge_lora,
)
from lora_lab.lora.baselayer import get_weight
from lora_lab.lora.io import MAGNITUDE, load_adapter, read_adapter_config, read_adapter_weights, save_adapter
from lora_lab.lora.variants import (
    dora_forward,
    dora_init_magnitude,
    dora_merged_weight,
    dora_unmerged_weight,
    dora_weight_norm,
    loftq_init,
    lora_scaling,
    pissa_init,
)
from lora_lab.quant.metrics import fake_quantize

peft = pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.tuners.lora import layer as peft_lora_layer  # noqa: E402
from peft.utils import loftq_utils  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
# (r, lora_alpha, use_rslora): r = 1, 4, 16, scaling ≠ 1 in each
CASES = [(1, 2, False), (4, 8, True), (16, 8, False)]
TARGETS = {"mlp": ["0", "2"], "gpt2": ["c_attn", "c_proj", "c_fc"]}
PREFIX = "base_model.model."


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 16)).eval()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def peft_model(kind, r, lora_alpha, use_rslora=False, **kw):
    """(untouched copy of the model, PEFT model), both from the same seed."""
    model = tiny_mlp() if kind == "mlp" else tiny_gpt2()
    original = copy.deepcopy(model)
    config = peft.LoraConfig(r=r, lora_alpha=lora_alpha, use_rslora=use_rslora, target_modules=TARGETS[kind],
                             fan_in_fan_out=kind == "gpt2", **kw)
    return original, peft.get_peft_model(model, config)


def lora_modules(pm):
    """(name in the original model, PEFT LoRA layer) in creation order."""
    return [(name[len(PREFIX):], m) for name, m in pm.named_modules() if isinstance(m, LoraLayer)]


def adapter(layer):
    """(lora_A, lora_B, scaling) of PEFT's "default" adapter."""
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]


@pytest.fixture
def peft_loftq_cpu(monkeypatch):
    """PEFT's ``loftq_init`` from its own source, computing on the CPU instead of "cuda"."""
    line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    src = textwrap.dedent(inspect.getsource(loftq_utils.loftq_init))
    assert line in src, "PEFT's loftq_init changed: revisit this fixture"
    namespace = dict(vars(loftq_utils))
    exec(src.replace(line, 'compute_device = "cpu"'), namespace)
    monkeypatch.setattr(peft_lora_layer, "loftq_init", namespace["loftq_init"])
    return namespace["loftq_init"]


def outlier_weight(d_out=64, d_in=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g) * 0.02
    idx = torch.randperm(w.numel(), generator=g)[:8]
    w.view(-1)[idx] = 0.3 * torch.sign(torch.randn(8, generator=g))  # a few large weights, as in trained LLMs
    return w


# --------------------------------------------------------------------------- PiSSA
@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("r,lora_alpha,use_rslora", CASES)
@pytest.mark.parametrize("niter", [None, 4])
def test_pissa_matches_peft(kind, r, lora_alpha, use_rslora, niter, monkeypatch):
    calls = []  # (input, RNG state) of each svd_lowrank PEFT makes: "pissa_niter_4" draws from the global RNG

    def recording_svd_lowrank(A, q, niter):
        calls.append((A.clone(), torch.get_rng_state()))
        return torch.svd_lowrank(A, q, niter=niter)

    monkeypatch.setattr(peft_lora_layer, "svd_lowrank", recording_svd_lowrank)
    init = "pissa" if niter is None else f"pissa_niter_{niter}"
    original, pm = peft_model(kind, r, lora_alpha, use_rslora, init_lora_weights=init)
    layers = lora_modules(pm)
    assert len(layers) == (2 if kind == "mlp" else 8) and len(calls) == (0 if niter is None else len(layers))
    for i, (name, layer) in enumerate(layers):
        w = get_weight(original.get_submodule(name)).clone()
        if niter is not None:
            assert torch.equal(calls[i][0], w)
            torch.set_rng_state(calls[i][1])
        A, B, residual = pissa_init(w, r, lora_alpha, use_rslora=use_rslora, niter=niter)
        peft_A, peft_B, scaling = adapter(layer)
        assert scaling == lora_scaling(r, lora_alpha, use_rslora)
        torch.testing.assert_close(A, peft_A, **TOL)
        torch.testing.assert_close(B, peft_B, **TOL)
        torch.testing.assert_close(residual, get_weight(layer.get_base_layer()), **TOL)
        torch.testing.assert_close(residual + scaling * B @ A, w, **TOL)  # the layer is unchanged at step 0
        assert torch.equal(w, get_weight(original.get_submodule(name)))  # the input is not modified


def test_pissa_takes_the_principal_directions():
    w = outlier_weight(48, 32)
    A, B, residual = pissa_init(w, 8, 16)
    S = torch.linalg.svdvals(w.double())
    torch.testing.assert_close(torch.linalg.svdvals((2.0 * B @ A).double())[:8], S[:8], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.norm(residual).double(), S[8:].norm(), atol=1e-6, rtol=1e-5)
    assert torch.linalg.norm(A, dim=1).argmax() == 0  # √(σ_1/scaling) is A's largest row norm


# --------------------------------------------------------------------------- LoftQ
@pytest.mark.parametrize("r,lora_alpha,use_rslora", CASES)
@pytest.mark.parametrize("num_iter", [1, 3])
def test_loftq_matches_peft_on_linear(r, lora_alpha, use_rslora, num_iter, peft_loftq_cpu):
    original, pm = peft_model("mlp", r, lora_alpha, use_rslora, init_lora_weights="loftq",
                              loftq_config=peft.LoftQConfig(loftq_bits=4, loftq_iter=num_iter))
    for name, layer in lora_modules(pm):
        w = get_weight(original.get_submodule(name))
        q, A, B, errors = loftq_init(w, r, num_iter=num_iter)  # scaling=1: PEFT ignores lora_alpha here
        peft_A, peft_B, _ = adapter(layer)
        torch.testing.assert_close(A, peft_A, **TOL)
        torch.testing.assert_close(B, peft_B, **TOL)
        torch.testing.assert_close(q, get_weight(layer.get_base_layer()), **TOL)
        assert len(errors) == num_iter + 1 and errors[1] < errors[0]


@pytest.mark.parametrize("r", [1, 4, 16])
@pytest.mark.parametrize("num_bits,num_iter", [(4, 1), (4, 2), (8, 2)])
def test_loftq_matches_peft_function_on_gpt2(r, num_bits, num_iter, peft_loftq_cpu):
    model = tiny_gpt2()
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        w = get_weight(model.get_submodule(name))  # (out, in): what PEFT should have passed
        peft_q, peft_A, peft_B = peft_loftq_cpu(w, num_bits=num_bits, reduced_rank=r, num_iter=num_iter)
        q, A, B, errors = loftq_init(w, r, num_bits=num_bits, num_iter=num_iter)
        torch.testing.assert_close(q, peft_q, **TOL)
        torch.testing.assert_close(A, peft_A, **TOL)
        torch.testing.assert_close(B, peft_B, **TOL)
        assert errors[1] < errors[0]


def test_peft_loftq_ignores_fan_in_fan_out(peft_loftq_cpu):
    """PEFT 0.21.2 factors the stored (in, out) Conv1D weight: lora_A comes out (r, out_features).
    If this starts failing, PEFT fixed it and the GPT-2 LoftQ test can use get_peft_model."""
    _, pm = peft_model("gpt2", 4, 4, init_lora_weights="loftq", loftq_config=peft.LoftQConfig(loftq_bits=4))
    c_attn = pm.get_submodule(PREFIX + "transformer.h.0.attn.c_attn")
    assert tuple(c_attn.lora_A["default"].weight.shape) == (4, 96)  # should be (4, in_features=32)


def test_loftq_errors_are_measured_and_decrease():
    w = outlier_weight()
    q1, A1, B1, errors1 = loftq_init(w, 4, num_iter=1)
    plain = torch.linalg.norm(w - fake_quantize(w, "nf4", 64)).item()  # lora_lab's own NF4, blocks of 64
    assert errors1[0] == pytest.approx(plain, rel=1e-6)
    torch.testing.assert_close(q1, fake_quantize(w, "nf4", 64), atol=0, rtol=0)  # PEFT's quantizer = bnb NF4
    assert errors1[1] == pytest.approx(torch.linalg.norm(w - q1 - B1 @ A1).item(), rel=1e-5)
    assert errors1[1] < 0.97 * errors1[0]  # a rank-4 SVD of the residual takes the outliers' share of the error
    q5, A5, B5, errors5 = loftq_init(w, 4, num_iter=5)
    assert errors5[:2] == pytest.approx(errors1, rel=1e-6)
    assert errors5[-1] == pytest.approx(torch.linalg.norm(w - q5 - B5 @ A5).item(), rel=1e-5)
    assert errors5[-1] < errors1[1]


def test_loftq_base_is_what_a_qlora_base_stores():
    """Re-quantizing LoftQ's base with bitsandbytes NF4 (blocks of 64, no double quantization)
    gives it back exactly, so ``errors`` are the errors of the 4-bit model built from it."""
    q = loftq_init(outlier_weight(), 4, num_iter=2).dequantized_weight
    q4, state = bnb.functional.quantize_4bit(q, blocksize=64, compress_statistics=False, quant_type="nf4")
    assert torch.equal(bnb.functional.dequantize_4bit(q4, state), q)


def test_loftq_scaling_divides_the_factors():
    w = outlier_weight(32, 48)
    q, A, B, errors = loftq_init(w, 4, num_iter=2)
    q_s, A_s, B_s, errors_s = loftq_init(w, 4, num_iter=2, scaling=4.0)
    torch.testing.assert_close(q_s, q, **TOL)
    torch.testing.assert_close(A_s, A / 2, **TOL)
    torch.testing.assert_close(4.0 * B_s @ A_s, B @ A, **TOL)
    assert errors_s == pytest.approx(errors, rel=1e-5)


# --------------------------------------------------------------------------- DoRA
def randomize(pm, seed=1):
    """Give every adapter a non-zero B and a magnitude away from the norm (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(pm):
            layer.lora_B["default"].weight.normal_(0, 0.1, generator=g)
            m = layer.lora_magnitude_vector["default"].weight
            m.mul_(1 + 0.2 * torch.rand(m.shape, generator=g))


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("r,lora_alpha,use_rslora", CASES)
def test_dora_matches_peft(kind, r, lora_alpha, use_rslora):
    original, pm = peft_model(kind, r, lora_alpha, use_rslora, use_dora=True)
    for name, layer in lora_modules(pm):  # the initial magnitude, B = 0
        peft_A, peft_B, scaling = adapter(layer)
        w = get_weight(original.get_submodule(name))
        m = dora_init_magnitude(w, peft_A, peft_B, scaling)
        torch.testing.assert_close(m, layer.lora_magnitude_vector["default"].weight, **TOL)
        torch.testing.assert_close(m, torch.linalg.norm(w, dim=1), **TOL)
    randomize(pm)
    g = torch.Generator().manual_seed(2)
    for name, layer in lora_modules(pm):
        base = layer.get_base_layer()
        w, bias = get_weight(base), base.bias
        peft_A, peft_B, scaling = adapter(layer)
        peft_m = layer.lora_magnitude_vector["default"].weight
        x = torch.randn(2, 3, w.shape[1], generator=g)
        y_peft = layer(x)
        y_peft.square().sum().backward()
        A, B, m = (t.detach().clone().requires_grad_() for t in (peft_A, peft_B, peft_m))
        y = dora_forward(x, w, A, B, m, scaling, bias=bias)
        y.square().sum().backward()
        torch.testing.assert_close(y, y_peft, **TOL)
        for mine, theirs in ((A, peft_A), (B, peft_B), (m, peft_m)):
            torch.testing.assert_close(mine.grad, theirs.grad, **TOL)
        # the same through a precomputed base output (PEFT's path; a 4-bit layer's own output)
        torch.testing.assert_close(dora_forward(x, w, A, B, m, scaling, bias=bias, base_result=base(x)), y, **TOL)

        delta = (B @ A).detach() * scaling
        weight_norm = dora_weight_norm(w, delta)
        merged = dora_merged_weight(w, A.detach(), B.detach(), m.detach(), scaling)
        layer.merge()
        torch.testing.assert_close(merged, get_weight(base), **TOL)
        torch.testing.assert_close(x @ merged.T + (0 if bias is None else bias), y, **TOL)
        layer.unmerge()
        unmerged = dora_unmerged_weight(merged, A.detach(), B.detach(), m.detach(), scaling, weight_norm)
        torch.testing.assert_close(unmerged, get_weight(base), **TOL)
        torch.testing.assert_close(unmerged, w, **TOL)


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_dora_with_dropout_matches_peft(kind):
    """Training with dropout: PEFT drops the adapter's input and recomputes W x' with it."""
    _, pm = peft_model(kind, 4, 8, lora_dropout=0.25, use_dora=True)
    randomize(pm)
    pm.train()
    for _, layer in lora_modules(pm):
        base = layer.get_base_layer()
        A, B, scaling = adapter(layer)
        m = layer.lora_magnitude_vector["default"].weight
        x = torch.randn(4, get_weight(base).shape[1])
        torch.manual_seed(5)
        y_peft = layer(x)
        torch.manual_seed(5)
        y = dora_forward(x, get_weight(base), A, B, m, scaling, bias=base.bias, dropout=nn.Dropout(0.25))
        torch.testing.assert_close(y, y_peft, **TOL)
        y_eval = dora_forward(x, get_weight(base), A, B, m, scaling, bias=base.bias)
        assert (y - y_eval).abs().max() > 1e-3  # the dropout mattered, so the check above could fail


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_pissa_then_dora_magnitude_matches_peft(kind):
    """PEFT runs PiSSA first (new base, B ≠ 0), then measures DoRA's magnitude on that."""
    original, pm = peft_model(kind, 4, 8, init_lora_weights="pissa", use_dora=True)
    for name, layer in lora_modules(pm):
        w = get_weight(original.get_submodule(name))
        A, B, residual = pissa_init(w, 4, 8)
        m = dora_init_magnitude(residual, A, B, layer.scaling["default"])
        torch.testing.assert_close(m, layer.lora_magnitude_vector["default"].weight, **TOL)
        torch.testing.assert_close(m, torch.linalg.norm(w, dim=1), **TOL)  # residual + s·B A = W


# --------------------------------------------------------------------------- bad input
W = torch.randn(16, 20)
A4, B4, M = torch.randn(4, 20), torch.randn(16, 4), torch.ones(16)


@pytest.mark.parametrize("call,match", [
    (lambda: pissa_init(W, 0, 8), "r=0"),
    (lambda: pissa_init(W, 17, 8), r"min\(out_features, in_features\)\] = \[1, 16\].*r=17"),
    (lambda: pissa_init(W, 2.0, 8), "r=2.0"),
    (lambda: pissa_init(W, 4, 0), "lora_alpha=0"),
    (lambda: pissa_init(W, 4, 8, use_rslora="yes"), "use_rslora='yes'"),
    (lambda: pissa_init(W, 4, 8, niter=-1), "niter=-1"),
    (lambda: pissa_init(torch.where(W > 2, float("nan"), W), 4, 8), "weight has .* NaN/inf"),
    (lambda: pissa_init(W[0], 1, 8), "weight must be a 2-D"),
    (lambda: pissa_init(W.to(torch.int64), 4, 8), "weight.dtype=torch.int64"),
    (lambda: loftq_init(W, 17), "r=17"),
    (lambda: loftq_init(W, 4, num_iter=0), "num_iter=0"),
    (lambda: loftq_init(W, 4, num_bits=3), r"num_bits must be one of \(4, 8\).*num_bits=3"),
    (lambda: loftq_init(W, 4, scaling=float("inf")), "scaling=inf"),
    (lambda: loftq_init(W.clone().fill_(float("inf")), 4), "weight has 320 NaN/inf"),
    (lambda: dora_init_magnitude(W, A4.T, B4, 2.0), "lora_A must be"),
    (lambda: dora_init_magnitude(W, A4, B4.T, 2.0), "lora_B must be"),
    (lambda: dora_forward(torch.randn(3, 20), W, A4, B4, torch.ones(20), 2.0), r"magnitude must be .*\(16,\)"),
    (lambda: dora_forward(torch.randn(3, 16), W, A4, B4, M, 2.0), "x must end in in_features=20"),
    (lambda: dora_forward(torch.randn(3, 20), W, A4, B4, M, 0.0), "scaling=0.0"),
    (lambda: dora_weight_norm(W, W.T), "delta_weight must have"),
    (lambda: dora_merged_weight(W, A4, B4, M, -1), "scaling=-1"),
    (lambda: dora_unmerged_weight(W, A4, B4, M, 2.0, torch.ones(4)), "weight_norm must be"),
])
def test_bad_input_raises_value_error(call, match):
    before = W.clone()
    with pytest.raises(ValueError, match=match):
        call()
    assert torch.equal(W, before)


# =========================================================================== wired into the layer and config
VARIANTS = {"dora": dict(use_dora=True), "pissa": dict(init_lora_weights="pissa"),
            "pissa_niter_4": dict(init_lora_weights="pissa_niter_4"),
            "pissa+dora": dict(init_lora_weights="pissa", use_dora=True)}


def both(kind, r, lora_alpha, use_rslora=False, **variant):
    """(original, lora_lab model, PEFT model): one seeded model, the same config, the same RNG state."""
    original = tiny_mlp() if kind == "mlp" else tiny_gpt2()
    ours = copy.deepcopy(original)
    torch.manual_seed(1)
    add_lora(ours, LoraConfig(r=r, lora_alpha=lora_alpha, use_rslora=use_rslora, target_modules=TARGETS[kind],
                              **variant))
    if "loftq_config" in variant:
        variant = {**variant, "loftq_config": peft.LoftQConfig(**vars(LoftQConfig(**variant["loftq_config"])))}
    torch.manual_seed(1)
    pm = peft.get_peft_model(copy.deepcopy(original), peft.LoraConfig(
        r=r, lora_alpha=lora_alpha, use_rslora=use_rslora, target_modules=TARGETS[kind],
        fan_in_fan_out=kind == "gpt2", **variant))
    return original, ours, pm


def pairs(ours, pm):
    """(name, our LoRALinear, PEFT's layer) for every wrapped layer."""
    return [(name, ours.get_submodule(name), layer) for name, layer in lora_modules(pm)]


def perturb(layers, adapter_name="default", seed=3):
    """The same non-zero B and off-norm magnitude in each model (layers in the same order)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            layer.lora_B[adapter_name].weight.normal_(0, 0.1, generator=g)
            if adapter_name in layer.lora_magnitude_vector:
                m = layer.lora_magnitude_vector[adapter_name].weight
                m.mul_(1 + 0.2 * torch.rand(m.shape, generator=g))


def example(kind):
    g = torch.Generator().manual_seed(7)
    return torch.randn(4, 20, generator=g) if kind == "mlp" else torch.randint(0, 100, (2, 8), generator=g)


def run(model, kind):
    with torch.no_grad():
        return model(example(kind)) if kind == "mlp" else model(input_ids=example(kind)).logits


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("r,lora_alpha,use_rslora", CASES)
def test_add_lora_variant_matches_get_peft_model(kind, r, lora_alpha, use_rslora, variant):
    original, ours, pm = both(kind, r, lora_alpha, use_rslora, **VARIANTS[variant])
    dora, pissa = VARIANTS[variant].get("use_dora", False), "init_lora_weights" in VARIANTS[variant]
    layers = pairs(ours, pm)
    assert len(layers) == (2 if kind == "mlp" else 8)
    for name, mine, theirs in layers:
        for part in ("lora_A", "lora_B"):
            torch.testing.assert_close(getattr(mine, part)["default"].weight, getattr(theirs, part)["default"].weight,
                                       **TOL)
        w = get_weight(mine.base_layer)
        torch.testing.assert_close(w, get_weight(theirs.get_base_layer()), **TOL)
        assert pissa == (not torch.equal(w, get_weight(original.get_submodule(name))))  # PiSSA: the residual
        assert (list(mine.lora_magnitude_vector) == ["default"]) == dora
        if dora:
            m = mine.lora_magnitude_vector["default"].weight
            torch.testing.assert_close(m, theirs.lora_magnitude_vector["default"].weight, **TOL)
            assert m.shape == (mine.out_features,) and m.requires_grad and "use_dora=True" in repr(mine)
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == trainable
    torch.testing.assert_close(run(ours, kind), run(original, kind), **TOL)  # unchanged at step 0
    perturb([m for _, m, _ in layers])
    perturb([t for _, _, t in layers])
    y = run(ours, kind)
    torch.testing.assert_close(y, run(pm, kind), **TOL)
    assert (y - run(original, kind)).abs().max() > 1e-3  # the adapters matter, so the check above can fail
    before = [get_weight(mine.base_layer).clone() for _, mine, _ in layers]
    merge_lora(ours)
    for _, mine, theirs in layers:
        theirs.merge()
        torch.testing.assert_close(get_weight(mine.base_layer), get_weight(theirs.get_base_layer()), **TOL)
    torch.testing.assert_close(run(ours, kind), y, **TOL)
    unmerge_lora(ours)
    for w, (_, mine, _) in zip(before, layers):
        torch.testing.assert_close(get_weight(mine.base_layer), w, **TOL)
    torch.testing.assert_close(run(ours, kind), y, **TOL)


@pytest.mark.parametrize("r", [1, 4, 16])
@pytest.mark.parametrize("num_iter", [1, 2])
def test_add_lora_loftq_matches_get_peft_model_at_alpha_equal_r(r, num_iter, peft_loftq_cpu):
    """At lora_alpha == r (scaling 1) PEFT's LoftQ and ours agree (PEFT ignores scaling: peft#1982)."""
    original, ours, pm = both("mlp", r, r, init_lora_weights="loftq", loftq_config=dict(loftq_iter=num_iter))
    for name, mine, theirs in pairs(ours, pm):
        for part in ("lora_A", "lora_B"):
            torch.testing.assert_close(getattr(mine, part)["default"].weight, getattr(theirs, part)["default"].weight,
                                       **TOL)
        torch.testing.assert_close(get_weight(mine.base_layer), get_weight(theirs.get_base_layer()), **TOL)
    torch.testing.assert_close(run(ours, "mlp"), run(pm, "mlp"), **TOL)


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("r,lora_alpha,use_rslora", CASES)
def test_add_lora_loftq_uses_the_layer_scaling(kind, r, lora_alpha, use_rslora):
    """Any lora_alpha (and GPT-2's Conv1D, which PEFT mis-shapes): each layer is variants.loftq_init of its
    (out, in) weight with the layer's scaling, so Q + scaling · B A ≈ W."""
    original = tiny_mlp() if kind == "mlp" else tiny_gpt2()
    ours = add_lora(copy.deepcopy(original), LoraConfig(
        r=r, lora_alpha=lora_alpha, use_rslora=use_rslora, target_modules=TARGETS[kind], init_lora_weights="loftq",
        loftq_config={"loftq_bits": 4, "loftq_iter": 2}))
    layers = list(lora_layers(ours))
    assert len(layers) == (2 if kind == "mlp" else 8)
    for name, layer in layers:
        w, s = get_weight(original.get_submodule(name)), layer.scaling["default"]
        q, A, B, errors = loftq_init(w, r, num_iter=2, scaling=s)
        torch.testing.assert_close(layer.lora_A["default"].weight, A, **TOL)
        torch.testing.assert_close(layer.lora_B["default"].weight, B, **TOL)
        torch.testing.assert_close(get_weight(layer.base_layer), q, **TOL)
        assert torch.linalg.norm(w - q - s * B @ A).item() == pytest.approx(errors[-1], rel=1e-4)
        assert errors[-1] < errors[0]
    y = run(ours, kind)
    expected = [get_weight(layer.base_layer) + layer.delta_weight() for _, layer in layers]  # Q + scaling · B A
    merge_lora(ours)
    for (_, layer), w in zip(layers, expected):
        torch.testing.assert_close(get_weight(layer.base_layer), w.detach(), **TOL)
    torch.testing.assert_close(run(ours, kind), y, **TOL)


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("first_dora", [True, False])
def test_several_adapters_with_dora_merge_as_peft(kind, first_dora):
    """A DoRA adapter merged after another divides by the norm of the *unmerged* base, as PEFT."""
    original, ours, pm = both(kind, 4, 8, use_dora=first_dora)
    config_b = dict(r=2, lora_alpha=4, target_modules=TARGETS[kind], use_dora=True)
    torch.manual_seed(2)
    add_lora(ours, LoraConfig(**config_b), adapter_name="b")
    torch.manual_seed(2)
    pm.add_adapter("b", peft.LoraConfig(fan_in_fan_out=kind == "gpt2", **config_b))
    layers = pairs(ours, pm)
    for name in ("default", "b"):
        perturb([m for _, m, _ in layers], name, seed=len(name))
        perturb([t for _, _, t in layers], name, seed=len(name))
    mine0 = layers[0][1]
    assert not mine0.lora_magnitude_vector["b"].weight.requires_grad  # a further adapter does not train
    set_adapter(ours, "b")
    assert mine0.lora_magnitude_vector["b"].weight.requires_grad and not mine0.lora_A["default"].weight.requires_grad
    for _, mine, theirs in layers:
        w = get_weight(mine.base_layer).clone()
        mine.merge(adapter_names=["default", "b"])
        theirs.merge(adapter_names=["default", "b"])
        torch.testing.assert_close(get_weight(mine.base_layer), get_weight(theirs.get_base_layer()), **TOL)
        assert (get_weight(mine.base_layer) - w).abs().max() > 1e-3
        mine.unmerge()
        torch.testing.assert_close(get_weight(mine.base_layer), w, **TOL)


def test_dora_on_a_bnb_4bit_base_matches_peft():
    torch.manual_seed(0)
    fp = nn.Linear(64, 48)

    def quantized():
        q = bnb.nn.Linear4bit(64, 48, bias=True, compute_dtype=torch.float32, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(fp.weight.data.clone(), requires_grad=False, quant_type="nf4")
        q.bias = nn.Parameter(fp.bias.data.clone(), requires_grad=False)
        return nn.Sequential(q.to("cpu"))

    ours, theirs = quantized(), quantized()
    torch.manual_seed(1)
    add_lora(ours, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], use_dora=True))
    torch.manual_seed(1)
    pm = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"], use_dora=True))
    layers = pairs(ours, pm)
    torch.testing.assert_close(layers[0][1].lora_magnitude_vector["default"].weight,
                               layers[0][2].lora_magnitude_vector["default"].weight, **TOL)
    perturb([m for _, m, _ in layers])
    perturb([t for _, _, t in layers])
    x = torch.randn(3, 64)
    torch.testing.assert_close(ours(x), pm(x), **TOL)


# --------------------------------------------------------------------------- adapter files
@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_dora_adapter_files_round_trip_with_peft(kind, tmp_path):
    original, ours, pm = both(kind, 4, 8, use_dora=True)
    perturb([m for _, m, _ in pairs(ours, pm)], seed=3)
    perturb([t for _, t in lora_modules(pm)], seed=4)  # a different adapter on each side
    save_adapter(ours, tmp_path / "ours")
    pm.save_pretrained(tmp_path / "peft")
    config = read_adapter_config(tmp_path / "ours")
    assert config.use_dora is True and read_adapter_config(tmp_path / "peft").use_dora is True
    mine, theirs = read_adapter_weights(tmp_path / "ours"), read_adapter_weights(tmp_path / "peft")
    first = "0" if kind == "mlp" else "transformer.h.0.attn.c_attn"
    assert sorted(mine) == sorted(theirs) and f"{first}.{MAGNITUDE}" in mine  # PEFT's key, no ".weight"
    loaded_by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(original), tmp_path / "ours")
    torch.testing.assert_close(run(loaded_by_peft, kind), run(ours, kind), **TOL)
    loaded_by_us = load_adapter(copy.deepcopy(original), tmp_path / "peft")
    torch.testing.assert_close(run(loaded_by_us, kind), run(pm, kind), **TOL)
    assert (run(pm, kind) - run(ours, kind)).abs().max() > 1e-3  # the two adapters differ


def test_pissa_and_loftq_files_record_the_init_and_reload_as_peft(tmp_path, peft_loftq_cpu):
    """As PEFT's from_pretrained, loading re-applies PiSSA/LoftQ to the original base, then loads A and B."""
    for variant in (dict(init_lora_weights="pissa"), dict(init_lora_weights="loftq", loftq_config=dict(loftq_iter=2))):
        original, ours, pm = both("mlp", 4, 4, **variant)
        perturb([m for _, m in lora_layers(ours)], seed=5)  # as if trained
        path = tmp_path / variant["init_lora_weights"]
        save_adapter(ours, path)
        raw = json.loads((path / "adapter_config.json").read_text())
        assert raw["init_lora_weights"] == variant["init_lora_weights"]
        assert raw["loftq_config"] == ({"loftq_bits": 4, "loftq_iter": 2} if "loftq_config" in variant else {})
        assert read_adapter_config(path).loftq_config == (LoftQConfig(loftq_iter=2) if "loftq_config" in variant
                                                          else None)
        y = run(ours, "mlp")
        torch.testing.assert_close(run(load_adapter(copy.deepcopy(original), path), "mlp"), y, **TOL)
        torch.testing.assert_close(run(peft.PeftModel.from_pretrained(copy.deepcopy(original), path), "mlp"), y, **TOL)


# --------------------------------------------------------------------------- what DoRA refuses, and bad input
def test_dora_refuses_mixed_batches_model_unchanged():
    model = add_lora(tiny_mlp(), LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], use_dora=True))
    add_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]), adapter_name="plain")
    before = snapshot(model)
    x = torch.randn(2, 20)
    with pytest.raises(ValueError, match="adapter 'default' uses DoRA; a mixed batch takes plain LoRA adapters only"):
        with mixed_batch(model, ["default", "plain"]):
            model(x)
    assert_unchanged(model, before)
    with mixed_batch(model, ["plain", "__base__"]):  # plain adapters still mix
        assert model(x).shape == (2, 16)


def test_dora_refuses_add_weighted_adapter():
    """PEFT 0.21.2 combines only A and B and gives the result a fresh magnitude (the trained ones are lost)."""
    model = add_lora(tiny_mlp(), LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], use_dora=True))
    add_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]), adapter_name="plain")
    before = snapshot(model)
    with pytest.raises(ValueError, match="DoRA"):
        add_weighted_adapter(model, ["default", "plain"], [0.5, 0.5], "mix", combination_type="cat")
    assert_unchanged(model, before)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()],
            {n: p.requires_grad for n, p in model.named_parameters()})


def assert_unchanged(model, before):
    state, types, flags = snapshot(model)
    assert types == before[1] and flags == before[2] and state.keys() == before[0].keys()
    for k, v in state.items():
        assert torch.equal(v, before[0][k]), k


@pytest.mark.parametrize("kwargs,match", [
    (dict(use_dora="yes"), r"use_dora must be True or False.*use_dora='yes'"),
    (dict(use_dora=1), r"use_dora=1"),
    (dict(init_lora_weights="pissa_niter_"), r"init_lora_weights must be one of .*'pissa_niter_<K>'.*'pissa_niter_'"),
    (dict(init_lora_weights="pissa_niter_-1"), r"init_lora_weights='pissa_niter_-1'"),
    (dict(init_lora_weights="olora"), r"init_lora_weights must be one of"),
    (dict(init_lora_weights="loftq"), r"init_lora_weights='loftq' needs loftq_config"),
    (dict(init_lora_weights="pissa", loftq_config=LoftQConfig()), r"loftq_config is only used with init_lora_w"),
    (dict(init_lora_weights="loftq", loftq_config=dict(loftq_bits=2)), r"loftq_bits must be one of \(4, 8\).*=2"),
    (dict(init_lora_weights="loftq", loftq_config=dict(bits=4)), r"unknown keys \['bits'\]"),
    (dict(init_lora_weights="loftq", loftq_config=dict(loftq_iter=0)), r"loftq_iter must be an integer >= 1.*=0"),
    (dict(init_lora_weights="loftq", loftq_config=peft.LoftQConfig()), r"must be lora_lab.lora.LoftQConfig.*peft"),
])
def test_variant_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


def test_loftq_config_normalized():
    a = LoraConfig(init_lora_weights="loftq", loftq_config={"loftq_iter": 3})
    assert a.loftq_config == LoftQConfig(loftq_bits=4, loftq_iter=3) and hash(a)
    assert LoraConfig(loftq_config={}).loftq_config is None  # PEFT writes {} when LoftQ is not used
    assert LoraConfig(init_lora_weights="pissa_niter_16").init_lora_weights == "pissa_niter_16"


def _bnb_model(weight=None, storage=torch.uint8):
    torch.manual_seed(0)
    w = torch.randn(48, 64) if weight is None else weight
    q = bnb.nn.Linear4bit(64, 48, bias=False, compute_dtype=torch.float32, quant_type="nf4", quant_storage=storage)
    q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", quant_storage=storage)
    return nn.Sequential(q.to("cpu"), nn.ReLU(), nn.Linear(48, 8))


@pytest.mark.parametrize("case,match", [
    ("loftq_on_4bit", r"init_lora_weights='loftq' needs a float base layer .*Linear4bit \(layer '0'\).*unquantized"),
    ("pissa_on_4bit", r"init_lora_weights='pissa' needs a float base layer"),
    ("r_too_big", r"needs r <= min\(out_features, in_features\) = 16 \(layer '2'\).*got r=17"),
    ("second_adapter", r"replaces the base weight, which adapters \['default'\] already use"),
])
def test_variant_add_lora_errors_leave_the_model_unchanged(case, match):
    if case.endswith("4bit"):
        model, config = _bnb_model(), LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=case.split("_")[0],
                                                 loftq_config=LoftQConfig() if case.startswith("loftq") else None)
    else:
        model = tiny_mlp()
        if case == "second_adapter":
            add_lora(model, LoraConfig(r=4, target_modules=["0", "2"]))
        config = LoraConfig(r=17 if case == "r_too_big" else 4, target_modules=["0", "2"], init_lora_weights="pissa")
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        add_lora(model, config, adapter_name="b" if case == "second_adapter" else "default")
    assert_unchanged(model, before)


def test_pissa_failing_midway_restores_the_base_weights(monkeypatch):
    from lora_lab.lora import variants
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return pissa_init(*args, **kwargs)

    monkeypatch.setattr(variants, "pissa_init", failing)
    model = tiny_mlp()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="out of memory"):
        add_lora(model, LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights="pissa"))
    assert len(calls) == 2
    assert_unchanged(model, before)


def test_bnb_4bit_with_float_quant_storage_is_not_a_nan_weight():
    """bitsandbytes packs two 4-bit codes a byte into ``quant_storage``; with float32 storage the bytes of an
    all-ones block (codes 15, 15: 0xFF) read as NaN. add_lora and LoRALinear used to refuse such a layer."""
    model = _bnb_model(torch.ones(48, 64), storage=torch.float32)
    assert not torch.isfinite(model[0].weight.data).all()  # the packed codes, read as floats
    x = torch.randn(3, 64)
    y = model(x)
    add_lora(model, LoraConfig(r=4, target_modules=["0"]))
    torch.testing.assert_close(model(x), y, **TOL)  # B = 0
    assert isinstance(model[0], LoRALinear)
    LoRALinear(_bnb_model(torch.ones(48, 64), storage=torch.float32)[0], r=2)
