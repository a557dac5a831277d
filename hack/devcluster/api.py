"""The few API calls the launcher itself needs, over stdlib HTTPS with the admin token.

The launcher must not depend on the `kubernetes` Python package (hack/cluster.py runs with
any python3); tests use the real client on the kubeconfig instead.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Api:
    """A bearer-token JSON client for one API server."""

    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self.server = server
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """Send one request; return (HTTP status or 0 if unreachable, JSON body or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            return 0, str(err)  # not listening (yet)
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def create(self, path: str, obj: dict[str, Any]) -> None:
        """POST obj; an AlreadyExists answer counts as success."""
        status, body = self.request("POST", path, obj)
        if status not in (200, 201, 409):
            raise RuntimeError(f"POST {path}: HTTP {status}: {body}")


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True when url answers 200 (no authentication; health endpoints allow anyone)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def insecure_context() -> ssl.SSLContext:
    """TLS without verification, for the self-signed health ports of the controllers."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_for(
    what: str, check: Callable[[], bool], deadline: float, on_fail: Callable[[], str] = lambda: ""
) -> None:
    """Poll check() every 0.2 s until it is true; raise TimeoutError at the monotonic deadline."""
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}\n{on_fail()}".rstrip())
        time.sleep(0.2)
