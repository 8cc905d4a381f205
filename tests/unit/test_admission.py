"""Admission by measured load (switch.guard.admission): sans-I/O, a fake clock."""

from __future__ import annotations

import math

import pytest

from switch.guard.admission import AdmissionConfig, AdmissionControl, LoadSample

PERIOD = 0.1


def offer(control: AdmissionControl, start: float, cps: float, seconds: float,
          sample: LoadSample) -> tuple[int, float]:  # fmt: skip
    """Offer ``cps`` evenly for ``seconds``, reporting ``sample`` each period;
    returns (admitted, the clock at the end)."""
    admitted = 0
    now = start
    per_period = round(cps * PERIOD)
    for _ in range(round(seconds / PERIOD)):
        for i in range(per_period):
            admitted += control.admit(now + i * PERIOD / per_period)
        now += PERIOD
        control.update(now, sample)
    return admitted, now


def test_a_node_never_loaded_has_no_limit() -> None:
    control = AdmissionControl(AdmissionConfig(), 0.0)
    admitted, _ = offer(control, 0.0, 500, 5, LoadSample(busy=0.5, lag_s=0.001))
    assert admitted == 2500
    assert control.rate_cps == math.inf and not control.overloaded


def test_past_its_share_the_node_admits_what_that_share_allows() -> None:
    """Busy 0.99 while offered 1,000/s: the limit settles near admitted × 0.85 / 0.99
    and keeps falling while the node stays that busy."""
    control = AdmissionControl(AdmissionConfig(), 0.0)
    offer(control, 0.0, 1000, 3, LoadSample(busy=0.99, lag_s=0.0))
    assert control.overloaded
    assert control.rate_cps < 1000 * 0.85
    admitted, _ = offer(control, 3.0, 1000, 1, LoadSample(busy=0.99, lag_s=0.0))
    assert admitted < 900
    assert control.refused > 0


def test_the_limit_lifts_when_the_load_falls() -> None:
    control = AdmissionControl(AdmissionConfig(), 0.0)
    _, now = offer(control, 0.0, 1000, 3, LoadSample(busy=0.99, lag_s=0.0))
    assert control.rate_cps < math.inf
    admitted, _ = offer(control, now, 300, 3, LoadSample(busy=0.3, lag_s=0.0))
    assert control.rate_cps == math.inf and not control.overloaded
    assert admitted > 0.95 * 900  # the first periods still smooth the old load away


BUSY = 0.8  # past engage × busy_high (0.7225), under busy_high (0.85)


def test_one_late_period_is_a_hiccup_two_are_congestion() -> None:
    control = AdmissionControl(AdmissionConfig(), 0.0)
    _, now = offer(control, 0.0, 400, 3, LoadSample(busy=BUSY, lag_s=0.0))
    before = control.rate_cps
    late = LoadSample(busy=BUSY, lag_s=0.0, queue_s=0.035)
    _, now = offer(control, now, 400, PERIOD, late)
    assert control.rate_cps == pytest.approx(before, rel=0.05)  # one 35 ms queue
    _, now = offer(control, now, 400, PERIOD, LoadSample(busy=BUSY, lag_s=0.0))
    _, now = offer(control, now, 400, 2 * PERIOD, late)
    assert control.rate_cps < 400  # two in a row: cut to backoff × the admitted rate


def test_a_period_far_past_a_threshold_cuts_at_once() -> None:
    control = AdmissionControl(AdmissionConfig(), 0.0)
    _, now = offer(control, 0.0, 400, 3, LoadSample(busy=BUSY, lag_s=0.0))
    control.update(now, LoadSample(busy=BUSY, lag_s=0.5))  # the loop half a second late
    assert control.overloaded and control.rate_cps < 400


def test_a_queue_while_the_loop_is_idle_is_someone_elses_load() -> None:
    """Another process took the CPU: the loop lags with little work of its own."""
    control = AdmissionControl(AdmissionConfig(), 0.0)
    admitted, _ = offer(control, 0.0, 400, 3, LoadSample(busy=0.3, lag_s=0.3, queue_s=0.3))
    assert admitted == 1200 and control.rate_cps == math.inf
    assert control.admit(3.0, waited_s=0.3)


