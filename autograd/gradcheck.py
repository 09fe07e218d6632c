"""Check hand-written gradients against finite differences, and a table of checks for every op.

The idea: for a function f of an array x, the central difference
    (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)
approximates df/dx_i with an error of order eps^2. In float64 with eps = 1e-6 it agrees with a
correct analytic gradient to about 1e-8 or better; a wrong backward is off by far more.

To check an op with a non-scalar output y = op(x), we reduce it to a scalar with a fixed random
projection R: f(x) = sum(y * R). Then df/dx is exactly what `y.backward(R)` computes, and a
random R leaves no part of the Jacobian unchecked.

    python -m autograd.gradcheck        # every op, a table, exit status 1 on any failure
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import functional as F
from .tensor import Tensor, concatenate, no_grad, stack


@dataclass
class GradcheckResult:
    """The worst disagreement between analytic and numerical gradients over all inputs."""
    max_abs_error: float
    max_rel_error: float
    passed: bool
    per_input: list[tuple[float, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-4, seed: int = 0,
              max_elements: int | None = None) -> GradcheckResult:
    """Compare the analytic gradient of `fn(*inputs)` with central differences.

    Every input with requires_grad=True is checked; all must be float64 (float32 differences
    are too coarse to tell a right gradient from a slightly wrong one). An element passes when
    |analytic - numerical| <= atol + rtol * |numerical|. The relative error reported is
    |analytic - numerical| / max(|numerical|, atol). `max_elements` checks a random subset of
    each input's elements (for big inputs); None checks all of them.
    """
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for t in checked:
        if t.dtype != np.float64:
            raise ValueError(f"gradcheck: inputs must be float64, got {t.dtype} for an input of "
                             f"shape {t.shape}")
    rng = np.random.default_rng(seed)

    out = fn(*inputs)
    projection = rng.standard_normal(out.shape)
    for t in checked:
        t.grad = None
    out.backward(projection)
    analytic = [t.grad if t.grad is not None else np.zeros_like(t.data) for t in checked]

    def f() -> float:
        with no_grad():
            return float(np.sum(fn(*inputs).data * projection))

    worst_abs = worst_rel = 0.0
    passed = True
    per_input = []
    for t, grad in zip(checked, analytic):
        flat = t.data.reshape(-1)        # a view: perturbing it perturbs the input
        positions = np.arange(flat.size)
        if max_elements is not None and flat.size > max_elements:
            positions = rng.choice(flat.size, size=max_elements, replace=False)
        input_abs = input_rel = 0.0
        for i in positions:
            original = flat[i]
            flat[i] = original + eps
            f_plus = f()
            flat[i] = original - eps
            f_minus = f()
            flat[i] = original
            numerical = (f_plus - f_minus) / (2 * eps)
            a = grad.reshape(-1)[i]
            error = abs(a - numerical)
            input_abs = max(input_abs, error)
            input_rel = max(input_rel, error / max(abs(numerical), atol))
            if not error <= atol + rtol * abs(numerical):     # also catches nan
                passed = False
        per_input.append((input_abs, input_rel))
        worst_abs, worst_rel = max(worst_abs, input_abs), max(worst_rel, input_rel)
    for t in checked:
        t.grad = None
    return GradcheckResult(worst_abs, worst_rel, passed, per_input)


# ----------------------------------------------------------------------------------------------
# The table of checks: every op, several shapes, on random float64 inputs.


@dataclass
class OpCheck:
    """One row of the table: `build(rng)` returns (fn, inputs) for gradcheck."""
    op: str
    shapes: str
    build: Callable[[np.random.Generator], tuple[Callable[..., Tensor], list[Tensor]]]


def _t(rng: np.random.Generator, *shape: int, low: float | None = None,
       high: float | None = None) -> Tensor:
    data = rng.standard_normal(shape) if low is None else rng.uniform(low, high, size=shape)
    return Tensor(data.astype(np.float64), requires_grad=True)


def _distinct(rng: np.random.Generator, *shape: int, shift: float = 0.0) -> Tensor:
    """Values at least 0.09 apart (and from `shift` + 0.05 steps), so max() has no ties and no
    element sits on relu's kink: finite differences stay on one side."""
    data = rng.permutation(math.prod(shape)).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)
    data += shift
    return Tensor(data.astype(np.float64), requires_grad=True)


