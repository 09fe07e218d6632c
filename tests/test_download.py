"""The downloader (gpt.data.http) and `python -m gpt.download`, against a local server
(standing in for huggingface.co: its file listing API and its resolve/ URLs)."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest
from _http_server import FileServer, closed_port_url, serve  # noqa: F401  (serve is a fixture)

from gpt.data import hub
from gpt.data.http import DownloadError, download, partial_path
from gpt.io.checkpoint import resolve_checkpoint

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def no_token(monkeypatch):
    """Tests start without an access token, whatever the environment running them holds."""
    monkeypatch.delenv("HF_TOKEN", raising=False)


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


# -- python -m gpt.download ORG/NAME ---------------------------------------------------------------


def fake_hub(repo: str, files: dict[str, bytes], *, lfs=("model.safetensors",), gated=False,
             listed_size: dict[str, int] | None = None, listed_sha: dict[str, str] | None = None,
             revision: str = "main") -> dict[str, bytes]:
    """The URL paths of a hub that holds `files` in `repo`: the API's listing (sizes; sha256
    for the names in `lfs`, or as `listed_sha` says) and each file under resolve/."""
    siblings = []
    for name, data in files.items():
        entry = {"rfilename": name, "size": (listed_size or {}).get(name, len(data))}
        if name in lfs or name.endswith(".safetensors"):
            sha = (listed_sha or {}).get(name, hashlib.sha256(data).hexdigest())
            entry["lfs"] = {"sha256": sha, "size": len(data), "pointerSize": 134}
        siblings.append(entry)
    listing = {"id": repo, "gated": "manual" if gated else False, "siblings": siblings}
    paths = {f"/api/models/{repo}/revision/{revision}?blobs=true": json.dumps(listing).encode()}
    paths.update({f"/{repo}/resolve/{revision}/{name}": data for name, data in files.items()})
    return paths


SINGLE = {
    "config.json": b'{"model_type": "qwen3"}',
    "generation_config.json": b'{"eos_token_id": [1, 2]}',
    "model.safetensors": PAYLOAD,
    "tokenizer.json": b"{}" * 100,
    "tokenizer_config.json": b'{"chat_template": "x"}',
    "vocab.json": b"{}",
    "merges.txt": b"#version: 0.2\n",
    "README.md": b"# not needed",
    "pytorch_model.bin": b"not read here",
    "onnx/model.onnx": b"nor this",
}


def fetched(server) -> list[str]:
    return [path for path, _ in server.requests if "/resolve/" in path]


def test_download_model_fetches_the_model_files_once(serve, tmp_path, monkeypatch):
    with serve(fake_hub("Org/Model", SINGLE)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        directory = hub.download_model("Org/Model", tmp_path / "m", progress=False)
        wanted = ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "vocab.json", "merges.txt"]
        assert fetched(server) == [f"/Org/Model/resolve/main/{name}" for name in wanted]
        assert sorted(p.name for p in directory.iterdir()) == sorted(wanted)
        assert (directory / "model.safetensors").read_bytes() == PAYLOAD
        # A missing optional file (tokenizer.model here) is fine; nothing is fetched twice.
        hub.download_model("Org/Model", directory, progress=False)
        assert len(fetched(server)) == len(wanted)
        # A file that is not the listed size (changed upstream, or damaged) is fetched again.
        (directory / "vocab.json").write_bytes(b"{ }")
        hub.download_model("Org/Model", directory, progress=False)
        assert fetched(server)[len(wanted):] == ["/Org/Model/resolve/main/vocab.json"]
        assert (directory / "vocab.json").read_bytes() == b"{}"


def test_sharded_weights_come_with_every_shard_the_index_lists(serve, tmp_path, monkeypatch):
    index = {"metadata": {"total_size": 20},
             "weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors",
                            "c": "model-00001-of-00002.safetensors"}}
    files = {"config.json": b"{}", "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00002.safetensors": b"1" * 10,
             "model-00002-of-00002.safetensors": b"2" * 10,
             "consolidated.safetensors": b"another copy of the weights, not wanted"}
    with serve(fake_hub("Org/Big", files)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        directory = hub.download_model("Org/Big", tmp_path, progress=False)
        assert [p.rsplit("/", 1)[1] for p in fetched(server)] == [
            "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"]
    assert (directory / "model-00002-of-00002.safetensors").read_bytes() == b"2" * 10


def test_an_index_naming_a_file_the_repository_lacks_is_an_error(serve, tmp_path, monkeypatch):
    index = {"weight_map": {"a": "model-00001-of-00001.safetensors"}}
    files = {"config.json": b"{}", "model.safetensors.index.json": json.dumps(index).encode()}
    with serve(fake_hub("Org/Broken", files)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        with pytest.raises(DownloadError, match="lists model-00001-of-00001.safetensors, which "
                                                "the repository does not have"):
            hub.download_model("Org/Broken", tmp_path, progress=False)


def test_weights_are_checked_against_the_listed_sha256_and_size(serve, tmp_path, monkeypatch):
    with serve(fake_hub("Org/Model", SINGLE, listed_sha={"model.safetensors": "0" * 64})) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        with pytest.raises(DownloadError, match=f"expected {'0' * 64}"):
            hub.download_model("Org/Model", tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "model.safetensors").exists()
    with serve(fake_hub("Org/Model", SINGLE, listed_size={"tokenizer.json": 7})) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        with pytest.raises(DownloadError, match="got 200 bytes, but the hub lists 7"):
            hub.download_model("Org/Model", tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "tokenizer.json").exists()


def test_an_interrupted_download_says_what_is_missing_and_resumes(serve, tmp_path, monkeypatch):
    directory = tmp_path / "m"
    with serve(fake_hub("Org/Model", SINGLE)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        server.truncate_to = 3000                # every body stops after 3,000 bytes
        with pytest.raises(DownloadError) as failure:
            hub.download_model("Org/Model", directory, progress=False)
        message = str(failure.value)
        assert "3,000 of 10,240 bytes" in message and str(directory) in message
        assert "get model.safetensors, generation_config.json, tokenizer.json" in message
        assert "run the same command again to resume" in message
        server.truncate_to = None
        hub.download_model("Org/Model", directory, progress=False)
        weights = "/Org/Model/resolve/main/model.safetensors"
        assert (weights, "bytes=3000-") in server.requests
    assert (directory / "model.safetensors").read_bytes() == PAYLOAD


def test_a_gated_repository_is_explained_before_any_download(serve, tmp_path, monkeypatch):
    with serve(fake_hub("meta-llama/Llama-3.2-1B-Instruct", SINGLE, gated=True)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        with pytest.raises(DownloadError, match="is gated.*accept its license.*"
                                                "environment variable HF_TOKEN.*put them in"):
            hub.download_model("meta-llama/Llama-3.2-1B-Instruct", tmp_path, progress=False)
        assert fetched(server) == []


class GatedServer(FileServer):
    """A FileServer that records each request's Authorization header and, for the paths
    `protected` says, answers 401 (no token) or 403 (another token) unless it carries
    `Bearer <token>`. `redirects` maps a path to a URL to answer 302 with (after that check)."""

    def __init__(self, files: dict[str, bytes], token: str,
                 protected=lambda path: True, redirects: dict[str, str] | None = None) -> None:
        self.token, self.protected = token, protected
        self.redirects, self.authorizations = dict(redirects or {}), []
        super().__init__(files)

    def _handler(self):
        server, plain = self, super()._handler()

        class Handler(plain):
            def do_GET(self) -> None:
                sent = self.headers.get("Authorization")
                server.authorizations.append((self.path, sent))
                if server.protected(self.path) and sent != f"Bearer {server.token}":
                    self.send_error(401 if sent is None else 403)
                elif self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    super().do_GET()
        return Handler


def test_the_token_goes_to_the_hub_and_not_where_it_redirects(serve, tmp_path, monkeypatch,
                                                              capsys):
    secret = "hf_not_a_real_token_4213"
    repo = "meta-llama/Llama-3.2-1B-Instruct"
    weights = f"/{repo}/resolve/main/model.safetensors"
    # The hub sends the weights to its storage, another host (here: another port), which
    # needs no token: the signed URL is the permission.
    with serve({}), GatedServer({"/blob": PAYLOAD}, "", protected=lambda path: False) as storage, \
            GatedServer(fake_hub(repo, SINGLE, gated=True), secret,
                        redirects={weights: storage.url("/blob")}) as hub_server:
        monkeypatch.setenv("HF_ENDPOINT", hub_server.url(""))
        monkeypatch.setenv("HF_TOKEN", secret)
        directory = hub.download_model(repo, tmp_path, progress=True)
    assert (directory / "model.safetensors").read_bytes() == PAYLOAD
    assert {sent for _, sent in hub_server.authorizations} == {f"Bearer {secret}"}
    assert len(hub_server.authorizations) == 1 + 7       # the listing and each file
    assert storage.authorizations == [("/blob", None)]
    assert secret not in capsys.readouterr().err         # the progress bars name files only


def test_the_download_function_sends_the_headers_it_is_given(serve, tmp_path):
    with serve({}), GatedServer({"/f.bin": PAYLOAD}, "abc") as server:
        with pytest.raises(DownloadError, match="HTTP 401") as refused:
            download(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
        assert refused.value.status == 401
        download(server.url("/f.bin"), tmp_path / "f.bin", progress=False,
                 headers={"Authorization": "Bearer abc"})
    assert server.authorizations == [("/f.bin", None), ("/f.bin", "Bearer abc")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


NO_TOKEN_ADVICE = ("accept its license at .*, then create an access token at "
                   "https://huggingface.co/settings/tokens and set it in the environment "
                   "variable HF_TOKEN")
WRONG_TOKEN_ADVICE = ("the hub refused the token in HF_TOKEN: accept the license at .* with "
                      "the account the token belongs to")


@pytest.mark.parametrize("token, status, advice", [(None, 401, NO_TOKEN_ADVICE),
                                                   ("hf_wrong_token_99", 403, WRONG_TOKEN_ADVICE)])
def test_a_refused_listing_says_the_repository_is_gated(serve, tmp_path, monkeypatch, token,
                                                        status, advice):
    repo = "Org/Private-Model"
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)
    with serve({}), GatedServer(fake_hub(repo, SINGLE), "the right one") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        with pytest.raises(DownloadError, match=f"{repo} is gated \\(or private\\), and its "
                                                f"files need an access token \\(HTTP {status}\\): "
                                                f"{advice}") as refused:
            hub.download_model(repo, tmp_path, progress=False)
    assert refused.value.status == status
    assert token is None or token not in str(refused.value)


def test_a_refused_file_says_so_and_what_to_fetch_by_hand(serve, tmp_path, monkeypatch, capsys):
    repo = "Org/Gated-Files"                 # the listing is public, the files are not
    with serve({}), GatedServer(fake_hub(repo, SINGLE), "secret",
                                protected=lambda path: "/resolve/" in path) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        assert hub.main([repo, "--dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert f"error: {repo} is gated (or private)" in err and "(HTTP 401)" in err
        assert "HF_TOKEN" in err and "get config.json, model.safetensors" in err
        monkeypatch.setenv("HF_TOKEN", "secret")
        assert hub.main([repo, "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "model.safetensors").read_bytes() == PAYLOAD


@pytest.mark.parametrize("files, match", [
    ({"model.safetensors": b"x"}, "has no config.json"),
    ({"config.json": b"{}", "pytorch_model.bin": b"x"},
     r"neither model.safetensors nor model.safetensors.index.json \(its weights: "
     r"pytorch_model.bin\)"),
])
def test_a_repository_without_what_we_load_is_refused(serve, tmp_path, monkeypatch, files, match):
    with serve(fake_hub("Org/Odd", files)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        with pytest.raises(DownloadError, match=match):
            hub.download_model("Org/Odd", tmp_path, progress=False)
        assert fetched(server) == []


def test_cli_offline_names_the_files_and_the_directory(tmp_path, monkeypatch, capsys):
    nobody = closed_port_url("")
    monkeypatch.setenv("HF_ENDPOINT", nobody)
    code = hub.main(["Qwen/Qwen3-0.6B", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot list the files of Qwen/Qwen3-0.6B")
    assert "config.json, model.safetensors (or model.safetensors.index.json" in err
    assert "tokenizer.json" in err and "put them in " + str(tmp_path) in err
    assert f"from {nobody}/Qwen/Qwen3-0.6B/tree/main" in err
    assert "Traceback" not in err


def test_offline_a_directory_that_holds_a_model_is_used_as_it_is(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url(""))
    (tmp_path / "config.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"1")
    with pytest.raises(DownloadError, match="cannot list the files"):     # a shard is missing
        hub.download_model("Org/Model", tmp_path, progress=False)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert hub.download_model("Org/Model", tmp_path, progress=False) == tmp_path
    assert "using the files already in" in capsys.readouterr().err


def test_cli_default_directory_is_where_chat_looks(tmp_path, monkeypatch, serve, capsys):
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path))
    with serve(fake_hub("HuggingFaceTB/SmolLM2-360M-Instruct", SINGLE)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        assert hub.main(["HuggingFaceTB/SmolLM2-360M-Instruct"]) == 0
    directory = tmp_path / "models" / "HuggingFaceTB" / "SmolLM2-360M-Instruct"
    assert capsys.readouterr().out.strip() == str(directory)
    assert resolve_checkpoint("HuggingFaceTB/SmolLM2-360M-Instruct") == directory


def test_gpt2_short_names_still_work(tmp_path, monkeypatch, serve):
    files = {name: name.encode() for name in ("config.json", "model.safetensors", "vocab.json",
                                              "merges.txt")}
    with serve(fake_hub("gpt2", files)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        directory = hub.download_model("gpt2", tmp_path / "gpt2", progress=False)
    assert sorted(p.name for p in directory.iterdir()) == sorted(files)


@pytest.mark.parametrize("name", ["", "../etc", "a/b/c", "Org/", ".hidden", "a b"])
def test_a_string_that_is_no_repository_id_is_refused(tmp_path, name, capsys):
    with pytest.raises(ValueError, match="is not a Hugging Face repository id"):
        hub.download_model(name, tmp_path)
    assert hub.main([name, "--dir", str(tmp_path)]) == 1
    assert "is not a Hugging Face repository id" in capsys.readouterr().err
