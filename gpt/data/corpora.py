"""Named corpora and vocabulary files: find them locally, or download them once.

`fetch("tinyshakespeare")` returns the path of a local copy of the file, looking in order:

1. the local mirror directory named by `$DU_DATA_MIRROR` (same layout as `shared/data`:
   `tinyshakespeare.txt`, `tinystories/train.txt`, ...); nothing is ever written there;
2. the download cache: the `data_dir` argument, else `$DU_DATA_DIR`, else
   `~/.cache/deep-understanding` (same layout);
3. the public source: downloaded into the cache with a progress bar, checked by sha256
   where the checksum is known, written atomically (see `gpt.data.http`).

`load_text_splits(source)` turns a registered name *or* a local path into (train, val) text:
a corpus that has its own validation file (TinyStories) uses it, any other text is split
90/10. A local directory holding `train.txt` and `valid.txt` (or `val.txt`) works too.

TinyStories is special: its public files on Hugging Face are the whole dataset (about 1.9 GB
for train, 19 MB for valid) and no sha256 of them is published. The valid file is downloaded
whole; of the train file only the first `TINYSTORIES_TRAIN_MAX_BYTES` are downloaded (an HTTP
range request), cut back to the last complete story. Neither is checksum-verified; the sample
in `shared/data/tinystories` (with its own checksums in SOURCE.md) is a different, smaller cut.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

from gpt.data.http import DEFAULT_TIMEOUT, DownloadError, download
from gpt.errors import GPTError
from gpt.io.files import atomic_write, cache_dir, sha256_file

__all__ = [
    "DATASETS",
    "MIRROR_ENV",
    "TINYSTORIES_TRAIN_MAX_BYTES",
    "DataError",
    "RemoteFile",
    "TextSplits",
    "fetch",
    "load_text",
    "load_text_splits",
    "split_text",
]

MIRROR_ENV = "DU_DATA_MIRROR"
TINYSTORIES_TRAIN_MAX_BYTES = 32 * 1024 * 1024  # ~8 M GPT-2 tokens: hours of CPU training
STORY_END = b"<|endoftext|>"


class DataError(GPTError):
    """A corpus or data file could not be found, downloaded or read. Says which and why."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One registered file: where it lives locally and where it comes from."""

    filename: str  # path inside the mirror / cache directory, e.g. "tinystories/train.txt"
    url: str
    sha256: str | None  # of the final file; None where the source publishes none
    description: str = ""
    zip_member: str | None = None  # the url is a zip archive; keep only this member
    max_bytes: int | None = None  # download only this prefix, cut at the last story end
    valid: str | None = None  # registered name of this corpus's own validation file


_RAW = "https://raw.githubusercontent.com"
_BOOK = f"{_RAW}/rasbt/LLMs-from-scratch/main"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M"
_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"

DATASETS: dict[str, RemoteFile] = {
    "tinyshakespeare": RemoteFile(
        "tinyshakespeare.txt",
        f"{_RAW}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "1.1 M characters of Shakespeare, the classic character-level corpus",
    ),
    "the-verdict": RemoteFile(
        "the-verdict.txt",
        f"{_BOOK}/ch02/01_main-chapter-code/the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        "Edith Wharton's short story, the book's first pretraining text (20 k characters)",
    ),
    "instructions": RemoteFile(
        "instruction-data.json",
        f"{_BOOK}/ch07/01_main-chapter-code/instruction-data.json",
        "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
        "1,100 Alpaca-style instruction/input/output records (JSON)",
    ),
    "instructions-preference": RemoteFile(
        "instruction-data-with-preference.json",
        f"{_BOOK}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
        "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
        "the same records with chosen/rejected responses (JSON)",
    ),
    "sms-spam": RemoteFile(
        "sms-spam-collection.tsv",
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        "UCI SMS Spam Collection, lines 'ham<TAB>text' / 'spam<TAB>text'",
        zip_member="SMSSpamCollection",
    ),
    "gpt2-encoder.json": RemoteFile(
        "gpt2-encoder.json",
        f"{_GPT2}/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "OpenAI GPT-2 encoder.json (token string -> id)",
    ),
    "gpt2-vocab.bpe": RemoteFile(
        "gpt2-vocab.bpe",
        f"{_GPT2}/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        "OpenAI GPT-2 vocab.bpe (50,000 merges)",
    ),
    "tinystories": RemoteFile(
        "tinystories/train.txt",
        f"{_TINYSTORIES}/TinyStories-train.txt",
        None,
        "TinyStories (CDLA-Sharing-1.0): simple English stories, each followed by <|endoftext|>",
        max_bytes=TINYSTORIES_TRAIN_MAX_BYTES,
        valid="tinystories-valid",
    ),
    "tinystories-valid": RemoteFile(
        "tinystories/valid.txt",
        f"{_TINYSTORIES}/TinyStories-valid.txt",
        None,
        "TinyStories validation stories",
    ),
}


