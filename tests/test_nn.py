"""autograd.nn: registration, naming, saving/loading, modes, and each layer's behaviour."""
import numpy as np
import pytest

from autograd import Tensor, manual_seed
from autograd import functional as F
from autograd.nn import (GELU, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList,
                         Parameter, ReLU, Sequential, StateDictError, Tanh)


class Block(Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = LayerNorm(c)
        self.c_attn = Linear(c, 3 * c)
        self.mlp = Sequential(Linear(c, 4 * c), GELU(), Linear(4 * c, c))

    def forward(self, x):
        return x + self.mlp(self.ln_1(x))


class TinyLM(Module):
    """GPT-shaped: embeddings, a ModuleList of blocks, a final norm, a head tied to wte."""

    def __init__(self, vocab=11, c=8, n_layer=2):
        super().__init__()
        self.wte = Embedding(vocab, c)
        self.h = ModuleList(Block(c) for _ in range(n_layer))
        self.ln_f = LayerNorm(c)
        self.head = Module()
        self.head.weight = self.wte.weight          # tied: the same Parameter, a second name

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


# -- Parameter and registration ---------------------------------------------------------------


def test_parameter_is_a_tensor_that_requires_grad():
    p = Parameter(np.zeros((2, 3)))
    assert isinstance(p, Tensor) and p.requires_grad
    assert p.dtype == np.float64                       # dtype follows a float64 array
    assert Parameter([1, 2]).dtype == np.float32
    assert not Parameter(np.zeros(2), requires_grad=False).requires_grad


def test_named_parameters_are_dotted_in_registration_order():
    model = TinyLM(n_layer=2)
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["wte.weight", "h.0.ln_1.weight", "h.0.ln_1.bias"]
    assert "h.0.c_attn.weight" in names and "h.1.mlp.2.bias" in names
    assert names[-2:] == ["ln_f.weight", "ln_f.bias"]
    assert len(names) == len(set(names))
    assert [p for _, p in model.named_parameters()] == model.parameters()


def test_shared_parameter_is_listed_once_under_its_first_name():
    model = TinyLM()
    names = [name for name, _ in model.named_parameters()]
    assert "wte.weight" in names and "head.weight" not in names
    assert sum(p is model.wte.weight for p in model.parameters()) == 1
    assert model.num_parameters() == sum(p.size for p in model.parameters())
    assert "head.weight" not in model.state_dict()


def test_reassigning_and_deleting_attributes_updates_registration():
    m = Module()
    m.w = Parameter(np.ones(2))
    m.w = Parameter(np.ones(3))                  # replaced, not added
    assert [p.shape for p in m.parameters()] == [(3,)]
    m.w = None                                   # a plain attribute now
    assert m.parameters() == [] and m.w is None
    m.sub = Linear(2, 2)
    del m.sub
    assert m.parameters() == [] and not hasattr(m, "sub")
    m.t = Tensor(np.ones(2))                     # a plain Tensor is not a parameter
    assert m.parameters() == []


def test_forgetting_super_init_is_a_clear_error():
    class Bad(Module):
        def __init__(self):
            self.fc = Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\)\.__init__\(\) first"):
        Bad()


def test_named_modules_and_children():
    model = TinyLM(n_layer=2)
    names = [name for name, _ in model.named_modules()]
    assert names[:3] == ["", "wte", "h"]
    assert "h.1.mlp.0" in names
    assert len(model.children()) == 4
    assert len(model.modules()) == len(names)


def test_module_without_forward_says_so():
    with pytest.raises(NotImplementedError, match="forward"):
        Module()(1)


def test_repr_shows_the_tree():
    text = repr(TinyLM(n_layer=1))
    assert "(h): ModuleList" in text and "(c_attn): Linear(in_features=8, out_features=24" in text


# -- state_dict / load_state_dict -------------------------------------------------------------


def test_state_dict_holds_the_live_arrays():
    model = TinyLM()
    state = model.state_dict()
    assert state["ln_f.weight"] is model.ln_f.weight.data
    assert list(state) == [name for name, _ in model.named_parameters()]


