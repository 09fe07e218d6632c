"""Optimizers, gradient clipping and learning-rate schedules.

After `loss.backward()` every trainable parameter p holds its gradient g = dL/dp in `p.grad`.
An optimizer turns gradients into a change of the weights:

    SGD     p <- p - lr * g                                  (plus momentum, optionally)
    AdamW   p <- p * (1 - lr * wd)                           decoupled weight decay, then
            p <- p - lr * m_hat / (sqrt(v_hat) + eps)        a step scaled per coordinate

Every update happens in place, on the very arrays the model holds (`p.data`), and allocates
nothing per step: the elementwise work is done with NumPy's `out=` arguments into a small
scratch buffer. Large tensors are processed in slices of `CHUNK` elements, so that the dozen
elementwise passes of an Adam update run over data that sits in the CPU cache instead of
streaming the whole tensor from main memory a dozen times (`benchmarks/optim.py` measures it).

State (moments, step counts) is keyed by a parameter's position in the parameter groups, as in
PyTorch, so `state_dict()` saved from one run loads into a freshly built optimizer over a freshly
built model of the same shape.
"""
from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .nn import Embedding, Module
from .tensor import Tensor

if TYPE_CHECKING:
    from .parallel import DataParallel

__all__ = ["Optimizer", "SGD", "AdamW", "clip_grad_norm", "decay_groups", "constant_lr",
           "cosine_with_warmup", "lr_schedule", "split_arrays", "join_arrays"]

# Elements per slice of the in-place update loops. 65536 float32 numbers are 256 KiB: the five
# slices an Adam update juggles (p, g, m, v, scratch) stay in the CPU cache between its dozen
# passes, while each NumPy call still has enough work that Python's ~1 us per call is noise.
# Measured on GPT-2 124M: 16K-element slices lose to call overhead, whole tensors (no slicing)
# are ~1.7x slower because every pass streams the tensor from main memory.
CHUNK = 65536


