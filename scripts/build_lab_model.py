"""Build the shipped small GPT-2, data/lab-gpt2/, from nothing (downloads nothing).

    python scripts/build_lab_model.py                      # defaults used for the shipped model
    python scripts/build_lab_model.py --steps 200 --stories 20000 --out /tmp/tiny   # a quick try

Steps, all seeded:
  1. generate the pretraining corpus: stories from lora_lab.corpus.stories (with recall sentences,
     the copying practice the fine-tuning task leans on);
  2. train a byte-level BPE tokenizer on it with `tokenizers` (GPT-2's scheme, small vocab);
  3. pack stories into blocks of n_positions tokens, each story after an <|endoftext|>;
  4. pretrain a GPT2LMHeadModel (AdamW, warm-up + cosine decay, grad clipping; bf16 autocast
     on CUDA, which is used when available);
  5. save model + tokenizer + generation config in Hugging Face format;
  6. measure held-out loss, the copying skill (probe accuracy) and the task's exact match
     before any fine-tuning (it must be low: the task's format is new), into build_metrics.json.
The script prints the final loss. `--eval-only` repeats step 6 on the saved model.
The model card (README.md) is written by hand from build_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_lab.corpus.stories import pretraining_text  # noqa: E402
from lora_lab.corpus.task import make_split  # noqa: E402

EOS = "<|endoftext|>"


def _chunk(args):
    start, n, seed = args
    return [pretraining_text(i, seed) for i in range(start, start + n)]


def generate_corpus(n: int, seed: int, workers: int, start: int = 0) -> list[str]:
    """Stories start .. start+n-1 of the pretraining stream (in order, whatever ``workers``)."""
    step = 20_000
    jobs = [(s, min(step, start + n - s), seed) for s in range(start, start + n, step)]
    if workers <= 1:
        return [t for j in jobs for t in _chunk(j)]
    with Pool(workers) as pool:
        return [t for part in pool.map(_chunk, jobs) for t in part]


def _encode_chunk(args):
    start, n, seed, tokenizer_json = args
    from tokenizers import Tokenizer

    texts = [pretraining_text(i, seed) for i in range(start, start + n)]
    enc = Tokenizer.from_str(tokenizer_json).encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
    flat = np.fromiter((t for e in enc for t in e.ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths, sum(len(t.split()) for t in texts)


def encode_corpus(n: int, seed: int, tokenizer, workers: int, start: int = 0):
    """Generate and tokenize stories start .. start+n-1: (flat token ids, lengths, words)."""
    step = 20_000
    jobs = [(s, min(step, start + n - s), seed, tokenizer._tokenizer.to_str())
            for s in range(start, start + n, step)]
    if workers <= 1:
        parts = [_encode_chunk(j) for j in jobs]
    else:
        with Pool(workers) as pool:
            parts = pool.map(_encode_chunk, jobs)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            sum(p[2] for p in parts))


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) wrapped as a GPT2TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                             model_max_length=1024)


def pack(flat: np.ndarray, lengths: np.ndarray, block: int, eos: int) -> np.ndarray:
    """Greedy packing of stories (``flat`` = all token ids, ``lengths`` per story) into rows
    of ``block`` tokens: each story after an EOS, each row closed by an EOS and padded
    with -1; stories longer than a row are dropped. Returns (rows, block) int32."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    keep = lengths + 2 <= block
    rows, cols = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64)
    row = used = 0
    for i, (n, k) in enumerate(zip(lengths.tolist(), keep.tolist())):
        if not k:
            continue
        if used + n + 2 > block:  # the story, its leading EOS, and the row's closing EOS
            row, used = row + 1, 0
        rows[i], cols[i] = row, used
        used += n + 1
    lengths, starts, rows, cols = lengths[keep], starts[keep], rows[keep], cols[keep]
    out = np.full((row + 1, block), -1, dtype=np.int32)
    out[rows, cols] = eos
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = np.repeat(starts, lengths) + offset
    out[np.repeat(rows, lengths), np.repeat(cols + 1, lengths) + offset] = flat[src]
    last = np.zeros(row + 1, dtype=np.int64)
    np.maximum.at(last, rows, cols + lengths + 1)
    out[np.arange(row + 1), last] = eos
    return out


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_loss(model, rows: torch.Tensor, amp: bool) -> torch.Tensor:
    """Mean next-token loss of packed rows (-1 = padding, masked out)."""
    input_ids = rows.clamp(min=0)
    labels = rows.long().masked_fill(rows < 0, -100)
    mask = (rows >= 0).long()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        return model(input_ids=input_ids.long(), attention_mask=mask, labels=labels).loss


