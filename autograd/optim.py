"""Optimizers, gradient clipping and learning-rate schedules.

After `loss.backward()` every trainable parameter p holds its gradient g = dL/dp in `p.grad`.
An optimizer turns gradients into a change of the weights:

    SGD     p <- p - lr * g                                  (plus momentum, optionally)
    AdamW   p <- p * (1 - lr * wd)                           decoupled weight decay, then
            p <- p - lr * m_hat / (sqrt(v_hat) + eps)        a step scaled per coordinate
    Muon    p <- p - lr * scale * orthogonalise(momentum)    a step scaled per direction of a
                                                             weight matrix (2-D only)

A model trained with Muon gives its block matrices to Muon and the rest to AdamW:
`muon_with_adamw(model, ...)` builds both and wraps them in a `MultiOptimizer`, which a training
loop drives like a single optimizer.

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

from .nn import Embedding, Module, ModuleList
from .ops.chunks import ELEMENTWISE_CHUNK
from .tensor import Tensor

if TYPE_CHECKING:
    from .parallel import DataParallel

__all__ = ["Optimizer", "SGD", "AdamW", "Muon", "MultiOptimizer", "clip_grad_norm",
           "decay_groups", "muon_param_groups", "muon_with_adamw", "orthogonalise",
           "SCHEDULES", "constant_lr", "cosine_with_warmup", "lr_schedule", "scheduled_lr",
           "split_arrays", "join_arrays"]

# Elements per slice of the in-place update loops (the same slice size as the fused elementwise
# ops): the five slices an Adam update juggles (p, g, m, v, scratch) stay in the CPU cache
# between its dozen passes, while each NumPy call still has enough work that Python's per-call
# cost is noise. Whole tensors would stream from main memory on every pass.
CHUNK = ELEMENTWISE_CHUNK


class Optimizer:
    """Base class: parameter groups, per-parameter state, `step`, `zero_grad`, save and load.

    `params` is either an iterable of Parameters or a list of groups, each a dict
    `{"params": [...], "lr": ..., ...}` whose keys override the optimizer's defaults for that
    group (e.g. `"weight_decay": 0.0` for biases). Parameters that do not require a gradient,
    or have none this step, are skipped by `step()`. A parameter whose array is not C-ordered
    (a transposed view) gets a C-ordered copy as the optimizer takes it.
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
                if not p.data.flags.c_contiguous:
                    # A Llama weight loaded from a Hugging Face file is a transposed view
                    # (gpt/io/hf_llama.py). Updates run on C-ordered arrays, in flat chunks;
                    # and a run resumed from a checkpoint must compute what the run it
                    # continues computed, whose matrix products saw C-ordered weights if the
                    # model was built here (BLAS rounds differently for the other order).
                    p.data = np.ascontiguousarray(p.data)
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
        _run_updates(self._work(), parallel)

    def _work(self) -> list[tuple[Optimizer, Tensor, dict[str, Any], dict[str, Any]]]:
        """(optimizer, parameter, its state, its group) for each parameter this step updates;
        a parameter's state is created on its first step."""
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
            work.append((self, p, state, group))
        return work

    def _cost(self, p: np.ndarray, group: dict[str, Any]) -> float:
        """The relative cost of updating p, for sharing parameters out over threads; the unit
        is one element of an AdamW update."""
        return float(p.size)

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
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            unknown = set(saved) - set(group) - {"params", "name"}
            if unknown:
                raise ValueError(f"parameter group {number}: the state dict has settings "
                                 f"{sorted(unknown)} that {type(self).__name__} does not know "
                                 f"(saved by a different optimizer?)")
        for saved, group in zip(saved_groups, self.param_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if key == "betas" else value
        self.state = new_state


def _run_updates(work: list[tuple[Optimizer, Tensor, dict[str, Any], dict[str, Any]]],
                 parallel: DataParallel | None) -> None:
    """Apply each (optimizer, parameter, state, group) update of `work`, in the threads of
    `parallel` if given (shared out by cost: each update is independent of the others)."""
    def update(part: list) -> None:
        for optimizer, p, state, group in part:
            optimizer._update(p.data, p.grad, state, group)
    if parallel is None:
        update(work)
    else:
        parallel.map_parts(update, work, [opt._cost(p.data, group)
                                          for opt, p, _, group in work])


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
# Muon: momentum, orthogonalised.

# p(x) = a x + b x^3 + c x^5, the quintic of Keller Jordan's Muon (see Muon's docstring).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Added to |X|_F before dividing by it: a zero update stays zero instead of becoming NaN.
NEWTON_SCHULZ_EPS = 1e-7


def _newton_schulz(x: np.ndarray, y: np.ndarray, gram: np.ndarray, poly: np.ndarray,
                   steps: int) -> np.ndarray:
    """Orthogonalise x (k, n), k <= n, in place: `steps` iterations of X <- p(X) after
    X <- X / |X|_F. y (k, n), gram and poly (k, k) are scratch of x's dtype. Returns the one of
    x and y that holds the result (the two swap roles each iteration, so nothing is copied)."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x *= 1.0 / (math.sqrt(float(np.vdot(x, x))) + NEWTON_SCHULZ_EPS)
    for _ in range(steps):
        np.matmul(x, x.T, out=gram)               # A = X X^T                  (k, k)
        np.matmul(gram, gram, out=poly)           # A^2                        (k, k)
        poly *= c
        gram *= b
        poly += gram                              # b A + c A^2                (k, k)
        np.matmul(poly, x, out=y)                 # (b A + c A^2) X            (k, n)
        x *= a
        y += x                                    # p(X) = a X + (b A + c A^2) X
        x, y = y, x
    return x


def orthogonalise(matrix: np.ndarray, steps: int = 5) -> np.ndarray:
    """About P Q^T for matrix = P S Q^T (its SVD): `steps` Newton-Schulz iterations in float32.

    The singular vectors P, Q are kept (up to rounding); the singular values s_i become
    p(p(...p(s_i / |matrix|_F))) with Muon's quintic p, which lies in about [0.68, 1.21] after
    five steps for every s_i >= 2e-3 |matrix|_F. Muon's docstring derives it. Returns a new
    float32 array of the matrix's shape.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"orthogonalise takes a 2-D matrix, got shape {matrix.shape}")
    _check_ns_steps(steps)
    tall = matrix.shape[0] > matrix.shape[1]
    k, n = sorted(matrix.shape)
    x, y = np.empty((k, n), np.float32), np.empty((k, n), np.float32)
    x[...] = matrix.T if tall else matrix
    result = _newton_schulz(x, y, np.empty((k, k), np.float32), np.empty((k, k), np.float32),
                            steps)
    return np.ascontiguousarray(result.T if tall else result)


def _check_ns_steps(steps: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"ns_steps (Newton-Schulz iterations) must be an integer >= 1, "
                         f"got {steps!r}")


class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Keller Jordan's optimizer, as used by the
    modded-nanogpt speedrun and nanochat), for 2-D weight matrices.

    For a weight matrix W with gradient G, at step t = 1, 2, ...:

        W <- W * (1 - lr * weight_decay)               decoupled decay, as in AdamW
        M <- beta * M + (1 - beta) * G                 momentum: a running mean of G
        U  = (1 - beta) * G + beta * M                 Nesterov: look one step ahead
             (U = M with nesterov=False)
        O  = NS(U / |U|_F)                             ~ U's orthogonal factor (below)
        W <- W - lr * sqrt(max(1, fan_out / fan_in)) * O

    Why orthogonalise. To first order a step dW changes the loss by <G, dW> = sum_ij G_ij dW_ij.
    Write G = P S Q^T (its SVD: P, Q with orthonormal columns p_i, q_i; S = diag(s_i), s_i > 0).
    Which step of a given size lowers the loss most depends on how size is measured. Under the
    Frobenius norm it is -eta G / |G|_F: gradient descent. But a weight matrix is an operator,
    and what a step does to the network is how much it changes the layer's output, bounded by
    |dW x| <= |dW|_2 |x| for every input x: the spectral norm |dW|_2 (the largest singular
    value) is the natural size. Steepest descent under it:

        minimise <G, dW> subject to |dW|_2 <= eta;
        <G, dW> = tr(Q S P^T dW) = sum_i s_i p_i^T dW q_i >= -eta sum_i s_i,
        because |p^T dW q| <= |dW|_2 for unit vectors p, q; equality at dW = -eta P Q^T.

    So the best step is the gradient with every singular value set to 1: O = P Q^T. The
    gradients (and momenta) of a transformer's matrices are nearly low-rank: a few directions
    carry most of |G|_F, and SGD or Adam step mostly along those. P Q^T moves every singular
    direction by the same amount, so directions that are rare but useful learn too.

    What Newton-Schulz does. For X = P S Q^T, X X^T = P S^2 P^T, so (X X^T) X = P S^3 Q^T and
    (X X^T)^2 X = P S^5 Q^T. An odd polynomial of the matrix acts on its singular values alone:

        p(X) = a X + b (X X^T) X + c (X X^T)^2 X = P p(S) Q^T,    p(x) = a x + b x^3 + c x^5.

    Iterating it applies p(p(...p(s))) to each singular value and leaves P and Q alone.
    If the iterates of p carry every x in (0, 1] to about 1, then NS(X) ~ P Q^T: three matrix
    products per iteration, and no SVD (slow, and nothing like a GEMM).

    The textbook cubic p(x) = (3x - x^3) / 2 converges to exactly 1, but its slope at 0 is
    only 3/2: a singular value of 1e-3 needs about 17 iterations to arrive. Jordan's quintic,
    (a, b, c) = (3.4445, -4.7750, 2.0315), has slope a = 3.4445 at 0, so a small singular value
    grows about 3.4x per iteration (about 480x in five). It pays for that by not converging:
    p(1) = 0.70, and the iterates end up anywhere in a band of about [0.68, 1.21] rather than
    at 1. For descent the band is harmless (no direction is left far behind the others, and
    P, Q are exact), and five iterations bring every singular value above about 2e-3 |X|_F into
    it. Smaller ones stay smaller: they hold almost none of the momentum.

    Why normalise first. p keeps values in the band only when they start below about 1.26;
    beyond that the c x^5 term takes over (p(2) = 33.7) and the iteration blows up. So the singular
    values must start in [0, 1]. Dividing by the Frobenius norm does it, since |X|_F^2 =
    sum_i s_i^2 >= s_max^2, and unlike s_max itself it costs one pass over X. (The division
    also makes U's scale irrelevant, which is why the momentum may be a mean rather than
    PyTorch SGD's sum beta M + G: only its direction counts.)

    Cost and orientation. With X of shape (k, n), k <= n, the Gram matrix X X^T is (k, k) and an
    iteration costs 2 k^2 n + k^3 multiply-adds; a tall matrix is transposed first so that the
    Gram matrix is the small one. That is allowed because p(X^T) = Q p(S) P^T = p(X)^T: the
    orthogonal factor of G^T is that of G, transposed. For the same reason the orientation of
    the weights does not matter. Our Linear stores W as (in_features, out_features), the
    transpose of PyTorch's (out, in); its gradient is the transpose too, and orthogonalising it
    gives the transpose of PyTorch's O: the same step (and |dW^T|_2 = |dW|_2). Only the scale
    below needs to know which axis is which: here fan_in = W.shape[0], fan_out = W.shape[1].

    Scale. O has min(rows, cols) singular values near 1, so |O|_F^2 ~ min(rows, cols) and its
    root-mean-square entry is 1 / sqrt(max(rows, cols)): the longer a matrix's long side, the
    smaller the step per weight. Two rules are in use to correct it:

      sqrt(max(1, fan_out / fan_in))   Jordan's Muon, modded-nanogpt, nanochat (there written
                                       max(1, rows / cols)^0.5, rows = fan_out in PyTorch).
                                       The RMS becomes lr / sqrt(fan_in) for every shape:
                                       fan_out >= fan_in gives sqrt(fan_out / fan_in) /
                                       sqrt(fan_out), otherwise 1 / sqrt(fan_in).
      0.2 sqrt(max(rows, cols))        Moonshot's "Muon is scalable for LLM training": the RMS
                                       becomes 0.2 lr for every shape, about that of an AdamW
                                       update, so AdamW's lr and weight decay carry over.

    We use the first. It makes lr a step relative to the scale of the layer's weights (a
    1/sqrt(fan_in) initialisation), independent of the width; and the small-model recipes we
    start from (modded-nanogpt, nanochat) tuned their Muon learning rates (0.02-0.05) with it.

    The iteration runs in float32 GEMMs whatever the parameter's dtype (it only has to land in
    the band, and float32's rounding is far smaller than the band's width); the momentum keeps
    the parameter's dtype.
    Muon is for the hidden matrices: embeddings (lookups, whose rows are updated by their own
    tokens), the output head and the vectors (gains, biases) go to AdamW; `muon_param_groups`
    sorts a model's parameters and `muon_with_adamw` builds both optimizers.
    """

    scratch_rows = 0

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, weight_decay=weight_decay))
        for index, group, p in self._indexed_params():
            if p.ndim != 2:
                raise ValueError(f"Muon updates 2-D weight matrices, but parameter {index} has "
                                 f"shape {p.shape}; give it to AdamW (see muon_param_groups)")
        self._buffers = threading.local()      # per thread: {(k, n): Newton-Schulz scratch}

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']}")
        _check_ns_steps(group["ns_steps"])

    def _init_state(self, p: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": 0, "momentum_buffer": np.zeros(p.shape, dtype=p.dtype)}

    def _cost(self, p: np.ndarray, group: dict[str, Any]) -> float:
        k, n = sorted(p.shape)
        # On one core a float32 GEMM multiply-add costs about 1/60 of an AdamW element update.
        return p.size + group["ns_steps"] * (2 * k * k * n + k ** 3) / 60.0

    def _scratch_matrices(self, k: int, n: int) -> tuple[np.ndarray, ...]:
        """This thread's float32 scratch for a (k, n) Newton-Schulz: x, y (k, n), gram, poly
        (k, k). Allocated on the first step, reused after."""
        cache = getattr(self._buffers, "by_shape", None)
        if cache is None:
            cache = self._buffers.by_shape = {}
        buffers = cache.get((k, n))
        if buffers is None:
            buffers = cache[(k, n)] = (np.empty((k, n), np.float32), np.empty((k, n), np.float32),
                                       np.empty((k, k), np.float32), np.empty((k, k), np.float32))
        return buffers

    def _update(self, p, g, state, group) -> None:
        lr, beta, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        state["step"] += 1
        m = state["momentum_buffer"]
        m -= g                                    # M = beta M + (1 - beta) G, as G + beta (M - G)
        m *= beta
        m += g
        rows, cols = p.shape
        tall = rows > cols
        x, y, gram, poly = self._scratch_matrices(min(rows, cols), max(rows, cols))
        u = x.T if tall else x                    # (rows, cols): writing u fills x
        if group["nesterov"]:
            np.subtract(m, g, out=u)              # U = (1 - beta) G + beta M = G + beta (M - G)
            u *= beta
            u += g
        else:
            u[...] = m
        o = _newton_schulz(x, y, gram, poly, int(group["ns_steps"]))
        if wd:
            p *= 1.0 - lr * wd
        o *= lr * math.sqrt(max(1.0, cols / rows))      # fan_in = rows, fan_out = cols
        p -= o.T if tall else o


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


def muon_param_groups(model: Module) -> dict[str, list[Tensor]]:
    """Sort a model's trainable parameters into what Muon updates and what AdamW updates:

        "matrices"    2-D weights inside the repeated blocks (the members of any ModuleList:
                      GPT's h.0, h.1, ...): attention and MLP projections      -> Muon
        "embeddings"  Embedding tables, and an output head tied to one        -> AdamW
        "head"        other 2-D weights outside the blocks (an untied head)   -> AdamW
        "vectors"     everything else: biases, norm gains, scalars            -> AdamW

    Orthogonalising is for matrices that act as operators on hidden states. An embedding is a
    lookup whose rows only its own tokens update; the head's rows are likewise one per token,
    and it is where modded-nanogpt and nanochat keep Adam; vectors have no matrix structure.
    Every key is always present (possibly empty), each parameter appears once, in model order.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, Embedding)}
    block_ids = {id(p) for m in model.modules() if isinstance(m, ModuleList)
                 for p in m.parameters()}
    groups: dict[str, list[Tensor]] = {"matrices": [], "embeddings": [], "head": [],
                                       "vectors": []}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim != 2:
            groups["vectors"].append(p)
        elif id(p) in embedding_ids:
            groups["embeddings"].append(p)
        elif id(p) in block_ids:
            groups["matrices"].append(p)
        else:
            groups["head"].append(p)
    return groups


