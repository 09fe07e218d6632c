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
one. Every Linear's weight is (in, out), our layout; Hugging Face's files hold (out, in). A
model built here holds C-ordered weights; a model loaded from a file holds its projections
and head as transposed views of the file's matrices (Fortran-ordered, gpt/io/hf_llama.py),
so a float32 file's weights are never copied. Matrix products take either order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from autograd import Tensor, is_grad_enabled
from autograd import functional as F
from autograd.nn import Dropout, Embedding, Linear, Module, ModuleList, RMSNorm, init_skipped
from autograd.ops.attention import attention_forward
from autograd.ops.relu_squared import relu_squared, relu_squared_forward
from autograd.ops.repeat_kv import grouped_query_attention, repeat_kv_forward
from autograd.ops.rms_norm import rms_norm_forward
from autograd.ops.rope import RopeConfigError, rope, rope_forward, rope_frequencies, rope_tables
from autograd.ops.softcap import softcap, softcap_forward
from autograd.ops.sums import row_sums
from autograd.ops.swiglu import swiglu, swiglu_forward
from autograd.parallel import default_threads, limit_blas_threads
from autograd.random import default_rng
from gpt.core.config import ConfigDict
from gpt.core.model import KVCache, cache_length, token_batch
from gpt.core.thread_team import Meeting, thread_team

MLP_KINDS = ("swiglu", "relu2")


