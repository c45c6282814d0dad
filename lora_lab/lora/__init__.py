"""Chapter 02: the LoRA layer (B A, lora_alpha / r), injecting it into a model, merge/unmerge,
PEFT-format adapter files, and how lora_alpha, rsLoRA and merging behave; several named adapters
on one base (switch, disable, delete, mixed batches, weighted combinations) as PEFT; the variants
PiSSA, LoftQ and DoRA (``variants``, and ``LoraConfig``'s ``init_lora_weights`` / ``use_dora``).

One line imports the chapter: ``from lora_lab.lora import ...``.
"""
from lora_lab.lora import (
    baselayer,  # noqa: F401
    exercises,  # noqa: F401
    io,  # noqa: F401
    layer,  # noqa: F401
    multi,  # noqa: F401
    plots,  # noqa: F401
    scaling,  # noqa: F401
    variants,  # noqa: F401
    widgets,  # noqa: F401
)
from lora_lab.lora.baselayer import (  # noqa: F401
    ALL_LINEAR,
    TARGET_RULE,
    check_target_modules,
    get_weight,
    is_wrappable,
    layer_dims,
    output_head_names,
    select_modules,
    select_targets,
    set_weight,
    target_matches,
)
from lora_lab.lora.exercises import (  # noqa: F401
    check_exercise_c_attn_params,
    check_exercise_first_gradient,
    check_exercise_rslora_scaling,
)
from lora_lab.lora.io import (  # noqa: F401
    CONFIG_NAME,
    MAGNITUDE,
    PREFIX,
    TASK_TYPES,
    WEIGHTS_NAME,
    adapter_state_dict,
    infer_task_type,
    load_adapter,
    read_adapter_config,
    read_adapter_weights,
    save_adapter,
)
from lora_lab.lora.layer import (  # noqa: F401
    BASE_ADAPTER,
    DEFAULT_ADAPTER,
    DoraMagnitude,
    LoftQConfig,
    LoraConfig,
    LoRALinear,
    add_lora,
    changes_base,
    check_base_for_init,
    find_target_modules,
    lora_layers,
    merge_lora,
    pissa_niter,
    trainable_parameters,
    trainable_report,
    unmerge_lora,
)
from lora_lab.lora.multi import (  # noqa: F401
    COMBINATION_TYPES,
    active_adapter,
    adapter_names,
    add_weighted_adapter,
    delete_adapter,
    disable_adapters,
    mixed_batch,
    set_adapter,
)
from lora_lab.lora.plots import plot_alpha_effect, plot_scaling_vs_rank, plot_update_norm_vs_rank  # noqa: F401
from lora_lab.lora.scaling import (  # noqa: F401
    OPTIMIZERS,
    TIMING_METHOD,
    AlphaEffect,
    LoraFit,
    MergeLatency,
    compare_merge_latency,
    compute_alpha_effect,
    fit_lora,
    merge_flop_ratio,
    scaling_curves,
    time_forward,
    update_norm_vs_rank,
)
from lora_lab.lora.variants import (  # noqa: F401
    NUM_BITS,
    LoftQInit,
    PissaInit,
    dora_forward,
    dora_init_magnitude,
    dora_merged_weight,
    dora_unmerged_weight,
    dora_weight_norm,
    loftq_init,
    lora_scaling,
    pissa_init,
)
from lora_lab.lora.widgets import alpha_explorer  # noqa: F401
