"""Every op: a float64 gradient check, fused ops against their composed references, forward
values against plain NumPy, dtypes, bad input."""
import math

import numpy as np
import pytest

from autograd import Tensor, concatenate, no_grad, reference, stack
from autograd import functional as F
from autograd.gradcheck import OP_CHECKS, gradcheck
from autograd.ops import attention as attention_ops
from autograd.ops.attention import attention_backward, attention_blocks, attention_forward
from autograd.ops.layer_norm import layer_norm_backward, layer_norm_forward
from autograd.ops.linear import linear_backward, linear_forward
from autograd.ops.softmax import linear_cross_entropy_backward, linear_cross_entropy_forward
from autograd.ops.sums import col_sums, row_means, row_sums


@pytest.mark.parametrize("check", OP_CHECKS, ids=[f"{c.op}:{c.shapes}" for c in OP_CHECKS])
def test_gradcheck(check):
    fn, inputs = check.build(np.random.default_rng(1234))
    result = gradcheck(fn, inputs)
    assert result.passed, f"{check.op} {check.shapes}: abs {result.max_abs_error:.2e} " \
                          f"rel {result.max_rel_error:.2e}"


def test_gradcheck_table_lists_every_functional_op():
    assert set(F.__all__) - {"causal_bias", "rope_frequencies"} <= {c.op for c in OP_CHECKS}


def test_gradcheck_catches_a_wrong_backward():
    def wrong_square(x):
        return Tensor._make(x.data ** 2, (x,), lambda g: (g * x.data,), "wrong")  # misses 2
    x = Tensor(np.random.default_rng(0).standard_normal(5), requires_grad=True)
    assert not gradcheck(wrong_square, [x]).passed


def test_gradcheck_rejects_float32():
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda x: x * 2, [Tensor(np.ones(3, np.float32), requires_grad=True)])


# -- every fused op against its composed reference (autograd.reference), float64 -----------


class RefCase:
    """One fused op call: F.<op> and reference.<op> on equal float64 inputs.

    `inputs(rng)` gives the positional arguments (Tensors, arrays of ids, None); `kwargs()` a
    fresh dict for each call (a dropout generator must start from the same seed twice)."""

    def __init__(self, op: str, label: str, inputs, kwargs=dict):
        self.op, self.label, self.inputs, self.kwargs = op, label, inputs, kwargs


def _x(*shape, grad: bool = True, scale: float = 1.0):
    return lambda r: Tensor(r.standard_normal(shape) * scale, requires_grad=grad)


def _args(*makers):
    return lambda r: [m(r) if callable(m) else m for m in makers]


_ids = np.array([[1, 1, 4], [1, 0, 4]])
_targets = np.array([[0, 5, -100, 2], [6, 6, 1, -100]])

