"""Loading a causal LM the same way for the shipped small GPT-2 and for Hub models.

    model = load_model("data/lab-gpt2")                        # fp32, the shipped model
    model = load_model("data/lab-gpt2", quantization="nf4")    # QLoRA's base: NF4 + double quant
    model = load_model("gpt2", quantization="nf4")             # the real GPT-2 (needs internet once)
    tokenizer = load_tokenizer("data/lab-gpt2")

Everything goes through ``transformers.AutoModelForCausalLM.from_pretrained``. 4-bit
comes from one of two backends:

* ``backend="bitsandbytes"``: transformers' ``BitsAndBytesConfig`` (what the QLoRA
  paper's code and every tutorial use). The quant type is passed explicitly: bitsandbytes'
  own default is "fp4", not "nf4".
* ``backend="lora_lab"``: the course's own frozen 4-bit layer
  (:class:`lora_lab.quant.linear4bit.FrozenLinear4bit`), built in the quantization chapter.

Both quantize every linear layer inside the transformer blocks and leave the
embeddings, layer norms and the (tied) output head in ``compute_dtype``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lora_lab.lora.baselayer import get_weight
from lora_lab.memory.measure import quant_tensors, storage_bytes
from lora_lab.quant.linear4bit import BACKENDS, quantize_model

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "data" / "lab-gpt2"
SHIPPED_ALIASES = ("lab-gpt2", "data/lab-gpt2", "./data/lab-gpt2")
QUANTIZATIONS = (None, "nf4", "fp4")


class ModelLoadError(OSError):
    """A model name that is neither a local folder nor reachable on the Hugging Face Hub."""


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_compute_dtype(device: str) -> torch.dtype:
    """bf16 on a GPU that supports it (what QLoRA uses), fp32 on CPU (bf16 matmuls are slow there)."""
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """A local folder for the shipped model's aliases (from any working directory), the
    folder itself if it exists, else ``name_or_path`` unchanged (a Hub name)."""
    text = str(name_or_path)
    if Path(text).is_dir():
        return text
    if text.rstrip("/") in SHIPPED_ALIASES:
        return str(SHIPPED_MODEL)
    return text


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host answers a TCP connection within ``timeout`` s
    (False at once when ``HF_HUB_OFFLINE`` is set)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(cls, name: str, **kwargs):
    """``cls.from_pretrained(name)`` from a local folder, else from the Hub if it answers,
    else from the Hub cache -- so that a learner offline gets an answer at once, not
    after a minute of retries."""
    if Path(name).is_dir():
        try:
            return cls.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{name!r} is a folder but could not be loaded as a transformers "
                                 f"model ({err.__class__.__name__}: {err})") from err
    tried = [f"a local folder {os.path.abspath(name)!r}: it does not exist"]
    if hub_reachable():
        try:
            return cls.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else ""
            tried.append(f"the Hugging Face Hub: {err.__class__.__name__}: {first}")
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(repo_id=name, filename="config.json")
        except ValueError:  # not a valid repo id (huggingface_hub's HFValidationError)
            cached = None
        if isinstance(cached, str):  # downloaded before: load the cached snapshot folder, no network
            return _from_pretrained(cls, str(Path(cached).parent), **kwargs)
        tried.append("the Hugging Face cache: not downloaded before")
        tried.append("the Hugging Face Hub: not reachable (no internet, or HF_HUB_OFFLINE=1)")
    raise ModelLoadError(
        f"Could not load model {name!r}. Tried: " + "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
        + f". To work offline, use the model this course ships: load_model('data/lab-gpt2') "
          f"(CLI: --model data/lab-gpt2), found at {SHIPPED_MODEL}.")


def load_tokenizer(name_or_path: str | os.PathLike = "data/lab-gpt2"):
    """The model's tokenizer (``AutoTokenizer``), with ``pad_token`` set to EOS if it has none
    (GPT-2 has no pad token; padded positions are masked anyway)."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, resolve_model_path(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | os.PathLike = "data/lab-gpt2", quantization: str | None = None,
               double_quant: bool = True, backend: str = "bitsandbytes", *,
               compute_dtype: torch.dtype | None = None, device: str | None = None,
               blocksize: int = 64):
    """Load a causal LM, optionally with its block linears quantized to 4 bits.

    Args:
        name_or_path: "data/lab-gpt2" (the shipped model, from any working directory),
            a local folder, or a Hub name such as "gpt2" (downloaded once, needs internet).
        quantization: None (keep the weights in ``compute_dtype``), "nf4" or "fp4".
        double_quant: quantize the per-block absmax constants too (QLoRA's double quantization).
        backend: "bitsandbytes" (transformers' BitsAndBytesConfig) or "lora_lab"
            (:class:`lora_lab.quant.linear4bit.FrozenLinear4bit`).
        compute_dtype: dtype of the non-quantized weights and of the matmuls; default bf16
            on a GPU, fp32 on CPU.
        device: "cpu", "cuda", ...; default: "cuda" if available.
        blocksize: weights per absmax block for the lora_lab backend (bitsandbytes uses 64).

    Returns:
        The model (``transformers`` ``PreTrainedModel``) in eval mode.

    Raises:
        ValueError: unknown quantization or backend.
        ModelLoadError: the name is neither a folder nor reachable on the Hub; the message
            says what was tried and how to use the shipped model.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = device or default_device()
    compute_dtype = compute_dtype or default_compute_dtype(device)
    name = resolve_model_path(name_or_path)
    kwargs = {"dtype": compute_dtype}
    if quantization is not None and backend == "bitsandbytes":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quantization,  # explicit: bnb's default is fp4
            bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)
        kwargs["device_map"] = {"": device}
    model = _from_pretrained(AutoModelForCausalLM, name, **kwargs)
    if quantization is None or backend == "bitsandbytes":
        if quantization is None:
            model = model.to(device)
        keep_bnb_layout(model)
    else:
        model = quantize_model(model.to(device), "all-linear", codebook=quantization,
                               blocksize=blocksize, double_quant=double_quant,
                               compute_dtype=compute_dtype)
    return model.eval()


def keep_bnb_layout(model):
    """Stop bitsandbytes (0.50) from repacking 4-bit weights into its CPU inference layout.

    On a CPU with AVX512-BF16, ``Linear4bit`` rewrites its weight in place on the first
    eval-mode forward without gradients and does not undo it for training, which then
    fails ("a view of a leaf Variable ... in-place"), and merges would read the wrong
    layout. Keeping the standard layout costs nothing measurable at this model size.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


