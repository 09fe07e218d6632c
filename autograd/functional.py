"""Fused ops: each one a single node in the graph with a backward pass derived by hand.

Composing, say, layer norm out of `mean`, `-`, `**`, `sqrt` and `/` works (the engine would
differentiate it), but it records a dozen nodes, allocates a dozen arrays and walks memory a dozen
times. Here every op computes its forward in a few NumPy calls, keeps exactly what its backward
needs, and its backward computes all input gradients at once from those saved arrays. The
derivation is in each docstring; `python -m autograd.gradcheck` checks each against finite
differences.

Shapes: B batch, T query positions, S key positions, C channels, H heads, D head size,
V vocabulary, N = number of rows after flattening the leading axes.
"""
from __future__ import annotations

import math

import numpy as np

from .random import default_rng
from .tensor import Tensor

__all__ = ["linear", "softmax", "log_softmax", "cross_entropy", "linear_cross_entropy", "layer_norm", "gelu",
           "embedding", "dropout", "scaled_dot_product_attention", "multi_head_attention",
           "relu", "tanh"]


def _needs(t: Tensor | None) -> bool:
    return t is not None and t.requires_grad


def _record(out: np.ndarray, inputs: tuple, backward, op: str) -> Tensor:
    """Tensor._make for ops with optional inputs (a layer without bias passes None).

    `backward` returns one gradient per entry of `inputs`; the entries for absent inputs are
    dropped so that the engine sees gradients aligned with the tensors actually present.
    """
    present = [i for i, t in enumerate(inputs) if t is not None]
    if len(present) == len(inputs):
        return Tensor._make(out, inputs, backward, op)

    def backward_present(g):
        grads = backward(g)
        return tuple(grads[i] for i in present)
    return Tensor._make(out, tuple(inputs[i] for i in present), backward_present, op)


# ----------------------------------------------------------------------------------------------


def _filled(n: int, value: float, dtype) -> np.ndarray:
    """A read-only (n,) vector of `value`, cached: the right-hand side of a matrix-vector
    product that sums (or averages) rows or columns. BLAS does such a product several times
    faster than NumPy's `sum(axis=...)`, whose reduction loop is not vectorised across rows."""
    key = (n, float(value), np.dtype(dtype))
    vector = _filled_cache.get(key)
    if vector is None:
        if len(_filled_cache) > 256:          # row counts vary (generation): stay bounded
            _filled_cache.clear()
        vector = np.full(n, value, dtype=dtype)
        vector.setflags(write=False)
        _filled_cache[key] = vector
    return vector


