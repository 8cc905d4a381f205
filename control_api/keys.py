"""API keys: random tokens, stored only as SHA-256 hashes, each with scopes.

A key looks like ``vsk_<id>_<secret>``; the file (``api_keys_file``) keeps its id,
name, scopes and the hash of the whole token, never the token. ``VOXSWITCH_API_KEY``
(the ``api_key`` setting) is a first admin key given by the operator; its hash is
kept in memory only. Tokens are 32 random bytes, so a plain hash is the right store
(nothing to brute-force); comparison is constant-time.

Scopes: ``calls:read``, ``calls:write``, ``recordings:read`` (a call's audio is
more sensitive than its record), ``reports:read`` (daily reports and ``/metrics``:
aggregates, no caller's data), ``kb:read``, ``kb:write``, ``admin`` (everything).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SCOPES = ("calls:read", "calls:write", "recordings:read", "reports:read", "kb:read", "kb:write",
          "admin")  # fmt: skip
PREFIX = "vsk_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    hash: str
    created_at: float

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeys:
    """The node's keys: the file's, plus the operator's admin key from the settings."""

    def __init__(self, path: str | Path | None, admin_token: str = "") -> None:
        self.path = Path(path) if path else None
        self._admin = (
            ApiKey("env", "VOXSWITCH_API_KEY", ("admin",), _hash(admin_token), 0.0)
            if admin_token
            else None
        )

    def _stored(self) -> list[ApiKey]:
        if self.path is None or not self.path.exists():
            return []
        data = json.loads(self.path.read_text())
        return [ApiKey(**{**k, "scopes": tuple(k["scopes"])}) for k in data.get("keys", [])]

    @property
    def configured(self) -> bool:
        return self._admin is not None or bool(self._stored())

    def verify(self, token: str) -> ApiKey | None:
        """The key this token is, or None."""
        digest = _hash(token)
        candidates = [self._admin] if self._admin is not None else []
        if token.startswith(PREFIX):
            key_id = token[len(PREFIX) :].split("_", 1)[0]
            candidates += [k for k in self._stored() if k.id == key_id]
        for key in candidates:
            if key is not None and hmac.compare_digest(key.hash, digest):
                return key
        return None

    def create(self, name: str, scopes: tuple[str, ...]) -> str:
        """Store a new key; returns its token (shown once, never stored)."""
        if self.path is None:
            raise ValueError("api_keys_file is not set")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {scopes}")
        key_id = secrets.token_hex(4)
        token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        keys = [*self._stored(), ApiKey(key_id, name, scopes, _hash(token), time.time())]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(k) for k in keys]}, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        return token
