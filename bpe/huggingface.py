"""Reading the tokenizer files of open-weight models on the Hugging Face hub.

``load_hf_tokenizer(path)`` takes a model directory or one file and returns a
`bpe.pretrained.PretrainedTokenizer` that gives the model's ids exactly. Three layouts occur:

- ``tokenizer.json``: Hugging Face's one-file format. Its ``model`` holds ``vocab`` (token ->
  id, tokens spelled in GPT-2's byte characters) and ``merges`` (by priority, each written
  ``"a b"`` or, in newer files, ``["a", "b"]``); ``added_tokens`` lists the tokens matched whole
  (``special`` or not); ``normalizer`` and ``pre_tokenizer`` say how the text is prepared: here a
  ``ByteLevel`` step (spell bytes as characters, and with ``use_regex`` cut with GPT-2's
  pattern), ``Split`` steps with a regex and ``Digits``, possibly in a ``Sequence``. The
  ``post_processor`` only adds tokens such as a BOS when asked to; `encode` never does (a chat
  template writes them), so it is not read.
- ``vocab.json`` + ``merges.txt`` (GPT-2's pair of files), with the added tokens in
  ``tokenizer_config.json``. These files name no split pattern: the tokenizer class named in the
  config decides it (``GPT2Tokenizer``: GPT-2's; ``Qwen2Tokenizer``: Qwen's, after NFC).
- ``tokenizer.model`` in tiktoken's format (Llama 3): one ``base64(token bytes) rank`` line per
  token, the rank being the id and the merge priority. The special tokens come from
  ``tokenizer_config.json`` and the split pattern is Meta's (`bpe.pretrained.LLAMA3_PATTERN`).

What is not implemented is refused by name with a `TokenizerFileError`: other models (Unigram,
WordPiece, WordLevel), BPE on characters with ``byte_fallback`` (SentencePiece style), normalizers
other than NFC (Lowercase, NFKC, Replace...), other pre-tokenizers, and SentencePiece's
``tokenizer.model``. Each of them would give different ids, so a wrong tokenizer is never returned.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Any

from .files import TokenizerFileError
from .gpt2 import GPT2_FILE_NAMES, find_gpt2_files
from .patterns import GPT2_PATTERN
from .pretrained import (
    DIGIT_RUNS_PATTERN,
    DIGITS_PATTERN,
    LLAMA3_PATTERN,
    NFC,
    QWEN2_PATTERN,
    AddedToken,
    PretrainedTokenizer,
    bytes_to_spelling,
)

#: tokenizer_config.json's ``tokenizer_class`` -> (split pattern, normalizer), for the classes
#: whose vocab.json + merges.txt we can read (those files do not say how to split).
_CLASS_SPLITS: dict[str, tuple[str, str | None]] = {
    "GPT2Tokenizer": (GPT2_PATTERN, None),
    "GPT2TokenizerFast": (GPT2_PATTERN, None),
    "Qwen2Tokenizer": (QWEN2_PATTERN, NFC),
    "Qwen2TokenizerFast": (QWEN2_PATTERN, NFC),
}

_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+=* \d+")


def load_hf_tokenizer(path: str | os.PathLike) -> PretrainedTokenizer:
    """The tokenizer in a model directory, or in one of its files.

    A directory is searched for ``tokenizer.json``, then ``vocab.json`` + ``merges.txt``, then
    ``tokenizer.model``. Raises FileNotFoundError if there is none and `TokenizerFileError` if the
    file is damaged or of a kind not implemented (the message names what).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _from_tokenizer_json(path / "tokenizer.json")
        try:
            vocab, merges = find_gpt2_files(path)
        except FileNotFoundError:
            if (path / "tokenizer.model").is_file():
                return _from_tokenizer_model(path / "tokenizer.model")
            raise FileNotFoundError(
                f"no tokenizer files in {path} (looked for tokenizer.json, vocab.json + "
                f"merges.txt, tokenizer.model)"
            ) from None
        return _from_vocab_and_merges(vocab, merges)
    if not path.is_file():
        raise FileNotFoundError(f"no such tokenizer file: {path}")
    for vocab_name, merges_name in GPT2_FILE_NAMES:
        if path.name in (vocab_name, merges_name):
            vocab, merges = path.with_name(vocab_name), path.with_name(merges_name)
            if not (vocab.is_file() and merges.is_file()):
                raise FileNotFoundError(f"{vocab_name} goes with {merges_name}: one is missing")
            return _from_vocab_and_merges(vocab, merges)
    if path.suffix == ".json":
        return _from_tokenizer_json(path)
    return _from_tokenizer_model(path)


# -- tokenizer.json ------------------------------------------------------------------------------


