"""relu_squared: y = max(x, 0)^2, the MLP activation of the modded-nanogpt speedrun and nanochat.

Like ReLU it is exactly zero for negative inputs (sparse, no exp or tanh); unlike ReLU its
slope is continuous (0 on both sides of 0) and it grows quadratically above 0.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .graph import record


def relu_squared_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = r * r with r = max(x, 0); r is what the backward needs."""
    r = np.maximum(x, 0)
    return r * r, r


def relu_squared_backward(d_y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """dL/dx from g = dL/dy.

        y = r^2,  r = max(x, 0)  =>  dy/dx = 2 r dr/dx = 2 r [x > 0] = 2 r
    since r = 0 wherever x <= 0: the indicator is already folded into r (and at x = 0 both
    one-sided slopes are 0). So dL/dx = 2 r g.
    """
    d_x = r * d_y
    d_x *= 2.0
    return d_x


def relu_squared(x: Tensor) -> Tensor:
    """max(x, 0)^2 elementwise. The math: `relu_squared_forward`, `relu_squared_backward`."""
    y, r = relu_squared_forward(x.data)
    return record(y, (x,), lambda d_y: (relu_squared_backward(d_y, r),), "relu_squared")
