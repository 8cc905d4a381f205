"""The web console's test phone: a browser's WebRTC offer becomes a call actor.

``answer(offer)`` makes an aiortc peer connection (no STUN or TURN: the browser and
the node see each other on the LAN or the same host; ICE finds the pair), takes the
browser's audio track into a ``WebRtcLeg``, sends the agent's back, answers the offer
(aiortc gathers every candidate before it answers: no trickle ICE to carry) and hands
the call to the call manager like any other. The call ends when the page hangs up
(``hang_up``), the connection fails or closes, or the agent or the API ends it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.messages import Hangup
from switch.manager import CallManager

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

log = logging.getLogger("voxswitch.webrtc")

ANSWER_TIMEOUT_S = 10.0  # ICE gathering and the answer, at most


class WebRtcError(Exception):
    """The offer could not be answered (the message says why)."""


@dataclass(frozen=True)
class Answered:
    call_id: str
    sdp: str


class WebPhone:
    def __init__(self, manager: CallManager) -> None:
        self.manager = manager

    async def answer(self, offer_sdp: str, agent: str, remote: tuple[str, int]) -> Answered:
        """Answer the browser's offer with a call to ``agent``."""
        self.manager.refuse_if_full()  # CallRefused before any ICE work
        # Imported at the first web call: aiortc (and PyAV) cost every node's start.
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from switch.webrtc.leg import WebRtcLeg

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        leg = WebRtcLeg(pc)
        heard = asyncio.Event()

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and not heard.is_set():
                heard.set()
                leg.listen(track)

        try:
            pc.addTrack(leg.outbound)
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            answer = await asyncio.wait_for(pc.createAnswer(), ANSWER_TIMEOUT_S)
            await asyncio.wait_for(pc.setLocalDescription(answer), ANSWER_TIMEOUT_S)
        except Exception as exc:  # aiortc, given untrusted SDP, raises many kinds
            await pc.close()
            raise WebRtcError(f"offer not answered: {type(exc).__name__}: {exc}"[:300]) from exc
        if not heard.is_set():
            await pc.close()
            raise WebRtcError("the offer has no audio to send us")
        leg.codec = _audio_codec(pc)
        actor = self.manager.web_call(leg, remote, agent)
        call_id = actor.call_id

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                log.info("call %s: web phone connection %s", call_id, pc.connectionState)
                actor.command(Hangup("completed", detail=f"the web phone's connection "
                                                          f"{pc.connectionState}"))  # fmt: skip

        log.info("call %s: web phone call to agent %s from %s (%s)",
                 call_id, actor.record.agent, remote[0], leg.codec)  # fmt: skip
        return Answered(call_id, pc.localDescription.sdp)

    def hang_up(self, call_id: str) -> bool:
        """The page hung up: the call ends ``completed``. False: no such web call."""
        actor = self.manager.find(call_id)
        if actor is None or actor.record.trunk != "webrtc":
            return False
        actor.command(Hangup("completed", detail="the caller hung up (web phone)"))
        return True


def _audio_codec(pc: RTCPeerConnection) -> str:
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None) or []
        if transceiver.kind == "audio" and codecs:
            return str(codecs[0].mimeType.split("/")[-1])
    return ""
