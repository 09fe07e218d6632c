"""The ops of the Llama / Qwen3 / modern-GPT family: RMSNorm, RoPE, ReLU², SwiGLU, grouped-query
attention (repeat_kv) and the logit soft-cap.

Each op: float64 gradients against finite differences, the forward against a plain NumPy formula
(written here from the definition, not from the op's code), float32 in and out. Then the
conventions that make Hugging Face checkpoints work: two decoder stacks composed of these ops
(in this file, from the weights of ../shared/reference/hf-llama-tiny and hf-qwen3-tiny) must
reproduce PyTorch's hidden states, logits, loss, every parameter's gradient and the KV-cached
decode.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _paths import reference_file

from autograd import Tensor, no_grad
from autograd import functional as F
from autograd.gradcheck import gradcheck
from autograd.nn import RMSNorm
from autograd.ops.relu_squared import relu_squared
from autograd.ops.repeat_kv import grouped_query_attention, repeat_kv
from autograd.ops.rms_norm import rms_norm
from autograd.ops.rope import (RopeConfigError, rope, rope_backward, rope_forward,
                               rope_frequencies, rope_tables)
from autograd.ops.softcap import softcap
from autograd.ops.swiglu import swiglu
from gpt.io.safetensors import load_file


def _t64(rng: np.random.Generator, *shape: int) -> Tensor:
    return Tensor(rng.standard_normal(shape), requires_grad=True)


def _check(fn, *inputs: Tensor) -> None:
    result = gradcheck(fn, list(inputs))
    assert result.passed, f"max abs error {result.max_abs_error:.2e}, " \
                          f"max rel error {result.max_rel_error:.2e}"


# ----------------------------------------------------------------------------------------------
# Plain NumPy references, float64, from the definitions.


def ref_rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 if w is None else w)


def ref_rope(x, positions, theta):
    """Hugging Face's formulation: x * cos + rotate_half(x) * sin, angles concat(freqs, freqs)."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    emb = np.concatenate([inv_freq, inv_freq])                    # (D,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * emb
    rotated_half = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * np.cos(angles) + rotated_half * np.sin(angles)


def ref_attention(q, k, v, causal):
    """Head by head, row by row: query h uses kv head h // n_rep; queries are the last T keys."""
    batch, heads, n_q, _ = q.shape
    n_rep, n_k = heads // k.shape[1], k.shape[2]
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            kh, vh = k[b, h // n_rep], v[b, h // n_rep]
            for i in range(n_q):
                visible = n_k - n_q + i + 1 if causal else n_k
                scores = kh[:visible] @ q[b, h, i] / math.sqrt(q.shape[-1])
                p = np.exp(scores - scores.max())
                out[b, h, i] = (p / p.sum()) @ vh[:visible]
    return out


# ----------------------------------------------------------------------------------------------
# RMSNorm


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 8)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_gradients(shape, with_weight):
    rng = np.random.default_rng(1)
    inputs = [_t64(rng, *shape)] + ([_t64(rng, shape[-1])] if with_weight else [])
    _check(lambda x, w=None: rms_norm(x, w, eps=1e-5), *inputs)


def test_rms_norm_gradient_of_the_input_alone_with_a_frozen_weight():
    rng = np.random.default_rng(2)
    weight = Tensor(rng.standard_normal(5))                      # requires_grad=False
    _check(lambda x: rms_norm(x, weight), _t64(rng, 3, 5))


def test_rms_norm_forward_matches_numpy_and_stays_float32():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 16)) * 3
    w = 1 + 0.1 * rng.standard_normal(16)
    for weight in (w, None):
        expected = ref_rms_norm(x, weight, 1e-6)
        out64 = rms_norm(Tensor(x), None if weight is None else Tensor(weight), eps=1e-6)
        np.testing.assert_allclose(out64.data, expected, rtol=1e-12, atol=1e-12)
        out32 = rms_norm(Tensor(x.astype(np.float32)),
                         None if weight is None else Tensor(weight.astype(np.float32)), eps=1e-6)
        assert out32.dtype == np.float32
        np.testing.assert_allclose(out32.data, expected, rtol=1e-5, atol=1e-5)


def test_rms_norm_float32_gradients_are_float32():
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((3, 8)).astype(np.float32), requires_grad=True)
    w = Tensor(np.ones(8, np.float32), requires_grad=True)
    rms_norm(x, w).sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_rms_norm_rejects_a_weight_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"rms_norm: weight has shape \(4,\), expected \(8,\)"):
        rms_norm(Tensor(np.zeros((2, 8))), Tensor(np.ones(4)))


