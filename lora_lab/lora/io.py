"""Adapters on disk in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (and, for a
DoRA adapter, ``.lora_magnitude_vector``), exactly as
PEFT writes them (without the adapter's name), so an adapter saved here loads with
``peft.PeftModel.from_pretrained`` and one saved by PEFT loads with :func:`load_adapter`.
Several adapters are laid out as ``PeftModel.save_pretrained`` does: "default" in the folder,
every other adapter in a subfolder named after it. Never pickles; files are written atomically.

PiSSA and LoftQ adapters record ``init_lora_weights`` ("pissa", "loftq", with ``loftq_config``)
as PEFT does, and loading one re-applies it as ``PeftModel.from_pretrained`` does: the base
weight given is replaced (PiSSA's residual of it, LoftQ's quantization of it) before the
saved A and B are loaded, so load it into the *original* base model.
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
from lora_lab.lora.layer import (
    DEFAULT_ADAPTER,
    LoraConfig,
    LoRALinear,
    add_lora,
    changes_base,
    check_adapter_name,
    lora_layers,
)
from lora_lab.lora.multi import _check_loaded, _names

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
MAGNITUDE = "lora_magnitude_vector"  # DoRA's key in a PEFT file: <prefix><layer>.lora_magnitude_vector
_UNSUPPORTED = {"rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
                "layers_to_transform": None, "lora_bias": False}


def _suffix_targets(model: nn.Module, wrapped: list[str]) -> list[str]:
    """Short target names (``c_attn``) if, by PEFT's list rule, they select exactly
    ``wrapped`` among the model's modules, else the full paths."""
    suffixes = sorted({n.split(".")[-1] for n in wrapped})
    inner = {f"{n}.{c}" for n in wrapped for c in ("base_layer", "lora_A", "lora_B", "lora_dropout", MAGNITUDE)}
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


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds, under PEFT's key names (no adapter name in them):
    adapter ``adapter_name``'s (default: the active one) A and B (a DoRA adapter's magnitude
    too), and the biases that train if its config has ``bias`` other than "none"."""
    layers = list(lora_layers(model))
    name = adapter_name if adapter_name is not None else (layers[0][1].active_adapter if layers else None)
    return _adapter_tensors(model, layers, name, getattr(model, "lora_configs", {}).get(name))


def _adapter_tensors(model: nn.Module, layers, name: str, config) -> dict[str, torch.Tensor]:
    out = {}
    for path, layer in layers:
        if name in layer.lora_A:
            out[f"{PREFIX}{path}.lora_A.weight"] = layer.lora_A[name].weight.detach()
            out[f"{PREFIX}{path}.lora_B.weight"] = layer.lora_B[name].weight.detach()
            if name in layer.lora_magnitude_vector:
                out[f"{PREFIX}{path}.{MAGNITUDE}"] = layer.lora_magnitude_vector[name].weight.detach()
    if config is not None and config.bias != "none":
        for path, p in model.named_parameters():
            if path.endswith("bias") and p.requires_grad:
                out[PREFIX + path] = p.detach()
    return out


def _config_for(model: nn.Module, name: str, loaded: list[str], config):
    config = config or getattr(model, "lora_configs", {}).get(name)
    if config is None and loaded == [name]:
        config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError(f"save_adapter: pass config= (adapter {name!r} was not added with add_lora)")
    if not isinstance(config, LoraConfig):
        raise ValueError(f"config must be a lora_lab LoraConfig, got {type(config).__name__}")
    return config


def save_adapter(model: nn.Module, path: str | Path, config=None, *, selected_adapters=None,
                 base_model_name_or_path: str | None = None, task_type: str | None = "auto") -> Path:
    """Write the model's adapters to folder ``path`` in PEFT's format; returns ``path``.

    As ``PeftModel.save_pretrained``: adapter "default" goes to ``path/``, any other adapter
    to ``path/<adapter_name>/``, each as its own ``adapter_config.json`` +
    ``adapter_model.safetensors`` (load one with ``PeftModel.from_pretrained(base, folder,
    adapter_name=...)`` or :func:`load_adapter`).

    Args:
        config: the ``LoraConfig`` to record when one adapter is saved (default: the one
            :func:`add_lora` remembered for it).
        selected_adapters: names of the adapters to save (default: all loaded adapters).
        task_type: PEFT's ``task_type`` to record; ``"auto"`` (default) infers it
            (:func:`infer_task_type`: ``"CAUSAL_LM"`` for a generating LM, else ``None``),
            ``None`` or one of :data:`TASK_TYPES` sets it.

    Raises:
        ValueError: if the model has no LoRA layers, an adapter is unknown or has no known
            config, adapters are merged, an argument is malformed, or ``path`` cannot be
            written (an existing file, say); nothing is written then (each file is written
            atomically, after every file's bytes are built).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, PathLike)) or not str(path):
        raise ValueError(f"path must be a folder path (str or Path), got path={path!r}")
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("save_adapter: model has no LoRA layers (call add_lora first)")
    loaded = _names(model, layers)
    if selected_adapters is None:
        selected = loaded
    elif isinstance(selected_adapters, str) or not isinstance(selected_adapters, (list, tuple)) \
            or not selected_adapters:
        raise ValueError(f"selected_adapters must be a non-empty list of adapter names or None, "
                         f"got selected_adapters={selected_adapters!r}")
    else:
        selected = [_check_loaded(model, layers, n, "selected_adapters entry") for n in selected_adapters]
    if config is not None and len(selected) != 1:
        raise ValueError(f"config= describes one adapter, but {len(selected)} are saved ({selected}); "
                         "pass selected_adapters=[name]")
    configs = {name: _config_for(model, name, loaded, config) for name in selected}
    if any(layer.merged for _, layer in layers):
        raise ValueError("save_adapter: adapters are merged into the base; unmerge_lora(model) first")
    if base_model_name_or_path is not None and not isinstance(base_model_name_or_path, str):
        raise ValueError(f"base_model_name_or_path must be a string or None, got {base_model_name_or_path!r}")
    if task_type == "auto":
        task_type = infer_task_type(model)
    elif task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be 'auto', None or one of {TASK_TYPES}, got task_type={task_type!r}")
    path = Path(path)
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    files = []  # (folder, weights bytes, config text), all built before any write
    for name, cfg in configs.items():
        folder = path if name == DEFAULT_ADAPTER else path / name
        for p in (folder, folder / WEIGHTS_NAME, folder / CONFIG_NAME):
            if p.exists() and (p == folder) != p.is_dir():
                raise ValueError(f"save_adapter: {p} exists and is not a {'folder' if p == folder else 'file'}")
        wrapped = [(n, layer) for n, layer in layers if name in layer.lora_A]
        meta = {**_UNSUPPORTED, "peft_type": "LORA", "task_type": task_type, "r": cfg.r,
                "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
                "target_modules": _suffix_targets(model, [n for n, _ in wrapped]), "bias": cfg.bias,
                "use_rslora": cfg.use_rslora, "init_lora_weights": cfg.init_lora_weights,
                "use_dora": cfg.use_dora,
                "loftq_config": dataclasses.asdict(cfg.loftq_config) if cfg.loftq_config else {},
                "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in wrapped),
                "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
                "revision": None}
        tensors = {k: v.contiguous().cpu() for k, v in _adapter_tensors(model, layers, name, cfg).items()}
        files.append((folder, st_save(tensors, metadata={"format": "pt"}),
                      json.dumps(meta, indent=2, sort_keys=True) + "\n"))
    try:
        for folder, weights, config_text in files:
            atomic_write_bytes(folder / WEIGHTS_NAME, weights)
            atomic_write_text(folder / CONFIG_NAME, config_text)
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
                          init_lora_weights=init if isinstance(init, bool) or init == "gaussian" or changes_base(init)
                          else True, use_dora=bool(raw.get("use_dora", False)),
                          loftq_config=(raw.get("loftq_config") or None) if init == "loftq" else None)
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


