"""The training loop: schedule, batches, masking, a step that learns, checkpoints, resume, SIGINT."""

import os
import signal

import numpy as np
import pytest
import torch

from lora_lab.corpus.task import make_split
from lora_lab.finetune import trainer as train_mod
from lora_lab.finetune.models import load_model, load_tokenizer
from lora_lab.finetune.trainer import (
    CHECKPOINT,
    TrainConfig,
    batch_indices,
    collate,
    encode_examples,
    load_checkpoint,
    lr_at,
    make_optimizer,
    rank_share,
    save_checkpoint,
    train,
)
from lora_lab.lora.layer import LoraConfig, add_lora
from tests.helpers import assert_same, snapshot, tiny_gpt2

EXAMPLES = make_split("train", 48)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def lora_model(r=2, seed=0):
    model = load_model(device="cpu")
    return add_lora(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=("c_attn",)),
                    generator=torch.Generator().manual_seed(seed))


def adapter_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")),
                                          ("warmup_steps", -1), ("min_lr_ratio", 1.5), ("max_grad_norm", 0),
                                          ("optimizer", "adam"), ("steps", 2.5)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_schedule_warms_up_then_decays():
    c = TrainConfig(steps=100, lr=1e-2, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(t, c) for t in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, c) == pytest.approx(1e-3)


def test_batches_depend_only_on_seed_and_step_and_cover_each_epoch():
    lengths = [(i * 37) % 50 + 10 for i in range(64)]
    epoch = [i for s in range(8) for i in batch_indices(s, lengths, 8, seed=3)]
    assert sorted(epoch) == list(range(64))
    assert batch_indices(5, lengths, 8, 3) == batch_indices(5, lengths, 8, 3)
    assert batch_indices(5, lengths, 8, 3) != batch_indices(5, lengths, 8, 4)


def test_rank_shares_partition_the_batch_and_average_to_its_gradient(tok):
    data = encode_examples(tok, EXAMPLES[:16])
    idx = batch_indices(0, [len(x) for x, _ in data], 7, seed=0)  # 7 over 3 processes: 3, 2, 2
    shares = [rank_share(idx, data, r, 3) for r in range(3)]
    assert [i for mine, _ in shares for i in mine] == idx and [len(m) for m, _ in shares] == [3, 2, 2]
    assert sum(f for _, f in shares) == pytest.approx(3)  # factors: 3 x each share's fraction of answer tokens
    model = lora_model(r=2)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(ids, factor=1.0):
        model.zero_grad()
        (model(**collate([data[i] for i in ids], tok.pad_token_id, "cpu")).loss * factor).backward()
        return [p.grad.clone() for p in params]

    whole = grads(idx)
    averaged = [sum(g) / 3 for g in zip(*(grads(mine, f) for mine, f in shares))]  # what DDP's all-reduce does
    assert max((a - w).abs().max().item() for a, w in zip(averaged, whole)) < 1e-6 * max(w.abs().max() for w in whole)
    with pytest.raises(ValueError, match="cannot be split over world_size=8"):
        rank_share(idx, data, 7, 8)  # ranks 0-6 take one example each, rank 7 none


@pytest.mark.parametrize("kwargs, needle", [(dict(rank=2, world_size=2), "0 <= rank < world_size"),
                                            (dict(rank=0, world_size=0), "0 <= rank < world_size"),
                                            (dict(rank=0, world_size=2, out_dir="x", resume=True), "single-process"),
                                            (dict(rank=0, world_size=32), "must be >= world_size=32")])
def test_train_refuses_a_bad_process_setup_before_training(tok, kwargs, needle):
    model = lora_model()
    before = adapter_weights(model)
    with pytest.raises(ValueError, match=needle):
        train(model, tok, EXAMPLES, TrainConfig(steps=1, batch_size=16), progress=False, **kwargs)
    assert all(torch.equal(before[n], p) for n, p in adapter_weights(model).items())


