"""Chapter 06: what r, lora_alpha, targets, init and 4-bit storage do to a real fine-tune.

    engine    ExperimentConfig -> run_experiment -> one record (metric ± SE, curve, forgetting)
    tasks     the K-name cipher: a task whose difficulty needs rank
    sweep     named grids, the resumable JSONL sweep runner, committed-record lookup
"""

from lora_lab.experiments.engine import ExperimentConfig, binomial_se, run_experiment
from lora_lab.experiments.sweep import GRIDS, all_records, find_record, grid, rerun, run_sweep
from lora_lab.experiments.tasks import cipher_table, make_cipher_example, make_cipher_split

__all__ = ["ExperimentConfig", "binomial_se", "run_experiment", "GRIDS", "all_records", "find_record",
           "grid", "rerun", "run_sweep", "cipher_table", "make_cipher_example", "make_cipher_split"]
