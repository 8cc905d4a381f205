"""The built-in caller of ``voxswitch eval``: one real SIP call over UDP, scripted.

``place_call(target, script)`` sends an INVITE with a G.711 offer (and RFC 4733
telephone-events), follows 100/180/183, ACKs the 2xx, then sends and receives RTP
on an absolute 20 ms schedule while the script plays (``switch.eval.script``); it
ends with our BYE (script over, or the call ran ``max_call_s``) or the callee's, and
CANCELs an INVITE not answered within ``ring_timeout_s``.

Why our own caller rather than a SIP phone driven headless: the script reacts to
what it hears to the 20 ms slot (speak N ms after the agent started), both
directions are recorded sample-aligned with the events that matter, users install
nothing, and many calls run at once in one process (the media core costs about
35 µs per call per 20 ms slot: VAD both ways, G.711, packets).

The stack is the project's own: ``sip`` for messages, transactions (``SipEndpoint``)
and the dialog, ``sip.sdp`` for the offer/answer, ``media`` for RTP, G.711, DTMF
and the VAD. The SIP side here is glue; the media side is ``CallerMedia``, sans-I/O.

Every wait is bounded and every path closes both sockets, cancels the media task and
disarms the endpoint's timers; a call cancelled from outside (Ctrl-C in the runner)
still sends its BYE (or CANCEL) on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sip.endpoint import ServerTransaction, SipEndpoint
from sip.errors import SipError
from sip.message import Request, Response, make_response
from sip.sdp import SdpAnswerer, SdpError, SessionDescription
from sip.transaction import (
    InviteServerTransaction,
    ResponseReceived,
    TransactionEvent,
    TransactionTimedOut,
    make_cancel,
)
from sip.transport.udp import UdpFlow, UdpTransport, start_udp
from sip.uri import SipUri, parse_uri
from switch.eval.caller_media import CallerMedia, DetectorSettings, MediaFormat
from switch.eval.hearing import FRAME_S
from switch.eval.result import CallResult, HangupBy
from switch.eval.script import CallScript
from switch.eval.sip_dialog import CallerDialog, hostport
from switch.eval.timeline import HANGUP, SIP, TimelineEvent

log = logging.getLogger("voxswitch.eval.caller")

USER_AGENT = "voxswitch-eval"
RESOLVE_TIMEOUT_S = 5.0
CANCEL_WAIT_S = 4.0  # after our CANCEL, for the INVITE's final response
BYE_WAIT_S = 4.0  # for the answer to our BYE


class CallerError(ValueError):
    """``place_call`` was given something it cannot call (the message says what)."""


@dataclass(frozen=True)
class _Resp:
    response: Response
    at: float


@dataclass(frozen=True)
class _Timeout:
    at: float


async def place_call(
    target: str,
    script: CallScript,
    *,
    local_host: str = "127.0.0.1",
    caller: str = "eval",
    headers: Sequence[tuple[str, str]] = (),
    codecs: tuple[str, ...] = ("PCMU",),
    ring_timeout_s: float = 20.0,
    max_call_s: float = 120.0,
    detection: DetectorSettings | None = None,
) -> CallResult:
    """Call ``target`` (``sip:user@host[:port]``, UDP) and play ``script`` once answered.

    ``local_host`` is bound for SIP and RTP and named in the Via, Contact and SDP.
    Never raises for what the callee or the network does (rejects, never answers,
    hangs up, unreachable): ``error`` and ``end_reason`` in the result say it. Raises
    ``CallerError`` for a target or option it cannot use."""
    if not 0 < ring_timeout_s <= 300 or not 0 < max_call_s <= 3600:
        raise CallerError("ring_timeout_s must be in (0, 300] and max_call_s in (0, 3600]")
    if local_host in ("0.0.0.0", "::", ""):
        raise CallerError("local_host must be an address the callee can reach (it goes in the SDP)")
    uri = _target_uri(target)
    call = _Call(uri, script, local_host=local_host, caller=caller, headers=tuple(headers),
                 codecs=codecs, detection=detection or DetectorSettings())  # fmt: skip
    return await call.run(ring_timeout_s, max_call_s)


def _target_uri(target: str) -> SipUri:
    try:
        uri = parse_uri(target)
    except (SipError, ValueError) as exc:  # (UriError is a ValueError)
        raise CallerError(f"not a SIP URI: {target!r} ({exc})") from exc
    if not isinstance(uri, SipUri) or uri.secure:
        raise CallerError(f"the caller dials sip: URIs only, got {target!r}")
    if uri.transport not in (None, "udp"):
        raise CallerError(f"the caller speaks SIP over UDP only, got transport={uri.transport}")
    return uri


class _Call:
    """One call's SIP side (the endpoint's transaction user) and its media task."""

    def __init__(
        self,
        uri: SipUri,
        script: CallScript,
        *,
        local_host: str,
        caller: str,
        headers: tuple[tuple[str, str], ...],
        codecs: tuple[str, ...],
        detection: DetectorSettings,
    ) -> None:
        self.uri = uri
        self.script = script
        self.local_host = local_host
        self.caller = caller
        self.headers = headers
        self.codecs = codecs
        self.detection = detection
        self.loop = asyncio.get_running_loop()
        self.call_id = f"{secrets.token_hex(12)}@{local_host}"
        self.result = CallResult(call_id=self.call_id, target=str(uri))
        self.endpoint = SipEndpoint(self, loop=self.loop, user_agent=USER_AGENT)
        self.events: asyncio.Queue[_Resp | _Timeout] = asyncio.Queue()
        self.sip: UdpTransport | None = None
        self.rtp: asyncio.DatagramTransport | None = None
        self.flow: UdpFlow | None = None
        self.dialog: CallerDialog | None = None
        self.answerer: SdpAnswerer | None = None
        self.media: CallerMedia | None = None
        self.remote_rtp: tuple[str, int] | None = None
        self.answered_mono: float | None = None
        self.invited_mono = 0.0
        self.remote_bye: asyncio.Future[None] = self.loop.create_future()
        self.early_packets = 0
        self.remote_bye_at: float | None = None
        self.max_call_s = 0.0
        self._sip_log: list[tuple[float, str]] = []  # (loop time, "> INVITE" / "< 180")
        self._over = False  # BYE sent or received: nothing more to send in the dialog

    # ---- the call ----------------------------------------------------------------------

    async def run(self, ring_timeout_s: float, max_call_s: float) -> CallResult:
        media_task: asyncio.Task[None] | None = None
        self.max_call_s = max_call_s
        try:
            await self._open()
            if await self._invite(ring_timeout_s):
                media_task = asyncio.create_task(self._media_loop(), name=f"eval {self.call_id}")
                await self._talk(media_task, max_call_s)
        except OSError as exc:
            self._fail(f"network error: {exc}")
        except BaseException:  # cancelled from outside, or a bug: end the call on the wire
            self._abandon()
            raise
        finally:
            if media_task is not None and not media_task.done():
                media_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await media_task
            self._close()
        return self._finish()

    async def _open(self) -> None:
        loop = self.loop
        self.rtp, _ = await loop.create_datagram_endpoint(
            lambda: _RtpProtocol(self._rtp_received), local_addr=(self.local_host, 0)
        )
        self.sip = await start_udp(self.local_host, 0, self.endpoint.process, self.endpoint.triage)
        port = self.uri.port or 5060
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(self.uri.host_bare, port, type=socket.SOCK_DGRAM),
                RESOLVE_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot resolve {self.uri.host}: {exc}") from exc
        address = infos[0][4]
        self.flow = self.sip.flow_to((str(address[0]), int(address[1])))

    async def _invite(self, ring_timeout_s: float) -> bool:
        """INVITE until answered (True) or given up (False, the result says why)."""
        assert self.sip is not None and self.flow is not None and self.rtp is not None
        sip_port = self.sip.local_address[1]
        rtp_port = self.rtp.get_extra_info("sockname")[1]
        self.answerer = SdpAnswerer(local_ip=self.local_host, local_port=rtp_port)
        offer = bytes(self.answerer.offer(self.codecs, telephone_event_pt=101))
        self.dialog = CallerDialog.start(
            call_id=self.call_id, uri=self.uri, caller=self.caller,
            local=hostport(self.local_host, sip_port),
        )  # fmt: skip
        invite = self.dialog.invite(offer, self.headers)
        self.result.invited_at = time.time()
        self.invited_mono = self.loop.time()
        self._log_sip("> INVITE")
        self.endpoint.send_request(invite, self.flow, self._invite_event)
        deadline = self.loop.time() + ring_timeout_s
        provisional = canceled = False
        while True:
            event = await self._next_event(deadline)
            if event is None:  # the ring timeout (or no answer to our CANCEL)
                if canceled or not provisional:
                    reason = "no answer to CANCEL" if canceled else "no response to INVITE"
                    self._fail(f"ring timeout: {reason}", end_reason="ring_timeout")
                    return False
                self._send_cancel(invite)
                canceled = True
                deadline = self.loop.time() + CANCEL_WAIT_S
                continue
            if isinstance(event, _Timeout):
                self._fail("no response to INVITE (Timer B)", end_reason="no_response")
                return False
            status = event.response.status
            if status < 200:
                provisional = True
                continue
            if status >= 300:
                reason = f"{status} {event.response.reason}".strip()
                if canceled:
                    self._fail(f"ring timeout: no answer in {ring_timeout_s:g} s ({reason})",
                               end_reason="ring_timeout")  # fmt: skip
                else:
                    self._fail(f"call not answered: {reason}", end_reason=f"rejected {reason}")
                return False
            answered = self._answered(event)
            if answered and canceled:  # answered as we gave up (§9.1): hang up at once
                self._fail("answered after the ring timeout", end_reason="ring_timeout")
                await self._bye()
                return False
            return answered

    def _answered(self, event: _Resp) -> bool:
        """A 2xx: ACK it, take the SDP answer, start the media clock."""
        assert self.dialog is not None and self.answerer is not None
        response = event.response
        self.dialog.confirm(response)
        self._send_ack()
        self.result.answered = True
        self.result.answered_at = time.time()
        self.answered_mono = event.at
        try:
            negotiated = self.answerer.accept_answer(SessionDescription.parse(response.body))
        except SdpError as exc:
            self._fail(f"unusable SDP answer: {exc}", end_reason="bad_answer")
            self._send_bye_now()
            return False
        self.remote_rtp = negotiated.remote_rtp
        media = MediaFormat(negotiated.codec.name, negotiated.codec.payload_type,
                            negotiated.telephone_event_pt)  # fmt: skip
        self.result.codec = media.codec
        self.media = CallerMedia(self.script, media, max_s=self.max_call_s,
                                 detection=self.detection)  # fmt: skip
        return True

    async def _talk(self, media_task: asyncio.Task[None], max_call_s: float) -> None:
        assert self.answered_mono is not None
        left = self.answered_mono + max_call_s - self.loop.time()
        done, _ = await asyncio.wait(
            {media_task, self.remote_bye}, timeout=max(0.0, left),
            return_when=asyncio.FIRST_COMPLETED,
        )  # fmt: skip
        if self.remote_bye.done():
            self.result.hangup_by = "callee"
            self.result.end_reason = "remote_bye"
            return
        if media_task in done:
            media_task.result()  # a bug in the media task surfaces here (run() BYEs)
            self.result.end_reason = "script"
        else:
            self.result.end_reason = "max_duration"
        self.result.hangup_by = "caller"
        await self._bye()

    async def _media_loop(self) -> None:
        """Tick the media core every 20 ms on an absolute schedule until the script ends."""
        assert self.media is not None and self.answered_mono is not None and self.rtp is not None
        media, rtp, t0 = self.media, self.rtp, self.answered_mono
        slot = 0
        while True:
            delay = t0 + slot * FRAME_S - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            packets, over = media.tick(slot)
            if self.remote_rtp is not None:
                for data in packets:
                    rtp.sendto(data, self.remote_rtp)
            slot += 1
            if over:
                return

    # ---- SIP plumbing ------------------------------------------------------------------

    def _invite_event(self, event: TransactionEvent) -> None:
        now = self.loop.time()
        if isinstance(event, ResponseReceived):
            response = event.response
            self._log_sip(f"< {response.status}", now)
            if 200 <= response.status < 300 and self.dialog is not None and self.dialog.confirmed:
                self._send_ack()  # a retransmitted 2xx: our ACK was lost
                return
            codes = self.result.sip_codes
            if not codes or codes[-1] != response.status:  # (a 1xx repeated: once)
                codes.append(response.status)
            self.events.put_nowait(_Resp(response, now))
        elif isinstance(event, TransactionTimedOut):
            self.events.put_nowait(_Timeout(now))

    async def _next_event(self, deadline: float) -> _Resp | _Timeout | None:
        try:
            return await asyncio.wait_for(self.events.get(), max(0.0, deadline - self.loop.time()))
        except TimeoutError:
            return None

    def _send_ack(self) -> None:
        assert self.dialog is not None and self.flow is not None
        self.flow.send(self.dialog.ack_bytes())

    def _send_cancel(self, invite: Request) -> None:
        assert self.flow is not None
        self._log_sip("> CANCEL")
        self.endpoint.send_request(make_cancel(invite), self.flow, lambda _event: None)

    async def _bye(self) -> None:
        """Our BYE, and a bounded wait for its answer."""
        if self._over or self.dialog is None or self.flow is None:
            return
        self._over = True
        answered: asyncio.Future[int] = self.loop.create_future()

        def on_event(event: TransactionEvent) -> None:
            if isinstance(event, ResponseReceived) and event.response.status >= 200:
                self._log_sip(f"< {event.response.status} (BYE)")
                if not answered.done():
                    answered.set_result(event.response.status)

        self._log_sip("> BYE")
        self.endpoint.send_request(self.dialog.bye(), self.flow, on_event)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered, BYE_WAIT_S)

    def _send_bye_now(self) -> None:
        """BYE without waiting (an answer we cannot use, or the call cancelled)."""
        if self._over or self.dialog is None or not self.dialog.confirmed or self.flow is None:
            return
        self._over = True
        self._log_sip("> BYE")
        self.endpoint.send_request(self.dialog.bye(), self.flow, lambda _event: None)

    def _abandon(self) -> None:
        """Cancelled from outside (or a bug): end the call on the wire as we go."""
        if self.dialog is not None and self.dialog.confirmed:
            self.result.hangup_by = self.result.hangup_by or "caller"
            self.result.end_reason = self.result.end_reason or "cancelled"
            self._send_bye_now()
        elif self.dialog is not None and self.dialog.invite_request is not None:
            self._send_cancel(self.dialog.invite_request)
            self.result.end_reason = "cancelled"

    # EndpointHandler: requests from the callee.

    def request_received(
        self, request: Request, txn: ServerTransaction | None, flow: object
    ) -> None:
        dialog = self.dialog
        if txn is None:  # an ACK for our 2xx to a re-INVITE
            return
        if dialog is None or not dialog.confirmed or not dialog.matches(request):
            self.endpoint.respond(txn, make_response(request, 481))
            return
        self._log_sip(f"< {request.method}")
        if request.method == "BYE":
            self.endpoint.respond(txn, make_response(request, 200))
            self._over = True
            if not self.remote_bye.done():
                self.remote_bye_at = self.loop.time()
                self.remote_bye.set_result(None)
        elif request.method == "INVITE":
            self._reinvite(request, txn)
        elif request.method in ("OPTIONS", "INFO", "NOTIFY"):
            self.endpoint.respond(txn, make_response(request, 200))
        else:
            self.endpoint.respond(txn, make_response(request, 501))

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        self.endpoint.respond(invite_txn, make_response(invite_txn.request, 487))

    def _reinvite(self, request: Request, txn: ServerTransaction) -> None:
        """A re-INVITE (hold, a refresh, media moving): answer its offer, or repeat ours."""
        assert self.answerer is not None and self.dialog is not None
        try:
            if request.body:
                self.answerer.answer(SessionDescription.parse(request.body))
                if self.answerer.negotiated is not None:
                    self.remote_rtp = self.answerer.negotiated.remote_rtp
            body = self.answerer.current_answer_bytes()
        except SdpError:
            self.endpoint.respond(txn, make_response(request, 488))
            return
        ok = make_response(request, 200, to_tag=self.dialog.local_tag, headers=[
            ("Contact", self.dialog.contact), ("Content-Type", "application/sdp"),
        ], body=body)  # fmt: skip
        self.endpoint.respond(txn, ok)  # (a lost 2xx: the peer retransmits its re-INVITE)

    # ---- media in ----------------------------------------------------------------------

    def _rtp_received(self, data: bytes) -> None:
        if self.media is None or self.answered_mono is None:
            self.early_packets += 1
            return
        self.media.receive(data, self.loop.time() - self.answered_mono)

    # ---- the end -----------------------------------------------------------------------

    def _fail(self, error: str, end_reason: str = "") -> None:
        if self.result.error is None:
            self.result.error = error
        if end_reason and not self.result.end_reason:
            self.result.end_reason = end_reason
        log.info("call %s to %s: %s", self.call_id, self.uri, error)

    def _log_sip(self, what: str, at: float | None = None) -> None:
        self._sip_log.append((self.loop.time() if at is None else at, what))

    def _close(self) -> None:
        self.endpoint.close()
        if self.sip is not None:
            self.sip.close()
        if self.rtp is not None:
            self.rtp.close()

    def _finish(self) -> CallResult:
        result = self.result
        result.ended_at = time.time()
        origin = self.answered_mono if self.answered_mono is not None else self.invited_mono
        timeline = [TimelineEvent(at - origin, SIP, what) for at, what in self._sip_log]
        if self.media is not None:
            sent, received, heard = self.media.finish()
            result.sent, result.received = sent, received
            result.rtp = self.media.counts
            result.steps_run = self.media.runner.step_index
            timeline += heard
        result.rtp.before_answer += self.early_packets
        if result.answered and not any(e.kind == HANGUP for e in timeline):
            by: HangupBy = result.hangup_by or "caller"
            result.hangup_by = by
            at = result.duration_s
            if by == "callee" and self.remote_bye_at is not None:
                at = self.remote_bye_at - origin
            timeline.append(TimelineEvent(at, HANGUP, by))
        result.timeline = sorted(timeline, key=lambda e: e.at_s)
        return result


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._received(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)  # ICMP unreachable: the peer went away


__all__ = ["CallerError", "place_call"]
