"""The Llama family (gpt.core.llama) and its Hugging Face checkpoints (gpt.io.hf_llama).

The heart is the comparison with `shared/reference/hf-llama-tiny` and `hf-qwen3-tiny`: small
random models that `transformers` saved (the Qwen3 one in bfloat16, head_dim 32 != 64/4, tied
head), with PyTorch's logits, loss, hidden states, every parameter's gradient and a KV-cached
decode. Loaded through `load_pretrained`, ours must agree with all of them to 1e-4. Then the
config layouts, what is refused, shards, the way back out, the from-scratch options, and a
float64 gradient check of a block.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import _tiny_chat as tiny_chat
import numpy as np
import pytest
from _paths import reference_file

from autograd import Tensor, no_grad
from autograd import functional as F
from autograd.gradcheck import gradcheck
from autograd.ops.rope import rope_frequencies
from gpt.chat.engine import ChatEngine
from gpt.core.generate import SamplingParams, generate, generate_uncached
from gpt.core.llama import Llama, LlamaBlock, LlamaConfig
from gpt.core.model import KVCache
from gpt.io.checkpoint import CheckpointError, load_pretrained, save_pretrained
from gpt.io.hf_llama import llama_config_from_hf, llama_config_to_hf
from gpt.io.safetensors import load_file, read_header, save_file

TOL = 1e-4
REFERENCES = ["hf-llama-tiny", "hf-qwen3-tiny"]


def reference(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    directory = reference_file(name)
    with np.load(directory / "reference.npz") as data:
        return directory, {key: data[key] for key in data.files}


def hf_name(name: str) -> str:
    return name if name == "lm_head.weight" else "model." + name


def our_layout(name: str, array: np.ndarray) -> np.ndarray:
    """A Hugging Face tensor (Linear weights (out, in)) in our layout (in, out)."""
    return array.T if array.ndim == 2 and "embed_tokens" not in name else array


def copy_with_config(source: Path, target: Path, **changes) -> Path:
    """`source`'s checkpoint in `target`, its config.json changed (a value None deletes a key)."""
    target.mkdir()
    shutil.copyfile(source / "model.safetensors", target / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (target / "config.json").write_text(json.dumps(config))
    return target


def tiny_config(**changes) -> LlamaConfig:
    values = dict(vocab_size=40, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                  intermediate_size=24)
    return LlamaConfig(**{**values, **changes})


# ----------------------------------------------------------------------------------------------
# Against PyTorch


@pytest.mark.parametrize("name", REFERENCES)
def test_logits_loss_and_every_gradient_match_pytorch(name):
    directory, ref = reference(name)
    model = load_pretrained(directory)
    assert isinstance(model, Llama)
    loss = model.loss(ref["x"], ref["y"])
    model.zero_grad()
    loss.backward()
    with no_grad():
        logits = model(ref["x"])
    assert logits.dtype == loss.dtype == np.float32
    assert np.abs(logits.data - ref["logits"]).max() < TOL
    assert abs(float(loss.data) - float(ref["loss"])) < TOL
    names = [name for name, _ in model.named_parameters()]
    assert sorted("grad__" + hf_name(n) for n in names) == \
        sorted(k for k in ref if k.startswith("grad__"))
    for param_name, p in model.named_parameters():
        expected = our_layout(param_name, ref["grad__" + hf_name(param_name)])
        assert p.grad.dtype == np.float32
        assert np.abs(p.grad - expected).max() / np.abs(expected).max() < TOL, param_name


@pytest.mark.parametrize("name", REFERENCES)
def test_hidden_states_match_pytorch(name):
    # transformers' hidden_states: the embeddings, the output of each block but the last, and
    # the last block's output after the final norm. A mismatch says which layer went wrong.
    directory, ref = reference(name)
    model = load_pretrained(directory)
    with no_grad():
        h = model.embed_tokens(ref["x"])
        states = [h]
        for block in model.layers:
            h = block(h)
            states.append(h)
        states[-1] = model.norm(h)
    assert len(states) == model.config.n_layer + 1
    for i, state in enumerate(states):
        assert np.abs(state.data - ref[f"hidden_states_{i}"]).max() < TOL, i


@pytest.mark.parametrize("name", REFERENCES)
@pytest.mark.parametrize("mode", ["train", "eval"])   # autograd ops / generation's `_infer`
def test_kv_cached_decode_matches_pytorch_and_our_full_forward(name, mode):
    directory, ref = reference(name)
    model = load_pretrained(directory).train(mode == "train")
    x = ref["x"]
    with no_grad():
        full = model(x).data
        cache = model.new_kv_cache(batch_size=2)
        one_at_a_time = np.concatenate([model(x[:, t:t + 1], kv_cache=cache).data
                                        for t in range(x.shape[1])], axis=1)
        cache = model.new_kv_cache(batch_size=2)
        prefill = model(x[:, :9], kv_cache=cache).data
        rest = np.concatenate([model(x[:, t:t + 1], kv_cache=cache).data
                               for t in range(9, x.shape[1])], axis=1)
        last = model(x, last_only=True).data
    assert np.abs(one_at_a_time - ref["decode_logits"]).max() < TOL
    assert np.abs(one_at_a_time - full).max() < TOL
    assert np.abs(np.concatenate([prefill, rest], axis=1) - full).max() < TOL
    assert np.abs(last[:, 0] - full[:, -1]).max() < 1e-6


@pytest.mark.parametrize("name", REFERENCES)
def test_float64_model_agrees_to_the_reference_float32_rounding(name):
    # In float64 our rounding vanishes; what is left is PyTorch's float32 rounding.
    directory, ref = reference(name)
    model = load_pretrained(directory, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    loss = model.loss(ref["x"], ref["y"])
    loss.backward()
    assert abs(float(loss.data) - float(ref["loss"])) < 1e-5
    for param_name, p in model.named_parameters():
        expected = our_layout(param_name, ref["grad__" + hf_name(param_name)])
        assert np.abs(p.grad - expected).max() / np.abs(expected).max() < 1e-5, param_name


# ----------------------------------------------------------------------------------------------
# config.json


def test_both_config_layouts_give_the_same_model(tmp_path):
    # transformers 5 writes `rope_parameters`; the hub's checkpoints have `rope_theta` and
    # `rope_scaling` at the top level.
    directory, _ = reference("hf-llama-tiny")
    new_layout = json.loads((directory / "config.json").read_text())
    old_layout = {k: v for k, v in new_layout.items() if k != "rope_parameters"}
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    new_layout["rope_parameters"] = {"rope_theta": 500000.0, **scaling}
    old_layout.update(rope_theta=500000.0, rope_scaling=scaling)
    a, b = llama_config_from_hf(new_layout), llama_config_from_hf(old_layout)
    assert a == b
    assert a.rope_theta == 500000.0 and a.rope_scaling == scaling
    model = Llama(a)
    expected = rope_frequencies(16, 500000.0, scaling)
    assert np.array_equal(model.layers[1].self_attn.rope_freqs, expected)
    assert not np.array_equal(expected, rope_frequencies(16, 500000.0))   # scaling did work
    assert llama_config_from_hf({**old_layout, "rope_scaling": None}).rope_scaling is None


@pytest.mark.parametrize("config_file, parameters, head_size, scaled", [
    ("llama3/config.json", 1_235_814_400, 64, True),                 # Llama 3.2 1B
    ("qwen3/config.json", 596_049_920, 128, False),                   # Qwen3-0.6B
    ("smollm2/config.json", 134_515_008, 64, False),                  # SmolLM2-135M
    ("smollm2/config.SmolLM2-360M-Instruct.json", 361_821_120, 64, False),
])
def test_the_real_models_configs_read(config_file, parameters, head_size, scaled):
    config = llama_config_from_hf(json.loads(
        reference_file("tokenizers/" + config_file).read_text()))
    assert config.num_parameters() == parameters
    assert config.head_size == head_size
    assert (config.rope_scaling is not None) == scaled
    assert config.tie_word_embeddings


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
    ({"model_type": "qwen3_moe"}, "model_type 'qwen3_moe' is not supported"),
    ({"num_experts": 8, "num_experts_per_tok": 2}, "mixture-of-experts"),
    ({"num_local_experts": 8}, "mixture-of-experts"),
    ({"use_sliding_window": True, "sliding_window": 64}, "sliding-window attention"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "sliding-window attention"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"attention_bias": True}, "attention_bias: true is not supported"),
    ({"mlp_bias": True}, "mlp_bias: true is not supported"),
    ({"rope_interleaved": True}, "rope_interleaved"),
    ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}},
     "rope_type 'yarn' is not supported"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "not a causal language model"),
    ({"num_key_value_heads": 3}, "cannot be shared out evenly"),
    ({"hidden_size": None}, "missing key 'hidden_size'"),
])
def test_models_we_do_not_run_are_refused_by_name(tmp_path, changes, message):
    directory, _ = reference("hf-llama-tiny")
    changed = copy_with_config(directory, tmp_path / "changed", **changes)
    with pytest.raises(CheckpointError, match=message) as error:
        load_pretrained(changed)
    assert str(changed / "config.json") in str(error.value)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------