_filled_cache: dict[tuple, np.ndarray] = {}


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W + b, with x of shape (..., in), W of shape (in, out), b of shape (out,).

    The leading axes are flattened so that everything is one 2-D GEMM: X (N, in) @ W (in, out).
    Backward, with G = dL/dY of shape (N, out):
        dL/dX = G W^T      (N, in)
        dL/dW = X^T G      (in, out)   -- every row of X contributed to every column of W
        dL/db = sum_n G_n  (out,)      -- b was broadcast over the N rows
    """
    xd, w = x.data, weight.data
    if w.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (in, out), got shape {w.shape}")
    n_in, n_out = w.shape
    if xd.shape[-1] != n_in:
        raise ValueError(f"linear: input has {xd.shape[-1]} features (shape {xd.shape}) but the "
                         f"weight expects {n_in} (weight shape {w.shape})")
    x2 = xd.reshape(-1, n_in)                         # (N, in)
    y2 = x2 @ w                                       # (N, out)
    if bias is not None:
        y2 += bias.data
    x_shape = xd.shape

    def backward(g):
        g2 = g.reshape(-1, n_out)                     # (N, out)
        gx = (g2 @ w.T).reshape(x_shape) if x.requires_grad else None
        gw = x2.T @ g2 if weight.requires_grad else None
        gb = _filled(len(g2), 1.0, g2.dtype) @ g2 if _needs(bias) else None   # column sums
        return gx, gw, gb

    return _record(y2.reshape(*x_shape[:-1], n_out), (x, weight, bias), backward, "linear")


# ----------------------------------------------------------------------------------------------


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """y_i = exp(x_i) / sum_j exp(x_j) along `axis`.

    The Jacobian is dy_i/dx_j = y_i (delta_ij - y_j), so
        dL/dx_j = sum_i g_i y_i (delta_ij - y_j) = y_j (g_j - sum_i g_i y_i).
    Subtracting max(x) first changes nothing mathematically and keeps exp from overflowing.
    """
    y = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y /= y.sum(axis=axis, keepdims=True)

    def backward(g):
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)
    return Tensor._make(y, (x,), backward, "softmax")


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """y_i = x_i - log sum_j exp(x_j).

    dy_i/dx_j = delta_ij - softmax(x)_j, so  dL/dx_j = g_j - softmax(x)_j * sum_i g_i.
    """
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)
    return Tensor._make(y, (x,), backward, "log_softmax")


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100,
                  reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer `targets` under softmax(`logits`), fused.

    logits (..., V), targets (...) of ints. For one row with target t:
        loss = -log softmax(x)_t = logsumexp(x) - x_t
        dloss/dx_j = softmax(x)_j - [j == t]
    Rows whose target equals `ignore_index` contribute neither loss nor gradient, and the mean
    is over the counted rows only (padding in fine-tuning batches is masked this way).
    `reduction`: "mean" (default), "sum", or "none" (a loss per position, 0 where ignored).
    The softmax probabilities are kept from the forward pass: the backward is then one multiply
    and one scatter, without a second exp over the (N, V) logits.
    """
    x = logits.data
    t = _check_targets("cross_entropy", x.shape, targets, reduction)
    ce = _CrossEntropy(x.reshape(-1, x.shape[-1]), t.reshape(-1), ignore_index, reduction,
                       in_place=False)

    def backward(g):
        return (ce.grad_logits(g).reshape(x.shape),)
    return Tensor._make(ce.loss(t.shape), (logits,), backward, "cross_entropy")


def _check_targets(op: str, logits_shape: tuple, targets, reduction: str) -> np.ndarray:
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


class _CrossEntropy:
    """The arithmetic of softmax cross-entropy on (N, V) logits, shared by the fused ops.

    With `in_place=True` the logits array itself is turned into the probabilities (the caller
    owns it and needs it no more): one (N, V) array instead of two.
    """

    def __init__(self, x2: np.ndarray, t1: np.ndarray, ignore_index: int, reduction: str,
                 in_place: bool):
        n_classes = x2.shape[1]
        counted = t1 != ignore_index
        out_of_range = counted & ((t1 < 0) | (t1 >= n_classes))
        if out_of_range.any():
            bad = t1[out_of_range]
            raise ValueError(f"cross_entropy: target {int(bad[0])} is out of range for "
                             f"{n_classes} classes (valid: 0..{n_classes - 1} or "
                             f"ignore_index={ignore_index}); {bad.size} such target(s)")
        self.rows = np.arange(t1.size)
        self.safe_t = np.where(counted, t1, 0)
        self.counted, self.n_counted = counted, int(counted.sum())
        self.reduction, self.dtype = reduction, x2.dtype
        picked = x2[self.rows, self.safe_t]                     # x_t, before x2 is overwritten
        row_max = x2.max(axis=1, keepdims=True)
        probs = np.subtract(x2, row_max, out=x2 if in_place else None)
        np.exp(probs, out=probs)                                # (N, V), normalised below
        total = probs.sum(axis=1, keepdims=True)
        self.losses = (np.log(total[:, 0]) + row_max[:, 0] - picked) * counted   # (N,)
        probs /= total
        self.probs = probs

    def loss(self, shape: tuple) -> np.ndarray:
        if self.reduction == "mean":
            # No counted target at all gives nan, as 0/0 should (PyTorch does the same).
            value = self.losses.sum() / self.n_counted if self.n_counted else np.nan
            return np.asarray(value, dtype=self.dtype)
        if self.reduction == "sum":
            return np.asarray(self.losses.sum(), dtype=self.dtype)
        return self.losses.reshape(shape).astype(self.dtype, copy=False)

    def grad_logits(self, g) -> np.ndarray:
        """(softmax - onehot(t)) times each row's weight in the loss: (N, V)."""
        if self.reduction == "mean":
            row_weight = self.counted * (g / max(self.n_counted, 1))     # (N,)
        elif self.reduction == "sum":
            row_weight = self.counted * g
        else:
            row_weight = self.counted * np.reshape(g, -1)
        row_weight = row_weight.astype(self.dtype, copy=False)
        grad = self.probs * row_weight[:, None]
        grad[self.rows, self.safe_t] -= row_weight
        return grad


