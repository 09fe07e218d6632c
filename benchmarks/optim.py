"""How long does an optimizer step take, and how close is it to the memory bandwidth?

    python benchmarks/optim.py                      # GPT-2 124M shapes and a small config
    python benchmarks/optim.py --config small --optimizer sgd
    python benchmarks/optim.py --chunk 0 4096 16384 65536   # compare slice sizes (0 = whole)
    python benchmarks/optim.py --train-step                 # share of a real GPT training step
    python benchmarks/optim.py --config default --optimizer muon --threads 2

An AdamW step reads p, g, m, v and writes p, m, v: 7 arrays the size of the model. At a few
GB/s of memory bandwidth that, not Python, bounds a big model's step; for a small model the
per-tensor Python overhead is what counts. "GB/s" below is 7 * (parameter bytes) / time for
AdamW and 3 * (p, g read; p written) or 5 (with momentum) for SGD.

Muon is different: its Newton-Schulz iterations are matrix products, 2 k^2 n + k^3
multiply-adds per iteration for a (k, n) matrix, k <= n. `--optimizer muon` gives the blocks'
matrices to Muon and the rest to AdamW (as muon_with_adamw does) and reports the GEMM rate
the step reaches ("GFLOP/s", counting a multiply-add as two operations), with the BLAS library
on one core per thread as in training.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from autograd import functional as F
from autograd import optim
from autograd.allocator import keep_freed_memory
from autograd.nn import Parameter
from autograd.parallel import DataParallel


def gpt_shapes(vocab: int, block: int, n_layer: int, n_embd: int) -> list[tuple[int, ...]]:
    """The parameter shapes of a GPT-2 style model (weights stored (in, out); tied head)."""
    c = n_embd
    shapes: list[tuple[int, ...]] = [(vocab, c), (block, c)]
    for _ in range(n_layer):
        shapes += [(c,), (c,),                    # ln_1
                   (c, 3 * c), (3 * c,),          # attn.c_attn
                   (c, c), (c,),                  # attn.c_proj
                   (c,), (c,),                    # ln_2
                   (c, 4 * c), (4 * c,),          # mlp.c_fc
                   (4 * c, c), (c,)]              # mlp.c_proj
    shapes += [(c,), (c,)]                        # ln_f
    return shapes


CONFIGS = {
    "gpt2": dict(vocab=50257, block=1024, n_layer=12, n_embd=768),
    "small": dict(vocab=65, block=64, n_layer=4, n_embd=128),
    "default": dict(vocab=4096, block=128, n_layer=4, n_embd=128),    # train.py's model
}


def make_params(shapes, rng) -> list[Parameter]:
    params = []
    for shape in shapes:
        p = Parameter(rng.standard_normal(shape, dtype=np.float32) * 0.02)
        p.grad = rng.standard_normal(shape, dtype=np.float32) * 0.01
        params.append(p)
    return params


def bench_muon(name: str, repeats: int, threads: int, rng) -> None:
    """Muon on the blocks' matrices + AdamW on the rest (embeddings, vectors), one step."""
    shapes = gpt_shapes(**CONFIGS[name])
    params = make_params(shapes, rng)
    matrices = [p for p in params[2:] if p.ndim == 2]          # params[:2]: the embeddings
    rest = [p for p in params if not any(p is m for m in matrices)]
    muon = optim.Muon(matrices, lr=0.02)
    adamw = optim.AdamW(rest, lr=4e-3, betas=(0.8, 0.95), weight_decay=0.0)
    both = optim.MultiOptimizer([muon, adamw])
    multiply_adds = sum(5 * (2 * k * k * n + k ** 3) for k, n in (sorted(p.shape)
                                                                  for p in matrices))
    timings = {}
    with DataParallel(threads) as parallel:
        for label, opt in (("muon", muon), ("adamw", adamw), ("both", both)):
            opt.step(parallel)                  # the first step allocates state and scratch
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                opt.step(parallel)
                times.append(time.perf_counter() - start)
            timings[label] = min(times)
    print(f"{name:7s} muon+adamw threads={threads}  step={timings['both'] * 1e3:8.2f} ms: "
          f"Muon {timings['muon'] * 1e3:8.2f} ms on {len(matrices)} matrices "
          f"({sum(p.size for p in matrices) / 1e6:.2f}M weights, "
          f"{2 * multiply_adds / timings['muon'] / 1e9:5.1f} GFLOP/s), "
          f"AdamW {timings['adamw'] * 1e3:7.2f} ms on {len(rest)} tensors "
          f"({sum(p.size for p in rest) / 1e6:.2f}M)")


