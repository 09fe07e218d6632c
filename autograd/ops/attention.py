"""Attention: scaled_dot_product_attention, and multi_head_attention on a packed projection."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..random import default_rng
from ..tensor import Tensor
from .dropout import dropout_mask
from .graph import record
from .sums import row_sums

ATTENTION_QUERY_BLOCK = 64     # queries per block of causal attention

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


def attention_blocks(n_queries: int, n_keys: int, is_causal: bool) -> list[tuple[int, int, int]]:
    """[(start, stop, keys)]: query rows start:stop attend to keys 0:keys.

    Without a mask every query sees every key: one block. With the causal mask, query t (at
    position S - T + t) sees keys up to and including its own position, so a block of rows
    start:stop needs only the keys before S - T + stop. The entries of P to the right of a
    block's keys are never computed; they would be exp(-inf) = 0, so leaving them out changes
    nothing in the forward or the backward. For T = S = 256 and blocks of 64 that skips 3/8 of
    the matrix products and of the softmax work.
    """
    block = ATTENTION_QUERY_BLOCK
    if not is_causal or n_queries <= block:
        return [(0, n_queries, n_keys)]
    past = n_keys - n_queries
    return [(start, min(start + block, n_queries), past + min(start + block, n_queries))
            for start in range(0, n_queries, block)]


class AttentionSaved(NamedTuple):
    q: np.ndarray                 # (B, H, T, D) the inputs (possibly strided views)
    k: np.ndarray                 # (B, H, S, D)
    v: np.ndarray                 # (B, H, S, D)
    p: np.ndarray                 # (B, H, T, S) P = softmax(S), filled block by block
    p_dropped: np.ndarray         # (B, H, T, S) P' = P * M (P itself without dropout)
    mask: np.ndarray | None       # (B, H, T, S) dropout mask M, or None
    out: np.ndarray               # (B, H, T, D) O
    scale: float                  # 1 / sqrt(D)
    blocks: list[tuple[int, int, int]]


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, is_causal: bool,
                      dropout_p: float, rng: np.random.Generator | None
                      ) -> tuple[np.ndarray, AttentionSaved]:
    """O = dropout(softmax(Q K^T / sqrt(D) + causal bias)) V for q (B, H, T, D), k and v
    (B, H, S, D). Step by step:

        S  = Q K^T / sqrt(D)  (+ bias: -inf where a key is in a query's future)   (B, H, T, S)
        P  = softmax(S)       row by row
        P' = P * M            M the dropout mask (P' = P without dropout)
        O  = P' V                                                                 (B, H, T, D)

    Query blocks (see `attention_blocks`): P is a (B, H, T, S) array of which each block
    fills the columns of the keys it can see; each block's products write straight into its
    part of P and of O.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    n_queries, n_keys = q.shape[2], k.shape[2]
    blocks = attention_blocks(n_queries, n_keys, is_causal)
    bias = causal_bias(n_queries, n_keys, q.dtype) if is_causal else None
    p = np.empty(q.shape[:3] + (n_keys,), dtype=q.dtype)                   # (B, H, T, S)
    mask, p_dropped = None, p                                              # P' = P ...
    if dropout_p > 0.0:                                                    # ... or P * M
        mask = dropout_mask(p.shape, dropout_p, p.dtype,
                            rng if rng is not None else default_rng())
        p_dropped = np.empty_like(p)                                       # (B, H, T, S)
    out = np.empty(q.shape[:3] + (v.shape[3],), dtype=q.dtype)             # (B, H, T, D)
    q_scaled = q * scale               # (Q / sqrt(D)) K^T: D numbers a row to scale, not S
    for start, stop, keys in blocks:
        p_block = p[:, :, start:stop, :keys]                               # holds S, then P
        np.matmul(q_scaled[:, :, start:stop], k[:, :, :keys].swapaxes(-1, -2), out=p_block)
        if bias is not None:
            # Every row of the block sees the keys before its first row's position; only
            # the last (stop - start) columns hold -inf anywhere.
            first = keys - (stop - start)
            p_block[..., first:] += bias[start:stop, first:keys]
        p_block -= p_block.max(axis=-1, keepdims=True)
        np.exp(p_block, out=p_block)
        p_block /= row_sums(p_block)[..., None]                            # P
        p_dropped_block = p_block
        if mask is not None:
            p_dropped_block = np.multiply(p_block, mask[:, :, start:stop, :keys],
                                          out=p_dropped[:, :, start:stop, :keys])
        np.matmul(p_dropped_block, v[:, :, :keys], out=out[:, :, start:stop])   # O = P' V
    return out, AttentionSaved(q, k, v, p, p_dropped, mask, out, scale, blocks)


