"""Time lora_lab's 4-bit quantize/dequantize against bitsandbytes' on one 4096×4096 fp32 tensor.

Run:  .venv/bin/python benchmarks/quant.py [--repeats 15] [--codebook nf4] [--double-quant]

Both sides run the same number of times, interleaved (so background load hits both
alike); the median time of each side is kept and the ratio ours/bitsandbytes is printed
(< 1 means we are faster), with the best times for reference. Outputs are checked byte-identical before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import bitsandbytes.functional as bnbF
import torch

from lora_lab.quant.blockwise import dequantize_4bit, quantize_4bit


def _times(fns: dict, repeats: int) -> dict:
    for fn in fns.values():                 # warm-up (caches, lazy tables, torch.compile in bnb)
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--codebook", default="nf4", choices=["nf4", "fp4"])
    parser.add_argument("--double-quant", action="store_true")
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()

    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0)) * 0.02
    kw = dict(blocksize=64, quant_type=args.codebook, compress_statistics=args.double_quant)
    q = quantize_4bit(x, args.codebook, 64, args.double_quant)
    packed, state = bnbF.quantize_4bit(x, **kw)
    assert torch.equal(q.packed, packed.reshape(-1)) and torch.equal(q.absmax, state.absmax)
    assert torch.equal(dequantize_4bit(q), bnbF.dequantize_4bit(packed, state))

    t = _times({
        "quantize/ours": lambda: quantize_4bit(x, args.codebook, 64, args.double_quant),
        "quantize/bnb": lambda: bnbF.quantize_4bit(x, **kw),
        "dequantize/ours": lambda: dequantize_4bit(q),
        "dequantize/bnb": lambda: bnbF.dequantize_4bit(packed, state),
    }, args.repeats)
    print(f"{args.size}x{args.size} fp32, {args.codebook}, blocksize 64, double_quant={args.double_quant}, "
          f"torch threads={torch.get_num_threads()}, {args.repeats} interleaved runs")
    for op in ("quantize", "dequantize"):
        ours, bnb = statistics.median(t[f"{op}/ours"]), statistics.median(t[f"{op}/bnb"])
        print(f"{op:>10}: median ours {ours * 1e3:7.1f} ms, bitsandbytes {bnb * 1e3:7.1f} ms -> "
              f"ratio ours/bnb = {ours / bnb:.2f}x   (best: {min(t[f'{op}/ours']) * 1e3:.1f} vs "
              f"{min(t[f'{op}/bnb']) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