def linear_cross_entropy(x: Tensor, weight: Tensor, targets, ignore_index: int = -100,
                         reduction: str = "mean") -> Tensor:
    """cross_entropy(x @ weight^T, targets), fused: a language model's output head and loss.

    x (..., C); weight (V, C), one row per class (for a GPT, the token embedding itself: the
    tied output head); targets (...). With Z = X W^T (N, V) and G = dL/dZ from cross_entropy:
        dL/dX = G W      (N, C)
        dL/dW = G^T X    (V, C)
    Fusing means the (N, V) logits are computed into a buffer that becomes the softmax
    probabilities in place, and no separate logits tensor is kept: at a vocabulary of 50,257
    that is hundreds of megabytes of memory traffic per step saved.
    """
    xd, w = x.data, weight.data
    if w.ndim != 2 or xd.shape[-1] != w.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be (V, C) with C = {xd.shape[-1]} "
                         f"(the input's last axis), got shape {w.shape}")
    t = _check_targets("linear_cross_entropy", xd.shape[:-1] + (w.shape[0],), targets,
                       reduction)
    x2 = xd.reshape(-1, w.shape[1])                          # (N, C)
    ce = _CrossEntropy(x2 @ w.T, t.reshape(-1), ignore_index, reduction, in_place=True)

    def backward(g):
        grad_z = ce.grad_logits(g)                           # (N, V)
        gx = (grad_z @ w).reshape(xd.shape) if x.requires_grad else None
        gw = grad_z.T @ x2 if weight.requires_grad else None
        return gx, gw
    return Tensor._make(ce.loss(t.shape), (x, weight), backward, "linear_cross_entropy")


# ----------------------------------------------------------------------------------------------


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
               eps: float = 1e-5) -> Tensor:
    """y = xhat * w + b over the last axis, xhat = (x - mean) / sqrt(var + eps).

    With r = 1/sqrt(var + eps) and h = g * w (the gradient arriving at xhat), for one row of C:
        dL/dx = r * (h - mean(h) - xhat * mean(h * xhat))
    The two means account for x moving the row's mean and its variance.
        dL/dw = sum over rows of g * xhat,   dL/db = sum over rows of g.
    Every mean and sum here is a matrix-vector product, e.g. mean(h) = (g @ w) / C and
    mean(h * xhat) = ((g * xhat) @ w) / C, so the backward makes one (N, C) product, g * xhat,
    serving both dL/dw and the second mean.
    """
    xd = x.data
    n_channels = xd.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n_channels,):
            raise ValueError(f"layer_norm: {name} has shape {p.shape}, expected ({n_channels},) "
                             f"for input of shape {xd.shape}")
    dtype = xd.dtype
    x2 = xd.reshape(-1, n_channels)                            # (N, C)
    average = _filled(n_channels, 1.0 / n_channels, dtype)
    xhat = x2 - (x2 @ average)[:, None]                        # centred
    var = np.einsum("nc,nc->n", xhat, xhat)                    # row sums of squares, no temp
    var *= 1.0 / n_channels
    var += eps
    rstd = (1.0 / np.sqrt(var))[:, None]                       # (N, 1)
    xhat *= rstd
    y = xhat * weight.data if weight is not None else xhat.copy()
    if bias is not None:
        y += bias.data

    def backward(g):
        g2 = g.reshape(-1, n_channels)                         # (N, C)
        w = weight.data if weight is not None else _filled(n_channels, 1.0, dtype)
        column_sum = _filled(g2.shape[0], 1.0, dtype)
        g_xhat = g2 * xhat                                     # (N, C)
        gw = column_sum @ g_xhat if _needs(weight) else None
        gb = column_sum @ g2 if _needs(bias) else None
        gx = None
        if x.requires_grad:
            mean_h = (g2 @ w)[:, None]                         # (N, 1), times C
            mean_h_xhat = (g_xhat @ w)[:, None]                # (N, 1), times C
            gx = g2 * w if weight is not None else g2.copy()   # h
            gx -= mean_h * (1.0 / n_channels)
            np.multiply(xhat, mean_h_xhat * (1.0 / n_channels), out=g_xhat)
            gx -= g_xhat
            gx *= rstd
            gx = gx.reshape(xd.shape)
        return gx, gw, gb

    return _record(y.reshape(xd.shape), (x, weight, bias), backward, "layer_norm")


