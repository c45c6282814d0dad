"""Adapters on disk in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``, exactly as
PEFT writes them, so an adapter saved here loads with ``peft.PeftModel.from_pretrained``
and one saved by PEFT loads with :func:`load_adapter`. Never pickles; files are written
atomically.
"""

from __future__ import annotations

import dataclasses
import json
from os import PathLike
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from lora_lab._util import atomic_write_bytes, atomic_write_text
from lora_lab.lora.baselayer import is_wrappable, layer_dims, target_matches
from lora_lab.lora.layer import LoraConfig, LoRALinear, add_lora, lora_layers

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_UNSUPPORTED = {"use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
                "layers_to_transform": None, "lora_bias": False}


def _suffix_targets(model: nn.Module, wrapped: list[str]) -> list[str]:
    """Short target names (``c_attn``) if, by PEFT's list rule, they select exactly
    ``wrapped`` among the model's modules, else the full paths."""
    suffixes = sorted({n.split(".")[-1] for n in wrapped})
    inner = {f"{n}.{c}" for n in wrapped for c in ("base_layer", "lora_A", "lora_B", "lora_dropout")}
    selected = {n for n, _ in model.named_modules() if n and not any(n.startswith(i) for i in inner)
                and target_matches(tuple(suffixes), n)}
    return suffixes if selected == set(wrapped) else sorted(wrapped)


TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def infer_task_type(model: nn.Module) -> str | None:
    """PEFT's ``task_type`` that fits ``model``: ``"CAUSAL_LM"`` for a model that can
    generate (it has ``prepare_inputs_for_generation``, which ``PeftModelForCausalLM``
    calls, as transformers' ``*ForCausalLM`` / ``GPT2LMHeadModel`` do), else ``None``
    (``PeftModel.from_pretrained`` then builds a plain ``PeftModel``, which works for any
    module: an MLP, a Conv1D model, a bare ``GPT2Model``)."""
    return "CAUSAL_LM" if callable(getattr(model, "prepare_inputs_for_generation", None)) else None


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds, under PEFT's key names."""
    config = getattr(model, "lora_config", None)
    out = {}
    for name, layer in lora_layers(model):
        out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach()
    if config is not None and config.bias != "none":
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.requires_grad:
                out[PREFIX + name] = p.detach()
    return out


