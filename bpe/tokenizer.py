"""`Tokenizer`: byte-level byte-pair encoding (BPE) with regex pre-tokenization.

How a text becomes ids:

1. Special tokens the caller allows are cut out (see `bpe.base`).
2. The split pattern cuts the rest into chunks: words with their leading space, numbers,
   punctuation, whitespace (see `bpe.patterns`).
3. Each chunk is spelled as its UTF-8 bytes, one token per byte, and the learned merges are
   applied in the order they were learned (see `bpe.apply`).

Because every byte has a token, any string can be encoded and nothing is ever "unknown"; and
because a token is just a byte string, decoding is concatenation. The vocabulary is laid out as:

- ids 0..255: the single bytes (for a trained tokenizer, id ``b`` is byte ``b``; GPT-2 numbers
  its bytes in another order, kept in ``byte_order``),
- ids 256..: one per merge, in the order learned: merge ``i`` makes token ``256 + i``,
- then the special tokens.

Encoding is fast for two reasons: merging is rank-ordered (no pair counting at encode time) and
each distinct chunk is encoded once and remembered, so in running text, where the same words come
back again and again, most chunks cost one dictionary lookup.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable, Mapping, Sequence

import regex

from .apply import apply_merges, encode_chunks
from .base import BaseTokenizer
from .gpt2 import read_gpt2_files
from .patterns import ascii_splitter, pattern_name, resolve_pattern
from .train import MAX_VOCAB, count_chunks, learn_merges


class Tokenizer(BaseTokenizer):
    """A byte-level BPE tokenizer: train it, or load GPT-2's; encode, decode, save, load.

    >>> tok = Tokenizer.train("aaabdaaabac", vocab_size=259, pattern=None, progress=False)
    >>> tok.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]
    >>> tok.decode([258])
    'aaab'
    """

    kind = "bpe"
    _long_field = "merges"

    def __init__(
        self,
        merges: Sequence[tuple[int, int]] = (),
        pattern: str | None = "gpt4",
        special_tokens: Mapping[str, int] | Iterable[str] = (),
        byte_order: Sequence[int] | None = None,
        merge_counts: Sequence[int | None] | None = None,
    ) -> None:
        """Build a tokenizer from its merges.

        ``merges[i] = (a, b)`` makes token ``256 + i`` from tokens ``a`` and ``b`` (both must
        exist already). ``pattern`` is ``"gpt2"``, ``"gpt4"``, a regex, or None for no
        splitting. ``byte_order[i]`` is the byte that token ``i < 256`` stands for (default:
        byte ``i``). ``merge_counts`` are the pair counts seen in training, kept for display only.
        """
        n_regular = 256 + len(merges)
        super().__init__(n_regular, special_tokens)
        if n_regular + len(self._specials) > MAX_VOCAB:
            raise ValueError(f"vocabulary too large: at most {MAX_VOCAB} tokens are supported")
        self._pattern = resolve_pattern(pattern)
        self._chunk_re = regex.compile(self._pattern) if self._pattern is not None else None
        # Splitting is most of the cost of encoding; ASCII text can use a faster equivalent.
        self._ascii_re = ascii_splitter(self._pattern)

        if byte_order is None:
            byte_order = range(256)
        byte_order = [int(b) for b in byte_order]
        if sorted(byte_order) != list(range(256)):
            raise ValueError("byte_order must list each of the 256 byte values exactly once")
        self._byte_order = byte_order
        # bytes.translate maps each byte of a chunk to its token id in one C call.
        self._byte_to_id: bytes | None = None
        if byte_order != list(range(256)):
            table = [0] * 256
            for token_id, byte in enumerate(byte_order):
                table[byte] = token_id
            self._byte_to_id = bytes(table)

        self._merges: list[tuple[int, int]] = []
        self._merged_id: dict[tuple[int, int], int] = {}
        vocab: list[bytes] = [bytes([b]) for b in byte_order]
        for i, (a, b) in enumerate(merges):
            z = 256 + i
            a, b = int(a), int(b)
            # A merge may only use tokens made before it; this is also what makes rank-ordered
            # merging well defined.
            if not (0 <= a < z and 0 <= b < z):
                raise ValueError(f"merge {i} ({a}, {b}) uses a token that does not exist yet")
            if (a, b) in self._merged_id:
                raise ValueError(f"merge {i} ({a}, {b}) repeats merge {self._merged_id[a, b] - 256}")
            self._merges.append((a, b))
            self._merged_id[a, b] = z
            vocab.append(vocab[a] + vocab[b])
        vocab.extend(s.encode("utf-8") for s, _ in sorted(self._specials.items(), key=lambda kv: kv[1]))
        self._vocab = vocab
        if merge_counts is not None and len(merge_counts) != len(self._merges):
            raise ValueError("merge_counts must have one entry per merge")
        self._merge_counts = list(merge_counts) if merge_counts is not None else None
        self._cache: dict[str, list[int]] = {}

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        pattern: str | None = "gpt4",
        special_tokens: Iterable[str] = (),
        progress: bool = True,
    ) -> Tokenizer:
        """Learn a tokenizer of ``vocab_size`` tokens (special tokens included) from a corpus.

        ``text`` is a string or an iterable of strings (streamed: only the distinct chunks and
        their counts are kept). Special-token text is cut out of the corpus before counting, so
        it is never learned as merges. Training is deterministic; see `bpe.train` for how it
        works and how ties between equally frequent pairs are broken. If the corpus runs out of
        pairs before ``vocab_size`` is reached, a warning says so and the vocabulary is smaller.
        """
        special_tokens = list(special_tokens)
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: the 256 byte tokens and "
                f"{len(special_tokens)} special tokens need {256 + len(special_tokens)}"
            )
        resolved = resolve_pattern(pattern)
        chunk_counts = count_chunks(text, resolved, special_tokens)
        byte_counts = {chunk.encode("utf-8"): n for chunk, n in chunk_counts.items()}
        del chunk_counts
        merges, counts = learn_merges(byte_counts, n_merges, progress=progress)
        if len(merges) < n_merges:
            warnings.warn(
                f"the corpus ran out of pairs after {len(merges)} merges; the vocabulary has "
                f"{256 + len(merges) + len(special_tokens)} tokens, not {vocab_size}",
                stacklevel=2,
            )
        return cls(merges, resolved, special_tokens, merge_counts=counts)

    @classmethod
    def from_gpt2(
        cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike | None = None
    ) -> Tokenizer:
        """Load OpenAI's GPT-2 vocabulary: ``encoder.json`` + ``vocab.bpe``.

        The same files are called ``vocab.json`` + ``merges.txt`` by Hugging Face. Give the two
        paths, or one directory holding either pair. The result gives GPT-2's ids exactly,
        ``<|endoftext|>`` = 50256 included.
        """
        merges, byte_order, specials = read_gpt2_files(encoder_json, vocab_bpe)
        return cls(merges, "gpt2", specials, byte_order=byte_order)

    # -- inspection ----------------------------------------------------------------------------

    @property
    def pattern(self) -> str | None:
        """The split regex (None: no splitting)."""
        return self._pattern

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in order: ``merges[i] = (a, b)`` made token ``256 + i``."""
        return list(self._merges)

    @property
    def merge_counts(self) -> list[int | None] | None:
        """How often each merged pair occurred when training chose it (None if not known)."""
        return None if self._merge_counts is None else list(self._merge_counts)

    def token_to_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._vocab):
            raise ValueError(f"token id {token_id} is out of range for vocab_size {self.vocab_size}")
        return self._vocab[token_id]

    def byte_token(self, byte: int) -> int:
        """The id of the token that stands for the single byte ``byte``."""
        return byte if self._byte_to_id is None else self._byte_to_id[byte]

    # -- encoding ------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text treating special-token text as plain text: the fast path for corpora."""
        if not text:
            return []
        if self._ascii_re is not None and text.isascii():
            chunks = self._ascii_re.findall(text)
        elif self._chunk_re is not None:
            chunks = self._chunk_re.findall(text)
        else:
            chunks = [text]
        return encode_chunks(chunks, self._cache, self._encode_chunk)

    def _encode_chunk(self, chunk: str) -> list[int]:
        data = chunk.encode("utf-8")
        if self._byte_to_id is not None:
            data = data.translate(self._byte_to_id)
        return apply_merges(list(data), self._merged_id)

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = self._checked_ids(ids)
        return b"".join(map(self._vocab.__getitem__, ids))

    # -- files ---------------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        counts = self._merge_counts or [None] * len(self._merges)
        return {
            "pattern": self._pattern,
            "special_tokens": self._specials,
            "byte_order": None if self._byte_to_id is None else self._byte_order,
            "merges_format": "[left id, right id, merged token as text, pair count in training]",
            "merges": [
                [a, b, self.id_to_token(256 + i), count]
                for i, ((a, b), count) in enumerate(zip(self._merges, counts))
            ],
        }

    def _canonical(self) -> dict[str, Any]:
        # The text and count of each merge are for people; only the pair decides the encoding.
        return {
            "type": self.kind,
            "pattern": self._pattern,
            "special_tokens": self._specials,
            "byte_order": None if self._byte_to_id is None else self._byte_order,
            "merges": [list(m) for m in self._merges],
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Tokenizer:
        rows = fields["merges"]
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) >= 2 for r in rows):
            raise ValueError("\"merges\" must be a list of [left id, right id, ...] rows")
        merges = [(r[0], r[1]) for r in rows]
        if not all(type(a) is int and type(b) is int for a, b in merges):
            raise ValueError("merge ids must be integers")
        counts = [r[3] if len(r) > 3 else None for r in rows]
        tokenizer = cls(
            merges,
            fields["pattern"],
            fields["special_tokens"],
            byte_order=fields.get("byte_order"),
            merge_counts=None if all(c is None for c in counts) else counts,
        )
        # The text column is redundant; if it disagrees, the file was edited by hand or damaged.
        for i, row in enumerate(rows):
            if len(row) > 2 and row[2] != tokenizer.id_to_token(256 + i):
                raise ValueError(
                    f"merge {i} says it makes {row[2]!r} but its ids make "
                    f"{tokenizer.id_to_token(256 + i)!r}"
                )
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"pattern={pattern_name(self._pattern)!r}, special_tokens={self._specials!r})"
        )