REF_CASES = [
    RefCase("linear", "x W b", _args(_x(2, 5, 4), _x(4, 3), _x(3))),
    RefCase("linear", "no bias", _args(_x(2, 5, 4), _x(4, 3), None)),
    RefCase("linear", "frozen weight", _args(_x(6, 4), _x(4, 3, grad=False), _x(3))),
    RefCase("softmax", "axis -1", _args(_x(3, 7, scale=3.0))),
    RefCase("softmax", "axis 0", _args(_x(3, 7)), lambda: dict(axis=0)),
    RefCase("log_softmax", "axis -1", _args(_x(3, 7, scale=3.0))),
    RefCase("log_softmax", "axis 1", _args(_x(2, 3, 4)), lambda: dict(axis=1)),
    RefCase("cross_entropy", "mean ignore_index", _args(_x(2, 4, 7), _targets)),
    RefCase("cross_entropy", "sum", _args(_x(2, 4, 7), _targets), lambda: dict(reduction="sum")),
    RefCase("cross_entropy", "none", _args(_x(2, 4, 7), _targets), lambda: dict(reduction="none")),
    RefCase("linear_cross_entropy", "mean ignore_index", _args(_x(2, 4, 5), _x(7, 5), _targets)),
    RefCase("linear_cross_entropy", "none, frozen weight",
            _args(_x(2, 4, 5), _x(7, 5, grad=False), _targets), lambda: dict(reduction="none")),
    RefCase("layer_norm", "w b", _args(_x(2, 3, 8, scale=3.0), _x(8), _x(8))),
    RefCase("layer_norm", "no weight, no bias", _args(_x(4, 6), None, None)),
    RefCase("layer_norm", "w only, frozen x", _args(_x(4, 6, grad=False), _x(6), None)),
    RefCase("layer_norm", "eps 0.1, frozen w", _args(_x(4, 6), _x(6, grad=False), _x(6)),
            lambda: dict(eps=0.1)),
    RefCase("gelu", "(4, 50) wide", _args(_x(4, 50, scale=4.0))),
    RefCase("embedding", "repeated ids", _args(_ids, _x(5, 3))),
    RefCase("dropout", "p=0.3", _args(_x(6, 9)), lambda: dict(p=0.3, rng=np.random.default_rng(7))),
    RefCase("dropout", "not training", _args(_x(6, 9)), lambda: dict(p=0.3, training=False)),
    RefCase("scaled_dot_product_attention", "causal T=S",
            _args(_x(2, 3, 6, 4), _x(2, 3, 6, 4), _x(2, 3, 6, 4))),
    RefCase("scaled_dot_product_attention", "causal T<S, frozen q",
            _args(_x(2, 3, 2, 4, grad=False), _x(2, 3, 7, 4), _x(2, 3, 7, 4))),
    RefCase("scaled_dot_product_attention", "not causal, frozen v",
            _args(_x(1, 2, 5, 4), _x(1, 2, 3, 4), _x(1, 2, 3, 4, grad=False)),
            lambda: dict(is_causal=False)),
    RefCase("scaled_dot_product_attention", "causal dropout",
            _args(_x(2, 2, 5, 4), _x(2, 2, 5, 4), _x(2, 2, 5, 4)),
            lambda: dict(dropout_p=0.25, rng=np.random.default_rng(11))),
    RefCase("multi_head_attention", "H=3", _args(_x(2, 5, 18), 3)),
    RefCase("multi_head_attention", "H=2 dropout", _args(_x(2, 5, 12), 2),
            lambda: dict(dropout_p=0.2, rng=np.random.default_rng(5))),
    RefCase("relu", "(3, 4)", _args(_x(3, 4))),
    RefCase("tanh", "(3, 4)", _args(_x(3, 4, scale=2.0))),
    RefCase("rms_norm", "w", _args(_x(2, 3, 8, scale=3.0), _x(8))),
    RefCase("rms_norm", "no weight, eps 0.1", _args(_x(4, 6), None), lambda: dict(eps=0.1)),
    RefCase("rms_norm", "frozen w", _args(_x(4, 6), _x(6, grad=False))),
    RefCase("rope", "start 0", _args(_x(2, 3, 5, 8))),
    RefCase("rope", "start 9, theta 5e5", _args(_x(1, 2, 3, 8), 9), lambda: dict(theta=500000.0)),
    RefCase("relu_squared", "(3, 4)", _args(_x(3, 4))),
    RefCase("swiglu", "(2, 3, 5)", _args(_x(2, 3, 5, scale=3.0), _x(2, 3, 5))),
    RefCase("swiglu", "frozen up", _args(_x(2, 3, 5), _x(2, 3, 5, grad=False))),
    RefCase("softcap", "cap 2", _args(_x(4, 6, scale=4.0), 2.0)),
    RefCase("repeat_kv", "n_rep 3", _args(_x(2, 2, 3, 4), 3)),
    RefCase("grouped_query_attention", "causal T<S",
            _args(_x(2, 4, 2, 3), _x(2, 2, 6, 3), _x(2, 2, 6, 3))),
    RefCase("grouped_query_attention", "not causal",
            _args(_x(1, 6, 3, 4), _x(1, 2, 5, 4), _x(1, 2, 5, 4)), lambda: dict(is_causal=False)),
]


def _fused_and_reference(case: RefCase, seed: int = 0):
    """(output, gradients) of F.<op> and of reference.<op> for the same inputs and seed."""
    results = []
    for module in (F, reference):
        args = case.inputs(np.random.default_rng(seed))
        out = getattr(module, case.op)(*args, **case.kwargs())
        d_out = np.random.default_rng(seed + 1).standard_normal(out.shape)
        out.backward(d_out)
        results.append((out.data, [a.grad for a in args if isinstance(a, Tensor)],
                        [a.requires_grad for a in args if isinstance(a, Tensor)]))
    return results


def test_every_fused_op_has_a_reference_and_a_case():
    ops = set(F.__all__) - {"causal_bias", "rope_frequencies"}
    assert ops == {c.op for c in REF_CASES}
    assert ops <= set(reference.__all__)


