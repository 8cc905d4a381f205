"""RFC 4475 / RFC 5118 torture messages at the parser level: no sockets, no node.

Each message goes through ``parse_message`` and ``validate_request`` /
``validate_response``. The outcome must be what ``tests/e2e/test_conformance_socket.py``
expects from a running node: a status the parser owns (400, 505, 416, 501 for a
CSeq mismatch with an unknown method) comes from here; anything the endpoint or the
application decides (405, 415, 420, 487...) needs the parser to accept the message.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import os
from pathlib import Path

import pytest

from sip.errors import RemoteProtocolError
from sip.message import Message, Request, Response
from sip.parser import parse_message, validate_request, validate_response


def _shared() -> Path:
    env = os.environ.get("VOXSWITCH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


RFC4475 = _shared() / "conformance" / "rfc4475"
RFC5118 = _shared() / "conformance" / "rfc5118"
E2E_TEST = Path(__file__).resolve().parents[1] / "e2e" / "test_conformance_socket.py"

OK = "ok"  # parses and validates: the endpoint/application decides what to answer
DROP = "drop"  # a response that fails: discarded, never answered

# Parser-level outcome per file: OK, DROP, or the status of the RemoteProtocolError
# (for requests, with the partial Request so the endpoint can answer it).
EXPECTED: dict[str, int | str] = {
    # RFC 4475 §3.1.1 valid
    "wsinv.dat": OK,
    "intmeth.dat": OK,  # unknown method: 501 from the endpoint
    "esc01.dat": OK,
    "escnull.dat": OK,
    "esc02.dat": OK,  # RE%47IST%45R is an unknown method: 501 from the endpoint
    "lwsdisp.dat": OK,
    "longreq.dat": OK,
    "dblreq.dat": OK,  # the REGISTER; the trailing INVITE is dropped
    "semiuri.dat": OK,
    "transports.dat": OK,
    "mpart01.dat": OK,
    "unreason.dat": OK,  # response
    "noreason.dat": OK,  # response
    # §3.1.2 invalid
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": DROP,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": OK,  # tolerated: the Date does not matter to us
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 501,
    "bigcode.dat": DROP,
    # §3.2-3.4 semantic and backwards compatibility
    "badbranch.dat": OK,
    "insuf.dat": 400,
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": OK,
    "bext01.dat": OK,  # 420 from the endpoint
    "invut.dat": OK,  # 415 from the endpoint
    "regaut01.dat": OK,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": OK,  # response: matches no transaction, dropped by the endpoint
    "zeromf.dat": OK,
    "cparam01.dat": OK,
    "cparam02.dat": OK,
    "regescrt.dat": OK,
    "sdp01.dat": OK,  # 406 from the endpoint
    "inv2543.dat": OK,
    # RFC 5118 (wire form: CRLF line ends)
    "ipv6-good.dat": OK,
    "ipv6-bad.dat": 400,
    "port-ambiguous.dat": OK,
    "port-unambiguous.dat": OK,
    "via-received-param-with-delim.dat": OK,
    "via-received-param-no-delim.dat": OK,
    "ipv6-in-sdp.dat": OK,
    "mult-ip-in-header.dat": OK,
    "mult-ip-in-sdp.dat": OK,
    "ipv4-mapped-ipv6.dat": OK,
    "ipv6-bug-abnf-3-colons.dat": OK,
    "ipv6-correct-abnf-2-colons.dat": OK,
}

# Statuses only the parser produces: a node answering one of these must have had
# the parser reject the message, and the other way round.
PARSER_STATUSES = frozenset({400, 413, 505, 513, 416})


def _files() -> list[Path]:
    return sorted(RFC4475.glob("*.dat")) + sorted((RFC5118 / "wire").glob("*.dat"))


def _outcome(data: bytes) -> tuple[int | str, Message | None]:
    try:
        message = parse_message(data)
        assert message is not None
        if isinstance(message, Request):
            validate_request(message)
        else:
            assert isinstance(message, Response)
            validate_response(message)
    except RemoteProtocolError as exc:
        if isinstance(exc.partial, Request):
            return exc.status, exc.partial
        return DROP, exc.partial
    return OK, message


def _e2e_expected() -> dict[str, int | str | None]:
    """The e2e test's table, read without importing it (it needs a running node)."""
    tree = ast.parse(E2E_TEST.read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "EXPECTED"
            and node.value is not None
        ):
            table: dict[str, int | str | None] = ast.literal_eval(node.value)
            return table
    raise AssertionError(f"no EXPECTED table in {E2E_TEST}")


