"""SIPp (the real one, v3.6) against a real ``voxswitch serve`` node.

Each test asserts SIPp's exit code (0: every call succeeded) and the facts behind
it, read from SIPp's statistics (``-trace_stat``) and per-message counts
(``-trace_counts``): calls, responses, retransmissions, and response times that
measure the node's timers. Scenarios live in loadtest/scenarios/.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from loadtest.audio.make_tone import tone_ulaw
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, SippRunner

pytestmark = pytest.mark.e2e

UAC_CALLS = 200
UAC_RATE = 50

# Timer values of RFC 3261 (§17.1.1.1, §13.3.1.4).
T1_S = 0.5
TIMER_H_S = 64 * T1_S


def assert_all_succeeded(result: SippResult, calls: int) -> None:
    assert result.returncode == 0, result.describe()
    assert result.successful_calls == calls, result.describe()
    assert result.failed_calls == 0, result.describe()


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    # No media timeout: the built-in uac and the no-ACK scenario send no RTP, and the
    # no-ACK call must last past Timer H.
    return voxswitch_nodes.start("plain", NodeOptions(media_timeout_s=0))


@pytest.fixture(scope="module")
def ringing_node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start("ringing", NodeOptions(ring_ms=3000, media_timeout_s=0))


@pytest.fixture(scope="module")
def media_timeout_node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start("media-timeout", NodeOptions(media_timeout_s=2))


@pytest.fixture(scope="module")
def short_call_node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start(
        "short-calls", NodeOptions(max_call_duration_s=2, media_timeout_s=0)
    )


@pytest.fixture(scope="module")
def small_node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start("two-calls", NodeOptions(max_calls=2, media_timeout_s=0))


@pytest.mark.parametrize(("transport", "label"), [("u1", "UDP"), ("t1", "TCP")])
def test_builtin_uac_calls_all_succeed(
    node: NodeProcess, sipp: SippRunner, transport: str, label: str
) -> None:
    result = sipp(node, "uac", transport=transport, calls=UAC_CALLS, rate=UAC_RATE, timeout_s=60)
    assert_all_succeeded(result, UAC_CALLS)
    # The built-in uac: 0 INVITE, 1 100?, 2 180?, 3 183?, 4 200, 5 ACK, 6 pause, 7 BYE, 8 200.
    assert result.count("1_100_Recv") == UAC_CALLS, f"100 Trying over {label}\n{result.describe()}"
    assert result.count("2_180_Recv") == UAC_CALLS, f"180 Ringing over {label}\n{result.describe()}"
    assert result.count("4_200_Recv") == UAC_CALLS, result.describe()
    assert result.count("8_200_Recv") == UAC_CALLS, f"200 for BYE\n{result.describe()}"
    assert node.alive()


def test_builtin_uac_over_tcp_one_connection_per_call(node: NodeProcess, sipp: SippRunner) -> None:
    calls = 50
    # tn: a new TCP connection per call; SIPp wants -max_socket below the fd limit.
    result = sipp(
        node,
        "uac",
        transport="tn",
        calls=calls,
        rate=25,
        timeout_s=40,
        extra_args=["-max_socket", "512"],
    )
    assert_all_succeeded(result, calls)
    assert result.count("8_200_Recv") == calls, result.describe()


def test_cancel_while_ringing_gets_200_then_487(
    ringing_node: NodeProcess, sipp: SippRunner
) -> None:
    calls = 5
    result = sipp(ringing_node, "cancel.xml", calls=calls, rate=5, timeout_s=40)
    assert_all_succeeded(result, calls)
    # cancel.xml: 0 INVITE, 1 100?, 2 180, 3 CANCEL, 4 200 (CANCEL), 5 487, 6 ACK, 7 pause.
    assert result.count("2_180_Recv") == calls, result.describe()
    assert result.count("4_200_Recv") == calls, result.describe()
    assert result.count("5_487_Recv") == calls, result.describe()
    # SIPp re-sends the ACK for each retransmitted 487: there should be none.
    assert result.count("5_487_Retrans") == 0, result.describe()


def test_unacknowledged_200_is_retransmitted_then_bye(node: NodeProcess, sipp: SippRunner) -> None:
    result = sipp(node, "no_ack.xml", calls=1, timeout_s=70)
    assert_all_succeeded(result, 1)
    # no_ack.xml: 0 INVITE, 1 100?, 2 180?, 3 200 (never ACKed), 4 BYE, 5 200, 6 pause.
    # 2xx retransmitted at T1, 2*T1, ... capped at T2 = 4 s, for 64*T1 (§13.3.1.4):
    # 0.5, 1.5, 3.5, 7.5, 11.5, ..., 31.5 s: about ten.
    retransmissions = result.count("3_200_Retrans")
    assert 7 <= retransmissions <= 12, f"200 retransmitted {retransmissions}x\n{result.describe()}"
    bye_after_ms = result.response_time_ms  # INVITE sent -> BYE received
    assert (TIMER_H_S - 1) * 1000 <= bye_after_ms <= (TIMER_H_S + 8) * 1000, (
        f"BYE {bye_after_ms:.0f} ms after the INVITE, want about {TIMER_H_S:.0f} s\n"
        + result.describe()
    )
    assert result.count("4_BYE_Recv") == 1, result.describe()


def test_media_timeout_after_caller_stops_sending(
    media_timeout_node: NodeProcess, sipp: SippRunner
) -> None:
    result = sipp(
        media_timeout_node,
        "media_stops.xml",
        calls=1,
        timeout_s=30,
        files={"tone.ulaw": tone_ulaw(seconds=1.0)},
    )
    assert_all_succeeded(result, 1)
    # ACK -> BYE: 1 s of audio, then the node's 2 s media timeout. Well under
    # 2 s would mean the node never saw the audio (timer counted from the answer).
    bye_after_ms = result.response_time_ms
    assert 2600 <= bye_after_ms <= 6000, (
        f"BYE {bye_after_ms:.0f} ms after the ACK, want about 3000 (1 s audio + 2 s)\n"
        + result.describe()
    )


def test_media_timeout_counts_from_answer_when_caller_never_sends(
    media_timeout_node: NodeProcess, sipp: SippRunner
) -> None:
    result = sipp(media_timeout_node, "wait_for_bye.xml", calls=1, timeout_s=30)
    assert_all_succeeded(result, 1)
    bye_after_ms = result.response_time_ms
    assert 1500 <= bye_after_ms <= 4500, (
        f"BYE {bye_after_ms:.0f} ms after the ACK, want about 2000\n" + result.describe()
    )


def test_max_call_duration_ends_call_with_bye(
    short_call_node: NodeProcess, sipp: SippRunner
) -> None:
    result = sipp(short_call_node, "wait_for_bye.xml", calls=2, rate=10, timeout_s=30)
    assert_all_succeeded(result, 2)
    bye_after_ms = result.response_time_ms
    assert 1500 <= bye_after_ms <= 4500, (
        f"BYE {bye_after_ms:.0f} ms after the ACK, want about 2000\n" + result.describe()
    )


def test_invite_beyond_max_calls_gets_503_with_retry_after(
    small_node: NodeProcess, sipp: SippRunner
) -> None:
    hold_ms = 6000
    with ThreadPoolExecutor(max_workers=1) as pool:
        holding = pool.submit(
            sipp, small_node, "uac", calls=2, rate=10, pause_ms=hold_ms, timeout_s=40
        )
        time.sleep(1.5)  # both calls are up within 0.2 s; they stay up for 6 s
        refused = sipp(small_node, "reject_503.xml", calls=1, timeout_s=20)
        held = holding.result(timeout=60)
    # reject_503.xml: 0 INVITE, 1 100?, 2 503 (Retry-After checked), 3 ACK, 4 pause.
    assert refused.returncode == 0, "third call not refused with 503 + Retry-After\n" + (
        refused.describe()
    )
    assert refused.count("2_503_Recv") == 1, refused.describe()
    assert_all_succeeded(held, 2)
    # Once the two calls are over, capacity is back.
    after = sipp(small_node, "uac", calls=2, rate=10, timeout_s=30)
    assert_all_succeeded(after, 2)


def test_sigterm_refuses_new_calls_then_ends_calls_and_exits(
    voxswitch_nodes: NodeFactory, sipp: SippRunner
) -> None:
    # drain_grace_s is 2 s for test nodes (tests/conftest.py).
    draining = voxswitch_nodes.start("draining", NodeOptions(media_timeout_s=0))
    assert draining.process is not None
    with ThreadPoolExecutor(max_workers=1) as pool:
        up = pool.submit(sipp, draining, "wait_for_bye.xml", calls=1, timeout_s=30)
        time.sleep(1.0)
        draining.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = sipp(draining, "reject_503.xml", calls=1, timeout_s=15)
        held = up.result(timeout=60)
    assert refused.returncode == 0, "INVITE while draining not refused with 503\n" + (
        refused.describe()
    )
    assert_all_succeeded(held, 1)
    bye_after_ms = held.response_time_ms  # ACK -> BYE: 1 s up, then 2 s of grace
    assert 2000 <= bye_after_ms <= 8000, (
        f"BYE {bye_after_ms:.0f} ms after the ACK, want about 3000\n" + held.describe()
    )
    assert draining.process.wait(timeout=15) == 0, draining.log_tail()


def test_dialog_hold_resume_info_options_and_offerless_reinvite(
    node: NodeProcess, sipp: SippRunner
) -> None:
    calls = 5
    result = sipp(node, "dialog_hold_resume.xml", calls=calls, rate=5, timeout_s=30)
    # The scenario's regexps (check_it) fail a call when the node's answers are wrong:
    # Record-Route mirrored, hold answered recvonly at our own address, INFO and
    # OPTIONS answered in the dialog, resume, and our SDP offered when the
    # re-INVITE has none.
    assert_all_succeeded(result, calls)
