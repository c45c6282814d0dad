"""lora_lab.quant.linear4bit: the frozen 4-bit layer, against fp, against bitsandbytes, and under LoRA."""

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from lora_lab.lora.layer import LoraConfig, LoRALinear, add_lora, trainable_parameters
from lora_lab.quant.blockwise import dequantize_4bit, quantize_4bit
from lora_lab.quant.linear4bit import FrozenLinear4bit, quantize_model
from tests.helpers import assert_same, snapshot, tiny_gpt2


def _linear(d_in=96, d_out=160, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02, generator=g)
        if bias:
            layer.bias.normal_(0, 0.02, generator=g)
    return layer


def _x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_holds_codes_not_weights():
    lin = _linear()
    q = FrozenLinear4bit.from_linear(lin)
    assert not hasattr(q, "weight")
    float_tensors = [t for t in list(q.parameters()) + list(q.buffers())
                     if t.dtype.is_floating_point and t.numel() >= lin.weight.numel() // 8]
    assert float_tensors == []                           # no fp copy of W anywhere
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == lin.weight.numel() // 2
    assert all(not p.requires_grad for p in q.parameters())
    assert q.weight_nbytes == lin.weight.numel() // 2 + 4 * lin.weight.numel() // 64
    assert {"packed", "absmax", "code"} <= set(q.state_dict())
    assert (q.in_features, q.out_features) == (96, 160)


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("codebook", ["nf4", "fp4", "int4"])
def test_forward_is_linear_with_dequantized_weight(codebook, double_quant):
    lin = _linear()
    q = FrozenLinear4bit.from_linear(lin, codebook=codebook, double_quant=double_quant)
    w = dequantize_4bit(quantize_4bit(lin.weight.detach(), codebook, 64, double_quant))
    assert torch.equal(q.dequantize_weight(), w)
    x = _x(3, 5, 96)
    assert torch.allclose(q(x), nn.functional.linear(x, w, lin.bias), atol=1e-6)
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.15                                    # 4-bit is close to the fp layer, not equal


def test_from_conv1d_matches_linear_orientation():
    conv = Conv1D(160, 96)                                   # GPT-2 style: weight (in, out)
    with torch.no_grad():
        conv.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
    q = FrozenLinear4bit.from_linear(conv)
    assert (q.in_features, q.out_features) == (96, 160)
    ref = FrozenLinear4bit(conv.weight.detach().T.contiguous(), conv.bias)
    x = _x(4, 96)
    assert torch.equal(q(x), ref(x))
    assert (q(x) - conv(x)).norm() / conv(x).norm() < 0.15


@pytest.mark.parametrize("double_quant", [False, True])
def test_matches_bitsandbytes_linear4bit(double_quant):
    lin = _linear(256, 384, seed=3)
    ours = FrozenLinear4bit.from_linear(lin, double_quant=double_quant)
    theirs = bnb.nn.Linear4bit(256, 384, quant_type="nf4", compute_dtype=torch.float32,
                               compress_statistics=double_quant)
    theirs.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False, quant_type="nf4",
                                      compress_statistics=double_quant).to("cpu")
    theirs.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
    assert torch.equal(ours.packed, theirs.weight.data.reshape(-1))
    x = _x(6, 256, seed=4)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)     # fp32 path: same W, same matmul
    theirs.eval()                                            # inference may use a bf16 CPU kernel
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=5e-2, rtol=5e-2)


def test_gradients_reach_input_not_weight():
    q = FrozenLinear4bit.from_linear(_linear())
    x = _x(2, 96).requires_grad_()
    q(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in q.parameters())


def test_compute_dtype_and_input_dtype():
    q = FrozenLinear4bit.from_linear(_linear(), compute_dtype=torch.bfloat16)
    assert q.dequantize_weight().dtype == torch.bfloat16
    x = _x(2, 96)
    assert q(x).dtype == torch.float32
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_requantize_and_errors():
    lin = _linear()
    q = FrozenLinear4bit.from_linear(lin)
    before = q.packed.clone()
    q.requantize_(lin.weight.detach() * 2)
    assert torch.equal(q.packed, before)                      # absmax scaling: codes unchanged
    assert torch.allclose(q.dequantize_weight(), 2 * dequantize_4bit(quantize_4bit(lin.weight.detach())))
    with pytest.raises(ValueError, match="shape"):
        q.requantize_(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="2-D"):
        FrozenLinear4bit(torch.zeros(3))
    with pytest.raises(ValueError, match="nn.Linear"):
        FrozenLinear4bit.from_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="codebook"):
        FrozenLinear4bit.from_linear(lin, codebook="nf5")


