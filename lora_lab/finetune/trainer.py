"""A plain PyTorch training loop for (Q)LoRA and full fine-tuning on the story task.

One step: a batch of examples (prompt tokens masked out of the loss, so only the
answer and the EOS after it are learned), forward, backward, gradient clipping, an
AdamW step with the learning rate of the schedule

    lr(t) = lr · (t+1)/warmup_steps                                   for t < warmup_steps
    lr(t) = lr · (m + (1-m) · ½(1 + cos(π (t-w)/(T-w))))              after, m = min_lr_ratio

Batches depend only on (seed, step), and a checkpoint holds the trainable weights,
the optimizer state, the step and the history, so a resumed run continues exactly
where the interrupted one stopped. Checkpoints are written atomically (temp file,
fsync, rename): a crash leaves the previous one intact, and hold only tensors, numbers,
strings, lists and dicts, read back with ``torch.load(weights_only=True)`` (nothing is
unpickled beyond those). Ctrl-C (SIGINT) finishes the
current step, writes a checkpoint and returns with ``interrupted=True``.

Several processes (``rank``, ``world_size``; chapter 08, :mod:`lora_lab.distributed`) each
take their contiguous share of the same global batch and scale their mean loss by
``world_size · (their answer tokens / the batch's)``, so that the gradients DDP or FSDP
average over processes are the single-process batch's (up to float summation order, and
with ``lora_dropout=0``: each process draws the dropout masks of its own share); the logged
loss is the global one.
"""

from __future__ import annotations

import io
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from lora_lab._util import atomic_write_bytes, enable_gradient_checkpointing
from lora_lab.corpus.task import Example

