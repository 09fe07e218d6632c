"""How fast do the tokenizers of Qwen3, SmolLM2 and Llama 3 encode, ours against their own?

    python benchmarks/bpe_hf.py                          # the three, on TinyStories' valid text
    python benchmarks/bpe_hf.py --text FILE --repeat 5
    python benchmarks/bpe_hf.py --tokenizers DIR [DIR ...]  # any model directories

Ours is `bpe.load_hf_tokenizer`; the yardsticks are Hugging Face's `tokenizers` (for a
tokenizer.json) and OpenAI's `tiktoken` (for Llama 3's tiktoken file), each used when it is
installed (neither is a dependency of this project). Every figure is MB of UTF-8 per second for
one call on the whole text, special tokens recognised, and each yardstick's ids are checked
equal to ours. "cold" is a fresh memo (every distinct chunk merged once), "warm" a second pass.

Times are the best of --repeat runs in CPU seconds of this process, one thread: `tokenizers`
is held to one thread (RAYON_NUM_THREADS=1, set before it is imported), tiktoken's `encode` uses
one anyway. The text is --text, else tinystories/valid.txt in $DU_DATA_MIRROR, else in
<repo>/../shared/data; the tokenizers are --tokenizers, else ../shared/reference/tokenizers
(or $DU_REFERENCE_DIR/tokenizers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bpe import load_hf_tokenizer  # noqa: E402
from bpe.pretrained import LLAMA3_PATTERN  # noqa: E402


def best_time(fn, repeat: int, before=None) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def default_text() -> Path:
    mirror = os.environ.get("DU_DATA_MIRROR")
    data = Path(mirror) if mirror else REPO.parent / "shared" / "data"
    return data / "tinystories" / "valid.txt"


def default_tokenizers() -> list[Path]:
    reference = os.environ.get("DU_REFERENCE_DIR")
    root = (Path(reference) if reference else REPO.parent / "shared" / "reference") / "tokenizers"
    return [root / name for name in ("qwen3", "smollm2", "llama3")]


def hf_yardstick(directory: Path):
    """Hugging Face `tokenizers` encoding with the same file, or None."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        return None
    if not (directory / "tokenizer.json").is_file():
        return None
    hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    return "tokenizers", lambda text: hf.encode(text, add_special_tokens=False).ids


def tiktoken_yardstick(directory: Path):
    """tiktoken with a tiktoken-format tokenizer.model and Meta's split pattern, or None."""
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        return None
    model, config = directory / "tokenizer.model", directory / "tokenizer_config.json"
    if (directory / "tokenizer.json").is_file() or not (model.is_file() and config.is_file()):
        return None
    added = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
    encoding = tiktoken.Encoding(
        directory.name,
        pat_str=LLAMA3_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(model)),
        special_tokens={token["content"]: int(i) for i, token in added.items()},
    )
    return "tiktoken", lambda text: encoding.encode(text, allowed_special="all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", type=Path, default=None, help="UTF-8 text file to encode")
    parser.add_argument("--tokenizers", type=Path, nargs="+", default=None,
                        help="model directories (default: the three reference tokenizers)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown")
    args = parser.parse_args()
    text_path = args.text or default_text()
    if not text_path.is_file():
        sys.exit(f"bpe_hf.py: no text file {text_path} (give one with --text)")
    text = text_path.read_bytes().decode("utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"text: {text_path} ({megabytes:.2f} MB); best of {args.repeat}, one thread\n")
    print(f"{'tokenizer':<10} {'vocab':>7} {'load s':>7} {'ours cold':>10} {'ours warm':>10}"
          f"   yardstick")
    for directory in args.tokenizers or default_tokenizers():
        start = time.process_time()
        try:
            ours = load_hf_tokenizer(directory)
        except (OSError, ValueError) as error:
            sys.exit(f"bpe_hf.py: {error}")
        load = time.process_time() - start

        def encode():
            return ours.encode(text, allowed_special="all")

        cold, ids = best_time(encode, args.repeat, before=ours._memo.clear)
        warm, _ = best_time(encode, args.repeat)
        row = (f"{directory.name:<10} {ours.vocab_size:>7} {load:>7.2f} {megabytes / cold:>10.1f} "
               f"{megabytes / warm:>10.1f}")
        yardsticks = [y for y in (hf_yardstick(directory), tiktoken_yardstick(directory)) if y]
        if not yardsticks:
            row += "   (tokenizers / tiktoken not installed)"
        for name, theirs in yardsticks:
            seconds, their_ids = best_time(lambda: theirs(text), args.repeat)
            same = "same ids" if their_ids == ids else "DIFFERENT ids"
            row += f"   {name} {megabytes / seconds:.1f} MB/s ({same})"
        print(row)


if __name__ == "__main__":
    main()
