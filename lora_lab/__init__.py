"""lora_lab: LoRA and QLoRA built from first principles, checked against PEFT and bitsandbytes.

Modules, one concept each:
    lowrank   rank, SVD, best rank-r approximation, parameter counts
    lora      the LoRA layer, injecting it into a model, merge/unmerge, adapter files
    quant     4-bit codebooks (NF4/FP4/int4), blockwise and double quantization, a 4-bit layer
    memory    what sits in memory during training, predicted and measured
    plots/    figures (each function returns a matplotlib Figure)
    widgets/  thin ipywidgets explorers over the functions above
    exercises/ checkers for the end-of-chapter exercises
"""

__version__ = "0.1.0"
