"""Keeping watch on trunks: OPTIONS keepalives (up/down) and registration.

Every ``options_interval_s`` a trunk gets an OPTIONS; any answer but 503 means it is
up, no answer within ``OPTIONS_TIMEOUT_S`` (or 503) counts a failure, and
``DOWN_AFTER`` failures in a row mark it down: the dialer stops routing calls to it
until it answers again. A trunk with ``registration`` REGISTERs our Contact with
the carrier, answers its digest challenge, and refreshes at 80% of the expiry the
registrar granted; a refused or unanswered REGISTER is retried with a growing
backoff; when the trunk goes (or its registration is turned off) the node
unregisters (Expires: 0). The state of both is what ``GET /v1/trunks`` shows.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from actors.call import LocalAddress
from sip.auth import authorize
from sip.dialog import new_tag
from sip.endpoint import Flow, SipEndpoint
from sip.message import Headers, Request, Response
from sip.transaction import ResponseReceived, TransactionEvent, TransactionTimedOut, new_branch
from switch.trunking.trunks import Trunk, TrunkBook

log = logging.getLogger("voxswitch.trunks")

OPTIONS_TIMEOUT_S = 5.0
DOWN_AFTER = 2
REFRESH_AT = 0.8  # of the granted expiry
RETRY_MIN_S = 5.0
RETRY_MAX_S = 300.0
TICK_S = 0.5


@dataclass
class Keepalive:
    up: bool | None = None  # None: not probed (yet, or keepalive off)
    failures: int = 0
    last_status: int | None = None
    last_at: float | None = None  # wall clock of the last answer
    next_at: float = 0.0  # loop time of the next probe
    pending_since: float | None = None

    def view(self) -> dict[str, Any]:
        return {"up": self.up, "failures": self.failures, "last_status": self.last_status,
                "last_answer_at": self.last_at}  # fmt: skip


@dataclass
class Registration:
    state: str = "unregistered"  # registering, registered, failed
    call_id: str = field(default_factory=lambda: secrets.token_hex(12) + "@voxswitch")
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    expires_s: int | None = None
    registered_at: float | None = None  # wall clock
    expires_at: float | None = None  # wall clock
    next_at: float = 0.0  # loop time of the next REGISTER
    failures: int = 0
    last_status: int | None = None
    auth_rounds: int = 0
    in_flight: bool = False
    refreshes: int = 0
    trunk: Trunk | None = None  # as registered (to unregister after it is gone)

    def view(self) -> dict[str, Any]:
        return {"state": self.state, "expires_s": self.expires_s,
                "registered_at": self.registered_at, "expires_at": self.expires_at,
                "last_status": self.last_status, "failures": self.failures,
                "refreshes": self.refreshes}  # fmt: skip


def build_options(trunk: Trunk, local: LocalAddress) -> Request:
    target = f"sip:{trunk.host}:{trunk.port}"
    ours = f"<sip:voxswitch@{local.host}>;tag={new_tag()}"
    h = _common_headers(trunk, local, ours, f"<{target}>", secrets.token_hex(12), "1 OPTIONS")
    h.add("Accept", "application/sdp")
    return Request("OPTIONS", target, h)


def build_register(
    trunk: Trunk,
    local: LocalAddress,
    reg: Registration,
    authorization: tuple[str, str] | None,
    expires: int | None = None,
) -> Request:
    user = trunk.username or "voxswitch"
    aor = f"<sip:{user}@{trunk.host}>"
    reg.cseq += 1
    h = _common_headers(trunk, local, f"{aor};tag={reg.from_tag}", aor, reg.call_id,
                        f"{reg.cseq} REGISTER")  # fmt: skip
    h.add("Contact", local.contact(trunk.transport, user=user))
    h.add("Expires", str(trunk.register_expires_s if expires is None else expires))
    if authorization is not None:
        h.add(*authorization)
    return Request("REGISTER", registrar_uri(trunk), h)


def registrar_uri(trunk: Trunk) -> str:
    return f"sip:{trunk.host}" + ("" if trunk.port == 5060 else f":{trunk.port}")


def _common_headers(
    trunk: Trunk, local: LocalAddress, from_: str, to: str, call_id: str, cseq: str
) -> Headers:
    h = Headers()
    transport = trunk.transport.upper()
    h.add("Via", f"SIP/2.0/{transport} {local.sent_by(transport)};branch={new_branch()};rport")
    h.add("Max-Forwards", "70")
    h.add("From", from_)
    h.add("To", to)
    h.add("Call-ID", call_id)
    h.add("CSeq", cseq)
    return h


def granted_expiry(response: Response, asked: int) -> int:
    """The expiry the registrar granted: our Contact's ``expires``, else Expires."""
    for contact in response.contacts:
        value = contact.params.get("expires")
        if value and str(value).isdigit():
            return int(value)
    header = response.headers.get("expires")
    if header and header.strip().isdigit():
        return int(header.strip())
    return asked


