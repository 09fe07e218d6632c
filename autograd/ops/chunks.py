"""Long elementwise chains, one cache-sized slice at a time.

A chain of NumPy calls over an array of millions of elements walks main memory once per call.
Done slice by slice, each slice's intermediates stay in the core's cache, and memory is walked
once. It pays only for long chains on big arrays (GELU's forward and backward); on small arrays
it changes nothing.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

ELEMENTWISE_CHUNK = 65536    # elements per slice: 256 KiB of float32, fits in L2


def in_chunks(*arrays: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Matching 1-D slices of ELEMENTWISE_CHUNK elements of same-sized arrays.

    Arrays only read may be non-contiguous (they are then copied whole); arrays written into
    must be contiguous, so that their slices are views."""
    flat = [a.reshape(-1) for a in arrays]
    n = flat[0].size
    for start in range(0, n, ELEMENTWISE_CHUNK):
        yield tuple(f[start:start + ELEMENTWISE_CHUNK] for f in flat)
