"""repeat_kv and grouped_query_attention: several query heads share one key/value head (GQA).

Llama 3 and Qwen3 have fewer key/value heads (H_kv) than query heads (H): each kv head serves
n_rep = H / H_kv consecutive query heads. That shrinks the k and v projections and, what
matters most for generation, the KV cache, by the factor n_rep.

`repeat_kv` lets ordinary multi-head attention do GQA: it copies each kv head n_rep times, so
that query head h meets kv head h // n_rep (Hugging Face's order: kv head j serves query heads
j*n_rep .. j*n_rep + n_rep - 1).

Shapes: B batch, H query heads, H_kv key/value heads, T queries, S keys, D head size.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .attention import scaled_dot_product_attention
from .graph import record


def repeat_kv_forward(x: np.ndarray, n_rep: int) -> np.ndarray:
    """(B, H_kv, S, D) -> (B, H_kv * n_rep, S, D): out[:, j*n_rep + r] = x[:, j], r < n_rep."""
    return np.repeat(x, n_rep, axis=1)


def repeat_kv_backward(d_out: np.ndarray, n_rep: int) -> np.ndarray:
    """dL/dx (B, H_kv, S, D) from g = dL/dout (B, H_kv * n_rep, S, D).

    Every output head j*n_rep + r is a copy of input head j, so x_j reaches the loss along
    n_rep paths and its gradient is their sum (the rule for any value used several times):
        dL/dx[:, j] = sum_r g[:, j*n_rep + r]
    In NumPy: view g as (B, H_kv, n_rep, S, D) and sum over the n_rep axis.
    """
    batch, heads, length, head_dim = d_out.shape
    return d_out.reshape(batch, heads // n_rep, n_rep, length, head_dim).sum(axis=2)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Each of the H_kv heads of x (B, H_kv, S, D) repeated n_rep times: (B, H_kv*n_rep, S, D).
    n_rep = 1 returns x itself. The math: `repeat_kv_forward`, `repeat_kv_backward`."""
    if isinstance(n_rep, bool) or not isinstance(n_rep, (int, np.integer)) or n_rep < 1:
        raise ValueError(f"repeat_kv: n_rep must be a positive integer, got {n_rep!r}")
    if x.ndim != 4:
        raise ValueError(f"repeat_kv: input must be (B, H_kv, S, D), got shape {x.shape}")
    if n_rep == 1:
        return x
    return record(repeat_kv_forward(x.data, n_rep), (x,),
                  lambda d_out: (repeat_kv_backward(d_out, n_rep),), "repeat_kv")


def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                            dropout_p: float = 0.0,
                            rng: np.random.Generator | None = None) -> Tensor:
    """Attention of q (B, H, T, D) over fewer key/value heads k, v (B, H_kv, S, D): (B, H, T, D).

    Query head h attends with kv head h // (H / H_kv). Composed of `repeat_kv` and
    `scaled_dot_product_attention`, so each kv head's gradient is the sum over the query heads
    that share it. With a KV cache (T < S) the queries are the last T positions, as in
    `scaled_dot_product_attention`.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"grouped_query_attention: {name} must be 4-D (B, heads, T, D), "
                             f"got shape {t.shape}")
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads % n_kv_heads:
        raise ValueError(f"grouped_query_attention: {n_heads} query heads cannot be shared out "
                         f"evenly over {n_kv_heads} key/value heads")
    n_rep = n_heads // n_kv_heads
    return scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep),
                                        is_causal=is_causal, dropout_p=dropout_p, rng=rng)
