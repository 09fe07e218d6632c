"""End to end: small networks built from autograd.nn and trained with autograd.optim learn tasks
that no linear model can. If any backward pass (linear, tanh/gelu, layer norm, cross-entropy)
or the optimizer were wrong, these accuracies would not be reached."""
import numpy as np
import pytest

from autograd import Tensor, manual_seed
from autograd import functional as F
from autograd.nn import GELU, LayerNorm, Linear, Sequential, Tanh
from autograd.optim import SGD, AdamW, clip_grad_norm, cosine_with_warmup, decay_groups

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0])


def two_moons(n, noise, rng):
    """Two interleaved half circles: class 0 the upper one, class 1 the lower, shifted one."""
    angles = rng.uniform(0, np.pi, n)
    labels = rng.integers(0, 2, n)
    x = np.where(labels == 0, np.cos(angles), 1 - np.cos(angles))
    y = np.where(labels == 0, np.sin(angles), 0.5 - np.sin(angles))
    points = np.stack([x, y], axis=1) + rng.normal(0, noise, (n, 2))
    return points.astype(np.float32), labels


def fit(model, opt, x, y, steps, schedule=None, max_norm=None):
    for step in range(steps):
        if schedule is not None:
            opt.lr = schedule(step)
        opt.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        if max_norm is not None:
            clip_grad_norm(model.parameters(), max_norm)
        opt.step()
    return loss.item()


def accuracy(model, x, y):
    model.eval()
    return float((model(Tensor(x)).data.argmax(axis=1) == y).mean())


@pytest.mark.parametrize("make_opt", [
    lambda m: AdamW(decay_groups(m, 1e-4), lr=0.05),
    lambda m: SGD(m.parameters(), lr=0.2, momentum=0.9),
], ids=["adamw", "sgd-momentum"])
def test_mlp_learns_xor(make_opt):
    manual_seed(0)
    model = Sequential(Linear(2, 8), Tanh(), Linear(8, 2))
    loss = fit(model, make_opt(model), XOR_X, XOR_Y, steps=300)
    assert accuracy(model, XOR_X, XOR_Y) == 1.0
    assert loss < 0.05


def test_a_linear_model_cannot_learn_xor():
    # The control: without a hidden layer XOR is out of reach (at most 3 of 4 right), so the
    # test above measures what the nonlinearity and backprop through it add.
    manual_seed(0)
    model = Linear(2, 2)
    fit(model, AdamW(model.parameters(), lr=0.05), XOR_X, XOR_Y, steps=300)
    assert accuracy(model, XOR_X, XOR_Y) <= 0.75


def test_mlp_with_layer_norm_separates_two_moons():
    rng = np.random.default_rng(0)
    x_train, y_train = two_moons(200, 0.1, rng)
    x_test, y_test = two_moons(500, 0.1, rng)
    manual_seed(0)
    # Narrow on purpose: with wide layers the last ones could fit random features of the first,
    # and a wrong gradient in an early layer would go unnoticed.
    model = Sequential(Linear(2, 6), GELU(), LayerNorm(6), Linear(6, 6), GELU(), Linear(6, 2))
    opt = AdamW(decay_groups(model, 0.01), lr=0.01)
    fit(model, opt, x_train, y_train, steps=400, max_norm=1.0,
        schedule=lambda s: cosine_with_warmup(s, 0.02, 20, 400, 0.002))
    assert accuracy(model, x_test, y_test) > 0.95

    manual_seed(0)
    linear = Linear(2, 2)
    fit(linear, AdamW(linear.parameters(), lr=0.02), x_train, y_train, steps=400)
    assert accuracy(linear, x_test, y_test) < 0.93        # the moons are not linearly separable