def test_load_state_dict_copies_in_place_and_casts():
    manual_seed(0)
    source, target = TinyLM(), TinyLM()
    arrays_before = {name: p.data for name, p in target.named_parameters()}
    state = {k: v.astype(np.float64) for k, v in source.state_dict().items()}
    assert target.load_state_dict(state) == ([], [])
    for name, p in target.named_parameters():
        assert p.data is arrays_before[name]          # same array: references stay valid
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p.data, source.state_dict()[name])


def test_load_state_dict_accepts_a_tied_weight_under_its_other_name():
    source, target = TinyLM(), TinyLM()
    state = dict(source.state_dict())
    state["head.weight"] = state.pop("wte.weight")
    target.load_state_dict(state)
    np.testing.assert_array_equal(target.wte.weight.data, source.wte.weight.data)


def test_load_state_dict_names_missing_unexpected_and_misshapen_keys():
    model = TinyLM()
    good = {k: v.copy() for k, v in model.state_dict().items()}

    state = dict(good)
    del state["h.1.c_attn.bias"]
    with pytest.raises(StateDictError, match=r"missing keys \(1\): h\.1\.c_attn\.bias"):
        model.load_state_dict(state)

    state = dict(good, **{"h.7.c_attn.weight": np.zeros(3)})
    with pytest.raises(KeyError, match=r"unexpected keys \(1\): h\.7\.c_attn\.weight"):
        model.load_state_dict(state)

    state = dict(good, **{"ln_f.weight": np.zeros(9, np.float32)})
    with pytest.raises(ValueError, match=r"'ln_f\.weight': model has \(8,\), state dict has "
                                         r"\(9,\)") as info:
        model.load_state_dict(state)
    assert info.value.mismatched == [("ln_f.weight", (8,), (9,))]


def test_failed_load_changes_nothing():
    model = TinyLM()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: v + 1 for k, v in before.items()}
    state["wte.weight"] = np.zeros((3, 3))
    with pytest.raises(StateDictError):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_non_strict_load_returns_missing_and_unexpected():
    model = TinyLM()
    state = {"ln_f.weight": np.full(8, 2.0), "extra": np.zeros(1)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == ["extra"] and "wte.weight" in missing and "ln_f.weight" not in missing
    np.testing.assert_array_equal(model.ln_f.weight.data, 2.0)
    with pytest.raises(StateDictError, match="shape mismatch"):     # shapes are never lenient
        model.load_state_dict({"ln_f.weight": np.zeros(3)}, strict=False)


def test_buffers_are_saved_converted_and_loaded():
    m = Module()
    m.register_buffer("mask", np.ones(3, np.float32))
    m.register_buffer("cache", np.zeros(2, np.float32), persistent=False)
    assert list(m.state_dict()) == ["mask"]
    m.load_state_dict({"mask": np.full(3, 5.0)})
    np.testing.assert_array_equal(m.mask, 5.0)
    m.to(np.float64)
    assert m.mask.dtype == np.float64 and m.cache.dtype == np.float64
    with pytest.raises(StateDictError, match="missing keys"):
        m.load_state_dict({})


# -- modes, gradients, dtype --------------------------------------------------------------------


def test_train_and_eval_are_recursive():
    model = TinyLM()
    assert model.eval() is model
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_and_freezing():
    model = Sequential(Linear(3, 4), Tanh(), Linear(4, 2))
    model[0].requires_grad_(False)
    model(Tensor(np.ones((5, 3)))).sum().backward()
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert model[2].weight.grad is not None
    assert model.num_parameters(trainable_only=True) == 4 * 2 + 2
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_float64_converts_parameters_and_computation():
    model = TinyLM().to(np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(np.array([[1, 2, 3]])).dtype == np.float64
    with pytest.raises(ValueError, match="float32 or float64"):
        model.to(np.int32)


# -- layers -------------------------------------------------------------------------------------


def test_linear_layout_init_and_forward():
    manual_seed(1)
    layer = Linear(5, 3)
    assert layer.weight.shape == (5, 3) and layer.bias.shape == (3,)
    bound = 1 / np.sqrt(5)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert layer.weight.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).data, x @ layer.weight.data + layer.bias.data,
                               rtol=1e-6, atol=1e-6)
    assert Linear(5, 3, bias=False).bias is None
    assert len(Linear(5, 3, bias=False).parameters()) == 1
    with pytest.raises(ValueError, match="positive"):
        Linear(0, 3)


