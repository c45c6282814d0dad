"""What sits in memory while fine-tuning, predicted component by component.

``training_memory`` adds up, in bytes:

    frozen base     quantized linear weights (codes + absmax + codebooks) and the parts a
                    4-bit/8-bit recipe leaves in 16-bit (embeddings, norms, head, biases)
    trainable       all weights (full fine-tuning) or LoRA's A and B (r·(in+out) per layer)
    gradients       one per trainable weight, in its dtype
    optimizer       AdamW: 2 states per trainable weight; 8-bit AdamW: 2 bytes + absmax
    master weights  fp32 copy kept by mixed precision when the weights train in 16 bit
    activations     tensors saved for backward (see :mod:`lora_lab.memory.activations`)

Full fine-tuning, LoRA and QLoRA are three presets (``RECIPES``) of the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lora_lab._util import warn_rank_above_min
from lora_lab.lora.baselayer import ALL_LINEAR, check_target_modules, select_targets
from lora_lab.memory.activations import activation_memory
from lora_lab.memory.shapes import ModelShape, model_shape
from lora_lab.quant.blockwise import bits_per_param

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
BASE_DTYPES = ("fp32", "bf16", "fp16", "int8", "nf4")
OPTIMIZERS = ("adamw", "adamw-32bit", "adamw-8bit", "sgd-momentum", "none")
COMPONENTS = ("quantized base", "unquantized base", "trainable weights", "gradients",
              "optimizer state", "master weights", "activations")
NF4_BLOCKSIZE, DQ_BLOCKSIZE = 64, 256
ADAM8_BLOCKSIZE, ADAM8_MIN_SIZE = 256, 4096  # bitsandbytes' blockwise 8-bit optimizer

RECIPES: dict[str, dict] = {
    # 16-bit weights and grads, fp32 master copy + fp32 AdamW states: 2+2+4+8 = 16 B/param
    "full": dict(base_dtype="bf16", master_weights=True, optimizer="adamw"),
    # frozen bf16 base; adapters in fp32 (PEFT upcasts them by default), torch AdamW
    "lora": dict(base_dtype="bf16", trainable_dtype="fp32", optimizer="adamw"),
    # the QLoRA paper: NF4 + double quantization, bf16 compute, paged 32-bit AdamW
    "qlora": dict(base_dtype="nf4", double_quant=True, trainable_dtype="fp32", optimizer="adamw-32bit"),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per component (``components``), counts and the assumptions behind them."""

    components: dict[str, int]
    counts: dict[str, int]
    activation_detail: dict[str, int]
    assumptions: dict[str, object] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def gb(self, key: str | None = None) -> float:
        """A component (or the total) in GB of 10⁹ bytes (model sizes are quoted so; GPU memory is
        sold and reported in binary units: an "80 GB" card has 80 GiB = 80·2³⁰ bytes, see :meth:`gib`)."""
        return (self.total if key is None else self.components[key]) / 1e9

    def gib(self, key: str | None = None) -> float:
        """A component (or the total) in GiB (2³⁰ bytes), the unit GPU memory is sold and reported in."""
        return (self.total if key is None else self.components[key]) / 2**30


def quantized_linear_bytes(in_features: int, out_features: int, base_dtype: str,
                           double_quant: bool = True) -> int:
    """Exact storage of one quantized weight matrix as bitsandbytes keeps it.

    nf4: packed codes ``ceil(n/2)`` bytes (two 4-bit codes per uint8), one absmax per
    block of 64 (fp32, or uint8 + one fp32 per 256 absmax with double quantization),
    plus per-layer codebooks (16 fp32 NF4 levels; 256 fp32 levels and an fp32 offset for
    the absmax code). For n a multiple of 64·256 this is ``n · bits_per_param / 8`` + the
    codebooks. int8 (LLM.int8): one byte per weight + one fp32 scale per output row.
    """
    n = in_features * out_features
    if base_dtype == "int8":
        return n + 4 * out_features
    blocks = math.ceil(n / NF4_BLOCKSIZE)
    codes = math.ceil(n / 2)
    if double_quant:  # absmax as uint8 codes, each 256 of them sharing an fp32 scale
        constants = blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) + 4 * 256 + 4
    else:
        constants = 4 * blocks
    return codes + constants + 4 * 16  # + the 16-level NF4 codebook