def test_late_media_ticks_count_as_congestion() -> None:
    control = AdmissionControl(AdmissionConfig(), 0.0)
    _, now = offer(control, 0.0, 400, 2, LoadSample(busy=0.5, lag_s=0.0))
    control.update(now, LoadSample(busy=0.5, lag_s=0.0, media_late_s=0.1))
    assert control.rate_cps < 400


def test_an_invite_that_waited_too_long_in_the_queue_is_refused_while_overloaded() -> None:
    control = AdmissionControl(AdmissionConfig(sojourn_max_s=0.05), 0.0)
    _, now = offer(control, 0.0, 400, 3, LoadSample(busy=BUSY, lag_s=0.0))
    assert control.admit(now, waited_s=0.08)  # busy, not overloaded: a stall, let it be
    _, now = offer(control, now, 400, 3, LoadSample(busy=0.95, lag_s=0.0))
    refused = control.refused
    assert control.admit(now + 1, waited_s=0.01)
    assert not control.admit(now + 1, waited_s=0.08)
    assert control.refused == refused + 1


def test_max_cps_is_a_ceiling_whatever_the_load() -> None:
    control = AdmissionControl(AdmissionConfig(max_cps=20), 0.0)
    admitted, _ = offer(control, 0.0, 100, 10, LoadSample(busy=0.1, lag_s=0.0))
    # 20/s for 10 s, plus the bucket's first clump (a tenth of a second, at least 5).
    assert 200 <= admitted <= 206
    assert control.refused == 1000 - admitted


def test_the_limit_never_falls_below_its_floor() -> None:
    control = AdmissionControl(AdmissionConfig(floor_cps=5), 0.0)
    offer(control, 0.0, 10, 5, LoadSample(busy=1.0, lag_s=1.0))
    assert control.rate_cps >= 5


def test_a_refusal_says_why() -> None:
    control = AdmissionControl(AdmissionConfig(max_cps=1), 0.0)
    while control.admit(0.0):
        pass
    assert control.last_reason == "max_cps"
    _, now = offer(control, 0.0, 0, 3, LoadSample(busy=0.95, lag_s=0.0))
    assert not control.admit(now, waited_s=1.0) and control.last_reason == "sojourn"
    loaded = AdmissionControl(AdmissionConfig(), 0.0)
    offer(loaded, 0.0, 1000, 3, LoadSample(busy=0.99, lag_s=0.0))
    assert loaded.last_reason == "overload"


def test_our_own_calls_take_tokens_at_the_measured_limit_but_not_max_cps() -> None:
    """Outbound calls (a campaign) share the measured budget: none refused on an idle
    node whatever ``max_cps`` says, about the limit's worth once the node is loaded,
    and never refused for the socket's queue (they never waited in it)."""
    capped = AdmissionControl(AdmissionConfig(max_cps=10), 0.0)
    assert all(capped.admit(i / 1000, outbound=True) for i in range(500))  # 500 in 0.5 s
    control = AdmissionControl(AdmissionConfig(), 0.0)
    _, now = offer(control, 0.0, 1000, 3, LoadSample(busy=0.99, lag_s=0.0))
    limit = control.adaptive_cps
    assert 100 < limit < 900 and control.overloaded
    taken = sum(control.admit(now + i / 1000, 5.0, outbound=True) for i in range(1000))
    assert 0.9 * limit < taken <= limit + control._burst(limit) + 1
    assert control.last_reason == "overload"


def test_callers_come_before_our_own_calls() -> None:
    """Once our calls have taken what they may, a caller arriving at the same moment
    still gets in: half a burst is kept for inbound INVITEs."""
    control = AdmissionControl(AdmissionConfig(), 0.0)
    _, now = offer(control, 0.0, 1000, 3, LoadSample(busy=0.99, lag_s=0.0))
    now += 1.0  # the bucket refills to a full burst
    while control.admit(now, outbound=True):
        pass
    assert control.admit(now) and control.admit(now)  # inbound: from the reserve
    assert not control.admit(now, outbound=True)


def test_the_node_is_refusing_for_a_second_after_each_refusal() -> None:
    control = AdmissionControl(AdmissionConfig(max_cps=1), 0.0)
    assert not control.refusing(0.0)  # a limit alone refuses nothing yet
    while control.admit(0.0):
        pass
    assert control.refusing(0.5)
    assert not control.refusing(1.5)
