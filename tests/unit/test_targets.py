"""The SSRF policy (switch/guard/targets.py) and where it is applied: webhook URLs at the
API and at each POST (DNS rebinding), trunk hosts and allow-lists, dialed SIP URIs,
the node's own webhook_url setting. Sans-I/O: resolvers are fakes, the receiver an
httpx mock transport."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from switch.backbone.webhooks import (
    SIGNATURE_HEADER,
    WebhookSink,
    check_webhook_url,
    verify,
    webhook_url_refusal,
)
from switch.config import ConfigError, load_settings
from switch.guard.targets import (
    TargetPolicy,
    TargetRefused,
    parse_ipv4_numeric,
    parse_literal,
    resolve_checked,
)
from switch.trunking.dialer import NoRoute, _direct
from switch.trunking.trunks import Trunk, trunk_target_refusal

STRICT = TargetPolicy()
LOOPBACK_OK = TargetPolicy.from_setting("127.0.0.0/8, ::1/128")

# Every spelling of the node itself, its private network or the cloud's metadata
# service that the security review used, and the forms around them.
REFUSED_HOSTS = [
    "169.254.169.254", "[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "fd00:ec2::254",
    "100.100.100.200", "169.254.170.2",
    "127.0.0.1", "127.0.0.1.", "0x7f000001", "0X7F000001", "2130706433", "0177.0.0.1",
    "017700000001", "127.1", "127.0.1", "0x7f.1", "[::1]", "::ffff:127.0.0.1",
    "::ffff:7f00:1", "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1", "::ffff:0:7f00:1",
    "0.0.0.0", "0", "::", "[::]",
    "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "192.0.0.8",
    "198.18.0.1", "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "64:ff9b:1::1",
    "224.0.0.1", "239.255.255.250", "ff02::1", "255.255.255.255", "240.0.0.1",
    "1.2.3.4.5", "256.1.1.1", "08.1.1.1", "1.0x100.1.1", "%31%32%37.0.0.1", "[::1",
]  # fmt: skip
ALLOWED_HOSTS = [
    "8.8.8.8", "93.184.216.34", "[2606:4700:4700::1111]", "::ffff:8.8.8.8",
    "64:ff9b::808:808", "192.0.2.10", "198.51.100.7", "2001:db8::1", "11.0.0.1",
    "172.32.0.1", "100.128.0.1", "carrier.example", "hooks.example.com",
]  # fmt: skip


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_private_loopback_metadata_and_odd_spellings_are_refused(host: str) -> None:
    with pytest.raises(TargetRefused) as caught:
        STRICT.check_host(host)
    assert caught.value.reason


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_public_addresses_and_names_pass_as_written(host: str) -> None:
    STRICT.check_host(host)  # a name: None, judged by what it resolves to


def test_numeric_spellings_read_as_inet_aton_and_browsers_read_them() -> None:
    localhost = ipaddress.IPv4Address("127.0.0.1")
    for spelling in ("0x7f000001", "2130706433", "0177.0.0.1", "127.1", "0x7f.0.0.1",
                     "127.0.0.1.", "0x7f.0x0.0x0.0x1", "0177.1"):  # fmt: skip
        assert parse_ipv4_numeric(spelling) == localhost, spelling
    assert parse_ipv4_numeric("hooks.example.com") is None
    assert parse_ipv4_numeric("a1.example") is None
    assert parse_literal("[::ffff:127.0.0.1]") == ipaddress.IPv6Address("::ffff:7f00:1")


@given(st.text(alphabet="0123456789xXabcdef.", min_size=1, max_size=24))
def test_whatever_inet_aton_takes_as_an_address_is_read_as_that_address(text: str) -> None:
    """No spelling the C library would connect to as an address is taken for a name."""
    try:
        expected = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return
    with contextlib.suppress(ValueError):  # refused outright: safe too
        assert parse_ipv4_numeric(text) == expected


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(1, 4), st.data())
def test_every_split_and_base_of_an_address_reads_back(
    value: int, parts: int, data: st.DataObject
) -> None:
    octets = list(value.to_bytes(4, "big"))
    numbers = [*octets[: parts - 1], int.from_bytes(bytes(octets[parts - 1 :]), "big")]
    spelled = []
    for number in numbers:
        base = data.draw(st.sampled_from([str, hex, lambda n: "0" + oct(n)[2:]]))
        spelled.append(base(number))
    assert parse_ipv4_numeric(".".join(spelled)) == ipaddress.IPv4Address(value)


def test_allowed_private_targets_open_their_networks_only() -> None:
    assert LOOPBACK_OK.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert LOOPBACK_OK.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None  # same host
    assert LOOPBACK_OK.refusal(ipaddress.ip_address("::1")) is None
    assert LOOPBACK_OK.refusal(ipaddress.ip_address("10.0.0.1")) is not None
    assert LOOPBACK_OK.refusal(ipaddress.ip_address("169.254.1.1")) is not None


def test_metadata_and_unspecified_stay_refused_whatever_is_allowed() -> None:
    everything = TargetPolicy.from_setting("0.0.0.0/0, ::/0")
    for host in ("169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "0.0.0.0", "::"):
        reason = everything.refusal(ipaddress.ip_address(host))
        assert reason is not None and "never" in reason, host
    assert everything.refusal(ipaddress.ip_address("10.0.0.1")) is None


def test_the_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        TargetPolicy.from_setting("10.0.0.0/8, nonsense")
    with pytest.raises(ConfigError, match="allowed_private_targets"):
        load_settings(env={"VOXSWITCH_ALLOWED_PRIVATE_TARGETS": "10.0.0.0/33"})


def test_the_nodes_own_webhook_url_is_checked_at_start() -> None:
    env = {"VOXSWITCH_WEBHOOK_SECRET": "s", "VOXSWITCH_WEBHOOK_URL": "http://127.0.0.1:6379/"}
    with pytest.raises(ConfigError, match=r"webhook_url: 127\.0\.0\.1 is loopback"):
        load_settings(env=env)
    allowed = {**env, "VOXSWITCH_ALLOWED_PRIVATE_TARGETS": "127.0.0.0/8"}
    assert load_settings(env=allowed).webhook_url == env["VOXSWITCH_WEBHOOK_URL"]
    # A name is judged at each POST by what it resolves to (no lookup at start).
    named = {**env, "VOXSWITCH_WEBHOOK_URL": "http://localhost:6379/"}
    assert load_settings(env=named).webhook_url == "http://localhost:6379/"


# ---- names: what they resolve to ----------------------------------------------------------


def answers(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"cannot resolve {host!r}")
        return table[host]

    return resolve


DNS = answers({
    "localhost": ["127.0.0.1", "::1"],
    "hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "split.example.com": ["93.184.216.34", "10.0.0.7"],  # one bad address spoils the name
    "meta.example.com": ["169.254.169.254"],
    "empty.example.com": [],
})  # fmt: skip


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    assert run(resolve_checked(STRICT, "hooks.example.com", 443, DNS)) == [
        "93.184.216.34", "2606:2800:220:1::1"]  # fmt: skip
    for host in ("localhost", "split.example.com", "meta.example.com", "empty.example.com"):
        with pytest.raises(TargetRefused):
            run(resolve_checked(STRICT, host, 443, DNS))
    with pytest.raises(OSError):
        run(resolve_checked(STRICT, "nowhere.example", 443, DNS))


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:7f00:1]:6379/",
        "http://0x7f000001:6379/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://127.1:6379/",
        "http://localhost:6379/",
        "http://127.0.0.1:16379/",
        "http://user@10.0.0.1/",
        "https://meta.example.com/",
        "http://evil.example\\@169.254.169.254/",
        "ftp://hooks.example.com/",
    ],
)
def test_webhook_urls_refused_at_the_api(url: str) -> None:
    reason = run(check_webhook_url(url, STRICT, DNS))
    assert reason, url


def test_webhook_urls_accepted_at_the_api() -> None:
    # nowhere.example has no answer now: accepted, checked again at each POST.
    for url in ("https://hooks.example.com/voxswitch", "http://93.184.216.34:8080/h",
                "https://nowhere.example/h"):  # fmt: skip
        assert run(check_webhook_url(url, STRICT, DNS)) is None, url
    assert run(check_webhook_url("http://localhost:9/h", LOOPBACK_OK, DNS)) is None
    assert webhook_url_refusal("http://0x7f000001/", STRICT)
    assert webhook_url_refusal("http://hooks.example.com/", STRICT) is None


# ---- send time: the POST goes to the address checked ----------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


def event(n: int, **extra: object) -> dict[str, object]:
    return {"event_id": f"e{n}", "type": "call.ended", **extra}


def test_a_post_connects_to_the_checked_address_with_the_name_as_host(tmp_path: Path) -> None:
    receiver = Receiver()
    sink = WebhookSink("https://hooks.example.com:8443/in", "k", tmp_path / "dead.jsonl",
                       resolve=DNS, transport=httpx.MockTransport(receiver))  # fmt: skip
    run(sink.deliver([event(1)]))
    (request,) = receiver.requests
    assert request.url.host == "93.184.216.34" and request.url.port == 8443
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"  # and the certificate
    assert verify("k", request.headers[SIGNATURE_HEADER], request.content, now=time.time())


def test_a_name_rebound_to_a_private_address_is_refused_at_send_time(tmp_path: Path) -> None:
    """Accepted at the API while it pointed outside; at the POST it points at the node
    itself: nothing is sent, the event is dead-lettered and counted, delivery goes on."""
    table = {"rebind.example.com": ["93.184.216.34"]}
    resolve = answers(table)
    assert run(check_webhook_url("http://rebind.example.com/h", STRICT, resolve)) is None
    table["rebind.example.com"] = ["127.0.0.1"]  # the attacker's DNS answers anew
    receiver = Receiver()
    dead = tmp_path / "dead.jsonl"
    sink = WebhookSink("", "k", dead, resolve=resolve, transport=httpx.MockTransport(receiver))
    own = "http://rebind.example.com/h"
    run(sink.deliver([event(1, webhook_url=own), event(2, webhook_url=own)]))
    assert receiver.requests == []
    assert (sink.refused, sink.rejected) == (2, 2)
    kept = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [k["event"]["event_id"] for k in kept] == ["e1", "e2"]
    assert kept[0]["status"] is None and "127.0.0.1 is loopback" in kept[0]["refused"]
    assert "webhook_url" not in kept[0]["event"]


def test_a_refused_node_url_does_not_stop_a_calls_own(tmp_path: Path) -> None:
    receiver = Receiver()
    sink = WebhookSink("http://localhost:6379/", "k", tmp_path / "dead.jsonl", resolve=DNS,
                       transport=httpx.MockTransport(receiver))  # fmt: skip
    run(sink.deliver([event(1, webhook_url="https://hooks.example.com/own")]))
    assert [r.url.host for r in receiver.requests] == ["93.184.216.34"]
    assert sink.refused == 1


def test_a_name_that_does_not_resolve_is_retried_not_dropped(tmp_path: Path) -> None:
    sink = WebhookSink("http://nowhere.example/", "k", tmp_path / "dead.jsonl", resolve=DNS,
                       transport=httpx.MockTransport(Receiver()))  # fmt: skip
    with pytest.raises(ConnectionError):
        run(sink.deliver([event(1)]))
    assert sink.rejected == 0


# ---- trunks and dialed SIP URIs --------------------------------------------------------------


def test_trunk_hosts_are_checked_against_the_policy() -> None:
    for host in ("169.254.169.254", "0x7f000001", "127.1", "localhost", "::ffff:127.0.0.1",
                 "[::1]", "10.1.1.1", "meta.example.com"):  # fmt: skip
        refusal = run(trunk_target_refusal(Trunk(host=host), STRICT, DNS))
        assert refusal is not None and refusal[0] == "host", host
    for host in ("192.0.2.10", "hooks.example.com", "sip.unknown.example"):
        assert run(trunk_target_refusal(Trunk(host=host), STRICT, DNS)) is None, host
    assert run(trunk_target_refusal(Trunk(host="127.0.0.1"), LOOPBACK_OK, DNS)) is None


@pytest.mark.parametrize(
    "network",
    ["0.0.0.0/0", "::/0", "10.0.0.0/7", "2001::/16", "128.0.0.0/1", "::ffff:0:0/96",
     "::ffff:0.0.0.0/100", "64:ff9b::/96", "::/64", "2002::/17"],
)  # fmt: skip
def test_an_allow_list_for_everyone_needs_allow_any_source(network: str) -> None:
    with pytest.raises(ValidationError, match="inbound_ips"):
        Trunk(host="192.0.2.10", inbound_ips=[network])
    trunk = Trunk(host="192.0.2.10", inbound_ips=[network], allow_any_source=True)
    assert trunk.inbound_ips == [network]


def test_narrow_allow_lists_stay_as_they_were() -> None:
    for network in ("10.0.0.0/8", "192.0.2.0/24", "127.0.0.1/32", "2001:db8::/32", "::1",
                    "::ffff:10.0.0.0/104", "2002:c000:0200::/40"):  # fmt: skip
        assert Trunk(host="192.0.2.10", inbound_ips=[network]).inbound_ips == [network]


def test_dialed_sip_uris_to_refused_hosts_are_no_route() -> None:
    for uri in ("sip:x@169.254.169.254", "sip:x@127.0.0.1:6379;transport=tcp",
                "sip:x@0x7f000001", "sip:x@[::ffff:127.0.0.1]", "sips:x@10.0.0.1"):  # fmt: skip
        with pytest.raises(NoRoute) as caught:
            _direct(uri, "off", STRICT)
        assert caught.value.field == "to", uri
    assert _direct("sip:x@127.0.0.1:5070", "off", LOOPBACK_OK).host == "127.0.0.1"
    assert _direct("sip:x@pbx.example.com", "off", STRICT).host == "pbx.example.com"
