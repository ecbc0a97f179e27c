"""A headless Chromium (Debian's chromium) driven over the DevTools protocol on a pipe, as a user's browser."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    """One headless Chromium with one page; HTTP basic auth challenges answered with the given credentials.

    The credentials go over the DevTools pipe only: never into a URL or Chromium's command line.
    """

    def __init__(self, username: str | None = None, password: str | None = None, timeout: float = 60):
        self._credentials = (username, password)
        self._timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="fleet-test-chromium-")
        to_browser, self._send_fd = os.pipe()
        self._recv_fd, from_browser = os.pipe()

        # bash (dash takes no fd above 9) gives Chromium our pipe ends as its fd 3 (commands) and fd 4 (replies).
        self._process = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', CHROMIUM,
             "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--no-proxy-server", f"--user-data-dir={self._profile}", "--window-size=1400,1000",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.statuses: dict[str, int] = {}  # URL -> HTTP status of the responses seen
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Fetch.enable", {"handleAuthRequests": True, "patterns": [{"urlPattern": "*"}]})
        self.call("Network.enable")
        self.call("Page.enable")

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End Chromium and remove its profile."""
        self._process.kill()
        self._process.wait(timeout=30)
        for fd in (self._send_fd, self._recv_fd):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # The protocol: JSON messages separated by NUL bytes.

    def _message(self) -> dict:
        deadline = time.monotonic() + self._timeout
        while b"\0" not in self._buffer:
            assert time.monotonic() < deadline, "Chromium sent nothing within the timeout"
            chunk = os.read(self._recv_fd, 65536)
            assert chunk, f"Chromium closed its DevTools pipe (exit status {self._process.poll()})"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _send(self, method: str, params: dict, session: str | None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self._send(method, params or {}, session)
        while True:
            message = self._message()
            if message.get("id") == wanted:
                assert "error" not in message, f"{method}: {message['error']}"
                return message.get("result", {})
            if "method" in message:
                self._event(message)

    def call(self, method: str, params: dict | None = None) -> dict:
        """A DevTools command on the page; the page's events meanwhile are handled."""
        return self._call(method, params, self._session)

    def _event(self, message: dict) -> None:
        params, session = message.get("params", {}), message.get("sessionId")
        if message["method"] == "Fetch.authRequired":
            username, password = self._credentials
            response = ({"response": "ProvideCredentials", "username": username, "password": password}
                        if username is not None else {"response": "CancelAuth"})
            self._send("Fetch.continueWithAuth", {"requestId": params["requestId"], "authChallengeResponse": response},
                       session)
        elif message["method"] == "Fetch.requestPaused":
            self._send("Fetch.continueRequest", {"requestId": params["requestId"]}, session)
        elif message["method"] == "Network.responseReceived":
            self.statuses[params["response"]["url"]] = params["response"]["status"]

    # What a test does with the page.

    def open(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + self._timeout
        while True:
            message = self._message()
            if message.get("method") == "Page.loadEventFired":
                return
            if "method" in message:
                self._event(message)
            assert time.monotonic() < deadline, f"{url} did not load within {self._timeout} s"

    def text(self) -> str:
        """The page's visible text."""
        result = self.call("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                                "returnByValue": True})
        return result["result"].get("value", "")

    def wait_for_text(self, fragments: list[str], within: float = 30) -> str:
        """The page's text, white space removed (a table cell may wrap a name), once it holds every fragment.

        A bounded wait: the last text when the time is up.
        """
        deadline = time.monotonic() + within
        while True:
            text = "".join(self.text().split())
            if all(f in text for f in fragments) or time.monotonic() > deadline:
                return text
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the page."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
