"""Inbound route patterns are matched in time linear in the dialed number (RE2), so a
pattern like ``(\\d+)+#`` cannot stall the event loop; what RE2 cannot run in linear
time (backreferences, look-around) is refused when the route is given."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import ValidationError

from switch.trunking.patterns import PatternError, compile_pattern, fullmatch
from switch.trunking.trunks import InboundRoute, TrunkBook

# Backtracking engines take time exponential in the number for each of these.
CATASTROPHIC = [r"(\d+)+#", r"(\d|\d)+#", r"(\d*)*#", r"(1|11)+#", r"((\d+)\d+)+#", r"(.*\d)*#"]


@contextmanager
def at_most(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer: a backtracking matcher
    would take hours; RE2 takes microseconds, so the bound is loose, not a benchmark."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"matching took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_are_matched_in_linear_time(pattern: str) -> None:
    book = TrunkBook(inbound={"r": InboundRoute(name="r", pattern=pattern, agent="sales")})
    with at_most(2.0):
        for digits in (24, 40, 1000, 100_000):
            assert book.agent_for("1" * digits) is None
        assert book.agent_for("1" * 40 + "#") == "sales"


def test_existing_patterns_keep_their_meaning() -> None:
    book = TrunkBook(
        inbound={
            "us": InboundRoute(name="us", pattern=r"\+1555100\d{4}", agent="sales", priority=1),
            "chime": InboundRoute(name="chime", pattern="chime-.*", agent="none"),
            "named": InboundRoute(name="named", pattern=r"(?P<desk>sales|support)", agent="desk"),
            "any": InboundRoute(name="any", pattern=".*", agent="default", priority=999),
        }
    )
    assert book.agent_for("+15551001234") == "sales"
    assert book.agent_for("+155510012345") == "default"  # fullmatch, not a prefix
    assert book.agent_for("chime-1") == "none"
    assert book.agent_for("support") == "desk"
    assert book.agent_for("sales-x") == "default"


def test_what_needs_backtracking_is_refused_with_the_field_named() -> None:
    for pattern in (r"(\d)\1", r"(?=1)\d+", r"(?<!0)\d+", r"\d{1001}", "("):
        with pytest.raises(ValidationError, match="pattern"):
            InboundRoute(pattern=pattern)
    with pytest.raises(ValidationError, match="pattern"):
        InboundRoute(pattern="\ud800")  # a lone surrogate, as JSON can carry


def test_a_pattern_too_big_to_compile_is_refused_quickly() -> None:
    with at_most(2.0), pytest.raises(PatternError, match="too large"):
        compile_pattern(r"\pL{1000}\pL{1000}\pL{1000}")


def test_a_number_that_is_not_valid_utf8_matches_nothing() -> None:
    assert not fullmatch(".*", "12\udc80")  # a byte the SIP parser could not decode
