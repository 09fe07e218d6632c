"""bpe.huggingface: Qwen3's, SmolLM2's and Llama 3's tokenizers give exactly their own ids.

The reference ids come from Hugging Face `tokenizers` and `tiktoken` (see
../shared/reference/README.md). The small synthetic files below check each format rule on its
own, and that every kind of file we do not implement is refused by name.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import unicodedata
from pathlib import Path

import pytest
import regex

from _paths import data_file, reference_file
from bpe import (
    PretrainedTokenizer,
    Tokenizer,
    TokenizerFileError,
    load_hf_tokenizer,
    load_tokenizer,
)
from bpe.gpt2 import byte_to_char
from bpe.patterns import GPT2_PATTERN, GPT4_PATTERN
from bpe.pretrained import (
    _ASCII_VERSIONS,
    DIGIT_RUNS_PATTERN,
    DIGITS_PATTERN,
    LLAMA3_PATTERN,
    QWEN2_PATTERN,
    _splitter,
)

# Where each model's tokenizer is read from: Qwen3 ships it twice, as tokenizer.json and as
# vocab.json + merges.txt, and both must give its ids.
SOURCES = [
    ("qwen3", "qwen3"),
    ("qwen3", "qwen3/vocab.json"),
    ("smollm2", "smollm2"),
    ("llama3", "llama3"),
]

_loaded: dict[str, PretrainedTokenizer] = {}


def real(source: str) -> PretrainedTokenizer:
    """A tokenizer from ../shared/reference/tokenizers, loaded once for the whole module."""
    if source not in _loaded:
        _loaded[source] = load_hf_tokenizer(reference_file("tokenizers/" + source))
    return _loaded[source]


@pytest.fixture(scope="module")
def reference() -> dict:
    path = reference_file("tokenizers/reference_ids.json")
    return json.loads(path.read_text(encoding="utf-8"))["models"]


# -- the real files ------------------------------------------------------------------------------


@pytest.mark.parametrize("model,source", SOURCES)
def test_reference_ids(reference, model, source):
    tok = real(source)
    cases = reference[model]["cases"]
    assert len(cases) == 16
    for case in cases:
        text = case["text"]
        assert tok.encode(text, allowed_special="none") == case["ids_plain"], text
        assert tok.encode(text, allowed_special="all") == case["ids_special"], text
        # Qwen3 puts text into NFC first; the others give back exactly what they were given.
        expected = unicodedata.normalize("NFC", text) if model == "qwen3" else text
        assert tok.decode(case["ids_special"]) == expected
        assert tok.decode(case["ids_plain"]) == expected


@pytest.mark.parametrize("model,source", SOURCES)
def test_reference_chat_prompts(reference, model, source):
    tok = real(source)
    chats = reference[model]["chat"]
    assert chats
    for name, chat in chats.items():
        assert tok.encode(chat["text"], allowed_special="all") == chat["ids"], name
        assert tok.decode(chat["ids"]) == chat["text"]


def test_sizes_and_token_lookup():
    qwen, smol, llama = real("qwen3"), real("smollm2"), real("llama3")
    assert (qwen.vocab_size, smol.vocab_size, llama.vocab_size) == (151669, 49152, 128256)
    assert qwen.token_id("<|im_end|>") == 151645 and qwen.token_id("<think>") == 151667
    assert qwen.token_id("\n") == 198 and qwen.eot_id == 151643
    assert qwen.token_to_bytes(151667) == b"<think>" and qwen.token_to_bytes(220) == b" "
    assert smol.token_id("<|im_end|>") == 2 and smol.eot_id == 0
    assert llama.token_id("<|eot_id|>") == 128009 and llama.token_id("<|begin_of_text|>") == 128000
    # Special tokens are the added tokens marked special; Qwen3's <think> is ordinary vocabulary.
    assert "<|im_end|>" in qwen.special_tokens and "<think>" not in qwen.special_tokens
    assert len(qwen.special_tokens) == 14 and len(llama.special_tokens) == 256
    with pytest.raises(ValueError, match="no token"):
        qwen.token_id("<|no such token|>")


def test_special_tokens_obey_allowed_special_and_other_added_tokens_always_match():
    qwen = real("qwen3")
    with pytest.raises(ValueError, match=re.escape("'<|im_end|>'")):
        qwen.encode("hi<|im_end|>")
    assert qwen.encode("<think>\n\n</think>") == [151667, 271, 151668]
    assert qwen.encode_ordinary("<think>") == [151667]
    assert qwen.encode("<|im_end|>", allowed_special={"<|im_end|>"}) == [151645]
    assert 151645 not in qwen.encode("<|im_end|>", allowed_special="none")


def test_decoding_arbitrary_ids_joins_their_bytes():
    rng = random.Random(0)
    for source in ("qwen3", "smollm2", "llama3"):
        tok = real(source)
        for _ in range(50):
            ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 12))]
            data = b"".join(tok.token_to_bytes(i) for i in ids)
            assert tok.decode_bytes(ids) == data
            assert tok.decode(ids) == data.decode("utf-8", errors="replace")
    llama = real("llama3")
    # Llama 3's ids 0..255 are its byte tokens: a lone UTF-8 lead byte is not text.
    lead_byte = next(i for i in range(256) if llama.token_to_bytes(i) == b"\xf0")
    assert llama.decode([lead_byte]) == "\ufffd"
    assert llama.decode([lead_byte, *llama.encode("ok")]) == "\ufffdok"
    with pytest.raises(ValueError, match="out of range"):
        llama.decode([llama.vocab_size])


def test_random_text_round_trips():
    rng = random.Random(1)
    chars = [chr(c) for c in range(32, 127)] + list(" \n\t\r") + list("éß😉你好ٹ\u0301\u200b\xa0")
    for _ in range(100):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 40)))
        assert real("llama3").decode(real("llama3").encode(text)) == text
        assert real("qwen3").decode(real("qwen3").encode(text)) == unicodedata.normalize(
            "NFC", text
        )
        assert real("smollm2").decode(real("smollm2").encode(text)) == text


def test_smollm2_drops_bytes_it_has_no_token_for():
    smol = real("smollm2")
    # Byte 4 has no token: it vanishes and its neighbours merge as if it were not there.
    assert smol.encode("!\x04!") == smol.encode("!!") and len(smol.encode("!!")) == 1
    assert smol.decode(smol.encode("a\x04b")) == "ab"


def test_gpt2_files_give_gpt2_ids():
    # GPT-2's own files through this loader: the same ids as our GPT-2 loader and the reference.
    tok = load_hf_tokenizer(data_file("gpt2-encoder.json"))
    gpt2 = Tokenizer.from_gpt2(data_file("gpt2-encoder.json"), data_file("gpt2-vocab.bpe"))
    assert tok.vocab_size == 50257 and tok.special_tokens == {"<|endoftext|>": 50256}
    cases = json.loads(reference_file("gpt2_tokens.json").read_text(encoding="utf-8"))["cases"]
    for case in cases:
        assert tok.encode(case["text"], allowed_special="none") == case["ids"]
        assert tok.encode(case["text"], allowed_special="all") == case["ids_allowed_special"]
        assert gpt2.encode(case["text"], allowed_special="all") == case["ids_allowed_special"]


def test_save_and_load_our_file(tmp_path, reference):
    smol = real("smollm2")
    smol.save(tmp_path / "smol.json")
    back = load_tokenizer(tmp_path / "smol.json")
    assert isinstance(back, PretrainedTokenizer) and back == smol
    for case in reference["smollm2"]["cases"]:
        assert back.encode(case["text"], allowed_special="all") == case["ids_special"]
    assert back.fingerprint != real("qwen3").fingerprint
    document = json.loads((tmp_path / "smol.json").read_text(encoding="utf-8"))
    document["merges"][0] = [0, 10**6]
    (tmp_path / "smol.json").write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="damaged"):
        load_tokenizer(tmp_path / "smol.json")


PATTERN_NAMES = {
    LLAMA3_PATTERN: "llama3",
    QWEN2_PATTERN: "qwen2",
    DIGITS_PATTERN: "digits",
    DIGIT_RUNS_PATTERN: "digit-runs",
}


@pytest.mark.parametrize("pattern", list(_ASCII_VERSIONS), ids=PATTERN_NAMES.get)
def test_ascii_fast_split_equals_the_unicode_split(pattern):
    # Every string of up to four characters from a set that exercises each branch of the patterns
    # (whitespace that `regex` and `re` class differently, contractions in both cases, digits).
    slow, fast = regex.compile(pattern), re.compile(_ASCII_VERSIONS[pattern])
    alphabet = " \t\n\r\x0c\x1c'sLx7."
    for length in range(1, 5):
        for chars in itertools.product(alphabet, repeat=length):
            text = "".join(chars)
            assert fast.findall(text) == slow.findall(text), text
    text = "Numbers 12345, 'LL 've\r\n\n  \tend  " * 3
    assert fast.findall(text) == slow.findall(text)


STAGE_LISTS = {
    "qwen2": [QWEN2_PATTERN],
    "llama3": [LLAMA3_PATTERN],
    "smollm2": [DIGITS_PATTERN, GPT2_PATTERN],
    "digit-runs+gpt2": [DIGIT_RUNS_PATTERN, GPT2_PATTERN],
    "gpt4": [GPT4_PATTERN],
}


@pytest.mark.parametrize("name", list(STAGE_LISTS))
def test_fast_splitting_equals_plain_regex_splitting(name):
    # The splitter takes shortcuts (ASCII lines through `re`, text cut after certain newlines);
    # here each stage is simply `regex.split` keeping the text between matches.
    patterns = STAGE_LISTS[name]
    split = _splitter(patterns)

    def plain(text: str) -> list[str]:
        pieces = [text]
        for pattern in patterns:
            cut = regex.compile(f"({pattern})")
            pieces = [part for piece in pieces for part in cut.split(piece) if part]
        return pieces

    rng = random.Random(5)
    pool = list("aZq.,!'s \n\n\n\r\t\x0b\x1c1234é你½\xa0\u2028") + ["\n\n", " \n"]
    for _ in range(2000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) + "é"
        assert split(text) == plain(text), repr(text)


# -- small synthetic files: each rule on its own -------------------------------------------------

CHAR = byte_to_char()


def spell(text: str) -> str:
    return "".join(CHAR[b] for b in text.encode("utf-8"))


def tiny_document(merges_as_lists: bool = False) -> dict:
    """A byte-level BPE tokenizer.json: bytes numbered backwards (id 255 - byte), five merges,
    a special and a non-special added token."""
    vocab = {CHAR[b]: 255 - b for b in range(256)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (spell(" "), "w")]
    for n, (a, b) in enumerate(merges):
        vocab[a + b] = 256 + n
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": 261,
                "content": "<|end|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            },
            {
                "id": 262,
                "content": "<x>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            },
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) if merges_as_lists else f"{m[0]} {m[1]}" for m in merges],
        },
    }


def write(tmp_path: Path, document: dict, name: str = "tokenizer.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def byte_ids(text: str) -> list[int]:
    return [255 - b for b in text.encode("utf-8")]


def test_tiny_tokenizer_json(tmp_path):
    tok = load_hf_tokenizer(write(tmp_path, tiny_document()))
    assert tok.vocab_size == 263
    # "hello" -> he, ll -> hell -> hello; " world" -> " w" then single bytes.
    assert tok.encode("hello world") == [259, 260] + byte_ids("orld")
    assert tok.encode("hel") == [256] + byte_ids("l")
    assert tok.encode("<x>hello") == [262, 259]  # not special: always matched
    assert tok.encode("<|end|>", allowed_special="all") == [261]
    assert tok.encode("<|end|>", allowed_special="none") == byte_ids("<|") + byte_ids(
        "end"
    ) + byte_ids("|>")
    with pytest.raises(ValueError, match="special token"):
        tok.encode("<|end|>")
    assert tok.decode([259, 260, 262, 261]) == "hello w<x><|end|>"
    # Merges written as ["a", "b"] lists (newer files) are the same tokenizer.
    lists = load_hf_tokenizer(write(tmp_path, tiny_document(merges_as_lists=True), "lists.json"))
    assert lists == tok


def test_ignore_merges_takes_a_whole_chunk_that_is_a_token(tmp_path):
    document = tiny_document()
    document["model"]["vocab"]["lo"] = 263  # a token no merge makes
    assert load_hf_tokenizer(write(tmp_path, document)).encode("lo") == byte_ids("lo")
    document["model"]["ignore_merges"] = True
    assert load_hf_tokenizer(write(tmp_path, document)).encode("lo") == [263]


def test_a_byte_without_a_token_is_dropped(tmp_path):
    document = tiny_document()
    del document["model"]["vocab"][CHAR[ord("q")]]
    tok = load_hf_tokenizer(write(tmp_path, document))
    assert tok.encode("hqe") == [256]  # q vanishes, h and e merge
    document["model"]["unk_token"] = "<unk>"
    with pytest.raises(TokenizerFileError, match="unknown token"):
        load_hf_tokenizer(write(tmp_path, document))


def test_nfc_normalizer_and_added_token_found_after_normalizing(tmp_path):
    document = tiny_document()
    document["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}]}
    document["added_tokens"].append(
        {
            "id": 263,
            "content": "caf\u00e9",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": False,
        }
    )
    tok = load_hf_tokenizer(write(tmp_path, document))
    assert tok.normalizer == "NFC"
    assert tok.encode("e\u0301") == tok.encode("\u00e9") == byte_ids("\u00e9")
    assert tok.encode("cafe\u0301!") == [263] + byte_ids("!")


def test_split_stages_keep_the_text_between_matches(tmp_path):
    document = tiny_document()
    document["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "Split", "pattern": {"String": "l"}, "behavior": "Isolated", "invert": False},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False,
            },
        ],
    }
    tok = load_hf_tokenizer(write(tmp_path, document))
    # Cut at each digit, then around each "l": no "ll" or "hell" can form; no GPT-2 split.
    assert tok.split_patterns == [r"\p{N}", r"l"]
    assert tok.encode("hello w") == [256] + byte_ids("llo") + [260]
    assert tok.encode("he12he") == [256] + byte_ids("12") + [256]


REFUSED = [
    (lambda d: d["model"].update(type="Unigram"), "Unigram"),
    (lambda d: d["model"].update(type="WordPiece"), "WordPiece"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d["model"].update(dropout=0.1), "dropout"),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "Lowercase"),
    (lambda d: d.update(normalizer={"type": "NFKC"}), "NFKC"),
    (
        lambda d: d.update(
            normalizer={
                "type": "Sequence",
                "normalizers": [
                    {"type": "NFC"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "_"},
                ],
            }
        ),
        "Replace",
    ),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace", "replacement": "_"}), "Metaspace"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "Whitespace"),
    (lambda d: d.update(pre_tokenizer=None), "ByteLevel"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (
        lambda d: d.update(
            pre_tokenizer={
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": "a"},
                        "behavior": "Removed",
                        "invert": False,
                    },
                    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
                ],
            }
        ),
        "Removed",
    ),
    (lambda d: d.update(decoder={"type": "WordPiece", "prefix": "##"}), "WordPiece"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip"),
    (lambda d: d["model"]["merges"].append("h zz"), "zz"),
]


@pytest.mark.parametrize("change,name", REFUSED, ids=[name for _, name in REFUSED])
def test_unsupported_tokenizer_json_is_refused_by_name(tmp_path, change, name):
    document = tiny_document()
    change(document)
    with pytest.raises(TokenizerFileError, match=name):
        load_hf_tokenizer(write(tmp_path, document))


def test_other_unsupported_files_are_refused(tmp_path):
    # A SentencePiece model (protobuf, as Llama 2's and Gemma's tokenizer.model are).
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    with pytest.raises(TokenizerFileError, match="SentencePiece"):
        load_hf_tokenizer(tmp_path)
    # vocab.json + merges.txt of a tokenizer class whose split pattern is not known.
    (tmp_path / "vocab.json").write_text(json.dumps({CHAR[b]: b for b in range(256)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer"})
    )
    with pytest.raises(TokenizerFileError, match="LlamaTokenizer"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TokenizerFileError, match="not valid JSON"):
        load_hf_tokenizer(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        load_hf_tokenizer(tmp_path / "missing")


def test_tiny_tiktoken_file(tmp_path):
    # Tokens: the 256 bytes (ranks 0..255 in byte order), then "ab", "ba", "aba", "<p>".
    tokens = [bytes([b]) for b in range(256)] + [b"ab", b"ba", b"aba"]
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    (tmp_path / "tokenizer.model").write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerFileError, match="tokenizer_config.json"):
        load_hf_tokenizer(tmp_path)
    config = {
        "added_tokens_decoder": {
            "259": {
                "content": "<p>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        }
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_hf_tokenizer(tmp_path)
    assert tok.vocab_size == 260 and tok.special_tokens == {"<p>": 259}
    # "abab": a+b (rank 256) before a+b+a (258), twice; "ab"+"ab" is no token. "bab": a+b (256)
    # before b+a (257); "b"+"ab" is no token. "aba" is a token as a whole.
    assert tok.encode("abab") == [256, 256]
    assert tok.encode("bab") == [98, 256]
    assert tok.encode("aba<p>", allowed_special="all") == [258, 259]
    tok.save(tmp_path / "ours.json")
    assert load_tokenizer(tmp_path / "ours.json") == tok
