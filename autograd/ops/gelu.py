"""gelu: GPT-2's activation, the tanh approximation of x * Phi(x)."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .chunks import in_chunks
from .graph import record

GELU_C = math.sqrt(2.0 / math.pi)   # a Python float: it never promotes float32 arrays
GELU_K = 0.044715


class GeluSaved(NamedTuple):
    x: np.ndarray                 # the input, contiguous
    s: np.ndarray                 # sigmoid(2u), same shape


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, GeluSaved]:
    """y = 0.5 x (1 + tanh(u)),   u = c (x + k x^3),   c = sqrt(2/pi), k = 0.044715

    Computed without a tanh: 0.5 (1 + tanh(u)) = sigmoid(2u) (write tanh(u) with exponentials
    and simplify), so
        y = x s,   s = sigmoid(2u) = 1 / (1 + exp(-2u))
    one exp per element, which a CPU computes much faster than a tanh. s is saved for the
    backward. The chain of steps runs slice by slice (see chunks.py).
    """
    x = np.ascontiguousarray(x)
    s = np.empty_like(x)
    y = np.empty_like(x)
    with np.errstate(over="ignore"):             # exp(-2u) = inf for very negative x: s = 0
        for x_c, s_c, y_c in in_chunks(x, s, y):
            np.multiply(x_c, x_c, out=s_c)       # s_c holds, step by step: x^2,
            s_c *= -2.0 * GELU_C * GELU_K
            s_c -= 2.0 * GELU_C
            s_c *= x_c                           # -2u = -2 c (x + k x^3),
            np.exp(s_c, out=s_c)                 # exp(-2u),
            s_c += 1.0
            np.reciprocal(s_c, out=s_c)          # s = 1 / (1 + exp(-2u))
            np.multiply(x_c, s_c, out=y_c)       # y = x s
    return y, GeluSaved(x, s)


def gelu_backward(d_y: np.ndarray, saved: GeluSaved) -> np.ndarray:
    """dL/dx = g * dy/dx, from g = dL/dy.

    Differentiating y = 0.5 x (1 + tanh(u)) as a product:
        dy/dx = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) du/dx,   du/dx = c (1 + 3 k x^2)
    In terms of s = sigmoid(2u) = 0.5 (1 + tanh(u)):  tanh(u) = 2s - 1, so
        1 - tanh(u)^2 = 1 - (2s - 1)^2 = 4 s (1 - s)
    and
        dy/dx = s + 0.5 x * 4 s (1 - s) * c (1 + 3 k x^2)
              = s + s (1 - s) * x (2c + 6ck x^2)
    which is how it is computed below, from the saved x and s, slice by slice.
    """
    x, s = saved
    d_x = np.empty_like(x)
    for g_c, x_c, s_c, d_c in in_chunks(d_y, x, s, d_x):
        np.multiply(x_c, x_c, out=d_c)           # d_c holds, step by step: x^2,
        d_c *= 6.0 * GELU_C * GELU_K
        d_c += 2.0 * GELU_C
        d_c *= x_c                               # x (2c + 6ck x^2),
        d_c *= s_c
        d_c -= d_c * s_c                         # s (1 - s) x (2c + 6ck x^2),
        d_c += s_c                               # dy/dx,
        d_c *= g_c                               # dL/dx
    return d_x


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    The math: `gelu_forward`, `gelu_backward`."""
    y, saved = gelu_forward(x.data)
    return record(y, (x,), lambda d_y: (gelu_backward(d_y, saved),), "gelu")
