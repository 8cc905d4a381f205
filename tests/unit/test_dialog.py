from sip.dialog import Dialog
from sip.message import Request
from sip.parser import parse_message

INVITE = (
    b"INVITE sip:bot@10.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bot@example.com>\r\n"
    b"Call-ID: c1@example.com\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _invite(data: bytes = INVITE) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def test_uas_dialog_from_invite() -> None:
    d = Dialog.from_invite(_invite(), "b2", "<sip:voxswitch@10.0.0.1:5060>")
    assert d.id == ("c1@example.com", "b2", "a1")
    assert d.remote_target == "sip:alice@192.0.2.10:5060"
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert d.local_header == "<sip:bot@example.com>;tag=b2"
    assert d.remote_seq == 10


def test_bye_uses_loose_route_set_and_increments_cseq() -> None:
    d = Dialog.from_invite(_invite(), "b2", "<sip:voxswitch@10.0.0.1:5060>")
    first = d.local_seq
    bye = d.create_request("BYE", via_sent_by="10.0.0.1:5060")
    assert bye.uri == "sip:alice@192.0.2.10:5060"  # loose routing: R-URI is the target
    assert bye.headers.get_all("route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
    ]
    assert bye.headers.get("from") == "<sip:bot@example.com>;tag=b2"
    assert bye.headers.get("to") == '"Alice" <sip:alice@example.com>;tag=a1'
    assert bye.cseq.number == first + 1 and bye.cseq.method == "BYE"
    assert bye.top_via.branch is not None and bye.top_via.branch.startswith("z9hG4bK")
    again = d.create_request("BYE", via_sent_by="10.0.0.1:5060")
    assert again.top_via.branch != bye.top_via.branch


def test_strict_router_becomes_request_uri() -> None:
    data = INVITE.replace(
        b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        b"Record-Route: <sip:strict.example.com>",
    )
    d = Dialog.from_invite(_invite(data), "b2", "")
    bye = d.create_request("BYE", via_sent_by="10.0.0.1:5060")
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("route") == ["<sip:alice@192.0.2.10:5060>"]


def test_out_of_order_cseq_rejected() -> None:
    d = Dialog.from_invite(_invite(), "b2", "")
    older = _invite(INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: 9 INVITE"))
    newer = _invite(INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: 11 INVITE"))
    assert not d.check_remote_cseq(older)
    assert d.check_remote_cseq(newer)
    assert d.remote_seq == 11