def optimizer_state_bytes(numels: list[int], optimizer: str, weight_bytes: int) -> int:
    """Optimizer state for trainable tensors of sizes ``numels``.

    ``adamw`` (torch): exp_avg + exp_avg_sq in the dtype of the weights it updates
    (``weight_bytes``) + a 4-byte step per tensor. ``adamw-32bit`` (bitsandbytes, paged
    or not): two fp32 states. ``adamw-8bit``: two uint8 states + one fp32 absmax per 256
    values per state (tensors under 4096 values stay 32-bit) + two shared 256-entry fp32
    quantization maps. ``sgd-momentum``: one buffer in the weights' dtype.
    """
    if optimizer == "adamw":
        return sum(2 * weight_bytes * n + 4 for n in numels)
    if optimizer == "adamw-32bit":
        return sum(8 * n for n in numels)
    if optimizer == "adamw-8bit":
        big = [n for n in numels if n >= ADAM8_MIN_SIZE]
        small = sum(8 * n for n in numels if n < ADAM8_MIN_SIZE)
        return small + sum(2 * n + 8 * math.ceil(n / ADAM8_BLOCKSIZE) for n in big) + (2048 if big else 0)
    if optimizer == "sgd-momentum":
        return sum(weight_bytes * n for n in numels)
    return 0


