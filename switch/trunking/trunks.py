"""Carrier trunks and routes: who may send us calls, and where outbound calls go.

A ``Trunk`` is a carrier: its address, how its INVITEs are recognised (source-IP
allowlist), the digest credentials we answer its challenges with, registration,
codecs and limits. ``OutboundRoute`` picks trunks for a destination by prefix
(longest prefix first, then priority); ``InboundRoute`` picks the agent for a dialed
number. The models double as the API's request bodies, so a bad field is a 422
naming it. ``TrunkBook`` holds them in memory and persists every change to a JSON
file (the embedded default) and, with ``postgres_dsn``, to PostgreSQL first
(``switch/trunking/store.py``), which every node reloads.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sip.sdp import SrtpPolicy
from switch.guard.targets import (
    Resolver,
    TargetPolicy,
    TargetRefused,
    ipv4_prefix_spanned,
    resolve_checked,
)
from switch.secret_box import SecretError
from switch.trunking.patterns import PatternError, compile_pattern, fullmatch
from switch.trunking.sealing import (
    ENV_NAME,
    PROBLEMS,
    SECRET_FIELDS,
    TrunkKeys,
    check_reference,
    resolve_references,
)
from switch.trunking.store import PostgresTrunkStore, TrunkStoreError

log = logging.getLogger("voxswitch.trunks")

Codec = Literal["PCMU", "PCMA"]
CODECS: tuple[Codec, ...] = ("PCMU", "PCMA")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# Shared by the API's bodies: an E.164 number, the same or nothing, an agent's name.
E164 = r"^\+[1-9][0-9]{6,14}$"
E164_OR_EMPTY = r"^$|" + E164
AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MetadataValue = str | int | float | bool
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class Trunk(BaseModel):
    """One carrier trunk (what ``PUT /v1/trunks/{name}`` takes)."""

    name: str = Field(default="", pattern=r"^$|" + NAME_PATTERN)
    host: str = Field(max_length=253, description="carrier SIP address: IP or host name")
    port: int = Field(default=5060, ge=1, le=65535, description="default 5061 over TLS")
    transport: Literal["udp", "tcp", "tls"] = "udp"
    srtp: SrtpPolicy = Field(
        default="optional",
        description="required: RTP/SAVP only; optional: SRTP when offered (and offered "
        "ourselves over TLS); off: plain RTP only",
    )
    tls_peer_name: str = Field(
        default="", max_length=253,
        description="the name the carrier's TLS certificate must carry (default: host)",
    )  # fmt: skip
    record: bool | None = Field(
        default=None, description="record its calls (default: the node's record setting)"
    )
    tls_client_cert: bool = Field(
        default=False,
        description="inbound INVITEs only over TLS with a verified client certificate "
        "for tls_peer_name (or host)",
    )
    # Before inbound_ips: its check reads this field.
    allow_any_source: bool = Field(
        default=False,
        description="take inbound_ips wider than /8 (IPv4) or /32 (IPv6), even 0.0.0.0/0: "
        "any such source passes as this carrier (and is never banned)",
    )
    inbound_ips: list[str] = Field(
        default_factory=list, max_length=64,
        description="addresses/CIDRs whose INVITEs are this trunk's (default: host)",
    )  # fmt: skip
    inbound_username: str = Field(
        default="", pattern=r"^[A-Za-z0-9_.+-]{0,64}$",
        description="digest user the carrier may authenticate its INVITEs with",
    )  # fmt: skip
    inbound_password: str = Field(default="", max_length=128)
    inbound_password_env: str = Field(
        default="", pattern=ENV_NAME, description="inbound_password from this variable of the node"
    )
    inbound_password_file: str = Field(
        default="", max_length=1024, description="inbound_password from this file on the node"
    )
    username: str = Field(default="", max_length=128, description="outbound digest user")
    password: str = Field(default="", max_length=128, description="outbound digest password")
    password_env: str = Field(
        default="", pattern=ENV_NAME,
        description="the password from this environment variable of the node (never stored)",
    )  # fmt: skip
    password_file: str = Field(
        default="", max_length=1024,
        description="the password from this file on the node, e.g. a mounted secret",
    )  # fmt: skip
    registration: bool = Field(default=False, description="REGISTER to the carrier")
    register_expires_s: int = Field(default=3600, ge=60, le=86400)
    codecs: list[Codec] = Field(default_factory=lambda: list(CODECS), min_length=1, max_length=2)
    max_cps: float = Field(default=0.0, ge=0.0, le=10000.0, description="0: no limit")
    max_calls: int = Field(default=0, ge=0, le=100000, description="0: no limit")
    caller_id: str = Field(
        default="", pattern=E164_OR_EMPTY,
        description="From number on outbound calls that name none (E.164)",
    )  # fmt: skip
    force_caller_id: bool = Field(
        default=False, description="always send caller_id, whatever the call names"
    )
    strip_plus: bool = Field(default=False, description="dial 15551234567, not +15551234567")
    dial_prefix: str = Field(
        default="", pattern=r"^[0-9*#]{0,16}$", description="digits put before every number"
    )
    options_interval_s: float = Field(
        default=30.0, ge=0.0, le=3600.0, description="OPTIONS keepalive (0: off)"
    )

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        """SIP over TLS defaults to 5061 (RFC 3261 §19.1.2) when no port is given."""
        if isinstance(data, dict) and data.get("transport") == "tls" and "port" not in data:
            return {**data, "port": 5061}
        return data

    @field_validator(
        "inbound_password_env", "inbound_password_file", "password_env", "password_file"
    )
    @classmethod
    def _secret_reference(cls, value: str, info: ValidationInfo) -> str:
        return check_reference(info.field_name or "", value, info.data, info.context)

    @model_validator(mode="after")
    def _secret_references(self, info: ValidationInfo) -> Trunk:
        """password_env/password_file (and inbound_*) fill the password in memory."""
        resolve_references(self, info.context)
        return self

    @property
    def peer_name(self) -> str:
        """What the carrier's certificate must name (outbound and client checks)."""
        return (self.tls_peer_name or self.host).lower()

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not valid_host(value):
            raise ValueError(f"{value!r} is not an IP address or a host name")
        return value

    @field_validator("inbound_ips")
    @classmethod
    def _networks(cls, values: list[str], info: ValidationInfo) -> list[str]:
        for value in values:
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR") from exc
            if too_wide(network) and not info.data.get("allow_any_source", False):
                raise ValueError(
                    f"{value!r} is wider than a /8 of IPv4 or a /32 of IPv6 (IPv4 inside "
                    "IPv6 counts as IPv4): an allow-list for everyone (set allow_any_source "
                    "to mean it)"
                )
        return values

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        sources = self.inbound_ips or ([self.host] if _is_ip(self.host) else [])
        return [ipaddress.ip_network(v, strict=False) for v in sources]

    def dialed(self, number: str) -> str:
        """How this carrier wants a number written (its R-URI and To user part)."""
        if self.strip_plus:
            number = number.removeprefix("+")
        return self.dial_prefix + number

    def calling(self, number: str) -> str:
        """The From number an outbound call through this trunk shows."""
        if self.caller_id and (self.force_caller_id or not number):
            return self.caller_id
        return number

    def public(self) -> dict[str, Any]:
        """The trunk as the API shows it: the password never leaves."""
        data = self.model_dump()
        for secret in SECRET_FIELDS:
            data[secret] = "********" if data[secret] else ""
        return data


