"""Chapter 07: many adapters on one base: train two task adapters on one NF4 GPT-2, switch,
disable, combine them (linear, cat, svd), serve a mixed batch, and count what it costs.

    pair      which two adapters (chapter 05's QA, chapter 06's cipher), loading them on one base,
              scoring a setting (base / one adapter / a combination) on both tasks
    run       the committed runs: data/adapters/train.jsonl, combine.jsonl (3 seeds)
    combine   a combination's ΔW against Σ wᵢΔWᵢ (Eckart–Young), records -> points, interference
    serving   memory of N adapters vs N merged copies, FLOP ratio, measured latency
    variants_run  LoRA vs PiSSA vs LoftQ vs DoRA on one NF4 base: data/adapters/variants.jsonl
                  (3 learning rates × 3 seeds)

One line imports the chapter: ``from lora_lab.adapters import ...``.
"""

from lora_lab.adapters.combine import (
    CombinationError,
    Interference,
    combination_errors,
    interference,
    lookup,
    setting_key,
    summarize,
)
from lora_lab.adapters.exercises import (
    check_exercise_cat_rank,
    check_exercise_exact_combination,
    check_exercise_loftq_one_iteration,
    check_exercise_merged_copies_ratio,
    check_exercise_svd_full_rank_error,
)
from lora_lab.adapters.pair import (
    MIX,
    SEEDS,
    TASKS,
    adapter_config,
    adapter_dir,
    apply_setting,
    eval_sets,
    load_pair,
    measure,
    nf4_base,
)
from lora_lab.adapters.plots import plot_interference, plot_variants, plot_weight_grid
from lora_lab.adapters.run import (
    COMBINATIONS,
    WEIGHTS,
    combine_records,
    run_combinations,
    settings,
    train_adapters,
    train_records,
)
from lora_lab.adapters.serving import ServingLatency, ServingMemory, adapter_flop_ratio, serving_latency, serving_memory
from lora_lab.adapters.variants_run import (
    VARIANTS,
    build_variant,
    init_error,
    run_variant,
    run_variants,
    step_seconds,
    variant_configs,
    variant_points,
    variant_records,
)
from lora_lab.adapters.widgets import combination_explorer, combination_readout

__all__ = ["CombinationError", "Interference", "combination_errors", "interference", "lookup", "setting_key",
           "summarize", "check_exercise_cat_rank", "check_exercise_exact_combination",
           "check_exercise_loftq_one_iteration", "check_exercise_merged_copies_ratio",
           "check_exercise_svd_full_rank_error", "MIX", "SEEDS", "TASKS", "adapter_config", "adapter_dir",
           "apply_setting", "eval_sets", "load_pair", "measure", "nf4_base", "plot_interference", "plot_weight_grid",
           "COMBINATIONS", "WEIGHTS", "combine_records", "run_combinations", "settings", "train_adapters",
           "train_records", "ServingLatency", "ServingMemory", "adapter_flop_ratio", "serving_latency",
           "serving_memory", "VARIANTS", "build_variant", "init_error", "run_variant", "run_variants", "step_seconds",
           "variant_configs", "variant_points", "variant_records", "plot_variants", "combination_explorer",
           "combination_readout"]
