"""A voxswitch node: SIP transports, the call manager, media, and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import json
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from pydantic import ValidationError
from redis.exceptions import RedisError

from actors.agent import AgentBrain
from actors.call import CallActor, CallConfig, CallRecord, LocalAddress
from actors.conversation import Voice
from actors.messages import DtmfRequested, Hangup, SayRequested, TransferRequested
from control_api.app import create_app, make_server
from control_api.connections import ApiLimits
from control_api.keys import ApiKeys
from control_api.metrics import NodeMetrics
from sip.auth import DigestAuthenticator
from sip.message import Message
from sip.sdp import SrtpPolicy
from sip.transport.limits import StreamLimits
from sip.transport.tcp import TcpConnection, TcpServer
from sip.transport.tls import client_context, server_context
from sip.transport.udp import UdpFlow, UdpTransport, start_udp
from switch.agents.catalog import unknown_agent
from switch.backbone.courier import Backbone, build_sinks
from switch.backbone.spool import SpoolInUse
from switch.cluster import build_cluster
from switch.cluster.checkpoints import Checkpointer, CheckpointStore, Snapshot
from switch.cluster.membership import Membership
from switch.cluster.takeover import NodeIdInUse, Takeover, TakeoverConfig
from switch.config import ConfigError, Settings, auth_algorithms, auth_users, inbound_routes
from switch.guard.admission import AdmissionConfig, AdmissionControl
from switch.guard.conduct import ConductLimits
from switch.guard.load import LoadMonitor
from switch.guard.shared import SharedGuardStore
from switch.guard.sources import SourceGuard, SourceLimits
from switch.guard.targets import TargetPolicy
from switch.jobs.analytics import DailyReports
from switch.knowledge import KnowledgeBase, KnowledgeUnavailable, build_knowledge
from switch.knowledge.entries import KnowledgeEntry
from switch.manager import CallManager
from switch.mediaplant.leg import MediaPlant
from switch.trunking.campaign_journal import CampaignJournal
from switch.trunking.campaigns import Campaigns
from switch.trunking.dialer import Dialer
from switch.trunking.monitor import TrunkMonitor
from switch.trunking.store import PostgresTrunkStore, TrunkStoreError
from switch.trunking.trunks import TrunkBook, stored_problem
from switch.voice import build_voices, vad_config
from switch.webrtc.phone import WebPhone

if TYPE_CHECKING:
    from switch.recording.archive import RecordingArchive

log = logging.getLogger("voxswitch.node")
DEFAULT_REALM = "voxswitch"


class DigestUsers(Mapping[str, str]):
    """The digest users: the settings' (``sip_auth_users``), then each trunk's inbound
    user, looked up live."""

    def __init__(self, users: dict[str, str], book: TrunkBook) -> None:
        self.users = users
        self.book = book

    def __getitem__(self, name: str) -> str:
        if name in self.users:
            return self.users[name]
        trunk = self.book.inbound_user(name)
        if trunk is None:
            raise KeyError(name)
        return trunk.inbound_password

    def __iter__(self) -> Iterator[str]:
        yield from self.users
        yield from (t.inbound_username for t in self.book.trunks.values() if t.inbound_password)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# gen 0; gen 1 after every second gen-0 pass (at 10 it held 20-30k objects and took
# 20-50 ms under load: measured with a gc callback); in effect no automatic gen 2.
GC_THRESHOLDS = (1000, 1, 1_000_000)
GC_FULL_EVERY_S = 300.0
BACKBONE_FLUSH_S = 5.0
CHECKPOINT_TTL_MARGIN_S = 120
KNOWLEDGE_RETRY_S = 10.0


class StartupError(Exception):
    """The node cannot start as configured; the message says why in one line."""


def _cannot_listen(what: str, host: str, port: int, exc: OSError) -> str:
    hint = " (another node on this port?)" if exc.errno == errno.EADDRINUSE else ""
    return f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}{hint}"


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.srtp = cast(SrtpPolicy, settings.srtp)  # validated by load_settings
        self.started_at = time.time()
        self.manager: CallManager | None = None
        self.media: MediaPlant | None = None
        self.voice: Voice | None = None
        self.voices: dict[str, Voice | None] = {}
        self.backbone: Backbone | None = None
        self.checkpoints: CheckpointStore | None = None
        self.checkpointer: Checkpointer | None = None
        self.members: Membership | None = None
        self.takeover: Takeover | None = None
        self._takeover_task: asyncio.Task[None] | None = None
        self._handed_over = False  # the drain left its calls to the other nodes
        store = PostgresTrunkStore(settings.postgres_dsn) if settings.postgres_dsn else None
        self.targets = TargetPolicy.from_setting(settings.allowed_private_targets)  # SSRF
        self.book = TrunkBook.load(
            settings.trunks_file or None, store, settings.secrets_key, targets=self.targets
        )
        # What the daily_report job computed, for GET /v1/reports/daily.
        self.reports = DailyReports(settings.postgres_dsn) if settings.postgres_dsn else None
        self.dialer: Dialer | None = None
        self.campaigns: Campaigns | None = None
        self.trunk_monitor: TrunkMonitor | None = None
        self._background: list[asyncio.Task[None]] = []
        self._records: TextIO | None = None
        self._udp: UdpTransport | None = None
        self.archive: RecordingArchive | None = None  # with s3_url
        self.knowledge: KnowledgeBase | None = None
        self._knowledge_pending: dict[str, list[KnowledgeEntry]] = {}
        self._tcp: TcpServer | None = None
        self._tls: TcpServer | None = None
        self._stop = asyncio.Event()
        self.admission: AdmissionControl | None = None
        self.sources: SourceGuard | None = None
        self.shared_guard: SharedGuardStore | None = None
        self.metrics = NodeMetrics(self)

    @property
    def draining(self) -> bool:
        return self.manager is not None and self.manager.draining

    def health(self) -> dict[str, Any]:
        manager = self.manager
        stats = manager.endpoint.stats if manager else None
        return {
            "status": "draining" if self.draining else "ok",
            "node_id": self.settings.name,
            "uptime_s": round(time.time() - self.started_at, 1),
            "active_calls": manager.active_calls if manager else 0,
            "max_calls": self.settings.max_calls,
            "calls_offered": manager.stats.calls_offered if manager else 0,
            "calls_placed": manager.stats.calls_placed if manager else 0,
            "dispositions": dict(manager.stats.dispositions) if manager else {},
            "outbound_dispositions": dict(manager.stats.outbound_dispositions) if manager else {},
            "sip_forbidden": manager.stats.forbidden if manager else 0,
            "refused": dict(manager.stats.refused) if manager else {},
            "admission": self.admission.status() if self.admission else {},
            "guard": self.sources.status() if self.sources else {},
            "trunks": {name: self.trunk_status(name) for name in self.book.trunks},
            "backbone": self.backbone.status() if self.backbone else {},
            "checkpoints": self.checkpointer.status() if self.checkpointer else {},
            "cluster": self.takeover.status() if self.takeover else {},
            "adopted": manager.stats.adopted if manager else 0,
            "archive": self.archive.status() if self.archive else {},
            "knowledge": {
                "store": self.knowledge.kind if self.knowledge else None,
                "pending_agents": sorted(self._knowledge_pending),
            },
            "media": {
                "legs": self.media.active_legs if self.media else 0,
                "playing": self.media.playing_legs if self.media else 0,
                "late_ticks": self.media.late_ticks if self.media else 0,
                "workers": self.media.worker_pids if self.media else [],
                "worker_restarts": self.media.worker_restarts if self.media else 0,
                "tick_lateness_p50_ms": round(self.media.lateness_ms(50), 2) if self.media else 0,
                "tick_lateness_p99_ms": round(self.media.lateness_ms(99), 2) if self.media else 0,
                "tick_lateness_max_ms": round(self.media.lateness_ms(100), 2) if self.media else 0,
            },
            "sip": {
                "received": stats.received if stats else 0,
                "sent": stats.sent if stats else 0,
                "parse_errors": stats.parse_errors if stats else 0,
                "refused_stateless": stats.refused if stats else 0,
                "refusals_repeated": stats.refusals_repeated if stats else 0,
                "dropped": stats.dropped if stats else 0,
                "responses_by_code": dict(stats.by_status_sent) if stats else {},
                "transactions": manager.endpoint.transaction_count if manager else 0,
                # Requests our own code failed on (answered 500): each one is a bug.
                "handler_errors": stats.handler_errors if stats else 0,
                # Read from the UDP socket but dropped: the transport's queue was full.
                "udp_queue_dropped": self._udp.queue_dropped if self._udp else 0,
                # Stream connections: open, opened, refused and closed by reason.
                "tcp_connections": self._tcp.status() if self._tcp else {},
                "tls_connections": self._tls.status() if self._tls else {},
            },
        }

    def _build_guard(self) -> None:
        s = self.settings
        self.admission = AdmissionControl(
            AdmissionConfig(
                max_cps=s.max_cps,
                busy_high=s.overload_busy or float("inf"),
                lag_high_s=s.overload_lag_ms / 1000 if s.overload_busy else float("inf"),
                media_late_high_s=(
                    s.overload_media_late_ms / 1000 if s.overload_busy else float("inf")
                ),
                retry_after_s=s.overload_retry_after_s,
            ),
            time.monotonic(),
        )
        limits = SourceLimits(
            max_rps=s.source_max_rps,
            max_auth_failures=s.auth_max_failures,
            auth_window_s=s.auth_failure_window_s,
            ban_s=s.ban_s,
            scanner_agents=tuple(a.strip() for a in s.scanner_user_agents.split(",")),
            trusted=tuple(s.trusted_sources.split(",")),
            trusted_proxies=tuple(s.trusted_proxies.split(",")),
            conduct=ConductLimits(s.ban_max_unknown_targets, s.ban_max_failures, s.ban_window_s),
        )
        self.sources = SourceGuard(
            limits, clock=time.time, node=s.name,
            is_trunk=lambda ip: self.book.trunk_for_source(ip) is not None,
        )  # fmt: skip
        if s.redis_url:
            self.shared_guard = SharedGuardStore(self.sources, s.redis_url)
            self.sources.store_status = self.shared_guard.status

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self._build_guard()
        local = LocalAddress(s.public_host, s.sip_port, s.tls_port if s.tls_cert else 0)
        self.media = MediaPlant(
            bind_host=s.sip_host,
            ports=s.rtp_ports,
            greeting_file=s.greeting_file or None,
            workers=s.media_workers,
        )
        await self.media.start()
        call_config = CallConfig(
            ring_s=s.ring_ms / 1000.0,
            max_duration_s=s.max_call_duration_s,
            media_timeout_s=s.media_timeout_s,
            node_id=s.name,
        )
        self.knowledge = build_knowledge(s)
        if s.agent != "none" or s.agents_dir:
            await self.knowledge.warm_up()  # the model (~1 s) before the first question
        self.voices, self._knowledge_pending = await build_voices(s, self.knowledge)
        self.voice = self.voices["default"]
        self.book.configure_inbound(self._configured_routes())
        sinks = build_sinks(
            kafka_bootstrap=s.kafka_bootstrap,
            kafka_topic=s.kafka_topic,
            postgres_dsn=s.postgres_dsn,
            events_file=s.events_file,
            node_id=s.name,
            webhook_url=s.webhook_url,
            webhook_secret=s.webhook_secret,
            spool_dir=s.spool_dir,
            webhook_targets=self.targets,
        )
        try:
            self.backbone = Backbone(s.spool_dir, sinks, max_bytes=s.spool_max_mb * 1024 * 1024)
        except SpoolInUse as exc:
            raise StartupError(str(exc)) from None
        self.backbone.start()
        if s.s3_url:
            # Imported only here: boto3 costs a node without an archive ~0.3 s to start.
            from switch.recording.archive import ArchiveConfigError, RecordingArchive, S3Target

            try:
                target = S3Target.from_url(s.s3_url, s.s3_region)
            except ArchiveConfigError as exc:
                raise StartupError(str(exc)) from None
            self.archive = RecordingArchive(
                target, Path(s.recordings_dir), self.backbone.publish, s.name,
                on_archived=self._recording_archived,
            )  # fmt: skip
            self.archive.start()
        self.checkpoints, self.members = build_cluster(s.redis_url, s.cluster)
        # A checkpoint outlives the longest call it can describe, not much more.
        ttl_s = int(s.max_call_duration_s) + CHECKPOINT_TTL_MARGIN_S
        self.checkpointer = Checkpointer(
            self.checkpoints,
            s.name,
            ttl_s,
            lambda: self.manager.live_snapshots() if self.manager is not None else {},
            on_taken=lambda call_id: self.manager.taken_over(call_id) if self.manager else None,
        )
        self.takeover = Takeover(
            TakeoverConfig(
                node_id=s.name, heartbeat_s=s.heartbeat_s, dead_s=s.node_dead_s,
                ttl_s=ttl_s, enabled=s.takeover == "on",
            ),
            self.checkpoints,
            self.members,
            adopt=self._adopt,
            live_ids=lambda: self.manager.live_ids() if self.manager is not None else set(),
            info=self._heartbeat_info,
            accepting=lambda: not self.draining,
        )  # fmt: skip
        try:
            await self.takeover.join()
        except NodeIdInUse as exc:
            raise StartupError(str(exc)) from None
        except (OSError, RedisError) as exc:
            log.warning("cannot check the cluster for this node id (%s); starting anyway", exc)
        if s.records_file:
            self._records = open(s.records_file, "a", encoding="utf-8")  # noqa: SIM115
        # Digest users: the settings' and the trunks' inbound ones (read at each INVITE,
        # so a trunk changed over the API counts at once).
        authenticator = DigestAuthenticator(
            s.sip_auth_realm or DEFAULT_REALM,
            DigestUsers(auth_users(s), self.book),
            algorithms=auth_algorithms(s),
            secret=s.sip_auth_secret.encode() or None,
        )
        self.manager = CallManager(
            loop=loop,
            local=local,
            media_factory=self.media.new_leg,
            call_config=call_config,
            max_calls=s.max_calls,
            on_record=self._record,
            authenticator=authenticator,
            voice=self.voice,
            voices=self.voices,
            vad=vad_config(s),
            publish=self.backbone.publish,
            outbox_full=lambda: self.backbone is not None and self.backbone.full,
            checkpointer=self.checkpointer,
            admission=self.admission,
            sources=self.sources,
            server_header=s.server_header,
            targets=self.targets,
        )
        endpoint = self.manager.endpoint
        if self.book.store is not None:
            # Know the cluster's trunks before the first call or API request (a node
            # that answered /health first showed none for a moment: a CI-clone run).
            await self._load_trunks()
        try:
            self._udp = await start_udp(s.sip_host, s.sip_port, endpoint.process, endpoint.triage)
        except OSError as exc:
            raise StartupError(_cannot_listen("SIP (UDP)", s.sip_host, s.sip_port, exc)) from None
        self.manager.flow_to = self._udp.flow_to
        udp = self._udp
        self.manager.queue_wait = lambda: udp.current_wait
        self.manager.inbound = self
        self.manager.srtp = self.srtp
        self.manager.record_all = s.record == "all"
        self.manager.recordings_dir = s.recordings_dir
        self.manager.record_announcement = s.record_announcement
        self.manager.resume_line = s.takeover_line
        self.dialer = Dialer(
            self.manager, self.book, loop.time, trunk_up=self.trunk_up, srtp=self.srtp
        )
        if s.transfer_fallback == "bridge":
            self.manager.bridge_dialer = self.dialer.dial_bridge
        journal = CampaignJournal(s.campaigns_file) if s.campaigns_file else None
        self.campaigns = Campaigns(self.dialer, loop.time, self.manager.when_ended, journal)
        if restored := self.campaigns.restore():
            log.warning("took up %d unfinished campaigns from %s", restored, s.campaigns_file)
        self.trunk_monitor = TrunkMonitor(
            self.book, endpoint, local, self.manager.connect, loop.time
        )
        self._tcp = self._stream_server("TCP")
        try:
            await self._tcp.start(s.sip_host, s.sip_port)
        except OSError as exc:
            raise StartupError(_cannot_listen("SIP (TCP)", s.sip_host, s.sip_port, exc)) from None
        self.manager.tcp_connect = self._tcp.connect
        await self._start_tls()
        self._takeover_task = loop.create_task(self.takeover.run(), name="takeover")
        self._background = [
            self._takeover_task,
            loop.create_task(self.checkpointer.run(), name="checkpointer"),
            loop.create_task(self._load_monitor().run(), name="load monitor"),
            loop.create_task(self._collect_cycles(), name="cycle collection"),
            loop.create_task(self.trunk_monitor.run(), name="trunk monitor"),
            loop.create_task(self._reload_trunks(), name="trunk reload"),
        ]
        if self.shared_guard is not None:
            self._background.append(loop.create_task(self.shared_guard.run(), name="guard"))
        if self._knowledge_pending:
            self._background.append(
                loop.create_task(self._load_agent_knowledge(), name="agent knowledge")
            )
        tls = f", TLS on {s.tls_port}" if local.tls_port else ""
        log.info(
            "node %s: SIP on %s:%d (UDP, TCP%s), RTP %d-%d, advertising %s",
            s.name,
            s.sip_host,
            s.sip_port,
            tls,
            s.rtp_ports[0],
            s.rtp_ports[1],
            local.host,
        )

    def _stream_server(
        self,
        name: str,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> TcpServer:
        """A SIP TCP or TLS listener bounded by the sip_tcp_ settings: a banned source's
        connections are refused, the guard's exempt sources (trusted, proxies, trunks)
        skip the per-source cap, and a connection a live call runs on is never idle."""
        s, manager, sources = self.settings, self.manager, self.sources
        assert manager is not None
        limits = StreamLimits(
            max_connections=s.sip_tcp_max_connections,
            max_per_source=s.sip_tcp_max_per_source,
            idle_timeout_s=s.sip_tcp_idle_timeout_s,
            message_timeout_s=s.sip_tcp_message_timeout_s,
            max_message_bytes=s.sip_tcp_max_message_bytes,
        )
        return TcpServer(
            self._receive_tcp, name=name, server_ssl=server_ssl, client_ssl=client_ssl,
            limits=limits,
            banned=sources.banned if sources is not None else None,
            unlimited=sources.exempt if sources is not None else None,
            in_use=lambda: {actor.flow for actor in manager.live()},
        )  # fmt: skip

    async def _start_tls(self) -> None:
        """TLS to trunks always (their certificates checked against ``tls_ca`` or the
        system's CAs); a TLS listener when we have a certificate."""
        s = self.settings
        assert self.manager is not None
        try:
            client = client_context(s.tls_cert, s.tls_key, s.tls_ca)
            server = server_context(s.tls_cert, s.tls_key, s.tls_ca) if s.tls_cert else None
        except (OSError, ssl.SSLError) as exc:  # a missing file, a key that does not match
            raise StartupError(f"TLS: cannot load {s.tls_cert or s.tls_ca}: {exc}") from None
        self._tls = self._stream_server("TLS", server_ssl=server, client_ssl=client)
        if server is not None:
            try:
                await self._tls.start(s.sip_host, s.tls_port)
            except OSError as exc:
                raise StartupError(
                    _cannot_listen("SIP (TLS)", s.sip_host, s.tls_port, exc)
                ) from None
        self.manager.tls_connect = self._tls.connect

    def _load_monitor(self) -> LoadMonitor:
        assert self.admission is not None and self.media is not None
        return LoadMonitor(
            self.admission,
            media_lateness=self.media.recent_lateness,
            queue_delay=self._udp.take_queue_delay if self._udp is not None else None,
            on_sample=lambda sample: self.metrics.observe_lag(sample.lag_s),
        )

    async def _collect_cycles(self) -> None:
        """A full cyclic collection every ``GC_FULL_EVERY_S``, put off while overloaded
        (it stops the loop for as long as it walks the heap)."""
        while True:
            await asyncio.sleep(GC_FULL_EVERY_S)
            for _ in range(10):
                if self.admission is None or not self.admission.overloaded:
                    break
                await asyncio.sleep(GC_FULL_EVERY_S / 10)
            began = time.perf_counter()
            found = gc.collect()
            log.info("full cycle collection: %d objects freed in %.0f ms",
                     found, (time.perf_counter() - began) * 1000)  # fmt: skip

    async def _load_agent_knowledge(self) -> None:
        """The agent files' entries the knowledge base could not take at start."""
        assert self.knowledge is not None
        while self._knowledge_pending:
            await asyncio.sleep(KNOWLEDGE_RETRY_S)
            for agent, entries in list(self._knowledge_pending.items()):
                try:
                    await self.knowledge.add(agent, entries)
                except KnowledgeUnavailable as exc:
                    log.warning("knowledge base still unavailable (%s)", exc)
                    break
                log.info("agent %s: %d knowledge entries loaded", agent, len(entries))
                del self._knowledge_pending[agent]

    def _adopt(self, snapshot: Snapshot, from_node: str) -> None:
        """A call claimed from a dead node (or this node's previous run): carry it on,
        or with takeover off end it cleanly."""
        assert self.manager is not None
        if self.settings.takeover == "on":
            self.manager.adopt(snapshot, from_node)
        else:
            self.manager.end_orphan(snapshot, from_node)

    async def _hand_over(self) -> bool:
        """At the end of a drain: leave the calls still up to the cluster's other live
        nodes (a rolling restart drops no call). Their state is saved, the calls end
        here without a BYE, this node's heartbeat goes (it stays a member, silent), and
        within a heartbeat the others adopt them. False when no other node is up (or
        Redis is not): the calls are hung up as before."""
        takeover, checkpointer, manager = self.takeover, self.checkpointer, self.manager
        if self.settings.takeover != "on" or not self.settings.redis_url:
            return False
        assert takeover is not None and checkpointer is not None and manager is not None
        try:
            peers = await takeover.peers()
            if not peers:
                return False
            if self._takeover_task is not None:
                self._takeover_task.cancel()  # no more heartbeats: we are leaving
            await checkpointer.save_all()
        except (OSError, RedisError) as exc:
            log.warning("calls not handed over (%s): hanging them up", exc)
            return False
        count = await manager.release_all()
        await takeover.leave(hand_over=True)
        self._handed_over = True
        log.warning("handed %d calls over to %s", count, ", ".join(peers))
        return True

    def _heartbeat_info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "sip": f"{s.public_host}:{s.sip_port}",
            "api_port": s.api_port,
            "calls": self.manager.active_calls if self.manager else 0,
            "draining": self.draining,
        }

    # ---- the control API's view of the calls ------------------------------------------

    def brains(self) -> dict[str, AgentBrain]:
        """Each agent a call can reach, by name (for typing to it through the API)."""
        return {name: voice.brain for name, voice in self.voices.items() if voice is not None}

    def _configured_routes(self) -> list[tuple[str, str]]:
        """The inbound_routes setting, each naming an agent this node has."""
        routes = inbound_routes(self.settings)
        for pattern, agent in routes:
            if agent not in self.agent_names():
                raise ConfigError(f"inbound_routes: '{pattern}={agent}': "
                                  + unknown_agent(agent, self.agent_names()))  # fmt: skip
        return routes

    def agent_names(self) -> list[str]:
        """The agents that can hold knowledge (``none`` answers nothing)."""
        return [name for name, voice in self.voices.items() if voice is not None]

    def live_calls(self) -> list[CallActor]:
        return self.manager.live() if self.manager is not None else []

    def live_call(self, call_id: str) -> CallActor | None:
        return self.manager.find(call_id) if self.manager is not None else None

    def ended_call(self, call_id: str) -> dict[str, Any] | None:
        return self.manager.recent.get(call_id) if self.manager is not None else None

    def archived_recording(self, location: str) -> Iterator[bytes] | None:
        """An archived recording's bytes (blocking iterator); None without an archive."""
        return self.archive.open(location) if self.archive is not None else None

    def _recording_archived(self, call_id: str, location: str) -> None:
        if self.manager is not None:
            self.manager.recording_archived(call_id, location)

    # ---- trunks ------------------------------------------------------------------------

    async def _reload_trunks(self) -> None:
        """PostgreSQL's trunks and routes every ``trunks_reload_s`` (after the first
        load, which ``start`` waits for)."""
        if self.book.store is None:
            return
        while True:
            await asyncio.sleep(self.settings.trunks_reload_s)
            await self._load_trunks()

    async def _load_trunks(self) -> None:
        try:
            await self.book.reload()
        except TrunkStoreError as exc:
            log.warning("trunks not reloaded (%s); dialing by the last known", exc)
        except ValidationError as exc:  # written by an older node: this one refuses it
            log.warning("trunks not reloaded (%s); dialing by the last known",
                        stored_problem(exc))  # fmt: skip

    # InboundPolicy (the call manager asks)

    def trunk_of_source(self, ip: str) -> str | None:
        trunk = self.book.trunk_for_source(ip)
        return trunk.name if trunk is not None else None

    def trunks_configured(self) -> bool:
        return bool(self.book.trunks)

    def auth_required(self) -> bool:
        return bool(self.settings.sip_auth_realm) or any(
            t.inbound_password for t in self.book.trunks.values()
        )

    def trunk_of_user(self, user: str) -> str | None:
        trunk = self.book.inbound_user(user)
        return trunk.name if trunk is not None else None

    def agent_for(self, number: str) -> str | None:
        return self.book.agent_for(number)

    def srtp_for(self, trunk: str) -> SrtpPolicy:
        found = self.book.trunks.get(trunk)
        return found.srtp if found is not None else self.srtp

    def certificate_for(self, trunk: str) -> str | None:
        found = self.book.trunks.get(trunk)
        return found.peer_name if found is not None and found.tls_client_cert else None

    def record_for(self, trunk: str) -> bool | None:
        found = self.book.trunks.get(trunk)
        return found.record if found is not None else None

    def trunk_full(self, name: str) -> bool:
        return self.dialer is not None and self.dialer.trunk_full(name)

    def trunk_up(self, name: str) -> bool:
        return self.trunk_monitor is None or self.trunk_monitor.up(name)

    def trunk_status(self, name: str) -> dict[str, Any]:
        calls = self.dialer.trunk_calls(name) if self.dialer is not None else 0
        watched = self.trunk_monitor.status(name) if self.trunk_monitor is not None else {}
        return {"up": self.trunk_up(name), "calls": calls, **watched}

    def _receive_tcp(self, message: Message, conn: TcpConnection) -> None:
        assert self.manager is not None
        self.manager.endpoint.receive_message(message, conn)

    def _record(self, record: CallRecord) -> None:
        self.metrics.call_ended(record.turns, record.media)
        # The embedded default: one JSON line per call. PostgreSQL and Kafka come with
        # the backbone.
        if self._records is not None:
            line = dataclasses.asdict(record)
            line["duration_s"] = round(record.duration_s, 3)
            self._records.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._records.flush()
        if record.recording and self.archive is not None:
            try:
                self.archive.submit(record.call_id, record.recording)
            except OSError as exc:
                log.warning("call %s: recording not queued for the archive: %s",
                            record.call_id, exc)  # fmt: skip

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def close_unstarted(self) -> None:
        """What a start that failed half-way had opened: the media workers, the spool."""
        if self.media is not None:
            self.media.close()
        if self.backbone is not None:
            await self.backbone.close()

    async def drain_and_close(self) -> None:
        if self.campaigns is not None:
            await self.campaigns.close()  # no new calls while the node drains
        if self.manager is not None:
            await self.manager.drain(self.settings.drain_grace_s, self._hand_over)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.checkpointer is not None:
            await self.checkpointer.flush()
        if self.takeover is not None and not self._handed_over:
            await self.takeover.leave()
        if self.checkpoints is not None:
            await self.checkpoints.close()
        if self.shared_guard is not None:
            await self.shared_guard.close()
        if self.book.store is not None:
            await self.book.store.close()
        if self._udp is not None:
            await asyncio.sleep(0.2)  # let the last BYEs and 200s leave
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        if self._tls is not None:
            self._tls.close()
        if self.media is not None:
            self.media.close()
        closed: set[int] = set()  # agents share a synthesizer (and maybe a recogniser)
        for voice in self.voices.values():
            if voice is None:
                continue
            for part in (voice.recognizer, voice.synthesizer, voice.brain):
                close = getattr(part, "aclose", None)  # the brain: an HTTP client, maybe
                if close is not None and id(part) not in closed:
                    closed.add(id(part))
                    await close()
        if self._records is not None:
            self._records.close()
        if self.archive is not None:
            await self.archive.stop()  # what waits is uploaded by the next start
        if self.reports is not None:
            await self.reports.close()
        if self.knowledge is not None:
            await self.knowledge.aclose()
        if self.backbone is not None:
            # What the calls just published: give the sinks a moment; the rest stays
            # in the spool for the next start.
            if not await self.backbone.flush(BACKBONE_FLUSH_S):
                log.warning(
                    "stopping with undelivered events in the spool: %s",
                    self.backbone.status()["sinks"],
                )
            await self.backbone.close()