# ----------------------------------------------------------------------------------------------

_GELU_C = math.sqrt(2.0 / math.pi)   # a Python float: it never promotes float32 arrays
_GELU_K = 0.044715


ELEMENTWISE_CHUNK = 65536    # elements per slice of a long elementwise chain: fits in L2


def _chunks(*arrays: np.ndarray):
    """Matching 1-D slices of ELEMENTWISE_CHUNK elements of same-sized arrays (the first ones
    are read, so may be copied if not contiguous; the arrays written must be contiguous).

    A chain of NumPy calls over an array of millions of elements walks main memory once per
    call; done slice by slice, the slice's intermediates stay in the core's cache. It only
    pays for long chains on big arrays: GELU on a (2048, 1536) activation is 38 % faster
    (forward and backward), on a (384, 512) one the same."""
    flat = [a.reshape(-1) for a in arrays]
    n = flat[0].size
    for start in range(0, n, ELEMENTWISE_CHUNK):
        yield tuple(f[start:start + ELEMENTWISE_CHUNK] for f in flat)


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation:
        y = 0.5 x (1 + tanh(u)),   u = c (x + k x^3),   c = sqrt(2/pi), k = 0.044715

    Since 0.5 (1 + tanh(u)) = sigmoid(2u), this is y = x s with s = 1 / (1 + exp(-2u)): one exp
    instead of a tanh, which is the slow part on a CPU. With 1 - tanh^2(u) = 4 s (1 - s):
        dy/dx = s + x * 2 s (1 - s) * du/dx,   du/dx = c (1 + 3 k x^2)
    """
    a = np.ascontiguousarray(x.data)
    sig = np.empty_like(a)
    y = np.empty_like(a)
    with np.errstate(over="ignore"):             # exp(-2u) = inf for very negative x: s = 0
        for ac, s, yc in _chunks(a, sig, y):
            np.multiply(ac, ac, out=s)
            s *= -2.0 * _GELU_C * _GELU_K
            s -= 2.0 * _GELU_C
            s *= ac                              # -2u = -2 c (x + k x^3)
            np.exp(s, out=s)
            s += 1.0
            np.reciprocal(s, out=s)              # s = sigmoid(2u)
            np.multiply(ac, s, out=yc)

    def backward(g):
        grad = np.empty_like(a)
        for gc, ac, s, slope in _chunks(g, a, sig, grad):
            np.multiply(ac, ac, out=slope)
            slope *= 6.0 * _GELU_C * _GELU_K
            slope += 2.0 * _GELU_C
            slope *= ac                          # 2 x du/dx
            slope *= s
            slope -= slope * s                   # * s (1 - s)
            slope += s
            slope *= gc
        return (grad,)
    return Tensor._make(y, (x,), backward, "gelu")


def relu(x: Tensor) -> Tensor:
    return x.relu()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


# ----------------------------------------------------------------------------------------------


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of `weight` (V, C) picked by integer `ids` (...): out (..., C).

    A lookup is a product with a one-hot matrix, out = onehot(ids) W, so
        dL/dW = onehot(ids)^T G:  row v of dL/dW is the sum of G over every position whose id
    is v. A token that appears twice must get both contributions: the scatter *adds*, where a
    plain `dW[ids] = G` would keep only the last one.
    """
    ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    w = weight.data
    n_rows = w.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
        bad = ids[(ids < 0) | (ids >= n_rows)]
        raise ValueError(f"embedding: id {int(bad.flat[0])} is out of range for a table of "
                         f"{n_rows} rows (valid: 0..{n_rows - 1})")
    out = w[ids]

    def backward(g):
        # The scatter-add, done as sort + segment sums: bring equal ids together, sum each
        # run of rows with one np.add.reduceat, write each sum once. Same result as
        # np.add.at(grad, ids, g), several times faster (add.at handles rows one at a time).
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable")
        sorted_ids = flat[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        grad = np.zeros_like(w)
        if flat.size:
            grad[sorted_ids[starts]] = np.add.reduceat(g.reshape(-1, w.shape[1])[order],
                                                       starts, axis=0)
        return (grad,)
    return Tensor._make(out, (weight,), backward, "embedding")


def dropout(x: Tensor, p: float = 0.5, training: bool = True,
            rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    The scaling keeps the expected value unchanged, so evaluation (no dropout) needs no
    correction. y = x * m with m in {0, 1/(1-p)} drawn once; dL/dx = g * m (same mask).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    rng = rng if rng is not None else default_rng()
    mask = (rng.random(x.shape, dtype=np.float32) >= p).astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return Tensor._make(x.data * mask, (x,), lambda g: (g * mask,), "dropout")


# ----------------------------------------------------------------------------------------------

_causal_bias_cache: dict[tuple[int, int, np.dtype], np.ndarray] = {}


def causal_bias(n_queries: int, n_keys: int, dtype=np.float32) -> np.ndarray:
    """(T, S) array: 0 where query i may look at key j, -inf where j is in its future.

    Queries are the *last* T of the S positions (with a KV cache the keys include the past),
    so query i sits at position S - T + i and may see keys j <= S - T + i.
    """
    key = (n_queries, n_keys, np.dtype(dtype))
    bias = _causal_bias_cache.get(key)
    if bias is None:
        offset = n_keys - n_queries
        future = np.arange(n_keys)[None, :] > np.arange(n_queries)[:, None] + offset
        bias = np.where(future, -np.inf, 0.0).astype(dtype)
        bias.setflags(write=False)
        _causal_bias_cache[key] = bias
    return bias


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 dropout_p: float = 0.0,
                                 rng: np.random.Generator | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(D) + mask) V for q (B, H, T, D), k and v (B, H, S, D).

    Forward:   A = Q K^T / sqrt(D)   P = softmax(A)   P' = dropout(P)   O = P' V
    Backward, with G = dL/dO:
        dV  = P'^T G                    (B, H, S, D)
        dP' = G V^T, dP = dP' * mask    (B, H, T, S)
        dA  = P * (dP - rowsum(dP * P))      -- the softmax backward, row by row
        dQ  = dA K / sqrt(D),  dK = dA^T Q / sqrt(D)
    The row sums need no (T, S) product: rowsum(dP * P) = rowsum(G * O), a (T, D) one, because
    sum_j dP_j P_j = sum_j (G . V_j) P'_j = G . O   (the trick FlashAttention uses).
    Only P (and the dropout mask) is saved between forward and backward.

    Causal attention runs in blocks of `ATTENTION_QUERY_BLOCK` queries: a block's queries can
    only see keys up to its last position, so its products stop there. For T = S = 256 and
    blocks of 64 that skips 3/8 of the matrix products and of the softmax work; the skipped
    entries of P are exactly 0 and are never read (see `_attention_blocks`).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"scaled_dot_product_attention: {name} must be (B, H, T, D), got "
                             f"shape {t.shape}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, "
                         f"v {v.shape} do not fit (B, H, T, D) / (B, H, S, D)")
    if is_causal and k.shape[2] < q.shape[2]:
        raise ValueError(f"scaled_dot_product_attention: causal attention needs at least as "
                         f"many keys ({k.shape[2]}) as queries ({q.shape[2]})")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1), "
                         f"got {dropout_p}")
    saved = _attention_forward(q.data, k.data, v.data, is_causal, dropout_p, rng)

    def backward(g):
        return _attention_backward(g, saved, q.requires_grad, k.requires_grad, v.requires_grad)
    return Tensor._make(saved.out, (q, k, v), backward, "attention")


