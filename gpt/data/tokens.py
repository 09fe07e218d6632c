"""The token pipeline: text -> token ids on disk (once) -> batches of (input, target) windows.

Tokenizing a few megabytes with a pure-Python BPE takes a while, so it happens once per
(text, tokenizer, special-token setting): the ids are saved as a `.npy` file in the cache
directory under a name derived from the sha256 of all three, and later runs memory-map that
file instead. Change one character of the text, or retrain the tokenizer, and the key changes.

Ids are stored as uint16 when the vocabulary has at most 65,536 entries (GPT-2's 50,257 fit),
otherwise uint32: half or a quarter of the memory of int64. Batches are widened to int64.

A language model learns to predict token t+1 from tokens 0..t, so every training example is a
window of block_size + 1 consecutive ids: x is the first block_size of them, y the last
block_size (x shifted left by one). Two ways of choosing windows:

- `get_batch`: random start positions drawn from a `np.random.Generator` (nanoGPT's way).
  Save the generator's state with a checkpoint and a resumed run draws the same batches.
- `iter_windows`: start positions 0, stride, 2*stride, ... in order (the book's way), for
  evaluating on every token of a split or for small data sets read epoch by epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
from tqdm import tqdm

from gpt.data.corpora import load_text_splits
from gpt.io.files import atomic_write, cache_dir

__all__ = [
    "TokenData",
    "encode_in_chunks",
    "load_token_data",
    "token_cache_path",
    "token_dtype",
    "tokenize_cached",
]

CHUNK_CHARS = 1 << 18  # ~256 k characters per encode() call: a smooth progress bar, little memory

# Where text may be cut between two encode() calls without changing a single id: at the start
# of a line that begins with a visible character, when the previous line ends with one
# ("...said.\nOnce"). Both GPT-2's and GPT-4's split patterns always end a chunk right after
# such a lone newline and start a new one at the next character, and BPE never merges across
# chunks, so encoding the pieces gives exactly the ids of encoding the whole (a character
# tokenizer does not care at all). A blank line ("\n\n") is *not* such a place: GPT-2 would
# tokenize that whitespace run differently if it ended a piece.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


class TextTokenizer(Protocol):
    """What the pipeline needs of a tokenizer (`bpe.Tokenizer` and `bpe.CharTokenizer` fit)."""

    vocab_size: int
    fingerprint: str

    def encode(self, text: str, allowed_special: str | set[str] = ...) -> list[int]: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _chunk_bounds(text: str, chunk_chars: int) -> Iterator[tuple[int, int]]:
    """(start, end) pieces of about `chunk_chars` characters, cut only at safe places."""
    start = 0
    while start < len(text):
        match = _SAFE_CUT.search(text, start + chunk_chars) if len(text) - start > chunk_chars else None
        # No safe place ahead: the rest goes in one piece (slower bar, same ids).
        end = match.start() if match else len(text)
        yield start, end
        start = end


def encode_in_chunks(
    text: str,
    tokenizer: TextTokenizer,
    *,
    allowed_special: str | set[str] = "all",
    chunk_chars: int = CHUNK_CHARS,
    progress: bool = True,
    desc: str = "tokenizing",
) -> np.ndarray:
    """Encode `text` piece by piece (with a progress bar) into one array of ids.

    The result equals `tokenizer.encode(text, allowed_special=...)`: pieces are cut only where
    GPT-2 / GPT-4 style pre-tokenization cuts anyway (see `_SAFE_CUT`).
    """
    dtype = token_dtype(tokenizer.vocab_size)
    if getattr(tokenizer, "pattern", "") is None:
        # A BPE without a split pattern may merge across any boundary: only the whole is safe.
        chunk_chars = max(len(text), 1)
    pieces = [np.zeros(0, dtype=dtype)]
    with tqdm(total=len(text), unit="char", unit_scale=True, desc=desc, disable=not progress) as bar:
        for start, end in _chunk_bounds(text, chunk_chars):
            pieces.append(np.array(tokenizer.encode(text[start:end], allowed_special=allowed_special), dtype=dtype))
            bar.update(end - start)
    return np.concatenate(pieces)


def token_cache_path(
    text: str,
    tokenizer: TextTokenizer,
    *,
    allowed_special: str | set[str] = "all",
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Where the ids of `text` under this tokenizer and special-token setting are cached."""
    special = allowed_special if isinstance(allowed_special, str) else json.dumps(sorted(allowed_special))
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    key = hashlib.sha256(f"{text_sha}\n{tokenizer.fingerprint}\n{special}".encode()).hexdigest()
    return cache_dir(data_dir) / "tokens" / f"{key[:32]}.npy"


