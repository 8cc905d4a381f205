"""Where the node may connect on someone else's say-so: the SSRF policy of outbound targets.

Webhook URLs (an API key's, a campaign's, the node's own) and trunk hosts make the
node open connections. Someone who may set them must not reach what only the node
can: the cloud's instance metadata, its own loopback services (Redis, the API), the
private network behind it. So every address a target names or resolves to is
classified here and refused when it is

- a cloud metadata endpoint or unspecified (``0.0.0.0``, ``::``: Linux connects
  those to itself): always, whatever the settings say;
- loopback, private (RFC 1918, RFC 4193 ULA, RFC 6598 CGNAT, the IANA ranges "not
  globally reachable"), link-local, multicast or reserved: unless one of the
  ``allowed_private_targets`` networks holds it (tests' receivers on loopback, a
  carrier on a private interconnect, a webhook receiver inside the VPC).

An IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged
by the IPv4 address it reaches. Host literals are read the way URL parsers and
``inet_aton`` read them (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``
are all ``127.0.0.1``), so no spelling slips past.

The policy is pure: a name is judged by the addresses it resolves to, given by the
caller (``resolve_checked`` takes the resolver; ``system_resolve`` is the one
function here that asks the system, and callers pass it in).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from switch.guard import sources

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

RESOLVE_TIMEOUT_S = 3.0
MAX_ADDRESSES = 32  # a name resolving to more is judged by these (each one checked)

_net = ipaddress.ip_network

# Never a target: the instance metadata services (AWS, GCP, Azure, OpenStack, Oracle:
# 169.254.169.254; AWS over IPv6: fd00:ec2::254; ECS task credentials: 169.254.170.2;
# EKS pod identity: 169.254.170.23, fd00:ec2::23; Alibaba: 100.100.100.200; Oracle's
# legacy 192.0.0.192) hand out cloud credentials, and the unspecified addresses reach
# the node itself. A wide allowance (169.254.0.0/16, 0.0.0.0/0) must not open them.
NEVER: tuple[tuple[Network, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified"),
    (_net("::/128"), "unspecified"),
    (_net("169.254.169.254/32"), "a cloud metadata address"),
    (_net("169.254.170.2/32"), "a cloud metadata address"),
    (_net("169.254.170.23/32"), "a cloud metadata address"),
    (_net("100.100.100.200/32"), "a cloud metadata address"),
    (_net("192.0.0.192/32"), "a cloud metadata address"),
    (_net("fd00:ec2::254/128"), "a cloud metadata address"),
    (_net("fd00:ec2::23/128"), "a cloud metadata address"),
)

# Refused unless allowed (IANA special-purpose registries, "globally reachable: false").
# Documentation ranges (192.0.2.0/24 ...) are not here: nothing answers there.
SPECIAL: tuple[tuple[Network, str], ...] = (
    (_net("10.0.0.0/8"), "private"),
    (_net("100.64.0.0/10"), "private (shared address space, RFC 6598)"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link-local"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.0.0.0/24"), "private (IETF protocol assignments)"),
    (_net("192.168.0.0/16"), "private"),
    (_net("198.18.0.0/15"), "private (benchmarking, RFC 2544)"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("240.0.0.0/4"), "reserved"),
    (_net("::1/128"), "loopback"),
    (_net("64:ff9b:1::/48"), "private (local-use NAT64, RFC 8215)"),
    (_net("100::/64"), "reserved (discard-only, RFC 6666)"),
    (_net("fc00::/7"), "private (unique local, RFC 4193)"),
    (_net("fe80::/10"), "link-local"),
    (_net("fec0::/10"), "private (site-local)"),
    (_net("ff00::/8"), "multicast"),
)

# IPv6 prefixes whose low 32 bits are the IPv4 address reached.
_V4_IN_LOW_BITS = (
    _net("::ffff:0:0/96"),  # IPv4-mapped (RFC 4291)
    _net("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765)
    _net("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    _net("::/96"),  # IPv4-compatible, deprecated (RFC 4291 §2.5.5.1)
)

# 6to4 (RFC 3056): the IPv4 address is bits 16 to 48.
_SIX_TO_FOUR = _net("2002::/16")

_NUMERIC_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


class TargetRefused(ValueError):
    """This host may not be a target; ``reason`` says why in one line."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(reason)
        self.host = host
        self.reason = reason


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1/128"`` → networks; ValueError names the bad entry."""
    return sources.parse_networks(text.split(","))


