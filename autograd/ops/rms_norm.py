"""rms_norm: scale each row to unit root-mean-square, then by a gain (Llama, Qwen3, nanochat).

Unlike LayerNorm it subtracts no mean and adds no bias: one statistic per row instead of two.
Qwen3 also applies it to each attention head's queries and keys (QK-norm), where a row is one
head's D values.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .graph import needs_grad, record
from .sums import col_sums


class RMSNormSaved(NamedTuple):
    xhat: np.ndarray              # (N, C) the normalised input, x * rstd
    rstd: np.ndarray              # (N, 1) 1 / sqrt(mean(x^2) + eps), one per row
    weight: np.ndarray | None     # (C,) or None (no gain)
    x_shape: tuple[int, ...]      # (..., C): the input's own shape, for dL/dx


def rms_norm_forward(x: np.ndarray, weight: np.ndarray | None,
                     eps: float) -> tuple[np.ndarray, RMSNormSaved]:
    """y = xhat * w over the last axis of x (..., C), for each row:

        rstd = 1 / sqrt(sum_j x_j^2 / C + eps)
        xhat = x * rstd
        y    = xhat * w          (w of shape (C,); without it y is xhat)

    Float32 stays float32: eps is added in place and Python-float scalars do not promote.
    Without a weight the output *is* xhat, so the backward keeps nothing extra.
    """
    n_channels = x.shape[-1]
    x2 = x.reshape(-1, n_channels)                             # (N, C)
    mean_square_eps = np.einsum("nc,nc->n", x2, x2)            # row sums of squares, no temp
    mean_square_eps *= 1.0 / n_channels                        # mean(x^2)
    mean_square_eps += eps                                     # mean(x^2) + eps   (N,)
    rstd = (1.0 / np.sqrt(mean_square_eps))[:, None]           # (N, 1)
    xhat = x2 * rstd                                           # (N, C)
    y = xhat * weight if weight is not None else xhat
    return y.reshape(x.shape), RMSNormSaved(xhat, rstd, weight, x.shape)


def rms_norm_backward(d_y: np.ndarray, saved: RMSNormSaved, need_dx: bool,
                      need_dw: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dL/dx, dL/dw from g = dL/dy; None for each one not needed.

    w: every row used it, so  y_j = xhat_j w_j  =>  dL/dw = sum over rows of g * xhat.

    x, one row of C values. The gradient arriving at xhat is  dxhat = g * w.
    xhat_j = x_j * rstd, and x_i moves x_j itself (j = i) and rstd:
        d rstd/dx_i = -1/2 (mean(x^2) + eps)^(-3/2) * 2 x_i / C = -rstd^3 x_i / C
                    = -rstd^2 xhat_i / C
    so
        dxhat_j/dx_i = rstd [i == j] + x_j d rstd/dx_i = rstd ([i == j] - xhat_j xhat_i / C)
    and summing over j with the incoming dxhat_j:
        dL/dx_i = rstd * ( dxhat_i                                -- x_i itself
                           - xhat_i * mean_j(dxhat_j xhat_j) )    -- through the row's scale
    LayerNorm's backward without its mean(dxhat) term: no mean was subtracted.
    """
    xhat, rstd, weight, x_shape = saved
    n_channels = xhat.shape[1]
    g = d_y.reshape(-1, n_channels)                            # (N, C)
    d_w = col_sums(g * xhat) if need_dw else None
    d_x = None
    if need_dx:
        d_x = g * weight if weight is not None else g.copy()  # dxhat   (N, C)
        mean_dxhat_xhat = np.einsum("nc,nc->n", d_x, xhat)[:, None]      # (N, 1), times C
        mean_dxhat_xhat *= 1.0 / n_channels
        d_x -= xhat * mean_dxhat_xhat                          # - through the row's scale
        d_x *= rstd
        d_x = d_x.reshape(x_shape)
    return d_x, d_w


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; weight (C,) is optional (None).
    The math: `rms_norm_forward`, `rms_norm_backward`."""
    n_channels = x.shape[-1]
    if weight is not None and weight.shape != (n_channels,):
        raise ValueError(f"rms_norm: weight has shape {weight.shape}, expected ({n_channels},) "
                         f"for input of shape {x.shape}")
    y, saved = rms_norm_forward(x.data, weight.data if weight is not None else None, eps)

    def backward(d_y: np.ndarray) -> tuple:
        return rms_norm_backward(d_y, saved, x.requires_grad, needs_grad(weight))
    return record(y, (x, weight), backward, "rms_norm")
