"""Data parallelism on one machine: the micro-batches of a step run in threads, one per core.

NumPy releases Python's global lock inside its array loops and matrix products, so two threads
can each run a forward and backward pass over half of a batch at the same time. Compared with
letting the BLAS library split each matrix product over the cores, this also runs the
elementwise work (softmax, GELU, layer norm, ...) in parallel, about half of a small model's
step, and it degrades gracefully on a busy machine: a BLAS thread pool spins waiting for a
thread that another program has pushed off its core.

    with DataParallel(threads=2) as parallel:
        losses = parallel.backward(lambda x, y: model.loss(x, y), shards, params, rngs)

Each thread collects its leaf gradients in a `ShardGrads` dict of its own (installed as the
thread's leaf-gradient accumulator with `autograd.tensor.leaf_grads_to`), and they are summed
into `.grad` afterwards in shard order, so the result does not depend on which thread finished
first, and a run is exactly repeatable. Each shard may get its own random generator (dropout).
"""
from __future__ import annotations

import ctypes
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Sequence

import numpy as np

from .random import using_rng
from .tensor import Tensor, leaf_grads_to

# ----------------------------------------------------------------------------------------------
# How many threads the BLAS library may use for one matrix product.

_SETTER_NAMES = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                 "MKL_Set_Num_Threads")
_GETTER_NAMES = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                 "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
                 "MKL_Get_Max_Threads")
_blas_functions: tuple | None = None


def _find_blas() -> tuple:
    """(setter, getter) of the BLAS library NumPy loaded, or (None, None)."""
    global _blas_functions
    if _blas_functions is not None:
        return _blas_functions
    _blas_functions = (None, None)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line and
                     ("blas" in line.lower() or "mkl" in line.lower())}
    except OSError:                        # not Linux
        return _blas_functions
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SETTER_NAMES if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GETTER_NAMES if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, getter.restype = (ctypes.c_int,), ctypes.c_int
            _blas_functions = (setter, getter)
            break
    return _blas_functions


def blas_threads() -> int | None:
    """Threads the BLAS library uses per matrix product (None if it cannot be told)."""
    getter = _find_blas()[1]
    return int(getter()) if getter is not None else None


@contextmanager
def limit_blas_threads(n: int) -> Iterator[bool]:
    """Run the block with the BLAS library limited to `n` threads; yields whether it worked."""
    setter, getter = _find_blas()
    if setter is None:
        yield False
        return
    previous = int(getter())
    setter(n)
    try:
        yield True
    finally:
        setter(previous)


# ----------------------------------------------------------------------------------------------


def default_threads() -> int:
    """One thread per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                 # not Linux
        return max(1, os.cpu_count() or 1)


class DataParallel:
    """Runs the forward and backward passes of several shards of a batch in parallel threads."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()
        if self.threads < 1:
            raise ValueError(f"DataParallel needs at least 1 thread, got {self.threads}")
        self._pool: ThreadPoolExecutor | None = None
        self._blas = nullcontext()

    def __enter__(self) -> "DataParallel":
        if self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="autograd-shard")
        # Each shard's matrix products run on one core, so `threads` is the number of cores
        # used: DataParallel(1) is one core in all (two jobs side by side each take one).
        self._blas = limit_blas_threads(1)
        if not self._blas.__enter__():
            warnings.warn("could not limit the BLAS library to one thread per shard: set "
                          "OPENBLAS_NUM_THREADS=1 (or the equivalent) if training is slow",
                          RuntimeWarning, stacklevel=2)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._blas.__exit__(None, None, None)

    def backward(self, loss_fn: Callable[..., Tensor], shards: Sequence[tuple],
                 params: Sequence[Tensor], weights: Sequence[float],
                 rngs: Sequence[np.random.Generator] | None = None) -> list[float]:
        """For each shard: loss = loss_fn(*shard); backward of weight * loss. Returns the losses.

        The gradients of all shards are added into each parameter's `.grad` (in shard order).
        With weights n_i / n, the result is the gradient of the whole batch's mean loss.
        """
        if len(weights) != len(shards) or (rngs is not None and len(rngs) != len(shards)):
            raise ValueError("DataParallel.backward: one weight (and rng) per shard")

        def run(i: int) -> tuple[float, ShardGrads]:
            shard_grads = ShardGrads()
            rng_context = using_rng(rngs[i]) if rngs is not None else nullcontext()
            with rng_context, leaf_grads_to(shard_grads.add):
                loss = loss_fn(*shards[i])
                (loss * weights[i]).backward()
            return loss.item(), shard_grads

        if self._pool is None or len(shards) == 1:
            results = [run(i) for i in range(len(shards))]
        else:
            results = list(self._pool.map(run, range(len(shards))))
        per_shard = [shard_grads for _, shard_grads in results]

        def add_up(part: list[Tensor]) -> None:
            for p in part:
                _add_shard_grads(p, [grads[id(p)] for grads in per_shard if id(p) in grads])
        self.map_parts(add_up, list(params), [p.size for p in params])
        return [loss for loss, _ in results]

    def map(self, fn: Callable, items: Sequence) -> list:
        """[fn(item) for item in items], run in the threads. `no_grad()` and `using_rng` are
        per thread: enter them inside `fn`."""
        if self._pool is None or len(items) <= 1:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def map_parts(self, fn: Callable[[list], None], items: Sequence, sizes: Sequence[int]) -> None:
        """Split `items` into one part per thread, of about equal total size, and run fn(part)
        in each thread. For work that is independent item by item (adding up or updating
        each parameter), so it does not matter which thread does which item."""
        if self._pool is None or len(items) <= 1:
            fn(list(items))
            return
        parts: list[list] = [[] for _ in range(self.threads)]
        loads = [0] * self.threads
        for i in sorted(range(len(items)), key=lambda i: -sizes[i]):   # largest first
            lightest = loads.index(min(loads))
            parts[lightest].append(items[i])
            loads[lightest] += sizes[i]
        list(self._pool.map(fn, [part for part in parts if part]))


class ShardGrads(dict):
    """One shard's leaf gradients, id(leaf) -> array, collected in that shard's thread."""

    def add(self, leaf: Tensor, g: np.ndarray) -> None:
        """The thread's leaf-gradient accumulator (see `autograd.tensor.leaf_grads_to`)."""
        so_far = self.get(id(leaf))
        # Not `+=`: `so_far` may be an array that some op also holds.
        self[id(leaf)] = g if so_far is None else so_far + g


def _add_shard_grads(p: Tensor, grads: list[np.ndarray]) -> None:
    """Add the shards' gradients of `p` (in shard order) into p.grad."""
    if not grads:
        return
    if p.grad is None:
        # a fresh array: a shard's gradient may be a view of an array that lives on elsewhere
        p.grad = (np.add(grads[0], grads[1], dtype=p.dtype) if len(grads) > 1 else
                  np.array(grads[0], dtype=p.dtype, copy=True))
        grads = grads[2:]
    for g in grads:
        p.grad += g


def split_batch(n: int, parts: int) -> list[slice]:
    """`parts` contiguous slices covering range(n), sizes differing by at most one."""
    parts = max(1, min(parts, n))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
