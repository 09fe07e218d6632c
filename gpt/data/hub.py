"""Download OpenAI's GPT-2 weights from Hugging Face: `python -m gpt.download gpt2 [--dir D]`.

Four files per model, from https://huggingface.co/<name>/resolve/main/<file>:

    config.json         the architecture (n_layer, n_head, n_embd, ...)
    model.safetensors   the weights (read with `gpt.io.safetensors.load_file`)
    vocab.json          the tokenizer's token -> id map (OpenAI's encoder.json)
    merges.txt          the tokenizer's merges (OpenAI's vocab.bpe)

Sizes of model.safetensors: gpt2 (124M) 0.5 GB, gpt2-medium (355M) 1.4 GB, gpt2-large
(774M) 3.1 GB, gpt2-xl (1558M) 6.4 GB. Files already in the directory are kept; an
interrupted download resumes where it stopped (see `gpt.data.http`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpt.data.http import DEFAULT_TIMEOUT, DownloadError, download
from gpt.io.files import default_model_dir

__all__ = ["HF_URL", "MODEL_FILES", "MODELS", "download_model", "main"]

MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
MODEL_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
HF_URL = "https://huggingface.co/{model}/resolve/main/{file}"


def download_model(
    name: str,
    directory: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Make sure `directory` holds the four files of GPT-2 model `name`; return the directory.

    Raises `ValueError` for an unknown name and `DownloadError` (with a message saying which
    files to put where to work offline) when a file cannot be downloaded.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    directory = Path(directory).expanduser() if directory is not None else default_model_dir(name)
    for file in MODEL_FILES:
        if (directory / file).is_file():
            continue
        url = HF_URL.format(model=name, file=file)
        try:
            download(url, directory / file, progress=progress, timeout=timeout, desc=f"{name}/{file}")
        except DownloadError as err:
            missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
            raise DownloadError(
                f"{err}\nTo use {name} without a network, download {', '.join(missing)} from "
                f"https://huggingface.co/{name} on another machine and put them in {directory}"
            ) from None
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.download",
        description="Download GPT-2 weights and tokenizer files from Hugging Face.",
    )
    parser.add_argument("model", choices=MODELS, help="which GPT-2")
    parser.add_argument(
        "--dir", type=Path, default=None,
        help="directory to put the files in (default: <cache>/models/<model>, where <cache> is "
        "$DU_DATA_DIR or ~/.cache/deep-understanding)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        directory = download_model(args.model, args.dir, timeout=args.timeout)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(directory)
    return 0

