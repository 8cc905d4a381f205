"""The outbound call actor: we are the UAC (RFC 3261 §13.2, §9.1).

``queued`` (its trunk's pace) → ``dialing`` (INVITE sent) → ``ringing`` (18x) →
2xx: ACK, the offer's answer connects the media, and from there the call is the
same actor as an inbound one (conversation, in-dialog requests, BYE). A 401/407
is answered once per target with the trunk's credentials; 503, 408 and no answer
at all fail over to the next trunk (never 486/603); the ring timeout and a hang-up
command CANCEL the INVITE (after a provisional response, §9.1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from actors.call import CallActor, CallState
from actors.messages import (
    CallMessage,
    Hangup,
    InviteResponded,
    InviteTimedOut,
    RequestArrived,
)
from sip.auth import authorize
from sip.dialog import Dialog
from sip.endpoint import Flow
from sip.errors import SipError
from sip.message import Headers, Request, Response, make_response
from sip.sdp import SdpAnswerer, SrtpPolicy
from sip.transaction import (
    make_cancel,
    new_branch,
)

log = logging.getLogger("voxswitch.outbound")

FAILOVER_CODES = frozenset({408, 500, 502, 503, 504})  # the trunk, not the callee
BUSY_CODES = frozenset({486, 600, 603})
NO_ANSWER_CODES = frozenset({408, 480})
CANCEL_GRACE_S = 32.0  # 64*T1: no final response after our CANCEL: give up (§9.1)
MAX_AUTH_ROUNDS = 2


@dataclass(frozen=True)
class DialTarget:
    """One way to reach the callee: through a trunk, or straight to a SIP URI."""

    trunk: str  # '' when dialing a SIP URI directly
    host: str
    port: int
    request_uri: str
    username: str = ""
    password: str = ""
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    transport: str = "udp"  # or "tcp", "tls"
    srtp: SrtpPolicy = "off"  # what the offer carries: RTP/SAVP, crypto lines too, or neither
    server_name: str = ""  # TLS: the name the peer's certificate must carry (default host)
    caller: str = ""  # the From number through this trunk (its caller-ID rules), if set


@dataclass(frozen=True)
class Origination:
    """What the API (or a campaign) asked for."""

    to: str  # E.164 number or SIP URI, as given
    from_number: str
    targets: tuple[DialTarget, ...]
    ring_timeout_s: float = 45.0
    headers: tuple[tuple[str, str], ...] = ()  # custom X- headers on the INVITE
    metadata: dict[str, Any] = field(default_factory=dict)
    campaign_id: str = ""
    webhook_url: str = ""


def disposition_for(status: int) -> str:
    if status in BUSY_CODES:
        return "busy"
    if status in NO_ANSWER_CODES:
        return "no_answer"
    if status == 487:
        return "canceled"
    return "failed"


def build_invite(
    *,
    call_id: str,
    from_number: str,
    from_tag: str,
    cseq: int,
    target: DialTarget,
    to: str,
    via_sent_by: str,
    contact: str,
    local_host: str,
    sdp: bytes,
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    h = Headers()
    h.add("Via", f"SIP/2.0/{target.transport.upper()} {via_sent_by};branch={new_branch()};rport")
    h.add("Max-Forwards", "70")
    h.add("From", f"<sip:{from_number}@{local_host}>;tag={from_tag}")
    to_uri = to if to.startswith(("sip:", "sips:")) else target.request_uri
    h.add("To", f"<{to_uri}>")
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} INVITE")
    h.add("Contact", contact)
    h.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY")
    for name, value in headers:
        h.add(name, value)
    h.add("Content-Type", "application/sdp")
    return Request("INVITE", target.request_uri, h, sdp)


@dataclass(eq=False)
class OutboundCallActor(CallActor):
    origination: Origination | None = None
    # Where a target's host is reached (DNS, then the UDP flow).
    connect: Callable[[DialTarget], Awaitable[Flow]] | None = None
    # The loop time a trunk may take this attempt (its calls per second), reserved.
    pace: Callable[[str], float] | None = None
    # A bridge leg (a transfer we relay): told when answered, instead of an agent.
    on_answered: Callable[[OutboundCallActor], None] | None = None
    _cseq: int = 1
    _answered_by: Response | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        o = self.origination
        assert o is not None
        record = self.record
        record.direction = "outbound"
        record.from_uri = o.from_number
        record.to_uri = o.to
        record.sip_headers = dict(o.headers)
        record.metadata = dict(o.metadata)
        record.campaign_id = o.campaign_id
        record.webhook_url = o.webhook_url
        record.trunk = o.targets[0].trunk if o.targets else ""
        self.state = CallState.QUEUED

    async def _run(self) -> None:
        o = self.origination
        assert o is not None and self.connect is not None
        for index, target in enumerate(o.targets):
            if not await self._wait_turn(target.trunk):
                return
            last = index == len(o.targets) - 1
            outcome = await self._attempt(target, failover=not last)
            if outcome == "answered":
                break
            if outcome != "failover":
                return
            log.info("call %s: trunk %s failed (%s); trying the next", self.call_id,
                     target.trunk, self.record.sip_code)  # fmt: skip
        else:
            return
        self.state = CallState.CONFIRMED
        self._milestone("confirmed")
        if self.on_answered is not None:
            self.on_answered(self)
        else:
            self._start_conversation()
        await self._talk()

    async def _wait_turn(self, trunk: str) -> bool:
        """Queued until the trunk's pace lets this attempt go; False when hung up."""
        if self.pace is None:
            return True
        start_at = self.pace(trunk)
        while (left := start_at - self.clock()) > 0:
            message = await self.mailbox.get(timeout=left)
            if isinstance(message, Hangup):
                self._end(_cancel_disposition(message.reason), reason=message.detail)
                return False
        return True

    # ---- one attempt -------------------------------------------------------------------

    async def _attempt(self, target: DialTarget, *, failover: bool) -> str:
        """INVITE ``target`` until answered ('answered'), given up ('ended') or the
        trunk failed and ``failover`` allows the next ('failover')."""
        assert self.connect is not None and self.origination is not None
        try:
            self.flow = await self.connect(target)
        except OSError as exc:
            self.record.trunk = target.trunk
            self.record.sip_code = None
            if failover:
                return "failover"
            self._end("failed", reason=f"cannot reach {target.host}: {exc}")
            return "ended"
        self.record.trunk = target.trunk
        self._answerer = SdpAnswerer(local_ip=self.local.host, local_port=self.media.local_port)
        offer = bytes(self._answerer.offer(target.codecs, srtp=target.srtp))
        self.invite = self._new_invite(target, offer)
        self._send_invite()
        self.state = CallState.DIALING
        deadline = self.clock() + self.origination.ring_timeout_s
        ending: tuple[str, str] | None = None  # (disposition, reason) once we CANCEL
        provisional = cancel_sent = False
        auth_rounds = 0
        while True:
            timeout = deadline - self.clock()
            message = await self.mailbox.get(timeout=max(0.0, timeout))
            if message is None:
                if ending is not None:  # no final response to our CANCEL
                    self._end(ending[0], reason=ending[1] + " (no answer to CANCEL)")
                    return "ended"
                ending = ("no_answer", f"no answer in {self.origination.ring_timeout_s:g} s")
            elif isinstance(message, Hangup):
                if ending is None:
                    ending = (_cancel_disposition(message.reason), message.detail or message.reason)
            elif isinstance(message, InviteTimedOut):
                self.record.sip_code = 408
                if failover and ending is None:
                    return "failover"
                disposition, reason = ending or ("failed", "no response to INVITE (Timer B)")
                self._end(disposition, reason=reason)
                return "ended"
            elif isinstance(message, InviteResponded):
                response = message.response
                status = response.status
                if status < 200:
                    provisional = True
                    if status > 100 and self.state is CallState.DIALING:
                        self.state = CallState.RINGING
                        self._milestone("ringing")
                elif status < 300:
                    if not self._accept(response):
                        return "ended"
                    if ending is not None:  # answered as we canceled: hang up (§9.1)
                        self._hangup(*ending)
                        return "ended"
                    return "answered"
                elif status in (401, 407) and ending is None and auth_rounds < MAX_AUTH_ROUNDS:
                    auth_rounds += 1
                    if self._authenticate(target, response, offer):
                        provisional = cancel_sent = False
                        continue
                    self.record.sip_code = status
                    self._end("failed", reason=f"{status}: our credentials were refused")
                    return "ended"
                else:
                    self.record.sip_code = status
                    if ending is not None:
                        self._end(ending[0], reason=ending[1])
                        return "ended"
                    if failover and status in FAILOVER_CODES:
                        return "failover"
                    self._end(disposition_for(status),
                              reason=f"{status} {response.reason}".strip())  # fmt: skip
                    return "ended"
            elif isinstance(message, RequestArrived):
                # No dialog yet (an early-dialog request): nothing we can do with it.
                self.endpoint.respond(message.txn, make_response(message.request, 481))
            if ending is not None and provisional and not cancel_sent:
                self._send_cancel()
                cancel_sent = True
                deadline = self.clock() + CANCEL_GRACE_S
            elif ending is not None and not cancel_sent:
                deadline = self.clock() + CANCEL_GRACE_S  # §9.1: CANCEL after a 1xx only

    def _new_invite(self, target: DialTarget, sdp: bytes) -> Request:
        o = self.origination
        assert o is not None
        return build_invite(
            call_id=self.invite.call_id,
            from_number=target.caller or o.from_number,
            from_tag=self.local_tag,
            cseq=self._cseq,
            target=target,
            to=o.to,
            via_sent_by=self.local.sent_by(self.flow.transport),
            contact=self._contact(),
            local_host=self.local.host,
            sdp=sdp,
            headers=o.headers,
        )

    def _authenticate(self, target: DialTarget, response: Response, offer: bytes) -> bool:
        """Send the INVITE again with credentials for the challenge (§22.2)."""
        if not target.username:
            return False
        credentials = authorize(response, method="INVITE", uri=target.request_uri,
                                username=target.username, password=target.password)  # fmt: skip
        if credentials is None:
            return False
        self._cseq += 1
        invite = self._new_invite(target, offer)
        invite.headers.add(*credentials)
        self.invite = invite
        self._send_invite()
        return True

    def _send_cancel(self) -> None:
        self.endpoint.send_request(make_cancel(self.invite), self.flow, lambda _event: None)

    def _accept(self, response: Response) -> bool:
        """A 2xx: the dialog, our ACK, and the media the answer settled."""
        assert self._answerer is not None
        self._answered_by = response
        try:
            self.dialog = Dialog.from_response(self.invite, response, self._contact())
        except SipError as exc:
            self._fail_answered(response, f"bad 2xx: {exc}")
            return False
        self._send_ack()
        self.record.sip_code = response.status
        if not self._take_answer(response, "failed"):
            return False
        self.state = CallState.ANSWERED
        self.record.answered_at = time.time()
        self._milestone("answered")
        return True

    def _fail_answered(self, response: Response, reason: str) -> None:
        self.record.sip_code = response.status
        self._end("failed", reason=reason)

    def _other_message(self, message: CallMessage) -> None:
        if not isinstance(message, InviteResponded) or not 200 <= message.response.status < 300:
            return
        response = message.response
        if self.dialog is not None and response.to.tag != self.dialog.remote_tag:
            self._end_fork(response)
        elif self._ack is not None:
            self._send_raw(self._ack)  # a 2xx retransmitted (our ACK was lost): again

    def _end_fork(self, response: Response) -> None:
        """A 2xx from another fork of our INVITE: ACK it, then BYE that dialog
        (§13.2.2.4); the call goes on with the first."""
        try:
            fork = Dialog.from_response(self.invite, response, self._contact())
        except SipError:
            return
        via, transport = self.local.sent_by(self.flow.transport), self.flow.transport
        self._send_raw(bytes(fork.create_request("ACK", via_sent_by=via, transport=transport)))
        bye = fork.create_request("BYE", via_sent_by=via, transport=transport)
        self.endpoint.send_request(bye, self.flow, lambda _event: None)

    def abort(self, error: BaseException) -> None:
        reason = f"internal error: {type(error).__name__}"
        try:
            if self.state in (CallState.DIALING, CallState.RINGING):
                self._send_cancel()
                self._end("failed", reason=reason)
            elif self.state is CallState.QUEUED:
                self._end("failed", reason=reason)
            elif self.state is not CallState.ENDED:
                self._hangup("failed", reason)
        finally:
            self._close_media()


def _cancel_disposition(reason: str) -> str:
    """A hang-up command before the answer: the API's is 'canceled', a drain 'failed'."""
    return "canceled" if reason == "api_hangup" else reason
