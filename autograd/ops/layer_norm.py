"""layer_norm: normalise each row to mean 0 and variance 1, then scale and shift."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .graph import needs_grad, record
from .sums import col_sums, filled, row_means


class LayerNormSaved(NamedTuple):
    xhat: np.ndarray              # (N, C) the normalised input, (x - mean) * rstd
    rstd: np.ndarray              # (N, 1) 1 / sqrt(var + eps), one per row
    weight: np.ndarray | None     # (C,) or None (no scale)
    x_shape: tuple[int, ...]      # (..., C): the input's own shape, for dL/dx


def layer_norm_forward(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
                       eps: float) -> tuple[np.ndarray, LayerNormSaved]:
    """y = xhat * w + b over the last axis of x (..., C), for each row:

        mean = sum_j x_j / C
        var  = sum_j (x_j - mean)^2 / C
        rstd = 1 / sqrt(var + eps)
        xhat = (x - mean) * rstd
        y    = xhat * w + b          (w, b of shape (C,); either may be absent)
    """
    n_channels = x.shape[-1]
    x2 = x.reshape(-1, n_channels)                             # (N, C)
    centred = x2 - row_means(x2)[:, None]                      # x - mean   (N, C)
    var_eps = np.einsum("nc,nc->n", centred, centred)          # row sums of squares, no temp
    var_eps *= 1.0 / n_channels                                # var
    var_eps += eps                                             # var + eps   (N,)
    rstd = (1.0 / np.sqrt(var_eps))[:, None]                   # (N, 1)
    xhat = np.multiply(centred, rstd, out=centred)             # centred is not needed again
    y = xhat * weight if weight is not None else xhat.copy()
    if bias is not None:
        y += bias
    return y.reshape(x.shape), LayerNormSaved(xhat, rstd, weight, x.shape)


def layer_norm_backward(d_y: np.ndarray, saved: LayerNormSaved, need_dx: bool, need_dw: bool,
                        need_db: bool) -> tuple[np.ndarray | None, ...]:
    """dL/dx, dL/dw, dL/db from g = dL/dy; None for each one not needed.

    w and b: every row used them, so their gradients sum over the rows:
        y_j = xhat_j w_j + b_j   =>   dL/dw = sum over rows of g * xhat,
                                      dL/db = sum over rows of g

    x, one row of C values. The gradient arriving at xhat is  dxhat = g * w.
    xhat_j = (x_j - mean) * rstd, and x_i moves three things: x_j itself (j = i), the mean and
    rstd. Taking them one at a time:
        d(x_j - mean)/dx_i = [i == j] - 1/C
        d var/dx_i  = 2/C sum_j (x_j - mean) ([i == j] - 1/C) = 2/C (x_i - mean)
                      (the 1/C part vanishes: the centred values sum to 0)
        d rstd/dx_i = -1/2 (var + eps)^(-3/2) * d var/dx_i = -rstd^3 (x_i - mean) / C
                    = -rstd^2 xhat_i / C
    so
        dxhat_j/dx_i = rstd ([i == j] - 1/C) + (x_j - mean) d rstd/dx_i
                     = rstd ([i == j] - 1/C - xhat_j xhat_i / C)
    and summing over j with the incoming dxhat_j:
        dL/dx_i = rstd * ( dxhat_i                      -- x_i itself
                           - mean_j(dxhat_j)             -- through the mean
                           - xhat_i * mean_j(dxhat_j xhat_j) )   -- through the variance

    Computing it: the two row means are matrix-vector products with w, so dxhat is never
    needed to get them:
        mean_j(dxhat_j)        = (g @ w) / C
        mean_j(dxhat_j xhat_j) = ((g * xhat) @ w) / C
    and g * xhat is also what dL/dw sums: one (N, C) product serves both.
    """
    xhat, rstd, weight, x_shape = saved
    n_channels = xhat.shape[1]
    g = d_y.reshape(-1, n_channels)                            # (N, C)
    g_xhat = g * xhat if need_dx or need_dw else None          # (N, C)
    d_w = col_sums(g_xhat) if need_dw else None
    d_b = col_sums(g) if need_db else None
    d_x = None
    if need_dx:
        # without a weight, w = 1
        w = weight if weight is not None else filled(n_channels, 1.0, xhat.dtype)
        mean_dxhat = (g @ w)[:, None] * (1.0 / n_channels)               # (N, 1)
        mean_dxhat_xhat = (g_xhat @ w)[:, None] * (1.0 / n_channels)     # (N, 1)
        d_x = g * w if weight is not None else g.copy()                  # dxhat   (N, C)
        d_x -= mean_dxhat                                                # - through the mean
        variance_term = np.multiply(xhat, mean_dxhat_xhat, out=g_xhat)   # g_xhat is used up
        d_x -= variance_term                                             # - through the variance
        d_x *= rstd
        d_x = d_x.reshape(x_shape)
    return d_x, d_w, d_b


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; weight and bias (C,)
    are optional (None). The math: `layer_norm_forward`, `layer_norm_backward`.
    """
    n_channels = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n_channels,):
            raise ValueError(f"layer_norm: {name} has shape {p.shape}, expected ({n_channels},) "
                             f"for input of shape {x.shape}")
    y, saved = layer_norm_forward(x.data, weight.data if weight is not None else None,
                                  bias.data if bias is not None else None, eps)
    need_dx, need_dw, need_db = x.requires_grad, needs_grad(weight), needs_grad(bias)

    def backward(d_y: np.ndarray) -> tuple:
        return layer_norm_backward(d_y, saved, need_dx, need_dw, need_db)
    return record(y, (x, weight, bias), backward, "layer_norm")
