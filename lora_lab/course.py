"""The course map and an environment check for the welcome notebook."""

from __future__ import annotations

import importlib.metadata as md
import platform
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    Chapter("01_rank.ipynb", "Matrix rank", "see why a weight update can be low-rank, via SVD and Eckart–Young", "lowrank"),
    Chapter("02_lora_layer.ipynb", "The LoRA layer", "build LoRA from scratch, zero-init, alpha, merge; match PEFT", "lora"),
    Chapter("03_quantization.ipynb", "4-bit quantization", "derive NF4, blockwise + double quantization; match bitsandbytes", "quant"),
    Chapter("04_memory.ipynb", "Memory hierarchy", "predict and measure what fine-tuning keeps in memory", "memory"),
    Chapter("05_qlora_gpt2.ipynb", "QLoRA on GPT-2", "quantize a GPT-2 to NF4, train adapters, measure the effect", "train"),
)

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "ipywidgets",
            "matplotlib", "jupyterlab")


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
        import torch
        import bitsandbytes.functional as F
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
