"""Forward + backward time of each fused op (autograd.functional) against the same computation
composed from elementary ops (autograd.reference, which the engine differentiates node by node).

    python benchmarks/ops.py [--repeat N]

The composed versions are what you would write without fused ops; the ratio is what fusing buys.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autograd import Tensor  # noqa: E402
from autograd import functional as F  # noqa: E402
from autograd import reference as R  # noqa: E402

# -- timing -------------------------------------------------------------------------------------

def time_fwd_bwd(fn, inputs, repeat: int) -> float:
    """Best wall time (ms) of forward + backward over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat + 1):            # one warm-up run
        for t in inputs:
            t.grad = None
        start = time.perf_counter()
        out = fn(*inputs)
        out.backward(np.ones_like(out.data))
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def params(rng, *shape, scale=1.0):
    return Tensor((rng.standard_normal(shape) * scale).astype(np.float32), requires_grad=True)


def cases(rng):
    for b, h, t, d in ((12, 4, 64, 32), (4, 12, 256, 64), (16, 6, 256, 64)):
        qkv = [params(rng, b, h, t, d) for _ in range(3)]
        yield (f"attention B={b} H={h} T={t} D={d}",
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
               R.scaled_dot_product_attention, qkv)
    for n, c in ((12 * 64, 128), (8 * 1024, 768)):
        ln = [params(rng, n, c), params(rng, c), params(rng, c)]
        yield f"layer_norm N={n} C={c}", F.layer_norm, R.layer_norm, ln
    for n, v in ((12 * 64, 65), (4 * 256, 4096), (4 * 256, 50257)):
        targets = rng.integers(0, v, size=n)
        yield (f"cross_entropy N={n} V={v}",
               lambda x, tg=targets: F.cross_entropy(x, tg),
               lambda x, tg=targets: R.cross_entropy(x, tg), [params(rng, n, v)])
    for n, c in ((12 * 64, 512), (8 * 1024, 3072)):
        yield f"gelu N={n} C={c}", F.gelu, R.gelu, [params(rng, n, c)]
    for n, cin, cout in ((12 * 64, 128, 512), (8 * 1024, 768, 3072)):
        lin = [params(rng, n, cin), params(rng, cin, cout, scale=0.02), params(rng, cout)]
        yield f"linear N={n} {cin}->{cout}", F.linear, R.linear, lin
    for n, c in ((12 * 64, 128), (8 * 1024, 384)):
        yield (f"softmax N={n} C={c}", F.softmax, R.softmax,
               [params(rng, n, c)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'op':<36} {'fused ms':>9} {'composed ms':>12} {'speedup':>8}")
    for name, fused, composed, inputs in cases(rng):
        t_fused = time_fwd_bwd(fused, inputs, args.repeat)
        t_composed = time_fwd_bwd(composed, inputs, args.repeat)
        print(f"{name:<36} {t_fused:9.2f} {t_composed:12.2f} {t_composed / t_fused:7.1f}x")


if __name__ == "__main__":
    main()
