"""Bans for what a source does, not what it calls itself (issue 23, finding 7): the
sliding-window counter (switch.guard.conduct), the guard's use of it and of a trusted
proxy's X-Source-IP (switch.guard.sources), and the call manager feeding both from
what it screens and answers. A fake clock, bytes in, responses out, no sockets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.call import CallConfig, LocalAddress
from sip.auth import DigestAuthenticator, answer_challenge
from sip.message import Response
from sip.parser import parse_message
from sip.sdp import SrtpPolicy
from switch.config import ConfigError, load_settings
from switch.guard.conduct import ConductCounter, ConductLimits, is_failure
from switch.guard.sources import SourceGuard, SourceLimits
from switch.manager import CallManager
from tests.unit.test_lossy_link import FakeLoop

SCANNER = "198.51.100.66"
CALLER = "203.0.113.9"
PROXY = "192.0.2.53"
CARRIER = "192.0.2.200"
PHONE_UA = "Linphone/5.2.0 (belle-sip/5.2.0)"  # what svwar -u sends when told to


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ---- the counter ---------------------------------------------------------------------


def test_distinct_unknown_targets_past_the_limit_are_a_scan() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=3, window_s=60))
    assert [counter.unknown_target(SCANNER, str(n), 0.0) for n in (100, 101, 102)] == [None] * 3
    assert counter.unknown_target(SCANNER, "103", 1.0) == "targets"
    assert len(counter) == 0  # banned: its record starts over


def test_the_same_target_again_is_no_scan() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=3))
    assert all(counter.unknown_target(CALLER, "agent", t) is None for t in range(100))
    assert counter.unknown_target(CALLER, "", 0.0) is None  # no user: a keepalive


def test_targets_older_than_the_window_are_forgotten() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=3, window_s=60))
    now = 0.0
    for n in range(30):  # one new target every 25 s: at most 3 in any minute
        assert counter.unknown_target(CALLER, f"+1555000{n:04}", now) is None
        now += 25.0


def test_error_answers_past_the_limit_ban_and_others_do_not_count() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=0, max_failures=3))
    for status in (100, 180, 200, 302, 487, 500, 503):  # not the peer's failures
        assert not is_failure(status)
        assert counter.failure(CALLER, status, "x", 0.0) is None
    assert [counter.failure(CALLER, s, "", 0.0) for s in (403, 481, 405)] == [None] * 3
    assert counter.failure(CALLER, 603, "", 0.0) == "failures"


def test_failures_slide_out_of_the_window() -> None:
    counter = ConductCounter(ConductLimits(max_failures=3, window_s=10))
    for t in range(0, 200, 4):  # one every 4 s: 3 in any 10 s window
        assert counter.failure(CALLER, 404, "", float(t)) is None


def test_an_error_answer_to_a_new_target_counts_that_target_too() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=2, max_failures=100))
    assert counter.failure(SCANNER, 403, "100", 0.0) is None
    assert counter.failure(SCANNER, 403, "101", 0.0) is None
    assert counter.failure(SCANNER, 403, "102", 0.0) == "targets"


def test_zero_turns_a_count_off() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=0, max_failures=0))
    assert not counter.on
    assert all(counter.unknown_target(SCANNER, str(n), 0.0) is None for n in range(1000))
    assert all(counter.failure(SCANNER, 404, str(n), 0.0) is None for n in range(1000))
    assert len(counter) == 0


def test_memory_is_bounded_by_sources_and_by_the_limits() -> None:
    counter = ConductCounter(ConductLimits(max_unknown_targets=5, max_failures=5), max_sources=100)
    for n in range(10_000):  # spoofed sources, each one target and one failure
        counter.failure(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 404, "x" * 500, float(n))
    assert len(counter) == 100
    record = counter._records["10.0.39.15"]  # the last one
    assert list(record.targets) == ["x" * 64] and len(record.failures) == 1


# ---- the guard -----------------------------------------------------------------------


def guard(clock: Clock, **limits: Any) -> SourceGuard:
    conduct = ConductLimits(max_unknown_targets=limits.pop("targets", 3),
                            max_failures=limits.pop("failures", 5), window_s=60)  # fmt: skip
    return SourceGuard(SourceLimits(conduct=conduct, **limits), clock=clock, node="n1",
                       is_trunk=lambda ip: ip == CARRIER)  # fmt: skip


def test_a_scan_bans_its_source_through_the_ban_path() -> None:
    clock = Clock()
    g = guard(clock, trusted=())
    g.shared = True  # with Redis: the ban goes to the cluster like any other
    assert [g.unknown_target(SCANNER, str(n)) for n in range(100, 104)] == [None] * 3 + ["targets"]
    assert g.banned(SCANNER) and g.stats.bans["targets"] == 1
    [ban] = g.new_bans
    assert (ban.ip, ban.reason, ban.until - ban.since) == (SCANNER, "targets", 600.0)
    assert g.unknown_target(SCANNER, "999") is None  # banned already: not banned twice
    assert g.stats.bans["targets"] == 1


def test_error_answers_ban_and_a_proven_password_forgives_the_challenges() -> None:
    clock = Clock()
    g = guard(clock, trusted=())
    for _ in range(20):  # a phone: challenged (401), then authenticated, each call
        assert g.answered(CALLER, 401, "agent") is None
        g.authenticated(CALLER)
    assert not g.banned(CALLER)
    assert [g.answered(SCANNER, 403, "agent") for _ in range(6)] == [None] * 5 + ["failures"]
    assert g.banned(SCANNER)


def test_trusted_networks_trunks_and_proxies_are_never_counted() -> None:
    clock = Clock()
    g = guard(clock, trusted=("10.0.0.0/8",), trusted_proxies=(PROXY,))
    for ip in ("10.1.2.3", CARRIER, PROXY):
        assert all(g.unknown_target(ip, str(n)) is None for n in range(50))
        assert all(g.answered(ip, 404, str(n)) is None for n in range(50))
        g.ban(ip, "api")
        assert not g.banned(ip) and g.request(ip, None) is None
    assert len(g.conduct) == 0


def test_a_lifted_ban_starts_the_count_over() -> None:
    clock = Clock()
    g = guard(clock, trusted=())
    for n in range(3):
        g.unknown_target(SCANNER, str(n))
    g.lift(SCANNER)
    assert all(g.unknown_target(SCANNER, str(n)) is None for n in range(10, 13))


def test_the_real_source_is_taken_only_from_a_trusted_proxy() -> None:
    g = guard(Clock(), trusted=(), trusted_proxies=("192.0.2.0/26", "2001:db8::/64"))
    assert g.source_of(PROXY, CALLER) == CALLER
    assert g.source_of("2001:db8::5", "[2001:DB8:1::7]") == "2001:db8:1::7"
    assert g.source_of(PROXY, "::ffff:203.0.113.9") == CALLER  # one address, one count
    assert g.source_of(PROXY, None) == PROXY  # the proxy's own request (its OPTIONS probe)
    assert g.source_of(PROXY, "not an address") == PROXY
    assert g.source_of(SCANNER, "203.0.113.1") == SCANNER  # a spoof: ignored
    assert guard(Clock(), trusted=()).source_of(PROXY, CALLER) == PROXY  # no proxy trusted


def test_a_banned_real_source_is_refused_though_its_packets_are_the_proxys() -> None:
    clock = Clock()
    g = guard(clock, trusted=(), trusted_proxies=(PROXY,))
    g.ban(CALLER, "api")
    assert not g.banned(PROXY)  # the pre-parse drop never cuts the proxy off
    assert g.request(CALLER, PHONE_UA) == "banned"
    clock.now += 601
    assert g.request(CALLER, PHONE_UA) is None


# ---- the manager: screening and answering feed the guard ------------------------------


@dataclass
class Wire:
    remote: tuple[str, int]
    sent: list[bytes] = field(default_factory=list)
    transport: str = "UDP"
    reliable: bool = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def take(self) -> list[Response]:
        out = [parse_message(data) for data in self.sent]
        self.sent.clear()
        assert all(isinstance(r, Response) for r in out)
        return out  # type: ignore[return-value]


@dataclass
class Book:
    """The node's trunks and routes, as the manager asks them (InboundPolicy)."""

    routes: str = r"\+1555\d{7}"
    trunks: bool = True
    users: dict[str, str] = field(default_factory=dict)  # inbound digest user -> trunk
    full: bool = False  # every trunk at its call limit: 503 (a call that got that far)

    def trunk_of_source(self, ip: str) -> str | None:
        return "carrier" if ip == CARRIER else None

    def trunks_configured(self) -> bool:
        return self.trunks

    def auth_required(self) -> bool:
        return bool(self.users)

    def trunk_of_user(self, user: str) -> str | None:
        return self.users.get(user)

    def trunk_full(self, name: str) -> bool:
        return self.full

    def agent_for(self, number: str) -> str | None:
        return "default" if re.fullmatch(self.routes, number) else None

    def srtp_for(self, trunk: str) -> SrtpPolicy:
        return "optional"

    def certificate_for(self, trunk: str) -> str | None:
        return None

    def record_for(self, trunk: str) -> bool | None:
        return None


