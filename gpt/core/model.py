"""The GPT-2 architecture on our autograd.

    idx (B, T) token ids
      -> wte[idx] + wpe[0..T-1]                 token + position embeddings   (B, T, C)
      -> dropout
      -> n_layer x Block:                        pre-LayerNorm residual blocks
             x = x + attn(ln_1(x))               causal multi-head self-attention
             x = x + mlp(ln_2(x))                Linear(C, 4C) -> GELU -> Linear(4C, C)
      -> ln_f
      -> x @ wte^T                               output head tied to the token embedding
    logits (B, T, V)

Parameter names follow GPT-2's checkpoints (`wte`, `wpe`, `h.0.ln_1`, `h.0.attn.c_attn`, ...)
so that weights map one to one, and every Linear stores its weight as (in, out) like GPT-2's
Conv1D, so they load without transposes.
"""
from __future__ import annotations

import math

import numpy as np

from autograd import Tensor
from autograd import functional as F
from autograd.nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, init_skipped
from autograd.random import default_rng
from gpt.core.config import GPTConfig


# Positions a new KV cache makes room for before it first grows.
_INITIAL_CACHE_CAPACITY = 256


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    Generating token t+1 needs the keys and values of tokens 0..t at every layer. They do not
    change once computed (causal attention: the past never looks at the future), so each step
    computes them only for the new token and appends them here: one token of work per step
    instead of the whole context.

    Storage is (n_layer, B, n_head, capacity, head_size) for keys and for values. The capacity
    starts small and, when a step needs more, grows to twice what is needed (up to
    `max_length`), so a model with a context of 128k positions does not set aside gigabytes
    for a chat of a few hundred tokens; each growth copies what is cached once, a cost spread
    thinly over the steps it serves, and a reply as long as its prompt fits in the room that
    the prompt's prefill made.
    `n_head` counts the key/value heads (fewer than the query heads under grouped-query
    attention, which is the point of it).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_size: int,
                 max_length: int, dtype=np.float32):
        self.max_length = max_length
        self.length = 0                 # positions filled so far
        capacity = min(max_length, _INITIAL_CACHE_CAPACITY)
        shape = (n_layer, batch_size, n_head, capacity, head_size)
        # Not zeroed: only the first `length` positions are read, and each is written first.
        self.keys = np.empty(shape, dtype=dtype)
        self.values = np.empty(shape, dtype=dtype)

    def reset(self) -> None:
        self.length = 0

    def store(self, layer: int, k: np.ndarray, v: np.ndarray,
              heads: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Write the new (B, h, T, D) keys and values of `heads` (all by default) after the
        cached ones; return all of them, (B, h, S, D) views of the cache."""
        start, end = self.length, self.length + k.shape[2]
        self.reserve(end)
        self.keys[layer, :, heads, start:end] = k
        self.values[layer, :, heads, start:end] = v
        return self.keys[layer, :, heads, :end], self.values[layer, :, heads, :end]

    def reserve(self, end: int) -> None:
        """Make room for positions up to `end` (growing is done before any layer writes a
        step: a model that stores from several threads reserves first)."""
        if end > self.max_length:
            raise ValueError(f"KVCache: {end} positions do not fit in max_length "
                             f"{self.max_length}")
        if end > self.keys.shape[3]:
            self._grow(end)

    def _grow(self, needed: int) -> None:
        # Called before any layer has written this step: every layer's first `length`
        # positions are what there is to keep.
        capacity = min(self.max_length, 2 * max(needed, self.keys.shape[3]))
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = np.empty(old.shape[:3] + (capacity,) + old.shape[4:], dtype=old.dtype)
            new[:, :, :, :self.length] = old[:, :, :, :self.length]
            setattr(self, name, new)



def cache_length(max_length: int | None, block_size: int) -> int:
    """The positions a new KV cache holds: `max_length`, by default the model's context."""
    max_length = max_length or block_size
    if max_length > block_size:
        raise ValueError(f"KVCache: max_length {max_length} exceeds the model's block_size "
                         f"{block_size}")
    return max_length


def token_batch(idx, kv_cache: KVCache | None, block_size: int) -> tuple[np.ndarray, int]:
    """`idx` as a (B, T) integer array, and the position of its first token (after the cached
    ones); a clear error for anything a model cannot read."""
    idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if idx.ndim == 1:
        idx = idx[None, :]
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise ValueError(f"the model expects integer token ids of shape (B, T), got shape "
                         f"{idx.shape} and dtype {idx.dtype}")
    T = idx.shape[1]
    start = kv_cache.length if kv_cache is not None else 0
    limit = kv_cache.max_length if kv_cache is not None else block_size
    if start + T > limit:
        raise ValueError(f"sequence of {start + T} tokens ({start} cached + {T} new) is "
                         f"longer than the model's context of {limit} (block_size)")
    if T == 0:
        raise ValueError("the model got an empty sequence (T = 0)")
    return idx, start


class CausalSelfAttention(Module):
    """Multi-head self-attention where each position attends to itself and the past only.

    One Linear computes queries, keys and values for all heads at once (C -> 3C); the heads are
    separate slices of the channels. The fused attention op does softmax(QK^T/sqrt(D)) V with
    the causal mask, and c_proj mixes the heads' outputs back into the residual stream.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout_p = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x)                                          # (B, T, 3C)
        dropout_p = self.dropout_p if self.training else 0.0
        if kv_cache is None:
            # Training and plain evaluation: one fused op splits the heads, attends, merges.
            y = F.multi_head_attention(qkv, self.n_head, dropout_p)      # (B, T, C)
        else:
            # Generation: the new keys and values join the cached ones first.
            H, D = self.n_head, C // self.n_head
            # (B, T, 3, H, D) -> (3, B, H, T, D): the heads become a batch axis.
            qkv = qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]                          # (B, H, T, D) each
            keys, values = kv_cache.store(layer, k.data, v.data)     # (B, H, S, D)
            y = F.scaled_dot_product_attention(q, Tensor(keys), Tensor(values), is_causal=True,
                                               dropout_p=dropout_p)
            y = y.transpose(1, 2).reshape(B, T, C)                     # heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(Module):
    """The position-wise feed-forward network: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x)): normalise before each sub-layer (pre-LN), and
    add its output to the residual stream, so gradients reach early layers undiminished."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(Module):
    """A GPT-2-style language model: `model(idx)` gives next-token logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig, rng: np.random.Generator | None = None):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.wpe = Embedding(config.block_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.h = ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        if not init_skipped():          # inside autograd.nn.skip_init(): weights come next
            self.init_weights(rng)

    def init_weights(self, rng: np.random.Generator | None = None) -> None:
        """GPT-2's initialisation: weights normal(0, 0.02), biases 0, LayerNorms 1 and 0.

        The two projections that write into the residual stream (attn.c_proj and mlp.c_proj)
        get std 0.02 / sqrt(2 n_layer): the stream is a sum of 2 n_layer such outputs, and this
        keeps its variance from growing with depth.
        """
        rng = rng if rng is not None else default_rng()
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, (Linear, Embedding)):
                std = residual_std if name.endswith("c_proj") else 0.02
                module.weight.data[...] = rng.normal(0.0, std, module.weight.shape)
            elif isinstance(module, LayerNorm):
                module.weight.data[...] = 1.0
            if getattr(module, "bias", None) is not None:
                module.bias.data[...] = 0.0

    def forward(self, idx, kv_cache: KVCache | None = None, last_only: bool = False,
                return_hidden: bool = False) -> Tensor:
        """Logits for every position of `idx` (B, T), or for the last one only (`last_only`,
        what generation needs: the output head is the biggest matmul at a large vocabulary).
        `return_hidden`: the final hidden states (B, T, C) after ln_f instead of logits, for a
        head of one's own (classification fine-tuning).

        With a `kv_cache`, `idx` holds only the new tokens; their positions continue after the
        cached ones, and the cache is extended by T.
        """
        idx, start = token_batch(idx, kv_cache, self.config.block_size)
        T = idx.shape[1]
        positions = np.arange(start, start + T)
        x = self.drop(self.wte(idx) + self.wpe(positions))           # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.length += T
        if last_only:
            x = x[:, -1:, :]
        x = self.ln_f(x)
        if return_hidden:
            return x                                                  # (B, T, C)
        return F.linear(x, self.wte.weight.T)                         # (B, T, V)

    def loss(self, idx, targets, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy of next-token `targets` (B, T): what training minimises.

        The same number as cross_entropy(model(idx), targets), computed with the output head
        and the loss fused (`F.linear_cross_entropy`), so the (B, T, V) logits are never kept
        as a tensor of their own.
        """
        hidden = self.forward(idx, return_hidden=True)
        return F.linear_cross_entropy(hidden, self.wte.weight, targets, ignore_index=ignore_index)

    def new_kv_cache(self, batch_size: int = 1, max_length: int | None = None) -> KVCache:
        config = self.config
        return KVCache(config.n_layer, batch_size, config.n_head, config.head_size,
                       cache_length(max_length, config.block_size), dtype=self.wte.weight.dtype)
