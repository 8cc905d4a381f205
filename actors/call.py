"""The call actor: one asyncio task per call, owning its dialog, media and state.

Inbound call, this milestone: 180 → (ring) → 200 with SDP → greeting as RTP →
up until BYE, the maximum duration, media silence, or a hang-up command. It talks
to SIP only through the endpoint and to media only through its ``MediaLeg``, and
hands back a ``CallRecord`` when it ends; the manager supervises it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from actors.conversation import Conversation, Voice
from actors.messages import (
    AckArrived,
    AckTimedOut,
    BridgeAnswered,
    BridgeEnded,
    CallMessage,
    CancelArrived,
    DtmfRequested,
    Hangup,
    InviteResponded,
    InviteTimedOut,
    MediaArrived,
    MediaTimedOut,
    ReferAnswered,
    RequestArrived,
    SayRequested,
    TransferRequested,
    TransferSettled,
)
from actors.runtime import CURRENT_CALL_ID, Mailbox, MailboxClosed
from media.dtmf import parse_dtmf_info, parse_dtmf_relay
from media.recording import summarize
from media.session import MediaEvent, SessionControl, VadConfig
from media.srtp import SrtpKeys
from sip.dialog import Dialog
from sip.endpoint import Flow, SipEndpoint
from sip.message import Request, Response, clean_text, make_response
from sip.sdp import (
    Negotiated,
    NoCommonCodec,
    SdpAnswerer,
    SdpError,
    SessionDescription,
    SrtpPolicy,
)
from sip.transaction import (
    InviteServerTransaction,
    ResponseReceived,
    SuccessRetransmitter,
    TransactionEvent,
    TransactionTimedOut,
)

log = logging.getLogger("voxswitch.call")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY"
TRANSFER_NOTIFY_WAIT_S = 5.0  # after a 202 to our REFER, wait this long for the outcome
TRANSFER_FAILED_LINE = "Sorry, I could not put you through. I am still here with you."
RECORDING_CLOSE_S = 5.0  # how long a media worker may take to finish a recording


class CallState(Enum):
    QUEUED = "queued"  # outbound: waiting for its trunk's pace
    DIALING = "dialing"  # outbound: INVITE sent, nothing heard back yet
    RINGING = "ringing"
    ANSWERED = "answered"  # 200 sent, waiting for ACK
    CONFIRMED = "confirmed"  # ACK received: media flows both ways
    ENDED = "ended"


@dataclass
class CallRecord:
    call_id: str
    direction: str
    from_uri: str
    to_uri: str
    node_id: str
    trunk: str = ""  # the carrier trunk it came through ('' when none matched)
    agent: str = ""  # the voice agent that talked (its name on the node: default, demo...)
    offered_at: float = 0.0  # wall clock (epoch seconds)
    answered_at: float | None = None
    ended_at: float | None = None
    disposition: str = ""  # completed, canceled, failed, no_ack, media_timeout, ...
    sip_code: int | None = None
    reason: str = ""
    codec: str = ""
    packets_sent: int = 0
    packets_received: int = 0
    turns: list[dict[str, Any]] = field(default_factory=list)
    dtmf: str = ""
    barge_ins: list[dict[str, float]] = field(default_factory=list)
    media: dict[str, Any] = field(default_factory=dict)  # loss and jitter both ways (RTCP)
    transfer_target: str = ""
    transfer_status: int | None = None  # the referred call's final code (NOTIFY sipfrag)
    sip_headers: dict[str, str] = field(default_factory=dict)  # the INVITE's X- headers
    metadata: dict[str, Any] = field(default_factory=dict)  # the API's, for outbound calls
    campaign_id: str = ""
    webhook_url: str = ""  # this call's lifecycle events go here too
    recording: dict[str, Any] = field(default_factory=dict)  # where, how long, sha256
    # The nodes that served it, in order: more than one when a node died mid-call and
    # another adopted it (live-call takeover).
    nodes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        if self.answered_at is None or self.ended_at is None:
            return 0.0
        return max(0.0, self.ended_at - self.answered_at)


@dataclass(frozen=True)
class CallConfig:
    ring_s: float = 0.0
    max_duration_s: float = 3600.0
    media_timeout_s: float = 30.0
    node_id: str = "voxswitch"


class MediaLeg(Protocol):
    """The call's RTP session as the actor sees it (built by the node from media/)."""

    @property
    def local_port(self) -> int: ...

    def connect(
        self,
        remote: tuple[str, int],
        payload_type: int,
        codec: str,
        telephone_event_pt: int | None = None,
        srtp: SrtpKeys | None = None,
    ) -> None: ...

    def play(self) -> None: ...

    def start_session(
        self,
        on_event: Callable[[MediaEvent, float], None],
        vad: VadConfig | None = None,
        record: str | None = None,
    ) -> SessionControl:
        """Switch from the fixed greeting to a conversation: audio in, speech out;
        ``record``: where to write the call's stereo WAV."""
        ...

    async def wait_closed(self) -> None:
        """After ``close``: until the media is closed where it runs (its recording
        finished)."""

    def send_dtmf(self, digits: str) -> None:
        """RFC 4733 telephone-events to the peer (needs a negotiated event payload type)."""

    def bridge(self, port: int | None) -> None:
        """Relay RTP to and from the leg on local ``port`` (None: stop)."""

    def stats(self) -> dict[str, Any]:
        """Loss and jitter both ways, from RTP and RTCP, for the call record."""
        ...

    def silence_s(self, now: float) -> float:
        """Seconds since the last RTP packet from the peer (or since play started)."""

    def rtp_state(self) -> dict[str, int | None]:
        """Our stream's SSRC, next sequence number and timestamp (for a checkpoint)."""
        ...

    @property
    def packets_sent(self) -> int: ...

    @property
    def packets_received(self) -> int: ...

    def close(self) -> None: ...


