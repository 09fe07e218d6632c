"""GPTConfig: the handful of numbers that fix a GPT's shape, with named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Named shapes. For the small presets vocab_size is a default: training sets it from the tokenizer.
PRESETS: dict[str, dict[str, Any]] = {
    # OpenAI's GPT-2 family (vocabulary 50257, context 1024).
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257),
    # Small models for a laptop CPU.
    "shakespeare-char": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256),
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=4096),
    "small-cpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=4096),
}


def _is_number(value: Any) -> bool:
    """A real int or float: not a string, not a bool (JSON's true is not a rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigDict:
    """What both model families' configs do with dicts (config.json stores ours whole)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from a dict of our own keys; unknown keys are an error (a typo is not ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class GPTConfig(ConfigDict):
    """The shape of a GPT-2-style model.

    vocab_size: tokens the model reads and predicts. block_size: the longest context (number of
    position embeddings). n_layer blocks, each with n_head attention heads over n_embd channels
    (n_embd must divide by n_head). dropout: one rate for the embedding, attention and residual
    dropout sites, as GPT-2 has. bias: biases in Linear and LayerNorm layers (GPT-2 has them).
    """
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by "
                             f"n_head={self.n_head}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not (_is_number(self.layer_norm_epsilon)
                and 0.0 < self.layer_norm_epsilon < 1.0):
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be a small positive number, "
                             f"got {self.layer_norm_epsilon!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias must be true or false, got {self.bias!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named configuration, e.g. GPTConfig.preset("gpt2", dropout=0.1)."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; known presets: "
                             f"{', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_parameters(self) -> int:
        """The parameter count of GPT(config), from the shapes alone (tied output head)."""
        c, v, t, L = self.n_embd, self.vocab_size, self.block_size, self.n_layer
        b = 1 if self.bias else 0
        per_block = (2 * c * (1 + b)                     # ln_1, ln_2
                     + c * 3 * c + 3 * c * b             # attn.c_attn
                     + c * c + c * b                     # attn.c_proj
                     + c * 4 * c + 4 * c * b             # mlp.c_fc
                     + 4 * c * c + c * b)                # mlp.c_proj
        return v * c + t * c + L * per_block + c * (1 + b)
