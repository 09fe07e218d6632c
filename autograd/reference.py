"""Every fused op of `autograd.functional`, composed from elementary Tensor ops.

These are the ops as you would first write them: a few lines of `+`, `*`, `exp`, `sum` each,
differentiated node by node by the engine, with no derivation by hand. They compute the same
values and gradients as the fused ops (up to rounding) and serve two purposes:

- a reference: tests/test_autograd_ops.py checks every fused op's output and gradients against
  the function of the same name here;
- a yardstick: benchmarks/ops.py times the fused ops against these.

The signatures are those of `autograd.functional`. Values that only shift or mask (a row's
maximum, a causal mask, a dropout mask) enter as constants, which the engine does not
differentiate: softmax is unchanged by a shift, and masks are fixed.
"""
from __future__ import annotations

import math

import numpy as np

from .random import default_rng
from .ops.rope import rope_frequencies, rope_tables
from .tensor import Tensor, concatenate

__all__ = ["linear", "softmax", "log_softmax", "cross_entropy", "linear_cross_entropy",
           "layer_norm", "gelu", "embedding", "dropout", "scaled_dot_product_attention",
           "multi_head_attention", "relu", "tanh", "rms_norm", "rope", "relu_squared", "swiglu",
           "repeat_kv", "grouped_query_attention", "softcap"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    y = x @ weight
    return y + bias if bias is not None else y


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    e = (x - Tensor(x.data.max(axis=axis, keepdims=True))).exp()
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    shifted = x - Tensor(x.data.max(axis=axis, keepdims=True))
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100,
                  reduction: str = "mean") -> Tensor:
    targets = np.asarray(targets)
    n_classes = logits.shape[-1]
    t = targets.reshape(-1)
    counted = t != ignore_index
    log_probs = log_softmax(logits.reshape(-1, n_classes))             # (N, V)
    picked = log_probs[np.arange(t.size), np.where(counted, t, 0)]     # (N,)
    losses = -picked * Tensor(counted.astype(logits.dtype))           # 0 where ignored
    if reduction == "none":
        return losses.reshape(*targets.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / float(counted.sum())


def linear_cross_entropy(x: Tensor, weight: Tensor, targets, ignore_index: int = -100,
                         reduction: str = "mean") -> Tensor:
    return cross_entropy(x @ weight.T, targets, ignore_index, reduction)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
               eps: float = 1e-5) -> Tensor:
    centred = x - x.mean(axis=-1, keepdims=True)
    var = (centred * centred).mean(axis=-1, keepdims=True)
    y = centred / (var + eps).sqrt()
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def gelu(x: Tensor) -> Tensor:
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())


def embedding(ids, weight: Tensor) -> Tensor:
    return weight[np.asarray(ids)]


def _dropout_mask(shape: tuple[int, ...], p: float, dtype, rng: np.random.Generator | None
                  ) -> Tensor:
    # The same draw as the fused ops make, so that with equal generators the masks are equal.
    rng = rng if rng is not None else default_rng()
    keep = rng.random(shape, dtype=np.float32) >= p
    return Tensor(keep.astype(dtype) * (1.0 / (1.0 - p)))


def dropout(x: Tensor, p: float = 0.5, training: bool = True,
            rng: np.random.Generator | None = None) -> Tensor:
    if not training or p == 0.0:
        return x
    return x * _dropout_mask(x.shape, p, x.dtype, rng)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 dropout_p: float = 0.0,
                                 rng: np.random.Generator | None = None) -> Tensor:
    n_queries, n_keys = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))     # (B, H, T, S)
    if is_causal:
        # query i is position S - T + i: keys after it are in its future
        future = np.triu(np.ones((n_queries, n_keys), dtype=bool), k=n_keys - n_queries + 1)
        scores = scores + Tensor(np.where(future, -np.inf, 0.0).astype(q.dtype))
    weights = softmax(scores, axis=-1)
    if dropout_p > 0.0:
        weights = weights * _dropout_mask(weights.shape, dropout_p, q.dtype, rng)
    return weights @ v


def multi_head_attention(qkv: Tensor, n_head: int, dropout_p: float = 0.0,
                         rng: np.random.Generator | None = None) -> Tensor:
    B, T, three_c = qkv.shape
    C = three_c // 3
    heads = qkv.reshape(B, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4)   # (3, B, H, T, D)
    y = scaled_dot_product_attention(heads[0], heads[1], heads[2], True, dropout_p, rng)
    return y.transpose(1, 2).reshape(B, T, C)


def relu(x: Tensor) -> Tensor:
    return x * Tensor((x.data > 0).astype(x.dtype))


def tanh(x: Tensor) -> Tensor:
    return 2.0 * (2.0 * x).sigmoid() - 1.0


# -- the ops of the Llama family ---------------------------------------------------------------


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    y = x / ((x * x).mean(axis=-1, keepdims=True) + eps).sqrt()
    return y * weight if weight is not None else y


def rope(x: Tensor, start: int = 0, theta: float = 10000.0,
         freqs: np.ndarray | None = None) -> Tensor:
    # x * cos + rotate_half(x) * sin, the angle tables laid out as concat(angles, angles)
    half = x.shape[-1] // 2
    freqs = rope_frequencies(x.shape[-1], theta) if freqs is None else freqs
    cos, sin = rope_tables(freqs, start, x.shape[-2], x.dtype)           # constants
    rotated_half = concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * Tensor(np.concatenate([cos, cos], axis=-1))
            + rotated_half * Tensor(np.concatenate([sin, sin], axis=-1)))


def relu_squared(x: Tensor) -> Tensor:
    r = x.relu()
    return r * r


def swiglu(a: Tensor, b: Tensor) -> Tensor:
    return a * a.sigmoid() * b


def softcap(x: Tensor, cap: float) -> Tensor:
    return (x * (1.0 / cap)).tanh() * cap


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    if n_rep == 1:
        return x
    batch, heads, length, head_dim = x.shape
    copies = concatenate([x[:, :, None]] * n_rep, axis=2)         # (B, H_kv, n_rep, S, D)
    return copies.reshape(batch, heads * n_rep, length, head_dim)


def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                            dropout_p: float = 0.0,
                            rng: np.random.Generator | None = None) -> Tensor:
    n_rep = q.shape[1] // k.shape[1]
    return scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep),
                                        is_causal, dropout_p, rng)
