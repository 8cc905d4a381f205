"""Node settings: one object, filled from defaults < config file < environment < CLI.

Every field is a setting: ``sip_port`` is ``--sip-port`` on the command line,
``VOXSWITCH_SIP_PORT`` in the environment and ``sip_port = 5070`` in the TOML
config file (``--config`` / ``VOXSWITCH_CONFIG``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sip.sdp import SRTP_POLICIES
from switch.guard.sources import SCANNER_AGENTS, parse_networks
from switch.guard.targets import TargetPolicy

ENV_PREFIX = "VOXSWITCH_"
# Settings that hold secrets: each may be read from a file instead (VOXSWITCH_<NAME>_FILE
# in the environment, <name>_file in the config file), the way Docker and Kubernetes
# mount secrets, so the value is in neither the environment nor the command line.
SECRET_SETTINGS = (
    "api_key", "sip_auth_users", "sip_auth_secret", "secrets_key", "llm_api_key", "asr_api_key",
    "tts_api_key", "webhook_secret", "weaviate_api_key", "s3_url", "postgres_dsn", "redis_url",
    "jobs_broker_url",
)  # fmt: skip


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


def _parse_port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = str(text).partition("-")
    try:
        start, end = int(lo), int(hi if sep else lo)
    except ValueError as exc:
        raise ConfigError(f"rtp_ports: expected START-END, got {text!r}") from exc
    if not (1024 <= start < end <= 65535) or (end - start) < 2:
        raise ConfigError(f"rtp_ports: need 1024 <= START < END <= 65535, got {text!r}")
    return start, end


@dataclass(frozen=True)
class Settings:
    sip_host: str = field(default="0.0.0.0", metadata={"help": "address SIP listens on (UDP+TCP)"})
    sip_port: int = field(default=5060, metadata={"help": "SIP port (UDP and TCP)"})
    advertise_host: str = field(
        default="",
        metadata={"help": "address put in Via/Contact/SDP (default: sip_host, or this host's IP)"},
    )
    rtp_ports: tuple[int, int] = field(
        default=(20000, 29999), metadata={"help": "RTP port range START-END"}
    )
    media_workers: int = field(
        default=0,
        metadata={"help": "processes that do the RTP socket I/O (0: the node's own loop)"},
    )
    api_host: str = field(default="0.0.0.0", metadata={"help": "address of the HTTP API"})
    api_port: int = field(default=8080, metadata={"help": "HTTP port (health; 0 disables)"})
    api_key: str = field(
        default="", metadata={"help": "a first admin API key (Authorization: Bearer)"}
    )
    api_keys_file: str = field(
        default="voxswitch-api-keys.json",
        metadata={"help": "API keys made by 'voxswitch apikey create' (hashed)"},
    )
    api_public_paths: str = field(
        default="/health",
        metadata={
            "help": "API paths open without a key, comma-separated (e.g. /health,/metrics,"
            "/docs; /docs opens /openapi.json too); every other path needs a key"
        },
    )
    api_max_connections: int = field(
        default=512, metadata={"help": "open API connections at most; more get 503 and close"}
    )
    api_max_connections_per_source: int = field(
        default=64,
        metadata={"help": "open API connections per client address; more get 429 and close"},
    )
    api_header_timeout_s: float = field(
        default=10.0,
        metadata={"help": "a request's line and headers must arrive within this (slowloris)"},
    )
    api_body_timeout_s: float = field(
        default=30.0, metadata={"help": "a request's body must arrive within this of its head"}
    )
    api_idle_timeout_s: float = field(
        default=10.0, metadata={"help": "an idle API connection is closed after this long"}
    )
    max_calls: int = field(
        default=2000, metadata={"help": "concurrent calls; beyond it INVITEs get 503"}
    )
    max_call_duration_s: float = field(
        default=3600.0, metadata={"help": "the node hangs up a call after this long"}
    )
    media_timeout_s: float = field(
        default=30.0, metadata={"help": "hang up when no RTP arrives for this long (0: never)"}
    )
    ring_ms: int = field(default=0, metadata={"help": "ringing time between 180 and 200 OK"})
    drain_grace_s: float = field(
        default=20.0, metadata={"help": "on SIGTERM, calls may finish for this long"}
    )
    greeting_file: str = field(
        default="", metadata={"help": "WAV/.ulaw/.alaw greeting (default: a built-in chime)"}
    )
    sip_auth_realm: str = field(
        default="", metadata={"help": "digest realm; set it to challenge INVITEs (401)"}
    )
    sip_auth_users: str = field(
        default="", metadata={"help": "digest users as user:password,user2:password2"}
    )
    sip_auth_algorithms: str = field(
        default="SHA-256,MD5", metadata={"help": "digest algorithms offered, in order"}
    )
    sip_auth_secret: str = field(
        default="",
        metadata={"help": "nonce signing key, the same on every node (default: random)"},
    )
    agent: str = field(
        default="demo",
        metadata={
            "help": "who answers: demo (built-in YAML agent), a YAML file, openai (LLM), "
            "or none (greeting chime only)"
        },
    )
    agents_dir: str = field(
        default="",
        metadata={
            "help": "more agents: each <name>.yaml here is a scripted agent that "
            "calls and inbound routes can name"
        },
    )
    inbound_routes: str = field(
        default="",
        metadata={
            "help": "which agent answers which dialed number: PATTERN=AGENT, space-"
            "separated (a regular expression matching the whole number or SIP user, e.g. "
            "'1000=clinic 2[0-9]+=sales'); the CLI's --inbound-route repeats, the config "
            "file takes a list; tried after the API's routes, in order"
        },
    )
    llm_base_url: str = field(
        default="https://api.openai.com", metadata={"help": "OpenAI-compatible LLM base URL"}
    )
    llm_api_key: str = field(default="", metadata={"help": "LLM API key (agent = openai)"})
    llm_model: str = field(default="gpt-4o-mini", metadata={"help": "LLM model name"})
    asr: str = field(
        default="whisper",
        metadata={"help": "speech recognition: whisper (local Whisper base on the CPU, the "
                  "accurate default), pocketsphinx (light, for tiny machines; inaccurate on "
                  "telephone audio) or openai"},
    )
    asr_base_url: str = field(
        default="https://api.openai.com", metadata={"help": "OpenAI-compatible ASR base URL"}
    )
    asr_api_key: str = field(default="", metadata={"help": "ASR API key (asr = openai)"})
    asr_model: str = field(default="whisper-1", metadata={"help": "ASR model (asr = openai)"})
    asr_pool_size: int = field(
        default=2,
        metadata={"help": "decoders all calls share: pocketsphinx processes or whisper threads"},
    )
    whisper_model_dir: str = field(
        default="",
        metadata={"help": "a CTranslate2 Whisper model folder (asr = whisper); default: base"},
    )
    tts: str = field(default="espeak", metadata={"help": "speech synthesis: espeak or openai"})
    tts_base_url: str = field(
        default="https://api.openai.com", metadata={"help": "OpenAI-compatible TTS base URL"}
    )
    tts_api_key: str = field(default="", metadata={"help": "TTS API key (tts = openai)"})
    tts_model: str = field(default="tts-1", metadata={"help": "TTS model (tts = openai)"})
    tts_voice: str = field(default="alloy", metadata={"help": "TTS voice"})
    vad_aggressiveness: int = field(default=2, metadata={"help": "webrtcvad mode 0-3"})
    vad_start_ms: int = field(
        default=60, metadata={"help": "speech this long starts the caller's turn"}
    )
    vad_stop_ms: int = field(
        default=500, metadata={"help": "silence this long ends the caller's turn"}
    )
    barge_in_min_ms: int = field(
        default=500,
        metadata={"help": "caller speech over the agent this long interrupts it; shorter resumes"},
    )
    records_file: str = field(
        default="voxswitch-calls.jsonl",
        metadata={"help": "call records, one JSON object per line ('' disables)"},
    )
    redis_url: str = field(
        default="", metadata={"help": "Redis for call checkpoints ('' keeps them in memory)"}
    )
    cluster: str = field(
        default="voxswitch",
        metadata={"help": "the cluster this node belongs to: nodes of one cluster adopt each "
                  "other's calls (several may share one Redis)"},
    )
    takeover: str = field(
        default="on",
        metadata={"help": "on: with redis_url, adopt the live calls of a node that died "
                  "(and this node's own after a crash); off: end them"},
    )
    heartbeat_s: float = field(
        default=0.5, metadata={"help": "how often the node tells Redis it is alive"}
    )
    node_dead_s: float = field(
        default=1.5, metadata={"help": "a node silent this long is dead: its calls are adopted"}
    )
    takeover_line: str = field(
        default="Sorry, one moment.",
        metadata={"help": "what an adopted call's agent says before it goes on"},
    )
    kafka_bootstrap: str = field(
        default="", metadata={"help": "Kafka bootstrap servers for lifecycle events"}
    )
    kafka_topic: str = field(
        default="voxswitch.calls", metadata={"help": "Kafka topic of the call lifecycle"}
    )
    postgres_dsn: str = field(
        default="", metadata={"help": "PostgreSQL DSN for call records (tables calls, call_turns)"}
    )
    spool_dir: str = field(
        default="voxswitch-spool",
        metadata={"help": "the outbox: events wait here until every sink has them"},
    )
    spool_max_mb: int = field(
        default=1024, metadata={"help": "undelivered events beyond this: new calls get 503"}
    )
    events_file: str = field(
        default="voxswitch-events.jsonl",
        metadata={"help": "lifecycle events as JSON lines when no Kafka/PostgreSQL is set"},
    )
    webhook_url: str = field(
        default="", metadata={"help": "POST every lifecycle event here (signed, retried)"}
    )
    webhook_secret: str = field(
        default="", metadata={"help": "HMAC-SHA256 key of the webhook signature"}
    )
    allowed_private_targets: str = field(
        default="",
        metadata={
            "help": "CIDRs the node may send webhooks, trunk traffic and dialed SIP URIs to "
            "although loopback/private/link-local (e.g. 10.20.0.0/16 for a receiver in the "
            "VPC); cloud metadata addresses stay refused"
        },
    )
    trunks_file: str = field(
        default="voxswitch-trunks.json",
        metadata={"help": "trunks and routes (JSON, written by the API; '' keeps them in memory)"},
    )
    secrets_key: str = field(
        default="",
        metadata={
            "help": "seals trunk passwords in trunks_file and PostgreSQL, the same on every "
            "node, 16+ characters (default: a random key in a 0600 file beside trunks_file)"
        },
    )
    transfer_fallback: str = field(
        default="bridge",
        metadata={
            "help": "when the peer refuses REFER: bridge (a second leg through "
            "voxswitch) or hangup (end the call transfer_failed)"
        },
    )
    campaigns_file: str = field(
        default="voxswitch-campaigns.jsonl",
        metadata={
            "help": "campaign journal: a restarted node goes on with its campaigns "
            "('' keeps them in memory)"
        },
    )
    trunks_reload_s: float = field(
        default=10.0,
        metadata={"help": "with postgres_dsn: reload trunks and routes this often"},
    )
    max_cps: float = field(
        default=0.0,
        metadata={"help": "new INVITEs per second beyond which they get 503 (0: no ceiling)"},
    )
    overload_busy: float = field(
        default=0.85,
        metadata={
            "help": "event-loop CPU share past which new INVITEs are paced down by "
            "measured load (503 + Retry-After); 0 turns this off"
        },
    )
    overload_lag_ms: float = field(
        default=50.0, metadata={"help": "event-loop lag that counts as overload"}
    )
    overload_media_late_ms: float = field(
        default=20.0, metadata={"help": "media tick lateness (p90) that counts as overload"}
    )
    overload_retry_after_s: int = field(
        default=5, metadata={"help": "Retry-After of a 503 for overload or max_cps"}
    )
    source_max_rps: int = field(
        default=200,
        metadata={
            "help": "requests per second one source IP may send before it is banned "
            "(0: no limit; trunks and trusted_sources are exempt)"
        },
    )
    auth_max_failures: int = field(
        default=10,
        metadata={
            "help": "failed digest authentications per source within "
            "auth_failure_window_s before it is banned"
        },
    )
    auth_failure_window_s: float = field(
        default=60.0, metadata={"help": "window of auth_max_failures"}
    )
    ban_s: float = field(
        default=600.0, metadata={"help": "how long a banned source's packets are dropped"}
    )
    trusted_sources: str = field(
        default="127.0.0.0/8,::1",
        metadata={"help": "addresses/CIDRs never throttled or banned (trunks' are too)"},
    )
    scanner_user_agents: str = field(
        default=",".join(SCANNER_AGENTS),
        metadata={
            "help": "User-Agent substrings of SIP scanners: their source is banned at "
            "once ('' turns this off)"
        },
    )
    ban_max_unknown_targets: int = field(
        default=10,
        metadata={
            "help": "distinct users/numbers no inbound route or trunk knows (or that were "
            "refused) one source may try within ban_window_s before it is banned (0: off)"
        },
    )
    ban_max_failures: int = field(
        default=30,
        metadata={
            "help": "error answers (4xx but 487, 6xx) one source may get within "
            "ban_window_s before it is banned (0: off)"
        },
    )
    ban_window_s: float = field(
        default=60.0, metadata={"help": "window of ban_max_unknown_targets and ban_max_failures"}
    )
    trusted_proxies: str = field(
        default="",
        metadata={
            "help": "addresses/CIDRs of SIP proxies (Kamailio) whose X-Source-IP header "
            "names a request's real source; never counted or banned themselves"
        },
    )
    server_header: str = field(
        default="",
        metadata={"help": "Server header of our SIP responses ('' sends none)"},
    )
    sip_tcp_max_connections: int = field(
        default=2048,
        metadata={
            "help": "SIP connections open at once, on each of the TCP and TLS listeners; "
            "past it new ones are reset (0: no cap)"
        },
    )
    sip_tcp_max_per_source: int = field(
        default=64,
        metadata={
            "help": "SIP TCP/TLS connections one source IP may hold open (trunks and "
            "trusted_sources are exempt; 0: no cap)"
        },
    )
    sip_tcp_idle_timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "close a SIP TCP/TLS connection with no message or CRLF keepalive for "
            "this long, unless a call runs on it (0: never)"
        },
    )
    sip_tcp_message_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "a SIP message over TCP/TLS, and a new connection's first one, must "
            "arrive whole within this long or the connection is closed (0: no limit)"
        },
    )
    sip_tcp_max_message_bytes: int = field(
        default=65535,
        metadata={
            "help": "largest SIP body a TCP/TLS peer may send (413 and the connection "
            "closed past it; header sections are capped at 32 KiB)"
        },
    )
    tls_port: int = field(
        default=5061,
        metadata={"help": "SIP over TLS port (listens only with tls_cert and tls_key)"},
    )
    tls_cert: str = field(default="", metadata={"help": "PEM certificate (chain) for SIP over TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of tls_cert"})
    tls_ca: str = field(
        default="",
        metadata={
            "help": "PEM CAs peers' certificates must chain to: trunks' servers, and "
            "client certificates (asked for only when set; default: system CAs)"
        },
    )
    srtp: str = field(
        default="optional",
        metadata={
            "help": "SRTP for calls no trunk names: required, optional (when "
            "offered; offered over TLS) or off"
        },
    )
    record: str = field(
        default="off",
        metadata={
            "help": "record calls (stereo WAV, caller left, agent right): all or off; "
            "a trunk's or an API call's own record setting wins"
        },
    )
    recordings_dir: str = field(
        default="voxswitch-recordings", metadata={"help": "where recordings are written"}
    )
    record_announcement: str = field(
        default="",
        metadata={
            "help": "said to a recorded call before the agent's greeting, e.g. 'This call "
            "is recorded.' ('' says nothing)"
        },
    )
    s3_url: str = field(
        default="",
        metadata={
            "help": "archive recordings here: http(s)://KEY:SECRET@host[:port]/bucket"
            "[/prefix]; each local file is deleted once the store holds it"
        },
    )
    s3_region: str = field(default="us-east-1", metadata={"help": "the S3 region to sign for"})
    retention_days: int = field(
        default=0,
        metadata={
            "help": "the retention job deletes calls, their turns, events, transcripts and "
            "recordings older than this many days (0: keep everything)"
        },
    )
    jobs_broker_url: str = field(
        default="",
        metadata={"help": "Redis for the batch jobs' queue and results ('': redis_url)"},
    )
    jobs_visibility_s: int = field(
        default=1800,
        metadata={
            "help": "a job a worker took and did not finish is given to another worker "
            "after this long (a killed worker's jobs run again); above the longest job"
        },
    )
    weaviate_url: str = field(
        default="",
        metadata={
            "help": "the knowledge base in Weaviate, http(s)://host:port ('': the embedded "
            "index in kb_dir)"
        },
    )
    weaviate_grpc_port: int = field(
        default=50051, metadata={"help": "Weaviate's gRPC port (weaviate-client v4 needs it)"}
    )
    weaviate_api_key: str = field(default="", metadata={"help": "Weaviate API key, if any"})
    kb_collection: str = field(
        default="VoxswitchKnowledge",
        metadata={"help": "the Weaviate collection holding every agent's knowledge"},
    )
    kb_dir: str = field(
        default="voxswitch-kb",
        metadata={
            "help": "the embedded knowledge index's files, one per agent ('': memory); "
            "by default beside the config file, else under state_dir; a relative path "
            "in the config file is from its folder"
        },
    )
    state_dir: str = field(
        default="",
        metadata={
            "help": "where the node and 'voxswitch kb' keep the knowledge index when "
            "no config file places it ('': $XDG_STATE_HOME/voxswitch, i.e. "
            "~/.local/state/voxswitch), whatever the working folder"
        },
    )
    kb_top_k: int = field(default=3, metadata={"help": "knowledge entries a lookup returns"})
    kb_min_similarity: float = field(
        default=0.45,
        metadata={"help": "a knowledge entry counts when its cosine similarity reaches this"},
    )
    kb_timeout_ms: int = field(
        default=1000,
        metadata={"help": "a lookup slower than this is an outage (the fallback line)"},
    )
    node_id: str = field(default="", metadata={"help": "node name (default: host name)"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})
    log_format: str = field(
        default="text", metadata={"help": "text, or json (one object a line, with call_id)"}
    )

    @property
    def public_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        if self.sip_host not in ("0.0.0.0", "::", ""):
            return self.sip_host
        return _primary_ip()

    @property
    def name(self) -> str:
        return self.node_id or socket.gethostname()


def _primary_ip() -> str:
    # Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _convert(name: str, kind: Any, value: Any) -> Any:
    try:
        if name == "inbound_routes" and isinstance(value, list | tuple):
            return " ".join(str(item) for item in value)
        if name == "rtp_ports":
            if isinstance(value, list | tuple):
                return _parse_port_range(f"{value[0]}-{value[1]}")
            return _parse_port_range(str(value))
        if kind in (int, "int"):
            return int(value)
        if kind in (float, "float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name}: invalid value {value!r}") from exc


def _absolute_dirs(
    values: Mapping[str, Any], in_file: set[str], config: str | None, env: Mapping[str, str]
) -> dict[str, str]:
    """``state_dir`` and ``kb_dir`` made absolute, so ``voxswitch serve`` and ``voxswitch
    kb`` find one index whatever folder each is started in. A relative path from the
    config file is from its folder; kb_dir's default sits beside the config file, else
    under state_dir; a relative path typed on the command line (or in the environment)
    is from the working folder, as in any shell."""
    folder = Path(config).expanduser().absolute().parent if config else None

    def absolute(name: str, default_base: Path) -> str:
        text = str(values.get(name, Settings.__dataclass_fields__[name].default))
        given = Path(text).expanduser()
        if given.is_absolute():
            return str(given)
        if name in in_file and folder is not None:
            return os.path.abspath(folder / given)
        if name in values:
            return os.path.abspath(given)
        return os.path.abspath(default_base / given)

    xdg = env.get("XDG_STATE_HOME", "")  # the XDG base directory spec's state folder
    states = Path(xdg) if Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    given = values.get("state_dir")
    state = absolute("state_dir", states) if given else str(states / "voxswitch")
    out = {"state_dir": state}
    if values.get("kb_dir", "voxswitch-kb"):  # '' keeps the index in memory
        out["kb_dir"] = absolute("kb_dir", folder or Path(state))
    return out


def _secret_file(what: str, path: Any) -> str:
    from switch.secret_box import SecretError, read_secret_file  # cryptography: only if used

    try:
        return read_secret_file(str(path), what)
    except SecretError as exc:
        raise ConfigError(str(exc)) from exc


def load_settings(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    given_in_file: set[str] = set()
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    known = {f.name: f for f in fields(Settings)}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        for key, value in data.items():
            secret = key.removesuffix("_file")
            if key not in known and secret in SECRET_SETTINGS:
                if secret in data:
                    raise ConfigError(f"config file {path}: {secret}, {key}: give one of them")
                values[secret] = _secret_file(key, value)
                continue
            if key not in known:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _convert(key, known[key].type, value)
            given_in_file.add(key)
    for name, f in known.items():
        raw = env.get(ENV_PREFIX + name.upper())
        file = env.get(ENV_PREFIX + name.upper() + "_FILE") if name in SECRET_SETTINGS else None
        if file:
            if raw is not None:
                variable = ENV_PREFIX + name.upper()
                raise ConfigError(f"{variable}, {variable}_FILE: give one of them")
            raw = _secret_file(name + "_file", file)
        if raw is not None:
            values[name] = _convert(name, f.type, raw)
            given_in_file.discard(name)
    for name, value in (cli or {}).items():
        if value is not None and name in known:
            values[name] = _convert(name, known[name].type, value)
            given_in_file.discard(name)
    values.update(_absolute_dirs(values, given_in_file, path, env))
    settings = Settings(**values)
    for name in ("sip_port", "api_port", "tls_port", "weaviate_grpc_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name}: {port} is not a port")
    if settings.max_calls < 1:
        raise ConfigError("max_calls: must be at least 1")
    if settings.asr not in ("pocketsphinx", "whisper", "openai"):
        raise ConfigError(f"asr: expected pocketsphinx, whisper or openai, got {settings.asr!r}")
    if settings.whisper_model_dir and not Path(settings.whisper_model_dir).is_dir():
        raise ConfigError(f"whisper_model_dir: {settings.whisper_model_dir} is not a directory")
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: expected text or json, got {settings.log_format!r}")
    if settings.takeover not in ("on", "off"):
        raise ConfigError(f"takeover: expected on or off, got {settings.takeover!r}")
    if not 0 < settings.heartbeat_s < settings.node_dead_s:
        raise ConfigError("heartbeat_s, node_dead_s: need 0 < heartbeat_s < node_dead_s")
    if settings.tts not in ("espeak", "openai"):
        raise ConfigError(f"tts: expected espeak or openai, got {settings.tts!r}")
    if not 0 <= settings.vad_aggressiveness <= 3:
        raise ConfigError("vad_aggressiveness: must be 0, 1, 2 or 3")
    for name in ("vad_start_ms", "vad_stop_ms"):
        value = getattr(settings, name)
        if value < 20 or value % 20:
            raise ConfigError(f"{name}: must be a multiple of 20 ms, at least 20")
    try:
        targets = TargetPolicy.from_setting(settings.allowed_private_targets)
    except ValueError as exc:
        raise ConfigError(f"allowed_private_targets: {exc}") from exc
    if settings.webhook_url:
        if not settings.webhook_url.startswith(("http://", "https://")):
            raise ConfigError("webhook_url: must be an http:// or https:// URL")
        from switch.backbone.webhooks import webhook_url_refusal  # httpx: only if used

        refusal = webhook_url_refusal(settings.webhook_url, targets)
        if refusal is not None:  # a name is checked at each POST, by what it resolves to
            raise ConfigError(f"webhook_url: {refusal}")
        if not settings.webhook_secret:
            raise ConfigError("webhook_secret: set it with webhook_url (it signs every POST)")
    if settings.transfer_fallback not in ("bridge", "hangup"):
        raise ConfigError("transfer_fallback: expected bridge or hangup")
    if settings.secrets_key and len(settings.secrets_key) < 16:
        raise ConfigError("secrets_key: at least 16 characters (e.g. openssl rand -base64 32)")
    if settings.trunks_reload_s <= 0:
        raise ConfigError("trunks_reload_s: must be above 0")
    if settings.spool_max_mb < 1:
        raise ConfigError("spool_max_mb: must be at least 1")
    if settings.retention_days < 0:
        raise ConfigError("retention_days: must be 0 (keep everything) or more")
    if settings.jobs_visibility_s < 1:
        raise ConfigError("jobs_visibility_s: must be at least 1")
    for name in ("api_max_connections", "api_max_connections_per_source"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    for name in ("api_header_timeout_s", "api_body_timeout_s", "api_idle_timeout_s"):
        if not 0 < getattr(settings, name) < 86400:  # NaN fails too
            raise ConfigError(f"{name}: must be above 0 (seconds, under a day)")
    for path in filter(None, (p.strip() for p in settings.api_public_paths.split(","))):
        if not path.startswith("/") or any(c.isspace() or c in "?#*" for c in path):
            raise ConfigError(f"api_public_paths: {path!r} is not a path (e.g. /metrics)")
    if settings.weaviate_url and not re.match(r"^https?://[^/\s]+/?$", settings.weaviate_url):
        raise ConfigError("weaviate_url: expected http(s)://host:port")
    if not 1 <= settings.kb_top_k <= 50:
        raise ConfigError("kb_top_k: must be 1 to 50")
    if not 0 <= settings.kb_min_similarity < 1:
        raise ConfigError("kb_min_similarity: must be 0 to below 1")
    if settings.kb_timeout_ms < 10:
        raise ConfigError("kb_timeout_ms: must be at least 10")
    if not re.match(r"^[A-Z][A-Za-z0-9_]*$", settings.kb_collection):
        raise ConfigError("kb_collection: a capitalised name of letters, digits and _")
    if settings.record not in ("all", "off"):
        raise ConfigError(f"record: expected all or off, got {settings.record!r}")
    if settings.srtp not in SRTP_POLICIES:
        raise ConfigError(f"srtp: expected required, optional or off, got {settings.srtp!r}")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key: set both (or neither)")
    for name in ("sip_tcp_max_connections", "sip_tcp_max_per_source"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name}: must be 0 (no cap) or more")
    for name in ("sip_tcp_idle_timeout_s", "sip_tcp_message_timeout_s"):
        if not 0 <= getattr(settings, name) <= 86400:  # NaN and infinity fail too
            raise ConfigError(f"{name}: must be 0 (off) to 86400 seconds")
    if not 1024 <= settings.sip_tcp_max_message_bytes <= 1024 * 1024:
        raise ConfigError("sip_tcp_max_message_bytes: must be 1024 to 1048576")
    if settings.max_cps < 0:
        raise ConfigError("max_cps: must be 0 (no ceiling) or more")
    if not 0 <= settings.overload_busy < 1:
        raise ConfigError("overload_busy: a share of the loop's time, 0 (off) to below 1")
    for name in ("overload_lag_ms", "overload_media_late_ms", "ban_s", "auth_failure_window_s"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name}: must be above 0")
    for name in ("overload_retry_after_s", "source_max_rps", "auth_max_failures",
                 "ban_max_unknown_targets", "ban_max_failures"):  # fmt: skip
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name}: must be 0 or more")
    if not 0 < settings.ban_window_s <= 86400:  # NaN fails too
        raise ConfigError("ban_window_s: must be above 0 and at most 86400")
    for name in ("trusted_sources", "trusted_proxies"):
        try:
            parse_networks(getattr(settings, name).split(","))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from exc
    if len(settings.server_header) > 100 or not all(
        " " <= c <= "~" for c in settings.server_header
    ):
        raise ConfigError("server_header: printable ASCII on one line, at most 100 characters")
    inbound_routes(settings)
    if settings.asr_pool_size < 1:
        raise ConfigError("asr_pool_size: must be at least 1")
    if settings.sip_auth_realm:
        auth_users(settings)
        if not auth_algorithms(settings):
            raise ConfigError("sip_auth_algorithms: name at least one algorithm")
        for algorithm in auth_algorithms(settings):
            if algorithm not in AUTH_ALGORITHMS:
                raise ConfigError(
                    f"sip_auth_algorithms: {algorithm!r} is not one of {', '.join(AUTH_ALGORITHMS)}"
                )
    return settings


AUTH_ALGORITHMS = ("SHA-256", "MD5")


def inbound_routes(settings: Settings) -> list[tuple[str, str]]:
    """``inbound_routes`` as (pattern, agent) pairs, each pattern one RE2 takes. Whether
    the agent exists is the node's check (it knows its agents once built)."""
    from switch.trunking.patterns import PatternError, compile_pattern
    from switch.trunking.trunks import AGENT_NAME

    routes: list[tuple[str, str]] = []
    for item in settings.inbound_routes.split():
        pattern, sep, agent = item.rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"inbound_routes: expected PATTERN=AGENT, got {item!r}")
        if not re.match(AGENT_NAME, agent):
            raise ConfigError(f"inbound_routes: {item!r}: {agent!r} is not an agent name")
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            raise ConfigError(f"inbound_routes: {item!r}: {exc}") from None
        routes.append((pattern, agent))
    return routes


def auth_users(settings: Settings) -> dict[str, str]:
    """``sip_auth_users`` as a mapping; every entry must be ``user:password``."""
    users: dict[str, str] = {}
    for entry in settings.sip_auth_users.split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"sip_auth_users: expected user:password, got {user!r}")
        users[user] = password
    if settings.sip_auth_realm and not users:
        raise ConfigError("sip_auth_users: sip_auth_realm is set but there are no users")
    return users


def auth_algorithms(settings: Settings) -> list[str]:
    return [a.strip().upper() for a in settings.sip_auth_algorithms.split(",") if a.strip()]


def settings_fields() -> list[dataclasses.Field[Any]]:
    return list(fields(Settings))
