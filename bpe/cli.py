"""``python -m bpe``: train, inspect and use tokenizers from the command line.

    python -m bpe train input.txt --vocab-size 4096 -o tok.json
    python -m bpe show tok.json                  # the merges, most frequent first
    python -m bpe encode -t tok.json "Hello there" --tokens
    python -m bpe decode -t tok.json 15496 11 995
    python -m bpe encode -t path/to/gpt2/ -f input.txt   # a directory: GPT-2's own files

A tokenizer argument is a file written by ``save``/``train`` or a directory holding GPT-2's
``encoder.json`` + ``vocab.bpe`` (or Hugging Face's ``vocab.json`` + ``merges.txt``). Errors in
the input (a missing file, a damaged tokenizer, an id out of range) are reported in one line and
the exit status is 1 (2 for a malformed command line).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from .base import BaseTokenizer, load_tokenizer
from .char import CharTokenizer
from .patterns import pattern_name
from .tokenizer import Tokenizer


def open_tokenizer(path: str) -> BaseTokenizer:
    """A saved tokenizer file, or GPT-2's vocabulary if ``path`` is a directory of its files."""
    p = Path(path)
    if p.is_dir():
        return Tokenizer.from_gpt2(p)
    if not p.exists():
        raise FileNotFoundError(f"no such tokenizer file: {path}")
    return load_tokenizer(p)


def render(data: bytes) -> str:
    """A token's bytes shown unambiguously: a quoted string, or b'..' if not valid UTF-8."""
    try:
        return repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(data)


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return p.read_text(encoding="utf-8")


def cmd_train(args: argparse.Namespace) -> None:
    texts = [_read_text(path) for path in args.corpus]
    start = time.perf_counter()
    tokenizer: BaseTokenizer
    if args.char:
        tokenizer = CharTokenizer.train(texts, special_tokens=args.special_token)
    else:
        tokenizer = Tokenizer.train(
            texts,
            args.vocab_size,
            pattern=args.pattern,
            special_tokens=args.special_token,
            progress=not args.quiet,
        )
    seconds = time.perf_counter() - start
    tokenizer.save(args.output)
    if not args.quiet:
        print(f"trained {tokenizer!r} in {seconds:.2f} s; wrote {args.output}", file=sys.stderr)


def cmd_encode(args: argparse.Namespace) -> None:
    tokenizer = open_tokenizer(args.tokenizer)
    if args.file is not None:
        text = _read_text(args.file)
    elif args.text is not None:
        text = args.text
    else:
        text = sys.stdin.read()
    allowed = args.allowed_special
    if allowed not in ("all", "none", "none_raise"):
        allowed = set(allowed.split(","))
    ids = tokenizer.encode(text, allowed_special=allowed)
    if args.tokens:
        for i in ids:
            print(f"{i}\t{render(tokenizer.token_to_bytes(i))}")
    else:
        print(" ".join(map(str, ids)))


def cmd_decode(args: argparse.Namespace) -> None:
    tokenizer = open_tokenizer(args.tokenizer)
    words = args.ids if args.ids else sys.stdin.read().split()
    try:
        ids = [int(w) for w in words]
    except ValueError as err:
        raise ValueError(f"token ids must be integers: {err}") from None
    sys.stdout.write(tokenizer.decode(ids))
    if sys.stdout.isatty():
        sys.stdout.write("\n")


def cmd_show(args: argparse.Namespace) -> None:
    tokenizer = open_tokenizer(args.tokenizer)
    print(repr(tokenizer))
    print(f"fingerprint: {tokenizer.fingerprint}")
    for token, token_id in tokenizer.special_tokens.items():
        print(f"special token {token_id}: {token!r}")
    if isinstance(tokenizer, CharTokenizer):
        print("characters: " + " ".join(render(c.encode("utf-8")) for c in tokenizer.chars))
        return
    assert isinstance(tokenizer, Tokenizer)
    print(f"split pattern: {pattern_name(tokenizer.pattern)}")
    merges = tokenizer.merges
    counts = tokenizer.merge_counts or [None] * len(merges)
    limit = len(merges) if args.all else min(args.limit, len(merges))
    # Training always takes the most frequent pair, so merge order is frequency order.
    print(f"\nfirst {limit} of {len(merges)} merges, most frequent first:")
    print(f"{'rank':>6} {'id':>6} {'count':>10}  merge")
    for rank in range(limit):
        a, b = merges[rank]
        count = "" if counts[rank] is None else f"{counts[rank]:,}"
        parts = f"{render(tokenizer.token_to_bytes(a))} + {render(tokenizer.token_to_bytes(b))}"
        print(f"{rank:>6} {256 + rank:>6} {count:>10}  {parts} -> {render(tokenizer.token_to_bytes(256 + rank))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bpe", description="Train, inspect and use byte-level BPE tokenizers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="learn a tokenizer from text files")
    train.add_argument("corpus", nargs="+", help="UTF-8 text file(s), or - for standard input")
    train.add_argument("--vocab-size", type=int, default=None, help="tokens, special ones included")
    train.add_argument("-o", "--output", required=True, help="tokenizer file to write (JSON)")
    train.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 (default), none, or a regex")
    train.add_argument(
        "--special-token", action="append", default=[], metavar="TOKEN",
        help="a special token such as '<|endoftext|>' (repeatable)",
    )
    train.add_argument("--char", action="store_true", help="a character-level tokenizer instead")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    train.set_defaults(run=cmd_train)

    encode = sub.add_parser("encode", help="text to token ids")
    encode.add_argument("-t", "--tokenizer", required=True, help="tokenizer file or GPT-2 directory")
    encode.add_argument("text", nargs="?", help="the text (default: standard input)")
    encode.add_argument("-f", "--file", help="read the text from this file instead")
    encode.add_argument(
        "--allowed-special", default="none_raise",
        help="none_raise (default), none, all, or a comma-separated list of special tokens",
    )
    encode.add_argument("--tokens", action="store_true", help="one token per line: id and text")
    encode.set_defaults(run=cmd_encode)

    decode = sub.add_parser("decode", help="token ids to text")
    decode.add_argument("-t", "--tokenizer", required=True, help="tokenizer file or GPT-2 directory")
    decode.add_argument("ids", nargs="*", help="token ids (default: read from standard input)")
    decode.set_defaults(run=cmd_decode)

    show = sub.add_parser("show", help="print a tokenizer's merges, most frequent first")
    show.add_argument("tokenizer", help="tokenizer file or GPT-2 directory")
    show.add_argument("-n", "--limit", type=int, default=50, help="merges to show (default 50)")
    show.add_argument("--all", action="store_true", help="show every merge")
    show.set_defaults(run=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and not args.char and args.vocab_size is None:
        parser.error("train needs --vocab-size (or --char)")
    try:
        args.run(args)
    except (OSError, ValueError) as err:
        # Bad input is the user's to fix: say what is wrong, without a traceback.
        message = err.strerror if isinstance(err, OSError) and err.filename and err.strerror else err
        if isinstance(err, OSError) and err.filename:
            message = f"{message}: {err.filename}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
