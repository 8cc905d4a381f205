"""A SIP and RTP fuzzer against a live node: mutations of the RFC 4475 torture messages
(and of plain, valid requests), over UDP and TCP, plus malformed RTP/RTCP to a live
call's media ports. After every batch the node must still answer OPTIONS; at the end
it must hold no call and have written no traceback.

    python -m loadtest.fuzz [--minutes 10] [--batch 200] [--seed 1]

The mutation functions are shared with tests/e2e/test_fuzz.py (driven there by
hypothesis, a few hundred cases per run); this runner is the long run, recorded in
loadtest/RESULTS.md. Everything is sent to a node on loopback that it starts itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from loadtest.node import NodeOptions, NodeProcess

Mutation = Callable[[bytes, random.Random], bytes]


def _shared() -> Path:
    env = os.environ.get("VOXSWITCH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def torture_seeds() -> list[bytes]:
    """The RFC 4475 and RFC 5118 messages, byte-exact."""
    base = _shared() / "conformance"
    return [p.read_bytes() for p in sorted(base.glob("rfc4475/*.dat"))] + [
        p.read_bytes() for p in sorted(base.glob("rfc5118/wire/*.dat"))
    ]


def valid_request(method: str, host: str, port: int, local_port: int, sdp: str = "") -> bytes:
    branch = f"z9hG4bK-fz-{uuid.uuid4().hex[:16]}"
    content = "Content-Type: application/sdp\r\n" if sdp else ""
    return (
        f"{method} sip:agent@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch};rport\r\n"
        f"From: <sip:fuzz@127.0.0.1>;tag=fz{local_port}\r\nTo: <sip:agent@{host}>\r\n"
        f"Call-ID: fz-{uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:fuzz@127.0.0.1:{local_port}>\r\nMax-Forwards: 70\r\n"
        f"{content}Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


SDP = (
    "v=0\r\no=f 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


# ---- mutations ---------------------------------------------------------------------


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def insert_junk(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    junk = rng.choice([b"\r\n", b"\x00", b";", b":", b",", b"<", b">", b'"', b" ", b"%",
                       bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))])  # fmt: skip
    return data[:at] + junk * rng.randint(1, 4) + data[at:]


def huge_header(data: bytes, rng: random.Random) -> bytes:
    size = rng.choice([1000, 8000, 40_000, 70_000])
    line = b"X-Huge: " + b"a" * size + b"\r\n"
    head, sep, body = data.partition(b"\r\n")
    return head + sep + line + body


def repeat_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\r\n")
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    return b"\r\n".join(lines[:i] + [lines[i]] * rng.choice([2, 10, 300]) + lines[i:])


def bad_content_length(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice([b"-1", b"0", b"99999999999", b"abc", b"", b"4294967296", b"7"])
    head, sep, body = data.partition(b"\r\n\r\n")
    named = (b"content-length", b"l:")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(named)]
    return b"\r\n".join([*lines, b"Content-Length: " + value]) + sep + body


def line_ends(data: bytes, rng: random.Random) -> bytes:
    return rng.choice([data.replace(b"\r\n", b"\n"), data.replace(b"\r\n", b"\r"),
                       data.replace(b"\r\n", b""), data.replace(b"\r\n", b"\r\n ")])  # fmt: skip


def bad_sdp(data: bytes, rng: random.Random) -> bytes:
    body = rng.choice([
        b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
        b"v=0\r\no=x\r\nc=IN IP4 999.1.1.1\r\nm=audio 1 RTP/AVP\r\n",
        b"v=1\r\nm=video 5000 RTP/AVP 96\r\n",
        b"m=audio -5 RTP/AVP 0 0 0 0\r\na=rtpmap:0 \r\n",
        bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))),
    ])  # fmt: skip
    head = data.partition(b"\r\n\r\n")[0]
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length")]
    return b"\r\n".join([*lines, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body


def garbage(data: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))


MUTATIONS: tuple[Mutation, ...] = (
    truncate, flip_bytes, insert_junk, huge_header, repeat_line, bad_content_length,
    line_ends, bad_sdp, garbage,
)  # fmt: skip


# What a hostile caller puts where call setup reads it (records, events, file names,
# logs, the agent's routing): not UTF-8, controls, path tricks, huge, injection-shaped.
HOSTILE_VALUES: tuple[bytes, ...] = (
    b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80", b"\xc3\x28", b"\x00", b"\x1b[31m", b"%FF%00%C0",
    "\U0001f4a5".encode(), b"../../etc/passwd", b"'; DROP TABLE calls;--", b"${jndi:x}",
    b"a" * 600, b"<>\\\"", b"",
)  # fmt: skip
HOSTILE_SPOTS = ("x-header", "display", "from-user", "to-user", "ruri-user", "call-id",
                 "user-agent", "subject", "contact-user", "many-x", "via-branch")  # fmt: skip


def hostile_invite(host: str, port: int, local_port: int, rng: random.Random) -> bytes:
    """A well-framed INVITE with an offer and something hostile in one field that call
    setup reads (the message may still be malformed there: then it must get a 400)."""
    value = rng.choice(HOSTILE_VALUES)
    spot = rng.choice(HOSTILE_SPOTS)
    data = valid_request("INVITE", host, port, local_port, SDP)
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if spot == "x-header":
        lines.insert(2, b"X-Account: " + value)
    elif spot == "many-x":
        lines[2:2] = [b"X-H%d: %s" % (i, value) for i in range(rng.choice([30, 200]))]
    elif spot == "user-agent":
        lines.insert(2, b"User-Agent: " + value)
    elif spot == "subject":
        lines.insert(2, b"Subject: " + value)
    else:
        name, old = {
            "display": (b"From:", b"From: "), "from-user": (b"From:", b"fuzz@"),
            "to-user": (b"To:", b"agent@"), "ruri-user": (b"INVITE", b"agent@"),
            "call-id": (b"Call-ID:", b"Call-ID: "), "contact-user": (b"Contact:", b"fuzz@"),
            "via-branch": (b"Via:", b"branch="),
        }[spot]  # fmt: skip
        for i, line in enumerate(lines):
            if line.startswith(name):
                new = {b"From: ": b'From: "' + value + b'" ', b"Call-ID: ": b"Call-ID: " + value}
                lines[i] = line.replace(
                    old,
                    new.get(
                        old,
                        old.replace(b"@", b"") + value + b"@"
                        if old.endswith(b"@")
                        else old + value,
                    ),
                    1,
                )
                break
    return b"\r\n".join(lines) + sep + body


def mutate(seed: bytes, rng: random.Random) -> bytes:
    data = seed
    for _ in range(rng.choice([1, 1, 2, 3])):
        data = rng.choice(MUTATIONS)(data, rng)
    return data


def bad_media_packet(rng: random.Random) -> bytes:
    """An RTP- or RTCP-looking packet that is wrong in some way (or random bytes)."""
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 1500)))
    if kind == 1:  # RTP with more CSRCs than bytes
        return struct.pack("!BBHII", 0x8F, 0, 1, 160, 1234) + b"\x00" * rng.randint(0, 20)
    if kind == 2:  # padding bit, padding longer than the packet
        return struct.pack("!BBHII", 0xA0, 0, 2, 320, 1234) + b"\xff" * rng.randint(1, 10)
    if kind == 3:  # extension header claiming a huge length
        return struct.pack("!BBHIIHH", 0x90, 0, 3, 480, 1234, 0xBEDE, 0xFFFF)
    if kind == 4:  # telephone-event payload type with a short body
        return struct.pack("!BBHII", 0x80, 101, 4, 640, 1234) + b"\x01"
    # RTCP: a compound with a length field past the end
    return struct.pack("!BBHI", 0x81, 200, 0xFFFF, 1234) + b"\x00" * rng.randint(0, 30)


# ---- driving a node ----------------------------------------------------------------


class Fuzzer:
    def __init__(self, node: NodeProcess, rng: random.Random, source: str = "127.0.0.1") -> None:
        self.node = node
        self.rng = rng
        self.source = source  # a loopback address of the sender's (bans are per address)
        self.seeds = torture_seeds()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((source, 0))
        self.udp.settimeout(0.05)
        self.port = self.udp.getsockname()[1]
        self.sent = 0

    def close(self) -> None:
        self.udp.close()

    def case(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.15:  # well framed, hostile where call setup reads: must not leak
            return hostile_invite("127.0.0.1", self.node.sip_port, self.port, self.rng)
        if roll < 0.4:
            method = self.rng.choice(["INVITE", "OPTIONS", "BYE", "CANCEL", "REGISTER", "ACK"])
            seed = valid_request(method, "127.0.0.1", self.node.sip_port, self.port,
                                 SDP if method == "INVITE" else "")  # fmt: skip
        else:
            seed = self.rng.choice(self.seeds)
        return mutate(seed, self.rng)

    def send_udp(self, count: int) -> None:
        target = ("127.0.0.1", self.node.sip_port)
        for _ in range(count):
            data = self.case()[:65000]
            try:
                self.udp.sendto(data, target)
            except OSError:
                continue
            self.sent += 1
            self._drain()

    def send_tcp(self, count: int) -> None:
        """Mutated messages back to back on one connection (framing by Content-Length)."""
        try:
            conn = socket.create_connection(("127.0.0.1", self.node.sip_port), timeout=2,
                                            source_address=(self.source, 0))  # fmt: skip
        except OSError:
            return
        with conn:
            conn.settimeout(0.01)
            for _ in range(count):
                try:
                    conn.sendall(self.case())
                except OSError:
                    return  # the node closed it (a framing error): fine, and expected
                self.sent += 1
                with contextlib.suppress(OSError):
                    conn.recv(65535)

    def send_media(self, port: int, count: int) -> None:
        for _ in range(count):
            packet = bad_media_packet(self.rng)
            with_rtcp = port + (1 if self.rng.random() < 0.3 else 0)
            self.udp.sendto(packet, ("127.0.0.1", with_rtcp))

    def options_ok(self, attempts: int = 5) -> bool:
        """The node still answers a plain OPTIONS with 200."""
        for _ in range(attempts):
            request = valid_request("OPTIONS", "127.0.0.1", self.node.sip_port, self.port)
            call_id = request.split(b"Call-ID: ")[1].split(b"\r\n")[0]
            self.udp.sendto(request, ("127.0.0.1", self.node.sip_port))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    data, _ = self.udp.recvfrom(65535)
                except TimeoutError:
                    continue
                if call_id in data and data.startswith(b"SIP/2.0 200"):
                    return True
        return False

    def _drain(self) -> None:
        """Read what the node answered so far (not waiting: the next case goes out)."""
        self.udp.setblocking(False)
        try:
            while True:
                self.udp.recvfrom(65535)
        except OSError:
            return
        finally:
            self.udp.settimeout(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=200, help="cases between checks")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    workdir = Path(__file__).resolve().parent / "out" / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}"
    node = NodeProcess(workdir, NodeOptions(media_timeout_s=5, max_call_duration_s=20,
                                            log_level="warning",
                                            extra_args=["--agent", "none"]))  # fmt: skip
    node.start()
    rng = random.Random(args.seed)
    fuzzer = Fuzzer(node, rng)
    deadline = time.monotonic() + args.minutes * 60
    batches = failures = 0
    try:
        while time.monotonic() < deadline:
            fuzzer.send_udp(args.batch)
            fuzzer.send_tcp(args.batch // 4)
            media_start = node.rtp_ports[0] & ~1
            fuzzer.send_media(media_start + 2 * rng.randrange(8), args.batch // 4)
            batches += 1
            if not node.alive() or not fuzzer.options_ok():
                failures += 1
                print(f"batch {batches}: the node stopped answering OPTIONS", flush=True)
                break
            if batches % 10 == 0:
                print(f"{batches} batches, {fuzzer.sent} messages, node up", flush=True)
        # Calls the fuzz started end by themselves: media timeout once answered, Timer H
        # (32 s) for a 200 never ACKed.
        calls_gone_by = time.monotonic() + 60
        while (health := node.health())["active_calls"] and time.monotonic() < calls_gone_by:
            time.sleep(1)
        stuck = health["active_calls"]
        sip = health["sip"]
        parse_errors = sip["parse_errors"] if isinstance(sip, dict) else "?"
    finally:
        fuzzer.close()
        node.stop()
    tracebacks = node.tracebacks()
    print(
        f"{fuzzer.sent} messages in {batches} batches; node failures {failures}; "
        f"calls left {stuck}; tracebacks {len(tracebacks)}; "
        f"parse errors {parse_errors}; logs in {workdir}"
    )
    for tb in tracebacks[:3]:
        print(tb)
    return 0 if not failures and not tracebacks and not stuck else 1


if __name__ == "__main__":
    sys.exit(main())
