"""Sans-I/O SIP digest authentication (RFC 2617, RFC 7616, RFC 8760, RFC 3261 §22).

Everything here works on header *values* (strings) and never touches a socket:

* ``parse_challenge`` / ``parse_credentials`` read ``WWW-Authenticate`` /
  ``Proxy-Authenticate`` and ``Authorization`` / ``Proxy-Authorization`` values.
* ``digest_response`` computes the request-digest for MD5, MD5-sess, SHA-256 and
  SHA-256-sess with qop ``auth``, ``auth-int`` or no qop (RFC 2069 compatibility).
* ``answer_challenge`` is the client side: a challenge in, a credentials value out.
* ``DigestAuthenticator`` is the server side. Its nonces are stateless,
  ``base64url(timestamp || HMAC-SHA256(secret, timestamp || realm))``, so every node
  sharing ``secret`` (and a wall clock) can check a nonce another node issued.
  The nonce itself carries no state, so replays are caught by remembering, until its
  nonce expires, each accepted (nonce, response) pair: the response covers the nc, the
  method and the URI, so the same credentials a second time are ``"replayed"`` (RFC
  7616 §3.3: nc lets the server detect replays) while a client counting nc up is not.
  That memory is per node (bounded, oldest first).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sip.errors import SipError

if TYPE_CHECKING:
    from sip.message import Request, Response

__all__ = [
    "ALGORITHMS",
    "AuthError",
    "AuthReason",
    "AuthResult",
    "Challenge",
    "Credentials",
    "DigestAuthenticator",
    "answer_challenge",
    "authorize",
    "digest_response",
    "parse_challenge",
    "parse_credentials",
]


class AuthError(SipError, ValueError):
    """A malformed or unusable challenge/credentials value, or bad digest inputs."""


# Canonical algorithm names (RFC 7616 §6.1) -> hash constructor.
_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
ALGORITHMS: tuple[str, ...] = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
_CANONICAL = {name.lower(): name for name in ALGORITHMS}


def _canonical_algorithm(name: str) -> str | None:
    return _CANONICAL.get(name.strip().lower())


def _hash_for(algorithm: str) -> tuple[Callable[[bytes], str], bool, str]:
    """``(hash function, is-session-variant, canonical name)`` or AuthError."""
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise AuthError(f"unsupported digest algorithm {algorithm!r}")
    base, sess = (canonical[:-5], True) if canonical.endswith("-sess") else (canonical, False)
    return _HASHES[base], sess, canonical


# --------------------------------------------------------------------------- parsing

_WS = " \t"
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_ctl(ch: str) -> bool:
    return (ch < " " and ch != "\t") or ch == "\x7f"


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """Read the quoted-string starting at ``s[i] == '"'``; return (value, next index)."""
    out: list[str] = []
    i += 1
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            i += 1
            if i >= n:
                break
            ch = s[i]
        if _is_ctl(ch):
            raise AuthError("control character in quoted string")
        out.append(ch)
        i += 1
    raise AuthError("unterminated quoted string")


def _parse_digest(value: str) -> dict[str, str]:
    """``Digest name=value, ...`` -> {lower-case name: unquoted value}."""
    if not isinstance(value, str):
        raise AuthError("header value must be a string")
    s = value.strip(" \t\r\n")
    n = len(s)
    i = 0
    while i < n and s[i] in _TCHAR:
        i += 1
    scheme = s[:i]
    if scheme.lower() != "digest":
        raise AuthError(f"not a Digest scheme: {scheme or s[:20]!r}")
    if i < n and s[i] not in _WS:
        raise AuthError("expected whitespace after 'Digest'")
    params: dict[str, str] = {}
    while True:
        i = _skip_ws(s, i)
        if i >= n:
            break
        if s[i] == ",":  # empty list element (RFC 7230 §7)
            i += 1
            continue
        start = i
        while i < n and s[i] in _TCHAR:
            i += 1
        name = s[start:i].lower()
        if not name:
            raise AuthError(f"expected a parameter name at offset {start}")
        i = _skip_ws(s, i)
        if i >= n or s[i] != "=":
            raise AuthError(f"expected '=' after parameter {name!r}")
        i = _skip_ws(s, i + 1)
        if i < n and s[i] == '"':
            param, i = _read_quoted(s, i)
        else:
            start = i
            while i < n and s[i] not in ' \t,"':
                i += 1
            param = s[start:i]
            if not param:
                raise AuthError(f"empty value for parameter {name!r}")
            if any(_is_ctl(ch) for ch in param):
                raise AuthError("control character in parameter value")
        if name in params:
            raise AuthError(f"duplicate parameter {name!r}")
        params[name] = param
        i = _skip_ws(s, i)
        if i < n:
            if s[i] != ",":
                raise AuthError(f"expected ',' at offset {i}")
            i += 1
    return params


def _require(params: Mapping[str, str], *names: str) -> None:
    missing = [name for name in names if name not in params]
    if missing:
        raise AuthError(f"missing parameter(s): {', '.join(missing)}")


@dataclass(slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest challenge.

    ``algorithm`` is canonicalised (``"sha-256"`` -> ``"SHA-256"``) when known and
    kept as written otherwise. ``qop`` is the lower-cased list of offered options
    (empty: the server is RFC 2069 style). ``params`` holds every parameter as
    received, names lower-cased.
    """

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: list[str] = field(default_factory=list)
    stale: bool = False
    params: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Credentials:
    """A parsed ``Authorization`` / ``Proxy-Authorization`` Digest value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None
    params: dict[str, str] = field(default_factory=dict)


def _algorithm_param(params: Mapping[str, str]) -> str:
    raw = params.get("algorithm", "MD5")
    return _canonical_algorithm(raw) or raw


def parse_challenge(value: str) -> Challenge:
    """Parse a Digest challenge; AuthError if it is not one or is malformed."""
    params = _parse_digest(value)
    _require(params, "realm", "nonce")
    qop = [q.strip().lower() for q in params["qop"].split(",")] if "qop" in params else []
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        opaque=params.get("opaque"),
        algorithm=_algorithm_param(params),
        qop=[q for q in qop if q],
        stale=params.get("stale", "").strip().lower() == "true",
        params=params,
    )


def _is_nc(value: str) -> bool:
    return len(value) == 8 and all(ch in "0123456789abcdefABCDEF" for ch in value)


def parse_credentials(value: str) -> Credentials:
    """Parse Digest credentials; AuthError if not Digest, malformed or incomplete.

    With a ``qop`` the ``cnonce`` and ``nc`` (8 hex digits) are required.
    """
    params = _parse_digest(value)
    _require(params, "username", "realm", "nonce", "uri", "response")
    qop = params.get("qop")
    if qop is not None:
        qop = qop.strip().lower()
        _require(params, "cnonce", "nc")
        if not _is_nc(params["nc"]):
            raise AuthError(f"nc must be 8 hex digits, got {params['nc']!r}")
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=_algorithm_param(params),
        cnonce=params.get("cnonce"),
        nc=params.get("nc"),
        qop=qop,
        opaque=params.get("opaque"),
        params=params,
    )


# --------------------------------------------------------------------------- digest


def _format_nc(nc: str | int) -> str:
    if isinstance(nc, int):
        if not 0 < nc <= 0xFFFFFFFF:
            raise AuthError(f"nc out of range: {nc}")
        return f"{nc:08x}"
    if not _is_nc(nc):
        raise AuthError(f"nc must be 8 hex digits, got {nc!r}")
    return nc.lower()


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest (lower-case hex) of RFC 2617 §3.2.2.1 / RFC 7616 §3.4.1.

    ``qop`` is ``"auth"``, ``"auth-int"`` (hashes ``body``) or ``None`` (RFC 2069);
    with a qop, ``nc`` (int or 8 hex digits) and ``cnonce`` are required, and the
    ``-sess`` algorithms always need ``cnonce``.
    """
    h, sess, _ = _hash_for(algorithm)
    qop_l = qop.strip().lower() if qop is not None else None
    if qop_l not in (None, "auth", "auth-int"):
        raise AuthError(f"unsupported qop {qop!r}")
    if (qop_l is not None or sess) and cnonce is None:
        raise AuthError("cnonce is required with a qop or a -sess algorithm")

    def hs(*parts: str) -> str:
        return h(":".join(parts).encode("utf-8"))

    ha1 = hs(username, realm, password)
    if sess:
        assert cnonce is not None
        ha1 = hs(ha1, nonce, cnonce)
    ha2 = hs(method, uri, h(body)) if qop_l == "auth-int" else hs(method, uri)
    if qop_l is None:
        return hs(ha1, nonce, ha2)
    if nc is None:
        raise AuthError("nc is required with a qop")
    assert cnonce is not None
    return hs(ha1, nonce, _format_nc(nc), cnonce, qop_l, ha2)


