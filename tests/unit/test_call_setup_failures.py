"""Call setup that fails after ``100 Trying`` frees what it took and answers the
INVITE (issue 23, finding 1): a fake clock, bytes in, responses out, no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.call import CallConfig, LocalAddress
from sip.endpoint import Flow, ServerTransaction, SipEndpoint
from sip.errors import ParseError, UriError
from sip.message import Request, clean_text
from sip.parser import parse_message, validate_request
from sip.transaction import InviteServerTransaction
from switch.backbone.spool import Spool
from switch.manager import CallManager
from switch.recording import recording_path
from tests.unit.test_endpoint_screen import Wire as ScreenWire
from tests.unit.test_lossy_link import FakeLoop

SOURCE = ("203.0.113.9", 40000)
SDP = b"v=0\r\no=- 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\n" \
      b"m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"  # fmt: skip


def invite(
    call_id: bytes = b"setup-1@203.0.113.9", extra: bytes = b"", branch: bytes = b"1"
) -> bytes:
    return (
        b"INVITE sip:100@192.0.2.10 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.9:40000;branch=z9hG4bK-setup-" + branch + b"\r\n"
        b"From: <sip:caller@203.0.113.9>;tag=abc\r\n"
        b"To: <sip:100@192.0.2.10>\r\n"
        b"Call-ID: " + call_id + b"\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:caller@203.0.113.9:40000>\r\n"
        b"Max-Forwards: 70\r\n" + extra + b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
    )


class Wire(ScreenWire):
    """A UDP peer's flow that keeps what was sent to it."""

    def statuses(self) -> list[int]:
        return [response.status for response in self.responses()]


@dataclass
class FakeLeg:
    """What the manager allocates per call: counts whether it was given back."""

    local_port: int = 30000
    closed: bool = False

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a failed call setup used the leg ({name})")


class Legs:
    def __init__(self) -> None:
        self.made: list[FakeLeg] = []

    def __call__(self, call_id: str, near: int | None = None) -> FakeLeg:
        leg = FakeLeg(30000 + 2 * len(self.made))
        self.made.append(leg)
        return leg

    @property
    def held(self) -> int:
        return sum(not leg.closed for leg in self.made)


def manager(loop: FakeLoop, legs: Legs, **kwargs: Any) -> CallManager:
    return CallManager(
        loop=loop,  # type: ignore[arg-type]
        local=LocalAddress("192.0.2.10", 5060),
        media_factory=legs,  # type: ignore[arg-type]
        call_config=CallConfig(),
        **({"max_calls": 100} | kwargs),
    )


def test_a_failure_after_trying_frees_the_leg_and_answers_500() -> None:
    def publish(event: dict[str, Any]) -> None:
        raise RuntimeError("the outbox broke")

    loop, legs, wire = FakeLoop(), Legs(), Wire()
    node = manager(loop, legs, publish=publish)
    node.endpoint.receive(invite(), wire)
    assert wire.statuses() == [100, 500]
    assert legs.held == 0 and len(legs.made) == 1
    assert node.active_calls == 0
    assert node.endpoint.stats.handler_errors == 1
    # The transaction has its final response: Timer H (64 x T1) ends it.
    assert node.endpoint.transaction_count == 1
    loop.run_until(33.0)
    assert node.endpoint.transaction_count == 0


def test_a_retransmission_of_the_failed_invite_gets_the_same_500() -> None:
    def publish(event: dict[str, Any]) -> None:
        raise RuntimeError("the outbox broke")

    loop, legs, wire = FakeLoop(), Legs(), Wire()
    node = manager(loop, legs, publish=publish)
    node.endpoint.receive(invite(), wire)
    node.endpoint.receive(invite(), wire)
    assert wire.statuses()[-1] == 500
    assert len(legs.made) == 1  # no second leg for the retransmission


