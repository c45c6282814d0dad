"""lora_lab: LoRA and QLoRA built from first principles, checked against PEFT and bitsandbytes.

One folder per chapter; each holds its compute, plots, widgets and exercises, and its
``__init__`` re-exports the chapter's public API (``from lora_lab.lora import add_lora``):

    course       the chapter map and the environment check                     (ch 00)
    rank/        lowrank: rank, SVD, best rank-r approximation, parameter counts (ch 01)
    lora/        layer (LoraConfig, LoRALinear, add/merge), baselayer (the layers it
                 wraps), io (PEFT-format adapter files), scaling (lora_alpha, rsLoRA,
                 merge latency)                                                 (ch 02)
    quant/       blockwise (codebooks NF4/FP4/int4, blockwise + double quantization),
                 blockwise8 (8-bit optimizer state), linear4bit (the frozen 4-bit layer),
                 metrics (quantization error)                                   (ch 03)
    memory/      shapes (model presets), activations, predict (what training holds in
                 memory), measure (the same, measured)                          (ch 04)
    finetune/    models (load the shipped GPT-2 or a Hub name, fp or 4-bit), train,
                 evaluate, recipe (QLoRA / LoRA / full fine-tuning as one recipe) (ch 05)
    experiments/ the sweep engine, grids, analysis and explorer                 (ch 06)
    corpus/      the course's data: words, facts, stories, task
    cli          ``python -m lora_lab qlora | sweep``
    _util        shared mechanisms (validation, atomic writes, module replacement, ...)
    _widgets, _exercises   the base of every explorer and of every exercise checker
"""

__version__ = "0.1.0"


def _drop_bnb_kernel_hub_notice() -> None:
    """bitsandbytes logs, on CPUs with AVX512-BF16 only, that it could not fetch an optional
    kernel from the Hub (no network here). That line depends on the machine, so it would make
    notebook outputs differ between machines; drop exactly that message, nothing else."""
    import logging

    class _Filter(logging.Filter):
        def filter(self, record):
            return "gemm_4bit_forward from kernels-community" not in str(record.msg)

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_Filter())


_drop_bnb_kernel_hub_notice()