@pytest.mark.parametrize("case", REF_CASES, ids=[f"{c.op}:{c.label}" for c in REF_CASES])
def test_fused_op_matches_reference(case):
    (out, grads, needs), (ref_out, ref_grads, _) = _fused_and_reference(case)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    for grad, ref_grad, need in zip(grads, ref_grads, needs):
        if need:
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
        else:
            assert grad is None


@pytest.mark.parametrize("t,s", [(9, 9), (5, 11)])
def test_attention_in_query_blocks_matches_reference(monkeypatch, t, s):
    monkeypatch.setattr(attention_ops, "ATTENTION_QUERY_BLOCK", 2)
    case = RefCase("scaled_dot_product_attention", "blocks",
                   _args(_x(2, 2, t, 4), _x(2, 2, s, 4), _x(2, 2, s, 4)),
                   lambda: dict(dropout_p=0.2, rng=np.random.default_rng(3)))
    (out, grads, _), (ref_out, ref_grads, _) = _fused_and_reference(case)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)


# -- a backward skips (returns None for) every input that needs no gradient ------------------


def test_backwards_skip_the_gradients_not_needed():
    r = np.random.default_rng(0)
    x, w, b = r.standard_normal((6, 4)), r.standard_normal((4, 3)), r.standard_normal(3)
    y, saved = linear_forward(x, w, b)
    d_x, d_w, d_b = linear_backward(np.ones_like(y), saved, False, True, False)
    assert d_x is None and d_b is None and d_w.shape == w.shape

    y, saved = layer_norm_forward(x, w[:, 0], None, 1e-5)
    assert layer_norm_backward(np.ones_like(y), saved, False, False, False) == (None, None, None)
    d_x, d_w, d_b = layer_norm_backward(np.ones_like(y), saved, True, False, False)
    assert d_w is None and d_b is None and d_x.shape == x.shape

    loss, saved = linear_cross_entropy_forward(x, r.standard_normal((5, 4)),
                                               np.array([0, 1, 2, 3, 4, 0]), -100, "mean")
    d_x, d_w = linear_cross_entropy_backward(np.ones_like(loss), saved, True, False)
    assert d_w is None and d_x.shape == x.shape

    q, k, v = (r.standard_normal((1, 2, 3, 4)) for _ in range(3))
    out, saved = attention_forward(q, k, v, True, 0.0, None)
    d_q, d_k, d_v = attention_backward(np.ones_like(out), saved, False, False, True)
    assert d_q is None and d_k is None and d_v.shape == v.shape