def muon_with_adamw(model: Module, lr: float = 0.02, momentum: float = 0.95,
                    nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0,
                    adamw_lr: float = 4e-3, embedding_lr: float | None = None,
                    head_lr: float | None = None, betas: tuple[float, float] = (0.8, 0.95),
                    eps: float = 1e-8, adamw_weight_decay: float = 0.0) -> MultiOptimizer:
    """Muon for the model's block matrices, AdamW for the rest, as one optimizer.

    Groups as `muon_param_groups` sorts them: Muon(matrices, lr, momentum, nesterov, ns_steps,
    weight_decay) and AdamW over three groups, always in this order (so that a saved state
    fits any model of the same architecture):

        "embeddings"  lr = embedding_lr (default adamw_lr), weight decay adamw_weight_decay
        "head"        lr = head_lr (default adamw_lr),      weight decay adamw_weight_decay
        "vectors"     lr = adamw_lr,                        no weight decay

    modded-nanogpt and nanochat give the embeddings a far larger learning rate than the head;
    the separate groups let a recipe do that. Setting `.lr` on the result scales every group
    in proportion (see MultiOptimizer), so one schedule drives both optimizers.
    """
    groups = muon_param_groups(model)
    if not groups["matrices"]:
        raise ValueError("the model has no 2-D weights inside a ModuleList of blocks for Muon "
                         "to update; use AdamW alone")
    if embedding_lr is None:
        embedding_lr = adamw_lr
    if head_lr is None:
        head_lr = adamw_lr
    muon = Muon([{"params": groups["matrices"], "name": "matrices"}], lr=lr, momentum=momentum,
                nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
    adamw = AdamW([{"params": groups["embeddings"], "name": "embeddings", "lr": embedding_lr,
                    "weight_decay": adamw_weight_decay},
                   {"params": groups["head"], "name": "head", "lr": head_lr,
                    "weight_decay": adamw_weight_decay},
                   {"params": groups["vectors"], "name": "vectors", "lr": adamw_lr,
                    "weight_decay": 0.0}],
                  lr=adamw_lr, betas=betas, eps=eps)
    return MultiOptimizer([muon, adamw])


class MultiOptimizer:
    """Several optimizers over disjoint parameters, driven as one: `step`, `zero_grad`, `lr`,
    `state_dict` and `load_state_dict` as a single Optimizer has them.

    Learning rates: each group's lr at construction is its base. The first group of the first
    optimizer is the reference, and `.lr` reads its current lr. Setting `.lr = value` sets
    every group of every optimizer to base * value / reference base, so a schedule written
    for the reference (e.g. Muon's 0.02 peak) scales AdamW's groups by the same factor;
    `.lr_scale` is that factor itself.
    """

    def __init__(self, optimizers: Iterable[Optimizer]):
        self.optimizers = list(optimizers)
        if not self.optimizers:
            raise ValueError("MultiOptimizer needs at least one optimizer")
        seen: set[int] = set()
        for number, optimizer in enumerate(self.optimizers):
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"optimizer {number} is a {type(optimizer).__name__}, not an "
                                f"autograd.optim.Optimizer")
            for _, _, p in optimizer._indexed_params():
                if id(p) in seen:
                    raise ValueError(f"a parameter of shape {p.shape} is in two of the "
                                     f"optimizers; each must have its own parameters")
                seen.add(id(p))
        self.base_lrs = [[float(g["lr"]) for g in o.param_groups] for o in self.optimizers]
        if not self.base_lrs[0][0] > 0.0:
            raise ValueError(f"the first group's lr is the reference of MultiOptimizer.lr and "
                             f"must be > 0, got {self.base_lrs[0][0]}")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every optimizer's groups, in order (to read settings; a new list each time)."""
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def lr(self) -> float:
        """The current lr of the reference group (the first optimizer's first group)."""
        return self.optimizers[0].param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        if not value >= 0.0:
            raise ValueError(f"lr must be >= 0, got {value}")
        self.lr_scale = value / self.base_lrs[0][0]

    @property
    def lr_scale(self) -> float:
        """Current lr / base lr, the same for every group."""
        return self.lr / self.base_lrs[0][0]

    @lr_scale.setter
    def lr_scale(self, factor: float) -> None:
        if not factor >= 0.0:
            raise ValueError(f"lr_scale must be >= 0, got {factor}")
        for optimizer, bases in zip(self.optimizers, self.base_lrs):
            for group, base in zip(optimizer.param_groups, bases):
                group["lr"] = base * factor

    def step(self, parallel: DataParallel | None = None) -> None:
        """Step every optimizer; with `parallel`, all their updates share the threads."""
        _run_updates([item for optimizer in self.optimizers for item in optimizer._work()],
                     parallel)

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        """{"optimizers": [each optimizer's state_dict()], "base_lrs": [[...], ...]}."""
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
                "base_lrs": [list(bases) for bases in self.base_lrs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore every optimizer's state and the base learning rates; all or nothing.
        Raises ValueError if the saved state is not one of this MultiOptimizer's shape."""
        saved = state_dict.get("optimizers")
        bases = state_dict.get("base_lrs")
        if saved is None or bases is None:
            raise ValueError(f"a MultiOptimizer state dict has the keys 'optimizers' and "
                             f"'base_lrs', got {sorted(state_dict)} (saved by a single "
                             f"optimizer?)")
        if len(saved) != len(self.optimizers) or len(bases) != len(self.optimizers):
            raise ValueError(f"the state dict holds {len(saved)} optimizers, this "
                             f"MultiOptimizer has {len(self.optimizers)}")
        for number, (group_bases, optimizer) in enumerate(zip(bases, self.optimizers)):
            if len(group_bases) != len(optimizer.param_groups):
                raise ValueError(f"optimizer {number}: the state dict has base lrs for "
                                 f"{len(group_bases)} groups, the optimizer has "
                                 f"{len(optimizer.param_groups)}")
        before = [(optimizer.state, [dict(g) for g in optimizer.param_groups])
                  for optimizer in self.optimizers]
        try:
            for entry, optimizer in zip(saved, self.optimizers):
                optimizer.load_state_dict(entry)
        except (ValueError, KeyError, TypeError):
            for optimizer, (state, groups) in zip(self.optimizers, before):
                optimizer.state = state
                for group, settings in zip(optimizer.param_groups, groups):
                    group.update(settings)
            raise
        self.base_lrs = [[float(b) for b in group_bases] for group_bases in bases]


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
# taken) and of how far the run is, so a resumed run only needs to know which step it is at.

SCHEDULES = ("cosine", "wsd", "constant")


def scheduled_lr(kind: str, step: int, progress: float, lr: float, warmup_steps: int = 0,
                 min_lr: float = 0.0, decay_fraction: float = 0.2) -> float:
    """The learning rate of `step` under schedule `kind`, the run being `progress` of the way
    from the end of warmup (0) to its end (1). `lr_schedule` explains the shapes:

        step < warmup_steps:  lr * (step + 1) / warmup_steps
        "constant":           lr
        "cosine":             min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2
        "wsd":                min_lr + (lr - min_lr) * min(1, (1 - progress) / decay_fraction)

    Progress is the caller's to measure: steps done of the run's steps (`lr_schedule`), or the
    larger of that and the time spent of a time budget (gpt.train.loop.LoopConfig). It is taken
    as given: keep it in [0, 1].
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if kind == "constant":
        return lr
    if kind == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "wsd":
        left = (1.0 - progress) / decay_fraction        # > 1 until the decay begins
        return min_lr + (lr - min_lr) * min(left, 1.0)
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def _step_progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """How far a run of `total_steps` is at `step`: 0 up to the end of warmup, 1 from
    total_steps on."""
    if step >= total_steps:
        return 1.0
    if step < warmup_steps:
        return 0.0
    return (step - warmup_steps) / (total_steps - warmup_steps)


def constant_lr(step: int, lr: float, warmup_steps: int = 0) -> float:
    """`lr` at every step, after an optional linear warmup (see `cosine_with_warmup`)."""
    _check_step(step, warmup_steps)
    return scheduled_lr("constant", step, 0.0, lr, warmup_steps)


def cosine_with_warmup(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                       min_lr: float = 0.0) -> float:
    """Linear warmup to `max_lr`, then a half cosine down to `min_lr`, then `min_lr` for ever.

        step < warmup:          max_lr * (step + 1) / warmup_steps
        warmup <= step < total: min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                                progress = (step - warmup) / (total - warmup), from 0 to 1
        step >= total:          min_lr   (progress 1: cos(pi) = -1 exactly)

    Warmup lets Adam's second-moment estimates settle before the steps get large; the slow
    decay at the end lets the weights settle into a minimum instead of bouncing around it.
    """
    _check_step(step, warmup_steps)
    _check_run(warmup_steps, total_steps, max_lr, min_lr)
    return scheduled_lr("cosine", step, _step_progress(step, warmup_steps, total_steps), max_lr,
                        warmup_steps, min_lr)


def _check_step(step: int, warmup_steps: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


def _check_run(warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> None:
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be >= warmup_steps "
                         f"({warmup_steps})")
    if not 0.0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")


def lr_schedule(kind: str, lr: float, warmup_steps: int = 0, total_steps: int | None = None,
                min_lr: float = 0.0, decay_fraction: float = 0.2) -> Callable[[int], float]:
    """A schedule as a one-argument function of the step: "cosine", "wsd" or "constant".

        schedule = lr_schedule("wsd", 4e-3, warmup_steps=50, total_steps=3000, decay_fraction=0.3)
        for step in range(start, total):
            optimizer.lr = schedule(step)
            ...

    Every shape starts with the same warmup: lr * (step + 1) / warmup_steps over the first
    `warmup_steps` steps, a straight line that reaches lr at the last of them. Adam divides by
    a running mean of squared gradients that is still mostly its first few samples early on;
    small steps until it settles keep those first updates from throwing the weights far off.

    After warmup, let p run from 0 (the end of warmup) to 1 (the end of the run):
    p = (step - warmup_steps) / (total_steps - warmup_steps), and 1 from total_steps on.

    "constant": lr for ever. The run's length does not matter, so it needs no total_steps.

    "cosine": lr(p) = min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2. At p = 0 the cosine is 1
        and lr(0) = lr; at p = 1 it is -1 and lr(1) = min_lr; halfway it is the mean of the
        two. Its slope, -(lr - min_lr) * pi sin(pi p) / 2, is 0 at both ends: the rate leaves
        the peak gently and lands softly on the floor, and it decays all run long.

    "wsd" (warmup-stable-decay): hold lr, then fall in a straight line to min_lr over the last
        `decay_fraction` f of the run. The line through (1 - f, lr) and (1, min_lr) is
        lr(p) = min_lr + (lr - min_lr) * (1 - p) / f; before p = 1 - f that factor exceeds 1,
        so lr(p) = min_lr + (lr - min_lr) * min(1, (1 - p) / f) is the whole schedule. The
        high, constant rate makes fast progress for most of the run; the loss drops most
        during the short decay at the end, where the weights settle. Unlike cosine, the run's
        first 1 - f needs no knowledge of its end.

    A schedule that needs the run's length (cosine, wsd) needs `total_steps`. A run whose
    length is a wall-clock budget measures p otherwise and calls `scheduled_lr`, which holds
    these formulas, directly (gpt.train.loop.LoopConfig.lr_at).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    _check_step(0, warmup_steps)
    if kind == "constant":
        return lambda step: constant_lr(step, lr, warmup_steps)
    if total_steps is None:
        raise ValueError(f"the {kind} schedule needs total_steps")
    _check_run(warmup_steps, total_steps, lr, min_lr)
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")

    def schedule(step: int) -> float:
        _check_step(step, warmup_steps)
        return scheduled_lr(kind, step, _step_progress(step, warmup_steps, total_steps), lr,
                            warmup_steps, min_lr, decay_fraction)

    return schedule


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