def node(
    clock: Clock,
    *,
    book: Book | None = None,
    server_header: str = "",
    authenticator: DigestAuthenticator | None = None,
    **limits: Any,
) -> CallManager:
    limits = {"trusted": (), "targets": 10, "failures": 30} | limits

    def no_media(call_id: str, near: int | None = None) -> Any:
        raise AssertionError("no call may be set up here")

    manager = CallManager(
        loop=FakeLoop(),  # type: ignore[arg-type]
        local=LocalAddress("192.0.2.10", 5060),
        media_factory=no_media,
        call_config=CallConfig(),
        max_calls=100,
        sources=guard(clock, **limits),
        authenticator=authenticator,
        server_header=server_header,
    )
    manager.inbound = book if book is not None else Book()
    return manager


def request(method: str, user: str, *, port: int = 5062, branch: str = "", extra: str = "",
            to_user: str | None = None) -> bytes:  # fmt: skip
    uri = f"sip:{user}@192.0.2.10" if user else "sip:192.0.2.10"
    to_user = to_user if to_user is not None else user
    to = f"sip:{to_user}@192.0.2.10" if to_user else "sip:192.0.2.10"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:{port};branch=z9hG4bK-{branch or method + user}\r\n"
        f"From: <sip:100@10.0.0.1>;tag=scan\r\nTo: <{to}>\r\n"
        f"Call-ID: {method}-{user}-{branch}@10.0.0.1\r\nCSeq: 1 {method}\r\n"
        f"User-Agent: {PHONE_UA}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def test_an_invite_sweep_with_a_phones_user_agent_is_banned_and_no_call_is_set_up() -> None:
    clock = Clock()
    manager, wire = node(clock), Wire((SCANNER, 5062))
    statuses = []
    for ext in range(100, 140):  # svwar -m INVITE -e100-139 -u "Linphone/..."
        manager.endpoint.receive(request("INVITE", str(ext)), wire)
        statuses.append([r.status for r in wire.take()])
    # The unknown extensions count from the first; the 11th is dropped unanswered
    # and everything after it unread.
    assert statuses == [[403]] * 10 + [[]] * 30
    assert manager.sources is not None and manager.sources.banned(SCANNER)
    assert manager.stats.refused["source_targets"] == 1
    assert manager.endpoint.stats.dropped == 30


