"""embedding: rows of a table picked by integer ids; its backward is a scatter-add."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..tensor import Tensor
from .graph import record


class EmbeddingSaved(NamedTuple):
    ids: np.ndarray               # (...) the integer ids
    table_shape: tuple[int, int]  # (V, C)
    dtype: np.dtype


def embedding_forward(ids: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, EmbeddingSaved]:
    """out[p] = W[ids[p]] for every position p: ids (...), W (V, C), out (..., C)."""
    return table[ids], EmbeddingSaved(ids, table.shape, table.dtype)


def embedding_backward(d_out: np.ndarray, saved: EmbeddingSaved) -> np.ndarray:
    """dL/dW (V, C) from G = dL/dout (..., C).

    A lookup is a product with a one-hot matrix: out_p = sum_v onehot(ids_p)_v W_v, so
        dL/dW_v = sum_p onehot(ids_p)_v G_p = the sum of G_p over every position p with ids_p = v
    Rows never looked up get 0. An id that appears twice must get both contributions: the
    scatter *adds*, where a plain `dW[ids] = G` would keep only the last one.

    Computing it: sort the positions by id so that equal ids sit together, sum each run of rows
    with one np.add.reduceat, and write each sum once. The same result as
    np.add.at(dW, ids, G), which handles one row at a time and is much slower.
    """
    ids, (n_rows, n_cols), dtype = saved
    flat_ids = ids.reshape(-1)                                       # (P,)
    order = np.argsort(flat_ids, kind="stable")
    sorted_ids = flat_ids[order]
    run_starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    d_table = np.zeros((n_rows, n_cols), dtype=dtype)
    if flat_ids.size:
        d_table[sorted_ids[run_starts]] = np.add.reduceat(d_out.reshape(-1, n_cols)[order],
                                                          run_starts, axis=0)
    return d_table


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of `weight` (V, C) picked by integer `ids` (...): out (..., C).
    The math: `embedding_forward`, `embedding_backward`."""
    ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    n_rows = weight.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
        bad = ids[(ids < 0) | (ids >= n_rows)]
        raise ValueError(f"embedding: id {int(bad.flat[0])} is out of range for a table of "
                         f"{n_rows} rows (valid: 0..{n_rows - 1})")
    out, saved = embedding_forward(ids, weight.data)
    return record(out, (weight,), lambda d_out: (embedding_backward(d_out, saved),), "embedding")
