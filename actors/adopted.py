"""A call adopted from a node that died: the same actor, rebuilt from a checkpoint.

The dead node's checkpoint holds the dialog (tags, CSeq, route set, remote target),
the negotiated media and the conversation. The adopter binds a new RTP port, sends
the caller a re-INVITE in that dialog (RFC 3261 §14.1: our Contact, a new SDP offer
with the same origin and the next version, the codec the call already had), and once
the caller answers its RTP flows here. With a record-routing balancer in front the
re-INVITE goes out through it, and the caller's later requests (BYE) come back to us
by our new Contact (a target refresh, §12.2).

The conversation resumes from its saved state: the agent says a short line ("sorry,
one moment") and carries on where it was (``Conversation.resume``). The record keeps
the call's first offer and answer times and lists every node that served it.

A call that cannot be rebound (no answer, 481: the caller is gone, an offer refused)
ends: with a BYE unless the dialog is already gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from actors.call import (
    ALLOW,
    SNAPSHOT_RECORD_FIELDS,
    CallActor,
    CallRecord,
    CallState,
)
from actors.conversation import Conversation
from actors.messages import (
    CallMessage,
    Hangup,
    InviteResponded,
    InviteTimedOut,
    RequestArrived,
)
from sip.dialog import Dialog
from sip.message import Headers, Request, Response
from sip.sdp import SdpAnswerer, SdpError, SessionDescription

log = logging.getLogger("voxswitch.adopted")

REBIND_TIMEOUT_S = 8.0  # the caller's answer to our re-INVITE, at most
GLARE_RETRIES = 3  # 491 (the caller's own re-INVITE crossed ours): try again (§14.1)
GLARE_WAIT_S = (2.1, 4.0)  # §14.1: the wait of a UA that did not make the Call-ID
RESUME_LINE = "Sorry, one moment."


class NotAdoptable(ValueError):
    """The checkpoint cannot be taken over (the message says why); end the call."""


@dataclass(eq=False)
class AdoptedCallActor(CallActor):
    saved: dict[str, Any] = field(default_factory=dict)  # the checkpoint it resumes from
    from_node: str = ""  # the node that had it
    resume_line: str = RESUME_LINE
    rebind_s: float | None = None  # re-INVITE sent -> 2xx, once rebound

    @staticmethod
    def check(snapshot: dict[str, Any]) -> None:
        """Raise NotAdoptable unless the checkpoint describes a call we can rebind."""
        if not snapshot.get("dialog"):
            raise NotAdoptable("not answered yet (no dialog)")
        if snapshot.get("transport") != "UDP":
            raise NotAdoptable(f"its {snapshot.get('transport')} connection died with the node")
        media = snapshot.get("media") or {}
        if not media.get("codec") or not media.get("remote_rtp"):
            raise NotAdoptable("no negotiated media")

    def restore(self, snapshot: dict[str, Any], from_node: str) -> None:
        """Before ``run``: the record as the checkpoint left it, and the re-INVITE's
        offer (this node's RTP port, the call's codec)."""
        self.saved = snapshot
        self.from_node = from_node
        self.record = record = restored_record(snapshot, self.config.node_id)
        media = snapshot["media"]
        self._answerer = SdpAnswerer(
            local_ip=self.local.host, local_port=self.media.local_port,
            srtp="required" if media.get("srtp") else "off",
        )  # fmt: skip
        if media.get("local_sdp"):
            try:
                origin = SessionDescription.parse(media["local_sdp"].encode()).origin
                # §8 of RFC 3264: the same session, the next version.
                self._answerer.origin = replace(origin, version=origin.version + 1)
            except SdpError:
                pass  # a fresh origin: some peers then treat it as a new session, still fine
        if record.answered_at:
            self.talked_s = max(0.0, time.time() - float(record.answered_at))

    # ---- the actor's life ------------------------------------------------------------

    async def _run(self) -> None:
        if not await self._rebind():
            return
        self.state = CallState.CONFIRMED
        self._milestone("adopted")
        self._resume()
        await self._talk()

    async def _rebind(self) -> bool:
        """re-INVITE the caller with our media; True once they answered 2xx."""
        for attempt in range(GLARE_RETRIES + 1):
            sent_at = self.clock()
            self._send_reinvite()
            response = await self._final_response(sent_at + REBIND_TIMEOUT_S)
            if self.state is CallState.ENDED:
                return False
            if response is None:
                self._hangup("node_failed", f"no answer to the takeover re-INVITE "
                             f"(adopted from {self.from_node})")  # fmt: skip
                return False
            status = response.status
            if 200 <= status < 300:
                self.rebind_s = self.clock() - sent_at
                log.info("call %s: the caller's media moved here (%.0f ms after the re-INVITE)",
                         self.call_id, 1000 * self.rebind_s)  # fmt: skip
                return self._accept(response)
            if status == 491 and attempt < GLARE_RETRIES:
                await asyncio.sleep(random.uniform(*GLARE_WAIT_S))
                continue
            reason = f"takeover re-INVITE answered {status} {response.reason}".strip()
            if status in (408, 481):  # the dialog is gone on the caller's side: no BYE
                self._end("node_failed", reason=reason)
            else:
                self._hangup("node_failed", reason)
            return False
        return False

    def _send_reinvite(self) -> None:
        assert self.dialog is not None and self._answerer is not None
        codec = str(self.saved["media"]["codec"])
        te = self.saved["media"].get("telephone_event_pt")
        offer = self._answerer.offer((codec,), telephone_event_pt=te,
                                     srtp=self._answerer.srtp)  # fmt: skip
        self.invite = self.dialog.create_request(
            "INVITE",
            via_sent_by=self.local.sent_by(self.flow.transport),
            transport=self.flow.transport,
            headers=[("Allow", ALLOW), ("Content-Type", "application/sdp")],
            body=bytes(offer),
        )
        self._send_invite()

    async def _final_response(self, deadline: float) -> Response | None:
        """The re-INVITE's final response (None: none in time); in-dialog requests and
        hang-up commands meanwhile are handled (a BYE ends the call)."""
        while (left := deadline - self.clock()) > 0:
            message = await self.mailbox.get(timeout=left)
            if message is None or isinstance(message, InviteTimedOut):
                return None
            if isinstance(message, InviteResponded) and message.response.status >= 200:
                return message.response
            if isinstance(message, Hangup):
                self._hangup(message.reason, message.detail or message.reason, bye=message.bye)
                return None
            if isinstance(message, RequestArrived) and self._in_dialog(message):
                return None
        return None

    def _accept(self, response: Response) -> bool:
        """The caller's 2xx: ACK it, take its answer, point our media at it."""
        assert self.dialog is not None and self._answerer is not None
        if response.contacts:
            self.dialog.remote_target = str(response.contacts[0].uri)  # target refresh
        self._send_ack()
        return self._take_answer(response, "node_failed")

    def _resume(self) -> None:
        """The agent goes on from the checkpoint (or greets, if it had not started)."""
        if self.voice is not None:
            session = self.media.start_session(self._media_event, self.vad, None)
            self.conversation = Conversation(
                voice=self.voice, session=session, host=self, clock=self.clock,
                call_id=self.call_id,
            )  # fmt: skip
            saved = self.saved.get("conversation")
            if saved is None:
                self.conversation.start()
            else:
                self.conversation.resume(saved, self.resume_line)
        self.media.play()

    def _other_message(self, message: CallMessage) -> None:
        if (
            isinstance(message, InviteResponded)
            and 200 <= message.response.status < 300
            and self._ack is not None
        ):
            self._send_raw(self._ack)  # the 2xx again: our ACK was lost

    def _close_media(self) -> None:
        super()._close_media()
        media = self.saved.get("media") or {}
        self.record.packets_sent += int(media.get("packets_sent") or 0)
        self.record.packets_received += int(media.get("packets_received") or 0)


