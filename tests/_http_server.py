"""A small local HTTP server for download tests: range requests, and ways to misbehave.

The project's downloader cannot reach the internet in CI, so tests point it at this server
on 127.0.0.1, which serves byte strings from a dict and records every request it gets.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from typing import Iterator

import pytest


class FileServer:
    """Serve `files` (URL path -> bytes) on a free local port, honouring `Range: bytes=a-b`.

    Knobs a test may turn while the server runs:
      ignore_range: answer 200 with the whole file even when a range is asked for;
      truncate_to:  announce the full Content-Length but send only this many body bytes;
      omit_length:  send no Content-Length (the body ends when the connection closes).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False
        self.truncate_to: int | None = None
        self.omit_length = False
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                asked = self.headers.get("Range")
                server.requests.append((self.path, asked))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", asked or "")
                if match and not server.ignore_range:
                    start = int(match[1])
                    end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = data[start : end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                if not server.omit_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_to is not None:
                    body = body[: server.truncate_to]
                self.wfile.write(body)

        return Handler


def closed_port_url(path: str = "/file") -> str:
    """A URL on a local port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """`with serve({"/a.txt": b"..."}) as server:` starts a FileServer; proxies are bypassed."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield FileServer
