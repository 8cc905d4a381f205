"""Digest authentication (RFC 2617, RFC 7616, RFC 8760): sip/auth.py."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.auth import (
    AuthError,
    Challenge,
    DigestAuthenticator,
    answer_challenge,
    digest_response,
    parse_challenge,
    parse_credentials,
)
from sip.message import Headers, Request

T0 = 1_700_000_000.0
SECRET = b"s" * 32
REALM = "voxswitch.example"
USERS = {"alice": "wonderland", "bob": 'pa"ss\\word'}
RURI = "sip:bob@voxswitch.example"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _auth(**kwargs: object) -> DigestAuthenticator:
    opts: dict[str, object] = {"realm": REALM, "users": USERS, "secret": SECRET}
    opts.update(kwargs)
    return DigestAuthenticator(**opts)  # type: ignore[arg-type]


def _challenge_for(auth: DigestAuthenticator, algorithm: str, now: float = T0) -> str:
    (value,) = [c for c in auth.challenges(now) if f"algorithm={algorithm}," in c]
    return value


# ------------------------------------------------------------------ RFC test vectors


def test_rfc2617_section_3_5_example() -> None:
    assert (
        digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


RFC7616 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    assert digest_response(algorithm=algorithm, **RFC7616) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example_through_answer_challenge(algorithm: str, expected: str) -> None:
    challenge = (
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", '
        f'algorithm={algorithm}, nonce="{RFC7616["nonce"]}", opaque="{RFC7616_OPAQUE}"'
    )
    value = answer_challenge(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616["cnonce"],
    )
    cred = parse_credentials(value)
    assert cred.response == expected
    assert cred.algorithm == algorithm
    assert cred.opaque == RFC7616_OPAQUE
    assert cred.qop == "auth"
    assert cred.nc == "00000001"
    assert cred.cnonce == RFC7616["cnonce"]
    assert f"algorithm={algorithm}," in value
    assert "qop=auth," in value  # token, not quoted
    assert value.endswith("nc=00000001")


def test_digest_response_is_case_insensitive_in_algorithm_and_accepts_int_nc() -> None:
    args = dict(RFC7616)
    args["nc"] = 1  # type: ignore[assignment]
    assert (
        digest_response(algorithm="sha-256", **args)  # type: ignore[arg-type]
        == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_rfc2069_no_qop_matches_formula() -> None:
    ha1 = _md5("u:r:p")
    ha2 = _md5("REGISTER:sip:r")
    got = digest_response(
        algorithm="MD5",
        username="u",
        realm="r",
        password="p",
        method="REGISTER",
        uri="sip:r",
        nonce="n",
    )
    assert got == _md5(f"{ha1}:n:{ha2}")


def test_md5_sess_and_auth_int_match_formula() -> None:
    body = b"v=0\r\n"
    ha1 = _md5(f"{_md5('u:r:p')}:n:c")
    ha2 = _md5(f"INVITE:sip:x:{hashlib.md5(body).hexdigest()}")
    got = digest_response(
        algorithm="MD5-sess",
        username="u",
        realm="r",
        password="p",
        method="INVITE",
        uri="sip:x",
        nonce="n",
        qop="auth-int",
        nc="0000000a",
        cnonce="c",
        body=body,
    )
    assert got == _md5(f"{ha1}:n:0000000a:c:auth-int:{ha2}")


def test_sha256_sess_differs_from_sha256() -> None:
    common = dict(RFC7616)
    plain = digest_response(algorithm="SHA-256", **common)  # type: ignore[arg-type]
    sess = digest_response(algorithm="SHA-256-sess", **common)  # type: ignore[arg-type]
    assert plain != sess and len(sess) == 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "SHA-512"},
        {"qop": "auth", "cnonce": None},
        {"qop": "auth", "nc": None},
        {"qop": "auth", "nc": "1"},
        {"qop": "auth", "nc": 0},
        {"qop": "bogus"},
        {"algorithm": "MD5-sess", "qop": None, "cnonce": None},
    ],
)
def test_digest_response_rejects_bad_inputs(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"algorithm": "MD5", **RFC7616}
    args.update(kwargs)
    with pytest.raises(AuthError):
        digest_response(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------------ parsing


def test_parse_challenge_basic_fields() -> None:
    c = parse_challenge(
        'Digest realm="atlanta.com", domain="sip:ss1.carrier.com", qop="auth,auth-int", '
        'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5'
    )
    assert c == Challenge(
        realm="atlanta.com",
        nonce="f84f1cec41e6cbe5aea9c8e88d359",
        opaque="",
        algorithm="MD5",
        qop=["auth", "auth-int"],
        stale=False,
        params=c.params,
    )
    assert c.params["domain"] == "sip:ss1.carrier.com"


def test_parse_challenge_defaults_and_stale_true() -> None:
    c = parse_challenge('Digest realm="r", nonce="n", stale=true, algorithm=sha-256-SESS')
    assert c.algorithm == "SHA-256-sess"
    assert c.stale is True
    assert c.qop == []
    assert c.opaque is None
    assert parse_challenge('Digest realm="r", nonce="n"').algorithm == "MD5"


def test_parse_lowercase_scheme_and_names_spaces_around_equals() -> None:
    c = parse_credentials(
        'digest  USERNAME = "alice" ,Realm= "r",nonce ="n", uri="sip:r", '
        "response=abcd, QOP=Auth, NC=00000001, CNonce=xyz"
    )
    assert (c.username, c.realm, c.nonce, c.uri, c.response) == ("alice", "r", "n", "sip:r", "abcd")
    assert (c.qop, c.nc, c.cnonce) == ("auth", "00000001", "xyz")
    assert c.algorithm == "MD5"


def test_parse_escaped_quotes_and_commas_inside_quotes() -> None:
    c = parse_credentials(
        r'Digest username="a\"b\\c, d", realm="x, y=z", nonce="n", uri="sip:a,b", '
        r'response="00", opaque="\o"'
    )
    assert c.username == 'a"b\\c, d'
    assert c.realm == "x, y=z"
    assert c.uri == "sip:a,b"
    assert c.opaque == "o"  # quoted-pair: backslash escapes any char


def test_parse_tolerates_empty_list_elements_and_tabs() -> None:
    c = parse_challenge('Digest\t, realm="r",, nonce="n" ,\t')
    assert (c.realm, c.nonce) == ("r", "n")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digestrealm="r", nonce="n"',
        'Digest, realm="r", nonce="n"',
        'Digest realm="r", nonce="n',  # unterminated
        'Digest realm="r", nonce="n\\',  # dangling escape
        'Digest realm="r" nonce="n"',  # missing comma
        'Digest realm="r", nonce=',  # empty value
        'Digest realm="r", nonce="n", realm="s"',  # duplicate
        'Digest realm="r", ="n"',
        'Digest realm="r", nonce',
        'Digest realm="r\x00", nonce="n"',
        'Digest realm="r", nonce="n"x',
        'Digest nonce="n"',  # no realm
        'Digest realm="r"',  # no nonce
    ],
)
def test_parse_challenge_rejects(value: str) -> None:
    with pytest.raises(AuthError):
        parse_challenge(value)


def test_auth_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_credentials("Basic abc")


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, '
        'cnonce="c", nc=1',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, '
        'cnonce="c", nc=0000000g',
    ],
)
def test_parse_credentials_rejects_incomplete(value: str) -> None:
    with pytest.raises(AuthError):
        parse_credentials(value)


@settings(max_examples=300)
@given(st.text())
def test_parse_credentials_arbitrary_text_only_raises_auth_error(text: str) -> None:
    with contextlib.suppress(AuthError):
        parse_credentials(text)


_piece = st.sampled_from(
    [
        '"',
        "\\",
        ",",
        "=",
        " ",
        "\t",
        "digest",
        "Digest ",
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "qop",
        "nc",
        "cnonce",
        "auth",
        "00000001",
        "a",
        "\r\n",
        "\x00",
    ]
)


@settings(max_examples=300)
@given(st.lists(_piece | st.text(max_size=3), max_size=30).map("".join))
def test_parse_digest_like_text_only_raises_auth_error(text: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        with contextlib.suppress(AuthError):
            parse("Digest " + text)


# ------------------------------------------------------------------ client answer


def test_answer_prefers_auth_and_uses_auth_int_only_if_alone() -> None:
    both = answer_challenge(
        'Digest realm="r", nonce="n", qop="auth-int,auth"',
        method="INVITE",
        uri="sip:x",
        username="u",
        password="p",
        cnonce="c",
    )
    assert parse_credentials(both).qop == "auth"
    only_int = answer_challenge(
        'Digest realm="r", nonce="n", qop="auth-int"',
        method="INVITE",
        uri="sip:x",
        username="u",
        password="p",
        cnonce="c",
        body=b"xyz",
    )
    cred = parse_credentials(only_int)
    assert cred.qop == "auth-int"
    assert cred.response == digest_response(
        algorithm="MD5",
        username="u",
        realm="r",
        password="p",
        method="INVITE",
        uri="sip:x",
        nonce="n",
        qop="auth-int",
        nc=1,
        cnonce="c",
        body=b"xyz",
    )


def test_answer_rfc2069_challenge_omits_qop_nc_cnonce_and_algorithm() -> None:
    value = answer_challenge(
        'Digest realm="r", nonce="n"', method="REGISTER", uri="sip:r", username="u", password="p"
    )
    cred = parse_credentials(value)
    assert cred.qop is None and cred.nc is None and cred.cnonce is None
    assert "algorithm" not in cred.params and "opaque" not in cred.params
    assert cred.response == digest_response(
        algorithm="MD5",
        username="u",
        realm="r",
        password="p",
        method="REGISTER",
        uri="sip:r",
        nonce="n",
    )


def test_answer_formats_nc_and_generates_cnonce() -> None:
    value = answer_challenge(
        'Digest realm="r", nonce="n", qop="auth"',
        method="REGISTER",
        uri="sip:r",
        username="u",
        password="p",
        nc=26,
    )
    cred = parse_credentials(value)
    assert cred.nc == "0000001a"
    assert cred.cnonce and len(cred.cnonce) >= 16


def test_answer_quotes_special_characters() -> None:
    value = answer_challenge(
        r'Digest realm="we\"ird\\realm", nonce="n", qop="auth"',
        method="REGISTER",
        uri="sip:r",
        username='u"\\x',
        password="p",
        cnonce="c",
    )
    cred = parse_credentials(value)
    assert cred.realm == 'we"ird\\realm'
    assert cred.username == 'u"\\x'


@pytest.mark.parametrize(
    "challenge",
    [
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest realm="r", nonce="n", qop="auth-conf"',
        'Basic realm="r"',
    ],
)
def test_answer_rejects_unusable_challenges(challenge: str) -> None:
    with pytest.raises(AuthError):
        answer_challenge(challenge, method="M", uri="u", username="u", password="p")


def test_answer_rejects_header_injection() -> None:
    with pytest.raises(AuthError):
        answer_challenge(
            'Digest realm="r", nonce="n"', method="M", uri="u\r\nX: y", username="u", password="p"
        )


# ------------------------------------------------------------------ server


def test_challenges_one_per_algorithm_in_order() -> None:
    auth = _auth(algorithms=("sha-256", "MD5", "MD5-sess"))
    values = auth.challenges(T0)
    parsed = [parse_challenge(v) for v in values]
    assert [c.algorithm for c in parsed] == ["SHA-256", "MD5", "MD5-sess"]
    assert all(c.realm == REALM and c.qop == ["auth"] and not c.stale for c in parsed)
    assert len({c.nonce for c in parsed}) == 1
    assert all(parse_challenge(v).stale for v in auth.challenges(T0, stale=True))


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
@pytest.mark.parametrize("user", ["alice", "bob"])
def test_round_trip_ok(algorithm: str, user: str) -> None:
    auth = _auth(algorithms=("SHA-256", "MD5", "SHA-256-sess", "MD5-sess"))
    value = answer_challenge(
        _challenge_for(auth, algorithm),
        method="REGISTER",
        uri=RURI,
        username=user,
        password=USERS[user],
    )
    result = auth.verify("REGISTER", value, T0 + 10)
    assert result.ok and result.reason == "ok" and result.username == user


def test_round_trip_auth_int_checks_body() -> None:
    auth = _auth()
    challenge = auth.challenges(T0)[0].replace('qop="auth"', 'qop="auth-int"')
    value = answer_challenge(
        challenge,
        method="INVITE",
        uri=RURI,
        username="alice",
        password="wonderland",
        body=b"sdp",
    )
    assert auth.verify("INVITE", value, T0, body=b"sdp").ok
    assert auth.verify("INVITE", value, T0, body=b"SDP").reason == "bad response"


def test_round_trip_rfc2069_client_accepted() -> None:
    auth = _auth()
    challenge = auth.challenges(T0)[1].replace(', qop="auth"', "")
    value = answer_challenge(
        challenge, method="REGISTER", uri=RURI, username="alice", password="wonderland"
    )
    assert "qop" not in value
    assert auth.verify("REGISTER", value, T0).ok


def test_other_node_with_same_secret_accepts_nonce() -> None:
    a, b = _auth(), _auth()
    value = answer_challenge(
        a.challenges(T0)[0], method="REGISTER", uri=RURI, username="alice", password="wonderland"
    )
    assert b.verify("REGISTER", value, T0 + 1).ok
    c = _auth(secret=b"other" * 8)
    assert c.verify("REGISTER", value, T0 + 1).reason == "bad nonce"


def test_nonce_is_base64url_of_timestamp_and_hmac() -> None:
    nonce = parse_challenge(_auth().challenges(T0)[0]).nonce
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    assert len(raw) == 8 + 32
    assert "=" not in nonce and "+" not in nonce and "/" not in nonce


def _answer(auth: DigestAuthenticator, **overrides: object) -> str:
    args: dict[str, object] = {
        "method": "REGISTER",
        "uri": RURI,
        "username": "alice",
        "password": "wonderland",
    }
    args.update(overrides)
    challenge = str(args.pop("challenge", auth.challenges(T0)[0]))
    return answer_challenge(challenge, **args)  # type: ignore[arg-type]


def test_wrong_password_is_bad_response() -> None:
    auth = _auth()
    result = auth.verify("REGISTER", _answer(auth, password="nope"), T0)
    assert not result.ok and result.reason == "bad response" and result.username == "alice"


def test_wrong_method_is_bad_response() -> None:
    auth = _auth()
    assert auth.verify("INVITE", _answer(auth), T0).reason == "bad response"


def test_tampered_nonce_is_bad_nonce() -> None:
    auth = _auth()
    challenge = auth.challenges(T0)[0]
    nonce = parse_challenge(challenge).nonce
    flipped = nonce[:-3] + ("A" if nonce[-3] != "A" else "B") + nonce[-2:]
    value = _answer(auth, challenge=challenge.replace(nonce, flipped))
    assert auth.verify("REGISTER", value, T0).reason == "bad nonce"
    for junk in ("abc", "!!!!", "", "x" * 200):
        value = _answer(auth, challenge=challenge.replace(nonce, junk))
        assert auth.verify("REGISTER", value, T0).reason in ("bad nonce", "malformed")


def test_nonce_from_other_realm_with_same_secret_is_bad_nonce() -> None:
    other = _auth(realm="elsewhere")
    nonce = parse_challenge(other.challenges(T0)[0]).nonce
    auth = _auth()
    value = _answer(auth, challenge=f'Digest realm="{REALM}", nonce="{nonce}", qop="auth"')
    assert auth.verify("REGISTER", value, T0).reason == "bad nonce"


def test_expired_nonce_is_stale_only_with_right_password() -> None:
    auth = _auth(nonce_ttl_s=60.0)
    good = _answer(auth)
    assert auth.verify("REGISTER", good, T0 + 60).ok
    stale = auth.verify("REGISTER", good, T0 + 61)
    assert not stale.ok and stale.reason == "stale" and stale.stale
    assert auth.verify("REGISTER", _answer(auth, password="x"), T0 + 61).reason == "bad response"


def test_nonce_from_far_future_is_bad_nonce() -> None:
    auth = _auth(nonce_ttl_s=60.0)
    value = _answer(auth, challenge=auth.challenges(T0 + 1000)[0])
    assert auth.verify("REGISTER", value, T0).reason == "bad nonce"


def test_other_realm_is_wrong_realm() -> None:
    other = _auth(realm="elsewhere")
    auth = _auth()
    assert auth.verify("REGISTER", _answer(auth, challenge=other.challenges(T0)[0]), T0).reason == (
        "wrong realm"
    )


def test_unknown_user() -> None:
    auth = _auth()
    result = auth.verify("REGISTER", _answer(auth, username="mallory"), T0)
    assert result.reason == "unknown user" and result.username == "mallory"


def test_unsupported_algorithm() -> None:
    sha_only = _auth(algorithms=("SHA-256",))
    md5_challenge = _auth(algorithms=("MD5",)).challenges(T0)[0]
    value = _answer(sha_only, challenge=md5_challenge)
    assert sha_only.verify("REGISTER", value, T0).reason == "unsupported algorithm"
    # No algorithm parameter means MD5.
    no_alg = md5_challenge.replace(", algorithm=MD5", "")
    value = _answer(sha_only, challenge=no_alg)
    assert "algorithm" not in value
    assert sha_only.verify("REGISTER", value, T0).reason == "unsupported algorithm"
    weird = value.replace("Digest ", "Digest algorithm=SHA-512-256, ")
    assert sha_only.verify("REGISTER", weird, T0).reason == "unsupported algorithm"


def test_missing_and_malformed() -> None:
    auth = _auth()
    assert auth.verify("REGISTER", None, T0).reason == "missing"
    assert auth.verify("REGISTER", "  ", T0).reason == "missing"
    assert auth.verify("REGISTER", "Basic abc", T0).reason == "malformed"
    assert auth.verify("REGISTER", 'Digest username="a', T0).reason == "malformed"
    bad_qop = _answer(auth).replace("qop=auth", "qop=auth-conf")
    assert auth.verify("REGISTER", bad_qop, T0).reason == "malformed"


def test_uri_check_is_optional() -> None:
    auth = _auth()
    value = _answer(auth)
    assert auth.verify("REGISTER", value, T0, uri=RURI).ok
    assert auth.verify("REGISTER", value, T0, uri="sip:other").reason == "uri mismatch"


def test_response_compared_case_insensitively() -> None:
    auth = _auth()
    value = _answer(auth)
    response = parse_credentials(value).response
    assert auth.verify("REGISTER", value.replace(response, response.upper()), T0).ok


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        _auth(algorithms=())
    with pytest.raises(ValueError):
        _auth(algorithms=("SHA-512",))
    with pytest.raises(ValueError):
        _auth(nonce_ttl_s=0)
    assert _auth(secret=None).verify("REGISTER", None, T0).reason == "missing"


# ------------------------------------------------------------------ verify_request


def _request(*authorizations: str, header: str = "Authorization") -> Request:
    headers = Headers()
    for value in authorizations:
        headers.add(header, value)
    return Request("REGISTER", RURI, headers, body=b"")


def test_verify_request_picks_our_realm_among_several() -> None:
    auth = _auth()
    other = _auth(realm="elsewhere")
    ours = _answer(auth)
    theirs = _answer(other, challenge=other.challenges(T0)[0])
    request = _request("Basic Zm9vOmJhcg==", theirs, ours)
    result = auth.verify_request(request, T0)
    assert result.ok and result.username == "alice"
    again = _request("Basic Zm9vOmJhcg==", theirs, _answer(auth, nc=2))
    assert auth.verify_request(again, T0, check_uri=True).ok


def test_verify_request_reasons() -> None:
    auth = _auth()
    other = _auth(realm="elsewhere")
    assert auth.verify_request(_request(), T0).reason == "missing"
    assert auth.verify_request(_request("Basic Zm9v"), T0).reason == "malformed"
    theirs = _answer(other, challenge=other.challenges(T0)[0])
    assert auth.verify_request(_request(theirs), T0).reason == "wrong realm"
    wrong = _answer(auth, password="x")
    assert auth.verify_request(_request(wrong), T0).reason == "bad response"


def test_verify_request_proxy_authorization_header() -> None:
    auth = _auth()
    request = _request(_answer(auth), header="Proxy-Authorization")
    assert auth.verify_request(request, T0).reason == "missing"
    assert auth.verify_request(request, T0, header="proxy-authorization").ok


def test_verify_request_check_uri() -> None:
    auth = _auth()
    request = _request(_answer(auth, uri="sip:someone@else"))
    assert auth.verify_request(request, T0).ok
    assert auth.verify_request(request, T0, check_uri=True).reason == "uri mismatch"


# ------------------------------------------------------------------ properties

_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from('"\\, ='),
    max_size=20,
)


@settings(max_examples=100)
@given(username=_value, password=_value, realm=_value, uri=_value.filter(bool))
def test_round_trip_property(username: str, password: str, realm: str, uri: str) -> None:
    auth = DigestAuthenticator(realm, {username: password}, secret=SECRET)
    for challenge in auth.challenges(T0):
        value = answer_challenge(
            challenge, method="REGISTER", uri=uri, username=username, password=password
        )
        result = auth.verify("REGISTER", value, T0)
        assert result.ok, (result, value)
        assert result.username == username
        assert parse_credentials(value).uri == uri


# ------------------------------------------------------------------ replay (nc)


def test_the_same_credentials_twice_are_a_replay() -> None:
    auth = _auth()
    value = _answer(auth)
    assert auth.verify("REGISTER", value, T0).ok
    replay = auth.verify("REGISTER", value, T0 + 1)
    assert not replay.ok and replay.reason == "replayed" and replay.username == "alice"


def test_a_client_counting_nc_up_on_one_nonce_is_no_replay() -> None:
    auth = _auth()
    challenge = auth.challenges(T0)[0]
    answers = [_answer(auth, challenge=challenge, nc=nc) for nc in (1, 2, 3)]
    for value in answers:
        assert auth.verify("REGISTER", value, T0).ok
    assert auth.verify("REGISTER", answers[1], T0).reason == "replayed"


def test_a_wrong_or_stale_answer_does_not_use_up_its_nonce() -> None:
    auth = _auth()
    challenge = auth.challenges(T0)[0]
    assert auth.verify("REGISTER", _answer(auth, challenge=challenge, password="x"), T0).reason == (
        "bad response"
    )
    assert auth.verify("REGISTER", _answer(auth, challenge=challenge), T0).ok


def test_replay_memory_forgets_expired_nonces() -> None:
    auth = _auth(nonce_ttl_s=10)
    first = _answer(auth, challenge=auth.challenges(T0)[0])
    assert auth.verify("REGISTER", first, T0).ok
    later = T0 + 20
    assert auth.verify("REGISTER", _answer(auth, challenge=auth.challenges(later)[0]), later).ok
    assert len(auth._seen) == 1  # the first nonce's entry expired and was let go
    assert auth.verify("REGISTER", first, later).reason == "stale"