def bench(name: str, optimizer: str, repeats: int, rng) -> None:
    shapes = gpt_shapes(**CONFIGS[name])
    params = make_params(shapes, rng)
    n = sum(p.size for p in params)
    if optimizer == "adamw":
        opt = optim.AdamW(params, lr=1e-4, weight_decay=0.1)
        arrays_touched = 7
    else:
        opt = optim.SGD(params, lr=1e-3, momentum=0.9)
        arrays_touched = 5
    opt.step()                                   # first step allocates the state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    best = min(times)
    gigabytes = arrays_touched * n * 4 / 1e9
    chunk = optim.CHUNK if optim.CHUNK < 1 << 40 else "whole"
    print(f"{name:6s} {optimizer:5s} chunk={chunk:>6}  tensors={len(params):4d}  "
          f"params={n / 1e6:8.2f}M  step={best * 1e3:9.2f} ms (median "
          f"{np.median(times) * 1e3:9.2f})  {gigabytes / best:6.2f} GB/s")


def train_step_share(name: str, batch: int, block: int, repeats: int) -> None:
    """Time forward + backward of a real GPT against clip + AdamW.step() on its parameters."""
    from gpt import GPT, GPTConfig      # only here: the rest of the benchmark is autograd alone

    config = GPTConfig.preset("shakespeare-char" if name == "small" else "gpt2")
    model = GPT(config)
    opt = optim.AdamW(optim.decay_groups(model, 0.1), lr=1e-4)
    rng = np.random.default_rng(0)
    block = min(block, config.block_size)
    x = rng.integers(0, config.vocab_size, (batch, block))
    y = rng.integers(0, config.vocab_size, (batch, block))
    backward_times, optimizer_times = [], []
    for _ in range(repeats + 1):                 # the first round warms up (allocates state)
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        middle = time.perf_counter()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        end = time.perf_counter()
        backward_times.append(middle - start)
        optimizer_times.append(end - middle)
    fb, op = min(backward_times[1:]), min(optimizer_times[1:])      # best of: least noise
    print(f"{name:6s} train step B={batch} T={block}: forward+backward {fb * 1e3:9.1f} ms, "
          f"clip+AdamW {op * 1e3:7.1f} ms = {op / (fb + op):5.1%} of the step "
          f"({len(model.parameters())} tensors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["all", *CONFIGS], default="all")
    parser.add_argument("--optimizer", choices=["adamw", "sgd", "muon"], default="adamw")
    parser.add_argument("--threads", type=int, default=1,
                        help="--optimizer muon: threads of step(parallel), one core each")
    parser.add_argument("--chunk", type=int, nargs="*", default=[optim.CHUNK],
                        help="elements per slice of the update loop; 0 = whole tensors")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed steps (default: 5 for gpt2, 200 for small)")
    parser.add_argument("--train-step", action="store_true",
                        help="also time a GPT forward+backward against the optimizer")
    parser.add_argument("--batch", type=int, default=16, help="--train-step batch size")
    parser.add_argument("--block", type=int, default=128,
                        help="--train-step sequence length (capped at the model's)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.train_step:
        for name in (["small", "gpt2"] if args.config == "all" else [args.config]):
            train_step_share(name, args.batch, args.block, args.repeats or 5)
        return
    if args.optimizer == "muon":
        for name in (["small", "default"] if args.config == "all" else [args.config]):
            bench_muon(name, args.repeats or (3 if name == "gpt2" else 20), args.threads, rng)
        return
    for name in (CONFIGS if args.config == "all" else [args.config]):
        for chunk in args.chunk:
            optim.CHUNK = chunk if chunk > 0 else 1 << 62
            bench(name, args.optimizer, args.repeats or (5 if name == "gpt2" else 200), rng)


if __name__ == "__main__":
    keep_freed_memory()                  # as train.py does
    main()
