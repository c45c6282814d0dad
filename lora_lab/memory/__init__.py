"""Chapter 04: what sits in memory during training, predicted (shapes, activations, predict)
and measured (measure).

One line imports the chapter: ``from lora_lab.memory import ...``.
"""
from lora_lab.memory import (
    activations,  # noqa: F401
    exercises,  # noqa: F401
    measure,  # noqa: F401
    plots,  # noqa: F401
    predict,  # noqa: F401
    shapes,  # noqa: F401
    widgets,  # noqa: F401
)
from lora_lab.memory.activations import ATTN_IMPLEMENTATIONS, DEVICES, activation_memory  # noqa: F401
from lora_lab.memory.exercises import (  # noqa: F401
    EX2_MODEL,
    EX3_D,
    EX4_SETUP,
    check_exercise_adapter_bytes,
    check_exercise_largest_component,
    check_exercise_nf4_base,
    check_exercise_packed_numel,
)
from lora_lab.memory.measure import (  # noqa: F401
    LORA_BASE_DTYPES,
    METHOD,
    Measured,
    apply_recipe,
    build_model,
    compare,
    is_quantized,
    measure_training_step,
    param_bytes_by_dtype,
    predict_and_measure,
    quant_tensors,
    quantize_linears_4bit,
    saved_tensor_meter,
    storage_bytes,
)
from lora_lab.memory.plots import COLORS, plot_memory_breakdown, plot_predicted_vs_measured  # noqa: F401
from lora_lab.memory.predict import (  # noqa: F401
    BASE_DTYPES,
    COMPONENTS,
    DTYPE_BYTES,
    OPTIMIZERS,
    RECIPES,
    MemoryBreakdown,
    bytes_per_trainable_param,
    judge_claim,
    optimizer_state_bytes,
    quantized_linear_bytes,
    training_memory,
)
from lora_lab.memory.shapes import (  # noqa: F401
    ACTIVATIONS,
    ARCHS,
    LAB_GPT2_CONFIG,
    PRESET_NAMES,
    PRESETS,
    ModelShape,
    model_shape,
    shape_from_config,
)
from lora_lab.memory.widgets import BATCH_MAX, RANKS, SEQ_LENS, memory_breakdowns, memory_explorer, memory_readout  # noqa: F401
