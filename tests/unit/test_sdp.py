"""SDP parse/serialize and RFC 3264 offer/answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.sdp import (
    NoCommonCodec,
    NoCommonSecurity,
    SdpAnswerer,
    SdpError,
    SessionDescription,
    SrtpPolicy,
    make_offer,
)

SIPP_OFFER = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

PHONE_OFFER = (
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 192.0.2.10\r\n"
    b"s=call\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 4000 RTP/AVP 9 8 0 101\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"m=video 4002 RTP/AVP 96\r\n"
    b"a=rtpmap:96 H264/90000\r\n"
)


def answerer() -> SdpAnswerer:
    return SdpAnswerer(local_ip="198.51.100.7", local_port=20000)


def audio_line(sdp: bytes) -> str:
    return next(line for line in sdp.decode().split("\r\n") if line.startswith("m=audio"))


def test_parse_fields() -> None:
    sdp = SessionDescription.parse(PHONE_OFFER)
    assert sdp.origin.version == 1
    assert sdp.origin.address == "192.0.2.10"
    assert sdp.connection is not None and sdp.connection.address == "192.0.2.10"
    assert [m.media for m in sdp.media] == ["audio", "video"]
    audio = sdp.media[0]
    assert audio.port == 4000
    assert audio.formats == ["9", "8", "0", "101"]
    assert audio.rtpmap()[101] == ("TELEPHONE-EVENT", 8000)
    assert audio.attribute("fmtp") == "101 0-15"


def test_serialize_round_trip() -> None:
    sdp = SessionDescription.parse(PHONE_OFFER)
    again = SessionDescription.parse(bytes(sdp))
    assert bytes(again) == bytes(sdp)
    assert bytes(sdp) == PHONE_OFFER


def test_parse_accepts_bare_lf_and_ignores_unknown_letters() -> None:
    text = PHONE_OFFER.replace(b"\r\n", b"\n") + b"x=future extension\n"
    sdp = SessionDescription.parse(text)
    assert len(sdp.media) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n",
        b"v=0\r\ns=-\r\n",  # no o=
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n",  # no s=
        b"v=0\r\no=- 1 x IN IP4 1.2.3.4\r\ns=-\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 99999 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 4000 RTP/AVP\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IPX 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nthis is not sdp\r\n",
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 4 RTP/AVP 0\r\ns=again\r\n",
        b"\xff\xfe",
    ],
)
def test_parse_rejects(body: bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(body)


def test_answer_picks_first_supported_codec_and_mirrors_telephone_event() -> None:
    a = answerer()
    answer = bytes(a.answer(SessionDescription.parse(PHONE_OFFER)))
    assert audio_line(answer) == "m=audio 20000 RTP/AVP 8 101"
    assert b"a=rtpmap:8 PCMA/8000\r\n" in answer
    assert b"a=rtpmap:101 telephone-event/8000\r\n" in answer
    assert b"c=IN IP4 198.51.100.7\r\n" in answer
    assert b"m=video 0 RTP/AVP 96\r\n" in answer  # rejected, same position
    n = a.negotiated
    assert n is not None
    assert (n.codec.name, n.codec.payload_type) == ("PCMA", 8)
    assert n.remote_rtp == ("192.0.2.10", 4000)
    assert n.telephone_event_pt == 101
    assert n.direction == "sendrecv"


def test_static_payload_type_without_rtpmap() -> None:
    offer = SIPP_OFFER.replace(b"a=rtpmap:0 PCMU/8000\r\n", b"")
    a = answerer()
    answer = bytes(a.answer(SessionDescription.parse(offer)))
    assert audio_line(answer) == "m=audio 20000 RTP/AVP 0"
    assert a.negotiated is not None and a.negotiated.telephone_event_pt is None


def test_dynamic_pt_mapped_to_pcmu() -> None:
    offer = SIPP_OFFER.replace(b"RTP/AVP 0", b"RTP/AVP 96").replace(b"rtpmap:0", b"rtpmap:96")
    a = answerer()
    a.answer(SessionDescription.parse(offer))
    assert a.negotiated is not None and a.negotiated.codec.payload_type == 96


def test_no_common_codec_has_warning() -> None:
    offer = SIPP_OFFER.replace(b"RTP/AVP 0", b"RTP/AVP 9").replace(b"0 PCMU", b"9 G722")
    with pytest.raises(NoCommonCodec) as info:
        answerer().answer(SessionDescription.parse(offer))
    assert info.value.warning.startswith("305 ")


def test_secure_rtp_only_offer_is_rejected() -> None:
    offer = SIPP_OFFER.replace(b"RTP/AVP", b"RTP/SAVP")
    with pytest.raises(NoCommonCodec):
        answerer().answer(SessionDescription.parse(offer))


def test_media_level_connection_wins() -> None:
    offer = SIPP_OFFER + b"c=IN IP4 203.0.113.5\r\n"
    a = answerer()
    a.answer(SessionDescription.parse(offer))
    assert a.negotiated is not None and a.negotiated.remote_rtp == ("203.0.113.5", 6000)


def test_missing_connection_is_an_error() -> None:
    offer = SIPP_OFFER.replace(b"c=IN IP4 127.0.0.1\r\n", b"")
    with pytest.raises(SdpError):
        answerer().answer(SessionDescription.parse(offer))


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive")],
)
def test_hold_directions(offered: str, answered: str) -> None:
    a = answerer()
    a.answer(SessionDescription.parse(SIPP_OFFER))
    hold = SIPP_OFFER.replace(b"2353687637", b"2353687638") + f"a={offered}\r\n".encode()
    answer = bytes(a.answer(SessionDescription.parse(hold)))
    assert f"a={answered}\r\n".encode() in answer
    assert b"c=IN IP4 198.51.100.7\r\n" in answer  # our address stays on hold
    assert a.negotiated is not None and a.negotiated.direction == answered


def test_rfc2543_hold_address() -> None:
    a = answerer()
    hold = SIPP_OFFER.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0")
    assert b"a=recvonly" in bytes(a.answer(SessionDescription.parse(hold)))


def test_origin_version_moves_only_when_our_sdp_changes() -> None:
    a = answerer()
    first = a.answer(SessionDescription.parse(SIPP_OFFER))
    same = a.answer(SessionDescription.parse(SIPP_OFFER))
    assert same.origin.version == first.origin.version
    assert same.origin.session_id == first.origin.session_id
    held = a.answer(SessionDescription.parse(SIPP_OFFER + b"a=sendonly\r\n"))
    assert held.origin.version == first.origin.version + 1
    resumed = a.answer(SessionDescription.parse(SIPP_OFFER))
    assert resumed.origin.version == first.origin.version + 2
    assert a.current_answer_bytes() == bytes(resumed)


def test_current_answer_before_any_answer() -> None:
    with pytest.raises(SdpError):
        answerer().current_answer_bytes()


def test_make_offer_is_answerable() -> None:
    offer = make_offer("192.0.2.1", 30000)
    parsed = SessionDescription.parse(bytes(offer))
    a = answerer()
    a.answer(parsed)
    assert a.negotiated is not None
    assert a.negotiated.codec.name == "PCMU"
    assert a.negotiated.telephone_event_pt == 101
    assert a.negotiated.remote_rtp == ("192.0.2.1", 30000)


def test_ipv6_answer() -> None:
    offer = SIPP_OFFER.replace(b"IN IP4 127.0.0.1", b"IN IP6 2001:db8::1")
    a = SdpAnswerer(local_ip="2001:db8::7", local_port=20002)
    answer = bytes(a.answer(SessionDescription.parse(offer)))
    assert b"c=IN IP6 2001:db8::7\r\n" in answer
    assert a.negotiated is not None and a.negotiated.remote_rtp == ("2001:db8::1", 6000)


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_sdp_error(data: bytes) -> None:
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    SessionDescription.parse(bytes(sdp))


@given(
    st.lists(
        st.sampled_from(
            [
                "m=audio 4000 RTP/AVP 0 8 101",
                "m=video 0 RTP/AVP 31",
                "a=rtpmap:101 telephone-event/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=sendonly",
                "c=IN IP4 10.0.0.1",
                "c=IN IP6 ::",
                "b=AS:64",
                "i=info",
                "a=ptime:30",
                "t=0 0",
            ]
        ),
        max_size=12,
    )
)
def test_structured_offers_answer_or_sdp_error(lines: list[str]) -> None:
    body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\n" + "".join(f"{x}\r\n" for x in lines)
    try:
        offer = SessionDescription.parse(body.encode())
        answer = answerer().answer(offer)
    except SdpError:
        return
    assert len(answer.media) == len(offer.media)
    SessionDescription.parse(bytes(answer))


# ---- SRTP by SDES (RFC 4568) ----------------------------------------------------------

OFFERED_KEY = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk"  # 30 bytes, base64


def srtp_offer(proto: str, *cryptos: str) -> SessionDescription:
    lines = b"".join(f"a=crypto:{c}\r\n".encode() for c in cryptos)
    return SessionDescription.parse(SIPP_OFFER.replace(b"RTP/AVP", proto.encode()) + lines)


def crypto_lines(sdp: SessionDescription) -> list[str]:
    return sdp.media[0].attributes_named("crypto")


@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/AVP"])  # mandatory and best-effort
def test_an_offered_key_is_answered_with_ours_in_the_same_profile(proto: str) -> None:
    a = SdpAnswerer(local_ip="198.51.100.7", local_port=20000, srtp="optional")
    offer = srtp_offer(
        proto,
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{OFFERED_KEY}{OFFERED_KEY}",  # not ours: skipped
        f"2 AES_CM_128_HMAC_SHA1_80 inline:{OFFERED_KEY}",
    )
    answer = a.answer(offer)
    assert answer.media[0].proto == proto
    (line,) = crypto_lines(answer)
    tag, suite, inline = line.split()
    assert (tag, suite) == ("2", "AES_CM_128_HMAC_SHA1_80")
    assert inline != f"inline:{OFFERED_KEY}"  # our own key, not the peer's echoed
    assert a.negotiated is not None and a.negotiated.crypto is not None
    ours, theirs = a.negotiated.crypto
    assert theirs.key_salt == b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcd"
    assert str(ours) == line
    # A re-INVITE with the same offer: the same key, the same SDP version.
    again = a.answer(offer)
    assert crypto_lines(again) == [line] and again.origin.version == answer.origin.version


def test_required_refuses_plain_rtp_and_off_refuses_savp() -> None:
    required = SdpAnswerer(local_ip="198.51.100.7", local_port=20000, srtp="required")
    with pytest.raises(NoCommonSecurity) as info:
        required.answer(SessionDescription.parse(SIPP_OFFER))
    assert info.value.warning.startswith("302 ")
    off = SdpAnswerer(local_ip="198.51.100.7", local_port=20000, srtp="off")
    with pytest.raises(NoCommonSecurity):
        off.answer(srtp_offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{OFFERED_KEY}"))
    # Best-effort SRTP offered to 'off': answered plain, the crypto line ignored.
    plain = off.answer(srtp_offer("RTP/AVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{OFFERED_KEY}"))
    assert crypto_lines(plain) == [] and plain.media[0].proto == "RTP/AVP"
    assert off.negotiated is not None and off.negotiated.crypto is None
    # SAVP without a key we can use is not SRTP we can do, whatever the policy.
    optional = SdpAnswerer(local_ip="198.51.100.7", local_port=20000, srtp="optional")
    with pytest.raises(NoCommonSecurity):
        with_mki = f"1 AES_CM_128_HMAC_SHA1_80 inline:{OFFERED_KEY}|1:4"
        optional.answer(srtp_offer("RTP/SAVP", with_mki))


def test_a_plain_stream_after_a_refused_secure_one_is_taken() -> None:
    offer = SessionDescription.parse(
        SIPP_OFFER.replace(b"RTP/AVP", b"RTP/SAVP") + b"m=audio 6002 RTP/AVP 0\r\n"
    )
    answer = SdpAnswerer(local_ip="198.51.100.7", local_port=20000, srtp="off").answer(offer)
    assert [m.port for m in answer.media] == [0, 20000]


@pytest.mark.parametrize(("policy", "proto"), [("required", "RTP/SAVP"), ("optional", "RTP/AVP")])
def test_our_offer_and_the_answer_settle_the_keys(policy: SrtpPolicy, proto: str) -> None:
    a = SdpAnswerer(local_ip="198.51.100.7", local_port=20000)
    offer = a.offer(srtp=policy)
    assert offer.media[0].proto == proto
    lines = crypto_lines(offer)
    assert [line.split()[:2] for line in lines] == [
        ["1", "AES_CM_128_HMAC_SHA1_80"], ["2", "AES_CM_128_HMAC_SHA1_32"]]  # fmt: skip
    # The peer (another answerer) takes the first line, with a key of its own.
    peer = SdpAnswerer(local_ip="192.0.2.20", local_port=30000, srtp="optional")
    answer = peer.answer(SessionDescription.parse(bytes(offer)))
    result = a.accept_answer(SessionDescription.parse(bytes(answer)))
    assert result.crypto is not None
    ours, theirs = result.crypto
    assert peer.negotiated is not None and peer.negotiated.crypto is not None
    peer_ours, peer_theirs = peer.negotiated.crypto
    # Each side decrypts with the key the other sends with.
    assert (peer_ours.key_salt, peer_theirs.key_salt) == (theirs.key_salt, ours.key_salt)


def test_an_answer_without_a_key() -> None:
    required = SdpAnswerer(local_ip="198.51.100.7", local_port=20000)
    required.offer(srtp="required")
    with pytest.raises(NoCommonSecurity):
        required.accept_answer(SessionDescription.parse(SIPP_OFFER))
    optional = SdpAnswerer(local_ip="198.51.100.7", local_port=20000)
    optional.offer(srtp="optional")
    assert optional.accept_answer(SessionDescription.parse(SIPP_OFFER)).crypto is None
    # A key for a tag we never offered is no key.
    forged = srtp_offer("RTP/AVP", f"9 AES_CM_128_HMAC_SHA1_80 inline:{OFFERED_KEY}")
    assert optional.accept_answer(forged).crypto is None
    plain = SdpAnswerer(local_ip="198.51.100.7", local_port=20000)
    assert crypto_lines(plain.offer()) == [] and plain.offer().media[0].proto == "RTP/AVP"