ATTENTION_QUERY_BLOCK = 64     # queries per block of causal attention


def _attention_blocks(n_queries: int, n_keys: int, is_causal: bool) -> list[tuple[int, int, int]]:
    """[(start, stop, keys)]: query rows start:stop attend to keys 0:keys.

    Without a mask every query sees every key: one block. With the causal mask, query t (at
    position S - T + t) sees keys up to and including its own position, so a block of rows
    start:stop needs only the keys before S - T + stop. The entries of P to the right of a
    block's keys are never computed; they would be exp(-inf) = 0, so leaving them out changes
    nothing in the forward or the backward.
    """
    block = ATTENTION_QUERY_BLOCK
    if not is_causal or n_queries <= block:
        return [(0, n_queries, n_keys)]
    past = n_keys - n_queries
    return [(start, min(start + block, n_queries), past + min(start + block, n_queries))
            for start in range(0, n_queries, block)]


class _AttentionSaved:
    """What the attention backward needs from the forward: the inputs, P, P' and the output."""
    __slots__ = ("q", "k", "v", "p", "p_used", "mask", "out", "scale", "blocks")


def _attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, is_causal: bool,
                       dropout_p: float, rng) -> _AttentionSaved:
    """The arithmetic of attention on arrays (B, H, T, D) / (B, H, S, D); see
    `scaled_dot_product_attention` for the math. The arrays may be strided views.

    P is a (B, H, T, S) array of which each query block fills the columns of the keys it can
    see; the blocks' products write straight into their part of P and of the output."""
    saved = _AttentionSaved()
    saved.q, saved.k, saved.v = q, k, v
    saved.scale = scale = 1.0 / math.sqrt(q.shape[-1])
    n_queries, n_keys = q.shape[2], k.shape[2]
    saved.blocks = blocks = _attention_blocks(n_queries, n_keys, is_causal)
    bias = causal_bias(n_queries, n_keys, q.dtype) if is_causal else None
    saved.p = p = np.empty(q.shape[:3] + (n_keys,), dtype=q.dtype)         # (B, H, T, S)
    saved.mask = None
    saved.p_used = p
    if dropout_p > 0.0:
        rng = rng if rng is not None else default_rng()
        mask = (rng.random(p.shape, dtype=np.float32) >= dropout_p).astype(p.dtype)
        mask *= 1.0 / (1.0 - dropout_p)
        saved.mask = mask
        saved.p_used = np.empty_like(p)                                    # P'
    saved.out = out = np.empty(q.shape[:3] + (v.shape[3],), dtype=q.dtype)  # (B, H, T, D)
    for start, stop, keys in blocks:
        pb = p[:, :, start:stop, :keys]
        np.matmul(q[:, :, start:stop], k[:, :, :keys].swapaxes(-1, -2), out=pb)
        pb *= scale
        if bias is not None:
            pb += bias[start:stop, :keys]
        pb -= pb.max(axis=-1, keepdims=True)
        np.exp(pb, out=pb)
        # row sums as a matrix-vector product: 3-5x faster than sum(axis=-1) on short rows
        pb /= np.matmul(pb, _filled(keys, 1.0, pb.dtype))[..., None]      # P
        if saved.mask is not None:
            pb = np.multiply(pb, saved.mask[:, :, start:stop, :keys],
                             out=saved.p_used[:, :, start:stop, :keys])
        np.matmul(pb, v[:, :, :keys], out=out[:, :, start:stop])
    return saved


