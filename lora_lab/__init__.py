"""lora_lab: LoRA and QLoRA built from first principles, checked against PEFT and bitsandbytes.

Modules, one concept each:
    lowrank   rank, SVD, best rank-r approximation, parameter counts
    lora      the LoRA layer, injecting it into a model, merge/unmerge
              (baselayer: the layers it wraps; adapter_io: PEFT-format adapter files;
              scaling: lora_alpha, rsLoRA and merge latency)
    quant     4-bit codebooks (NF4/FP4/int4), blockwise and double quantization
              (qlinear: the frozen 4-bit layer; quant_metrics: error metrics)
    memory    what sits in memory during training, predicted (shapes: model presets;
              activations: the activation model) and measured (measure)
    course    the course map and the environment check
    stories   the pretraining corpus of the shipped GPT-2 (story_words: its vocabulary;
              facts: what each story states and the questions it answers)
    task      the fine-tuning task: question answering in a format the base never saw
    models    load_model: the shipped GPT-2 or a Hub name, fp or 4-bit (bitsandbytes / lora_lab)
    train     the training loop (warm-up + decay, clipping, checkpoints, resume)
    evaluate  generation, exact match, perplexity
    recipe    QLoRA / LoRA / full fine-tuning as one recipe, with predicted and measured memory
    cli       `python -m lora_lab qlora`
    plots/    figures (each function returns a matplotlib Figure)
    widgets/  thin ipywidgets explorers over the functions above
    exercises/ checkers for the end-of-chapter exercises
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
