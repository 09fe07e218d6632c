"""The Tensor and the reverse-mode engine, with every elementary op's forward and backward.

A `Tensor` wraps a NumPy array (`.data`) and, when it takes part in a computation that needs
gradients, remembers the tensors it was computed from (`_parents`) and a closure (`_backward`)
that turns the gradient of the loss with respect to this tensor into gradients with respect to
each parent: the chain rule, one op at a time.

`loss.backward()` walks the recorded graph in reverse topological order, so every tensor's
gradient is complete (summed over all its uses) before it is passed on to its parents.

Notation in the docstrings: `g` is dL/d(out), the gradient arriving from above; each op returns
dL/d(input) for each input. Shapes are written like `(B, T, C)`.

The rule for inputs that need no gradient: an op's backward returns None for every input whose
`requires_grad` was False when the op ran, and skips computing that gradient (a constant
operand, a frozen weight). An op is recorded only if some input needs a gradient, so for a
one-input op the rule holds by itself; ops with several inputs test each one. The engine
skips a None.

Two things that are not the chain rule plug into the engine from outside:
- where leaf gradients go: into `leaf.grad` unless a thread has set its own accumulator with
  `leaf_grads_to(accumulate)` (`autograd.parallel` does: each thread collects its own shard's
  gradients);
- `op_hook(hook)`: every op output made inside the block calls `hook(op, backward)` and records
  the backward function it returns (`autograd.profiler` wraps each one in a timer).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# Per-thread engine state: whether ops record a graph, and where leaf gradients go.
# Thread-local so that a server thread generating text under `no_grad()` cannot switch recording
# off for another thread, and so that each data-parallel thread can collect its own gradients.

LeafGradAccumulator = Callable[["Tensor", np.ndarray], None]


def add_into_grad(leaf: "Tensor", g: np.ndarray) -> None:
    """The default home of a leaf's gradient: added into `leaf.grad`."""
    if leaf.grad is None:
        # A copy: the same array may also have been handed to another tensor.
        leaf.grad = np.array(g, dtype=leaf.dtype, copy=True)
    else:
        leaf.grad += g


class _ThreadState(threading.local):
    def __init__(self) -> None:       # runs once in each thread that uses the engine
        self.grad_enabled = True
        self.accumulate_leaf_grad: LeafGradAccumulator = add_into_grad


_state = _ThreadState()


def is_grad_enabled() -> bool:
    return _state.grad_enabled


@contextmanager
def no_grad() -> Iterator[None]:
    """Context manager (and decorator) under which no graph is recorded."""
    previous = _state.grad_enabled
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextmanager
def enable_grad() -> Iterator[None]:
    """Record a graph again, e.g. inside a `no_grad()` block."""
    previous = _state.grad_enabled
    _state.grad_enabled = True
    try:
        yield
    finally:
        _state.grad_enabled = previous


@contextmanager
def leaf_grads_to(accumulate: LeafGradAccumulator) -> Iterator[None]:
    """Inside this block, in this thread only, backward() hands each leaf's gradient to
    `accumulate(leaf, g)` instead of adding it into `leaf.grad`.

    This is what lets several threads run backward passes over one model at once
    (`autograd.parallel`): each thread collects its own gradients, and they are summed
    afterwards in a fixed order, with no two threads ever writing the same `.grad`.
    """
    previous = _state.accumulate_leaf_grad
    _state.accumulate_leaf_grad = accumulate
    try:
        yield
    finally:
        _state.accumulate_leaf_grad = previous


# ----------------------------------------------------------------------------------------------
# The op hook: one function (process-wide) that sees every op output as it is made. None unless
# a profiler is running, so an op pays one comparison for it.

OpHook = Callable[[str, Callable], Callable]
_op_hook: OpHook | None = None


@contextmanager
def op_hook(hook: OpHook) -> Iterator[None]:
    """Inside this block (in every thread), each op calls `hook(op_name, backward)` when its
    output is made, and the output records the function the hook returns as its backward."""
    global _op_hook
    previous, _op_hook = _op_hook, hook
    try:
        yield
    finally:
        _op_hook = previous


# ----------------------------------------------------------------------------------------------
# Helpers shared by the ops.

FLOAT_DTYPES = (np.float32, np.float64)


