"""`CharTokenizer`: one token per character, for character-level experiments.

The vocabulary is the sorted set of distinct characters of the training text (65 for Tiny
Shakespeare), followed by any special tokens. It is the simplest possible tokenizer: a model
trained on it has to learn spelling as well as language, which is exactly what the classic
character-level benchmarks measure. Unlike byte-level BPE it cannot encode a character it never
saw; asking it to raises a `ValueError` that names the character.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from .base import BaseTokenizer
from .patterns import special_token_regex


class CharTokenizer(BaseTokenizer):
    """A character-level tokenizer with the same interface as `Tokenizer`.

    >>> tok = CharTokenizer.train("hello world")
    >>> tok.encode("hello")
    [3, 2, 4, 4, 5]
    >>> tok.decode([3, 2, 4, 4, 5])
    'hello'
    """

    kind = "char"

    def __init__(
        self, chars: Sequence[str], special_tokens: Mapping[str, int] | Iterable[str] = ()
    ) -> None:
        """``chars[i]`` is the character of token ``i``; special tokens follow the characters."""
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"each vocabulary entry must be one character, not {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("the vocabulary lists a character twice")
        super().__init__(len(chars), special_tokens)
        self._chars = chars
        self._char_to_id = {c: i for i, c in enumerate(chars)}
        self._id_to_text = chars + sorted(self._specials, key=self._specials.__getitem__)

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        special_tokens: Iterable[str] = (),
        **_ignored: Any,
    ) -> CharTokenizer:
        """Build the vocabulary: the sorted distinct characters of ``text`` (a str or iterable).

        Occurrences of the special tokens are left out before collecting characters, so
        ``<|endoftext|>`` adds one token, not its 13 characters. Extra keyword arguments
        accepted by `Tokenizer.train` (``vocab_size``, ``progress``...) are ignored, so the two
        classes can be swapped in a training script.
        """
        special_tokens = list(special_tokens)
        texts = (text,) if isinstance(text, str) else text
        cutter = special_token_regex(special_tokens)
        seen: set[str] = set()
        for piece in texts:
            seen.update(cutter.sub("", piece) if cutter is not None else piece)
        return cls(sorted(seen), special_tokens)

    @property
    def chars(self) -> list[str]:
        """The character vocabulary, in id order."""
        return list(self._chars)

    def token_to_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range for vocab_size {self.vocab_size}")
        return self._id_to_text[token_id].encode("utf-8", errors="surrogatepass")

    def id_to_token(self, token_id: int) -> str:
        self.token_to_bytes(token_id)  # range check
        return self._id_to_text[token_id]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text character by character (special-token text as its characters)."""
        try:
            return list(map(self._char_to_id.__getitem__, text))
        except KeyError as err:
            c = err.args[0]
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) is not in this character tokenizer's "
                f"vocabulary of {len(self._chars)} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(map(self._id_to_text.__getitem__, self._checked_ids(ids)))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8", errors="surrogatepass")

    def _fields(self) -> dict[str, Any]:
        return {"special_tokens": self._specials, "chars": self._chars}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> CharTokenizer:
        return cls(fields["chars"], fields["special_tokens"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, special_tokens={self._specials!r})"
