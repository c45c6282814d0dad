"""Activation memory: the tensors a decoder saves for backward, op by op.

Autograd keeps, for every op whose output needs a gradient, the inputs its backward
reads. A linear ``y = x Wᵀ`` keeps ``x`` only if ``W`` trains (∂L/∂W = ∂L/∂yᵀ x); a frozen
layer keeps nothing but its weight. So LoRA saves far less than full fine-tuning in the
linear layers, yet still the same norms, attention and MLP nonlinearities, plus, per
wrapped layer, its input (for A's gradient) and the rank-r ``A x`` (for B's).

Sizes: ``s = batch·seq`` tokens, width ``h``, MLP width ``f``, ``a`` heads; bytes per
element ``e`` (activations), ``ab`` (adapters), ``m`` (a dropout mask: 1-byte bool on CUDA,
a full tensor on CPU). The model follows transformers' GPT-2 and Llama code (checked
against ``lora_lab.memory.measure`` with ``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

from lora_lab.memory.shapes import ModelShape

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
DEVICES = ("cuda", "cpu")


class _Saved:
    """Saved storages by key, so one tensor saved by two ops counts once."""

    def __init__(self):
        self.items: dict[str, int] = {}

    def add(self, key: str, nbytes: int) -> None:
        self.items.setdefault(key, nbytes)

    def total(self, prefix: str = "") -> int:
        return sum(v for k, v in self.items.items() if k.startswith(prefix))


class _Ctx:
    def __init__(self, shape, B, T, full, targets, r, e, ab, lora_dropout, attn, device, autocast):
        self.shape, self.B, self.T, self.s = shape, B, T, B * T
        self.full, self.targets, self.r, self.e = full, set(targets), r, e
        # under torch.autocast the adapters' matmuls run in the compute dtype: x is not
        # re-cast to fp32, but a 16-bit copy of A and B is made (and kept) each forward
        self.cast_weights = autocast and ab != e
        self.ab = e if autocast else ab
        self.lora_dropout, self.device = lora_dropout, device
        self.m = 1 if device == "cuda" else e  # CPU dropout multiplies by a float noise tensor
        self.dropout = shape.dropout > 0
        self.stat = 4 if device == "cuda" else e  # LayerNorm mean/rstd: fp32 on CUDA, input dtype on CPU
        # on CPU, SDPA with dropout falls back to torch's math path: eager's tensors, upcast to fp32
        self.attn = attn if attn == "eager" or not (self.dropout and device == "cpu") else "math"
        self.ae = 4 if self.attn == "math" else e

    def linear(self, S: _Saved, name: str, x_key: str, rg: bool, n_in: int) -> bool:
        """Save what ``name``'s backward needs; return whether its output needs a gradient."""
        s, e, ab = self.s, self.e, self.ab
        if self.full:
            S.add(x_key, s * n_in * e)  # x, for ∂L/∂W
            return True
        if name not in self.targets:
            return rg  # frozen: keeps only its own weight
        layer = x_key.split(".")[0]
        if self.lora_dropout > 0:
            if rg:
                S.add(f"{layer}.{name}.lora_dropout mask", s * n_in * self.m)
            S.add(f"{layer}.{name}.lora_A input", s * n_in * ab)
        elif ab == e:
            S.add(x_key, s * n_in * e)  # the same x the base layer read
        else:
            S.add(f"{layer}.{name}.lora_A input", s * n_in * ab)  # x cast to the adapter dtype
        S.add(f"{layer}.{name}.lora_A output", s * self.r * ab)  # A x, for ∂L/∂B
        if self.cast_weights:
            n_out = dict((n, o) for n, _, o, _ in self.shape.block_linears())[name]
            S.add(f"{layer}.{name}.A, B autocast copies", self.r * (n_in + n_out) * e)
        return True


