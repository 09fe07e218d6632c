"""The one HTTP downloader of the project: resumable, size-checked, sha256-checked, atomic.

Both the named corpora (`gpt.data.corpora`) and the GPT-2 weights (`gpt.data.hub`) come through
`download()`. How it works:

1. Bytes go into `<dest>.part`, never straight into `dest`. If a `.part` file is already
   there (an earlier run was interrupted), we ask the server only for the rest with an HTTP
   `Range: bytes=<have>-` header and append. A server that answers `206 Partial Content` is
   resuming; one that answers `200 OK` ignores ranges, so we start again from byte 0.
2. The number of bytes received is compared with what the server announced
   (`Content-Length`, or the `Content-Range` of a resumed answer). A connection that drops
   early leaves the `.part` file in place so the next run resumes it.
3. If a sha256 is known, the finished file must match it; otherwise it is deleted.
4. Only then is `.part` renamed to `dest`: a rename is atomic, so `dest` existing means
   `dest` is complete.

Failures never surface as a traceback from deep inside `urllib`: they become a
`DownloadError` whose message names the URL and the reason (and whose `status` is the HTTP
status, when the server answered with one). The connect timeout is short (`DEFAULT_TIMEOUT`), so
a machine without network fails in seconds rather than minutes.

Extra request `headers` (an access token: `Authorization: Bearer ...`) go to the URL's own host
only. A server that redirects elsewhere (the hub sends file downloads to its storage servers,
with a signed URL that needs no token) does not get the Authorization header: urllib would
forward it to any host, so the redirect handler here drops it when the host changes. Header
values never appear in a message.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from gpt.errors import GPTError
from gpt.io.files import sha256_file

__all__ = ["DEFAULT_TIMEOUT", "DownloadError", "download", "partial_path"]

DEFAULT_TIMEOUT = 10.0  # seconds to connect, and at most between two pieces of data
_CHUNK = 1 << 20
_USER_AGENT = "deep-understanding/0.1 (Python urllib)"


class DownloadError(GPTError):
    """A file could not be downloaded. The message names the URL and what went wrong; `status`
    is the HTTP status the server answered with (404, 401, ...), None for any other failure."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _StartOver(Exception):
    """The `.part` file cannot be continued (stale or longer than the remote file)."""


def partial_path(dest: str | os.PathLike) -> Path:
    """Where `download(url, dest)` keeps the bytes received so far: `<dest>.part`."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    desc: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """Download `url` to `dest` (resuming `<dest>.part` if present) and return `dest`.

    sha256:    if given, the finished file must have this hex digest or it is deleted.
    max_bytes: fetch only the first `max_bytes` bytes (an HTTP range request); for taking a
               sample of a file too large to want whole.
    timeout:   seconds allowed to connect and to wait for each piece of data.
    progress:  show a tqdm progress bar on stderr.
    headers:   extra request headers, e.g. {"Authorization": "Bearer ..."}; sent to the URL's
               host, and to a host it redirects to only if that is the same host.

    Raises `DownloadError` on any network, HTTP, size or checksum failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    for attempt in (1, 2):
        try:
            _fetch_into(url, part, max_bytes, timeout, progress, desc or dest.name,
                        dict(headers or {}))
            break
        except _StartOver:
            part.unlink(missing_ok=True)
            if attempt == 2:
                raise DownloadError(
                    f"{url}: the server's answers to range requests do not add up; try again"
                ) from None
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"{url}: the downloaded file has sha256 {actual}, expected {sha256}; "
                "it was deleted (the source may have changed, or the transfer was corrupted)"
            )
    os.replace(part, dest)
    return dest


def _fetch_into(
    url: str, part: Path, max_bytes: int | None, timeout: float, progress: bool, desc: str,
    extra_headers: dict[str, str],
) -> None:
    """Append the missing bytes of `url` to `part`; raise `_StartOver` if `part` is unusable."""
    have = part.stat().st_size if part.exists() else 0
    if max_bytes is not None and have >= max_bytes:
        if have > max_bytes:
            raise _StartOver
        return
    headers = {"User-Agent": _USER_AGENT, **extra_headers}
    if have or max_bytes is not None:
        last = "" if max_bytes is None else str(max_bytes - 1)
        headers["Range"] = f"bytes={have}-{last}"
    try:
        response = _open(url, headers, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            # "Range Not Satisfiable": nothing exists past `have`. Either the partial file is
            # in fact complete, or it is longer than the remote file and must be redone.
            if _content_range(err.headers.get("Content-Range", ""))[2] == have:
                return
            raise _StartOver from None
        raise DownloadError(f"{url}: the server answered HTTP {err.code} {err.reason}",
                            status=err.code) from None

    with response:
        if response.status == 206:
            start, end, _ = _content_range(response.headers.get("Content-Range", ""))
            if start != have:
                raise _StartOver
            expected: int | None = end + 1
            mode = "ab"
        else:
            # A plain 200 means the server ignored our Range header and sends everything.
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            if expected is not None and max_bytes is not None:
                expected = min(expected, max_bytes)
        # Without an announced length we read to the end, or up to the cap.
        limit = expected if expected is not None else max_bytes
        received = _stream(response, part, mode, have, limit, progress, desc, url)

    if expected is not None and received != expected:
        raise DownloadError(
            f"{url}: the connection closed after {received:,} of {expected:,} bytes. "
            f"The partial download is kept in {part}; run again to resume it."
        )


def _open(url: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    """urlopen, with every way of not reaching the server turned into a `DownloadError`."""
    host = urllib.parse.urlsplit(url).hostname or url
    # A fresh opener reads the proxy environment variables at call time, not import time.
    opener = urllib.request.build_opener(_SameHostCredentials)
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as err:
        reason = err.reason
    except (OSError, http.client.HTTPException, ValueError) as err:
        reason = err
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        reason = f"no answer within {timeout:g} s"
    raise DownloadError(f"could not connect to {host} to download {url} ({reason})")


class _SameHostCredentials(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, except that the Authorization header is not carried to
    another host (urllib copies every header but the body's to wherever a server points)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in [n for n in new.headers if n.lower() == "authorization"]:
                del new.headers[name]
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.hostname, parts.port


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    mode: str,
    have: int,
    limit: int | None,
    progress: bool,
    desc: str,
    url: str,
) -> int:
    """Copy the response body into `part`, stopping at `limit` bytes; return the file's size."""
    received = have
    bar = tqdm(
        total=limit, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
        desc=desc, disable=not progress, file=sys.stderr,
    )
    try:
        with open(part, mode) as f, bar:
            while limit is None or received < limit:
                want = _CHUNK if limit is None else min(_CHUNK, limit - received)
                chunk = response.read(want)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(
            f"{url}: the download was interrupted after {received:,} bytes ({err}). "
            f"The partial download is kept in {part}; run again to resume it."
        ) from None
    return received


def _content_range(value: str) -> tuple[int, int, int | None]:
    """Parse `bytes <start>-<end>/<total>` (or `bytes */<total>`) into (start, end, total)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value)
    if not match:
        return -1, -1, None
    start, end, total = match.groups()
    return (
        int(start) if start else -1,
        int(end) if end else -1,
        int(total) if total and total != "*" else None,
    )