# Weights: what is stored, tied heads, shards


def test_a_tied_checkpoint_that_stores_its_head_anyway_loads_without_it(tmp_path):
    # Qwen3-0.6B's file holds lm_head.weight although its head is tied: transformers uses the
    # embedding, and so do we.
    directory, ref = reference("hf-qwen3-tiny")
    tensors = {k: np.array(v) for k, v in load_file(directory / "model.safetensors").items()}
    tensors["lm_head.weight"] = np.zeros_like(tensors["model.embed_tokens.weight"])
    target = tmp_path / "stored-head"
    target.mkdir()
    shutil.copyfile(directory / "config.json", target / "config.json")
    save_file(tensors, target / "model.safetensors")
    model = load_pretrained(target)
    with no_grad():
        assert np.abs(model(ref["x"]).data - ref["logits"]).max() < TOL


def test_an_untied_checkpoint_without_its_head_is_an_error_naming_it(tmp_path):
    directory, _ = reference("hf-llama-tiny")
    tensors = dict(load_file(directory / "model.safetensors"))
    del tensors["lm_head.weight"]
    target = tmp_path / "headless"
    target.mkdir()
    shutil.copyfile(directory / "config.json", target / "config.json")
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): lm_head.weight"):
        load_pretrained(target)


def test_stray_bias_tensors_are_named(tmp_path):
    directory, _ = reference("hf-llama-tiny")
    tensors = dict(load_file(directory / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, dtype=np.float32)
    target = tmp_path / "biased"
    target.mkdir()
    shutil.copyfile(directory / "config.json", target / "config.json")
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensors .*q_proj.bias"):
        load_pretrained(target)


def split_into_shards(directory: Path, target: Path) -> dict[str, str]:
    """The checkpoint in `directory` as two shards and an index, the way transformers writes
    them, each tensor's bytes and dtype (BF16 too, which NumPy cannot name) kept as they are."""
    target.mkdir()
    shutil.copyfile(directory / "config.json", target / "config.json")
    infos, _ = read_header(directory / "model.safetensors")
    raw = load_file(directory / "model.safetensors", widen=False)
    names = sorted(raw)
    weight_map = {}
    for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        header, data = {}, b""
        for n in part:
            header[n] = {"dtype": infos[n].dtype, "shape": list(infos[n].shape),
                         "data_offsets": [len(data), len(data) + raw[n].nbytes]}
            data += raw[n].tobytes()
            weight_map[n] = shard
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        (target / shard).write_bytes(struct.pack("<Q", len(text)) + text + data)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


@pytest.mark.parametrize("name", ["hf-llama-tiny"])
def test_sharded_checkpoints_load_shard_by_shard(tmp_path, name):
    directory, ref = reference(name)
    split_into_shards(directory, tmp_path / "sharded")
    whole, sharded = load_pretrained(directory), load_pretrained(tmp_path / "sharded")
    for (n, a), (m, b) in zip(whole.named_parameters(), sharded.named_parameters()):
        assert n == m and np.array_equal(a.data, b.data), n
    with no_grad():
        assert np.abs(sharded(ref["x"]).data - ref["logits"]).max() < TOL


def test_bfloat16_shards_are_widened(tmp_path):
    # The Qwen3 file is bfloat16, and so are its shards.
    directory, ref = reference("hf-qwen3-tiny")
    split_into_shards(directory, tmp_path / "sharded")
    assert {info.dtype for info in read_header(
        tmp_path / "sharded" / "model-00001-of-00002.safetensors")[0].values()} == {"BF16"}
    model = load_pretrained(tmp_path / "sharded")
    with no_grad():
        assert np.abs(model(ref["x"]).data - ref["logits"]).max() < TOL


def test_a_missing_or_inconsistent_shard_is_named(tmp_path):
    directory, _ = reference("hf-llama-tiny")
    weight_map = split_into_shards(directory, tmp_path / "sharded")
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    moved = {**weight_map, "model.norm.weight": "model-00001-of-00002.safetensors"}
    if weight_map["model.norm.weight"] == moved["model.norm.weight"]:
        moved["model.norm.weight"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": moved}))
    with pytest.raises(CheckpointError, match="does not hold what model.safetensors.index.json"):
        load_pretrained(tmp_path / "sharded")
    index.write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "sharded" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors is missing"):
        load_pretrained(tmp_path / "sharded")


# ----------------------------------------------------------------------------------------------
# Saving


@pytest.mark.parametrize("name", REFERENCES)
def test_save_then_reload_is_the_identity_in_hugging_faces_layout(tmp_path, name):
    directory, ref = reference(name)
    model = load_pretrained(directory)
    save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    original = json.loads((directory / "config.json").read_text())
    for key in ("model_type", "architectures", "hidden_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "num_hidden_layers",
                "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "vocab_size"):
        assert config[key] == original[key], key
    assert config["rope_theta"] == original["rope_parameters"]["rope_theta"]
    # Without our own key the file still reads as the same model: it is Hugging Face's layout.
    assert llama_config_from_hf({k: v for k, v in config.items()
                                 if k != "deep_understanding"}) == model.config
    # The same tensors under the same names, (out, in) as transformers stores them.
    saved = load_file(tmp_path / "out" / "model.safetensors")
    given = load_file(directory / "model.safetensors")
    assert sorted(saved) == sorted(given)
    for key in given:
        assert saved[key].dtype == np.float32 and np.array_equal(saved[key], given[key]), key
    reloaded = load_pretrained(tmp_path / "out")
    assert reloaded.config == model.config
    with no_grad():
        assert np.array_equal(reloaded(ref["x"]).data, model(ref["x"]).data)


def test_a_from_scratch_model_round_trips_with_its_own_options(tmp_path):
    config = tiny_config(mlp="relu2", zero_init_proj=True, logit_softcap=15.0, qk_norm=True,
                         head_dim=6, rope_theta=500.0)
    model = Llama(config, rng=np.random.default_rng(0))
    for p in model.parameters():                      # no zeros left: every tensor must travel
        p.data += np.random.default_rng(1).normal(0, 0.02, p.shape).astype(np.float32)
    save_pretrained(model, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["model_type"] == "qwen3" and written["hidden_act"] == "relu2"
    assert written["deep_understanding"] == config.to_dict()
    reloaded = load_pretrained(tmp_path / "run")
    assert reloaded.config == config
    idx = np.random.default_rng(2).integers(0, 40, size=(2, 10))
    with no_grad():
        assert np.array_equal(reloaded(idx).data, model(idx).data)
    changed = load_pretrained(tmp_path / "run", dropout=0.1, block_size=12)
    assert changed.config.dropout == 0.1 and changed.config.block_size == 12


# ----------------------------------------------------------------------------------------------
# The model itself: gradients, options, generation


@pytest.mark.parametrize("changes", [
    dict(qk_norm=True, head_dim=6),                  # Qwen3: QK-norm, head_dim != n_embd / n_head
    dict(mlp="relu2"),
])
def test_one_block_gradcheck_float64(changes):
    config = tiny_config(n_embd=8, intermediate_size=12, **changes)
    block = LlamaBlock(config, rope_frequencies(config.head_size, 100.0)).to(np.float64)
    rng = np.random.default_rng(0)
    for p in block.parameters():                      # away from the ones and zeros of init
        p.data[...] = rng.normal(0.0, 0.5, p.shape)
    x = Tensor(rng.standard_normal((2, 5, 8)), requires_grad=True)
    params = block.parameters()

    def run(x, *_):
        return block(x)
    result = gradcheck(run, [x, *params])
    assert result.passed, f"max rel error {result.max_rel_error:.2e}"


def test_zero_initialised_projections_make_every_block_the_identity():
    model = Llama(tiny_config(zero_init_proj=True), rng=np.random.default_rng(0))
    for block in model.layers:
        assert not block.self_attn.o_proj.weight.data.any()
        assert not block.mlp.down_proj.weight.data.any()
    idx = np.random.default_rng(1).integers(0, 40, size=(1, 7))
    with no_grad():
        expected = F.linear(model.norm(model.embed_tokens(idx)), model.lm_head.weight)
        assert np.allclose(model(idx).data, expected.data, atol=1e-6)
    # Zero weights still learn: their gradient x^T g does not pass through them.
    model.loss(idx, idx).backward()
    assert np.abs(model.layers[0].self_attn.o_proj.weight.grad).max() > 0


def test_relu2_mlp_has_no_gate_and_computes_down_of_relu_squared():
    model = Llama(tiny_config(mlp="relu2"), rng=np.random.default_rng(0))
    mlp = model.layers[0].mlp
    assert mlp.gate_proj is None
    assert "layers.0.mlp.gate_proj.weight" not in dict(model.named_parameters())
    assert model.num_parameters() == model.config.num_parameters()
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    expected = np.maximum(x @ mlp.up_proj.weight.data, 0) ** 2 @ mlp.down_proj.weight.data
    with no_grad():
        assert np.allclose(mlp(Tensor(x)).data, expected, atol=1e-5)


def test_logit_softcap_bounds_the_logits_and_the_loss_uses_them():
    config = tiny_config(logit_softcap=2.0)
    model = Llama(config, rng=np.random.default_rng(0))
    model.lm_head.weight.data *= 50.0                # logits beyond the cap
    idx = np.random.default_rng(1).integers(0, 40, size=(2, 6))
    with no_grad():
        logits = model(idx)
        uncapped = model.lm_head(model(idx, return_hidden=True))
    assert np.abs(logits.data).max() <= 2.0 < np.abs(uncapped.data).max()
    assert np.allclose(logits.data, 2.0 * np.tanh(uncapped.data / 2.0), atol=1e-5)
    expected = F.cross_entropy(logits, idx)
    assert np.isclose(float(model.loss(idx, idx).data), float(expected.data), rtol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_and_names(tied):
    config = tiny_config(tie_word_embeddings=tied, qk_norm=True)
    model = Llama(config)
    assert model.num_parameters() == config.num_parameters()
    names = dict(model.named_parameters())
    assert ("lm_head.weight" in names) is not tied
    assert names["layers.1.self_attn.k_proj.weight"].shape == (16, 2 * 4)       # (in, out)
    assert names["layers.0.self_attn.q_norm.weight"].shape == (4,)


def test_generation_is_shared_with_gpt_and_runs_past_the_context():
    model = Llama(tiny_config(block_size=12), rng=np.random.default_rng(0))
    prompt = [3, 14, 15, 9, 2]
    # Up to a full context the KV-cached decode is the full forward, token for token.
    assert generate(model, prompt, max_new_tokens=7, temperature=0) == \
        generate_uncached(model, prompt, 7)
    # Beyond it the cache is re-filled from the recent window and generation carries on.
    out = generate(model, prompt, max_new_tokens=30, temperature=1.0, seed=0)
    assert len(out) == 30 and all(0 <= t < 40 for t in out)


def test_bad_configs_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        tiny_config(n_embd=18)
    with pytest.raises(ValueError, match="must be even"):
        tiny_config(head_dim=5)
    with pytest.raises(ValueError, match="mlp must be one of"):
        tiny_config(mlp="gelu")
    with pytest.raises(ValueError, match="unknown keys"):
        LlamaConfig.from_dict({"n_layers": 2})
    model = Llama(tiny_config())
    with pytest.raises(ValueError, match="longer than the model's context of 24"):
        model(np.zeros((1, 25), dtype=np.int64))
    with pytest.raises(ValueError, match="integer token ids"):
        model(np.zeros((1, 3)))


# Generation takes Llama._infer: the same arithmetic on plain arrays. A large prefill (more
# than _DECODE_MAX_ROWS rows, and enough work: _TEAM_MIN_WORK, set to 0 here so that these tiny
# models take it) is split over a team of threads by key/value heads, MLP units and
# vocabulary; decode steps run in one thread (BLAS's threads split their products). Both
# must give what `forward` gives.
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("changes", [
    dict(),                                                       # 2 kv heads for 4 query heads
    dict(n_kv_head=3, n_head=6, head_dim=4, qk_norm=True, tie_word_embeddings=True),
    dict(n_kv_head=4, mlp="relu2", logit_softcap=5.0),            # one query head per kv head
])
def test_generation_path_gives_the_logits_of_forward(changes, threads, monkeypatch):
    import gpt.core.llama as llama_module
    from gpt.core.llama import _DECODE_MAX_ROWS
    monkeypatch.setattr(llama_module, "_TEAM_MIN_WORK", 0)
    model = Llama(tiny_config(**changes), rng=np.random.default_rng(0)).eval()
    model.inference_threads = threads
    tokens = np.random.default_rng(1).integers(0, 40, size=(2, 12))
    prefill = 9
    assert 2 * prefill > _DECODE_MAX_ROWS >= 2                    # a team pass, then decode steps
    with no_grad():
        full = model(tokens).data                                 # the autograd path
        cache = model.new_kv_cache(batch_size=2)
        parts = [model(tokens[:, :prefill], kv_cache=cache).data]
        assert len(model._split[1]) == min(threads, model.config.n_kv_head)   # the team's
        parts += [model(tokens[:, t:t + 1], kv_cache=cache).data for t in range(prefill, 12)]
        assert len(model._split[1]) == 1                          # decode: one thread
        cache = model.new_kv_cache(batch_size=2)
        hidden = model(tokens, kv_cache=cache, last_only=True, return_hidden=True).data
        expected_hidden = model(tokens, return_hidden=True).data[:, -1:]
    assert np.abs(np.concatenate(parts, axis=1) - full).max() < 1e-5
    assert np.abs(hidden - expected_hidden).max() < 1e-5


def test_decode_steps_slice_rope_tables_made_only_when_the_positions_outgrow_them(monkeypatch):
    # Generation keeps cos and sin for positions 0 .. capacity - 1 and grows them, like the KV
    # cache, to twice what a step needs (up to block_size): a decode step takes a slice.
    import gpt.core.llama as llama_module
    model = Llama(tiny_config(block_size=24, rope_theta=500.0),
                  rng=np.random.default_rng(0)).eval()
    made = []
    real = llama_module.rope_tables

    def counted(freqs, start, n, dtype):
        made.append((start, n))
        return real(freqs, start, n, dtype)

    monkeypatch.setattr(llama_module, "rope_tables", counted)
    tokens = np.random.default_rng(1).integers(0, 40, size=(1, 24))
    with no_grad():
        cache = model.new_kv_cache(batch_size=1)
        parts = [model(tokens[:, :3], kv_cache=cache).data]                # positions 0..2
        parts += [model(tokens[:, t:t + 1], kv_cache=cache).data for t in range(3, 24)]
        full = model(tokens).data
    assert made == [(0, 6), (0, 14), (0, 24)]          # 3 -> 6, 7 -> 14, 15 -> 30 cut to 24
    assert np.abs(np.concatenate(parts, axis=1) - full).max() < 1e-5
    # Every slice is, bit for bit, the table of its own positions.
    freqs = model.layers[0].self_attn.rope_freqs
    for start, T in [(0, 24), (5, 1), (23, 1), (7, 9)]:
        for ours, theirs in zip(model._rope_for(start, T, np.dtype(np.float32)),
                                real(freqs, start, T, np.float32)):
            assert ours.shape == (T, model.config.head_size // 2) and np.array_equal(ours, theirs)


def test_generation_with_lora_adapters_goes_through_the_modules():
    from gpt.finetune.lora import apply_lora
    model = Llama(tiny_config(), rng=np.random.default_rng(0))
    apply_lora(model, rank=2, alpha=4.0, rng=np.random.default_rng(1))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data[...] = 0.1                                     # adapters that change things
    model.eval()
    tokens = np.random.default_rng(2).integers(0, 40, size=(1, 6))
    with no_grad():
        full = model(tokens).data
        cache = model.new_kv_cache()
        cached = np.concatenate([model(tokens[:, :3], kv_cache=cache).data] +
                                [model(tokens[:, t:t + 1], kv_cache=cache).data
                                 for t in range(3, 6)], axis=1)
    assert not model._plain_projections()
    assert np.abs(cached - full).max() < 1e-5


def test_the_kv_cache_stores_some_heads_at_a_time():
    cache = KVCache(n_layer=1, batch_size=1, n_head=3, head_size=2, max_length=8)
    k = np.arange(18, dtype=np.float32).reshape(1, 3, 3, 2)
    cache.reserve(3)
    first, _ = cache.store(0, k[:, :2], -k[:, :2], heads=slice(0, 2))
    last, values = cache.store(0, k[:, 2:], -k[:, 2:], heads=slice(2, 3))
    assert first.shape == (1, 2, 3, 2) and last.shape == (1, 1, 3, 2)
    assert np.array_equal(cache.keys[0, :, :, :3], k)
    assert np.array_equal(values, -k[:, 2:])
    with pytest.raises(ValueError, match="do not fit in max_length 8"):
        cache.reserve(9)


def test_the_kv_cache_grows_as_it_fills_and_keeps_what_it_held():
    cache = KVCache(n_layer=2, batch_size=1, n_head=1, head_size=2, max_length=600)
    assert cache.keys.shape[3] == 256                 # not all 600 positions up front
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((1, 1, n, 2)).astype(np.float32) for n in (200, 100, 300)]
    for chunk in chunks:
        for layer in range(2):
            keys, values = cache.store(layer, chunk, -chunk)
        cache.length += chunk.shape[2]
    assert cache.keys.shape[3] == 600
    everything = np.concatenate(chunks, axis=2)
    assert np.array_equal(keys, everything) and np.array_equal(values, -everything)
    with pytest.raises(ValueError, match="do not fit in max_length 600"):
        cache.store(0, chunks[0][:, :, :1], chunks[0][:, :, :1])


def test_a_saved_llama_with_a_tokenizer_chats_through_the_engine(tmp_path):
    # The chat engine, like generation, only needs the shared model interface.
    model = Llama(tiny_config(vocab_size=tiny_chat.tokenizer().vocab_size, block_size=48),
                  rng=np.random.default_rng(0))
    save_pretrained(model, tmp_path / "chat", tiny_chat.tokenizer())
    engine = ChatEngine.from_checkpoint(tmp_path / "chat")
    assert isinstance(engine.model, Llama) and engine.context_length == 48
    reply = engine.chat([{"role": "user", "content": "hi"}],
                        SamplingParams(max_new_tokens=5, temperature=0)).read()
    assert isinstance(reply, str)
    assert engine.tokens_generated > 0


@pytest.mark.parametrize("shape", [(1, 700), (700, 1), (300, 513), (256, 512)])
def test_our_layout_is_the_transposed_view(shape):
    from gpt.io.hf_llama import to_our_layout
    stored = np.random.default_rng(0).standard_normal(shape).astype(np.float32)  # (out, in)
    for name in ("model.layers.3.mlp.gate_proj.weight", "model.layers.3.mlp.down_proj.weight",
                 "model.layers.0.self_attn.o_proj.weight", "lm_head.weight"):
        view = to_our_layout(name, stored)
        assert np.shares_memory(view, stored) and np.array_equal(view, stored.T)
    assert to_our_layout("model.embed_tokens.weight", stored) is stored
    norm = stored[0]
    assert to_our_layout("model.norm.weight", norm) is norm


def test_float32_weights_stay_in_the_file(tmp_path):
    # Every tensor of a float32 file is the mapped pages themselves: the embedding and norms
    # as stored, the projections as the (in, out) transposes of their stored (out, in)
    # matrices.
    directory, _ = reference("hf-llama-tiny")
    model = load_pretrained(copy_with_config(directory, tmp_path / "copy"))
    params = dict(model.named_parameters())
    stored = load_file(directory / "model.safetensors")
    for name, p in params.items():
        assert not p.data.flags.owndata, name
        if p.data.ndim == 2 and "embed" not in name:
            assert p.data.flags.f_contiguous, name
    for name, p in params.items():
        expected = stored[name if name == "lm_head.weight" else "model." + name]
        np.testing.assert_array_equal(p.data, expected.T if p.data.ndim == 2
                                      and "embed" not in name else expected, err_msg=name)
    before = (tmp_path / "copy" / "model.safetensors").read_bytes()
    params["embed_tokens.weight"].data += 1.0          # copy-on-write: the file stays as it was
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == before


def test_a_small_prefill_runs_in_one_thread_and_a_large_one_in_the_team(monkeypatch):
    # The team pays off only when a layer's products are large: rows x a layer's weights of
    # at least _TEAM_MIN_WORK multiply-adds (and more than _DECODE_MAX_ROWS rows).
    import gpt.core.llama as llama_module
    model = Llama(tiny_config(), rng=np.random.default_rng(0)).eval()
    model.inference_threads = 2
    per_row = model._layer_weights()
    assert per_row == sum(p.data.size for name, p in model.layers[0].named_parameters()
                          if name.endswith("proj.weight"))
    tokens = np.random.default_rng(1).integers(0, 40, size=(1, 20))
    teams, real_team = [], llama_module.thread_team
    monkeypatch.setattr(llama_module, "thread_team",
                        lambda ranks: teams.append(ranks) or real_team(ranks))
    with no_grad():
        for work in (20 * per_row + 1, 20 * per_row):             # just too little, just enough
            monkeypatch.setattr(llama_module, "_TEAM_MIN_WORK", work)
            model(tokens, kv_cache=model.new_kv_cache(batch_size=1))
    assert teams == [1, 2]
