"""The Llama architecture on our autograd: Llama 3, SmolLM2, Qwen3, and the modern from-scratch
model.

    idx (B, T) token ids
      -> embed_tokens[idx]                        token embeddings, no position table   (B, T, C)
      -> n_layer x LlamaBlock:                    pre-norm residual blocks
             x = x + self_attn(input_layernorm(x))
                   q, k, v projections; [RMSNorm of each head's q and k: Qwen3's qk_norm];
                   RoPE turns q and k by their positions; H query heads share H_kv key/value
                   heads (grouped-query attention); o_proj mixes the heads back
             x = x + mlp(post_attention_layernorm(x))
                   down(silu(gate(x)) * up(x))    SwiGLU (Llama, Qwen3)
                   down(relu(up(x))^2)            ReLU² (the modern recipe, mlp="relu2")
      -> norm                                     final RMSNorm
      -> x @ head                                 lm_head, or the embedding itself (tied)
      [-> cap * tanh(logits / cap)]               optional logit soft-cap
    logits (B, T, V)

What differs from GPT-2 (gpt.core.model), and why these models do it:
- No position embedding: RoPE rotates queries and keys instead, so attention scores depend on
  the distance between two tokens rather than on where they sit (autograd/ops/rope.py).
- RMSNorm instead of LayerNorm: no mean subtracted, no bias; as good in practice, and cheaper.
- Grouped-query attention: fewer key/value heads than query heads shrinks the KV cache, which is
  what generation reads for every token.
- A gated MLP (SwiGLU) and no biases anywhere.

Parameter names are Hugging Face's without the `model.` prefix (`embed_tokens.weight`,
`layers.0.self_attn.q_proj.weight`, `norm.weight`, `lm_head.weight`), so checkpoints map one to
one. Every Linear stores its weight as (in, out), our layout; Hugging Face's files hold
(out, in), and gpt/io/hf_llama.py transposes on the way in and out.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autograd import Tensor
from autograd import functional as F
from autograd.nn import Dropout, Embedding, Linear, Module, ModuleList, RMSNorm, init_skipped
from autograd.ops.relu_squared import relu_squared
from autograd.ops.repeat_kv import grouped_query_attention
from autograd.ops.rope import RopeConfigError, rope, rope_frequencies
from autograd.ops.softcap import softcap
from autograd.ops.swiglu import swiglu
from autograd.random import default_rng
from gpt.core.model import KVCache, cache_length, token_batch

MLP_KINDS = ("swiglu", "relu2")


@dataclass
class LlamaConfig:
    """The shape of a Llama-family model (Hugging Face's names in brackets).

    vocab_size; block_size: the longest context [max_position_embeddings]; n_layer blocks
    [num_hidden_layers] of width n_embd [hidden_size]; n_head query heads
    [num_attention_heads] sharing n_kv_head key/value heads [num_key_value_heads]; head_dim
    channels per head (None: n_embd // n_head; Qwen3 sets it apart, so n_head * head_dim may
    differ from n_embd); intermediate_size: the MLP's hidden width.

    rope_theta: RoPE's base; rope_scaling: a Hugging Face scaling dict (None, or e.g.
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}). rms_norm_eps: every RMSNorm's epsilon.
    qk_norm: RMSNorm over each head's queries and keys before RoPE (Qwen3).
    tie_word_embeddings: the output head is the token embedding.

    For training from scratch (issue 13's recipe; a Hugging Face checkpoint has the defaults):
    mlp: "swiglu" (down(silu(gate(x)) * up(x))) or "relu2" (down(relu(up(x))^2), no gate);
    zero_init_proj: o_proj and down_proj start at zero, so each block starts as the identity;
    logit_softcap: None, or cap c for logits c * tanh(z / c); dropout: one rate for the
    embedding, attention and residual dropout sites, as GPTConfig has.
    """
    vocab_size: int = 32000
    block_size: int = 2048
    n_layer: int = 16
    n_head: int = 32
    n_kv_head: int = 8
    n_embd: int = 2048
    head_dim: int | None = None
    intermediate_size: int = 8192
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    mlp: str = "swiglu"
    zero_init_proj: bool = False
    logit_softcap: float | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                     "intermediate_size"):
            _check_positive_int(name, getattr(self, name))
        if self.head_dim is not None:
            _check_positive_int("head_dim", self.head_dim)
        elif self.n_embd % self.n_head:
            raise ValueError(f"LlamaConfig: n_embd={self.n_embd} is not divisible by "
                             f"n_head={self.n_head} (set head_dim)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head={self.n_head} query heads cannot be shared "
                             f"out evenly over n_kv_head={self.n_kv_head} key/value heads")
        if self.head_size % 2:
            raise ValueError(f"LlamaConfig: the head size {self.head_size} must be even (RoPE "
                             f"turns pairs of channels)")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"LlamaConfig.mlp must be one of {', '.join(MLP_KINDS)}, got "
                             f"{self.mlp!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"LlamaConfig.logit_softcap must be positive or None, got "
                             f"{self.logit_softcap}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"LlamaConfig.rms_norm_eps must be positive, got "
                             f"{self.rms_norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LlamaConfig.dropout must be in [0, 1), got {self.dropout}")
        try:
            rope_frequencies(self.head_size, self.rope_theta, self.rope_scaling)
        except RopeConfigError as error:
            raise ValueError(f"LlamaConfig: {error}") from None

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LlamaConfig":
        """Build from a dict of our own keys; unknown keys are an error (a typo is not ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"LlamaConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def num_parameters(self) -> int:
        """The parameter count of Llama(config), from the shapes alone."""
        c, v, d = self.n_embd, self.vocab_size, self.head_size
        attention = c * self.n_head * d * 2 + c * self.n_kv_head * d * 2    # q, o; k, v
        mlp = (3 if self.mlp == "swiglu" else 2) * c * self.intermediate_size
        norms = 2 * c + (2 * d if self.qk_norm else 0)
        head = 0 if self.tie_word_embeddings else v * c
        return v * c + self.n_layer * (attention + mlp + norms) + c + head


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")


class LlamaAttention(Module):
    """Causal self-attention with RoPE, grouped-query heads and (optionally) QK-norm.

    Queries have n_head heads, keys and values n_kv_head; query head h reads key/value head
    h // (n_head / n_kv_head), Hugging Face's order. The cache holds keys after RoPE, so a
    cached key never needs turning again.
    """

    def __init__(self, config: LlamaConfig, rope_freqs: np.ndarray):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_size = config.head_size
        self.dropout_p = config.dropout
        self.rope_freqs = rope_freqs                  # (D/2,), shared by every layer
        c = config.n_embd
        q_width = config.n_head * config.head_size    # not always C: Qwen3 sets head_dim apart
        kv_width = config.n_kv_head * config.head_size
        self.q_proj = Linear(c, q_width, bias=False)
        self.k_proj = Linear(c, kv_width, bias=False)
        self.v_proj = Linear(c, kv_width, bias=False)
        self.o_proj = Linear(q_width, c, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_size, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_size, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, _ = x.shape
        H, H_kv, D = self.n_head, self.n_kv_head, self.head_size
        start = kv_cache.length if kv_cache is not None else 0
        q = self.q_proj(x).reshape(B, T, H, D)
        k = self.k_proj(x).reshape(B, T, H_kv, D)
        v = self.v_proj(x).reshape(B, T, H_kv, D).transpose(1, 2)         # (B, H_kv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)        # over each head's D channels
        q = rope(q.transpose(1, 2), start, freqs=self.rope_freqs)        # (B, H, T, D)
        k = rope(k.transpose(1, 2), start, freqs=self.rope_freqs)        # (B, H_kv, T, D)
        dropout_p = self.dropout_p if self.training else 0.0
        if kv_cache is None:
            y = grouped_query_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        else:
            keys, values = kv_cache.store(layer, k.data, v.data)        # (B, H_kv, S, D)
            if T == 1:
                # Decoding one token: it sees every cached key, so no mask is needed, and the
                # n_rep query heads that share a key/value head can stand in for n_rep query
                # positions of that one head. The cache is then read as it is, not copied
                # n_rep times as repeat_kv would.
                grouped = q.reshape(B, H_kv, H // H_kv, D)
                y = F.scaled_dot_product_attention(grouped, Tensor(keys), Tensor(values),
                                                   is_causal=False).reshape(B, H, 1, D)
            else:
                y = grouped_query_attention(q, Tensor(keys), Tensor(values), is_causal=True,
                                            dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, H * D)                        # heads side by side
        return self.resid_dropout(self.o_proj(y))


class LlamaMLP(Module):
    """down(silu(gate(x)) * up(x)) (SwiGLU), or down(relu(up(x))^2) (ReLU², no gate)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c, hidden = config.n_embd, config.intermediate_size
        self.gate_proj = Linear(c, hidden, bias=False) if config.mlp == "swiglu" else None
        self.up_proj = Linear(c, hidden, bias=False)
        self.down_proj = Linear(hidden, c, bias=False)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj is not None:
            hidden = swiglu(self.gate_proj(x), self.up_proj(x))
        else:
            hidden = relu_squared(self.up_proj(x))
        return self.dropout(self.down_proj(hidden))


class LlamaBlock(Module):
    """x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm(x))."""

    def __init__(self, config: LlamaConfig, rope_freqs: np.ndarray):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rope_freqs)
        self.post_attention_layernorm = RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv_cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(Module):
    """A Llama-family language model: `model(idx)` gives next-token logits (B, T, vocab_size).

    The same interface as gpt.core.model.GPT: `forward(idx, kv_cache, last_only,
    return_hidden)`, `loss(idx, targets)`, `new_kv_cache(batch_size, max_length)`, and
    `config.block_size` / `config.vocab_size`; generation and the chat engine use either.
    """

    # The Linear layers LoRA adapts: attention's four projections and the MLP's.
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, config: LlamaConfig, rng: np.random.Generator | None = None):
        super().__init__()
        self.config = config
        rope_freqs = rope_frequencies(config.head_size, config.rope_theta, config.rope_scaling)
        self.embed_tokens = Embedding(config.vocab_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.layers = ModuleList(LlamaBlock(config, rope_freqs) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else \
            Linear(config.n_embd, config.vocab_size, bias=False)
        if not init_skipped():          # inside autograd.nn.skip_init(): weights come next
            self.init_weights(rng)

    def init_weights(self, rng: np.random.Generator | None = None) -> None:
        """Weights normal(0, 0.02) and RMSNorm gains 1, as Hugging Face initialises Llama.

        The two projections that write into the residual stream (o_proj and down_proj) get
        std 0.02 / sqrt(2 n_layer), as GPT-2's do: the stream is a sum of 2 n_layer such
        outputs, and this keeps its variance from growing with depth. With `zero_init_proj`
        they start at zero instead: every block then begins as the identity and the model as
        embedding -> norm -> head, and gradients still reach them (dL/dW = x^T g needs no W).
        """
        rng = rng if rng is not None else default_rng()
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, RMSNorm):
                module.weight.data[...] = 1.0
            elif isinstance(module, (Linear, Embedding)):
                weight = module.weight.data
                if not name.endswith(("o_proj", "down_proj")):
                    weight[...] = rng.normal(0.0, 0.02, weight.shape)
                elif self.config.zero_init_proj:
                    weight[...] = 0.0
                else:
                    weight[...] = rng.normal(0.0, residual_std, weight.shape)

    def head_weight(self) -> Tensor:
        """The output head as a (V, C) matrix: one row per token, as `embed_tokens` is."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight.T

    def forward(self, idx, kv_cache: KVCache | None = None, last_only: bool = False,
                return_hidden: bool = False) -> Tensor:
        """Logits for every position of `idx` (B, T), or for the last one only (`last_only`).
        `return_hidden`: the final hidden states (B, T, C) after `norm` instead of logits.

        With a `kv_cache`, `idx` holds only the new tokens; RoPE turns them at the positions
        after the cached ones, and the cache is extended by T.
        """
        idx, _ = token_batch(idx, kv_cache, self.config.block_size)
        x = self.drop(self.embed_tokens(idx))                         # (B, T, C)
        for layer, block in enumerate(self.layers):
            x = block(x, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]
        if last_only:
            x = x[:, -1:, :]
        x = self.norm(x)
        if return_hidden:
            return x                                                  # (B, T, C)
        if self.lm_head is not None:
            logits = self.lm_head(x)                                  # (B, T, V)
        else:
            logits = F.linear(x, self.embed_tokens.weight.T)          # tied head
        if self.config.logit_softcap is not None:
            logits = softcap(logits, self.config.logit_softcap)
        return logits

    def loss(self, idx, targets, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy of next-token `targets` (B, T): what training minimises.

        Without a soft-cap the output head and the loss are one fused op
        (`F.linear_cross_entropy`), so the (B, T, V) logits are never kept as a tensor of
        their own; the cap sits between the two, so with one the logits are made first.
        """
        if self.config.logit_softcap is not None:
            return F.cross_entropy(self.forward(idx), targets, ignore_index=ignore_index)
        hidden = self.forward(idx, return_hidden=True)
        return F.linear_cross_entropy(hidden, self.head_weight(), targets,
                                      ignore_index=ignore_index)

    def new_kv_cache(self, batch_size: int = 1, max_length: int | None = None) -> KVCache:
        config = self.config
        return KVCache(config.n_layer, batch_size, config.n_kv_head, config.head_size,
                       cache_length(max_length, config.block_size),
                       dtype=self.embed_tokens.weight.dtype)