class TrunkMonitor:
    def __init__(
        self,
        book: TrunkBook,
        endpoint: SipEndpoint,
        local: LocalAddress,
        connect: Callable[[str, int, str, str], Awaitable[Flow]],
        clock: Callable[[], float],
    ) -> None:
        self.book = book
        self.endpoint = endpoint
        self.local = local
        self.connect = connect
        self.clock = clock
        self.keepalives: dict[str, Keepalive] = {}
        self.registrations: dict[str, Registration] = {}

    def up(self, name: str) -> bool:
        """A trunk is usable unless its keepalive has marked it down."""
        keepalive = self.keepalives.get(name)
        return keepalive is None or keepalive.up is not False

    def status(self, name: str) -> dict[str, Any]:
        keepalive = self.keepalives.get(name)
        registration = self.registrations.get(name)
        return {
            "up": self.up(name),
            "keepalive": keepalive.view() if keepalive is not None else None,
            "registration": registration.view() if registration is not None else None,
        }

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad trunk must not stop the watch over the others
                log.exception("trunk monitor tick failed")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        now = self.clock()
        for name in set(self.keepalives) - set(self.book.trunks):
            del self.keepalives[name]
        for name in set(self.registrations) - set(self.book.trunks):
            await self._unregister(self.registrations.pop(name))
        for trunk in list(self.book.trunks.values()):
            if trunk.options_interval_s > 0:
                await self._keepalive(trunk, now)
            else:
                self.keepalives.pop(trunk.name, None)
            if trunk.registration:
                await self._register_if_due(trunk, now)
            elif trunk.name in self.registrations:
                await self._unregister(self.registrations.pop(trunk.name))

    # ---- OPTIONS -------------------------------------------------------------------------

    async def _keepalive(self, trunk: Trunk, now: float) -> None:
        state = self.keepalives.setdefault(trunk.name, Keepalive())
        if state.pending_since is not None:
            if now - state.pending_since < OPTIONS_TIMEOUT_S:
                return
            self._options_failed(trunk.name, state, None)
        if now < state.next_at:
            return
        state.next_at = now + trunk.options_interval_s
        state.pending_since = now
        try:
            flow = await self.connect(
                trunk.host, trunk.port, trunk.transport, trunk.peer_name
            )
        except OSError:
            self._options_failed(trunk.name, state, None)
            return
        request = build_options(trunk, self.local)

        def on_event(event: TransactionEvent) -> None:
            if state.pending_since is None:
                return  # already counted as a timeout
            if isinstance(event, ResponseReceived) and event.response.status >= 200:
                status = event.response.status
                if status == 503:
                    self._options_failed(trunk.name, state, status)
                else:
                    self._options_answered(trunk.name, state, status)
            elif isinstance(event, TransactionTimedOut):
                self._options_failed(trunk.name, state, None)

        self.endpoint.send_request(request, flow, on_event)

    def _options_answered(self, name: str, state: Keepalive, status: int) -> None:
        if state.up is False:
            log.warning("trunk %s is up again (OPTIONS answered %d)", name, status)
        state.up, state.failures, state.last_status = True, 0, status
        state.last_at, state.pending_since = time.time(), None

    def _options_failed(self, name: str, state: Keepalive, status: int | None) -> None:
        state.pending_since = None
        state.failures += 1
        state.last_status = status
        if state.failures >= DOWN_AFTER and state.up is not False:
            log.warning("trunk %s is down: %d keepalives unanswered", name, state.failures)
            state.up = False

    # ---- REGISTER ------------------------------------------------------------------------

    async def _register_if_due(self, trunk: Trunk, now: float) -> None:
        reg = self.registrations.setdefault(trunk.name, Registration())
        if reg.in_flight or now < reg.next_at:
            return
        if reg.state != "registered":
            reg.state = "registering"
        reg.auth_rounds = 0
        await self._send_register(trunk, reg, None)

    async def _send_register(
        self, trunk: Trunk, reg: Registration, authorization: tuple[str, str] | None
    ) -> None:
        try:
            flow = await self.connect(
                trunk.host, trunk.port, trunk.transport, trunk.peer_name
            )
        except OSError:
            self._register_failed(trunk, reg, None)
            return
        self._send(trunk, reg, authorization, flow)

    def _send(
        self,
        trunk: Trunk,
        reg: Registration,
        authorization: tuple[str, str] | None,
        flow: Flow,
    ) -> None:
        request = build_register(trunk, self.local, reg, authorization)
        reg.in_flight = True

        def on_event(event: TransactionEvent) -> None:
            if isinstance(event, ResponseReceived) and event.response.status >= 200:
                self._registered(trunk, reg, request, event.response, flow)
            elif isinstance(event, TransactionTimedOut):
                self._register_failed(trunk, reg, None)

        self.endpoint.send_request(request, flow, on_event)

    def _registered(
        self, trunk: Trunk, reg: Registration, request: Request, response: Response, flow: Flow
    ) -> None:
        reg.in_flight = False
        status = reg.last_status = response.status
        if status in (401, 407) and reg.auth_rounds < 1 and trunk.username:
            reg.auth_rounds += 1
            credentials = authorize(response, method="REGISTER", uri=request.uri,
                                    username=trunk.username, password=trunk.password)  # fmt: skip
            if credentials is not None:
                self._send(trunk, reg, credentials, flow)
                return
        if not 200 <= status < 300:
            self._register_failed(trunk, reg, status)
            return
        expires = granted_expiry(response, trunk.register_expires_s)
        if reg.state == "registered":
            reg.refreshes += 1
        else:
            log.info("trunk %s: registered for %d s", trunk.name, expires)
        reg.state, reg.failures, reg.expires_s = "registered", 0, expires
        reg.trunk = trunk
        reg.registered_at = time.time()
        reg.expires_at = reg.registered_at + expires
        reg.next_at = self.clock() + max(1.0, expires * REFRESH_AT)

    async def _unregister(self, reg: Registration) -> None:
        """Take our binding off the registrar (Expires: 0), answering one challenge."""
        trunk = reg.trunk
        if trunk is None or reg.state != "registered":
            return
        try:
            flow = await self.connect(
                trunk.host, trunk.port, trunk.transport, trunk.peer_name
            )
        except OSError:
            return
        request = build_register(trunk, self.local, reg, None, expires=0)

        def on_event(event: TransactionEvent) -> None:
            if not isinstance(event, ResponseReceived) or event.response.status not in (401, 407):
                return
            credentials = authorize(event.response, method="REGISTER", uri=request.uri,
                                    username=trunk.username, password=trunk.password)  # fmt: skip
            if credentials is not None:
                again = build_register(trunk, self.local, reg, credentials, expires=0)
                self.endpoint.send_request(again, flow, lambda _event: None)

        log.info("trunk %s: unregistering", trunk.name)
        self.endpoint.send_request(request, flow, on_event)

    def _register_failed(self, trunk: Trunk, reg: Registration, status: int | None) -> None:
        reg.in_flight = False
        reg.failures += 1
        reg.last_status = status
        if reg.state != "failed":
            log.warning("trunk %s: registration failed (%s)", trunk.name, status or "no answer")
        reg.state = "failed"
        reg.next_at = self.clock() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (reg.failures - 1))
