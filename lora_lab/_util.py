"""The mechanisms every chapter shares, written once.

- layer kinds: :func:`is_conv1d` (GPT-2's transposed linear), :func:`is_bnb_4bit`;
- :func:`warn_rank_above_min`: the one warning for an ``r`` no matrix of that shape can use;
- :func:`enable_gradient_checkpointing`: one checkpoint per block, as transformers' Trainer;
- atomic file writes: a reader sees the old file or the new one, never half of one.

Replacing a submodule by name is torch's own ``model.set_submodule(name, module)``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from torch import nn


def is_conv1d(layer: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored (in, out)."""
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf")


def is_bnb_4bit(layer: nn.Module) -> bool:
    """A bitsandbytes ``Linear4bit`` (its weight is a ``Params4bit``)."""
    return type(getattr(layer, "weight", None)).__name__ == "Params4bit"


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each transformer block in the backward pass instead of storing its
    activations (non-reentrant, as transformers' ``Trainer`` asks for). Returns ``model``."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    return model


def warn_rank_above_min(r: int, d_out: int, d_in: int, *, names=("d_out", "d_in"), where: str = "",
                        stacklevel: int = 2) -> None:
    """Warn when ``r > min(d_out, d_in)``: B A cannot have rank above that, so the extra rank
    only adds parameters. ``names`` are the caller's words for the two sizes; ``stacklevel``
    is counted from the caller, as if it had called ``warnings.warn`` itself."""
    m = min(d_out, d_in)
    if r > m:
        n_out, n_in = names
        warnings.warn(f"r={r} is larger than min({n_out}, {n_in})={m}{where}: a ({n_out}={d_out}, "
                      f"{n_in}={d_in}) matrix has rank at most {m}, so the extra rank adds "
                      "parameters but cannot add rank", UserWarning, stacklevel=stacklevel + 1)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
