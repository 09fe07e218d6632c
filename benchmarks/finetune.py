"""LoRA against full fine-tuning: trainable parameters and time per training step.

    python benchmarks/finetune.py                        # the default 4-layer CPU model and GPT-2 124M
    python benchmarks/finetune.py --config small --batch-size 8 --seq-len 128 --repeats 5
    python benchmarks/finetune.py --ckpt runs/pretrain   # a real checkpoint's shape

One step = forward, backward, gradient clipping and AdamW over the trainable parameters, on
the same random batch of token ids with next-token targets (an instruction-tuning step). Full
and LoRA steps alternate, so that load from other processes on the machine hits both alike;
the best of `--repeats` is reported. Weights are random: speed does not depend on them.

Where LoRA saves time: the backward pass skips x^T G, the weight gradient of every frozen
Linear (a third of a layer's backward matmul work), the tied embedding / output head gets no
gradient (for a large vocabulary the biggest matrix of all), and AdamW and clipping touch only
the small adapter matrices.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from autograd import functional as F
from autograd.allocator import keep_freed_memory
from autograd.optim import AdamW, clip_grad_norm, decay_groups
from gpt import GPT, GPTConfig
from gpt.finetune.lora import apply_lora

CONFIGS = {
    "small": dict(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def make_model(config: GPTConfig, lora_rank: int | None, alpha: float) -> tuple[GPT, AdamW]:
    model = GPT(config, rng=np.random.default_rng(0))
    if lora_rank is not None:
        apply_lora(model, lora_rank, alpha, rng=np.random.default_rng(1))
    return model, AdamW(decay_groups(model, 0.1), lr=1e-4)


def one_step(model: GPT, optimizer: AdamW, x: np.ndarray, y: np.ndarray) -> float:
    t0 = time.perf_counter()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    clip_grad_norm([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return time.perf_counter() - t0


def compare(name: str, config: GPTConfig, batch: int, seq: int, rank: int, repeats: int) -> None:
    rng = np.random.default_rng(2)
    seq = min(seq, config.block_size)
    ids = rng.integers(0, config.vocab_size, (batch, seq + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    runs = {"full": make_model(config, None, 0.0), f"LoRA r={rank}": make_model(config, rank,
                                                                                float(rank))}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for key, (model, opt) in runs.items():
        one_step(model, opt, x, y)                       # warm-up: buffers, optimizer state
    for _ in range(repeats):
        for key, (model, opt) in runs.items():
            times[key].append(one_step(model, opt, x, y))
    print(f"\n{name}: {config.n_layer} layers, n_embd {config.n_embd}, vocabulary "
          f"{config.vocab_size}; batch {batch} x {seq} tokens, best of {repeats}")
    print(f"{'':12} {'trainable':>13} {'of total':>13} {'step':>10} {'tokens/s':>10}")
    base = min(times["full"])
    for key, (model, _) in runs.items():
        params = model.parameters()
        trainable = sum(p.size for p in params if p.requires_grad)
        best = min(times[key])
        print(f"{key:12} {trainable:>13,} {sum(p.size for p in params):>13,} "
              f"{best * 1000:>8.0f}ms {batch * seq / best:>10,.0f}"
              + (f"   {base / best:.2f}x faster than full" if key != "full" else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=tuple(CONFIGS), nargs="*", default=list(CONFIGS))
    p.add_argument("--ckpt", default=None, help="use this checkpoint's shape instead")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.ckpt:
        from gpt.io.checkpoint import read_config, resolve_checkpoint
        configs = {args.ckpt: read_config(resolve_checkpoint(args.ckpt))}
    else:
        configs = {name: GPTConfig(**CONFIGS[name]) for name in args.config}
    for name, config in configs.items():
        batch = args.batch_size if config.n_embd < 768 else min(args.batch_size, 2)
        compare(name, config, batch, args.seq_len, args.rank, args.repeats)


if __name__ == "__main__":
    keep_freed_memory()                  # as train.py does
    main()
