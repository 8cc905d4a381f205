"""Trunks, routes, pacing, campaign retry rules and outbound SIP pieces (pure parts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.call import LocalAddress
from actors.outbound import DialTarget, build_invite, disposition_for
from sip.message import Response
from sip.parser import parse_message
from switch.trunking.campaigns import CampaignBody, RetryPolicy, Window
from switch.trunking.dialer import Pacer, _direct, _through
from switch.trunking.monitor import granted_expiry
from switch.trunking.trunks import InboundRoute, OutboundRoute, Trunk, TrunkBook


def book() -> TrunkBook:
    b = TrunkBook()
    b.trunks = {
        "a": Trunk(name="a", host="198.51.100.1"),
        "b": Trunk(name="b", host="carrier.example", inbound_ips=["203.0.113.0/24"]),
        "c": Trunk(name="c", host="198.51.100.3"),
    }
    b.outbound = {
        "all": OutboundRoute(name="all", prefix="", trunks=["c"]),
        "us": OutboundRoute(name="us", prefix="+1", trunks=["a", "b"], priority=10),
        "us-cheap": OutboundRoute(name="us-cheap", prefix="+1", trunks=["b"], priority=5),
        "nyc": OutboundRoute(name="nyc", prefix="+1212", trunks=["c", "a"]),
    }
    b.inbound = {
        "sales": InboundRoute(name="sales", pattern=r"\+1555100\d{4}", agent="default"),
        "quiet": InboundRoute(name="quiet", pattern=r"\+1555.*", agent="none", priority=200),
    }
    return b


def test_outbound_routes_longest_prefix_then_priority_without_repeats() -> None:
    b = book()
    assert [t.name for t in b.trunks_for("+12125550000")] == ["c", "a", "b"]
    assert [t.name for t in b.trunks_for("+13105550000")] == ["b", "a", "c"]
    assert [t.name for t in b.trunks_for("+442071234567")] == ["c"]


def test_inbound_source_by_allowlist_or_host_address() -> None:
    b = book()
    assert b.trunk_for_source("203.0.113.77").name == "b"  # type: ignore[union-attr]
    assert b.trunk_for_source("198.51.100.1").name == "a"  # type: ignore[union-attr]
    assert b.trunk_for_source("192.0.2.1") is None
    assert b.trunk_for_source("not an ip") is None


def test_inbound_routes_pick_the_agent() -> None:
    b = book()
    assert b.agent_for("+15551001234") == "default"
    assert b.agent_for("+15559990000") == "none"
    assert b.agent_for("+4420") is None


def test_book_round_trips_through_its_file(tmp_path: Path) -> None:
    b = book()
    b.path = tmp_path / "trunks.json"
    b.save()
    assert (b.path.stat().st_mode & 0o777) == 0o600  # it holds passwords
    again = TrunkBook.load(b.path)
    assert again.dump() == b.dump()
    assert json.loads(b.path.read_text())["trunks"][0]["name"] == "a"


def test_trunk_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="inbound_ips"):
        Trunk(host="a.example", inbound_ips=["300.1.1.1"])
    for host in (".", "a..b", "-a.example", "a b", "x" * 64 + ".example"):
        with pytest.raises(ValidationError, match="host"):
            Trunk(host=host)
    for host in ("198.51.100.7", "[2001:db8::1]", "2001:db8::1", "sip.carrier-1.example"):
        assert Trunk(host=host).host == host
    with pytest.raises(ValidationError, match="caller_id"):
        Trunk(host="a.example", caller_id="5551234")
    with pytest.raises(ValidationError, match="pattern"):
        InboundRoute(pattern="(")
    assert Trunk(host="a.example").public()["password"] == ""
    assert Trunk(host="a.example", password="s").public()["password"] == "********"


def test_trunk_number_rules() -> None:
    plain = Trunk(host="a.example", caller_id="+15550000000")
    assert plain.dialed("+15551234567") == "+15551234567"
    assert plain.calling("+15559999999") == "+15559999999" and plain.calling("") == "+15550000000"
    shaped = Trunk(host="a.example", strip_plus=True, dial_prefix="101#",
                   caller_id="+15550000000", force_caller_id=True)  # fmt: skip
    assert shaped.dialed("+15551234567") == "101#15551234567"
    assert shaped.calling("+15559999999") == "+15550000000"


def test_pacer_spaces_starts_evenly() -> None:
    now = [100.0]
    pacer = Pacer(4.0, lambda: now[0])
    assert [pacer.reserve() for _ in range(4)] == [100.0, 100.25, 100.5, 100.75]
    now[0] = 101.03  # a little late (a busy loop): the schedule holds, no drift
    assert pacer.reserve() == 101.0 and pacer.peek() == 101.25
    now[0] = 200.0  # idle for a while: no burst to catch up
    assert pacer.peek() == 200.0 and pacer.reserve() == 200.0 and pacer.peek() == 200.25
    assert Pacer(0, lambda: 5.0).reserve() == 5.0  # no limit


@pytest.mark.parametrize(
    ("status", "disposition"),
    [(486, "busy"), (600, "busy"), (603, "busy"), (480, "no_answer"), (408, "no_answer"),
     (487, "canceled"), (404, "failed"), (503, "failed")],
)  # fmt: skip
def test_dispositions_from_final_codes(status: int, disposition: str) -> None:
    assert disposition_for(status) == disposition


def test_invite_carries_offer_identity_and_custom_headers() -> None:
    target = DialTarget("a", "198.51.100.1", 5080, "sip:+15551234567@198.51.100.1:5080")
    invite = build_invite(
        call_id="c1", from_number="+15550001111", from_tag="t1", cseq=2, target=target,
        to="+15551234567", via_sent_by="192.0.2.5:5060", contact="<sip:voxswitch@192.0.2.5>",
        local_host="192.0.2.5", sdp=b"v=0\r\n", headers=(("X-Ref", "r1"),),
    )  # fmt: skip
    parsed = parse_message(bytes(invite))
    assert parsed is not None and parsed.cseq.number == 2
    assert invite.uri == "sip:+15551234567@198.51.100.1:5080"
    assert parsed.from_.tag == "t1" and parsed.to.tag is None
    assert parsed.headers.get("x-ref") == "r1"
    assert parsed.content_type == "application/sdp" and parsed.body == b"v=0\r\n"


def _response(text: str) -> Response:
    head = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
        f"To: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 2 REGISTER\r\n{text}Content-Length: 0\r\n\r\n"
    )
    message = parse_message(head.encode())
    assert isinstance(message, Response)
    return message


def test_granted_expiry_prefers_the_contact_parameter() -> None:
    both = _response("Contact: <sip:u@h>;expires=120\r\nExpires: 60\r\n")
    assert granted_expiry(both, 3600) == 120
    assert granted_expiry(_response("Expires: 60\r\n"), 3600) == 60
    assert granted_expiry(_response(""), 3600) == 3600


def test_window_over_midnight() -> None:
    window = Window(start="22:00", end="06:00", timezone="UTC")
    day = 1796169600.0  # 2026-12-02 00:00 UTC
    assert window.open_at(day + 3600)  # 01:00
    assert not window.open_at(day + 12 * 3600)  # 12:00
    assert window.open_at(day + 23 * 3600)  # 23:00
    with pytest.raises(ValidationError, match="time zone"):
        Window(start="09:00", end="17:00", timezone="Mars/Olympus")


def test_retry_policy_refuses_to_retry_refusals() -> None:
    with pytest.raises(ValidationError, match="never retried"):
        RetryPolicy(retry_on=[486])
    with pytest.raises(ValidationError, match="each number once"):
        CampaignBody(numbers=[{"to": "+15551234567"}, {"to": "+15551234567"}])  # type: ignore[list-item]


# ---- TLS and SRTP ---------------------------------------------------------------------


def test_a_tls_trunk_defaults_to_5061_and_dials_with_its_transport() -> None:
    trunk = Trunk(name="secure", host="sip.carrier.example", transport="tls")
    assert trunk.port == 5061 and trunk.srtp == "optional"
    assert Trunk(name="p", host="sip.carrier.example", transport="tls", port=5070).port == 5070
    assert Trunk(name="plain", host="sip.carrier.example").port == 5060
    target = _through(trunk, "+15551234567", "+15550001111")
    assert target.request_uri == "sip:+15551234567@sip.carrier.example;transport=tls"
    assert (target.transport, target.srtp) == ("tls", "optional")  # keys offered over TLS
    assert target.server_name == "sip.carrier.example"
    named = Trunk(name="n", host="192.0.2.9", transport="tls", tls_peer_name="SBC.example")
    assert _through(named, "+15551234567", "").server_name == "sbc.example"
    assert _through(named, "+15551234567", "").request_uri.endswith("@192.0.2.9;transport=tls")


def test_srtp_keys_are_offered_in_the_clear_only_when_required() -> None:
    udp = Trunk(name="u", host="192.0.2.9")
    assert _through(udp, "+15551234567", "").srtp == "off"  # optional over UDP: no keys
    required = Trunk(name="r", host="192.0.2.9", srtp="required")
    assert _through(required, "+15551234567", "").srtp == "required"
    with pytest.raises(ValidationError, match="srtp"):
        Trunk(name="x", host="192.0.2.9", srtp="always")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="transport"):
        Trunk(name="x", host="192.0.2.9", transport="sctp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "transport", "port", "srtp"),
    [
        ("sips:alice@pbx.example", "tls", 5061, "optional"),
        ("sips:alice@pbx.example:5071", "tls", 5071, "optional"),
        ("sip:alice@pbx.example;transport=TLS", "tls", 5061, "optional"),
        ("sip:alice@pbx.example;transport=tcp", "tcp", 5060, "off"),
        ("sip:alice@192.0.2.4", "udp", 5060, "off"),
    ],
)
def test_a_dialed_uri_picks_its_transport(uri: str, transport: str, port: int, srtp: str) -> None:
    target = _direct(uri, "optional")
    assert (target.transport, target.port, target.srtp) == (transport, port, srtp)
    assert target.request_uri == uri


def test_local_address_names_the_transport_and_its_port() -> None:
    local = LocalAddress("198.51.100.7", 5060, 5061)
    assert local.contact("UDP") == "<sip:voxswitch@198.51.100.7:5060>"
    assert local.contact("TCP") == "<sip:voxswitch@198.51.100.7:5060;transport=tcp>"
    assert local.contact("TLS") == "<sip:voxswitch@198.51.100.7:5061;transport=tls>"
    assert local.contact("TLS", sips=True) == "<sips:voxswitch@198.51.100.7:5061>"
    assert local.contact("udp", sips=True) == "<sip:voxswitch@198.51.100.7:5060>"
    assert local.sent_by("TLS") == "198.51.100.7:5061" and local.sent_by() == "198.51.100.7:5060"
