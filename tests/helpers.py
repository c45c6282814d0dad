"""Helpers several test files share: a tiny seeded GPT-2 and a check that a refused call left a
model exactly as it was (tensors, NaNs included, requires_grad flags and module types)."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


def snapshot(model):
    """Everything a refused call must leave as it was: tensors, requires_grad flags, module types."""
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