def test_a_carrier_calling_many_numbers_is_never_counted() -> None:
    clock = Clock()
    manager, wire = node(clock), Wire((CARRIER, 5060))
    for n in range(50):
        manager.endpoint.receive(request("OPTIONS", f"+1999{n:07}"), wire)
    assert [r.status for r in wire.take()] == [200] * 50


def test_numbers_an_inbound_route_knows_are_no_unknown_targets() -> None:
    clock = Clock()
    manager, wire = node(clock), Wire((CALLER, 5062))
    for n in range(50):  # a PBX pinging each of its DIDs: all routed here
        manager.endpoint.receive(request("OPTIONS", f"+1555{n:07}"), wire)
    manager.endpoint.receive(request("OPTIONS", ""), wire)  # a keepalive names no one
    assert [r.status for r in wire.take()] == [200] * 51


def test_an_options_or_register_sweep_is_banned_too() -> None:
    clock = Clock()
    manager, wire = node(clock), Wire((SCANNER, 5062))
    for ext in range(100, 106):
        manager.endpoint.receive(request("OPTIONS", str(ext)), wire)
    for ext in range(106, 120):  # svwar's default: REGISTER, the user in To
        manager.endpoint.receive(request("REGISTER", "", to_user=str(ext), branch=str(ext)), wire)
    assert [r.status for r in wire.take()] == [200] * 6 + [405] * 4


