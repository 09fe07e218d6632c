"""softcap: logit soft-capping, y = cap * tanh(x / cap) (Gemma 2, the modded-nanogpt speedrun).

For |x| well below cap it is nearly the identity (tanh(u) ~ u); large values are squashed
smoothly into (-cap, cap), so no logit can run away and dominate the softmax.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .graph import record


def softcap_forward(x: np.ndarray, cap: float) -> np.ndarray:
    """y = cap * tanh(x / cap), same shape and dtype as x. The backward needs only y."""
    y = np.multiply(x, 1.0 / cap)
    np.tanh(y, out=y)
    y *= cap
    return y


def softcap_backward(d_y: np.ndarray, y: np.ndarray, cap: float) -> np.ndarray:
    """dL/dx from g = dL/dy and the output y.

    With t = tanh(x / cap) and d tanh(u)/du = 1 - tanh(u)^2:
        dy/dx = cap * (1 - t^2) * (1 / cap) = 1 - t^2 = 1 - (y / cap)^2
    so dL/dx = g (1 - (y / cap)^2). The output tensor holds y anyway: for logits (N, V) the
    backward keeps no array of its own.
    """
    d_x = np.multiply(y, 1.0 / cap)                   # holds, step by step: t,
    np.multiply(d_x, d_x, out=d_x)                    # t^2,
    np.subtract(1.0, d_x, out=d_x)                    # dy/dx,
    d_x *= d_y                                        # dL/dx
    return d_x


def softcap(x: Tensor, cap: float) -> Tensor:
    """cap * tanh(x / cap) elementwise, for a positive constant `cap`.
    The math: `softcap_forward`, `softcap_backward`."""
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.floating)) or not cap > 0:
        raise ValueError(f"softcap: cap must be a positive number, got {cap!r}")
    cap = float(cap)
    y = softcap_forward(x.data, cap)
    return record(y, (x,), lambda d_y: (softcap_backward(d_y, y, cap),), "softcap")