class TextSplits(NamedTuple):
    """Training and validation text of one corpus."""

    train: str
    val: str


def _mirror_dir() -> Path | None:
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def fetch(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Return the path of a local copy of the registered file `name` (see `DATASETS`).

    Looks in `$DU_DATA_MIRROR`, then in the cache (`cache_dir(data_dir)`), then downloads
    into the cache. Raises `DataError` for an unknown name or when the file cannot be had.
    A file found locally is used as it is: checksums are checked when a file is downloaded,
    not on every read (the mirror is trusted, and the cache only ever holds verified files).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data file {name!r}; the registered names are: {', '.join(DATASETS)}")
    entry = DATASETS[name]
    mirror = _mirror_dir()
    if mirror is not None and (mirror / entry.filename).is_file():
        return mirror / entry.filename
    target = cache_dir(data_dir) / entry.filename
    if target.is_file():
        return target
    try:
        _download_entry(entry, target, progress=progress, timeout=timeout)
    except DownloadError as err:
        raise DataError(_offline_help(name, entry, target, err)) from None
    return target


def _download_entry(entry: RemoteFile, target: Path, *, progress: bool, timeout: float) -> None:
    """Download one registry entry into `target`, unpacking or trimming it as it requires."""
    if entry.zip_member is None and entry.max_bytes is None:
        download(entry.url, target, sha256=entry.sha256, progress=progress, timeout=timeout)
        return
    # Zip archives and capped downloads first land in a side file, then the final file is
    # derived from it. The side file keeps its own `.part` so an interruption resumes.
    raw = target.with_name(target.name + (".zip" if entry.zip_member else ".head"))
    if not raw.is_file():  # else an earlier run died between downloading and unpacking
        download(entry.url, raw, max_bytes=entry.max_bytes, progress=progress, timeout=timeout)
    with atomic_write(target) as out:
        if entry.zip_member is not None:
            try:
                with zipfile.ZipFile(raw) as archive, archive.open(entry.zip_member) as member:
                    while chunk := member.read(1 << 20):
                        out.write(chunk)
            except (zipfile.BadZipFile, KeyError) as err:
                raw.unlink()
                raise DownloadError(f"{entry.url}: not a zip archive holding {entry.zip_member} ({err})") from None
        else:
            out.write(_cut_at_story_end(raw.read_bytes(), entry.max_bytes))
    raw.unlink()
    if entry.sha256 is not None and (actual := sha256_file(target)) != entry.sha256:
        target.unlink()
        raise DownloadError(f"{entry.url}: {target.name} has sha256 {actual}, expected {entry.sha256}; deleted")


def _cut_at_story_end(data: bytes, max_bytes: int | None) -> bytes:
    """Drop the story that a byte cap cut in half: keep up to the last `<|endoftext|>` line."""
    if max_bytes is None or len(data) < max_bytes:
        return data  # the whole file arrived: nothing was cut
    end = data.rfind(STORY_END)
    if end < 0:
        return data
    end += len(STORY_END)
    if data[end : end + 1] == b"\n":
        end += 1
    return data[:end]


def _offline_help(name: str, entry: RemoteFile, target: Path, err: Exception) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    where = f"${MIRROR_ENV} ({mirror})" if mirror else f"${MIRROR_ENV} (not set)"
    # Zip and capped downloads keep their partial bytes under a side name (see _download_entry).
    parts = sorted(target.parent.glob(f"{target.name}*.part")) if target.parent.is_dir() else []
    kept = f" A partial download is kept in {parts[0]} and resumes on the next try." if parts else ""
    return (
        f"could not get {name!r} ({entry.filename}): {err}\n"
        f"It is in neither {where} nor the cache {target.parent}.{kept}\n"
        f"To work offline, save {entry.url} as <dir>/{entry.filename} and set {MIRROR_ENV}=<dir>, "
        f"or pass the path of a local text file instead of the name {name!r}."
    )


def load_text(source: str | os.PathLike, *, data_dir: str | os.PathLike | None = None) -> str:
    """The text of a registered corpus name or of a local file (UTF-8)."""
    return _read_utf8(_resolve(source, data_dir))


def load_text_splits(
    source: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    exact: bool = False,
) -> TextSplits:
    """(train, val) text of a registered name, a local text file, or a local directory.

    A registered corpus with its own validation file (`RemoteFile.valid`) uses it, as does a
    directory holding `train.txt` and `valid.txt` or `val.txt`. Anything else is cut by
    `split_text(text, val_fraction, exact=exact)`. A registered name wins over a file of the
    same name.
    """
    if isinstance(source, str) and source in DATASETS and DATASETS[source].valid:
        train = fetch(source, data_dir=data_dir)
        val = fetch(DATASETS[source].valid, data_dir=data_dir)
        return TextSplits(_read_utf8(train), _read_utf8(val))
    path = Path(source).expanduser()
    if not (isinstance(source, str) and source in DATASETS) and path.is_dir():
        if not (path / "train.txt").is_file():
            raise DataError(f"directory {path} has no train.txt (and optionally valid.txt or val.txt)")
        for val_name in ("valid.txt", "val.txt"):
            if (path / val_name).is_file():
                return TextSplits(_read_utf8(path / "train.txt"), _read_utf8(path / val_name))
        return split_text(_read_utf8(path / "train.txt"), val_fraction, exact=exact)
    return split_text(load_text(source, data_dir=data_dir), val_fraction, exact=exact)


def split_text(text: str, val_fraction: float = 0.1, *, exact: bool = False) -> TextSplits:
    """Cut `text` into (train, val) with about `val_fraction` of the characters in val.

    The cut moves to the nearest line start so that no word is split in two, and val is the
    *end* of the text (as in nanoGPT): no shuffling, so val is truly unseen text.

    `exact=True` cuts at character `int((1 - val_fraction) * len(text))` wherever it falls,
    mid-word if need be: the book's split (`text[:int(0.9 * len(text))]`), for reproducing
    its numbers.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    target = int(len(text) * (1.0 - val_fraction))
    if exact:
        return TextSplits(text[:target], text[target:])
    # Line starts just before and just after the target (position 0 / len mean "none").
    before = text.rfind("\n", 0, target) + 1
    after = text.find("\n", target) + 1
    candidates = [cut for cut in (before, after) if 0 < cut < len(text)]
    cut = min(candidates, key=lambda c: abs(c - target)) if candidates else target
    return TextSplits(text[:cut], text[cut:])


def _resolve(source: str | os.PathLike, data_dir: str | os.PathLike | None) -> Path:
    if isinstance(source, str) and source in DATASETS:
        return fetch(source, data_dir=data_dir)
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise DataError(f"{path} is not a regular file")
    raise DataError(
        f"{str(source)!r} is neither a registered corpus ({', '.join(DATASETS)}) "
        "nor an existing file"
    )


def _read_utf8(path: Path) -> str:
    try:
        # Bytes, then decode: read_text() would translate "\r\n" and change the corpus.
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {err.start})") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