def test_only_the_answer_is_learned(tok):
    (ids, labels), = encode_examples(tok, EXAMPLES[:1])
    learned = [i for i, y in zip(ids, labels) if y != -100]
    assert tok.decode(learned) == EXAMPLES[0].completion + tok.eos_token
    assert ids[0] == tok.eos_token_id and len(ids) == len(labels)


def test_one_step_lowers_the_loss_on_a_fixed_batch(tok):
    model = lora_model(r=4)
    batch = collate(encode_examples(tok, EXAMPLES[:8]), tok.pad_token_id, "cpu")
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(lr=1e-3))
    before = model(**batch).loss
    before.backward()
    opt.step()
    with torch.no_grad():
        after = model(**batch).loss
    assert after < before


def test_resume_continues_exactly(tok, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3)
    straight = lora_model()
    train(straight, tok, EXAMPLES, TrainConfig(**{**cfg.__dict__, "checkpoint_every": 0}), progress=False)
    half = lora_model()
    r1 = train(half, tok, EXAMPLES, TrainConfig(**{**cfg.__dict__, "steps": 3}), out_dir=tmp_path, progress=False)
    resumed = lora_model()  # a fresh process would rebuild the model the same way
    r2 = train(resumed, tok, EXAMPLES, cfg, out_dir=tmp_path, resume=True, progress=False)
    assert r1.step == 3 and r2.start_step == 3 and r2.step == 6
    assert r2.losses[:3] == r1.losses and len(r2.losses) == 6
    for (n, a), b in zip(adapter_weights(straight).items(), adapter_weights(resumed).values()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_sigint_stops_after_the_step_and_writes_a_checkpoint(tok, tmp_path):
    model = lora_model()
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN under nohup / `cmd &`

    def interrupt(m):  # called after step 2: as if the user pressed Ctrl-C then
        os.kill(os.getpid(), signal.SIGINT)
        return {}

    cfg = TrainConfig(steps=8, batch_size=4, eval_every=2, checkpoint_every=100)
    result = train(model, tok, EXAMPLES, cfg, eval_fn=interrupt, out_dir=tmp_path, progress=False)
    assert result.interrupted and result.step == 2
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 2
    again = train(lora_model(), tok, EXAMPLES, cfg, out_dir=tmp_path, resume=True, progress=False)
    assert again.start_step == 2 and again.step == 8 and not again.interrupted


def test_checkpoint_is_never_half_written(tok, tmp_path, monkeypatch):
    model = lora_model()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig())
    result = train_mod.TrainResult(step=1)
    path = save_checkpoint(tmp_path / CHECKPOINT, model, opt, result, TrainConfig())
    good = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    result.step = 2
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / CHECKPOINT, model, opt, result, TrainConfig())
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # no temp file left behind
    assert load_checkpoint(path, model, opt)["step"] == 1


def test_corrupt_or_mismatched_checkpoint(tok, tmp_path):
    model = lora_model()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(bad, model, opt)
    save_checkpoint(tmp_path / CHECKPOINT, model, opt, train_mod.TrainResult(), TrainConfig())
    other = lora_model(r=4)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(tmp_path / CHECKPOINT, other, make_optimizer(
            [p for p in other.parameters() if p.requires_grad], TrainConfig()))


# ---------------------------------------------------------------- weights_only=True checkpoints (issue 11, item 9)







class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def small():
    model = add_lora(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]),
                     generator=torch.Generator().manual_seed(0))
    opt = train_mod.make_optimizer([p for p in model.parameters() if p.requires_grad], train_mod.TrainConfig())
    model(torch.randint(0, 97, (2, 8))).logits.sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_under_weights_only(small, tmp_path):
    model, opt = small
    result = train_mod.TrainResult(losses=[1.0, 0.5], lrs=[1e-3, 1e-3], step=2,
                                   evals=[(2, {"exact_match": np.float64(0.25), "n": np.int64(3)})])
    path = train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, result, train_mod.TrainConfig())
    ckpt = torch.load(path, weights_only=True)  # loads with the safe unpickler
    assert ckpt["evals"] == [(2, {"exact_match": 0.25, "n": 3})] and type(ckpt["evals"][0][1]["n"]) is int
    assert "step" in ckpt["optimizer"]["state"][0] and isinstance(ckpt["rng"], torch.Tensor)
    assert train_mod.load_checkpoint(path, model, opt)["step"] == 2


