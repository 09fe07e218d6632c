"""Full training steps (forward, backward, gradient clipping, the optimizer): ms/iter, tokens/s,
peak memory, and where the time goes.

    python benchmarks/train.py                 # every configuration below
    python benchmarks/train.py --config small  # one of them
    python benchmarks/train.py --pytorch /tmp/torchvenv/bin/python --rounds 3
                                               # against PyTorch, measured side by side

Both wall time and CPU time (of all threads) are measured: on a machine that other jobs share,
wall time depends on the load, CPU time much less (a thread pool that spins while it waits for
a descheduled partner, as PyTorch's OpenMP does, shows in both).
Without --pytorch the ratio is against the PyTorch figures the issue measured on this machine
(its speed drifts by 20-40 % from hour to hour, so those are only a rough guide); with it, the
same steps run in PyTorch (benchmarks/pytorch_train.py, in the Python given, which must have
torch installed) right after ours, alternating for --rounds rounds, and the medians are compared.

Configurations:
    small:  GPT-2, nanoGPT's shakespeare-char CPU config: vocabulary 65, n_layer 4, n_head 4,
            n_embd 128, block 64, batch 12; AdamW
    large:  GPT-2, vocabulary 65, n_layer 6, n_head 6, n_embd 384, block 256, batch 16; AdamW
    modern: the modern recipe (gpt.core.llama: RoPE, RMSNorm, QK-norm, ReLU², untied head, no
            biases) at issue 13's PyTorch shape: vocabulary 4096 (the main job's BPE),
            n_layer 4, n_head 4, n_embd 192, block 256, batch 16; Muon for the blocks'
            matrices, AdamW for the rest (autograd.optim.muon_with_adamw)
Each runs in its own process so that its peak resident memory is its own. Steps run as
train.py runs them: the batch split over data-parallel threads (--threads, default one per
core). The time shares are measured in one thread with the op profiler.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "small": dict(model=dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
                  batch=12, steps=30),
    "large": dict(model=dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384),
                  batch=16, steps=8),
    "modern": dict(arch="llama",
                   model=dict(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=192,
                              n_kv_head=4, intermediate_size=768, mlp="relu2", qk_norm=True,
                              tie_word_embeddings=False, zero_init_proj=True),
                   batch=16, steps=8),
}
# PyTorch 2.13 eager, float32, same model and batch, on the same 2-core machine (the issues'
# yardsticks, measured when each was written).
PYTORCH_TOKENS_PER_SEC = {"small": 15_800, "large": 2_000, "modern": 5_800}

GROUPS = {
    "linear": "matmuls (linear)",
    "attention": "attention",
    "layer_norm": "layer norm",
    "gelu": "gelu",
    "rms_norm": "RMSNorm (blocks, QK-norm, final)",
    "rope": "rotary embedding",
    "relu_squared": "ReLU²",
    "swiglu": "SwiGLU",
    "clip": "gradient clipping",
    "muon": "optimizer: Muon (block matrices)",
    "adamw": "optimizer: AdamW",
    "linear_cross_entropy": "output head + cross-entropy",
    "embedding": "embedding",
}


def build(spec: dict):
    """(model, optimizer, {profile section: the optimizer's steps}) of a configuration."""
    from autograd.optim import AdamW, decay_groups, muon_with_adamw
    from gpt import GPT, GPTConfig
    from gpt.core.llama import Llama, LlamaConfig

    if spec.get("arch", "gpt2") == "llama":
        model = Llama(LlamaConfig(**spec["model"]), rng=np.random.default_rng(0))
        # The Muon lr of the PyTorch yardstick; AdamW's as train.py's modern recipe.
        optimizer = muon_with_adamw(model, lr=0.02, adamw_lr=4e-3, betas=(0.8, 0.95))
        muon, adamw = optimizer.optimizers
        return model, optimizer, {"muon": muon.step, "adamw": adamw.step}
    model = GPT(GPTConfig(**spec["model"]), rng=np.random.default_rng(0))
    optimizer = AdamW(decay_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99))
    return model, optimizer, {"adamw": optimizer.step}


def run_one(name: str, threads: int) -> dict:
    from autograd.allocator import keep_freed_memory
    from autograd.optim import clip_grad_norm
    from autograd.parallel import DataParallel, limit_blas_threads
    from autograd.profiler import profile
    from gpt.train.loop import backward_batches

    keep_freed_memory()                      # as train.py does
    spec = CONFIGS[name]
    model, optimizer, optimizer_steps = build(spec)
    batch, block = spec["batch"], model.config.block_size
    vocab = model.config.vocab_size
    params = model.parameters()
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, size=(batch, block))
    y = rng.integers(0, vocab, size=(batch, block))

    def step(parallel):                      # what gpt.train.loop does in one step
        model.zero_grad()
        backward_batches(parallel, model.loss, [(x, y)], params, seed=0, step=0)
        clip_grad_norm(params, 1.0)
        optimizer.step(parallel)

    with DataParallel(threads) as parallel:
        for _ in range(3):                   # warm-up: allocations, thread pools
            step(parallel)
        times, cpu_times = [], []
        for _ in range(spec["steps"]):
            start, cpu_start = time.perf_counter(), time.process_time()
            step(parallel)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    median = float(np.median(times))

    # Where the time goes: profiled in one thread (the profiler charges time by the clock, so
    # it needs ops to run one after another), with BLAS on one core as each shard has it.
    def profiled_step(prof):
        model.zero_grad()
        prof.mark()
        model.loss(x, y).backward()
        with prof.section("clip"):
            clip_grad_norm(params, 1.0)
        for section, optimizer_step in optimizer_steps.items():
            with prof.section(section):
                optimizer_step()

    with limit_blas_threads(1), profile() as prof:
        for _ in range(max(2, spec["steps"] // 3)):
            profiled_step(prof)
    totals = prof.totals()
    grand = sum(totals.values())
    shares: dict[str, float] = {}
    for op, seconds in totals.items():
        group = GROUPS.get(op, "other (reshape, add, indexing, ...)")
        shares[group] = shares.get(group, 0.0) + seconds / grand
    return {"config": name, "params": model.num_parameters(), "batch": batch, "block": block,
            "threads": parallel.threads, "ms_per_iter": median * 1e3,
            "best_ms": min(times) * 1e3, "tokens_per_sec": batch * block / median,
            "cpu_ms_per_iter": float(np.median(cpu_times)) * 1e3,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "shares": shares}


def report(result: dict, torch_result: dict | None = None) -> None:
    name = result["config"]
    if torch_result is None:
        torch, where = PYTORCH_TOKENS_PER_SEC[name], "the issue's figure"
    else:
        torch = torch_result["tokens_per_sec"]
        if torch_result.get("params", result["params"]) != result["params"]:
            print(f"warning: PyTorch's model has {torch_result['params']:,} parameters, ours "
                  f"{result['params']:,}: not the same model")
        where = (f"PyTorch {torch_result['version']}, {torch_result['ms_per_iter']:.1f} ms/iter, "
                 f"measured alongside")
    print(f"{name}: {result['params']:,} parameters, batch {result['batch']} x block "
          f"{result['block']}, {result['threads']} thread(s)")
    print(f"  {result['ms_per_iter']:.1f} ms/iter (best {result['best_ms']:.1f}), "
          f"{result['tokens_per_sec']:,.0f} tokens/s: {result['tokens_per_sec'] / torch:.2f}x "
          f"PyTorch's {torch:,.0f} ({where}); peak RSS {result['peak_rss_mb']:.0f} MB")
    if torch_result is not None:
        # CPU time (all threads): what a step costs whatever else the machine runs.
        print(f"  CPU time {result['cpu_ms_per_iter']:.1f} ms/iter, PyTorch's "
              f"{torch_result['cpu_ms_per_iter']:.1f}: "
              f"{torch_result['cpu_ms_per_iter'] / result['cpu_ms_per_iter']:.2f}x")
    for group, share in sorted(result["shares"].items(), key=lambda kv: -kv[1]):
        print(f"    {group:<36} {100 * share:5.1f}%")


def _child(command: list[str]) -> dict:
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:                 # e.g. --pytorch names no program
        raise SystemExit(f"cannot run {command[0]}: {error}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{' '.join(command[:2])} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    """The run with the median ms/iter (its other figures come with it)."""
    return sorted(runs, key=lambda r: r["ms_per_iter"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=list(CONFIGS), action="append")
    parser.add_argument("--threads", type=int, default=0,
                        help="data-parallel threads, as train.py --threads (0: one per core); "
                             "PyTorch's intra-op threads are set to the same")
    parser.add_argument("--pytorch", metavar="PYTHON",
                        help="a Python with torch installed: measure PyTorch alongside")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each configuration this many times (alternating with "
                             "PyTorch) and report the median round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.threads)))
        return
    yardstick = str(Path(__file__).with_name("pytorch_train.py"))
    for name in args.config or list(CONFIGS):
        ours, theirs = [], []
        for _ in range(max(1, args.rounds)):
            ours.append(_child([sys.executable, __file__, "--child", name,
                                "--threads", str(args.threads)]))
            if args.pytorch:
                spec = {**CONFIGS[name], "threads": args.threads}
                theirs.append(_child([args.pytorch, yardstick, json.dumps(spec)]))
        report(_median_run(ours), _median_run(theirs) if theirs else None)


if __name__ == "__main__":
    main()
