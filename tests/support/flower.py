"""Flower's HTTP API as a client sees it: status and body of a GET, and the nodes Flower lists."""
from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request


def get(url: str, credentials: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """HTTP status and body of a GET, with basic auth when credentials are given (no proxy)."""
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def listed_workers(url: str, credentials: tuple[str, str], nodes: list[str],
                   within: float = 60) -> tuple[int, list[str], bytes]:
    """Status, the nodes missing and the body of /api/workers?refresh=1, asked until none is missing.

    refresh=1 asks the nodes anew, within Flower's own inspect timeout: nodes that were just restarted, or a
    busy machine, may miss one round. Bounded retries.
    """
    deadline = time.monotonic() + within
    while True:
        code, body = get(f"{url}/api/workers?refresh=1", credentials)
        missing = [node for node in nodes if node.encode() not in body]
        if code == 200 and not missing or time.monotonic() > deadline:
            return code, missing, body
        time.sleep(2)
