"""SwiGLU: the gated MLP activation of Llama, Qwen3 and most open models since 2023.

    y = silu(a) * b,   silu(a) = a * sigmoid(a)

where a = x W_gate and b = x W_up are two projections of the same input; the block's MLP is
down(silu(gate(x)) * up(x)). The gate a decides, smoothly, how much of the value b passes.
Fused into one op: one node, and sigmoid(a) is computed once and kept for the backward.

`swiglu(a, b)` takes the two projections as separate tensors; `swiglu_packed(ab)` takes them
side by side on the last axis (one GEMM with the two weight matrices concatenated), and its
backward writes both gradients into one array, with no split in the graph.

Shapes: a, b (..., F), F the MLP's hidden width; packed (..., 2F) as [a | b].
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def swiglu_forward(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = a * sigmoid(a) * b and s = sigmoid(a), each of a's shape (a, b may be views)."""
    s = np.negative(a)
    with np.errstate(over="ignore"):          # exp(-a) = inf for a < -88 (float32): s = 0
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)                   # sigmoid(a)
    y = a * s                                 # silu(a)
    y *= b
    return y, s


def swiglu_backward(g: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray,
                    need_a: bool, need_b: bool,
                    into: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dL/da and dL/db (derivation in `swiglu`); `into`: two arrays (views are fine) to
    write them to instead of new ones."""
    ga = gb = None
    if need_b:
        gb = np.multiply(a, s, out=into[1] if into is not None else None)    # silu(a)
        gb *= g
    if need_a:
        ga = np.subtract(1.0, s, out=into[0] if into is not None else None)
        ga *= a
        ga += 1.0
        ga *= s                               # silu'(a) = s (1 + a (1 - s))
        ga *= b
        ga *= g
    return ga, gb


def _check_same_shape(op: str, a_shape: tuple, b_shape: tuple) -> None:
    if a_shape != b_shape:
        raise ValueError(f"{op}: gate and up must have the same shape, got {a_shape} and "
                         f"{b_shape}")


def swiglu(a: Tensor, b: Tensor) -> Tensor:
    """y = silu(a) * b, elementwise, a and b of one shape.

    With s = sigmoid(a), ds/da = s (1 - s):
        d silu/da = d(a s)/da = s + a s (1 - s) = s (1 + a (1 - s))
    so
        dL/da = g * b * s (1 + a (1 - s)),     dL/db = g * silu(a) = g * a * s.
    Saved between forward and backward: s (a's shape); a and b are the inputs.
    """
    _check_same_shape("swiglu", a.shape, b.shape)
    ad, bd = a.data, b.data
    y, s = swiglu_forward(ad, bd)

    def backward(g):
        return swiglu_backward(g, ad, bd, s, a.requires_grad, b.requires_grad)
    return Tensor._make(y, (a, b), backward, "swiglu")


def swiglu_packed(ab: Tensor) -> Tensor:
    """swiglu(ab[..., :F], ab[..., F:]) for ab (..., 2F): out (..., F).

    The same op on views of one array; the gradient is one (..., 2F) array whose halves are
    dL/da and dL/db (see `swiglu` for the derivation).
    """
    abd = ab.data
    if abd.ndim == 0 or abd.shape[-1] % 2:
        raise ValueError(f"swiglu_packed: last axis must hold [gate | up] (even size), got "
                         f"shape {abd.shape}")
    width = abd.shape[-1] // 2
    a, b = abd[..., :width], abd[..., width:]
    y, s = swiglu_forward(a, b)

    def backward(g):
        grad = np.empty(abd.shape, dtype=abd.dtype)
        swiglu_backward(g, a, b, s, True, True, into=(grad[..., :width], grad[..., width:]))
        return (grad,)
    return Tensor._make(y, (ab,), backward, "swiglu")
