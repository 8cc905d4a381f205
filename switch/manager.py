"""The call manager: the node's transaction user and the supervisor of call actors.

It answers what needs no call (OPTIONS, 405/481/501/420/415/406), admits new
INVITEs within the node's limits, starts one ``CallActor`` per call, routes
in-dialog requests to the actor that owns the dialog, and supervises one-for-one:
a crashed actor is ended cleanly on the wire and nothing else is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.adopted import (
    AdoptedCallActor,
    NotAdoptable,
    rebuild_dialog,
    restored_record,
    stand_in_invite,
)
from actors.call import (
    ALLOW,
    CallActor,
    CallConfig,
    CallRecord,
    CallState,
    LocalAddress,
    MediaLeg,
    reason_header,
)
from actors.conversation import Voice
from actors.messages import (
    AckArrived,
    BridgeAnswered,
    BridgeEnded,
    CancelArrived,
    Hangup,
    RequestArrived,
)
from actors.outbound import DialTarget, Origination, OutboundCallActor, build_invite
from actors.webcall import WebCallActor, WebFlow, web_invite
from media.session import VadConfig
from sip.auth import DigestAuthenticator
from sip.dialog import Dialog, new_tag
from sip.endpoint import DROP, Flow, Refusal, ServerTransaction, SipEndpoint
from sip.errors import UriError
from sip.message import Request, make_response
from sip.parser import KNOWN_METHODS
from sip.quick import QuickRequest
from sip.sdp import SrtpPolicy
from sip.transaction import InviteServerTransaction
from sip.uri import SipUri, TelUri
from switch.backbone import events
from switch.cluster.checkpoints import Checkpointer
from switch.guard.admission import AdmissionControl
from switch.guard.conduct import is_failure
from switch.guard.sources import SOURCE_HEADER, SourceGuard
from switch.guard.targets import TargetPolicy, TargetRefused, resolve_checked, system_resolve
from switch.mediaplant import MediaUnavailable
from switch.recording import recording_path

log = logging.getLogger("voxswitch.manager")

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()
ACCEPTED_BODIES = ("application/sdp", "multipart/mixed")
RETRY_AFTER_BUSY_S = 5
# A banned caller behind a trusted proxy: answered, since the proxy reads silence as
# a dead node (it cannot be dropped unread: its packets are the proxy's).
FORBIDDEN = Refusal(403, "Forbidden")


RECENT_CALLS = 5000  # ended calls the API can still show
TAKEN_OVER = "taken_over"  # the disposition of a call another node adopted from us
HANDED_OVER = "handed_over"  # ... and of one this draining node left for another to adopt
NOT_OURS = frozenset({TAKEN_OVER, HANDED_OVER})  # no record, event or checkpoint delete here


class InboundPolicy(Protocol):
    """What the trunks and routes say about inbound INVITEs (the node's trunk book)."""

    def trunk_of_source(self, ip: str) -> str | None:
        """The trunk whose allowlist holds this source address."""

    def trunks_configured(self) -> bool:
        """Any trunk at all: then unknown sources are refused (403) or challenged."""

    def auth_required(self) -> bool:
        """Digest is on (a realm is set, or a trunk has an inbound user)."""

    def trunk_of_user(self, user: str) -> str | None:
        """The trunk whose inbound digest user this is."""

    def trunk_full(self, name: str) -> bool:
        """The trunk is at its call limit."""

    def agent_for(self, number: str) -> str | None:
        """The agent the inbound routes give this dialed number."""

    def srtp_for(self, trunk: str) -> SrtpPolicy:
        """The trunk's SRTP policy for the calls it sends us."""

    def certificate_for(self, trunk: str) -> str | None:
        """The name the trunk's TLS client certificate must carry; None: no check."""

    def record_for(self, trunk: str) -> bool | None:
        """Does the trunk say to record its calls? None: the node's setting decides."""


class CallRefused(Exception):
    """An outbound call the node cannot place now (the API's 429/503)."""

    def __init__(self, status: int, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


# (call_id, near=port of a leg it will be bridged to) -> a media leg with a port bound
MediaFactory = Callable[..., MediaLeg]


@dataclass
class ManagerStats:
    calls_offered: int = 0
    calls_placed: int = 0  # outbound calls started
    calls_rejected: Counter[int] = field(default_factory=Counter)
    dispositions: Counter[str] = field(default_factory=Counter)
    outbound_dispositions: Counter[str] = field(default_factory=Counter)
    crashed: int = 0
    adopted: int = 0  # calls taken over from a dead node (or this node's previous run)
    forbidden: int = 0  # INVITEs from no trunk's address (403)
    # New INVITEs refused statelessly before any call work, by why: overload,
    # max_calls, draining, backlog; and requests dropped for their source.
    refused: Counter[str] = field(default_factory=Counter)


class CallManager:
    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        local: LocalAddress,
        media_factory: MediaFactory,
        call_config: CallConfig,
        max_calls: int,
        on_record: Callable[[CallRecord], None] | None = None,
        authenticator: DigestAuthenticator | None = None,
        voice: Voice | None = None,
        voices: dict[str, Voice | None] | None = None,
        vad: VadConfig | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
        outbox_full: Callable[[], bool] | None = None,
        checkpointer: Checkpointer | None = None,
        admission: AdmissionControl | None = None,
        sources: SourceGuard | None = None,
        server_header: str = "",
        targets: TargetPolicy | None = None,
    ) -> None:
        self.loop = loop
        self.admission = admission  # overload control: new INVITEs by measured load
        self.targets = targets  # where outbound calls may go (SSRF), checked at connect
        self.sources = sources  # per-source limits and bans
        # How long the request being screened waited in the UDP socket's queue.
        self.queue_wait: Callable[[], float] | None = None
        self.checkpointer = checkpointer
        self.publish = publish  # lifecycle events, into the outbox
        self.outbox_full = outbox_full
        self.local = local
        self.media_factory = media_factory
        self.call_config = call_config
        self.max_calls = max_calls
        self.on_record = on_record
        self.authenticator = authenticator
        self.voice = voice
        self.voices = voices if voices is not None else {"default": voice, "none": None}
        self.vad = vad
        # server_header: our Server/User-Agent ('' sends none: no product to fingerprint)
        self.endpoint = SipEndpoint(self, loop=loop, allow=ALLOW, user_agent=server_header)
        self.endpoint.screen = self.screen
        self.endpoint.quick_screen = self.quick_screen
        self.endpoint.shedding = self.shedding
        if sources is not None:
            self.endpoint.drop_source = sources.banned
        self.stats = ManagerStats()
        self.draining = False
        self._dialogs: dict[tuple[str, str], CallActor] = {}
        self._by_invite: dict[int, CallActor] = {}
        self._tasks: dict[CallActor, asyncio.Task[CallRecord]] = {}
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._watchers: dict[str, Callable[[CallRecord], None]] = {}
        # Where SIP to a peer goes (set by the node once its UDP socket is bound), and
        # how a TCP or TLS connection to one is opened (TLS: with the name its
        # certificate must carry).
        self.flow_to: Callable[[tuple[str, int]], Flow] | None = None
        self.tcp_connect: Callable[[str, int], Awaitable[Flow]] | None = None
        self.tls_connect: Callable[[str, int, str], Awaitable[Flow]] | None = None
        self.srtp: SrtpPolicy = "optional"  # for INVITEs no trunk's (a trunk says its own)
        self.record_all = False  # record calls no trunk or API request decides for
        self.recordings_dir = ""
        self.record_announcement = ""  # said to a recorded call before the greeting
        self.resume_line = "Sorry, one moment."  # said to an adopted call, then it goes on
        self.pace: Callable[[str], float] | None = None  # a trunk's next attempt time
        # The trunks and routes (the node's): None admits every INVITE (digest aside).
        self.inbound: InboundPolicy | None = None
        # Places the second leg of a bridged transfer: (target, the first leg) -> actor.
        self.bridge_dialer: Callable[[str, CallActor], CallActor] | None = None

    @property
    def active_calls(self) -> int:
        return len(self._tasks)

    # ---- the screen: what is refused before it costs a transaction ------------------

    def screen(self, request: Request, flow: Flow) -> Refusal | None:
        """Called by the endpoint for every new request (not ACK, not retransmissions)."""
        source = self._source(request, flow)
        in_dialog = request.to.tag is not None
        why = self._source_verdict(source, request.headers.get("user-agent"))
        if why is None and not in_dialog and request.method != "CANCEL":
            why = self._probed(request, source)
        if why is not None:
            return self._source_refusal(request.method, source, flow, why)
        return self._screen(request.method, in_dialog, flow)

    def shedding(self) -> bool:
        """New INVITEs are being refused now (the endpoint then looks at them quickly;
        the first refusal of a burst comes from the full path)."""
        admission = self.admission
        return (
            self.draining
            or len(self._tasks) >= self.max_calls
            or (admission is not None and admission.refusing(self.loop.time()))
        )

    def quick_screen(self, request: QuickRequest, flow: Flow) -> Refusal | None:
        """The same for a new INVITE the endpoint has only glanced at (sip.quick). A
        glance reads no X-Source-IP: a trusted proxy's INVITE is judged by load only."""
        source = flow.remote[0]
        why = self._source_verdict(source, request.user_agent)
        if why is not None:
            return self._source_refusal(request.method, source, flow, why)
        return self._screen(request.method, request.to_tagged, flow)

    # ---- sources: who really sent it, and what it has been doing ----------------------

    def _source(self, request: Request, flow: Flow) -> str:
        """The request's real source: its network address, or behind a trusted proxy
        the address the proxy vouches for (switch.guard.sources.source_of)."""
        ip = flow.remote[0]
        if self.sources is None or not self.sources.proxies:
            return ip
        claimed = request.headers.get_all(SOURCE_HEADER)
        return self.sources.source_of(ip, claimed[-1] if claimed else None)

    def _source_verdict(self, source: str, user_agent: str | None) -> str | None:
        return self.sources.request(source, user_agent) if self.sources is not None else None

    def _probed(self, request: Request, source: str) -> str | None:
        """An out-of-dialog request to a user or number no inbound route or trunk knows
        counts toward its source's distinct unknown targets (svwar's sweep)."""
        sources = self.sources
        if sources is None or sources.exempt(source):
            return None
        target = _target(request)
        if not target or self._known_target(target):
            return None
        return sources.unknown_target(source, target)

    def _known_target(self, target: str) -> bool:
        inbound = self.inbound
        return inbound is not None and (
            inbound.agent_for(target) is not None or inbound.trunk_of_user(target) is not None
        )

    def _source_refusal(self, method: str, source: str, flow: Flow, why: str) -> Refusal:
        """A refused source's request: dropped unanswered (a scanner learns nothing),
        but answered 403 through a trusted proxy, which would take silence for a dead
        node and fail every call over to the next."""
        self.stats.refused[f"source_{why}"] += 1
        if why != "banned":
            log.info("%s from %s refused and the source banned (%s)", method, source, why)
        if source != flow.remote[0]:
            return FORBIDDEN
        return DROP

    def _answered(self, request: Request, flow: Flow, status: int) -> None:
        """What we answered a new request counts toward its source's conduct: too many
        error answers (or distinct unknown targets among them) ban it."""
        sources = self.sources
        if sources is None or not is_failure(status):
            return
        source = self._source(request, flow)
        target = "" if request.to.tag is not None else _target(request)
        why = sources.answered(source, status, target)
        if why is not None:
            self.stats.refused[f"source_{why}"] += 1
            log.info("%s banned: too many %s (last: %s %d)", source, why, request.method, status)

    def _screen(self, method: str, in_dialog: bool, flow: Flow) -> Refusal | None:
        if method != "INVITE" or in_dialog:
            return None  # in-dialog work belongs to calls we already have: always served
        return self._admission_refusal(flow)

    def _admission_refusal(self, flow: Flow) -> Refusal | None:
        if self.draining:
            return self._refusal("draining", 30, "Node Draining")
        if len(self._tasks) >= self.max_calls:
            return self._refusal("max_calls", RETRY_AFTER_BUSY_S)
        if self.outbox_full is not None and self.outbox_full():
            # Events we could not deliver fill the spool: take no call whose record
            # we might have to drop.
            return self._refusal("backlog", 60, "Backlog Full")
        admission = self.admission
        # The kernel's queue delay is the UDP socket's (a TCP request brings none).
        udp = flow.transport == "UDP"
        waited = self.queue_wait() if udp and self.queue_wait is not None else 0.0
        if admission is not None and not admission.admit(self.loop.time(), waited):
            reason = "Overloaded" if admission.last_reason != "max_cps" else None
            return self._refusal(admission.last_reason, admission.config.retry_after_s, reason)
        return None

    def _refusal(self, why: str, retry_after_s: int, reason: str | None = None) -> Refusal:
        self.stats.refused[why] += 1
        self.stats.calls_rejected[503] += 1
        return Refusal(503, reason, (("Retry-After", str(retry_after_s)),))

    # ---- EndpointHandler ---------------------------------------------------------

    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        to_tag = request.to.tag
        if to_tag is not None:
            self._in_dialog(request, to_tag, txn, flow)
            return
        if txn is None:
            return  # an ACK outside any dialog: nothing to do (§17.2.3 already absorbed ours)
        method = request.method
        if method not in KNOWN_METHODS:
            self._reply(txn, request, 501, [("Allow", ALLOW)], flow=flow)
            return
        unsupported = _unsupported_extensions(request)
        if unsupported:
            self._reply(txn, request, 420, [("Unsupported", ", ".join(unsupported))], flow=flow)
            return
        if method == "INVITE":
            assert isinstance(txn, InviteServerTransaction)
            trunk = self.inbound.trunk_of_source(flow.remote[0]) if self.inbound else None
            if trunk is None and self._forbidden(request, txn, flow):
                return
            if trunk is None:
                trunk = self._authenticated(request, txn, flow)
            if trunk is not None and self._certified(request, txn, flow, trunk):
                self._new_call(request, txn, flow, trunk)
        elif method == "OPTIONS":
            self._reply(
                txn,
                request,
                503 if self.draining else 200,
                [("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Language", "en")],
            )
        elif method in ("BYE", "INFO", "UPDATE", "PRACK", "NOTIFY"):
            self._reply(txn, request, 481, flow=flow)
        else:  # REGISTER, MESSAGE, SUBSCRIBE...: we are not a registrar or presence server
            self._reply(txn, request, 405, [("Allow", ALLOW)], flow=flow)

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        actor = self._by_invite.get(id(invite_txn))
        if actor is not None:
            actor.mailbox.put(CancelArrived(cancel))
        else:
            self._reply(invite_txn, invite_txn.request, 487)

    # ---- routing -------------------------------------------------------------------

    def _in_dialog(
        self, request: Request, to_tag: str, txn: ServerTransaction | None, flow: Flow
    ) -> None:
        actor = self._dialogs.get((request.call_id, to_tag))
        if actor is None:
            if txn is not None:
                self._reply(txn, request, 481, flow=flow)
            return
        if txn is None:
            actor.mailbox.put(AckArrived(request))
        else:
            actor.mailbox.put(RequestArrived(request, txn))

    def _certified(self, request: Request, txn: ServerTransaction, flow: Flow, trunk: str) -> bool:
        """A trunk that asks for a client certificate calls only over TLS with a
        verified certificate that names it (RFC 5922 domain certificates); else 403."""
        name = self.inbound.certificate_for(trunk) if self.inbound and trunk else None
        if name is None:
            return True
        if flow.transport == "TLS" and name in getattr(flow, "peer_names", ()):
            return True
        log.info("INVITE %s from %s (trunk %s): no TLS client certificate for %s: 403",
                 request.call_id, flow.remote[0], trunk, name)  # fmt: skip
        self._reply(txn, request, 403, reason="Client Certificate Required", flow=flow)
        return False

    def _forbidden(self, request: Request, txn: ServerTransaction, flow: Flow) -> bool:
        """Trunks are configured, the source is none of theirs and there is no digest
        to prove otherwise: 403 (counted in the SIP responses sent)."""
        if self.inbound is None or not self.inbound.trunks_configured():
            return False
        if self._auth_on():
            return False  # a known user (or a trunk's) may still call: challenge instead
        self.stats.forbidden += 1
        log.info("INVITE %s from %s: no trunk has this address: 403",
                 request.call_id, flow.remote[0])  # fmt: skip
        self._reply(txn, request, 403, reason="Unknown Trunk", flow=flow)
        return True

    def _auth_on(self) -> bool:
        return self.authenticator is not None and (
            self.inbound is None or self.inbound.auth_required()
        )

    def _authenticated(self, request: Request, txn: ServerTransaction, flow: Flow) -> str | None:
        """Digest auth when on (RFC 3261 §22.2): the call's trunk ('' for a plain user)
        when the credentials hold; else 401 is answered and None returned."""
        auth = self.authenticator
        if auth is None or not self._auth_on():
            return ""
        now = time.time()  # wall clock: nonces are shared between nodes
        result = auth.verify_request(request, now)
        source = self._source(request, flow)
        if result.ok:
            if self.sources is not None:
                self.sources.authenticated(source)  # its challenges on the way do not count
            user = result.username or ""
            return (self.inbound.trunk_of_user(user) if self.inbound else None) or ""
        if result.reason not in ("missing", "stale"):
            log.info(
                "INVITE %s from %s: auth failed: %s",
                request.call_id,
                request.from_.uri,
                result.reason,
            )
            if self.sources is not None and self.sources.auth_failed(source):
                log.warning("%s banned: too many failed authentications", source)
                self.stats.refused["source_auth"] += 1
        challenges = auth.challenges(now, stale=result.stale)
        self._reply(txn, request, 401, [("WWW-Authenticate", c) for c in challenges], flow=flow)
        return None

    def _new_call(
        self, request: Request, txn: InviteServerTransaction, flow: Flow, trunk: str = ""
    ) -> None:
        self.stats.calls_offered += 1
        if trunk and self.inbound is not None and self.inbound.trunk_full(trunk):
            headers = [("Retry-After", str(RETRY_AFTER_BUSY_S))]
            self._reply(txn, request, 503, headers, reason="Trunk Limit Reached")
            return
        if request.body and request.content_type not in ACCEPTED_BODIES:
            self._reply(txn, request, 415, [("Accept", "application/sdp")])
            return
        if not _accepts_sdp(request):
            self._reply(txn, request, 406, [("Accept", "application/sdp")])
            return
        self._reply(txn, request, 100)
        call_id = request.call_id
        try:
            media = self.media_factory(call_id)
        except MediaUnavailable as exc:
            log.warning("call %s: no media port: %s", call_id, exc)
            self._reply(txn, request, 503, [("Retry-After", str(RETRY_AFTER_BUSY_S))])
            return
        # Whatever fails between the leg's port and the actor's task frees the port;
        # the endpoint then answers the INVITE (400/500) and its transaction ends.
        with released_on_failure(media):
            self._start_inbound(request, txn, flow, trunk, media)

    def _start_inbound(
        self,
        request: Request,
        txn: InviteServerTransaction,
        flow: Flow,
        trunk: str,
        media: MediaLeg,
    ) -> None:
        agent = self._inbound_agent(request)
        actor = CallActor(
            invite=request,
            invite_txn=txn,
            flow=flow,
            local_tag=new_tag(),
            endpoint=self.endpoint,
            media=media,
            local=self.local,
            config=self.call_config,
            clock=self.loop.time,
            voice=self.voices.get(agent, self.voice),
            vad=self.vad,
            srtp=self.inbound.srtp_for(trunk) if self.inbound and trunk else self.srtp,
        )
        actor.record.trunk = trunk
        actor.record.agent = agent
        trunk_says = self.inbound.record_for(trunk) if self.inbound and trunk else None
        self._arm_recording(actor, trunk_says)
        self._start(actor)

    def _arm_recording(self, actor: CallActor, record: bool | None) -> None:
        """Where the call's recording goes (none: not recorded) and the notice said
        first when it is. ``record`` is the call's own or its trunk's word; None leaves
        it to the node's setting."""
        if (self.record_all if record is None else record) and self.recordings_dir:
            actor.record_to = recording_path(self.recordings_dir, actor.call_id)
        actor.record_announcement = self.record_announcement

    # ---- outbound ------------------------------------------------------------------

    def originate(
        self,
        origination: Origination,
        *,
        agent: str = "default",
        near: int | None = None,
        on_answered: Callable[[OutboundCallActor], None] | None = None,
        record: bool | None = None,
    ) -> CallActor:
        """Start an outbound call actor (it is ``queued`` until its trunk's pace);
        ``record``: the call's or its trunk's word (None: the node's setting)."""
        self.refuse_if_full()
        if self.admission is not None and not self.admission.admit(self.loop.time(), outbound=True):
            # Past the node's measured limit: a campaign puts the number back for
            # Retry-After, so it slows to what the node carries beside its inbound calls.
            self.stats.refused["outbound_overload"] += 1
            raise CallRefused(503, "the node is overloaded", self.admission.config.retry_after_s)
        if self.outbox_full is not None and self.outbox_full():
            raise CallRefused(503, "undelivered events fill the spool", 60)
        if self.flow_to is None or not origination.targets:
            raise CallRefused(503, "no route for this call", RETRY_AFTER_BUSY_S)
        call_id = uuid.uuid4().hex
        try:
            media = self.media_factory(call_id, near=near)
        except MediaUnavailable as exc:
            raise CallRefused(503, f"no RTP port: {exc}", RETRY_AFTER_BUSY_S) from exc
        with released_on_failure(media):
            actor = self._start_outbound(
                call_id, media, origination, agent, on_answered=on_answered, record=record
            )
        self.stats.calls_placed += 1
        return actor

    def _start_outbound(
        self,
        call_id: str,
        media: MediaLeg,
        origination: Origination,
        agent: str,
        *,
        on_answered: Callable[[OutboundCallActor], None] | None,
        record: bool | None,
    ) -> CallActor:
        assert self.flow_to is not None
        first = origination.targets[0]
        flow = self.flow_to((first.host, first.port))
        local_tag = new_tag()
        invite = build_invite(
            call_id=call_id, from_number=origination.from_number, from_tag=local_tag, cseq=1,
            target=first, to=origination.to, via_sent_by=self.local.sent_by(first.transport),
            contact=self.local.contact(first.transport), local_host=self.local.host, sdp=b"",
        )  # fmt: skip
        actor = OutboundCallActor(
            invite=invite,
            invite_txn=None,
            flow=flow,
            local_tag=local_tag,
            endpoint=self.endpoint,
            media=media,
            local=self.local,
            config=self.call_config,
            clock=self.loop.time,
            voice=self.voices.get(agent, self.voice),
            vad=self.vad,
            origination=origination,
            connect=self._connect,
            pace=self.pace,
            on_answered=on_answered,
        )
        self._arm_recording(actor, record)
        actor.record.agent = agent if agent in self.voices else "default"
        self._start(actor)
        return actor

    # ---- web calls (the console's WebRTC test phone) ----------------------------------

    def refuse_if_full(self) -> None:
        """Raise CallRefused when the node takes no call it starts itself now (an
        outbound or a web call): draining, or at ``max_calls``."""
        if self.draining:
            raise CallRefused(503, "the node is draining", 30)
        if len(self._tasks) >= self.max_calls:
            raise CallRefused(503, f"the node is at its {self.max_calls} calls", RETRY_AFTER_BUSY_S)

    def web_call(
        self, media: MediaLeg, remote: tuple[str, int], agent: str, *, caller: str = "phone"
    ) -> CallActor:
        """Start a call whose line is a WebRTC peer connection (``media``): answered at
        once, the agent ``agent`` talks, supervised and recorded like any call."""
        self.refuse_if_full()
        with released_on_failure(media):
            return self._start_web(media, remote, agent, caller)

    def _start_web(
        self, media: MediaLeg, remote: tuple[str, int], agent: str, caller: str
    ) -> CallActor:
        agent = agent if agent in self.voices else "default"
        actor = WebCallActor(
            invite=web_invite(caller, agent),
            invite_txn=None,
            flow=WebFlow(remote),
            local_tag=new_tag(),
            endpoint=self.endpoint,
            media=media,
            local=self.local,
            config=self.call_config,
            clock=self.loop.time,
            voice=self.voices.get(agent, self.voice),
            vad=self.vad,
        )
        actor.record.agent = agent
        actor.record.trunk = "webrtc"
        self._arm_recording(actor, None)  # the node's setting, as for a SIP call
        self.stats.calls_offered += 1
        self._start(actor)
        return actor

    def _place_bridge(self, actor: CallActor, target: str) -> CallActor | None:
        """The second leg of a transfer the peer would not take by REFER; its answer
        and its end go to ``actor``'s mailbox. None when it cannot be placed."""
        if self.bridge_dialer is None:
            return None
        try:
            leg = self.bridge_dialer(target, actor)
        except (CallRefused, ValueError) as exc:  # ValueError: no route
            log.info("call %s: no bridge to %s: %s", actor.call_id, target, exc)
            return None
        self.when_ended(
            leg.call_id, lambda r: actor.command(BridgeEnded(r.disposition, r.sip_code))
        )
        return leg

    @staticmethod
    def bridge_answered(first: CallActor) -> Callable[[OutboundCallActor], None]:
        """The second leg's ``on_answered``: tell the first leg to bridge."""
        return lambda leg: first.command(BridgeAnswered(leg))

    async def _connect(self, target: DialTarget) -> Flow:
        """The flow to an outbound call's trunk or dialed host. Its name is resolved
        and every address checked now (SSRF: the DNS may point elsewhere since the
        trunk or number was accepted); the call goes to a checked address."""
        host = target.host.strip("[]")
        if self.targets is not None:
            try:
                host = (await resolve_checked(self.targets, host, target.port, system_resolve))[0]
            except TargetRefused as exc:
                raise OSError(f"target refused: {exc}") from exc
        server_name = target.server_name or target.host.strip("[]")
        return await self.connect(host, target.port, target.transport, server_name)

    async def connect(
        self, host: str, port: int, transport: str = "udp", server_name: str = ""
    ) -> Flow:
        """The flow to ``host`` (resolved when it is a name): UDP, or a TCP or TLS
        connection (opened, or the one already open). A TLS peer's certificate must
        name ``server_name`` (default: ``host`` as given)."""
        assert self.flow_to is not None
        host = host.strip("[]")
        server_name = server_name or host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except UnicodeError as exc:  # a name the resolver cannot even encode
                raise OSError(f"cannot resolve {host!r}: {exc}") from exc
            host = str(infos[0][4][0])
        if transport == "tcp":
            if self.tcp_connect is None:
                raise OSError("no TCP transport")
            return await self.tcp_connect(host, port)
        if transport == "tls":
            if self.tls_connect is None:
                raise OSError("no TLS transport")
            return await self.tls_connect(host, port, server_name)
        return self.flow_to((host, port))

    def _start(self, actor: CallActor, *, offered: bool = True) -> None:
        """Supervise the actor from here on. What can fail comes before the actor is
        registered: a failure leaves nothing behind (the caller frees the leg)."""
        actor.on_milestone = self._milestone
        actor.place_bridge = self._place_bridge
        if offered:  # an adopted call was offered on the node that died
            self._publish(events.offered(actor.record), actor.record)
        self._dialogs[(actor.call_id, actor.local_tag)] = actor
        if actor.invite_txn is not None:
            self._by_invite[id(actor.invite_txn)] = actor
        task = self.loop.create_task(actor.run(), name=f"call {actor.call_id}")
        self._tasks[actor] = task
        task.add_done_callback(lambda t: self._call_done(actor, t))

    def _publish(self, event: dict[str, Any], record: CallRecord) -> None:
        if self.publish is None:
            return
        if record.webhook_url:
            event["webhook_url"] = record.webhook_url  # the webhook sink posts it there too
        self.publish(event)

    def _inbound_agent(self, request: Request) -> str:
        """The agent the dialed number's inbound route names ('none': greeting only;
        a name the node does not have: its default)."""
        if self.inbound is None:
            return "default"
        uri = request.parsed_uri
        number = uri.user if isinstance(uri, SipUri) and uri.user else ""
        agent = self.inbound.agent_for(number) or "default"
        return agent if agent in self.voices else "default"

    def _call_done(self, actor: CallActor, task: asyncio.Task[CallRecord]) -> None:
        """One-for-one supervision: whatever happened, end the call cleanly."""
        self._tasks.pop(actor, None)
        self._dialogs.pop((actor.call_id, actor.local_tag), None)
        if actor.invite_txn is not None:
            self._by_invite.pop(id(actor.invite_txn), None)
        record = actor.record
        try:
            if task.cancelled():
                actor.abort(asyncio.CancelledError())
            elif (error := task.exception()) is not None:
                self.stats.crashed += 1
                log.error("call %s crashed: %r", actor.call_id, error, exc_info=error)
                actor.abort(error)
        except Exception:  # ending it on the wire failed too: still record and free it
            log.exception("call %s: could not be ended cleanly", actor.call_id)
        if not record.disposition:
            record.disposition = "failed"
            record.ended_at = time.time()
        if record.disposition in NOT_OURS:
            # Its record and events are the adopter's now; its checkpoint too.
            log.info("call %s: left to another node (%s)", record.call_id, record.disposition)
            return
        if record.direction == "outbound":
            self.stats.outbound_dispositions[record.disposition] += 1
        else:
            self.stats.dispositions[record.disposition] += 1
        log.info(
            "call %s ended: %s (%s) after %.1f s",
            record.call_id,
            record.disposition,
            record.reason,
            record.duration_s,
        )
        self._remember(actor)
        watcher = self._watchers.pop(record.call_id, None)
        if watcher is not None:
            try:
                watcher(record)
            except Exception:  # a campaign's bug must not stop the supervision
                log.exception("call %s: end watcher failed", record.call_id)
        if self.on_record is not None:
            self.on_record(record)
        if self.checkpointer is not None:
            self.checkpointer.ended(record.call_id)
        self._publish_end(record)

    def _remember(self, actor: CallActor) -> None:
        """The API still shows an ended call (its outcome) for a while."""
        record = actor.record
        view = actor.view(detail=True)  # with its transcript and turns, for the console
        view.update(
            state="ended",
            disposition=record.disposition,
            sip_code=record.sip_code,
            reason=record.reason,
            ended_at=record.ended_at,
            duration_s=round(record.duration_s, 3),
            recording=record.recording or None,
        )
        self.recent[record.call_id] = view
        while len(self.recent) > RECENT_CALLS:
            self.recent.popitem(last=False)

    def _publish_end(self, record: CallRecord) -> None:
        for event in events.ended(record):
            self._publish(event, record)

    def _milestone(self, name: str, record: CallRecord) -> None:
        """answered, confirmed, renegotiated, transferred: checkpoint the call again."""
        if self.checkpointer is not None:
            self.checkpointer.changed(record.call_id)
        if name == "answered":
            self._publish(events.answered(record), record)
        elif name == "adopted" and isinstance(actor := self.find(record.call_id), AdoptedCallActor):
            self._publish(events.adopted(record, actor.from_node, actor.rebind_s), record)
        elif name == "transferred":
            self._publish(events.transferred(record, record.transfer_target), record)

    def recording_archived(self, call_id: str, location: str) -> None:
        """The archive holds the call's recording now (its local copy is gone)."""
        view = self.recent.get(call_id)
        if view is not None and view.get("recording"):
            view["recording"] = {**view["recording"], "location": location, "archived": True}

    def when_ended(self, call_id: str, callback: Callable[[CallRecord], None]) -> None:
        """Call ``callback`` with the record when this live call ends (a campaign)."""
        self._watchers[call_id] = callback

    def find(self, call_id: str) -> CallActor | None:
        """The live call with this Call-ID (the control API's call id)."""
        for actor in self._tasks:
            if actor.call_id == call_id:
                return actor
        return None

    def live(self) -> list[CallActor]:
        return list(self._tasks)

    def live_snapshots(self) -> dict[str, Callable[[], dict[str, Any]]]:
        """Every answered live call and how to snapshot it (for the checkpointer)."""
        return {a.call_id: a.snapshot for a in self._tasks if a.dialog is not None}

    # ---- takeover: calls a dead node (or this node's previous run) left ----------------

    def adopt(self, snapshot: dict[str, Any], from_node: str) -> None:
        """Take over a checkpointed call this node has just claimed: rebind its media
        here and let its agent go on; a call that cannot be adopted is ended."""
        call_id = snapshot["call_id"]
        why = ""
        try:
            AdoptedCallActor.check(snapshot)
        except NotAdoptable as exc:
            why = str(exc)
        if not why and (self.draining or len(self._tasks) >= self.max_calls):
            why = "this node is full" if not self.draining else "this node is draining"
        if not why and self.flow_to is None:
            why = "no SIP transport yet"
        media = None
        if not why:
            try:
                media = self.media_factory(call_id)
            except MediaUnavailable as exc:
                why = f"no media port: {exc}"
        if why or media is None:
            log.warning("call %s (from %s): not adopted: %s", call_id, from_node, why)
            self.end_orphan(snapshot, from_node)
            return
        with released_on_failure(media):
            self._start_adopted(snapshot, from_node, media)

    def _start_adopted(self, snapshot: dict[str, Any], from_node: str, media: MediaLeg) -> None:
        assert self.flow_to is not None
        me, call_id = self.call_config.node_id, snapshot["call_id"]
        peer = snapshot["peer"]
        dialog = rebuild_dialog(snapshot, self.local.contact("UDP"))
        agent = str((snapshot.get("record") or {}).get("agent") or "default")
        actor = AdoptedCallActor(
            invite=stand_in_invite(dialog),
            invite_txn=None,
            flow=self.flow_to((peer[0], int(peer[1]))),
            local_tag=dialog.local_tag,
            endpoint=self.endpoint,
            media=media,
            local=self.local,
            config=self.call_config,
            clock=self.loop.time,
            state=CallState.ANSWERED,
            dialog=dialog,
            voice=self.voices.get(agent, self.voice) if agent != "none" else None,
            vad=self.vad,
            resume_line=self.resume_line,
        )
        actor.restore(snapshot, from_node)
        log.info("call %s: adopted from %s (node %s), re-INVITE to %s",
                 call_id, from_node, me, dialog.remote_target)  # fmt: skip
        self.stats.adopted += 1
        self._start(actor, offered=False)

    def end_orphan(self, snapshot: dict[str, Any], from_node: str) -> None:
        """A checkpointed call nobody will carry on: BYE the caller from the saved
        dialog (over UDP; a TCP connection died with its node), write its record
        (``node_restart`` for this node's previous run, else ``node_failed``), drop
        its checkpoint."""
        call_id = snapshot["call_id"]
        restart = from_node == self.call_config.node_id
        disposition = "node_restart" if restart else "node_failed"
        reason = "the node restarted during the call" if restart else f"node {from_node} failed"
        saved = snapshot.get("dialog")
        peer = snapshot.get("peer")
        if saved and peer and snapshot.get("transport") == "UDP" and self.flow_to is not None:
            bye = Dialog(**saved).create_request(
                "BYE",
                via_sent_by=self.local.sent_by(),
                headers=[("Reason", reason_header(disposition, reason))],
            )
            self.endpoint.send_request(bye, self.flow_to((peer[0], int(peer[1]))), lambda _: None)
        else:
            log.warning("call %s: not reachable from here; recorded only", call_id)
        record = restored_record(snapshot, self.call_config.node_id)
        record.ended_at = snapshot.get("saved_at") or time.time()
        record.disposition, record.reason = disposition, reason
        record.turns = list((snapshot.get("conversation") or {}).get("turns", []))
        self.stats.dispositions[disposition] += 1
        log.warning("call %s: ended (%s): BYE sent, record written", call_id, reason)
        if self.on_record is not None:
            self.on_record(record)
        if self.checkpointer is not None:
            self.checkpointer.ended(call_id)
        self._publish_end(record)

    def taken_over(self, call_id: str) -> None:
        """Another node adopted this live call (it thought this one dead): let it go
        without a word on the wire, a record or an event (the adopter has them)."""
        actor = self.find(call_id)
        if actor is not None:
            actor.mailbox.put(Hangup(TAKEN_OVER, detail="adopted by another node", bye=False))

    def live_ids(self) -> set[str]:
        return {a.call_id for a in self._tasks}

    def _reply(
        self,
        txn: ServerTransaction,
        request: Request,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        *,
        reason: str | None = None,
        flow: Flow | None = None,
    ) -> None:
        """Answer ``request``; with its ``flow``, an error answer counts against its
        source (``_answered``)."""
        if status >= 300:
            self.stats.calls_rejected[status] += request.method == "INVITE"
        tag = new_tag() if status > 100 else None
        self.endpoint.respond(
            txn, make_response(request, status, reason, to_tag=tag, headers=headers)
        )
        if flow is not None:
            self._answered(request, flow, status)

    # ---- lifecycle ------------------------------------------------------------------

    async def drain(
        self, grace_s: float, hand_over: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Refuse new calls, let calls finish for ``grace_s``; then hand the rest over
        to another node (``hand_over``: True when it could) or hang them up."""
        self.draining = True
        log.info("draining: %d calls in progress, grace %.0f s", len(self._tasks), grace_s)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
        if self._tasks and hand_over is not None and await hand_over():
            return
        for actor in list(self._tasks):
            actor.mailbox.put(Hangup("node_shutdown", 503))
        await self._wait_ended()

    async def release_all(self) -> int:
        """End every live call here without a word on the wire, a record or an event:
        their checkpoints are saved and another node adopts them. How many."""
        count = len(self._tasks)
        for actor in list(self._tasks):
            actor.mailbox.put(Hangup(HANDED_OVER, detail="handed over at shutdown", bye=False))
        await self._wait_ended()
        return count

    async def _wait_ended(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5.0)
        for task in list(self._tasks.values()):
            task.cancel()


@contextlib.contextmanager
def released_on_failure(media: MediaLeg) -> Iterator[None]:
    """Close ``media`` (its RTP port back to the pool) if the block raises: a call
    that failed to start must not hold a leg nobody supervises."""
    try:
        yield
    except BaseException:
        media.close()
        raise


def _target(request: Request) -> str:
    """Whom a request is for: the Request-URI's user (or tel: number), else the To
    URI's (a REGISTER names its user there)."""
    for uri in (request.parsed_uri, request.to.uri):
        if isinstance(uri, SipUri) and uri.user:
            return uri.user
        if isinstance(uri, TelUri):
            return uri.number
    return ""


def _unsupported_extensions(request: Request) -> list[str]:
    if request.method in ("ACK", "CANCEL"):
        return []
    required = [v.strip() for v in request.headers.values("require") if v.strip()]
    return [tag for tag in required if tag.lower() not in SUPPORTED_EXTENSIONS]


def _accepts_sdp(request: Request) -> bool:
    """An INVITE whose Accept rules out application/sdp cannot get our answer (§21.4.7)."""
    values = [v.split(";")[0].strip().lower() for v in request.headers.values("accept")]
    if not values or values == [""]:
        return True
    return any(v in ("application/sdp", "application/*", "*/*") for v in values)


__all__ = ["CallManager", "CallRefused", "UriError"]
