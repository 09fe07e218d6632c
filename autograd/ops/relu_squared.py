"""ReLU squared: y = max(x, 0)^2, the MLP activation of the modded-nanogpt speedrun and nanochat.

Like ReLU it is exactly zero for negative inputs (sparse activations, no exp or tanh), but
smooth at 0 (its slope is 0 on both sides) and growing quadratically above it.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def relu_squared_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y and r = max(x, 0), both of x's shape; r is what the backward needs."""
    r = np.maximum(x, 0)
    return r * r, r


def relu_squared_backward(g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """dL/dx = 2 r g (derivation in `relu_squared`)."""
    gx = r * g
    gx *= 2.0
    return gx


def relu_squared(x: Tensor) -> Tensor:
    """y = relu(x)^2, elementwise.

    With r = max(x, 0):  dy/dx = 2 r dr/dx = 2 r [x > 0] = 2 r, since r = 0 wherever x <= 0
    (so the indicator is already folded into r, and the kink at 0 has slope 0 from both sides).
    Hence dL/dx = 2 r g. Saved between forward and backward: r (the input's shape).
    """
    y, r = relu_squared_forward(x.data)
    return Tensor._make(y, (x,), lambda g: (relu_squared_backward(g, r),), "relu_squared")