def _attention_backward(g: np.ndarray, saved: _AttentionSaved, need_q: bool, need_k: bool,
                        need_v: bool, into: tuple | None = None) -> tuple:
    """dQ, dK, dV (None where not needed) from G = dL/dO; the math is in the docstring of
    `scaled_dot_product_attention`. `into`: three arrays (views are fine) to write them to.

    Query block i computed the columns 0:keys_i of P. Key columns keys_(i-1):keys_i were
    therefore computed by blocks i, i+1, ... (the rows from start_i on), and dK, dV of those
    keys are one product each over those rows."""
    q, k, v, blocks = saved.q, saved.k, saved.v, saved.blocks
    gq, gk, gv = into if into is not None else (
        np.empty(q.shape, q.dtype) if need_q else None,
        np.empty(k.shape, k.dtype) if need_k else None,
        np.empty(v.shape, v.dtype) if need_v else None)
    dp = None
    if need_q or need_k:
        dp = np.empty_like(saved.p)                                        # dA, by blocks
        row_dot = np.sum(g * saved.out, axis=-1, keepdims=True)            # rowsum(dP * P)
        for start, stop, keys in blocks:
            db = dp[:, :, start:stop, :keys]
            np.matmul(g[:, :, start:stop], v[:, :, :keys].swapaxes(-1, -2), out=db)
            if saved.mask is not None:
                db *= saved.mask[:, :, start:stop, :keys]
            db -= row_dot[:, :, start:stop]
            db *= saved.p[:, :, start:stop, :keys]
            db *= saved.scale
            if need_q:
                np.matmul(db, k[:, :, :keys], out=gq[:, :, start:stop])
    first_key = 0
    for start, _, keys in blocks:
        columns = slice(first_key, keys)
        if need_k:
            np.matmul(dp[:, :, start:, columns].swapaxes(-1, -2), q[:, :, start:],
                      out=gk[:, :, columns])
        if need_v:
            np.matmul(saved.p_used[:, :, start:, columns].swapaxes(-1, -2), g[:, :, start:],
                      out=gv[:, :, columns])
        first_key = keys
    return gq, gk, gv


