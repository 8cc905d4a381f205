"""Call lifecycle events: what the node publishes (Kafka) and records (PostgreSQL).

Every event is a JSON object with ``type``, ``event_id`` (a UUID, the idempotency key),
``call_id``, ``ts`` (epoch seconds), ``schema_version`` and ``node_id``, plus the fields
of its type (``schemas/call-events.v1.json`` is the contract, checked by the tests).
Events of one call are published with the call id as the Kafka key, so they stay in
order on one partition.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from actors.call import CallRecord

SCHEMA_VERSION = 1
TYPES = (
    "call.offered",
    "call.answered",
    "call.turn",
    "call.dtmf",
    "call.transferred",
    "call.adopted",
    "call.ended",
    "call.recorded",
    "call.archived",
    "call.transcribed",
)
# Events a batch job makes get ids derived from what they say (``stable_id``): a job
# that runs twice (a worker killed before it acknowledged) publishes the same event.
_JOB_NAMESPACE = uuid.UUID("6f1c3a52-8d2e-4b71-9a0c-5e7d1b2f4c90")


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(_JOB_NAMESPACE, "/".join(parts)))


def event(
    kind: str,
    call_id: str,
    node_id: str,
    ts: float | None = None,
    *,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    if kind not in TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return {
        "type": kind,
        "event_id": event_id or str(uuid.uuid4()),
        "call_id": call_id,
        "ts": time.time() if ts is None else ts,
        "schema_version": SCHEMA_VERSION,
        "node_id": node_id,
        **fields,
    }


def offered(record: CallRecord) -> dict[str, Any]:
    return event(
        "call.offered",
        record.call_id,
        record.node_id,
        record.offered_at,
        direction=record.direction,
        from_uri=record.from_uri,
        to_uri=record.to_uri,
        trunk=record.trunk,
        sip_headers=record.sip_headers,
        metadata=record.metadata,
        campaign_id=record.campaign_id,
    )


def answered(record: CallRecord) -> dict[str, Any]:
    return event("call.answered", record.call_id, record.node_id, record.answered_at,
                 codec=record.codec)  # fmt: skip


def transferred(record: CallRecord, target: str) -> dict[str, Any]:
    return event("call.transferred", record.call_id, record.node_id, target=target,
                 status=record.transfer_status)  # fmt: skip


def adopted(record: CallRecord, from_node: str, rebind_s: float | None) -> dict[str, Any]:
    """Another node took the call over (``node_id``, from ``from_node``, which died):
    the caller's media moved here ``rebind_s`` after our re-INVITE."""
    return event("call.adopted", record.call_id, record.node_id, from_node=from_node,
                 nodes=list(record.nodes),
                 rebind_s=None if rebind_s is None else round(rebind_s, 4))  # fmt: skip


def ended(record: CallRecord) -> list[dict[str, Any]]:
    """The call's turns and DTMF (as the conversation kept them), then ``call.ended``
    (and ``call.recorded`` when it was recorded)."""
    node, call = record.node_id, record.call_id
    events = [
        event(
            "call.turn",
            call,
            node,
            record.ended_at,
            index=turn["index"],
            source=turn["source"],
            caller_text=turn["caller"],
            agent_text=turn["agent"],
            interrupted=turn["interrupted"],
            tools=turn["tools"],
            latency_s=turn.get("latency_s"),
            asr_s=turn.get("asr_s"),
            llm_first_token_s=turn.get("llm_first_token_s"),
            tts_first_audio_s=turn.get("tts_first_audio_s"),
            knowledge=turn.get("knowledge", []),
            kb_s=turn.get("kb_s"),
            knowledge_error=turn.get("knowledge_error"),
        )
        for turn in record.turns
    ]
    if record.dtmf:
        events.append(event("call.dtmf", call, node, record.ended_at, digits=record.dtmf))
    events.append(
        event(
            "call.ended",
            call,
            node,
            record.ended_at,
            direction=record.direction,
            from_uri=record.from_uri,
            to_uri=record.to_uri,
            trunk=record.trunk,
            agent=record.agent,
            offered_at=record.offered_at,
            answered_at=record.answered_at,
            ended_at=record.ended_at,
            duration_s=round(record.duration_s, 3),
            disposition=record.disposition,
            sip_code=record.sip_code,
            reason=record.reason,
            codec=record.codec,
            packets_sent=record.packets_sent,
            packets_received=record.packets_received,
            media=record.media,
            metadata=record.metadata,
            campaign_id=record.campaign_id,
            nodes=list(record.nodes),
        )
    )
    if record.recording:
        events.append(event("call.recorded", call, node, record.ended_at, **record.recording))
    return events
