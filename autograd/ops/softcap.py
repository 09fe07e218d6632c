"""Logit soft-capping: y = cap * tanh(x / cap) (Gemma 2, the modded-nanogpt speedrun).

For |x| much less than cap it is the identity (tanh(u) ~ u); large values are squashed
smoothly into (-cap, cap), so no logit can run away and dominate the softmax.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def softcap_forward(x: np.ndarray, cap: float) -> np.ndarray:
    """y = cap * tanh(x / cap), same shape and dtype as x."""
    y = np.multiply(x, 1.0 / cap)
    np.tanh(y, out=y)
    y *= cap
    return y


def softcap_backward(g: np.ndarray, y: np.ndarray, cap: float) -> np.ndarray:
    """dL/dx = g * (1 - (y / cap)^2) (derivation in `softcap`), from the saved output y."""
    slope = np.multiply(y, 1.0 / cap)               # tanh(x / cap)
    np.multiply(slope, slope, out=slope)
    np.subtract(1.0, slope, out=slope)
    slope *= g
    return slope


def softcap(x: Tensor, cap: float) -> Tensor:
    """y = cap * tanh(x / cap), elementwise, for a positive constant `cap`.

    With t = tanh(x / cap) and d tanh(u)/du = 1 - tanh(u)^2:
        dy/dx = cap * (1 - t^2) * (1 / cap) = 1 - t^2 = 1 - (y / cap)^2
    so dL/dx = g (1 - (y / cap)^2). The backward needs only the output y, which the result
    tensor holds anyway: nothing else is saved (for logits (N, V) that is one array less).
    """
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.floating)) or not cap > 0:
        raise ValueError(f"softcap: cap must be a positive number, got {cap!r}")
    cap = float(cap)
    y = softcap_forward(x.data, cap)
    return Tensor._make(y, (x,), lambda g: (softcap_backward(g, y, cap),), "softcap")
