"""`PretrainedTokenizer`: the byte-level BPE of an open-weight model, run exactly as its authors do.

Qwen3, SmolLM2 and Llama 3 each ship a byte-level BPE tokenizer trained elsewhere. It is the
machine of our `Tokenizer` (cut the text into chunks, spell each chunk as bytes, merge adjacent
pairs by priority), with these differences, all read from the model's files by `bpe.huggingface`:

1. **Added tokens** such as ``<|im_end|>`` or ``<think>`` are found in the text before anything
   else: at each place the longest one, leftmost first. Those marked *special* obey
   ``allowed_special`` like our special tokens (when not allowed they stay plain text, cut no
   further); the others, like Qwen3's ``<think>``, are ordinary vocabulary, matched always, even
   by `encode_ordinary`, as Hugging Face does. An added token marked *normalized* is looked for in
   the normalized text instead of the raw one.
2. **A normalizer.** Qwen3 puts the text between added tokens into Unicode NFC first (``e`` and a
   combining acute accent become one ``é``), so that equal-looking texts give the same ids.
3. **Split stages.** The text may be cut by several regexes in turn, each cutting the pieces left
   by the one before: SmolLM2 isolates each digit, then cuts the rest with GPT-2's pattern. Text
   that a regex does not match is kept as pieces of its own, never dropped.
4. **Ids are the file's.** SmolLM2 numbers its special tokens 0..16 and has no token for 21 of the
   256 bytes (those bytes are dropped from the text, as Hugging Face does when a file names no
   unknown token). So merging runs on *symbols* numbered by priority: bytes are symbols 0..255 and
   merge ``r`` of the merge list makes symbol ``256 + r``, which `bpe.apply` merges exactly as it
   merges our ids. A chunk's symbols are turned into the file's ids once, when the chunk is first
   seen, and remembered with it.
5. **Llama 3 has no merge list** (tiktoken's format): two adjacent tokens merge whenever their
   concatenation is a token, the one with the lowest id (its rank) first. Symbols are then the ids
   themselves and the merge table holds every way of cutting each token into two tokens. With it
   comes a rule some Hugging Face files also set (``ignore_merges``): a chunk that is a token as a
   whole is that token, without merging.

Tokens are stored as Hugging Face spells them: each byte as one printable character of GPT-2's
table (see `bpe.gpt2`), so a space is ``Ġ``. Decoding joins the tokens' bytes; an added token
stands for the UTF-8 bytes of its text.

Known limits, both from Unicode tables of different ages: the split regexes run on the `regex`
module, whose tables are newer than those of Hugging Face's and tiktoken's regex engines (a
character first assigned in Unicode 17, such as a CJK ideograph of Extension J, is a letter here
and not there, so a text holding one can be cut differently); and NFC uses Python's tables, newer
than Hugging Face's (two combining marks one of which is recent, such as U+0EBA from Unicode 12,
can come out in another order).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import regex

from .apply import apply_merges, encode_chunks
from .base import AllowedSpecial, BaseTokenizer
from .gpt2 import byte_to_char
from .patterns import GPT2_PATTERN, GPT4_PATTERN, ascii_splitter, special_token_regex

#: Meta's split pattern for Llama 3 (its tiktoken file does not carry one).
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen2's and Qwen3's split pattern: Llama 3's, but every digit a chunk of its own.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Hugging Face's Digits pre-tokenizer, as a split stage (every digit alone, or runs of digits).
DIGITS_PATTERN = r"\p{N}"
DIGIT_RUNS_PATTERN = r"\p{N}+"

#: The only normalizer implemented: Unicode canonical composition.
NFC = "NFC"

# Equivalents of the patterns above for ASCII-only text, for the standard `re` module, which cuts
# faster than `regex` (see `bpe.patterns` for why each rewrite is exact on ASCII).
_WS = r" \t\n\r\x0b\x0c"
_ASCII_VERSIONS: dict[str, str] = {
    LLAMA3_PATTERN: (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"""
        rf"""| ?[^{_WS}A-Za-z0-9]+[\r\n]*|[{_WS}]*[\r\n]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
    QWEN2_PATTERN: (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]"""
        rf"""| ?[^{_WS}A-Za-z0-9]+[\r\n]*|[{_WS}]*[\r\n]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
    DIGITS_PATTERN: r"[0-9]",
    DIGIT_RUNS_PATTERN: r"[0-9]+",
}

# GPT-2's byte <-> printable character table, as `str.translate` tables: a token spelled in those
# characters becomes bytes by translating to code points 0..255 and encoding as Latin-1.
_BYTE_TO_CHAR = byte_to_char()
_SPELLING_TO_LATIN1 = {ord(c): b for b, c in _BYTE_TO_CHAR.items()}
_LATIN1_TO_SPELLING = {b: c for b, c in _BYTE_TO_CHAR.items()}
_NOT_SPELLING = regex.compile("[^" + regex.escape("".join(_BYTE_TO_CHAR.values())) + "]")


def spelling_to_bytes(token: str) -> bytes | None:
    """The bytes of a token spelled in GPT-2's byte characters (None if it is spelled otherwise)."""
    if _NOT_SPELLING.search(token):
        return None
    return token.translate(_SPELLING_TO_LATIN1).encode("latin-1")


