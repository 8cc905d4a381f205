"""The attack run: one node met as an attacker would meet it, bounded in time, on
loopback only. It records what a carrier's security review asks for: cases tried,
crashes, hangs, tracebacks, leaked RTP legs / transactions / file descriptors, 5xx
answers, and the node's CPU time.

    python -m loadtest.hardening [--fuzz-s 60] [--seed 1] [--out DIR]

The node trusts no source (``--trusted-sources ""``: loopback is not trusted), records
every call and posts webhooks, as in the review. Each phase comes from its own
loopback addresses, so that a ban of one does not silence the next:

- scanners: sipvicious ``svmap``, ``svwar -m INVITE`` (extensions 100-399) and
  ``svcrack``, then the same sweep with an ordinary phone's User-Agent;
- sip-fuzz: mutated RFC 4475 messages, mutated valid requests and hostile INVITEs
  (loadtest/fuzz.py) over UDP and TCP, a new source address for each batch;
- sip-conns: 3,000 idle and 200 slowloris TCP connections to the SIP port from 60
  addresses;
- api-conns: 2,000 idle and 100 slowloris connections to the API from 40 addresses;
- api-abuse: non-finite numbers, 20 MB chunked bodies without a key, SSRF webhook
  URLs and trunk hosts, a catastrophic route pattern, a Call-ID outside Latin-1.

Throughout, a prober from 127.0.0.9 checks that OPTIONS and /health are answered
within a second (a miss is a hang). At the end, after the SIP timers (Timer H/J,
32 s), the node must hold no call, RTP leg or transaction and as many file
descriptors as before the attack.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loadtest.api_flood import (
    connect,
    head,
    node_cpu_s,
    node_fds,
    push_chunked,
    read_answer,
    watch_closures,
)
from loadtest.fuzz import SDP, Fuzzer, valid_request
from loadtest.node import NodeOptions, NodeProcess

ADMIN = "hardening-admin-key-0123456789"
PROBER = "127.0.0.9"  # not 127.0.0.1: svwar ignores -b for INVITEs (sends from there)
# Timer H/J/F (64 x T1 = 32 s), chained: a call's 2xx unACKed, then its BYE unanswered.
SETTLE_S = 80.0


@dataclass
class Tally:
    """What the run saw; ``report()`` is the JSON written and printed."""

    cases: Counter[str] = field(default_factory=Counter)
    http_5xx: Counter[str] = field(default_factory=Counter)
    probe_misses: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


# ---- a receiver for the node's webhooks ----------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, 1 << 20))
        _Hook.received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


HOOK_HOST = "127.0.0.77"  # the one loopback address the node may post to


def webhook_receiver() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer((HOOK_HOST, 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{HOOK_HOST}:{server.server_address[1]}/hook"


# ---- the prober: does the node still answer? -----------------------------------------


class Prober(threading.Thread):
    """OPTIONS over UDP and GET /health every half second from the prober's address."""

    def __init__(self, node: NodeProcess, tally: Tally) -> None:
        super().__init__(daemon=True)
        self.node, self.tally = node, tally
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((PROBER, 0))
        self.sock.settimeout(1.0)
        self.slowest_s = 0.0
        self.probes = 0
        self.phase = ""

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.probes += 1
            start = time.monotonic()
            if not self._options():
                self.tally.probe_misses.append(f"OPTIONS at {time.strftime('%T')} ({self.phase})")
            if (health := self._health()) != "200":
                self.tally.probe_misses.append(
                    f"/health {health} at {time.strftime('%T')} ({self.phase})")
            self.slowest_s = max(self.slowest_s, time.monotonic() - start)
        self.sock.close()

    def _options(self) -> bool:
        port = self.sock.getsockname()[1]
        request = valid_request("OPTIONS", "127.0.0.1", self.node.sip_port, port)
        call_id = request.split(b"Call-ID: ")[1].split(b"\r\n")[0]
        self.sock.sendto(request, ("127.0.0.1", self.node.sip_port))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return False
            if call_id in data:
                return data.startswith(b"SIP/2.0 200")
        return False

    def _health(self) -> str:
        conn = http.client.HTTPConnection(self.node.host, self.node.api_port, timeout=1.0,
                                          source_address=(PROBER, 0))  # fmt: skip
        try:
            conn.request("GET", "/health")
            return str(conn.getresponse().status)
        except OSError as exc:
            return type(exc).__name__
        finally:
            conn.close()


