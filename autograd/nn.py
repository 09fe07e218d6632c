"""Layers: the `Module` container, `Parameter`, and the building blocks of a GPT.

A `Module` is a bag of named `Parameter`s and sub-modules with a `forward` method. Assigning one
as an attribute (`self.fc = Linear(4, 8)`) is all it takes to register it: `__setattr__` notices
the type and files it away, in the order of assignment, so that `named_parameters()` can later
walk the whole tree and produce dotted names like `h.0.attn.c_attn.weight`. Those names are the
keys of `state_dict()`, which is how weights are saved, loaded and matched against GPT-2
checkpoints.

The layers hold parameters and call the fused ops of `autograd.functional`, where the forward
and backward passes live. They contain no math of their own.

    model = Sequential(Linear(2, 16), Tanh(), Linear(16, 2))
    logits = model(Tensor(x))                 # __call__ -> forward
    for name, p in model.named_parameters():  # "0.weight", "0.bias", "2.weight", "2.bias"
        ...
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import functional as F
from .random import default_rng
from .tensor import Tensor

__all__ = ["Parameter", "Module", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU",
           "ReLU", "Tanh", "Sequential", "ModuleList", "StateDictError", "skip_init", "init_skipped"]


# ----------------------------------------------------------------------------------------------
# Building without initialising

_SKIP_INIT: ContextVar[bool] = ContextVar("skip_init", default=False)


@contextmanager
def skip_init() -> Iterator[None]:
    """Build layers whose parameters are left uninitialised, for weights that are loaded next.

        with skip_init():
            model = GPT(config)          # shapes only: every parameter is np.empty
        # ... now give every parameter its real array

    Drawing random weights for a 1.5B-parameter model takes seconds and, with the float64
    temporaries NumPy's generators make, several times the model's memory, all to be thrown
    away by the load that follows. `np.empty` costs nothing: the operating system hands out
    memory pages only when they are first written, and a parameter whose array is replaced
    before then never occupies any. Until then the parameters hold garbage: load or
    initialise every one of them before use. (PyTorch has the same idea as
    `torch.nn.utils.skip_init` and the "meta" device.)
    """
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def init_skipped() -> bool:
    """True inside `skip_init()`: constructors should allocate, not initialise."""
    return _SKIP_INIT.get()


def _initial(shape: int | tuple[int, ...], dtype, draw: Callable[[], np.ndarray]) -> np.ndarray:
    # `draw()` is only called when initialising, so skip_init() also skips the random draws.
    if _SKIP_INIT.get():
        return np.empty(shape, dtype=dtype)
    return np.asarray(draw(), dtype=dtype)


class Parameter(Tensor):
    """A Tensor that is a learnable weight of a Module: requires_grad=True unless told otherwise.

    The subclass exists so that `Module.__setattr__` can tell weights apart from any other Tensor
    a module might keep (a cached mask, say): only Parameters are registered, saved and trained.
    """

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


class StateDictError(KeyError, ValueError):
    """`load_state_dict` found missing, unexpected or mis-shaped keys.

    Both a KeyError (a key problem) and a ValueError (a bad argument), so either `except` works.
    The lists are kept as attributes for programs that want to react to them.
    """

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched

    def __str__(self) -> str:
        # KeyError's own __str__ would print the repr of the message: quotes and literal \n.
        return str(self.args[0])


class Module:
    """Base class of every layer and model.

    Subclasses call `super().__init__()` first, then assign Parameters and Modules as attributes,
    and define `forward`. Registration is by type at assignment time, in assignment order, which
    fixes the order of `parameters()` (and so the positions an optimizer's saved state refers to).
    """

    training: bool

    def __init__(self) -> None:
        # object.__setattr__ bypasses our own __setattr__, which needs these dicts to exist.
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    # -- registration -----------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        registries = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        if registries[0] is None:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(
                    f"cannot assign {type(value).__name__} '{name}' before Module.__init__(): "
                    f"call super().__init__() first in {type(self).__name__}.__init__")
            object.__setattr__(self, name, value)
            return
        params, modules = registries
        # Re-assigning a name drops its old registration, whatever kind it was.
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, (Parameter, Module)):
            self._buffers.pop(name, None)
            (params if isinstance(value, Parameter) else modules)[name] = value
        elif name in self._buffers:
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"buffer '{name}' must be a NumPy array or None, "
                                f"got {type(value).__name__}")
            self._buffers[name] = value
        # The value is also a plain attribute, so reading `self.fc` costs nothing extra.
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        self._non_persistent.discard(name)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: np.ndarray | None,
                        persistent: bool = True) -> None:
        """Keep an array that is part of the module's state but is not trained (no gradient).

        Persistent buffers are saved in `state_dict()`; `to(dtype)` converts float ones.
        """
        if value is not None and not isinstance(value, np.ndarray):
            raise TypeError(f"buffer '{name}' must be a NumPy array or None, "
                            f"got {type(value).__name__}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"'{name}' is already a parameter or sub-module of "
                           f"{type(self).__name__}")
        self._buffers[name] = value
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, value)

    # -- walking the tree -------------------------------------------------------------------

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) for this module ("" for itself) and every descendant, once each."""
        seen: set[int] = set()

        def walk(module: Module, path: str):
            if id(module) in seen:
                return
            seen.add(id(module))
            yield path, module
            for name, child in module._modules.items():
                yield from walk(child, f"{path}.{name}" if path else name)
        yield from walk(self, prefix)

    def modules(self) -> list["Module"]:
        return [m for _, m in self.named_modules()]

    def children(self) -> list["Module"]:
        """The direct sub-modules, in registration order."""
        return list(self._modules.values())

    def _all_named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        # Every name of every parameter, duplicates included: a tied weight appears under each
        # of its names. Modules reached twice are walked twice on purpose, for the same reason.
        def walk(module: Module, path: str):
            for name, p in module._parameters.items():
                yield (f"{path}.{name}" if path else name), p
            for name, child in module._modules.items():
                yield from walk(child, f"{path}.{name}" if path else name)
        yield from walk(self, "")

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs, in registration order.

        A parameter shared by two modules (GPT's output head reuses the token embedding) is
        yielded once, under the first name that reaches it, so it is neither counted nor
        updated twice.
        """
        seen: set[int] = set()
        for name, p in self._all_named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for path, module in self.named_modules():
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{path}.{name}" if path else name), b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """How many numbers the model learns (shared parameters counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        """Call `fn(module)` on every module of the tree (e.g. a custom initialisation)."""
        for module in self.modules():
            fn(module)
        return self

    # -- modes and gradients ----------------------------------------------------------------

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (dropout active) on this module and all below it."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Evaluation mode: dropout becomes the identity."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget all gradients. None rather than zeros: the next backward stores fresh arrays
        instead of adding into zeros, and optimizers can tell "no gradient" from "gradient 0"."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter. A frozen parameter gets no
        gradient in backward, and optimizers skip it."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
            if not requires_grad:
                p.grad = None
        return self

    def to(self, dtype) -> "Module":
        """Convert every parameter and float buffer to `dtype` (float64 for gradient checks).

        This rebinds `p.data` to a new array: build optimizers after calling it.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"Module.to: dtype must be float32 or float64, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype, copy=False)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype, copy=False)
        for module in self.modules():
            for name, b in list(module._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    setattr(module, name, b.astype(dtype, copy=False))
        return self

    # -- saving and loading -----------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> array for every parameter (each once) and persistent buffer.

        The arrays are the live ones, not copies: copy them if the model will keep training
        while you hold the dict.
        """
        state = {name: p.data for name, p in self.named_parameters()}
        for path, module in self.named_modules():
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    state[f"{path}.{name}" if path else name] = b
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True
                        ) -> tuple[list[str], list[str]]:
        """Copy the arrays of `state` into this model's parameters, in place.

        In place (`p.data[...] = value`, cast to the parameter's dtype) means every reference to
        the parameter arrays, an optimizer's for instance, stays valid. Nothing is copied unless
        every key checks out.

        A tied parameter may be given under any of its names. With strict=True, a parameter
        given under none of them (missing) or a key naming nothing here (unexpected) is an error;
        with strict=False they are returned as `(missing, unexpected)`. A shape mismatch is an
        error either way: there is no sensible way to load it.
        """
        targets: dict[str, np.ndarray] = {}          # every accepted name -> array to fill
        owners: dict[str, int] = {}                  # name -> id of the parameter behind it
        for name, p in self._all_named_parameters():
            targets[name] = p.data
            owners[name] = id(p)
        buffer_names = set()
        for path, module in self.named_modules():
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    full = f"{path}.{name}" if path else name
                    targets[full] = b
                    buffer_names.add(full)

        unexpected = [k for k in state if k not in targets]
        given = {owners.get(k, k) for k in state if k in targets}
        missing = [name for name, p in self.named_parameters() if id(p) not in given]
        missing += [name for name in buffer_names if name not in given]
        mismatched = []
        for key, value in state.items():
            if key in targets:
                shape = np.shape(value.data if isinstance(value, Tensor) else value)
                if shape != targets[key].shape:
                    mismatched.append((key, targets[key].shape, shape))

        if mismatched or (strict and (missing or unexpected)):
            lines = [f"load_state_dict into {type(self).__name__} failed:"]
            if missing and strict:
                lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
            if unexpected and strict:
                lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
            for key, expected, got in mismatched:
                lines.append(f"  shape mismatch for '{key}': model has {expected}, "
                             f"state dict has {got}")
            raise StateDictError("\n".join(lines), missing, unexpected, mismatched)

        for key, value in state.items():
            if key in targets:
                target = targets[key]
                target[...] = np.asarray(value.data if isinstance(value, Tensor) else value,
                                         dtype=target.dtype)
        return missing, unexpected

    # -- calling ----------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward() method")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        """The part inside the parentheses of this module's repr (its settings)."""
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ")
                 for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


# ----------------------------------------------------------------------------------------------
# Layers


def _check_sizes(layer: str, **sizes: int) -> None:
    bad = {name: n for name, n in sizes.items()
           if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0}
    if bad:
        raise ValueError(f"{layer} needs positive integer sizes, got "
                         + ", ".join(f"{name}={n!r}" for name, n in bad.items()))


class Linear(Module):
    """y = x W + b, with W of shape (in_features, out_features).

    This is the transpose of PyTorch's nn.Linear layout and the layout of GPT-2's checkpoints
    (their Conv1D), so those load without transposing. Initialisation, as PyTorch's: W and b
    uniform in (-1/sqrt(in_features), 1/sqrt(in_features)), which keeps the output's variance
    roughly that of the input's (each output sums in_features terms).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__()
        _check_sizes("Linear", in_features=in_features, out_features=out_features)
        rng = rng if rng is not None else default_rng()
        bound = 1.0 / np.sqrt(in_features)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(_initial((in_features, out_features), dtype,
                                         lambda: rng.uniform(-bound, bound,
                                                             (in_features, out_features))))
        self.bias = Parameter(_initial(out_features, dtype,
                                       lambda: rng.uniform(-bound, bound, out_features))) \
            if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Embedding(Module):
    """A table of `num_embeddings` vectors of size `embedding_dim`; forward(ids) looks rows up.

    ids may be an integer array or Tensor of any shape (...); the output is (..., embedding_dim).
    Initialised normal(0, 1), as PyTorch does.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__()
        _check_sizes("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        rng = rng if rng is not None else default_rng()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(_initial((num_embeddings, embedding_dim), dtype,
                                         lambda: rng.standard_normal((num_embeddings,
                                                                      embedding_dim))))

    def forward(self, ids) -> Tensor:
        return F.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale by `weight` and shift by `bias`.

    weight starts at ones and bias at zeros, so the layer begins as a pure normalisation.
    `bias=False` drops the shift (an option GPT configs expose).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, bias: bool = True,
                 dtype=np.float32):
        super().__init__()
        _check_sizes("LayerNorm", normalized_shape=normalized_shape)
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = Parameter(_initial(normalized_shape, dtype,
                                         lambda: np.ones(normalized_shape)))
        self.bias = Parameter(_initial(normalized_shape, dtype,
                                       lambda: np.zeros(normalized_shape))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(Module):
    """Scale the last axis to unit root-mean-square, then by `weight` (Llama, Qwen3).

    weight starts at ones, so the layer begins as a pure normalisation. `weight=False` drops
    the gain: a parameter-free norm (as nanochat's blocks use it).
    """

    def __init__(self, dim: int, eps: float = 1e-6, weight: bool = True, dtype=np.float32):
        super().__init__()
        _check_sizes("RMSNorm", dim=dim)
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(_initial(dim, dtype, lambda: np.ones(dim))) if weight else None

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, weight={self.weight is not None}"


class Dropout(Module):
    """Zero each element with probability p while training (scaling the rest by 1/(1-p));
    the identity in eval mode. Random numbers come from `rng` or the library generator."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=self.training, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU(Module):
    """GPT-2's GELU (tanh approximation) as a layer, for use in Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


# ----------------------------------------------------------------------------------------------
# Containers


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", ... (so a GPT's blocks are
    `h.0...`, `h.1...`). It has no forward: the owner decides how to call its members."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self.extend(modules)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def __getitem__(self, index: int | slice):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*items[index]) if isinstance(self, Sequential) \
                else ModuleList(items[index])
        return items[index]


class Sequential(ModuleList):
    """Modules applied one after another: Sequential(a, b, c)(x) == c(b(a(x)))."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