CHECKPOINT = "checkpoint.pt"
# transformers' `optim` names for the optimizers :func:`make_optimizer` builds (paged ones need CUDA)
OPTIMIZERS = ("adamw", "sgd", "paged_adamw_32bit", "paged_adamw_8bit")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train` (all validated; errors name the field and range)."""

    steps: int = 150
    batch_size: int = 16
    lr: float = 5e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ValueError(f"lr must be a number in (0, 1], got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass
class TrainResult:
    """What a run did: per-step loss and learning rate, (step, metrics) evaluations, and
    wall time (``seconds``, of which ``eval_seconds`` went to ``eval_fn``)."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)
    start_step: int = 0
    step: int = 0
    seconds: float = 0.0
    eval_seconds: float = 0.0
    interrupted: bool = False


def lr_at(step: int, config: TrainConfig) -> float:
    """The schedule above: linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cos)


def encode_examples(tokenizer, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example: EOS + prompt + answer + EOS; labels are -100 on
    the EOS and the prompt, so the loss is the answer's (and its closing EOS's) NLL."""
    eos = tokenizer.eos_token_id
    out = []
    for e in examples:
        prompt = [eos] + tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(e.completion, add_special_tokens=False)["input_ids"] + [eos]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def collate(pairs, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) to a batch: input_ids/attention_mask/labels (B, T)."""
    width = max(len(x) for x, _ in pairs)
    ids = torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in pairs], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in pairs], device=device)
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in pairs], device=device)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_indices(step: int, lengths: Sequence[int], batch_size: int, seed: int,
                  group_size: int = 8) -> list[int]:
    """Example indices of batch ``step``, a function of (seed, step) only -- what makes
    resuming exact.

    Each epoch is a seeded permutation of the examples, cut into groups of
    ``group_size`` batches; inside a group examples are sorted by length before being cut
    into batches (less padding, as transformers' ``group_by_length``), and the group's
    batches are then visited in a seeded random order.
    """
    n = len(lengths)
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen)[:per_epoch * batch_size].tolist() if n >= batch_size \
        else torch.randperm(n, generator=gen).tolist()
    group = batch_size * group_size
    g, j = divmod(k, group_size)
    members = sorted(perm[g * group:(g + 1) * group], key=lambda i: (lengths[i], i))
    batches = [members[b:b + batch_size] for b in range(0, len(members), batch_size)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 100_003 + epoch * 7919 + g))
    return batches[order[j].item()] if j < len(batches) else batches[-1]


def make_optimizer(params, config: TrainConfig):
    """torch AdamW or plain SGD, or bitsandbytes' paged AdamW (32- or 8-bit states; CUDA only)."""
    params = list(params)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if not all(p.is_cuda for p in params):
        raise ValueError(f"optimizer={config.optimizer!r} pages its state between GPU and CPU memory "
                         f"and needs CUDA parameters; use optimizer='adamw' on CPU")
    import bitsandbytes as bnb  # here, not at the top: only the CUDA-only paged optimizers need it

    cls = bnb.optim.PagedAdamW32bit if config.optimizer == "paged_adamw_32bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


CHECKPOINT_FORMAT = "lora_lab-checkpoint-1"


def _plain(obj, where: str):
    """``obj`` as what ``torch.load(weights_only=True)`` accepts: tensors, dicts, lists,
    tuples, str, int, float, bool, None (numpy scalars become Python numbers)."""
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(
            obj, (torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    for kind in (bool, int, float, str):  # subclasses (numpy.float64, IntEnum, ...) as the plain type
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, dict):
        return {_plain(k, where): _plain(v, where) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_plain(v, where) for v in obj)
    if isinstance(obj, list):
        return [_plain(v, where) for v in obj]
    if callable(getattr(obj, "item", None)) and getattr(obj, "ndim", None) == 0:  # numpy scalar
        return obj.item()
    raise ValueError(f"save_checkpoint: {where} holds a {type(obj).__name__}, which a checkpoint cannot "
                     "store (only tensors, numbers, strings, lists and dicts: it is loaded with "
                     "torch.load(weights_only=True), which refuses other objects)")


def save_checkpoint(path: str | Path, model, optimizer, result: TrainResult, config: TrainConfig) -> Path:
    """Write trainable weights + optimizer state + progress to ``path`` atomically.

    Only tensors, numbers, strings, lists and dicts are written, so that
    :func:`load_checkpoint` can read it with ``torch.load(weights_only=True)`` (no
    arbitrary unpickling).
    """
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(config), "step": result.step,
               "trainable": {n: p.detach().cpu() for n, p in _trainable(model).items()},
               "optimizer": optimizer.state_dict(), "losses": result.losses, "lrs": result.lrs,
               "evals": result.evals, "rng": torch.get_rng_state()}
    payload = {k: _plain(v, k) for k, v in payload.items()}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _read_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)``, its failures turned into clear ValueErrors."""
    import pickle
    import zipfile

    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a checkpoint file path (str or Path), got path={path!r}")
    if not Path(path).is_file():
        raise ValueError(f"{path} is not a readable checkpoint: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "global" in text.lower():
            raise ValueError(f"{path} is not a readable checkpoint: it holds objects other than tensors, "
                             "numbers, strings, lists and dicts, and lora_lab refuses to unpickle "
                             f"them (torch.load(weights_only=True) said: {text.splitlines()[0]})") from None
        raise ValueError(f"{path} is not a readable checkpoint (corrupt pickle: {text.splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError,
            TypeError, AttributeError) as err:  # truncated, corrupt or foreign file
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{path} is not a readable checkpoint ({err.__class__.__name__}: {first}); "
                         "it is truncated, corrupt or not a lora_lab checkpoint") from None


def load_checkpoint(path: str | Path, model, optimizer) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint dict.

    The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings,
    lists and dicts only, so a file holding other objects is refused, never executed.
    Everything is checked before the model or optimizer changes.

    Raises:
        ValueError: the file is missing, truncated, corrupt, holds other objects or is not a
            lora_lab checkpoint, or its trainable weights do not match the model's (names
            or shapes), with the first difference named.
    """
    ckpt = _read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a lora_lab checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    kinds = {"trainable": dict, "optimizer": dict, "step": int, "losses": list, "lrs": list, "evals": list}
    for key, kind in kinds.items():
        if not isinstance(ckpt.get(key), kind) or kind is int and (isinstance(ckpt[key], bool) or ckpt[key] < 0):
            raise ValueError(f"{path}: checkpoint entry {key!r} must be a {kind.__name__}"
                             f"{' >= 0' if kind is int else ''}, got {type(ckpt.get(key)).__name__}; "
                             "the file is not a usable lora_lab checkpoint")
    params = _trainable(model)
    if set(params) != set(ckpt["trainable"]):
        diff = sorted(set(params) ^ set(ckpt["trainable"]))
        raise ValueError(f"checkpoint {path} does not match the model's trainable weights (e.g. {diff[:3]}); "
                         f"resume with the same --model, --r and --target-modules")
    for n, p in params.items():
        saved = ckpt["trainable"][n]
        if not isinstance(saved, torch.Tensor) or saved.shape != p.shape:
            got = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise ValueError(f"checkpoint weight {n} has shape {got}, model has {tuple(p.shape)}")
        if saved.dtype.is_floating_point and not torch.isfinite(saved).all():
            raise ValueError(f"checkpoint weight {n} contains NaN/inf; the checkpoint is corrupt")
    try:  # checks the parameter groups before changing anything
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path}: its optimizer state does not fit this optimizer "
                         f"({err.__class__.__name__}: {err})") from None
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ckpt["trainable"][n].to(p.device, p.dtype))
    return ckpt


def rank_share(idx: Sequence[int], data, rank: int, world_size: int) -> tuple[list[int], float]:
    """Process ``rank``'s contiguous share of global batch ``idx`` (sizes differ by at most one)
    and the factor on its mean loss that makes the gradient averaged over ``world_size``
    processes equal the global batch's: ``world_size · its answer tokens / the batch's``
    (tokens counted as the causal-LM loss counts them, labels after the first)."""
    base, extra = divmod(len(idx), world_size)
    start = rank * base + min(rank, extra)
    mine = list(idx[start:start + base + (rank < extra)])
    if not mine:
        raise ValueError(f"a global batch of {len(idx)} examples cannot be split over world_size={world_size} "
                         "processes; use batch_size >= world_size (and at least as many examples)")

    def tokens(ids):
        return sum(sum(y != -100 for y in data[i][1][1:]) for i in ids)

    return mine, world_size * tokens(mine) / max(1, tokens(idx))


class _StopFlag:
    """Turns SIGINT into a flag checked between steps (main thread only; restored after).
    Off in a multi-process run, where the launcher (torchrun) handles signals."""

    def __init__(self, enabled: bool = True):
        self.stop, self._old, self.enabled = False, None, enabled

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(model, tokenizer, examples: Sequence[Example], config: TrainConfig = TrainConfig(), *,
          eval_fn: Callable[[object], dict] | None = None, out_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True, optimizer=None,
          step_callback: Callable[[int, float], None] | None = None, rank: int = 0,
          world_size: int = 1) -> TrainResult:
    """Train ``model``'s trainable parameters on ``examples``; see the module docstring.

    Args:
        model: a causal LM whose parameters with ``requires_grad`` are trained.
        tokenizer: its tokenizer (EOS used as start marker and padding).
        examples: training examples (:func:`lora_lab.corpus.task.make_split`).
        config: :class:`TrainConfig`.
        eval_fn: called as ``eval_fn(model)`` every ``config.eval_every`` steps and at the end;
            returns a dict of metrics, stored in ``result.evals``.
        out_dir: folder for ``checkpoint.pt`` (needed for checkpoints and ``resume``).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        progress: show a tqdm bar (notebook or terminal).
        optimizer: use this optimizer instead of :func:`make_optimizer`.
        step_callback: called as ``step_callback(step, loss)`` after each step (a live plot;
            an exception raised there stops training and propagates).
        rank, world_size: this process's place in a multi-process run (``torch.distributed``
            initialized, ``model`` wrapped in DDP or sharded by FSDP): it trains on its share of
            each global batch of ``config.batch_size`` (:func:`rank_share`); no checkpoints, no
            progress bar but on rank 0, SIGINT left to the launcher. Default: one process.

    Returns:
        :class:`TrainResult` (``interrupted=True`` if stopped by SIGINT, checkpoint written).
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("examples must not be empty")
    if (config.checkpoint_every or resume) and out_dir is None:
        raise ValueError("out_dir is needed for checkpoint_every > 0 or resume=True")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1 \
            or isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank, world_size must be integers with 0 <= rank < world_size, got {rank!r}, {world_size!r}")
    if world_size > 1 and (config.checkpoint_every or resume):
        raise ValueError(f"checkpoint_every={config.checkpoint_every}, resume={resume}: checkpoints are "
                         "single-process; use checkpoint_every=0 and resume=False with world_size > 1")
    if world_size > 1 and config.batch_size < world_size:
        raise ValueError(f"batch_size={config.batch_size} is the global batch and must be >= world_size={world_size}")
    params = list(_trainable(model).values())
    if not params:
        raise ValueError("the model has no trainable parameters (did you forget add_lora?)")
    device = params[0].device
    optimizer = optimizer or make_optimizer(params, config)
    result = TrainResult()
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, model, optimizer)
        result.step = result.start_step = ckpt["step"]
        result.losses, result.lrs, result.evals = list(ckpt["losses"]), list(ckpt["lrs"]), list(ckpt["evals"])
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    data = encode_examples(tokenizer, examples)
    lengths = [len(x) for x, _ in data]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    t0 = time.time()
    bar = tqdm(total=config.steps, initial=result.step, disable=not progress or rank != 0, desc="training",
               unit="step")
    with _StopFlag(enabled=world_size == 1) as flag:
        while result.step < config.steps and not flag.stop:
            lr = lr_at(result.step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = batch_indices(result.step, lengths, config.batch_size, config.seed)
            if world_size > 1:
                idx, share = rank_share(idx, data, rank, world_size)
            batch = collate([data[i] for i in idx], pad, device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed * 1_000_003 + result.step)  # dropout masks depend on (seed, step)
                loss = model(**batch).loss
                if world_size > 1:
                    loss = loss * share
                loss.backward()
            if world_size > 1:  # the global batch's mean loss, as one process would log it
                loss = loss.detach() / world_size
                torch.distributed.all_reduce(loss)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.step += 1
            result.losses.append(loss.item())
            result.lrs.append(lr)
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", refresh=False)
            if step_callback is not None:
                step_callback(result.step, result.losses[-1])
            if eval_fn is not None and config.eval_every and result.step % config.eval_every == 0 \
                    and result.step < config.steps:
                t_eval = time.time()
                result.evals.append((result.step, eval_fn(model)))
                result.eval_seconds += time.time() - t_eval
                model.train()
            if ckpt_path is not None and config.checkpoint_every and result.step % config.checkpoint_every == 0:
                save_checkpoint(ckpt_path, model, optimizer, result, config)
        result.interrupted = flag.stop and result.step < config.steps
    bar.close()
    if result.interrupted and ckpt_path is not None:
        save_checkpoint(ckpt_path, model, optimizer, result, config)
    elif eval_fn is not None and not result.interrupted and result.step > result.start_step:
        t_eval = time.time()
        result.evals.append((result.step, eval_fn(model)))
        result.eval_seconds += time.time() - t_eval
    if ckpt_path is not None and not result.interrupted and config.checkpoint_every:
        save_checkpoint(ckpt_path, model, optimizer, result, config)
    result.seconds = time.time() - t0
    model.eval()
    return result
