"""Where does the time go? A profiler that charges time to ops, forward and backward.

    with profile() as prof:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    print(prof.table())

The profiler plugs into the engine through `autograd.tensor.op_hook`: each op made inside the
block reports its output, and the profiler wraps the op's backward function in a timer. So
backward time is exact, for the ops recorded inside the block (a graph built before the block
goes untimed). Forward time is charged by a cheap rule: the time between one op's output and
the next op's output goes to the next op. Ops run one after another, so that is the op's own
work plus the Python glue around it (a model's forward code between two ops), which is what you
would want to optimise anyway.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

from .tensor import op_hook


class OpProfile:
    def __init__(self) -> None:
        self.forward: dict[str, float] = defaultdict(float)
        self.backward: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.other: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def op_made(self, op: str, backward: Callable) -> Callable:
        """The op hook: charge the forward time since the last op to `op`, and return its
        backward function wrapped in a timer."""
        now = time.perf_counter()
        self.forward[op] += now - self._last
        self.calls[op] += 1
        self._last = now

        def timed_backward(g):
            start = time.perf_counter()
            grads = backward(g)
            self._last = time.perf_counter()
            self.backward[op] += self._last - start
            return grads
        return timed_backward

    def mark(self) -> None:
        """Start charging forward time from now (call after work that is not an op)."""
        self._last = time.perf_counter()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time a block that is not made of ops (an optimizer step, say) under `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.other[name] += time.perf_counter() - start
            self.mark()

    def totals(self) -> dict[str, float]:
        """Seconds per op (forward + backward) and per section."""
        out: dict[str, float] = defaultdict(float)
        for table in (self.forward, self.backward, self.other):
            for name, seconds in table.items():
                out[name] += seconds
        return dict(out)

    def table(self, steps: int = 1) -> str:
        totals = self.totals()
        grand = sum(totals.values()) or 1.0
        lines = [f"{'op':<16} {'forward ms':>10} {'backward ms':>11} {'total ms':>9} {'share':>6}"]
        for name in sorted(totals, key=totals.get, reverse=True):
            f = self.forward.get(name, 0.0) * 1e3 / steps
            b = self.backward.get(name, 0.0) * 1e3 / steps
            o = self.other.get(name, 0.0) * 1e3 / steps
            lines.append(f"{name:<16} {f + o:10.2f} {b:11.2f} {totals[name] * 1e3 / steps:9.2f} "
                         f"{100 * totals[name] / grand:5.1f}%")
        return "\n".join(lines)


@contextmanager
def profile() -> Iterator[OpProfile]:
    """Collect an OpProfile of everything run inside the block."""
    prof = OpProfile()
    with op_hook(prof.op_made):
        yield prof
