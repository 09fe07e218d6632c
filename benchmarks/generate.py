"""Generation speed: prefill and decode tokens/s, with and without the KV cache.

    python benchmarks/generate.py                          # gpt2 (124M) and small-cpu shapes
    python benchmarks/generate.py --models gpt2 --threads 1 --prompt 128 --new 32
    python benchmarks/generate.py --models modern        # the main job's model (a Llama)

Models: GPTConfig presets, or a recipe of `train.py --recipe` that is not also a preset's name
(`modern`: its model's shape, with the main job's vocabulary of 4,096 tokens). Random weights
(speed does not depend on what the weights say). Batch of one, float32, under no_grad, as
chat.py and the server run.

- prefill: one forward pass over a --prompt-token prompt, logits for the last position only.
  "cached" also writes every layer's keys and values into the KV cache; "uncached" does not.
- decode, cached: one token per step, attending to the cache (what generation does).
- decode, uncached: every step re-runs the whole context (prompt + tokens so far), the way
  generation would go without a cache.

Each figure is the best of --repeats runs (the machine may be shared: the best run is the one
least disturbed). The yardstick on this 2-core CPU: Hugging Face transformers with PyTorch
(2 threads) decodes GPT-2 124M at about 22 tokens/s and prefills a 128-token prompt at about
370 tokens/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2,small-cpu",
                   help="comma-separated GPTConfig presets or train.py recipes")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new", type=int, default=32, help="tokens decoded per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads (sets OPENBLAS_NUM_THREADS etc. before NumPy loads)")
    p.add_argument("--no-uncached", dest="uncached", action="store_false",
                   help="skip the slow uncached decode")
    return p.parse_args()


ARGS = parse_args()
if ARGS.threads:
    # Must happen before NumPy is imported: BLAS reads these once, when it loads.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autograd import no_grad  # noqa: E402
from autograd.allocator import keep_freed_memory  # noqa: E402
from autograd.nn import skip_init  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402
from gpt.core.config import PRESETS  # noqa: E402
from gpt.core.llama import Llama  # noqa: E402
from gpt.train.pretrain import RECIPES, TrainSettings, model_config  # noqa: E402

MAIN_JOB_VOCAB = 4096          # the BPE vocabulary `python train.py` trains


def random_model(name: str) -> GPT | Llama:
    """A model of the preset's (or else the recipe's) shape with random float32 weights."""
    if name not in PRESETS and name in RECIPES:
        config = model_config(TrainSettings(**RECIPES[name]), MAIN_JOB_VOCAB)
        if isinstance(config, GPTConfig):
            return random_gpt(config)
        model = Llama(config, rng=np.random.default_rng(0))
        model.inference_threads = ARGS.threads            # None: one per core
        return model.eval()
    return random_gpt(GPTConfig.preset(name))


def random_gpt(config: GPTConfig) -> GPT:
    """A GPT with random float32 weights, made quickly: drawing float32 normals directly
    skips the float64 temporaries of a full init_weights()."""
    with skip_init():
        model = GPT(config)
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            p.data = np.ones(p.shape, np.float32)
        elif name.endswith(".bias"):
            p.data = np.zeros(p.shape, np.float32)
        else:
            p.data = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(0.02)
    return model.eval()


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str) -> dict[str, float]:
    model = random_model(name)
    config = model.config
    n_prompt = min(ARGS.prompt, config.block_size - ARGS.new)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, config.vocab_size, size=(1, n_prompt))
    steps = rng.integers(0, config.vocab_size, size=ARGS.new)
    results = {"prompt": n_prompt}
    with no_grad():
        model(prompt[:, :8], last_only=True)                     # warm up: allocators, BLAS

        def prefill_cached():
            model(prompt, kv_cache=model.new_kv_cache(), last_only=True)
        results["prefill cached"] = n_prompt / best_time(prefill_cached, ARGS.repeats)
        results["prefill uncached"] = n_prompt / best_time(
            lambda: model(prompt, last_only=True), ARGS.repeats)

        def decode_cached():
            cache = model.new_kv_cache()
            model(prompt, kv_cache=cache, last_only=True)
            start = time.perf_counter()
            for token in steps:
                model(np.array([[token]]), kv_cache=cache)
            return time.perf_counter() - start
        results["decode cached"] = ARGS.new / min(decode_cached() for _ in range(ARGS.repeats))

        if ARGS.uncached:
            def decode_uncached():
                ids = prompt
                start = time.perf_counter()
                for token in steps:
                    model(ids, last_only=True)
                    ids = np.concatenate([ids, [[token]]], axis=1)
                return time.perf_counter() - start
            results["decode uncached"] = ARGS.new / min(decode_uncached()
                                                        for _ in range(ARGS.repeats))
    return results


def main() -> int:
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"generation speed, tokens/s (best of {ARGS.repeats}; BLAS threads: {threads}; "
          f"{ARGS.new} decode steps after the prompt)")
    columns = ["prefill cached", "prefill uncached", "decode cached", "decode uncached"]
    print(f"{'model':<12} {'prompt':>6} " + " ".join(f"{c:>17}" for c in columns))
    for preset in ARGS.models.split(","):
        r = bench(preset.strip())
        cells = [f"{r[c]:17.1f}" if c in r else f"{'-':>17}" for c in columns]
        print(f"{preset:<12} {r['prompt']:>6} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    keep_freed_memory()                  # as chat.py does
    sys.exit(main())
