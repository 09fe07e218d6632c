"""bpe: GPT-2's vocabulary gives exactly the ids of GPT-2's reference encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from _paths import data_file, reference_file
from bpe import Tokenizer, load_tokenizer
from bpe.gpt2 import byte_to_char

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_gpt2(data_file("gpt2-encoder.json"), data_file("gpt2-vocab.bpe"))


def test_layout(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_id == 50256 and gpt2.special_tokens == {EOT: 50256}
    assert gpt2.token_to_bytes(0) == b"!" and gpt2.byte_token(ord("!")) == 0
    assert gpt2.token_to_bytes(220) == b" " and gpt2.token_to_bytes(198) == b"\n"
    table = byte_to_char()
    assert table[32] == "\u0120" and table[10] == "\u010a" and len(set(table.values())) == 256


def test_reference_cases(gpt2):
    cases = json.loads(reference_file("gpt2_tokens.json").read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 10
    for case in cases:
        text = case["text"]
        assert gpt2.encode(text, allowed_special="none") == case["ids"], text
        assert gpt2.encode(text, allowed_special="all") == case["ids_allowed_special"], text
        assert gpt2.decode(case["ids"]) == text
        assert gpt2.decode(case["ids_allowed_special"]) == text


def test_known_examples(gpt2):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace."
    assert gpt2.encode(text, allowed_special={EOT}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 1659,
        617, 34680, 27271, 13,
    ]
    verdict = data_file("the-verdict.txt").read_text(encoding="utf-8")
    assert len(gpt2.encode(verdict)) == 5145


def test_whole_tinyshakespeare(gpt2):
    text = data_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    reference = np.load(reference_file("tinyshakespeare.gpt2.ids.npy"))
    ids = gpt2.encode(text)
    assert len(ids) == len(reference) == 338_025
    np.testing.assert_array_equal(np.array(ids, dtype=np.uint16), reference)
    assert gpt2.decode(reference) == text


def test_hugging_face_file_names_and_directories(gpt2, tmp_path):
    shutil.copy(data_file("gpt2-encoder.json"), tmp_path / "vocab.json")
    shutil.copy(data_file("gpt2-vocab.bpe"), tmp_path / "merges.txt")
    for tok in (Tokenizer.from_gpt2(tmp_path / "vocab.json", tmp_path / "merges.txt"),
                Tokenizer.from_gpt2(tmp_path)):
        assert tok.fingerprint == gpt2.fingerprint
    with pytest.raises(FileNotFoundError, match="no GPT-2 vocabulary files"):
        Tokenizer.from_gpt2(tmp_path / "nothing-here")


def test_saved_gpt2_round_trips(gpt2, tmp_path):
    path = tmp_path / "gpt2.json"
    gpt2.save(path)
    loaded = load_tokenizer(path)
    assert loaded == gpt2
    text = "Hello, world! " + EOT + " café 😉"
    assert loaded.encode(text, allowed_special="all") == gpt2.encode(text, allowed_special="all")
