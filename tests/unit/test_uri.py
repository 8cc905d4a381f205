"""URIs and addresses (RFC 3261 §19.1, §20.10, §25.1; RFC 3966; RFC 5118)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import UriError
from sip.uri import (
    AbsoluteUri,
    Address,
    SipUri,
    TelUri,
    Uri,
    parse_address,
    parse_params,
    parse_uri,
    split_hostport,
    unescape,
)


def sip_uri(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


# ---- SIP and SIPS URIs ---------------------------------------------------------


def test_sip_uri_all_parts() -> None:
    uri = sip_uri("sip:alice:secret@atlanta.example.com:5061;transport=TLS;lr")
    assert (uri.scheme, uri.user, uri.password) == ("sip", "alice", "secret")
    assert (uri.host, uri.port) == ("atlanta.example.com", 5061)
    assert uri.params == {"transport": "TLS", "lr": None}
    assert uri.transport == "tls"
    assert not uri.secure
    assert str(uri) == "sip:alice:secret@atlanta.example.com:5061;transport=TLS;lr"


def test_sips_uri_is_secure() -> None:
    uri = sip_uri("sips:bob@biloxi.example.com")
    assert uri.scheme == "sips"
    assert uri.secure
    assert str(uri) == "sips:bob@biloxi.example.com"


def test_scheme_is_case_insensitive() -> None:
    uri = sip_uri("SIP:Alice@Host")
    assert uri.scheme == "sip"
    assert uri.user == "Alice"


def test_ipv6_reference_with_port_and_params() -> None:
    uri = sip_uri("sip:[2001:db8::10]:5070;transport=tcp")
    assert uri.host == "[2001:db8::10]"
    assert uri.host_bare == "2001:db8::10"
    assert uri.port == 5070
    assert uri.transport == "tcp"
    assert str(uri) == "sip:[2001:db8::10]:5070;transport=tcp"


def test_ipv6_reference_with_user_and_no_port() -> None:
    uri = sip_uri("sip:alice@[::ffff:192.0.2.2]")
    assert (uri.user, uri.host, uri.port) == ("alice", "[::ffff:192.0.2.2]", None)


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # RFC 5118 §4.2: IPv6 without brackets
        "sip:[2001:db8::10",
        "sip:[::1]x",
        "sip:[zz::1]",
        "sip:[::1]:99999",
    ],
)
def test_bad_ipv6_references(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_split_hostport() -> None:
    assert split_hostport("[::1]:5060") == ("[::1]", 5060)
    assert split_hostport("[::1]") == ("[::1]", None)
    assert split_hostport("example.com:5060") == ("example.com", 5060)
    assert split_hostport("example.com") == ("example.com", None)


def test_escaped_user_part_keeps_its_spelling() -> None:
    uri = sip_uri("sip:%61lice%20smith@atlanta.example.com")
    assert uri.user == "%61lice%20smith"  # raw: echoed byte for byte
    assert unescape(uri.user) == "alice smith"
    assert str(uri) == "sip:%61lice%20smith@atlanta.example.com"


def test_escaped_null_does_not_truncate_the_user() -> None:
    uri = sip_uri("sip:null-%00-null@example.com")
    assert uri.user is not None
    assert unescape(uri.user) == "null-\x00-null"


def test_percent_that_is_not_an_escape_stays() -> None:
    assert unescape("100%") == "100%"
    assert unescape("%zz") == "%zz"


def test_user_part_may_hold_semicolon_params() -> None:
    # RFC 4475 §3.1.1.9: the user is "user;par=u@example.net", not params of the host.
    uri = sip_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == {}


def test_uri_headers_are_kept_raw() -> None:
    uri = sip_uri("sip:alice@atlanta.example.com?Subject=x&Priority=urgent")
    assert uri.headers == "Subject=x&Priority=urgent"
    assert uri.params == {}
    assert str(uri) == "sip:alice@atlanta.example.com?Subject=x&Priority=urgent"


def test_uri_params_then_headers() -> None:
    uri = sip_uri("sip:alice@host;transport=udp?Subject=x")
    assert uri.params == {"transport": "udp"}
    assert uri.headers == "Subject=x"


def test_param_names_are_case_insensitive_values_kept() -> None:
    uri = sip_uri("sip:host;Transport=UDP;MADDR=[::1]")
    assert uri.params == {"transport": "UDP", "maddr": "[::1]"}


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.com",  # no scheme
        ":alice@example.com",
        "1sip:alice@example.com",
        "sip:",
        "sip:@example.com",
        "sip:alice@",
        "sip:alice@exa mple.com",
        "sip:alice@example.com:",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:5x",
        "sip:alice@example.com;;lr",
        "sip:alice@example.com;=x",
        "sip:alice@example.com;a=",
        "sip:<alice@example.com>",
        "sip:alice@example.com:²",  # int() rejects it: must still be a UriError
        "sip:alice@example.com:٥٠٦٠",  # DIGIT is ASCII only
        "tel:",
    ],
)
def test_malformed_uris(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_uri_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_uri("nonsense")


# ---- tel and other schemes ----------------------------------------------------


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(uri, TelUri)
    assert uri.scheme == "tel"
    assert uri.number == "+1-201-555-0123"
    assert uri.params == {"phone-context": "example.com"}
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_tel_uri_without_number() -> None:
    with pytest.raises(UriError):
        parse_uri("tel:;phone-context=x")


def test_other_schemes_are_opaque() -> None:
    uri = parse_uri("mailto:alice@example.com")
    assert isinstance(uri, AbsoluteUri)
    assert (uri.scheme, uri.rest) == ("mailto", "alice@example.com")
    assert str(uri) == "mailto:alice@example.com"


def test_other_schemes_still_refuse_whitespace() -> None:
    with pytest.raises(UriError):
        parse_uri("urn:service: sos")


# ---- parameters -----------------------------------------------------------------


def test_params_tolerate_lws_around_separators() -> None:
    assert parse_params(" ; tag = 1918 ;lr") == {"tag": "1918", "lr": None}


def test_params_quoted_value_kept_with_quotes() -> None:
    assert parse_params(';x="a;b=c"') == {"x": '"a;b=c"'}


@pytest.mark.parametrize("text", ["tag=1", ";;a", ';x="open', ";x=a b", ';x="a"b'])
def test_malformed_params(text: str) -> None:
    with pytest.raises(UriError):
        parse_params(text)


# ---- name-addr and addr-spec -----------------------------------------------------


def test_name_addr_with_token_display_name() -> None:
    addr = parse_address("Bob Smith <sip:bob@biloxi.example.com;lr>;tag=a6c85cf;expires=3")
    assert addr.display_name == "Bob Smith"
    assert sip_uri(str(addr.uri)).params == {"lr": None}
    assert addr.params == {"tag": "a6c85cf", "expires": "3"}
    assert addr.tag == "a6c85cf"


def test_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 §20.10: without <>, everything after ';' is a header parameter.
    addr = parse_address("sip:alice@atlanta.example.com;tag=1928301774")
    assert isinstance(addr.uri, SipUri)
    assert addr.uri.params == {}
    assert addr.tag == "1928301774"
    assert str(addr) == "<sip:alice@atlanta.example.com>;tag=1928301774"


def test_name_addr_uri_params_stay_in_the_uri() -> None:
    addr = parse_address("<sip:alice@atlanta.example.com;transport=tcp>;tag=1")
    assert isinstance(addr.uri, SipUri)
    assert addr.uri.params == {"transport": "tcp"}
    assert addr.params == {"tag": "1"}


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ('"Alice" <sip:a@b>', '"Alice"'),
        ('"A \\"quoted\\" name" <sip:a@b>', '"A \\"quoted\\" name"'),
        ('"back\\\\slash" <sip:a@b>', '"back\\\\slash"'),
        ('"semi;colon, comma <x>" <sip:a@b>', '"semi;colon, comma <x>"'),
        ('"" <sip:a@b>', '""'),
        ('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>', '"J Rosenberg \\\\\\""'),
        ('"Ünïcödé" <sip:a@b>', '"Ünïcödé"'),
    ],
)
def test_quoted_display_names_keep_their_escapes(text: str, display: str) -> None:
    addr = parse_address(text)
    assert addr.display_name == display
    assert parse_address(str(addr)) == addr


def test_no_lws_between_display_name_and_angle() -> None:
    # RFC 4475 §3.1.1.6
    addr = parse_address("caller<sip:caller@example.com>;tag=323")
    assert addr.display_name == "caller"
    assert addr.tag == "323"


def test_uri_headers_inside_angle_brackets() -> None:
    addr = parse_address("<sip:alice@example.com?Subject=x&Route=%3Csip:p%3E>")
    assert isinstance(addr.uri, SipUri)
    assert addr.uri.headers == "Subject=x&Route=%3Csip:p%3E"


def test_tel_and_sips_addresses() -> None:
    assert isinstance(parse_address("tel:+1555;tag=1").uri, TelUri)
    assert parse_address("tel:+1555;tag=1").tag == "1"
    assert parse_address("<sips:bob@biloxi.example.com>").uri.scheme == "sips"


def test_ipv6_address() -> None:
    addr = parse_address("<sip:[2001:db8::10]:5070;transport=tcp>;tag=x")
    assert isinstance(addr.uri, SipUri)
    assert (addr.uri.host, addr.uri.port) == ("[2001:db8::10]", 5070)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '"unterminated <sip:a@b>',
        '"quoted" sip:a@b',  # quoted display name needs <URI>
        "Bell, Alexander <sip:a.g.bell@bell-tel.com>",  # RFC 4475 §3.1.2.15
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # §3.1.2.13
        "sip:a@b, sip:c@d",
        "<sip:a@b",
        "< sip:a@b>",
        "<sip:a@b >",
        "sip:a @b",  # §3.1.2.14
        "<sip:a@b>x",
        "<sip:a@b>;;tag=1",
        "<sip:a@b>;tag=",
        "*",
    ],
)
def test_malformed_addresses(text: str) -> None:
    with pytest.raises(UriError):
        parse_address(text)


# ---- properties ---------------------------------------------------------------------

_URI_ALPHABET = "sipteltSIP:@;=?&,<>\"\\ \t%[]0123456789abcdef.-_!~*'()+$/#\x00\x7fé²٥\udcff"
_SEEDS = [
    "sip:alice@example.com:5060;transport=tcp?Subject=x",
    '"A \\"q\\"" <sip:a@b;lr>;tag=1',
    "sip:[2001:db8::10]:5070;transport=tcp",
    "tel:+1-201-555-0123;phone-context=x",
    "Bob <sips:bob@h>",
    "sip:a@b;tag=x",
    "A B <sip:x:pw@h?h=1&b=2>;expires=3;q=0.5",
    "<mailto:a@b>",
]


@st.composite
def uri_like_text(draw: st.DrawFn) -> str:
    """A real URI/address with a few characters inserted, deleted or replaced."""
    chars = list(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(chars)))
        c = draw(st.sampled_from(_URI_ALPHABET))
        op = draw(st.integers(0, 2))
        if op == 0 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op == 1:
            chars.insert(i, c)
        elif chars:
            chars[min(i, len(chars) - 1)] = c
    return "".join(chars)


def _roundtrips(parse: object, value: Uri | Address) -> None:
    """What parsed serializes to text that parses to the same thing."""
    assert callable(parse)
    assert parse(str(value)) == value


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(_URI_ALPHABET, max_size=60), uri_like_text()))
def test_parse_uri_gives_a_uri_or_uri_error(text: str) -> None:
    try:
        uri = parse_uri(text)
    except UriError:
        return
    _roundtrips(parse_uri, uri)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(_URI_ALPHABET, max_size=60), uri_like_text()))
def test_parse_address_gives_an_address_or_uri_error(text: str) -> None:
    try:
        addr = parse_address(text)
    except UriError:
        return
    _roundtrips(parse_address, addr)


@settings(max_examples=200, deadline=None)
@given(st.text(_URI_ALPHABET, max_size=40))
def test_parse_params_gives_params_or_uri_error(text: str) -> None:
    with contextlib.suppress(UriError):
        parse_params(text)
