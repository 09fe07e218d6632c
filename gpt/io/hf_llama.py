"""Hugging Face Llama and Qwen3 checkpoints: `config.json` and weights, in and out.

A `LlamaForCausalLM` or `Qwen3ForCausalLM` directory (Llama 3.x, SmolLM2, Qwen3, and our own
checkpoints of gpt.core.llama) holds

    config.json                       model_type "llama" or "qwen3" and the shape
    model.safetensors                 the weights, or shards listed in
    model.safetensors.index.json      ("weight_map": tensor name -> shard file)

Two layouts of config.json occur: transformers 5 writes the RoPE settings under
`rope_parameters` ({"rope_theta": ..., "rope_type": ..., scaling keys}); checkpoints on the hub,
written by older versions, keep `rope_theta` and `rope_scaling` at the top level. Both read.

Weights are named `model.embed_tokens.weight`, `model.layers.0.self_attn.q_proj.weight`, ...,
`model.norm.weight`, `lm_head.weight` (absent when the head is tied to the embedding). Linear
weights are stored (out, in), PyTorch's layout; ours is (in, out). As it is read
(`to_our_layout`, one tensor at a time, after a bfloat16 or float16 one is widened to float32)
each becomes the transposed view of the stored matrix, no copy: a float32 file's weights stay
its mapped pages. Written, each is transposed back (a view; the writer copies it in order).

What is refused, by name, because the model here would compute something else: another
model_type, mixture-of-experts layers, sliding-window attention, an activation other than SiLU,
biases in attention or MLP, interleaved RoPE, a RoPE scaling other than linear or llama3.

This module maps names and settings; gpt.io.checkpoint reads and writes the files.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpt.core.llama import Llama, LlamaConfig
from gpt.errors import GPTError

# model_type -> the architecture transformers builds for it.
LLAMA_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
HF_PREFIX = "model."
# Keys our own checkpoints add to config.json: our whole LlamaConfig.
OUR_KEY = "deep_understanding"
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


class UnsupportedModelError(GPTError, ValueError):
    """A config.json describes a model this project does not run (the message says what)."""


def is_llama_config(values: dict[str, Any]) -> bool:
    """Whether a config.json is read by this module (its model_type is llama or qwen3)."""
    return values.get("model_type") in LLAMA_MODEL_TYPES


# ----------------------------------------------------------------------------------------------
# config.json


def llama_config_from_hf(values: dict[str, Any]) -> LlamaConfig:
    """Our LlamaConfig from a config.json: ours if present, else mapped from Hugging Face's keys.

    Raises UnsupportedModelError naming the first setting we do not implement, and
    ValueError (from LlamaConfig) for values that make no sense.
    """
    model_type = values.get("model_type")
    if model_type not in LLAMA_MODEL_TYPES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not a Llama or Qwen3 model")
    if OUR_KEY in values:
        return LlamaConfig.from_dict(values[OUR_KEY])
    _refuse_what_we_do_not_run(values)
    try:
        n_head = values["num_attention_heads"]
        theta, scaling = _rope_settings(values)
        return LlamaConfig(
            vocab_size=values["vocab_size"],
            block_size=values["max_position_embeddings"],
            n_layer=values["num_hidden_layers"],
            n_head=n_head,
            n_kv_head=values.get("num_key_value_heads") or n_head,
            n_embd=values["hidden_size"],
            head_dim=values.get("head_dim"),
            intermediate_size=values["intermediate_size"],
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(values.get("rms_norm_eps", 1e-6)),
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
            dropout=float(values.get("attention_dropout", 0.0)),
        )
    except KeyError as missing:
        raise UnsupportedModelError(f"missing key {missing} (not a complete {model_type} "
                                    f"config)") from None


def _refuse_what_we_do_not_run(values: dict[str, Any]) -> None:
    model_type = values["model_type"]
    architectures = values.get("architectures") or [LLAMA_MODEL_TYPES[model_type]]
    if not any(str(a).endswith("ForCausalLM") for a in architectures):
        raise UnsupportedModelError(f"architectures {architectures} are not a causal language "
                                    f"model (expected {LLAMA_MODEL_TYPES[model_type]})")
    experts = {k: values[k] for k in _EXPERT_KEYS if values.get(k)}
    if experts:
        raise UnsupportedModelError(f"mixture-of-experts layers ({experts}) are not supported, "
                                    f"only dense MLPs")
    layer_types = values.get("layer_types") or []
    sliding = sorted({t for t in layer_types if t != "full_attention"})
    if values.get("use_sliding_window") or sliding:
        what = f"layer_types {sliding}" if sliding else "use_sliding_window: true"
        raise UnsupportedModelError(f"sliding-window attention ({what}) is not supported, "
                                    f"only full causal attention")
    activation = values.get("hidden_act", "silu")
    if activation != "silu":
        raise UnsupportedModelError(f"hidden_act {activation!r} is not supported: the MLP here "
                                    f"is SwiGLU, with SiLU ('silu')")
    for key in ("attention_bias", "mlp_bias"):
        if values.get(key):
            raise UnsupportedModelError(f"{key}: true is not supported (the model here has no "
                                        f"biases)")
    if values.get("rope_interleaved"):
        raise UnsupportedModelError("rope_interleaved: true is not supported (RoPE here turns "
                                    "channel i with channel i + D/2, Hugging Face's layout)")


def _rope_settings(values: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling dict or None) from either layout of config.json."""
    parameters = values.get("rope_parameters")
    if isinstance(parameters, dict) and parameters:
        if any(isinstance(v, dict) for v in parameters.values()):
            raise UnsupportedModelError(f"RoPE settings per layer type ({sorted(parameters)}) "
                                        f"are not supported")
        settings = dict(parameters)
    else:
        settings = dict(values.get("rope_scaling") or {})
        settings.setdefault("rope_theta", values.get("rope_theta", 10000.0))
    theta = float(settings.pop("rope_theta", 10000.0))
    if settings.get("rope_type", settings.get("type", "default")) == "default":
        return theta, None
    return theta, settings