def _gpt2_block(S: _Saved, c: _Ctx, layer: int, rg: bool) -> bool:
    sh, s, e, m, B, T = c.shape, c.s, c.e, c.m, c.B, c.T
    h, f, a = sh.d_model, sh.d_ff, sh.n_heads
    if rg:  # LayerNorm keeps its input and per-token mean, rstd
        S.add(f"{layer}.ln_1 input", s * h * e)
        S.add(f"{layer}.ln_1 mean+rstd", 2 * s * c.stat)
    rg_qkv = c.linear(S, "c_attn", f"{layer}.ln_1 output", rg, h)
    if rg_qkv:
        if c.attn == "sdpa":  # flash-style: q, k, v, output + log-sum-exp per row, no T×T matrix
            # CUDA kernels read q, k, v as views of c_attn's (s, 3h) output; torch's CPU kernel
            # copies q and v, while k's view keeps the whole fused output alive: 5·s·h in all
            S.add(f"{layer}.attn q,k,v", (5 if c.device == "cpu" else 3) * s * h * e)
            S.add(f"{layer}.attn output", s * h * e)
            S.add(f"{layer}.attn logsumexp", B * a * T * 4)
        else:  # eager / math: softmax(q kᵀ/√d) is (B, a, T, T)
            ae = c.ae
            # q kᵀ and p v copy their operands into (B·a, T, d) batches; with B = 1 the copy of
            # q is a view, which keeps the whole fused (s, 3h) c_attn output alive: 5·s·h
            S.add(f"{layer}.attn q,k,v", (5 if B == 1 and c.attn == "eager" else 3) * s * h * ae)
            S.add(f"{layer}.attn softmax", B * a * T * T * ae)
            if c.dropout:
                S.add(f"{layer}.attn dropout mask", B * a * T * T * (ae if c.device == "cpu" else 1))
                S.add(f"{layer}.attn dropout output", B * a * T * T * ae)
    rg_proj = c.linear(S, "attn.c_proj", f"{layer}.attn output", rg_qkv, h)
    if c.dropout and rg_proj:
        S.add(f"{layer}.resid dropout 1 mask", s * h * m)
    rg = rg or rg_proj
    if rg:
        S.add(f"{layer}.ln_2 input", s * h * e)
        S.add(f"{layer}.ln_2 mean+rstd", 2 * s * c.stat)
    rg_fc = c.linear(S, "c_fc", f"{layer}.ln_2 output", rg, h)
    if rg_fc:
        if sh.activation == "gelu_new":  # 0.5x(1+tanh(√(2/π)(x+0.044715x³))) in Python ops
            S.add(f"{layer}.gelu x, tanh, 0.5x, 1+tanh", 4 * s * f * e)
        else:
            S.add(f"{layer}.act input", s * f * e)
    rg_mp = c.linear(S, "mlp.c_proj", f"{layer}.act output", rg_fc, f)
    if c.dropout and rg_mp:
        S.add(f"{layer}.resid dropout 2 mask", s * h * m)
    return rg or rg_mp


def _rms(S: _Saved, c: _Ctx, key: str, rg: bool) -> None:
    """HF RMSNorm: x.float() → pow → rsqrt → x·rsqrt → .to(dtype) → weight·(…)."""
    if rg:
        S.add(f"{key} input fp32", c.s * c.shape.d_model * 4)
        S.add(f"{key} rsqrt", c.s * 4)
    if c.full:  # weight·x̂ keeps x̂ for the weight's gradient
        S.add(f"{key} normalized", c.s * c.shape.d_model * c.e)


def _llama_block(S: _Saved, c: _Ctx, layer: int, rg: bool) -> bool:
    sh, s, e, B, T = c.shape, c.s, c.e, c.B, c.T
    h, f, a, kv = sh.d_model, sh.d_ff, sh.n_heads, sh.kv_heads * sh.head_dim
    rg = rg or c.full
    _rms(S, c, f"{layer}.input_layernorm", rg)
    rgs = [c.linear(S, n, f"{layer}.input_layernorm output", rg, h) for n in ("q_proj", "k_proj", "v_proj")]
    rg_att = any(rgs)
    if rg_att:
        S.add("rotary cos,sin", 2 * B * T * sh.head_dim * e)  # computed once, shared by layers
        if c.attn == "sdpa":  # GQA kernels read k, v at kv heads
            S.add(f"{layer}.attn q,k,v (roped q, k)", s * (h + 2 * kv) * e)
            S.add(f"{layer}.attn output", s * h * e)
            S.add(f"{layer}.attn logsumexp", B * a * T * 4)
        else:  # repeat_kv copies k, v to all heads; softmax in fp32, cast back for @ v
            S.add(f"{layer}.attn q,k,v (k, v repeated)", 3 * s * h * e)
            S.add(f"{layer}.attn softmax fp32", B * a * T * T * 4)
            if e != 4:
                S.add(f"{layer}.attn probs", B * a * T * T * e)
    rg_o = c.linear(S, "o_proj", f"{layer}.attn output", rg_att, h)
    rg = rg or rg_o
    _rms(S, c, f"{layer}.post_attention_layernorm", rg)
    rg_g = c.linear(S, "gate_proj", f"{layer}.post_attention_layernorm output", rg, h)
    rg_u = c.linear(S, "up_proj", f"{layer}.post_attention_layernorm output", rg, h)
    if rg_g:
        S.add(f"{layer}.silu input", s * f * e)
    if rg_g or rg_u:  # silu(g) · u keeps both factors
        S.add(f"{layer}.silu output", s * f * e)
        S.add(f"{layer}.up output", s * f * e)
    rg_d = c.linear(S, "down_proj", f"{layer}.mlp product", rg_g or rg_u, f)
    return rg or rg_d