def restored_record(snapshot: dict[str, Any], node_id: str) -> CallRecord:
    """The call's record as the checkpoint kept it, now this node's (``nodes`` says
    which served it before)."""
    kept = snapshot.get("record") or {}
    record = CallRecord(call_id=snapshot["call_id"], direction="inbound", from_uri="",
                        to_uri="", node_id=node_id)  # fmt: skip
    for name in SNAPSHOT_RECORD_FIELDS:
        if name in kept:
            setattr(record, name, kept[name])
    served = list(record.nodes) or [str(snapshot.get("node_id", ""))]
    record.nodes = served if served[-1] == node_id else [*served, node_id]
    record.node_id = node_id
    return record


def rebuild_dialog(snapshot: dict[str, Any], local_contact: str) -> Dialog:
    """The checkpoint's dialog, with our Contact (the caller's next requests come here)."""
    dialog = Dialog(**snapshot["dialog"])
    dialog.local_contact = local_contact
    return dialog


def stand_in_invite(dialog: Dialog) -> Request:
    """The call's INVITE as far as ``CallActor`` needs one before the re-INVITE is
    built (Call-ID, From/To): the original stayed on the dead node."""
    headers = Headers()
    headers.add("From", dialog.local_header)
    headers.add("To", dialog.remote_header)
    headers.add("Call-ID", dialog.call_id)
    headers.add("CSeq", f"{dialog.local_seq} INVITE")
    return Request("INVITE", dialog.remote_target, headers)