def llama_config_to_hf(config: LlamaConfig, bos_id: int | None = None,
                       eos_id: int | None = None) -> dict[str, Any]:
    """config.json in Hugging Face's keys, with our full config under `deep_understanding`.

    RoPE goes at the top level (`rope_theta`, `rope_scaling`), the layout transformers 4 reads
    and transformers 5 still accepts: a 4.x reader would not see `rope_parameters` and would
    silently use its default theta. The options of the modern recipe have no place in these
    keys: `hidden_act` "relu2" (a model without `gate_proj`, which transformers cannot build as
    the same model) and `logit_softcap` live in our key only, so only a model without them
    computes the same in transformers.
    """
    model_type = "qwen3" if config.qk_norm else "llama"
    hf: dict[str, Any] = {
        "architectures": [LLAMA_MODEL_TYPES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.block_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "hidden_act": "silu" if config.mlp == "swiglu" else "relu2",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "attention_bias": False,
        "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if model_type == "llama":
        hf["mlp_bias"] = False
    else:
        hf["use_sliding_window"] = False
        hf["sliding_window"] = None
    if bos_id is not None:
        hf["bos_token_id"] = bos_id
    if eos_id is not None:
        hf["eos_token_id"] = eos_id
    hf[OUR_KEY] = config.to_dict()
    return hf


# ----------------------------------------------------------------------------------------------
# Weights


def _is_linear_weight(name: str) -> bool:
    # Every 2-D tensor but the embedding is a Linear weight (the projections and lm_head).
    return name.endswith(".weight") and "embed_tokens" not in name


def to_our_layout(name: str, array: np.ndarray) -> np.ndarray:
    """A tensor of a Hugging Face file as our model holds it: Linear weights (out, in) ->
    (in, out), as the transposed view (Fortran-ordered, no copy); everything else unchanged.
    For `gpt.io.safetensors.load_file(transform=...)`, which applies it tensor by tensor,
    after widening half precision to float32.

    A decode step multiplies a row by each weight in this layout: a dot product with each
    stored row, the order in which the matrix lies in memory (see `_project` in
    gpt/core/llama.py).
    """
    if array.ndim != 2 or not _is_linear_weight(name):
        return array
    return array.T


def llama_weights_from_hf(tensors: dict[str, np.ndarray],
                          config: LlamaConfig) -> dict[str, np.ndarray]:
    """Our parameter names for the tensors of a Llama/Qwen3 file (already in our layout).

    The `model.` prefix goes; `lm_head.weight` stays. With a tied head the model has no
    `lm_head`, and a stored copy is dropped, as transformers does (the embedding is the head).
    Anything else that does not fit is left for the caller's name and shape check to report.
    """
    state = {}
    for key, array in tensors.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        state[name] = array
    return state


def llama_hf_state_dict(model: Llama) -> dict[str, np.ndarray]:
    """The model's parameters under Hugging Face names, Linear weights as (out, in) views.

    Views, not copies: `save_file` makes each one C-ordered only as it writes it.
    """
    out = {}
    for name, array in model.state_dict().items():
        key = name if name == "lm_head.weight" else HF_PREFIX + name
        out[key] = array.T if array.ndim == 2 and _is_linear_weight(name) else array
    return out
