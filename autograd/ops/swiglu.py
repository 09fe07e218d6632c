"""swiglu: the gated MLP activation of Llama, Qwen3 and most open models since 2023.

    y = silu(a) * b,   silu(a) = a * sigmoid(a)

a = x W_gate and b = x W_up are two projections of the same input; the block's MLP is
down(silu(gate(x)) * up(x)). The gate a decides, smoothly, how much of the value b passes.
Fused, it is one node, and sigmoid(a) is computed once and kept for the backward.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .chunks import in_chunks
from .graph import record


class SwigluSaved(NamedTuple):
    a: np.ndarray                 # the gate, contiguous
    b: np.ndarray                 # the value, contiguous
    s: np.ndarray                 # sigmoid(a), same shape


def swiglu_forward(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, SwigluSaved]:
    """y = a s b with s = sigmoid(a) = 1 / (1 + exp(-a)), elementwise; s is saved.

    exp(-a) overflows to inf for a < -88 in float32, and then s = 1 / inf = 0, the right
    limit: the warning is silenced, the value is not wrong. The chain runs slice by slice
    (see chunks.py).
    """
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    s = np.empty_like(a)
    y = np.empty_like(a)
    with np.errstate(over="ignore"):
        for a_c, b_c, s_c, y_c in in_chunks(a, b, s, y):
            np.negative(a_c, out=s_c)            # s_c holds, step by step: -a,
            np.exp(s_c, out=s_c)                 # exp(-a),
            s_c += 1.0
            np.reciprocal(s_c, out=s_c)          # s = sigmoid(a)
            np.multiply(a_c, s_c, out=y_c)       # silu(a),
            y_c *= b_c                           # y
    return y, SwigluSaved(a, b, s)


def swiglu_backward(d_y: np.ndarray, saved: SwigluSaved, need_da: bool,
                    need_db: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dL/da, dL/db from g = dL/dy; None for each one not needed.

    b:  y = silu(a) b  =>  dL/db = g silu(a) = g a s
    a:  with ds/da = s (1 - s) (the sigmoid's derivative),
            d silu/da = d(a s)/da = s + a s (1 - s) = s (1 + a (1 - s))
        so  dL/da = g b s (1 + a (1 - s))

    Both come out of one pass over the slices; if only one is needed, the other is computed
    and dropped (in a model both always are).
    """
    a, b, s = saved
    d_a, d_b = np.empty_like(a), np.empty_like(a)
    for g_c, a_c, b_c, s_c, da_c, db_c in in_chunks(d_y, a, b, s, d_a, d_b):
        np.multiply(a_c, s_c, out=db_c)          # silu(a),
        db_c *= g_c                              # dL/db
        np.subtract(1.0, s_c, out=da_c)          # da_c holds, step by step: 1 - s,
        da_c *= a_c
        da_c += 1.0
        da_c *= s_c                              # d silu/da = s (1 + a (1 - s)),
        da_c *= b_c
        da_c *= g_c                              # dL/da
    return (d_a if need_da else None), (d_b if need_db else None)


def swiglu(a: Tensor, b: Tensor) -> Tensor:
    """silu(a) * b elementwise, a (the gate) and b (the value) of one shape (..., F).
    The math: `swiglu_forward`, `swiglu_backward`."""
    if a.shape != b.shape:
        raise ValueError(f"swiglu: gate and up must have the same shape, got {a.shape} and "
                         f"{b.shape}")
    y, saved = swiglu_forward(a.data, b.data)

    def backward(d_y: np.ndarray) -> tuple:
        return swiglu_backward(d_y, saved, a.requires_grad, b.requires_grad)
    return record(y, (a, b), backward, "swiglu")
