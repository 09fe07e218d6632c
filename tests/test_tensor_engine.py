"""The engine around the chain rule: the rule for inputs that need no gradient, where leaf
gradients go, the op hook and the profiler on it, and no process-wide change on import."""
import ctypes
import os
import platform
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from autograd import Tensor, concatenate, no_grad, stack
from autograd.profiler import profile
from autograd.tensor import leaf_grads_to, op_hook

# Every op of autograd/tensor.py with more than one input, and shapes it accepts.
MULTI_INPUT_OPS = {
    "add": (lambda a, b: a + b, [(2, 3), (3,)]),
    "sub": (lambda a, b: a - b, [(2, 3), (2, 1)]),
    "mul": (lambda a, b: a * b, [(2, 3), (3,)]),
    "div": (lambda a, b: a / b, [(2, 3), (2, 3)]),
    "matmul": (lambda a, b: a @ b, [(2, 3), (3, 4)]),
    "concatenate": (lambda a, b: concatenate([a, b], axis=0), [(2, 3), (1, 3)]),
    "stack": (lambda a, b: stack([a, b], axis=1), [(2, 3), (2, 3)]),
}


def leaf_grads(op: str, needs: tuple[bool, bool]) -> list:
    """The gradients of sum(op(a, b) * weights) reaching a and b (None where none arrived)."""
    fn, shapes = MULTI_INPUT_OPS[op]
    rng = np.random.default_rng(0)
    inputs = [Tensor(rng.uniform(1, 2, shape), requires_grad=need)      # > 0: a safe divisor
              for shape, need in zip(shapes, needs)]
    out = fn(*inputs)
    (out * Tensor(rng.standard_normal(out.shape))).sum().backward()
    return [t.grad for t in inputs]


@pytest.mark.parametrize("op", MULTI_INPUT_OPS)
@pytest.mark.parametrize("needs", [(True, False), (False, True)])
def test_backward_returns_none_for_each_input_that_needs_no_gradient(op, needs):
    fn, shapes = MULTI_INPUT_OPS[op]
    a, b = (Tensor(np.ones(shape), requires_grad=need) for shape, need in zip(shapes, needs))
    out = fn(a, b)
    grads = out._backward(np.ones(out.shape))
    for t, g in zip((a, b), grads):
        if t.requires_grad:
            assert g is not None and g.shape == t.shape
        else:
            assert g is None
    # ... and the input that does need one gets the gradient it gets when both do.
    expected = leaf_grads(op, (True, True))
    got = leaf_grads(op, needs)
    for need, g, e in zip(needs, got, expected):
        if need:
            np.testing.assert_allclose(g, e, rtol=1e-12)
        else:
            assert g is None


def test_a_constant_operand_gets_no_gradient():
    x = Tensor(np.ones(3), requires_grad=True)
    for out in (x + 1.0, 2.0 - x, x * 2.0, 1.0 / x, x @ np.ones((3, 2))):
        grads = out._backward(np.ones(out.shape))
        assert sum(g is None for g in grads) == 1, out._op


def test_leaf_grads_to_redirects_this_threads_leaf_gradients_only():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    received = []
    other_thread_grads = []

    def other_thread():
        y = Tensor(np.array([3.0, 4.0]), requires_grad=True)
        (y * y).sum().backward()
        other_thread_grads.append(y.grad)

    with leaf_grads_to(lambda leaf, g: received.append((leaf, g.copy()))):
        (x * x).sum().backward()
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert x.grad is None
    assert len(received) == 1 and received[0][0] is x
    np.testing.assert_array_equal(received[0][1], [2.0, 4.0])
    np.testing.assert_array_equal(other_thread_grads[0], [6.0, 8.0])
    (x * x).sum().backward()              # after the block: into .grad again
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_leaf_grad_is_a_copy_not_an_array_another_tensor_holds():
    x = Tensor(np.ones(2), requires_grad=True)
    y = Tensor(np.ones(2), requires_grad=True)
    (x + y).sum().backward()              # add hands the same array to both inputs
    x.grad += 1
    np.testing.assert_array_equal(y.grad, [1.0, 1.0])


def test_op_hook_sees_every_op_and_wraps_its_backward():
    made, backward_calls = [], []

    def hook(op, backward):
        made.append(op)

        def wrapped(g):
            backward_calls.append(op)
            return backward(g)
        return wrapped

    x = Tensor(np.array([0.5, 1.0]), requires_grad=True)
    with op_hook(hook):
        loss = (x * 3.0).exp().sum()
        with no_grad():
            x + 1.0                       # not recorded, but still an op the hook sees
    (x * 2.0).sum()                       # after the block: not seen
    loss.backward()
    assert made == ["mul", "exp", "sum", "add"]
    assert backward_calls == ["sum", "exp", "mul"]
    np.testing.assert_allclose(x.grad, 3.0 * np.exp(3.0 * x.data))


def test_profiler_counts_ops_and_times_their_backward():
    x = Tensor(np.random.default_rng(0).standard_normal((8, 8)), requires_grad=True)
    with profile() as prof:
        (x @ x).tanh().sum().backward()
    (x * 2.0).sum().backward()            # after the block: not counted
    assert dict(prof.calls) == {"matmul": 1, "tanh": 1, "sum": 1}
    assert set(prof.backward) == {"matmul", "tanh", "sum"}
    assert set(prof.totals()) == {"matmul", "tanh", "sum"}
    assert prof.table().splitlines()[0].split()[0] == "op"


# Prints how many bytes of mmapped memory a fresh 64 MB array took: all of it with glibc's
# default thresholds, none once keep_freed_memory() has raised them.
MALLOC_CHILD = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    import autograd, bpe, gpt
    from autograd.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                    "keepcost".split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tune":
        keep_freed_memory()
    before = libc.mallinfo2().hblkhd
    block = np.empty(64 << 20, np.uint8)
    print(libc.mallinfo2().hblkhd - before)
""")


def mmapped_bytes_of_a_64mb_array(mode: str, opt_out: bool = False) -> int:
    env = {k: v for k, v in os.environ.items() if k != "DU_KEEP_MALLOC"}
    if opt_out:
        env["DU_KEEP_MALLOC"] = "1"
    done = subprocess.run([sys.executable, "-c", MALLOC_CHILD, mode], capture_output=True,
                          text=True, env=env, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or
                    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_malloc_is_tuned_only_by_the_explicit_call():
    assert mmapped_bytes_of_a_64mb_array("import only") >= 64 << 20
    assert mmapped_bytes_of_a_64mb_array("tune") == 0
    assert mmapped_bytes_of_a_64mb_array("tune", opt_out=True) >= 64 << 20
