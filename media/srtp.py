"""SRTP (RFC 3711) for a media leg, keyed by SDES (RFC 4568): libsrtp through pylibsrtp.

One ``SrtpKeys`` is what an offer/answer settled: the suite and the two master
key+salt values (ours, which we encrypt with; the peer's, which it encrypts with).
It is plain data so it can travel to a media worker. ``SrtpContext`` holds the
libsrtp sessions that protect what we send and unprotect what we receive, for RTP
and RTCP alike (libsrtp derives separate RTCP keys from the same master key).
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp

KEY_SALT_BYTES = 30  # a 16-byte AES key and a 14-byte salt
SrtpError = pylibsrtp.Error  # what protect raises (a packet too short, a key exhausted)

# SDES suite names (RFC 4568 §6.2) and libsrtp's profiles for them.
_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}


@dataclass(frozen=True)
class SrtpKeys:
    suite: str
    local: bytes  # our master key || salt: what we send is encrypted with it
    remote: bytes  # the peer's: what it sends us is

    def __post_init__(self) -> None:
        if self.suite not in _PROFILES:
            raise ValueError(f"unsupported SRTP suite {self.suite!r}")
        if len(self.local) != KEY_SALT_BYTES or len(self.remote) != KEY_SALT_BYTES:
            raise ValueError(f"SRTP master key+salt must be {KEY_SALT_BYTES} bytes")

    def __repr__(self) -> str:  # keys never reach a log line
        return f"SrtpKeys({self.suite})"


def _session(key: bytes, suite: str, outbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=(
            pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
        ),
        srtp_profile=_PROFILES[suite],
    )
    # A worker that takes a leg over re-sends from the same sequence numbers.
    policy.allow_repeat_tx = outbound
    return pylibsrtp.Session(policy)


class SrtpContext:
    """Protects our packets and unprotects the peer's; a packet that fails its
    authentication or replay check is dropped (``None``) and counted."""

    __slots__ = ("_rx", "_tx", "keys", "rejected")

    def __init__(self, keys: SrtpKeys) -> None:
        self.keys = keys
        self._tx = _session(keys.local, keys.suite, outbound=True)
        self._rx = _session(keys.remote, keys.suite, outbound=False)
        self.rejected = 0

    def rekeyed(self, keys: SrtpKeys) -> SrtpContext:
        """The context for a re-negotiation: this one if nothing changed; otherwise
        only the direction whose key changed starts afresh."""
        if keys == self.keys:
            return self
        fresh = SrtpContext.__new__(SrtpContext)
        fresh.keys = keys
        same_tx = keys.local == self.keys.local and keys.suite == self.keys.suite
        fresh._tx = self._tx if same_tx else _session(keys.local, keys.suite, outbound=True)
        fresh._rx = _session(keys.remote, keys.suite, outbound=False)
        fresh.rejected = self.rejected
        return fresh

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error:
            self.rejected += 1
            return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error:
            self.rejected += 1
            return None
