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

Every URL's host goes through the SSRF policy (``switch.guard.targets``) when it is
given (``check_webhook_url``, the API's 422) and again at each POST: the name is
resolved here, every address checked, and the connection made to a checked address
(the URL rewritten to it, ``Host`` and TLS SNI/verification kept on the name), so a
name re-pointed at a private address after it was accepted (DNS rebinding) reaches
nothing. A refused target is no outage: its event is dead-lettered and counted
(``refused``), and delivery goes on. No proxy from the environment, no redirects,
and the answer's body is never read (a receiver cannot make the node buffer it).
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
from switch.guard.targets import (
    Resolver,
    TargetPolicy,
    resolve_checked,
    system_resolve,
)

log = logging.getLogger("voxswitch.webhooks")

SIGNATURE_HEADER = "X-Voxswitch-Signature"
EVENT_ID_HEADER = "X-Voxswitch-Event-Id"
RETRYABLE = {408, 425, 429}
MAX_TRIED = 4  # addresses of one name tried per POST (each bounded by the timeout)
MAX_WARNED = 1000  # refused URLs remembered so each is logged once


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


def webhook_target(url: str) -> tuple[str, int]:
    """The host (IDNA-encoded, IPv6 unbracketed) and port a webhook URL connects to,
    read by the parser that sends; ValueError when it is no http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError("must be an http:// or https:// URL with a host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.raw_host.decode("ascii"), port


def webhook_url_refusal(url: str, policy: TargetPolicy) -> str | None:
    """Why ``url`` may not be a webhook, judging its host as written (no lookup: for
    settings read at start); None when only its name's addresses can tell."""
    try:
        host, _ = webhook_target(url)
        policy.check_host(host)
    except ValueError as exc:  # TargetRefused is one
        return str(exc)
    return None


async def check_webhook_url(
    url: str, policy: TargetPolicy, resolve: Resolver = system_resolve
) -> str | None:
    """Why ``url`` may not be a webhook (its host, or an address its name resolves to
    now, is refused by ``policy``), or None. A name that does not resolve now is let
    through: each POST resolves and checks it again."""
    try:
        host, port = webhook_target(url)
        await resolve_checked(policy, host, port, resolve)
    except ValueError as exc:  # TargetRefused is one
        return str(exc)
    except OSError:
        return None
    return None


class WebhookSink:
    name = "webhook"
    batch = 500

    def __init__(
        self,
        url: str,
        secret: str,
        dead_letters: str | Path,
        *,
        targets: TargetPolicy | None = None,
        resolve: Resolver = system_resolve,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: a mock receiver
    ) -> None:
        self.url = url
        self.secret = secret
        self.dead_letters = Path(dead_letters)
        self.targets = targets if targets is not None else TargetPolicy()
        self.resolve = resolve
        self.timeout_s = timeout_s
        self.transport = transport
        self.rejected = 0  # events kept aside: refused by the receiver or the policy
        self.refused = 0  # of which the target was refused by the policy
        self._client: httpx.AsyncClient | None = None
        self._warned: set[str] = set()  # refused URLs logged already (once each)

    async def deliver(self, events: list[Event]) -> None:
        client = self._client
        if client is None:
            # trust_env=False: no proxy from the environment (the connection must go to
            # the address checked); httpx follows no redirect unless asked.
            client = self._client = httpx.AsyncClient(
                timeout=self.timeout_s, trust_env=False, transport=self.transport
            )
        for event in events:
            own = event.get("webhook_url")
            body = {k: v for k, v in event.items() if k != "webhook_url"} if own else event
            for url in (self.url, own):
                if url:
                    await self._post(client, url, body)

    async def _post(self, client: httpx.AsyncClient, url: str, event: Event) -> None:
        try:
            host, port = webhook_target(url)
            addresses = await resolve_checked(self.targets, host, port, self.resolve)
        except ValueError as exc:  # TargetRefused too: this URL gets nothing, ever
            self.refused += 1
            if url not in self._warned and len(self._warned) < MAX_WARNED:
                self._warned.add(url)
                log.warning("webhook %s refused (%s): its events are kept in %s",
                            url, exc, self.dead_letters)  # fmt: skip
            self._dead_letter({"status": None, "refused": str(exc), "url": url, "event": event})
            return
        except OSError as exc:  # the name does not resolve now: retried like an outage
            raise ConnectionError(str(exc)) from exc
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
            EVENT_ID_HEADER: str(event["event_id"]),
        }
        status = await self._send_pinned(client, httpx.URL(url), addresses, body, headers)
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRYABLE:
            raise ConnectionError(f"webhook answered {status}")
        log.warning("webhook refused event %s (%d): kept in %s",
                    event["event_id"], status, self.dead_letters)  # fmt: skip
        self._dead_letter({"status": status, "url": url, "event": event})

    @staticmethod
    async def _send_pinned(
        client: httpx.AsyncClient,
        url: httpx.URL,
        addresses: list[str],
        body: bytes,
        headers: dict[str, str],
    ) -> int:
        """POST to the first of the checked ``addresses`` that takes the connection;
        the URL names the address, Host and SNI the name (certificates are checked
        against the name). The status only: the body is left unread."""
        named = url.raw_host.decode("ascii")
        pinned_headers = {**headers, "Host": url.netloc.decode("ascii").rpartition("@")[2]}
        extensions = {"sni_hostname": named} if url.scheme == "https" else {}
        last: httpx.TransportError | None = None
        for address in addresses[:MAX_TRIED]:
            pinned = url.copy_with(host=address)
            try:
                async with client.stream(
                    "POST", pinned, content=body, headers=pinned_headers, extensions=extensions
                ) as response:
                    return response.status_code
            except httpx.ConnectError as exc:  # this address is down: try the next one
                last = exc
        raise ConnectionError(f"cannot connect to {named}: {last}")

    def _dead_letter(self, record: dict[str, Any]) -> None:
        self.rejected += 1
        record["at"] = time.time()
        with self.dead_letters.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
