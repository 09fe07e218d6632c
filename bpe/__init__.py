"""bpe: the tokenizer. Text in, token ids out, and back again.

- `Tokenizer`: byte-level byte-pair encoding, trained here from any corpus
  (`Tokenizer.train`) or loaded from OpenAI's GPT-2 files (`Tokenizer.from_gpt2`).
- `CharTokenizer`: one token per character, for character-level experiments.
- `load_hf_tokenizer`: the tokenizer of an open-weight model (Qwen3, SmolLM2, Llama 3) from its
  Hugging Face files, as a `PretrainedTokenizer` that gives the model's ids exactly.
- `load_tokenizer`: read a saved tokenizer file of any of these kinds.

Where to start reading: `bpe.train` (how merges are learned), `bpe.apply` (how they are used to
encode), `bpe.tokenizer` (the whole pipeline), `bpe.gpt2` (GPT-2's file format),
`bpe.pretrained` and `bpe.huggingface` (other models' tokenizers and their files). The command line
is ``python -m bpe --help``.

This package knows nothing of autograd or models: it only turns text into integers.
"""

from .base import BaseTokenizer, load_tokenizer
from .char import CharTokenizer
from .files import TokenizerFileError
from .huggingface import load_hf_tokenizer
from .patterns import GPT2_PATTERN, GPT4_PATTERN
from .pretrained import PretrainedTokenizer
from .tokenizer import Tokenizer

__all__ = [
    "BaseTokenizer",
    "CharTokenizer",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PretrainedTokenizer",
    "Tokenizer",
    "TokenizerFileError",
    "load_hf_tokenizer",
    "load_tokenizer",
]
