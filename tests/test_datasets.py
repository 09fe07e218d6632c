"""gpt.data.corpora: mirror, cache, download (from a local server), and text splits."""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile

import pytest
from _http_server import closed_port_url, serve  # noqa: F401  (serve is a fixture)
from _paths import data_file

from gpt.data.corpora import DATASETS, DataError, fetch, load_text, load_text_splits, split_text
from gpt.io import files
from gpt.io.files import atomic_write, sha256_file


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never touch the real cache."""
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path / "cache"))


def no_mirror(monkeypatch, tmp_path):
    """Hide the shared mirror, so that fetch() must use the cache or download.

    Called in the test body *after* any data_file() call: data_file reads the same variable.
    """
    monkeypatch.setenv("DU_DATA_MIRROR", str(tmp_path / "empty-mirror"))


def use_real_mirror(monkeypatch):
    mirror = data_file("tinystories/train.txt").parent.parent
    monkeypatch.setenv("DU_DATA_MIRROR", str(mirror))
    return mirror


def point_at(monkeypatch, name, url, **changes):
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], url=url, **changes))


def test_registry_checksums_match_the_mirror(monkeypatch):
    mirror = use_real_mirror(monkeypatch)
    for name, entry in DATASETS.items():
        path = fetch(name)
        assert path == mirror / entry.filename
        if entry.sha256 is not None:
            assert sha256_file(path) == entry.sha256, name


def test_cache_is_used_when_the_mirror_lacks_the_file(tmp_path, monkeypatch):
    no_mirror(monkeypatch, tmp_path)
    cached = tmp_path / "cache" / "the-verdict.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("cached copy")
    assert fetch("the-verdict") == cached
    other = tmp_path / "elsewhere"
    (other / "the-verdict.txt").parent.mkdir(parents=True)
    (other / "the-verdict.txt").write_text("x")
    assert fetch("the-verdict", data_dir=other) == other / "the-verdict.txt"  # argument wins


def test_download_is_verified_and_cached(tmp_path, monkeypatch, serve):
    text = data_file("the-verdict.txt").read_bytes()
    no_mirror(monkeypatch, tmp_path)
    with serve({"/verdict.txt": text}) as server:
        point_at(monkeypatch, "the-verdict", server.url("/verdict.txt"))
        path = fetch("the-verdict", progress=False)
        assert path == tmp_path / "cache" / "the-verdict.txt"
        assert path.read_bytes() == text
        fetch("the-verdict", progress=False)
        assert len(server.requests) == 1  # the second fetch found the cached copy


def test_wrong_checksum_is_a_data_error(tmp_path, monkeypatch, serve):
    no_mirror(monkeypatch, tmp_path)
    with serve({"/verdict.txt": b"not the verdict"}) as server:
        point_at(monkeypatch, "the-verdict", server.url("/verdict.txt"))
        with pytest.raises(DataError, match="sha256"):
            fetch("the-verdict", progress=False)
    assert not (tmp_path / "cache" / "the-verdict.txt").exists()


def test_sms_spam_is_extracted_from_the_zip(tmp_path, monkeypatch, serve):
    tsv = data_file("sms-spam-collection.tsv").read_bytes()
    no_mirror(monkeypatch, tmp_path)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme", "about the collection")
        zf.writestr("SMSSpamCollection", tsv)
    with serve({"/sms.zip": archive.getvalue()}) as server:
        point_at(monkeypatch, "sms-spam", server.url("/sms.zip"))
        path = fetch("sms-spam", progress=False)
    assert path.read_bytes() == tsv
    assert sorted(p.name for p in path.parent.iterdir()) == ["sms-spam-collection.tsv"]  # zip removed


def test_tinystories_train_is_capped_at_a_story_end(tmp_path, monkeypatch, serve):
    no_mirror(monkeypatch, tmp_path)
    stories = "".join(f"Story number {i} is about a cat.\n<|endoftext|>\n" for i in range(100))
    valid = "A valid story.\n<|endoftext|>\n"
    with serve({"/train.txt": stories.encode(), "/valid.txt": valid.encode()}) as server:
        point_at(monkeypatch, "tinystories", server.url("/train.txt"), max_bytes=1000)
        point_at(monkeypatch, "tinystories-valid", server.url("/valid.txt"))
        train, val = load_text_splits("tinystories")
    assert val == valid
    assert len(train.encode()) <= 1000 and stories.startswith(train)
    assert train.endswith("<|endoftext|>\n")
    assert len(train) > 1000 - 46  # only the story the cap cut in half (46 bytes) was dropped


def test_offline_error_names_the_file_the_mirror_and_the_way_out(tmp_path, monkeypatch):
    no_mirror(monkeypatch, tmp_path)
    point_at(monkeypatch, "tinyshakespeare", closed_port_url())
    partial = tmp_path / "cache" / "tinyshakespeare.txt.part"
    partial.parent.mkdir()
    partial.write_text("First Citizen")  # an earlier, interrupted download
    with pytest.raises(DataError) as info:
        fetch("tinyshakespeare", progress=False)
    message = str(info.value)
    assert "tinyshakespeare.txt" in message and "DU_DATA_MIRROR" in message
    assert f"partial download is kept in {partial}" in message
    assert "could not connect" in message and "local text file" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown data file 'shakespeare'.*tinyshakespeare"):
        fetch("shakespeare")


def test_named_corpus_with_its_own_validation_file(monkeypatch):
    use_real_mirror(monkeypatch)
    train, val = load_text_splits("tinystories")
    assert train == data_file("tinystories/train.txt").read_text(encoding="utf-8")
    assert val == data_file("tinystories/valid.txt").read_text(encoding="utf-8")


def test_named_corpus_without_one_is_split_90_10(monkeypatch):
    use_real_mirror(monkeypatch)
    text = load_text("tinyshakespeare")
    train, val = load_text_splits("tinyshakespeare")
    assert train + val == text
    assert 0.09 < len(val) / len(text) < 0.11 and train.endswith("\n")


def test_local_file_and_directory(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("line one\r\nline two\r\n".encode() * 10)
    train, val = load_text_splits(path)
    assert "\r\n" in train and (train + val).encode() == path.read_bytes()  # unchanged text
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text("the training text")
    (folder / "val.txt").write_text("the validation text")
    assert load_text_splits(str(folder)) == ("the training text", "the validation text")


def test_bad_sources_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="neither a registered corpus"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_text(tmp_path / "latin1.txt")
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(DataError, match="no train.txt"):
        load_text_splits(tmp_path / "empty-dir")


def test_split_text_cuts_at_a_line_start():
    assert split_text("aaaa\nbbbb\ncccc\ndddd\n", 0.25) == ("aaaa\nbbbb\ncccc\n", "dddd\n")
    assert split_text("aaaa\nbbbbbbbbbbbbbbbbbbbb\ncc\n", 0.2) == ("aaaa\nbbbbbbbbbbbbbbbbbbbb\n", "cc\n")
    assert split_text("no newline at all", 0.5) == ("no newli", "ne at all")
    with pytest.raises(ValueError, match="val_fraction"):
        split_text("text", 1.5)


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("DU_DATA_DIR")
    assert files.cache_dir() == files.DEFAULT_CACHE.expanduser()
    assert files.cache_dir(tmp_path) == tmp_path


def test_atomic_write_is_all_or_nothing(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    with atomic_write(target) as f:
        f.write(b"first")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the second")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not 0600