def _binary(op: str, fn, shape_a, shape_b, **kw) -> OpCheck:
    return OpCheck(op, f"{shape_a} {shape_b}",
                   lambda rng: (fn, [_t(rng, *shape_a, **kw), _t(rng, *shape_b, **kw)]))


def _unary(op: str, fn, shape, **kw) -> OpCheck:
    return OpCheck(op, f"{shape}", lambda rng: (fn, [_t(rng, *shape, **kw)]))


def _fixed_rng_dropout(x: Tensor) -> Tensor:
    # A fresh generator with a fixed seed on every call: the same mask each time, so the
    # function is deterministic and finite differences make sense.
    return F.dropout(x, p=0.3, training=True, rng=np.random.default_rng(7))


def _attention_check(shape_q, shape_kv, is_causal: bool, dropout_p: float = 0.0) -> OpCheck:
    def build(rng):
        def fn(q, k, v):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=is_causal, dropout_p=dropout_p,
                rng=np.random.default_rng(11))
        return fn, [_t(rng, *shape_q), _t(rng, *shape_kv), _t(rng, *shape_kv)]
    label = f"q{shape_q} kv{shape_kv}" + (" causal" if is_causal else "") + \
        (f" dropout={dropout_p}" if dropout_p else "")
    return OpCheck("scaled_dot_product_attention", label, build)


def _cross_entropy_check(shape, reduction: str, ignore: bool) -> OpCheck:
    def build(rng):
        targets = rng.integers(0, shape[-1], size=shape[:-1])
        if ignore:
            targets.reshape(-1)[::3] = -100
        return (lambda x: F.cross_entropy(x, targets, reduction=reduction)), [_t(rng, *shape)]
    label = f"{shape} {reduction}" + (" ignore_index" if ignore else "")
    return OpCheck("cross_entropy", label, build)


def _embedding_check(n_rows: int, n_cols: int, id_shape) -> OpCheck:
    def build(rng):
        ids = rng.integers(0, n_rows, size=id_shape)
        ids.reshape(-1)[:2] = 1                     # a repeated id: gradients must add up
        return (lambda w: F.embedding(ids, w)), [_t(rng, n_rows, n_cols)]
    return OpCheck("embedding", f"W({n_rows}, {n_cols}) ids{id_shape} repeated", build)


def _getitem_check(shape, index, label: str) -> OpCheck:
    return OpCheck("getitem", f"{shape}{label}", lambda rng: ((lambda x: x[index]),
                                                               [_t(rng, *shape)]))


def _transformer_check(n_blocks: int = 2) -> OpCheck:
    """A whole two-block GPT built from the ops above, checked end to end."""
    def build(rng):
        vocab, block, n_embd, n_head, batch = 11, 6, 8, 2, 2
        head = n_embd // n_head
        params = {"wte": _t(rng, vocab, n_embd), "wpe": _t(rng, block, n_embd)}
        for i in range(n_blocks):
            for name, shape in (("ln1_w", (n_embd,)), ("ln1_b", (n_embd,)),
                                ("attn_w", (n_embd, 3 * n_embd)), ("attn_b", (3 * n_embd,)),
                                ("proj_w", (n_embd, n_embd)), ("proj_b", (n_embd,)),
                                ("ln2_w", (n_embd,)), ("ln2_b", (n_embd,)),
                                ("fc_w", (n_embd, 4 * n_embd)), ("fc_b", (4 * n_embd,)),
                                ("out_w", (4 * n_embd, n_embd)), ("out_b", (n_embd,))):
                params[f"{i}.{name}"] = _t(rng, *shape)
                params[f"{i}.{name}"].data *= 0.5
        params["lnf_w"], params["lnf_b"] = _t(rng, n_embd), _t(rng, n_embd)
        names = list(params)
        ids = rng.integers(0, vocab, size=(batch, block))
        targets = rng.integers(0, vocab, size=(batch, block))

        def fn(*tensors):
            p = dict(zip(names, tensors))
            x = F.embedding(ids, p["wte"]) + p["wpe"]
            for i in range(n_blocks):
                h = F.layer_norm(x, p[f"{i}.ln1_w"], p[f"{i}.ln1_b"])
                qkv = F.linear(h, p[f"{i}.attn_w"], p[f"{i}.attn_b"])
                qkv = qkv.reshape(batch, block, 3, n_head, head).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
                y = y.transpose(1, 2).reshape(batch, block, n_embd)
                x = x + F.linear(y, p[f"{i}.proj_w"], p[f"{i}.proj_b"])
                h = F.layer_norm(x, p[f"{i}.ln2_w"], p[f"{i}.ln2_b"])
                h = F.gelu(F.linear(h, p[f"{i}.fc_w"], p[f"{i}.fc_b"]))
                x = x + F.linear(h, p[f"{i}.out_w"], p[f"{i}.out_b"])
            x = F.layer_norm(x, p["lnf_w"], p["lnf_b"])
            logits = x @ p["wte"].T                              # tied output head
            return F.cross_entropy(logits, targets)
        return fn, [params[n] for n in names]
    return OpCheck("transformer", f"{n_blocks} blocks, C=8, H=2, T=6, tied head, loss", build)