def test_too_many_error_answers_ban_even_to_one_target() -> None:
    clock = Clock()
    manager, wire = node(clock, failures=5), Wire((SCANNER, 5062))
    for n in range(8):
        manager.endpoint.receive(request("BYE", "+15550000001", branch=str(n)), wire)
    assert [r.status for r in wire.take()] == [481] * 6  # the 6th answer banned it
    assert manager.stats.refused["source_failures"] == 1


def test_a_phone_that_authenticates_is_not_banned_for_its_challenges() -> None:
    clock = Clock()
    auth = DigestAuthenticator("voxswitch.test", {"alice": "secret"}, algorithms=("MD5",))
    book = Book(users={"alice": "carrier"}, trunks=False, full=True)
    manager = node(clock, book=book, authenticator=auth, failures=3, targets=3)
    wire = Wire((CALLER, 5062))
    for n in range(10):  # ten calls to ten numbers no route knows, each challenged first
        number = f"+4930{n:07}"
        manager.endpoint.receive(request("INVITE", number, branch=f"c{n}"), wire)
        [challenge] = wire.take()
        assert challenge.status == 401
        credentials = answer_challenge(
            challenge.headers.get_all("www-authenticate")[0], method="INVITE",
            uri=f"sip:{number}@192.0.2.10", username="alice", password="secret",
        )  # fmt: skip
        extra = f"Authorization: {credentials}\r\n"
        manager.endpoint.receive(request("INVITE", number, branch=f"a{n}", extra=extra), wire)
        assert [r.reason for r in wire.take()] == ["Trunk Limit Reached"]  # past the auth
    guard_ = manager.sources
    assert guard_ is not None and not guard_.banned(CALLER)
    # Wrong credentials are failures like any other (and auth failures as before).
    manager.endpoint.receive(request("INVITE", "agent", branch="c"), wire)
    header = wire.take()[0].headers.get_all("www-authenticate")[0]
    for n in range(5):
        credentials = answer_challenge(header, method="INVITE", uri="sip:agent@192.0.2.10",
                                       username="alice", password=f"guess{n}")  # fmt: skip
        extra = f"Authorization: {credentials}\r\n"
        manager.endpoint.receive(request("INVITE", "agent", branch=f"g{n}", extra=extra), wire)
    # The challenge and three wrong guesses are 4 error answers, one past the limit:
    # the last is sent and the source banned; the other guesses go unanswered.
    assert [r.status for r in wire.take()] == [401, 401, 401]
    assert [(b.ip, b.reason) for b in guard_.active_bans()] == [(CALLER, "failures")]


# ---- behind a proxy --------------------------------------------------------------------


def via_proxy(method: str, user: str, real: str | None, *, branch: str = "") -> bytes:
    extra = f"X-Source-IP: {real}\r\n" if real is not None else ""
    return request(method, user, branch=branch or f"{user}{real}", extra=extra)


def test_behind_a_trusted_proxy_the_real_source_is_banned_and_answered_403() -> None:
    clock = Clock()
    manager, proxy = node(clock, trusted_proxies=(PROXY,)), Wire((PROXY, 5060))
    for ext in range(100, 112):
        manager.endpoint.receive(via_proxy("INVITE", str(ext), SCANNER), proxy)
    # Every request is answered: 403 Unknown Trunk, then 403 Forbidden once banned
    # (silence would make the proxy mark this node dead and fail the call over).
    answers = [(r.status, r.reason) for r in proxy.take()]
    assert answers == [(403, "Unknown Trunk")] * 10 + [(403, "Forbidden")] * 2
    guard_ = manager.sources
    assert guard_ is not None
    assert [b.ip for b in guard_.active_bans()] == [SCANNER] and not guard_.banned(PROXY)
    # Other callers through the same proxy, and the proxy's own probes, go on.
    manager.endpoint.receive(via_proxy("OPTIONS", "+15550000001", CALLER), proxy)
    manager.endpoint.receive(via_proxy("OPTIONS", "", None), proxy)
    assert [r.status for r in proxy.take()] == [200, 200]
    assert manager.stats.refused["source_targets"] == 1
    assert manager.stats.refused["source_banned"] == 1


