"""What LoRA needs from the layer it wraps: its sizes and its weight as an (out, in) matrix.

Four kinds of base layer are handled, each of which stores its weight differently:

    nn.Linear                 weight (out, in)
    transformers Conv1D       weight (in, out)  -- GPT-2; PEFT calls this fan_in_fan_out
    bitsandbytes Linear4bit   packed 4-bit codes + quant_state (absmax, codebook)
    lora_lab 4-bit layer      anything with in_features, out_features,
                              dequantize_weight() -> (out, in) and requantize_(weight)
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from lora_lab._util import is_bnb_4bit, is_conv1d


def _is_lora_lab_4bit(layer: nn.Module) -> bool:
    return all(hasattr(layer, a) for a in ("in_features", "out_features", "dequantize_weight",
                                           "requantize_"))


def is_wrappable(layer: nn.Module) -> bool:
    """True for the linear layers LoRA can wrap (see module docstring)."""
    return (isinstance(layer, nn.Linear) or is_conv1d(layer) or is_bnb_4bit(layer)
            or _is_lora_lab_4bit(layer))


def layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a wrappable layer."""
    if is_conv1d(layer):
        d_in, d_out = layer.weight.shape  # Conv1D stores (in, out)
        return int(d_in), int(d_out)
    return int(layer.in_features), int(layer.out_features)


def get_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight as an (out, in) tensor (a dequantized copy for 4-bit layers)."""
    if _is_lora_lab_4bit(layer):
        return layer.dequantize_weight()
    if is_bnb_4bit(layer):
        import bitsandbytes.functional as bnbF
        w = layer.weight
        return bnbF.dequantize_4bit(w.data, w.quant_state)  # (out, in)
    if is_conv1d(layer):
        return layer.weight.data.T  # (in, out) -> (out, in)
    return layer.weight.data


@torch.no_grad()
def set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store an (out, in) weight back, re-quantizing for 4-bit layers."""
    if _is_lora_lab_4bit(layer):
        layer.requantize_(weight)
    elif is_bnb_4bit(layer):
        import bitsandbytes as bnb
        old = layer.weight
        qs = old.quant_state
        new = bnb.nn.Params4bit(weight.to("cpu").contiguous(), requires_grad=False,
                                blocksize=qs.blocksize, compress_statistics=qs.nested,
                                quant_type=qs.quant_type, quant_storage=old.quant_storage)
        layer.weight = new.to(old.device)  # .to() quantizes
    elif is_conv1d(layer):
        layer.weight.data.copy_(weight.T)
    else:
        layer.weight.data.copy_(weight)


# --------------------------------------------------------------------------- target matching
ALL_LINEAR = "all-linear"
TARGET_RULE = ("a string is a regex that must match the whole module name (PEFT's rule, re.fullmatch); "
               "a list/tuple/set holds names, each matching a module of that name or ending in "
               "'.' + name; 'all-linear' takes every linear layer except the output head")


def check_target_modules(target_modules, field: str = "target_modules") -> str | tuple[str, ...]:
    """Validate ``target_modules`` as PEFT reads it; returns the canonical form.

    Returns ``"all-linear"`` (any letter case, as PEFT), the regex string itself, or a
    tuple of names (a set is sorted, duplicates are dropped, order is kept otherwise).

    Raises:
        ValueError: naming ``field``, the value and what is allowed: an empty or
            invalid-regex string, an empty list, an entry that is not a non-empty string,
            or a value of another type (``None``, a number, ...).
    """
    allowed = ("allowed: 'all-linear', a regex string matching whole module names, or a "
               "non-empty list of module names such as ['c_attn', 'c_proj']")
    if isinstance(target_modules, str):
        if not target_modules.strip():
            raise ValueError(f"{field} must not be an empty string, got {field}={target_modules!r}; {allowed}")
        if target_modules.lower() == ALL_LINEAR:
            return ALL_LINEAR
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"{field}={target_modules!r} is not a valid regular expression ({err}); "
                             f"{TARGET_RULE}") from None
        return target_modules
    if isinstance(target_modules, (list, tuple, set, frozenset)):
        items = list(target_modules)
        if not items:
            raise ValueError(f"{field} must not be empty, got {field}={target_modules!r}; {allowed}")
        bad = [t for t in items if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"{field} entries must be non-empty strings (module names), got "
                             f"{bad[0]!r} in {field}={target_modules!r}; {allowed}")
        if isinstance(target_modules, (set, frozenset)):
            items = sorted(items)
        return tuple(dict.fromkeys(items))
    raise ValueError(f"{field} must be a string or a list of strings, got {field}={target_modules!r} "
                     f"({type(target_modules).__name__}); {allowed}")


