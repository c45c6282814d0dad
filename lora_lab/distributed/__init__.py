"""Chapter 08: scaling out -- the chapter-05 recipe in several processes with torch.distributed
(gloo on CPU): DDP (launch, ddp), FSDP (fsdp), the runs both compare with one process (runs);
the same recipe through TRL's SFTTrainer and transformers' Trainer (trainers); two memory levers
measured beside chapter 04's predictions (levers); the exercises' checkers (exercises).

One line imports the chapter: ``from lora_lab.distributed import ...``.
"""
import importlib

from lora_lab.distributed import (
    ddp,  # noqa: F401
    exercises,  # noqa: F401
    fsdp,  # noqa: F401
    launch,  # noqa: F401
    levers,  # noqa: F401
    runs,  # noqa: F401
)
from lora_lab.distributed.ddp import (  # noqa: F401
    AllReduceCounter,
    allreduce_bytes_per_step,
    allreduce_table,
    run_ddp,
    train_ddp,
    trainable_numel,
    wrap_ddp,
)
from lora_lab.distributed.exercises import (  # noqa: F401
    EX1_SETUP,
    EX2_CHOICES,
    EX3_SETUP,
    EX4_SETUP,
    check_exercise_allreduce_bytes,
    check_exercise_fsdp_base_gb,
    check_exercise_per_process_batch,
    check_exercise_writer_rank,
)
from lora_lab.distributed.fsdp import (  # noqa: F401
    FLOAT_STORAGE_FAILURE,
    QUANT_STORAGES,
    fsdp_memory,
    load_qlora_base,
    local_param_bytes,
    qlora_quant_storage_probe,
    run_fsdp,
    shard_model,
    transformer_blocks,
)
from lora_lab.distributed.launch import (  # noqa: F401
    BACKEND,
    free_port,
    init_distributed,
    launched_world,
    save_adapter_atomic,
    spawn,
    torchrun,
)
from lora_lab.distributed.levers import LEVER_MODELS, LeverRow, lever_config, lever_table, measure_levers, step_times  # noqa: F401
from lora_lab.distributed.runs import RunSpec, prepare_run, run_single, trainable_state  # noqa: F401
from lora_lab.finetune.trainer import rank_share  # noqa: F401  (chapter 05's, the hook DDP and FSDP use)

# The trainers (TRL, datasets) add seconds to the import of every process torchrun or spawn
# starts, which none of the DDP and FSDP runs need: their names load on first use (PEP 562).
_TRAINERS_NAMES = ("RECIPE", "TRAINERS", "TRAINERS_FILE", "FEW_POINTS", "TRAINER_ARGUMENTS", "TrainerArgument",
                   "bnb_config", "load_base", "peft_lora_config", "training_arguments", "build_trainer",
                   "run_trainer", "sft_trainer_run", "hf_trainer_run", "lora_lab_run", "write_trainers",
                   "read_records", "summarize", "compare_trainers", "TrainerSummary", "Agreement",
                   "resolve_lora_lab", "save_peft_adapter")


def __getattr__(name: str):
    if name == "trainers" or name in _TRAINERS_NAMES:
        module = importlib.import_module("lora_lab.distributed.trainers")
        return module if name == "trainers" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_TRAINERS_NAMES) | {"trainers"})