def _from_tokenizer_json(path: Path) -> PretrainedTokenizer:
    document = _read_json(path)
    if not isinstance(document.get("model"), dict):
        raise _error(path, 'not a Hugging Face tokenizer.json (it has no "model")')
    model = document["model"]
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise _error(path, f"a {kind} model is not supported (only byte-level BPE is)")
    if model.get("byte_fallback"):
        raise _error(path, "BPE with byte_fallback (on characters, SentencePiece style) is not "
                           "supported (only byte-level BPE is)")
    if model.get("dropout") not in (None, 0, 0.0):
        raise _error(path, f"BPE dropout {model['dropout']} is not supported (it is random)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise _error(path, f"BPE {key} {model[key]!r} is not supported")
    normalizer = _normalizer(path, document.get("normalizer"))
    split_patterns = _split_patterns(path, document.get("pre_tokenizer"))
    for step in _steps(path, document.get("decoder"), "decoders"):
        if step.get("type") != "ByteLevel":
            raise _error(path, f"the {step.get('type')} decoder is not supported (only ByteLevel "
                               f"is)")

    vocab = _vocab_list(path, model.get("vocab"))
    id_of = {token: i for i, token in enumerate(vocab) if token is not None}
    merges = []
    for rank, merge in enumerate(model.get("merges") or []):
        # "a b" in most files; ["a", "b"] in newer ones (tokens may then contain spaces).
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2):
            raise _error(path, f"merge {rank} is not a pair of tokens: {merge!r}")
        for token in pair:
            if token not in id_of:
                raise _error(path, f"merge {rank} uses {token!r}, which is not in the vocabulary")
        merges.append((id_of[pair[0]], id_of[pair[1]]))
    added = [_added_token(path, entry) for entry in document.get("added_tokens") or []]
    if model.get("unk_token") is not None:
        missing = [b for b in range(256) if bytes_to_spelling(bytes([b])) not in id_of]
        if missing:
            raise _error(path, f"byte {missing[0]} has no token and would become the unknown "
                               f"token {model['unk_token']!r}, which is not implemented")
    whole_chunk_first = bool(model.get("ignore_merges"))
    return _build(path, vocab, merges, added, split_patterns, normalizer, whole_chunk_first)


def _normalizer(path: Path, spec: Any) -> str | None:
    kinds = [step.get("type") for step in _steps(path, spec, "normalizers")]
    for kind in kinds:
        if kind != NFC:
            raise _error(path, f"the {kind} normalizer is not supported (only NFC is): it changes "
                               f"the text before splitting, so the ids would differ")
    return NFC if kinds else None


def _split_patterns(path: Path, spec: Any) -> list[str]:
    """The pre-tokenizer as split patterns for `PretrainedTokenizer`, applied in turn."""
    patterns: list[str] = []
    byte_level = False
    for step in _steps(path, spec, "pretokenizers"):
        kind = step.get("type")
        if byte_level:
            # It would see the text already spelled in byte characters.
            raise _error(path, f"a {kind} pre-tokenizer after ByteLevel is not supported")
        if kind == "ByteLevel":
            if step.get("add_prefix_space", True):
                raise _error(path, "ByteLevel with add_prefix_space is not supported")
            if step.get("use_regex", True):
                patterns.append(GPT2_PATTERN)
            byte_level = True
        elif kind == "Split":
            behavior, pattern = step.get("behavior"), step.get("pattern") or {}
            if behavior != "Isolated" or step.get("invert"):
                inverted = " inverted" if step.get("invert") else ""
                raise _error(path, f"a Split pre-tokenizer with behavior {behavior!r}{inverted} is "
                                   f"not supported (only Isolated is)")
            if "Regex" in pattern:
                patterns.append(pattern["Regex"])
            elif "String" in pattern:
                patterns.append(re.escape(pattern["String"]))
            else:
                raise _error(path, "a Split pre-tokenizer has no pattern")
        elif kind == "Digits":
            patterns.append(DIGITS_PATTERN if step.get("individual_digits") else DIGIT_RUNS_PATTERN)
        else:
            raise _error(path, f"the {kind} pre-tokenizer is not supported")
    if not byte_level:
        raise _error(path, "no ByteLevel pre-tokenizer: not a byte-level BPE, which is all that "
                           "is supported")
    return patterns


def _steps(path: Path, spec: Any, key: str) -> list[dict[str, Any]]:
    """A normalizer, pre-tokenizer or decoder as a list of steps (a Sequence unrolled)."""
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise _error(path, f"a {key[:-1]} is not a JSON object: {spec!r}")
    if spec.get("type") == "Sequence":
        return [step for inner in spec.get(key) or [] for step in _steps(path, inner, key)]
    return [spec]


def _vocab_list(path: Path, vocab: Any) -> list[str | None]:
    """token -> id as a list indexed by id (None where no token has the id)."""
    if not isinstance(vocab, dict) or not all(type(i) is int and i >= 0 for i in vocab.values()):
        raise _error(path, "the vocabulary is not a map of tokens to ids")
    tokens: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, token_id in vocab.items():
        if tokens[token_id] is not None:
            raise _error(path, f"tokens {tokens[token_id]!r} and {token!r} share id {token_id}")
        tokens[token_id] = token
    return tokens


