"""gpt.core: what a GPT is. `config` (GPTConfig and presets), `model` (GPT-2 on our autograd,
KVCache), `generate` (sampling and KV-cached decoding). Imports autograd only."""