# --------------------------------------------------------------------------- client


def _quote(value: str) -> str:
    if any(_is_ctl(ch) for ch in value):
        raise AuthError("control character in a quoted value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def answer_challenge(
    challenge_value: str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """Answer a Digest challenge: the value for ``Authorization``/``Proxy-Authorization``.

    Picks qop ``auth`` when offered, ``auth-int`` only when it is the sole known
    option, and no qop for RFC 2069 challenges. ``cnonce`` is random unless given.
    ``opaque`` and ``algorithm`` are echoed when the challenge had them.
    """
    challenge = parse_challenge(challenge_value)
    _, sess, _ = _hash_for(challenge.algorithm)
    qop: str | None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif not challenge.qop:
        qop = None
    else:
        raise AuthError(f"no supported qop in {challenge.qop!r}")
    if cnonce is None and (qop is not None or sess):
        cnonce = secrets.token_hex(16)
    nc_text = _format_nc(nc)
    response = digest_response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        body=body,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
    ]
    if "algorithm" in challenge.params:
        parts.append(f"algorithm={challenge.algorithm}")
    if cnonce is not None:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        parts.append(f"qop={qop}")
        parts.append(f"nc={nc_text}")
    return "Digest " + ", ".join(parts)


def authorize(
    response: Response, *, method: str, uri: str, username: str, password: str
) -> tuple[str, str] | None:
    """The header that answers a 401/407 (the first challenge we can answer):
    ``("Authorization" | "Proxy-Authorization", value)``, or None."""
    proxy = response.status == 407
    header = "proxy-authenticate" if proxy else "www-authenticate"
    for challenge in response.headers.get_all(header):  # whole values: they hold commas
        try:
            value = answer_challenge(
                challenge, method=method, uri=uri, username=username, password=password
            )
        except AuthError:
            continue
        return ("Proxy-Authorization" if proxy else "Authorization", value)
    return None


