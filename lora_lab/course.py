"""The course map and an environment check for the welcome notebook."""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The exact versions the committed notebook outputs were made with (``make lock`` refreshes it).
LOCK_FILE = ROOT / "requirements-lock.txt"


@dataclass(frozen=True)
class Chapter:
    notebook: str
    title: str
    you_will: str
    module: str

    @property
    def exists(self) -> bool:
        return (ROOT / "notebooks" / self.notebook).is_file()


CHAPTERS = (
    Chapter("00_welcome.ipynb", "Welcome", "check your set-up and try a widget", "course"),
    Chapter("01_rank.ipynb", "Matrix rank",
            "see why a weight update can be low-rank, via SVD and Eckart–Young", "lowrank"),
    Chapter("02_lora_layer.ipynb", "The LoRA layer",
            "build LoRA from scratch, zero-init, alpha, merge; match PEFT", "lora"),
    Chapter("03_quantization.ipynb", "4-bit quantization",
            "derive NF4, blockwise + double quantization; match bitsandbytes", "quant"),
    Chapter("04_memory.ipynb", "Memory hierarchy", "predict and measure what fine-tuning keeps in memory", "memory"),
    Chapter("05_qlora_gpt2.ipynb", "QLoRA on GPT-2",
            "quantize a GPT-2 to NF4, train adapters, measure the effect", "train"),
    Chapter("06_experiments.ipynb", "Experiments",
            "test what r, alpha, targets, init and 4 bits do, from sweeps and a Run button", "experiments"),
    Chapter("07_many_adapters.ipynb", "Many adapters",
            "serve two task adapters from one 4-bit base: switch, disable, combine, mixed batches", "adapters"),
    Chapter("08_scaling_out.ipynb", "Scaling out",
            "train the recipe under DDP and FSDP, through TRL and Trainer, and measure two memory levers",
            "distributed"),
)

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "ipywidgets",
            "matplotlib", "jupyterlab")
# The packages whose version can change what a notebook prints (or whether the tests run).
KEY_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers",
                "safetensors", "numpy", "scipy", "matplotlib", "ipywidgets", "jupyterlab",
                "nbval", "pytest", "playwright")


@dataclass
class EnvReport:
    python: str
    versions: dict[str, str]
    device: str                      # "cuda (<name>)" or "cpu"
    bnb_4bit_ok: bool
    bnb_4bit_detail: str
    missing: list[str] = field(default_factory=list)


def check_bnb_4bit(device: str = "cpu") -> tuple[bool, str]:
    """Quantize a seeded 64×64 tensor to NF4 with bitsandbytes and back; (works?, detail)."""
    try:
        import bitsandbytes.functional as F
        import torch
        x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)).to(device)
        q, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
        err = (F.dequantize_4bit(q, state) - x).abs().max().item()
        ok = q.dtype == torch.uint8 and q.numel() == x.numel() // 2 and err < 0.5
        return ok, f"NF4 round trip on {device}: {x.numel()} values -> {q.numel()} bytes, max error {err:.3f}"
    except Exception as e:  # report, don't crash the welcome page
        return False, f"{type(e).__name__}: {e}"


def check_environment() -> EnvReport:
    """Versions of the course's packages, the compute device, and whether bnb 4-bit works."""
    versions, missing = {}, []
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
    import torch
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    ok, detail = check_bnb_4bit("cuda" if torch.cuda.is_available() else "cpu")
    return EnvReport(platform.python_version(), versions, device, ok, detail, missing)


def normalize_name(name: str) -> str:
    """A distribution name as pip compares it (PEP 503): lower case, runs of ``-_.`` -> ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """A version without its local label: ``2.13.0+cpu`` -> ``2.13.0`` (the build, not the release)."""
    return version.split("+", 1)[0]


def pinned_versions(lock: str | Path | None = None) -> dict[str, str]:
    """``{package: version}`` for every ``name==version`` line of the lock file.

    Names are normalized (:func:`normalize_name`); comments, blank lines and pip options are
    skipped. ``lock`` defaults to ``requirements-lock.txt`` at the repository root (the parent
    of the ``lora_lab`` package folder); a missing file gives ``{}`` (e.g. a wheel install).
    """
    path = LOCK_FILE if lock is None else Path(lock)
    if not path.is_file():
        return {}
    pins = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: expected 'name==version', got {raw!r}")
        pins[normalize_name(name.split("[", 1)[0].strip())] = version.split(";", 1)[0].strip()
    return pins


def installed_version(name: str) -> str | None:
    """The running environment's version of distribution ``name``, or None if it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def version_drift(packages=None, lock: str | Path | None = None) -> dict[str, tuple[str, str | None]]:
    """The pinned packages whose running version differs from the lock.

    Returns ``{package: (pinned, running)}``, ``running`` None for a package that is not
    installed; ``{}`` when everything matches (or there is no lock). A local build label is
    ignored (torch ``2.13.0+cpu`` matches the pin ``2.13.0``). ``packages`` restricts the check
    to those names (default: every package in the lock); a name the lock does not pin raises.
    """
    pins = pinned_versions(lock)
    if packages is None:
        names = list(pins)
    else:
        names = [normalize_name(p) for p in packages]
        unknown = [n for n in names if pins and n not in pins]
        if unknown:
            raise ValueError(f"packages {unknown} are not pinned in {lock or LOCK_FILE}")
    drift = {}
    for name in names:
        if name not in pins:
            continue
        running = installed_version(name)
        if running is None or public_version(running) != pins[name]:
            drift[name] = (pins[name], running)
    return drift
