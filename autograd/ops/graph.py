"""How a fused op becomes one node of the graph.

An op's public function computes its output with `<op>_forward`, then calls `record` with the
output, its input tensors and a `backward(d_out)` that calls `<op>_backward`. The engine calls
that `backward` once, during `loss.backward()`, with the gradient arriving at the output.

The engine's rule for inputs that need no gradient (autograd/tensor.py) holds here too: which
inputs need one is read when the op runs (`needs_grad`), and `<op>_backward` returns None for
the others without computing them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..tensor import Tensor


def needs_grad(t: Tensor | None) -> bool:
    """True if `t` is present and requires a gradient: an optional input (None) needs none."""
    return t is not None and t.requires_grad


def record(out: np.ndarray, inputs: tuple[Tensor | None, ...],
           backward: Callable[[np.ndarray], tuple], op: str) -> Tensor:
    """The op's output as a Tensor, with a graph node if some input needs a gradient.

    `inputs` may hold None for an optional input that is absent (a layer without bias):
    `backward` still returns one entry per input, and the entries of absent inputs are dropped
    here, so that the engine sees one gradient per tensor actually present.
    """
    if None not in inputs:              # Tensor has no __eq__: this tests identity
        return Tensor._make(out, inputs, backward, op)
    present = [i for i, t in enumerate(inputs) if t is not None]

    def backward_of_present_inputs(d_out: np.ndarray) -> tuple:
        grads = backward(d_out)
        return tuple(grads[i] for i in present)
    return Tensor._make(out, tuple(inputs[i] for i in present), backward_of_present_inputs, op)