def test_rms_norm_module():
    norm = RMSNorm(6, eps=1e-5)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    np.testing.assert_array_equal(norm.weight.data, np.ones(6, np.float32))
    assert norm.weight.dtype == np.float32
    x = np.random.default_rng(5).standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_allclose(norm(Tensor(x)).data, ref_rms_norm(x, None, 1e-5), rtol=1e-5)
    bare = RMSNorm(6, weight=False)
    assert list(bare.named_parameters()) == [] and bare.weight is None
    with pytest.raises(ValueError, match="RMSNorm needs positive integer sizes"):
        RMSNorm(0)


# ----------------------------------------------------------------------------------------------
# RoPE


@pytest.mark.parametrize("shape,start,theta", [((2, 2, 5, 4), 0, 10000.0),
                                               ((1, 3, 4, 8), 7, 500000.0),
                                               ((3, 6), 2, 100.0)])
def test_rope_gradients(shape, start, theta):
    rng = np.random.default_rng(6)
    _check(lambda x: rope(x, start, theta=theta), _t64(rng, *shape))


def test_rope_gradient_with_llama3_scaled_frequencies():
    freqs = rope_frequencies(8, 500000.0, LLAMA32_SCALING)
    _check(lambda x: rope(x, 3, freqs=freqs), _t64(np.random.default_rng(7), 1, 2, 4, 8))


@pytest.mark.parametrize("theta", [10000.0, 1e6])
def test_rope_forward_matches_the_rotate_half_formula(theta):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 6, 16))
    np.testing.assert_allclose(rope(Tensor(x), 0, theta=theta).data,
                               ref_rope(x, np.arange(6), theta), rtol=1e-6, atol=1e-6)
    out32 = rope(Tensor(x.astype(np.float32)), 4, theta=theta)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.data, ref_rope(x, np.arange(4, 10), theta),
                               rtol=1e-5, atol=1e-5)


def test_rope_with_an_offset_is_the_slice_of_the_full_length_rope():
    x = np.random.default_rng(9).standard_normal((2, 2, 12, 8)).astype(np.float32)
    full = rope(Tensor(x), 0, theta=10000.0).data
    for start, stop in ((5, 12), (11, 12), (0, 3)):
        part = rope(Tensor(x[:, :, start:stop]), start, theta=10000.0).data
        np.testing.assert_array_equal(part, full[:, :, start:stop])


def test_rope_scores_depend_only_on_the_distance():
    """q.k after rotation at positions (p, s) equals the one at (p + c, s + c)."""
    rng = np.random.default_rng(10)
    q, k = rng.standard_normal(16), rng.standard_normal(16)

    def score(p, s):
        rq = rope(Tensor(q[None, :]), p, theta=10000.0).data[0]
        rk = rope(Tensor(k[None, :]), s, theta=10000.0).data[0]
        return rq @ rk
    assert score(9, 4) == pytest.approx(score(0 + 5, 0), rel=1e-6)
    assert score(30, 2) == pytest.approx(score(128, 100), rel=1e-5)
    assert score(3, 3) == pytest.approx(q @ k, rel=1e-6)


def test_rope_backward_is_the_inverse_rotation():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 5, 8))
    cos, sin = rope_tables(rope_frequencies(8), 3, 5, np.float64)
    np.testing.assert_allclose(rope_backward(rope_forward(x, cos, sin), cos, sin), x,
                               atol=1e-12)