def test_row_and_column_sums_are_sums():
    a = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    np.testing.assert_allclose(row_sums(a), a.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(col_sums(a), a.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(row_means(a), a.mean(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(row_sums(a.reshape(7, 1, 5)), a.sum(axis=1)[:, None], rtol=1e-5)
    assert row_sums(a).dtype == np.float32


# -- forward values against independent NumPy formulas ---------------------------------------

rng = np.random.default_rng(0)


def test_linear_forward():
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    y = F.linear(Tensor(x), Tensor(w), Tensor(b)).data
    expected = np.einsum("btc,co->bto", x, w) + b
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_softmax_and_log_softmax_forward():
    x = rng.standard_normal((3, 7)) * 10
    e = np.exp(x - x.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(F.softmax(Tensor(x)).data, expected, rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(Tensor(x)).data, np.log(expected), rtol=1e-10)
    # large logits must not overflow
    big = F.softmax(Tensor(np.array([[1000.0, 0.0]]))).data
    np.testing.assert_allclose(big, [[1.0, 0.0]])


def test_cross_entropy_forward_matches_definition():
    logits = rng.standard_normal((2, 5, 9))
    targets = rng.integers(0, 9, size=(2, 5))
    targets[0, :2] = -100
    loss = F.cross_entropy(Tensor(logits), targets).item()
    flat, t = logits.reshape(-1, 9), targets.reshape(-1)
    keep = t != -100
    nll = [math.log(np.exp(row).sum()) - row[k] for row, k in zip(flat[keep], t[keep])]
    assert loss == pytest.approx(np.mean(nll), rel=1e-12)
    per_position = F.cross_entropy(Tensor(logits), targets, reduction="none").data
    assert per_position.shape == (2, 5) and np.all(per_position[0, :2] == 0)
    assert F.cross_entropy(Tensor(logits), targets, reduction="sum").item() == \
        pytest.approx(np.sum(nll), rel=1e-12)


def test_cross_entropy_all_ignored_is_nan_not_a_crash():
    loss = F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([-100, -100]))
    assert np.isnan(loss.item())


def test_layer_norm_forward():
    x, w, b = rng.standard_normal((4, 6)) * 3 + 1, rng.standard_normal(6), rng.standard_normal(6)
    mu, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    expected = (x - mu) / np.sqrt(var + 1e-5) * w + b
    np.testing.assert_allclose(F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).data, expected,
                               rtol=1e-10, atol=1e-12)


def test_gelu_forward():
    x = np.linspace(-5, 5, 41)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, expected, rtol=1e-12, atol=1e-15)


def test_embedding_forward_and_repeated_ids_add_up():
    w = Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    ids = np.array([[1, 1, 4], [1, 0, 4]])
    out = F.embedding(ids, w)
    np.testing.assert_array_equal(out.data, w.data[ids])
    out.sum().backward()
    # id 1 appears three times, id 4 twice, id 0 once, ids 2 and 3 never.
    np.testing.assert_array_equal(w.grad[:, 0], [1, 3, 0, 0, 2])


def test_dropout_scales_and_masks():
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    y = F.dropout(x, p=0.2, training=True, rng=np.random.default_rng(3))
    kept = y.data != 0
    assert 0.75 < kept.mean() < 0.85
    np.testing.assert_allclose(y.data[kept], 1 / 0.8)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)       # same mask in backward
    assert F.dropout(x, p=0.2, training=False) is x


def _attention_reference(q, k, v, causal):
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    t, s = q.shape[-2], k.shape[-2]
    if causal:
        scores = np.where(np.tril(np.ones((t, s)), k=s - t) == 1, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


@pytest.mark.parametrize("t,s,causal", [(6, 6, True), (6, 6, False), (1, 6, True), (3, 7, True)])
def test_attention_forward(t, s, causal):
    q, k, v = (rng.standard_normal((2, 3, n, 4)) for n in (t, s, s))
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=causal)
    np.testing.assert_allclose(out.data, _attention_reference(q, k, v, causal), rtol=1e-10)


def test_attention_prefix_does_not_see_the_future():
    q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    prefix = F.scaled_dot_product_attention(Tensor(q[:, :, :3]), Tensor(k[:, :, :3]),
                                            Tensor(v[:, :, :3])).data
    np.testing.assert_allclose(full[:, :, :3], prefix, rtol=1e-12)


@pytest.mark.parametrize("t,s,dropout", [(7, 7, 0.0), (3, 7, 0.0), (7, 7, 0.3), (1, 7, 0.0)])
def test_causal_attention_in_query_blocks(monkeypatch, t, s, dropout):
    """Blocks of 2 queries (the default is 64): the blocked forward equals the reference, and
    its backward passes a float64 gradient check (rows and key columns split unevenly)."""
    monkeypatch.setattr(attention_ops, "ATTENTION_QUERY_BLOCK", 2)
    assert len(attention_blocks(t, s, True)) == math.ceil(t / 2)
    q, k, v = (rng.standard_normal((2, 3, n, 4)) for n in (t, s, s))
    if dropout == 0.0:
        out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v))
        np.testing.assert_allclose(out.data, _attention_reference(q, k, v, True), rtol=1e-10)

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout,
                                              rng=np.random.default_rng(5))
    inputs = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    assert gradcheck(attend, inputs).passed


def test_multi_head_attention_in_query_blocks(monkeypatch):
    qkv = Tensor(rng.standard_normal((2, 9, 12)), requires_grad=True)
    whole = F.multi_head_attention(qkv, 2).data
    monkeypatch.setattr(attention_ops, "ATTENTION_QUERY_BLOCK", 4)
    np.testing.assert_allclose(F.multi_head_attention(qkv, 2).data, whole, rtol=1e-12)
    assert gradcheck(lambda x: F.multi_head_attention(x, 2), [qkv]).passed


# -- engine behaviour ------------------------------------------------------------------------


def test_gradient_accumulates_over_uses_and_calls():
    x = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    y = x * x + x                 # x used three times
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)
    (x * 3).sum().backward()      # a second backward adds to .grad
    np.testing.assert_allclose(x.grad, 2 * x.data + 1 + 3)


def test_broadcast_gradients_are_reduced_to_each_shape():
    a = Tensor(np.ones((2, 3, 4)), requires_grad=True)
    b = Tensor(np.ones((3, 1)), requires_grad=True)
    (a * b).sum().backward()
    assert b.grad.shape == (3, 1)
    np.testing.assert_allclose(b.grad, 8.0)


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y.is_leaf


def test_second_backward_through_freed_graph_raises():
    x = Tensor(np.ones(3), requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    z = (x.exp() * 2).sum()
    z.backward(retain_graph=True)
    z.backward()                  # allowed with retain_graph the first time


def test_deep_graph_does_not_hit_recursion_limit():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 1.0)