def save_adapter(model: nn.Module, path: str | Path, config=None, *,
                 base_model_name_or_path: str | None = None, task_type: str | None = "auto") -> Path:
    """Write the model's adapters to folder ``path`` in PEFT's format; returns ``path``.

    Args:
        task_type: PEFT's ``task_type`` to record; ``"auto"`` (default) infers it
            (:func:`infer_task_type`: ``"CAUSAL_LM"`` for a generating LM, else ``None``),
            ``None`` or one of :data:`TASK_TYPES` sets it.

    Raises:
        ValueError: if the model has no LoRA layers, no config is known, the adapters are
            merged, an argument is malformed, or ``path`` cannot be written (an existing
            file, say); nothing is written then.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, PathLike)) or not str(path):
        raise ValueError(f"path must be a folder path (str or Path), got path={path!r}")
    config = config or getattr(model, "lora_config", None)
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("save_adapter: model has no LoRA layers (call add_lora first)")
    if config is None:
        raise ValueError("save_adapter: pass config= (the model was not built with add_lora)")
    if not isinstance(config, LoraConfig):
        raise ValueError(f"config must be a lora_lab LoraConfig, got {type(config).__name__}")
    if any(layer.merged for _, layer in layers):
        raise ValueError("save_adapter: adapters are merged into the base; unmerge_lora(model) first")
    if base_model_name_or_path is not None and not isinstance(base_model_name_or_path, str):
        raise ValueError(f"base_model_name_or_path must be a string or None, got {base_model_name_or_path!r}")
    if task_type == "auto":
        task_type = infer_task_type(model)
    elif task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be 'auto', None or one of {TASK_TYPES}, got task_type={task_type!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_adapter: {path} exists and is not a folder")
    wrapped = [n for n, _ in layers]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    cfg = {**_UNSUPPORTED, "peft_type": "LORA", "task_type": task_type, "r": config.r,
           "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
           "target_modules": _suffix_targets(model, wrapped), "bias": config.bias,
           "use_rslora": config.use_rslora, "init_lora_weights": config.init_lora_weights,
           "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in layers),
           "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
           "revision": None}
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    config_text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"  # both built before any write
    weights = st_save(tensors, metadata={"format": "pt"})
    try:
        atomic_write_bytes(path / WEIGHTS_NAME, weights)
        atomic_write_text(path / CONFIG_NAME, config_text)
    except OSError as err:
        raise ValueError(f"save_adapter: cannot write to {path} ({err.__class__.__name__}: {err})") from err
    return path


def read_adapter_config(path: str | Path):
    """Parse and validate ``adapter_config.json`` into a :class:`~lora_lab.lora.layer.LoraConfig`."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise ValueError(f"{path!s} is not an adapter folder: {CONFIG_NAME} is missing")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); it is not a usable adapter config") from e
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        got = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{file}: peft_type must be 'LORA', got {got!r}")
    for key, plain in _UNSUPPORTED.items():
        if raw.get(key, plain) not in (plain, None, {}, False):
            raise ValueError(f"{file}: {key}={raw[key]!r} is not supported by lora_lab "
                             f"(allowed: {plain!r}); load it with PEFT instead")
    init = raw.get("init_lora_weights", True)
    targets = raw.get("target_modules")
    try:
        return LoraConfig(r=raw.get("r"), lora_alpha=raw.get("lora_alpha"),
                          lora_dropout=raw.get("lora_dropout", 0.0),
                          target_modules=targets if targets else (), bias=raw.get("bias", "none"),
                          use_rslora=bool(raw.get("use_rslora", False)),
                          init_lora_weights=init if isinstance(init, bool) or init == "gaussian" else True)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def read_adapter_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load ``adapter_model.safetensors`` with PEFT's prefix stripped; never unpickles."""
    file = Path(path) / WEIGHTS_NAME
    if not file.is_file():
        raise ValueError(f"{path!s} is not an adapter folder: {WEIGHTS_NAME} is missing")
    try:
        tensors = st_load(file.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise ValueError(f"{file} is not a valid safetensors file ({e})") from e
    out = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise ValueError(f"{file}: key {key!r} does not start with {PREFIX!r}; not a PEFT adapter")
        out[key[len(PREFIX):].replace(".default.", ".")] = value
    return out


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Add the adapter at ``path`` to ``model`` (or fill the LoRA layers it already has).

    Works for adapters saved by lora_lab or by PEFT, with ``bias="none"``, ``"all"`` or
    ``"lora_only"`` (the biases are stored under the wrapped model's names,
    ``<layer>.base_layer.bias``, and are mapped onto a fresh base). Everything is checked
    before the model changes: on an error it is left as it was.

    Raises:
        ValueError: for a missing/corrupt file, or keys/shapes that do not match the model
            (the message names the layer).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, PathLike)) or not str(path):
        raise ValueError(f"path must be an adapter folder (str or Path), got path={path!r}")
    config = read_adapter_config(path)
    weights = read_adapter_weights(path)
    layer_names = sorted({k.rsplit(".lora_", 1)[0] for k in weights if ".lora_" in k})
    if not layer_names:
        raise ValueError(f"{path!s}: {WEIGHTS_NAME} holds no lora_A/lora_B tensors")
    existing = dict(lora_layers(model))
    if existing and sorted(existing) != layer_names:
        extra = sorted(set(layer_names) ^ set(existing))
        raise ValueError(f"adapter at {path!s} does not match the model's LoRA layers: layer "
                         f"{extra[0]!r} is in only one of them")
    # Check every tensor against the model before changing anything.
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for name in layer_names:
        module = modules.get(name)
        base = module.base_layer if isinstance(module, LoRALinear) else module
        if base is None or not is_wrappable(base):
            raise ValueError(f"adapter at {path!s} has layer {name!r}, which this "
                             f"{type(model).__name__} does not have as a linear layer "
                             "(is it the same base model?)")
        if isinstance(module, LoRALinear) and (module.r, module.scaling) != (config.r, config.scaling):
            raise ValueError(f"adapter at {path!s}: layer {name!r} has r={module.r}, scaling="
                             f"{module.scaling:g}; the adapter has r={config.r}, scaling={config.scaling:g}")
        d_in, d_out = layer_dims(base)
        for part, shape in (("lora_A", (config.r, d_in)), ("lora_B", (d_out, config.r))):
            key = f"{name}.{part}.weight"
            if key not in weights:
                raise ValueError(f"adapter at {path!s}: layer {name!r} has no {part} tensor")
            if not torch.isfinite(weights[key]).all():
                raise ValueError(f"adapter at {path!s}: layer {name!r} {part} contains NaN/inf")
            if tuple(weights[key].shape) != shape:
                raise ValueError(f"adapter at {path!s}: layer {name!r} expects {part} of shape "
                                 f"{shape}, the file has {tuple(weights[key].shape)} (was it trained "
                                 "with another r or another base model?)")
    for key in weights:  # biases (bias="all"/"lora_only"): named as in the wrapped model
        if ".lora_" in key:
            continue
        target = key if (existing or key in params) else _unwrapped_name(key, layer_names)
        if target not in params or params[target].shape != weights[key].shape:
            shape = tuple(params[target].shape) if target in params else None
            raise ValueError(f"adapter at {path!s}: tensor {key!r} of shape {tuple(weights[key].shape)} "
                             f"has no place in the model" + (f" (the model's has shape {shape})" if shape else ""))
        if weights[key].dtype.is_floating_point and not torch.isfinite(weights[key]).all():
            raise ValueError(f"adapter at {path!s}: tensor {key!r} contains NaN/inf")
    if not existing:
        add_lora(model, dataclasses.replace(config, target_modules=layer_names))
        model.lora_config = config
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in weights.items():
            params[key].copy_(tensor.to(params[key].dtype))
    return model


def _unwrapped_name(key: str, layer_names: list[str]) -> str:
    """``lin0.base_layer.bias`` -> ``lin0.bias`` when ``lin0`` is a layer the adapter wraps:
    the name a bias of a wrapped layer has in the base model before ``add_lora``."""
    for name in layer_names:
        prefix = f"{name}.base_layer."
        if key.startswith(prefix):
            return f"{name}.{key[len(prefix):]}"
    return key
