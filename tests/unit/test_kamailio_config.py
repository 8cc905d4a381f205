"""deploy/kamailio/kamailio.cfg: Kamailio itself accepts it (``kamailio -c``), with
the settings the cluster test and a deployment pass; and, run for real in front of a
fake node, it hands the node the caller's address in X-Source-IP (never the
caller's own) and names no product in what it answers itself."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

from loadtest.kamailio import Kamailio, dispatcher_list
from loadtest.ports import LOOPBACK
from sip.message import Request, Response, make_response
from sip.parser import parse_message


def test_kamailio_accepts_the_balancer_config(tmp_path: Path) -> None:
    balancer = Kamailio(tmp_path, [("127.0.0.1", 5070, "node-a"), ("127.0.0.1", 5071, "node-b")])
    output = balancer.check()
    assert f"udp: 127.0.0.1 [127.0.0.1]:{balancer.port}" in output


def test_the_dispatcher_list_names_each_node_once_with_its_call_load_id() -> None:
    text = dispatcher_list([("10.0.0.1", 5060, "a"), ("10.0.0.2", 5062, "b")])
    assert text == "1 sip:10.0.0.1:5060 0 0 duid=a\n1 sip:10.0.0.2:5062 0 0 duid=b\n"


class FakeNode:
    """A UDP socket in a node's place: answers Kamailio's OPTIONS probes 200, keeps
    every other request it is sent and refuses it 403 (in a thread, until closed)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.requests: list[Request] = []
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(data)
            if not isinstance(message, Request):
                continue
            if message.method == "OPTIONS":
                self.sock.sendto(bytes(make_response(message, 200)), peer)
            elif message.method != "ACK":
                self.requests.append(message)
                self.sock.sendto(bytes(make_response(message, 403, to_tag="n")), peer)

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def _invite(lb: Kamailio, sock: socket.socket, extra: str) -> bytes:
    host, port = sock.getsockname()
    return (
        f"INVITE sip:+15551230000@{lb.sip_address} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{uuid.uuid4().hex};rport\r\n"
        f"From: <sip:caller@{host}>;tag=c1\r\nTo: <sip:+15551230000@{lb.sip_address}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:caller@{host}:{port}>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def test_the_balancer_tells_the_node_who_called_and_nothing_about_itself(tmp_path: Path) -> None:
    node = FakeNode()
    lb = Kamailio(tmp_path, [(LOOPBACK, node.port, "node-a")])
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        lb.start()
        caller.bind(("127.0.0.3", 0))  # not the balancer's own address
        caller.settimeout(3.0)
        # A caller that writes its own X-Source-IP (to blame someone else) and an
        # X-Source-IP-like header that is not one.
        spoof = "X-Source-IP: 198.51.100.7\r\nX-Source-IPs: 198.51.100.8\r\n"
        caller.sendto(_invite(lb, caller, spoof), (lb.host, lb.port))
        answers = [parse_message(caller.recv(65535)) for _ in range(2)]  # 100, 403
        assert [a.status for a in answers if isinstance(a, Response)][-1] == 403
        [relayed] = [r for r in node.requests if r.method == "INVITE"]
        assert relayed.headers.get_all("x-source-ip") == ["127.0.0.3"]
        assert relayed.headers.get_all("x-source-ips") == ["198.51.100.8"]
        # What Kamailio answers itself (a REGISTER: 405) names no product.
        register = _invite(lb, caller, "").replace(b"INVITE", b"REGISTER")
        caller.sendto(register, (lb.host, lb.port))
        refused = parse_message(caller.recv(65535))
        assert isinstance(refused, Response) and refused.status == 405
        head = bytes(refused).split(b"\r\n\r\n")[0].lower()
        assert b"server:" not in head and b"kamailio" not in head and b"voxswitch" not in head
    finally:
        caller.close()
        lb.stop()
        node.close()
