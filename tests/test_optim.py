"""autograd.optim: updates against hand-written equations, decay groups, clipping, schedules,
exact resume, and the float32 bugs that NumPy autograd projects have shipped."""
import json
import math

import numpy as np
import pytest

from autograd import manual_seed
from autograd import functional as F
from autograd import optim
from autograd.nn import Embedding, LayerNorm, Linear, Module, Parameter, Sequential
from autograd.optim import (SGD, AdamW, clip_grad_norm, constant_lr, cosine_with_warmup,
                            decay_groups, join_arrays, lr_schedule, split_arrays)

RNG = np.random.default_rng(1234)


def param(shape, dtype=np.float64):
    return Parameter(RNG.standard_normal(shape).astype(dtype))


# -- the update equations, two steps by hand ----------------------------------------------------


def test_adamw_two_steps_match_the_equations():
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.95), 1e-6, 0.1
    p = param((3, 4))
    p0 = p.data.copy()
    grads = [RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))]
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)

    expected, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        p.grad = g.copy()
        opt.step()
        expected = expected * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        expected = expected - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)
    state = opt.state_dict()["state"]["0"]
    assert state["step"] == 2
    np.testing.assert_allclose(state["exp_avg"], m, rtol=1e-12)
    np.testing.assert_allclose(state["exp_avg_sq"], v, rtol=1e-12)


def test_adamw_first_step_moves_each_coordinate_by_about_lr():
    # m_hat / sqrt(v_hat) = g / |g| on step 1: a sign step, whatever the gradient's scale.
    p = param(50)
    p0 = p.data.copy()
    p.grad = RNG.standard_normal(50) * 1e-3
    AdamW([p], lr=0.1, weight_decay=0.0, eps=1e-12).step()
    np.testing.assert_allclose(p0 - p.data, 0.1 * np.sign(p.grad), rtol=1e-6)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.0), (0.5, False, 0.1)])
def test_sgd_two_steps_match_the_equations(momentum, nesterov, wd):
    lr = 0.05
    p = param((4, 2))
    expected = p.data.copy()
    opt = SGD([p], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    buf = None
    for _ in range(2):
        g = RNG.standard_normal((4, 2))
        p.grad = g.copy()
        opt.step()
        d = g + wd * expected
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        expected = expected - lr * d
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [SGD, AdamW])
def test_a_transposed_parameter_is_made_c_ordered_and_updated_as_its_copy_is(make):
    # A Llama weight loaded from a Hugging Face file is the transposed view of the stored
    # matrix; the optimizer takes a C-ordered copy, and updates it exactly as it would a
    # parameter that was C-ordered from the start.
    stored = RNG.standard_normal((5, 3)).astype(np.float32)
    transposed, plain = Parameter(stored.T), Parameter(np.ascontiguousarray(stored.T))
    assert not transposed.data.flags.c_contiguous
    optimizers = [make([transposed], lr=0.1), make([plain], lr=0.1)]
    assert transposed.data.flags.c_contiguous and not np.shares_memory(transposed.data, stored)
    for _ in range(2):
        grad = RNG.standard_normal((3, 5)).astype(np.float32)
        for p, opt in zip((transposed, plain), optimizers):
            p.grad = grad.copy()
            opt.step()
    np.testing.assert_array_equal(transposed.data, plain.data)
    assert not np.array_equal(plain.data, stored.T)                  # they did move


def test_per_group_settings_override_the_defaults():
    a, b = param(3), param(3)
    a0, b0 = a.data.copy(), b.data.copy()
    a.grad, b.grad = np.ones(3), np.ones(3)
    SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1).step()
    np.testing.assert_allclose(a0 - a.data, 0.1)
    np.testing.assert_allclose(b0 - b.data, 0.5)


# -- weight decay groups ------------------------------------------------------------------------


class Net(Module):
    def __init__(self):
        super().__init__()
        self.wte = Embedding(7, 4)
        self.fc = Linear(4, 4)
        self.ln = LayerNorm(4)
        self.out = Linear(4, 3, bias=False)