@torch.no_grad()
def dequantize_model(model, dtype: torch.dtype = torch.float32):
    """Replace every 4-bit linear layer (bitsandbytes or lora_lab), in place, by an
    ``nn.Linear`` holding its dequantized weight: the base QLoRA actually trained on, in
    full precision, so that merging ``W_dq + B A`` is exact. Works under LoRA wrappers
    too. Returns ``model``."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ not in ("Linear4bit", "FrozenLinear4bit"):
            continue
        weight = get_weight(module).to(dtype)                            # (out, in)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None,
                           device=weight.device, dtype=dtype)
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias.to(dtype))
        linear.requires_grad_(False)
        model.set_submodule(name, linear)
    return model


def quantized_layers(model) -> tuple[list[str], list[str]]:
    """Names of the 4-bit linear layers and of the modules that keep full-precision weights
    (embeddings, norms, output head), as two lists."""
    quantized, kept = [], []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("Linear4bit", "FrozenLinear4bit"):
            quantized.append(name)
        elif any(p is not None for p in module.parameters(recurse=False)) and name:
            kept.append(name)
    return quantized, kept


def model_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers (tied tensors counted once; bnb's
    4-bit weights at their packed size plus their quantization state)."""
    tensors = []
    for t in list(model.parameters()) + list(model.buffers()):
        tensors.extend(quant_tensors(t))
    return storage_bytes(tensors)
