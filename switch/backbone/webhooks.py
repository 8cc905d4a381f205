"""Lifecycle events POSTed to a webhook, signed, through the outbox like any sink.

Each event is one ``POST`` of its JSON to ``webhook_url`` with
``X-Voxswitch-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed by
``webhook_secret`` (the receiver recomputes it, and rejects old ``t`` against replays),
and ``X-Voxswitch-Event-Id`` for deduplication. A 2xx is delivered. A connection
failure, a timeout, 408, 429 or 5xx raises: the courier keeps the event in the spool
and retries with backoff, so a receiver that is down for a while gets everything, in
order, when it returns. Any other 4xx is the receiver refusing this event for good:
it is written to the dead-letter file (kept and counted, not dropped) and delivery
goes on with the next.

An event that carries ``webhook_url`` (a call placed with its own) goes there too,
after the node-wide URL (if any); that field is not part of the body posted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from switch.backbone.sinks import Event

log = logging.getLogger("voxswitch.webhooks")

SIGNATURE_HEADER = "X-Voxswitch-Signature"
EVENT_ID_HEADER = "X-Voxswitch-Event-Id"
RETRYABLE = {408, 425, 429}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does (and the tests): the signature matches and is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected, header) and abs(now - timestamp) <= tolerance_s


class WebhookSink:
    name = "webhook"
    batch = 500

    def __init__(self, url: str, secret: str, dead_letters: str | Path) -> None:
        self.url = url
        self.secret = secret
        self.dead_letters = Path(dead_letters)
        self.rejected = 0
        self._client: httpx.AsyncClient | None = None

    async def deliver(self, events: list[Event]) -> None:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(timeout=10.0)
        for event in events:
            own = event.get("webhook_url")
            body = {k: v for k, v in event.items() if k != "webhook_url"} if own else event
            for url in (self.url, own):
                if url:
                    await self._post(client, url, body)

    async def _post(self, client: httpx.AsyncClient, url: str, event: Event) -> None:
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
            EVENT_ID_HEADER: str(event["event_id"]),
        }
        response = await client.post(url, content=body, headers=headers)
        status = response.status_code
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRYABLE:
            raise ConnectionError(f"webhook answered {status}")
        self.rejected += 1
        log.warning("webhook refused event %s (%d): kept in %s",
                    event["event_id"], status, self.dead_letters)  # fmt: skip
        record: dict[str, Any] = {"status": status, "url": url, "event": event, "at": time.time()}
        with self.dead_letters.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