def test_decay_groups_split_matrices_from_vectors():
    net = Net()
    decay, no_decay = decay_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] == [net.wte.weight, net.fc.weight, net.out.weight]
    assert no_decay["params"] == [net.fc.bias, net.ln.weight, net.ln.bias]
    decay, no_decay = decay_groups(net, 0.1, no_decay_embeddings=True)
    assert net.wte.weight in no_decay["params"] and net.wte.weight not in decay["params"]
    net.fc.requires_grad_(False)
    assert all(p is not net.fc.weight for group in decay_groups(net, 0.1)
               for p in group["params"])


def test_weight_decay_is_not_applied_to_groups_that_exclude_it():
    # With zero gradients Adam's step is 0, so only the decay can move a parameter.
    net = Net()
    before = {name: p.data.copy() for name, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = np.zeros_like(p.data)
    lr, wd = 0.1, 0.5
    AdamW(decay_groups(net, wd), lr=lr).step()
    for name, p in net.named_parameters():
        if p.ndim >= 2:
            np.testing.assert_allclose(p.data, before[name] * (1 - lr * wd), rtol=1e-6)
        else:
            np.testing.assert_array_equal(p.data, before[name])


# -- skipping, in place, dtypes: bugs that shipped ---------------------------------------------


def test_step_updates_float32_weights_in_place():
    """Updating a copy (`p = p - lr * u`, or `p.data = ...` on a temporary) leaves the model's
    weights unchanged. Here an alias taken before the step must see every element move."""
    for opt_class, kwargs in ((AdamW, dict(lr=1e-5)), (SGD, dict(lr=1e-3, momentum=0.9))):
        p = param((64, 32), np.float32)
        p.data += 1.0                                   # weights ~1: ulp ~1.2e-7
        alias, before = p.data, p.data.copy()
        opt = opt_class([p], **kwargs)
        for _ in range(2):
            p.grad = RNG.standard_normal((64, 32)).astype(np.float32)
            opt.step()
        assert p.data is alias, "the optimizer rebound p.data instead of updating in place"
        assert p.dtype == np.float32
        assert np.all(alias != before), "some weights did not move: the update rounded away"


def test_tiny_adamw_updates_do_not_round_away_in_float32():
    # Adam's first step is lr * sign(g): with lr = 1e-5 on weights of size 1 that is ~80 ulps.
    p = Parameter(np.ones(1000, np.float32))
    # Gradients well above eps (1e-8), so that m_hat / (sqrt(v_hat) + eps) is +-1 to 1e-6.
    p.grad = (RNG.choice([-1, 1], 1000) * RNG.uniform(1e-3, 1.0, 1000)).astype(np.float32)
    AdamW([p], lr=1e-5, weight_decay=0.0).step()
    np.testing.assert_allclose(1.0 - p.data, 1e-5 * np.sign(p.grad), rtol=0.02)


def test_dtypes_are_kept():
    for dtype in (np.float32, np.float64):
        p = param((5,), dtype)
        opt = AdamW([p])
        p.grad = RNG.standard_normal(5)                 # a float64 gradient, even for float32
        opt.step()
        assert p.dtype == dtype
        assert opt.state[0]["exp_avg"].dtype == dtype


def test_frozen_parameters_and_missing_gradients_are_skipped():
    frozen, no_grad, live = param(3), param(3), param(3)
    frozen.requires_grad = False
    frozen.grad = np.ones(3)                     # even with a stale gradient lying around
    live.grad = np.ones(3)
    before = [p.data.copy() for p in (frozen, no_grad, live)]
    opt = AdamW([frozen, no_grad, live], lr=0.1)
    opt.step()
    np.testing.assert_array_equal(frozen.data, before[0])
    np.testing.assert_array_equal(no_grad.data, before[1])
    assert not np.array_equal(live.data, before[2])
    assert list(opt.state) == [2]


def test_slicing_gives_the_same_result_as_whole_tensors(monkeypatch):
    """The update loops work on CHUNK-sized slices; odd slice sizes, non-contiguous
    parameters and Fortran-ordered gradients must not change a single bit."""
    shapes = [(37, 11), (5,), (300,)]
    data = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[RNG.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]

    def run(chunk, fortran):
        monkeypatch.setattr(optim, "CHUNK", chunk)
        params = [Parameter(np.asfortranarray(d) if fortran else d.copy()) for d in data]
        opts = [AdamW(params, lr=0.01), SGD(params, lr=0.01, momentum=0.9, nesterov=True)]
        for step_grads in grads:
            for opt in opts:
                for p, g in zip(params, step_grads):
                    p.grad = np.asfortranarray(g) if fortran else g
                opt.step()
        return [p.data for p in params]

    reference = run(1 << 30, False)
    for chunk, fortran in ((7, False), (64, False), (7, True)):
        for a, b in zip(run(chunk, fortran), reference):
            np.testing.assert_array_equal(a, b)


# -- clip_grad_norm -----------------------------------------------------------------------------


def test_clip_grad_norm_caps_the_global_norm_and_returns_the_old_one():
    params = [param((4, 5), np.float32), param(7, np.float32), param(3, np.float32)]
    params[2].grad = None                                # skipped
    for p in params[:2]:
        p.grad = RNG.standard_normal(p.shape).astype(np.float32) * 10
    grads = [p.grad.copy() for p in params[:2]]
    expected = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    norm = clip_grad_norm(params, 1.0)
    assert norm == pytest.approx(expected, rel=1e-6)
    after = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params[:2]))
    assert after <= 1.0 * (1 + 1e-6)
    assert after == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, grads):                      # the direction is unchanged
        np.testing.assert_allclose(p.grad, g * (1.0 / expected), rtol=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone():
    p = param(4)
    p.grad = np.array([0.1, 0.2, 0.0, 0.2])
    assert clip_grad_norm([p], 1.0) == pytest.approx(0.3)
    np.testing.assert_array_equal(p.grad, [0.1, 0.2, 0.0, 0.2])


def test_clip_grad_norm_reports_non_finite_norms_without_scaling():
    p, q = param(3), param(3)
    p.grad, q.grad = np.array([1.0, np.inf, 2.0]), np.array([1.0, 2.0, 3.0])
    assert clip_grad_norm([p, q], 1.0) == math.inf
    np.testing.assert_array_equal(q.grad, [1.0, 2.0, 3.0])
    p.grad = np.array([np.nan, 0, 0])
    assert math.isnan(clip_grad_norm([p, q], 1.0))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([p], 0.0)


# -- saving and resuming ------------------------------------------------------------------------


def _model_and_batches(seed):
    manual_seed(seed)
    model = Sequential(Embedding(10, 6), LayerNorm(6), Linear(6, 10))
    rng = np.random.default_rng(seed)
    batches = [(rng.integers(0, 10, (4, 5)), rng.integers(0, 10, (4, 5))) for _ in range(8)]
    return model, batches


def _train(model, opt, batches):
    for ids, targets in batches:
        opt.zero_grad()
        F.cross_entropy(model(ids), targets).backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda m: AdamW(decay_groups(m, 0.1), lr=3e-3, betas=(0.8, 0.99)),
    lambda m: SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
])
def test_resume_from_a_saved_state_is_bitwise_identical(tmp_path, make_opt):
    model, batches = _model_and_batches(0)
    opt = make_opt(model)
    _train(model, opt, batches)                             # 2N straight

    resumed, _ = _model_and_batches(0)
    opt1 = make_opt(resumed)
    _train(resumed, opt1, batches[:4])                      # N steps, then save to disk
    skeleton, arrays = split_arrays(opt1.state_dict())
    (tmp_path / "opt.json").write_text(json.dumps(skeleton))
    np.savez(tmp_path / "opt.npz", **arrays)
    weights = {k: v.copy() for k, v in resumed.state_dict().items()}

    fresh, _ = _model_and_batches(1)                        # a different initialisation...
    fresh.load_state_dict(weights)
    opt2 = make_opt(fresh)
    opt2.lr = 123.0                                         # ...and settings the load restores
    with np.load(tmp_path / "opt.npz") as npz:
        opt2.load_state_dict(join_arrays(json.loads((tmp_path / "opt.json").read_text()), npz))
    _train(fresh, opt2, batches[4:])                        # N more

    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_state_dict_is_plain_data():
    model, batches = _model_and_batches(0)
    opt = AdamW(decay_groups(model, 0.1))
    _train(model, opt, batches[:1])
    skeleton, arrays = split_arrays(opt.state_dict())
    json.dumps(skeleton)                                    # would raise on anything exotic
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    groups = opt.state_dict()["param_groups"]
    assert groups[0]["params"] == [0, 1] and groups[1]["params"] == [2, 3, 4]
    assert groups[0]["betas"] == [0.9, 0.999]