def test_the_header_from_anyone_but_a_trusted_proxy_is_ignored() -> None:
    clock = Clock()
    manager, wire = node(clock, trusted_proxies=(PROXY,)), Wire((SCANNER, 5062))
    for n, ext in enumerate(range(100, 112)):  # each packet blames someone else
        manager.endpoint.receive(via_proxy("INVITE", str(ext), f"198.18.0.{n}"), wire)
    guard_ = manager.sources
    assert guard_ is not None
    assert [b.ip for b in guard_.active_bans()] == [SCANNER]


def test_failed_authentications_count_against_the_real_source() -> None:
    clock = Clock()
    auth = DigestAuthenticator("voxswitch.test", {"alice": "secret"}, algorithms=("MD5",))
    manager = node(clock, book=Book(users={"alice": "carrier"}, trunks=False),
                   authenticator=auth, trusted_proxies=(PROXY,), max_auth_failures=2)  # fmt: skip
    proxy = Wire((PROXY, 5060))
    manager.endpoint.receive(via_proxy("INVITE", "agent", CALLER, branch="c"), proxy)
    header = proxy.take()[0].headers.get_all("www-authenticate")[0]
    for n in range(3):
        credentials = answer_challenge(header, method="INVITE", uri="sip:agent@192.0.2.10",
                                       username="alice", password=f"guess{n}")  # fmt: skip
        extra = f"X-Source-IP: {CALLER}\r\nAuthorization: {credentials}\r\n"
        manager.endpoint.receive(request("INVITE", "agent", branch=f"g{n}", extra=extra), proxy)
    guard_ = manager.sources
    assert guard_ is not None
    assert [(b.ip, b.reason) for b in guard_.active_bans()] == [(CALLER, "auth")]


# ---- what we say about ourselves ----------------------------------------------------------


@pytest.mark.parametrize("configured", ["", "acme-sbc"])
def test_no_product_name_unless_one_is_configured(configured: str) -> None:
    clock = Clock()
    manager, wire = node(clock, server_header=configured), Wire((CALLER, 5062))
    manager.endpoint.receive(request("OPTIONS", ""), wire)
    manager.endpoint.receive(request("INVITE", "+15550000001"), wire)  # 403 Unknown Trunk
    no_headers = (
        b"INVITE sip:x@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-x\r\n\r\n"
    )
    manager.endpoint.receive(no_headers, wire)  # 400
    responses = wire.take()
    assert [r.status for r in responses] == [200, 403, 400]
    for response in responses:
        assert response.headers.get("server") == (configured or None)
        assert "voxswitch" not in bytes(response).decode().lower()


# ---- settings ------------------------------------------------------------------------------


def test_the_settings_and_their_defaults() -> None:
    s = load_settings({}, env={})
    assert (s.ban_max_unknown_targets, s.ban_max_failures, s.ban_window_s) == (10, 30, 60.0)
    assert s.trusted_proxies == "" and s.server_header == ""
    s = load_settings({}, env={"VOXSWITCH_TRUSTED_PROXIES": "10.0.0.5,2001:db8::/64",
                               "VOXSWITCH_SERVER_HEADER": "acme-sbc/2"})  # fmt: skip
    assert s.trusted_proxies == "10.0.0.5,2001:db8::/64" and s.server_header == "acme-sbc/2"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("trusted_proxies", "10.0.0.0/33", "trusted_proxies: not an address or network"),
        ("server_header", "x\r\nX-Injected: 1", "server_header: printable ASCII"),
        ("server_header", "x" * 101, "server_header: printable ASCII"),
        ("ban_window_s", "nan", "ban_window_s: must be above 0"),
        ("ban_window_s", "0", "ban_window_s: must be above 0"),
        ("ban_max_failures", "-1", "ban_max_failures: must be 0 or more"),
        ("ban_max_unknown_targets", "-1", "ban_max_unknown_targets: must be 0 or more"),
    ],
)
def test_bad_settings_are_refused_by_name(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings({}, env={f"VOXSWITCH_{name.upper()}": value})
