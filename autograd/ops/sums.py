"""Row and column sums as matrix-vector products with a cached vector of ones.

Why not `a.sum(axis=...)`: BLAS computes `a @ ones` (a gemv) several times faster than NumPy's
reduction loop, which is not vectorised across rows. The result is the same sum, in a
different order of additions.
"""
from __future__ import annotations

import numpy as np

_filled_cache: dict[tuple[int, float, np.dtype], np.ndarray] = {}


def filled(n: int, value: float, dtype) -> np.ndarray:
    """A read-only (n,) vector of `value`, cached: the right-hand side of a reduction gemv."""
    key = (n, float(value), np.dtype(dtype))
    vector = _filled_cache.get(key)
    if vector is None:
        if len(_filled_cache) > 256:          # row counts vary (generation): stay bounded
            _filled_cache.clear()
        vector = np.full(n, value, dtype=dtype)
        vector.setflags(write=False)
        _filled_cache[key] = vector
    return vector


def row_sums(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=-1) for a (..., C) array: shape (...)."""
    return a @ filled(a.shape[-1], 1.0, a.dtype)


def row_means(a: np.ndarray) -> np.ndarray:
    """a.mean(axis=-1) for a (..., C) array: shape (...)."""
    return a @ filled(a.shape[-1], 1.0 / a.shape[-1], a.dtype)


def col_sums(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=0) for an (N, C) array: shape (C,)."""
    return filled(a.shape[0], 1.0, a.dtype) @ a
