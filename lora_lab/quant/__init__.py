"""Chapter 03: 4-bit codebooks (NF4 / FP4 / int4), blockwise and double quantization, 8-bit
blockwise state, the frozen 4-bit layer, and error metrics.

One line imports the chapter: ``from lora_lab.quant import ...``.
"""
from lora_lab.quant import blockwise  # noqa: F401
from lora_lab.quant.blockwise import (  # noqa: F401
    CODEBOOKS,
    FLOAT_DTYPES,
    NF4_OFFSET,
    nf4_codebook,
    fp4_codebook,
    int4_codebook,
    get_codebook,
    bin_edges,
    bits_per_param,
    QuantizedTensor,
    nearest_code_index,
    quantize_4bit,
    unpack_codes,
    check_quantized,
    dequantize_4bit,
)
from lora_lab.quant import blockwise8  # noqa: F401
from lora_lab.quant.blockwise8 import (  # noqa: F401
    dynamic_map_8bit,
    quantize_blockwise_8bit,
    dequantize_blockwise_8bit,
)
from lora_lab.quant import linear4bit  # noqa: F401
from lora_lab.quant.linear4bit import (  # noqa: F401
    FrozenLinear4bit,
    quantize_model,
)
from lora_lab.quant import metrics  # noqa: F401
from lora_lab.quant.metrics import (  # noqa: F401
    QuantError,
    quantization_error,
    compare_codebooks,
    scaled_blocks,
    fake_quantize,
    OutlierDamage,
    outlier_damage,
)
from lora_lab.quant import plots  # noqa: F401
from lora_lab.quant.plots import (  # noqa: F401
    plot_weight_histogram,
    plot_bin_usage,
    plot_nf4_construction,
    plot_codebooks,
    plot_quant_errors,
    plot_outlier_damage,
)
from lora_lab.quant import widgets  # noqa: F401
from lora_lab.quant.widgets import (  # noqa: F401
    BLOCKSIZES,
    WHOLE_TENSOR,
    outlier_readout,
    outlier_explorer,
)
from lora_lab.quant import exercises  # noqa: F401
from lora_lab.quant.exercises import (  # noqa: F401
    EX1_BLOCKSIZE,
    EX2_PARAMS,
    EX4_OPTIONS,
    EX5_OPTIONS,
    check_exercise_bits_per_param,
    check_exercise_7b_size,
    check_exercise_nf4_index,
    check_exercise_what_is_4bit,
    check_exercise_paged_cpu,
)
