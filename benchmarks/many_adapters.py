"""Benchmark: serving N adapters from one base in one mixed batch (chapter 07).

For one d×d layer holding N named adapters (r = 8) and a batch whose rows are spread evenly
over the N adapters, prints the forward time of
  - the base layer alone (the reference, 1.00),
  - the mixed batch (``mixed_batch``: one pass, A and B run once per adapter on its rows),
  - the naive loop (``set_adapter`` to each adapter and run only its rows, N passes),
as ratios against the base measured in the same run, beside the FLOP ratio of the unmerged
update (1 + r(d_in + d_out)/(d_in·d_out), the same for both: every row goes through one adapter).
The mixed batch must equal the naive loop (checked, 1e-5). Each time is the median of
torch.utils.benchmark.Timer.blocked_autorange (lora_lab.lora.scaling.time_forward), CPU fp32,
one thread (CUDA bf16 when available).

    python benchmarks/many_adapters.py
"""

from __future__ import annotations

import torch
from torch import nn

from lora_lab.lora import LoraConfig, add_lora, mixed_batch, set_adapter
from lora_lab.lora.scaling import merge_flop_ratio, time_forward


class _Loop(nn.Module):
    """The naive way to serve a mixed batch: one pass per adapter over its own rows."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.model[0].out_features, device=x.device, dtype=x.dtype)
        for i, name in enumerate(self.names):
            set_adapter(self.model, name)
            rows = slice(i * x.shape[0] // len(self.names), (i + 1) * x.shape[0] // len(self.names))
            out[rows] = self.model(x[rows])
        return out


class _Mixed(nn.Module):
    def __init__(self, model: nn.Module, row_names: list[str]):
        super().__init__()
        self.model, self.row_names = model, row_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with mixed_batch(self.model, self.row_names):
            return self.model(x)


def main() -> None:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    rows, r, threads = (256, 8, 1)
    print(f"device={device} dtype={dtype} rows/batch={rows} r={r} threads={threads} "
          f"(medians of Timer.blocked_autorange)")
    print(f"{'d':>6} {'N':>4} {'base ms':>9} {'mixed/base':>11} {'loop/base':>10} {'loop/mixed':>11} "
          f"{'FLOPs/base':>11}")
    for d in (768, 2048):
        for n in (1, 4, 16):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(d, d))
            names = [f"task{i}" for i in range(n)]
            for name in names:
                add_lora(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"], init_lora_weights=False),
                         adapter_name=name)
            model = model.to(device, dtype).eval()
            x = torch.randn(rows, d, device=device, dtype=dtype)
            row_names = [names[i * n // rows] for i in range(rows)]
            mixed, loop = _Mixed(model, row_names), _Loop(model, names)
            with torch.no_grad():
                err = (mixed(x) - loop(x)).abs().max().item()
            assert err < (1e-2 if cuda else 1e-5), err
            base = model[0].base_layer
            t_base = time_forward(base, x, num_threads=threads)
            t_mixed = time_forward(mixed, x, num_threads=threads)
            t_loop = time_forward(loop, x, num_threads=threads)
            print(f"{d:>6} {n:>4} {1e3 * t_base:>9.3f} {t_mixed / t_base:>11.2f} {t_loop / t_base:>10.2f} "
                  f"{t_loop / t_mixed:>11.2f} {merge_flop_ratio(d, d, r):>11.3f}")


if __name__ == "__main__":
    main()
