"""Chapter 04: what sits in memory during training, predicted (shapes, activations, predict)
and measured (measure).

One line imports the chapter: ``from lora_lab.memory import ...``.
"""
from lora_lab.memory import shapes  # noqa: F401
from lora_lab.memory.shapes import (  # noqa: F401
    ARCHS,
    ACTIVATIONS,
    LAB_GPT2_CONFIG,
    ModelShape,
    PRESETS,
    PRESET_NAMES,
    shape_from_config,
    model_shape,
)
from lora_lab.memory import activations  # noqa: F401
from lora_lab.memory.activations import (  # noqa: F401
    ATTN_IMPLEMENTATIONS,
    DEVICES,
    activation_memory,
)
from lora_lab.memory import predict  # noqa: F401
from lora_lab.memory.predict import (  # noqa: F401
    DTYPE_BYTES,
    BASE_DTYPES,
    OPTIMIZERS,
    COMPONENTS,
    RECIPES,
    MemoryBreakdown,
    quantized_linear_bytes,
    optimizer_state_bytes,
    training_memory,
    bytes_per_trainable_param,
    judge_claim,
)
from lora_lab.memory import measure  # noqa: F401
from lora_lab.memory.measure import (  # noqa: F401
    METHOD,
    storage_bytes,
    quant_tensors,
    is_quantized,
    saved_tensor_meter,
    Measured,
    measure_training_step,
    quantize_linears_4bit,
    LORA_BASE_DTYPES,
    build_model,
    compare,
    param_bytes_by_dtype,
)
from lora_lab.memory import plots  # noqa: F401
from lora_lab.memory.plots import (  # noqa: F401
    COLORS,
    plot_memory_breakdown,
    plot_predicted_vs_measured,
)
from lora_lab.memory import widgets  # noqa: F401
from lora_lab.memory.widgets import (  # noqa: F401
    RANKS,
    SEQ_LENS,
    BATCH_MAX,
    memory_breakdowns,
    memory_readout,
    memory_explorer,
)
from lora_lab.memory import exercises  # noqa: F401
from lora_lab.memory.exercises import (  # noqa: F401
    EX2_MODEL,
    EX3_D,
    EX4_SETUP,
    check_exercise_adapter_bytes,
    check_exercise_nf4_base,
    check_exercise_packed_numel,
    check_exercise_largest_component,
)
