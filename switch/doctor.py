"""``voxswitch doctor``: the risky settings of a configuration, one line each.

``check(settings, posture)`` is pure: the settings, and what the doctor saw around
them (``Posture``: the trunks file as stored, which settings came from the command
line or a config file, how many API keys there are), in; findings out. ``observe``
is the one function that reads files to build the posture. A finding is ``critical``
(anyone on the network can use or read something: the command exits 1) or a
``warning`` (worth changing before production).

Settings that other parts add later are read with ``getattr(settings, name, default)``
so the doctor runs on any version of ``Settings``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from switch.config import ENV_PREFIX, SECRET_SETTINGS, Settings

Severity = Literal["critical", "warning"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

WILDCARD_HOSTS = ("0.0.0.0", "::", "", "*")
MAPPED_V4 = ipaddress.ip_network("::ffff:0:0/96")
OPEN_DOCS = ("/metrics", "/docs", "/redoc", "/openapi.json")
MAX_TRUNKS_FILE_BYTES = 16 * 1024 * 1024
MIN_SECRETS_KEY_CHARS = 32
MIN_API_KEY_CHARS = 16
MIN_DIGEST_PASSWORD_CHARS = 12
TRUNK_SECRETS = ("password", "inbound_password")
# Settings whose value is a URL or DSN: a secret only when it carries a password.
URL_SETTINGS = ("s3_url", "postgres_dsn", "redis_url", "jobs_broker_url")


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: str  # a short stable name, e.g. sip-open
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.severity.upper():8} {self.check}: {self.problem}. Fix: {self.fix}."


@dataclass(frozen=True)
class Posture:
    """What the doctor knows beyond the settings (``observe`` fills it in)."""

    trunks: dict[str, Any] | None = None  # trunks_file as stored; None: no file
    trunks_error: str = ""
    on_command_line: frozenset[str] = frozenset()  # settings given as --flags
    config_file: str = ""
    config_mode: int | None = None  # its permission bits
    in_config_file: frozenset[str] = frozenset()  # settings the config file sets in the clear
    api_keys_stored: int = 0  # keys in api_keys_file
    findings: tuple[Finding, ...] = field(default=())  # what observing found itself


def check(settings: Settings, posture: Posture | None = None) -> list[Finding]:
    """Every risky setting, critical ones first."""
    seen = posture or Posture()
    found: list[Finding] = list(seen.findings)
    trunks = _trunks(seen.trunks)
    for rule in RULES:
        found.extend(rule(settings, seen, trunks))
    return sorted(found, key=lambda f: f.severity != "critical")


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.severity == "critical" for f in findings) else 0


def report(findings: list[Finding]) -> list[str]:
    """The lines ``voxswitch doctor`` prints, the summary last."""
    critical = sum(f.severity == "critical" for f in findings)
    warnings = len(findings) - critical
    if not findings:
        return ["no risky settings found"]
    return [f.line() for f in findings] + [f"{critical} critical, {warnings} warning(s)"]


# ---- the checks: each (settings, posture, trunks) -> findings ------------------------------


def _sip_open(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    if trunks or s.sip_auth_realm:
        return []
    exposed = _exposed(s.sip_host)
    ports = f"{s.sip_port}" + (f" and TLS {s.tls_port}" if s.tls_cert else "")
    where = f"SIP on {s.sip_host or '*'}:{ports}"
    if exposed:
        problem = f"{where} answers any caller (no trunk, no digest auth): anyone can call in"
    else:
        problem = f"{where} answers any caller that reaches it (no trunk, no digest auth)"
    return [Finding("critical" if exposed else "warning", "sip-open", problem,
                    "add a trunk with inbound_ips (PUT /v1/trunks/NAME), or set sip_auth_realm "
                    "and sip_auth_users")]  # fmt: skip


def _api_keys(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    if not s.api_port:
        return []
    found = []
    where = f"the API on {s.api_host or '*'}:{s.api_port}"
    if not s.api_key and not p.api_keys_stored and _exposed(s.api_host):
        found.append(Finding(
            "warning", "api-no-key",
            f"{where} has no API key: /v1 refuses everyone, but the paths that need no key "
            "are open to the network",
            "set api_key (VOXSWITCH_API_KEY_FILE) or run 'voxswitch apikey create', or bind "
            "api_host to 127.0.0.1",
        ))  # fmt: skip
    if s.api_key and len(s.api_key) < MIN_API_KEY_CHARS:
        found.append(Finding(
            "warning", "api-key-weak",
            f"api_key is {len(s.api_key)} characters: an admin key guessable over the network",
            "use a random key of 32+ characters (openssl rand -hex 24) or 'voxswitch apikey "
            "create'",
        ))  # fmt: skip
    return found


def _trusted(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    found = []
    for net in _networks(s.trusted_sources.split(",")):
        wide = _wideness(net)
        if wide is not None:
            found.append(Finding(
                wide, "trusted-wide",
                f"trusted_sources has {net}: {_describe(net)} are never throttled or banned",
                "list only your own proxies' and carriers' addresses (default 127.0.0.0/8,::1)",
            ))  # fmt: skip
    # trusted_proxies: a later setting (Kamailio's X-Source-IP names the real source).
    for net in _networks(str(getattr(s, "trusted_proxies", "")).split(",")):
        wide = _wideness(net)
        if wide is not None:
            found.append(Finding(
                wide, "trusted-wide",
                f"trusted_proxies has {net}: {_describe(net)} may name any source address "
                "(X-Source-IP) and are never banned",
                "list only your SIP proxies' addresses",
            ))  # fmt: skip
    return found


def _trunk_sources(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    found = []
    for trunk in trunks:
        for net in _networks(_strings(trunk.get("inbound_ips"))):
            wide = _wideness(net)
            if wide is None:
                continue
            found.append(Finding(
                wide, "trunk-inbound-wide",
                f"trunk {trunk.get('name')!r} takes INVITEs from {net}: {_describe(net)} "
                "are that carrier",
                "set its inbound_ips to the carrier's published signalling addresses",
            ))  # fmt: skip
    return found


def _trunk_passwords(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    found = []
    clear = [f"{t.get('name')}.{f}" for t in trunks for f in TRUNK_SECRETS
             if t.get(f) and not _referenced(t, f)]  # fmt: skip
    if clear:
        found.append(Finding(
            "critical", "trunk-password-clear",
            f"{s.trunks_file} holds trunk passwords in the clear ({', '.join(clear[:5])}"
            f"{', ...' if len(clear) > 5 else ''})",
            "start the node and change any trunk through the API (the next save seals them), "
            "or give them as password_env / password_file",
        ))  # fmt: skip
    given = [t for t in trunks for f in TRUNK_SECRETS
             if (t.get(f) or t.get(f + "_sealed")) and not _referenced(t, f)]  # fmt: skip
    if s.postgres_dsn and not s.secrets_key and given:
        found.append(Finding(
            "critical", "trunk-password-shared-clear",
            "trunk passwords go to PostgreSQL in the clear (no secrets_key)",
            "set secrets_key, the same on every node (VOXSWITCH_SECRETS_KEY_FILE), and save "
            "the trunks again",
        ))  # fmt: skip
    if s.secrets_key and len(s.secrets_key) < MIN_SECRETS_KEY_CHARS:
        found.append(Finding(
            "warning", "secrets-key-short",
            f"secrets_key is {len(s.secrets_key)} characters",
            "use 32+ random characters (openssl rand -base64 32)",
        ))  # fmt: skip
    return found


def _secret_sources(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    found = []
    for name in SECRET_SETTINGS:
        value = str(getattr(s, name, ""))
        if not _holds_secret(name, value):
            continue
        variable = f"{ENV_PREFIX}{name.upper()}_FILE"
        if name in p.on_command_line:
            found.append(Finding(
                "critical", "secret-on-command-line",
                f"--{name.replace('_', '-')} is on the command line: every local user sees it "
                "(ps, /proc) and shell history keeps it",
                f"give it as {variable}=/run/secrets/... (or in the environment)",
            ))  # fmt: skip
        elif name in p.in_config_file and p.config_mode is not None and p.config_mode & 0o077:
            found.append(Finding(
                "warning", "secret-in-config",
                f"{p.config_file} (mode {p.config_mode:04o}) holds {name} and others may read it",
                f"chmod 600 {p.config_file}, or set {name}_file there instead",
            ))  # fmt: skip
    return found


def _tls(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    if s.tls_cert or not _exposed(s.sip_host):
        return []
    return [
        Finding(
            "warning",
            "sip-no-tls",
            "SIP travels in the clear: signalling, digest exchanges and SRTP keys (SDES) "
            "can be read on the path",
            "set tls_cert and tls_key (SIP over TLS on tls_port), and srtp = required",
        )
    ]


def _public_paths(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    if not s.api_port:
        return []
    paths = _items(getattr(s, "api_public_paths", "/health"))
    docs = [x for x in paths if x.rstrip("/") in OPEN_DOCS]
    found = []
    if docs:
        found.append(Finding(
            "warning", "api-public-paths",
            f"api_public_paths opens {', '.join(docs)} without a key: the node's call counts, "
            "trunks' names and the API's map to anyone who reaches the API",
            "set api_public_paths to /health and give Prometheus a calls:read key",
        ))  # fmt: skip
    wide = [x for x in paths if x.startswith("/v1")]  # exact paths (control_api/gate.py)
    if wide:
        found.append(Finding(
            "critical", "api-public-paths",
            f"api_public_paths opens {', '.join(wide)} without a key: calls and their data",
            "remove them from api_public_paths (default /health)",
        ))  # fmt: skip
    return found


def _private_targets(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    allowed = _items(getattr(s, "allowed_private_targets", ""))
    if not allowed:
        return []
    return [
        Finding(
            "warning",
            "private-targets",
            f"allowed_private_targets lets webhooks and trunks reach {', '.join(allowed)}"
            " on the node's own network",
            "keep it to the exact addresses of your receivers and carriers, or empty",
        )
    ]


def _nonce_secret(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    digest = bool(s.sip_auth_realm) or any(
        t.get("inbound_password") or t.get("inbound_password_sealed")
        or _referenced(t, "inbound_password") for t in trunks
    )  # fmt: skip
    if not digest or s.sip_auth_secret or not s.redis_url:
        return []
    return [
        Finding(
            "warning",
            "auth-secret-cluster",
            "nodes sharing redis_url sign digest nonces each with its own random key: "
            "a challenge from one node answered to another fails",
            "set sip_auth_secret, the same on every node (VOXSWITCH_SIP_AUTH_SECRET_FILE)",
        )
    ]


def _server_header(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    header = str(getattr(s, "server_header", ""))
    if "voxswitch" not in header.lower() and not re.search(r"\d+\.\d+", header):
        return []
    return [
        Finding(
            "warning",
            "server-header",
            f"server_header {header!r} tells scanners the product and version",
            "set server_header to '' (or a name that says nothing)",
        )
    ]


def _digest_passwords(s: Settings, p: Posture, trunks: list[dict[str, Any]]) -> list[Finding]:
    weak = []
    for entry in s.sip_auth_users.split(","):
        user, _, password = entry.strip().partition(":")
        if user and password and len(password) < MIN_DIGEST_PASSWORD_CHARS:
            weak.append(user)
    if not weak:
        return []
    return [
        Finding(
            "warning",
            "digest-password-short",
            f"sip_auth_users {', '.join(weak[:5])} have passwords under "
            f"{MIN_DIGEST_PASSWORD_CHARS} characters: one captured exchange is enough to "
            "guess them offline",
            "use 16+ random characters each",
        )
    ]


RULES = (_sip_open, _api_keys, _trusted, _trunk_sources, _trunk_passwords, _secret_sources,
         _tls, _public_paths, _private_targets, _nonce_secret, _server_header,
         _digest_passwords)  # fmt: skip


# ---- helpers -------------------------------------------------------------------------------


def _exposed(host: str) -> bool:
    """Listening beyond this machine: a wildcard or any address but loopback."""
    if host in WILDCARD_HOSTS:
        return True
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a host name: it resolves to some interface


def _networks(entries: Iterable[str]) -> list[Network]:
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue  # load_settings and the Trunk model refuse these already
    return nets


def _wideness(net: Network) -> Severity | None:
    """critical: wider than /8 (IPv4) or /32 (IPv6), what the trunk API takes only with
    allow_any_source; warning: wider than /16 or /48; None: an operator-sized network.
    IPv4-mapped IPv6 nets count as the IPv4 net they carry."""
    prefix, v4 = net.prefixlen, net.version == 4
    if not v4 and prefix >= 96 and net.subnet_of(MAPPED_V4):  # type: ignore[arg-type]
        prefix, v4 = prefix - 96, True
    if net.is_loopback:
        return None
    if prefix < (8 if v4 else 32):
        return "critical"
    if prefix < (16 if v4 else 48):
        return "warning"
    return None


def _describe(net: Network) -> str:
    if net.prefixlen == 0:
        return "all addresses"
    return f"{net.num_addresses:,} addresses"


def _items(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _trunks(document: dict[str, Any] | None) -> list[dict[str, Any]]:
    trunks = (document or {}).get("trunks", [])
    return [t for t in trunks if isinstance(t, dict)] if isinstance(trunks, list) else []


def _referenced(trunk: dict[str, Any], name: str) -> bool:
    return bool(trunk.get(name + "_env") or trunk.get(name + "_file"))


def _holds_secret(name: str, value: str) -> bool:
    if not value:
        return False
    if name not in URL_SETTINGS:
        return True
    if "password=" in value:  # a key=value DSN
        return True
    try:
        return bool(urllib.parse.urlsplit(value).password)
    except ValueError:
        return True


# ---- observing (the only I/O) ---------------------------------------------------------------


def observe(
    settings: Settings, on_command_line: Iterable[str] = (), config_file: str | None = None
) -> Posture:
    """Read what the checks need: the trunks file, the config file's keys and mode,
    the API keys file. A file that cannot be read is a finding, not an exception."""
    findings: list[Finding] = []
    trunks, trunks_error = None, ""
    path = Path(settings.trunks_file) if settings.trunks_file else None
    if path is not None and path.exists():
        try:
            if path.stat().st_size > MAX_TRUNKS_FILE_BYTES:
                raise ValueError(f"larger than {MAX_TRUNKS_FILE_BYTES} bytes")
            loaded = json.loads(path.read_text())
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            trunks = loaded
        except (OSError, ValueError) as exc:
            trunks_error = str(exc)
            findings.append(
                Finding(
                    "critical",
                    "trunks-file",
                    f"{path} cannot be read: {exc}",
                    "fix or remove it (the node will not start with it)",
                )
            )
    config = config_file or os.environ.get(ENV_PREFIX + "CONFIG") or ""
    mode, in_config = None, frozenset[str]()
    if config:
        try:
            mode = Path(config).stat().st_mode & 0o777
            keys = tomllib.loads(Path(config).read_text()).keys()
            in_config = frozenset(k for k in keys if k in SECRET_SETTINGS)
        except (OSError, tomllib.TOMLDecodeError):
            pass  # load_settings read it a moment ago; a race is not the doctor's business
    return Posture(
        trunks=trunks,
        trunks_error=trunks_error,
        on_command_line=frozenset(on_command_line),
        config_file=config,
        config_mode=mode,
        in_config_file=in_config,
        api_keys_stored=_count_api_keys(settings.api_keys_file),
        findings=tuple(findings),
    )


def _count_api_keys(path: str) -> int:
    if not path:
        return 0
    try:
        keys = json.loads(Path(path).read_text()).get("keys", [])
    except (OSError, ValueError, AttributeError):
        return 0
    return len(keys) if isinstance(keys, list) else 0
