"""The GPT model: parameter counts, an independent NumPy forward, a whole-model gradcheck,
overfitting a batch, and the KV cache."""
import math

import numpy as np
import pytest

from autograd import functional as F
from autograd import no_grad
from autograd.gradcheck import gradcheck
from autograd.optim import AdamW
from gpt import GPT, GPTConfig

TINY = dict(vocab_size=23, block_size=8, n_layer=2, n_head=2, n_embd=12)


def test_gpt2_preset_has_124m_parameters():
    config = GPTConfig.preset("gpt2")
    assert config.num_parameters() == 124_439_808


def test_parameter_names_and_count_match_gpt2_layout():
    model = GPT(GPTConfig(**TINY))
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["wte.weight", "wpe.weight"]
    assert "h.1.attn.c_attn.weight" in names and "h.0.mlp.c_proj.bias" in names
    assert names[-2:] == ["ln_f.weight", "ln_f.bias"]
    assert model.h[0].attn.c_attn.weight.shape == (12, 36)          # (in, out)
    assert model.num_parameters() == model.config.num_parameters()
    no_bias = GPT(GPTConfig(**TINY, bias=False))
    assert no_bias.num_parameters() == no_bias.config.num_parameters()


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="unknown GPT preset"):
        GPTConfig.preset("gpt5")
    with pytest.raises(ValueError, match="block_size"):
        GPTConfig(block_size=0)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        GPTConfig(block_size=1e9)                     # JSON's 1e9 is a float
    with pytest.raises(ValueError, match="layer_norm_epsilon must be a small positive number"):
        GPTConfig(layer_norm_epsilon="x")
    with pytest.raises(ValueError, match="dropout must be a number"):
        GPTConfig(dropout="0.1")
    with pytest.raises(ValueError, match="bias must be true or false"):
        GPTConfig(bias="yes")


def _numpy_gpt_forward(params: dict, idx: np.ndarray, config: GPTConfig) -> np.ndarray:
    """GPT-2's forward pass written out in plain NumPy, independently of autograd."""
    def layer_norm(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + config.layer_norm_epsilon) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    B, T = idx.shape
    H, C = config.n_head, config.n_embd
    D = C // H
    x = params["wte.weight"][idx] + params["wpe.weight"][:T]
    mask = np.tril(np.ones((T, T), dtype=bool))
    for i in range(config.n_layer):
        p = lambda name: params[f"h.{i}.{name}"]  # noqa: E731
        h = layer_norm(x, p("ln_1.weight"), p("ln_1.bias"))
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = np.split(qkv, 3, axis=-1)
        heads = []
        for j in range(H):
            qh, kh, vh = (a[..., j * D:(j + 1) * D] for a in (q, k, v))
            att = qh @ kh.transpose(0, 2, 1) / math.sqrt(D)
            att = np.where(mask, att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            heads.append(att @ vh)
        y = np.concatenate(heads, axis=-1)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = layer_norm(x, p("ln_2.weight"), p("ln_2.bias"))
        h = gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"])
    return x @ params["wte.weight"].T


def test_logits_match_an_independent_numpy_forward():
    config = GPTConfig(**TINY)
    model = GPT(config, rng=np.random.default_rng(0)).to(np.float64)
    rng = np.random.default_rng(1)
    for _, p in model.named_parameters():      # perturb biases / LN away from 0 / 1
        p.data += rng.normal(0, 0.1, p.shape)
    idx = rng.integers(0, config.vocab_size, size=(3, config.block_size))
    expected = _numpy_gpt_forward(model.state_dict(), idx, config)
    np.testing.assert_allclose(model(idx).data, expected, rtol=1e-10, atol=1e-12)


def test_whole_model_gradcheck_float64():
    config = GPTConfig(vocab_size=11, block_size=5, n_layer=2, n_head=2, n_embd=8)
    model = GPT(config, rng=np.random.default_rng(0)).to(np.float64)
    rng = np.random.default_rng(2)
    for _, p in model.named_parameters():
        p.data += rng.normal(0, 0.2, p.shape)
    idx = rng.integers(0, 11, size=(2, 5))
    targets = rng.integers(0, 11, size=(2, 5))
    params = model.parameters()

    def loss_fn(*_):
        return F.cross_entropy(model(idx), targets)
    result = gradcheck(loss_fn, params)
    assert result.passed, (result.max_abs_error, result.max_rel_error)


def test_tiny_model_overfits_one_batch():
    config = GPTConfig(**TINY)
    model = GPT(config, rng=np.random.default_rng(0))
    rng = np.random.default_rng(3)
    idx = rng.integers(0, config.vocab_size, size=(4, config.block_size + 1))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        model.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.5 and loss.item() < 0.05


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    config = GPTConfig(**TINY)
    model = GPT(config, rng=np.random.default_rng(0))
    idx = np.random.default_rng(4).integers(0, config.vocab_size, size=(2, 8))
    with no_grad():
        full = model(idx).data
        cache = model.new_kv_cache(batch_size=2)
        prefill = model(idx[:, :5], kv_cache=cache).data
        steps = [model(idx[:, t:t + 1], kv_cache=cache).data for t in range(5, 8)]
    np.testing.assert_allclose(prefill, full[:, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full[:, 5:], rtol=1e-5, atol=1e-5)
    with no_grad():
        last = model(idx, last_only=True).data
    np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_clear_error():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="longer than the model's context of 8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="integer token ids"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="out of range"):
        model(np.array([[1, 99]]))


def test_float32_forward_backward_stays_float32():
    model = GPT(GPTConfig(**TINY, dropout=0.1))
    idx = np.random.default_rng(0).integers(0, 23, size=(2, 8))
    loss = F.cross_entropy(model(idx), idx)
    assert loss.dtype == np.float32
    loss.backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_loss_method_equals_cross_entropy_of_logits():
    model = GPT(GPTConfig(**TINY), rng=np.random.default_rng(0)).to(np.float64)
    idx = np.random.default_rng(5).integers(0, 23, size=(2, 8))
    targets = np.roll(idx, -1, axis=1)
    targets[0, -1] = -100
    fused = model.loss(idx, targets)
    assert fused.item() == pytest.approx(F.cross_entropy(model(idx), targets).item(), rel=1e-12)
    fused.backward()
    fused_grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(idx), targets).backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(fused_grads[name], p.grad, rtol=1e-9, atol=1e-12,
                                   err_msg=name)
