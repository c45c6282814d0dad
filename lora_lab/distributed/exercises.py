"""Checkers for the exercises of chapter 08 (scaling out: DDP, FSDP, launchers)."""

from __future__ import annotations

from lora_lab._exercises import ExerciseResult, check_choice, check_number
from lora_lab.distributed.ddp import allreduce_bytes_per_step
from lora_lab.distributed.fsdp import fsdp_memory

# Exercise 1: bytes DDP all-reduces per step, LoRA r=16 on every block linear of GPT-2 small, fp32 gradients.
EX1_SETUP = dict(model="gpt2", recipe="lora", r=16, target_modules="all-linear", grad_dtype="fp32")
# Exercise 2: which process of a torchrun launch writes the adapter.
EX2_CHOICES = ("rank 0", "every rank", "the last rank to finish", "the launcher (torchrun)")
# Exercise 3: examples per process per step, `torchrun --nproc_per_node 4 -m lora_lab qlora --batch-size 16`.
EX3_SETUP = dict(nproc_per_node=4, batch_size=16)
# Exercise 4: GB (10⁹ bytes) of Llama-2-70B's 4-bit base each GPU keeps under FSDP over 4 GPUs.
EX4_SETUP = dict(model="llama-2-70b", recipe="qlora", world_size=4)


def check_exercise_allreduce_bytes(answer) -> ExerciseResult:
    """Ex. 1: bytes DDP all-reduces per optimizer step for LoRA r=16 all-linear on GPT-2 small (fp32 grads)."""
    setup = dict(EX1_SETUP)
    expected = allreduce_bytes_per_step(setup.pop("model"), setup.pop("recipe"), **setup)
    hint = ("DDP all-reduces one gradient per trainable weight: r·(in + out) per adapted layer, 4 block "
            "linears per block (c_attn 768→2304, attn.c_proj 768→768, c_fc 768→3072, mlp.c_proj 3072→768), "
            "12 blocks, 4 bytes per fp32 gradient. allreduce_bytes_per_step computes it.")
    return check_number(
        answer, expected, rel_tol=1e-3, hint=hint,
        mistakes=((expected / 4, "That is the number of gradients, not bytes."),
                  (expected / 2, "That is r = 8 (the exercise asks for r = 16), or 2-byte gradients (the "
                                 "adapters train, and all-reduce, in fp32)."),
                  (allreduce_bytes_per_step("gpt2", "full"), "That is full fine-tuning: every weight's gradient.")),
        explain=f"{expected:,} bytes ({expected / 1e6:.2f} MB) per step, twice r = 8's: the frozen base's "
                "gradients are never computed, so never sent.")


def check_exercise_writer_rank(answer) -> ExerciseResult:
    """Ex. 2: which process of a ``torchrun`` launch writes the adapter (and evaluates, and prints)."""
    hint = ("After every step DDP leaves identical adapters in every process; writing them N times into one "
            "folder would race. Which process does the CLI let speak?")
    return check_choice(
        answer, "rank 0", allowed=EX2_CHOICES, hint=hint,
        explain="rank 0 alone evaluates, prints and writes the adapter, into a temporary folder renamed when "
                "complete: a crash leaves no partial adapter.")


def check_exercise_per_process_batch(answer) -> ExerciseResult:
    """Ex. 3: examples each process takes per step under ``torchrun --nproc_per_node 4 ... --batch-size 16``."""
    n, batch = EX3_SETUP["nproc_per_node"], EX3_SETUP["batch_size"]
    hint = ("In lora_lab's CLI --batch-size is the global batch, the one a single process would take; "
            "it is split across the processes (transformers' per_device_train_batch_size is the other way).")
    return check_number(
        answer, batch // n, rel_tol=0.0, abs_tol=1e-9, hint=hint,
        mistakes=((batch, "That is the global batch; each process takes a share of it."),
                  (batch * n, "That is per_device_train_batch_size's rule (global = per device × processes); "
                              "lora_lab's --batch-size is already global.")),
        explain=f"{batch // n}: each of {n} processes takes its contiguous share of every global batch of {batch}, "
                "so the gradient (and the adapter) is the one-process run's.")


def check_exercise_fsdp_base_gb(answer) -> ExerciseResult:
    """Ex. 4: GB (10⁹ bytes) of Llama-2-70B's NF4 base that each GPU keeps under FSDP over 4 GPUs."""
    setup = dict(EX4_SETUP)
    per_gpu = fsdp_memory(setup.pop("model"), setup.pop("recipe"), **setup)["components"]
    expected = per_gpu["quantized base"] / 1e9
    whole = expected * EX4_SETUP["world_size"]
    hint = ("Llama-2-70B's block linears in NF4 + double quant are ~4.127 bits per weight; FSDP keeps 1/N of "
            "every parameter per GPU. fsdp_memory(...)['components'] has it.")
    return check_number(
        answer, expected, rel_tol=0.02, hint=hint,
        mistakes=((whole, "That is the whole base: DDP would keep it all on every GPU, FSDP shards it."),
                  (whole / 2, "That is 2 GPUs' share; the exercise has 4.")),
        explain=f"{expected:.1f} GB per GPU: {whole:.1f} GB of NF4 weights in 4 shards. The blocks being computed "
                "are gathered whole for a moment, and activations are not sharded.")