def connect_media(media: MediaLeg, result: Negotiated) -> None:
    """Point the leg at what an offer/answer settled (codec, address, SRTP keys)."""
    keys = None
    if result.crypto is not None:
        ours, theirs = result.crypto
        keys = SrtpKeys(ours.suite, ours.key_salt, theirs.key_salt)
    media.connect(
        result.remote_rtp,
        result.codec.payload_type,
        result.codec.name,
        result.telephone_event_pt,
        keys,
    )


@dataclass(frozen=True)
class LocalAddress:
    """How we name ourselves on a flow: Via sent-by, Contact, SDP address."""

    host: str
    port: int
    tls_port: int = 0  # 0: no TLS listener

    def port_for(self, transport: str) -> int:
        return self.tls_port if transport.upper() == "TLS" else self.port

    def sent_by(self, transport: str = "UDP") -> str:
        return f"{self.host}:{self.port_for(transport)}"

    def contact(self, transport: str, *, sips: bool = False, user: str = "voxswitch") -> str:
        """Our Contact over ``transport``: a SIPS URI when the dialog's request had
        one (RFC 3261 §12.1.1), else the transport as a parameter."""
        transport = transport.upper()
        port = self.port_for(transport)
        if sips and transport == "TLS":
            return f"<sips:{user}@{self.host}:{port}>"
        suffix = {"TCP": ";transport=tcp", "TLS": ";transport=tls"}.get(transport, "")
        return f"<sip:{user}@{self.host}:{port}{suffix}>"


