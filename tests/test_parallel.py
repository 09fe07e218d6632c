"""Data-parallel threads: the same gradients as one pass over the whole batch, repeatably."""
import numpy as np
import pytest

from autograd import Tensor, no_grad
from autograd.parallel import (DataParallel, ShardGrads, blas_threads, limit_blas_threads,
                               split_batch)
from autograd.tensor import leaf_grads_to
from gpt import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=19, block_size=8, n_layer=2, n_head=2, n_embd=16)


def batch(seed=0, n=6):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 19, size=(n, 9))
    return idx[:, :-1], idx[:, 1:]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sharded_gradients_equal_whole_batch_gradients(threads):
    model = GPT(CONFIG, rng=np.random.default_rng(0)).to(np.float64)
    x, y = batch()
    model.loss(x, y).backward()
    expected = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    slices = split_batch(len(x), threads)
    with DataParallel(threads) as parallel:
        losses = parallel.backward(model.loss, [(x[s], y[s]) for s in slices],
                                   model.parameters(),
                                   [(s.stop - s.start) / len(x) for s in slices])
    assert len(losses) == len(slices)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_shard_grads_add_up_without_writing_into_the_arrays_handed_over():
    x = Tensor(np.ones(3), requires_grad=True)
    shard_grads = ShardGrads()
    with leaf_grads_to(shard_grads.add):
        (x * 2.0).sum().backward()
        first = shard_grads[id(x)]
        (x * 3.0).sum().backward()
    assert x.grad is None
    np.testing.assert_array_equal(shard_grads[id(x)], [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(first, [2.0, 2.0, 2.0])


def test_parallel_backward_is_repeatable_with_dropout():
    config = GPTConfig(vocab_size=19, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.3)
    x, y = batch(1, n=8)
    results = []
    for _ in range(2):
        model = GPT(config, rng=np.random.default_rng(0))
        slices = split_batch(8, 2)
        with DataParallel(2) as parallel:
            parallel.backward(model.loss, [(x[s], y[s]) for s in slices], model.parameters(),
                              [0.5, 0.5], rngs=[np.random.default_rng(i) for i in range(2)])
        results.append([p.grad.copy() for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_map_runs_forward_passes_in_threads():
    model = GPT(CONFIG, rng=np.random.default_rng(0))
    x, y = batch(2)
    with no_grad():
        expected = [model.loss(x[i:i + 2], y[i:i + 2]).item() for i in range(0, 6, 2)]
    with DataParallel(2) as parallel:
        got = parallel.map(lambda i: model.loss(x[i:i + 2], y[i:i + 2]).item(), [0, 2, 4])
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("threads", [2, 3])
def test_optimizer_step_in_threads_equals_serial_step(threads):
    """AdamW's update shared out over threads, by parameter: bit for bit the serial update."""
    from autograd.optim import AdamW, decay_groups
    x, y = batch(3)
    models, optimizers = [], []
    for _ in range(2):
        model = GPT(CONFIG, rng=np.random.default_rng(0))
        models.append(model)
        optimizers.append(AdamW(decay_groups(model, 0.1), lr=1e-2))
    with DataParallel(threads) as parallel:
        for _ in range(3):
            for model, optimizer in zip(models, optimizers):
                model.zero_grad()
                model.loss(x, y).backward()
            optimizers[0].step()
            optimizers[1].step(parallel)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_map_parts_balances_by_size():
    seen = []
    with DataParallel(2) as parallel:
        parallel.map_parts(lambda part: seen.append(sorted(part)), [5, 1, 4, 2, 3, 1],
                           [50, 10, 40, 20, 30, 10])
    assert sorted(seen) == [[1, 2, 5], [1, 3, 4]]          # 80 and 80


def test_split_batch():
    assert split_batch(5, 2) == [slice(0, 2), slice(2, 5)] or \
        split_batch(5, 2) == [slice(0, 3), slice(3, 5)]
    assert split_batch(3, 8) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert sum(s.stop - s.start for s in split_batch(17, 4)) == 17


def test_blas_thread_limit_is_restored():
    before = blas_threads()
    with limit_blas_threads(1) as ok:
        if ok:
            assert blas_threads() == 1
    assert blas_threads() == before


def test_bad_arguments():
    with pytest.raises(ValueError, match="one weight"):
        with DataParallel(1) as parallel:
            parallel.backward(lambda: Tensor(0.0), [()], [], [])