def _as_array(value, dtype) -> np.ndarray:
    """Turn a Python scalar, list or array into an array of `dtype` (no copy if it already is).

    Converting scalars to the tensor's own dtype is what keeps float32 activations float32:
    `x * np.sqrt(2 / np.pi)` would otherwise be promoted to float64 by NumPy's rules.
    """
    return np.asarray(value, dtype=dtype)


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    If an input of shape (C,) was broadcast to (B, T, C), every one of the B*T copies
    contributed to the loss, so its gradient is the sum over those copies.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _normalize_axis(axis, ndim: int):
    if axis is None:
        return None
    if isinstance(axis, int):
        return axis % ndim if ndim else 0
    return tuple(a % ndim for a in axis)


def _expand_reduced(g: np.ndarray, shape: tuple[int, ...], axis, keepdims: bool) -> np.ndarray:
    """Give a reduced gradient back the reduced axes (size 1) so it broadcasts to `shape`."""
    if axis is None:
        return g.reshape((1,) * len(shape))
    if not keepdims:
        axes = (axis,) if isinstance(axis, int) else axis
        g = np.expand_dims(g, axes)
    return g


def _freed_backward(g):
    raise RuntimeError(
        "backward() through a graph that was already used: the saved values were freed "
        "after the first backward(); call backward(retain_graph=True) the first time "
        "if you need to go through it twice")


# ----------------------------------------------------------------------------------------------


