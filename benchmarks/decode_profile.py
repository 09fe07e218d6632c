"""Where a decode step's time goes: reading the weights, and everything else.

    python benchmarks/chat_models.py --model smollm2-360m --rounds 1   # writes the checkpoint
    python benchmarks/decode_profile.py /tmp/du-chat-models/smollm2-360m --threads 2

For one sequence, after a 16-token prefill, it times (median of --steps steps, one process):
- `step`: a decode step as generation runs it (Llama._infer, greedy logits of one token):
  one Python thread, whose products BLAS splits over --threads threads (with one thread,
  BLAS or NumPy's own loops, whichever the model found faster: see `_project`);
- `weights alone`: every weight the step reads (q, k, v, o, gate, up, down of each layer, and
  the output head) multiplied by one row as the step multiplies it, nothing else: how fast
  these products stream the model from memory;
- `weights alone, own loops, two threads`: each of two Python threads taking one contiguous
  half of every weight's rows through NumPy's one-thread loops, never waiting for the other
  (the way a team of threads would read them, without its meetings);
- `rest`: a step with the projections stubbed out (they return zeros): norms, RoPE,
  attention over the cache, the KV cache writes, Python.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpt.core.llama as llama_module                        # noqa: E402
from autograd import no_grad                                 # noqa: E402
from autograd.parallel import limit_blas_threads             # noqa: E402
from gpt import load_pretrained                              # noqa: E402


def median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def weights_read_by_a_step(model) -> list[np.ndarray]:
    """The (in, out) arrays a decode step multiplies a row by, as `_infer` passes them."""
    weights = [linear.weight.data for linear in model.projections()]
    if model.lm_head is None:
        weights.append(model.embed_tokens.weight.data.T)               # the tied head
    return weights


def row_halves(weight: np.ndarray) -> list[np.ndarray]:
    """Two contiguous halves of a weight: its rows, or the rows of the array it transposes."""
    if weight.flags.c_contiguous:
        half = weight.shape[0] // 2
        return [weight[:half], weight[half:]]
    half = weight.shape[1] // 2
    return [weight[:, :half], weight[:, half:]]


def project_all(weights: list[np.ndarray], own_loops: bool = True) -> None:
    for weight in weights:
        llama_module._project(np.ones((1, weight.shape[0]), weight.dtype), weight, own_loops)


def stub_project(rows: np.ndarray, weight: np.ndarray, own_loops: bool = True) -> np.ndarray:
    """What `_project` returns, zeros, without reading the weight (zeros, not an untouched
    buffer: garbage there can hold subnormal numbers, which slow every later op)."""
    return np.zeros((rows.shape[0], weight.shape[1]), rows.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a Llama/Qwen3 checkpoint directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    model = load_pretrained(args.checkpoint).eval()
    model.inference_threads = args.threads
    cache = model.new_kv_cache(batch_size=1, max_length=16 + 5 * args.steps)
    token = np.array([[5]])

    def step():
        model(token, kv_cache=cache, last_only=True)

    weights = weights_read_by_a_step(model)
    gigabytes = sum(w.nbytes for w in weights) / 1e9
    halves = [[], []]
    for weight in weights:
        for part, half in zip(halves, row_halves(weight)):
            part.append(half)

    def both_halves():
        threads = [threading.Thread(target=project_all, args=(part,)) for part in halves]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    with no_grad():
        model(np.arange(16)[None], kv_cache=cache, last_only=True)
        figures = {"step": median_ms(step, args.steps)}
        own_loops = args.threads == 1 and model._own_loops_read_faster()   # as the step does
        with limit_blas_threads(args.threads):
            figures["weights alone"] = median_ms(lambda: project_all(weights, own_loops), 10)
        with limit_blas_threads(1):
            figures["weights alone, own loops, two threads"] = median_ms(both_halves, 10)
        real_project = llama_module._project
        try:
            llama_module._project = stub_project
            figures["rest"] = median_ms(step, args.steps)
        finally:
            llama_module._project = real_project
    kernel = "NumPy's own loops" if own_loops else "BLAS"
    print(f"{args.checkpoint}, {args.threads} thread(s), one-row products by {kernel}: "
          f"{gigabytes:.2f} GB of weights a step")
    for name, ms in figures.items():
        rate = f" ({gigabytes / ms * 1e3:.1f} GB/s)" if name.startswith("weights") else ""
        print(f"  {name:<40} {ms:7.1f} ms{rate}")


if __name__ == "__main__":
    main()