def tokenize_cached(
    text: str,
    tokenizer: TextTokenizer,
    *,
    allowed_special: str | set[str] = "all",
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "tokenizing",
) -> np.ndarray:
    """The ids of `text`, memory-mapped from the cache; encoded and saved on first use.

    `allowed_special="all"` lets special-token text such as `<|endoftext|>` between stories
    become the special token (what a pretraining corpus wants); pass "none" to treat it as
    plain text.
    """
    path = token_cache_path(text, tokenizer, allowed_special=allowed_special, data_dir=data_dir)
    cached = _load_cached_ids(path, token_dtype(tokenizer.vocab_size))
    if cached is not None:
        return cached
    ids = encode_in_chunks(text, tokenizer, allowed_special=allowed_special, progress=progress, desc=desc)
    try:
        with atomic_write(path) as f:
            np.save(f, ids)
    except OSError as error:
        # The cache only saves time: a full disk or a read-only cache costs the next run a
        # tokenization, not this run its data.
        print(f"note: could not cache the token ids in {path} ({error.strerror or error}); "
              f"using them from memory", file=sys.stderr)
        return ids
    return np.load(path, mmap_mode="r")


def _load_cached_ids(path: Path, dtype: np.dtype) -> np.ndarray | None:
    """The ids cached at `path`, memory-mapped; None when there are none or the file is damaged.

    The cache is written atomically, but a file can still be cut short (copied while written,
    a full disk on a file system that reports it late, a crash of another program): a file
    that does not load, or holds anything but one row of `dtype` ids, is rebuilt, not fatal.
    """
    if not path.is_file():
        return None
    try:
        ids = np.load(path, mmap_mode="r")     # a short file: "mmap length is greater than ..."
    except (ValueError, OSError, EOFError):
        return None
    return ids if ids.ndim == 1 and ids.dtype == dtype else None


@dataclass
class TokenData:
    """Token ids of a training and a validation split, and the two ways to cut them into batches."""

    train: np.ndarray
    val: np.ndarray

    @classmethod
    def from_texts(
        cls,
        train_text: str,
        val_text: str,
        tokenizer: TextTokenizer,
        *,
        allowed_special: str | set[str] = "all",
        data_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> TokenData:
        """Tokenize (or load from the cache) both splits."""
        def ids(text: str, split: str) -> np.ndarray:
            return tokenize_cached(
                text, tokenizer, allowed_special=allowed_special, data_dir=data_dir,
                progress=progress, desc=f"tokenizing {split}",
            )

        return cls(ids(train_text, "train"), ids(val_text, "val"))

    def split(self, split: str) -> np.ndarray:
        """The ids of "train" or "val"."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def _checked(self, split: str, block_size: int) -> np.ndarray:
        data = self.split(split)
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        if block_size + 1 > len(data):
            raise ValueError(
                f"a window of block_size + 1 = {block_size + 1} tokens does not fit in the "
                f"{split} split, which has only {len(data)} tokens: use a smaller block_size "
                f"or more {split} text"
            )
        return data

    def get_batch(
        self, split: str, batch_size: int, block_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` windows at random positions: (x, y), both int64 of shape (B, T)."""
        data = self._checked(split, block_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        # The last valid start is len - block_size - 1, so that y's last id exists.
        starts = rng.integers(0, len(data) - block_size, size=batch_size)
        return _windows(data, starts, block_size)

    def num_windows(self, split: str, block_size: int, stride: int | None = None) -> int:
        """How many windows `iter_windows` visits."""
        data = self._checked(split, block_size)
        return len(range(0, len(data) - block_size, stride or block_size))

    def iter_windows(
        self,
        split: str,
        block_size: int,
        stride: int | None = None,
        batch_size: int = 1,
        *,
        drop_last: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Windows starting at 0, stride, 2*stride, ... grouped into batches, in order.

        stride defaults to block_size (windows side by side, each token predicted once);
        a smaller stride overlaps them. The last batch may be smaller unless `drop_last`.
        """
        data = self._checked(split, block_size)
        stride = stride or block_size
        if stride < 1 or batch_size < 1:
            raise ValueError(f"stride and batch_size must be at least 1, got {stride} and {batch_size}")
        starts = np.arange(0, len(data) - block_size, stride)
        for first in range(0, len(starts), batch_size):
            batch = starts[first : first + batch_size]
            if drop_last and len(batch) < batch_size:
                return
            yield _windows(data, batch, block_size)


def _windows(data: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    # One gather of (B, T+1) ids, then x and y are its two overlapping T-wide slices.
    rows = np.asarray(data[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


def load_token_data(
    source: str | os.PathLike,
    tokenizer: TextTokenizer,
    *,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    allowed_special: str | set[str] = "all",
    progress: bool = True,
) -> TokenData:
    """Corpus name or local path -> `TokenData`: `load_text_splits`, then `TokenData.from_texts`."""
    splits = load_text_splits(source, data_dir=data_dir, val_fraction=val_fraction)
    return TokenData.from_texts(
        splits.train, splits.val, tokenizer,
        allowed_special=allowed_special, data_dir=data_dir, progress=progress,
    )