class Tensor:
    """A NumPy array that can remember how it was computed, for reverse-mode differentiation.

    `Tensor(data, requires_grad=False)`: the dtype follows the data when it is a float32 or
    float64 array (float64 is for gradient checks); anything else becomes float32.
    After `loss.backward()`, each leaf tensor that requires grad has `.grad` (an array of its
    shape), accumulated across backward calls until it is reset to None.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op", "__weakref__")
    # Make `ndarray + Tensor` call Tensor.__radd__ instead of NumPy broadcasting over the object.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if dtype is None:
            dtype = data.dtype if isinstance(data, np.ndarray) and data.dtype in FLOAT_DTYPES \
                else np.float32
        self.data: np.ndarray = np.asarray(data, dtype=dtype)
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._parents: tuple[Tensor, ...] = ()
        self._backward: Callable | None = None
        self._op = ""

    # -- construction of op outputs --------------------------------------------------------

    @staticmethod
    def _make(data: np.ndarray, parents: tuple["Tensor", ...], backward: Callable,
              op: str) -> "Tensor":
        """Wrap an op's output; record the graph only if some parent needs a gradient.

        `backward(g)` must return one gradient per parent, of that parent's shape, or None for
        a parent that needs no gradient (the rule in the module docstring).
        """
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._op = op
        if _op_hook is not None:
            backward = _op_hook(op, backward)
        out.requires_grad = False
        out._parents = ()
        out._backward = None
        if _state.grad_enabled:
            # A plain loop, not any(<generator>): this runs for every op of every token
            # generated, where building a generator costs about as much as the check.
            for parent in parents:
                if parent.requires_grad:
                    out.requires_grad = True
                    out._parents = parents
                    out._backward = backward
                    break
        return out

    def _lift(self, other) -> "Tensor":
        """A constant operand becomes a Tensor of this tensor's dtype (never a float64 upcast)."""
        if isinstance(other, Tensor):
            return other
        return Tensor(_as_array(other, self.data.dtype))

    # -- plain properties ------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> "Tensor":
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> "Tensor":
        """A copy in another float dtype; the gradient is cast back.  d out/d x = 1."""
        source_dtype = self.data.dtype
        return Tensor._make(self.data.astype(dtype), (self,),
                            lambda g: (g.astype(source_dtype),), "astype")

    # -- the engine -------------------------------------------------------------------------

    def _topological_order(self) -> list["Tensor"]:
        """Tensors of the graph ending here, each after all the tensors it was computed from.

        Iterative depth-first search, so a deep graph cannot hit Python's recursion limit.
        """
        order: list[Tensor] = []
        visited: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
        return order

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Compute d(self)/d(leaf) for every leaf that requires grad, adding it into `leaf.grad`
        (or handing it to this thread's accumulator: `leaf_grads_to`).

        For a scalar, the seed gradient is 1. For a non-scalar, pass `grad` (its shape):
        the result is then the vector-Jacobian product grad^T J. The graph's saved arrays are
        freed as the walk passes them, unless `retain_graph` is True.
        """
        # grads[id(t)]: dL/dt summed over the uses of t walked so far. A tensor comes after all
        # its uses in the reversed order, so its entry is complete when the walk reaches it;
        # it is popped then, so intermediate gradients never pile up in memory.
        grads: dict[int, np.ndarray] = {id(self): self._seed_grad(grad)}
        accumulate_leaf_grad = _state.accumulate_leaf_grad
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:                       # every use of it returned None
                continue
            if node._backward is None:          # a leaf: its gradient leaves the engine
                accumulate_leaf_grad(node, g)
                continue
            for parent, parent_grad in zip(node._parents, node._backward(g)):
                if parent_grad is not None:
                    so_far = grads.get(id(parent))
                    # Not `+=`: `so_far` may be an array that some op also holds.
                    grads[id(parent)] = parent_grad if so_far is None else so_far + parent_grad
            if not retain_graph:    # drop the closure and the arrays it saved, as we go
                node._parents, node._backward = (), _freed_backward

    def _seed_grad(self, grad) -> np.ndarray:
        """dself/dself: ones for a scalar, else the `grad` given, checked and cast."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input "
                               "of the computation had requires_grad=True (or it ran under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() without a gradient needs a scalar, but this tensor has shape "
                    f"{self.shape}; pass grad= of that shape or reduce it (e.g. .sum()) first")
            return np.ones_like(self.data)
        grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): grad has shape {grad.shape}, but the tensor has "
                             f"shape {self.shape}")
        return grad

    # -- arithmetic -------------------------------------------------------------------------

    def __add__(self, other) -> "Tensor":
        """out = a + b (broadcasting).  dL/da = g, dL/db = g, each summed back to its shape."""
        other = self._lift(other)
        a_shape, b_shape = self.shape, other.shape
        need_a, need_b = self.requires_grad, other.requires_grad

        def add_backward(g):
            return (unbroadcast(g, a_shape) if need_a else None,
                    unbroadcast(g, b_shape) if need_b else None)
        return Tensor._make(self.data + other.data, (self, other), add_backward, "add")

    __radd__ = __add__

    def __sub__(self, other) -> "Tensor":
        """out = a - b.  dL/da = g, dL/db = -g."""
        other = self._lift(other)
        a_shape, b_shape = self.shape, other.shape
        need_a, need_b = self.requires_grad, other.requires_grad

        def sub_backward(g):
            return (unbroadcast(g, a_shape) if need_a else None,
                    unbroadcast(-g, b_shape) if need_b else None)
        return Tensor._make(self.data - other.data, (self, other), sub_backward, "sub")

    def __rsub__(self, other) -> "Tensor":
        return self._lift(other) - self

    def __mul__(self, other) -> "Tensor":
        """out = a * b.  dL/da = g * b, dL/db = g * a."""
        other = self._lift(other)
        a, b = self.data, other.data
        need_a, need_b = self.requires_grad, other.requires_grad

        def mul_backward(g):
            return (unbroadcast(g * b, a.shape) if need_a else None,
                    unbroadcast(g * a, b.shape) if need_b else None)
        return Tensor._make(a * b, (self, other), mul_backward, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other) -> "Tensor":
        """out = a / b.  dL/da = g / b, dL/db = -g * a / b^2 = -g * out / b."""
        other = self._lift(other)
        a, b = self.data, other.data
        out = a / b
        need_a, need_b = self.requires_grad, other.requires_grad

        def div_backward(g):
            return (unbroadcast(g / b, a.shape) if need_a else None,
                    unbroadcast(-g * out / b, b.shape) if need_b else None)
        return Tensor._make(out, (self, other), div_backward, "div")

    def __rtruediv__(self, other) -> "Tensor":
        return self._lift(other) / self

    def __neg__(self) -> "Tensor":
        """out = -a.  dL/da = -g."""
        return Tensor._make(-self.data, (self,), lambda g: (-g,), "neg")

    def __pow__(self, exponent: float) -> "Tensor":
        """out = a^p for a constant p.  dL/da = g * p * a^(p-1)."""
        if isinstance(exponent, Tensor):
            raise TypeError("Tensor ** Tensor is not supported; use exp(b * log(a))")
        a = self.data
        p = float(exponent)
        return Tensor._make(a ** p, (self,), lambda g: (g * p * a ** (p - 1),), "pow")

    def __matmul__(self, other) -> "Tensor":
        """out = a @ b, with NumPy's rules (batched over leading axes, 1-D promoted).

        For matrices: dL/da = g @ b^T and dL/db = a^T @ g, each summed over any batch axes
        that were broadcast.
        """
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs arrays of at least 1 dimension, got shapes "
                             f"{a.shape} and {b.shape}")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape} (the inner "
                             f"dimensions {a.shape[-1]} and {b.shape[-2 if b.ndim > 1 else 0]} "
                             f"differ)")
        try:
            out = a @ b
        except ValueError as error:     # batch axes that do not broadcast
            raise ValueError(f"matmul shapes {a.shape} @ {b.shape} do not broadcast: "
                             f"{error}") from None
        need_a, need_b = self.requires_grad, other.requires_grad

        def matmul_backward(g):
            # Promote 1-D operands to matrices so one formula covers every case.
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = g
            if a.ndim == 1:
                g2 = np.expand_dims(g2, -2)
            if b.ndim == 1:
                g2 = np.expand_dims(g2, -1)
            ga = gb = None
            if need_a:
                ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
            if need_b:
                gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
            return ga, gb
        return Tensor._make(out, (self, other), matmul_backward, "matmul")

    def __rmatmul__(self, other) -> "Tensor":
        return self._lift(other) @ self

    # -- reductions -------------------------------------------------------------------------

    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        """out = sum of a over `axis`.  Every summed element gets the same gradient g."""
        shape = self.shape
        axis = _normalize_axis(axis, self.ndim)
        return Tensor._make(
            self.data.sum(axis=axis, keepdims=keepdims), (self,),
            lambda g: (np.broadcast_to(_expand_reduced(g, shape, axis, keepdims), shape),),
            "sum")

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        """out = sum / n.  dL/da = g / n for each of the n averaged elements."""
        shape = self.shape
        axis = _normalize_axis(axis, self.ndim)
        out = self.data.mean(axis=axis, keepdims=keepdims)
        n = self.data.size // max(np.size(out), 1)      # how many elements each output averages
        return Tensor._make(
            out, (self,),
            lambda g: (np.broadcast_to(_expand_reduced(g, shape, axis, keepdims) / n, shape),),
            "mean")

    def max(self, axis=None, keepdims: bool = False) -> "Tensor":
        """out = max over `axis`. The gradient goes to the maximal element(s); ties share it."""
        a = self.data
        axis = _normalize_axis(axis, self.ndim)
        out = a.max(axis=axis, keepdims=keepdims)

        def backward(g):
            full_out = _expand_reduced(out, a.shape, axis, keepdims)
            mask = (a == full_out)
            count = mask.sum(axis=axis, keepdims=True)
            return (mask * (_expand_reduced(g, a.shape, axis, keepdims) / count),)
        return Tensor._make(out, (self,), backward, "max")

    # -- shape ------------------------------------------------------------------------------

    def reshape(self, *shape) -> "Tensor":
        """Same elements, new shape.  The gradient is reshaped back."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        source = self.shape
        try:
            out = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {source} ({self.size} elements) "
                             f"into {shape}") from None
        return Tensor._make(out, (self,), lambda g: (g.reshape(source),), "reshape")

    view = reshape

    def permute(self, *axes) -> "Tensor":
        """Reorder the axes.  The gradient is permuted by the inverse permutation."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        n_axes = self.data.ndim
        axes = tuple(a % n_axes for a in axes)
        if sorted(axes) != list(range(n_axes)):
            raise ValueError(f"permute{axes} is not a permutation of the {n_axes} axes "
                             f"of shape {self.shape}")
        # The inverse permutation: output axis i is input axis axes[i], so the gradient's
        # axis i goes back to position axes[i].
        inverse = [0] * n_axes
        for output_axis, input_axis in enumerate(axes):
            inverse[input_axis] = output_axis
        return Tensor._make(self.data.transpose(axes), (self,),
                            lambda g: (g.transpose(inverse),), "permute")

    def transpose(self, dim0: int = -2, dim1: int = -1) -> "Tensor":
        """Swap two axes (PyTorch's meaning).  The gradient swaps them back."""
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

    @property
    def T(self) -> "Tensor":
        return self.permute(tuple(reversed(range(self.ndim))))

    def __getitem__(self, index) -> "Tensor":
        """Indexing and slicing.  The gradient is scattered back into zeros of the input's shape;
        with integer-array indices a position may be picked twice, so it is added, not assigned.
        """
        if isinstance(index, Tensor):
            index = index.data.astype(np.int64)
        shape, dtype = self.shape, self.dtype
        basic = _is_basic_index(index)

        def backward(g):
            full = np.zeros(shape, dtype=dtype)
            if basic:
                full[index] = g
            else:
                np.add.at(full, index, g)
            return (full,)
        return Tensor._make(self.data[index], (self,), backward, "getitem")

    def split(self, split_size_or_sections, axis: int = -1) -> tuple["Tensor", ...]:
        """Split along `axis` into pieces of one size (int) or of the listed sizes (PyTorch's
        meaning). Each piece is a slice, so its gradient lands in its own part of the input."""
        n = self.shape[axis]
        if isinstance(split_size_or_sections, int):
            sizes = [split_size_or_sections] * (n // split_size_or_sections)
            if n % split_size_or_sections:
                sizes.append(n % split_size_or_sections)
        else:
            sizes = list(split_size_or_sections)
            if sum(sizes) != n:
                raise ValueError(f"split sizes {sizes} add up to {sum(sizes)}, but axis {axis} "
                                 f"has size {n}")
        pieces, start = [], 0
        prefix = (slice(None),) * (axis % self.ndim)
        for size in sizes:
            pieces.append(self[prefix + (slice(start, start + size),)])
            start += size
        return tuple(pieces)

    # -- elementwise functions --------------------------------------------------------------

    def exp(self) -> "Tensor":
        """out = e^a.  dL/da = g * out."""
        out = np.exp(self.data)
        return Tensor._make(out, (self,), lambda g: (g * out,), "exp")

    def log(self) -> "Tensor":
        """out = ln a.  dL/da = g / a."""
        a = self.data
        return Tensor._make(np.log(a), (self,), lambda g: (g / a,), "log")

    def tanh(self) -> "Tensor":
        """out = tanh a.  dL/da = g * (1 - out^2)."""
        out = np.tanh(self.data)
        return Tensor._make(out, (self,), lambda g: (g * (1 - out * out),), "tanh")

    def relu(self) -> "Tensor":
        """out = max(a, 0).  dL/da = g where a > 0, else 0."""
        a = self.data
        return Tensor._make(np.maximum(a, 0), (self,), lambda g: (g * (a > 0),), "relu")

    def sqrt(self) -> "Tensor":
        """out = sqrt(a).  dL/da = g / (2 out)."""
        out = np.sqrt(self.data)
        return Tensor._make(out, (self,), lambda g: (g / (2 * out),), "sqrt")

    def sigmoid(self) -> "Tensor":
        """out = 1 / (1 + e^-a).  dL/da = g * out * (1 - out)."""
        out = _sigmoid(self.data)
        return Tensor._make(out, (self,), lambda g: (g * out * (1 - out),), "sigmoid")


def _sigmoid(a: np.ndarray) -> np.ndarray:
    # exp(-|a|) never overflows; the two branches give the same function.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


def _is_basic_index(index) -> bool:
    """True for ints, slices, None and Ellipsis only: each output element comes from a different
    input element, so the gradient can be assigned instead of accumulated."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis
               for p in parts)


# ----------------------------------------------------------------------------------------------
# Ops over several tensors.


def concatenate(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis.  Each input's gradient is its slice of g."""
    tensors = tuple(tensors)
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    sizes = [t.shape[axis] for t in tensors]
    try:
        out = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"concatenate along axis {axis}: shapes "
                         f"{[t.shape for t in tensors]} differ off that axis") from None
    bounds = np.cumsum([0] + sizes)
    needs = [t.requires_grad for t in tensors]

    def concatenate_backward(g):
        return tuple(np.take(g, np.arange(bounds[i], bounds[i + 1]), axis=axis) if need else None
                     for i, need in enumerate(needs))
    return Tensor._make(out, tensors, concatenate_backward, "concatenate")


cat = concatenate


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors of one shape along a new axis.  Each input's gradient is its index of g."""
    tensors = tuple(tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    if len({t.shape for t in tensors}) != 1:
        raise ValueError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    out = np.stack([t.data for t in tensors], axis=axis)
    needs = [t.requires_grad for t in tensors]

    def stack_backward(g):
        return tuple(piece if need else None for piece, need in zip(np.moveaxis(g, axis, 0), needs))
    return Tensor._make(out, tensors, stack_backward, "stack")


def split(x: Tensor, split_size_or_sections, axis: int = -1) -> tuple[Tensor, ...]:
    return x.split(split_size_or_sections, axis)