_MODULE_PATHS = {  # block-relative name (ModelShape.block_linears) -> module path in transformers
    "gpt2": ("transformer.h.{i}.", {"c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj",
                                    "c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}),
    "llama": ("model.layers.{i}.", {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                                    "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
                                    "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                                    "down_proj": "mlp.down_proj"}),
}


def _targets(shape: ModelShape, target_modules) -> list[tuple[str, int, int, bool]]:
    """The block linears ``target_modules`` selects, by the same rule as ``add_lora``
    (PEFT's; :func:`lora_lab.lora.baselayer.select_targets`), applied to the module paths the
    transformers model has (``transformer.h.3.attn.c_attn``, ``model.layers.3.self_attn.q_proj``).
    The prediction assumes the same adapters in every block, so a selection that differs
    between blocks (a regex or path naming block 0 only) is refused."""
    linears = shape.block_linears()
    targets = check_target_modules(target_modules)
    if targets == ALL_LINEAR:
        return linears
    prefix, paths = _MODULE_PATHS[shape.arch]
    full = {}  # module path -> (block, block-relative name)
    for i in range(shape.n_layers):
        for name, *_ in linears:
            full[prefix.format(i=i) + paths[name]] = (i, name)
    chosen = select_targets(targets, list(full), list(full), where=shape.name,
                            what="block linear layers")
    per_block = [sorted({full[n][1] for n in chosen if full[n][0] == i}) for i in range(shape.n_layers)]
    for i, names in enumerate(per_block):
        if names != per_block[0]:
            raise ValueError(f"target_modules={target_modules!r} selects {per_block[0]} in block 0 but "
                             f"{names} in block {i}; training_memory predicts the same adapters in every "
                             "block: pass 'all-linear' or a list of names such as ['c_attn']")
    return [lin for lin in linears if lin[0] in per_block[0]]


def _check_positive(**kw) -> None:
    for name, value in kw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def training_memory(model: str | ModelShape = "gpt2", recipe: str = "lora", *, r: int = 8,
                    target_modules="all-linear", base_dtype: str | None = None,
                    double_quant: bool | None = None, trainable_dtype: str | None = None,
                    compute_dtype: str = "bf16", optimizer: str | None = None,
                    master_weights: bool | None = None, batch_size: int = 1, seq_len: int = 512,
                    gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
                    device: str = "cuda", lora_dropout: float = 0.0,
                    autocast: bool = True) -> MemoryBreakdown:
    """Predict training memory, in bytes, one entry per component.

    Per trainable weight: ``bytes(trainable) + bytes(grad) + optimizer + master`` —
    16 B for mixed-precision full fine-tuning with AdamW. Adapter weights: ``r·(in+out)``
    per wrapped layer.

    Args:
        model: a preset name (``lora_lab.memory.shapes.PRESET_NAMES``) or a ModelShape.
        recipe: ``"full"``, ``"lora"`` or ``"qlora"``; each sets the defaults of the
            arguments left as ``None`` (see ``RECIPES``).
        r: LoRA rank (>= 1). target_modules: ``"all-linear"``, a list of block linear names
            (``["c_attn"]``, ``["q_proj", "v_proj"]``) or a regex string matched against the
            full module paths (PEFT's rule, as ``add_lora``); the same layers in every block.
        base_dtype: frozen base storage, one of ``BASE_DTYPES``; for ``"full"`` the dtype the
            weights train in (must be fp32/bf16/fp16).
        double_quant: nf4 with quantized absmax constants. trainable_dtype: adapter dtype.
        compute_dtype: activation dtype when the base is int8/nf4 (bnb's compute dtype).
        optimizer: one of ``OPTIMIZERS``. master_weights: keep an fp32 copy of 16-bit
            trainable weights (mixed precision).
        batch_size, seq_len: positive workload sizes. gradient_checkpointing: keep only each
            block's input (plus one block recomputed during backward).
        attn_implementation: ``"sdpa"`` or ``"eager"``. device: ``"cuda"`` or ``"cpu"``
            (dropout masks are 1-byte bools on CUDA, full tensors on CPU).
        lora_dropout: in [0, 1). autocast: the forward runs under ``torch.autocast`` in the
            compute dtype (``Trainer(bf16=True)``); ``False`` for plain eager modules.

    Raises:
        ValueError: an unknown recipe/dtype/optimizer or a non-positive size, naming it.
    """
    shape = model_shape(model)
    defaults = dict(RECIPES[_choice("recipe", recipe, tuple(RECIPES))])
    base_dtype = _choice("base_dtype", base_dtype or defaults["base_dtype"], BASE_DTYPES)
    double_quant = defaults.get("double_quant", True) if double_quant is None else bool(double_quant)
    optimizer = _choice("optimizer", optimizer or defaults["optimizer"], OPTIMIZERS)
    compute_dtype = _choice("compute_dtype", compute_dtype, ("fp32", "bf16", "fp16"))
    _check_positive(r=r, batch_size=batch_size, seq_len=seq_len)
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    act_dtype = base_dtype if base_dtype in DTYPE_BYTES else compute_dtype
    full = recipe == "full"
    if full:
        if base_dtype not in DTYPE_BYTES:
            raise ValueError(f"base_dtype={base_dtype!r}: full fine-tuning cannot train quantized "
                             f"weights; use one of {tuple(DTYPE_BYTES)}")
        trainable_dtype = base_dtype
    trainable_dtype = _choice("trainable_dtype", trainable_dtype or defaults.get("trainable_dtype"),
                              tuple(DTYPE_BYTES))
    if master_weights is None:
        master_weights = defaults.get("master_weights", False)
    master_weights = bool(master_weights) and trainable_dtype != "fp32"  # fp32 weights are the master

    L, tb = shape.n_layers, DTYPE_BYTES[trainable_dtype]
    linears = shape.block_linears()
    other = shape.other_params()
    if full:
        targets, numels = [], shape.param_numels()
        frozen_quant = frozen_plain = 0
    else:
        targets = _targets(shape, target_modules)
        for name, i, o, _ in targets:
            warn_rank_above_min(r, o, i, names=("out_features", "in_features"), where=f" of {name}")
        numels = [n for _, i, o, _ in targets for n in (r * i, r * o)] * L
        quantized = base_dtype in ("int8", "nf4")
        plain = sum(other.values()) + (0 if quantized else L * sum(i * o for _, i, o, _ in linears))
        frozen_plain = plain * DTYPE_BYTES[act_dtype]
        frozen_quant = L * sum(quantized_linear_bytes(i, o, base_dtype, double_quant)
                               for _, i, o, _ in linears) if quantized else 0
    trainable = sum(numels)
    opt = optimizer_state_bytes(numels, optimizer, 4 if master_weights else tb)
    act = activation_memory(shape, batch_size=batch_size, seq_len=seq_len, full=full,
                            targets=[n for n, *_ in targets], r=r,
                            act_bytes=DTYPE_BYTES[act_dtype], adapter_bytes=tb,
                            lora_dropout=lora_dropout, attn_implementation=attn_implementation,
                            device=device, gradient_checkpointing=gradient_checkpointing,
                            autocast=autocast)
    components = {
        "quantized base": frozen_quant,
        "unquantized base": frozen_plain,
        "trainable weights": trainable * tb,
        "gradients": trainable * tb,
        "optimizer state": opt,
        "master weights": 4 * trainable if master_weights else 0,
        "activations": act["total"],
    }
    counts = {"trainable params": trainable, "total params": shape.n_params() + (0 if full else trainable),
              "trainable tensors": len(numels)}
    assumptions = dict(model=shape.name, recipe=recipe, r=None if full else r,
                       target_modules=None if full else target_modules, base_dtype=base_dtype,
                       double_quant=double_quant if base_dtype == "nf4" else None,
                       bits_per_param=bits_per_param(NF4_BLOCKSIZE, double_quant) if base_dtype == "nf4"
                       else 8 * (DTYPE_BYTES.get(base_dtype) or 1),
                       trainable_dtype=trainable_dtype, compute_dtype=act_dtype, optimizer=optimizer,
                       master_weights=master_weights, batch_size=batch_size, seq_len=seq_len,
                       gradient_checkpointing=gradient_checkpointing,
                       attn_implementation=attn_implementation, device=device, autocast=autocast)
    return MemoryBreakdown(components, counts, act, assumptions)


def bytes_per_trainable_param(trainable_dtype: str = "bf16", optimizer: str = "adamw",
                              master_weights: bool = True) -> int:
    """Weights + gradients + optimizer state + master copy per trainable weight (no activations)."""
    tb = DTYPE_BYTES[_choice("trainable_dtype", trainable_dtype, tuple(DTYPE_BYTES))]
    master = bool(master_weights) and trainable_dtype != "fp32"
    upd = 4 if master else tb
    per = {"adamw": 2 * upd, "adamw-32bit": 8, "adamw-8bit": 2, "sgd-momentum": upd, "none": 0}
    return 2 * tb + per[_choice("optimizer", optimizer, OPTIMIZERS)] + (4 if master else 0)


def judge_claim(claimed: float, computed: float, kind: str = "about") -> str:
    """Verdict on a quoted figure: ``"right"``, ``"approximate"`` or ``"wrong"``.

    ``kind="about"``: right within 5%, approximate within 25%, else wrong.
    ``"more than"`` / ``"less than"``: right if the bound holds, approximate if it misses by
    at most 10%, else wrong.
    """
    if kind == "about":
        err = abs(computed / claimed - 1)
        return "right" if err <= 0.05 else "approximate" if err <= 0.25 else "wrong"
    if kind not in ("more than", "less than"):
        raise ValueError(f"kind must be 'about', 'more than' or 'less than', got {kind!r}")
    holds = computed > claimed if kind == "more than" else computed < claimed
    return "right" if holds else "approximate" if abs(computed / claimed - 1) <= 0.10 else "wrong"
