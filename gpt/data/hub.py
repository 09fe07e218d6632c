"""Download a model from the Hugging Face hub: `python -m gpt.download ORG/NAME [--dir D]`.

Any repository id works ("Qwen/Qwen3-0.6B", "HuggingFaceTB/SmolLM2-360M-Instruct", and GPT-2's
old short names "gpt2", "gpt2-medium", ...). What is fetched, from
https://huggingface.co/<repo>/resolve/<revision>/<file>:

    config.json                   the architecture (required)
    model.safetensors             the weights; or, for a large model,
    model.safetensors.index.json  the list of shards, and every shard it names
    generation_config.json        stop tokens (eos_token_id) and recommended sampling
    tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, tokenizer.model,
    chat_template.jinja           the tokenizer and the chat template, those the repository has

First the hub's API lists the repository's files with their sizes and, for large (LFS) files,
their sha256 (https://huggingface.co/api/models/<repo>/revision/<revision>?blobs=true). Then each
file goes through `gpt.data.http.download`: resumable (an interrupted download continues where
it stopped), with a progress bar, and checked: its size against the listing, and its sha256
when the listing gives one. A file already in the directory with the listed size is kept.

Gated repositories (Meta's Llama) and private ones need an access token: accept the model's
license on its page, make a token at https://huggingface.co/settings/tokens, and set it in the
environment variable HF_TOKEN. It is then sent as `Authorization: Bearer <token>` to the hub
(not to the storage servers the hub redirects downloads to) and never printed. A gated
repository without HF_TOKEN, or a refused token (HTTP 401 or 403), is an error that says this.
Any failure, such as a machine without network, also says which files to get and where to put
them; a directory that already holds a whole model is used as it is when the hub cannot be
reached. The environment variable HF_ENDPOINT points it at a mirror.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from gpt.data.http import DEFAULT_TIMEOUT, DownloadError, download
from gpt.io.files import default_model_dir

__all__ = ["API_URL", "FILE_URL", "HubFile", "OPTIONAL_FILES", "download_model", "list_files",
           "main", "model_files"]

ENDPOINT = "https://huggingface.co"
TOKEN_VARIABLE = "HF_TOKEN"
TOKEN_PAGE = "https://huggingface.co/settings/tokens"
API_URL = "{endpoint}/api/models/{repo}/revision/{revision}?blobs=true"
FILE_URL = "{endpoint}/{repo}/resolve/{revision}/{file}"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
OPTIONAL_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
# What to fetch by hand when the downloader cannot (the offline message).
BY_HAND = (f"{CONFIG}, {WEIGHTS} (or {INDEX} and every shard it lists), and those of "
           f"{', '.join(OPTIONAL_FILES)} that the repository has")
# An id the hub accepts: NAME or ORG/NAME, letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class HubFile:
    """One file of a repository as the hub lists it: size in bytes (None if not listed),
    sha256 for files stored in LFS (the weights), else None."""
    name: str
    size: int | None = None
    sha256: str | None = None


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or ENDPOINT).rstrip("/")


def _page(repo: str) -> str:
    return f"{_endpoint()}/{repo}"


def _auth_headers() -> dict[str, str]:
    """{"Authorization": "Bearer $HF_TOKEN"} when HF_TOKEN is set, else {}."""
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refused(repo: str, error: DownloadError) -> DownloadError | None:
    """For an HTTP 401 or 403 answer, the error that says what to do about it; else None."""
    if error.status not in (401, 403):
        return None
    if _auth_headers():
        advice = (f"the hub refused the token in {TOKEN_VARIABLE}: accept the license at "
                  f"{_page(repo)} with the account the token belongs to (and check that the "
                  f"token is valid)")
    else:
        advice = (f"accept its license at {_page(repo)}, then create an access token at "
                  f"{TOKEN_PAGE} and set it in the environment variable {TOKEN_VARIABLE}")
    return DownloadError(f"{repo} is gated (or private), and its files need an access token "
                         f"(HTTP {error.status}): {advice}", status=error.status)


def list_files(repo: str, revision: str = "main", *, timeout: float = DEFAULT_TIMEOUT
               ) -> tuple[dict[str, HubFile], bool]:
    """The files of a repository, by name, and whether it is gated (needs a token).

    Raises DownloadError when the hub cannot be asked or does not know the repository.
    """
    url = API_URL.format(endpoint=_endpoint(), repo=repo,
                         revision=urllib.parse.quote(revision, safe=""))
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = download(url, Path(scratch) / "listing.json", progress=False,
                            timeout=timeout, headers=_auth_headers())
        except DownloadError as error:
            raise _refused(repo, error) or error from None
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            files = {}
            for entry in info["siblings"]:
                lfs = entry.get("lfs") or {}
                files[entry["rfilename"]] = HubFile(entry["rfilename"], entry.get("size"),
                                                    lfs.get("sha256"))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DownloadError(f"{url}: not the hub's list of files ({error!r})") from None
    return files, bool(info.get("gated"))


def model_files(files: dict[str, HubFile], repo: str) -> list[HubFile]:
    """What to fetch of the listed `files`, in order: config.json, the weights (the single
    file, or the index; the shards come once the index is read), the optional files present.
    Raises DownloadError when the repository has no config.json or no safetensors weights."""
    if CONFIG not in files:
        raise DownloadError(f"{repo} has no {CONFIG}: it is not a model this project loads "
                            f"(see {_page(repo)}/tree/main)")
    weights = WEIGHTS if WEIGHTS in files else INDEX if INDEX in files else None
    if weights is None:
        others = sorted(n for n in files if n.endswith((".bin", ".pt", ".pth", ".gguf", ".h5"))
                        or n.endswith(".safetensors"))
        raise DownloadError(f"{repo} has neither {WEIGHTS} nor {INDEX} (its weights: "
                            f"{', '.join(others) or 'none'}); only safetensors weights are "
                            f"read here")
    return [files[CONFIG], files[weights]] + [files[n] for n in OPTIONAL_FILES if n in files]


def shard_names(index_path: Path) -> list[str]:
    """The shard files a model.safetensors.index.json lists (its weight_map's values)."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DownloadError(f"{index_path} is not a safetensors index ({error!r})") from None
    for name in names:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise DownloadError(f"{index_path} lists a shard {name!r} that is not a file name "
                                f"in the same directory")
    return names


def download_model(
    repo: str,
    directory: str | os.PathLike | None = None,
    *,
    revision: str = "main",
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Make sure `directory` (default: `gpt.io.files.default_model_dir(repo)`, where
    `chat.py --ckpt ORG/NAME` looks) holds the model files of Hugging Face repository `repo`;
    return the directory.

    Raises ValueError for a string that is not a repository id, and DownloadError (with a
    message saying which files to put where to do without it) when a file cannot be had.
    """
    if not isinstance(repo, str) or not _REPO_ID.fullmatch(repo):
        raise ValueError(f"{repo!r} is not a Hugging Face repository id (ORG/NAME, e.g. "
                         f"Qwen/Qwen3-0.6B)")
    directory = Path(directory).expanduser() if directory is not None else default_model_dir(repo)
    try:
        files, gated = list_files(repo, revision, timeout=timeout)
    except DownloadError as error:
        if _has_a_model(directory):
            # Everything a model needs is here (files appear only once complete): use it.
            print(f"note: could not ask the hub about {repo} ({error}); using the files "
                  f"already in {directory}", file=sys.stderr)
            return directory
        if error.status in (401, 403):
            raise error from None          # gated or private: what to do is the message
        raise DownloadError(f"cannot list the files of {repo}: {error}\n"
                            f"{_by_hand(repo, revision, directory)}",
                            status=error.status) from None
    wanted = model_files(files, repo)
    if gated and not _auth_headers() and not all(_complete(directory, f) for f in wanted):
        raise DownloadError(f"{repo} is gated: its files need a Hugging Face access token; "
                            f"accept its license at {_page(repo)}, create a token at "
                            f"{TOKEN_PAGE} and set it in the environment variable "
                            f"{TOKEN_VARIABLE}. {_by_hand(repo, revision, directory)}")
    if progress:
        print(f"{repo} -> {directory}", file=sys.stderr)
    queue = list(wanted)
    while queue:
        file = queue.pop(0)
        _fetch(repo, revision, file, directory, progress, timeout, queue)
        if file.name == INDEX:
            for name in shard_names(directory / INDEX):
                if name not in files:
                    raise DownloadError(f"{repo}: {INDEX} lists {name}, which the repository "
                                        f"does not have")
                queue.append(files[name])
    return directory


def _fetch(repo: str, revision: str, file: HubFile, directory: Path, progress: bool,
           timeout: float, queue: list[HubFile]) -> None:
    """Download one file unless it is already complete; check its size. `queue`: the files
    still to come, named in the error message."""
    dest = directory / file.name
    if _complete(directory, file):
        return
    url = FILE_URL.format(endpoint=_endpoint(), repo=repo,
                          revision=urllib.parse.quote(revision, safe=""), file=file.name)
    try:
        try:
            download(url, dest, sha256=file.sha256, progress=progress, timeout=timeout,
                     desc=f"{repo}/{file.name}", headers=_auth_headers())
        except DownloadError as error:
            raise _refused(repo, error) or error from None
        got = dest.stat().st_size
        if file.size is not None and got != file.size:
            dest.unlink()
            raise DownloadError(f"{url}: got {got:,} bytes, but the hub lists {file.size:,}; "
                                f"the file was deleted")
    except DownloadError as error:
        missing = [file.name] + [f.name for f in queue if not _complete(directory, f)]
        raise DownloadError(
            f"{error}\nTo use {repo} without this download, get {', '.join(missing)} from "
            f"{_page(repo)}/tree/{revision} on another machine and put them in {directory} "
            f"(run the same command again to resume)", status=error.status) from None


def _has_a_model(directory: Path) -> bool:
    """Whether `directory` holds config.json and whole weights (one file, or an index and
    every shard it lists). The downloader renames a file into place only when it is complete."""
    if not (directory / CONFIG).is_file():
        return False
    if (directory / WEIGHTS).is_file():
        return True
    try:
        return all((directory / name).is_file() for name in shard_names(directory / INDEX))
    except (DownloadError, OSError):
        return False


def _complete(directory: Path, file: HubFile) -> bool:
    """Whether `file` is already in `directory` with the listed size (any size if unlisted)."""
    path = directory / file.name
    return path.is_file() and (file.size is None or path.stat().st_size == file.size)


def _by_hand(repo: str, revision: str, directory: Path) -> str:
    return (f"To use {repo} without this download, get {BY_HAND} from "
            f"{_page(repo)}/tree/{revision} on a machine that can, and put them in {directory}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.download",
        description="Download a model (weights, config, tokenizer files) from the Hugging Face "
                    "hub, e.g. Qwen/Qwen3-0.6B, HuggingFaceTB/SmolLM2-360M-Instruct or gpt2.",
    )
    parser.add_argument("model", help="repository id, ORG/NAME (or GPT-2's gpt2, gpt2-medium, "
                                      "gpt2-large, gpt2-xl)")
    parser.add_argument(
        "--dir", type=Path, default=None,
        help="directory to put the files in (default: <cache>/models/<model>, where <cache> is "
        "$DU_DATA_DIR or ~/.cache/deep-understanding; chat.py --ckpt <model> looks there)",
    )
    parser.add_argument("--revision", default="main", help="branch, tag or commit")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        directory = download_model(args.model, args.dir, revision=args.revision,
                                   timeout=args.timeout)
    except (DownloadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(directory)
    return 0
