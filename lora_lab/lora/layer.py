"""The LoRA layer from scratch, injecting it into a model, merge/unmerge.

Convention (the LoRA paper's and PEFT's; CONTRIBUTING.md, "The A/B convention"):
    lora_A: (r, in_features)   down-projection, applied to x first, Kaiming-uniform init
    lora_B: (out_features, r)  up-projection, zero init
    delta_weight = (lora_B @ lora_A) * scaling            # (out, in), like nn.Linear.weight
    scaling      = lora_alpha / r   (rsLoRA: lora_alpha / sqrt(r))
    h = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling

Adapter files (PEFT's on-disk format) live in :mod:`lora_lab.lora.io`; ``lora_lab.lora``
exports both.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from lora_lab._util import is_bnb_4bit, is_conv1d, warn_rank_above_min
from lora_lab.lora.baselayer import (
    check_target_modules,
    get_weight,
    is_wrappable,
    layer_dims,
    select_modules,
    set_weight,
)

_BIAS = ("none", "all", "lora_only")
_INIT = (True, False, "gaussian")


def _check_hparams(r, lora_alpha, lora_dropout, use_rslora=False, init_lora_weights=True) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive integer (the adapter's rank, >= 1), got r={r!r}")
    if not isinstance(lora_alpha, (int, float)) or isinstance(lora_alpha, bool) \
            or not math.isfinite(lora_alpha) or lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be a finite number > 0, got lora_alpha={lora_alpha!r}")
    if not isinstance(lora_dropout, (int, float)) or isinstance(lora_dropout, bool) \
            or not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got lora_dropout={lora_dropout!r}")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False (a bool), got use_rslora={use_rslora!r}")
    if not (isinstance(init_lora_weights, bool) or
            isinstance(init_lora_weights, str) and init_lora_weights == "gaussian"):
        raise ValueError(f"init_lora_weights must be one of {_INIT}, "
                         f"got init_lora_weights={init_lora_weights!r}")


@dataclass(frozen=True)
class LoraConfig:
    r"""Hyperparameters of a LoRA adapter, named as in PEFT's ``LoraConfig``.

    Args:
        r: rank of the update, >= 1.
        lora_alpha: > 0; the update is scaled by ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA).
        lora_dropout: dropout on the adapter's input, in [0, 1).
        target_modules: which layers to wrap, by PEFT's rule. A list/tuple/set of names
            matches a module named exactly so or ending in ``"." + name`` (``["c_attn"]``
            matches ``transformer.h.0.attn.c_attn``); a *string* is a regular expression
            that must match the whole module name (``re.fullmatch``: ``r".*\.0\.attn\.c_attn"``
            takes block 0 only, and ``"c_attn"`` matches nothing in GPT-2); ``"all-linear"``
            takes every Linear/Conv1D (or 4-bit linear) except the output head of a
            transformers model (its ``get_output_embeddings()``, GPT-2's ``lm_head``).
            Unlike PEFT, each list entry must match something (a typo is an error).
        bias: which biases train: "none", "all" or "lora_only" (those of wrapped layers).
        use_rslora: scale by ``lora_alpha / sqrt(r)`` (rank-stabilized LoRA); a bool.
        init_lora_weights: True (A Kaiming-uniform, B zeros, as PEFT), "gaussian"
            (A ~ N(0, σ²) with σ = 1/r, PEFT's choice; B zeros) or False (both random: the
            output moves at step 0).

    Raises:
        ValueError: for any field out of range or of the wrong type, naming the field,
            the value and what is allowed.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: Sequence[str] | str = ("c_attn",)
    bias: str = "none"
    use_rslora: bool = False
    init_lora_weights: bool | str = True

    def __post_init__(self):
        _check_hparams(self.r, self.lora_alpha, self.lora_dropout, self.use_rslora,
                       self.init_lora_weights)
        object.__setattr__(self, "target_modules", check_target_modules(self.target_modules))
        if not isinstance(self.bias, str) or self.bias not in _BIAS:
            raise ValueError(f"bias must be one of {_BIAS}, got bias={self.bias!r}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoRALinear(nn.Module):
    """A frozen ``base_layer`` plus a trainable low-rank update ``B A`` scaled by ``scaling``.

    ``base_layer`` may be ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored (in, out),
    PEFT's ``fan_in_fan_out``), ``bitsandbytes.nn.Linear4bit`` or lora_lab's 4-bit layer.

    Shapes: x (..., in_features) -> (..., out_features).
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, use_rslora: bool = False,
                 init_lora_weights: bool | str = True, generator: torch.Generator | None = None):
        super().__init__()
        if not is_wrappable(base_layer):
            raise ValueError(f"base_layer must be nn.Linear, transformers Conv1D or a 4-bit linear "
                             f"layer, got {type(base_layer).__name__}")
        _check_hparams(r, lora_alpha, lora_dropout, use_rslora, init_lora_weights)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        w = getattr(base_layer, "weight", None)
        if isinstance(w, torch.Tensor) and w.dtype.is_floating_point and not torch.isfinite(w).all():
            raise ValueError(f"base_layer.weight has {int((~torch.isfinite(w)).sum())} NaN/inf "
                             "values; LoRA needs a finite base weight")
        self.base_layer = base_layer.requires_grad_(False)  # W is frozen: no grad, no optimizer state
        self.in_features, self.out_features = layer_dims(base_layer)
        warn_rank_above_min(r, self.out_features, self.in_features, names=("out_features", "in_features"))
        self.r, self.lora_alpha, self.use_rslora = r, lora_alpha, use_rslora
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.fan_in_fan_out = is_conv1d(base_layer)
        dtype = _float_dtype(base_layer)
        device = next(base_layer.parameters(), torch.empty(0)).device
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        # Built and initialized on the CPU (where a seeded generator lives, so the same seed
        # gives the same adapter on any device), then moved next to the base weight.
        self.lora_A = nn.Linear(self.in_features, r, bias=False, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, dtype=dtype)
        self.reset_lora_parameters(init_lora_weights, generator=generator)
        self.lora_A.to(device)
        self.lora_B.to(device)
        self.merged = False

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: bool | str = True,
                              generator: torch.Generator | None = None) -> None:
        """Initialize A and B as PEFT does (``init_lora_weights=False``: both random).

        ``generator`` must live on the device of the adapter weights (CPU at construction).
        """
        if init_lora_weights == "gaussian":
            self.lora_A.weight.normal_(0.0, 1.0 / self.r, generator=generator)  # std 1/r, as PEFT
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        if init_lora_weights is False:
            nn.init.kaiming_uniform_(self.lora_B.weight, a=math.sqrt(5), generator=generator)
        else:
            self.lora_B.weight.zero_()  # B = 0, so ΔW = B A = 0 and the model is unchanged at step 0

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (B @ A) * scaling, shape (out_features, in_features) like ``nn.Linear.weight``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, r) @ (r, in)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``, computed as PEFT does.

        The input is cast to the adapter's dtype (fp32 on a 16-bit base) *before* dropout.
        On a float base (``nn.Linear``, ``Conv1D``, lora_lab's 4-bit layer) the sum is formed
        in the adapter's dtype (a 16-bit base output is promoted) and rounded once to the
        base's output dtype, as PEFT's ``lora.Linear``; on a bitsandbytes 4-bit base the
        update is rounded to the output dtype first and then added, as PEFT's
        ``lora.Linear4bit`` (outside autocast; inside autocast neither casts).
        """
        result = self.base_layer(x, *args, **kwargs)  # (..., out) frozen path
        if self.merged:
            return result  # ΔW already sits inside the base weight: no extra latency
        dtype = result.dtype
        if is_bnb_4bit(self.base_layer):  # PEFT's lora.bnb.Linear4bit.forward
            convert = not torch.is_autocast_enabled()
            lora_x = x.to(self.lora_A.weight.dtype) if convert else x
            update = self.lora_B(self.lora_A(self.lora_dropout(lora_x))) * self.scaling
            return result + (update.to(dtype) if convert else update)
        lora_x = x.to(self.lora_A.weight.dtype)  # PEFT's lora.Linear.forward
        h = self.lora_A(self.lora_dropout(lora_x))  # (..., r)  down-projection
        return (result + self.lora_B(h) * self.scaling).to(dtype)  # (..., out), one rounding

    @torch.no_grad()
    def merged_weight(self, sign: int = 1) -> torch.Tensor:
        """The base weight with ΔW added (``sign=-1``: taken out), (out, in) in the base's dtype.

        Computed as PEFT's default merge (``weight.data += delta_weight``): in the adapter's
        dtype, rounded once to the base's. Nothing is written.
        """
        weight = get_weight(self.base_layer)  # (out, in), dequantized for 4-bit layers
        delta = self.delta_weight()
        dtype = torch.promote_types(weight.dtype, delta.dtype)
        return (weight.to(dtype) + sign * delta.to(weight.device, dtype)).to(weight.dtype)

    @torch.no_grad()
    def _write(self, new: torch.Tensor, safe_merge: bool, what: str) -> None:
        bad = int((~torch.isfinite(new)).sum())
        if bad:
            msg = (f"{what}: the new base weight would hold {bad} NaN/inf values (the adapter holds "
                   "NaN/inf, or the sum overflows the base's dtype)")
            if safe_merge:
                raise ValueError(f"{msg}; the base weight is left unchanged")
            warnings.warn(f"{msg}; written anyway because safe_merge=False (PEFT's default); pass "
                          "safe_merge=True to refuse", RuntimeWarning, stacklevel=3)
        set_weight(self.base_layer, new)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Fold ΔW into the base weight (W <- W + ΔW); forward then costs one matmul.

        Args:
            safe_merge: as PEFT's ``merge(safe_merge=True)``: compute the merged weight in a
                copy and raise ``ValueError`` if it is not finite, leaving the base unchanged.
                With ``False`` (PEFT's default) a non-finite result is written, as PEFT does,
                but never silently: a ``RuntimeWarning`` says how many values are NaN/inf.
                (A lora_lab 4-bit base refuses non-finite weights in any case.)
        """
        if not isinstance(safe_merge, bool):
            raise ValueError(f"safe_merge must be True or False, got safe_merge={safe_merge!r}")
        if self.merged:
            warnings.warn("merge(): already merged, nothing done", UserWarning, stacklevel=2)
            return
        self._write(self.merged_weight(+1), safe_merge, "merge()")
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ΔW back out of the base weight (exact up to rounding; 4-bit bases re-quantize)."""
        if not self.merged:
            warnings.warn("unmerge(): not merged, nothing done", UserWarning, stacklevel=2)
            return
        self._write(self.merged_weight(-1), False, "unmerge()")
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, scaling={self.scaling:g}, merged={self.merged}")


def _float_dtype(layer: nn.Module) -> torch.dtype:
    """Adapters are kept in fp32 (fp64 for an fp64 base), whatever the base's dtype: PEFT's
    default ``autocast_adapter_dtype=True`` does the same, because fp16/bf16 adapter weights
    train poorly. The input is cast to this dtype and the result back to the base's."""
    if any(p.dtype == torch.float64 for p in layer.parameters()):
        return torch.float64
    return torch.float32


def find_target_modules(model: nn.Module, target_modules: Sequence[str] | str) -> list[str]:
    """Names of the linear layers ``target_modules`` selects, in model order, by PEFT's rule.

    A list/tuple/set entry matches a module named exactly so or ending in ``"." + entry``;
    a string is a regex that must match the whole name (``re.fullmatch``); ``"all-linear"``
    takes every linear layer except a transformers model's output head. This is the one
    rule of lora_lab (:func:`lora_lab.lora.baselayer.select_targets`), used by :func:`add_lora`,
    :func:`lora_lab.quant.linear4bit.quantize_model` and the memory predictions.

    Raises:
        ValueError: if ``target_modules`` is malformed, a list entry (or the regex) matches
            nothing (the error lists the linear layers), or a match is not a linear layer.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return select_modules(model, target_modules)


def add_lora(model: nn.Module, config: LoraConfig, *,
             generator: torch.Generator | None = None) -> nn.Module:
    """Wrap every module ``config.target_modules`` selects in a :class:`LoRALinear`, in place.

    Everything else is frozen (biases too, unless ``config.bias`` says otherwise).
    Returns the same ``model`` object, which remembers ``config`` for :func:`save_adapter`.

    Everything is checked before anything changes: on any error (bad arguments, a target
    that matches nothing, a NaN/inf base weight in any target) the model is left exactly as
    it was -- weights, ``requires_grad`` flags and module types.

    Raises:
        ValueError: naming the argument or layer at fault.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, LoraConfig):
        raise ValueError(f"config must be a lora_lab LoraConfig, got {type(config).__name__} "
                         "(a peft.LoraConfig goes to peft.get_peft_model)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA layers; load or merge them instead of adding twice")
    names = find_target_modules(model, config.target_modules)
    if not names:
        raise ValueError(f"target_modules={config.target_modules!r} selects no linear layer")
    for name in names:  # validate every target before touching the model
        w = getattr(model.get_submodule(name), "weight", None)
        if isinstance(w, torch.Tensor) and w.dtype.is_floating_point and not torch.isfinite(w).all():
            raise ValueError(f"add_lora: {name}.weight has {int((~torch.isfinite(w)).sum())} NaN/inf "
                             "values; LoRA needs a finite base weight (the model was not changed)")
    flags = {p: p.requires_grad for p in model.parameters()}
    gen_state = generator.get_state() if generator is not None else None
    wrappers = []
    try:  # build every wrapper first; on failure undo what building did
        for name in names:
            wrappers.append(LoRALinear(model.get_submodule(name), config.r, config.lora_alpha,
                                       config.lora_dropout, config.use_rslora,
                                       config.init_lora_weights, generator))
    except BaseException:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        if gen_state is not None:
            generator.set_state(gen_state)
        raise
    for p in model.parameters():
        p.requires_grad_(False)
    for name, wrapper in zip(names, wrappers):
        model.set_submodule(name, wrapper)
    for name, p in model.named_parameters():
        if name.endswith("bias") and (config.bias == "all" or
                                      config.bias == "lora_only" and ".base_layer." in name):
            p.requires_grad_(True)
    model.lora_config = config
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, layer) for every LoRALinear in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def merge_lora(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merge every adapter into its base weight (zero added latency at inference).

    ``safe_merge=True`` (PEFT's ``merge_and_unload(safe_merge=True)``) first checks every
    merged weight for NaN/inf and raises ``ValueError`` naming the layer, with *no* layer
    merged (PEFT stops at the broken layer, with the earlier ones merged). With ``False``
    (the default, as PEFT) a non-finite merged weight is written with a ``RuntimeWarning``.
    """
    if not isinstance(safe_merge, bool):
        raise ValueError(f"safe_merge must be True or False, got safe_merge={safe_merge!r}")
    layers = [(n, layer) for n, layer in lora_layers(model) if not layer.merged]
    if safe_merge:
        for name, layer in layers:
            bad = int((~torch.isfinite(layer.merged_weight(+1))).sum())
            if bad:
                raise ValueError(f"merge_lora(safe_merge=True): layer {name!r} would get {bad} NaN/inf "
                                 "values in its base weight (the adapter is broken); nothing was merged")
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts.

    4-bit weights count as the weights they stand for, not as their packed bytes:
    bitsandbytes' ``Params4bit`` holds two codes per uint8 element (so ×2, as PEFT
    counts), and lora_lab's 4-bit layer keeps its codes in buffers (so in×out).
    """
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    for m in model.modules():  # lora_lab's 4-bit layer: codes live in buffers, not parameters
        if hasattr(m, "dequantize_weight") and not isinstance(getattr(m, "weight", None), nn.Parameter):
            total += m.in_features * m.out_features
    return trainable, total


def trainable_report(model: nn.Module) -> str:
    """PEFT's ``print_trainable_parameters`` line, returned rather than printed."""
    trainable, total = trainable_parameters(model)
    return (f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}")

__all__ = ["LoraConfig", "LoRALinear", "add_lora", "find_target_modules", "lora_layers",
           "merge_lora", "unmerge_lora", "trainable_parameters", "trainable_report"]
