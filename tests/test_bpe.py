"""bpe: training, encoding, special tokens, round trips, files, and the character tokenizer."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import regex

from _paths import data_file
from bpe import CharTokenizer, Tokenizer, TokenizerFileError, load_tokenizer
from bpe.apply import merge_long, merge_short
from bpe.patterns import GPT2_PATTERN, GPT4_PATTERN, ascii_splitter
from bpe.train import count_chunks, learn_merges

EOT = "<|endoftext|>"

ROUND_TRIP_TEXTS = [
    "",
    " ",
    "   \t\t  \n\n \n",
    "a\r\nb\r\n\r\n",
    "Hello, world!",
    "emoji 😉🚀👩‍👩‍👧 and flags 🇺🇸",
    "CJK 你好世界, 日本語のテキスト, 한국어",
    "combining: e\u0301 a\u0308 n\u0303 \u0301\u0301\u0301",
    "zero\u200bwidth\ufeffBOM\xa0nbsp",
    "x" * 500 + " " * 300 + "y",
]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data_file("tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def small_tok(shakespeare: str) -> Tokenizer:
    return Tokenizer.train(shakespeare[:100_000], 600, special_tokens=[EOT], progress=False)


def random_unicode(rng: random.Random, n: int) -> str:
    # Mostly ASCII, with every kind of code point mixed in (no lone surrogates: not encodable).
    def one() -> str:
        r = rng.random()
        if r < 0.5:
            return chr(rng.randrange(32, 127))
        if r < 0.6:
            return rng.choice(" \n\r\t")
        while True:
            c = rng.randrange(0x80, 0x110000)
            if not 0xD800 <= c < 0xE000:
                return chr(c)

    return "".join(one() for _ in range(n))


# -- training ------------------------------------------------------------------------------------


def test_textbook_example_without_split_pattern():
    tok = Tokenizer.train("aaabdaaabac", vocab_size=259, pattern=None, progress=False)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    # Ties (aa|ab at 2) go to the smaller pair: (97, 98) before (256, 97).
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.decode([258]) == "aaab"
    assert tok.vocab_size == 259


def naive_merges(chunks: Counter, n_merges: int) -> list[tuple[int, int]]:
    """The textbook loop: recount every pair, take the most frequent (ties: smallest pair)."""
    words = [(list(chunk), weight) for chunk, weight in chunks.items()]
    merges = []
    for k in range(n_merges):
        counts: Counter = Counter()
        for ids, w in words:
            for pair in zip(ids, ids[1:]):
                counts[pair] += w
        if not counts:
            break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        merges.append(pair)
        merged = []
        for ids, w in words:
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            merged.append((out, w))
        words = merged
    return merges


def test_incremental_training_equals_the_textbook_loop():
    rng = random.Random(0)
    for _ in range(150):
        # Tiny alphabets make overlapping pairs ("aaaa") and ties common.
        alphabet = rng.choice([b"ab", b"abc", b"aab ", b"abcdefg"])
        chunks: Counter = Counter()
        for _ in range(rng.randint(1, 30)):
            chunk = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            chunks[chunk] += rng.randint(1, 5)
        n = rng.randint(1, 40)
        merges, counts = learn_merges(chunks, n)
        assert merges == naive_merges(chunks, n)
        assert counts == sorted(counts, reverse=True)


def test_training_is_deterministic_and_independent_of_input_order(shakespeare):
    lines = shakespeare[:50_000].splitlines(keepends=True)
    a = Tokenizer.train(lines, 500, progress=False)
    b = Tokenizer.train(list(reversed(lines)), 500, progress=False)
    c = Tokenizer.train(iter(lines), 500, progress=False)
    assert a.merges == b.merges == c.merges
    assert a.fingerprint == b.fingerprint


def test_special_tokens_are_not_learned_and_come_after_the_merges():
    text = ("once upon a time" + EOT) * 50
    tok = Tokenizer.train(text, 265, special_tokens=[EOT], progress=False)
    assert tok.vocab_size == 265
    assert tok.special_tokens == {EOT: 264} and tok.eot_id == 264
    assert not any(b"|" in tok.token_to_bytes(i) for i in range(256, 264))
    assert count_chunks(text, None, [EOT]) == Counter({"once upon a time": 50})


def test_training_stops_early_with_a_warning_when_pairs_run_out():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = Tokenizer.train("abab", 1000, pattern=None, progress=False)
    assert tok.encode("abab") == [257]


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train("abc", 256, special_tokens=[EOT], progress=False)


def test_train_on_tinyshakespeare_round_trips(shakespeare, small_tok):
    ids = small_tok.encode(shakespeare)
    assert small_tok.decode(ids) == shakespeare
    assert len(ids) < len(shakespeare.encode("utf-8")) / 1.8  # it actually compresses
    assert max(ids) < small_tok.vocab_size


# -- encoding ------------------------------------------------------------------------------------


def test_short_and_long_merging_agree():
    rng = random.Random(1)
    tok = Tokenizer.train(
        "".join(rng.choice("aab ") for _ in range(20_000)), 400, pattern=None, progress=False
    )
    table = tok._merged_id
    for _ in range(300):
        ids = [rng.choice(b"aab ") for _ in range(rng.randint(0, 120))]
        assert merge_short(ids, table) == merge_long(ids, table)
    long_text = "".join(rng.choice("aab ") for _ in range(5000))
    assert tok.decode(tok.encode(long_text)) == long_text


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_ascii_fast_split_equals_the_unicode_split(pattern, shakespeare):
    slow, fast = regex.compile(pattern), ascii_splitter(pattern)
    rng = random.Random(4)
    tricky = list(" \t\n\r\x0b\x0c\x1c\x1f'sdmtlvrSDMTLVRE09aZ.!-_")
    everything = [chr(c) for c in range(128)]
    for _ in range(3000):
        pool = tricky if rng.random() < 0.7 else everything
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        assert fast.findall(s) == slow.findall(s), s
    assert fast.findall(shakespeare) == slow.findall(shakespeare)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(small_tok, text):
    assert small_tok.decode(small_tok.encode(text)) == text


def test_round_trip_random_unicode(small_tok):
    rng = random.Random(2)
    gpt2ish = Tokenizer(small_tok.merges, pattern="gpt2")
    nosplit = Tokenizer(small_tok.merges, pattern=None)
    for _ in range(200):
        s = random_unicode(rng, rng.randint(0, 60))
        for tok in (small_tok, gpt2ish, nosplit):
            assert tok.decode(tok.encode(s)) == s


def test_any_bytes_decode(small_tok):
    rng = random.Random(3)
    for _ in range(100):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        ids = [small_tok.byte_token(b) for b in data]
        assert small_tok.decode_bytes(ids) == data
        assert small_tok.decode(ids) == data.decode("utf-8", errors="replace")
    assert small_tok.decode([0xE4]) == "\ufffd"


def test_cache_gives_the_same_ids(small_tok, shakespeare):
    text = shakespeare[:20_000]
    first = small_tok.encode(text)
    assert small_tok.encode(text) == first
    fresh = Tokenizer(small_tok.merges, small_tok.pattern, small_tok.special_tokens)
    assert fresh.encode(text) == first


def test_encode_batch_and_numpy_ids(small_tok):
    texts = ["one", "two words", ""]
    batch = small_tok.encode_batch(texts)
    assert batch == [small_tok.encode(t) for t in texts]
    ids = np.array(small_tok.encode("numpy ids"), dtype=np.uint16)
    assert small_tok.decode(ids) == "numpy ids"


def test_bad_ids_are_reported(small_tok):
    with pytest.raises(ValueError, match="out of range"):
        small_tok.decode([1, small_tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        small_tok.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        small_tok.token_to_bytes(10**6)


def test_inspection(small_tok):
    assert small_tok.token_to_bytes(65) == b"A"
    assert small_tok.id_to_token(small_tok.eot_id) == EOT
    assert small_tok.id_to_token(0xE4) == "\\xe4"
    a, b = small_tok.merges[0]
    assert small_tok.token_to_bytes(256) == small_tok.token_to_bytes(a) + small_tok.token_to_bytes(b)


# -- special tokens ------------------------------------------------------------------------------


def test_special_tokens(small_tok):
    text = f"hello {EOT} world"
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        small_tok.encode(text)
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        small_tok.encode_batch(["fine", text])
    eot = small_tok.eot_id
    allowed = small_tok.encode(text, allowed_special="all")
    assert allowed.count(eot) == 1
    assert small_tok.encode(text, allowed_special={EOT}) == allowed
    assert allowed == small_tok.encode("hello ") + [eot] + small_tok.encode(" world")
    plain = small_tok.encode(text, allowed_special="none")
    assert eot not in plain and small_tok.decode(plain) == text
    assert small_tok.decode(allowed) == text
    assert small_tok.encode(EOT + EOT, allowed_special="all") == [eot, eot]


def test_allowed_special_subset_still_raises_for_the_others():
    tok = Tokenizer(special_tokens=["<|a|>", "<|b|>", "<|a|>x"])
    assert tok.vocab_size == 259
    assert tok.encode("<|a|>x<|a|>", allowed_special="all") == [258, 256]  # longest wins
    assert tok.encode("<|a|>", allowed_special={"<|a|>"}) == [256]
    with pytest.raises(ValueError, match=r"<\|b\|>"):
        tok.encode("<|a|><|b|>", allowed_special={"<|a|>"})
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|c|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="<|a|>")


def test_bad_special_token_ids():
    with pytest.raises(ValueError, match="special token ids"):
        Tokenizer(special_tokens={EOT: 1000})
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(special_tokens=[EOT, EOT])


# -- files ---------------------------------------------------------------------------------------


def test_save_and_load_round_trip(small_tok, shakespeare, tmp_path):
    path = tmp_path / "tok.json"
    small_tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded == small_tok and loaded.fingerprint == small_tok.fingerprint
    text = shakespeare[:30_000] + EOT + "tail"
    assert loaded.encode(text, allowed_special="all") == small_tok.encode(text, allowed_special="all")
    assert loaded.merge_counts == small_tok.merge_counts
    assert load_tokenizer(path) == small_tok
    again = tmp_path / "again.json"
    loaded.save(again)
    assert again.read_bytes() == path.read_bytes()
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["version"] == 1 and document["type"] == "bpe"
    assert document["merges"][0][:2] == list(small_tok.merges[0])


def test_fingerprint_tracks_what_changes_encoding(small_tok):
    same = Tokenizer(small_tok.merges, small_tok.pattern, small_tok.special_tokens)
    assert same.fingerprint == small_tok.fingerprint  # merge counts are not part of it
    assert Tokenizer(small_tok.merges, "gpt2", small_tok.special_tokens).fingerprint != same.fingerprint
    assert Tokenizer(small_tok.merges[:-1], small_tok.pattern).fingerprint != same.fingerprint
    assert len(same.fingerprint) == 64


def test_file_errors(tmp_path, small_tok):
    not_json = tmp_path / "text.json"
    not_json.write_text("hello")
    with pytest.raises(TokenizerFileError, match="not a tokenizer file"):
        load_tokenizer(not_json)
    other = tmp_path / "other.json"
    other.write_text('{"model": "gpt2"}')
    with pytest.raises(TokenizerFileError, match="not a tokenizer file"):
        Tokenizer.load(other)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")

    good = tmp_path / "good.json"
    small_tok.save(good)
    document = json.loads(good.read_text(encoding="utf-8"))

    def write(name: str, **changes) -> object:
        path = tmp_path / name
        path.write_text(json.dumps({**document, **changes}), encoding="utf-8")
        return path

    with pytest.raises(TokenizerFileError, match="newer version"):
        load_tokenizer(write("newer.json", version=2))
    with pytest.raises(TokenizerFileError, match="unknown tokenizer type"):
        load_tokenizer(write("kind.json", type="wordpiece"))
    with pytest.raises(TokenizerFileError, match="damaged"):
        load_tokenizer(write("future.json", merges=[[300, 1, "x", 1]] + document["merges"][1:]))
    with pytest.raises(TokenizerFileError, match="damaged"):
        load_tokenizer(write("edited.json", merges=[[32, 116, "xx", 1]] + document["merges"][1:]))
    del document["merges"]
    with pytest.raises(TokenizerFileError, match="missing field"):
        load_tokenizer(write("nomerges.json"))
    char_file = tmp_path / "char.json"
    CharTokenizer.train("abc").save(char_file)
    with pytest.raises(TokenizerFileError, match="'char' tokenizer"):
        Tokenizer.load(char_file)


# -- the character tokenizer ---------------------------------------------------------------------


def test_char_tokenizer(shakespeare, tmp_path):
    tok = CharTokenizer.train(shakespeare)
    assert tok.vocab_size == 65 and tok.eot_id is None
    assert tok.chars == sorted(set(shakespeare))
    ids = tok.encode(shakespeare[:1000])
    assert tok.decode(ids) == shakespeare[:1000]
    assert tok.decode_bytes(ids) == shakespeare[:1000].encode("utf-8")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\)"):
        tok.encode("café")
    path = tmp_path / "char.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer) and loaded == tok
    assert CharTokenizer.load(path).encode("First") == tok.encode("First")


def test_char_tokenizer_special_tokens():
    story = f"Once upon a time.\n{EOT}\nThe end.\n{EOT}\n"
    tok = CharTokenizer.train(story, special_tokens=[EOT])
    assert "|" not in tok.chars  # the marker's characters are not part of the vocabulary
    assert tok.eot_id == tok.vocab_size - 1
    ids = tok.encode(story, allowed_special="all")
    assert ids.count(tok.eot_id) == 2 and tok.decode(ids) == story
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        tok.encode(story)
    assert tok.encode_batch(["Once", "The"]) == [tok.encode("Once"), tok.encode("The")]
    assert tok.id_to_token(tok.eot_id) == EOT


def test_docstring_examples():
    import doctest

    import bpe.char
    import bpe.tokenizer

    for module in (bpe.tokenizer, bpe.char):
        assert doctest.testmod(module).failed == 0
