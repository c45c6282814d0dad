"""lora_lab.distributed.trainers: the QLoRA recipe through TRL's SFTTrainer and transformers' Trainer.

The adapters they save load into lora_lab with the trainer's outputs (fp32, 1e-4); the argument table
names real lora_lab objects and the values the runs use; the committed runs agree with lora_lab's loop.
"""

import importlib
import json
import math
import re
import statistics
from dataclasses import replace

import pytest
import torch

from lora_lab import course
from lora_lab.distributed import trainers
from lora_lab.experiments.engine import datasets
from lora_lab.finetune.models import load_tokenizer
from lora_lab.finetune.trainer import collate, encode_examples
from lora_lab.lora import load_adapter

TINY = replace(trainers.RECIPE, steps=3, train_examples=48, eval_examples=8)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("data/lab-gpt2")


def _resolve(path: str):
    module, attrs = path.split(":")
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def test_every_lora_lab_equivalent_exists_and_chapter_is_real():
    chapters = {c.notebook for c in course.CHAPTERS} | {"08_scaling_out.ipynb"}
    assert len(trainers.TRAINER_ARGUMENTS) >= 20
    for row in trainers.TRAINER_ARGUMENTS:
        assert _resolve(row.lora_lab) is trainers.resolve_lora_lab(row.lora_lab), row
        assert row.chapter in chapters, row
    names = {row.argument for row in trainers.TRAINER_ARGUMENTS}
    for needed in ("LoraConfig.r", "LoraConfig.lora_alpha", "LoraConfig.target_modules",
                   "TrainingArguments.activation_checkpointing", "TrainingArguments.optim (GPU)",
                   "TrainingArguments.bf16", "BitsAndBytesConfig.bnb_4bit_use_double_quant"):
        assert needed in names
    with pytest.raises(ValueError, match="path"):
        trainers.resolve_lora_lab("os:path")


def _plain(value):
    value = getattr(value, "value", value)
    return str(value) if isinstance(value, torch.dtype) else value


def test_argument_values_are_the_ones_the_runs_use(tmp_path):
    objects = {"LoraConfig": [trainers.peft_lora_config()], "BitsAndBytesConfig": [trainers.bnb_config()],
               "TrainingArguments": [trainers.training_arguments(t, trainers.RECIPE, tmp_path)
                                     for t in ("sft", "trainer")],
               "SFTConfig": [trainers.training_arguments("sft", trainers.RECIPE, tmp_path)]}
    checked = 0
    for row in trainers.TRAINER_ARGUMENTS:
        owner, _, field = row.argument.partition(".")
        for obj in objects.get(owner, []) if re.fullmatch(r"\w+", field) else []:
            assert _plain(getattr(obj, field)) == row.value, row
            checked += 1
    assert checked >= 20
    args = trainers.training_arguments("trainer", trainers.RECIPE, tmp_path)
    assert args.lr_scheduler_kwargs == {"min_lr_rate": trainers.MIN_LR_RATIO} and not args.fp16
    with pytest.raises(ValueError, match="trainer='lora_lab'"):
        trainers.training_arguments("lora_lab", trainers.RECIPE, tmp_path)
    with pytest.raises(ValueError, match="targets=.mlp.$"):
        trainers.peft_lora_config(replace(trainers.RECIPE, targets="mlp"))
    with pytest.raises(ValueError, match="recipe='lora', quant_type='fp4'"):
        trainers.peft_lora_config(replace(trainers.RECIPE, recipe="lora", quant_type="fp4"))


def test_sft_tokenizes_the_task_as_lora_lab_does(tmp_path, tokenizer):
    train_set = datasets(TINY)[0][:6]
    built = trainers.build_trainer("sft", TINY, tmp_path, tokenizer=tokenizer, train_set=train_set)
    ours = encode_examples(tokenizer, train_set)
    assert [(row["input_ids"], row["labels"]) for row in built.train_dataset] == ours
    assert ours[0][1][0] == -100 and ours[0][1][-1] == tokenizer.eos_token_id  # prompt masked, answer + EOS learned


