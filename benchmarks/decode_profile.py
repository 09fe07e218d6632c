"""Where a decode step's time goes: reading the weights, everything else, and the threads' meetings.

    python benchmarks/chat_models.py --model smollm2-360m --rounds 1   # writes the checkpoint
    python benchmarks/decode_profile.py /tmp/du-chat-models/smollm2-360m --threads 2

For one sequence, after a 16-token prefill, it times (median of --steps steps, one process):
- `step`: a decode step as generation runs it (Llama._infer, greedy logits of one token);
- `weights alone`: every weight the step reads (q, k, v, o, gate, up, down of each layer, and
  the output head) multiplied by one row through `_project`, the kernels a step uses, one
  thread, nothing else: how fast these loops stream the model from memory;
- `weights alone, two threads`: the same, each thread taking one contiguous half of every
  weight's rows and never waiting for the other: what a perfect split over two cores reads;
- `rest`: a step with the projections stubbed out (they return zeros): norms, RoPE, attention over the cache, the KV cache writes, Python;
- `meetings`: with --threads above 1, a step whose barriers return at once (wrong numbers,
  right timing): the step minus that is what the threads spend waiting for each other.
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
from gpt.core.thread_team import Meeting                     # noqa: E402


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


def project_all(weights: list[np.ndarray]) -> None:
    for weight in weights:
        llama_module._project(np.ones((1, weight.shape[0]), weight.dtype), weight)


def stub_project(rows: np.ndarray, weight: np.ndarray, out: np.ndarray | None = None):
    """What `_project` returns, zeros, without reading the weight (zeros, not an untouched
    buffer: garbage there can hold subnormal numbers, which slow every later op)."""
    if out is None:
        return np.zeros((rows.shape[0], weight.shape[1]), rows.dtype)
    out[...] = 0
    return out


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

    with no_grad(), np.errstate(all="ignore"):     # a step without meetings adds racy parts
        model(np.arange(16)[None], kv_cache=cache, last_only=True)
        figures = {"step": median_ms(step, args.steps)}
        with limit_blas_threads(1):
            figures["weights alone"] = median_ms(lambda: project_all(weights), 10)
            figures["weights alone, two threads"] = median_ms(both_halves, 10)
        real_project, real_meet = llama_module._project, Meeting.meet
        try:
            llama_module._project = stub_project
            figures["rest"] = median_ms(step, args.steps)
            llama_module._project = real_project
            if args.threads > 1:
                Meeting.meet = lambda self, rank: None
                figures["step without meetings"] = median_ms(step, args.steps)
        finally:
            llama_module._project, Meeting.meet = real_project, real_meet
    print(f"{args.checkpoint}, {args.threads} thread(s): {gigabytes:.2f} GB of weights a step")
    for name, ms in figures.items():
        rate = f" ({gigabytes / ms * 1e3:.1f} GB/s)" if name.startswith("weights") else ""
        print(f"  {name:<28} {ms:7.1f} ms{rate}")
    if "step without meetings" in figures:
        print(f"  {'meetings':<28} {figures['step'] - figures['step without meetings']:7.1f} ms")


if __name__ == "__main__":
    main()
