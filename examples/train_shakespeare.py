"""Train a small character-level GPT on Tiny Shakespeare, then let it write: the whole job in
one page, through the public API (train.py does the same with more options, checkpoints and
resume).

    python examples/train_shakespeare.py                      # 2,000 steps of a 0.8M-parameter GPT
    python examples/train_shakespeare.py --max-iters 200 --sample-tokens 200
"""
import argparse
import time

import numpy as np

from autograd import manual_seed, no_grad
from autograd.allocator import keep_freed_memory
from autograd.optim import AdamW, clip_grad_norm, cosine_with_warmup, decay_groups
from bpe import CharTokenizer
from gpt import GPT, GPTConfig
from gpt.core.generate import generate
from gpt.data.corpora import fetch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-iters", type=int, default=2000, help="optimizer steps")
parser.add_argument("--eval-interval", type=int, default=250, help="steps between evaluations")
parser.add_argument("--eval-iters", type=int, default=20, help="batches per evaluation")
parser.add_argument("--batch-size", type=int, default=12)
parser.add_argument("--block-size", type=int, default=64, help="context length in characters")
parser.add_argument("--n-layer", type=int, default=4)
parser.add_argument("--n-head", type=int, default=4)
parser.add_argument("--n-embd", type=int, default=128)
parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
parser.add_argument("--sample-tokens", type=int, default=500, help="characters to generate")
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--data-dir", default=None, help="download/cache directory")
args = parser.parse_args()
keep_freed_memory()      # let malloc reuse the step's freed arrays (a whole-process setting)

# -- data: one token per character, the first 90 % to train on, the rest to validate ---------
text = fetch("tinyshakespeare", data_dir=args.data_dir).read_text(encoding="utf-8")
tokenizer = CharTokenizer.train(text)
data = np.array(tokenizer.encode(text), dtype=np.int64)
n_train = int(0.9 * len(data))
splits = {"train": data[:n_train], "val": data[n_train:]}
print(f"{len(text):,} characters, vocabulary of {tokenizer.vocab_size}")


def get_batch(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """batch_size windows at random places; the targets y are the inputs x shifted by one."""
    source = splits[split]
    starts = rng.integers(0, len(source) - args.block_size, args.batch_size)
    x = np.stack([source[i:i + args.block_size] for i in starts])          # (B, T)
    y = np.stack([source[i + 1:i + 1 + args.block_size] for i in starts])  # (B, T)
    return x, y


# -- model and optimizer ----------------------------------------------------------------------
manual_seed(args.seed)                       # the initial weights
config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size,
                   n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, dropout=0.0)
model = GPT(config)
print(f"{model.num_parameters():,} parameters")
# Weight decay on the matrices only (not on biases and LayerNorm gains).
optimizer = AdamW(decay_groups(model, weight_decay=0.1), lr=args.lr, betas=(0.9, 0.99))
params = model.parameters()


@no_grad()
def estimate_loss() -> dict[str, float]:
    """Mean loss over eval_iters batches of each split, on the same batches every time."""
    model.eval()
    losses = {}
    for split in splits:
        rng = np.random.default_rng(0)
        losses[split] = float(np.mean([model.loss(*get_batch(split, rng)).item()
                                       for _ in range(args.eval_iters)]))
    model.train()
    return losses


# -- the training loop ------------------------------------------------------------------------
rng = np.random.default_rng(args.seed)
warmup_iters, min_lr = min(100, args.max_iters // 10), args.lr / 10
started = time.perf_counter()
for step in range(args.max_iters + 1):
    if step % args.eval_interval == 0 or step == args.max_iters:
        losses = estimate_loss()
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
              f"({time.perf_counter() - started:.0f} s)")
    if step == args.max_iters:
        break
    # Linear warmup, then a cosine decay to min_lr at the last step.
    optimizer.lr = cosine_with_warmup(step, args.lr, warmup_iters, args.max_iters, min_lr)
    x, y = get_batch("train", rng)
    loss = model.loss(x, y)                  # forward: mean cross-entropy of the next tokens
    optimizer.zero_grad()
    loss.backward()                          # backward: every parameter's .grad
    clip_grad_norm(params, 1.0)              # no step longer than a gradient of norm 1
    optimizer.step()
    if step % 50 == 0:
        print(f"  step {step}: loss {loss.item():.4f}, lr {optimizer.lr:.2e}")

# -- sampling: start from a newline and let the model continue ---------------------------------
prompt = tokenizer.encode("\n")
new_ids = generate(model, prompt, max_new_tokens=args.sample_tokens, temperature=0.8, top_k=40,
                   seed=args.seed)
print("--- sample ---")
print(tokenizer.decode(new_ids))
