"""Benchmark: what an unmerged LoRA adapter costs at inference, and that merging removes it.

Prints, for each layer size and rank, the forward time of the LoRA layer unmerged and merged
as ratios against the plain base layer measured in the same run (1.00 = no added latency),
next to the FLOP ratio of the unmerged layer (1 + r(d_in + d_out)/(d_in·d_out)). Each time is
the median of torch.utils.benchmark.Timer.blocked_autorange (lora_lab.lora.scaling.time_forward).
Runs on CUDA (bf16) when available, else CPU (fp32, one thread: see time_forward).

    python benchmarks/lora_latency.py
"""

from __future__ import annotations

import torch
from torch import nn

from lora_lab.lora.layer import LoRALinear
from lora_lab.lora.scaling import merge_flop_ratio, time_forward


def main() -> None:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tokens = 4096 if cuda else 256
    threads = 1
    print(f"device={device} dtype={dtype} tokens/batch={tokens} threads={threads} "
          f"(medians of Timer.blocked_autorange)")
    print(f"{'d':>6} {'r':>4} {'base ms':>9} {'unmerged/base':>14} {'merged/base':>12} {'FLOPs unmerged/base':>20}")
    for d in (768, 4096):
        for r in (8, 64):
            g = torch.Generator().manual_seed(0)
            base = nn.Linear(d, d).to(device, dtype)
            layer = LoRALinear(base, r=r, lora_alpha=2 * r, init_lora_weights=False, generator=g).to(device, dtype)
            x = torch.randn(tokens, d, device=device, dtype=dtype)
            t_base = time_forward(base, x, num_threads=threads)
            t_unmerged = time_forward(layer, x, num_threads=threads)
            layer.merge()
            t_merged = time_forward(layer, x, num_threads=threads)
            layer.unmerge()
            print(f"{d:>6} {r:>4} {1e3 * t_base:>9.3f} {t_unmerged / t_base:>14.2f} {t_merged / t_base:>12.2f} "
                  f"{merge_flop_ratio(d, d, r):>20.3f}")


if __name__ == "__main__":
    main()