# --------------------------------------------------------------------------- server

AuthReason = Literal[
    "ok",
    "missing",
    "malformed",
    "unknown user",
    "wrong realm",
    "bad nonce",
    "stale",
    "bad response",
    "unsupported algorithm",
    "uri mismatch",
    "replayed",
]

# Accepted (nonce, response) pairs remembered against replay: at most this many.
SEEN_MAX = 200_000


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of ``DigestAuthenticator.verify``.

    ``username`` is set whenever the credentials could be parsed. On ``"stale"`` the
    password was right but the nonce expired: challenge again with ``stale=True``.
    """

    ok: bool
    reason: AuthReason
    username: str | None = None

    @property
    def stale(self) -> bool:
        return self.reason == "stale"


_TS = struct.Struct(">d")
_MAC_LEN = 32
_NONCE_LEN = _TS.size + _MAC_LEN


class DigestAuthenticator:
    """Server side of digest authentication for one realm.

    ``users`` maps username to plaintext password. ``algorithms`` are offered in
    order of preference (one challenge header each). Nonces are signed with
    ``secret`` (random per process if None) and are valid for ``nonce_ttl_s``
    seconds; ``now`` must be a wall clock (``time.time()``) when several nodes share
    the secret.
    """

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str],
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        secret: bytes | None = None,
        nonce_ttl_s: float = 300.0,
    ) -> None:
        if any(_is_ctl(ch) for ch in realm):
            raise ValueError("realm contains a control character")
        if not algorithms:
            raise ValueError("at least one algorithm is required")
        canon: list[str] = []
        for name in algorithms:
            _, _, canonical = _hash_for(name)
            if canonical not in canon:
                canon.append(canonical)
        if not nonce_ttl_s > 0:
            raise ValueError("nonce_ttl_s must be positive")
        self.realm = realm
        self.users = users
        self.algorithms: tuple[str, ...] = tuple(canon)
        self.nonce_ttl_s = float(nonce_ttl_s)
        self._secret = secret if secret is not None else os.urandom(32)
        self._realm_bytes = realm.encode("utf-8")
        # (nonce, response) -> when that nonce expires: what was accepted.
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- nonces

    def _mac(self, ts: bytes) -> bytes:
        return hmac.new(self._secret, ts + self._realm_bytes, hashlib.sha256).digest()

    def make_nonce(self, now: float) -> str:
        ts = _TS.pack(float(now))
        raw = ts + self._mac(ts)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def nonce_time(self, nonce: str) -> float | None:
        """The issue time of a nonce we signed, or None if it is not ours."""
        if not 0 < len(nonce) <= 64 or not nonce.isascii():
            return None
        try:
            raw = base64.b64decode(nonce + "=" * (-len(nonce) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_LEN:
            return None
        ts, mac = raw[: _TS.size], raw[_TS.size :]
        if not hmac.compare_digest(mac, self._mac(ts)):
            return None
        (issued,) = _TS.unpack(ts)
        return issued if math.isfinite(issued) else None

    # -- challenges

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """One ``WWW-Authenticate``/``Proxy-Authenticate`` value per algorithm."""
        nonce = self.make_nonce(now)
        realm = _quote(self.realm)
        suffix = ", stale=true" if stale else ""
        return [
            f'Digest realm={realm}, nonce="{nonce}", algorithm={alg}, qop="auth"{suffix}'
            for alg in self.algorithms
        ]

    # -- verification

    def verify(
        self,
        method: str,
        authorization: str | None,
        now: float,
        body: bytes = b"",
        *,
        uri: str | None = None,
    ) -> AuthResult:
        """Check one ``Authorization`` value for ``method``.

        ``body`` is needed only for qop ``auth-int``. If ``uri`` is given, the
        credentials' ``uri`` must equal it exactly (reason ``"uri mismatch"``).
        Credentials without qop (RFC 2069 clients) are accepted.
        """
        if authorization is None or not authorization.strip():
            return AuthResult(False, "missing")
        try:
            cred = parse_credentials(authorization)
        except AuthError:
            return AuthResult(False, "malformed")
        user = cred.username
        if cred.qop not in (None, "auth", "auth-int"):
            return AuthResult(False, "malformed", user)
        if cred.realm != self.realm:
            return AuthResult(False, "wrong realm", user)
        algorithm = _canonical_algorithm(cred.algorithm)
        if algorithm is None or algorithm not in self.algorithms:
            return AuthResult(False, "unsupported algorithm", user)
        if algorithm.endswith("-sess") and cred.cnonce is None:
            return AuthResult(False, "malformed", user)
        issued = self.nonce_time(cred.nonce)
        if issued is None or issued > now + self.nonce_ttl_s:  # not ours / far future
            return AuthResult(False, "bad nonce", user)
        password = self.users.get(user)
        if password is None:
            return AuthResult(False, "unknown user", user)
        if uri is not None and cred.uri != uri:
            return AuthResult(False, "uri mismatch", user)
        expected = digest_response(
            algorithm=algorithm,
            username=user,
            realm=self.realm,
            password=password,
            method=method,
            uri=cred.uri,
            nonce=cred.nonce,
            qop=cred.qop,
            nc=cred.nc,
            cnonce=cred.cnonce,
            body=body,
        )
        got = cred.response.strip().lower().encode("utf-8", "replace")
        if not hmac.compare_digest(expected.encode("ascii"), got):
            return AuthResult(False, "bad response", user)
        # Stale only with a correct digest (RFC 2617 §3.2.1): no re-prompting needed.
        if now - issued > self.nonce_ttl_s:
            return AuthResult(False, "stale", user)
        if not self._first_use(cred.nonce, got.decode(), issued, now):
            return AuthResult(False, "replayed", user)
        return AuthResult(True, "ok", user)

    def _first_use(self, nonce: str, response: str, issued: float, now: float) -> bool:
        seen = self._seen
        key = (nonce, response)
        if key in seen:
            return False
        seen[key] = issued + self.nonce_ttl_s
        # Insertion order is nearly expiry order (nonces are used soon after issue).
        while seen:
            first_key, expires = next(iter(seen.items()))
            if expires > now and len(seen) <= SEEN_MAX:
                break
            del seen[first_key]
        return True

    def verify_request(
        self,
        request: Request,
        now: float,
        header: str = "authorization",
        *,
        check_uri: bool = False,
    ) -> AuthResult:
        """Verify ``request`` using the ``header`` line whose realm is ours.

        A request may carry one credentials line per realm; lines for other realms
        or other schemes are skipped. With ``check_uri`` the digest URI must equal
        the Request-URI.
        """
        lines = request.headers.get_all(header)
        if not lines:
            return AuthResult(False, "missing")
        other: AuthResult | None = None
        for line in lines:
            try:
                cred = parse_credentials(line)
            except AuthError:
                continue
            if cred.realm == self.realm:
                return self.verify(
                    request.method,
                    line,
                    now,
                    request.body,
                    uri=request.uri if check_uri else None,
                )
            if other is None:
                other = AuthResult(False, "wrong realm", cred.username)
        return other if other is not None else AuthResult(False, "malformed")
