"""Transactions on a fake clock: bytes in, bytes and events out, every timer fired."""

from __future__ import annotations

import itertools

import pytest

from sip.message import Request, Response, make_response
from sip.parser import parse_message
from sip.timers import DEFAULT_TIMERS, TimerConfig
from sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ResponseReceived,
    SuccessRetransmitter,
    Transaction,
    TransactionEvent,
    TransactionState,
    TransactionTerminated,
    TransactionTimedOut,
    cancel_target_key,
    client_key,
    make_ack,
    make_cancel,
    new_branch,
    server_key,
)

T1, T2, T4 = DEFAULT_TIMERS.t1, DEFAULT_TIMERS.t2, DEFAULT_TIMERS.t4


def request(
    method: str = "INVITE", branch: str = "z9hG4bK-1", *, cseq: int = 1, extra: str = ""
) -> Request:
    data = (
        f"{method} sip:bot@192.0.2.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.9:5060;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=f1\r\n"
        "To: <sip:bot@example.com>\r\n"
        "Call-ID: call-1@example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, to_tag: str | None = "t1") -> Response:
    # Through bytes, as a client transaction would see it.
    msg = parse_message(bytes(make_response(req, status, to_tag=to_tag)))
    assert isinstance(msg, Response)
    return msg


def events(txn: Transaction) -> list[TransactionEvent]:
    out = []
    while (event := txn.next_event()) is not None:
        out.append(event)
    return out


def run_timers(txn: Transaction | SuccessRetransmitter, until: float) -> list[tuple[float, int]]:
    """Fire every deadline up to ``until``; returns (time, datagrams sent) per firing."""
    fired = []
    while (deadline := txn.next_deadline()) is not None and deadline <= until:
        txn.handle_timer(deadline)
        fired.append((deadline, len(txn.datagrams_to_send())))
    return fired


def status_of(data: bytes) -> int:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg.status


# ---- INVITE server (§17.2.1, RFC 6026) ---------------------------------------------


def test_invite_server_repeats_provisional_for_retransmitted_invite() -> None:
    invite = request()
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    assert txn.state is TransactionState.PROCEEDING
    txn.respond(response(invite, 180), 0.0)
    assert [status_of(d) for d in txn.datagrams_to_send()] == [180]
    txn.receive(request(), 0.3)
    assert [status_of(d) for d in txn.datagrams_to_send()] == [180]
    assert events(txn) == []


def test_invite_server_error_retransmits_on_timer_g_until_ack() -> None:
    invite = request()
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.respond(response(invite, 486), 0.0)
    assert [status_of(d) for d in txn.datagrams_to_send()] == [486]
    assert txn.state is TransactionState.COMPLETED
    # Timer G: T1, 2T1, 4T1, then capped at T2.
    fired = run_timers(txn, 12.0)
    assert fired == [(0.5, 1), (1.5, 1), (3.5, 1), (7.5, 1), (11.5, 1)]
    txn.receive(request("ACK"), 12.0)
    assert txn.state is TransactionState.CONFIRMED
    assert txn.next_deadline() == 12.0 + T4  # Timer I
    txn.receive(request(), 13.0)  # INVITE retransmission after ACK: absorbed
    assert txn.datagrams_to_send() == []
    txn.handle_timer(12.0 + T4)
    assert txn.state is TransactionState.TERMINATED
    assert events(txn) == [TransactionTerminated()]


def test_invite_server_gives_up_on_timer_h_without_ack() -> None:
    invite = request()
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.respond(response(invite, 503), 0.0)
    txn.datagrams_to_send()
    fired = run_timers(txn, 100.0)
    assert fired[-1][0] == 64 * T1
    sends = [t for t, sent in fired if sent]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events(txn) == [TransactionTimedOut("H"), TransactionTerminated()]


def test_invite_server_reliable_has_no_timer_g_and_ends_on_ack() -> None:
    invite = request()
    txn = InviteServerTransaction(invite, reliable=True, now=0.0)
    txn.respond(response(invite, 404), 0.0)
    assert len(txn.datagrams_to_send()) == 1
    assert txn.next_deadline() == 64 * T1  # only Timer H
    txn.receive(request("ACK"), 1.0)
    assert txn.state is TransactionState.TERMINATED  # Timer I is zero on TCP
    assert events(txn) == [TransactionTerminated()]


def test_invite_server_2xx_moves_to_accepted_and_absorbs_retransmissions() -> None:
    invite = request()
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.respond(response(invite, 200), 0.0)
    assert txn.state is TransactionState.ACCEPTED
    txn.datagrams_to_send()
    txn.receive(request(), 0.5)
    assert txn.datagrams_to_send() == []
    txn.respond(response(invite, 200), 0.5)  # the TU's own 2xx retransmission passes
    assert len(txn.datagrams_to_send()) == 1
    txn.respond(response(invite, 487), 1.0)  # too late: dropped
    assert txn.datagrams_to_send() == []
    assert txn.next_deadline() == 64 * T1  # Timer L
    txn.handle_timer(64 * T1)
    assert events(txn) == [TransactionTerminated()]


def test_handle_timer_before_deadline_is_a_no_op() -> None:
    invite = request()
    txn = InviteServerTransaction(invite, reliable=False, now=0.0)
    txn.respond(response(invite, 486), 0.0)
    txn.datagrams_to_send()
    txn.handle_timer(0.49)
    assert txn.datagrams_to_send() == []
    assert txn.next_deadline() == 0.5


# ---- non-INVITE server (§17.2.2) ---------------------------------------------------


def test_non_invite_server_absorbs_then_repeats_final() -> None:
    bye = request("BYE")
    txn = NonInviteServerTransaction(bye, reliable=False, now=0.0)
    txn.receive(request("BYE"), 0.5)  # Trying: absorbed
    assert txn.datagrams_to_send() == []
    txn.respond(response(bye, 200), 1.0)
    assert [status_of(d) for d in txn.datagrams_to_send()] == [200]
    txn.receive(request("BYE"), 2.0)
    assert [status_of(d) for d in txn.datagrams_to_send()] == [200]
    assert txn.next_deadline() == 1.0 + 64 * T1  # Timer J
    txn.handle_timer(1.0 + 64 * T1)
    assert events(txn) == [TransactionTerminated()]


def test_non_invite_server_provisional_is_repeated_in_proceeding() -> None:
    opts = request("OPTIONS")
    txn = NonInviteServerTransaction(opts, reliable=False, now=0.0)
    txn.respond(response(opts, 100), 0.0)
    assert txn.state is TransactionState.PROCEEDING
    txn.datagrams_to_send()
    txn.receive(request("OPTIONS"), 0.5)
    assert [status_of(d) for d in txn.datagrams_to_send()] == [100]


def test_non_invite_server_over_tcp_ends_with_its_final_response() -> None:
    bye = request("BYE")
    txn = NonInviteServerTransaction(bye, reliable=True, now=0.0)
    txn.respond(response(bye, 200), 0.0)
    assert txn.state is TransactionState.TERMINATED  # Timer J is zero
    assert events(txn) == [TransactionTerminated()]


def test_non_invite_server_without_an_answer_does_not_live_forever() -> None:
    txn = NonInviteServerTransaction(request("INFO"), reliable=False, now=0.0)
    run_timers(txn, 1000.0)
    assert events(txn) == [TransactionTimedOut("TU"), TransactionTerminated()]


# ---- INVITE client (§17.1.1, RFC 6026) ---------------------------------------------


def test_invite_client_timer_a_doubles_until_timer_b() -> None:
    txn = InviteClientTransaction(request(), reliable=False, now=0.0)
    assert len(txn.datagrams_to_send()) == 1
    fired = run_timers(txn, 100.0)
    # Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (doubling, no cap); Timer B at 32 s.
    assert [t for t, sent in fired if sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert fired[-1] == (64 * T1, 0)
    assert events(txn) == [TransactionTimedOut("B"), TransactionTerminated()]


def test_invite_client_provisional_stops_retransmissions() -> None:
    invite = request()
    txn = InviteClientTransaction(invite, reliable=False, now=0.0)
    txn.datagrams_to_send()
    txn.receive(response(invite, 180), 0.2)
    assert txn.state is TransactionState.PROCEEDING
    assert txn.next_deadline() is None  # no Timer A, and Timer B only runs in Calling
    assert [type(e) for e in events(txn)] == [ResponseReceived]


def test_invite_client_acks_error_responses_inside_the_transaction() -> None:
    invite = request(extra="Route: <sip:proxy.example.com;lr>\r\n")
    txn = InviteClientTransaction(invite, reliable=False, now=0.0)
    txn.datagrams_to_send()
    busy = response(invite, 486, to_tag="u9")
    txn.receive(busy, 0.1)
    [ack_bytes] = txn.datagrams_to_send()
    ack = parse_message(ack_bytes)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.top_via.branch == invite.top_via.branch  # same transaction
    assert ack.to.tag == "u9"
    assert ack.cseq.number == invite.cseq.number and ack.cseq.method == "ACK"
    assert ack.headers.get_all("route") == ["<sip:proxy.example.com;lr>"]
    [event] = events(txn)
    assert isinstance(event, ResponseReceived) and event.response.status == 486
    # A retransmitted 486 gets the ACK again, and the TU hears nothing more.
    txn.receive(busy, 0.6)
    assert txn.datagrams_to_send() == [ack_bytes]
    assert events(txn) == []
    assert txn.next_deadline() == 0.1 + 32.0  # Timer D
    txn.handle_timer(32.1)
    assert events(txn) == [TransactionTerminated()]


def test_invite_client_passes_every_2xx_up_then_ends_on_timer_m() -> None:
    invite = request()
    txn = InviteClientTransaction(invite, reliable=False, now=0.0)
    ok = response(invite, 200)
    txn.receive(ok, 0.1)
    txn.receive(ok, 0.6)  # a 2xx retransmission: the TU ACKs it again
    assert txn.state is TransactionState.ACCEPTED
    assert [e.response.status for e in events(txn) if isinstance(e, ResponseReceived)] == [
        200,
        200,
    ]
    txn.handle_timer(0.1 + 64 * T1)  # Timer M
    assert txn.state is TransactionState.TERMINATED


def test_invite_client_over_tcp_sends_once() -> None:
    invite = request()
    txn = InviteClientTransaction(invite, reliable=True, now=0.0)
    txn.datagrams_to_send()
    fired = run_timers(txn, 100.0)
    assert fired == [(64 * T1, 0)]  # Timer B only
    txn2 = InviteClientTransaction(invite, reliable=True, now=0.0)
    txn2.receive(response(invite, 603), 1.0)
    assert txn2.state is TransactionState.TERMINATED  # Timer D is zero


# ---- non-INVITE client (§17.1.2) ---------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    txn = NonInviteClientTransaction(request("BYE"), reliable=False, now=0.0)
    txn.datagrams_to_send()
    fired = run_timers(txn, 100.0)
    sends = [t for t, sent in fired if sent]
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5, 1, 2, 4, 4, ...
    assert all(b - a == T2 for a, b in itertools.pairwise(sends[3:]))
    assert events(txn) == [TransactionTimedOut("F"), TransactionTerminated()]


def test_non_invite_client_in_proceeding_retransmits_every_t2() -> None:
    bye = request("BYE")
    txn = NonInviteClientTransaction(bye, reliable=False, now=0.0)
    txn.datagrams_to_send()
    txn.receive(response(bye, 100), 0.1)
    assert txn.state is TransactionState.PROCEEDING
    txn.handle_timer(0.5)
    assert len(txn.datagrams_to_send()) == 1
    assert txn.next_deadline() == 0.5 + T2


def test_non_invite_client_final_then_timer_k() -> None:
    bye = request("BYE")
    txn = NonInviteClientTransaction(bye, reliable=False, now=0.0)
    txn.receive(response(bye, 200), 0.1)
    txn.receive(response(bye, 200), 0.2)  # absorbed
    assert [type(e) for e in events(txn)] == [ResponseReceived]
    assert txn.next_deadline() == pytest.approx(0.1 + T4)
    txn.handle_timer(0.1 + T4)
    assert events(txn) == [TransactionTerminated()]


def test_timers_scale_with_config() -> None:
    fast = TimerConfig(t1=0.05, t2=0.4, t4=0.5)
    txn = NonInviteClientTransaction(request("BYE"), reliable=False, now=0.0, timers=fast)
    assert txn.next_deadline() == 0.05
    run_timers(txn, 10.0)
    assert events(txn)[0] == TransactionTimedOut("F")


# ---- 2xx retransmission by the UAS core (§13.3.1.4) -------------------------------


def test_success_retransmitter_backs_off_to_t2_and_times_out() -> None:
    retx = SuccessRetransmitter(b"200", reliable=False, now=0.0)
    fired = run_timers(retx, 100.0)
    sends = [t for t, sent in fired if sent]
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert retx.timed_out
    assert fired[-1][0] == 64 * T1


def test_success_retransmitter_stops_on_ack() -> None:
    retx = SuccessRetransmitter(b"200", reliable=False, now=0.0)
    retx.handle_timer(0.5)
    assert retx.datagrams_to_send() == [b"200"]
    retx.ack_received()
    assert retx.next_deadline() is None
    retx.handle_timer(40.0)
    assert not retx.timed_out and retx.datagrams_to_send() == []


def test_success_retransmitter_on_tcp_only_waits_for_ack() -> None:
    retx = SuccessRetransmitter(b"200", reliable=True, now=0.0)
    assert retx.next_deadline() == 64 * T1
    retx.handle_timer(64 * T1)
    assert retx.timed_out and retx.datagrams_to_send() == []


# ---- keys, ACK and CANCEL ----------------------------------------------------------


def test_ack_and_cancel_keys() -> None:
    invite = request()
    assert server_key(request("ACK")) == server_key(invite)
    cancel = request("CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert cancel_target_key(cancel) == server_key(invite)
    assert server_key(request(branch="z9hG4bK-2")) != server_key(invite)


def test_rfc2543_keys_without_magic_cookie() -> None:
    old = request(branch="1")
    assert server_key(request("ACK", branch="1")) == server_key(old)
    assert cancel_target_key(request("CANCEL", branch="1")) == server_key(old)
    assert server_key(request(branch="1", cseq=2)) != server_key(old)


def test_client_key_matches_responses() -> None:
    invite = request()
    assert client_key(response(invite, 180)) == client_key(invite)
    cancel = make_cancel(invite)
    assert client_key(cancel) != client_key(invite)


def test_make_cancel_copies_the_invite_identity() -> None:
    invite = request(extra="Route: <sip:p.example.com;lr>\r\n")
    cancel = parse_message(bytes(make_cancel(invite)))
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.to.tag is None
    assert str(cancel.cseq) == "1 CANCEL"
    assert cancel.headers.get("route") == "<sip:p.example.com;lr>"


def test_make_ack_is_parseable() -> None:
    invite = request()
    ack = parse_message(bytes(make_ack(invite, response(invite, 404))))
    assert isinstance(ack, Request) and ack.method == "ACK"


def test_new_branch_is_unique_and_rfc3261() -> None:
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith("z9hG4bK") for b in branches)
