"""Chapter 05 (and later): loading the shipped GPT-2 (fp or 4-bit), the training loop,
evaluation, and QLoRA / LoRA / full fine-tuning as one recipe.

One line imports the chapter: ``from lora_lab.finetune import ...``.
"""
from lora_lab.finetune import (
    evaluate,  # noqa: F401
    exercises,  # noqa: F401
    models,  # noqa: F401
    plots,  # noqa: F401
    recipe,  # noqa: F401
    trainer,  # noqa: F401
)
from lora_lab.finetune.evaluate import TaskScore, encode_prompts, evaluate_task, generate, perplexity  # noqa: F401
from lora_lab.finetune.exercises import (  # noqa: F401
    check_exercise_bits_per_weight,
    check_exercise_first_step_over,
    check_exercise_merge_recipe,
    check_exercise_trainable_params,
    lora_params_all_linear,
)
from lora_lab.finetune.models import (  # noqa: F401
    BACKENDS,
    QUANTIZATIONS,
    SHIPPED_ALIASES,
    SHIPPED_MODEL,
    ModelLoadError,
    default_compute_dtype,
    default_device,
    dequantize_model,
    hub_reachable,
    keep_bnb_layout,
    load_model,
    load_tokenizer,
    model_bytes,
    quantized_layers,
    resolve_model_path,
)
from lora_lab.finetune.plots import plot_loss_curves  # noqa: F401
from lora_lab.finetune.recipe import MemoryReport, memory_report, prepare_model  # noqa: F401
from lora_lab.finetune.trainer import (  # noqa: F401
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    OPTIMIZERS,
    TrainConfig,
    TrainResult,
    batch_indices,
    collate,
    encode_examples,
    load_checkpoint,
    lr_at,
    make_optimizer,
    save_checkpoint,
    train,
)
from lora_lab.memory.plots import plot_memory_breakdown  # noqa: F401  (chapter 04's, re-exported)
