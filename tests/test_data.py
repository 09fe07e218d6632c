"""gpt.data.tokens: chunked tokenization, the token cache, random batches and sliding windows."""

from __future__ import annotations

import errno
import hashlib
import io
import os

import numpy as np
import pytest
from _paths import data_file, reference_file

from gpt.data.tokens import (TokenData, encode_in_chunks, load_token_data, token_cache_path,
                             token_dtype, tokenize_cached)


class ByteTokenizer:
    """A stand-in tokenizer: one id per UTF-8 byte, plus <|endoftext|> = 256 when allowed."""

    special_tokens = {"<|endoftext|>": 256}

    def __init__(self, vocab_size: int = 257, salt: str = "") -> None:
        self.vocab_size = vocab_size
        self.fingerprint = hashlib.sha256(f"bytes{vocab_size}{salt}".encode()).hexdigest()
        self.calls = 0

    def encode(self, text: str, allowed_special="none_raise") -> list[int]:
        self.calls += 1
        if allowed_special == "all":
            pieces = text.split("<|endoftext|>")
            ids: list[int] = []
            for i, piece in enumerate(pieces):
                ids += ([256] if i else []) + list(piece.encode())
            return ids
        return list(text.encode())


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path / "cache"))


def gpt2_tokenizer():
    bpe = pytest.importorskip("bpe")
    if not hasattr(bpe, "Tokenizer"):
        pytest.skip("bpe.Tokenizer is not there yet")
    return bpe.Tokenizer.from_gpt2(data_file("gpt2-encoder.json"), data_file("gpt2-vocab.bpe"))


def test_chunked_gpt2_encoding_matches_the_reference_ids():
    text = data_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    reference = np.load(reference_file("tinyshakespeare.gpt2.ids.npy"))
    # Shakespeare is full of blank lines between speeches: cutting at them would change ids.
    prefix = text[: text.index("\n", 60_000) + 1]
    ids = encode_in_chunks(prefix, gpt2_tokenizer(), chunk_chars=2000, progress=False)
    assert ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, reference[: len(ids)])


def test_chunked_encoding_equals_whole_encoding_for_a_gpt4_pattern_tokenizer():
    bpe = pytest.importorskip("bpe")
    if not hasattr(bpe, "Tokenizer"):
        pytest.skip("bpe.Tokenizer is not there yet")
    text = data_file("tinystories/valid.txt").read_text(encoding="utf-8")[:40_000]
    tokenizer = bpe.Tokenizer.train(text, 400, pattern="gpt4", special_tokens=["<|endoftext|>"], progress=False)
    for special in ("all", "none"):
        whole = tokenizer.encode(text, allowed_special=special)
        chunked = encode_in_chunks(text, tokenizer, allowed_special=special, chunk_chars=500, progress=False)
        np.testing.assert_array_equal(chunked, whole)


def test_chunks_never_cut_a_word():
    tokenizer = ByteTokenizer()
    seen: list[str] = []
    original = tokenizer.encode
    tokenizer.encode = lambda text, allowed_special="none_raise": seen.append(text) or original(text, allowed_special)
    text = "".join(f"Story {i}.\n<|endoftext|>\n" for i in range(50))
    ids = encode_in_chunks(text, tokenizer, chunk_chars=40, progress=False)
    assert len(seen) > 5 and "".join(seen) == text
    assert all(piece.endswith("\n") for piece in seen)
    assert ids.tolist().count(256) == 50


def test_cache_is_keyed_by_text_tokenizer_and_specials(tmp_path):
    tokenizer = ByteTokenizer()
    text = "hello <|endoftext|> world\n"
    ids = tokenize_cached(text, tokenizer, progress=False)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids.tolist() == tokenizer.encode(text, allowed_special="all")
    files = list((tmp_path / "cache" / "tokens").glob("*.npy"))
    assert len(files) == 1
    calls = tokenizer.calls
    again = tokenize_cached(text, tokenizer, progress=False)
    assert tokenizer.calls == calls and again.tolist() == ids.tolist()  # loaded, not re-encoded
    tokenize_cached(text, tokenizer, allowed_special="none", progress=False)
    tokenize_cached(text + "!", tokenizer, progress=False)
    tokenize_cached(text, ByteTokenizer(salt="retrained"), progress=False)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npy"))) == 4
    assert not list((tmp_path / "cache" / "tokens").glob("*.tmp"))