def test_checkpoint_with_arbitrary_objects_is_refused_not_run(small, tmp_path):
    model, opt = small
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": train_mod.CHECKPOINT_FORMAT, "step": 0, "x": _Evil(str(marker))}, path)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        train_mod.load_checkpoint(path, model, opt)
    assert not marker.exists()  # before the fix (weights_only=False) the payload ran
    assert_same(model, snap)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip", "missing", "not_dict", "no_format",
                                    "bad_entry", "nan_weight"])
def test_corrupt_checkpoint_clear_error_model_unchanged(small, tmp_path, damage):
    model, opt = small
    path = train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, train_mod.TrainResult(step=1),
                                     train_mod.TrainConfig())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip":
        path.write_bytes(data[:64] + bytes(b ^ 0xFF for b in data[64:600]) + data[600:])
    elif damage == "missing":
        path.unlink()
    else:
        ckpt = torch.load(path, weights_only=True)
        if damage == "not_dict":
            ckpt = [1, 2, 3]
        elif damage == "no_format":
            del ckpt["format"]
        elif damage == "bad_entry":
            ckpt["step"] = "one"
        else:
            next(iter(ckpt["trainable"].values()))[0, 0] = float("nan")
        torch.save(ckpt, path)
    snap, opt_state = snapshot(model), opt.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(ValueError, match="checkpoint"):
        train_mod.load_checkpoint(path, model, opt)
    assert_same(model, snap)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt_state)


def test_checkpoint_for_another_optimizer_changes_nothing(small, tmp_path):
    model, opt = small
    path = train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, train_mod.TrainResult(step=1),
                                     train_mod.TrainConfig())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    snap = snapshot(model)
    params = [p for p in model.parameters() if p.requires_grad]
    other = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}])  # two groups, not one
    with pytest.raises(ValueError, match="optimizer state does not fit"):
        train_mod.load_checkpoint(path, model, other)
    assert_same(model, snap)  # before the fix: weights were copied, then the optimizer failed


def test_save_checkpoint_refuses_unstorable_objects(small, tmp_path):
    model, opt = small
    result = train_mod.TrainResult(evals=[(1, {"score": object()})])
    with pytest.raises(ValueError, match="evals holds a object"):
        train_mod.save_checkpoint(tmp_path / "c.pt", model, opt, result, train_mod.TrainConfig())
    assert not (tmp_path / "c.pt").exists()


def test_train_rejects_bad_calls(tok, tmp_path):
    with pytest.raises(ValueError, match="trainable"):
        train(_frozen(), tok, EXAMPLES, TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        train(lora_model(), tok, EXAMPLES, TrainConfig(steps=1, checkpoint_every=1), progress=False)
    with pytest.raises(ValueError, match="CUDA"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="paged_adamw_8bit"))


def test_make_optimizer_builds_each_cpu_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert type(make_optimizer(p, TrainConfig(optimizer="adamw"))) is torch.optim.AdamW
    sgd = make_optimizer(p, TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.01))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["lr"] == 0.1 and sgd.defaults["weight_decay"] == 0.01


def _frozen():
    model = load_model()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_gradient_checkpointing_gives_the_same_step(tok):
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1)
    a, b = lora_model(), lora_model()
    ra = train(a, tok, EXAMPLES, cfg, progress=False)
    rb = train(b, tok, EXAMPLES, TrainConfig(**{**cfg.__dict__, "gradient_checkpointing": True}), progress=False)
    assert ra.losses == pytest.approx(rb.losses, rel=1e-4)