@dataclass
class LlamaConfig(ConfigDict):
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

    def infer(self, rows: np.ndarray, B: int, T: int, kv_cache: KVCache, layer: int,
              rope: tuple[np.ndarray, np.ndarray], part: _ThreadPart) -> np.ndarray:
        """`forward` in eval mode with a cache, on plain arrays, for one thread's key/value
        heads (`part.share.kv_heads`) and the query heads that share them: rows (B*T, C) of
        the normalised input -> this thread's part of the output (B*T, C) (o_proj applied to
        these heads alone; the parts of all threads add up to the output). `rope`: the
        (T, D/2) cos and sin tables.
        """
        D, n_rep = self.head_size, self.n_head // self.n_kv_head
        kv_heads = part.share.kv_heads
        q_columns = slice(kv_heads.start * n_rep * D, kv_heads.stop * n_rep * D)
        kv_columns = slice(kv_heads.start * D, kv_heads.stop * D)
        q, k, v = part.project(rows, (self.q_proj, self.k_proj, self.v_proj),
                               (q_columns, kv_columns, kv_columns))
        q, k, v = (t.reshape(B, T, -1, D) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = _normalise(self.q_norm, q), _normalise(self.k_norm, k)
        q = rope_forward(q.transpose(0, 2, 1, 3), *rope)                  # (B, h, T, D)
        k = rope_forward(k.transpose(0, 2, 1, 3), *rope)                  # (B, h_kv, T, D)
        keys, values = kv_cache.store(layer, k, v.transpose(0, 2, 1, 3), kv_heads)
        h_kv = keys.shape[1]                                              # (B, h_kv, S, D)
        if T == 1:
            # One new token sees every cached key: no mask, and the n_rep query heads of a
            # key/value head stand in for n_rep query positions of it (as in `forward`).
            y = _attend_newest(q.reshape(B, h_kv, n_rep, D), keys, values)
        else:
            y = attention_forward(q, repeat_kv_forward(keys, n_rep),
                                  repeat_kv_forward(values, n_rep), is_causal=True,
                                  dropout_p=0.0, rng=None)[0]
        y = y.reshape(B, h_kv * n_rep, T, D).transpose(0, 2, 1, 3).reshape(B * T, -1)
        return part.matmul(y, self.o_proj.weight.data[q_columns])


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

    def infer(self, rows: np.ndarray, part: _ThreadPart) -> np.ndarray:
        """`forward` in eval mode on plain arrays, through one thread's hidden units
        (`part.share.mlp_units`) alone: rows (N, C) -> this thread's part of the output
        (N, C) (the parts of all threads add up to it).
        """
        units = part.share.mlp_units
        if self.gate_proj is not None:
            gate, up = part.project(rows, (self.gate_proj, self.up_proj), (units, units))
            hidden = swiglu_forward(gate, up)[0]
        else:
            up, = part.project(rows, (self.up_proj,), (units,))
            hidden = relu_squared_forward(up)[0]
        return part.matmul(hidden, self.down_proj.weight.data[units])


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

    def infer(self, x: np.ndarray, kv_cache: KVCache, layer: int,
              rope: tuple[np.ndarray, np.ndarray], part: _ThreadPart) -> np.ndarray:
        """`forward` in eval mode with a cache, on plain arrays: x (B, T, C) -> (B, T, C),
        computed by every thread of the pass together (see "Generation" below); `part` is
        this thread's share. Each thread ends with the whole output."""
        B, T, C = x.shape
        rows = _normalise(self.input_layernorm, x).reshape(B * T, C)
        attended = self.self_attn.infer(rows, B, T, kv_cache, layer, rope, part)
        x = x + part.total(attended, "attn").reshape(B, T, C)
        rows = _normalise(self.post_attention_layernorm, x).reshape(B * T, C)
        return x + part.total(self.mlp.infer(rows, part), "mlp_out").reshape(B, T, C)


class Llama(Module):
    """A Llama-family language model: `model(idx)` gives next-token logits (B, T, vocab_size).

    The same interface as gpt.core.model.GPT: `forward(idx, kv_cache, last_only,
    return_hidden)`, `loss(idx, targets)`, `new_kv_cache(batch_size, max_length)`, and
    `config.block_size` / `config.vocab_size`; generation and the chat engine use either.
    `inference_threads`: how many cores generation uses (None, the default: one per core):
    BLAS's threads in a decode step, a team of threads in a prefill (see "Generation").
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
        # Cores that generation uses (None: one per core).
        self.inference_threads: int | None = None
        self._split: tuple[int, list[_Share]] | None = None
        # Whether one-row products read faster by NumPy's loops than by BLAS, per layout.
        self._own_loops_faster: dict[bool, bool] = {}
        # Generation's RoPE cos and sin for positions 0 .. capacity - 1, each (capacity, D/2).
        self._rope_cache: tuple[np.ndarray, np.ndarray] | None = None
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
        after the cached ones, and the cache is extended by T. Generation (a cache, no
        gradients, eval mode) takes `_infer`: the same arithmetic without the autograd layer.
        """
        if kv_cache is not None and not is_grad_enabled() and not self.training \
                and self._plain_projections():
            return Tensor(self._infer(idx, kv_cache, last_only, return_hidden))
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

    def _infer(self, idx, kv_cache: KVCache, last_only: bool,
               return_hidden: bool) -> np.ndarray:
        """`forward` for generation, on plain arrays, split over the cores (see the section
        "Generation" below)."""
        idx, start = token_batch(idx, kv_cache, self.config.block_size)
        B, T = idx.shape
        kv_cache.reserve(start + T)          # grown here, not by parallel threads' stores
        threads = self.inference_threads or default_threads()
        # A decode step, or a small pass: one thread, with BLAS's threads splitting each
        # product; a large prefill: our team of threads, each with its share of every layer
        # (see "Generation" below).
        by_team = B * T > _DECODE_MAX_ROWS and B * T * self._layer_weights() >= _TEAM_MIN_WORK
        shares = self._shares(threads if by_team else 1)
        blas_threads = 1 if by_team else threads
        own_loops = B * T == 1 and blas_threads == 1 and self._own_loops_read_faster()
        rope = self._rope_for(start, T, self.embed_tokens.weight.dtype)   # (T, D/2) cos, sin
        buffers = _PartBuffers(self.config, len(shares), B * T, self.embed_tokens.weight.dtype)
        head = self.embed_tokens.weight.data.T if self.lm_head is None \
            else self.lm_head.weight.data                                 # (C, V)

        def run_share(rank: int, meeting: Meeting) -> np.ndarray:
            part = _ThreadPart(shares[rank], rank, meeting, buffers, own_loops)
            x = self.embed_tokens.weight.data[idx]                        # (B, T, C)
            for layer, block in enumerate(self.layers):
                x = block.infer(x, kv_cache, layer, rope, part)
            if last_only:
                x = x[:, -1:, :]
            x = _normalise(self.norm, x)
            if return_hidden:
                return x                                      # (B, T, C), alike in every thread
            rows = x.reshape(-1, x.shape[-1])
            return part.matmul(rows, head[:, part.share.vocab])           # (B*T, its tokens)

        with limit_blas_threads(blas_threads):
            results = thread_team(len(shares)).run(run_share)
        kv_cache.length += T
        if return_hidden:
            return results[0]
        logits = np.concatenate(results, axis=-1) if len(results) > 1 else results[0]
        if self.config.logit_softcap is not None:
            logits = softcap_forward(logits, self.config.logit_softcap)
        out_T = 1 if last_only else T
        return logits.reshape(B, out_T, -1)                               # (B, T, V)

    def _rope_for(self, start: int, T: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """The RoPE cos and sin tables of positions start .. start + T - 1, (T, D/2) each.

        Slices of tables kept for positions 0 .. capacity - 1, so that a decode step takes a
        slice instead of a round of trigonometry. When a step goes past them they are made
        anew for twice the positions needed (up to block_size), as the KV cache grows. Their
        rows are exactly what `rope_tables(freqs, start, T)` gives: each row depends only on
        its own position.
        """
        end = start + T
        cached = self._rope_cache
        if cached is None or len(cached[0]) < end or cached[0].dtype != dtype:
            capacity = max(end, min(2 * end, self.config.block_size))
            cached = self._rope_cache = rope_tables(self.layers[0].self_attn.rope_freqs, 0,
                                                    capacity, dtype)
        cos, sin = cached
        return cos[start:end], sin[start:end]

    def _layer_weights(self) -> int:
        """How many weights a block's projections hold: a pass's multiply-adds per row and
        layer."""
        c = self.config
        attention = 2 * c.n_embd * (c.n_head + c.n_kv_head) * c.head_size     # q, k, v, o
        return attention + (3 if c.mlp == "swiglu" else 2) * c.n_embd * c.intermediate_size

    def _own_loops_read_faster(self) -> bool:
        """Whether one row's products by NumPy's own loops read this model's weights faster
        than one-thread BLAS does, on this machine (see `_project`): timed the first time a
        one-thread decode step needs to know, and kept for the layout of the weights."""
        layout = self.layers[0].self_attn.q_proj.weight.data.flags.c_contiguous
        if layout not in self._own_loops_faster:
            weights = [linear.weight.data for linear in self.projections()]
            with limit_blas_threads(1):
                self._own_loops_faster[layout] = _own_loops_read_faster(weights)
        return self._own_loops_faster[layout]

    def projections(self) -> list[Module]:
        """Every projection of the blocks (q, k, v, o, gate, up, down, layer by layer) and the
        untied head: the weights a decode step reads, with the embedding when it is the head."""
        linears = []
        for block in self.layers:
            attn, mlp = block.self_attn, block.mlp
            linears += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj] \
                + ([mlp.gate_proj] if mlp.gate_proj is not None else []) \
                + [mlp.up_proj, mlp.down_proj]
        return linears + ([self.lm_head] if self.lm_head is not None else [])

    def _plain_projections(self) -> bool:
        """Whether every projection is a plain Linear without bias (a LoRA adapter is not),
        as `_infer` reads their weights directly."""
        return all(type(m) is Linear and m.bias is None for m in self.projections())

    def _shares(self, threads: int) -> list[_Share]:
        """How `_infer` splits a layer's work over `threads` threads (made once per count)."""
        if self._split is None or self._split[0] != threads:
            self._split = (threads, _split_work(self.config, threads))
        return self._split[1]

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


# ----------------------------------------------------------------------------------------------
# Generation: the forward pass on plain arrays, split over the cores
#
# Under no_grad the autograd ops record no graph, but each still wraps its result in a Tensor
# and checks its inputs; decoding one token of a 28-layer model runs a few hundred ops on
# arrays of a few thousand numbers, and that layer costs as much as the arithmetic. So
# `Llama._infer` calls the ops' forward halves (`*_forward` in autograd/ops, the code
# `forward` runs) on the parameters' arrays.
#
# How the work is split over the cores depends on the number of rows (B*T).
#
# A decode step (up to _DECODE_MAX_ROWS rows) is bound by memory: it reads every weight once
# for a row or a few. It runs in the caller's thread, and the BLAS library's threads split each
# matrix-vector product. One core does not draw all the bandwidth there is, and BLAS's threads
# meet at each product cheaply: they spin for a moment rather than sleep. The small steps in
# between (norms, RoPE, attention over the cache, SwiGLU) are run once, by one thread. With one
# thread, a row's products may take NumPy's own loops instead (see `_project`).
#
# A large prefill (many rows of a large model: see _TEAM_MIN_WORK) is bound by arithmetic, and
# there threads that each own a share of every layer do better than BLAS's: the share's
# products are large, and the threads meet only twice per layer. Such threads are a team
# (gpt/core/thread_team.py): each runs the whole forward pass on its share, the way tensor
# parallelism splits a model over GPUs, and they meet at barriers, where each adds up the
# parts all of them wrote:
#   - attention by key/value heads: a thread has q, k, v for its heads (its columns of those
#     projections), attends with them, and multiplies by its rows of o_proj, which gives a
#     (B*T, C) part of the output; the parts add up to o_proj(y) (a barrier);
#   - the MLP by hidden units: a thread has gate and up for its units and multiplies by its
#     rows of down; the parts add up (a barrier);
#   - the output head by token ids.
# The threads block while they wait (they do not spin), so the work degrades gracefully when
# another program holds a core, and each thread's matrix products run on one core: the BLAS
# library is limited to one thread meanwhile.
#
# Why not the team for decoding too: between its products, each thread of a team runs the
# same few dozen small NumPy calls per layer, and they take turns with Python's global
# interpreter lock. Every hand-over wakes a sleeping thread, which costs tens of microseconds
# on a virtual machine, and products of a few megabytes then read memory at about half the
# speed. benchmarks/RESULTS.md ("Chat models") has the measurements.

# Up to this many rows (B*T), a pass runs in one thread with BLAS's threads; so does a pass
# whose rows times a layer's weights fall below _TEAM_MIN_WORK multiply-adds, where the
# team's meetings cost more than they save (a prefill of the main job's 4 x 192 model: 128
# rows, 57 M multiply-adds a layer, ran at 21,000 tokens/s this way against 14,000 in the
# team; SmolLM2-360M's prefill was as fast either way at about 100-200 rows, 1-2 G).
_DECODE_MAX_ROWS = 16
_TEAM_MIN_WORK = 1 << 30


@dataclass(frozen=True)
class _Share:
    """One thread's part of every layer: key/value heads (with the query heads that share
    them), MLP hidden units, and token ids of the output head."""
    kv_heads: slice
    mlp_units: slice
    vocab: slice


def _split_work(config: LlamaConfig, threads: int) -> list[_Share]:
    """`threads` shares as even as the heads allow (fewer if there are fewer kv heads)."""
    n = max(1, min(threads, config.n_kv_head))

    def ranges(total: int) -> list[slice]:
        bounds = [total * i // n for i in range(n + 1)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return [_Share(*parts) for parts in zip(ranges(config.n_kv_head),
                                            ranges(config.intermediate_size),
                                            ranges(config.vocab_size))]


