"""RFC 4475 and RFC 5118 torture messages, sent over real sockets to a running node.

Each message is handled as its RFC prescribes (INDEX.tsv beside the messages):
valid requests are processed, invalid ones answered with 400 or the code the
index names, responses dropped; and the node keeps serving throughout. The node
rings for a long time (``ring_ms``) so valid INVITEs are CANCELed, never answered:
no RTP is ever sent towards the documentation addresses in their SDP.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.node import NodeOptions, NodeProcess
from sip.message import Request, Response
from sip.parser import StreamFramer, parse_message

pytestmark = pytest.mark.e2e


def _shared() -> Path:
    env = os.environ.get("VOXSWITCH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


RFC4475 = _shared() / "conformance" / "rfc4475"
RFC5118 = _shared() / "conformance" / "rfc5118" / "wire"

# What the node answers each request with. "ring" = 100/180 then CANCEL → 487.
EXPECTED: dict[str, int | str | None] = {
    # RFC 4475 §3.1.1 valid
    "wsinv.dat": 481,  # parses; its To tag names a dialog we do not have (§12.2.2)
    "intmeth.dat": 501,  # unknown method
    "esc01.dat": "ring",
    "escnull.dat": 405,  # REGISTER: not a registrar
    "esc02.dat": 501,  # RE%47IST%45R is a different, unknown method
    "lwsdisp.dat": 200,
    "longreq.dat": "ring",
    "dblreq.dat": 405,  # the REGISTER; the trailing INVITE is ignored
    "semiuri.dat": 200,
    "transports.dat": 200,
    "mpart01.dat": 405,  # MESSAGE
    "unreason.dat": None,  # responses: dropped
    "noreason.dat": None,
    # §3.1.2 invalid
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": None,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": "ring",  # the Date does not matter to us: tolerated
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 501,
    "bigcode.dat": None,
    # §3.2-3.4 semantic and backwards compatibility
    "badbranch.dat": 200,
    "insuf.dat": 400,
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": 405,
    "bext01.dat": 420,
    "invut.dat": 415,
    "regaut01.dat": 405,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": None,
    "zeromf.dat": 200,
    "cparam01.dat": 405,
    "cparam02.dat": 405,
    "regescrt.dat": 405,
    "sdp01.dat": 406,  # Accept rules out application/sdp
    "inv2543.dat": "ring",
    # RFC 5118
    "ipv6-good.dat": 405,
    "ipv6-bad.dat": 400,
    "port-ambiguous.dat": 405,
    "port-unambiguous.dat": 405,
    "via-received-param-with-delim.dat": 481,  # BYE outside a dialog
    "via-received-param-no-delim.dat": 200,
    "ipv6-in-sdp.dat": 488,  # parses, SDP too; G.726 only: no codec we support
    "mult-ip-in-header.dat": 481,
    "mult-ip-in-sdp.dat": "ring",
    "ipv4-mapped-ipv6.dat": 488,  # likewise G.726 only
    "ipv6-bug-abnf-3-colons.dat": 200,
    "ipv6-correct-abnf-2-colons.dat": 200,
}


def _files() -> list[Path]:
    return sorted(RFC4475.glob("*.dat")) + sorted(RFC5118.glob("*.dat"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(
        tmp_path_factory.mktemp("conformance"),
        NodeOptions(ring_ms=60_000, media_timeout_s=0, rtp_port_count=200),
    )
    proc.start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.stderr_path.read_text(errors="replace")


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def _collect(sock: socket.socket, until_final: bool, wait_s: float) -> list[Response]:
    """Read responses until a final one arrives (or ``wait_s`` passes)."""
    out: list[Response] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            if not until_final:
                break
            continue
        message = parse_message(data)
        if isinstance(message, Response):
            out.append(message)
            if until_final and message.status >= 200:
                break
    return out


def _cancel_for(invite: Request) -> bytes:
    """CANCEL per RFC 3261 §9.1, written out by hand (independent of our own UAC)."""
    lines = [f"CANCEL {invite.uri} SIP/2.0"]
    lines.append(f"Via: {invite.headers.values('via')[0].strip()}")
    for name in ("from", "to", "call-id"):
        lines.append(f"{name.title()}: {invite.headers.get(name)}")
    lines += [f"CSeq: {invite.cseq.number} CANCEL", "Max-Forwards: 70", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _ack_for(invite: Request, finals: list[Response]) -> bytes:
    """The ACK for the 487 (§17.1.1.3): same branch, the To of the response."""
    final = next(r for r in finals if r.cseq.method == "INVITE" and r.status == 487)
    lines = [f"ACK {invite.uri} SIP/2.0"]
    lines.append(f"Via: {invite.headers.values('via')[0].strip()}")
    lines.append(f"From: {invite.headers.get('from')}")
    lines.append(f"To: {final.headers.get('to')}")
    lines.append(f"Call-ID: {invite.headers.get('call-id')}")
    lines += [f"CSeq: {invite.cseq.number} ACK", "Max-Forwards: 70", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _options(node: NodeProcess, sock: socket.socket) -> int:
    branch = f"z9hG4bK-ping-{time.monotonic_ns()}"
    port = sock.getsockname()[1]
    msg = (
        f"OPTIONS sip:ping@{node.sip_address} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        f"From: <sip:tester@127.0.0.1>;tag=t1\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: ping-{branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    sock.sendto(msg, ("127.0.0.1", node.sip_port))
    # Only the answer to this OPTIONS counts: a late retransmission of an earlier final
    # response (a 487 that crossed our ACK) may share the socket and come first.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for response in _collect(sock, until_final=True, wait_s=deadline - time.monotonic()):
            if response.call_id == f"ping-{branch}" and response.status >= 200:
                return response.status
    return 0


def test_index_covers_every_message() -> None:
    names = {p.name for p in _files()}
    assert names, f"no torture messages found under {_shared()}"
    assert names == set(EXPECTED)


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_torture_message_over_udp(node: NodeProcess, path: Path) -> None:
    expected = EXPECTED[path.name]
    data = path.read_bytes()
    with _udp() as sock:
        sock.sendto(data, ("127.0.0.1", node.sip_port))
        if expected is None:
            assert _collect(sock, until_final=False, wait_s=0.7) == []
        elif expected == "ring":
            responses = _collect(sock, until_final=False, wait_s=1.5)
            statuses = [r.status for r in responses]
            assert 180 in statuses and all(s < 200 for s in statuses), statuses
            invite = parse_message(data)
            assert isinstance(invite, Request)
            sock.sendto(_cancel_for(invite), ("127.0.0.1", node.sip_port))
            finals = _collect(sock, until_final=False, wait_s=1.5)
            by_method = {(r.cseq.method, r.status) for r in finals}
            assert ("CANCEL", 200) in by_method and ("INVITE", 487) in by_method, by_method
            sock.sendto(_ack_for(invite, finals), ("127.0.0.1", node.sip_port))
        else:
            responses = _collect(sock, until_final=True, wait_s=3.0)
            assert responses, "no response"
            final = responses[-1]
            assert final.status == expected, (final.status, final.reason)
            if expected == 420:
                assert "nothingSupportsThis" in (final.headers.get("unsupported") or "")
            if expected == 488:
                assert (final.headers.get("warning") or "").startswith("305 ")
            if expected in (405, 501):
                assert final.headers.get("allow")
        # Whatever it was sent, the node keeps serving.
        assert _options(node, sock) == 200


def test_torture_over_tcp(node: NodeProcess) -> None:
    """Framing errors over TCP close the connection after the 400; valid ones pass."""
    with socket.create_connection(("127.0.0.1", node.sip_port), timeout=3) as conn:
        conn.sendall((RFC4475 / "zeromf.dat").read_bytes())
        framer = StreamFramer()
        messages: list[object] = []
        while not messages:
            messages = list(framer.feed(conn.recv(65535)))
        assert isinstance(messages[0], Response) and messages[0].status == 200
    with socket.create_connection(("127.0.0.1", node.sip_port), timeout=3) as conn:
        conn.sendall((RFC4475 / "mcl01.dat").read_bytes())
        received = b""
        while chunk := conn.recv(65535):  # the node closes the connection after the 400
            received += chunk
        assert received.startswith(b"SIP/2.0 400 ")
    with socket.create_connection(("127.0.0.1", node.sip_port), timeout=5) as conn:
        conn.sendall(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Long: " + b"a" * 40000)
        received = b""
        while chunk := conn.recv(65535):  # header cap: answered and closed, not buffered
            received += chunk
        assert received == b"" or received.startswith(b"SIP/2.0 ")
    with _udp() as sock:
        assert _options(node, sock) == 200