def load_adapter(model: nn.Module, path: str | Path, *, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Load the adapter at ``path`` into ``model`` as adapter ``adapter_name``; returns ``model``.

    - On a model without LoRA layers it wraps the adapter's layers and is the active adapter.
    - On a model that holds ``adapter_name`` it fills those LoRA layers (same layers, r, scaling).
    - On a model with other adapters it is added beside them, as PEFT's
      ``peft_model.load_adapter(path, adapter_name=...)``: not active, not trainable
      (:func:`lora_lab.lora.multi.set_adapter` switches to it).

    Works for adapters saved by lora_lab or by PEFT (for several adapters saved together,
    ``path`` is the folder of one: ``root`` for "default", ``root/<name>`` for the others),
    with ``bias="none"``, ``"all"`` or ``"lora_only"`` (the biases are stored under the
    wrapped model's names, ``<layer>.base_layer.bias``, and are mapped onto a fresh base;
    only the first adapter of a model may carry biases). Everything is checked before the
    model changes: on an error it is left as it was.

    Raises:
        ValueError: for a missing/corrupt file, keys/shapes that do not match the model (the
            message names the layer), or a bad ``adapter_name``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, PathLike)) or not str(path):
        raise ValueError(f"path must be an adapter folder (str or Path), got path={path!r}")
    check_adapter_name(adapter_name)
    config = read_adapter_config(path)
    weights = read_adapter_weights(path)
    layer_names = sorted({_layer_of(k) for k in weights if ".lora_" in k})
    if not layer_names:
        raise ValueError(f"{path!s}: {WEIGHTS_NAME} holds no lora_A/lora_B tensors")
    any_lora = dict(lora_layers(model))
    existing = {n: layer for n, layer in any_lora.items() if adapter_name in layer.lora_A}
    if existing and sorted(existing) != layer_names:
        extra = sorted(set(layer_names) ^ set(existing))
        raise ValueError(f"adapter at {path!s} does not match the model's LoRA layers of adapter "
                         f"{adapter_name!r}: layer {extra[0]!r} is in only one of them")
    if any_lora and not existing and config.bias != "none":
        raise ValueError(f"adapter at {path!s} has bias={config.bias!r}; only a model's first adapter may carry "
                         f"biases (they belong to the base, which all adapters share); this model holds "
                         f"{_names(model, list(any_lora.items()))}")
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
        if name in existing:
            have = (module.r[adapter_name], module.scaling[adapter_name], module.use_dora[adapter_name])
            if have != (config.r, config.scaling, config.use_dora):
                raise ValueError(f"adapter at {path!s}: layer {name!r} has r={have[0]}, scaling={have[1]:g}, "
                                 f"use_dora={have[2]}; the adapter has r={config.r}, scaling={config.scaling:g}, "
                                 f"use_dora={config.use_dora}")
        d_in, d_out = layer_dims(base)
        parts = [("lora_A", (config.r, d_in)), ("lora_B", (d_out, config.r))]
        if config.use_dora:
            parts.append((MAGNITUDE, (d_out,)))
        elif f"{name}.{MAGNITUDE}" in weights:
            raise ValueError(f"adapter at {path!s}: layer {name!r} has a DoRA magnitude but its config has "
                             "use_dora=false")
        for part, shape in parts:
            key = f"{name}.{part}" + ("" if part == MAGNITUDE else ".weight")
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
        target = key if key in params else _unwrapped_name(key, layer_names)
        if target not in params or params[target].shape != weights[key].shape:
            shape = tuple(params[target].shape) if target in params else None
            raise ValueError(f"adapter at {path!s}: tensor {key!r} of shape {tuple(weights[key].shape)} "
                             f"has no place in the model" + (f" (the model's has shape {shape})" if shape else ""))
        if weights[key].dtype.is_floating_point and not torch.isfinite(weights[key]).all():
            raise ValueError(f"adapter at {path!s}: tensor {key!r} contains NaN/inf")
    if not existing:
        add_lora(model, dataclasses.replace(config, target_modules=layer_names), adapter_name=adapter_name)
        model.lora_configs[adapter_name] = config
        if not any_lora:
            model.lora_config = config
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in weights.items():
            if ".lora_" in key:  # <layer>.lora_A.weight -> <layer>.lora_A.<adapter_name>.weight
                layer = _layer_of(key)
                key = f"{layer}.{key[len(layer) + 1:].split('.')[0]}.{adapter_name}.weight"
            params[key].copy_(tensor.to(params[key].dtype))
    return model


def _layer_of(key: str) -> str:
    """``lin0`` of ``lin0.lora_A.weight``, ``lin0.lora_B.weight`` or ``lin0.lora_magnitude_vector``."""
    return key.rsplit(".lora_", 1)[0]


def _unwrapped_name(key: str, layer_names: list[str]) -> str:
    """``lin0.base_layer.bias`` -> ``lin0.bias`` when ``lin0`` is a layer the adapter wraps:
    the name a bias of a wrapped layer has in the base model before ``add_lora``."""
    for name in layer_names:
        prefix = f"{name}.base_layer."
        if key.startswith(prefix):
            return f"{name}.{key[len(prefix):]}"
    return key
