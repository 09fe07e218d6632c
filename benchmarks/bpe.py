"""How fast does the tokenizer train and encode?

    python benchmarks/bpe.py                     # everything below (about a minute)
    python benchmarks/bpe.py --skip-tinystories  # only Tiny Shakespeare
    python benchmarks/bpe.py --pattern gpt4 --repeat 5

Training: Tiny Shakespeare (1.1 MB) to vocab 512, 1024, 4096 and 8192, and the 7.2 MB TinyStories
sample to 8192, with the GPT-2 split pattern (the one a byte-level BPE trainer such as Hugging
Face's uses by default). Time includes splitting and counting the corpus, shown apart as "count".

Encoding: the GPT-2 vocabulary on Tiny Shakespeare, in MB of UTF-8 per second. "cold" is a fresh
tokenizer (every distinct word is BPE-merged once), "warm" a second pass over the same text
(every word is a memo lookup; what the regex split costs plus list building).

Times are the best of --repeat runs, in CPU seconds of this one-threaded process (equal to wall
time on an idle machine, and steadier than it on a shared one).

Corpora are read from --data, else $DU_DATA_MIRROR, else <repo>/../shared/data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bpe import Tokenizer  # noqa: E402
from bpe.patterns import resolve_pattern  # noqa: E402
from bpe.train import count_chunks  # noqa: E402


def best_time(fn, repeat: int) -> tuple[float, object]:
    # CPU time of this process: everything here runs on one thread, so on an idle machine it is
    # the wall time, and on a busy one it is not inflated by other jobs' time slices.
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with the corpora")
    parser.add_argument("--pattern", default="gpt2", help="split pattern for training")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown")
    parser.add_argument("--skip-tinystories", action="store_true")
    args = parser.parse_args()
    data = args.data or Path(os.environ.get("DU_DATA_MIRROR") or REPO.parent / "shared" / "data")

    shakespeare = (data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpora = [("Tiny Shakespeare", shakespeare, (512, 1024, 4096, 8192))]
    if not args.skip_tinystories:
        stories = (data / "tinystories" / "train.txt").read_text(encoding="utf-8")
        corpora.append(("TinyStories sample", stories, (8192,)))

    print(f"training (pattern {args.pattern}, best of {args.repeat}):")
    print("| corpus | MB | vocab | count (s) | total (s) |")
    print("|---|---|---|---|---|")
    pattern = resolve_pattern(args.pattern)
    for name, text, sizes in corpora:
        specials = ["<|endoftext|>"] if "<|endoftext|>" in text else []
        megabytes = len(text.encode("utf-8")) / 1e6
        counting, _ = best_time(lambda: count_chunks(text, pattern, specials), args.repeat)
        for vocab in sizes:
            seconds, tok = best_time(
                lambda: Tokenizer.train(text, vocab, args.pattern, specials, progress=False),
                args.repeat,
            )
            assert tok.vocab_size == vocab
            print(f"| {name} | {megabytes:.1f} | {vocab} | {counting:.2f} | {seconds:.2f} |")

    gpt2 = Tokenizer.from_gpt2(data / "gpt2-encoder.json", data / "gpt2-vocab.bpe")
    megabytes = len(shakespeare.encode("utf-8")) / 1e6

    def cold() -> list[int]:
        gpt2._cache.clear()  # a fresh tokenizer's state, without re-reading the files
        return gpt2.encode(shakespeare)

    cold_s, ids = best_time(cold, args.repeat)
    warm_s, _ = best_time(lambda: gpt2.encode(shakespeare), args.repeat)
    print(f"\nencoding Tiny Shakespeare with GPT-2's vocabulary ({len(ids):,} tokens):")
    print("| cache | seconds | MB/s |")
    print("|---|---|---|")
    print(f"| cold | {cold_s:.2f} | {megabytes / cold_s:.1f} |")
    print(f"| warm | {warm_s:.2f} | {megabytes / warm_s:.1f} |")


if __name__ == "__main__":
    main()
