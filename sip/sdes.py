"""SDES: SRTP keys in SDP ``a=crypto`` lines (RFC 4568), sans-I/O.

``a=crypto:<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]
[<session params>]``. We take the AES-CM suites with HMAC-SHA1 (RFC 4568 §6.2:
30 bytes of key and salt), one key per line, no MKI (libsrtp would need a key per
MKI value, and no common peer sends one) and no session parameters (each one
changes how SRTP runs: UNENCRYPTED_SRTP, KDR, ...); a line we cannot honour is
skipped, as §5.1.1 says, so the offer's next line may still fit.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

# Our preference; both have 16-byte keys and 14-byte salts.
SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
KEY_SALT_BYTES = 30
SECURE_PROFILES = ("RTP/SAVP", "RTP/SAVPF")


@dataclass(frozen=True)
class Crypto:
    tag: int
    suite: str
    key_salt: bytes

    def __str__(self) -> str:  # the a=crypto value
        key = base64.b64encode(self.key_salt).decode()
        return f"{self.tag} {self.suite} inline:{key}"

    def __repr__(self) -> str:  # keys stay out of logs
        return f"Crypto({self.tag} {self.suite})"


def new_crypto(tag: int, suite: str = SUITES[0]) -> Crypto:
    return Crypto(tag, suite, secrets.token_bytes(KEY_SALT_BYTES))


def parse_crypto(value: str) -> Crypto | None:
    """One ``a=crypto`` value; None when it is malformed or asks what we do not do."""
    parts = value.split()
    if len(parts) != 3:  # a fourth part is a session parameter
        return None
    tag, suite, key_params = parts
    if not tag.isdigit() or len(tag) > 9 or suite not in SUITES:
        return None
    if ";" in key_params:  # several keys, each with its own MKI
        return None
    method, _, info = key_params.partition(":")
    if method != "inline":
        return None
    key, *extra = info.split("|")
    if len(extra) > 1 or (extra and not _lifetime_ok(extra[0])):
        return None  # an MKI (``|1:4``), or a lifetime we cannot read
    try:
        key_salt = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key_salt) != KEY_SALT_BYTES:
        return None
    return Crypto(int(tag), suite, key_salt)


def _lifetime_ok(text: str) -> bool:
    """``2^31`` or a decimal count: libsrtp rekeys nothing, but it stops at 2^48
    packets, far past any call; a lifetime is accepted, not enforced."""
    if ":" in text:
        return False  # that is an MKI
    if text.startswith("2^"):
        return text[2:].isdigit()
    return text.isdigit()


def first_supported(values: list[str]) -> Crypto | None:
    """The offer's first crypto line we can honour, in the offer's order (§5.1.2)."""
    for value in values:
        crypto = parse_crypto(value)
        if crypto is not None:
            return crypto
    return None