class _PartBuffers:
    """Where the threads of one pass leave their parts for each other: per meeting point,
    "attn" and "mlp_out", a (threads, rows, C) array, row t for thread t. A buffer is
    written again only two barriers after it was read, so one set serves every layer."""

    def __init__(self, config: LlamaConfig, threads: int, rows: int, dtype: np.dtype):
        self.threads = threads
        self.arrays = {} if threads == 1 else \
            {point: np.empty((threads, rows, config.n_embd), dtype)
             for point in ("attn", "mlp_out")}


class _ThreadPart:
    """One thread's side of one pass of `Llama._infer`: its share, its meetings, and the
    kernel of its one-row products (`own_loops`: NumPy's loops rather than BLAS; `_project`)."""

    def __init__(self, share: _Share, rank: int, meeting: Meeting, buffers: _PartBuffers,
                 own_loops: bool):
        self.share, self.rank, self.meeting, self.buffers = share, rank, meeting, buffers
        self.own_loops = own_loops

    def matmul(self, rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """rows (N, K) @ weight (K, M), by the kernel that suits this pass."""
        return _project(rows, weight, own_loops=self.own_loops)

    def project(self, rows: np.ndarray, linears: tuple[Linear, ...],
                columns: tuple[slice, ...]) -> list[np.ndarray]:
        """[rows @ linear.weight[:, cols] for each linear and its columns]: this thread's
        columns of projections of rows (N, C), which every thread holds."""
        return [self.matmul(rows, linear.weight.data[:, cols])
                for linear, cols in zip(linears, columns)]

    def total(self, part: np.ndarray, point: str) -> np.ndarray:
        """The sum of every thread's `part` (N, C), in every thread."""
        if self.buffers.threads == 1:
            return part
        parts = self.buffers.arrays[point]
        parts[self.rank] = part
        self.meeting.meet(self.rank)
        return _sum_parts(parts)


def _sum_parts(parts: np.ndarray) -> np.ndarray:
    """parts (threads, N, M) -> their sum (N, M), added in thread order: every thread gets
    the same numbers, so the residual stream they each carry stays identical."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


# The widest output `_project` computes by einsum: 3072 float32 numbers are 12 KB, which stay
# in a core's L1 data cache (32 KB on most CPUs) beside the weight rows streaming through it.
_EINSUM_MAX_WIDTH = 3072
# Row-by-row dot products (NumPy 2.0 and later; before it, such weights go to BLAS).
_vecdot = getattr(np, "vecdot", None)


def _project(rows: np.ndarray, weight: np.ndarray, own_loops: bool = True) -> np.ndarray:
    """rows @ weight for rows (N, K) and weight (K, M): a projection on plain arrays.

    A decode step of one sequence projects a single row: a matrix-vector product, bound by
    reading the weight from memory. On one core, OpenBLAS's kernel for it reads a matrix
    below the speed the memory allows on some CPUs, so with `own_loops` (one thread, where
    `_own_loops_read_faster` found them faster) one row takes NumPy's own loops, each of
    which reads the weight in one pass in the order it is stored:
    - a weight in our (in, out) layout, by einsum: `k,kn->n` adds x_k * W[k, :] into the
      output row by row, which runs at memory speed while the output stays in L1;
    - the transpose of a row-major matrix (a weight loaded from a Hugging Face file, whose
      matrices are (out, in), or the tied head: the embedding's rows), by vecdot: one dot
      product per row of it, each with a row that is contiguous, at any width.
    A wider output of our layout, a weight that is a strided view (einsum reads one at a third
    of the speed), several rows (a prefill, or a batch), and every product when BLAS may use
    several threads (not `own_loops`) go to BLAS. NumPy's loops let go of the GIL as BLAS
    does, so the threads of a team still run at once.
    """
    if own_loops and rows.shape[0] == 1:
        if weight.flags.c_contiguous and weight.shape[1] <= _EINSUM_MAX_WIDTH:
            return np.einsum("k,kn->n", rows[0], weight)[None]                # (1, M)
        if _vecdot is not None and weight.T.flags.c_contiguous:
            return _vecdot(weight.T, rows[0])[None]                          # (1, M)
    return rows @ weight


def _own_loops_read_faster(weights: list[np.ndarray], sample_bytes: int = 256 << 20,
                           min_seconds: float = 0.02) -> bool:
    """Whether `_project` with `own_loops` multiplies one row by these weights faster than
    BLAS does (both on the calling thread).

    Which is faster depends on the CPU: on one VM of this project NumPy's loops streamed
    memory 25-35 % faster than OpenBLAS's matrix-vector kernel, on another 10-20 % slower. So
    it is measured, on the weights themselves, up to `sample_bytes` of them, in two halves
    (every other weight): NumPy's loops read the first, BLAS the second, BLAS the first, NumPy's
    loops the second. Between two reads of a half the other half is read, so neither kernel
    finds in the cache what the other just read (unless it all fits there, as it does while a
    small model decodes). Each pass is repeated until it has taken `min_seconds`.
    The two kernels differ in rounding only, not in what they compute.
    """
    sample, total = [], 0
    for weight in weights:
        if total >= sample_bytes:
            break
        sample.append(weight)
        total += weight.nbytes
    halves = (sample[::2], sample[1::2]) if len(sample) > 1 else (sample, sample)
    rows = {w.shape[0]: np.ones((1, w.shape[0]), w.dtype) for w in sample}

    def seconds(own_loops: bool, half: list[np.ndarray]) -> float:
        start, passes = time.perf_counter(), 0
        while True:
            for weight in half:
                _project(rows[weight.shape[0]], weight, own_loops)
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return elapsed / passes

    own, blas = seconds(True, halves[0]), seconds(False, halves[1])   # each half is read
    blas += seconds(False, halves[0])                                  # with the other half
    own += seconds(True, halves[1])                                    # read in between
    return own < blas


def _attend_newest(q: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """softmax(Q K^T / sqrt(D)) V for the queries of one new position, which see every key:
    q (B, h, r, D) (r query heads per key/value head), keys and values (B, h, S, D) -> the
    output (B, h, r, D).

    attention_forward's arithmetic without a mask, with its first product taken the other
    way round: K Q^T (B, h, S, r), the many cached keys as the left operand and the few
    query rows as the right one. OpenBLAS runs that product much faster than Q K^T (the
    keys as a transposed right operand) when heads have 64 channels, and no slower with
    128. The scores are made C-ordered as (B, h, r, S) once, so that the softmax and the
    product with V run on a contiguous array.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = np.ascontiguousarray(np.matmul(keys, q.swapaxes(-1, -2)).swapaxes(-1, -2))
    scores *= scale                                                 # S    (B, h, r, S)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= row_sums(scores)[..., None]                           # P = softmax(S)
    return np.matmul(scores, values)                                # P V  (B, h, r, D)


def _normalise(norm: RMSNorm, x: np.ndarray) -> np.ndarray:
    """An RMSNorm on plain arrays, over the last axis of x."""
    return rms_norm_forward(x, norm.weight.data if norm.weight is not None else None,
                            norm.eps)[0]