def test_load_state_dict_rejects_a_state_for_another_model():
    model, batches = _model_and_batches(0)
    opt = AdamW(decay_groups(model, 0.1))
    _train(model, opt, batches[:1])
    state = opt.state_dict()

    with pytest.raises(ValueError, match="2 parameter groups, this optimizer has 1"):
        AdamW(model.parameters()).load_state_dict(state)
    other = Sequential(Embedding(10, 6), LayerNorm(6), Linear(6, 11))
    with pytest.raises(ValueError, match=r"shape \(6, 10\), but the parameter has shape "
                                         r"\(6, 11\)"):
        AdamW(decay_groups(other, 0.1)).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        AdamW(decay_groups(model, 0.1)).load_state_dict(
            SGD(decay_groups(model, 0.1), momentum=0.9).state_dict() | {"state": {"0": {}}})


# -- construction errors and the lr property ------------------------------------------------


def test_construction_errors_are_clear():
    p = param(2)
    with pytest.raises(TypeError, match="model.parameters()"):
        AdamW(Linear(2, 2))
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(ValueError, match="twice"):
        AdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        SGD([p], lr=-1)
    with pytest.raises(ValueError, match="unknown settings"):
        AdamW([{"params": [p], "momentum": 0.9}])


def test_lr_property_sets_every_group():
    opt = AdamW([{"params": [param(2)]}, {"params": [param(2)], "lr": 5.0}], lr=1.0)
    assert opt.lr == 1.0
    opt.lr = 0.25
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_optimizer_zero_grad():
    a, b = param(2), param(2)
    a.grad, b.grad = np.ones(2), np.ones(2)
    SGD([a, b]).zero_grad()
    assert a.grad is None and b.grad is None