# Llama 3's RoPE frequency scaling, as its config.json gives it.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

OP_CHECKS: list[OpCheck] = [
    _binary("add", lambda a, b: a + b, (3, 4), (4,)),
    _binary("add", lambda a, b: a + b, (2, 3, 4), (3, 1)),
    _binary("sub", lambda a, b: a - b, (3, 4), (3, 1)),
    _binary("mul", lambda a, b: a * b, (2, 3, 4), (1, 4)),
    _binary("mul", lambda a, b: a * b, (3, 4), (3, 4)),
    _binary("div", lambda a, b: a / b, (3, 4), (4,), low=0.5, high=2.0),
    _unary("pow", lambda a: a ** 3, (3, 4)),
    _unary("pow", lambda a: a ** -0.5, (3, 4), low=0.5, high=2.0),
    _unary("neg", lambda a: -a, (3, 4)),
    _binary("matmul", lambda a, b: a @ b, (3, 4), (4, 5)),
    _binary("matmul", lambda a, b: a @ b, (2, 3, 4, 5), (5, 2)),
    _binary("matmul", lambda a, b: a @ b, (2, 1, 3, 4), (3, 4, 2)),
    _binary("matmul", lambda a, b: a @ b, (4,), (4, 3)),
    _binary("matmul", lambda a, b: a @ b, (2, 3, 4), (4,)),
    _unary("sum", lambda a: a.sum(), (3, 4)),
    _unary("sum", lambda a: a.sum(axis=1), (2, 3, 4)),
    _unary("sum", lambda a: a.sum(axis=(0, 2), keepdims=True), (2, 3, 4)),
    _unary("mean", lambda a: a.mean(), (3, 4)),
    _unary("mean", lambda a: a.mean(axis=-1, keepdims=True), (2, 3, 4)),
    OpCheck("max", "(3, 4) axis=1", lambda rng: ((lambda a: a.max(axis=1)),
                                                 [_distinct(rng, 3, 4)])),
    OpCheck("max", "(2, 3, 4) all", lambda rng: ((lambda a: a.max()), [_distinct(rng, 2, 3, 4)])),
    _unary("reshape", lambda a: a.reshape(4, 6), (2, 3, 4)),
    _unary("transpose", lambda a: a.transpose(0, 2), (2, 3, 4)),
    _unary("permute", lambda a: a.permute(2, 0, 1), (2, 3, 4)),
    _getitem_check((4, 5), (slice(1, 3), slice(None, None, 2)), "[1:3, ::2]"),
    _getitem_check((4, 5), (np.array([0, 2, 2, 3]),), "[[0, 2, 2, 3]] repeated"),
    _getitem_check((2, 3, 4), (Ellipsis, 1), "[..., 1]"),
    OpCheck("concatenate", "(2, 3) (4, 3) axis=0",
            lambda rng: ((lambda a, b: concatenate([a, b], axis=0)), [_t(rng, 2, 3), _t(rng, 4, 3)])),
    OpCheck("stack", "2 x (2, 3) axis=1",
            lambda rng: ((lambda a, b: stack([a, b], axis=1)), [_t(rng, 2, 3), _t(rng, 2, 3)])),
    OpCheck("split", "(2, 7) -> 3, 4",
            lambda rng: ((lambda a: a.split([3, 4], axis=1)[1] * a.split([3, 4], axis=1)[0][:, :1]),
                         [_t(rng, 2, 7)])),
    _unary("exp", lambda a: a.exp(), (3, 4)),
    _unary("log", lambda a: a.log(), (3, 4), low=0.5, high=2.0),
    _unary("tanh", F.tanh, (3, 4)),
    OpCheck("relu", "(3, 4)", lambda rng: (F.relu, [_distinct(rng, 3, 4, shift=-0.55)])),
    _unary("sqrt", lambda a: a.sqrt(), (3, 4), low=0.5, high=2.0),
    _unary("sigmoid", lambda a: a.sigmoid(), (3, 4)),
    OpCheck("linear", "x(5, 4) W(4, 3) b(3)",
            lambda rng: (F.linear, [_t(rng, 5, 4), _t(rng, 4, 3), _t(rng, 3)])),
    OpCheck("linear", "x(2, 3, 4) W(4, 6) b(6)",
            lambda rng: (F.linear, [_t(rng, 2, 3, 4), _t(rng, 4, 6), _t(rng, 6)])),
    OpCheck("linear", "x(2, 3, 4) W(4, 2) no bias",
            lambda rng: (F.linear, [_t(rng, 2, 3, 4), _t(rng, 4, 2)])),
    _unary("softmax", lambda a: F.softmax(a, axis=-1), (3, 5)),
    _unary("softmax", lambda a: F.softmax(a, axis=0), (2, 3, 4)),
    _unary("log_softmax", lambda a: F.log_softmax(a, axis=-1), (3, 5)),
    _unary("log_softmax", lambda a: F.log_softmax(a, axis=1), (2, 3, 4)),
    _cross_entropy_check((6, 5), "mean", ignore=False),
    _cross_entropy_check((2, 4, 7), "mean", ignore=True),
    _cross_entropy_check((6, 5), "sum", ignore=True),
    _cross_entropy_check((2, 3, 5), "none", ignore=True),
    OpCheck("linear_cross_entropy", "x(2, 3, 4) W(7, 4) ignore_index",
            lambda rng: ((lambda x, w, t=np.array([[1, -100, 6], [0, 3, 3]]):
                          F.linear_cross_entropy(x, w, t)), [_t(rng, 2, 3, 4), _t(rng, 7, 4)])),
    OpCheck("linear_cross_entropy", "x(5, 3) W(6, 3) none",
            lambda rng: ((lambda x, w, t=np.array([0, 5, 2, 2, 1]):
                          F.linear_cross_entropy(x, w, t, reduction="none")),
                         [_t(rng, 5, 3), _t(rng, 6, 3)])),
    OpCheck("layer_norm", "x(4, 6) w(6) b(6)",
            lambda rng: (F.layer_norm, [_t(rng, 4, 6), _t(rng, 6), _t(rng, 6)])),
    OpCheck("layer_norm", "x(2, 3, 8) w(8) b(8)",
            lambda rng: (F.layer_norm, [_t(rng, 2, 3, 8), _t(rng, 8), _t(rng, 8)])),
    OpCheck("layer_norm", "x(3, 5) w(5) no bias",
            lambda rng: ((lambda x, w: F.layer_norm(x, w, None)), [_t(rng, 3, 5), _t(rng, 5)])),
    OpCheck("layer_norm", "x(3, 5) no weight, no bias",
            lambda rng: ((lambda x: F.layer_norm(x, None, None)), [_t(rng, 3, 5)])),
    _unary("gelu", F.gelu, (3, 4)),
    _unary("gelu", F.gelu, (2, 3, 5), low=-4.0, high=4.0),
    _embedding_check(5, 3, (4,)),
    _embedding_check(7, 4, (2, 5)),
    _unary("dropout", _fixed_rng_dropout, (4, 6)),
    _attention_check((2, 2, 5, 4), (2, 2, 5, 4), is_causal=True),
    _attention_check((1, 3, 4, 8), (1, 3, 4, 8), is_causal=False),
    _attention_check((2, 2, 2, 4), (2, 2, 5, 4), is_causal=True),
    _attention_check((2, 2, 5, 4), (2, 2, 5, 4), is_causal=True, dropout_p=0.25),
    OpCheck("multi_head_attention", "qkv(2, 5, 12) H=2",
            lambda rng: ((lambda qkv: F.multi_head_attention(qkv, 2)), [_t(rng, 2, 5, 12)])),
    OpCheck("multi_head_attention", "qkv(1, 4, 24) H=4 dropout=0.2",
            lambda rng: ((lambda qkv: F.multi_head_attention(qkv, 4, 0.2,
                                                            np.random.default_rng(5))),
                         [_t(rng, 1, 4, 24)])),
    OpCheck("rms_norm", "x(4, 6) w(6)",
            lambda rng: (F.rms_norm, [_t(rng, 4, 6), _t(rng, 6)])),
    OpCheck("rms_norm", "x(2, 3, 8) no weight",
            lambda rng: (F.rms_norm, [_t(rng, 2, 3, 8)])),
    _unary("rope", lambda x: F.rope(x, 0), (2, 2, 5, 4)),
    OpCheck("rope", "(1, 3, 4, 8) start=7 theta=5e5",
            lambda rng: ((lambda x: F.rope(x, 7, theta=500000.0)), [_t(rng, 1, 3, 4, 8)])),
    OpCheck("rope", "(1, 2, 4, 8) start=3 llama3 scaling",
            lambda rng: ((lambda x: F.rope(x, 3, freqs=F.rope_frequencies(8, 500000.0,
                                                                           LLAMA3_ROPE))),
                         [_t(rng, 1, 2, 4, 8)])),
    _unary("relu_squared", F.relu_squared, (3, 4)),
    _binary("swiglu", F.swiglu, (2, 3, 5), (2, 3, 5)),
    _unary("softcap", lambda x: F.softcap(x, 2.5), (4, 6)),
    _unary("repeat_kv", lambda x: F.repeat_kv(x, 3), (2, 2, 3, 4)),
    OpCheck("grouped_query_attention", "q(2, 4, 5, 3) kv(2, 2, 5, 3) causal",
            lambda rng: (F.grouped_query_attention,
                         [_t(rng, 2, 4, 5, 3), _t(rng, 2, 2, 5, 3), _t(rng, 2, 2, 5, 3)])),
    OpCheck("grouped_query_attention", "q(2, 4, 2, 3) kv(2, 1, 6, 3) causal",
            lambda rng: (F.grouped_query_attention,
                         [_t(rng, 2, 4, 2, 3), _t(rng, 2, 1, 6, 3), _t(rng, 2, 1, 6, 3)])),
    _transformer_check(2),
]


def run_checks(checks: Sequence[OpCheck] = OP_CHECKS, seed: int = 0) -> list[dict]:
    """Run each check; a row per check with op, shapes, errors and pass/fail."""
    rows = []
    for i, check in enumerate(checks):
        fn, inputs = check.build(np.random.default_rng(seed + i))
        result = gradcheck(fn, inputs)
        rows.append({"op": check.op, "shapes": check.shapes, "max_abs": result.max_abs_error,
                     "max_rel": result.max_rel_error, "passed": result.passed})
    return rows


def main() -> int:
    rows = run_checks()
    width_op = max(len(r["op"]) for r in rows)
    width_shapes = max(len(r["shapes"]) for r in rows)
    print(f"{'op':<{width_op}}  {'shapes':<{width_shapes}}  {'max abs err':>11}  "
          f"{'max rel err':>11}  result")
    for r in rows:
        print(f"{r['op']:<{width_op}}  {r['shapes']:<{width_shapes}}  {r['max_abs']:11.2e}  "
              f"{r['max_rel']:11.2e}  {'PASS' if r['passed'] else 'FAIL'}")
    failed = sum(not r["passed"] for r in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} checks passed" +
          (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
