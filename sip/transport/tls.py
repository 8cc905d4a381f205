"""TLS contexts for SIP (RFC 3261 §26.3.1, RFC 5922, RFC 5630), from PEM files.

The server side presents our certificate and, with a CA bundle, asks peers for a
client certificate (optional: a phone has none; a trunk that must present one is
checked per call, by name). The client side always verifies the peer's
certificate and name (a carrier's self-signed one goes in the CA bundle) and
presents ours when we have one (mutual TLS, as many carriers want). TLS 1.2 is
the floor.
"""

from __future__ import annotations

import ssl


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(cert: str = "", key: str = "", ca: str = "") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        context.load_verify_locations(ca)
    else:
        context.load_default_certs()
    if cert:
        context.load_cert_chain(cert, key)
    return context
