"""TLS between two of our own endpoints on loopback: the contexts, the names a
verified certificate carries, and a refused certificate saying why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sip.message import Message
from sip.parser import parse_message
from sip.transport.tcp import TcpConnection, TcpServer, certificate_names
from sip.transport.tls import client_context, server_context
from tests.certs import TestCa

OPTIONS = (
    b"OPTIONS sip:node@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK1\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:node@127.0.0.1>\r\nCall-ID: tls-1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def test_certificate_names_are_its_alt_names_and_common_name() -> None:
    cert = {
        "subject": ((("commonName", "SBC.Example"),),),
        "subjectAltName": (("DNS", "sbc.example"), ("IP Address", "192.0.2.7"), ("URI", "x")),
    }
    assert certificate_names(cert) == {"sbc.example", "192.0.2.7"}
    assert certificate_names({}) == frozenset() and certificate_names(None) == frozenset()


async def test_mutual_tls_carries_the_client_certificate_names(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    server_cert = ca.issue("server", ["127.0.0.1"])
    client_cert = ca.issue("client", ["pbx.test"])
    got: list[tuple[Message, TcpConnection]] = []
    server = TcpServer(lambda m, c: got.append((m, c)), name="TLS",
                       server_ssl=server_context(str(server_cert.cert), str(server_cert.key),
                                                 str(ca.path)))  # fmt: skip
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    client = TcpServer(lambda m, c: None, name="TLS",
                       client_ssl=client_context(str(client_cert.cert), str(client_cert.key),
                                                 str(ca.path)))  # fmt: skip
    try:
        conn = await client.connect("127.0.0.1", port)
        assert conn.transport == "TLS" and conn.peer_names == {"127.0.0.1"}
        conn.send(OPTIONS)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        message, flow = got[0]
        assert bytes(message) == bytes(parse_message(OPTIONS))
        assert flow.transport == "TLS" and flow.peer_names == {"pbx.test"}
        # The same address again: the open connection is reused.
        assert await client.connect("127.0.0.1", port) is conn
        # Checked against another name, the server's certificate is refused, with why.
        other = TcpServer(lambda m, c: None, name="TLS", client_ssl=client_context(ca=str(ca.path)))
        with pytest.raises(OSError, match=r"certificate not accepted: .*'sbc\.test'"):
            await other.connect("127.0.0.1", port, server_hostname="sbc.test")
        # No CA of ours: the system's CAs do not know this one.
        stranger = TcpServer(lambda m, c: None, name="TLS", client_ssl=client_context())
        with pytest.raises(OSError, match="certificate not accepted"):
            await stranger.connect("127.0.0.1", port)
        other.close()
        stranger.close()
    finally:
        client.close()
        server.close()
