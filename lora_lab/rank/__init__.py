"""Chapter 01: rank, the SVD and the best rank-r approximation (Eckart-Young), parameter counts.

One line imports the chapter: ``from lora_lab.rank import ...``.
"""
from lora_lab.rank import lowrank  # noqa: F401
from lora_lab.rank.lowrank import (  # noqa: F401
    ParamCounts,
    ReconstructionErrors,
    singular_values,
    matrix_rank,
    low_rank_approx,
    approx_error,
    eckart_young_error,
    energy_captured,
    reconstruction_errors,
    random_low_rank,
    full_param_count,
    lora_param_count,
    compression_ratio,
    break_even_rank,
    compare_param_counts,
)
from lora_lab.rank import plots  # noqa: F401
from lora_lab.rank.plots import (  # noqa: F401
    plot_singular_values,
    plot_approx_error,
    plot_param_counts,
)
from lora_lab.rank import widgets  # noqa: F401
from lora_lab.rank.widgets import (  # noqa: F401
    param_count_readout,
    param_count_explorer,
)
from lora_lab.rank import exercises  # noqa: F401
from lora_lab.rank.exercises import (  # noqa: F401
    EY_SIGMAS,
    EY_R,
    BREAK_EVEN_D,
    SEED_OPTIONS,
    RANK_MATRIX,
    check_exercise_lora_params,
    check_exercise_eckart_young,
    check_exercise_break_even,
    check_exercise_seed_percentage,
    check_exercise_rank,
)