def activation_memory(shape: ModelShape, *, batch_size: int, seq_len: int, full: bool,
                      targets, r: int, act_bytes: int, adapter_bytes: int,
                      lora_dropout: float = 0.0, attn_implementation: str = "sdpa",
                      device: str = "cuda", gradient_checkpointing: bool = False,
                      autocast: bool = True) -> dict:
    """Bytes of tensors saved for backward in one training step (forward with the loss).

    Without checkpointing: the sum over blocks + embeddings/head/loss. With it (HF style,
    one checkpoint per block): each block's input ``s·h·e`` is stored, and during
    backward one block at a time is recomputed, so the peak adds the largest block.
    ``autocast``: the forward runs under ``torch.autocast`` (as ``Trainer(bf16=True)``), so
    fp32 adapters compute in the activation dtype.

    Returns:
        dict with ``"total"``, ``"stored"`` (kept through the forward pass),
        ``"recompute peak"``, ``"per layer"`` (a typical block), ``"outside blocks"``,
        ``"logits"`` (fp32 log-softmax of the loss) and ``"ops"`` (typical block, by op).
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                         f"got {attn_implementation!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    c = _Ctx(shape, batch_size, seq_len, full, targets, r, act_bytes, adapter_bytes,
             lora_dropout, attn_implementation, device, autocast)
    s, h, e, V = c.s, shape.d_model, act_bytes, shape.vocab_size
    S = _Saved()
    block = _gpt2_block if shape.arch == "gpt2" else _llama_block
    # with frozen embeddings nothing needs a gradient before the first adapter, except that
    # transformers' gradient_checkpointing_enable() makes the embedding output require grad
    rg = full or gradient_checkpointing
    if full:
        S.add("out.token ids", s * 8 + (seq_len * 8 if shape.arch == "gpt2" else 0))
    if rg and shape.arch == "gpt2" and c.dropout:
        S.add("out.embedding dropout mask", s * h * c.m)
    per_layer = []
    for layer in range(shape.n_layers):
        before = S.total()
        rg = block(S, c, layer, rg)
        per_layer.append(S.total() - before)
    if shape.arch == "gpt2":
        if rg:
            S.add("out.ln_f input", s * h * e)
            S.add("out.ln_f mean+rstd", 2 * s * c.stat)
    else:
        _rms(S, c, "out.norm", rg)
    if full:
        S.add("out.head input", s * h * e)
    logits = s * V * 4 + s * 8 + 4 if rg else 0  # fp32 log-softmax, targets, total weight
    typical = max(per_layer)
    shared = S.total("rotary")
    outside = S.total("out.") + shared + logits
    layers = S.total() - S.total("out.") - shared
    if gradient_checkpointing:
        stored = shape.n_layers * s * h * e + outside
        peak = typical
    else:
        stored, peak = layers + outside, 0
    last = shape.n_layers - 1
    ops = {k.split(".", 1)[1]: v for k, v in S.items.items() if k.startswith(f"{last}.")}
    return {"total": stored + peak, "stored": stored, "recompute peak": peak, "per layer": typical,
            "outside blocks": outside, "logits": logits, "ops": ops}
