"""Chapter 02: the LoRA layer (B A, lora_alpha / r), injecting it into a model, merge/unmerge,
PEFT-format adapter files, and how lora_alpha, rsLoRA and merging behave.

One line imports the chapter: ``from lora_lab.lora import ...``.
"""
from lora_lab.lora import baselayer  # noqa: F401
from lora_lab.lora.baselayer import (  # noqa: F401
    is_wrappable,
    layer_dims,
    get_weight,
    set_weight,
    ALL_LINEAR,
    TARGET_RULE,
    check_target_modules,
    target_matches,
    select_targets,
    output_head_names,
    select_modules,
)
from lora_lab.lora import layer  # noqa: F401
from lora_lab.lora.layer import (  # noqa: F401
    LoraConfig,
    LoRALinear,
    add_lora,
    find_target_modules,
    lora_layers,
    merge_lora,
    unmerge_lora,
    trainable_parameters,
    trainable_report,
    save_adapter,
    load_adapter,
)
from lora_lab.lora import io  # noqa: F401
from lora_lab.lora.io import (  # noqa: F401
    CONFIG_NAME,
    WEIGHTS_NAME,
    PREFIX,
    TASK_TYPES,
    infer_task_type,
    adapter_state_dict,
    read_adapter_config,
    read_adapter_weights,
)
from lora_lab.lora import scaling  # noqa: F401
from lora_lab.lora.scaling import (  # noqa: F401
    AlphaEffect,
    compute_alpha_effect,
    scaling_curves,
    update_norm_vs_rank,
    merge_flop_ratio,
    TIMING_METHOD,
    time_forward,
    MergeLatency,
    compare_merge_latency,
)
from lora_lab.lora import plots  # noqa: F401
from lora_lab.lora.plots import (  # noqa: F401
    plot_scaling_vs_rank,
    plot_update_norm_vs_rank,
    plot_alpha_effect,
)
from lora_lab.lora import widgets  # noqa: F401
from lora_lab.lora.widgets import (  # noqa: F401
    alpha_explorer,
)
from lora_lab.lora import exercises  # noqa: F401
from lora_lab.lora.exercises import (  # noqa: F401
    check_exercise_c_attn_params,
    check_exercise_first_gradient,
    check_exercise_rslora_scaling,
)
