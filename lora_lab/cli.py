"""``python -m lora_lab qlora``: the whole QLoRA recipe, headless.

    python -m lora_lab qlora                           # shipped model, NF4 + DQ, r=8, 150 steps
    python -m lora_lab qlora --model gpt2 --steps 300  # the real GPT-2 (needs internet once)
    python -m lora_lab qlora --out runs/a --resume     # continue an interrupted run
    torchrun --nproc_per_node 2 -m lora_lab qlora      # DDP: 2 processes share each batch
    accelerate launch --config_file lora_lab/distributed/accelerate_cpu.yaml -m lora_lab qlora
    python -m lora_lab trainers                        # the recipe via SFTTrainer, Trainer, lora_lab (3 seeds)

Prints the task metric before and after, the trainable parameters, predicted and
measured training memory, and the wall time; saves the adapter in PEFT's format to
``OUT/adapter`` and every figure to ``OUT/metrics.json``. Ctrl-C stops after the
current step and writes a checkpoint; ``--resume`` continues from it.

Launched by torchrun or accelerate (``RANK``/``WORLD_SIZE`` set), every process trains its
share of each ``--batch-size`` batch under DDP (gloo on CPU, NCCL on GPUs); rank 0 alone
evaluates, prints and writes the adapter (into a temporary folder renamed when complete), and
no checkpoints are written. If one process fails, the launch fails and no adapter is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lora_lab._util import atomic_write_text

EXIT_INTERRUPTED = 130


def _targets(text: str):
    return "all-linear" if text == "all-linear" else tuple(t.strip() for t in text.split(",") if t.strip())


class _DeprecatedAlias(argparse.Action):
    """An option's old name: stores to the new one, with a note on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use --{self.dest.replace('_', '-')}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_lab", description="lora_lab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("qlora", help="fine-tune with (Q)LoRA on the story question task",
                       description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--model", default="data/lab-gpt2", help="data/lab-gpt2 (shipped), gpt2 (Hub) or a folder")
    q.add_argument("--recipe", default="qlora", choices=("qlora", "lora", "full"))
    q.add_argument("--method", dest="recipe", choices=("qlora", "lora", "full"), default=argparse.SUPPRESS,
                   action=_DeprecatedAlias, help=argparse.SUPPRESS)  # its name before 2026-12
    q.add_argument("--quantization", default="nf4", choices=("nf4", "fp4"))
    q.add_argument("--no-double-quant", dest="double_quant", action="store_false")
    q.add_argument("--backend", default="bitsandbytes", choices=("bitsandbytes", "lora_lab"))
    q.add_argument("--r", type=int, default=8)
    q.add_argument("--lora-alpha", type=float, default=16)
    q.add_argument("--lora-dropout", type=float, default=0.0)
    q.add_argument("--target-modules", default="all-linear", help="all-linear or a comma list, e.g. c_attn,c_proj")
    q.add_argument("--steps", type=int, default=150)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--lr", type=float, default=5e-3)
    q.add_argument("--warmup-steps", type=int, default=10)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--train-examples", type=int, default=4000)
    q.add_argument("--eval-examples", type=int, default=200)
    q.add_argument("--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: end only)")
    q.add_argument("--checkpoint-every", type=int, default=25)
    q.add_argument("--gradient-checkpointing", action="store_true")
    q.add_argument("--optimizer", default="adamw", choices=("adamw", "paged_adamw_32bit", "paged_adamw_8bit"))
    q.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    q.add_argument("--out", default="runs/qlora", help="folder for checkpoint, adapter and metrics.json")
    q.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    q.add_argument("--no-progress", dest="progress", action="store_false")
    s = sub.add_parser("sweep", help="run (or re-run) the experiments chapter's grids",
                       description="Runs the records a grid lacks in data/experiments/<grid>.jsonl "
                                   "(resumable), or re-runs one committed record.")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--grid", help="grid name (see --list)")
    what.add_argument("--rerun", metavar="ID", help="re-run the committed record ID; print it as one JSON line")
    what.add_argument("--list", action="store_true", help="list the grids and how many records each has")
    s.add_argument("--limit", type=int, default=None, help="run at most N new experiments")
    s.add_argument("--folder", default=None, help="results folder (default: data/experiments)")
    s.add_argument("--no-progress", dest="progress", action="store_false")
    t = sub.add_parser("trainers", help="the QLoRA recipe through TRL's SFTTrainer, transformers' Trainer and "
                                        "lora_lab's loop (chapter 08)",
                       description="Runs every (seed, trainer) the records file lacks (resumable; ~15 CPU-minutes "
                                   "for 3 seeds), then prints each trainer's exact match beside lora_lab's loop.")
    t.add_argument("--out", default=None, help="records file (default: data/trainers/trainers.jsonl)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's, 80)")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def run_qlora(args, out=print) -> int:
    """Run the recipe described by parsed ``args``; returns the process exit code."""
    import torch

    from lora_lab.corpus.task import make_split
    from lora_lab.distributed.ddp import train_ddp
    from lora_lab.distributed.launch import init_distributed, launched_world, save_adapter_atomic
    from lora_lab.finetune.evaluate import evaluate_task
    from lora_lab.finetune.models import load_tokenizer, model_bytes
    from lora_lab.finetune.recipe import memory_report, prepare_model
    from lora_lab.finetune.trainer import TrainConfig, encode_examples, train
    from lora_lab.lora.layer import LoraConfig, trainable_report

    t0 = time.time()
    rank, world_size = launched_world()  # (0, 1) unless torchrun / accelerate launch started us
    if world_size > 1:
        if args.resume:
            raise ValueError(f"--resume: checkpoints are single-process; resume without torchrun "
                             f"(this launch has {world_size} processes)")
        init_distributed()
        if args.device in (None, "cuda") and torch.cuda.is_available():
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"  # one GPU per process
        out = out if rank == 0 else (lambda *a, **k: None)
    lora_config = None if args.recipe == "full" else LoraConfig(
        r=args.r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=_targets(args.target_modules))
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               warmup_steps=args.warmup_steps, eval_every=args.eval_every,
                               checkpoint_every=args.checkpoint_every if world_size == 1 else 0, seed=args.seed,
                               gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer)
    for name in ("train_examples", "eval_examples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    tokenizer = load_tokenizer(args.model)
    model = prepare_model(args.model, args.recipe, lora_config=lora_config, quantization=args.quantization,
                          double_quant=args.double_quant, backend=args.backend, device=args.device,
                          seed=args.seed)
    device = next(model.parameters()).device
    quant = (f"{args.quantization.upper()}{' + double quant' if args.double_quant else ''} via {args.backend}"
             if args.recipe == "qlora" else "not quantized")
    out(f"model: {args.model} on {device.type}, {quant}; weights in memory (base + adapters) "
        f"{_mb(model_bytes(model))}")
    train_set = make_split("train", args.train_examples, seed=args.seed)
    eval_set = make_split("eval", args.eval_examples)

    def score(m) -> float:
        return evaluate_task(m, tokenizer, eval_set).exact_match

    before = score(model) if rank == 0 else 0.0  # B = 0 at the start: this is the base model's score
    out(f"exact match before fine-tuning: {100 * before:.1f}% on {len(eval_set)} held-out questions")
    out(trainable_report(model))
    seq_len = max(len(x) for x, _ in encode_examples(tokenizer, train_set[:256]))
    per_process = max(1, args.batch_size // world_size)
    mem = memory_report(model, args.recipe, batch_size=per_process, seq_len=seq_len,
                        lora_config=lora_config, double_quant=args.double_quant, seed=args.seed)
    each = " per process" if world_size > 1 else ""
    out(f"training memory (batch {per_process} x {seq_len} tokens{each}): predicted {_mb(mem.predicted_total)}, "
        f"measured {_mb(mem.measured_total)}")
    for key in mem.predicted:
        out(f"  {key:<18} predicted {_mb(mem.predicted[key]):>10}   measured {_mb(mem.measured[key]):>10}")
    out_dir = Path(args.out)
    t_train = time.time()
    eval_fn = (lambda m: {"exact_match": score(model)}) if args.eval_every and rank == 0 else None
    if world_size == 1:
        result = train(model, tokenizer, train_set, train_config, out_dir=out_dir, resume=args.resume,
                       progress=args.progress, eval_fn=eval_fn)
    else:
        out(f"DDP over {world_size} processes ({torch.distributed.get_backend()}): each trains on its share "
            f"of every batch of {args.batch_size}; checkpoints off")
        result, counter = train_ddp(model, tokenizer, train_set, train_config, rank=rank, world_size=world_size,
                                    progress=args.progress, eval_fn=eval_fn)
        out(f"all-reduced per step: {counter.per_step[-1]:,} bytes (the gradients of the trainable weights only)")
        if rank != 0:
            return 0
    train_s = time.time() - t_train
    if result.start_step:
        out(f"resumed from step {result.start_step} ({out_dir / 'checkpoint.pt'})")
    if result.interrupted:
        out(f"interrupted at step {result.step}/{args.steps}; checkpoint written to {out_dir / 'checkpoint.pt'}. "
            f"Rerun with --resume to continue.")
        return EXIT_INTERRUPTED
    after = score(model)
    out(f"exact match after {result.step} steps: {100 * after:.1f}% (before: {100 * before:.1f}%); "
        f"final training loss {sum(result.losses[-10:]) / len(result.losses[-10:]):.3f}")
    if lora_config is not None:
        path = save_adapter_atomic(model, out_dir / "adapter", lora_config, base_model_name_or_path=args.model)
        size = sum(f.stat().st_size for f in path.iterdir())
        out(f"adapter saved to {path} ({size / 1e3:.0f} kB, PEFT format)")
    wall = time.time() - t0
    out(f"wall time: {wall:.0f} s (training {train_s:.0f} s)")
    metrics = {"model": args.model, "recipe": args.recipe, "exact_match_before": before,
               "exact_match_after": after, "steps": result.step, "start_step": result.start_step,
               "losses": result.losses, "evals": result.evals, "trainable": trainable_report(model),
               "memory_predicted": mem.predicted, "memory_measured": mem.measured,
               "wall_seconds": wall, "train_seconds": train_s, "args": vars(args)}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return 0


def run_sweep_command(args, out=print) -> int:
    """``python -m lora_lab sweep``: --list, --grid NAME or --rerun ID."""
    from lora_lab.experiments import sweep

    if args.list:
        for name in sweep.GRIDS:
            configs = sweep.grid(name)
            done = {r["id"] for r in sweep.all_records(args.folder)}
            have = sum(c.id in done for c in configs)
            out(f"{name:8s} {len(configs):4d} experiments, {have:4d} recorded")
        return 0
    if args.rerun:
        out(json.dumps(sweep.rerun(args.rerun, args.folder), sort_keys=True))
        return 0
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    new = sweep.run_sweep(args.grid, folder=args.folder, progress=args.progress, limit=args.limit)
    out(f"{len(new)} new record(s) appended to {sweep.results_path(args.grid, args.folder)}")
    return 0


def run_trainers_command(args, out=print) -> int:
    """``python -m lora_lab trainers``: write the runs the records file lacks, then the verdict."""
    from lora_lab.distributed import trainers

    steps = trainers.RECIPE.steps if args.steps is None else args.steps
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    records = trainers.write_trainers(args.out or trainers.TRAINERS_FILE, seeds=tuple(args.seeds), steps=steps,
                                      progress=args.progress, log=out)
    out(trainers.compare_trainers([r for r in records if r["config"]["steps"] == steps]).verdict())
    return 0


COMMANDS = {"qlora": run_qlora, "sweep": run_sweep_command, "trainers": run_trainers_command}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lora_lab.finetune.models import ModelLoadError

    try:
        return COMMANDS[args.command](args)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        parser.error(str(err))  # exits with status 2 and the usage line
    except Exception as err:
        if "WORLD_SIZE" not in os.environ:
            raise
        # one process of a torchrun launch: say which, so the launcher's summary has a reason
        print(f"error: process RANK={os.environ.get('RANK')} of WORLD_SIZE={os.environ['WORLD_SIZE']} failed "
              f"({type(err).__name__}: {err}); the launch stops and no adapter is written", file=sys.stderr)
        return 1
    finally:
        if "WORLD_SIZE" in os.environ and args.command == "qlora":
            from lora_lab.distributed.launch import close_distributed

            close_distributed()
    return 2