def test_twenty_bad_invites_leave_no_leg_and_no_transaction(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", readers=["test"])
    loop, legs, wire = FakeLoop(), Legs(), Wire()
    node = manager(loop, legs, publish=spool.append)
    node.recordings_dir, node.record_all = str(tmp_path / "rec"), True
    kinds = [
        b"X-Account: caf\xe9\xff\r\n",  # not UTF-8 in an X- header
        b"X-Note: \xed\xa0\x80\r\n",  # an encoded surrogate
    ]
    # The actor starts (its task is never run: the fake loop has none to run).
    node.loop.create_task = lambda coro, name=None: _Never(coro)  # type: ignore[attr-defined]
    for i in range(20):
        node.endpoint.receive(invite(b"bad-%d@x" % i, kinds[i % 2], b"%d" % i), wire)
    events = [event for _, event in spool.reader("test").read()]
    spool.close()
    assert len(events) == 20
    assert events[0]["sip_headers"]["X-Account"] == "caf\ufffd\ufffd"
    assert node.endpoint.stats.handler_errors == 0


class _Never:
    """A task that never runs: enough for the manager to supervise it."""

    def __init__(self, coro: Any) -> None:
        coro.close()

    def add_done_callback(self, callback: Any) -> None:
        pass


@pytest.mark.parametrize(
    "call_id",
    [b"", b"   ", b"two words@x", b"caf\xe9@x", b"\xff\xfe", b"x" * 300],
    ids=["empty", "blank", "space", "latin1", "binary", "too-long"],
)
def test_a_malformed_call_id_is_a_400_before_any_call_work(call_id: bytes) -> None:
    loop, legs, wire = FakeLoop(), Legs(), Wire()
    node = manager(loop, legs)
    node.endpoint.receive(invite(call_id), wire)
    assert wire.statuses() == [400]
    assert legs.made == []
    assert node.endpoint.transaction_count == 0
    assert node.endpoint.stats.handler_errors == 0


def test_validate_request_names_the_call_id() -> None:
    message = parse_message(invite(b""))
    assert isinstance(message, Request)
    with pytest.raises(ParseError, match="Call-ID"):
        validate_request(message)


@dataclass
class Failing:
    error: Exception
    seen: list[str] = field(default_factory=list)

    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        self.seen.append(request.method)
        raise self.error

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        raise AssertionError("no CANCEL here")


@pytest.mark.parametrize(
    ("error", "status"),
    [(RuntimeError("bug"), 500), (UriError("garbled"), 400), (ParseError("bad", 488), 488)],
)
def test_the_endpoint_answers_what_its_handler_failed_on(error: Exception, status: int) -> None:
    loop, wire = FakeLoop(), Wire()
    endpoint = SipEndpoint(Failing(error), loop=loop)  # type: ignore[arg-type]
    endpoint.receive(invite(), wire)
    assert wire.statuses() == [status]
    loop.run_until(33.0)
    assert endpoint.transaction_count == 0


def test_clean_text_keeps_good_text_and_replaces_lone_surrogates() -> None:
    assert clean_text("plain") == "plain"
    assert clean_text("café") == "café"
    assert clean_text({"k\udcff": ["a\udcffb", 3]}) == {"k\ufffd": ["a\ufffdb", 3]}
    assert clean_text("\ud800") == "?"


def test_a_recording_name_for_any_call_id() -> None:
    path = recording_path("/rec", "a\udcff/../b")
    assert "/../" not in path and path.endswith(".wav")


@dataclass
class BrokenWire(Wire):
    """A connection that died under the call: every send raises."""

    error: Exception = field(default_factory=lambda: RuntimeError("handler is closed"))

    def send(self, data: bytes) -> None:
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("closed"), ConnectionResetError("reset")])
def test_a_dead_connection_does_not_keep_the_transaction(error: Exception) -> None:
    def publish(event: dict[str, Any]) -> None:
        raise RuntimeError("and the outbox broke")

    loop, legs = FakeLoop(), Legs()
    node = manager(loop, legs, publish=publish)
    node.endpoint.receive(invite(), BrokenWire(reliable=True, transport="TCP", error=error))
    assert legs.held == 0
    loop.run_until(40.0)
    assert node.endpoint.transaction_count == 0


async def test_an_outbound_target_is_checked_again_when_the_call_connects() -> None:
    """A trunk host (or dialed name) accepted earlier may resolve somewhere else by the
    time a call goes out: the manager resolves and checks it at connect."""
    import asyncio

    from actors.outbound import DialTarget
    from switch.guard.targets import TargetPolicy

    loop = asyncio.get_running_loop()
    flows: list[tuple[str, int]] = []
    node = CallManager(
        loop=loop, local=LocalAddress("192.0.2.10", 5060), media_factory=Legs(),  # type: ignore[arg-type]
        call_config=CallConfig(), max_calls=10, targets=TargetPolicy.from_setting(""),
    )  # fmt: skip
    node.flow_to = lambda peer: flows.append(peer) or Wire(remote=peer)  # type: ignore[func-returns-value]
    for host in ("localhost", "127.0.0.1", "169.254.169.254"):
        with pytest.raises(OSError, match="target refused"):
            await node._connect(DialTarget("carrier", host, 5060, f"sip:1@{host}"))
    assert flows == []
    await node._connect(DialTarget("carrier", "192.0.2.20", 5060, "sip:1@192.0.2.20"))
    assert flows == [("192.0.2.20", 5060)]
