"""gpt: the GPT-2 architecture on our autograd, its data, training, fine-tuning and chat.

The public API (what README examples and outside scripts import):

    from gpt import GPT, GPTConfig, KVCache
    model = GPT(GPTConfig.preset("shakespeare-char"))
    logits = model(idx)                                  # (B, T) ids -> (B, T, vocab) Tensor

    from gpt import load_pretrained, load_tokenizer_from, resolve_checkpoint, save_pretrained
    directory = resolve_checkpoint("runs/my-run")        # a run's best/ or latest/, or "gpt2"
    model, tokenizer = load_pretrained(directory), load_tokenizer_from(directory)
    save_pretrained(model, "out", tokenizer)             # Hugging Face's layout

    from gpt import GPTError                             # base of every expected error

The sub-packages, each importing only the ones before it:

    core       config, the GPT model, generation with a KV cache
    io         files, safetensors, checkpoint directories (ours and Hugging Face's)
    data       named corpora and downloads, the token cache, model downloads (hub)
    chat       chat templates, the chat engine, the HTTP server and web page, chat.py's CLI
    train      pretraining (train.py), evaluation (python -m gpt.evaluate)
    finetune   LoRA, classification, instructions, DPO (train.py classify|instruct|dpo)
"""
from gpt.core.config import GPTConfig
from gpt.core.model import GPT, KVCache
from gpt.errors import GPTError
from gpt.io.checkpoint import (load_pretrained, load_tokenizer_from, resolve_checkpoint,
                               save_pretrained)

__all__ = ["GPT", "GPTConfig", "GPTError", "KVCache", "load_pretrained", "load_tokenizer_from",
           "resolve_checkpoint", "save_pretrained"]
