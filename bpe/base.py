"""What every tokenizer here shares: special tokens, the ``encode``/``decode`` interface, files.

A *special token* such as ``<|endoftext|>`` is a token that is never produced by ordinary text:
it is a marker that the program inserts (between documents, around chat turns). So the question
is what to do when a user's text *contains* the characters ``<|endoftext|>``. Following
tiktoken, ``encode`` takes ``allowed_special``:

- ``"none_raise"`` (the default): no special token is allowed, and finding one in the text raises
  ``ValueError`` naming it, because silently doing either of the other two things can be wrong
  (a user could inject document boundaries, or a corpus's markers could vanish into plain text).
- ``"none"``: special-token text is encoded as the plain text it is.
- ``"all"``: every special token's text becomes its id.
- a set of token strings: those become ids; any *other* special token found raises.

A subclass supplies `encode_ordinary` (text with no special tokens), `token_to_bytes`, and how it
is written to and read from its file.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import regex

from .files import TokenizerFileError, canonical_json, read_tokenizer_file, write_tokenizer_file
from .patterns import special_token_regex

AllowedSpecial = str | set[str] | frozenset[str] | Sequence[str]

EOT = "<|endoftext|>"

_KINDS: dict[str, type[BaseTokenizer]] = {}


class BaseTokenizer:
    """Common behaviour of `Tokenizer` (BPE) and `CharTokenizer`. Not used directly."""

    #: The "type" written in the file; subclasses register themselves under it.
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    def __init__(
        self,
        n_regular: int,
        special_tokens: Mapping[str, int] | Iterable[str],
        *,
        specials_anywhere: bool = False,
    ) -> None:
        """``n_regular`` ordinary tokens take ids 0..n_regular-1; special tokens follow them.

        ``special_tokens`` is either a list of strings (numbered in order after the ordinary
        tokens) or a dict string -> id, whose ids must be exactly those numbers in some order.
        ``specials_anywhere`` lifts that order for tokenizers read from other projects' files,
        some of which number their special tokens first: the ids are then only required to be
        distinct and below ``n_regular + len(special_tokens)``.
        """
        if isinstance(special_tokens, Mapping):
            specials = dict(special_tokens)
        else:
            tokens = list(special_tokens)
            specials = {s: n_regular + i for i, s in enumerate(tokens)}
            if len(specials) != len(tokens):
                raise ValueError(f"duplicate special tokens in {tokens!r}")
        for s in specials:
            if not isinstance(s, str) or not s:
                raise ValueError(f"a special token must be a non-empty string, not {s!r}")
        n_ids = n_regular + len(specials)
        if specials_anywhere:
            ids = set(specials.values())
            if len(ids) != len(specials) or not all(0 <= i < n_ids for i in ids):
                raise ValueError(
                    f"special token ids must be distinct and in 0..{n_ids - 1}, got {specials!r}"
                )
        elif sorted(specials.values()) != list(range(n_regular, n_ids)):
            raise ValueError(
                f"special token ids must be {n_regular}..{n_regular + len(specials) - 1} "
                f"(right after the {n_regular} ordinary tokens), got {specials!r}"
            )
        self._n_regular = n_regular
        self._specials = specials
        self._splitters: dict[frozenset[str], regex.Pattern[str]] = {}
        self._fingerprint: str | None = None

    # -- sizes and inspection ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included: ids are 0..vocab_size-1."""
        return self._n_regular + len(self._specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special tokens, string -> id (a copy)."""
        return dict(self._specials)

    @property
    def eot_id(self) -> int | None:
        """The id of ``<|endoftext|>``, or None if this tokenizer has no such token."""
        return self._specials.get(EOT)

    def token_id(self, token: str) -> int:
        """The id of the special token ``token`` (e.g. ``"<|endoftext|>"``); ValueError if none."""
        if token not in self._specials:
            raise ValueError(f"no special token {token!r} in this tokenizer")
        return self._specials[token]

    def token_to_bytes(self, token_id: int) -> bytes:
        """The exact bytes that token ``token_id`` stands for."""
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str:
        """Token ``token_id`` as readable text (bytes that are not valid UTF-8 shown as ``\\xNN``)."""
        return self.token_to_bytes(token_id).decode("utf-8", errors="backslashreplace")

    # -- encoding ------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text treating any special-token text in it as plain text (the fast path)."""
        raise NotImplementedError

    def encode(self, text: str, allowed_special: AllowedSpecial = "none_raise") -> list[int]:
        """Encode ``text`` to token ids; see the module docstring for ``allowed_special``."""
        allowed = self._allowed_specials(text, allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        # Special tokens are cut out first and the text between them is encoded on its own, so
        # " <|endoftext|>" is [" ", <|endoftext|>]: no ordinary token ever spans a special one.
        splitter = self._special_splitter(allowed)
        ids: list[int] = []
        start = 0
        for match in splitter.finditer(text):
            ids.extend(self.encode_ordinary(text[start : match.start()]))
            ids.append(self._specials[match.group()])
            start = match.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def encode_batch(
        self, texts: Iterable[str], allowed_special: AllowedSpecial = "none_raise"
    ) -> list[list[int]]:
        """Encode each text of ``texts``; a list of id lists."""
        return [self.encode(text, allowed_special) for text in texts]

    def _allowed_specials(self, text: str, allowed_special: AllowedSpecial) -> frozenset[str]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        if allowed_special == "all":
            return frozenset(self._specials)
        if allowed_special == "none":
            return frozenset()
        if allowed_special == "none_raise":
            allowed: frozenset[str] = frozenset()
        elif isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special must be 'none_raise', 'none', 'all' or a set of special "
                f"tokens, not the string {allowed_special!r}"
            )
        else:
            allowed = frozenset(allowed_special)
            unknown = allowed.difference(self._specials)
            if unknown:
                raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)!r}")
        disallowed = frozenset(self._specials).difference(allowed)
        # One regex search, not one substring search per token: Llama 3 has 256 special tokens.
        found = self._special_splitter(disallowed).search(text) if disallowed else None
        if found is not None:
            token = found.group()
            raise ValueError(
                f"the text contains the special token {token!r}; pass "
                f"allowed_special={{{token!r}}} (or 'all') to encode it as the special token, "
                f"or allowed_special='none' to encode it as plain text"
            )
        return allowed

    def _special_splitter(self, allowed: frozenset[str]) -> regex.Pattern[str]:
        if allowed not in self._splitters:
            self._splitters[allowed] = special_token_regex(allowed)  # type: ignore[assignment]
        return self._splitters[allowed]

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of a sequence of ids (which need not be valid UTF-8)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list of ints (NumPy arrays welcome), each checked to be in range."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is out of range for vocab_size {self.vocab_size}")
        return ids

    # -- files ---------------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        """Everything that defines this tokenizer, as JSON-ready fields (after "type")."""
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> BaseTokenizer:
        raise NotImplementedError

    #: Which of `_fields` is a long list to write one item per line.
    _long_field: ClassVar[str] = ""

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to ``path`` as one human-readable JSON file."""
        write_tokenizer_file(path, {"type": self.kind, **self._fields()}, self._long_field)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseTokenizer:
        """Read a tokenizer written by `save`."""
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise TokenizerFileError(
                f"{path} holds a {tokenizer.kind!r} tokenizer, not a {cls.kind!r} one "
                f"(bpe.load_tokenizer reads either)"
            )
        return tokenizer

    def _canonical(self) -> dict[str, Any]:
        """The fields that decide what ids this tokenizer gives (what the fingerprint covers)."""
        return {"type": self.kind, **self._fields()}

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical serialized tokenizer: equal iff the tokenizers encode alike."""
        if self._fingerprint is None:
            data = canonical_json(self._canonical()).encode("ascii")
            self._fingerprint = hashlib.sha256(data).hexdigest()
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseTokenizer):
            return NotImplemented
        return self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)


def load_tokenizer(path: str | os.PathLike) -> BaseTokenizer:
    """Read a tokenizer file and return a `Tokenizer` or `CharTokenizer`, whichever it holds."""
    document = read_tokenizer_file(path)
    kind = document.get("type")
    if kind not in _KINDS:
        raise TokenizerFileError(
            f"{path}: unknown tokenizer type {kind!r} (known: {', '.join(sorted(_KINDS))})"
        )
    fields = {k: v for k, v in document.items() if k not in ("format", "version", "type")}
    try:
        return _KINDS[kind]._from_fields(fields)
    except (KeyError, TypeError, ValueError) as err:
        detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise TokenizerFileError(f"{path} is a damaged {kind} tokenizer file: {detail}") from None