class _ApiCommands:
    """The mailbox messages behind the API's call commands."""

    def hang_up(self) -> Hangup:
        return Hangup("api_hangup", detail="hung up through the API")

    def say(self, text: str) -> SayRequested:
        return SayRequested(text)

    def dtmf(self, digits: str) -> DtmfRequested:
        return DtmfRequested(digits)

    def transfer(self, target: str) -> TransferRequested:
        return TransferRequested(target)


API_COMMANDS = _ApiCommands()


def _tune_gc() -> None:
    """Short cyclic collections, and no automatic full ones, for a heap of thousands
    of live calls.

    Calls are freed by reference counting (an ended call keeps no cycle: the media
    leg and the conversation let go of their actor); the cycle collector only finds
    the rare cycle. What it costs is walking objects: under load the heap holds
    hundreds of thousands (every UDP transaction lives 32 s after its answer), and a
    full collection of them stalled the loop for 300-600 ms, long enough for callers
    to retransmit. So the young generations are collected often and small (a few ms
    each), the old one only by ``collect_cycles`` every few minutes when the node is
    not overloaded, and the objects made at start-up are frozen out of its way.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _api_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts: a port in use is
    a one-line error, not a node without its API."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(_cannot_listen("the HTTP API", host, port, exc)) from None
    sock.set_inheritable(True)
    return sock


async def run_node(settings: Settings) -> int:
    try:
        node = Node(settings)
    except ValidationError as exc:  # trunks_file holds what this version refuses
        print(f"voxswitch: trunks_file {settings.trunks_file}: {stored_problem(exc)}",
              file=sys.stderr)  # fmt: skip
        return 1
    api_sock: socket.socket | None = None
    try:
        if settings.api_port:
            api_sock = _api_socket(settings.api_host, settings.api_port)
        await node.start()
    except (StartupError, ConfigError) as exc:  # a bad agent file: one line, no traceback
        print(f"voxswitch: {exc}", file=sys.stderr)
        if api_sock is not None:
            api_sock.close()
        with contextlib.suppress(Exception):
            await node.close_unstarted()
        return 2 if isinstance(exc, ConfigError) else 1
    _tune_gc()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    api_task: asyncio.Task[None] | None = None
    server = None
    if settings.api_port:
        keys = ApiKeys(settings.api_keys_file or None, settings.api_key)
        app = create_app(
            node, node.metrics, keys=keys, calls=node, commands=API_COMMANDS,
            dialer=node.dialer, trunk_status=node.trunk_status,
            can_sign=bool(settings.webhook_secret), campaigns=node.campaigns,
            guard=node.sources, reports=node.reports.fetch if node.reports else None,
            knowledge=node.knowledge, agents=node.agent_names(), brains=node.brains(),
            phone=WebPhone(node.manager) if node.manager is not None else None,
            public_paths=settings.api_public_paths,
        )  # fmt: skip
        limits = ApiLimits.from_settings(settings)
        server = make_server(app, settings.api_host, settings.api_port, limits)
        api_task = loop.create_task(server.serve(sockets=[api_sock] if api_sock else None))
    await node.wait_stopped()
    log.info("stopping: draining calls")
    await node.drain_and_close()
    if server is not None and api_task is not None:
        server.should_exit = True
        await asyncio.wait([api_task], timeout=5.0)
    log.info("stopped")
    return 0


__all__ = ["Node", "UdpFlow", "run_node"]
