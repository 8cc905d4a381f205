"""SDES crypto attributes (RFC 4568) and the SRTP context that uses their keys."""

from __future__ import annotations

import base64
import struct

import pylibsrtp
import pytest

from media.srtp import SrtpContext, SrtpKeys
from sip.sdes import Crypto, first_supported, new_crypto, parse_crypto

KEY = bytes(range(30))
INLINE = base64.b64encode(KEY).decode()


def test_round_trip_of_a_crypto_line() -> None:
    crypto = Crypto(1, "AES_CM_128_HMAC_SHA1_80", KEY)
    assert str(crypto) == f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"
    assert parse_crypto(str(crypto)) == crypto
    assert INLINE not in repr(crypto)  # keys stay out of logs


@pytest.mark.parametrize(
    "value",
    [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^31",
        f"7 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}|1048576",
    ],
)
def test_a_lifetime_is_accepted(value: str) -> None:
    crypto = parse_crypto(value)
    assert crypto is not None and crypto.key_salt == KEY


@pytest.mark.parametrize(
    "value",
    [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4",  # an MKI
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|1:4",  # an MKI, no lifetime
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} UNENCRYPTED_SRTP",  # a session param
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{INLINE}",  # a suite we do not offer
        f"1 F8_128_HMAC_SHA1_80 inline:{INLINE}",
        f"x AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",  # the tag is a number
        "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",  # too short a key
        "1 AES_CM_128_HMAC_SHA1_80 inline:%%%notbase64%%%",
        f"1 AES_CM_128_HMAC_SHA1_80 uri:{INLINE}",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE};inline:{INLINE}",  # two keys
        "",
        "1",
    ],
)
def test_lines_we_cannot_honour_are_skipped(value: str) -> None:
    assert parse_crypto(value) is None


def test_the_first_line_we_can_honour_wins() -> None:
    lines = [
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{INLINE}",
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}",
        f"3 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",
    ]
    chosen = first_supported(lines)
    assert chosen is not None and (chosen.tag, chosen.suite) == (2, "AES_CM_128_HMAC_SHA1_32")
    assert first_supported(lines[:1]) is None


def test_new_keys_are_random() -> None:
    assert new_crypto(1).key_salt != new_crypto(1).key_salt
    assert len(new_crypto(1).key_salt) == 30


# ---- the SRTP context -------------------------------------------------------------


def rtp(seq: int, payload: bytes = b"\xff" * 160, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def peer_session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    policy = pylibsrtp.Policy(
        key=key, ssrc_type=kind, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    )
    return pylibsrtp.Session(policy)


def test_context_talks_to_an_independent_libsrtp_peer() -> None:
    ours, theirs = new_crypto(1).key_salt, new_crypto(1).key_salt
    context = SrtpContext(SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours, theirs))
    peer_rx, peer_tx = peer_session(ours, False), peer_session(theirs, True)
    sent = context.protect(rtp(1))
    assert len(sent) == 12 + 160 + 10  # the 80-bit tag
    assert sent[12:172] != b"\xff" * 160  # the payload is not µ-law silence any more
    assert peer_rx.unprotect(sent) == rtp(1)
    assert context.unprotect(peer_tx.protect(rtp(5, ssrc=99))) == rtp(5, ssrc=99)
    report = struct.pack("!BBHI", 0x81, 201, 1, 0x1234) + bytes(24)
    assert peer_rx.unprotect_rtcp(context.protect_rtcp(report)) == report
    assert context.unprotect_rtcp(peer_tx.protect_rtcp(report)) == report


def test_forged_and_replayed_packets_are_dropped_and_counted() -> None:
    ours, theirs = new_crypto(1).key_salt, new_crypto(1).key_salt
    context = SrtpContext(SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours, theirs))
    peer_tx = peer_session(theirs, True)
    good = peer_tx.protect(rtp(7))
    assert context.unprotect(good) is not None
    assert context.unprotect(good) is None  # replayed
    tampered = bytearray(peer_tx.protect(rtp(8)))
    tampered[20] ^= 1
    assert context.unprotect(bytes(tampered)) is None  # fails its authentication tag
    assert context.unprotect(rtp(9)) is None  # plain RTP
    assert context.unprotect_rtcp(b"\x81\xc9\x00\x01" + bytes(4)) is None
    assert context.rejected == 4


def test_rekeying_keeps_the_direction_whose_key_stayed() -> None:
    ours, theirs, later = (new_crypto(1).key_salt for _ in range(3))
    context = SrtpContext(SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours, theirs))
    assert context.rekeyed(SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours, theirs)) is context
    moved = context.rekeyed(SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours, later))
    peer_rx = peer_session(ours, False)
    assert peer_rx.unprotect(context.protect(rtp(1))) == rtp(1)
    assert peer_rx.unprotect(moved.protect(rtp(2))) == rtp(2)  # same sender stream
    assert moved.unprotect(peer_session(later, True).protect(rtp(3))) == rtp(3)
    assert moved.unprotect(peer_session(theirs, True).protect(rtp(4))) is None


def test_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="suite"):
        SrtpKeys("AES_256_CM_HMAC_SHA1_80", KEY, KEY)
    with pytest.raises(ValueError, match="30 bytes"):
        SrtpKeys("AES_CM_128_HMAC_SHA1_80", KEY[:16], KEY)
    assert INLINE not in repr(SrtpKeys("AES_CM_128_HMAC_SHA1_80", KEY, KEY))
