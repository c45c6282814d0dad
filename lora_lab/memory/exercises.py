"""Checkers for the exercises of chapter 04 (what sits in memory during fine-tuning)."""

from __future__ import annotations

import warnings

from lora_lab._exercises import ExerciseResult, check_choice, check_number
from lora_lab.memory.predict import COMPONENTS, bytes_per_trainable_param, training_memory

# Exercise 1: training state (weights + grads + AdamW) of an r=16 adapter on a 4096×4096
# matrix, fp32 adapters, no master copy.
EX1_D, EX1_R = 4096, 16
# Exercise 2: GB of Llama-2-13B's frozen base in NF4 with double quantization.
EX2_MODEL = "llama-2-13b"
# Exercise 3: numel() of a bnb Linear4bit weight for a 4096×4096 layer.
EX3_D = 4096
# Exercise 4: the largest component of QLoRA on Llama-2-7B, batch 8 × 2048, no checkpointing.
EX4_SETUP = dict(model="llama-2-7b", recipe="qlora", batch_size=8, seq_len=2048,
                 gradient_checkpointing=False)


def check_exercise_adapter_bytes(answer) -> ExerciseResult:
    """Ex. 1: bytes of weights + gradients + AdamW state for LoRA r=16 on one 4096×4096 matrix."""
    params = EX1_R * (EX1_D + EX1_D)
    expected = params * bytes_per_trainable_param("fp32", "adamw", master_weights=False)
    hint = ("Count A and B: r·(in + out) numbers. Each fp32 adapter weight needs 4 bytes, its "
            "gradient 4, and AdamW two 4-byte moments.")
    return check_number(
        answer, expected, rel_tol=0.01, hint=hint,
        explain=f"{params:,} parameters × 16 bytes = {expected:,} bytes (about {expected / 1e6:.1f} MB).")


def check_exercise_nf4_base(answer) -> ExerciseResult:
    """Ex. 2: GB (10⁹ bytes) of Llama-2-13B's base in NF4 + double quant (16-bit leftovers included)."""
    b = training_memory(EX2_MODEL, "qlora")
    expected = (b.components["quantized base"] + b.components["unquantized base"]) / 1e9
    hint = ("Linear weights: n·4.127/8 bytes (NF4 codes + double-quantized absmax); embeddings, "
            "norms and the output head stay 16-bit (2 bytes each). Use shapes.model_shape('llama-2-13b').")
    return check_number(
        answer, expected, rel_tol=0.02, hint=hint,
        explain=f"{expected:.2f} GB: the quantized linears plus about "
                f"{b.components['unquantized base'] / 1e9:.2f} GB left in 16-bit.")


def check_exercise_packed_numel(answer) -> ExerciseResult:
    """Ex. 3: what ``numel()`` reports for a bitsandbytes 4-bit weight of a 4096×4096 layer."""
    expected = EX3_D * EX3_D // 2
    hint = ("bitsandbytes stores two 4-bit codes in each uint8 element of a (n/2, 1) tensor, and "
            "numel() counts those bytes, not the weights.")
    return check_number(
        answer, expected, rel_tol=0.0, abs_tol=0.5, hint=hint,
        explain=f"{expected:,}: half the {EX3_D * EX3_D:,} weights, which is why 4-bit models "
                "seem to have half their parameters.")


def check_exercise_largest_component(answer) -> ExerciseResult:
    """Ex. 4: the largest component of QLoRA on Llama-2-7B at batch 8 × 2048, no checkpointing."""
    setup = dict(EX4_SETUP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = training_memory(setup.pop("model"), setup.pop("recipe"), **setup)
    expected = max(b.components, key=b.components.get)
    hint = ("Compare the frozen 4-bit base (~3.9 GB) with what grows with batch × sequence: "
            "tokens × layers × (tens of bytes × width). Try training_memory(...).components.")
    return check_choice(
        answer, expected, allowed=COMPONENTS, hint=hint,
        explain=f"{expected}: {b.components[expected] / 1e9:.0f} GB of the {b.gb():.0f} GB total. "
                "Gradient checkpointing is what brings it down.")
