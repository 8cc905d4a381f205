"""The API's front gate (an ASGI layer before the routes): the key is checked before
a byte of the body is read, and a body is capped as it streams in.

FastAPI reads a request's body before it resolves the route's dependencies, so a key
checked only there lets anyone make the node read and parse a large body. Here a
request to a keyed path without a valid key is a 401 at once, and a body that passes
its limit (by ``Content-Length``, or counted as a chunked body streams) is a 413 with
nothing more read. Both answers close the connection rather than drain the body. The
route's own dependency still checks the key's scope (403); it finds the key here.

Open without a key: the ``public_paths`` (setting ``api_public_paths``, default
``/health``; ``/docs`` or ``/redoc`` open ``/openapi.json`` too), and the console's
static pages (``/`` and ``/console/``: they hold no data, and every call they make
carries the key the user typed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_api.keys import ApiKey, ApiKeys

MAX_BODY_BYTES = 64 * 1024
BULK_BODY_BYTES = 16 * 1024 * 1024  # a campaign's numbers: 100,000 with variables
ALWAYS_OPEN = ("/", "/console")
KEY_STATE = "api_key"  # where in the request's state the gate leaves the verified key


def parse_public_paths(text: str) -> frozenset[str]:
    """``"/health,/metrics,/docs"`` → the open paths; raises ValueError on a bad one."""
    paths = {p.strip() for p in text.split(",") if p.strip()}
    for path in paths:
        if not path.startswith("/") or any(c.isspace() or c in "?#*" for c in path):
            raise ValueError(f"{path!r} is not a path (e.g. /metrics)")
    if paths & {"/docs", "/redoc"}:
        paths |= {"/openapi.json", "/docs/oauth2-redirect"}
    return frozenset(paths)


def body_limit(path: str) -> int:
    """Bytes a request's body may have: bulk uploads (campaigns, knowledge) get more."""
    return BULK_BODY_BYTES if path == "/v1/campaigns" or path.endswith("/kb") else MAX_BODY_BYTES


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def unauthorized_detail(keys: ApiKeys) -> str:
    if not keys.configured:
        return "no API keys: set VOXSWITCH_API_KEY or run 'voxswitch apikey create'"
    return "missing or invalid API key (Authorization: Bearer <key>)"


class BodyRefused(HTTPException):
    """The body passed its limit: a 413, raised from ``receive`` so the route stops."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", {"Connection": "close"})


class ApiGate:
    """Key before body, body capped. ``keys`` None: no key is asked (tests, no API keys
    wired)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys | None,
        public_paths: frozenset[str] = frozenset({"/health"}),
        limit_of: Callable[[str], int] = body_limit,
    ) -> None:
        self.app = app
        self.keys = keys
        self.public_paths = public_paths
        self.limit_of = limit_of

    def is_open(self, path: str) -> bool:
        return (
            path in self.public_paths
            or path == "/"
            or path == "/console"
            or path.startswith("/console/")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.keys is not None and not self.is_open(path):
            key = self._verified(scope)
            if key is None:
                await self._refuse(scope, send, 401, unauthorized_detail(self.keys),
                                   {"WWW-Authenticate": "Bearer"})  # fmt: skip
                return
            scope.setdefault("state", {})[KEY_STATE] = key
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(path)
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, send, 413, f"request body over {limit} bytes")
            return
        if length in (None, "0") and _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body to count
            return
        await self._capped(scope, receive, send, limit)

    def _verified(self, scope: Scope) -> ApiKey | None:
        token = bearer_token(scope)
        return self.keys.verify(token) if self.keys is not None and token else None

    async def _capped(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        read = 0
        started = read_all = False

        async def counted() -> Message:
            nonlocal read, read_all
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    raise BodyRefused(limit)
                read_all = not message.get("more_body", False)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not read_all:  # answered before its body was read: close, not drain
                    headers = [h for h in message.get("headers", []) if h[0] != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyRefused as exc:  # a route that let it escape (FastAPI's own answer it)
            if started:
                raise
            await self._refuse(scope, send, 413, exc.detail)

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        body = json.dumps({"detail": detail}).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if _header(scope, b"content-length") not in (None, "0") or _header(
            scope, b"transfer-encoding"
        ):
            raw.append((b"connection", b"close"))  # its body unread: do not drain it
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1")).strip()
    return None


def key_of(state: Any) -> ApiKey | None:
    """The key the gate verified for this request, if it did."""
    key = getattr(state, KEY_STATE, None)
    return key if isinstance(key, ApiKey) else None