def parse_ipv4_numeric(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling ``inet_aton`` and the WHATWG URL parser accept
    (1 to 4 parts, each decimal, 0x-hex or 0-octal, the last filling the remaining
    bytes), or None when ``host`` does not end in a number (a DNS name).
    ValueError when it ends in a number but is no address (``1.2.3.4.5``, ``08``)."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # "127.0.0.1." is the same host
    if not parts or not _NUMERIC_PART.match(parts[-1]):
        return None
    if len(parts) > 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    numbers = [_part_value(p, host) for p in parts]
    last = numbers.pop()
    if any(n > 255 for n in numbers) or last >= 256 ** (4 - len(numbers)):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    value = last
    for index, number in enumerate(numbers):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _part_value(part: str, host: str) -> int:
    try:
        if part[:2] in ("0x", "0X"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part)
    except ValueError:  # "08": not octal
        raise ValueError(f"{host!r} is not a valid IPv4 address") from None


def parse_literal(host: str) -> Address | None:
    """The address a host literal names (IPv6 maybe bracketed, IPv4 in any numeric
    spelling), or None for a DNS name. ValueError for a malformed numeric host."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    return parse_ipv4_numeric(bare)


def reached(address: Address) -> Address:
    """The address a packet to ``address`` really goes to: the IPv4 address inside an
    IPv4-mapped/-compatible/NAT64/6to4 IPv6 address, else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address in _net("::1/128") or address in _net("::/128"):
        return address
    for prefix in _V4_IN_LOW_BITS:
        if address in prefix:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return address


def ipv4_prefix_spanned(network: Network) -> int:
    """The prefix length of the IPv4 block ``network`` covers, counting the IPv4
    addresses inside IPv6 ones (``::ffff:0:0/96`` covers all of IPv4: 0); 32 when it
    covers none. For allow-lists: a source seen as ``::ffff:a.b.c.d`` is IPv4."""
    if isinstance(network, ipaddress.IPv4Network):
        return network.prefixlen
    spans = [32]
    for prefix in _V4_IN_LOW_BITS:
        if network.overlaps(prefix):
            spans.append(max(0, network.prefixlen - 96))
    if network.overlaps(_SIX_TO_FOUR):
        spans.append(max(0, min(network.prefixlen, 48) - 16))
    return min(spans)


@dataclass(frozen=True)
class TargetPolicy:
    """Which addresses the node may connect to for others (see the module's docstring)."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_setting(cls, text: str) -> TargetPolicy:
        return cls(parse_networks(text))

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` may not be a target, or None when it may."""
        forms = {address, reached(address)}
        for form in forms:
            for net, kind in NEVER:
                if form.version == net.version and form in net:
                    return f"{form} is {kind}: never a target"
        if any(f.version == n.version and f in n for f in forms for n in self.allowed):
            return None
        for form in forms:
            for net, kind in SPECIAL:
                if form.version == net.version and form in net:
                    return f"{form} is {kind}: not a target unless allowed_private_targets has it"
        return None

    def check_host(self, host: str) -> Address | None:
        """Check a host as written: its address when it is a literal (refused ones
        raise TargetRefused), None for a DNS name (judge what it resolves to)."""
        try:
            address = parse_literal(host)
        except ValueError as exc:
            raise TargetRefused(host, str(exc)) from None
        if address is not None:
            self._check(host, address)
        return address

    def check_addresses(self, host: str, addresses: Iterable[str]) -> list[str]:
        """The addresses ``host`` resolved to, each checked (one refused refuses the
        name: a connection might go to any of them), without duplicates."""
        checked: list[str] = []
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                raise TargetRefused(host, f"{host} resolved to {text!r}, not an address") from None
            self._check(host, address)
            if text not in checked:
                checked.append(text)
        if not checked:
            raise TargetRefused(host, f"{host} resolved to no address")
        return checked[:MAX_ADDRESSES]

    def _check(self, host: str, address: Address) -> None:
        reason = self.refusal(address)
        if reason is not None:
            shown = reason if host.strip("[]") == str(address) else f"{host}: {reason}"
            raise TargetRefused(host, shown)


async def resolve_checked(
    policy: TargetPolicy, host: str, port: int, resolve: Resolver
) -> list[str]:
    """Every address ``host`` stands for, each allowed by ``policy`` (TargetRefused
    otherwise); a literal is not resolved. OSError when the name does not resolve."""
    literal = policy.check_host(host)
    if literal is not None:
        return [str(literal)]
    return policy.check_addresses(host, await resolve(host, port))


async def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host`` (TCP), bounded in time. The one
    function here that does I/O; callers hand it to ``resolve_checked``."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except TimeoutError:
        raise OSError(f"cannot resolve {host!r}: no answer in {RESOLVE_TIMEOUT_S:g} s") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise OSError(f"cannot resolve {host!r}: {exc}") from exc
    return [str(info[4][0]) for info in infos]
