"""Starting several processes and finding one's place among them (``torch.distributed``).

A launcher (``torchrun``, ``accelerate launch``) starts one Python process per device and
tells each its place in the environment: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``. :func:`init_distributed` reads them and joins the process group (gloo on
CPU, NCCL on GPUs). :func:`spawn` does the launcher's job from Python (a notebook cell, a
test): it runs a function in fresh processes joined in a gloo group and returns what each
rank returned. :func:`torchrun` starts ``python -m lora_lab ...`` under torch's launcher from
Python and passes its log on line by line. :func:`save_adapter_atomic` is how rank 0 alone
publishes the adapter.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from lora_lab.lora.io import save_adapter

BACKEND = "gloo"  # CPU; torchrun on GPUs would use "nccl"
ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_world(environ=None) -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's ``RANK`` / ``WORLD_SIZE`` variables; ``(0, 1)``
    when neither is set (a plain ``python -m lora_lab``).

    Raises:
        ValueError: only one of them is set, one is not an integer, or not ``0 <= rank < world_size``.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return 0, 1
    rank, world = env.get("RANK"), env.get("WORLD_SIZE")
    try:
        r, w = int(rank), int(world)
    except (TypeError, ValueError):
        raise ValueError(f"RANK={rank!r}, WORLD_SIZE={world!r}: set both to integers (torchrun and accelerate "
                         "launch do) or neither") from None
    if not 0 <= r < w:
        raise ValueError(f"RANK={r}, WORLD_SIZE={w}: need 0 <= RANK < WORLD_SIZE")
    return r, w


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group the launcher described (``env://``) if ``WORLD_SIZE > 1`` and it is
    not joined yet; returns ``(rank, world_size)``. ``backend`` default: NCCL with CUDA, else gloo."""
    rank, world = launched_world()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else BACKEND),
                                rank=rank, world_size=world)
    return rank, world


def close_distributed() -> None:
    """Leave the process group if this process joined one (the end of a launched run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn, world_size: int, port: int, folder: str, threads: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    dist.init_process_group(BACKEND, rank=rank, world_size=world_size)
    try:
        out = fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(out, Path(folder) / f"rank{rank}.pt")


def spawn(fn: Callable, world_size: int = 2, *args, threads: int = 1) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a gloo
    group on a free port (``threads`` CPU threads each); returns the ranks' return values in
    rank order.

    ``fn`` must be importable (a module-level function of a package, not a notebook cell's);
    what it returns must be tensors, numbers, strings, lists or dicts (passed back through
    ``torch.save`` and ``torch.load(weights_only=True)``).

    Raises:
        ValueError: ``world_size`` or ``threads`` below 1.
        torch.multiprocessing.ProcessRaisedException / ProcessExitedException: a rank raised
            (its traceback is in the message) or died; the other ranks are terminated.
    """
    for name, value in (("world_size", world_size), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    # a fork server imports torch, transformers and lora_lab once; each rank is forked from it
    # (a clean process: no threads, no process group), not started and imported from scratch
    multiprocessing.set_forkserver_preload(["lora_lab.distributed"])
    with tempfile.TemporaryDirectory(prefix="lora_lab-spawn-") as folder:
        torch.multiprocessing.start_processes(_worker, args=(fn, world_size, free_port(), folder, threads, args),
                                              nprocs=world_size, join=True, start_method="forkserver")
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def torchrun(args, nproc_per_node: int = 2, *, threads: int = 1, log: Callable[[str], object] | None = print,
             cwd: str | os.PathLike | None = None, timeout: float | None = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m lora_lab ARGS`` (torch's launcher, ``python -m
    torch.distributed.run``, on 127.0.0.1 and a free port); ``nproc_per_node=1`` runs plain
    ``python -m lora_lab ARGS``, the one-process run. Each process gets ``threads`` CPU threads.
    Every line of its output (stdout and stderr together) goes to ``log`` as it arrives; returns
    the finished process, ``stdout`` holding the whole log. A failed launch is not an exception:
    read ``returncode``.

    Raises:
        ValueError: ``nproc_per_node`` or ``threads`` below 1.
        subprocess.TimeoutExpired: still running after ``timeout`` seconds (it is killed).
    """
    for name, value in (("nproc_per_node", nproc_per_node), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node), "--master-addr",
                "127.0.0.1", "--master-port", str(free_port())] if nproc_per_node > 1 else []
    cmd = [sys.executable, *launcher, "-m", "lora_lab", *map(str, args)]
    root = str(Path(__file__).resolve().parents[2])  # the lora_lab checkout, importable by every process
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    lines, expired = [], threading.Event()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        def kill():
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if log is not None:
                    log(line.rstrip("\n"))
            proc.wait()
        finally:
            if timer:
                timer.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout, output="".join(lines))
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), None)


def save_adapter_atomic(model, path: str | os.PathLike, config=None, **kwargs) -> Path:
    """:func:`lora_lab.lora.io.save_adapter` into a temporary sibling folder, then renamed to
    ``path``: a crash leaves the previous adapter folder (or none), never a partial one. An
    existing ``path`` is moved aside first and deleted after the rename (folders cannot
    replace each other in one rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # (not mkdtemp: the adapter folder gets the usual permissions)
    old = None
    try:
        save_adapter(model, tmp, config, **kwargs)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / path.name).exists() and not path.exists():
            os.replace(old / path.name, path)  # put the previous adapter back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path
