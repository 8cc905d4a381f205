"""The HTTP API, served by the node on its own event loop (FastAPI + uvicorn).

Health (open), Prometheus metrics (scope ``reports:read``, or open when listed in
``api_public_paths``), live calls and their commands, outbound calls, trunks and
routes (``control_api/outbound.py``), all behind API keys. The key is checked and the
body capped before it is read (``control_api/gate.py``); numbers must be finite and
every error is JSON (``control_api/strict.py``); connections are capped and timed
(``control_api/connections.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field

from actors.agent import AgentBrain
from control_api import strict
from control_api.agents import agents_router
from control_api.campaigns import campaign_router
from control_api.connections import ApiLimits, ApiServerConfig
from control_api.console import console_files, phone_router, stream_router
from control_api.gate import ApiGate, bearer_token, key_of, parse_public_paths, unauthorized_detail
from control_api.guard import guard_router
from control_api.keys import ApiKeys
from control_api.knowledge import knowledge_router
from control_api.metrics import CONTENT_TYPE, NodeMetrics
from control_api.outbound import CallBody, CallPlaced, place_call, trunk_router
from control_api.reports import FetchDaily, report_router
from switch.guard.sources import SourceGuard
from switch.knowledge import KnowledgeBase
from switch.trunking.campaigns import Campaigns
from switch.trunking.dialer import Dialer
from switch.trunking.trunks import TrunkBook
from switch.webrtc.phone import WebPhone


class NodeStatus(Protocol):
    def health(self) -> dict[str, Any]: ...

    @property
    def draining(self) -> bool: ...


class LiveCall(Protocol):
    def view(self, *, detail: bool = False) -> dict[str, Any]: ...

    def command(self, message: Any) -> None: ...

    @property
    def has_agent(self) -> bool: ...


class CallControl(Protocol):
    """The node's live calls, as the API steers them."""

    def live_calls(self) -> Sequence[LiveCall]: ...

    def live_call(self, call_id: str) -> LiveCall | None: ...

    def ended_call(self, call_id: str) -> dict[str, Any] | None:
        """A call that ended a short while ago, as it ended (state ``ended``)."""

    def archived_recording(self, location: str) -> Iterator[bytes] | None:
        """An archived recording's bytes, in chunks (blocking); None: no archive."""


class SayBody(BaseModel):
    text: str = Field(min_length=1, max_length=2000, description="what the agent says now")


class DtmfBody(BaseModel):
    digits: str = Field(pattern=r"^[0-9*#A-Da-d]{1,32}$", description="0-9 * # A-D")


class TransferBody(BaseModel):
    target: str = Field(
        pattern=r"^(sips?:[^\s<>]+|tel:\+?[0-9][0-9-]*)$",
        max_length=256,
        description="SIP or tel URI the caller is referred to (blind transfer, REFER)",
    )


class Accepted(BaseModel):
    call_id: str
    status: str


