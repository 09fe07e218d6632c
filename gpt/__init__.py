"""gpt: the GPT-2 architecture, its data pipeline, training, generation and interop.

    from gpt import GPT, GPTConfig
    model = GPT(GPTConfig.preset("shakespeare-char"))
    logits = model(idx)            # (B, T) ids -> (B, T, vocab) Tensor
"""
from .config import GPTConfig
from .model import GPT, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