LLAMA32_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_llama3_frequencies_follow_the_published_rule():
    """Frequency by frequency, the three cases of Llama 3.1's scaling (Llama 3.2's settings)."""
    head_dim, theta = 64, 500000.0
    scaling = LLAMA32_SCALING
    got = rope_frequencies(head_dim, theta, scaling)
    assert got.dtype == np.float32 and got.shape == (32,)
    factor, context = scaling["factor"], scaling["original_max_position_embeddings"]
    low_wavelength = context / scaling["low_freq_factor"]
    high_wavelength = context / scaling["high_freq_factor"]
    cases = set()
    for i, f in enumerate(got):
        base = theta ** (-2 * i / head_dim)
        wavelength = 2 * math.pi / base
        if wavelength < high_wavelength:
            expected, case = base, "kept"
        elif wavelength > low_wavelength:
            expected, case = base / factor, "divided"
        else:
            smooth = (context / wavelength - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"])
            expected, case = (1 - smooth) * base / factor + smooth * base, "blended"
        cases.add(case)
        assert f == pytest.approx(expected, rel=1e-6), (i, case)
    assert cases == {"kept", "divided", "blended"}
    # older configs spell the key "type"; "default" and None mean no scaling
    np.testing.assert_array_equal(rope_frequencies(head_dim, theta, {**scaling, "type": "llama3"}),
                                  got)
    np.testing.assert_array_equal(rope_frequencies(head_dim, theta, {"rope_type": "default"}),
                                  rope_frequencies(head_dim, theta))
    np.testing.assert_allclose(rope_frequencies(8, 100.0, {"rope_type": "linear", "factor": 4}),
                               rope_frequencies(8, 100.0) / 4, rtol=1e-7)


@pytest.mark.parametrize("scaling,message", [
    ({"rope_type": "yarn", "factor": 4.0}, "rope_type 'yarn' is not supported"),
    ({"rope_type": "llama3", "factor": 8.0}, "positive number 'low_freq_factor'"),
    ({**LLAMA32_SCALING, "high_freq_factor": 0.5}, "high_freq_factor .* > low_freq_factor"),
])
def test_rope_frequencies_refuse_unsupported_settings(scaling, message):
    with pytest.raises(RopeConfigError, match=message):
        rope_frequencies(64, 10000.0, scaling)


def test_rope_rejects_bad_inputs():
    with pytest.raises(ValueError, match="must be even"):
        rope(Tensor(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match="start must be a non-negative integer"):
        rope(Tensor(np.zeros((2, 3, 4))), -1)
    with pytest.raises(ValueError, match=r"freqs has shape \(3,\), expected \(2,\)"):
        rope(Tensor(np.zeros((2, 3, 4))), freqs=np.ones(3))


# ----------------------------------------------------------------------------------------------
# ReLU², SwiGLU, soft-cap


def test_relu_squared():
    rng = np.random.default_rng(12)
    _check(relu_squared, _t64(rng, 3, 7))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    out = relu_squared(Tensor(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, np.where(x > 0, x * x, 0.0), rtol=1e-7)


def test_swiglu():
    rng = np.random.default_rng(13)
    _check(swiglu, _t64(rng, 2, 3, 5), _t64(rng, 2, 3, 5))
    a = rng.standard_normal((4, 6)) * 4
    b = rng.standard_normal((4, 6))
    expected = a / (1 + np.exp(-a)) * b
    np.testing.assert_allclose(swiglu(Tensor(a), Tensor(b)).data, expected, rtol=1e-12)
    out32 = swiglu(Tensor(a.astype(np.float32)), Tensor(b.astype(np.float32)))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.data, expected, rtol=1e-5, atol=1e-6)


def test_swiglu_gradient_of_one_input_alone():
    rng = np.random.default_rng(14)
    fixed = Tensor(rng.standard_normal((3, 4)))
    _check(lambda a: swiglu(a, fixed), _t64(rng, 3, 4))
    _check(lambda b: swiglu(fixed, b), _t64(rng, 3, 4))


def test_swiglu_survives_very_negative_gates_in_float32():
    a = np.array([-1000.0, -90.0, 0.0, 90.0], np.float32)
    out = swiglu(Tensor(a, requires_grad=True), Tensor(np.ones(4, np.float32)))
    np.testing.assert_allclose(out.data, [0.0, 0.0, 0.0, 90.0], atol=1e-30)
    out.sum().backward()


def test_swiglu_over_several_slices_and_on_views():
    """More elements than one slice of the chunked loops, gate and up as views of one array."""
    rng = np.random.default_rng(20)
    packed = Tensor(rng.standard_normal((300, 2 * 250)), requires_grad=True)   # 75,000 each
    result = gradcheck(lambda p: swiglu(p[:, :250], p[:, 250:]), [packed], max_elements=60)
    assert result.passed, result
    a, b = packed.data[:, :250], packed.data[:, 250:]
    np.testing.assert_allclose(swiglu(Tensor(a), Tensor(b)).data, a / (1 + np.exp(-a)) * b,
                               rtol=1e-12)


def test_swiglu_rejects_different_shapes():
    with pytest.raises(ValueError, match="swiglu: gate and up must have the same shape"):
        swiglu(Tensor(np.zeros((2, 5))), Tensor(np.zeros((2, 4))))


def test_softcap():
    rng = np.random.default_rng(16)
    _check(lambda x: softcap(x, 2.5), _t64(rng, 4, 6))
    x = rng.standard_normal((3, 9)) * 40
    out32 = softcap(Tensor(x.astype(np.float32)), 15.0)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.data, 15.0 * np.tanh(x / 15.0), rtol=1e-5, atol=1e-5)
    assert np.abs(out32.data).max() <= 15.0
    with pytest.raises(ValueError, match="softcap: cap must be a positive number"):
        softcap(Tensor(x), 0.0)


X_SHAPE = (2, 3, 4, 8)


@pytest.mark.parametrize("op,shapes", [
    (rms_norm, [X_SHAPE, (8,)]), (rms_norm, [X_SHAPE]), (lambda x: rope(x, 3), [X_SHAPE]),
    (relu_squared, [X_SHAPE]), (swiglu, [X_SHAPE, X_SHAPE]),
    (lambda x: softcap(x, 3.0), [X_SHAPE]), (lambda x: repeat_kv(x, 2), [X_SHAPE]),
], ids=["rms_norm", "rms_norm_no_weight", "rope", "relu_squared", "swiglu", "softcap",
        "repeat_kv"])
def test_float32_in_float32_out_and_float32_gradients(op, shapes):
    rng = np.random.default_rng(21)
    inputs = [Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
              for shape in shapes]
    out = op(*inputs)
    assert out.dtype == np.float32
    out.sum().backward()                        # a read-only, broadcast gradient arrives
    for t in inputs:
        assert t.grad.dtype == np.float32 and t.grad.shape == t.shape


# ----------------------------------------------------------------------------------------------
# Grouped-query attention


def test_repeat_kv_order_and_gradient():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 3, 4, 5))
    out = repeat_kv(Tensor(x), 2).data
    assert out.shape == (2, 6, 4, 5)
    for h in range(6):                      # query head h reads kv head h // n_rep
        np.testing.assert_array_equal(out[:, h], x[:, h // 2])
    _check(lambda t: repeat_kv(t, 3), _t64(rng, 2, 2, 3, 4))
    same = Tensor(x)
    assert repeat_kv(same, 1) is same


@pytest.mark.parametrize("q_shape,kv_shape,causal", [
    ((2, 4, 5, 3), (2, 2, 5, 3), True),
    ((1, 6, 3, 4), (1, 2, 3, 4), False),
    ((2, 4, 2, 3), (2, 1, 6, 3), True),         # KV cache: 2 new queries, 6 keys
])
def test_grouped_query_attention(q_shape, kv_shape, causal):
    rng = np.random.default_rng(18)
    q, k, v = _t64(rng, *q_shape), _t64(rng, *kv_shape), _t64(rng, *kv_shape)
    np.testing.assert_allclose(grouped_query_attention(q, k, v, is_causal=causal).data,
                               ref_attention(q.data, k.data, v.data, causal), atol=1e-12)
    _check(lambda q, k, v: grouped_query_attention(q, k, v, is_causal=causal), q, k, v)


def test_grouped_query_attention_with_fewer_queries_is_the_tail_of_the_full_one():
    rng = np.random.default_rng(19)
    q = rng.standard_normal((1, 4, 7, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 7, 8)).astype(np.float32) for _ in range(2))
    full = grouped_query_attention(Tensor(q), Tensor(k), Tensor(v)).data
    tail = grouped_query_attention(Tensor(q[:, :, 5:]), Tensor(k), Tensor(v)).data
    assert tail.dtype == np.float32
    np.testing.assert_allclose(tail, full[:, :, 5:], rtol=1e-6, atol=1e-6)


def test_grouped_query_attention_rejects_uneven_heads():
    with pytest.raises(ValueError, match="6 query heads cannot be shared out evenly over 4"):
        grouped_query_attention(Tensor(np.zeros((1, 6, 2, 4))), Tensor(np.zeros((1, 4, 2, 4))),
                                Tensor(np.zeros((1, 4, 2, 4))))
    with pytest.raises(ValueError, match="n_rep must be a positive integer"):
        repeat_kv(Tensor(np.zeros((1, 2, 2, 4))), 0)


# ----------------------------------------------------------------------------------------------
# Hugging Face conventions: the tiny Llama and Qwen3 checkpoints, composed from these ops.


def _hf_stack(params: dict[str, Tensor], config: dict, ids: np.ndarray,
              cache: dict | None = None) -> tuple[list[Tensor], Tensor]:
    """Hidden states (embeddings, after each layer but the last, after the final norm) and
    logits of Hugging Face's Llama/Qwen3 decoder, for token ids (B, T). `cache`: layer ->
    (keys, values) of the earlier positions, (B, H_kv, S, D) arrays, extended in place."""
    n_heads, n_kv, head_dim = (config["num_attention_heads"], config["num_key_value_heads"],
                               config["head_dim"])
    eps, rope_settings = config["rms_norm_eps"], config["rope_parameters"]
    freqs = rope_frequencies(head_dim, rope_settings["rope_theta"], rope_settings)
    batch, n_new = ids.shape
    start = cache[0][0].shape[2] if cache else 0

    def project(h: Tensor, name: str) -> Tensor:           # HF stores (out, in)
        return F.linear(h, params[name + ".weight"].T)

    def heads(h: Tensor, n: int, norm: str | None) -> Tensor:
        h = h.reshape(batch, n_new, n, head_dim)
        if norm is not None:                                # Qwen3's QK-norm, per head
            h = rms_norm(h, params[norm], eps)
        return h.transpose(1, 2)                            # (B, n, T, D)

    x = F.embedding(ids, params["model.embed_tokens.weight"])
    hidden = [x]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        qk_norm = p + "self_attn.q_norm.weight" in params
        h = rms_norm(x, params[p + "input_layernorm.weight"], eps)
        q = heads(project(h, p + "self_attn.q_proj"), n_heads,
                  p + "self_attn.q_norm.weight" if qk_norm else None)
        k = heads(project(h, p + "self_attn.k_proj"), n_kv,
                  p + "self_attn.k_norm.weight" if qk_norm else None)
        v = heads(project(h, p + "self_attn.v_proj"), n_kv, None)
        q, k = rope(q, start, freqs=freqs), rope(k, start, freqs=freqs)
        if cache is not None:
            if layer in cache:
                k = Tensor(np.concatenate([cache[layer][0], k.data], axis=2))
                v = Tensor(np.concatenate([cache[layer][1], v.data], axis=2))
            cache[layer] = (k.data, v.data)
        attended = grouped_query_attention(q, k, v, is_causal=True)
        attended = attended.transpose(1, 2).reshape(batch, n_new, n_heads * head_dim)
        x = x + project(attended, p + "self_attn.o_proj")
        h = rms_norm(x, params[p + "post_attention_layernorm.weight"], eps)
        x = x + project(swiglu(project(h, p + "mlp.gate_proj"), project(h, p + "mlp.up_proj")),
                        p + "mlp.down_proj")
        hidden.append(x)
    hidden[-1] = rms_norm(x, params["model.norm.weight"], eps)
    head = params.get("lm_head.weight", params["model.embed_tokens.weight"])
    return hidden, hidden[-1] @ head.T


@pytest.mark.parametrize("name", ["hf-llama-tiny", "hf-qwen3-tiny"])
def test_hugging_face_llama_and_qwen3_conventions(name):
    folder = reference_file(name)
    config = json.loads((folder / "config.json").read_text())
    reference = np.load(folder / "reference.npz")
    params = {key: Tensor(np.array(value, np.float32), requires_grad=True)
              for key, value in load_file(folder / "model.safetensors").items()}
    ids, targets = reference["x"], reference["y"]

    hidden, logits = _hf_stack(params, config, ids)
    for i, state in enumerate(hidden):
        np.testing.assert_allclose(state.data, reference[f"hidden_states_{i}"], atol=1e-4,
                                   rtol=1e-4, err_msg=f"hidden_states_{i}")
    np.testing.assert_allclose(logits.data, reference["logits"], atol=1e-4, rtol=1e-4)
    loss = F.cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(float(reference["loss"]), abs=1e-5)
    loss.backward()
    for key, p in params.items():
        expected = reference[f"grad__{key}"]
        np.testing.assert_allclose(p.grad, expected, atol=1e-4 * max(1.0, np.abs(expected).max()),
                                   err_msg=f"gradient of {key}")

    # one token at a time through a KV cache: RoPE at offset t, one query against t+1 keys
    cache: dict = {}
    with no_grad():
        steps = [_hf_stack(params, config, ids[:, t:t + 1], cache)[1].data
                 for t in range(ids.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), reference["decode_logits"],
                               atol=1e-4, rtol=1e-4)
