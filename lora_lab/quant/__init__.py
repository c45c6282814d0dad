"""Chapter 03: 4-bit codebooks (NF4 / FP4 / int4), blockwise and double quantization, 8-bit
blockwise state, the frozen 4-bit layer, and error metrics.

One line imports the chapter: ``from lora_lab.quant import ...``.
"""
from lora_lab.quant import (
    blockwise,  # noqa: F401
    blockwise8,  # noqa: F401
    exercises,  # noqa: F401
    linear4bit,  # noqa: F401
    metrics,  # noqa: F401
    plots,  # noqa: F401
    widgets,  # noqa: F401
)
from lora_lab.quant.blockwise import (  # noqa: F401
    CODEBOOKS,
    FLOAT_DTYPES,
    NF4_OFFSET,
    QuantizedTensor,
    bin_edges,
    bits_per_param,
    check_quantized,
    dequantize_4bit,
    e2m1_codebook,
    fp4_codebook,
    get_codebook,
    int4_codebook,
    nearest_code_index,
    nf4_codebook,
    nf4_paper_codebook,
    quantize_4bit,
    unpack_codes,
)
from lora_lab.quant.blockwise8 import dequantize_blockwise_8bit, dynamic_map_8bit, quantize_blockwise_8bit  # noqa: F401
from lora_lab.quant.exercises import (  # noqa: F401
    EX1_BLOCKSIZE,
    EX2_PARAMS,
    EX4_OPTIONS,
    EX5_OPTIONS,
    check_exercise_7b_size,
    check_exercise_bits_per_param,
    check_exercise_nf4_index,
    check_exercise_paged_cpu,
    check_exercise_what_is_4bit,
)
from lora_lab.quant.linear4bit import BACKENDS, FrozenLinear4bit, bnb_linear4bit, quantize_model  # noqa: F401
from lora_lab.quant.metrics import (  # noqa: F401
    OutlierDamage,
    QuantError,
    compare_codebooks,
    fake_quantize,
    outlier_damage,
    quantization_error,
    scaled_blocks,
)
from lora_lab.quant.plots import (  # noqa: F401
    plot_bin_usage,
    plot_codebooks,
    plot_nf4_construction,
    plot_outlier_damage,
    plot_quant_errors,
    plot_weight_histogram,
)
from lora_lab.quant.widgets import BLOCKSIZES, WHOLE_TENSOR, outlier_explorer, outlier_readout  # noqa: F401