DAMAGED_CACHES = {
    "truncated": lambda good: good[: len(good) - 7],       # "mmap length is greater than file size"
    "empty": lambda good: b"",
    "not a .npy file": lambda good: b"garbage" * 20,
    "another dtype": lambda good: _npy_bytes(np.zeros(5, dtype=np.float64)),
    "two dimensions": lambda good: _npy_bytes(np.zeros((2, 3), dtype=np.uint16)),
}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", sorted(DAMAGED_CACHES))
def test_a_damaged_token_cache_is_rebuilt(damage):
    tokenizer = ByteTokenizer()
    text = "a cache file that a crash or a full disk damaged\n" * 50
    ids = np.array(tokenize_cached(text, tokenizer, progress=False))
    path = token_cache_path(text, tokenizer)
    good = path.read_bytes()
    path.write_bytes(DAMAGED_CACHES[damage](good))
    calls = tokenizer.calls
    again = tokenize_cached(text, tokenizer, progress=False)
    assert tokenizer.calls > calls                                  # encoded again
    np.testing.assert_array_equal(again, ids)
    assert path.read_bytes() == good


def test_a_token_cache_that_cannot_be_written_is_not_fatal(monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    tokenizer = ByteTokenizer()
    text = "no room for the cache\n"
    ids = tokenize_cached(text, tokenizer, progress=False)
    assert ids.tolist() == tokenizer.encode(text, allowed_special="all")
    assert not token_cache_path(text, tokenizer).exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not cache" in err and "No space left" in err


def test_token_dtype_follows_the_vocabulary_size():
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    ids = encode_in_chunks("abc", ByteTokenizer(vocab_size=100_000), progress=False)
    assert ids.dtype == np.uint32


def make_data(n_train: int = 100, n_val: int = 30) -> TokenData:
    return TokenData(np.arange(n_train, dtype=np.uint16), np.arange(1000, 1000 + n_val, dtype=np.uint16))


def test_get_batch_shapes_shift_and_determinism():
    data = make_data()
    rng = np.random.default_rng(7)
    x, y = data.get_batch("train", 4, 8, rng)
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x + 1)  # data is arange: the next token is always +1
    assert x.min() >= 0 and y.max() <= 99
    # A generator restored from a saved state draws the same batches: resume is exact.
    state = rng.bit_generator.state
    expected = data.get_batch("val", 3, 5, rng)
    restored = np.random.default_rng()
    restored.bit_generator.state = state
    for a, b in zip(expected, data.get_batch("val", 3, 5, restored)):
        np.testing.assert_array_equal(a, b)


def test_get_batch_reaches_the_last_window():
    data = TokenData(np.arange(5, dtype=np.uint16), np.arange(5, dtype=np.uint16))
    x, y = data.get_batch("train", 200, 4, np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == {0} and y[0].tolist() == [1, 2, 3, 4]


def test_iter_windows_slides_with_a_stride():
    data = TokenData(np.arange(10, dtype=np.uint16), np.arange(3, dtype=np.uint16))
    batches = list(data.iter_windows("train", 4, stride=4, batch_size=8))
    assert len(batches) == 1 and batches[0][0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batches[0][1].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    overlapping = list(data.iter_windows("train", 4, stride=1, batch_size=2))
    assert [len(x) for x, _ in overlapping] == [2, 2, 2] and data.num_windows("train", 4, 1) == 6
    assert overlapping[-1][0][-1].tolist() == [5, 6, 7, 8]  # the last window ends at token 9
    assert [len(x) for x, _ in data.iter_windows("train", 2, batch_size=3, drop_last=True)] == [3]


def test_too_short_a_split_names_both_numbers():
    data = make_data(n_val=5)
    with pytest.raises(ValueError, match=r"block_size \+ 1 = 6 tokens .* val split, which has only 5"):
        data.get_batch("val", 2, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="only 5 tokens"):
        next(data.iter_windows("val", 8))
    with pytest.raises(ValueError, match="'train' or 'val'"):
        data.get_batch("test", 2, 2, np.random.default_rng(0))


def test_load_token_data_from_a_named_corpus(monkeypatch):
    monkeypatch.setenv("DU_DATA_MIRROR", str(data_file("the-verdict.txt").parent))
    tokenizer = ByteTokenizer()
    data = load_token_data("the-verdict", tokenizer, progress=False)
    text = data_file("the-verdict.txt").read_bytes()
    assert len(data.train) + len(data.val) == len(text)
    assert 0.08 < len(data.val) / len(text) < 0.12  # about 10 %, cut at a line start