@pytest.mark.parametrize("kind", ["sft", "trainer"])
def test_three_step_run_saves_an_adapter_lora_lab_loads(kind, tmp_path, tokenizer):
    record, model = trainers.run_trainer(kind, config=TINY, adapter_dir=tmp_path / "adapter", tokenizer=tokenizer)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                        "adapter_model.safetensors"]
    assert record["trainer"] == kind and record["n_eval"] == 8 and len(record["curve"]) == 3
    assert 0 <= record["metric"] <= 1 and record["trainable"] == 98_304 and record["adapter_dtype"] == "float32"
    assert record["metric_se"] == pytest.approx(math.sqrt(record["metric"] * (1 - record["metric"]) / 8))
    assert record["arguments"]["optim"] == "adamw_torch" and record["arguments"]["bf16"] is False
    json.dumps(record)
    batch = collate(encode_examples(tokenizer, datasets(TINY)[1][:3]), tokenizer.eos_token_id, "cpu")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base = trainers.load_base()
    quant = base.config.quantization_config
    assert (quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant) == ("nf4", True)
    with torch.no_grad():
        want = model(**inputs).logits
        before = base(**inputs).logits
        load_adapter(base, tmp_path / "adapter")
        got = base(**inputs).logits
    assert (got - want).abs().max().item() < 1e-4
    assert (before - want).abs().max().item() > 1e-2  # the trained adapter moved the outputs


def test_committed_runs_agree_within_a_few_points():
    records = trainers.read_records(trainers.TRAINERS_FILE)
    by_trainer = {t: [r for r in records if r["trainer"] == t] for t in trainers.TRAINERS}
    for name, runs in by_trainer.items():
        assert len({r["config"]["seed"] for r in runs}) >= 3, name
    configs = {json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True) for r in records}
    assert len(configs) == 1
    config = json.loads(configs.pop())
    assert (config["recipe"], config["quant_type"], config["task"], config["r"]) == ("qlora", "nf4", "qa", 8)
    # mean ± SE over seeds, computed here, then checked against the module's comparison
    stats = {t: (statistics.fmean(r["metric"] for r in runs),
                 statistics.stdev([r["metric"] for r in runs]) / math.sqrt(len(runs)))
             for t, runs in by_trainer.items()}
    agreement = trainers.compare_trainers(records)
    for t in ("sft", "trainer"):
        gap = stats[t][0] - stats["lora_lab"][0]
        assert agreement.gaps[t] == pytest.approx(gap, abs=1e-12)
        assert agreement.gap_se[t] == pytest.approx(math.hypot(stats[t][1], stats["lora_lab"][1]), abs=1e-12)
        assert abs(gap) <= trainers.FEW_POINTS, agreement.verdict()
    assert agreement.agree and "within 5 points" in agreement.verdict()
    assert min(m for m, _ in stats.values()) > 0.5  # every trainer learned the task (base: ~0)


def test_comparison_and_runner_refuse_bad_input(tmp_path):
    rec = {"trainer": "lora_lab", "metric": 0.5, "seconds": 1.0, "config": {"seed": 0, "r": 8}}
    with pytest.raises(ValueError, match=">= 3 distinct seeds"):
        trainers.compare_trainers([rec, {**rec, "trainer": "sft"}])
    with pytest.raises(ValueError, match="tolerance"):
        trainers.compare_trainers([rec], tolerance=5)
    out = tmp_path / "t.jsonl"
    with pytest.raises(ValueError, match="'bogus'"):
        trainers.write_trainers(out, trainers=("sft", "bogus"))
    with pytest.raises(ValueError, match="seeds"):
        trainers.write_trainers(out, seeds=(-1,))
    assert not out.exists()
