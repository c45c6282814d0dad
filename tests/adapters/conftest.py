"""Shared fixtures of chapter 07's tests: a tiny GPT-2 holding two random adapters."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lora_lab.lora import LoraConfig, add_lora


def tiny_pair(r=(4, 4), seed=0):
    """A tiny GPT-2 with adapters "qa" (active) and "cipher" on every linear, B random (ΔW ≠ 0)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                       bos_token_id=0, eos_token_id=0)).eval()
    g = torch.Generator().manual_seed(seed)
    for name, rank in zip(("qa", "cipher"), r):
        add_lora(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                   init_lora_weights=False), adapter_name=name, generator=g)
    return model


@pytest.fixture
def pair():
    return tiny_pair()


@pytest.fixture
def make_pair():
    return tiny_pair
