"""gpt.train.evaluate: the book's loss methodology, its split of The Verdict, and the command line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _paths import data_file

from bpe import CharTokenizer, Tokenizer
from gpt import GPT, GPTConfig, save_pretrained
from gpt.data.corpora import split_text
from gpt.data.tokens import TokenData
from gpt.train.evaluate import (EvaluationError, evaluate_loss, load_eval_data, main,
                                token_byte_lengths)


def book_loss(model: GPT, ids: np.ndarray, context: int, stride: int, batch_size: int,
              per_token: bool = False) -> float:
    """The book's `GPTDatasetV1` + `calc_loss_loader`, written out independently: windows at
    range(0, len - context, stride), batches in order, log-softmax by hand."""
    windows = [(ids[i:i + context], ids[i + 1:i + context + 1])
               for i in range(0, len(ids) - context, stride)]
    batch_means, token_losses = [], []
    for first in range(0, len(windows), batch_size):
        batch = windows[first:first + batch_size]
        losses = []
        for x, y in batch:
            logits = model(np.asarray(x, dtype=np.int64)[None]).data[0].astype(np.float64)
            top = logits.max(axis=-1, keepdims=True)
            log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
            losses.extend(log_z - logits[np.arange(context), y])
        batch_means.append(np.mean(losses))
        token_losses.extend(losses)
    return float(np.mean(token_losses) if per_token else np.mean(batch_means))


@pytest.fixture(scope="module")
def tiny_model() -> GPT:
    from autograd.random import manual_seed
    manual_seed(7)
    return GPT(GPTConfig.preset("tiny", vocab_size=50, block_size=16))


@pytest.mark.parametrize("average", ["batches", "tokens"])
def test_loss_is_the_books_mean_of_batch_means(tiny_model, average):
    rng = np.random.default_rng(0)
    data = TokenData(train=rng.integers(0, 50, 200).astype(np.uint16),
                     val=rng.integers(0, 50, 60).astype(np.uint16))
    # 200 tokens, context 12 -> 16 windows; batches of 3 -> the last batch holds only one, so
    # the two ways of averaging differ.
    result = evaluate_loss(tiny_model, data, "train", context=12, batch_size=3, average=average)
    expected = book_loss(tiny_model, data.train, 12, 12, 3, per_token=average == "tokens")
    assert (result.windows, result.batches, result.tokens) == (16, 6, 16 * 12)
    assert result.loss == pytest.approx(expected, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    overlapping = evaluate_loss(tiny_model, data, "val", context=16, stride=5, batch_size=2)
    assert overlapping.loss == pytest.approx(book_loss(tiny_model, data.val, 16, 5, 2), abs=1e-5)
    assert tiny_model.training                  # left as it was found


def test_token_byte_lengths_add_up_to_the_texts_bytes():
    text = "Café au lait, 5 €.<|endoftext|>Ünïcödé " * 20
    bpe = Tokenizer.train(text, vocab_size=270, special_tokens=["<|endoftext|>"], progress=False)
    char = CharTokenizer.train(text, special_tokens=["<|endoftext|>"])
    for tokenizer in (bpe, char):
        lengths = token_byte_lengths(tokenizer)
        ids = tokenizer.encode(text, allowed_special="all")
        assert lengths.shape == (tokenizer.vocab_size,)
        assert lengths[ids].sum() == len(text.encode("utf-8"))
        assert lengths[tokenizer.eot_id] == len("<|endoftext|>")   # a special token: its text
    assert lengths[char.encode("€")[0]] == 3 and lengths[char.encode("a")[0]] == 1


def test_bits_per_byte_of_a_uniform_model():
    # All weights 0: the logits are 0, every token costs ln V nats, and bits per byte is
    # log2(V) * tokens / bytes.
    text = "naïve café, déjà vu; " * 30
    tokenizer = CharTokenizer.train(text)
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=16))
    for p in model.parameters():
        p.data[...] = 0
    lengths = token_byte_lengths(tokenizer)
    result = evaluate_loss(model, TokenData(train=ids, val=ids), "train", context=10,
                           batch_size=4, token_bytes=lengths)
    starts = range(0, len(ids) - 10, 10)                      # the windows, by hand
    n_bytes = sum(int(lengths[ids[i + 1:i + 11]].sum()) for i in starts)
    assert result.loss == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-6)
    assert (result.tokens, result.bytes) == (10 * len(starts), n_bytes)
    assert n_bytes > result.tokens                            # the accents are 2 bytes each
    assert result.bits_per_byte == pytest.approx(
        math.log2(tokenizer.vocab_size) * result.tokens / n_bytes, rel=1e-6)


@pytest.mark.parametrize("average", ["batches", "tokens"])
def test_bits_per_byte_is_the_summed_token_loss_over_the_bytes(tiny_model, average):
    rng = np.random.default_rng(0)
    data = TokenData(train=rng.integers(0, 50, 200).astype(np.uint16),
                     val=rng.integers(0, 50, 60).astype(np.uint16))
    lengths = rng.integers(0, 4, 50)                          # some tokens of 0 bytes
    result = evaluate_loss(tiny_model, data, "train", context=12, batch_size=3, average=average,
                           token_bytes=lengths)
    per_token = book_loss(tiny_model, data.train, 12, 12, 3, per_token=True)
    n_bytes = sum(int(lengths[data.train[i + 1:i + 13]].sum()) for i in range(0, 188, 12))
    assert result.bytes == n_bytes
    assert result.bits_per_byte == pytest.approx(per_token * 16 * 12 / (math.log(2) * n_bytes),
                                                 rel=1e-5)
    assert evaluate_loss(tiny_model, data, "train", context=12).bits_per_byte is None


def test_bad_requests_are_evaluation_errors(tiny_model):
    data = TokenData(train=np.zeros(100, np.uint16), val=np.zeros(10, np.uint16))
    with pytest.raises(EvaluationError, match="longer than the model's 16 positions"):
        evaluate_loss(tiny_model, data, "train", context=32)
    with pytest.raises(EvaluationError, match="does not fit in the val split"):
        evaluate_loss(tiny_model, data, "val", context=16)


def test_exact_split_cuts_where_the_book_does():
    text = "one two three\nfour five six\nseven eight nine ten\n"
    exact = split_text(text, 0.1, exact=True)
    assert exact.train == text[:int(0.9 * len(text))] and exact.train + exact.val == text
    assert split_text(text, 0.1).train.endswith("\n")        # the default: a line start


def test_the_verdict_splits_into_the_books_batches(tmp_path):
    # The book: 5,145 GPT-2 tokens; with context 256 and batch 2 its train loader has 9 batches
    # and its val loader 1 (2 windows). Cutting at a line start instead leaves val 1 window.
    verdict = data_file("the-verdict.txt")
    gpt2 = Tokenizer.from_gpt2(data_file("gpt2-encoder.json"), data_file("gpt2-vocab.bpe"))
    exact = load_eval_data(str(verdict), gpt2, split="exact", data_dir=tmp_path, progress=False)
    assert len(gpt2.encode(verdict.read_text(encoding="utf-8"))) == 5145
    assert (exact.num_windows("train", 256), exact.num_windows("val", 256)) == (18, 2)
    line = load_eval_data(str(verdict), gpt2, split="line", data_dir=tmp_path, progress=False)
    assert line.num_windows("val", 256) == 1


@pytest.fixture()
def checkpoint_with_tokenizer(tmp_path):
    text = ("The cat sat on the mat. The dog sat on the log. " * 40 + "\n") * 4
    tokenizer = Tokenizer.train(text, vocab_size=270, pattern="gpt2",
                                special_tokens=["<|endoftext|>"], progress=False)
    from autograd.random import manual_seed
    manual_seed(3)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=32))
    directory = tmp_path / "ckpt"
    save_pretrained(model, directory, tokenizer)
    (directory / "tokenizer.du.json").unlink()          # only GPT-2's files, as from the Hub
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    return directory, corpus, model, tokenizer


def test_command_line(tmp_path, capsys, checkpoint_with_tokenizer):
    directory, corpus, model, tokenizer = checkpoint_with_tokenizer
    args = ["--ckpt", str(directory), "--data", str(corpus), "--data-dir", str(tmp_path),
            "--context", "16", "--batch-size", "2", "--split", "exact", "--no-progress"]
    assert main(args + ["--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    train = load_eval_data(str(corpus), tokenizer, split="exact", data_dir=tmp_path,
                           progress=False).train
    assert results["train"]["loss"] == pytest.approx(book_loss(model, train, 16, 16, 2), abs=1e-5)
    assert results["val"]["perplexity"] == pytest.approx(math.exp(results["val"]["loss"]))
    lengths = token_byte_lengths(tokenizer)
    windows = range(0, len(train) - 16, 16)
    n_bytes = sum(int(lengths[train[i + 1:i + 17]].sum()) for i in windows)
    assert results["train"]["bytes"] == n_bytes
    assert results["train"]["bits_per_byte"] == pytest.approx(
        book_loss(model, train, 16, 16, 2, per_token=True) * 16 * len(windows)
        / (math.log(2) * n_bytes), rel=1e-5)
    assert main(args + ["--splits", "val"]) == 0
    out = capsys.readouterr().out
    assert "  val: loss " in out and "perplexity" in out and "train:" not in out
    assert f"bits per byte {results['val']['bits_per_byte']:.4f}" in out


@pytest.mark.parametrize("extra, message", [
    (["--context", "64"], "context 64 is longer than the model's 32 positions"),
    (["--splits", "test"], "--splits must list train and/or val"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_command_line_errors(tmp_path, capsys, checkpoint_with_tokenizer, extra, message):
    directory, corpus, _, _ = checkpoint_with_tokenizer
    args = ["--ckpt", str(directory), "--data", str(corpus), "--data-dir", str(tmp_path),
            "--no-progress"]
    assert main(args + extra) == 1
    assert message in capsys.readouterr().err


def test_command_line_without_tokenizer_or_checkpoint(tmp_path, capsys,
                                                     checkpoint_with_tokenizer):
    directory, corpus, _, _ = checkpoint_with_tokenizer
    for name in ("vocab.json", "merges.txt"):
        (directory / name).unlink()
    assert main(["--ckpt", str(directory), "--data", str(corpus), "--no-progress"]) == 1
    assert "holds no tokenizer" in capsys.readouterr().err
    assert main(["--ckpt", str(tmp_path / "nope"), "--data", str(corpus)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_gpt2_name_means_the_download_directory(tmp_path, capsys):
    assert main(["--ckpt", "gpt2", "--data", "the-verdict", "--data-dir", str(tmp_path)]) == 1
    assert "gpt2 is not downloaded" in capsys.readouterr().err
