"""The CUDA path, checked and timed: QLoRA on the shipped GPT-2 with bf16 compute and
bitsandbytes' paged AdamW, against 16-bit LoRA trained the same way, plus the memory
chapter's prediction against torch.cuda.max_memory_allocated.

Prints ratios against references measured in the same run. Needs a CUDA GPU.

    python benchmarks/cuda_path.py [--steps 150]
"""

from __future__ import annotations

import argparse
import time

import torch


def memory_check() -> None:
    from transformers import GPT2Config

    from lora_lab.memory.measure import compare
    print("== memory: predicted / measured on CUDA (GPT-2 small shape, random weights, 1 x 128) ==")
    for recipe in ("lora", "qlora"):
        predicted, measured = compare(GPT2Config(), recipe, r=8, batch_size=1, seq_len=128, device="cuda")
        comps = predicted.components
        print(f"{recipe}: predicted components (MB): " +
              ", ".join(f"{k} {v / 1e6:.2f}" for k, v in comps.items()))
        print(f"{recipe}: predicted/measured: " + ", ".join(
            f"{k} {comps[k] / v:.3f}" for k, v in measured.components.items() if v and k in comps))
        total = sum(comps.values())
        if measured.cuda_max_allocated:
            print(f"{recipe}: predicted total {total / 1e6:.1f} MB, cuda max allocated "
                  f"{measured.cuda_max_allocated / 1e6:.1f} MB, ratio {total / measured.cuda_max_allocated:.3f}")


def train_check(steps: int) -> None:
    from lora_lab.corpus.task import make_split
    from lora_lab.finetune.evaluate import evaluate_task
    from lora_lab.finetune.models import load_model, load_tokenizer
    from lora_lab.finetune.trainer import TrainConfig, make_optimizer, train
    from lora_lab.lora.layer import LoraConfig, add_lora, trainable_parameters

    tok = load_tokenizer()
    held_out, train_set = make_split("eval", 200), make_split("train", 4000)
    rows = []
    for name, quant, optimizer in (("QLoRA nf4+dq, bf16, paged AdamW 32-bit", "nf4", "paged_adamw_32bit"),
                                   ("QLoRA nf4+dq, bf16, torch AdamW", "nf4", "adamw"),
                                   ("LoRA, bf16 base, torch AdamW", None, "adamw")):
        torch.cuda.reset_peak_memory_stats()
        model = load_model(quantization=quant, device="cuda", compute_dtype=torch.bfloat16)
        add_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
                 generator=torch.Generator().manual_seed(0))
        before = evaluate_task(model, tok, held_out).exact_match
        cfg = TrainConfig(steps=steps, batch_size=16, lr=5e-3, optimizer=optimizer, seed=0)
        t0 = time.perf_counter()
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        train(model, tok, train_set, cfg, progress=False, optimizer=opt)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        after = evaluate_task(model, tok, held_out).exact_match
        peak = torch.cuda.max_memory_allocated()
        paged = None
        if optimizer.startswith("paged"):
            states = [t for st in opt.state.values() for t in st.values()
                      if isinstance(t, torch.Tensor) and t.numel() > 1]
            paged = f"{sum(getattr(t, 'is_paged', False) for t in states)}/{len(states)} state tensors paged"
        rows.append((name, before, after, seconds, peak, trainable_parameters(model)[0], paged))
        del model
        torch.cuda.empty_cache()
    ref_s, ref_peak = rows[-1][3], rows[-1][4]
    print(f"== training on CUDA ({torch.cuda.get_device_name(0)}), {steps} steps, batch 16 ==")
    for name, before, after, seconds, peak, n, paged in rows:
        print(f"{name:42s} EM {100 * before:5.1f}% -> {100 * after:5.1f}%  time {seconds:6.1f} s "
              f"({seconds / ref_s:.2f}x LoRA)  peak {peak / 1e6:7.1f} MB ({peak / ref_peak:.2f}x LoRA)  "
              f"trainable {n:,d}" + (f"  paged: {paged}" if paged is not None else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/cuda_path.py needs a CUDA GPU")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    for section in (memory_check, lambda: train_check(args.steps)):
        try:
            section()
        except Exception as e:  # report and go on: one broken section should not hide the other
            import traceback
            traceback.print_exc()
            print(f"section failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
