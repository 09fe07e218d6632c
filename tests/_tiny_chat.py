"""A tiny character-level model and checkpoint for the chat, server and chat.py tests.

Random weights: the text is gibberish, but every path (templates, trimming, streaming, stops,
HTTP) runs for real and fast. `rig(model, token)` makes greedy decoding always pick `token`,
for tests that need to know what comes next.
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np

from bpe import CharTokenizer
from gpt import GPT, GPTConfig, save_pretrained

EOT = "<|endoftext|>"


def tokenizer() -> CharTokenizer:
    return CharTokenizer.train(string.printable, special_tokens=[EOT])


def model(tok: CharTokenizer, block_size: int = 48, seed: int = 0) -> GPT:
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2,
                       n_embd=16)
    return GPT(config, rng=np.random.default_rng(seed))


def rig(gpt: GPT, token: int) -> GPT:
    """Make every next-token distribution peak at `token`: the final LayerNorm outputs a
    constant (weight 0, bias = the token's embedding, made long), and the tied head scores
    each token by its dot product with it."""
    w = gpt.wte.weight.data
    w[token] = w[token] / np.linalg.norm(w[token]) * 10.0
    gpt.ln_f.weight.data[...] = 0.0
    gpt.ln_f.bias.data[...] = w[token]
    return gpt


def checkpoint(directory: Path, block_size: int = 48, rigged: str | None = None) -> Path:
    tok = tokenizer()
    gpt = model(tok, block_size)
    if rigged is not None:
        rig(gpt, tok.encode(rigged, allowed_special="all")[0])
    save_pretrained(gpt, directory, tok)
    return directory
