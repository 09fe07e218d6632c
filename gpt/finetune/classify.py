"""Classification fine-tuning (chapter 6): a pretrained GPT becomes a spam filter.

    python train.py classify --init runs/pretrain                # train (see gpt.finetune.common)
    python -m gpt.finetune.classify --ckpt runs/classify-... "You won a prize! Call now"

The data is the UCI SMS Spam Collection: 5,574 lines `ham<TAB>text` or `spam<TAB>text`, 747 of
them spam. It is balanced by undersampling ham to 747 messages (a classifier that says "ham"
to everything would otherwise score 87 %), shuffled with a fixed seed and cut 70/10/20 into
train/validation/test (1,045 / 149 / 300 messages).

The model. A GPT reads the message; instead of its output head (hidden state -> 50,257 or 4,096
next-token logits) a new head maps one hidden state to 2 class logits. Which hidden state?
Under causal attention position t has seen tokens 0..t only, so only the *last real token*
has read the whole message. Messages are padded on the right with the end-of-text token to the
longest in the batch, and for row b the head reads position `lengths[b] - 1`:

    hidden = gpt(ids, return_hidden=True)              (B, T, C)   after the final LayerNorm
    last   = hidden[arange(B), lengths - 1]            (B, C)      gather: one row per message
    logits = last @ W + b                              (B, 2)

Because of the causal mask the padding after a message cannot change its last real hidden
state, so a message gets the same logits alone or padded in any batch (a test checks this).
The gather's backward scatters each row's gradient back to the position it came from (zeros
elsewhere): only the positions that the head read send gradient into the network.

What trains: `--trainable all` (the default), `last-K` (the last K blocks and the final
LayerNorm; the book trains last-1 of GPT-2 124M, whose features are already rich), or `lora`
(LoRA adapters in every block); the head always trains. A small model pretrained on stories
has to adapt more of itself to text messages: all blocks beat the last one by about 5 points
of test accuracy (see the README's figures).

A classifier checkpoint is an ordinary GPT checkpoint directory (gpt.load_pretrained opens it)
plus `classifier.safetensors`: the head (`classifier.weight` (C, n_classes), `classifier.bias`)
with the labels and the length limit in its metadata.

A Llama-family model (Llama 3, SmolLM2, Qwen3) classifies the same way: its hidden state after
the final RMSNorm has n_embd channels too, "last-K" trains its last K blocks and that norm, and
LoRA adapts its attention and MLP projections. Llama 3's tokenizer has no end-of-text token;
the padding is then token 0, which no position before it can see.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import autograd.random
from autograd import Tensor, no_grad
from autograd import functional as F
from autograd.nn import Linear, Module
from gpt.cli import fail_cleanly
from gpt.core.llama import Llama
from gpt.core.model import GPT
from gpt.data.corpora import DATASETS, DataError, fetch
from gpt.finetune.common import (FinetuneSettings, add_lora, count_parameters, evaluate_batches,
                                 fit, load_base, new_run_directory, pad_rows, parse_trainable,
                                 run_summary, save_model, select_trainable, split_by_fractions,
                                 write_results)
from gpt.io.checkpoint import (CheckpointError, load_pretrained, load_tokenizer_from,
                               resolve_checkpoint)
from gpt.io.safetensors import SafetensorsError, load_file, read_header, save_file

LABELS = ("ham", "spam")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)              # train, validation, test
HEAD_FILE = "classifier.safetensors"
ZIP_MEMBER = "SMSSpamCollection"


# ----------------------------------------------------------------------------------------------
# Data


def parse_sms_lines(text: str, source: object = "data") -> list[tuple[str, int]]:
    """(message, label index) from lines `ham<TAB>text` / `spam<TAB>text`; blank lines skipped.

    A line without a tab, with an unknown label, or with an empty message is a DataError that
    names the line.
    """
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        label, tab, message = line.partition("\t")
        if not tab:
            raise DataError(f"{source}, line {number}: expected 'ham<TAB>message' or "
                            f"'spam<TAB>message', got {line[:60]!r}")
        if label.strip() not in LABELS:
            raise DataError(f"{source}, line {number}: label {label[:20]!r} is neither 'ham' "
                            f"nor 'spam'")
        if not message.strip():
            raise DataError(f"{source}, line {number}: the message is empty")
        records.append((message, LABELS.index(label.strip())))
    if not records:
        raise DataError(f"{source}: no messages found")
    return records


def load_sms(source: str = "sms-spam", data_dir: str | None = None) -> list[tuple[str, int]]:
    """The SMS Spam Collection from its registered name (downloaded from UCI on first use), a
    local .tsv file, or the UCI .zip (its `SMSSpamCollection` member)."""
    path = fetch(source, data_dir=data_dir) if source in DATASETS else Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"{source!r} is neither a registered data set nor an existing file")
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                member = ZIP_MEMBER if ZIP_MEMBER in names else \
                    (names[0] if len(names) == 1 else None)
                if member is None:
                    raise DataError(f"{path}: no {ZIP_MEMBER} in the archive (it holds "
                                    f"{', '.join(names[:5])})")
                raw = archive.read(member)
        except zipfile.BadZipFile as error:
            raise DataError(f"{path}: not a zip archive ({error})") from None
    else:
        raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {error.start})") from None
    return parse_sms_lines(text, path)


def balance_and_split(records: Sequence[tuple[str, int]], seed: int = 123
                      ) -> dict[str, list[tuple[str, int]]]:
    """Undersample every class to the size of the smallest, shuffle, and cut 70/10/20.

    The same seed gives the same three splits on every machine (NumPy's PCG64 is fixed).
    """
    rng = np.random.default_rng(seed)
    by_class = [[r for r in records if r[1] == c] for c in range(len(LABELS))]
    if min(len(c) for c in by_class) == 0:
        missing = [LABELS[i] for i, c in enumerate(by_class) if not c]
        raise DataError(f"the data has no {' or '.join(missing)} messages; a classifier needs "
                        f"examples of every class")
    n = min(len(c) for c in by_class)
    balanced = []
    for members in by_class:
        keep = np.sort(rng.choice(len(members), n, replace=False))
        balanced.extend(members[i] for i in keep)
    shuffled = [balanced[i] for i in rng.permutation(len(balanced))]
    train, val, test = split_by_fractions(shuffled, SPLIT_FRACTIONS)
    return {"train": train, "val": val, "test": test}


def encode_messages(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each message (special-token text stays plain text), cut to `max_length`."""
    return [tokenizer.encode(t, allowed_special="none")[:max_length] for t in texts]


def collate_classification(rows: Sequence[Sequence[int]], pad_id: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(ids (B, T) padded on the right with `pad_id` to the longest row, lengths (B,))."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError("collate_classification: an empty message (0 tokens) has no last "
                         "token to classify")
    return pad_rows(rows, pad_id), lengths


# ----------------------------------------------------------------------------------------------
# The model


def last_token_states(hidden: Tensor, lengths: np.ndarray) -> Tensor:
    """hidden (B, T, C) -> (B, C): row b's state at position lengths[b] - 1, its last real
    token. Backward (the indexing op's): each row's gradient lands at that position only."""
    return hidden[np.arange(hidden.shape[0]), np.asarray(lengths) - 1]


def pad_id(tokenizer) -> int:
    """What messages are padded with: end-of-text, or token 0 for a tokenizer without it
    (padding sits after a message's last token, which causal attention keeps from seeing it)."""
    return tokenizer.eot_id if tokenizer.eot_id is not None else 0


class GPTClassifier(Module):
    """A GPT (or Llama-family) body and a linear head on the hidden state of each sequence's
    last real token."""

    def __init__(self, gpt: GPT | Llama, n_classes: int = 2,
                 rng: np.random.Generator | None = None):
        super().__init__()
        self.gpt = gpt
        embedding = gpt.embed_tokens if isinstance(gpt, Llama) else gpt.wte
        self.head = Linear(gpt.config.n_embd, n_classes, rng=rng, dtype=embedding.weight.dtype)

    def forward(self, ids, lengths) -> Tensor:
        """ids (B, T) padded on the right, lengths (B,) of the real tokens -> logits (B, n)."""
        hidden = self.gpt(ids, return_hidden=True)                      # (B, T, C)
        return self.head(last_token_states(hidden, lengths))             # (B, n_classes)


def save_head(directory: Path, classifier: GPTClassifier, labels: Sequence[str],
              max_length: int) -> Path:
    path = Path(directory) / HEAD_FILE
    save_file({"classifier.weight": classifier.head.weight.data,
               "classifier.bias": classifier.head.bias.data}, path,
              metadata={"labels": json.dumps(list(labels)), "max_length": str(max_length)})
    return path


def load_classifier(path) -> tuple[GPTClassifier, Any, list[str], int]:
    """(classifier, tokenizer, labels, max_length) from a checkpoint `train.py classify` wrote
    (or its run directory)."""
    directory = resolve_checkpoint(path)
    head_path = directory / HEAD_FILE
    if not head_path.is_file():
        raise CheckpointError(f"{directory} has no {HEAD_FILE}: it is not a classifier "
                              f"checkpoint (fine-tune one with `python train.py classify`)")
    try:
        tensors = load_file(head_path)
        _, metadata = read_header(head_path)
        labels = json.loads(metadata["labels"])
        max_length = int(metadata["max_length"])
        weight, bias = tensors["classifier.weight"], tensors["classifier.bias"]
    except (SafetensorsError, KeyError, ValueError) as error:
        raise CheckpointError(f"{head_path} is not a valid classifier head: {error}") from None
    tokenizer = load_tokenizer_from(directory)
    if tokenizer is None:
        raise CheckpointError(f"{directory} has no tokenizer files")
    gpt = load_pretrained(directory)
    if weight.shape != (gpt.config.n_embd, len(labels)) or bias.shape != (len(labels),):
        raise CheckpointError(f"{head_path}: head of shape {weight.shape} does not fit a model "
                              f"of width {gpt.config.n_embd} and {len(labels)} labels")
    classifier = GPTClassifier(gpt, len(labels), rng=np.random.default_rng(0))
    classifier.head.weight.data[...] = weight
    classifier.head.bias.data[...] = bias
    classifier.eval()
    return classifier, tokenizer, labels, max_length


@no_grad()
def classify_texts(classifier: GPTClassifier, tokenizer, texts: Sequence[str],
                   max_length: int, labels: Sequence[str] = LABELS
                   ) -> list[tuple[str, float]]:
    """(label, probability of that label) for each text."""
    if any(not t.strip() for t in texts):
        raise ValueError("cannot classify an empty message")
    was_training = classifier.training
    classifier.eval()
    try:
        ids, lengths = collate_classification(
            encode_messages(tokenizer, texts, max_length), pad_id(tokenizer))
        logits = classifier(ids, lengths).data.astype(np.float64)
    finally:
        classifier.train(was_training)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return [(labels[int(i)], float(p[i])) for p, i in zip(probs, probs.argmax(axis=1))]


# ----------------------------------------------------------------------------------------------
# Training


def run_classify(settings: FinetuneSettings, log: Callable[[str], None] = print) -> dict:
    """`python train.py classify`: fine-tune, report accuracy on the three splits, save."""
    gpt, tokenizer, init_dir = load_base(settings)
    splits = balance_and_split(load_sms(settings.data, settings.data_dir), settings.seed)
    pad = pad_id(tokenizer)
    block = gpt.config.block_size
    train_ids = encode_messages(tokenizer, [t for t, _ in splits["train"]], block)
    max_length = min(settings.max_length or block, block, max(len(r) for r in train_ids))
    encoded = {name: encode_messages(tokenizer, [t for t, _ in rows], max_length)
               for name, rows in splits.items()}
    labels = {name: np.array([y for _, y in rows], dtype=np.int64)
              for name, rows in splits.items()}

    autograd.random.manual_seed(settings.seed)      # the head's and the adapters' initial values
    classifier = GPTClassifier(gpt, len(LABELS))
    mode, last_k = parse_trainable(settings.trainable)
    if mode == "lora":
        add_lora(gpt, settings)                   # freezes the GPT; the head stays trainable
    else:
        select_trainable(gpt, mode, last_k)
    counts = count_parameters(classifier)

    directory = new_run_directory(settings)
    log(f"run directory: {directory}")
    log(f"data: {', '.join(f'{len(v)} {k}' for k, v in splits.items())} messages (balanced "
        f"ham/spam), at most {max_length} tokens each")
    log(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} "
        f"({settings.trainable})")

    def batch_metrics(split: str, indices: np.ndarray) -> tuple[Tensor, np.ndarray, np.ndarray]:
        ids, lengths = collate_classification([encoded[split][i] for i in indices], pad)
        return classifier(ids, lengths), labels[split][indices], ids

    def step_loss(indices: np.ndarray):
        logits, y, ids = batch_metrics("train", indices)
        accuracy = float((logits.data.argmax(axis=1) == y).mean())
        return F.cross_entropy(logits, y), {"tokens": ids.size, "accuracy": accuracy}

    def evaluate(split: str, max_batches: int | None) -> dict[str, float]:
        def one_batch(indices):
            logits, y, _ = batch_metrics(split, indices)
            loss = F.cross_entropy(logits, y, reduction="sum").item()
            correct = float((logits.data.argmax(axis=1) == y).sum())
            return {"loss": (loss, len(y)), "accuracy": (correct, len(y))}
        return evaluate_batches(classifier, len(encoded[split]), settings.batch_size,
                                max_batches, one_batch)

    result = fit(classifier, settings, len(encoded["train"]), step_loss, evaluate, directory, log)
    final = {split: evaluate(split, None) for split in ("train", "val", "test")}
    results = {"task": "classify", "init": str(init_dir), "trainable": settings.trainable,
               **run_summary(result, counts),
               **{f"{split}_accuracy": round(m["accuracy"], 4) for split, m in final.items()},
               **{f"{split}_loss": round(m["loss"], 4) for split, m in final.items()},
               "split_sizes": {k: len(v) for k, v in splits.items()}, "max_length": max_length}
    checkpoint = save_model(directory, gpt, tokenizer,
                            {"task": "classify", "step": result.steps, "results": results},
                            source=init_dir)
    save_head(checkpoint, classifier, LABELS, max_length)
    write_results(directory, results)
    log("accuracy: " + ", ".join(f"{split} {100 * m['accuracy']:.2f} %"
                                 for split, m in final.items())
        + f"; {result.steps} steps in {result.seconds:.1f} s; checkpoint {checkpoint}")
    return results


# ----------------------------------------------------------------------------------------------
# python -m gpt.finetune.classify --ckpt DIR "text" ...


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpt.finetune.classify",
                                description="Classify messages with a checkpoint fine-tuned by "
                                            "`python train.py classify`.")
    p.add_argument("--ckpt", required=True, help="classifier checkpoint or its run directory")
    p.add_argument("texts", nargs="+", help="messages to classify ('-': read one per line "
                                            "from standard input)")
    args = p.parse_args(argv)
    texts = [line for line in sys.stdin.read().splitlines() if line.strip()] \
        if args.texts == ["-"] else args.texts
    classifier, tokenizer, labels, max_length = load_classifier(args.ckpt)
    try:
        results = classify_texts(classifier, tokenizer, texts, max_length, labels)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for text, (label, prob) in zip(texts, results):
        print(f"{label}\t{prob:.3f}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
