"""RMSNorm: scale each row to unit root-mean-square, then by a learned gain (Llama, Qwen3).

    y = x * r * w,   r = 1 / sqrt(mean(x^2) + eps)     over the last axis

Unlike LayerNorm it does not subtract the mean and has no bias: one statistic per row instead
of two. Qwen3 also applies it to each attention head's queries and keys (QK-norm), where the
"row" is one head's D values.

Shapes: N rows (all leading axes flattened), C channels (the normalised axis).
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def rms_norm_forward(x2: np.ndarray, weight: np.ndarray | None,
                     eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, xhat, r for rows x2 (N, C): xhat = x * r, y = xhat * w (y is xhat without a weight).

    Float32 in, float32 out: eps is added in place and the Python-float scalars do not promote.
    """
    n_channels = x2.shape[1]
    mean_square = np.einsum("nc,nc->n", x2, x2)            # (N,) row sums of squares, no temp
    mean_square *= 1.0 / n_channels
    mean_square += eps
    rstd = np.sqrt(mean_square)
    np.reciprocal(rstd, out=rstd)
    rstd = rstd[:, None]                                   # (N, 1)
    xhat = x2 * rstd                                       # (N, C)
    y = xhat * weight if weight is not None else xhat
    return y, xhat, rstd


def rms_norm_backward(g2: np.ndarray, xhat: np.ndarray, rstd: np.ndarray,
                      weight: np.ndarray | None, need_x: bool,
                      need_weight: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dL/dx (N, C) and dL/dw (C,) from G = dL/dy (N, C); the math is in `rms_norm`."""
    n_rows, n_channels = g2.shape
    gw = None
    if need_weight:
        # column sums of G * xhat as a matrix-vector product (BLAS beats sum(axis=0) here)
        gw = np.ones(n_rows, dtype=g2.dtype) @ (g2 * xhat)
    gx = None
    if need_x:
        gx = g2 * weight if weight is not None else g2.copy()      # h = dL/dxhat
        h_dot_xhat = np.einsum("nc,nc->n", gx, xhat)[:, None]        # (N, 1)
        h_dot_xhat *= 1.0 / n_channels                               # mean(h * xhat)
        gx -= xhat * h_dot_xhat
        gx *= rstd
    return gx, gw


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis; w (C,) is optional.

    Derivation, for one row of C values with r = (mean(x^2) + eps)^(-1/2) and xhat = x r:
        dr/dx_j = -1/2 (mean(x^2) + eps)^(-3/2) * 2 x_j / C = -r^3 x_j / C
        dxhat_i/dx_j = r delta_ij + x_i dr/dx_j = r (delta_ij - xhat_i xhat_j / C)
    With h = dL/dxhat = g * w:
        dL/dx_j = sum_i h_i r (delta_ij - xhat_i xhat_j / C) = r (h_j - xhat_j mean(h * xhat))
    The one mean term is x moving its own row's scale; it is LayerNorm's backward without the
    mean(h) term (no mean was subtracted). The gain was broadcast over the rows:
        dL/dw = sum over rows of g * xhat.
    Saved between forward and backward: xhat (N, C) and r (N, 1); without a weight xhat is the
    output itself, so nothing extra is kept.
    """
    xd = x.data
    n_channels = xd.shape[-1]
    if weight is not None and weight.shape != (n_channels,):
        raise ValueError(f"rms_norm: weight has shape {weight.shape}, expected ({n_channels},) "
                         f"for input of shape {xd.shape}")
    x2 = xd.reshape(-1, n_channels)                            # (N, C)
    y, xhat, rstd = rms_norm_forward(x2, weight.data if weight is not None else None, eps)
    out = y.reshape(xd.shape)

    if weight is None:
        def backward(g):
            gx, _ = rms_norm_backward(g.reshape(-1, n_channels), xhat, rstd, None, True, False)
            return (gx.reshape(xd.shape),)
        return Tensor._make(out, (x,), backward, "rms_norm")

    def backward_with_weight(g):
        gx, gw = rms_norm_backward(g.reshape(-1, n_channels), xhat, rstd, weight.data,
                                   x.requires_grad, weight.requires_grad)
        return (gx.reshape(xd.shape) if gx is not None else None), gw
    return Tensor._make(out, (x, weight), backward_with_weight, "rms_norm")