@dataclass(eq=False)  # identity: the manager keys tasks by actor
class CallActor:
    invite: Request  # the INVITE that made the call (received, or sent for outbound)
    invite_txn: InviteServerTransaction | None  # None: outbound (we are the client)
    flow: Flow
    local_tag: str
    endpoint: SipEndpoint
    media: MediaLeg
    local: LocalAddress
    config: CallConfig
    clock: Callable[[], float]  # the loop's monotonic clock
    mailbox: Mailbox[CallMessage] = field(default_factory=Mailbox)
    state: CallState = CallState.RINGING
    dialog: Dialog | None = None
    record: CallRecord = field(init=False)
    voice: Voice | None = None  # None: answer with the greeting chime only
    vad: VadConfig | None = None
    srtp: SrtpPolicy = "off"  # what the trunk (or the node) says about SRTP offers
    record_to: str | None = None  # the path of this call's recording (None: not recorded)
    record_announcement = ""  # said before the greeting when the call is recorded
    conversation: Conversation | None = None
    # Told "answered" and "transferred" as they happen (the manager publishes them).
    on_milestone: Callable[[str, CallRecord], None] | None = None
    # Places the second leg of a transfer we bridge ourselves (the peer refused REFER);
    # None when the node cannot (then a refused REFER ends the call transfer_failed).
    place_bridge: Callable[[CallActor, str], CallActor | None] | None = None
    _bridge_leg: CallActor | None = None  # that second leg, once placed
    _bridged: bool = False  # its media is relayed to and from ours
    _transfer_pending: bool = False  # REFER accepted, the outcome not known yet
    _transfer_final: int | None = None  # a final sipfrag status seen (maybe before the 202)
    talked_s: float = 0.0  # how long the call was up before this actor had it (adopted)
    _answerer: SdpAnswerer | None = None
    _retransmitter: SuccessRetransmitter | None = None
    _ack: bytes | None = None  # our ACK to the 2xx of an INVITE we sent (again if it is)

    def __post_init__(self) -> None:
        self.record = CallRecord(
            call_id=self.invite.call_id,
            direction="inbound",
            # Clean Unicode: the record goes to JSON, Kafka and PostgreSQL as it is.
            from_uri=clean_text(str(self.invite.from_.uri)),
            to_uri=clean_text(str(self.invite.to.uri)),
            node_id=self.config.node_id,
            offered_at=time.time(),
            sip_headers=custom_headers(self.invite),
            nodes=[self.config.node_id],
        )

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    def _contact(self) -> str:
        sips = self.invite.uri[:5].lower() == "sips:"
        return self.local.contact(self.flow.transport, sips=sips)

    # ---- the actor's life --------------------------------------------------------

    async def run(self) -> CallRecord:
        CURRENT_CALL_ID.set(self.call_id)  # this task's context: its log lines say the call
        try:
            await self._run()
        except MailboxClosed:
            self._end("aborted", reason="mailbox closed")
        finally:
            self.mailbox.close()
            await self._close_conversation()
            self._close_media()
            await self._finish_recording()
        return self.record

    async def _run(self) -> None:
        answer = self._negotiate()
        if answer is None:
            return
        self._respond(180)
        if self.config.ring_s > 0 and not await self._ring(self.config.ring_s):
            return
        self._answer(answer)
        if not await self._wait_for_ack():
            return
        self._start_conversation()
        await self._talk()

    def _start_conversation(self) -> None:
        """Media flows both ways: the agent starts (or the greeting plays)."""
        if self.voice is not None:
            session = self.media.start_session(self._media_event, self.vad, self.record_to)
            context = {**self.record.sip_headers, **{
                k: str(v) for k, v in self.record.metadata.items()}}  # fmt: skip
            self.conversation = Conversation(
                voice=self.voice,
                session=session,
                host=self,
                clock=self.clock,
                call_id=self.call_id,
                context=context,
                announcement=self.record_announcement if self.record_to else "",
            )
            self.conversation.start()
        self.media.play()

    def _negotiate(self) -> bytes | None:
        """Offer/answer on the INVITE's SDP; answers 488 when nothing fits."""
        body = _sdp_body(self.invite)
        self._answerer = SdpAnswerer(
            local_ip=self.local.host, local_port=self.media.local_port, srtp=self.srtp
        )
        try:
            if body is None:
                raise SdpError("INVITE without SDP offer (late offer) is not supported yet")
            offer = SessionDescription.parse(body)
            answer = self._answerer.answer(offer)
        except NoCommonCodec as exc:
            self._fail(488, "no_common_codec", headers=[("Warning", exc.warning)])
            return None
        except SdpError as exc:
            self._fail(488, "bad_sdp", reason=str(exc))
            return None
        result = self._answerer.negotiated
        assert result is not None
        self.record.codec = result.codec.name
        connect_media(self.media, result)
        return bytes(answer)

    async def _ring(self, ring_s: float) -> bool:
        deadline = self.clock() + ring_s
        while (left := deadline - self.clock()) > 0:
            message = await self.mailbox.get(timeout=left)
            if message is None:
                break
            if isinstance(message, CancelArrived):
                self._fail(487, "canceled")
                return False
            if isinstance(message, Hangup):
                self._fail(message.status, message.reason)
                return False
            if isinstance(message, RequestArrived):
                self._in_dialog(message)
        return True

    def _answer(self, sdp: bytes) -> None:
        self.dialog = Dialog.from_invite(self.invite, self.local_tag, self._contact())
        response = make_response(
            self.invite,
            200,
            to_tag=self.local_tag,
            headers=[
                ("Contact", self._contact()),
                ("Allow", ALLOW),
                ("Content-Type", "application/sdp"),
            ],
            body=sdp,
        )
        assert self.invite_txn is not None
        self.endpoint.respond(self.invite_txn, response)
        # The transaction stops at 2xx (RFC 6026); the UAS core retransmits it until ACK.
        self._retransmitter = self.endpoint.retransmit_until_ack(
            response, self.flow, lambda: self.mailbox.put(AckTimedOut())
        )
        self.state = CallState.ANSWERED
        self.record.answered_at = time.time()
        self.record.sip_code = 200
        self._milestone("answered")

    async def _wait_for_ack(self) -> bool:
        while True:
            message = await self.mailbox.get()
            if isinstance(message, AckArrived):
                self._stop_retransmitting()
                self.state = CallState.CONFIRMED
                self._milestone("confirmed")
                return True
            if isinstance(message, AckTimedOut):
                log.info("call %s: no ACK for 200 OK, hanging up", self.call_id)
                self._hangup("no_ack", "no ACK for 200 OK (Timer H)")
                return False
            if isinstance(message, Hangup):
                self._hangup(message.reason, message.detail or message.reason, bye=message.bye)
                return False
            if isinstance(message, RequestArrived) and self._in_dialog(message):
                return False

    async def _talk(self) -> None:
        answered = self.clock()
        end_at = answered + self.config.max_duration_s - self.talked_s
        timeout_s = self.config.media_timeout_s
        while True:
            now = self.clock()
            wait = end_at - now
            if timeout_s > 0:
                silence = self.media.silence_s(now)
                if silence >= timeout_s:
                    self.mailbox.put(MediaTimedOut(silence))
                wait = min(wait, max(0.05, timeout_s - silence))
            if wait <= 0:
                self._hangup("max_duration", "maximum call duration reached")
                return
            message = await self.mailbox.get(timeout=wait)
            if message is None:
                continue
            if isinstance(message, MediaTimedOut):
                log.info("call %s: no RTP for %.1f s, hanging up", self.call_id, message.silence_s)
                self._hangup("media_timeout", f"no RTP for {message.silence_s:.1f} s")
                return
            if isinstance(message, Hangup):
                self._hangup(message.reason, message.detail or message.reason, bye=message.bye)
                return
            if isinstance(message, MediaArrived):
                if self.conversation is not None:
                    self.conversation.handle(message.event, message.at)
            elif isinstance(message, TransferRequested):
                self._refer(message.target)
            elif isinstance(message, SayRequested):
                if self.conversation is not None:
                    self.conversation.announce(message.text)
            elif isinstance(message, DtmfRequested):
                self.send_dtmf(message.digits)
            elif isinstance(message, ReferAnswered):
                if self._refer_answered(message):
                    return
            elif isinstance(message, TransferSettled):
                if self._transfer_settled(message.status):
                    return
            elif isinstance(message, BridgeAnswered):
                self._bridge_answered(message.leg)
            elif isinstance(message, BridgeEnded):
                if self._bridge_ended(message):
                    return
            elif isinstance(message, AckArrived):
                self._stop_retransmitting()  # ACK for a re-INVITE's 2xx
            elif isinstance(message, RequestArrived):
                if self._in_dialog(message):
                    return
            else:
                self._other_message(message)

    def _other_message(self, message: CallMessage) -> None:
        """A message the established call has no use for (a subclass may)."""

    # ---- in-dialog requests --------------------------------------------------------

    def _in_dialog(self, message: RequestArrived) -> bool:
        """Answer an in-dialog request; True when it ended the call."""
        request, txn = message.request, message.txn
        method = request.method
        if self.dialog is not None and not self.dialog.check_remote_cseq(request):
            self.endpoint.respond(txn, make_response(request, 500, "CSeq Out of Order"))
            return False
        if method == "BYE":
            self.endpoint.respond(txn, make_response(request, 200))
            if self.state is CallState.RINGING:
                # BYE before our 2xx: §15.1.2 says end the INVITE with 487.
                self._fail(487, "canceled")
            else:
                who = "caller" if self.record.direction == "inbound" else "callee"
                self._end("completed", reason=f"{who} hung up")
            self._stop_retransmitting()
            return True
        if method in ("INVITE", "UPDATE"):
            self._reoffer(request, txn)
        elif method == "INFO":
            self.endpoint.respond(txn, make_response(request, 200))
            self._info_dtmf(request)
        elif method in ("OPTIONS", "NOTIFY"):
            # NOTIFY: the progress of a transfer we asked for (RFC 3515 §2.4.4).
            headers = [("Allow", ALLOW)] if method == "OPTIONS" else []
            self.endpoint.respond(txn, make_response(request, 200, headers=headers))
            if method == "NOTIFY":
                self._transfer_progress(request)
        else:
            self.endpoint.respond(txn, make_response(request, 405, headers=[("Allow", ALLOW)]))
        return False

    def _reoffer(self, request: Request, txn: object) -> None:
        """re-INVITE / UPDATE: a new offer gets a new answer; hold keeps our address."""
        assert self._answerer is not None
        body = _sdp_body(request)
        if self.dialog is not None:
            self.dialog.update_target(request)
        headers = [("Contact", self._contact()), ("Allow", ALLOW)]
        if body is None:
            sdp = self._answerer.current_answer_bytes()
        else:
            try:
                sdp = bytes(self._answerer.answer(SessionDescription.parse(body)))
            except NoCommonCodec as exc:
                response = make_response(request, 488, headers=[("Warning", exc.warning)])
                self.endpoint.respond(txn, response)  # type: ignore[arg-type]
                return
            except SdpError as exc:
                self.endpoint.respond(txn, make_response(request, 488, str(exc)[:80]))  # type: ignore[arg-type]
                return
            result = self._answerer.negotiated
            assert result is not None
            connect_media(self.media, result)
        response = make_response(
            request, 200, headers=[*headers, ("Content-Type", "application/sdp")], body=sdp
        )
        self.endpoint.respond(txn, response)  # type: ignore[arg-type]
        self._milestone("renegotiated")
        if request.method == "INVITE":
            self._stop_retransmitting()
            self._retransmitter = self.endpoint.retransmit_until_ack(
                response, self.flow, lambda: None
            )

    # ---- the conversation ------------------------------------------------------------

    def _media_event(self, event: MediaEvent, at: float) -> None:
        self.mailbox.put(MediaArrived(event, at), control=False)

    def _info_dtmf(self, request: Request) -> None:
        """SIP INFO DTMF (application/dtmf-relay, application/dtmf) reaches the agent."""
        ctype = request.content_type
        digit = None
        if ctype == "application/dtmf-relay":
            digit = parse_dtmf_relay(request.body)
        elif ctype == "application/dtmf":
            digit = parse_dtmf_info(request.body)
        if digit is not None and self.conversation is not None:
            self.conversation.handle(digit, self.clock())

    # ConversationHost
    def hang_up(self, reason: str, *, failed: bool = False) -> None:
        self.mailbox.put(Hangup("agent_error" if failed else "agent_hangup", 200, detail=reason))

    def transfer(self, target: str) -> None:
        self.mailbox.put(TransferRequested(target))

    def send_dtmf(self, digits: str) -> None:
        self.media.send_dtmf(digits)

    def _refer(self, target: str) -> None:
        """Blind transfer (RFC 3515): REFER the caller to ``target``."""
        if self.dialog is None or not target:
            self.mailbox.put(Hangup("transfer_failed", detail=f"no transfer target {target!r}"))
            return
        refer = self.dialog.create_request(
            "REFER",
            via_sent_by=self.local.sent_by(self.flow.transport),
            transport=self.flow.transport,
            headers=[
                ("Refer-To", f"<{target}>"),
                ("Referred-By", self._contact()),
            ],
        )
        self.record.reason = f"transfer to {target}"
        self.record.transfer_target = target

        def on_event(event: TransactionEvent) -> None:
            if isinstance(event, ResponseReceived) and event.response.status >= 200:
                self.mailbox.put(ReferAnswered(event.response))
            elif isinstance(event, TransactionTimedOut):
                self.mailbox.put(ReferAnswered(None))

        self.endpoint.send_request(refer, self.flow, on_event)

    def _transfer_progress(self, notify: Request) -> None:
        """A NOTIFY of the REFER's implicit subscription: its sipfrag's status line."""
        event = (notify.headers.get("event") or "").split(";")[0].strip().lower()
        if event != "refer" or not self.record.transfer_target:
            return
        status = sipfrag_status(notify.body)
        if status is not None and status >= 200:
            self._transfer_final = status
            if self._transfer_pending:
                self.mailbox.put(TransferSettled(status))

    def _transfer_settled(self, status: int | None) -> bool:
        """The referred call ended up ``status``: True when our leg is done (it was
        answered, or nobody told us); a failure leaves the caller with the agent."""
        if not self._transfer_pending:
            return False
        self._transfer_pending = False
        self.record.transfer_status = status
        if status is None or 200 <= status < 300:
            self._milestone("transferred")
            self._hangup("transferred", self.record.reason)
            return True
        self._transfer_failed(status, str(status))
        return False

    def _transfer_failed(self, status: int | None, why: str) -> None:
        """The referred or bridged call did not connect: the caller stays with the agent."""
        log.info("call %s: transfer failed (%s); the agent takes the caller back",
                 self.call_id, why)  # fmt: skip
        self.record.transfer_status = status
        self.record.reason = f"transfer to {self.record.transfer_target} failed: {why}"
        if self.conversation is not None:
            self.conversation.announce(TRANSFER_FAILED_LINE)

    def _refer_answered(self, message: ReferAnswered) -> bool:
        """True when the call ended: the caller accepted the transfer (202) or it failed."""
        response = message.response
        if response is not None and 200 <= response.status < 300:
            # The caller now calls the target: wait (briefly) for the NOTIFY that says
            # how that went, then our leg is done (blind transfer).
            self._transfer_pending = True
            if self._transfer_final is not None:
                self.mailbox.put(TransferSettled(self._transfer_final))
            else:
                loop = asyncio.get_running_loop()
                loop.call_later(TRANSFER_NOTIFY_WAIT_S, self.mailbox.put, TransferSettled(None))
            return False
        status = response.status if response is not None else "timeout"
        target = self.record.transfer_target
        if self.place_bridge is not None and self._bridge_leg is None:
            leg = self.place_bridge(self, target)
            if leg is not None:
                log.info("call %s: REFER refused (%s); bridging to %s as call %s",
                         self.call_id, status, target, leg.call_id)  # fmt: skip
                self._bridge_leg = leg
                self.record.reason = f"REFER answered {status}; bridged to {target}"
                return False
        log.info("call %s: REFER refused (%s); hanging up", self.call_id, status)
        self._hangup("transfer_failed", f"REFER answered {status}")
        return True

    def _bridge_answered(self, leg: CallActor) -> None:
        """The target answered our second leg: from now on voxswitch relays the media
        between the two (the agent falls silent)."""
        if self.state is CallState.ENDED or leg is not self._bridge_leg:
            return
        self.media.bridge(leg.media.local_port)
        leg.media.bridge(self.media.local_port)
        self._bridged = True
        self.record.transfer_status = 200
        self._milestone("transferred")

    def _bridge_ended(self, ended: BridgeEnded) -> bool:
        """The second leg is over: True when that ends our call too."""
        self._bridge_leg = None
        if self._bridged:
            self._bridged = False
            self.media.bridge(None)
            self._hangup("transferred", f"{self.record.reason}; the target hung up")
            return True
        self._transfer_failed(ended.sip_code, ended.disposition)  # never answered
        return False

    def command(self, message: CallMessage) -> None:
        """A command from outside (the control API), handled in the actor's turn."""
        self.mailbox.put(message)

    @property
    def has_agent(self) -> bool:
        return self.voice is not None

    def view(self, *, detail: bool = False) -> dict[str, Any]:
        """The call as the control API shows it; ``detail`` adds the conversation."""
        record = self.record
        now = time.time()
        out: dict[str, Any] = {
            "call_id": self.call_id,
            "direction": record.direction,
            "from": record.from_uri,
            "to": record.to_uri,
            "state": self.state.value,
            "node_id": record.node_id,
            "offered_at": record.offered_at,
            "answered_at": record.answered_at,
            "duration_s": round(now - record.answered_at, 3) if record.answered_at else 0.0,
            "codec": record.codec or None,
            "agent": self.conversation is not None,
            "sip_headers": dict(record.sip_headers),
            "trunk": record.trunk or None,
            "sip_code": record.sip_code,
            # Set once the call ends (a moment before it leaves the live list).
            "disposition": record.disposition or None,
            "reason": record.reason or None,
            "metadata": dict(record.metadata),
            "campaign_id": record.campaign_id or None,
            "agent_name": record.agent or None,
        }
        conversation = self.conversation
        state = conversation.state if conversation is not None else None
        # The console's live list: the last thing said, and how fast the agent answered.
        out["last_line"] = (
            {"role": state.transcript[-1].role, "content": state.transcript[-1].content[:200]}
            if state and state.transcript else None
        )  # fmt: skip
        last_turn = state.turns[-1] if state and state.turns else None
        out["last_latency_s"] = last_turn.as_record()["latency_s"] if last_turn else None
        if detail:
            out["step"] = state.step if state else None
            out["dtmf"] = state.dtmf if state else ""
            out["transcript"] = (
                [{"role": m.role, "content": m.content} for m in state.transcript] if state else []
            )
            out["turns"] = [t.as_record() for t in state.turns] if state else []
            out["media"] = {
                "packets_sent": self.media.packets_sent,
                "packets_received": self.media.packets_received,
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint holds: enough to end the call from outside (BYE and a
        record), and the state a takeover resumes from (``actors.adopted``)."""
        record = self.record
        conversation = self.conversation
        return {
            "call_id": self.call_id,
            "node_id": self.config.node_id,
            "state": self.state.name,
            "saved_at": time.time(),
            "dialog": _dialog_state(self.dialog) if self.dialog is not None else None,
            "transport": self.flow.transport,
            "peer": list(self.flow.remote),
            "media": self._media_state(),
            "record": {name: getattr(record, name) for name in SNAPSHOT_RECORD_FIELDS},
            "conversation": None if conversation is None else conversation.snapshot(),
        }

    def _media_state(self) -> dict[str, Any]:
        """The negotiated media: our port and answer, the peer's RTP address, the codec,
        and our RTP stream's position (SSRC, sequence, timestamp)."""
        negotiated = self._answerer.negotiated if self._answerer is not None else None
        return {
            "local_port": self.media.local_port,
            "codec": self.record.codec or None,
            "payload_type": negotiated.codec.payload_type if negotiated else None,
            "telephone_event_pt": negotiated.telephone_event_pt if negotiated else None,
            "remote_rtp": list(negotiated.remote_rtp) if negotiated else None,
            "srtp": negotiated.crypto[0].suite if negotiated and negotiated.crypto else None,
            "local_sdp": self._answerer.current_answer_bytes().decode(errors="replace")
            if negotiated and self._answerer is not None
            else None,
            "rtp": self.media.rtp_state(),
            "packets_sent": self.media.packets_sent,
            "packets_received": self.media.packets_received,
        }

    # ---- an INVITE we sent (outbound, or a takeover's re-INVITE) ------------------------

    def _send_invite(self) -> None:
        """Send ``self.invite`` (ours); its responses and its timeout come to the mailbox."""

        def on_event(event: TransactionEvent) -> None:
            if isinstance(event, ResponseReceived):
                self.mailbox.put(InviteResponded(event.response))
            elif isinstance(event, TransactionTimedOut):
                self.mailbox.put(InviteTimedOut())

        self.endpoint.send_request(self.invite, self.flow, on_event)

    def _send_ack(self) -> None:
        """ACK the 2xx (§13.2.2.4: a request of its own in the dialog, kept to be sent
        again when the 2xx is)."""
        assert self.dialog is not None
        ack = self.dialog.create_request(
            "ACK",
            via_sent_by=self.local.sent_by(self.flow.transport),
            transport=self.flow.transport,
        )
        self._ack = bytes(ack)
        self._send_raw(self._ack)

    def _send_raw(self, data: bytes) -> None:
        """An ACK outside any transaction: a closed connection or an unreachable
        peer is a log line (the call's timers deal with it), never a crash."""
        try:
            self.flow.send(data)
        except OSError as exc:
            log.info("call %s: ACK not sent: %s", self.call_id, exc)

    def _take_answer(self, response: Response, disposition: str) -> bool:
        """The SDP answer in a 2xx to our offer: the codec and the media it settles. An
        unusable one hangs up with ``disposition``; False then."""
        assert self._answerer is not None
        try:
            body = response.body if response.content_type == "application/sdp" else b""
            if not body:
                raise SdpError("2xx without an SDP answer")
            result = self._answerer.accept_answer(SessionDescription.parse(body))
        except (NoCommonCodec, SdpError) as exc:
            self._hangup(disposition, f"unusable SDP answer: {exc}")
            return False
        self.record.codec = result.codec.name
        connect_media(self.media, result)
        return True

    def _milestone(self, name: str) -> None:
        if self.on_milestone is not None:
            self.on_milestone(name, self.record)

    async def _close_conversation(self) -> None:
        conversation = self.conversation
        if conversation is None:
            return
        await conversation.aclose()
        self.record.dtmf = conversation.state.dtmf
        self.record.barge_ins = list(conversation.state.barge_ins)
        self.record.turns = [t.as_record() for t in conversation.state.turns]

    # ---- endings -------------------------------------------------------------------

    def _respond(self, status: int, **kwargs: object) -> None:
        assert self.invite_txn is not None
        response = make_response(self.invite, status, to_tag=self.local_tag, **kwargs)  # type: ignore[arg-type]
        self.endpoint.respond(self.invite_txn, response)

    def _fail(
        self,
        status: int,
        disposition: str,
        *,
        reason: str = "",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """End a call that was never answered with a final error response."""
        self._respond(status, headers=headers or [])
        self.record.sip_code = status
        self._end(disposition, reason=reason or disposition)

    def _hangup(self, disposition: str, reason: str, *, bye: bool = True) -> None:
        """End an answered call with BYE (§15.1.1); ``bye`` False: without one (the
        dialog went on with another node)."""
        if bye and self.dialog is not None and self.state is not CallState.ENDED:
            request = self.dialog.create_request(
                "BYE",
                via_sent_by=self.local.sent_by(self.flow.transport),
                transport=self.flow.transport,
                headers=[("Reason", reason_header(disposition, reason))],
            )
            self.endpoint.send_request(request, self.flow, lambda event: None)
        self._stop_retransmitting()
        self._end(disposition, reason=reason)

    def _end(self, disposition: str, *, reason: str = "") -> None:
        if self.state is CallState.ENDED:
            return
        if self._bridge_leg is not None:  # the second leg goes with us
            self._bridge_leg.command(Hangup("bridge_ended", detail="the caller's leg ended"))
            self._bridge_leg = None
        if self._bridged and disposition == "completed":
            # The caller hung up on the bridged target: a transfer that worked.
            disposition, reason = "transferred", f"{self.record.reason}; {reason}"
        self.state = CallState.ENDED
        self.record.disposition = disposition
        self.record.reason = reason
        self.record.ended_at = time.time()

    def _stop_retransmitting(self) -> None:
        if self._retransmitter is not None:
            self._retransmitter.ack_received()
            self._retransmitter = None

    async def _finish_recording(self) -> None:
        """The recording's size, duration and checksum for the record (and the
        ``call.recorded`` event), once the media is closed where it ran."""
        path = self.record_to
        if path is None or self.conversation is None:
            return  # never recorded: the call ended before its conversation started
        try:
            await asyncio.wait_for(self.media.wait_closed(), RECORDING_CLOSE_S)
            summary = await asyncio.to_thread(summarize, path)
        except (OSError, TimeoutError) as exc:
            log.warning("call %s: recording %s not summarized: %r", self.call_id, path, exc)
            return
        self.record.recording = summary.as_dict()

    def _close_media(self) -> None:
        self.record.packets_sent = self.media.packets_sent
        self.record.packets_received = self.media.packets_received
        self.record.media = self.media.stats()
        self.media.close()

    def abort(self, error: BaseException) -> None:
        """Supervisor hook after a crash: end the call cleanly on the wire."""
        reason = f"internal error: {type(error).__name__}"
        try:
            if self.state is CallState.RINGING:
                self._fail(500, "failed", reason=reason)
            elif self.state is not CallState.ENDED:
                self._hangup("failed", reason)
        finally:
            self._close_media()


# The record's fields a checkpoint carries (the rest is rebuilt: media counts, turns).
SNAPSHOT_RECORD_FIELDS = (
    "direction", "from_uri", "to_uri", "trunk", "agent", "offered_at", "answered_at",
    "sip_code", "codec", "sip_headers", "metadata", "campaign_id", "webhook_url",
    "transfer_target", "nodes",
)  # fmt: skip

MAX_CUSTOM_HEADERS = 20
MAX_CUSTOM_HEADER_CHARS = 512


def custom_headers(request: Request) -> dict[str, str]:
    """The request's ``X-`` headers (a carrier's or a dialer's metadata), bounded."""
    found: dict[str, str] = {}
    for name, value in request.headers:
        if name.lower().startswith("x-") and len(found) < MAX_CUSTOM_HEADERS:
            found[clean_text(name)] = clean_text(value[:MAX_CUSTOM_HEADER_CHARS])
    return found


def _dialog_state(dialog: Dialog) -> dict[str, Any]:
    """The dialog's fields (``Dialog(**state)`` rebuilds it); by hand: asdict's deep
    copy cost more than the rest of a checkpoint round."""
    return {f: getattr(dialog, f) for f in _DIALOG_FIELDS} | {"route_set": list(dialog.route_set)}


_DIALOG_FIELDS = tuple(f.name for f in dataclasses.fields(Dialog))


# Q.850 causes for the Reason header of our BYE (RFC 3326): what carriers log and bill.
_Q850_CAUSE = {
    "media_timeout": 102,  # recovery on timer expiry
    "no_ack": 102,
    "failed": 41,  # temporary failure
    "agent_error": 41,
    "node_shutdown": 41,
    "node_restart": 41,
    "node_failed": 41,
}  # others (completed, agent_hangup, api_hangup, ...): 16, normal clearing
Q850_NORMAL_CLEARING = 16


def reason_header(disposition: str, text: str) -> str:
    cause = _Q850_CAUSE.get(disposition, Q850_NORMAL_CLEARING)
    clean = text.replace('"', "'").replace("\\", "/")[:120]
    return f'Q.850;cause={cause};text="{clean}"'


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a message/sipfrag body's status line (``SIP/2.0 200 OK``)."""
    first = body.split(b"\n", 1)[0].strip().split()
    if len(first) >= 2 and first[0].upper().startswith(b"SIP/") and first[1].isdigit():
        return int(first[1])
    return None


def _sdp_body(request: Request) -> bytes | None:
    """The SDP of a request: the body itself, or its application/sdp part (multipart)."""
    if not request.body:
        return None
    ctype = request.content_type
    if ctype == "application/sdp":
        return request.body
    if ctype == "multipart/mixed":
        return _multipart_sdp(request)
    return None


def _multipart_sdp(request: Request) -> bytes | None:
    header = request.headers.get("content-type") or ""
    boundary = ""
    for param in header.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return None
    for part in request.body.split(b"--" + boundary.encode()):
        head, sep, body = part.partition(b"\r\n\r\n")
        if sep and b"application/sdp" in head.lower():
            return body.rstrip(b"\r\n") + b"\r\n"
    return None