def test_table_covers_every_message() -> None:
    names = {p.name for p in _files()}
    assert names, f"no torture messages found under {_shared()}"
    assert names == set(EXPECTED)


def test_table_agrees_with_the_e2e_table() -> None:
    e2e = _e2e_expected()
    assert set(e2e) == set(EXPECTED)
    for name, ours in EXPECTED.items():
        theirs = e2e[name]
        if ours == DROP:
            assert theirs is None, name
        elif ours == OK:
            assert theirs is None or theirs == "ring" or theirs not in PARSER_STATUSES, name
        else:
            assert theirs == ours, name


def _index_rows(index: Path) -> list[dict[str, str]]:
    with index.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_table_agrees_with_the_rfc_indexes() -> None:
    for row in _index_rows(RFC4475 / "INDEX.tsv"):
        if row["class"] in ("valid", "backcompat"):
            assert EXPECTED[row["file"]] == OK, row["file"]
    for row in _index_rows(RFC5118 / "INDEX.tsv"):
        if row["class"].startswith("valid"):
            assert EXPECTED[row["file"]] == OK, row["file"]
        else:
            assert EXPECTED[row["file"]] == 400, row["file"]


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_torture_message(path: Path) -> None:
    outcome, message = _outcome(path.read_bytes())
    assert outcome == EXPECTED[path.name]
    if isinstance(outcome, int):
        # The endpoint answers from the partial request: it needs a Via to do so.
        assert isinstance(message, Request)
        assert message.headers.get("via")


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_torture_message_every_prefix_is_clean(path: Path) -> None:
    """Truncated anywhere, a datagram gives a message or a RemoteProtocolError."""
    data = path.read_bytes()
    for end in range(0, len(data), 7):
        with contextlib.suppress(RemoteProtocolError):
            parse_message(data[:end])


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_accepted_torture_message_round_trips(path: Path) -> None:
    outcome, message = _outcome(path.read_bytes())
    if outcome != OK:
        return
    assert message is not None
    again = parse_message(bytes(message))
    assert again is not None
    assert again.start_line() == message.start_line()
    assert list(again.headers) == [
        (name, value)
        for name, value in message.headers
        if name.lower() not in ("l", "content-length")
    ] + [("Content-Length", str(len(message.body)))]
    assert again.body == message.body


def test_dblreq_keeps_the_register_and_drops_the_trailing_invite() -> None:
    message = parse_message((RFC4475 / "dblreq.dat").read_bytes())
    assert isinstance(message, Request)
    assert message.method == "REGISTER"
    assert message.body == b""


def test_mpart01_body_is_framed_by_content_length_with_binary_octets() -> None:
    message = parse_message((RFC4475 / "mpart01.dat").read_bytes())
    assert message is not None
    assert len(message.body) == 553
    assert b"\x00" in message.body


def test_escnull_keeps_escaped_nulls_in_the_user_part() -> None:
    message = parse_message((RFC4475 / "escnull.dat").read_bytes())
    assert isinstance(message, Request)
    validate_request(message)
    users = [c.uri.user for c in message.contacts]  # type: ignore[union-attr]
    assert len(users) == 2 and users[0] != users[1]
    assert all(u is not None and "%00" in u for u in users)


def test_port_ambiguous_is_an_ipv6_address_without_port() -> None:
    message = parse_message((RFC5118 / "wire" / "port-ambiguous.dat").read_bytes())
    assert isinstance(message, Request)
    uri = message.parsed_uri
    assert uri.host == "[2001:db8::10:5070]"  # type: ignore[union-attr]
    assert uri.port is None  # type: ignore[union-attr]