def test_lora_on_top_trains_only_adapters():
    q = FrozenLinear4bit.from_linear(_linear())
    layer = LoRALinear(q, r=4, lora_alpha=8, generator=torch.Generator().manual_seed(0))
    x = _x(3, 96)
    assert torch.allclose(layer(x), q(x))                     # B = 0: the adapter starts as a no-op
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    layer(x).pow(2).sum().backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0 and layer.lora_B["default"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in q.parameters()) and all(b.grad is None for b in q.buffers())
    y = layer(x).detach()
    merged_w = dequantize_4bit(quantize_4bit(q.dequantize_weight() + layer.delta_weight().detach()))
    layer.merge()                                             # W + ΔW is re-quantized to 4 bits
    assert torch.equal(q.dequantize_weight(), merged_w)
    assert (layer(x) - y).norm() / y.norm() < 0.15            # close, not equal: re-quantization error
    layer.unmerge()
    assert (layer(x) - y).norm() / y.norm() < 0.15


def test_quantize_gpt2_then_add_lora():
    torch.manual_seed(0)  # transformers' init uses the global RNG
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                       bos_token_id=0, eos_token_id=0)).eval()  # eval: no dropout
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    ref = model(ids).logits
    quantize_model(model, double_quant=True)
    n4 = [m for m in model.modules() if isinstance(m, FrozenLinear4bit)]
    assert len(n4) == 2 * 4 and isinstance(model.lm_head, nn.Linear)  # c_attn, c_proj, c_fc, mlp.c_proj
    out = model(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.1
    add_lora(model, LoraConfig(r=4, target_modules=["c_attn"]), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(ids).logits, out, atol=1e-5)
    trainable, _ = trainable_parameters(model)
    assert trainable == 2 * (64 * 4 + 4 * 192)
    model(ids).logits.sum().backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)


def test_quantize_model_targets():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    quantize_model(model, target_modules=["2"])
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], FrozenLinear4bit)


def test_quantize_model_bitsandbytes_backend_is_transformers_layout():
    """backend="bitsandbytes" builds bnb Linear4bit layers whose packed bytes and outputs are
    those of bnb quantizing the same weights, and refuses what bnb has no codebook for."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=64, n_positions=16)).eval()
    c_fc = model.transformer.h[0].mlp.c_fc
    ref = bnb.functional.quantize_4bit(c_fc.weight.detach().T.contiguous(), blocksize=64, quant_type="nf4")[0]
    with pytest.raises(ValueError, match="codebook must be 'nf4' or 'fp4' with backend='bitsandbytes'"):
        quantize_model(model, backend="bitsandbytes", codebook="int4")
    with pytest.raises(ValueError, match="backend must be one of"):
        quantize_model(model, backend="gptq")
    assert type(model.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"  # unchanged by the refusals
    quantize_model(model, backend="bitsandbytes", codebook="nf4", blocksize=64)
    q = model.transformer.h[0].mlp.c_fc
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_state.quant_type == "nf4"
    assert torch.equal(q.weight.data, ref)
    assert type(model.lm_head).__name__ == "Linear"  # the output head stays, as transformers does


# -- bad targets change nothing (issue 11, item 8) --------------------------------------------------







def test_quantize_model_bad_targets_change_nothing():
    model = tiny_gpt2()
    snap = snapshot(model)
    for targets, match in [(["q_proj"], "'q_proj' matches no module"), ("c_attn", "regex"),
                           (["wte"], "Embedding, which quantize_model cannot quantize"), (None, "target_modules")]:
        with pytest.raises(ValueError, match=match):
            quantize_model(model, targets)
        assert_same(model, snap)
    with pytest.raises(ValueError, match="unknown options"):
        quantize_model(model, blocksz=64)
    with pytest.raises(ValueError, match="blocksize"):
        quantize_model(model, blocksize=100)
    assert_same(model, snap)
