"""nanoGPT's CPU benchmark in PyTorch, measured the way we measure ours: the yardstick for the
Shakespeare quality figure in the README.

    /tmp/torchvenv/bin/python benchmarks/pytorch_shakespeare.py \
        --data ../shared/data/tinyshakespeare.txt --seed 1337 [--no-bias]

The model and training step are those of benchmarks/pytorch_train.py (GPT-2 architecture,
tanh GELU); the recipe is nanoGPT's: character vocabulary, n_layer 4, n_head 4, n_embd 128,
context 64, batch 12, AdamW (betas 0.9/0.99, weight decay 0.1 on matrices), lr 1e-3 with 100
warmup steps and a cosine to 1e-4 at step 2,000, gradient clipping at 1.0, no dropout
(`--beta1`, `--beta2` and `--weight-decay` change the optimizer's settings). The text
is split as ours is (90 %, the cut moved to the nearest line start), and the loss reported is
over the *whole* validation split in non-overlapping windows of 64 (what
`python -m gpt.evaluate --average tokens` reports), next to nanoGPT's own estimate (20 random
batches of 12). PyTorch is not a dependency of this project; see benchmarks/pytorch_train.py.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_train import GPT

# Our split rule, so both sides see the same validation text. (This environment needs numpy
# and regex, which the project needs anyway.)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpt.data.corpora import split_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no-bias", action="store_true", help="nanoGPT's default: no biases")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.99)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    args = parser.parse_args()

    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    train_text, val_text = split_text(text)             # 90 %, cut at the nearest line start
    train = torch.tensor([index[c] for c in train_text], dtype=torch.long)
    val = torch.tensor([index[c] for c in val_text], dtype=torch.long)
    block, batch, lr, min_lr, warmup = 64, 12, 1e-3, 1e-4, 100

    torch.manual_seed(args.seed)
    model = GPT(len(chars), block, n_layer=4, n_head=4, n_embd=128)
    if args.no_bias:
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias = None
    for name, p in model.named_parameters():              # GPT-2's initialisation
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * 4) if name.endswith(("c_proj.weight",
                                                              "mlp_proj.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(args.beta1, args.beta2))

    def get_batch(data, generator=None):
        ix = torch.randint(len(data) - block, (batch,), generator=generator)
        return (torch.stack([data[i:i + block] for i in ix]),
                torch.stack([data[i + 1:i + 1 + block] for i in ix]))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / (args.iters - warmup)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    start = time.perf_counter()
    for step in range(args.iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch(train)
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        estimate = float(np.mean([model.loss(*get_batch(val, generator)).item()
                                  for _ in range(20)]))
        n = (len(val) - 1) // block                        # every window of 64, no overlap
        xs = val[:n * block].view(n, block)
        ys = val[1:n * block + 1].view(n, block)
        total = sum(model.loss(xs[i:i + 64], ys[i:i + 64]).item() * len(xs[i:i + 64])
                    for i in range(0, n, 64))
    print(json.dumps({"seed": args.seed, "bias": not args.no_bias,
                      "betas": [args.beta1, args.beta2], "weight_decay": args.weight_decay,
                      "train_seconds": seconds,
                      "val_loss_full": total / n, "val_loss_20_batches": estimate,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
