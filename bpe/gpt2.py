"""Reading OpenAI's GPT-2 vocabulary files.

GPT-2 is a byte-level BPE exactly like ours, shipped as two files:

- ``encoder.json`` (Hugging Face: ``vocab.json``): token -> id, 50,257 entries;
- ``vocab.bpe`` (Hugging Face: ``merges.txt``): a ``#version`` line, then the 50,000 merges in
  the order learned, one ``left right`` pair per line.

Both write tokens as *text*, but a token is a byte string that need not be valid UTF-8, and
bytes such as space or newline would be awkward inside a space-separated file. So GPT-2 first
maps every byte to a printable character: the 188 bytes that are already printable and not
space (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves, and the other 68 (control
bytes, space, DEL, NBSP, soft hyphen) are assigned the characters U+0100, U+0101, ... in byte
order. That is why GPT-2 tokens show a space as ``Ġ`` (U+0120, byte 32) and a newline as ``Ċ``.

Translated back to bytes, the files fit our layout with one difference: GPT-2 numbers its 256
byte tokens in the order of that printable table (id 0 is ``!``, byte 33), not by byte value, so
the tokenizer keeps a ``byte_order``. Merge ``i`` has id ``256 + i`` as ours does, and
``<|endoftext|>`` comes last, 50256.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .patterns import GPT2_PATTERN

#: File-name pairs (vocabulary, merges) looked for in a directory, in this order.
GPT2_FILE_NAMES = (
    ("encoder.json", "vocab.bpe"),
    ("vocab.json", "merges.txt"),
    ("gpt2-encoder.json", "gpt2-vocab.bpe"),
)


def byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character table (see the module docstring)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    stand_ins = (b for b in range(256) if b not in table)
    for n, b in enumerate(stand_ins):
        table[b] = chr(256 + n)
    return table


def find_gpt2_files(directory: str | os.PathLike) -> tuple[Path, Path]:
    """The (vocabulary, merges) files in ``directory``, under any of `GPT2_FILE_NAMES`."""
    directory = Path(directory)
    for vocab_name, merges_name in GPT2_FILE_NAMES:
        vocab, merges = directory / vocab_name, directory / merges_name
        if vocab.is_file() and merges.is_file():
            return vocab, merges
    names = ", ".join(f"{v} + {m}" for v, m in GPT2_FILE_NAMES)
    raise FileNotFoundError(f"no GPT-2 vocabulary files in {directory} (looked for {names})")


def read_gpt2_files(
    encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike | None = None
) -> tuple[list[tuple[int, int]], list[int], dict[str, int]]:
    """Read GPT-2's files into ``(merges, byte_order, special_tokens)`` for `Tokenizer`."""
    if vocab_bpe is None:
        encoder_json, vocab_bpe = find_gpt2_files(encoder_json)
    with open(encoder_json, encoding="utf-8") as f:
        try:
            encoder: dict[str, int] = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{encoder_json} is not a GPT-2 encoder.json: {err}") from None
    lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    pairs = [line.split() for line in lines if line.strip()]

    char_to_byte = {c: b for b, c in byte_to_char().items()}
    id_to_token = {i: t for t, i in encoder.items()}
    byte_order = []
    for token_id in range(256):
        token = id_to_token.get(token_id, "")
        if len(token) != 1 or token not in char_to_byte:
            raise ValueError(f"{encoder_json}: id {token_id} is not a single-byte token")
        byte_order.append(char_to_byte[token])

    merges = []
    for rank, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"{vocab_bpe}: line {rank + 2} is not a pair of tokens: {pair!r}")
        left, right = pair
        for token in (left, right, left + right):
            if token not in encoder:
                raise ValueError(f"{encoder_json} has no token {token!r} (merge {rank})")
        if encoder[left + right] != 256 + rank:
            raise ValueError(
                f"{encoder_json} gives {left + right!r} id {encoder[left + right]}, but it is merge "
                f"{rank} of {vocab_bpe}, which should make id {256 + rank}"
            )
        merges.append((encoder[left], encoder[right]))

    n_regular = 256 + len(merges)
    specials = {t: i for t, i in encoder.items() if i >= n_regular}
    return merges, byte_order, specials


# -- writing: the inverse of read_gpt2_files ---------------------------------------------------


def gpt2_files_problem(tokenizer: object) -> str | None:
    """Why ``tokenizer`` cannot be written as GPT-2 files, or None if it can.

    GPT-2's files have no room for a split pattern: every program that reads them (OpenAI's
    encoder, Hugging Face's ``GPT2Tokenizer``) splits with GPT-2's. They name tokens by text,
    so two tokens with the same bytes (two merges that happen to spell the same string) could
    not both be written. A tokenizer passing these checks encodes, in those programs, exactly
    as it does here.
    """
    if not (hasattr(tokenizer, "merges") and hasattr(tokenizer, "pattern")):
        return f"{type(tokenizer).__name__} is not a byte-level BPE tokenizer"
    if tokenizer.pattern != GPT2_PATTERN:
        return "its split pattern is not GPT-2's (GPT-2's files cannot name another)"
    seen: dict[str, int] = {}
    for token_id, token in enumerate(_gpt2_token_texts(tokenizer)):
        if token in seen:
            return f"tokens {seen[token]} and {token_id} are both {token!r}"
        seen[token] = token_id
    return None


def _gpt2_token_texts(tokenizer) -> list[str]:
    """Every token as GPT-2's files spell it: regular tokens through the printable byte table,
    special tokens as their own text."""
    table = byte_to_char()
    n_regular = 256 + len(tokenizer.merges)
    texts = ["".join(table[b] for b in tokenizer.token_to_bytes(i)) for i in range(n_regular)]
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    return texts + [text for text, _ in specials]


def save_gpt2_files(
    tokenizer, directory: str | os.PathLike, names: tuple[str, str] = ("vocab.json", "merges.txt")
) -> tuple[Path, Path]:
    """Write ``tokenizer`` as GPT-2's two files (Hugging Face's names by default).

    The output has the layout of OpenAI's own files, byte for byte: ``vocab.json`` is one line
    of JSON, token -> id in id order; ``merges.txt`` is a ``#version: 0.2`` line and then one
    ``left right`` line per merge. So ``Tokenizer.from_gpt2(directory)`` (or Hugging Face's
    ``GPT2Tokenizer``) reads back the same tokenizer. Raises ValueError, saying why, when
    `gpt2_files_problem` finds the tokenizer cannot be written this way.
    """
    problem = gpt2_files_problem(tokenizer)
    if problem is not None:
        raise ValueError(f"cannot write GPT-2 vocabulary files: {problem}")
    texts = _gpt2_token_texts(tokenizer)
    vocab_path, merges_path = Path(directory) / names[0], Path(directory) / names[1]
    vocab_path.write_text(json.dumps({text: i for i, text in enumerate(texts)}), encoding="utf-8")
    lines = ["#version: 0.2\n"] + [f"{texts[a]} {texts[b]}\n" for a, b in tokenizer.merges]
    merges_path.write_text("".join(lines), encoding="utf-8")
    return vocab_path, merges_path
