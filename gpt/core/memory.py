"""Memory estimates: refuse a run, a load or a cache that cannot fit, before allocating it.

A training step that needs 75 GiB does not fail politely: NumPy asks the kernel for the
memory, the kernel says yes (it overcommits), and the process is killed part-way through,
or dies with a MemoryError traceback. So before building anything big we add up what it will
hold at its peak and compare that with what the machine has free:

    training   parameters + gradients + the optimizer's state (4 + 4 + 8 bytes per parameter
               for AdamW's two moments) + the activations one step keeps for its backward pass
    loading    the parameters (float32) once
    KV cache   2 (keys, values) x layers x batch x kv-heads x length x head size x 4 bytes

The activations of one step were measured (tracemalloc's peak over forward + backward of
`GPT.loss` for a range of shapes) and fitted, in bytes, as

    128 * n_layer * N * n_embd  +  6 * n_layer * N * n_head * T  +  8 * N * vocab

with N = batch x T tokens: per layer about 30 floats per token and channel (the saved inputs
of every linear, norm and activation), the attention probabilities (one float per score,
plus the block being worked on), and the logits of the output head. The coefficients are
rounded up from the fit, so the estimate errs on the side of refusing a little early.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt.errors import GPTError

GiB = 1 << 30
BYTES_PER_FLOAT = 4


class MemoryEstimateError(GPTError):
    """What was asked for needs more memory than the machine has free."""


@dataclass
class MemoryEstimate:
    """The bytes something will hold at its peak, part by part."""
    what: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {_gib(size)}" for name, size in self.parts.items())
        return f"{self.what} needs about {_gib(self.total)} ({parts})"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GiB:.1f} GiB" if n_bytes >= GiB / 10 else f"{n_bytes / (1 << 20):.0f} MiB"


def available_bytes() -> int | None:
    """Memory this process can still take: the kernel's MemAvailable, or less where a cgroup
    (a container's limit) allows less. None where neither can be read (not Linux)."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            limits.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not limits and hasattr(os, "sysconf"):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(limits) if limits else None


def training_estimate(n_params: int, n_layer: int, n_embd: int, n_head: int, vocab_size: int,
                      batch_size: int, block_size: int, optimizer_floats: int = 2) -> MemoryEstimate:
    """Peak memory of one training step (float32). `optimizer_floats`: state per parameter
    (2 for AdamW's moments, 1 for momentum)."""
    tokens = batch_size * block_size
    activations = (128 * n_layer * tokens * n_embd + 6 * n_layer * tokens * n_head * block_size
                   + 8 * tokens * vocab_size)
    return MemoryEstimate("training", {
        "parameters": n_params * BYTES_PER_FLOAT,
        "gradients": n_params * BYTES_PER_FLOAT,
        "optimizer state": optimizer_floats * n_params * BYTES_PER_FLOAT,
        "activations of one step": activations,
    })


def weights_estimate(n_params: int) -> MemoryEstimate:
    """Memory of a model's parameters in float32."""
    return MemoryEstimate("the model", {"parameters": n_params * BYTES_PER_FLOAT})


def kv_cache_estimate(n_layer: int, batch_size: int, n_kv_heads: int, length: int,
                      head_dim: int) -> MemoryEstimate:
    """Memory of a KV cache: keys and values of every layer for `length` positions."""
    size = 2 * n_layer * batch_size * n_kv_heads * length * head_dim * BYTES_PER_FLOAT
    return MemoryEstimate("the KV cache", {"keys and values": size})


def check_fits(estimate: MemoryEstimate, advice: str, available: int | None = None) -> None:
    """Raise MemoryEstimateError (one line: the estimate, what is free, what to lower) when
    `estimate` exceeds the memory available; do nothing when it fits or cannot be told."""
    available = available_bytes() if available is None else available
    if available is not None and estimate.total > available:
        raise MemoryEstimateError(f"{estimate.describe()}, but only {_gib(available)} is "
                                  f"available: {advice}")
