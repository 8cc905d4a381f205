"""The source guard (switch.guard.sources): rates, failed authentications, scanners."""

from __future__ import annotations

from switch.guard.sources import Ban, SourceGuard, SourceLimits

SCANNER = "10.9.9.9"
CALLER = "198.51.100.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **limits: object) -> SourceGuard:
    return SourceGuard(SourceLimits(**limits), clock=clock, node="n1")  # type: ignore[arg-type]


def test_a_scanner_user_agent_bans_its_source_at_once() -> None:
    clock = Clock()
    g = guard(clock)
    assert g.request(SCANNER, "friendly-scanner") == "scanner"
    assert g.banned(SCANNER)
    assert not g.banned(CALLER)
    assert g.stats.bans["scanner"] == 1 and g.stats.scanner_requests == 1
    assert g.request(CALLER, "Linphone/5.0 (belle-sip/4.5)") is None


def test_scanner_names_match_in_any_case_inside_the_user_agent() -> None:
    g = guard(Clock())
    assert g.request(SCANNER, "SIPVicious 0.3.4") == "scanner"
    assert g.request("203.0.113.5", "x VaxSIPUserAgent/3.1") == "scanner"


def test_more_requests_in_a_second_than_allowed_ban_the_source() -> None:
    clock = Clock()
    g = guard(clock, max_rps=10)
    assert all(g.request(CALLER, None) is None for _ in range(10))
    assert g.request(CALLER, None) == "rate"
    assert g.banned(CALLER)


def test_the_rate_counts_per_second() -> None:
    clock = Clock()
    g = guard(clock, max_rps=10)
    for _ in range(5):
        assert all(g.request(CALLER, None) is None for _ in range(10))
        clock.now += 1.0
    assert not g.banned(CALLER)


def test_trusted_networks_and_trunks_are_never_counted_or_banned() -> None:
    clock = Clock()
    g = SourceGuard(SourceLimits(max_rps=1, trusted=("192.0.2.0/24",)), clock=clock,
                    is_trunk=lambda ip: ip == "203.0.113.1")  # fmt: skip
    for ip in ("192.0.2.77", "203.0.113.1"):
        assert all(g.request(ip, "friendly-scanner") is None for _ in range(5))
        assert not g.auth_failed(ip)
        g.ban(ip, "api")
        assert not g.banned(ip)  # a trusted source is never cut off, whoever banned it


def test_failed_authentications_past_the_limit_ban_the_source() -> None:
    clock = Clock()
    g = guard(clock, max_auth_failures=3, auth_window_s=60)
    assert not any(g.auth_failed(CALLER) for _ in range(3))
    assert g.auth_failed(CALLER)
    assert g.banned(CALLER) and g.active_bans()[0].reason == "auth"


def test_failed_authentications_outside_the_window_are_forgotten() -> None:
    clock = Clock()
    g = guard(clock, max_auth_failures=3, auth_window_s=60)
    for _ in range(10):
        assert not g.auth_failed(CALLER)
        clock.now += 30
    assert not g.banned(CALLER)


def test_a_ban_ends_and_can_be_lifted() -> None:
    clock = Clock()
    g = guard(clock, ban_s=600)
    g.request(SCANNER, "sipcli/v1.8")
    clock.now += 599
    assert g.banned(SCANNER)
    clock.now += 2
    assert not g.banned(SCANNER) and g.active_bans() == []
    g.ban(CALLER, "api", 60)
    assert g.lift(CALLER) and not g.banned(CALLER)
    assert not g.lift(CALLER)


def test_without_a_shared_store_nothing_piles_up_for_one() -> None:
    clock = Clock()
    g = guard(clock, max_rps=1000)
    for i in range(500):
        g.request(f"198.51.100.{i % 250}", None)
    g.ban(CALLER, "api")
    g.lift(CALLER)
    assert not g.unsynced_requests and not g.new_bans and not g.lifted


def test_the_clusters_bans_replace_ours_except_what_we_have_not_told_it() -> None:
    clock = Clock()
    g = guard(clock)
    g.shared = True
    g.ban("192.0.2.1", "rate")  # ours, not yet synced
    g.lift("192.0.2.2")  # lifted here, not yet synced
    shared = [Ban("192.0.2.2", "scanner", clock.now + 60, clock.now, "n2"),
              Ban("192.0.2.3", "auth", clock.now + 60, clock.now, "n3")]  # fmt: skip
    g.adopt_bans(shared)
    assert {b.ip for b in g.active_bans()} == {"192.0.2.1", "192.0.2.3"}
