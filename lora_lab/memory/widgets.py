"""Explorer for the memory chapter: full fine-tuning vs adapters on a (quantized) base."""

from __future__ import annotations

import warnings

import ipywidgets as W

from lora_lab.memory.predict import BASE_DTYPES, COMPONENTS, OPTIMIZERS, training_memory
from lora_lab.memory.plots import plot_memory_breakdown
from lora_lab.memory.shapes import LAB_GPT2_CONFIG, PRESET_NAMES
from lora_lab._widgets import build_explorer

RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
BATCH_MAX = 64


def memory_breakdowns(model: str = "llama-2-7b", r: int = 8, base_dtype: str = "nf4",
                      optimizer: str = "adamw", batch_size: int = 1, seq_len: int = 512,
                      gradient_checkpointing: bool = True) -> dict:
    """The explorer's two bars: full fine-tuning (16-bit + fp32 master) and adapters on a base
    stored as ``base_dtype`` (bf16: LoRA, nf4: QLoRA), same optimizer and workload."""
    common = dict(optimizer=optimizer, batch_size=batch_size, seq_len=seq_len,
                  gradient_checkpointing=gradient_checkpointing)
    adapters = training_memory(model, "qlora" if base_dtype == "nf4" else "lora", r=r,
                               base_dtype=base_dtype, **common)
    return {"full fine-tuning": training_memory(model, "full", **common),
            f"LoRA r={r}, {base_dtype} base": adapters}


def memory_readout(breakdowns: dict) -> str:
    """HTML table of totals and components; each total also sits in a ``data-total`` attribute."""
    rows = "".join(f"<tr><td>{c}</td>" + "".join(f"<td>{b.components[c] / 1e9:,.3f}</td>"
                                                   for b in breakdowns.values()) + "</tr>"
                   for c in COMPONENTS)
    head = "".join(f"<th>{k}</th>" for k in breakdowns)
    totals = "".join(f"<td><b data-total=\"{b.total}\">{b.total / 1e9:,.2f} GB</b></td>"
                     for b in breakdowns.values())
    return (f"<table><tr><th>GB</th>{head}</tr>{rows}<tr><td><b>total</b></td>{totals}</tr></table>")


def memory_explorer(model: str = "llama-2-7b", r: int = 8, base_dtype: str = "nf4",
                    optimizer: str = "adamw", batch_size: int = 1, seq_len: int = 512,
                    gradient_checkpointing: bool = True):
    """Controls: model preset, rank, base precision, optimizer, batch × sequence, checkpointing."""
    models = [m for m in PRESET_NAMES if m != "lab-gpt2" or LAB_GPT2_CONFIG.exists()]
    style = {"description_width": "initial"}
    controls = {
        "model": W.Dropdown(options=models, value=model, description="model", style=style),
        "r": W.SelectionSlider(options=RANKS, value=r, description="rank r", style=style),
        "base_dtype": W.Dropdown(options=BASE_DTYPES, value=base_dtype, description="base precision",
                                 style=style),
        "optimizer": W.Dropdown(options=OPTIMIZERS, value=optimizer, description="optimizer", style=style),
        "batch_size": W.IntSlider(value=batch_size, min=1, max=BATCH_MAX, description="batch",
                                  continuous_update=False, style=style),
        "seq_len": W.SelectionSlider(options=SEQ_LENS, value=seq_len, description="sequence",
                                     continuous_update=False, style=style),
        "gradient_checkpointing": W.Checkbox(value=gradient_checkpointing,
                                             description="gradient checkpointing"),
    }

    def update(**values):
        with warnings.catch_warnings(record=True) as caught:  # r above a layer's width
            warnings.simplefilter("always")
            bars = memory_breakdowns(**values)
        html = memory_readout(bars)
        if caught:
            html += f"<br>⚠️ {caught[0].message}"
        return html, plot_memory_breakdown(bars, title=f"{values['model']}: batch {values['batch_size']}"
                                           f" × {values['seq_len']} tokens")

    return build_explorer(controls, update, title="Training memory: full fine-tuning vs adapters")
