"""From "call this number" to a call actor: trunk choice, limits and pacing.

The dialer turns a destination into the trunks to try (the named trunk, or the
outbound routes by prefix, skipping trunks marked down), holds each trunk's pace
(its calls per second, as evenly spaced start times) and refuses a call its trunk
has no room for (its concurrent-call limit). The API and campaigns both dial here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.call import CallActor
from actors.outbound import DialTarget, Origination, OutboundCallActor
from sip.errors import UriError
from sip.sdp import SrtpPolicy
from sip.uri import SipUri, parse_uri
from switch.guard.targets import TargetPolicy, TargetRefused
from switch.manager import CallManager, CallRefused
from switch.trunking.trunks import Trunk, TrunkBook, valid_host

TRUNK_FULL_RETRY_S = 1
NO_PRIVATE_TARGETS = TargetPolicy()  # the default: nothing private allowed


class Pacer:
    """Evenly spaced start times at ``rate`` per second (0: no limit), reserved in turn.

    The schedule is absolute: a start taken a little late (the loop was busy) does not
    push the later ones back, so the long-run rate is the asked one; after an idle
    spell longer than ``SLACK_S`` it restarts from now instead of bursting to catch up.
    """

    SLACK_S = 0.05

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.clock = clock
        self._next: float | None = None

    def peek(self) -> float:
        """When the next start could be, without taking it."""
        now = self.clock()
        if self.rate <= 0 or self._next is None or now - self._next > self.SLACK_S:
            return now
        return self._next

    def reserve(self) -> float:
        at = self.peek()
        if self.rate > 0:
            self._next = at + 1.0 / self.rate
        return at


@dataclass
class CallRequest:
    """What ``POST /v1/calls`` (or a campaign) asks for."""

    to: str
    from_number: str = ""
    trunk: str = ""
    agent: str = "default"  # a name in the node's agents; "none": the greeting only
    ring_timeout_s: float = 45.0
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    webhook_url: str = ""
    campaign_id: str = ""
    record: bool | None = None  # None: the trunk's, else the node's record setting


class NoRoute(ValueError):
    """The call cannot be routed as asked: the API's 422 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Dialer:
    def __init__(
        self,
        manager: CallManager,
        book: TrunkBook,
        clock: Callable[[], float],
        trunk_up: Callable[[str], bool] = lambda _name: True,
        srtp: SrtpPolicy = "optional",
    ) -> None:
        self.manager = manager
        self.book = book
        self.clock = clock
        self.trunk_up = trunk_up
        self.srtp = srtp  # for SIP URIs dialed without a trunk
        self._pacers: dict[str, Pacer] = {}
        manager.pace = self.reserve

    def reserve(self, trunk: str) -> float:
        """When the next attempt on ``trunk`` may start (the actor waits for it)."""
        limit = self.book.trunks[trunk].max_cps if trunk in self.book.trunks else 0.0
        pacer = self._pacers.get(trunk)
        if pacer is None or pacer.rate != limit:
            pacer = self._pacers[trunk] = Pacer(limit, self.clock)
        return pacer.reserve()

    def targets(self, request: CallRequest) -> list[DialTarget]:
        to = request.to
        if request.trunk:
            trunk = self.book.trunks.get(request.trunk)
            if trunk is None:
                raise NoRoute("trunk", f"no trunk named {request.trunk!r}")
            trunks = [trunk]
        elif to.startswith(("sip:", "sips:")):
            return [_direct(to, self.srtp, self.book.targets)]
        else:
            trunks = self.book.trunks_for(to)
            if not trunks:
                raise NoRoute("to", f"no outbound route matches {to!r}")
        up = [t for t in trunks if self.trunk_up(t.name)]
        if not up:
            names = ", ".join(t.name for t in trunks)
            raise CallRefused(503, f"every trunk for this call is down ({names})", 30)
        return [_through(t, to, request.from_number) for t in up]

    def dial_bridge(self, target: str, first: CallActor) -> CallActor:
        """The second leg of a bridged transfer: to ``target`` (a SIP or tel URI), the
        first leg's codec only (the RTP is relayed as it comes), no agent."""
        caller = re.match(r"^(?:sips?|tel):(\+?[0-9]{6,15})\b", first.record.from_uri)
        request = CallRequest(
            to=target.removeprefix("tel:"),
            from_number=caller.group(1) if caller else "",
            agent="none",
        )
        codec = first.record.codec
        return self.dial(
            request,
            near=first.media.local_port,
            on_answered=self.manager.bridge_answered(first),
            codecs=(codec,) if codec else None,
        )

    def dial(
        self,
        request: CallRequest,
        *,
        near: int | None = None,
        on_answered: Callable[[OutboundCallActor], None] | None = None,
        codecs: tuple[str, ...] | None = None,
    ) -> CallActor:
        if request.agent not in self.manager.voices:
            raise NoRoute("agent", f"no agent named {request.agent!r} on this node")
        targets = self.targets(request)
        if codecs is not None:
            targets = [dataclasses.replace(t, codecs=codecs) for t in targets]
        first = targets[0].trunk
        if self.trunk_full(first):
            detail = f"trunk {first} is at its {self.book.trunks[first].max_calls} calls"
            raise CallRefused(429, detail, TRUNK_FULL_RETRY_S)
        from_number = targets[0].caller or request.from_number
        origination = Origination(
            to=request.to,
            from_number=from_number or "anonymous",
            targets=tuple(targets),
            ring_timeout_s=request.ring_timeout_s,
            headers=tuple(request.headers.items()),
            metadata=dict(request.metadata),
            campaign_id=request.campaign_id,
            webhook_url=request.webhook_url,
        )
        record = request.record
        if record is None and first in self.book.trunks:
            record = self.book.trunks[first].record
        return self.manager.originate(
            origination, agent=request.agent, near=near, on_answered=on_answered,
            record=record,
        )  # fmt: skip

    def trunk_calls(self, name: str) -> int:
        return sum(1 for a in self.manager.live() if a.record.trunk == name)

    def trunk_full(self, name: str) -> bool:
        """The trunk is at its ``max_calls`` (inbound and outbound calls count)."""
        trunk = self.book.trunks.get(name)
        return (
            trunk is not None
            and bool(trunk.max_calls)
            and (self.trunk_calls(name) >= trunk.max_calls)
        )


