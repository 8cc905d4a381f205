"""``GET /metrics``: the node in Prometheus' text format (prometheus-client).

Counters and gauges are read from the node's own state when Prometheus scrapes (a
custom collector: nothing is counted twice on the hot path). Histograms are observed
as calls end: the turn latency (end of caller speech → first reply packet) and each
call's RTP loss and jitter. The event loop's lag comes from the load monitor (ten samples a second).
Calls per second: ``rate(voxswitch_calls_offered_total[1m])``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TURN_LATENCY_BUCKETS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0)
JITTER_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class NodeState(Protocol):
    def health(self) -> dict[str, Any]: ...


class NodeMetrics:
    """The node's registry: the collector over its state, and the histograms."""

    def __init__(self, node: NodeState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(node))
        self.turn_latency = Histogram(
            "voxswitch_turn_latency_seconds",
            "End of the caller's speech to the first reply packet on the wire",
            buckets=TURN_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rtp_loss = Histogram(
            "voxswitch_rtp_loss_ratio",
            "Per call, the share of the caller's RTP packets lost (RFC 3550)",
            buckets=LOSS_BUCKETS,
            registry=self.registry,
        )
        self.rtp_jitter = Histogram(
            "voxswitch_rtp_jitter_seconds",
            "Per call, the interarrival jitter of the caller's RTP (RFC 3550)",
            buckets=JITTER_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "voxswitch_event_loop_lag_seconds",
            "How late a timer of the node's event loop fires",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.last_lag = 0.0

    def call_ended(self, turns: Iterable[dict[str, Any]], media: dict[str, Any]) -> None:
        for turn in turns:
            latency = turn.get("latency_s")
            if latency is not None:
                self.turn_latency.observe(latency)
        loss = media.get("rx_loss_pct")
        if loss is not None:
            self.rtp_loss.observe(loss / 100.0)
        jitter = media.get("rx_jitter_ms")
        if jitter is not None:
            self.rtp_jitter.observe(jitter / 1000.0)

    def observe_lag(self, lag_s: float) -> None:
        """The load monitor's sample: how much later than asked its timer ran."""
        self.last_lag = lag_s
        self.loop_lag.observe(lag_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, node: NodeState) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        h = self.node.health()
        yield _gauge("voxswitch_up", "1 while the node takes calls, 0 while it drains",
                     1 if h.get("status") == "ok" else 0)  # fmt: skip
        yield _gauge("voxswitch_active_calls", "Calls in progress", h.get("active_calls", 0))
        yield _gauge("voxswitch_max_calls", "Admission limit", h.get("max_calls", 0))
        yield _counter("voxswitch_calls_offered", "INVITEs that started a call",
                       h.get("calls_offered", 0))  # fmt: skip
        yield _counter("voxswitch_calls_placed", "Outbound calls started (API, campaigns)",
                       h.get("calls_placed", 0))  # fmt: skip
        ended = CounterMetricFamily(
            "voxswitch_calls_ended", "Calls ended, by direction and disposition",
            labels=["direction", "disposition"],
        )  # fmt: skip
        for direction, key in (("inbound", "dispositions"), ("outbound", "outbound_dispositions")):
            for disposition, count in sorted(h.get(key, {}).items()):
                ended.add_metric([direction, disposition], count)
        yield ended
        yield _counter("voxswitch_sip_forbidden", "INVITEs from no trunk's address (403)",
                       h.get("sip_forbidden", 0))  # fmt: skip
        trunk_up = GaugeMetricFamily("voxswitch_trunk_up", "1 while a trunk answers its "
                                     "keepalives (or has none)", labels=["trunk"])  # fmt: skip
        trunk_calls = GaugeMetricFamily(
            "voxswitch_trunk_calls", "Calls in progress through a trunk", labels=["trunk"]
        )
        registered = GaugeMetricFamily(
            "voxswitch_trunk_registered", "1 while registered with the carrier", labels=["trunk"]
        )
        for name, trunk in sorted(h.get("trunks", {}).items()):
            trunk_up.add_metric([name], 1 if trunk["up"] else 0)
            trunk_calls.add_metric([name], trunk["calls"])
            registration = trunk.get("registration")
            if registration is not None:
                registered.add_metric([name], 1 if registration["state"] == "registered" else 0)
        yield from (trunk_up, trunk_calls, registered)
        sip = h.get("sip", {})
        responses = CounterMetricFamily(
            "voxswitch_sip_responses_sent", "SIP responses sent, by status code", labels=["code"]
        )
        for code, count in sorted(sip.get("responses_by_code", {}).items()):
            responses.add_metric([str(code)], count)
        yield responses
        yield _counter("voxswitch_sip_parse_errors", "Unparseable SIP messages",
                       sip.get("parse_errors", 0))  # fmt: skip
        media = h.get("media", {})
        yield _gauge("voxswitch_media_legs", "RTP legs open", media.get("legs", 0))
        lateness = GaugeMetricFamily(
            "voxswitch_media_tick_lateness_seconds",
            "How late the last packet of a 20 ms tick left, over the last minute",
            labels=["quantile"],
        )
        for q, key in (("0.5", "tick_lateness_p50_ms"), ("0.99", "tick_lateness_p99_ms")):
            lateness.add_metric([q], media.get(key, 0.0) / 1000.0)
        yield lateness
        yield _counter("voxswitch_media_worker_restarts", "Media workers replaced",
                       media.get("worker_restarts", 0))  # fmt: skip
        backbone = h.get("backbone", {})
        depth = GaugeMetricFamily(
            "voxswitch_outbox_depth", "Events waiting in the spool, by sink", labels=["sink"]
        )
        up = GaugeMetricFamily("voxswitch_sink_up", "1 while a sink delivers", labels=["sink"])
        failures = CounterMetricFamily(
            "voxswitch_sink_failures", "Failed deliveries (retried), by sink", labels=["sink"]
        )
        for name, sink in sorted(backbone.get("sinks", {}).items()):
            depth.add_metric([name], sink["depth"])
            up.add_metric([name], 1 if sink["up"] else 0)
            failures.add_metric([name], sink["failures"])
        yield from (depth, up, failures)
        yield _gauge("voxswitch_outbox_bytes", "Bytes of undelivered events in the spool",
                     backbone.get("spool_bytes", 0))  # fmt: skip
        yield from _protection(h)
        checkpoints = h.get("checkpoints", {})
        yield _gauge("voxswitch_checkpoints_up", "1 while checkpoints are saved",
                     1 if checkpoints.get("up", True) else 0)  # fmt: skip
        yield _counter("voxswitch_checkpoint_failures", "Checkpoint rounds that failed",
                       checkpoints.get("failures", 0))  # fmt: skip
        cluster = h.get("cluster", {})
        yield _gauge("voxswitch_cluster_heartbeat_up",
                     "1 while the node's heartbeat reaches Redis (0: the others adopt its calls)",
                     1 if cluster.get("heartbeat_up", True) else 0)  # fmt: skip
        yield _counter("voxswitch_calls_adopted", "Calls taken over from a node that died "
                       "(or from this node's previous run)", h.get("adopted", 0))  # fmt: skip


def _protection(h: dict[str, Any]) -> Iterator[Metric]:
    """Overload control and the source guard."""
    refused = CounterMetricFamily(
        "voxswitch_calls_refused",
        "New INVITEs refused (503) before any call work, or requests dropped for their "
        "source, by reason (overload, sojourn, max_cps, max_calls, draining, backlog, "
        "source_rate, source_scanner, source_auth)",
        labels=["reason"],
    )
    for reason, count in sorted(h.get("refused", {}).items()):
        refused.add_metric([reason], count)
    yield refused
    admission = h.get("admission", {})
    limit = admission.get("limit_cps")
    yield _gauge("voxswitch_admission_limit_cps", "New INVITEs per second admitted now "
                 "(-1: no limit)", -1 if limit is None else limit)  # fmt: skip
    yield _gauge("voxswitch_overloaded", "1 while the node measures itself overloaded",
                 1 if admission.get("overloaded") else 0)  # fmt: skip
    yield _gauge("voxswitch_event_loop_busy_ratio", "Share of the last 100 ms the event "
                 "loop's thread ran on a CPU", admission.get("loop_busy", 0.0))  # fmt: skip
    sip = h.get("sip", {})
    yield _counter("voxswitch_sip_refusals_repeated", "Retransmitted INVITEs answered from "
                   "the refusal cache", sip.get("refusals_repeated", 0))  # fmt: skip
    yield _counter("voxswitch_sip_dropped", "Packets and requests dropped unanswered "
                   "(banned sources, scanners)", sip.get("dropped", 0))  # fmt: skip
    guard = h.get("guard", {})
    yield _gauge("voxswitch_bans_active", "Source addresses banned now",
                 guard.get("bans_active", 0))  # fmt: skip
    bans = CounterMetricFamily("voxswitch_bans", "Bans made by this node, by reason",
                               labels=["reason"])  # fmt: skip
    for reason, count in sorted(guard.get("bans_made", {}).items()):
        bans.add_metric([reason], count)
    yield bans


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