def bytes_to_spelling(data: bytes) -> str:
    """``data`` spelled one GPT-2 byte character per byte (``b" a"`` -> ``"Ġa"``)."""
    return data.decode("latin-1").translate(_LATIN1_TO_SPELLING)


@dataclass(frozen=True)
class AddedToken:
    """A token matched as a whole in the text before any splitting (see the module docstring)."""

    id: int
    content: str
    special: bool = True
    #: Looked for in the normalized text (after NFC) rather than in the text as given.
    normalized: bool = False


class PretrainedTokenizer(BaseTokenizer):
    """A byte-level BPE tokenizer read from another project's files; see the module docstring.

    Same interface as `Tokenizer`: ``encode(text, allowed_special=...)``, ``decode(ids)``,
    ``vocab_size``, ``special_tokens``, ``token_id(name)``, ``save``. Make one with
    `bpe.huggingface.load_hf_tokenizer`.
    """

    kind = "pretrained-bpe"
    _long_field = "vocab"

    def __init__(
        self,
        vocab: Sequence[str | None],
        merges: Sequence[tuple[int, int]] | None,
        added_tokens: Sequence[AddedToken] = (),
        split_patterns: Sequence[str] = (GPT2_PATTERN,),
        normalizer: str | None = None,
        whole_chunk_first: bool = False,
    ) -> None:
        """Build the tokenizer from its parts, in Hugging Face's terms.

        ``vocab[i]`` is token ``i`` spelled in GPT-2's byte characters (None: id ``i`` is only
        an added token, or unused). ``merges`` lists ``(left id, right id)`` pairs, highest
        priority first; each makes the token spelled as the two joined, which must exist. None
        means tiktoken's rule (module docstring, point 5). ``split_patterns`` are the regexes
        applied in turn; ``normalizer`` is None or ``"NFC"``; ``whole_chunk_first`` makes a
        chunk that is a token that token (tiktoken's rule and ``ignore_merges``).
        """
        vocab = list(vocab)
        added = list(added_tokens)
        n_ids = max(len(vocab), max((t.id for t in added), default=-1) + 1)
        specials = {t.content: t.id for t in added if t.special}
        for field in ("content", "id"):
            if len({getattr(t, field) for t in added}) != len(added):
                raise ValueError(f"two added tokens have the same {field}")
        super().__init__(n_ids - len(specials), specials, specials_anywhere=True)
        if normalizer not in (None, NFC):
            raise ValueError(f"unknown normalizer {normalizer!r} (only {NFC!r} is implemented)")

        self._vocab = vocab
        self._merges = None if merges is None else [(int(a), int(b)) for a, b in merges]
        self._added = sorted(added, key=lambda t: t.id)
        self._split_patterns = list(split_patterns)
        self._normalizer = normalizer
        self._whole_chunk_first = bool(whole_chunk_first)

        # Decoding: every id's bytes. Encoding only ever produces tokens spelled in byte
        # characters; a vocabulary entry spelled otherwise decodes as its UTF-8.
        token_bytes = [b""] * n_ids
        self._id_of_bytes: dict[bytes, int] = {}
        for token_id, spelling in enumerate(vocab):
            if spelling is None:
                continue
            data = spelling_to_bytes(spelling)
            if data is None:
                token_bytes[token_id] = spelling.encode("utf-8")
                continue
            if data in self._id_of_bytes:
                raise ValueError(
                    f"tokens {self._id_of_bytes[data]} and {token_id} are both {spelling!r}"
                )
            token_bytes[token_id] = data
            self._id_of_bytes[data] = token_id
        for token in added:
            token_bytes[token.id] = token.content.encode("utf-8")
        self._token_bytes = token_bytes

        if self._merges is None:
            self._build_rank_rule()
        else:
            self._build_merge_list(self._merges)

        self._split: Callable[[str], list[str]] = _splitter(self._split_patterns)
        self._normalize: Callable[[str], str] | None = (
            (lambda text: unicodedata.normalize("NFC", text)) if normalizer == NFC else None
        )
        # Added tokens looked for in the raw text, and (marked normalized) in the normalized text.
        self._added_by_text = {t.content: t for t in added}
        self._raw_added = special_token_regex(t.content for t in added if not t.normalized)
        normalized = [t.content for t in added if t.normalized]
        if self._normalize is not None:
            # The token is normalized too, so that it is found in normalized text.
            for token in [t for t in added if t.normalized]:
                self._added_by_text.setdefault(self._normalize(token.content), token)
            normalized = [self._normalize(text) for text in normalized]
        self._normalized_added = special_token_regex(normalized)
        self._memo: dict[str, list[int]] = {}

    # -- the merge tables ----------------------------------------------------------------------

    def _build_merge_list(self, merges: list[tuple[int, int]]) -> None:
        """Symbols by priority (module docstring, point 4): bytes 0..255, merge r makes 256 + r."""
        id_of_spelling = {s: i for i, s in enumerate(self._vocab) if s is not None}
        # symbols_of[token id]: every symbol that stands for that token (a token two merges
        # make has two symbols; a byte's token has the byte).
        symbols_of: dict[int, list[int]] = {}
        symbol_ids = [-1] * 256
        for byte, char in _BYTE_TO_CHAR.items():
            token_id = id_of_spelling.get(char)
            if token_id is not None:
                symbol_ids[byte] = token_id
                symbols_of[token_id] = [byte]
        # Bytes without a token are dropped before merging (their neighbours may then merge).
        self._dropped_bytes = bytes(b for b in range(256) if symbol_ids[b] < 0)
        for rank, (left, right) in enumerate(merges):
            if not (0 <= left < len(self._vocab) and 0 <= right < len(self._vocab)):
                raise ValueError(f"merge {rank} ({left}, {right}) uses an id with no token")
            if self._vocab[left] is None or self._vocab[right] is None:
                raise ValueError(f"merge {rank} ({left}, {right}) uses an id with no token")
            joined = self._vocab[left] + self._vocab[right]
            if joined not in id_of_spelling:
                raise ValueError(f"merge {rank} makes {joined!r}, which is not in the vocabulary")
            token_id = id_of_spelling[joined]
            symbols_of.setdefault(token_id, []).append(256 + rank)
            symbol_ids.append(token_id)
        merged: dict[tuple[int, int], int] = {}
        for rank, (left, right) in enumerate(merges):
            for a in symbols_of.get(left, ()):
                for b in symbols_of.get(right, ()):
                    # A pair listed twice keeps its later priority, as Hugging Face's table does.
                    merged[a, b] = 256 + rank
        self._merged = merged
        self._symbol_ids: list[int] | None = symbol_ids
        self._byte_symbols: list[int] | None = None

    def _build_rank_rule(self) -> None:
        """tiktoken's rule (module docstring, point 5): symbols are ids, any two tokens whose
        concatenation is a token merge into it, lowest id first."""
        id_of_bytes = self._id_of_bytes
        missing = [b for b in range(256) if bytes([b]) not in id_of_bytes]
        if missing:
            raise ValueError(f"byte {missing[0]} has no token (tiktoken's rule needs one per byte)")
        merged: dict[tuple[int, int], int] = {}
        for data, token_id in id_of_bytes.items():
            for cut in range(1, len(data)):
                left = id_of_bytes.get(data[:cut])
                if left is not None:
                    right = id_of_bytes.get(data[cut:])
                    if right is not None:
                        merged[left, right] = token_id
        self._merged = merged
        self._symbol_ids = None
        self._byte_symbols = [id_of_bytes[bytes([b])] for b in range(256)]
        self._dropped_bytes = b""

    # -- inspection ----------------------------------------------------------------------------

    @property
    def added_tokens(self) -> list[AddedToken]:
        """Every added token (special or not), by id."""
        return list(self._added)

    @property
    def split_patterns(self) -> list[str]:
        """The regexes that cut the text, applied in turn."""
        return list(self._split_patterns)

    @property
    def normalizer(self) -> str | None:
        """``"NFC"`` or None."""
        return self._normalizer

    def token_id(self, token: str) -> int:
        """The id of an added token by its text (``"<|im_end|>"``, ``"<think>"``), or of the
        ordinary token whose bytes are exactly ``token``'s UTF-8; ValueError if there is none."""
        if token in self._added_by_text:
            return self._added_by_text[token].id
        token_id = self._id_of_bytes.get(token.encode("utf-8"))
        if token_id is None:
            raise ValueError(f"no token {token!r} in this tokenizer")
        return token_id

    def token_to_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is out of range for vocab_size {self.vocab_size}"
            )
        return self._token_bytes[token_id]

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: AllowedSpecial = "none_raise") -> list[int]:
        """Encode ``text``; ``allowed_special`` as in `bpe.base`, for the special added tokens."""
        return self._encode(text, self._allowed_specials(text, allowed_special))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with special-token text as plain text (non-special added tokens still match)."""
        return self._encode(text, frozenset())

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        ids: list[int] = []
        for piece in self._cut_added(text, self._raw_added, allowed):
            if type(piece) is int:
                ids.append(piece)
                continue
            if self._normalize is not None:
                piece = self._normalize(piece)
            for part in self._cut_added(piece, self._normalized_added, allowed):
                if type(part) is int:
                    ids.append(part)
                else:
                    ids.extend(encode_chunks(self._split(part), self._memo, self._encode_chunk))
        return ids

    def _cut_added(
        self, text: str, finder: regex.Pattern[str] | None, allowed: frozenset[str]
    ) -> Iterator[str | int]:
        """``text`` as pieces of text and the ids of the added tokens found in it.

        A special token that is not allowed is found all the same and left in the text: it is
        not searched again for a shorter token inside it (Hugging Face's behaviour).
        """
        if finder is None:
            if text:
                yield text
            return
        start = 0
        for match in finder.finditer(text):
            token = self._added_by_text[match.group()]
            if token.special and token.content not in allowed:
                continue
            if match.start() > start:
                yield text[start : match.start()]
            yield token.id
            start = match.end()
        if start < len(text):
            yield text[start:]

    def _encode_chunk(self, chunk: str) -> list[int]:
        """The ids of one chunk (called once per distinct chunk; `encode_chunks` remembers it)."""
        data = chunk.encode("utf-8")
        if self._whole_chunk_first:
            token_id = self._id_of_bytes.get(data)
            if token_id is not None:
                return [token_id]
        if self._dropped_bytes:
            data = data.translate(None, self._dropped_bytes)
        if self._byte_symbols is None:
            symbols = apply_merges(list(data), self._merged)
        else:
            symbols = apply_merges(list(map(self._byte_symbols.__getitem__, data)), self._merged)
        if self._symbol_ids is None:
            return symbols
        return list(map(self._symbol_ids.__getitem__, symbols))

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(map(self._token_bytes.__getitem__, self._checked_ids(ids)))

    # -- files ---------------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {
            "normalizer": self._normalizer,
            "split_patterns": self._split_patterns,
            "whole_chunk_first": self._whole_chunk_first,
            "added_tokens_format": "[id, text, special, normalized]",
            "added_tokens": [[t.id, t.content, t.special, t.normalized] for t in self._added],
            "merges_format": "[left id, right id] in priority order; null: tiktoken's rule",
            "merges": None if self._merges is None else [list(m) for m in self._merges],
            "vocab_format": "token i spelled in GPT-2's byte characters (null: no such token)",
            "vocab": self._vocab,
        }

    def _canonical(self) -> dict[str, Any]:
        fields = {k: v for k, v in self._fields().items() if not k.endswith("_format")}
        return {"type": self.kind, **fields}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> PretrainedTokenizer:
        merges = fields["merges"]
        if merges is not None and not all(isinstance(m, list) and len(m) == 2 for m in merges):
            raise ValueError('"merges" must be null or a list of [left id, right id] pairs')
        rows = fields["added_tokens"]
        if not all(isinstance(r, list) and len(r) == 4 for r in rows):
            raise ValueError(
                '"added_tokens" must be a list of [id, text, special, normalized] rows'
            )
        return cls(
            fields["vocab"],
            merges,
            [
                AddedToken(int(i), str(text), bool(special), bool(normalized))
                for i, text, special, normalized in rows
            ],
            fields["split_patterns"],
            fields["normalizer"],
            fields["whole_chunk_first"],
        )

    def __repr__(self) -> str:
        merges = "ranks" if self._merges is None else len(self._merges)
        return (
            f"PretrainedTokenizer(vocab_size={self.vocab_size}, merges={merges}, "
            f"added_tokens={len(self._added)}, normalizer={self._normalizer!r})"
        )


# -- splitting -----------------------------------------------------------------------------------


def _splitter(patterns: Sequence[str]) -> Callable[[str], list[str]]:
    """A function cutting text with ``patterns`` in turn (an ASCII fast path where one is known)."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(regex.compile(pattern))
        except regex.error as error:
            raise ValueError(f"split pattern {pattern!r} does not compile here: {error}") from None
    stages = [_stage(c) for c in compiled]
    ascii_res = [_ascii_re(p) for p in patterns]
    ascii_stages = [_stage(r) for r in ascii_res] if all(r is not None for r in ascii_res) else None

    def run(all_stages: list[Callable[[str], list[str]]], text: str) -> list[str]:
        if not all_stages:
            return [text] if text else []
        pieces = all_stages[0](text)
        for stage in all_stages[1:]:
            pieces = [chunk for piece in pieces for chunk in stage(piece)]
        return pieces

    if ascii_stages is None:
        return lambda text: run(stages, text)
    if not _CUT_SAFE.issuperset(patterns):
        return lambda text: run(ascii_stages if text.isascii() else stages, text)

    def split(text: str) -> list[str]:
        if text.isascii():
            return run(ascii_stages, text)
        # Mostly ASCII text with a few other characters: its ASCII lines take the fast path.
        chunks: list[str] = []
        for piece in _lines_for_splitting(text):
            chunks.extend(run(ascii_stages if piece.isascii() else stages, piece))
        return chunks

    return split


#: The patterns that always end a chunk after a newline that follows a non-space character and
#: precedes an ASCII letter (so text may be cut there and each piece split on its own). The
#: newline cannot join the letter (only a literal space or a non-newline may lead a word), and
#: any chunk that holds it ends right after it: whitespace runs stop at the non-space before it,
#: and punctuation takes the newlines after it, up to the letter. No pattern looks behind, and
#: no lookahead before the newline can see past it (``\s+(?!\S)`` needs a run of whitespace).
_CUT_SAFE = frozenset(
    [GPT2_PATTERN, GPT4_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, DIGITS_PATTERN, DIGIT_RUNS_PATTERN]
)
_NEWLINE_BEFORE_LETTER = re.compile(r"\n(?=[A-Za-z])")


def _lines_for_splitting(text: str) -> list[str]:
    """``text`` cut after each newline between a non-space character and an ASCII letter."""
    pieces, start = [], 0
    for newline in _NEWLINE_BEFORE_LETTER.finditer(text):
        end = newline.end()
        if end >= 2 and not text[end - 2].isspace():
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:])
    return pieces


def _ascii_re(pattern: str) -> re.Pattern[str] | None:
    if pattern in _ASCII_VERSIONS:
        return re.compile(_ASCII_VERSIONS[pattern])
    return ascii_splitter(pattern)


def _stage(pattern) -> Callable[[str], list[str]]:
    """One split stage: the matches of ``pattern`` and, as pieces too, the text between them."""
    findall = pattern.findall if pattern.groups == 0 else None

    def cut(text: str) -> list[str]:
        if findall is not None:
            chunks = findall(text)
            # The usual case: the pattern matches everywhere (GPT-2's and Llama 3's do).
            if sum(map(len, chunks)) == len(text):
                return chunks
        pieces, start = [], 0
        for match in pattern.finditer(text):
            if match.start() > start:
                pieces.append(text[start : match.start()])
            if match.end() > match.start():
                pieces.append(match.group())
            start = match.end()
        if start < len(text):
            pieces.append(text[start:])
        return pieces

    return cut
