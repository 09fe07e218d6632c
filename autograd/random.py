"""One random generator for the whole library, so that a single seed makes a run repeatable.

Layers that need randomness (weight initialisation, dropout) draw from `default_rng()` unless
they are given a generator of their own. The training loops reseed it for every step from
(seed, step), so a resumed run draws the same numbers as an uninterrupted one without saving
any generator state; `using_rng` gives one thread a generator of its own.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

_rng = np.random.default_rng(0)
_local = threading.local()


def manual_seed(seed: int | Sequence[int]) -> np.random.Generator:
    """Reset the library's generator to a seed (an int, or a sequence such as (seed, step))
    and return it."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def default_rng() -> np.random.Generator:
    """The generator in use: this thread's own inside `using_rng`, else the library's."""
    return getattr(_local, "rng", None) or _rng


@contextmanager
def using_rng(rng: np.random.Generator) -> Iterator[np.random.Generator]:
    """Make `default_rng()` return `rng` in this thread for the duration of the block.

    Threads that run parts of one training step each get their own generator, so the dropout
    masks do not depend on which thread happened to draw first.
    """
    previous = getattr(_local, "rng", None)
    _local.rng = rng
    try:
        yield rng
    finally:
        _local.rng = previous
