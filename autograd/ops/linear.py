"""linear: y = x W + b, as one 2-D matrix product whatever the leading axes of x."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .graph import needs_grad, record
from .sums import col_sums


class LinearSaved(NamedTuple):
    x2: np.ndarray                # (N, in): the input, leading axes flattened
    weight: np.ndarray            # (in, out)
    x_shape: tuple[int, ...]      # (..., in): the input's own shape, for dL/dx


def linear_forward(x: np.ndarray, weight: np.ndarray,
                   bias: np.ndarray | None) -> tuple[np.ndarray, LinearSaved]:
    """Y = X W + b for x (..., in), W (in, out), b (out,): y (..., out).

    The leading axes are flattened so that the whole op is one GEMM, X (N, in) @ W (in, out).
    """
    n_in, n_out = weight.shape
    x2 = x.reshape(-1, n_in)                          # (N, in)
    y2 = x2 @ weight                                  # (N, out)
    if bias is not None:
        y2 += bias                                    # broadcast over the N rows
    return y2.reshape(*x.shape[:-1], n_out), LinearSaved(x2, weight, x.shape)


def linear_backward(d_y: np.ndarray, saved: LinearSaved, need_dx: bool, need_dw: bool,
                    need_db: bool) -> tuple[np.ndarray | None, ...]:
    """dL/dx, dL/dW, dL/db from G = dL/dY (..., out); None for each one not needed.

    Element by element, Y_nj = sum_i X_ni W_ij + b_j. Each input gets the sum, over every
    output it touched, of that output's gradient times the input's coefficient there:
        dL/dX_ni = sum_j G_nj W_ij     so  dL/dX = G W^T      (N, in)
        dL/dW_ij = sum_n X_ni G_nj     so  dL/dW = X^T G      (in, out)
        dL/db_j  = sum_n G_nj          so  dL/db = column sums of G   (out,)
    W is used by every row and b is broadcast over every row: their gradients sum over rows.
    """
    x2, weight, x_shape = saved
    d_y2 = d_y.reshape(-1, weight.shape[1])           # G (N, out)
    d_x = (d_y2 @ weight.T).reshape(x_shape) if need_dx else None
    d_w = x2.T @ d_y2 if need_dw else None
    d_b = col_sums(d_y2) if need_db else None
    return d_x, d_w, d_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W + b, with x of shape (..., in), W of shape (in, out), b of shape (out,).

    The math: `linear_forward`, `linear_backward`.
    """
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (in, out), got shape {weight.shape}")
    n_in = weight.shape[0]
    if x.shape[-1] != n_in:
        raise ValueError(f"linear: input has {x.shape[-1]} features (shape {x.shape}) but the "
                         f"weight expects {n_in} (weight shape {weight.shape})")
    y, saved = linear_forward(x.data, weight.data, bias.data if bias is not None else None)
    need_dx, need_dw, need_db = x.requires_grad, weight.requires_grad, needs_grad(bias)

    def backward(d_y: np.ndarray) -> tuple:
        return linear_backward(d_y, saved, need_dx, need_dw, need_db)
    return record(y, (x, weight, bias), backward, "linear")
