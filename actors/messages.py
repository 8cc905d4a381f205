"""What a call actor receives: events in past tense, commands imperative."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from media.session import MediaEvent
from sip.endpoint import ServerTransaction
from sip.message import Request, Response


@dataclass(frozen=True, slots=True)
class RequestArrived:
    """An in-dialog request (BYE, re-INVITE, UPDATE, INFO, OPTIONS...)."""

    request: Request
    txn: ServerTransaction


@dataclass(frozen=True, slots=True)
class AckArrived:
    request: Request


@dataclass(frozen=True, slots=True)
class CancelArrived:
    request: Request


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """No ACK for our 2xx within 64*T1 (RFC 3261 §13.3.1.4)."""


@dataclass(frozen=True, slots=True)
class MediaTimedOut:
    silence_s: float


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call: BYE if answered, a final error response if not."""

    reason: str  # becomes the call's disposition
    status: int = 480
    detail: str = ""
    bye: bool = True  # False: end it here without a word to the peer (another node has it)


@dataclass(frozen=True, slots=True)
class MediaArrived:
    """Something the media session saw or did (speech, DTMF, playout), at loop time ``at``."""

    event: MediaEvent
    at: float


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """The agent asked to hand the caller to ``target`` (blind transfer, REFER)."""

    target: str


@dataclass(frozen=True, slots=True)
class ReferAnswered:
    """The final response to our REFER, or None when it timed out."""

    response: Response | None


@dataclass(frozen=True, slots=True)
class TransferSettled:
    """The referred call's final outcome, from the NOTIFY's sipfrag (RFC 3515 §2.4.5),
    or None when no final NOTIFY came in time."""

    status: int | None


@dataclass(frozen=True, slots=True)
class BridgeAnswered:
    """The second leg we placed to a transfer target answered: bridge the media."""

    leg: Any  # the other CallActor (not imported: it imports us)


@dataclass(frozen=True, slots=True)
class BridgeEnded:
    """The second leg ended (never answered, or hung up after the bridge)."""

    disposition: str
    sip_code: int | None


@dataclass(frozen=True, slots=True)
class SayRequested:
    """Say this to the caller now (the control API)."""

    text: str


@dataclass(frozen=True, slots=True)
class DtmfRequested:
    """Send these digits to the caller as RFC 4733 events (the control API)."""

    digits: str


@dataclass(frozen=True, slots=True)
class InviteResponded:
    """A response to the INVITE we sent (an outbound call): provisional, 2xx (and its
    retransmissions, which we ACK again) or final error."""

    response: Response


@dataclass(frozen=True, slots=True)
class InviteTimedOut:
    """No response at all to the INVITE we sent (Timer B)."""


CallMessage = (
    RequestArrived
    | AckArrived
    | CancelArrived
    | AckTimedOut
    | MediaTimedOut
    | Hangup
    | MediaArrived
    | TransferRequested
    | ReferAnswered
    | TransferSettled
    | BridgeAnswered
    | BridgeEnded
    | SayRequested
    | DtmfRequested
    | InviteResponded
    | InviteTimedOut
)
