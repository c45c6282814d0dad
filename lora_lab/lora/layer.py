"""The LoRA layer from scratch, injecting it into a model, merge/unmerge.

Convention (the LoRA paper's and PEFT's; CONTRIBUTING.md, "The A/B convention"):
    lora_A: (r, in_features)   down-projection, applied to x first, Kaiming-uniform init
    lora_B: (out_features, r)  up-projection, zero init
    delta_weight = (lora_B @ lora_A) * scaling            # (out, in), like nn.Linear.weight
    scaling      = lora_alpha / r   (rsLoRA: lora_alpha / sqrt(r))
    h = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling

A layer holds any number of named adapters, as PEFT's ``LoraLayer``: ``layer.lora_A["default"]``
is the first one's A; :mod:`lora_lab.lora.multi` switches, disables, deletes, mixes and combines
them model-wide. Adapter files (PEFT's on-disk format) live in :mod:`lora_lab.lora.io`;
``lora_lab.lora`` exports all three.

The variants PEFT ships are options of an adapter, computed by :mod:`lora_lab.lora.variants`:
``init_lora_weights="pissa"`` / ``"pissa_niter_K"`` / ``"loftq"`` initialize A and B from the
base weight and *replace the base weight* (by PiSSA's residual, or by LoftQ's NF4-quantized
weight); ``use_dora=True`` adds DoRA's trainable magnitude ``lora_magnitude_vector[name].weight``
(out_features,), applied after A and B are initialized (PEFT's order).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from lora_lab._util import is_bnb_4bit, is_conv1d, warn_rank_above_min
from lora_lab.lora import variants
from lora_lab.lora.baselayer import (
    check_target_modules,
    get_weight,
    is_wrappable,
    layer_dims,
    select_modules,
    set_weight,
)

_BIAS = ("none", "all", "lora_only")
_INIT = (True, False, "gaussian", "pissa", "pissa_niter_<K>", "loftq")  # K: an integer >= 0


def pissa_niter(init_lora_weights) -> int | None:
    """K of ``"pissa_niter_K"`` (PEFT's fast PiSSA: ``torch.svd_lowrank`` with K subspace
    iterations); None for any other ``init_lora_weights``."""
    found = re.fullmatch(r"pissa_niter_(\d+)", init_lora_weights) if isinstance(init_lora_weights, str) else None
    return int(found.group(1)) if found else None


def changes_base(init_lora_weights) -> bool:
    """True for the inits that replace the base weight: ``"pissa"``, ``"pissa_niter_K"``, ``"loftq"``."""
    return init_lora_weights in ("pissa", "loftq") or pissa_niter(init_lora_weights) is not None


@dataclass(frozen=True)
class LoftQConfig:
    """LoftQ's options, named as PEFT's ``LoftQConfig``: ``loftq_bits`` 4 (bitsandbytes NF4,
    blocks of 64) or 8 (int8, one absmax per row), ``loftq_iter`` alternating steps >= 1."""

    loftq_bits: int = 4
    loftq_iter: int = 1

    def __post_init__(self):
        if isinstance(self.loftq_bits, bool) or self.loftq_bits not in variants.NUM_BITS:
            raise ValueError(f"loftq_bits must be one of {variants.NUM_BITS} (NF4 or int8, as PEFT's bitsandbytes "
                             f"quantizer), got loftq_bits={self.loftq_bits!r}")
        if isinstance(self.loftq_iter, bool) or not isinstance(self.loftq_iter, int) or self.loftq_iter < 1:
            raise ValueError(f"loftq_iter must be an integer >= 1, got loftq_iter={self.loftq_iter!r}")


def _check_loftq_config(loftq_config, init_lora_weights, *, required: bool) -> LoftQConfig | None:
    """``loftq_config`` as a :class:`LoftQConfig` (a dict with PEFT's keys is converted); None
    when ``init_lora_weights`` is not "loftq" (then it must be None or ``{}``, PEFT's empty value)."""
    if init_lora_weights != "loftq":
        if loftq_config is not None and loftq_config != {}:
            raise ValueError(f"loftq_config is only used with init_lora_weights='loftq', got "
                             f"loftq_config={loftq_config!r} with init_lora_weights={init_lora_weights!r}")
        return None
    if loftq_config is None or loftq_config == {}:
        if required:
            raise ValueError("init_lora_weights='loftq' needs loftq_config: pass LoftQConfig(loftq_bits=4, "
                             "loftq_iter=1) or a dict with those keys")
        return LoftQConfig()
    if isinstance(loftq_config, dict):
        unknown = sorted(set(loftq_config) - {"loftq_bits", "loftq_iter"})
        if unknown:
            raise ValueError(f"loftq_config has unknown keys {unknown}; allowed: 'loftq_bits', 'loftq_iter'")
        return LoftQConfig(**loftq_config)
    if not isinstance(loftq_config, LoftQConfig):
        raise ValueError(f"loftq_config must be lora_lab.lora.LoftQConfig, a dict with keys 'loftq_bits', "
                         f"'loftq_iter', or None, got {type(loftq_config).__module__}.{type(loftq_config).__name__}")
    return loftq_config


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
    if not (isinstance(init_lora_weights, bool) or init_lora_weights == "gaussian" or changes_base(init_lora_weights)):
        raise ValueError(f"init_lora_weights must be one of {_INIT} (K an integer >= 0), "
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
            (A ~ N(0, σ²) with σ = 1/r, PEFT's choice; B zeros), False (both random: the
            output moves at step 0), or a variant that replaces the base weight (a float
            base, not 4-bit; r <= min(out_features, in_features); the model's first adapter):
            "pissa" (exact SVD), "pissa_niter_K" (``torch.svd_lowrank`` with K >= 0
            iterations, drawing from torch's global generator as PEFT) or "loftq".
        use_dora: DoRA: a trainable magnitude per output unit (a bool).
        loftq_config: a :class:`LoftQConfig` (or a dict with its keys), required iff
            ``init_lora_weights="loftq"``. Unlike PEFT, LoftQ here uses the adapter's
            ``scaling``: Q + scaling · B A ≈ W for any lora_alpha (PEFT ignores it, so its
            adapter reproduces W only when lora_alpha == r; PEFT issue #1982).

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
    use_dora: bool = False
    loftq_config: LoftQConfig | None = None

    def __post_init__(self):
        _check_hparams(self.r, self.lora_alpha, self.lora_dropout, self.use_rslora,
                       self.init_lora_weights)
        object.__setattr__(self, "target_modules", check_target_modules(self.target_modules))
        if not isinstance(self.bias, str) or self.bias not in _BIAS:
            raise ValueError(f"bias must be one of {_BIAS}, got bias={self.bias!r}")
        if not isinstance(self.use_dora, bool):
            raise ValueError(f"use_dora must be True or False (a bool), got use_dora={self.use_dora!r}")
        object.__setattr__(self, "loftq_config",
                           _check_loftq_config(self.loftq_config, self.init_lora_weights, required=True))

    @property
    def scaling(self) -> float:
        return variants.lora_scaling(self.r, self.lora_alpha, self.use_rslora)


DEFAULT_ADAPTER = "default"
BASE_ADAPTER = "__base__"  # in a mixed batch: this example goes through the base model alone (PEFT's name)


def check_adapter_name(adapter_name, *, arg: str = "adapter_name") -> str:
    """``adapter_name`` if it can name an adapter (a key of the ``lora_A`` ModuleDict), else ValueError."""
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name \
            or adapter_name == BASE_ADAPTER or hasattr(nn.ModuleDict(), adapter_name):
        raise ValueError(f"{arg} must be a non-empty string without '.', not {BASE_ADAPTER!r} and not a "
                         f"ModuleDict attribute, got {arg}={adapter_name!r}")
    return adapter_name


class LoRALinear(nn.Module):
    """A frozen ``base_layer`` plus named low-rank updates ``B A``, each scaled by its ``scaling``.

    ``base_layer`` may be ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored (in, out),
    PEFT's ``fan_in_fan_out``), ``bitsandbytes.nn.Linear4bit`` or lora_lab's 4-bit layer.

    As PEFT's ``LoraLayer``, the layer holds any number of adapters, keyed by name:
    ``lora_A``, ``lora_B``, ``lora_dropout`` are ``nn.ModuleDict``s and ``r``, ``lora_alpha``,
    ``scaling``, ``use_rslora`` dicts. The first adapter is called ``adapter_name``
    ("default"); :meth:`update_layer` adds more. The forward uses ``active_adapter`` only
    (none if the layer does not hold it, or while ``disable_adapters``); ``merged_adapters``
    lists those folded into the base weight.

    Shapes: x (..., in_features) -> (..., out_features).
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, use_rslora: bool = False,
                 init_lora_weights: bool | str = True, generator: torch.Generator | None = None, *,
                 adapter_name: str = DEFAULT_ADAPTER, use_dora: bool = False,
                 loftq_config: LoftQConfig | dict | None = None):
        super().__init__()
        if not is_wrappable(base_layer):
            raise ValueError(f"base_layer must be nn.Linear, transformers Conv1D or a 4-bit linear "
                             f"layer, got {type(base_layer).__name__}")
        _check_hparams(r, lora_alpha, lora_dropout, use_rslora, init_lora_weights)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        check_adapter_name(adapter_name)
        bad = _nonfinite_weights(base_layer)
        if bad:
            raise ValueError(f"base_layer.weight has {bad} NaN/inf values; LoRA needs a finite base weight")
        self.base_layer = base_layer.requires_grad_(False)  # W is frozen: no grad, no optimizer state
        self.in_features, self.out_features = layer_dims(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.lora_A, self.lora_B, self.lora_dropout = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.use_dora: dict[str, bool] = {}
        self.lora_magnitude_vector = nn.ModuleDict()  # DoRA adapters only: [name].weight, (out_features,)
        self._dora_weight_norm: dict[str, torch.Tensor] = {}  # ‖W + ΔW‖_row of each merged DoRA adapter
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self._mixed_adapter_names: list[str] | None = None  # set by lora_lab.lora.multi.mixed_batch
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, use_rslora, init_lora_weights,
                          generator, use_dora=use_dora, loftq_config=loftq_config, _stacklevel=3)

    # ------------------------------------------------------------------ adapters held

    @property
    def active_adapter(self) -> str:
        """The adapter the forward uses (set with :meth:`set_adapter`)."""
        return self._active_adapter

    @property
    def disable_adapters(self) -> bool:
        """True while the forward is the base layer's alone (set with :meth:`enable_adapters`)."""
        return self._disable_adapters

    @property
    def merged(self) -> bool:
        """Whether any adapter is folded into the base weight."""
        return bool(self.merged_adapters)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     use_rslora: bool = False, init_lora_weights: bool | str = True,
                     generator: torch.Generator | None = None, *, use_dora: bool = False,
                     loftq_config: LoftQConfig | dict | None = None, _stacklevel: int = 2) -> None:
        """Add adapter ``adapter_name`` (PEFT's ``update_layer``); it trains only if it is the active one.

        A and B are built and initialized on the CPU (where a seeded generator lives, so the
        same seed gives the same adapter on any device), then moved next to the base weight.
        PEFT's order: A and B are initialized (PiSSA/LoftQ also replace the base weight, via
        ``set_weight``), then DoRA's magnitude is measured on that base. PiSSA and LoftQ do not
        use ``generator`` ("pissa_niter_K" draws from torch's global generator, as PEFT);
        ``loftq_config`` None means ``LoftQConfig()``. On an error the layer is left as it was.
        """
        check_adapter_name(adapter_name)
        if adapter_name in self.lora_A:
            raise ValueError(f"adapter_name={adapter_name!r} is already in this layer ({list(self.lora_A)})")
        _check_hparams(r, lora_alpha, lora_dropout, use_rslora, init_lora_weights)
        if not isinstance(use_dora, bool):
            raise ValueError(f"use_dora must be True or False (a bool), got use_dora={use_dora!r}")
        loftq_config = _check_loftq_config(loftq_config, init_lora_weights, required=False)
        if changes_base(init_lora_weights):
            check_base_for_init(self.base_layer, r, init_lora_weights, held=list(self.lora_A))
        else:
            warn_rank_above_min(r, self.out_features, self.in_features, names=("out_features", "in_features"),
                                stacklevel=_stacklevel)
        dtype = _float_dtype(self.base_layer)
        device = next(self.base_layer.parameters(), torch.empty(0)).device
        self.lora_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False, dtype=dtype)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=False, dtype=dtype)
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        self.use_rslora[adapter_name], self.use_dora[adapter_name] = use_rslora, use_dora
        self.scaling[adapter_name] = variants.lora_scaling(r, lora_alpha, use_rslora)
        try:
            if changes_base(init_lora_weights):
                self._init_from_base(adapter_name, init_lora_weights, loftq_config)
            else:
                self.reset_lora_parameters(adapter_name, init_lora_weights, generator=generator)
            self.lora_A[adapter_name].to(device)
            self.lora_B[adapter_name].to(device)
            if use_dora:
                self.lora_magnitude_vector[adapter_name] = DoraMagnitude(variants.dora_init_magnitude(
                    get_weight(self.base_layer), self.lora_A[adapter_name].weight.detach(),
                    self.lora_B[adapter_name].weight.detach(), self.scaling[adapter_name]))
        except BaseException:
            self._remove_adapter(adapter_name)
            raise
        for part in self._trainable_parts():
            if adapter_name in part:
                part[adapter_name].requires_grad_(adapter_name == self._active_adapter)

    @torch.no_grad()
    def _init_from_base(self, adapter_name: str, init_lora_weights: str, loftq_config: LoftQConfig | None) -> None:
        """PiSSA or LoftQ: A and B from the base weight, then the base weight replaced (last,
        so that an error leaves it as it was)."""
        weight = get_weight(self.base_layer)  # (out, in)
        r, scaling = self.r[adapter_name], self.scaling[adapter_name]
        if init_lora_weights == "loftq":
            init = variants.loftq_init(weight, r, num_bits=loftq_config.loftq_bits,
                                       num_iter=loftq_config.loftq_iter, scaling=scaling)
            lora_A, lora_B, new_weight = init.lora_A, init.lora_B, init.dequantized_weight
        else:
            init = variants.pissa_init(weight, r, self.lora_alpha[adapter_name],
                                       use_rslora=self.use_rslora[adapter_name], niter=pissa_niter(init_lora_weights))
            lora_A, lora_B, new_weight = init.lora_A, init.lora_B, init.residual_weight
        self.lora_A[adapter_name].weight.copy_(lora_A)
        self.lora_B[adapter_name].weight.copy_(lora_B)
        set_weight(self.base_layer, new_weight)

    def _trainable_parts(self) -> tuple[nn.ModuleDict, ...]:
        """The per-adapter modules that train: A, B and (DoRA) the magnitude."""
        return self.lora_A, self.lora_B, self.lora_magnitude_vector

    def _remove_adapter(self, adapter_name: str) -> None:
        for store in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_magnitude_vector, self.r,
                      self.lora_alpha, self.scaling, self.use_rslora, self.use_dora, self._dora_weight_norm):
            if adapter_name in store:
                del store[adapter_name]

    def _check_holds(self, adapter_name: str) -> str:
        if adapter_name not in self.lora_A:
            raise ValueError(f"adapter_name={adapter_name!r} is not in this layer; it holds {list(self.lora_A)}")
        return adapter_name

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter (it need not be in this layer: then the
        forward is the base's). As PEFT, the active adapter's A and B (and DoRA magnitude) train,
        the others are frozen."""
        check_adapter_name(adapter_name)
        for part in self._trainable_parts():
            for name, module in part.items():
                module.requires_grad_(name == adapter_name)
        self._active_adapter = adapter_name

    def enable_adapters(self, enabled: bool) -> None:
        """``False``: the forward is the base layer's alone; ``True``: the active adapter again."""
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled must be True or False, got enabled={enabled!r}")
        if not enabled and self.merged:
            raise ValueError(f"cannot disable adapters while {self.merged_adapters} are merged into the base "
                             "weight; unmerge first")
        self._disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name`` from this layer (not the active one, not a merged one)."""
        self._check_holds(adapter_name)
        if adapter_name == self._active_adapter:
            raise ValueError(f"adapter_name={adapter_name!r} is the active adapter; set_adapter another first")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter_name={adapter_name!r} is merged into the base weight; unmerge first")
        self._remove_adapter(adapter_name)

    @torch.no_grad()
    def reset_lora_parameters(self, adapter_name: str = DEFAULT_ADAPTER, init_lora_weights: bool | str = True,
                              generator: torch.Generator | None = None) -> None:
        """Initialize adapter ``adapter_name``'s A and B as PEFT does (``init_lora_weights=False``:
        both random). PiSSA and LoftQ, which change the base weight, are :meth:`update_layer`'s.

        ``generator`` must live on the device of the adapter weights (CPU at construction).
        """
        if changes_base(init_lora_weights):
            raise ValueError(f"reset_lora_parameters: init_lora_weights={init_lora_weights!r} replaces the base "
                             "weight; only update_layer applies it (allowed here: True, False, 'gaussian')")
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        if init_lora_weights == "gaussian":
            lora_A.weight.normal_(0.0, 1.0 / self.r[adapter_name], generator=generator)  # std 1/r, as PEFT
        else:
            nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5), generator=generator)
        if init_lora_weights is False:
            nn.init.kaiming_uniform_(lora_B.weight, a=math.sqrt(5), generator=generator)
        else:
            lora_B.weight.zero_()  # B = 0, so ΔW = B A = 0 and the model is unchanged at step 0

    # ------------------------------------------------------------------ one adapter's arithmetic

    def delta_weight(self, adapter_name: str | None = None) -> torch.Tensor:
        """ΔW = (B @ A) * scaling of ``adapter_name`` (default: the active adapter), shape
        (out_features, in_features) like ``nn.Linear.weight``."""
        name = self._check_holds(self._active_adapter if adapter_name is None else adapter_name)
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]  # (out, r) @ (r, in)

    def _adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """Adapter ``adapter_name``'s term of the output: ``lora_B(lora_A(dropout(x))) * scaling``,
        (..., out_features), for ``x`` already cast to the adapter's dtype."""
        h = self.lora_A[adapter_name](self.lora_dropout[adapter_name](x))  # (..., r)  down-projection
        return self.lora_B[adapter_name](h) * self.scaling[adapter_name]  # (..., out)  up-projection

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling`` of the active adapter, as PEFT.

        The input is cast to the adapter's dtype (fp32 on a 16-bit base) *before* dropout.
        On a float base (``nn.Linear``, ``Conv1D``, lora_lab's 4-bit layer) the sum is formed
        in the adapter's dtype (a 16-bit base output is promoted) and rounded once to the
        base's output dtype, as PEFT's ``lora.Linear``; on a bitsandbytes 4-bit base the
        update is rounded to the output dtype first and then added, as PEFT's
        ``lora.Linear4bit`` (outside autocast; inside autocast neither casts). Inside
        :func:`lora_lab.lora.multi.mixed_batch` each example takes its own adapter, and each
        update is rounded to the output dtype before it is added (PEFT's mixed batch). A DoRA
        adapter's output is :func:`~lora_lab.lora.variants.dora_forward` (PEFT's), formed in the
        adapter's dtype and rounded once.
        """
        result = self.base_layer(x, *args, **kwargs)  # (..., out) frozen path
        if self._disable_adapters or self.merged:
            return result  # merged: ΔW already sits inside the base weight, no extra latency
        if self._mixed_adapter_names is not None:
            return self._mixed_batch_forward(x, result)
        name = self._active_adapter
        if name not in self.lora_A:
            return result
        dtype = result.dtype
        if name in self.lora_magnitude_vector:
            return self._dora_output(x, result, name).to(dtype)
        if is_bnb_4bit(self.base_layer):  # PEFT's lora.bnb.Linear4bit.forward
            convert = not torch.is_autocast_enabled()
            update = self._adapter_output(x.to(self.lora_A[name].weight.dtype) if convert else x, name)
            return result + (update.to(dtype) if convert else update)
        update = self._adapter_output(x.to(self.lora_A[name].weight.dtype), name)  # PEFT's lora.Linear.forward
        return (result + update).to(dtype)  # (..., out), one rounding

    def _dora_output(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        """The whole output with DoRA adapter ``name`` (PEFT's ``DoraLinearVariant.forward``): the
        input cast to the adapter's dtype, dropout only while training with p > 0."""
        if not (is_bnb_4bit(self.base_layer) and torch.is_autocast_enabled()):
            x = x.to(self.lora_A[name].weight.dtype)
        dropout = self.lora_dropout[name]
        return variants.dora_forward(x, get_weight(self.base_layer).to(x.dtype), self.lora_A[name].weight,
                            self.lora_B[name].weight, self.lora_magnitude_vector[name].weight, self.scaling[name],
                            bias=getattr(self.base_layer, "bias", None), base_result=result,
                            dropout=dropout if self.training and isinstance(dropout, nn.Dropout) else None)

    def _mixed_batch_forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """PEFT's ``_mixed_batch_forward``: example i of the batch takes adapter ``names[i]``."""
        names = self._mixed_adapter_names
        dora = [n for n in dict.fromkeys(names) if n in self.lora_magnitude_vector]
        if dora:
            raise ValueError(f"mixed_batch: adapter {dora[0]!r} uses DoRA; a mixed batch takes plain LoRA adapters "
                             "only (PEFT, too: 'Cannot pass `adapter_names` when DoRA is enabled')")
        if x.ndim == 0 or len(names) != x.shape[0]:
            raise ValueError(f"mixed_batch: adapter_names has {len(names)} names but the batch has "
                             f"{x.shape[0] if x.ndim else 0} examples (one name per example)")
        convert = not (is_bnb_4bit(self.base_layer) and torch.is_autocast_enabled())
        for name in dict.fromkeys(names):
            if name not in self.lora_A:  # BASE_ADAPTER, or an adapter this layer does not hold
                continue
            rows = [i for i, n in enumerate(names) if n == name]
            sub = x[rows]
            update = self._adapter_output(sub.to(self.lora_A[name].weight.dtype) if convert else sub, name)
            result[rows] += update.to(result.dtype)
        return result

    # ------------------------------------------------------------------ merging

    @torch.no_grad()
    def merged_weight(self, sign: int = 1, adapter_name: str | None = None) -> torch.Tensor:
        """The base weight with ΔW of ``adapter_name`` (default: active) added (``sign=-1``:
        taken out), (out, in) in the base's dtype.

        Computed as PEFT's default merge (``weight.data += delta_weight``): in the adapter's
        dtype, rounded once to the base's. A DoRA adapter gives PEFT's
        m / ‖W₀ + ΔW‖_row · (W + ΔW), with W₀ the base without any merged adapter (taking it
        out needs the norm stored when it was merged). Nothing is written.
        """
        name = self._check_holds(self._active_adapter if adapter_name is None else adapter_name)
        weight = get_weight(self.base_layer)  # (out, in), dequantized for 4-bit layers
        norm = self._dora_merge_norm(name) if sign > 0 and name in self.lora_magnitude_vector else None
        return self._merge_step(weight, name, sign, norm)

    def _merge_step(self, weight: torch.Tensor, name: str, sign: int, norm: torch.Tensor | None = None):
        """``weight`` with adapter ``name`` merged in (``sign=+1``; a DoRA adapter needs ``norm``)
        or taken out (-1)."""
        if name in self.lora_magnitude_vector:
            parts = (self.lora_A[name].weight, self.lora_B[name].weight, self.lora_magnitude_vector[name].weight,
                     self.scaling[name])
            if sign > 0:
                return variants.dora_merged_weight(weight, *parts, weight_norm=norm)
            return variants.dora_unmerged_weight(weight, *parts, self._dora_weight_norm[name])
        delta = self.delta_weight(name)
        dtype = torch.promote_types(weight.dtype, delta.dtype)
        return (weight.to(dtype) + sign * delta.to(weight.device, dtype)).to(weight.dtype)

    def _dora_merge_norm(self, name: str) -> torch.Tensor:
        """‖W₀ + ΔW‖_row of DoRA adapter ``name``, W₀ the base weight with every merged adapter
        taken out (PEFT's ``_unmerged_base_weight``): what its forward divides by."""
        weight = get_weight(self.base_layer)
        for merged in reversed(self.merged_adapters):
            weight = self._merge_step(weight, merged, -1)
        return variants.dora_weight_norm(weight, self.delta_weight(name))

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
    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fold ΔW into the base weight (W <- W + ΔW); forward then costs one matmul.

        Args:
            safe_merge: as PEFT's ``merge(safe_merge=True)``: compute the merged weight in a
                copy and raise ``ValueError`` if it is not finite, leaving the base unchanged.
                With ``False`` (PEFT's default) a non-finite result is written, as PEFT does,
                but never silently: a ``RuntimeWarning`` says how many values are NaN/inf.
                (A lora_lab 4-bit base refuses non-finite weights in any case.)
            adapter_names: the adapters to merge (default: the active one, if this layer holds it).
        """
        if not isinstance(safe_merge, bool):
            raise ValueError(f"safe_merge must be True or False, got safe_merge={safe_merge!r}")
        if self._disable_adapters:
            raise ValueError("merge(): adapters are disabled (inside disable_adapters); merge outside it")
        if adapter_names is None:
            names = [self._active_adapter] if self._active_adapter in self.lora_A else []
        else:
            names = [self._check_holds(n) for n in adapter_names]
        todo = [n for n in names if n not in self.merged_adapters]
        if names and not todo:
            warnings.warn("merge(): already merged, nothing done", UserWarning, stacklevel=2)
            return
        for name in todo:
            norm = self._dora_merge_norm(name) if name in self.lora_magnitude_vector else None
            self._write(self._merge_step(get_weight(self.base_layer), name, +1, norm), safe_merge, "merge()")
            if norm is not None:
                self._dora_weight_norm[name] = norm  # unmerge divides by it (PEFT caches it too)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take every merged ΔW back out of the base weight, last merged first (exact up to
        rounding; 4-bit bases re-quantize)."""
        if not self.merged:
            warnings.warn("unmerge(): not merged, nothing done", UserWarning, stacklevel=2)
            return
        while self.merged_adapters:
            self._write(self.merged_weight(-1, self.merged_adapters[-1]), False, "unmerge()")
            self._dora_weight_norm.pop(self.merged_adapters.pop(), None)

    def extra_repr(self) -> str:
        name = self._active_adapter
        text = f"in_features={self.in_features}, out_features={self.out_features}"
        if name in self.lora_A:
            text += (f", r={self.r[name]}, lora_alpha={self.lora_alpha[name]}, scaling={self.scaling[name]:g}, "
                     f"merged={self.merged}") + (", use_dora=True" if self.use_dora[name] else "")
        if list(self.lora_A) != [name]:
            text += f", adapters={list(self.lora_A)}, active_adapter={name!r}"
        return text


class DoraMagnitude(nn.Module):
    """DoRA's trainable magnitude m of one adapter, ``weight`` (out_features,): PEFT's
    ``lora_magnitude_vector[name].weight`` (its ``DoraLinearLayer``)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(magnitude)


def _nonfinite_weights(layer: nn.Module) -> int:
    """How many entries of a float base weight are NaN/inf. A bitsandbytes 4-bit weight holds
    packed codes (stored as floats with a float ``quant_storage``), not values: not checked."""
    w = getattr(layer, "weight", None)
    if is_bnb_4bit(layer) or not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point:
        return 0
    return int((~torch.isfinite(w)).sum())


def check_base_for_init(layer: nn.Module, r: int, init_lora_weights: str, *, held=(), where: str = "") -> None:
    """ValueError unless ``init_lora_weights`` (PiSSA/LoftQ) can replace ``layer``'s weight: a
    float base (PEFT refuses a quantized one: LoftQ quantizes it itself; quantize PiSSA's
    residual afterwards), r <= min(out_features, in_features), and no other adapter (``held``)
    sharing the base it replaces."""
    at = f" (layer {where!r})" if where else ""
    if is_bnb_4bit(layer) or not (isinstance(layer, nn.Linear) or is_conv1d(layer)):
        raise ValueError(f"init_lora_weights={init_lora_weights!r} needs a float base layer (nn.Linear or "
                         f"Conv1D), got {type(layer).__name__}{at}: PEFT expects an unquantized base (LoftQ "
                         "quantizes it itself; quantize PiSSA's residual afterwards); or use init True/'gaussian'")
    d_in, d_out = layer_dims(layer)
    if r > min(d_out, d_in):
        raise ValueError(f"init_lora_weights={init_lora_weights!r} needs r <= min(out_features, in_features) = "
                         f"{min(d_out, d_in)}{at} (an SVD has no more directions), got r={r}")
    if held:
        raise ValueError(f"init_lora_weights={init_lora_weights!r} replaces the base weight, which adapters "
                         f"{list(held)} already use{at}; add it as a model's first adapter")


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


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, layer) for every LoRALinear in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def add_lora(model: nn.Module, config: LoraConfig, *, adapter_name: str = DEFAULT_ADAPTER,
             generator: torch.Generator | None = None) -> nn.Module:
    """Add adapter ``adapter_name`` to every module ``config.target_modules`` selects, in place.

    On a model without LoRA layers this wraps each target in a :class:`LoRALinear` whose
    adapter is active and trains; everything else is frozen (biases too, unless
    ``config.bias`` says otherwise). On a model that has LoRA layers it adds a further
    adapter, as PEFT's ``add_adapter``: to the LoRA layers it targets and to new wrappers of
    plain layers; it does not become active and does not train (``multi.set_adapter`` makes
    it so), and no other ``requires_grad`` flag changes. Returns the same ``model`` object,
    which remembers each adapter's config (``model.lora_configs``; ``model.lora_config`` is
    the active adapter's) for :func:`save_adapter`.

    The variants are the config's: ``init_lora_weights="pissa"`` / ``"pissa_niter_K"`` /
    ``"loftq"`` replace every target's base weight (PiSSA's residual, LoftQ's NF4 weight), so
    they need float targets and a model without adapters; ``use_dora=True`` adds each
    layer's trainable magnitude (``lora_magnitude_vector``).

    Everything is checked before anything changes: on any error (bad arguments, a target
    that matches nothing, a NaN/inf base weight in any target, a name already loaded, a
    variant the targets cannot take) the model is left exactly as it was -- weights,
    ``requires_grad`` flags and module types.

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
    check_adapter_name(adapter_name)
    existing = dict(lora_layers(model))
    if existing:
        loaded = list(dict.fromkeys(n for layer in existing.values() for n in layer.lora_A))
        if adapter_name in loaded:
            raise ValueError(f"adapter_name={adapter_name!r} is already loaded (loaded adapters: {loaded}); "
                             "pick another name, or delete_adapter it first")
        if config.bias != "none":
            raise ValueError(f"bias={config.bias!r}: a further adapter must have bias='none' (the biases "
                             "belong to the base model, which all adapters share)")
    names = select_modules(model, config.target_modules, lambda m: is_wrappable(m) or isinstance(m, LoRALinear))
    if not names:
        raise ValueError(f"target_modules={config.target_modules!r} selects no linear layer")
    for name in names:  # validate every target before touching the model
        module = model.get_submodule(name)
        bad = _nonfinite_weights(module)
        if bad:
            raise ValueError(f"add_lora: {name}.weight has {bad} NaN/inf values; LoRA needs a finite base "
                             "weight (the model was not changed)")
        if changes_base(config.init_lora_weights):
            check_base_for_init(getattr(module, "base_layer", module), config.r, config.init_lora_weights, where=name,
                                held=list(dict.fromkeys(n for layer in existing.values() for n in layer.lora_A)))
    flags = {p: p.requires_grad for p in model.parameters()}
    gen_state = generator.get_state() if generator is not None else None
    hparams = (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora, config.init_lora_weights,
               generator)
    variant = dict(use_dora=config.use_dora, loftq_config=config.loftq_config)
    wrappers, updated, replaced = [], [], []
    try:  # build every adapter first; on failure undo what building did
        for name in names:
            module = model.get_submodule(name)
            if isinstance(module, LoRALinear):
                module.update_layer(adapter_name, *hparams, **variant)
                updated.append(module)
            else:
                if changes_base(config.init_lora_weights):  # PiSSA/LoftQ write the base: keep it to undo
                    replaced.append((module, get_weight(module).clone()))
                wrappers.append((name, LoRALinear(module, *hparams, adapter_name=adapter_name, **variant)))
    except BaseException:
        for layer in updated:
            layer._remove_adapter(adapter_name)
        for module, weight in replaced:
            set_weight(module, weight)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        if gen_state is not None:
            generator.set_state(gen_state)
        raise
    if existing:  # a further adapter: the new wrappers follow the model's active adapter and state
        first = next(iter(existing.values()))
        for _, wrapper in wrappers:
            wrapper.set_adapter(first.active_adapter)
            wrapper.enable_adapters(not first.disable_adapters)
        for p, flag in flags.items():
            p.requires_grad_(flag)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    for name, wrapper in wrappers:
        model.set_submodule(name, wrapper)
    if not existing:
        for name, p in model.named_parameters():
            if name.endswith("bias") and (config.bias == "all" or
                                          config.bias == "lora_only" and ".base_layer." in name):
                p.requires_grad_(True)
        model.lora_configs = {}
        model.lora_config = config
    if not isinstance(getattr(model, "lora_configs", None), dict):
        model.lora_configs = {}
    model.lora_configs[adapter_name] = config
    return model


def merge_lora(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merge the active adapter into the base weight of every layer that holds it (zero
    added latency at inference).

    ``safe_merge=True`` (PEFT's ``merge_and_unload(safe_merge=True)``) first checks every
    merged weight for NaN/inf and raises ``ValueError`` naming the layer, with *no* layer
    merged (PEFT stops at the broken layer, with the earlier ones merged). With ``False``
    (the default, as PEFT) a non-finite merged weight is written with a ``RuntimeWarning``.
    """
    if not isinstance(safe_merge, bool):
        raise ValueError(f"safe_merge must be True or False, got safe_merge={safe_merge!r}")
    if any(layer.disable_adapters for _, layer in lora_layers(model)):
        raise ValueError("merge_lora: adapters are disabled (inside disable_adapters); merge outside it")
    layers = [(n, layer) for n, layer in lora_layers(model)
              if layer.active_adapter in layer.lora_A and layer.active_adapter not in layer.merged_adapters]
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

__all__ = ["DEFAULT_ADAPTER", "BASE_ADAPTER", "DoraMagnitude", "LoftQConfig", "LoraConfig", "LoRALinear", "add_lora",
           "changes_base", "check_adapter_name", "check_base_for_init", "find_target_modules", "lora_layers",
           "merge_lora", "pissa_niter", "unmerge_lora", "trainable_parameters", "trainable_report"]