# -- schedules ----------------------------------------------------------------------------------


def test_cosine_schedule_warmup_peak_and_floor():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    warm = [cosine_with_warmup(s, **kw) for s in range(10)]
    np.testing.assert_allclose(np.diff(warm), 0.1)              # linear
    assert warm[0] == pytest.approx(0.1) and warm[-1] == pytest.approx(1.0)
    assert cosine_with_warmup(10, **kw) == pytest.approx(1.0)   # the peak
    assert cosine_with_warmup(60, **kw) == pytest.approx(0.55)  # halfway: the mean
    decay = [cosine_with_warmup(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert cosine_with_warmup(110, **kw) == 0.1                 # the floor...
    assert cosine_with_warmup(10_000, **kw) == 0.1              # ...for ever
    assert cosine_with_warmup(109, **kw) > 0.1


def test_constant_schedule_and_factory():
    assert [constant_lr(s, 0.3) for s in (0, 5, 10_000)] == [0.3, 0.3, 0.3]
    assert constant_lr(1, 0.4, warmup_steps=4) == pytest.approx(0.2)
    schedule = lr_schedule("cosine", 1.0, warmup_steps=2, total_steps=10, min_lr=0.0)
    assert schedule(1) == 1.0 and schedule(10) == 0.0
    assert lr_schedule("constant", 0.5)(99) == 0.5


def test_schedule_errors():
    with pytest.raises(ValueError, match="total_steps"):
        cosine_with_warmup(0, 1.0, warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="min_lr"):
        cosine_with_warmup(0, 1.0, 0, 10, min_lr=2.0)
    with pytest.raises(ValueError, match="step"):
        constant_lr(-1, 1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_schedule("linear", 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        lr_schedule("cosine", 1.0)
