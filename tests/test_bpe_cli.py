"""bpe: the ``python -m bpe`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _paths import data_file
from bpe import load_tokenizer
from bpe.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "tok.json"
    corpus = data_file("the-verdict.txt")
    assert main(["train", str(corpus), "--vocab-size", "300", "-o", str(path), "-q"]) == 0
    return str(path)


def test_train_show_encode_decode(trained, capsys, tmp_path):
    assert load_tokenizer(trained).vocab_size == 300
    assert main(["show", trained, "-n", "3"]) == 0
    shown = capsys.readouterr().out
    assert "first 3 of 44 merges, most frequent first" in shown
    assert "' ' + 't' -> ' t'" in shown

    assert main(["encode", "-t", trained, "I had always thought"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["decode", "-t", trained, *ids]) == 0
    assert capsys.readouterr().out == "I had always thought"

    assert main(["encode", "-t", trained, "--tokens", "the end"]) == 0
    assert "257\t'he'" in capsys.readouterr().out

    char = tmp_path / "char.json"
    assert main(["train", str(data_file("the-verdict.txt")), "--char", "-o", str(char), "-q"]) == 0
    assert main(["show", str(char)]) == 0
    assert "CharTokenizer(vocab_size=62" in capsys.readouterr().out


def test_gpt2_directory(capsys):
    directory = str(data_file("gpt2-encoder.json").parent)
    assert main(["encode", "-t", directory, "Hello <|endoftext|>", "--allowed-special", "all"]) == 0
    assert capsys.readouterr().out.split() == ["15496", "220", "50256"]
    assert main(["encode", "-t", directory, "Hello <|endoftext|>"]) == 1
    assert "special token '<|endoftext|>'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "/no/such/tok.json"], "no such tokenizer file"),
        (["train", "/no/such/corpus.txt", "--vocab-size", "300", "-o", "x.json"], "no such file"),
        (["decode", "-t", "TRAINED", "1", "99999"], "out of range"),
        (["decode", "-t", "TRAINED", "1", "x"], "must be integers"),
        (["show", "VERDICT"], "not a tokenizer file"),
    ],
)
def test_errors_are_one_line(trained, capsys, argv, message):
    verdict = str(data_file("the-verdict.txt"))
    argv = [trained if a == "TRAINED" else verdict if a == "VERDICT" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_module_entry_point(trained):
    done = subprocess.run(
        [sys.executable, "-m", "bpe", "show", trained + ".missing"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "no such tokenizer file" in done.stderr
    assert "Traceback" not in done.stderr
