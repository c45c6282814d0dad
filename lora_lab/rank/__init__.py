"""Chapter 01: rank, the SVD and the best rank-r approximation (Eckart-Young), parameter counts.

One line imports the chapter: ``from lora_lab.rank import ...``.
"""
from lora_lab.rank import (
    exercises,  # noqa: F401
    lowrank,  # noqa: F401
    plots,  # noqa: F401
    widgets,  # noqa: F401
)
from lora_lab.rank.exercises import (  # noqa: F401
    BREAK_EVEN_D,
    EY_R,
    EY_SIGMAS,
    RANK_MATRIX,
    SEED_OPTIONS,
    check_exercise_break_even,
    check_exercise_eckart_young,
    check_exercise_lora_params,
    check_exercise_rank,
    check_exercise_seed_percentage,
)
from lora_lab.rank.lowrank import (  # noqa: F401
    ParamCounts,
    ReconstructionErrors,
    approx_error,
    break_even_rank,
    compare_param_counts,
    compression_ratio,
    eckart_young_error,
    energy_captured,
    full_param_count,
    lora_param_count,
    low_rank_approx,
    matrix_rank,
    random_low_rank,
    reconstruction_errors,
    singular_values,
)
from lora_lab.rank.plots import plot_approx_error, plot_param_counts, plot_singular_values  # noqa: F401
from lora_lab.rank.widgets import param_count_explorer, param_count_readout  # noqa: F401
