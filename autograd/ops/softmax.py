"""softmax, log_softmax, and the loss built on them: cross_entropy, linear_cross_entropy."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .graph import record

# -- softmax -----------------------------------------------------------------------------------


class SoftmaxSaved(NamedTuple):
    y: np.ndarray                 # the output, softmax(x)
    axis: int


def softmax_forward(x: np.ndarray, axis: int) -> tuple[np.ndarray, SoftmaxSaved]:
    """y_i = exp(x_i) / sum_k exp(x_k) along `axis`.

    Subtracting max(x) first changes nothing (numerator and denominator are both multiplied by
    exp(-max)) and keeps exp from overflowing.
    """
    y = np.exp(x - x.max(axis=axis, keepdims=True))
    y /= y.sum(axis=axis, keepdims=True)
    return y, SoftmaxSaved(y, axis)


def softmax_backward(d_y: np.ndarray, saved: SoftmaxSaved) -> np.ndarray:
    """dL/dx from g = dL/dy.

    Every y_i depends on every x_j (through the denominator):
        dy_i/dx_j = y_i [i == j] - y_i y_j
    so
        dL/dx_j = sum_i g_i dy_i/dx_j = g_j y_j - y_j sum_i g_i y_i = y_j (g_j - sum_i g_i y_i)
    One row sum, no (C, C) Jacobian.
    """
    y, axis = saved
    return y * (d_y - (d_y * y).sum(axis=axis, keepdims=True))


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`. The math: `softmax_forward`, `softmax_backward`."""
    y, saved = softmax_forward(x.data, axis)
    return record(y, (x,), lambda d_y: (softmax_backward(d_y, saved),), "softmax")


# -- log_softmax -------------------------------------------------------------------------------


class LogSoftmaxSaved(NamedTuple):
    y: np.ndarray                 # the output, log softmax(x); exp(y) is softmax(x)
    axis: int


