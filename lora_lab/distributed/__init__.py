"""Chapter 08: scaling out -- the chapter-05 recipe in several processes with torch.distributed
(gloo on CPU): DDP (launch, ddp), FSDP (fsdp), the runs both compare with one process (runs).

One line imports the chapter: ``from lora_lab.distributed import ...``.
"""
from lora_lab.distributed import (
    ddp,  # noqa: F401
    fsdp,  # noqa: F401
    launch,  # noqa: F401
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
from lora_lab.distributed.launch import BACKEND, free_port, init_distributed, launched_world, save_adapter_atomic, spawn  # noqa: F401
from lora_lab.distributed.runs import RunSpec, prepare_run, run_single, trainable_state  # noqa: F401
from lora_lab.finetune.trainer import rank_share  # noqa: F401  (chapter 05's, the hook DDP and FSDP use)
