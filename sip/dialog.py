"""Dialogs (RFC 3261 §12): identity, sequence numbers, route set, remote target.

A ``Dialog`` is plain state plus the rules for building in-dialog requests and
checking in-dialog requests received. Header values we echo keep their raw
spelling (the From/To the peer sent, with tags).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sip.errors import LocalProtocolError
from sip.message import Headers, Request, Response
from sip.transaction import new_branch
from sip.uri import SipUri, parse_address


def new_tag() -> str:
    return secrets.token_hex(6)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_header: str  # our From/To value, tag included
    remote_header: str  # the peer's From/To value, tag included
    local_seq: int
    remote_seq: int | None
    remote_target: str  # URI from the peer's Contact
    route_set: list[str] = field(default_factory=list)  # Route values, in the order we send them
    secure: bool = False
    local_contact: str = ""

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_invite(cls, invite: Request, local_tag: str, local_contact: str) -> Dialog:
        """UAS side (§12.1.1): our 2xx to ``invite`` creates this dialog."""
        to_value = invite.headers.get("to") or ""
        remote_target = str(invite.contacts[0].uri) if invite.contacts else str(invite.from_.uri)
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_header=f"{to_value};tag={local_tag}",
            remote_header=invite.headers.get("from") or "",
            local_seq=secrets.randbelow(2**16) + 1,
            remote_seq=invite.cseq.number,
            remote_target=remote_target,
            # §12.1.1: the route set is the Record-Route list in order.
            route_set=invite.headers.values("record-route"),
            secure=isinstance(invite.parsed_uri, SipUri) and invite.parsed_uri.secure,
            local_contact=local_contact,
        )

    @classmethod
    def from_response(cls, invite: Request, response: Response, local_contact: str) -> Dialog:
        """UAC side (§12.1.2): a 2xx (or tagged 1xx) to our INVITE creates this dialog."""
        if not response.contacts:
            raise LocalProtocolError("2xx to INVITE without Contact")
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=response.to.tag or "",
            local_header=invite.headers.get("from") or "",
            remote_header=response.headers.get("to") or "",
            local_seq=invite.cseq.number,
            remote_seq=None,
            remote_target=str(response.contacts[0].uri),
            # §12.1.2: the UAC's route set is the Record-Route list reversed.
            route_set=list(reversed(response.headers.values("record-route"))),
            secure=False,
            local_contact=local_contact,
        )

    def check_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: a CSeq lower than the last one is out of order (answer 500)."""
        number = request.cseq.number
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and number < self.remote_seq:
            return False
        self.remote_seq = number
        return True

    def update_target(self, request: Request) -> None:
        """A target refresh (re-INVITE, UPDATE) may move the remote target (§12.2.2)."""
        if request.contacts:
            self.remote_target = str(request.contacts[0].uri)

    def create_request(
        self,
        method: str,
        *,
        via_sent_by: str,
        transport: str = "UDP",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Request:
        """Build an in-dialog request (§12.2.1.1), loose and strict routing alike."""
        if method != "ACK":
            self.local_seq += 1
        uri = self.remote_target
        routes = list(self.route_set)
        if routes:
            first = parse_address(routes[0])
            if "lr" not in getattr(first.uri, "params", {}):
                # Strict router: it becomes the Request-URI, the target goes last.
                uri = str(first.uri)
                routes = [*routes[1:], f"<{self.remote_target}>"]
        h = Headers()
        h.add("Via", f"SIP/2.0/{transport} {via_sent_by};branch={new_branch()};rport")
        h.add("Max-Forwards", "70")
        for route in routes:
            h.add("Route", route)
        h.add("From", self.local_header)
        h.add("To", self.remote_header)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.local_seq} {method}")
        if self.local_contact and method not in ("BYE", "ACK", "CANCEL"):
            h.add("Contact", self.local_contact)
        for name, value in headers or ():
            h.add(name, value)
        return Request(method, uri, h, body)
