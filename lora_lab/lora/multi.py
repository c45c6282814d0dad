"""Several named adapters on one base model, as PEFT's ``PeftModel`` has them.

A lora_lab model stays a plain ``nn.Module`` (a transformers model stays one), so what PEFT
does with methods of ``PeftModel`` is done here by functions taking the model first:

    add_lora(model, config_b, adapter_name="b")    # a second adapter; "default" stays active
    set_adapter(model, "b")                         # the forward now uses "b" (and "b" trains)
    with disable_adapters(model): model(x)          # exactly the base model's output
    with mixed_batch(model, ["default", "b", "__base__"]): model(x)   # example i takes adapter i
    add_weighted_adapter(model, ["default", "b"], [0.7, 0.3], "mix", combination_type="cat")
    delete_adapter(model, "b")

Every layer holds its adapters in ``lora_A[name]`` / ``lora_B[name]``
(:class:`~lora_lab.lora.layer.LoRALinear`); all layers share one active adapter. Bad input
raises ``ValueError`` and leaves the model unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from lora_lab.lora.layer import (
    BASE_ADAPTER,
    DEFAULT_ADAPTER,
    LoraConfig,
    LoRALinear,
    add_lora,
    check_adapter_name,
    lora_layers,
)

COMBINATION_TYPES = ("svd", "linear", "cat")


def _layers(model: nn.Module, what: str) -> list[tuple[str, LoRALinear]]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError(f"{what}: model has no LoRA layers (call add_lora first)")
    return layers


def _names(model: nn.Module, layers) -> list[str]:
    held = dict.fromkeys(n for _, layer in layers for n in layer.lora_A)
    order = [n for n in getattr(model, "lora_configs", {}) if n in held]  # the order they were added
    return order + [n for n in held if n not in order]


def _check_loaded(model: nn.Module, layers, name, arg: str = "adapter_name") -> str:
    loaded = _names(model, layers)
    if not isinstance(name, str) or name not in loaded:
        raise ValueError(f"{arg}={name!r} is not a loaded adapter; loaded adapters: {loaded}")
    return name


def _refuse_merged(layers, what: str) -> None:
    merged = [n for n, layer in layers if layer.merged]
    if merged:
        raise ValueError(f"{what}: layer {merged[0]!r} has an adapter merged into its base weight; "
                         "call unmerge_lora(model) first")


@contextmanager
def _set_on_layers(layers, attr: str, value) -> Iterator[None]:
    """Set ``attr`` of every layer to ``value`` inside the ``with`` block, then restore it."""
    before = [getattr(layer, attr) for _, layer in layers]
    for _, layer in layers:
        setattr(layer, attr, value)
    try:
        yield
    finally:
        for (_, layer), was in zip(layers, before):
            setattr(layer, attr, was)


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters ``model`` holds, in the order they were added."""
    return _names(model, _layers(model, "adapter_names"))