def attention_backward(d_out: np.ndarray, saved: AttentionSaved, need_dq: bool, need_dk: bool,
                       need_dv: bool, into: tuple[np.ndarray, ...] | None = None
                       ) -> tuple[np.ndarray | None, ...]:
    """dL/dQ, dL/dK, dL/dV from dO = dL/dO (B, H, T, D); None for each one not needed.
    `into`: three arrays (views are fine) to write them to instead of fresh ones.

    Backward through each step of the forward, last step first:
        O = P' V            =>  dV  = P'^T dO                 (B, H, S, D)
                                dP' = dO V^T                  (B, H, T, S)
        P' = P * M          =>  dP  = dP' * M
        P = softmax(S)      =>  dS  = P * (dP - rowsum(dP * P))       (softmax_backward, row by row)
        S = Q K^T / sqrt(D) =>  dQ  = dS K / sqrt(D),   dK = dS^T Q / sqrt(D)
    The row sums need no (T, S) product: rowsum(dP * P) = rowsum(dO * O), a (T, D) one, because
        sum_j dP_j P_j = sum_j (dO . V_j) M_j P_j = dO . sum_j P'_j V_j = dO . O
    (the identity FlashAttention uses).

    Blocks: query block i computed the columns 0:keys_i of P. So dS has the same block shape,
    and the key columns keys_(i-1):keys_i were seen by the rows of blocks i, i+1, ... (rows
    start_i on): dK and dV of those keys are one product each over those rows.
    """
    q, k, v, p, p_dropped, mask, out, scale, blocks = saved
    d_q, d_k, d_v = into if into is not None else (
        np.empty(q.shape, q.dtype) if need_dq else None,
        np.empty(k.shape, k.dtype) if need_dk else None,
        np.empty(v.shape, v.dtype) if need_dv else None)
    d_s_scaled = None
    if need_dq or need_dk:
        d_s_scaled = np.empty_like(p)                      # dS / sqrt(D), by blocks (B, H, T, S)
        # rowsum(dP * P), computed as rowsum(dO * O)                     (B, H, T, 1)
        rowsum_dp_p = np.sum(d_out * out, axis=-1, keepdims=True)
        for start, stop, keys in blocks:
            block = d_s_scaled[:, :, start:stop, :keys]   # holds, step by step:
            np.matmul(d_out[:, :, start:stop], v[:, :, :keys].swapaxes(-1, -2), out=block)  # dP'
            if mask is not None:
                block *= mask[:, :, start:stop, :keys]                           # dP
            block -= rowsum_dp_p[:, :, start:stop]
            block *= p[:, :, start:stop, :keys]                                  # dS
            block *= scale                                                       # dS / sqrt(D)
            if need_dq:
                np.matmul(block, k[:, :, :keys], out=d_q[:, :, start:stop])
    first_key = 0
    for start, _, keys in blocks:
        columns = slice(first_key, keys)
        if need_dk:
            np.matmul(d_s_scaled[:, :, start:, columns].swapaxes(-1, -2), q[:, :, start:],
                      out=d_k[:, :, columns])
        if need_dv:
            np.matmul(p_dropped[:, :, start:, columns].swapaxes(-1, -2), d_out[:, :, start:],
                      out=d_v[:, :, columns])
        first_key = keys
    return d_q, d_k, d_v


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 dropout_p: float = 0.0,
                                 rng: np.random.Generator | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(D) + mask) V for q (B, H, T, D), k and v (B, H, S, D).

    With `is_causal`, query i is the (S - T + i)-th position and sees keys up to it (see
    `causal_bias`). `dropout_p` drops attention weights (with `rng`, or the library's).
    Only P (and the dropout mask) is saved between forward and backward.
    The math: `attention_forward`, `attention_backward`.
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
    out, saved = attention_forward(q.data, k.data, v.data, is_causal, dropout_p, rng)
    need_dq, need_dk, need_dv = q.requires_grad, k.requires_grad, v.requires_grad

    def backward(d_out: np.ndarray) -> tuple:
        return attention_backward(d_out, saved, need_dq, need_dk, need_dv)
    return record(out, (q, k, v), backward, "attention")


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
    out, saved = attention_forward(heads[0], heads[1], heads[2], True, dropout_p, rng)
    out = out.transpose(0, 2, 1, 3).reshape(B, T, C)                  # heads side by side

    def backward(d_out: np.ndarray) -> tuple:
        d_out_heads = d_out.reshape(B, T, n_head, D).transpose(0, 2, 1, 3)   # (B, H, T, D) view
        d_qkv = np.empty((B, T, 3, n_head, D), dtype=qkv.dtype)
        d_heads = d_qkv.transpose(2, 0, 3, 1, 4)                      # like `heads`: views
        attention_backward(d_out_heads, saved, True, True, True, into=tuple(d_heads))
        return (d_qkv.reshape(B, T, three_c),)
    return record(out, (qkv,), backward, "attention")