# ---- the phases ------------------------------------------------------------------------


def scanners(node: NodeProcess, tally: Tally) -> None:
    """The real scanner, then its sweep with a phone's User-Agent (behaviour bans)."""
    port = str(node.sip_port)
    runs = {
        "svmap": ["svmap", "-p", port, "-b", "127.0.10.1", "127.0.0.1"],
        "svwar-invite": ["svwar", "-m", "INVITE", "-e100-399", "-p", port,
                         "-b", "127.0.10.2", "127.0.0.1"],
        "svcrack": ["svcrack", "-u", "100", "-r", "1-300", "-p", port,
                    "-b", "127.0.10.3", "127.0.0.1"],
    }  # fmt: skip
    found = {}
    for name, (tool, *args) in runs.items():
        script = Path(sys.executable).with_name(f"sipvicious_{tool}")
        done = subprocess.run([str(script), *args], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        found[name] = "found nothing" in (done.stdout + done.stderr)
        tally.cases[name] += 1
    tally.notes["sipvicious_found_nothing"] = found
    tally.notes["sweep_with_a_phone_ua"] = sweep(node, "127.0.10.4", 300)
    tally.cases["sweep"] += 300


def sweep(node: NodeProcess, source: str, extensions: int) -> dict[str, int]:
    """INVITEs (with an offer) to extensions 100.. with an ordinary softphone's
    User-Agent: how many were answered before the source was banned (the node has no
    trunk, route or digest here: any number reaches the default agent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(0.05)
    local = sock.getsockname()[1]
    statuses: Counter[int] = Counter()
    answered: set[bytes] = set()  # calls, not 200s: an un-ACKed 200 is resent

    def read() -> None:
        with contextlib.suppress(TimeoutError, OSError):
            while True:
                data, _ = sock.recvfrom(65535)
                if data.startswith(b"SIP/2.0 "):
                    statuses[int(data[8:11])] += 1
                    if data.startswith(b"SIP/2.0 200"):
                        answered.add(data.split(b"Call-ID: ")[-1].split(b"\r\n")[0])

    for ext in range(100, 100 + extensions):
        invite = valid_request("INVITE", "127.0.0.1", node.sip_port, local, SDP).replace(
            b"sip:agent@", f"sip:{ext}@".encode()).replace(
            b"Max-Forwards", b"User-Agent: Zoiper rv2.10.20\r\nMax-Forwards")  # fmt: skip
        sock.sendto(invite, ("127.0.0.1", node.sip_port))
        read()
    time.sleep(1.0)
    read()
    sock.close()
    others = {f"got_{code}": n for code, n in sorted(statuses.items())}
    return {"sent": extensions, "calls_answered": len(answered), **others}


def sip_fuzz(node: NodeProcess, tally: Tally, seconds: float, seed: int) -> None:
    """Fuzz batches, each from a new 127.0.20.x address (a banned one stays banned)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < deadline:
        batch += 1
        fuzzer = Fuzzer(node, rng, source=f"127.0.{20 + batch // 250}.{1 + batch % 250}")
        try:
            fuzzer.send_udp(100)
            fuzzer.send_tcp(25)
            tally.cases["sip-fuzz"] += fuzzer.sent
        finally:
            fuzzer.close()


def connections(
    node: NodeProcess, port: int, sources: int, counts: tuple[int, int], wait_s: float,
    first_line: bytes,
) -> dict[str, Any]:  # fmt: skip
    """Idle and slowloris connections (``counts``) spread over ``sources`` loopback
    addresses (the per-source cap refuses the excess of each at once; the rest must be
    timed out)."""
    idle, slowloris = counts
    fds_before = node_fds(node)
    socks: list[socket.socket] = []
    refused = 0
    for i in range(idle + slowloris):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        sock.bind((f"127.0.{40 + port % 7}.{1 + i % sources}", 0))
        try:
            sock.connect((node.host, port))
        except OSError:
            refused += 1
            sock.close()
            continue
        socks.append(sock)
    lorises = socks[-slowloris:] if slowloris else []
    for sock in lorises:
        with contextlib.suppress(OSError):
            sock.send(first_line)
    fds_peak = node_fds(node)
    closures = watch_closures(socks, wait_s, trickle=lorises)
    for sock in socks:
        sock.close()
    closed = sorted(c for c in closures if c is not None)
    time.sleep(0.5)
    return {
        "tried": idle + slowloris,
        "connect_failed": refused,
        "closed_by_node": len(closed),
        "still_open_at_end": sum(c is None for c in closures),
        "closed_at_once (<0.1 s)": sum(c < 0.1 for c in closed),
        "last_close_s": round(closed[-1], 1) if closed else None,
        "node_fds_before": fds_before,
        "node_fds_peak": fds_peak,
        "node_fds_after": node_fds(node),
    }


def api_abuse(node: NodeProcess, tally: Tally) -> None:
    """Requests that once answered 500, read megabytes unkeyed, or reached inside."""

    def call(method: str, path: str, body: Any = None, raw: str | None = None,
             key: str | None = ADMIN) -> int:  # fmt: skip
        sock = connect(node, source="127.0.50.1")
        try:
            data = raw if raw is not None else json.dumps(body) if body is not None else ""
            sock.sendall(head(method, path, key, Content_Type="application/json",
                              Content_Length=str(len(data.encode()))) + data.encode())  # fmt: skip
            answer = read_answer(sock)
        finally:
            sock.close()
        status = answer.status if answer else 0
        tally.cases["api-abuse"] += 1
        if status >= 500:
            tally.http_5xx[f"{method} {path}"] += 1
        return status

    statuses: dict[str, int] = {}
    for number in ("NaN", "Infinity", "-Infinity", "1e309"):
        raw = f'{{"to": "sip:x@127.0.0.1", "ring_timeout_s": {number}}}'
        statuses[f"ring_timeout_s {number}"] = call("POST", "/v1/calls", raw=raw)
    statuses["ban NaN"] = call("POST", "/v1/bans", raw='{"ip": "192.0.2.9", "duration_s": NaN}')
    for url in ("http://169.254.169.254/latest", "http://[::ffff:127.0.0.1]:6379/",
                "http://0x7f000001/", "http://localhost:6379/", "http://127.0.0.1:16379/",
                "http://2130706433/", "http://[::1]/"):  # fmt: skip
        statuses[f"webhook {url}"] = call(
            "POST", "/v1/calls", {"to": "sip:x@192.0.2.10", "webhook_url": url})
    statuses["trunk host metadata"] = call(
        "PUT", "/v1/trunks/evil", {"host": "169.254.169.254", "inbound_ips": []})
    statuses["trunk inbound 0.0.0.0/0"] = call(
        "PUT", "/v1/trunks/open", {"host": "192.0.2.20", "inbound_ips": ["0.0.0.0/0"]})
    statuses["route (\\d+)+#"] = call(
        "PUT", "/v1/routes/inbound/evil", {"pattern": "(\\d+)+#", "agent": "default"})
    tally.notes["40_digit_number_through_that_route_s"] = dialed_in_s(node, "1" * 40 + "#")
    call_id = f"通話-{uuid.uuid4().hex[:6]}"
    statuses["recording non-latin1"] = call("GET", f"/v1/calls/{quote(call_id)}/recording")
    for key in (None, ADMIN):
        sock = connect(node, source="127.0.50.2")
        sock.sendall(head("POST", "/v1/calls", key, Content_Type="application/json",
                          Transfer_Encoding="chunked"))  # fmt: skip
        _, answer = push_chunked(sock, 20 * 1024 * 1024)
        sock.close()
        statuses[f"20 MB chunked, key={bool(key)}"] = answer.status if answer else 0
        tally.cases["api-abuse"] += 1
    tally.notes["api_abuse_statuses"] = statuses


def dialed_in_s(node: NodeProcess, number: str) -> float | None:
    """Seconds from an INVITE to ``number`` to its first final answer (route matching
    runs on the node's loop: a backtracking pattern would stall it here)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.50.3", 0))
    sock.settimeout(5.0)
    invite = valid_request("INVITE", "127.0.0.1", node.sip_port, sock.getsockname()[1])
    start = time.monotonic()
    sock.sendto(invite.replace(b"sip:agent@", f"sip:{number}@".encode()),
                ("127.0.0.1", node.sip_port))  # fmt: skip
    try:
        while True:
            data, _ = sock.recvfrom(65535)
            if data.startswith(b"SIP/2.0 ") and int(data[8:11]) >= 200:
                return round(time.monotonic() - start, 3)
    except OSError:
        return None
    finally:
        sock.close()


# ---- the run ---------------------------------------------------------------------------


def run(fuzz_s: float, seed: int, workdir: Path) -> dict[str, Any]:
    hook_server, hook_url = webhook_receiver()
    options = NodeOptions(
        media_timeout_s=5, max_call_duration_s=20, log_level="info",
        env={"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_WEBHOOK_SECRET": "hardening-hook-secret",
             # Only the receiver's address: every other loopback target must be refused.
             "VOXSWITCH_ALLOWED_PRIVATE_TARGETS": f"{HOOK_HOST}/32"},
        extra_args=["--trusted-sources", "", "--record", "all", "--webhook-url", hook_url],
    )  # fmt: skip
    node = NodeProcess(workdir, options, name="attacked").start()
    tally = Tally()
    prober = Prober(node, tally)
    started = time.monotonic()
    try:
        fds_before, cpu_before = node_fds(node), node_cpu_s(node)
        prober.start()
        phases: dict[str, float] = {}

        def phase(name: str, work: Any) -> Any:
            start = time.monotonic()
            print(f"[hardening] {name} ...", flush=True)
            prober.phase = name
            result = work()
            phases[name] = round(time.monotonic() - start, 1)
            return result

        phase("scanners", lambda: scanners(node, tally))
        phase("sip-fuzz", lambda: sip_fuzz(node, tally, fuzz_s, seed))
        tally.notes["sip_conns"] = phase("sip-conns", lambda: connections(
            node, node.sip_port, 60, (3000, 200), 20.0, b"OPTIONS sip:x SIP/2.0\r\n"))
        tally.cases["sip-conns"] += 3200
        tally.notes["api_conns"] = phase("api-conns", lambda: connections(
            node, node.api_port, 40, (2000, 100), 15.0, b"GET /health HTTP/1.1\r\n"))
        tally.cases["api-conns"] += 2100
        phase("api-abuse", lambda: api_abuse(node, tally))
        prober.stop.set()  # its own OPTIONS are transactions for Timer J (32 s) too
        prober.join(5)
        tally.notes["settled_after_s"] = phase("settle", lambda: _settle(node))
        health = node.health()
        sip = health["sip"]
        assert isinstance(sip, dict)
        media = health["media"]
        assert isinstance(media, dict)
        codes = {int(k): v for k, v in sip["responses_by_code"].items()}
        report = {
            "cases": dict(tally.cases),
            "cases_total": sum(tally.cases.values()),
            "phases_s": phases,
            "crashed": not node.alive(),
            "hangs (probes unanswered in 1 s)": len(tally.probe_misses),
            "probes": prober.probes,
            "probe_misses": tally.probe_misses[:20],
            "slowest_probe_s": round(prober.slowest_s, 3),
            "tracebacks": len(node.tracebacks()),
            "leaked_legs": media["legs"],
            "leaked_transactions": sip["transactions"],
            "calls_left": health["active_calls"],
            "node_fds_before": fds_before,
            "node_fds_after": node_fds(node),
            "sip_500": codes.get(500, 0),
            "sip_handler_errors": sip["handler_errors"],
            "http_5xx": dict(tally.http_5xx),
            "node_cpu_s": round(node_cpu_s(node) - cpu_before, 1),
            "wall_s": round(time.monotonic() - started, 1),
            "sip_responses_by_code": codes,
            "bans": health.get("guard", {}),
            "webhooks_received": _Hook.received,
            **tally.notes,
        }
    finally:
        prober.stop.set()
        node.stop()
        hook_server.shutdown()
    return report


def _settle(node: NodeProcess) -> float:
    """Seconds until the node held no call, leg or transaction (or SETTLE_S)."""
    start = time.monotonic()
    while time.monotonic() < start + SETTLE_S:
        health = node.health()
        sip, media = health["sip"], health["media"]
        assert isinstance(sip, dict) and isinstance(media, dict)
        if not health["active_calls"] and not media["legs"] and not sip["transactions"]:
            break
        time.sleep(1.0)
    return round(time.monotonic() - start, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz-s", type=float, default=60.0, help="seconds of SIP fuzzing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).resolve().parent / "out" / f"hardening-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    report = run(args.fuzz_s, args.seed, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    bad = [name for name in ("crashed", "hangs (probes unanswered in 1 s)", "tracebacks",
                             "leaked_legs", "leaked_transactions", "calls_left", "sip_500",
                             "http_5xx") if report[name]]  # fmt: skip
    if report["node_fds_after"] > report["node_fds_before"] + 5:
        bad.append("fds")
    print("FAILED: " + ", ".join(bad) if bad else "all zero", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