def test_concatenate_stack_split_values():
    a, b = Tensor(np.arange(6.0).reshape(2, 3)), Tensor(np.arange(3.0).reshape(1, 3))
    np.testing.assert_array_equal(concatenate([a, b]).data,
                                  np.concatenate([a.data, b.data]))
    np.testing.assert_array_equal(stack([a, a], axis=2).data, np.stack([a.data, a.data], 2))
    left, right = a.split([1, 2], axis=1)
    np.testing.assert_array_equal(right.data, a.data[:, 1:])


# -- dtypes: float32 stays float32 through forward and backward ------------------------------


def test_float32_stays_float32_through_every_fused_op():
    r = np.random.default_rng(0)
    f32 = lambda *s: Tensor(r.standard_normal(s).astype(np.float32), requires_grad=True)  # noqa
    x, w, b = f32(2, 4, 8), f32(8, 8), f32(8)
    gamma, beta, wte = f32(8), f32(8), f32(10, 8)
    h = F.embedding(np.array([[1, 2, 3, 4], [4, 3, 2, 1]]), wte) + x
    h = F.layer_norm(h, gamma, beta)
    h = F.gelu(F.linear(h, w, b)) * math.sqrt(2 / math.pi) * np.sqrt(2 / np.pi)
    q = h.reshape(2, 4, 2, 4).transpose(1, 2)
    h = F.scaled_dot_product_attention(q, q, q, dropout_p=0.1).transpose(1, 2).reshape(2, 4, 8)
    h = F.dropout(h, 0.1) + F.softmax(h) + F.log_softmax(h) + h.tanh() + h.exp() * 0.01
    loss = F.cross_entropy(h, np.zeros((2, 4), dtype=np.int64))
    assert loss.dtype == np.float32
    loss.backward()
    for t in (x, w, b, gamma, beta, wte):
        assert t.grad.dtype == np.float32


def test_scalar_constants_do_not_promote():
    x = Tensor(np.ones(3, np.float32))
    assert (x * np.float64(2.5)).dtype == np.float32
    assert (np.float64(2.5) + x).dtype == np.float32
    assert (x / 3.0).dtype == np.float32
    assert (x ** 2).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32


# -- bad input: clear ValueErrors ------------------------------------------------------------


def test_matmul_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def test_backward_on_non_scalar_needs_a_gradient():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        y.backward()


def test_cross_entropy_target_out_of_range():
    with pytest.raises(ValueError, match="target 7 is out of range for 5 classes"):
        F.cross_entropy(Tensor(np.zeros((3, 5))), np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="do not match"):
        F.cross_entropy(Tensor(np.zeros((3, 5))), np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        F.cross_entropy(Tensor(np.zeros((2, 5))), np.array([0.0, 1.0]))


def test_other_shape_errors():
    with pytest.raises(ValueError, match="input has 3 features"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 2))))
    with pytest.raises(ValueError, match="id 9 is out of range"):
        F.embedding(np.array([1, 9]), Tensor(np.ones((5, 2))))
    with pytest.raises(ValueError, match="cannot reshape"):
        Tensor(np.ones(6)).reshape(4, 2)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        F.scaled_dot_product_attention(*(Tensor(np.ones((2, 3, 4))) for _ in range(3)))


def test_multi_head_attention_equals_split_heads_then_attention():
    B, T, H, D = 2, 5, 3, 4
    qkv = rng.standard_normal((B, T, 3 * H * D))
    fused = F.multi_head_attention(Tensor(qkv), H).data
    q, k, v = (qkv[..., i * H * D:(i + 1) * H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3)
               for i in range(3))
    expected = _attention_reference(q, k, v, causal=True).transpose(0, 2, 1, 3).reshape(B, T, -1)
    np.testing.assert_allclose(fused, expected, rtol=1e-10)


def test_linear_cross_entropy_equals_head_then_loss():
    x, w = rng.standard_normal((2, 5, 4)), rng.standard_normal((9, 4))
    t = rng.integers(0, 9, size=(2, 5))
    t[1, 2] = -100
    fused = F.linear_cross_entropy(Tensor(x), Tensor(w), t).item()
    composed = F.cross_entropy(Tensor(x @ w.T), t).item()
    assert fused == pytest.approx(composed, rel=1e-12)
    with pytest.raises(ValueError, match="weight must be"):
        F.linear_cross_entropy(Tensor(x), Tensor(w.T), t)