class OutboundRoute(BaseModel):
    """Destinations starting with ``prefix`` go out through ``trunks``, in order."""

    name: str = Field(default="", pattern=r"^$|" + NAME_PATTERN)
    prefix: str = Field(default="", pattern=r"^\+?[0-9]{0,15}$", description="'' matches all")
    trunks: list[str] = Field(min_length=1, max_length=8)
    priority: int = Field(default=100, ge=0, le=1000, description="lower wins on a tie")


class InboundRoute(BaseModel):
    """Calls to a number matching ``pattern`` (a regular expression, RE2's syntax:
    matched in linear time, see ``patterns.py``) go to ``agent``."""

    name: str = Field(default="", pattern=r"^$|" + NAME_PATTERN)
    pattern: str = Field(max_length=200)
    agent: str = Field(default="default", pattern=AGENT_NAME)
    priority: int = Field(default=100, ge=0, le=1000)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile_pattern(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return value


# The widest source network an inbound allow-list takes without allow_any_source. A /8
# is the largest block ever assigned to one organisation (IPv4), a /32 the usual
# allocation to one provider (IPv6); a carrier's signalling hosts sit in far less.
# Anything wider lets strangers pass as the carrier: calls unauthenticated, never banned.
NARROWEST_SOURCE_PREFIX = {4: 8, 6: 32}


def too_wide(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Wider than the narrowest prefix, counting IPv4 inside IPv6 (``::ffff:0:0/96`` is
    every IPv4 source as a dual-stack socket shows it)."""
    return (
        network.prefixlen < NARROWEST_SOURCE_PREFIX[network.version]
        or ipv4_prefix_spanned(network) < NARROWEST_SOURCE_PREFIX[4]
    )


async def trunk_target_refusal(
    trunk: Trunk, policy: TargetPolicy, resolve: Resolver
) -> tuple[str, str] | None:
    """(field, reason) when the trunk's host is an address the node may not be sent
    to (``switch.guard.targets``; a name by what it resolves to now), else None. A
    name that does not resolve now passes: a carrier's DNS may lag its set-up."""
    try:
        await resolve_checked(policy, trunk.host.strip("[]"), trunk.port, resolve)
    except TargetRefused as exc:
        return "host", exc.reason
    except OSError:
        return None
    return None


def stored_problem(exc: ValidationError) -> str:
    """One line for a stored trunk or route this node does not take (a file or table
    written before a check was added: a 0.0.0.0/0 allow-list, a backtracking pattern)."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"a stored {exc.title}: {where}: {first['msg']}{more}"


def valid_host(host: str) -> bool:
    """An IP address (IPv6 maybe in brackets) or a DNS name of valid labels."""
    if _is_ip(host):
        return True
    return len(host) <= 253 and all(HOST_LABEL.match(label) for label in host.split("."))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@dataclass
class TrunkBook:
    """Trunks and routes in memory; every change is written through to ``path``."""

    path: Path | None = None
    store: PostgresTrunkStore | None = None
    trunks: dict[str, Trunk] = field(default_factory=dict)
    outbound: dict[str, OutboundRoute] = field(default_factory=dict)
    inbound: dict[str, InboundRoute] = field(default_factory=dict)
    # The inbound_routes setting's, in its order: never stored, tried after ``inbound``.
    configured: dict[str, InboundRoute] = field(default_factory=dict)
    keys: TrunkKeys | None = None  # default: a key file beside ``path`` (sealing.py)
    _warned: set[str] = field(default_factory=set, repr=False)
    # Where trunks and directly dialed SIP URIs may send us (allowed_private_targets).
    targets: TargetPolicy = field(default_factory=TargetPolicy)

    def _keys(self) -> TrunkKeys:
        if self.keys is None or (self.keys.key_file is None and self.path is not None):
            self.keys = TrunkKeys.beside(self.path, self.keys.secrets_key if self.keys else "")
        return self.keys

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        store: PostgresTrunkStore | None = None,
        secrets_key: str = "",
        *,
        targets: TargetPolicy | None = None,
    ) -> TrunkBook:
        file = Path(path) if path else None
        book = cls(file, store, keys=TrunkKeys.beside(file, secrets_key),
                   targets=targets or TargetPolicy())  # fmt: skip
        if book.path is None or not book.path.exists():
            return book
        data = json.loads(book.path.read_text())
        clear = book.apply(data)
        if clear:
            log.warning("%s holds %d trunk password(s) in the clear: they are sealed on its "
                        "next save", book.path, clear)  # fmt: skip
        return book

    def apply(self, data: dict[str, Any]) -> int:
        """Take a stored document (the file's or PostgreSQL's); returns how many
        passwords it held in the clear."""
        self.trunks, self.outbound, self.inbound, clear = self._parse(data)
        return clear

    def _parse(self, data: dict[str, Any]) -> tuple[
            dict[str, Trunk], dict[str, OutboundRoute], dict[str, InboundRoute], int]:  # fmt: skip
        problems: list[str] = []
        clear = 0
        trunks: dict[str, Trunk] = {}
        for stored in data.get("trunks", []):
            opened, found = self._keys().opened(stored, problems)
            clear += found
            trunks[opened["name"]] = Trunk.model_validate(opened, context={PROBLEMS: problems})
        for problem in problems:  # once each: a reload every 10 s must not repeat them
            if problem not in self._warned:
                self._warned.add(problem)
                log.warning("%s", problem)
        outbound = {r["name"]: OutboundRoute(**r) for r in data.get("outbound_routes", [])}
        inbound = {r["name"]: InboundRoute(**r) for r in data.get("inbound_routes", [])}
        return trunks, outbound, inbound, clear

    def dump(self) -> dict[str, Any]:
        """Everything in memory, passwords included: compare it, never write it."""
        return {
            "trunks": [t.model_dump() for t in self.trunks.values()],
            "outbound_routes": [r.model_dump() for r in self.outbound.values()],
            "inbound_routes": [r.model_dump() for r in self.inbound.values()],
        }

    def stored(self) -> dict[str, Any]:
        """What the file holds: passwords sealed or named by reference, never clear."""
        keys = self._keys()
        box = keys.file_box(create=True)
        if box is None:
            raise SecretError("no secrets_key and no trunks_file to keep a key beside")
        data = self.dump()
        data["trunks"] = [keys.sealed(t, box) for t in data["trunks"]]
        return data

    def save(self) -> None:
        if self.path is None:
            return
        try:
            text = json.dumps(self.stored(), indent=2)
        except SecretError as exc:
            raise TrunkStoreError(f"trunk passwords not sealed: {exc}") from exc
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)  # sealed, but still the carriers' addresses and users
        os.replace(tmp, self.path)

    # ---- changes (PostgreSQL first: if it fails, nothing changed) ----------------------------

    async def reload(self) -> None:
        """Take PostgreSQL's trunks and routes (what other nodes changed)."""
        if self.store is not None:
            trunks, outbound, inbound, _ = self._parse(await self.store.load())
            if (trunks, outbound, inbound) != (self.trunks, self.outbound, self.inbound):
                self.trunks, self.outbound, self.inbound = trunks, outbound, inbound
                self.save()

    async def put_trunk(self, trunk: Trunk) -> None:
        if self.store is not None:
            keys = self._keys()
            stored = keys.sealed(trunk.model_dump(), keys.shared_box())
            await self.store.put_trunk(trunk.name, stored)
        self.trunks[trunk.name] = trunk
        self.save()

    async def delete_trunk(self, name: str) -> None:
        if self.store is not None:
            await self.store.delete_trunk(name)
        self.trunks.pop(name, None)
        self.save()

    async def put_route(self, route: OutboundRoute | InboundRoute) -> None:
        kind = "outbound" if isinstance(route, OutboundRoute) else "inbound"
        if self.store is not None:
            await self.store.put_route(kind, route.name, route.model_dump())
        if isinstance(route, OutboundRoute):
            self.outbound[route.name] = route
        else:
            self.inbound[route.name] = route
        self.save()

    async def delete_route(self, kind: str, name: str) -> bool:
        table: dict[str, Any] = self.outbound if kind == "outbound" else self.inbound
        if name not in table:
            return False
        if self.store is not None:
            await self.store.delete_route(kind, name)
        del table[name]
        self.save()
        return True

    # ---- lookups ---------------------------------------------------------------------

    def trunk_for_source(self, ip: str) -> Trunk | None:
        """The trunk whose allowlist holds ``ip`` (an INVITE's source address)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for trunk in self.trunks.values():
            if any(address in net for net in trunk.networks()):
                return trunk
        return None

    def trunks_for(self, destination: str) -> list[Trunk]:
        """The trunks an outbound call to ``destination`` tries, in order (no duplicates)."""
        number = destination.split("@")[0].removeprefix("sip:").removeprefix("tel:")
        matching = [r for r in self.outbound.values() if number.startswith(r.prefix)]
        matching.sort(key=lambda r: (-len(r.prefix), r.priority, r.name))
        chosen: list[Trunk] = []
        for route in matching:
            for name in route.trunks:
                trunk = self.trunks.get(name)
                if trunk is not None and trunk not in chosen:
                    chosen.append(trunk)
        return chosen

    def inbound_user(self, username: str) -> Trunk | None:
        """The trunk whose inbound digest user this is."""
        for trunk in self.trunks.values():
            if trunk.inbound_username == username and trunk.inbound_password:
                return trunk
        return None

    def configure_inbound(self, routes: list[tuple[str, str]]) -> None:
        """The ``inbound_routes`` setting's (pattern, agent) pairs, named ``config-1``..."""
        self.configured = {
            f"config-{i}": InboundRoute(name=f"config-{i}", pattern=pattern, agent=agent)
            for i, (pattern, agent) in enumerate(routes, 1)
        }

    def agent_for(self, number: str) -> str | None:
        """The agent of the first inbound route matching the dialed number: the API's
        (by priority, then name), then the settings' (in their order)."""
        stored = sorted(self.inbound.values(), key=lambda r: (r.priority, r.name))
        for route in [*stored, *self.configured.values()]:
            if fullmatch(route.pattern, number):
                return route.agent
        return None
