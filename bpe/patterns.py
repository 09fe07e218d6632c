"""Pre-tokenization: the regular expressions that cut text into chunks before BPE sees it.

BPE never merges across a chunk boundary. Cutting first keeps merges meaningful: without it the
most frequent pairs in English would soon glue words to the punctuation after them ("dog." and
"dog!" would become unrelated tokens), and a space would be merged onto the end of one word as
readily as onto the start of the next. The patterns below cut text into words with their leading
space, runs of digits, runs of punctuation and runs of whitespace, so a learned token is almost
always a word, a piece of a word, or a piece of punctuation.

Patterns use the third-party `regex` module because they need Unicode classes such as
``\\p{L}`` (any letter, in any script) and ``\\p{N}`` (any digit), which the standard `re`
module lacks.
"""

from __future__ import annotations

import re
from typing import Iterable

import regex

#: GPT-2's split (2019): English contractions, words with an optional leading space, numbers,
#: punctuation runs, and whitespace. ``\s+(?!\S)`` leaves the last space of a run to start the next
#: word, so " the" stays one chunk after several spaces.
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

#: GPT-4's split (the cl100k vocabulary): case-insensitive contractions, at most three digits per
#: chunk (so numbers tokenize uniformly), newlines kept apart from other whitespace, and a letter
#: run may carry one leading non-letter character (" word", "_word", "$word").
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

#: The names accepted wherever a pattern is asked for.
NAMED_PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# The same two patterns restricted to ASCII text, for the standard `re` module, which splits
# about twice as fast as `regex`; splitting is most of the cost of encoding. On ASCII, \p{L} is
# exactly [A-Za-z], \p{N} is [0-9], and `regex`'s \s is the six characters below (`re`'s \s would
# also take \x1c-\x1f, hence the explicit class). The possessive quantifiers of GPT4_PATTERN
# (which `re` lacks before Python 3.11) change nothing here: in both places backtracking could
# never produce a different match, they only save the engine the attempt.
_WS = r" \t\n\r\x0b\x0c"
_ASCII_VERSIONS: dict[str, str] = {
    GPT2_PATTERN: (
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+"""
        rf"""| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
    GPT4_PATTERN: (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"""
        rf"""| ?[^{_WS}A-Za-z0-9]+[\r\n]*|[{_WS}]*[\r\n]|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
}


def resolve_pattern(pattern: str | None) -> str | None:
    """Turn a pattern name (``"gpt2"``, ``"gpt4"``), a regex string, or None into a regex string.

    ``None`` (or ``""`` or ``"none"``) means no pre-tokenization: the whole text is one chunk, as
    in the textbook presentation of BPE. The regex is compiled here once so that a bad pattern is
    reported when the tokenizer is made, not on the first encode.
    """
    if pattern is None or pattern in ("", "none"):
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string or None, not {type(pattern).__name__}")
    resolved = NAMED_PATTERNS.get(pattern, pattern)
    try:
        regex.compile(resolved)
    except regex.error as err:
        raise ValueError(f"invalid split pattern {pattern!r}: {err}") from None
    return resolved


def pattern_name(pattern: str | None) -> str:
    """A short name for display: ``"gpt2"``, ``"gpt4"``, ``"none"`` or the regex itself."""
    if pattern is None:
        return "none"
    for name, value in NAMED_PATTERNS.items():
        if value == pattern:
            return name
    return pattern


def ascii_splitter(pattern: str | None) -> re.Pattern[str] | None:
    """An equivalent `re` pattern for ASCII-only text, if one is known for ``pattern``."""
    version = _ASCII_VERSIONS.get(pattern) if pattern is not None else None
    return re.compile(version) if version is not None else None


def special_token_regex(tokens: Iterable[str]) -> regex.Pattern[str] | None:
    """A regex matching any of the literal strings ``tokens`` (None if there are none).

    Longer tokens are tried first, so a special token that contains another is matched whole.
    """
    ordered = sorted(set(tokens), key=lambda s: (-len(s), s))
    if not ordered:
        return None
    return regex.compile("|".join(regex.escape(s) for s in ordered))
