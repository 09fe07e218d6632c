"""A minimal Chrome DevTools Protocol client for the browser tests, standard library only.

Chromium is started with --remote-debugging-pipe: it reads commands from its file descriptor 3
and writes answers and events to descriptor 4, each one JSON message ended by a NUL byte. No
port, no websocket, nothing else on the machine can talk to it. Commands for a page carry the
`sessionId` of a flat attachment to that page's target (Target.attachToTarget, flatten=True).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# Without the background-networking flags Chromium reaches for Google's services at start-up;
# on a closed network those connections are refused, and they are no part of the test anyway.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,700", "--remote-debugging-pipe"]


class CDPError(RuntimeError):
    """Chromium answered a command with an error, did not answer in time, or exited."""


def find_chromium() -> str | None:
    """The Chromium executable on PATH (Debian's `chromium` package), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with a fresh profile; `close()` ends it and removes the profile."""

    def __init__(self, executable: str):
        self.profile = tempfile.TemporaryDirectory(prefix="cdp-profile-")
        to_chromium_read, self._to_chromium = os.pipe()
        self._from_chromium, from_chromium_write = os.pipe()
        self._log = open(Path(self.profile.name) / "chromium.log", "wb")
        # bash places our pipe ends at the descriptors Chromium expects (3 and 4), which Popen
        # cannot do by itself (nor can dash, Debian's sh, with descriptors above 9).
        redirect = f'exec "$@" 3<&{to_chromium_read} 4>&{from_chromium_write}'
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", redirect, "bash", executable, *FLAGS,
             f"--user-data-dir={self.profile.name}", "about:blank"],
            pass_fds=(to_chromium_read, from_chromium_write), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=self._log, start_new_session=True)
        os.close(to_chromium_read)
        os.close(from_chromium_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []    # everything Chromium sent unasked, in order

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 10.0) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_chromium, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline - time.monotonic())
            if answer is None:
                raise CDPError(f"{method}: no answer in {timeout} s{self._log_tail()}")
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CDPError(f"{method}: {answer['error'].get('message')}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method: str, session: str | None, since: int = 0,
                   timeout: float = 10.0) -> dict[str, Any]:
        """The first `method` event for `session` at or after index `since` of `events`."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            since = len(self.events)
            message = self._receive(deadline - time.monotonic())
            if message is None:
                raise CDPError(f"no {method} event in {timeout} s{self._log_tail()}")
            self.events.append(message)

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None if none is complete within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_chromium], [], [], remaining)[0]:
                return None
            piece = os.read(self._from_chromium, 1 << 16)
            if not piece:
                raise CDPError(f"Chromium exited (status {self.process.poll()})"
                               f"{self._log_tail()}")
            self._buffer += piece
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        self._log.flush()
        tail = (Path(self.profile.name) / "chromium.log").read_text(errors="replace")[-2000:]
        return f"; Chromium's log ends with:\n{tail}" if tail.strip() else ""

    def new_page(self) -> "Page":
        """The page Chromium opened at start-up, attached to and with its events on."""
        pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        session = self.call("Target.attachToTarget",
                            {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (CDPError, OSError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:    # our own process group, started above
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        os.close(self._to_chromium)
        os.close(self._from_chromium)
        self._log.close()
        self.profile.cleanup()


class Page:
    """One tab: evaluate JavaScript, click and type as a user does, wait, take screenshots."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        return self.browser.call(method, params, self.session, timeout)

    def navigate(self, url: str, timeout: float = 10.0) -> None:
        """Open `url` and wait for its load event (the new document's, not the old one's)."""
        since = len(self.browser.events)
        self.call("Page.navigate", {"url": url})
        self.browser.wait_event("Page.loadEventFired", self.session, since, timeout)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression!r} threw: "
                           f"{details.get('exception', {}).get('description', details['text'])}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll until `expression` is truthy; return its value. (A DOM node comes back as {},
        which is falsy here: test for it with `!== null`.)"""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"still false after {timeout} s: {expression}")
            time.sleep(0.02)

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            f".getBoundingClientRect(); return [r.x + r.width / 2, "
                            f"r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})

    def type(self, text: str) -> None:
        """Text typed into the focused element (as an input method would commit it)."""
        self.call("Input.insertText", {"text": text})

    def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "text": "\r", **key})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **key})

    def screenshot(self, path: str | os.PathLike) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))