def _added_token(path: Path, entry: Any, token_id: int | None = None) -> AddedToken:
    """One entry of ``added_tokens`` (tokenizer.json) or ``added_tokens_decoder`` (config)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        raise _error(path, f"an added token has no text: {entry!r}")
    content = entry["content"]
    for flag in ("lstrip", "rstrip", "single_word"):
        if entry.get(flag):
            raise _error(path, f"added token {content!r} uses {flag}, which is not supported")
    token_id = entry.get("id") if token_id is None else token_id
    if type(token_id) is not int or token_id < 0:
        raise _error(path, f"added token {content!r} has no valid id")
    special = bool(entry.get("special", False))
    return AddedToken(token_id, content, special, bool(entry.get("normalized", not special)))


# -- vocab.json + merges.txt ---------------------------------------------------------------------


def _from_vocab_and_merges(vocab_path: Path, merges_path: Path) -> PretrainedTokenizer:
    config_path = vocab_path.with_name("tokenizer_config.json")
    config = _read_json(config_path) if config_path.is_file() else {}
    tokenizer_class = config.get("tokenizer_class") or "GPT2Tokenizer"
    if tokenizer_class not in _CLASS_SPLITS:
        raise _error(config_path, f"tokenizer_class {tokenizer_class!r} is not supported with "
                                  f"{vocab_path.name} + {merges_path.name} (these files do not "
                                  f"say how it splits text; its tokenizer.json would)")
    pattern, normalizer = _CLASS_SPLITS[tokenizer_class]
    vocab = _vocab_list(vocab_path, _read_json(vocab_path))
    id_of = {token: i for i, token in enumerate(vocab) if token is not None}
    merges = []
    lines = merges_path.read_text(encoding="utf-8").split("\n")
    for line_number, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or pair[0] not in id_of or pair[1] not in id_of:
            raise _error(merges_path, f"line {line_number} is not two tokens of "
                                      f"{vocab_path.name}: {line!r}")
        merges.append((id_of[pair[0]], id_of[pair[1]]))
    added = _config_added_tokens(config_path, config)
    if "added_tokens_decoder" not in config and "<|endoftext|>" in id_of:
        # GPT-2's own files come without a config; its tokenizer class makes this token special.
        added = [AddedToken(id_of["<|endoftext|>"], "<|endoftext|>", special=True)]
    return _build(vocab_path, vocab, merges, added, [pattern], normalizer, False)


def _config_added_tokens(config_path: Path, config: dict[str, Any]) -> list[AddedToken]:
    """The added tokens of a tokenizer_config.json (``added_tokens_decoder``: id -> token)."""
    table = config.get("added_tokens_decoder") or {}
    if not isinstance(table, dict):
        raise _error(config_path, "added_tokens_decoder is not a map of ids to tokens")
    added = []
    for key, entry in table.items():
        if not key.isdigit():
            raise _error(config_path, f"added token id {key!r} is not a number")
        added.append(_added_token(config_path, entry, int(key)))
    return added


# -- tiktoken's tokenizer.model ------------------------------------------------------------------


def _from_tokenizer_model(path: Path) -> PretrainedTokenizer:
    lines = path.read_bytes().splitlines()
    if not (lines and _TIKTOKEN_LINE.fullmatch(lines[0].strip())):
        raise _error(path, "not a tiktoken vocabulary (lines of 'base64 rank'); a SentencePiece "
                           "tokenizer.model (Llama 2, Mistral, Gemma) is not supported")
    by_rank: dict[int, bytes] = {}
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token_base64, rank_text = line.split()
            token, rank = base64.b64decode(token_base64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            raise _error(path, f"line {line_number} is not 'base64 rank': {line[:80]!r}") from None
        if rank in by_rank:
            raise _error(path, f"rank {rank} appears twice")
        by_rank[rank] = token
    # The rank is the id: spell the tokens as tokenizer.json would, in GPT-2's byte characters.
    vocab: list[str | None] = [None] * (max(by_rank) + 1)
    for rank, token in by_rank.items():
        vocab[rank] = bytes_to_spelling(token)
    config_path = path.with_name("tokenizer_config.json")
    if not config_path.is_file():
        raise _error(path, "a tiktoken vocabulary names no special tokens; put the model's "
                           "tokenizer_config.json beside it")
    added = _config_added_tokens(config_path, _read_json(config_path))
    return _build(path, vocab, None, added, [LLAMA3_PATTERN], None, True)


# -- shared --------------------------------------------------------------------------------------


def _build(path: Path, vocab, merges, added, split_patterns, normalizer, whole_chunk_first):
    try:
        return PretrainedTokenizer(
            vocab, merges, added, split_patterns, normalizer, whole_chunk_first
        )
    except ValueError as error:
        raise _error(path, str(error)) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _error(path, f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise _error(path, "not a JSON object")
    return document


def _error(path: Path, problem: str) -> TokenizerFileError:
    """The error for a file: one line, naming the file and what is wrong with it."""
    return TokenizerFileError(f"{path}: {problem}")