def log_softmax_forward(x: np.ndarray, axis: int) -> tuple[np.ndarray, LogSoftmaxSaved]:
    """y_i = x_i - log sum_k exp(x_k) along `axis` (computed as (x - max) - log sum exp(x - max),
    which is the same and cannot overflow)."""
    shifted = x - x.max(axis=axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return y, LogSoftmaxSaved(y, axis)


def log_softmax_backward(d_y: np.ndarray, saved: LogSoftmaxSaved) -> np.ndarray:
    """dL/dx from g = dL/dy.

    d/dx_j of log sum_k exp(x_k) is exp(x_j) / sum_k exp(x_k) = softmax(x)_j, so
        dy_i/dx_j = [i == j] - softmax(x)_j
        dL/dx_j = sum_i g_i ([i == j] - softmax(x)_j) = g_j - softmax(x)_j sum_i g_i
    softmax(x) = exp(y): recomputed here rather than saved as a second array.
    """
    y, axis = saved
    return d_y - np.exp(y) * d_y.sum(axis=axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - log(sum(exp(x))) along `axis`.
    The math: `log_softmax_forward`, `log_softmax_backward`."""
    y, saved = log_softmax_forward(x.data, axis)
    return record(y, (x,), lambda d_y: (log_softmax_backward(d_y, saved),), "log_softmax")


# -- cross_entropy -----------------------------------------------------------------------------


class CrossEntropySaved(NamedTuple):
    probs: np.ndarray             # (N, V) softmax of the logits
    rows: np.ndarray              # (N,) 0..N-1, to index one entry per row
    safe_targets: np.ndarray      # (N,) the targets, 0 where ignored (a valid index, weight 0)
    counted: np.ndarray           # (N,) bool: the row's target is not ignore_index
    n_counted: int
    reduction: str                # "mean", "sum" or "none"


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, ignore_index: int,
                          reduction: str, in_place: bool = False
                          ) -> tuple[np.ndarray, CrossEntropySaved]:
    """The loss for logits (N, V) and integer targets (N,): a scalar, or (N,) for "none".

    For one row x with target t:
        loss = -log softmax(x)_t = log sum_j exp(x_j) - x_t
    computed with the row's max subtracted inside the exp (see softmax_forward). Rows whose
    target is `ignore_index` have loss 0 and are left out of the mean.
    The probabilities are saved for the backward, which then needs no second exp over (N, V).
    With `in_place=True` the logits array itself becomes the probabilities (a caller that owns
    it and needs it no more saves one (N, V) array).
    """
    n_classes = logits.shape[1]
    counted = targets != ignore_index
    out_of_range = counted & ((targets < 0) | (targets >= n_classes))
    if out_of_range.any():
        bad = targets[out_of_range]
        raise ValueError(f"cross_entropy: target {int(bad[0])} is out of range for "
                         f"{n_classes} classes (valid: 0..{n_classes - 1} or "
                         f"ignore_index={ignore_index}); {bad.size} such target(s)")
    rows = np.arange(targets.size)
    safe_targets = np.where(counted, targets, 0)
    n_counted = int(counted.sum())
    dtype = logits.dtype
    x_t = logits[rows, safe_targets]                        # (N,), before logits is overwritten
    row_max = logits.max(axis=1, keepdims=True)             # (N, 1)
    probs = np.subtract(logits, row_max, out=logits if in_place else None)
    np.exp(probs, out=probs)                                # (N, V), normalised below
    sum_exp = probs.sum(axis=1, keepdims=True)              # (N, 1)
    row_losses = (np.log(sum_exp[:, 0]) + row_max[:, 0] - x_t) * counted      # (N,)
    probs /= sum_exp
    if reduction == "mean":
        # No counted target at all gives nan, as 0/0 should (PyTorch does the same).
        loss = np.asarray(row_losses.sum() / n_counted if n_counted else np.nan, dtype=dtype)
    elif reduction == "sum":
        loss = np.asarray(row_losses.sum(), dtype=dtype)
    else:
        loss = row_losses.astype(dtype, copy=False)
    return loss, CrossEntropySaved(probs, rows, safe_targets, counted, n_counted, reduction)


def cross_entropy_backward(d_loss: np.ndarray, saved: CrossEntropySaved) -> np.ndarray:
    """dL/dlogits (N, V) from d_loss = dL/dloss (a scalar, or (N,) for "none").

    For one row, loss = log sum_j exp(x_j) - x_t, and d/dx_j of log sum exp is softmax(x)_j:
        dloss/dx_j = softmax(x)_j - [j == t]
    Each row's loss enters L with a weight: d_loss / n_counted ("mean"), d_loss ("sum"), or the
    row's own d_loss_n ("none"); 0 for an ignored row. So
        dL/dx_n = weight_n * (probs_n - onehot(t_n))
    computed as probs times the weights, then the weight subtracted at each row's target.
    """
    probs, rows, safe_targets, counted, n_counted, reduction = saved
    if reduction == "mean":
        row_weight = counted * (d_loss / max(n_counted, 1))          # (N,)
    elif reduction == "sum":
        row_weight = counted * d_loss
    else:
        row_weight = counted * np.reshape(d_loss, -1)
    row_weight = row_weight.astype(probs.dtype, copy=False)
    d_logits = probs * row_weight[:, None]                           # (N, V)
    d_logits[rows, safe_targets] -= row_weight
    return d_logits


def check_targets(op: str, logits_shape: tuple[int, ...], targets,
                  reduction: str) -> np.ndarray:
    """`targets` as an integer array of the logits' shape without the class axis, or a
    ValueError naming what is wrong."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{op}: targets must be integers, got dtype {t.dtype}")
    if t.shape != tuple(logits_shape[:-1]):
        raise ValueError(f"{op}: targets of shape {t.shape} do not match logits of shape "
                         f"{tuple(logits_shape)} (expected targets of shape "
                         f"{tuple(logits_shape[:-1])})")
    return t


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100,
                  reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer `targets` under softmax(`logits`), fused.

    logits (..., V), targets (...) of ints. Rows whose target equals `ignore_index` contribute
    neither loss nor gradient, and the mean is over the counted rows only (padding in
    fine-tuning batches is masked this way). `reduction`: "mean" (default), "sum", or "none"
    (a loss per position, 0 where ignored).
    The math: `cross_entropy_forward`, `cross_entropy_backward`.
    """
    x = logits.data
    t = check_targets("cross_entropy", x.shape, targets, reduction)
    loss, saved = cross_entropy_forward(x.reshape(-1, x.shape[-1]), t.reshape(-1),
                                        ignore_index, reduction)

    def backward(d_loss: np.ndarray) -> tuple:
        return (cross_entropy_backward(d_loss, saved).reshape(x.shape),)
    return record(loss.reshape(t.shape) if reduction == "none" else loss, (logits,), backward,
                  "cross_entropy")


# -- linear_cross_entropy ----------------------------------------------------------------------


class LinearCrossEntropySaved(NamedTuple):
    x2: np.ndarray                # (N, C): the input, leading axes flattened
    weight: np.ndarray            # (V, C)
    cross_entropy: CrossEntropySaved


def linear_cross_entropy_forward(x2: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                                 ignore_index: int, reduction: str
                                 ) -> tuple[np.ndarray, LinearCrossEntropySaved]:
    """cross_entropy(Z, targets) with Z = X W^T: x2 (N, C), W (V, C), targets (N,).

    The logits Z (N, V) are computed into a fresh buffer that cross_entropy_forward turns into
    the probabilities in place: no separate logits array is kept.
    """
    loss, ce_saved = cross_entropy_forward(x2 @ weight.T, targets, ignore_index, reduction,
                                           in_place=True)
    return loss, LinearCrossEntropySaved(x2, weight, ce_saved)


def linear_cross_entropy_backward(d_loss: np.ndarray, saved: LinearCrossEntropySaved,
                                  need_dx: bool, need_dw: bool
                                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dL/dX (N, C), dL/dW (V, C) from d_loss; None for each one not needed.

    With dZ = dL/dZ (N, V) from cross_entropy_backward, and Z_nv = sum_c X_nc W_vc (a linear
    layer with weight W^T, see linear_backward):
        dL/dX = dZ W      (N, C)
        dL/dW = dZ^T X    (V, C)
    """
    x2, weight, ce_saved = saved
    d_z = cross_entropy_backward(d_loss, ce_saved)                  # (N, V)
    d_x = d_z @ weight if need_dx else None
    d_w = d_z.T @ x2 if need_dw else None
    return d_x, d_w


def linear_cross_entropy(x: Tensor, weight: Tensor, targets, ignore_index: int = -100,
                         reduction: str = "mean") -> Tensor:
    """cross_entropy(x @ weight^T, targets), fused: a language model's output head and loss.

    x (..., C); weight (V, C), one row per class (for a GPT, the token embedding itself: the
    tied output head); targets (...). Fusing means the (N, V) logits become the softmax
    probabilities in place and no separate logits tensor is kept: at a vocabulary of 50,257
    that is one (N, V) array less to write and read per step.
    The math: `linear_cross_entropy_forward`, `linear_cross_entropy_backward`.
    """
    xd, w = x.data, weight.data
    if w.ndim != 2 or xd.shape[-1] != w.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be (V, C) with C = {xd.shape[-1]} "
                         f"(the input's last axis), got shape {w.shape}")
    t = check_targets("linear_cross_entropy", xd.shape[:-1] + (w.shape[0],), targets,
                      reduction)
    loss, saved = linear_cross_entropy_forward(xd.reshape(-1, w.shape[1]), w, t.reshape(-1),
                                               ignore_index, reduction)
    need_dx, need_dw = x.requires_grad, weight.requires_grad

    def backward(d_loss: np.ndarray) -> tuple:
        d_x2, d_w = linear_cross_entropy_backward(d_loss, saved, need_dx, need_dw)
        return (d_x2.reshape(xd.shape) if d_x2 is not None else None), d_w
    return record(loss.reshape(t.shape) if reduction == "none" else loss, (x, weight), backward,
                  "linear_cross_entropy")