def active_adapter(model: nn.Module) -> str:
    """The name of the adapter the forward uses (PEFT's ``active_adapter``)."""
    return _layers(model, "active_adapter")[0][1].active_adapter


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make ``adapter_name`` the active adapter of every LoRA layer; as PEFT, its A and B
    train and the other adapters are frozen. Merged layers are unmerged first, with a warning
    (PEFT's ``set_adapter`` does the same). Returns ``model``.

    Raises:
        ValueError: if ``adapter_name`` is not loaded (the message lists those that are).
    """
    layers = _layers(model, "set_adapter")
    _check_loaded(model, layers, adapter_name)
    merged = [n for n, layer in layers if layer.merged]
    if merged:
        warnings.warn(f"set_adapter: {len(merged)} layers were merged; unmerging them first (as PEFT)",
                      UserWarning, stacklevel=2)
        for n, layer in layers:
            if layer.merged:
                layer.unmerge()
    for _, layer in layers:
        layer.set_adapter(adapter_name)
    configs = getattr(model, "lora_configs", {})
    if adapter_name in configs:
        model.lora_config = configs[adapter_name]
    return model


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the ``with`` block the model computes exactly the base model's outputs (PEFT's
    ``disable_adapter()``); the adapters come back on exit.

    Raises:
        ValueError: if an adapter is merged into the base weights (unmerging would not give
            the base weights back bit for bit; PEFT unmerges silently): ``unmerge_lora`` first.
    """
    layers = _layers(model, "disable_adapters")
    _refuse_merged(layers, "disable_adapters")
    with _set_on_layers(layers, "_disable_adapters", True):
        yield model


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove adapter ``adapter_name`` from every layer; a wrapper left with no adapter is
    replaced by its base layer. Returns ``model``.

    Raises:
        ValueError: if ``adapter_name`` is not loaded, is the active adapter (PEFT would pick
            another one silently; here you ``set_adapter`` first) or is merged.
    """
    layers = _layers(model, "delete_adapter")
    _check_loaded(model, layers, adapter_name)
    if adapter_name == layers[0][1].active_adapter:
        raise ValueError(f"adapter_name={adapter_name!r} is the active adapter; set_adapter(model, <another>) "
                         f"first (loaded adapters: {_names(model, layers)})")
    merged = [n for n, layer in layers if adapter_name in layer.merged_adapters]
    if merged:
        raise ValueError(f"adapter_name={adapter_name!r} is merged into layer {merged[0]!r}; "
                         "call unmerge_lora(model) first")
    for name, layer in layers:
        if adapter_name in layer.lora_A:
            layer.delete_adapter(adapter_name)
            if not len(layer.lora_A):
                model.set_submodule(name, layer.base_layer)
    getattr(model, "lora_configs", {}).pop(adapter_name, None)
    return model


@contextmanager
def mixed_batch(model: nn.Module, adapter_names: Sequence[str]) -> Iterator[nn.Module]:
    """Inside the ``with`` block, example ``i`` of every batch goes through adapter
    ``adapter_names[i]`` (``"__base__"``: no adapter), as PEFT's
    ``model(**inputs, adapter_names=[...])``. Each LoRA layer runs A and B once per distinct
    adapter, on that adapter's rows. Inputs must keep the batch on dimension 0.

    Raises:
        ValueError: for an unknown name (the message lists the loaded ones), merged adapters,
            or (at the forward) a batch whose size is not ``len(adapter_names)``.
    """
    layers = _layers(model, "mixed_batch")
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence) or not adapter_names:
        raise ValueError(f"adapter_names must be a non-empty list of adapter names, one per example, "
                         f"got adapter_names={adapter_names!r}")
    for name in adapter_names:
        if name != BASE_ADAPTER:
            _check_loaded(model, layers, name, "adapter_names entry")
    _refuse_merged(layers, "mixed_batch")  # as PEFT
    with _set_on_layers(layers, "_mixed_adapter_names", list(adapter_names)):
        yield model


def forward(model: nn.Module, *args, adapter_names: Sequence[str] | None = None, **kwargs):
    """``model(*args, **kwargs)``; with ``adapter_names``, inside :func:`mixed_batch`."""
    if adapter_names is None:
        return model(*args, **kwargs)
    with mixed_batch(model, adapter_names):
        return model(*args, **kwargs)


def _config_of(model: nn.Module, layer: LoRALinear, name: str) -> LoraConfig:
    config = getattr(model, "lora_configs", {}).get(name)
    if config is not None:
        return config
    dropout = layer.lora_dropout[name]
    return LoraConfig(r=layer.r[name], lora_alpha=layer.lora_alpha[name], use_rslora=layer.use_rslora[name],
                      lora_dropout=dropout.p if isinstance(dropout, nn.Dropout) else 0.0)


def _weighted_sum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ wᵢ Tᵢ, as PEFT's ``task_arithmetic`` (stack, multiply, sum)."""
    stacked = torch.stack(tensors)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    return (stacked * w.view(-1, *([1] * (stacked.ndim - 1)))).sum(dim=0)


@torch.no_grad()
def _combine(layer: LoRALinear, adapters, weights, combination_type: str, new_rank: int):
    """(A, B) of the combined adapter in one layer: (new_rank, in), (out, new_rank)."""
    if combination_type == "cat":  # A_i carries w_i·scaling_i: B A = Σ B_i (w_i s_i A_i) = Σ w_i ΔW_i
        A = torch.cat([layer.lora_A[a].weight * w * layer.scaling[a] for a, w in zip(adapters, weights)], dim=0)
        B = torch.cat([layer.lora_B[a].weight for a in adapters], dim=1)
        return A, B
    if combination_type == "linear":  # √|w s| on each side, the sign on A only (PEFT)
        ws = [w * layer.scaling[a] for a, w in zip(adapters, weights)]
        A = _weighted_sum([layer.lora_A[a].weight for a in adapters], [math.sqrt(abs(v)) * (1 if v >= 0 else -1)
                                                                        for v in ws])
        B = _weighted_sum([layer.lora_B[a].weight for a in adapters], [math.sqrt(abs(v)) for v in ws])
        return A, B
    delta = _weighted_sum([layer.delta_weight(a) for a in adapters], list(weights))  # (out, in)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=True)  # best rank-k approximation (Eckart-Young)
    return Vh[:new_rank, :], U[:, :new_rank] @ torch.diag(S[:new_rank])


def add_weighted_adapter(model: nn.Module, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: int | None = None) -> nn.Module:
    r"""Add adapter ``adapter_name`` combining ``adapters`` with ``weights``, as PEFT's
    ``LoraModel.add_weighted_adapter``. The new adapter is neither active nor trainable.

    As PEFT, it gets ``lora_alpha = r``, so its scaling is 1 (the weights and scalings of
    the inputs are folded into its A and B), and its lora_dropout is ``adapters[0]``'s:

    - ``"cat"``: A = [w₁s₁A₁; w₂s₂A₂; ...], B = [B₁ B₂ ...]; r = Σ rᵢ. Exact:
      ΔW = B A = Σ wᵢ sᵢ Bᵢ Aᵢ = Σ wᵢ ΔWᵢ.
    - ``"svd"``: the truncated SVD of Σ wᵢ ΔWᵢ to ``svd_rank`` (default: the largest rᵢ),
      B = U_k diag(S_k), A = V_kᵀ: the best rank-``svd_rank`` approximation; exact when
      ``svd_rank`` >= the rank of the sum.
    - ``"linear"`` (all rᵢ equal; r unchanged): A = Σ ±√|wᵢsᵢ| Aᵢ, B = Σ √|wᵢsᵢ| Bᵢ (the sign
      of wᵢsᵢ on A only). Cheap but *not* the weighted sum of updates: the product
      (Σ cᵢBᵢ)(Σ cⱼAⱼ) = Σᵢ cᵢ²BᵢAᵢ + Σ_{i≠j} cᵢcⱼBᵢAⱼ has cross terms BᵢAⱼ, products of
      factors trained apart, which are not zero in general; only with one adapter (where
      PEFT, and this function, always use "linear") is it exact.

    One deviation from PEFT 0.21.2: PEFT copies ``use_rslora`` from ``adapters[0]``, so
    with rsLoRA its new adapter is scaled by α/√r = √r instead of 1, and its ΔW is √r times
    the combination above. Here the new adapter never uses rsLoRA: ΔW is what this
    docstring says. The new adapter's ``bias`` is "none" (its tensors are only A and B).

    Raises:
        ValueError: for an unknown adapter (the message lists the loaded ones), a name already
            loaded, adapters that target different layers, "linear" with different ranks, a
            weight that is not a finite number, an unknown ``combination_type``, or
            ``svd_rank`` above min(out_features, in_features) of a layer; the model is unchanged.
    """
    layers = _layers(model, "add_weighted_adapter")
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"combination_type must be one of {COMBINATION_TYPES}, got "
                         f"combination_type={combination_type!r}")
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise ValueError(f"adapters must be a non-empty list of adapter names, got adapters={adapters!r}")
    for name in adapters:
        _check_loaded(model, layers, name, "adapters entry")
    dora = [a for a in adapters if any(a in layer.lora_magnitude_vector for _, layer in layers)]
    if dora:
        raise ValueError(f"add_weighted_adapter: adapter {dora[0]!r} uses DoRA; a combination is built from A and B "
                         "only, so DoRA's trained magnitudes would be lost (PEFT 0.21.2 silently gives the result a "
                         "fresh magnitude); combine plain LoRA adapters")
    if isinstance(weights, str) or not isinstance(weights, Sequence) or len(weights) != len(adapters):
        raise ValueError(f"weights must be a list of {len(adapters)} numbers (one per adapter), "
                         f"got weights={weights!r}")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"weights must be finite numbers, got {w!r} in weights={list(weights)!r}")
    check_adapter_name(adapter_name)
    if adapter_name in _names(model, layers):
        raise ValueError(f"adapter_name={adapter_name!r} is already loaded (loaded adapters: "
                         f"{_names(model, layers)}); pick a new name")
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank <= 0):
        raise ValueError(f"svd_rank must be a positive integer or None, got svd_rank={svd_rank!r}")
    if len(adapters) == 1:
        combination_type = "linear"  # as PEFT: one adapter is only rescaled, exactly
    holders = {a: [n for n, layer in layers if a in layer.lora_A] for a in adapters}
    targets = holders[adapters[0]]
    for a in adapters[1:]:
        if holders[a] != targets:
            odd = sorted(set(holders[a]) ^ set(targets))[0]
            raise ValueError(f"adapters {adapters[0]!r} and {a!r} target different layers (layer {odd!r} has only "
                             "one of them); add_weighted_adapter combines adapters of the same layers")
    chosen = [(n, layer) for n, layer in layers if n in targets]
    ranks = [chosen[0][1].r[a] for a in adapters]
    if combination_type == "linear" and len(set(ranks)) != 1:
        raise ValueError(f"combination_type='linear' needs adapters of one rank, got r={dict(zip(adapters, ranks))}; "
                         "use 'cat' or 'svd'")
    new_rank = {"linear": ranks[0], "cat": sum(ranks), "svd": svd_rank or max(ranks)}[combination_type]
    if combination_type == "svd":
        for n, layer in chosen:
            if new_rank > min(layer.out_features, layer.in_features):
                raise ValueError(f"svd_rank={new_rank} is above min(out_features, in_features)="
                                 f"{min(layer.out_features, layer.in_features)} of layer {n!r}")
    factors = [_combine(layer, adapters, list(weights), combination_type, new_rank) for _, layer in chosen]
    base = _config_of(model, chosen[0][1], adapters[0])
    config = dataclasses.replace(base, r=new_rank, lora_alpha=new_rank, use_rslora=False, bias="none",
                                 target_modules=tuple(targets))
    done = []
    try:
        for (_, layer), (A, B) in zip(chosen, factors):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "r above min(out, in)" for a large "cat"
                layer.update_layer(adapter_name, new_rank, new_rank, config.lora_dropout,
                                   generator=torch.Generator())  # own generator: torch's global one untouched
            done.append(layer)
            with torch.no_grad():
                layer.lora_A[adapter_name].weight.copy_(A)
                layer.lora_B[adapter_name].weight.copy_(B)
    except BaseException:
        for layer in done:
            layer._remove_adapter(adapter_name)
        raise
    if not isinstance(getattr(model, "lora_configs", None), dict):
        model.lora_configs = {}
    model.lora_configs[adapter_name] = config
    return model


__all__ = ["BASE_ADAPTER", "COMBINATION_TYPES", "DEFAULT_ADAPTER", "active_adapter", "add_lora",
           "add_weighted_adapter", "adapter_names", "delete_adapter", "disable_adapters", "forward",
           "mixed_batch", "set_adapter"]