def _through(trunk: Trunk, to: str, from_number: str) -> DialTarget:
    user = trunk.dialed(to.removeprefix("tel:"))
    host = f"[{trunk.host}]" if ":" in trunk.host and not trunk.host.startswith("[") else trunk.host
    default_port = 5061 if trunk.transport == "tls" else 5060
    port = "" if trunk.port == default_port else f":{trunk.port}"
    suffix = ";transport=tls" if trunk.transport == "tls" else ""
    return DialTarget(
        trunk=trunk.name,
        host=trunk.host,
        port=trunk.port,
        request_uri=f"sip:{user}@{host}{port}{suffix}",
        username=trunk.username,
        password=trunk.password,
        codecs=tuple(trunk.codecs),
        transport=trunk.transport,
        srtp=_offered_srtp(trunk.srtp, trunk.transport),
        server_name=trunk.peer_name,
        caller=trunk.calling(from_number),
    )


def _offered_srtp(policy: SrtpPolicy, transport: str) -> SrtpPolicy:
    """What our offer carries. SDES keys travel in the SDP, so 'optional' offers
    them only over TLS (RFC 4568 §8.3: not over signalling anyone can read);
    'required' offers them whatever the transport, as the trunk asks."""
    if policy == "optional" and transport != "tls":
        return "off"
    return policy


def _direct(uri: str, srtp: SrtpPolicy, policy: TargetPolicy = NO_PRIVATE_TARGETS) -> DialTarget:
    """A SIP URI dialed without a trunk (a test UA, a PBX on the LAN); a ``sips:``
    URI or ``;transport=tls`` goes over TLS to port 5061 unless it names one. An
    address the node may not be sent to (loopback, private, metadata: the SSRF
    policy, ``allowed_private_targets``) is no route."""
    try:
        parsed = parse_uri(uri)
    except UriError as exc:
        raise NoRoute("to", str(exc)) from exc
    if not isinstance(parsed, SipUri) or not valid_host(parsed.host):
        raise NoRoute("to", f"{uri!r} is not a SIP URI with a valid host")
    try:
        policy.check_host(parsed.host_bare)
    except TargetRefused as exc:
        raise NoRoute("to", exc.reason) from None
    named = parsed.transport
    transport = "tls" if parsed.secure or named == "tls" else "tcp" if named == "tcp" else "udp"
    return DialTarget(
        trunk="",
        host=parsed.host,
        port=parsed.port or (5061 if transport == "tls" else 5060),
        request_uri=uri,
        transport=transport,
        srtp=_offered_srtp(srtp, transport),
        server_name=parsed.host_bare.lower(),
    )
