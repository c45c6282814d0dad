"""Benchmark: what an unmerged LoRA adapter costs at inference, and that merging removes it.

Prints, for each layer size and rank, the forward time of the LoRA layer unmerged and merged
as ratios against the plain base layer measured in the same run (1.00 = no added latency).
Runs on CUDA (bf16) when available, else CPU (fp32).

    python benchmarks/lora_latency.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

from lora_lab.lora import LoRALinear


def bench(fn, repeats: int, sync) -> float:
    times = []
    with torch.no_grad():
        for i in range(repeats + 5):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= 5:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tokens = 4096 if cuda else 256
    print(f"device={device} dtype={dtype} tokens/batch={tokens} threads={torch.get_num_threads()}")
    print(f"{'d':>6} {'r':>4} {'base ms':>9} {'unmerged/base':>14} {'merged/base':>12}")
    for d in (768, 4096):
        for r in (8, 64):
            g = torch.Generator().manual_seed(0)
            base = nn.Linear(d, d).to(device, dtype)
            layer = LoRALinear(base, r=r, lora_alpha=2 * r, init_lora_weights=False, generator=g).to(device, dtype)
            x = torch.randn(tokens, d, device=device, dtype=dtype)
            repeats = 50 if cuda else 10
            t_base = bench(lambda: base(x), repeats, sync)
            t_unmerged = bench(lambda: layer(x), repeats, sync)
            layer.merge()
            t_merged = bench(lambda: layer(x), repeats, sync)
            layer.unmerge()
            print(f"{d:>6} {r:>4} {1e3 * t_base:>9.3f} {t_unmerged / t_base:>14.2f} {t_merged / t_base:>12.2f}")


if __name__ == "__main__":
    main()
