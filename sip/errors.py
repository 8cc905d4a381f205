"""Errors of the SIP layer.

Every error says whose fault it was: a ``RemoteProtocolError`` is the peer's (its
message was malformed) and carries the status code a UAS answers with; a
``LocalProtocolError`` is ours (we tried to do something the protocol forbids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sip.message import Message


class SipError(Exception):
    """Base of every error raised by the ``sip`` package."""


class RemoteProtocolError(SipError):
    """The peer sent something we cannot accept.

    ``status`` is what a UAS answers a request with (400 unless the RFC names another
    code); a malformed response is dropped instead. ``partial`` holds the message as
    far as it could be parsed, so a 400 can still copy Via/From/To/Call-ID/CSeq.
    """

    def __init__(
        self, reason: str, status: int = 400, partial: Message | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


class ParseError(RemoteProtocolError):
    """The bytes are not a well-formed SIP message."""


class FramingError(ParseError):
    """Message boundaries cannot be trusted (bad or conflicting Content-Length).

    Over UDP the rest of the datagram is discarded; over TCP the connection closes.
    """


class UriError(ValueError):
    """A URI that does not follow RFC 3261 §19.1 / RFC 3966 grammar."""


class LocalProtocolError(SipError):
    """We tried to send or do something the protocol does not allow."""
