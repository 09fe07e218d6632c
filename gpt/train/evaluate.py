"""Mean loss, perplexity and bits per byte of a checkpoint on a corpus: `python -m gpt.evaluate`.

    python -m gpt.evaluate --ckpt runs/20261125-120000 --data tinystories
    python -m gpt.evaluate --ckpt ~/.cache/deep-understanding/models/gpt2 \\
        --data the-verdict --context 256 --batch-size 2 --split exact     # the book's check

How the number is made (the method of *Build a Large Language Model (From Scratch)*, whose
`calc_loss_loader` it mirrors, so that its published figures can be checked):

1. Cut the text into train and val (`--split`, below) and tokenize each part on its own.
2. Cut each part into windows of `context` tokens starting at 0, stride, 2*stride, ...
   (stride = context by default: every token is predicted once, the windows do not overlap);
   the target of each window is the same window shifted by one token. A tail shorter than a
   window is not used. This is `TokenData.iter_windows`, and the book's `GPTDatasetV1`.
3. Group the windows into batches of `batch_size`, in order. The loss of a batch is the mean
   cross-entropy over all its predicted tokens; the loss of the split is the mean of those
   batch losses (`--average batches`, the book's way). When the last batch is smaller than
   the others its tokens weigh a little more; `--average tokens` weighs every token the same.
4. Perplexity is exp(loss): the number of equally likely tokens the model is, on average,
   as unsure between as its predictions imply.
5. Bits per byte: the summed loss of all predicted tokens (in nats), turned into bits and
   spread over the UTF-8 bytes those tokens stand for,

       bpb = sum of token losses / (ln 2 * number of bytes)

   A loss per token depends on how much text a token holds: a 4,096-token BPE packs ~4 bytes
   into a token, a character tokenizer ~1, so their losses cannot be compared. Both predict
   the same bytes, though, and bits per byte is the cost of that: it compares models across
   tokenizers (and is what a compressor of the text would need). The bytes per token come
   from the tokenizer once (`token_byte_lengths`); a special token such as <|endoftext|>
   counts as the bytes of its text (13), which it stands for in the corpus files, so the
   bytes of a split are the bytes of its text whatever the tokenizer. It does not depend on
   `--average`: every token weighs the same.

Splitting: corpora with a validation file of their own (tinystories, a directory with
`valid.txt`) use it. A single text is cut at 90 %: `--split line` (default) moves the cut to
the nearest line start, exactly as `train.py` splits, so the val loss of a model trained here
is measured on text it never saw; `--split exact` cuts at character `int(0.9 * len(text))`
even mid-word, as the book does.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from autograd import functional as F
from autograd import no_grad
from bpe import Tokenizer, load_tokenizer
from gpt.cli import EXPECTED_ERRORS
from gpt.core.model import GPT
from gpt.data.corpora import fetch, load_text_splits
from gpt.data.tokens import TokenData
from gpt.errors import GPTError
from gpt.io.checkpoint import load_pretrained, load_tokenizer_from, resolve_checkpoint

__all__ = ["EvaluationError", "LossResult", "bits_per_byte", "evaluate_loss", "load_eval_data",
           "main", "token_byte_lengths"]


class EvaluationError(GPTError, ValueError):
    """The evaluation cannot run as asked (context too long, split too short, ...)."""


@dataclass
class LossResult:
    """The loss of one split, and what it was measured on."""
    split: str
    loss: float           # mean of per-batch mean losses, or per-token mean (see `average`)
    perplexity: float     # exp(loss)
    windows: int          # windows of `context` tokens evaluated
    batches: int
    tokens: int           # predicted tokens: windows * context
    context: int
    average: str          # "batches" or "tokens"
    bytes: int | None = None             # UTF-8 bytes of the predicted tokens
    bits_per_byte: float | None = None   # None when the tokenizer's bytes were not given


def token_byte_lengths(tokenizer) -> np.ndarray:
    """(vocab_size,) int64: how many UTF-8 bytes each token id decodes to. A special token
    counts the bytes of its text (<|endoftext|>: 13), which it stands for in a corpus file.
    Made once per tokenizer; the bytes of a batch of targets y are then `lengths[y].sum()`."""
    return np.array([len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)],
                    dtype=np.int64)


def bits_per_byte(total_loss: float, n_bytes: int) -> float:
    """Summed token losses (nats) per byte, in bits: total_loss / (ln 2 * n_bytes)."""
    return total_loss / (math.log(2) * n_bytes) if n_bytes else float("nan")


def batch_losses(model: GPT, data: TokenData, split: str, context: int, batch_size: int,
                 stride: int | None = None, max_batches: int | None = None
                 ) -> Iterator[tuple[float, np.ndarray]]:
    """(mean loss, predicted token ids (B, context)) of each batch of windows, in order."""
    for index, (x, y) in enumerate(data.iter_windows(split, context, stride, batch_size)):
        if max_batches is not None and index >= max_batches:
            return
        yield F.cross_entropy(model(x), y).item(), y


def evaluate_loss(model: GPT, data: TokenData, split: str, context: int | None = None,
                  batch_size: int = 8, stride: int | None = None, average: str = "batches",
                  max_batches: int | None = None, progress: bool = False,
                  token_bytes: np.ndarray | None = None) -> LossResult:
    """The loss of `model` on every window of one split of `data` (see the module docstring).

    `context` defaults to the model's block_size; `stride` to `context`. With `token_bytes`
    (`token_byte_lengths` of the data's tokenizer) the result has bits per byte too. The model
    is put in eval mode (no dropout) and left in the mode it was in.
    """
    context = context or model.config.block_size
    if context > model.config.block_size:
        raise EvaluationError(f"context {context} is longer than the model's "
                              f"{model.config.block_size} positions (block_size)")
    if average not in ("batches", "tokens"):
        raise EvaluationError(f"average must be 'batches' or 'tokens', got {average!r}")
    try:
        total_batches = -(-data.num_windows(split, context, stride) // batch_size)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    if max_batches is not None:
        total_batches = min(total_batches, max_batches)
    was_training = model.training
    model.eval()
    losses, counts, n_bytes = [], [], 0
    try:
        with no_grad():
            batches = batch_losses(model, data, split, context, batch_size, stride, max_batches)
            for loss, targets in tqdm(batches, total=total_batches, desc=f"evaluating {split}",
                                      unit="batch", disable=not progress, leave=False):
                losses.append(loss)
                counts.append(targets.size)
                if token_bytes is not None:
                    n_bytes += int(token_bytes[targets].sum())
    finally:
        model.train(was_training)
    total_loss = float(np.dot(losses, counts))          # nats, summed over every token
    mean = float(np.mean(losses)) if average == "batches" else total_loss / np.sum(counts)
    return LossResult(split, mean, math.exp(mean), windows=sum(counts) // context,
                      batches=len(losses), tokens=int(sum(counts)), context=context,
                      average=average, bytes=n_bytes if token_bytes is not None else None,
                      bits_per_byte=(bits_per_byte(total_loss, n_bytes)
                                     if token_bytes is not None else None))


def load_eval_data(source: str, tokenizer, *, split: str = "line", val_fraction: float = 0.1,
                   data_dir: str | None = None, progress: bool = True) -> TokenData:
    """Both splits of a corpus name, text file or directory, tokenized (and cached).

    `split="exact"` cuts a single text at exactly `(1 - val_fraction)` of its characters,
    `"line"` at the nearest line start (what `train.py` does).
    """
    if split not in ("line", "exact"):
        raise EvaluationError(f"split must be 'line' or 'exact', got {split!r}")
    texts = load_text_splits(source, data_dir=data_dir, val_fraction=val_fraction,
                             exact=split == "exact")
    return TokenData.from_texts(texts.train, texts.val, tokenizer, allowed_special="all",
                                data_dir=data_dir, progress=progress)


def _load_tokenizer(spec: str | None, checkpoint: Path, data_dir: str | None):
    """--tokenizer: 'gpt2', a tokenizer file or directory; default: the checkpoint's own."""
    if spec == "gpt2":
        return Tokenizer.from_gpt2(fetch("gpt2-encoder.json", data_dir=data_dir),
                                   fetch("gpt2-vocab.bpe", data_dir=data_dir))
    path = checkpoint if spec is None else Path(spec).expanduser()
    tokenizer = load_tokenizer_from(path) if path.is_dir() else load_tokenizer(path)
    if tokenizer is None:
        hint = ": pass --tokenizer gpt2, or a tokenizer file" if spec is None else ""
        raise EvaluationError(f"{path} holds no tokenizer (tokenizer.du.json, or vocab.json "
                              f"+ merges.txt){hint}")
    return tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpt.evaluate",
        description="Mean loss, perplexity and bits per byte of a checkpoint on a corpus: "
                    "windows of --context tokens side by side, mean of the per-batch mean "
                    "losses (the book's calc_loss_loader).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="checkpoint directory (save_pretrained, a train.py run, or a Hugging "
                        "Face GPT-2 directory; 'gpt2' etc. mean the directory that "
                        "python -m gpt.download fills)")
    p.add_argument("--data", required=True,
                   help="corpus name (the-verdict, tinyshakespeare, tinystories, ...), a text "
                        "file, or a directory with train.txt and valid.txt")
    p.add_argument("--data-dir", default=None, help="download/cache directory")
    p.add_argument("--tokenizer", default=None,
                   help="'gpt2', a tokenizer file or directory (default: the checkpoint's)")
    p.add_argument("--context", type=int, default=None,
                   help="tokens per window (default: the model's block_size)")
    p.add_argument("--stride", type=int, default=None, help="default: --context")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--split", choices=("line", "exact"), default="line",
                   help="cut a single text at the line start nearest 90%% (as train.py does), "
                        "or at exactly int(0.9 * characters) (as the book does)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--splits", default="train,val", help="which splits to evaluate")
    p.add_argument("--average", choices=("batches", "tokens"), default="batches",
                   help="mean of per-batch means (the book's) or of every token")
    p.add_argument("--max-batches", type=int, default=None,
                   help="evaluate at most this many batches per split (a quick estimate)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> list[LossResult]:
    for name in ("batch_size", "context", "stride", "max_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or set(splits) - {"train", "val"}:
        raise EvaluationError(f"--splits must list train and/or val, got {args.splits!r}")
    checkpoint = resolve_checkpoint(args.ckpt, data_dir=args.data_dir)
    model = load_pretrained(checkpoint)
    tokenizer = _load_tokenizer(args.tokenizer, checkpoint, args.data_dir)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise EvaluationError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"only {model.config.vocab_size}: they do not belong together")
    data = load_eval_data(args.data, tokenizer, split=args.split,
                          val_fraction=args.val_fraction, data_dir=args.data_dir,
                          progress=not args.no_progress)
    token_bytes = token_byte_lengths(tokenizer)
    return [evaluate_loss(model, data, split, args.context, args.batch_size, args.stride,
                          args.average, args.max_batches, progress=not args.no_progress,
                          token_bytes=token_bytes)
            for split in splits]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({r.split: asdict(r) for r in results}, indent=2))
        return 0
    print(f"checkpoint {args.ckpt}, data {args.data} (split: {args.split})")
    for r in results:
        print(f"{r.split:>5}: loss {r.loss:.4f}  perplexity {r.perplexity:.2f}  "
              f"bits per byte {r.bits_per_byte:.4f}  ({r.windows} windows of {r.context} "
              f"tokens, {r.bytes:,} bytes, {r.batches} batches, mean over {r.average})")
    return 0

