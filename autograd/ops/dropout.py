"""dropout: zero a random fraction of the elements during training (inverted dropout)."""
from __future__ import annotations

import numpy as np

from ..random import default_rng
from ..tensor import Tensor
from .graph import record


def dropout_mask(shape: tuple[int, ...], p: float, dtype,
                 rng: np.random.Generator) -> np.ndarray:
    """m of `shape`: 0 with probability p, else 1/(1-p) (so that E[m] = 1)."""
    mask = (rng.random(shape, dtype=np.float32) >= p).astype(dtype)
    mask *= 1.0 / (1.0 - p)
    return mask


def dropout_forward(x: np.ndarray, p: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """y = x * m with m = dropout_mask(...), drawn once; the mask is what the backward needs.

    The 1/(1-p) scaling keeps the expected value of each element unchanged, so evaluation
    (no dropout) needs no correction.
    """
    mask = dropout_mask(x.shape, p, x.dtype, rng)
    return x * mask, mask


def dropout_backward(d_y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """y_i = x_i m_i, so dL/dx_i = g_i m_i: the gradient goes through the same mask."""
    return d_y * mask


def dropout(x: Tensor, p: float = 0.5, training: bool = True,
            rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).
    Not training (or p = 0): x itself. The math: `dropout_forward`, `dropout_backward`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    y, mask = dropout_forward(x.data, p, rng if rng is not None else default_rng())
    return record(y, (x,), lambda d_y: (dropout_backward(d_y, mask),), "dropout")