def target_matches(target_modules: str | Sequence[str], name: str) -> bool:
    """PEFT's ``check_target_module_exists`` for one module name (without PEFT's
    ``exclude_modules``/``layers_to_transform``): a string must ``re.fullmatch`` the name;
    a list entry must equal it or be a ``.``-separated suffix of it."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def select_targets(target_modules, names: Sequence[str], candidates: Sequence[str], *,
                   heads: Iterable[str] = (), where: str = "the model",
                   kind: Callable[[str], str] = lambda name: "module",
                   what: str = "linear layers", action: str = "LoRA here cannot wrap") -> list[str]:
    """The one target-matching rule of lora_lab (PEFT's), over plain module names.

    Args:
        target_modules: as :func:`check_target_modules` accepts.
        names: every module name of the model (the root ``""`` is skipped).
        candidates: the names that can be targeted (the linear layers), in model order.
        heads: names that ``"all-linear"`` leaves out (the output head, as PEFT).
        where, kind, what, action: for error messages (the model's name, a module's type
            name, what the candidates are called, what cannot be done to a non-candidate).

    Returns:
        The selected candidate names, in the order of ``candidates``.

    Raises:
        ValueError: a list entry that matches no module, a regex that matches none, or a
            match that is not a candidate (PEFT, too, refuses to wrap such a module).
    """
    targets = check_target_modules(target_modules)
    cand = set(candidates)
    if targets == ALL_LINEAR:
        heads = set(heads)
        return [n for n in candidates if n not in heads]
    names = [n for n in names if n]
    suffixes = sorted({n.split(".")[-1] for n in candidates})
    if isinstance(targets, str):
        entries = [(f"target_modules={targets!r}", [n for n in names if target_matches(targets, n)])]
    else:
        entries = [(f"target_modules entry {t!r}", [n for n in names if target_matches((t,), n)])
                   for t in targets]
    chosen: set[str] = set()
    for label, hits in entries:
        if not hits:
            if isinstance(targets, str):
                hint = f"; for a name or suffix pass a list: [{targets!r}]" if re.fullmatch(r"[\w.]+", targets) else ""
                raise ValueError(f"{label} matches no module in {where}: a string is a regex that must "
                                 f"match the whole module name (PEFT's rule){hint}; {what} it has: "
                                 f"{suffixes} (or use 'all-linear')")
            raise ValueError(f"{label} matches no module in {where}; {what} it has: {suffixes} "
                             "(or use 'all-linear')")
        bad = [n for n in hits if n not in cand]
        if bad:
            raise ValueError(f"{label} matches {bad[0]!r}, a {kind(bad[0])}, which {action}; "
                             f"{what} it has: {suffixes}")
        chosen.update(hits)
    return [n for n in candidates if n in chosen]


def output_head_names(model: nn.Module) -> set[str]:
    """The output head that ``"all-linear"`` skips, found as PEFT does: the module returned
    by ``get_output_embeddings()`` of a transformers ``PreTrainedModel`` (GPT-2's lm_head);
    nothing for other models."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return set()
    if not isinstance(model, PreTrainedModel):
        return set()
    out = model.get_output_embeddings()
    return {name for name, m in model.named_modules() if out is not None and m is out}


def _is_lora_wrapper(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("base_layer", "lora_A", "lora_B"))


def select_modules(model: nn.Module, target_modules,
                   is_candidate: Callable[[nn.Module], bool] | None = None, *,
                   what: str = "linear layers", action: str = "LoRA here cannot wrap") -> list[str]:
    """Names of the modules of ``model`` that ``target_modules`` selects (PEFT's rule, see
    :func:`select_targets`); ``is_candidate`` says which modules can be targeted
    (default :func:`is_wrappable`)."""
    is_candidate = is_candidate or is_wrappable
    modules = dict(model.named_modules())
    inside = tuple(f"{n}." for n, m in modules.items() if n and _is_lora_wrapper(m))
    # as PEFT: layers inside a LoRA wrapper (its base_layer, lora_A, lora_B) are never targets
    candidates = [n for n, m in modules.items() if n and is_candidate(m) and not n.startswith(inside)]
    return select_targets(target_modules, list(modules), candidates, heads=output_head_names(model),
                          where=type(model).__name__, kind=lambda n: type(modules[n]).__name__,
                          what=what, action=action)