def test_initialisation_follows_the_library_seed_or_a_given_rng():
    manual_seed(3)
    a = Linear(4, 4).weight.data.copy()
    manual_seed(3)
    np.testing.assert_array_equal(Linear(4, 4).weight.data, a)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(Embedding(6, 2, rng=rng_a).weight.data,
                                  Embedding(6, 2, rng=rng_b).weight.data)


def test_embedding_looks_up_rows():
    emb = Embedding(10, 4)
    ids = np.array([[1, 2, 1], [9, 0, 3]])
    out = emb(ids)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out.data[0, 0], emb.weight.data[1])
    big = Embedding(1000, 16).weight.data                                # normal(0, 1)
    assert abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05


def test_layer_norm_starts_as_plain_normalisation():
    ln = LayerNorm(6)
    np.testing.assert_array_equal(ln.weight.data, 1.0)
    np.testing.assert_array_equal(ln.bias.data, 0.0)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32) * 4 + 2
    y = ln(Tensor(x)).data
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=-1), 1, atol=1e-3)
    assert LayerNorm(6, bias=False).bias is None
    assert LayerNorm(6, bias=False)(Tensor(x)).shape == (3, 6)


def test_dropout_in_training_and_eval():
    drop = Dropout(0.5, rng=np.random.default_rng(0))
    x = Tensor(np.ones((100, 100), np.float32))
    y = drop(x).data
    assert set(np.unique(y)) == {0.0, 2.0}
    assert 0.45 < (y == 0).mean() < 0.55
    drop.eval()
    np.testing.assert_array_equal(drop(x).data, x.data)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_activation_modules():
    x = Tensor(np.array([-2.0, 0.0, 3.0]))
    np.testing.assert_array_equal(ReLU()(x).data, [0, 0, 3])
    np.testing.assert_allclose(Tanh()(x).data, np.tanh(x.data))
    np.testing.assert_allclose(GELU()(x).data, F.gelu(x).data)


def test_sequential_and_module_list_containers():
    layers = [Linear(2, 3), Tanh(), Linear(3, 1)]
    seq = Sequential(*layers)
    assert len(seq) == 3 and seq[0] is layers[0] and seq[-1] is layers[2]
    assert list(seq) == layers
    x = Tensor(np.ones((4, 2)))
    np.testing.assert_array_equal(seq(x).data, layers[2](layers[1](layers[0](x))).data)
    head = seq[:2]
    assert isinstance(head, Sequential) and head(x).shape == (4, 3)
    mlist = ModuleList([Linear(1, 1)]).append(Linear(1, 1))
    assert [n for n, _ in mlist.named_parameters()] == ["0.weight", "0.bias", "1.weight",
                                                         "1.bias"]
    with pytest.raises(TypeError, match="Modules"):
        mlist.append(3)


def test_module_gradients_match_finite_differences():
    """The layers wire their parameters into the graph: a float64 check of every weight."""
    manual_seed(0)
    model = Sequential(Linear(3, 5), GELU(), LayerNorm(5), Linear(5, 2)).to(np.float64)
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3)))
    targets = np.array([0, 1, 1, 0])

    def loss():
        return F.cross_entropy(model(x), targets)

    loss().backward()
    eps = 1e-6
    for name, p in model.named_parameters():
        numeric = np.zeros_like(p.data)
        for i in np.ndindex(p.shape):
            old = p.data[i]
            p.data[i] = old + eps
            up = loss().item()
            p.data[i] = old - eps
            down = loss().item()
            p.data[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
