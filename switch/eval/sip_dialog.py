"""The simulated caller's SIP dialog, sans-I/O: its INVITE, the ACK for the 2xx, its
BYE, and which requests from the callee belong to it (RFC 3261 §12, §13.2).

A thin layer on ``sip.dialog.Dialog``: that class makes in-dialog requests once the
dialog exists; this one builds the INVITE that starts it, confirms it from the 2xx
(a 2xx without Contact still gets its ACK: the Request-URI stands in as the target)
and keeps the ACK's bytes for 2xx retransmissions.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sip.dialog import Dialog, new_tag
from sip.errors import SipError
from sip.message import Headers, Request, Response
from sip.transaction import new_branch
from sip.uri import SipUri

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY"


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class CallerDialog:
    call_id: str
    uri: SipUri
    caller: str  # our From user
    local: str  # host:port of our SIP socket (Via sent-by, Contact)
    local_tag: str = field(default_factory=new_tag)
    invite_request: Request | None = None
    dialog: Dialog | None = None
    _ack: bytes = b""

    @classmethod
    def start(cls, *, call_id: str, uri: SipUri, caller: str, local: str) -> CallerDialog:
        return cls(call_id=call_id, uri=uri, caller=caller, local=local)

    @property
    def contact(self) -> str:
        return f"<sip:{self.caller}@{self.local}>"

    @property
    def confirmed(self) -> bool:
        return self.dialog is not None

    def invite(self, sdp: bytes, extra: tuple[tuple[str, str], ...] = ()) -> Request:
        host = self.local.rsplit(":", 1)[0]
        h = Headers()
        h.add("Via", f"SIP/2.0/UDP {self.local};branch={new_branch()};rport")
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{self.caller}@{host}>;tag={self.local_tag}")
        h.add("To", f"<{self.uri}>")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{secrets.randbelow(2**16) + 1} INVITE")
        h.add("Contact", self.contact)
        h.add("Allow", ALLOW)
        h.add("User-Agent", "voxswitch-eval")
        for name, value in extra:
            h.add(name, value)
        h.add("Content-Type", "application/sdp")
        self.invite_request = Request("INVITE", str(self.uri), h, sdp)
        return self.invite_request

    def confirm(self, response: Response) -> None:
        """The 2xx to our INVITE makes the dialog (§12.1.2); its ACK is built once."""
        invite = self.invite_request
        assert invite is not None
        try:
            self.dialog = Dialog.from_response(invite, response, self.contact)
        except SipError:  # no Contact: the best target left is where the INVITE went
            self.dialog = Dialog(
                call_id=self.call_id, local_tag=self.local_tag,
                remote_tag=response.to.tag or "", local_header=invite.headers.get("from") or "",
                remote_header=response.headers.get("to") or "", local_seq=invite.cseq.number,
                remote_seq=None, remote_target=invite.uri,
                route_set=list(reversed(response.headers.values("record-route"))),
                local_contact=self.contact,
            )  # fmt: skip
        self._ack = bytes(self.dialog.create_request("ACK", via_sent_by=self.local))

    def ack_bytes(self) -> bytes:
        return self._ack

    def bye(self) -> Request:
        assert self.dialog is not None
        return self.dialog.create_request("BYE", via_sent_by=self.local)

    def matches(self, request: Request) -> bool:
        """Is ``request`` in our dialog (Call-ID, and the tags the right way round)?"""
        dialog = self.dialog
        if dialog is None:
            return False
        try:
            return (
                request.call_id == self.call_id
                and request.to.tag == self.local_tag
                and request.from_.tag == dialog.remote_tag
            )
        except SipError:
            return False
