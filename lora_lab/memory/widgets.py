"""Explorer for the memory chapter: full fine-tuning vs adapters on a (quantized) base."""

from __future__ import annotations

import warnings

import ipywidgets as W

from lora_lab._widgets import build_explorer
from lora_lab.memory.plots import plot_memory_breakdown
from lora_lab.memory.predict import BASE_DTYPES, COMPONENTS, DTYPE_BYTES, OPTIMIZERS, training_memory
from lora_lab.memory.shapes import LAB_GPT2_CONFIG, PRESET_NAMES, model_shape

RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
BATCH_MAX = 64
GIB = 2**30  # GPU memory is sold and reported in GiB: an "80 GB" card holds 80 GiB


def compute_dtype_for(base_dtype: str) -> str:
    """The dtype the forward and backward run in on a base stored as ``base_dtype``: the base's
    own float dtype, bf16 for a quantized (int8, nf4) base."""
    return base_dtype if base_dtype in DTYPE_BYTES else "bf16"


def model_bounds(model: str) -> dict[str, tuple[int, ...]]:
    """The explorer's choices that make sense for ``model``: sequence lengths up to its context
    (GPT-2's ``n_positions``, a Llama's ``max_position_embeddings``; the context itself is
    included) and ranks up to its narrowest block linear (``ModelShape.max_rank``)."""
    shape = model_shape(model)
    top = shape.max_seq_len
    seqs = SEQ_LENS if top is None else tuple(sorted({s for s in SEQ_LENS if s <= top} | {top}))
    return {"seq_len": seqs, "r": tuple(r for r in RANKS if r <= shape.max_rank) or (RANKS[0],)}


def _clamp(value: int, options: tuple[int, ...]) -> int:
    """``value`` if it is an option, else the largest option below it (the smallest if none)."""
    below = [o for o in options if o <= value]
    return value if value in options else (below[-1] if below else options[0])


def memory_breakdowns(model: str = "llama-2-7b", r: int = 8, base_dtype: str = "nf4",
                      optimizer: str = "adamw", batch_size: int = 1, seq_len: int = 512,
                      gradient_checkpointing: bool = True) -> dict:
    """The explorer's two bars, like with like: full fine-tuning and adapters on a base stored as
    ``base_dtype`` (bf16: LoRA, nf4: QLoRA), with the same compute dtype
    (:func:`compute_dtype_for`), optimizer and workload. Full fine-tuning in a 16-bit dtype
    keeps an fp32 master copy (mixed precision); in fp32 the weights are their own master."""
    compute = compute_dtype_for(base_dtype)
    common = dict(optimizer=optimizer, batch_size=batch_size, seq_len=seq_len,
                  gradient_checkpointing=gradient_checkpointing, compute_dtype=compute)
    adapters = training_memory(model, "qlora" if base_dtype == "nf4" else "lora", r=r,
                               base_dtype=base_dtype, **common)
    full = training_memory(model, "full", base_dtype=compute, **common)
    full_label = "full fine-tuning, fp32" if compute == "fp32" else f"full fine-tuning, {compute} + fp32 master"
    base = base_dtype if compute == base_dtype else f"{base_dtype} base, {compute} compute"
    return {full_label: full,
            f"{'QLoRA' if base_dtype == 'nf4' else 'LoRA'} r={r}, {base}" + (" base" if base == base_dtype else ""):
            adapters}


def memory_readout(breakdowns: dict) -> str:
    """HTML table of totals and components in GB (10⁹ bytes); the totals also in GiB (2³⁰ bytes,
    the unit GPU memory is sold and reported in). Each total in bytes sits in a ``data-total``
    attribute."""
    rows = "".join(f"<tr><td>{c}</td>" + "".join(f"<td>{b.components[c] / 1e9:,.3f}</td>"
                                                   for b in breakdowns.values()) + "</tr>"
                   for c in COMPONENTS)
    head = "".join(f"<th>{k}</th>" for k in breakdowns)
    totals = "".join(f"<td><b data-total=\"{b.total}\">{b.total / 1e9:,.2f} GB</b> = "
                     f"{b.total / GIB:,.2f} GiB</td>" for b in breakdowns.values())
    return (f"<table><tr><th>GB</th>{head}</tr>{rows}<tr><td><b>total</b></td>{totals}</tr></table>")


def memory_explorer(model: str = "llama-2-7b", r: int = 8, base_dtype: str = "nf4",
                    optimizer: str = "adamw", batch_size: int = 1, seq_len: int = 512,
                    gradient_checkpointing: bool = True):
    """Controls: model preset, rank, base precision, optimizer, batch × sequence, checkpointing.

    The sequence and rank sliders are bounded by the chosen model (:func:`model_bounds`):
    choosing another model updates their ranges and clamps their values.
    """
    models = [m for m in PRESET_NAMES if m != "lab-gpt2" or LAB_GPT2_CONFIG.exists()]
    style = {"description_width": "initial"}
    bounds = model_bounds(model)
    controls = {
        "model": W.Dropdown(options=models, value=model, description="model", style=style),
        "r": W.SelectionSlider(options=bounds["r"], value=_clamp(r, bounds["r"]), description="rank r",
                               style=style),
        "base_dtype": W.Dropdown(options=BASE_DTYPES, value=base_dtype, description="base precision",
                                 style=style),
        "optimizer": W.Dropdown(options=OPTIMIZERS, value=optimizer, description="optimizer", style=style),
        "batch_size": W.IntSlider(value=batch_size, min=1, max=BATCH_MAX, description="batch",
                                  continuous_update=False, style=style),
        "seq_len": W.SelectionSlider(options=bounds["seq_len"], value=_clamp(seq_len, bounds["seq_len"]),
                                     description="sequence", continuous_update=False, style=style),
        "gradient_checkpointing": W.Checkbox(value=gradient_checkpointing,
                                             description="gradient checkpointing"),
    }
    state = {"rebounding": False, "last": None}

    def rebound(change):  # registered before build_explorer's observers, so it runs first
        new = model_bounds(change["new"])
        state["rebounding"] = True  # setting options resets a slider: skip those refreshes
        try:
            for name, options in new.items():
                control = controls[name]
                if tuple(control.options) != options:
                    value = _clamp(control.value, options)
                    control.options = options
                    control.value = value
        finally:
            state["rebounding"] = False

    controls["model"].observe(rebound, names="value")

    def update(**values):
        if state["rebounding"] and state["last"] is not None:
            return state["last"]  # the model's own observer redraws once the sliders are bounded
        with warnings.catch_warnings(record=True) as caught:  # r above a layer's width
            warnings.simplefilter("always")
            bars = memory_breakdowns(**values)
        html = memory_readout(bars)
        if caught:
            html += f"<br>⚠️ {caught[0].message}"
        state["last"] = html, plot_memory_breakdown(bars, title=f"{values['model']}: batch {values['batch_size']}"
                                                    f" × {values['seq_len']} tokens")
        return state["last"]

    return build_explorer(controls, update, title="Training memory: full fine-tuning vs adapters")
