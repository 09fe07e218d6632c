"""autograd.optim.Muon: Newton-Schulz against its derivation (singular vectors kept, singular
values sent through the quintic), the update against the equations, the shape scale, parameter
groups for Muon + AdamW, the combined optimizer, exact resume and argument errors."""
import json
import math

import numpy as np
import pytest

from autograd import functional as F
from autograd import manual_seed
from autograd.nn import Embedding, LayerNorm, Linear, Module, ModuleList, Parameter
from autograd.optim import (AdamW, Muon, MultiOptimizer, NEWTON_SCHULZ_COEFFICIENTS,
                            clip_grad_norm, join_arrays, lr_schedule, muon_param_groups,
                            muon_with_adamw, orthogonalise, split_arrays)
from autograd.parallel import DataParallel

RNG = np.random.default_rng(2024)

# Where five iterations of the quintic leave every singular value that starts at or above
# BAND_FLOOR * |G|_F (found by iterating the scalar polynomial on a fine grid).
BAND = (0.68, 1.21)
BAND_FLOOR = 2e-3


def quintic(x: np.ndarray, steps: int) -> np.ndarray:
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


def reference_newton_schulz(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """The iteration as written in the docstring, in float64, without tricks."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = g / (np.linalg.norm(g) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x


def with_spectrum(rows, cols, singular_values):
    """U diag(s) V^T with random orthonormal U (rows, k), V (cols, k)."""
    k = min(rows, cols)
    u, _ = np.linalg.qr(RNG.standard_normal((rows, k)))
    v, _ = np.linalg.qr(RNG.standard_normal((cols, k)))
    return u @ np.diag(singular_values) @ v.T, u, v


# -- Newton-Schulz ------------------------------------------------------------------------------


def test_the_band_constants_hold_for_the_scalar_quintic():
    x = np.logspace(np.log10(BAND_FLOOR), 0, 20001)
    y = quintic(x, 5)
    assert BAND[0] <= y.min() and y.max() <= BAND[1]
    assert quintic(np.array([BAND_FLOOR / 3]), 5)[0] < BAND[0]     # the floor is real


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (16, 16)])
def test_newton_schulz_keeps_singular_vectors_and_maps_singular_values_through_the_quintic(
        shape):
    """The derivation: p(X) = U p(S) V^T. So U^T NS(G) V must be diagonal, with the scalar
    quintic iterated on s_i / |G|_F on the diagonal, even for singular values outside the band."""
    k = min(shape)
    s = np.logspace(0, -3.5, k) * 7.0                   # condition number ~3000, any scale
    g, u, v = with_spectrum(*shape, s)
    o = orthogonalise(g).astype(np.float64)
    assert o.shape == shape
    core = u.T @ o @ v                                  # (k, k)
    expected = quintic(s / np.linalg.norm(s), 5)
    np.testing.assert_allclose(np.diag(core), expected, atol=2e-5)
    np.testing.assert_allclose(core - np.diag(np.diag(core)), 0.0, atol=2e-5)
    np.testing.assert_allclose(o, reference_newton_schulz(g), atol=2e-5)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (48, 200), (200, 48), (1, 10), (10, 1),
                                   (128, 384), (512, 128)])
def test_orthogonalised_random_matrices_have_singular_values_in_the_band(shape):
    g = RNG.standard_normal(shape)
    normalised = np.linalg.svd(g, compute_uv=False) / np.linalg.norm(g)
    assert normalised.min() >= BAND_FLOOR              # the test's premise
    singular_values = np.linalg.svd(orthogonalise(g).astype(np.float64), compute_uv=False)
    assert BAND[0] <= singular_values.min() and singular_values.max() <= BAND[1], \
        (singular_values.min(), singular_values.max())


def test_a_square_matrix_with_a_spread_spectrum_lands_in_the_band():
    g, _, _ = with_spectrum(32, 32, np.linspace(1.0, 0.05, 32))
    singular_values = np.linalg.svd(orthogonalise(g).astype(np.float64), compute_uv=False)
    assert BAND[0] <= singular_values.min() and singular_values.max() <= BAND[1]


def test_orientation_does_not_matter_and_zero_stays_zero():
    g = RNG.standard_normal((30, 70)).astype(np.float32)
    np.testing.assert_array_equal(orthogonalise(g.T), orthogonalise(g).T)
    zero = orthogonalise(np.zeros((5, 8)))
    assert zero.dtype == np.float32 and np.all(zero == 0.0)
    # the scale of the input is irrelevant: it is normalised away
    np.testing.assert_allclose(orthogonalise(g * 1e4), orthogonalise(g), rtol=1e-4, atol=1e-6)


def test_any_number_of_steps_follows_the_reference():
    g, _, _ = with_spectrum(20, 50, np.logspace(0, -2, 20))
    for steps in (1, 3, 8):
        o = orthogonalise(g, steps=steps).astype(np.float64)
        np.testing.assert_allclose(o, reference_newton_schulz(g, steps), atol=2e-5)


# -- the update ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,nesterov,wd", [((6, 10), True, 0.0), ((10, 6), True, 0.1),
                                               ((8, 8), False, 0.0)])
def test_muon_two_steps_match_the_equations(shape, nesterov, wd):
    lr, beta = 0.05, 0.9
    p = Parameter(RNG.standard_normal(shape))
    expected, m = p.data.copy(), np.zeros(shape)
    opt = Muon([p], lr=lr, momentum=beta, nesterov=nesterov, weight_decay=wd)
    fan_in, fan_out = shape
    for _ in range(2):
        g = RNG.standard_normal(shape)
        p.grad = g.copy()
        opt.step()
        m = beta * m + (1 - beta) * g
        u = (1 - beta) * g + beta * m if nesterov else m
        expected = expected * (1 - lr * wd)
        expected = expected - lr * math.sqrt(max(1.0, fan_out / fan_in)) * \
            reference_newton_schulz(u)
        # float32 GEMMs inside: the update agrees to float32's precision
        np.testing.assert_allclose(p.data, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(opt.state[0]["momentum_buffer"], m, rtol=1e-12, atol=1e-15)
    assert opt.state[0]["step"] == 2 and p.dtype == np.float64


@pytest.mark.parametrize("fan_in,fan_out", [(64, 256), (256, 64), (96, 96)])
def test_update_rms_is_lr_over_sqrt_fan_in_whatever_the_shape(fan_in, fan_out):
    """The scale sqrt(max(1, fan_out / fan_in)) makes the step's RMS lr / sqrt(fan_in), up to
    where in the band the singular values landed. The wrong axis would be 2x off on 64x256."""
    lr = 0.01
    p = Parameter(np.zeros((fan_in, fan_out), np.float32))
    p.grad, _, _ = with_spectrum(fan_in, fan_out, np.linspace(1.0, 0.3, min(fan_in, fan_out)))
    Muon([p], lr=lr).step()
    rms = float(np.sqrt(np.mean(p.data.astype(np.float64) ** 2)))
    assert BAND[0] <= rms / (lr / math.sqrt(fan_in)) <= BAND[1]


def test_muon_updates_float32_weights_in_place_and_skips_missing_gradients():
    a, b = (Parameter(RNG.standard_normal((12, 20)).astype(np.float32)) for _ in range(2))
    alias, before = a.data, a.data.copy()
    b_before = b.data.copy()
    opt = Muon([a, b], lr=1e-3)
    a.grad = RNG.standard_normal((12, 20))              # float64 gradient, float32 weights
    opt.step()
    assert a.data is alias and a.dtype == np.float32
    assert opt.state[0]["momentum_buffer"].dtype == np.float32
    assert np.all(alias != before)
    np.testing.assert_array_equal(b.data, b_before)
    assert list(opt.state) == [0]


class Tiny(Module):
    """The layout muon_param_groups expects: embeddings, a ModuleList of blocks, a head."""

    def __init__(self, vocab=11, width=8, tied=False):
        super().__init__()
        self.wte = Embedding(vocab, width)
        self.wpe = Embedding(6, width)
        self.h = ModuleList([Block(width) for _ in range(2)])
        self.ln_f = LayerNorm(width)
        self.tied = tied
        if not tied:
            self.head = Linear(width, vocab, bias=False)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(np.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        return x @ self.wte.weight.T if self.tied else self.head(x)


class Block(Module):
    def __init__(self, width):
        super().__init__()
        self.ln = LayerNorm(width)
        self.fc = Linear(width, 4 * width)
        self.proj = Linear(4 * width, width)

    def forward(self, x):
        return x + self.proj(F.relu(self.fc(self.ln(x))))


def test_muon_with_adamw_lowers_the_loss_of_a_tiny_model():
    manual_seed(3)
    model = Tiny()
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 11, (8, 6))
    targets = (3 * ids + 1) % 11                        # learnable: a function of the id
    opt = muon_with_adamw(model, lr=0.02, adamw_lr=0.01)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(ids), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]


# -- parameter groups ---------------------------------------------------------------------------


def test_muon_param_groups_send_block_matrices_to_muon_and_the_rest_to_adamw():
    model = Tiny()
    groups = muon_param_groups(model)
    blocks = model.h
    assert groups["matrices"] == [blocks[0].fc.weight, blocks[0].proj.weight,
                                  blocks[1].fc.weight, blocks[1].proj.weight]
    assert groups["embeddings"] == [model.wte.weight, model.wpe.weight]
    assert groups["head"] == [model.head.weight]
    vectors = groups["vectors"]
    assert all(p.ndim == 1 for p in vectors)
    assert len(vectors) == 2 * 4 + 2                    # per block: ln (2), fc, proj biases
    everything = [p for group in groups.values() for p in group]
    assert len(everything) == len(model.parameters())
    assert {id(p) for p in everything} == {id(p) for p in model.parameters()}

    tied = Tiny(tied=True)
    groups = muon_param_groups(tied)
    assert groups["head"] == [] and tied.wte.weight in groups["embeddings"]
    tied.h[1].requires_grad_(False)                     # frozen parameters go nowhere
    groups = muon_param_groups(tied)
    assert groups["matrices"] == [tied.h[0].fc.weight, tied.h[0].proj.weight]
    assert all(p.requires_grad for group in groups.values() for p in group)


def test_muon_with_adamw_builds_both_optimizers_with_the_settings_asked_for():
    model = Tiny()
    opt = muon_with_adamw(model, lr=0.03, momentum=0.9, weight_decay=0.01, adamw_lr=2e-3,
                          embedding_lr=0.1, head_lr=5e-3, adamw_weight_decay=0.05)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, AdamW)
    assert muon.param_groups[0]["params"] == muon_param_groups(model)["matrices"]
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in adamw.param_groups] == [
        ("embeddings", 0.1, 0.05), ("head", 5e-3, 0.05), ("vectors", 2e-3, 0.0)]
    assert muon.param_groups[0]["momentum"] == 0.9 and muon.param_groups[0]["lr"] == 0.03
    with pytest.raises(ValueError, match="no 2-D weights inside a ModuleList"):
        muon_with_adamw(Linear(3, 3))


def test_setting_lr_scales_every_group_of_every_optimizer():
    opt = muon_with_adamw(Tiny(), lr=0.02, adamw_lr=4e-3, embedding_lr=0.2)
    schedule = lr_schedule("cosine", 0.02, warmup_steps=0, total_steps=10, min_lr=0.002)
    opt.lr = schedule(10)                               # the floor: a tenth of the peak
    assert opt.lr == pytest.approx(0.002) and opt.lr_scale == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.002, 0.02, 4e-4, 4e-4])
    opt.lr_scale = 1.0
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.2, 4e-3, 4e-3])
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.lr = -1.0


# -- resume and threads -------------------------------------------------------------------------


def _batches(seed, n):
    rng = np.random.default_rng(seed)
    return [(ids, np.roll(ids, -1, axis=1)) for ids in
            (rng.integers(0, 11, (4, 6)) for _ in range(n))]


def _train(model, opt, batches, first_step, parallel=None):
    schedule = lr_schedule("cosine", 0.02, warmup_steps=2, total_steps=8, min_lr=0.002)
    for step, (ids, targets) in enumerate(batches, start=first_step):
        opt.lr = schedule(step)
        model.zero_grad()                   # (opt.zero_grad() would miss what opt leaves out)
        F.cross_entropy(model(ids), targets).backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step(parallel)


def _fresh(seed):
    manual_seed(seed)
    return Tiny()


@pytest.mark.parametrize("make_opt", [
    lambda m: muon_with_adamw(m, lr=0.02, adamw_lr=5e-3, weight_decay=0.01,
                              adamw_weight_decay=0.1),
    lambda m: Muon(muon_param_groups(m)["matrices"], lr=0.02, nesterov=False),
])
def test_resume_from_a_saved_state_is_bitwise_identical(tmp_path, make_opt):
    batches = _batches(0, 8)
    model = _fresh(0)
    _train(model, make_opt(model), batches, 0)                      # 8 steps straight

    resumed = _fresh(0)
    opt1 = make_opt(resumed)
    _train(resumed, opt1, batches[:3], 0)                           # 3 steps, saved to disk
    skeleton, arrays = split_arrays(opt1.state_dict())
    (tmp_path / "opt.json").write_text(json.dumps(skeleton))
    np.savez(tmp_path / "opt.npz", **arrays)
    weights = {k: v.copy() for k, v in resumed.state_dict().items()}

    fresh = _fresh(1)                                               # other weights...
    fresh.load_state_dict(weights)
    opt2 = make_opt(fresh)
    opt2.lr = 7.0                                                   # ...and other settings
    with np.load(tmp_path / "opt.npz") as npz:
        opt2.load_state_dict(join_arrays(json.loads((tmp_path / "opt.json").read_text()), npz))
    _train(fresh, opt2, batches[3:], 3)                             # the other 5

    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_step_in_threads_equals_serial_step():
    batches = _batches(5, 3)
    models = [_fresh(2), _fresh(2)]
    opts = [muon_with_adamw(m) for m in models]
    with DataParallel(2) as parallel:
        _train(models[0], opts[0], batches, 0)
        _train(models[1], opts[1], batches, 0, parallel)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_load_state_dict_refuses_other_optimizers_and_changes_nothing_when_it_does():
    model = _fresh(0)
    opt = muon_with_adamw(model)
    _train(model, opt, _batches(0, 1), 0)
    saved = opt.state_dict()
    muon_state = opt.optimizers[0].state_dict()

    with pytest.raises(ValueError, match="keys 'optimizers' and 'base_lrs'"):
        opt.load_state_dict(AdamW(model.parameters()).state_dict())
    with pytest.raises(ValueError, match="holds 1 optimizers, this MultiOptimizer has 2"):
        opt.load_state_dict({"optimizers": saved["optimizers"][:1],
                             "base_lrs": saved["base_lrs"][:1]})
    with pytest.raises(ValueError, match="does not know"):   # Muon's state into AdamW
        AdamW([{"params": muon_param_groups(model)["matrices"]}]).load_state_dict(
            {**muon_state, "state": {}})
    with pytest.raises(ValueError, match="lacks"):
        AdamW(muon_param_groups(model)["matrices"]).load_state_dict(muon_state)

    # a bad second optimizer state leaves the first untouched too
    other = muon_with_adamw(_fresh(0))
    broken = {"optimizers": [saved["optimizers"][0],
                             {**saved["optimizers"][1], "param_groups": []}],
              "base_lrs": saved["base_lrs"]}
    with pytest.raises(ValueError, match="parameter groups"):
        other.load_state_dict(broken)
    assert other.optimizers[0].state == {}


# -- bad arguments ------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    w = Parameter(RNG.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="lr must be >= 0, got -0.1"):
        Muon([w], lr=-0.1)
    for momentum in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
            Muon([w], momentum=momentum)
    for steps in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="ns_steps .* must be an integer >= 1"):
            Muon([w], ns_steps=steps)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        Muon([w], weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"2-D weight matrices, but parameter 1 has shape "
                                         r"\(4,\); give it to AdamW"):
        Muon([w, Parameter(np.zeros(4))])
    with pytest.raises(TypeError, match="model.parameters()"):
        Muon(Linear(2, 2))
    with pytest.raises(ValueError, match="ns_steps"):
        orthogonalise(np.ones((2, 2)), steps=0)
    with pytest.raises(ValueError, match="2-D matrix"):
        orthogonalise(np.ones(3))
    with pytest.raises(ValueError, match="in two of the optimizers"):
        MultiOptimizer([Muon([w]), AdamW([w])])
    with pytest.raises(ValueError, match="at least one"):
        MultiOptimizer([])
    with pytest.raises(TypeError, match="not an autograd.optim.Optimizer"):
        MultiOptimizer([object()])
    with pytest.raises(ValueError, match="reference .* must be > 0"):
        MultiOptimizer([Muon([w], lr=0.0)])
