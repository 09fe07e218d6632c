"""The downloader (gpt.data.http) and `python -m gpt.download`, against a local server."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
from _http_server import closed_port_url, serve  # noqa: F401  (serve is a fixture)

from gpt.data import hub as gpt_download
from gpt.data.http import DownloadError, download, partial_path

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_renames(serve, tmp_path):
    with serve({"/f.bin": PAYLOAD}) as server:
        dest = download(server.url("/f.bin"), tmp_path / "sub" / "f.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()
    assert server.requests == [("/f.bin", None)]


def test_resumes_a_partial_file_with_a_range_request(serve, tmp_path):
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(PAYLOAD[:1000])
    with serve({"/f.bin": PAYLOAD}) as server:
        download(server.url("/f.bin"), dest, sha256=SHA, progress=False)
    assert server.requests == [("/f.bin", "bytes=1000-")]
    assert dest.read_bytes() == PAYLOAD


def test_starts_over_when_the_server_ignores_ranges(serve, tmp_path):
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(b"x" * 1000)  # wrong bytes: appending would corrupt
    with serve({"/f.bin": PAYLOAD}) as server:
        server.ignore_range = True
        download(server.url("/f.bin"), dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_partial_file_is_accepted_on_416(serve, tmp_path):
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(PAYLOAD)
    with serve({"/f.bin": PAYLOAD}) as server:
        download(server.url("/f.bin"), dest, sha256=SHA, progress=False)
    assert server.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_short_body_is_a_size_mismatch_and_the_next_run_resumes(serve, tmp_path):
    dest = tmp_path / "f.bin"
    with serve({"/f.bin": PAYLOAD}) as server:
        server.truncate_to = 3000
        with pytest.raises(DownloadError, match=r"3,000 of 10,240 bytes.*run again to resume"):
            download(server.url("/f.bin"), dest, progress=False)
        assert not dest.exists() and partial_path(dest).stat().st_size == 3000
        server.truncate_to = None
        download(server.url("/f.bin"), dest, sha256=SHA, progress=False)
    assert server.requests[-1] == ("/f.bin", "bytes=3000-")
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_file(serve, tmp_path):
    dest = tmp_path / "f.bin"
    with serve({"/f.bin": PAYLOAD}) as server:
        with pytest.raises(DownloadError, match=f"expected {'0' * 64}"):
            download(server.url("/f.bin"), dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not partial_path(dest).exists()


def test_max_bytes_downloads_a_prefix(serve, tmp_path):
    with serve({"/f.bin": PAYLOAD}) as server:
        dest = download(server.url("/f.bin"), tmp_path / "f.bin", max_bytes=500, progress=False)
        assert dest.read_bytes() == PAYLOAD[:500]
        assert server.requests == [("/f.bin", "bytes=0-499")]
        server.ignore_range = True  # a server without ranges: we stop reading at the cap
        dest = download(server.url("/f.bin"), tmp_path / "g.bin", max_bytes=500, progress=False)
        assert dest.read_bytes() == PAYLOAD[:500]


def test_unannounced_length_reads_to_the_end_or_the_cap(serve, tmp_path):
    with serve({"/f.bin": PAYLOAD}) as server:
        server.omit_length = server.ignore_range = True
        whole = download(server.url("/f.bin"), tmp_path / "a", max_bytes=10**6, progress=False)
        assert whole.read_bytes() == PAYLOAD  # shorter than the cap: not an error
        head = download(server.url("/f.bin"), tmp_path / "b", max_bytes=100, progress=False)
        assert head.read_bytes() == PAYLOAD[:100]


def test_http_error_is_a_download_error(serve, tmp_path):
    with serve({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(server.url("/missing"), tmp_path / "f", progress=False)


def test_closed_port_fails_fast_with_a_readable_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError, match="could not connect to 127.0.0.1"):
        download(closed_port_url(), tmp_path / "f", progress=False)
    assert time.monotonic() - start < 5


def test_silent_server_times_out(tmp_path):
    # A socket that listens but never answers: connecting works, the response never comes.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/f"
        with pytest.raises(DownloadError, match="no answer within 0.2 s"):
            download(url, tmp_path / "f", timeout=0.2, progress=False)


def test_download_model_fetches_the_four_files_once(serve, tmp_path, monkeypatch):
    files = {f"/gpt2/resolve/main/{name}": name.encode() * 10 for name in gpt_download.MODEL_FILES}
    with serve(files) as server:
        monkeypatch.setattr(gpt_download, "HF_URL", server.url("/{model}/resolve/main/{file}"))
        directory = gpt_download.download_model("gpt2", tmp_path / "gpt2", progress=False)
        assert sorted(p.name for p in directory.iterdir()) == sorted(gpt_download.MODEL_FILES)
        assert (directory / "vocab.json").read_bytes() == b"vocab.json" * 10
        count = len(server.requests)
        gpt_download.download_model("gpt2", directory, progress=False)
        assert len(server.requests) == count  # everything was already there


def test_cli_offline_names_the_files_and_the_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpt_download, "HF_URL", closed_port_url("/{model}/{file}"))
    (tmp_path / "config.json").write_text("{}")
    code = gpt_download.main(["gpt2-medium", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "model.safetensors, vocab.json, merges.txt" in err and str(tmp_path) in err
    assert "Traceback" not in err


def test_cli_default_directory_is_in_the_cache(tmp_path, monkeypatch, serve, capsys):
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path))
    files = {f"/gpt2-xl/{name}": b"x" for name in gpt_download.MODEL_FILES}
    with serve(files) as server:
        monkeypatch.setattr(gpt_download, "HF_URL", server.url("/{model}/{file}"))
        assert gpt_download.main(["gpt2-xl"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "gpt2-xl")


def test_unknown_model_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gpt3'"):
        gpt_download.download_model("gpt3", tmp_path)
