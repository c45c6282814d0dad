"""Chapter 05 (and later): loading the shipped GPT-2 (fp or 4-bit), the training loop,
evaluation, and QLoRA / LoRA / full fine-tuning as one recipe.

One line imports the chapter: ``from lora_lab.finetune import ...``.
"""
from lora_lab.finetune import models  # noqa: F401
from lora_lab.finetune.models import (  # noqa: F401
    SHIPPED_MODEL,
    SHIPPED_ALIASES,
    QUANTIZATIONS,
    BACKENDS,
    ModelLoadError,
    default_device,
    default_compute_dtype,
    resolve_model_path,
    hub_reachable,
    load_tokenizer,
    load_model,
    keep_bnb_layout,
    dequantize_model,
    quantized_layers,
    model_bytes,
)
from lora_lab.finetune import trainer  # noqa: F401
from lora_lab.finetune.trainer import (  # noqa: F401
    CHECKPOINT,
    OPTIMIZERS,
    TrainConfig,
    TrainResult,
    lr_at,
    encode_examples,
    collate,
    batch_indices,
    make_optimizer,
    CHECKPOINT_FORMAT,
    save_checkpoint,
    load_checkpoint,
    train,
)
from lora_lab.finetune import evaluate  # noqa: F401
from lora_lab.finetune.evaluate import (  # noqa: F401
    encode_prompts,
    generate,
    TaskScore,
    evaluate_task,
    perplexity,
)
from lora_lab.finetune import recipe  # noqa: F401
from lora_lab.finetune.recipe import (  # noqa: F401
    METHODS,
    prepare_model,
    MemoryReport,
    memory_report,
)
from lora_lab.finetune import plots  # noqa: F401
from lora_lab.finetune.plots import (  # noqa: F401
    plot_loss_curves,
    plot_memory_breakdown,
)
from lora_lab.finetune import exercises  # noqa: F401
from lora_lab.finetune.exercises import (  # noqa: F401
    lora_params_all_linear,
    check_exercise_trainable_params,
    check_exercise_bits_per_weight,
    check_exercise_merge_recipe,
    check_exercise_first_step_over,
)