def create_app(
    node: NodeStatus,
    metrics: NodeMetrics | None = None,
    *,
    keys: ApiKeys | None = None,
    calls: CallControl | None = None,
    commands: CallCommands | None = None,
    dialer: Dialer | None = None,
    trunk_status: Any = None,
    can_sign: bool = False,
    campaigns: Campaigns | None = None,
    guard: SourceGuard | None = None,
    reports: FetchDaily | None = None,
    knowledge: KnowledgeBase | None = None,
    agents: Sequence[str] = (),
    brains: Mapping[str, AgentBrain] | None = None,
    phone: WebPhone | None = None,
    public_paths: str = "/health",
) -> FastAPI:
    # Every endpoint is ``async def``: it runs on the node's loop, where the calls live
    # (a plain ``def`` would run in a worker thread and race the actors).
    app = FastAPI(title="voxswitch", version="0.1.0", dependencies=[Depends(strict.finite_numbers)])
    strict.install(app)
    open_paths = parse_public_paths(public_paths)
    app.add_middleware(ApiGate, keys=keys, public_paths=open_paths)

    def require(scope: str) -> Any:
        def check(request: Request, authorization: str | None = Header(default=None)) -> None:
            assert keys is not None
            key = key_of(request.state)  # the gate verified it before the body was read
            if key is None:
                token = bearer_token(request.scope)
                key = keys.verify(token) if token else None
            if key is None:
                raise HTTPException(401, unauthorized_detail(keys),
                                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            if not key.allows(scope):
                raise HTTPException(403, f"this key lacks the scope {scope!r}")

        return Depends(check)

    if metrics is not None:
        # Aggregates without caller data: the reports' scope, unless the path is public.
        keyed = keys is not None and "/metrics" not in open_paths

        @app.get("/metrics", dependencies=[require("reports:read")] if keyed else [])
        async def prometheus() -> Response:
            """The node's counters, gauges and histograms in Prometheus' text format."""
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    # The web console's pages (open: they hold no data; every call they make needs a key).
    app.mount("/console", console_files(), name="console")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the node takes calls; 503 while it drains (so a balancer moves on)."""
        body = node.health()
        return JSONResponse(body, status_code=503 if node.draining else 200)

    if keys is None or calls is None or commands is None:
        return app

    def find(call_id: str) -> LiveCall:
        call = calls.live_call(call_id)
        if call is None:
            raise HTTPException(404, f"no live call {call_id!r}")
        return call

    @app.get("/v1/calls", dependencies=[require("calls:read")])
    async def list_calls(
        state: str | None = Query(
            default=None, pattern="^(queued|dialing|ringing|answered|confirmed)$"
        ),
        direction: str | None = Query(default=None, pattern="^(inbound|outbound)$"),
        trunk: str | None = Query(default=None, max_length=63),
        campaign_id: str | None = Query(default=None, max_length=64),
    ) -> dict[str, Any]:
        """The node's live calls (filter by state, direction, trunk, campaign)."""
        views = [c.view() for c in calls.live_calls()]
        views = [
            v for v in views
            if (state is None or v["state"] == state)
            and (direction is None or v["direction"] == direction)
            and (trunk is None or v["trunk"] == trunk)
            and (campaign_id is None or v["campaign_id"] == campaign_id)
        ]  # fmt: skip
        return {"calls": views, "count": len(views)}

    @app.get("/v1/calls/{call_id}", dependencies=[require("calls:read")])
    async def get_call(call_id: str) -> dict[str, Any]:
        """A call: live (state, timings, transcript so far, turn latencies) or recently
        ended (state ``ended``, its disposition and SIP code)."""
        call = calls.live_call(call_id)
        if call is not None:
            return call.view(detail=True)
        ended = calls.ended_call(call_id)
        if ended is None:
            raise HTTPException(404, f"no call {call_id!r}")
        return ended

    @app.get("/v1/calls/{call_id}/recording", dependencies=[require("recordings:read")])
    async def get_recording(call_id: str) -> Response:
        """The call's recording (stereo WAV: caller left, agent right), once it ended."""
        if calls.live_call(call_id) is not None:
            raise HTTPException(409, f"call {call_id!r} is still going on")
        ended = calls.ended_call(call_id)
        if ended is None:
            raise HTTPException(404, f"no call {call_id!r}")
        recording = ended.get("recording")
        if not recording:
            raise HTTPException(404, f"call {call_id!r} was not recorded")
        headers = {
            "X-Recording-SHA256": recording["sha256"],
            "Content-Disposition": strict.attachment(f"{call_id}.wav"),
        }
        location = str(recording["location"])
        if location.startswith("s3://"):
            try:
                chunks = await asyncio.to_thread(calls.archived_recording, location)
            except Exception as exc:  # the store is down, or the object gone: say so
                raise HTTPException(
                    503, f"the archive did not give {location}: {exc}",
                    headers={"Retry-After": "30"},
                ) from exc  # fmt: skip
            if chunks is None:
                raise HTTPException(410, f"the recording of {call_id!r} is in {location}")
            headers["Content-Length"] = str(recording["bytes"])
            return StreamingResponse(chunks, media_type="audio/wav", headers=headers)
        if not Path(location).is_file():
            raise HTTPException(410, f"the recording of {call_id!r} is no longer here")
        return FileResponse(location, media_type="audio/wav", headers=headers)

    @app.delete("/v1/calls/{call_id}", status_code=202, dependencies=[require("calls:write")])
    async def hang_up(call_id: str) -> Accepted:
        """Hang up: BYE when answered, a final response while it rings."""
        find(call_id).command(commands.hang_up())
        return Accepted(call_id=call_id, status="ending")

    @app.post("/v1/calls/{call_id}/say", status_code=202, dependencies=[require("calls:write")])
    async def say(call_id: str, body: SayBody) -> Accepted:
        """The agent says ``text`` after what it is saying now."""
        call = find(call_id)
        if not call.has_agent:
            raise HTTPException(409, "this call has no voice agent")
        call.command(commands.say(body.text))
        return Accepted(call_id=call_id, status="queued")

    @app.post("/v1/calls/{call_id}/dtmf", status_code=202, dependencies=[require("calls:write")])
    async def dtmf(call_id: str, body: DtmfBody) -> Accepted:
        """Send digits to the caller as RFC 4733 telephone-events."""
        find(call_id).command(commands.dtmf(body.digits.upper()))
        return Accepted(call_id=call_id, status="queued")

    @app.post(
        "/v1/calls/{call_id}/transfer", status_code=202, dependencies=[require("calls:write")]
    )
    async def transfer(call_id: str, body: TransferBody) -> Accepted:
        """Blind transfer with SIP REFER; the call ends transferred or transfer_failed."""
        find(call_id).command(commands.transfer(body.target))
        return Accepted(call_id=call_id, status="transferring")

    if dialer is not None:
        book: TrunkBook = dialer.book

        @app.post(
            "/v1/calls", status_code=202, response_model=CallPlaced,
            dependencies=[require("calls:write")],
            responses={429: {"description": "the trunk is full (Retry-After)"},
                       503: {"description": "the node is full or draining (Retry-After)"}},
        )  # fmt: skip
        async def place(body: CallBody) -> JSONResponse:
            """Place an outbound call: 202 with its call id; follow it at /v1/calls/{id}."""
            return await place_call(dialer, body, can_sign=can_sign)

        route_agents = tuple(dialer.manager.voices)  # "none" too: a route may answer silently
        app.include_router(
            trunk_router(book, require, trunk_status or (lambda _n: {}), route_agents)
        )
    if campaigns is not None:
        app.include_router(campaign_router(campaigns, require, can_sign=can_sign))
    if guard is not None:
        app.include_router(guard_router(guard, require))
    app.include_router(report_router(reports, require))
    app.include_router(stream_router(calls.live_calls, node.health, require))
    if phone is not None:
        app.include_router(phone_router(phone, agents, require))
    if knowledge is not None:
        app.include_router(knowledge_router(knowledge, agents, require))
    if brains is not None:
        app.include_router(agents_router(brains, require))

    return app


class CallCommands(Protocol):
    """The messages the API puts in a call's mailbox."""

    def hang_up(self) -> object: ...

    def say(self, text: str) -> object: ...

    def dtmf(self, digits: str) -> object: ...

    def transfer(self, target: str) -> object: ...


class EmbeddedServer(uvicorn.Server):
    """uvicorn on the node's loop; the node, not uvicorn, owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(
    app: FastAPI, host: str, port: int, limits: ApiLimits | None = None
) -> EmbeddedServer:
    config = ApiServerConfig(
        app, limits=limits or ApiLimits(), host=host, port=port,
        log_level="warning", access_log=False, lifespan="off",
    )  # fmt: skip
    return EmbeddedServer(config)
