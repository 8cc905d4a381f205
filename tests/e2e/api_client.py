"""A tiny client of a test node's control API (urllib: what the tests send is plain)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from loadtest.node import NodeProcess

ADMIN = "test-admin-key-0123456789"


def api(
    node: NodeProcess,
    method: str,
    path: str,
    key: str | None = ADMIN,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, JSON body); ``headers``, when given, is filled with the response's."""
    url = node.health_url.replace("/health", path)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            if headers is not None:
                headers.update(response.headers.items())
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        if headers is not None:
            headers.update(exc.headers.items())
        return exc.code, json.loads(exc.read() or b"null")
