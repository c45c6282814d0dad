"""Generation, the task metric (exact match) and perplexity, for any causal LM.

Works the same on a plain transformers model, one with lora_lab adapters, a
bitsandbytes 4-bit model and a PEFT model: everything goes through ``model(...)`` or
``model.generate(...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lora_lab.corpus.task import Example, exact_match, leading_match


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompts(tokenizer, prompts: Sequence[str], *, add_bos: bool = True) -> list[list[int]]:
    """Token ids of each prompt, with the EOS token in front as a start-of-document
    marker (the shipped model saw every story after one, as GPT-2 saw documents)."""
    bos = [tokenizer.eos_token_id] if add_bos else []
    return [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 6,
             batch_size: int = 64, add_bos: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` (text after each prompt, special tokens dropped).

    Prompts are sorted by length and left-padded in batches of ``batch_size``;
    generation stops at EOS or after ``max_new_tokens`` (>= 1) new tokens.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    ids = encode_prompts(tokenizer, prompts, add_bos=add_bos)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    device, pad = _device_of(model), _pad_id(tokenizer)
    for start in range(0, len(order), batch_size):
        batch = [ids[i] for i in order[start:start + batch_size]]
        width = max(len(x) for x in batch)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=device)
        gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for j, i in enumerate(order[start:start + batch_size]):
            out[i] = tokenizer.decode(gen[j, width:], skip_special_tokens=True)
    model.train(was_training)
    return out


@dataclass(frozen=True)
class TaskScore:
    """Exact match and leading match (answer first, any format) on examples, plus the generations."""

    exact_match: float
    leading_match: float
    predictions: tuple[str, ...]

    @property
    def percent(self) -> float:
        """Exact match in percent, in [0, 100]."""
        return 100.0 * self.exact_match


def evaluate_task(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 6,
                  batch_size: int = 64) -> TaskScore:
    """Greedy answers to ``examples``, scored by exact match (see :func:`lora_lab.corpus.task.exact_match`)."""
    preds = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens,
                     batch_size=batch_size)
    answers = [e.answer for e in examples]
    return TaskScore(exact_match(preds, answers), leading_match(preds, answers), tuple(preds))


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, batch_size: int = 32) -> float:
    """exp(mean negative log-likelihood per predicted token) of ``texts``.

    Each text is scored after an EOS token (as in pretraining), including the EOS that
    ends it; padding does not count. Returns a number >= 1.
    """
    if not texts:
        raise ValueError("perplexity needs at least one text")
    was_training = model.training
    model.eval()
    device, pad = _device_of(model), _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        seqs = [[eos] + tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
                for t in texts[start:start + batch_size]]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = input_ids[:, 1:]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        keep = mask[:, 1:].bool()
        total_nll += nll[keep].sum().item()
        total_tokens += int(keep.sum())
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
