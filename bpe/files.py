"""The tokenizer file: one human-readable JSON document.

Every tokenizer file starts with the same header::

    {
      "format": "deep-understanding-tokenizer",
      "version": 1,
      "type": "bpe",            (or "char")
      ...type-specific fields...
    }

Long lists (a BPE tokenizer's merges) are written one entry per line so the file can be read,
diffed and grepped. `read_tokenizer_file` rejects anything that is not such a document, and
documents written by a newer version of this code, with a `TokenizerFileError` that says which.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

FORMAT = "deep-understanding-tokenizer"
VERSION = 1


class TokenizerFileError(ValueError):
    """A file that is not a tokenizer file, is damaged, or was written by a newer version."""


def write_tokenizer_file(path: str | os.PathLike, fields: dict[str, Any], long_key: str = "") -> None:
    """Write ``fields`` (after the standard header) as JSON to ``path``, atomically.

    ``fields[long_key]``, if given, is a list written one item per line. The file is written to a
    temporary name and renamed, so a crash never leaves half a tokenizer behind.
    """
    document = {"format": FORMAT, "version": VERSION, **fields}
    lines = []
    for key, value in document.items():
        if key == long_key and value:
            items = ",\n".join("    " + _dumps(item) for item in value)
            lines.append(f"  {_dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {_dumps(key)}: {_dumps(value)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    path = Path(path)
    # A random name beside the file, opened with "x": the usual permissions (the umask's), not
    # tempfile.mkstemp's private 0600.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_tokenizer_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a tokenizer file; return its JSON object.

    Raises `FileNotFoundError`/`OSError` if it cannot be read and `TokenizerFileError` if it is
    not a tokenizer file this version understands.
    """
    path = Path(path)
    if path.is_dir():
        raise TokenizerFileError(f"{path} is a directory, not a tokenizer file")
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerFileError(f"{path} is not a tokenizer file (not valid JSON: {err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise TokenizerFileError(
            f"{path} is not a tokenizer file (it has no \"format\": \"{FORMAT}\" field)"
        )
    version = document.get("version")
    if not isinstance(version, int) or version < 1:
        raise TokenizerFileError(f"{path}: bad tokenizer file version {version!r}")
    if version > VERSION:
        raise TokenizerFileError(
            f"{path} was written by a newer version of this tokenizer (file version {version}, "
            f"this code reads up to version {VERSION}); upgrade to read it"
        )
    return document


def canonical_json(obj: Any) -> str:
    """A byte-for-byte stable serialization: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