def pretrain(args) -> dict:
    """Steps 1-4 and 6: corpus, tokenizer, packing, pretraining; saves to ``args.out``."""
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    t0 = time.time()
    torch.manual_seed(args.seed)
    tokenizer = train_tokenizer(generate_corpus(min(args.stories, 200_000), args.seed, args.workers),
                                args.vocab_size)
    eos = tokenizer.eos_token_id
    flat, lengths, words = encode_corpus(args.stories, args.seed, tokenizer, args.workers)
    blocks = pack(flat, lengths, args.n_positions, eos)
    n_tokens = int((blocks >= 0).sum())
    print(f"corpus: {len(lengths)} stories, {words / len(lengths):.1f} words each; tokenizer: "
          f"{len(tokenizer)} tokens; data: {blocks.shape[0]} blocks, {n_tokens / 1e6:.1f}M tokens "
          f"({time.time() - t0:.0f}s)", flush=True)

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.n_positions, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=eos, eos_token_id=eos,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    model = GPT2LMHeadModel(config).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=args.device == "cuda")
    amp = args.device == "cuda"
    data = torch.from_numpy(blocks).to(args.device)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    model.train()
    t_train, history = time.time(), []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(0, data.shape[0], (args.batch_size,), device=args.device, generator=gen)
        loss = batch_loss(model, data[idx], amp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == args.steps - 1:
            history.append((step, loss.item()))
            print(f"step {step:6d}  loss {loss.item():.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.time() - t_train:.0f}s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                                               do_sample=False, max_new_tokens=40)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = args.n_positions
    tokenizer.save_pretrained(out)
    return {"final_train_loss": history[-1][1], "params": n_params, "train_tokens": n_tokens,
            "tokens_seen": args.steps * args.batch_size * args.n_positions,
            "train_seconds": time.time() - t_train, "build_seconds": time.time() - t0,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "args": {k: v for k, v in vars(args).items() if k != "eval_only"}, "loss_history": history}


def measure(args) -> dict:
    """Step 5 on the saved model: held-out loss, the copying probe, the task before fine-tuning."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_lab.finetune.evaluate import evaluate_task

    model = AutoModelForCausalLM.from_pretrained(args.out).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    eos = tokenizer.eos_token_id
    held = encode_corpus(2000, args.seed, tokenizer, 1, start=args.stories)  # never trained on
    held_blocks = torch.from_numpy(pack(held[0], held[1], args.n_positions, eos)).to(args.device)
    with torch.no_grad():
        losses = [batch_loss(model, held_blocks[i:i + 64], False).item() for i in range(0, len(held_blocks), 64)]
    probe = evaluate_task(model, tokenizer, make_split("eval", 500, style="probe"), max_new_tokens=4)
    task = evaluate_task(model, tokenizer, make_split("eval", 500), max_new_tokens=6)
    return {"heldout_loss": float(np.mean(losses)), "probe_leading_match": probe.leading_match,
            "task_exact_match_base": task.exact_match, "task_leading_match_base": task.leading_match}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/lab-gpt2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stories", type=int, default=3_000_000, help="distinct pretraining stories")
    p.add_argument("--vocab-size", type=int, default=2048, help="upper bound; the corpus needs ~1470")
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--steps", type=int, default=12_000)
    p.add_argument("--batch-size", type=int, default=128, help="blocks of n_positions tokens per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (leave cores to others)")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--eval-only", action="store_true", help="only re-measure the model saved in --out")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    metrics_path = Path(args.out) / "build_metrics.json"
    if args.eval_only:
        metrics = json.loads(metrics_path.read_text())
        args = argparse.Namespace(**{**vars(args), **{k: v for k, v in metrics["args"].items()
                                                      if k in ("stories", "seed", "n_positions")}})
    else:
        metrics = pretrain(args)
    metrics.update(measure(args))
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"held-out loss {metrics['heldout_loss']:.4f} (perplexity {math.exp(metrics['heldout_loss']):.2f}); "
          f"copying probe {100 * metrics['probe_leading_match']:.1f}%; task exact match before fine-tuning "
          f"{100 * metrics['task_exact_match_base']:.1f}% (answer first: "
          f"{100 * metrics['task_leading_match_base']:.1f}%)", flush=True)
    print(f"final loss {metrics['final_train_loss']:.4f} (train), {metrics['heldout_loss']:.4f} (held-out); "
          f"model in {args.out}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
