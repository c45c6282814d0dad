"""Model shapes for memory accounting: GPT-2 and Llama-style decoders, as numbers only.

A :class:`ModelShape` holds what memory depends on (layers, width, heads, vocabulary,
MLP width, tied head) and lists the linear layers of one block, the layers LoRA wraps
and 4-bit recipes quantize. Presets are shapes, not downloads; ``"lab-gpt2"`` is read
lazily from the course's shipped ``data/lab-gpt2/config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ARCHS = ("gpt2", "llama")
ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu")
LAB_GPT2_CONFIG = Path(__file__).resolve().parents[2] / "data" / "lab-gpt2" / "config.json"


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory depends on.

    ``arch="gpt2"``: learned positions, LayerNorm with bias, fused ``c_attn`` (h -> 3h),
    GELU MLP (h -> d_ff -> h), every linear has a bias. ``arch="llama"``: rotary
    positions, RMSNorm, q/k/v/o projections with ``n_kv_heads`` key/value heads (GQA),
    SwiGLU MLP (gate, up: h -> d_ff; down: d_ff -> h), no biases.

    Args:
        n_layers, d_model, n_heads, vocab_size, d_ff: positive sizes; ``d_model`` must
            be divisible by ``n_heads``.
        n_kv_heads: key/value heads (Llama GQA); ``None`` means ``n_heads``.
        n_positions: learned position table size (GPT-2), 0 for rotary models.
        tied_embeddings: the output head reuses the token embedding matrix.
        dropout: dropout probability used in training (GPT-2's config: 0.1).
        activation: MLP nonlinearity (decides which tensors it saves for backward).
        context_length: the longest sequence a rotary model was trained on
            (``max_position_embeddings``), 0 if unknown; GPT-2 is bounded by ``n_positions``.
    """

    name: str
    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int
    d_ff: int
    n_kv_heads: int | None = None
    n_positions: int = 0
    tied_embeddings: bool = False
    dropout: float = 0.0
    activation: str = "silu"
    context_length: int = 0

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for field in ("n_layers", "d_model", "n_heads", "vocab_size", "d_ff"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        kv = self.kv_heads
        if not isinstance(kv, int) or kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads!r}")
        if not isinstance(self.n_positions, int) or self.n_positions < 0:
            raise ValueError(f"n_positions must be an integer >= 0, got {self.n_positions!r}")
        if not isinstance(self.context_length, int) or self.context_length < 0:
            raise ValueError(f"context_length must be an integer >= 0, got {self.context_length!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def max_seq_len(self) -> int | None:
        """The longest sequence the model takes: GPT-2's position table, a rotary model's
        ``context_length``; ``None`` if unknown."""
        return (self.n_positions if self.arch == "gpt2" else self.context_length) or None

    @property
    def max_rank(self) -> int:
        """The largest useful LoRA rank: the smallest ``min(in, out)`` of a block linear."""
        return min(min(i, o) for _, i, o, _ in self.block_linears())

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def block_linears(self) -> list[tuple[str, int, int, bool]]:
        """The linear layers of one block as ``(name, in_features, out_features, has_bias)``."""
        h, f, kv = self.d_model, self.d_ff, self.kv_heads * self.head_dim
        if self.arch == "gpt2":  # Conv1D layers; mlp.c_proj and attn.c_proj share a short name
            return [("c_attn", h, 3 * h, True), ("attn.c_proj", h, h, True),
                    ("c_fc", h, f, True), ("mlp.c_proj", f, h, True)]
        return [("q_proj", h, h, False), ("k_proj", h, kv, False), ("v_proj", h, kv, False),
                ("o_proj", h, h, False), ("gate_proj", h, f, False), ("up_proj", h, f, False),
                ("down_proj", f, h, False)]

    def other_params(self) -> dict[str, int]:
        """Parameters outside the blocks' linear layers: embeddings, norms, head, biases."""
        h, L = self.d_model, self.n_layers
        out = {"token embedding": self.vocab_size * h}
        if self.arch == "gpt2":
            out["position embedding"] = self.n_positions * h
            out["norms"] = (2 * L + 1) * 2 * h  # LayerNorm weight + bias
            out["linear biases"] = L * sum(o for _, _, o, b in self.block_linears() if b)
        else:
            out["norms"] = (2 * L + 1) * h  # RMSNorm weight only
        out["output head"] = 0 if self.tied_embeddings else self.vocab_size * h
        return out

    def param_numels(self) -> list[int]:
        """Sizes of every parameter tensor, as a model has them (a tied head counted once)."""
        h, L = self.d_model, self.n_layers
        block = [n for _, i, o, b in self.block_linears() for n in ((i * o, o) if b else (i * o,))]
        norm = [h, h] if self.arch == "gpt2" else [h]  # LayerNorm weight+bias, RMSNorm weight
        out = [self.vocab_size * h] + ([self.n_positions * h] if self.n_positions else [])
        out += (block + norm * 2) * L + norm
        return out + ([] if self.tied_embeddings else [self.vocab_size * h])

    def n_params(self) -> int:
        """Total parameter count (tied weights counted once)."""
        linear = self.n_layers * sum(i * o for _, i, o, _ in self.block_linears())
        return linear + sum(self.other_params().values())


def _gpt2(name, n_layers, d_model, n_heads, **kw) -> ModelShape:
    return ModelShape(name, "gpt2", n_layers, d_model, n_heads, kw.pop("vocab_size", 50257),
                      kw.pop("d_ff", 4 * d_model), n_positions=kw.pop("n_positions", 1024),
                      tied_embeddings=True, dropout=kw.pop("dropout", 0.1),
                      activation=kw.pop("activation", "gelu_new"))


def _llama(name, n_layers, d_model, n_heads, vocab_size, d_ff, n_kv_heads=None, context=4096) -> ModelShape:
    return ModelShape(name, "llama", n_layers, d_model, n_heads, vocab_size, d_ff, n_kv_heads,
                      context_length=context)


PRESETS: dict[str, ModelShape] = {s.name: s for s in (
    _gpt2("gpt2", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _llama("llama-2-7b", 32, 4096, 32, 32000, 11008),
    _llama("llama-3-8b", 32, 4096, 32, 128256, 14336, n_kv_heads=8, context=8192),
    _llama("llama-2-13b", 40, 5120, 40, 32000, 13824),
    _llama("llama-65b", 80, 8192, 64, 32000, 22016, context=2048),  # LLaMA 1
    _llama("llama-2-70b", 80, 8192, 64, 32000, 28672, n_kv_heads=8),
)}
PRESET_NAMES = ("gpt2", "gpt2-medium", "lab-gpt2", "llama-2-7b", "llama-3-8b", "llama-2-13b",
                "llama-65b", "llama-2-70b")


def shape_from_config(config, name: str | None = None) -> ModelShape:
    """The :class:`ModelShape` of a transformers ``GPT2Config``/``LlamaConfig`` (or its dict)."""
    c = config if isinstance(config, dict) else config.to_dict()
    kind = c.get("model_type")
    if kind == "gpt2":
        drops = {c.get("resid_pdrop", 0.1), c.get("embd_pdrop", 0.1), c.get("attn_pdrop", 0.1)}
        if len(drops) != 1:
            raise ValueError(f"config uses different dropouts {sorted(drops)}; ModelShape has one")
        return ModelShape(name or c.get("_name_or_path") or "gpt2-config", "gpt2", c["n_layer"],
                          c["n_embd"], c["n_head"], c["vocab_size"],
                          c.get("n_inner") or 4 * c["n_embd"], n_positions=c["n_positions"],
                          tied_embeddings=c.get("tie_word_embeddings", True), dropout=drops.pop(),
                          activation=c.get("activation_function", "gelu_new"))
    if kind == "llama":
        return ModelShape(name or "llama-config", "llama", c["num_hidden_layers"], c["hidden_size"],
                          c["num_attention_heads"], c["vocab_size"], c["intermediate_size"],
                          c.get("num_key_value_heads"), tied_embeddings=c.get("tie_word_embeddings", False),
                          dropout=c.get("attention_dropout", 0.0), activation=c.get("hidden_act", "silu"),
                          context_length=c.get("max_position_embeddings") or 0)
    raise ValueError(f"config model_type must be 'gpt2' or 'llama', got {kind!r}")


def model_shape(name: str | ModelShape) -> ModelShape:
    """A preset by name (see ``PRESET_NAMES``); ``"lab-gpt2"`` is read from the shipped config.

    Raises:
        ValueError: unknown name, or ``"lab-gpt2"`` before ``data/lab-gpt2/config.json`` exists.
    """
    if isinstance(name, ModelShape):
        return name
    if name == "lab-gpt2":
        if not LAB_GPT2_CONFIG.exists():
            raise ValueError(f"model 'lab-gpt2' needs {LAB_GPT2_CONFIG}, which does not exist yet")
        return shape_from_config(json.loads(LAB_GPT2_CONFIG.read_text()), name="lab-gpt2")
    if name not in PRESETS:
        raise ValueError(f"model must be one of {PRESET_NAMES} or a ModelShape, got {name!r}")
    return PRESETS[name]