def multi_head_attention(qkv: Tensor, n_head: int, dropout_p: float = 0.0,
                         rng: np.random.Generator | None = None) -> Tensor:
    """Causal multi-head self-attention on a packed projection: qkv (B, T, 3C) -> (B, T, C).

    The same computation as splitting qkv into q, k, v, reshaping each to (B, H, T, D) heads,
    calling `scaled_dot_product_attention` and putting the heads side by side again; but fused
    into one op. The heads are *views* into qkv (no copies), and the backward writes dQ, dK, dV
    straight into one (B, T, 3C) gradient, where the composed version would allocate a
    full-size zero gradient for each of the three slices and add them up.
    """
    B, T, three_c = qkv.shape
    if three_c % 3 or (three_c // 3) % n_head:
        raise ValueError(f"multi_head_attention: last axis {three_c} is not 3 * n_embd with "
                         f"n_embd divisible by n_head={n_head}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"multi_head_attention: dropout_p must be in [0, 1), got {dropout_p}")
    C = three_c // 3
    D = C // n_head
    # (B, T, 3, H, D) view -> q, k, v each (B, H, T, D), still views into qkv.data
    heads = qkv.data.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    saved = _attention_forward(heads[0], heads[1], heads[2], True, dropout_p, rng)
    out = saved.out.transpose(0, 2, 1, 3).reshape(B, T, C)      # heads side by side

    def backward(g):
        g_heads = g.reshape(B, T, n_head, D).transpose(0, 2, 1, 3)   # (B, H, T, D) view
        grad = np.empty((B, T, 3, n_head, D), dtype=qkv.dtype)
        grad_heads = grad.transpose(2, 0, 3, 1, 4)                    # like `heads`: views
        _attention_backward(g_heads, saved, True, True, True, into=tuple(grad_heads))
        return (grad.reshape(B, T, three_c),)
    return Tensor._make(out, (qkv,), backward, "attention")