class Optimizer:
    """Base class: parameter groups, per-parameter state, `step`, `zero_grad`, save and load.

    `params` is either an iterable of Parameters or a list of groups, each a dict
    `{"params": [...], "lr": ..., ...}` whose keys override the optimizer's defaults for that
    group (e.g. `"weight_decay": 0.0` for biases). Parameters that do not require a gradient,
    or have none this step, are skipped by `step()`.
    """

    scratch_rows = 1            # scratch slices a subclass's update needs for intermediates


    def __init__(self, params: Iterable, defaults: dict[str, Any]):
        if isinstance(params, Module):
            raise TypeError("pass model.parameters() (or decay_groups(model, ...)), not the "
                            "model itself")
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Parameters, got a single Tensor; "
                            "wrap it in a list")
        items = list(params)
        if not items:
            raise ValueError("the optimizer got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for number, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"parameter group {number} must be a dict with a 'params' "
                                f"list, got {type(group).__name__}")
            unknown = set(group) - set(defaults) - {"params", "name"}
            if unknown:
                raise ValueError(f"parameter group {number} has unknown settings "
                                 f"{sorted(unknown)}; this optimizer knows {sorted(defaults)}")
            group_params = list(group["params"])
            for p in group_params:
                if not isinstance(p, Tensor):
                    raise TypeError(f"parameter group {number} holds a {type(p).__name__}; "
                                    f"optimizers update Tensors (Parameters)")
                if id(p) in seen:
                    raise ValueError(f"a parameter of shape {p.shape} appears twice in the "
                                     f"parameter groups; each must appear once")
                seen.add(id(p))
            full = {**self.defaults, **group, "params": group_params}
            self._check_hyperparameters(full)
            self.param_groups.append(full)
        # state[i]: the state of the i-th parameter counting through all groups in order.
        self.state: dict[int, dict[str, Any]] = {}
        self._scratch: dict[tuple[int, np.dtype], np.ndarray] = {}

    # -- hyperparameters --------------------------------------------------------------------

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        if not group["lr"] >= 0.0:
            raise ValueError(f"lr must be >= 0, got {group['lr']}")
        if not group.get("weight_decay", 0.0) >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")

    @property
    def lr(self) -> float:
        """The learning rate of the first group."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        """Set the learning rate of every group (what a schedule does before each step)."""
        if not value >= 0.0:
            raise ValueError(f"lr must be >= 0, got {value}")
        for group in self.param_groups:
            group["lr"] = float(value)

    # -- the step ---------------------------------------------------------------------------

    def _indexed_params(self) -> Iterable[tuple[int, dict[str, Any], Tensor]]:
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield index, group, p
                index += 1

    def step(self, parallel: DataParallel | None = None) -> None:
        """Update every parameter that requires a gradient and has one, in place.

        With `parallel` (an autograd.parallel.DataParallel), its threads share the parameters
        out among themselves. Each parameter's update is its own, so the result is the same.
        """
        work = []
        for index, group, p in self._indexed_params():
            if not p.requires_grad or p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(f"parameter {index} has shape {p.data.shape} but its gradient "
                                 f"has shape {p.grad.shape}")
            state = self.state.get(index)
            if state is None:
                state = self.state[index] = self._init_state(p.data, group)
            work.append((p, state, group))

        def update(part: list) -> None:
            for p, state, group in part:
                self._update(p.data, p.grad, state, group)
        if parallel is None:
            update(work)
        else:
            parallel.map_parts(update, work, [p.size for p, _, _ in work])

    def _init_state(self, p: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        """The state of a parameter before its first step: a step count and arrays."""
        raise NotImplementedError

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _scratch_for(self, dtype: np.dtype, rows: int, width: int) -> np.ndarray:
        """A reusable buffer of `dtype`, at least (rows, width), for intermediate results;
        one per thread, as `step(parallel)` updates parameters in several threads at once."""
        key = (threading.get_ident(), np.dtype(dtype))
        buffer = self._scratch.get(key)
        if buffer is None or buffer.shape[0] < rows or buffer.shape[1] < width:
            buffer = self._scratch[key] = np.empty((rows, width), dtype=dtype)
        return buffer

    def _slices(self, p: np.ndarray, g: np.ndarray, *state: np.ndarray):
        """Yield matching slices (views) of p, g, the state arrays, and scratch rows.

        All arrays are flattened to 1-D (a view for C-contiguous arrays, which parameters and
        our state always are; the gradient may be copied if it is not) and cut into CHUNK-sized
        pieces. A parameter that is not C-contiguous is updated whole, with fresh scratch.
        """
        rows = self.scratch_rows
        if not p.flags.c_contiguous:
            yield (p, g, *state, *(np.empty_like(p) for _ in range(rows)))
            return
        flat = [p.reshape(-1), g.reshape(-1), *(s.reshape(-1) for s in state)]
        n = p.size
        scratch = self._scratch_for(p.dtype, rows, min(n, CHUNK))
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            yield (*(a[start:stop] for a in flat), *(s[:stop - start] for s in scratch[:rows]))

    def zero_grad(self) -> None:
        """Set the gradient of every parameter in the groups to None."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    # -- saving and loading -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state: plain numbers, lists, strings and NumPy arrays only.

            {"state": {"0": {"step": 3, "exp_avg": array, ...}, ...},
             "param_groups": [{"lr": 0.001, ..., "params": [0, 1, 2]}, ...]}

        Parameters are named by position (their index counting through the groups), so the
        dict fits any optimizer built the same way over a model of the same shape. The arrays
        are the live ones; `split_arrays` separates them from the rest for np.savez + JSON.
        """
        groups = []
        index = 0
        for group in self.param_groups:
            saved = {key: _plain(value) for key, value in group.items() if key != "params"}
            saved["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(saved)
        state = {str(i): {key: (value if isinstance(value, np.ndarray) else _plain(value))
                          for key, value in s.items()}
                 for i, s in sorted(self.state.items())}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state and the group settings (lr, betas, ...) saved by `state_dict()`.

        The arrays are copied (cast to each parameter's dtype), so the optimizer owns its state.
        Raises ValueError if the groups or shapes do not match this optimizer's parameters.
        """
        saved_groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if saved_groups is None or saved_state is None:
            raise ValueError("an optimizer state dict has the keys 'state' and 'param_groups', "
                             f"got {sorted(state_dict)}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(saved_groups)} parameter groups, this "
                             f"optimizer has {len(self.param_groups)}")
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {number}: the state dict has "
                                 f"{len(saved['params'])} parameters, this optimizer has "
                                 f"{len(group['params'])}")
        params = [p for _, _, p in self._indexed_params()]
        # Group settings are checked against the saved ones: they decide which state exists.
        groups_of = [{**group, **{k: v for k, v in saved.items() if k != "params"}}
                     for saved, group in zip(saved_groups, self.param_groups)
                     for _ in group["params"]]
        new_state: dict[int, dict[str, Any]] = {}
        for key, entry in saved_state.items():
            index = int(key)
            if not 0 <= index < len(params):
                raise ValueError(f"the state dict has state for parameter {index}, but this "
                                 f"optimizer has only {len(params)} parameters")
            p = params[index]
            group = groups_of[index]
            expected = self._init_state(np.empty((0,), dtype=p.dtype), group)
            missing = sorted(set(expected) - set(entry))
            if missing:
                raise ValueError(f"state of parameter {index} lacks {missing}; it has "
                                 f"{sorted(entry)} (saved by a different optimizer?)")
            restored = {}
            for name, value in entry.items():
                if isinstance(value, np.ndarray) or isinstance(expected.get(name), np.ndarray):
                    value = np.asarray(value)
                    if value.shape != p.shape:
                        raise ValueError(f"state '{name}' of parameter {index} has shape "
                                         f"{value.shape}, but the parameter has shape "
                                         f"{p.shape}")
                    restored[name] = np.array(value, dtype=p.dtype, order="C", copy=True)
                else:
                    restored[name] = _plain(value)
            new_state[index] = restored
        for saved, group in zip(saved_groups, self.param_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if key == "betas" else value
        self.state = new_state


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python numbers, tuples -> lists: what JSON can write."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum and L2 weight decay (PyTorch's rules).

        d = g + weight_decay * p                  (the gradient of L + wd/2 |p|^2)
        b = d                     on the first step,
        b = momentum * b + d      after it            (a running sum of past directions)
        d = b    or, with nesterov,   d = d + momentum * b
        p <- p - lr * d
    """

    scratch_rows = 2

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']}")
        if group["nesterov"] and group["momentum"] == 0.0:
            raise ValueError("nesterov momentum needs momentum > 0")

    def _init_state(self, p: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        if group["momentum"]:
            return {"step": 0, "momentum_buffer": np.zeros(p.shape, dtype=p.dtype)}
        return {"step": 0}

    def _update(self, p, g, state, group) -> None:
        lr, momentum = float(group["lr"]), float(group["momentum"])
        wd, nesterov = float(group["weight_decay"]), bool(group["nesterov"])
        state["step"] += 1
        first = False
        if momentum and "momentum_buffer" not in state:   # momentum switched on mid-run
            state["momentum_buffer"] = np.zeros(p.shape, dtype=p.dtype)
            first = True
        first = first or state["step"] == 1
        buffers = (state["momentum_buffer"],) if momentum else ()
        for pc, gc, *rest in self._slices(p, g, *buffers):
            d, tmp = rest[-2], rest[-1]
            if wd:
                np.multiply(pc, wd, out=d)
                d += gc
            else:
                d[...] = gc
            if momentum:
                b = rest[0]
                if first:
                    b[...] = d
                else:
                    b *= momentum
                    b += d
                if nesterov:
                    np.multiply(b, momentum, out=tmp)
                    d += tmp
                else:
                    d[...] = b
            d *= lr
            pc -= d


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), the same update as PyTorch's.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p     <- p * (1 - lr * weight_decay)      decay, not routed through the moments
        m     <- b1 * m + (1 - b1) * g            running mean of g
        v     <- b2 * v + (1 - b2) * g^2          running mean of g^2
        m_hat  = m / (1 - b1^t)                   undo the bias of starting m, v at 0
        v_hat  = v / (1 - b2^t)
        p     <- p - lr * m_hat / (sqrt(v_hat) + eps)

    m_hat / sqrt(v_hat) is about +-1 wherever the gradient's sign is consistent, so every
    coordinate moves by about lr whatever the scale of its gradient. The decay shrinks weights
    toward 0 at rate lr * weight_decay, independently of the gradient's scale (that is what
    "decoupled" means; Adam with L2 loss would divide the decay by sqrt(v_hat) too).
    Use `decay_groups(model, wd)` so that biases and LayerNorm weights are not decayed.
    """

    scratch_rows = 1

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        betas = tuple(group["betas"])
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {group['betas']}")
        group["betas"] = betas
        if not group["eps"] >= 0.0:
            raise ValueError(f"eps must be >= 0, got {group['eps']}")

    def _init_state(self, p: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": 0,
                "exp_avg": np.zeros(p.shape, dtype=p.dtype),
                "exp_avg_sq": np.zeros(p.shape, dtype=p.dtype)}

    def _update(self, p, g, state, group) -> None:
        # Python floats throughout: a NumPy float64 scalar would be fine for `out=` but is a
        # trap elsewhere (float32 array * np.float64 scalar is float64 under NumPy 2's rules).
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        b1, b2 = (float(b) for b in group["betas"])
        state["step"] += 1
        t = state["step"]
        step_size = lr / (1.0 - b1 ** t)
        bias_correction2_sqrt = math.sqrt(1.0 - b2 ** t)
        decay = 1.0 - lr * wd
        for pc, gc, m, v, s in self._slices(p, g, state["exp_avg"], state["exp_avg_sq"]):
            if wd:
                pc *= decay
            m *= b1                                   # m = b1 m + (1 - b1) g
            np.multiply(gc, 1.0 - b1, out=s)
            m += s
            v *= b2                                   # v = b2 v + (1 - b2) g^2
            np.multiply(gc, gc, out=s)
            s *= 1.0 - b2
            v += s
            np.sqrt(v, out=s)                         # sqrt(v_hat) + eps
            s /= bias_correction2_sqrt
            s += eps
            np.divide(m, s, out=s)                    # p -= lr/(1-b1^t) * m / (...)
            s *= step_size
            pc -= s


# ----------------------------------------------------------------------------------------------


def decay_groups(model: Module, weight_decay: float,
                 no_decay_embeddings: bool = False) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into the two groups AdamW is usually given.

    Weight decay pulls weights toward zero. That regularises matrices (2-D and up: Linear
    weights, embeddings), but for biases and LayerNorm's gains (1-D) zero is not a sensible
    prior: a LayerNorm weight of 0 switches the layer off. So:

        [{"params": <matrices>, "weight_decay": weight_decay},
         {"params": <vectors>, "weight_decay": 0.0}]

    With `no_decay_embeddings=True` the weights of Embedding layers join the second group (with
    tied weights that includes the output head, which *is* the token embedding). Frozen
    parameters are left out. Both groups are always present (possibly empty), so the layout of
    a saved optimizer state does not depend on the model's contents.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, Embedding)} \
        if no_decay_embeddings else set()
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and id(p) not in embedding_ids:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most `max_norm`.

    The global norm treats every gradient as one long vector: sqrt(sum over all elements g^2).
    If it exceeds max_norm, every gradient is multiplied by max_norm / norm, in place; the
    direction of the update is kept, only its length is capped. Returns the norm *before*
    clipping (worth logging: spikes announce trouble). A non-finite norm (inf/nan: the loss
    blew up) is returned without touching the gradients, so the caller can stop or skip.
    """
    if isinstance(params, Module):
        raise TypeError("pass model.parameters(), not the model itself")
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in params if p.grad is not None]
    # vdot per tensor in its own dtype (BLAS, no temporary), summed as Python floats (float64).
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules: pure functions of the step number (0-based: the step about to be
# taken), so a resumed run only needs to know which step it is at.


def constant_lr(step: int, lr: float, warmup_steps: int = 0) -> float:
    """`lr` at every step, after an optional linear warmup (see `cosine_with_warmup`)."""
    _check_step(step, warmup_steps)
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr


def cosine_with_warmup(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                       min_lr: float = 0.0) -> float:
    """Linear warmup to `max_lr`, then a half cosine down to `min_lr`, then `min_lr` for ever.

        step < warmup:          max_lr * (step + 1) / warmup_steps
        warmup <= step < total: min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                                progress = (step - warmup) / (total - warmup), from 0 to 1
        step >= total:          min_lr

    Warmup lets Adam's second-moment estimates settle before the steps get large; the slow
    decay at the end lets the weights settle into a minimum instead of bouncing around it.
    """
    _check_step(step, warmup_steps)
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be >= warmup_steps "
                         f"({warmup_steps})")
    if not 0.0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_step(step: int, warmup_steps: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


def lr_schedule(kind: str, lr: float, warmup_steps: int = 0, total_steps: int | None = None,
                min_lr: float = 0.0) -> Callable[[int], float]:
    """A schedule as a one-argument function of the step: "constant" or "cosine".

        schedule = lr_schedule("cosine", 6e-4, warmup_steps=100, total_steps=5000, min_lr=6e-5)
        for step in range(start, total):
            optimizer.lr = schedule(step)
            ...
    """
    if kind == "constant":
        _check_step(0, warmup_steps)
        return lambda step: constant_lr(step, lr, warmup_steps)
    if kind == "cosine":
        if total_steps is None:
            raise ValueError("the cosine schedule needs total_steps")
        cosine_with_warmup(0, lr, warmup_steps, total_steps, min_lr)     # validate now
        return lambda step: cosine_with_warmup(step, lr, warmup_steps, total_steps, min_lr)
    raise ValueError(f"unknown schedule {kind!r}; choose 'constant' or 'cosine'")


# ----------------------------------------------------------------------------------------------
# Writing nested state (an optimizer's state_dict, a trainer's counters) as np.savez + JSON.


def split_arrays(tree: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Replace every NumPy array in a nested dict/list by a placeholder; return both parts.

    `(skeleton, arrays)`: the skeleton is JSON-writable (arrays become {"__array__": key}),
    `arrays` maps those keys to the arrays, ready for `np.savez(path, **arrays)`.
    `join_arrays(skeleton, arrays)` puts them back together.
    """
    arrays: dict[str, np.ndarray] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, np.ndarray):
            arrays[path] = node
            return {"__array__": path}
        if isinstance(node, dict):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
        return _plain(node)
    return walk(tree, ""), arrays


def join_arrays(skeleton: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of `split_arrays` (`arrays` may be the NpzFile that np.load returns)."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return np.asarray(arrays[skeleton["__array__"]])
        return {k: join_arrays(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_arrays(v, arrays) for v in skeleton]
    return skeleton
