"""Small file helpers shared by the data, download and checkpoint code.

Two things every writer of a file in this project needs:

- `atomic_write(path)`: write to a temporary file next to `path`, then rename it over `path`.
  A rename within one directory is atomic on POSIX and Windows, so a reader (or a run that is
  killed half-way) sees either the old file or the complete new one, never a torn half-file.
- `sha256_file(path)`: the hex sha256 of a file, read in pieces so a multi-gigabyte file does
  not have to fit in memory.

And where downloaded files live: `cache_dir()` (corpora, token caches, tokenizers) and
`default_model_dir(name)` (checkpoints fetched with `python -m gpt.download NAME`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["CACHE_ENV", "DEFAULT_CACHE", "atomic_write", "cache_dir", "default_model_dir",
           "sha256_file"]

CACHE_ENV = "DU_DATA_DIR"
DEFAULT_CACHE = Path("~/.cache/deep-understanding")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces `path` when the `with` block succeeds.

    >>> with atomic_write("out.bin") as f:   # doctest: +SKIP
    ...     f.write(b"all or nothing")

    If the block raises, the temporary file is deleted and `path` is left as it was.
    Parent directories are created as needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file must live in the same directory: a rename across file systems
    # is a copy, and a copy is not atomic. A random name keeps concurrent writers apart, and
    # open(..., "xb") (unlike tempfile.mkstemp's private 0600) gives the usual permissions.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            # Without fsync a crash right after the rename could leave an empty file behind
            # the new name on some file systems.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the sha256 of the file at `path` as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The download cache: `data_dir` if given, else `$DU_DATA_DIR`, else ~/.cache/deep-understanding."""
    if data_dir is None:
        data_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(data_dir).expanduser()


def default_model_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where a downloaded model goes by default: `<cache>/models/<name>` (see `cache_dir`)."""
    return cache_dir(data_dir) / "models" / name
