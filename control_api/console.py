"""The web console: its static pages at ``/console``, the live calls as a stream, and
the test phone's WebRTC calls.

The pages (``control_api/console/``: HTML, CSS and one script, no build step) ask the
same API as everyone, with the API key the user typed (kept in the browser session
only). ``GET /v1/stream/calls`` sends the live calls as server-sent events, once a
``interval_s``; the page reads it with ``fetch`` so the key travels in the
Authorization header, not in a URL. ``POST /v1/webrtc/calls`` answers the test
phone's WebRTC offer with a call to an agent (``switch/webrtc``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from control_api.outbound import refused
from switch.manager import CallRefused
from switch.webrtc.phone import WebPhone, WebRtcError

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
STREAM_HEALTH = ("status", "node_id", "active_calls", "max_calls", "calls_offered", "uptime_s")


class Viewable(Protocol):
    def view(self, *, detail: bool = False) -> dict[str, Any]: ...


def console_files() -> StaticFiles:
    return StaticFiles(directory=CONSOLE_DIR, html=True)


def stream_router(
    live_calls: Callable[[], Sequence[Viewable]],
    health: Callable[[], dict[str, Any]],
    require: Callable[[str], Any],
) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/stream/calls", dependencies=[require("calls:read")])
    async def stream_calls(
        request: Request, interval_s: float = Query(default=1.0, ge=0.2, le=30.0)
    ) -> StreamingResponse:
        """The live calls, as server-sent events (``event: calls``) every ``interval_s``:
        ``{"calls": [...as GET /v1/calls...], "node": {...}}``."""

        async def events() -> AsyncIterator[str]:
            while not await request.is_disconnected():
                node = health()
                body = {
                    "calls": [c.view() for c in live_calls()],
                    "node": {k: node.get(k) for k in STREAM_HEALTH},
                }
                yield f"event: calls\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
                await asyncio.sleep(interval_s)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return router


class Offer(BaseModel):
    sdp: str = Field(min_length=10, max_length=60_000, description="the browser's SDP offer")
    type: Literal["offer"] = "offer"
    agent: str = Field(default="default", max_length=64, description="who answers")


class Answer(BaseModel):
    call_id: str
    sdp: str
    type: Literal["answer"] = "answer"


def phone_router(
    phone: WebPhone, agents: Collection[str], require: Callable[[str], Any]
) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/agents", dependencies=[require("calls:read")])
    async def list_agents() -> dict[str, Any]:
        """The agents a call (or the test phone) can talk to."""
        return {"agents": sorted(agents)}

    @router.post(
        "/v1/webrtc/calls", status_code=201, response_model=Answer,
        dependencies=[require("calls:write")],
        responses={400: {"description": "the offer cannot be answered"},
                   503: {"description": "the node is full or draining (Retry-After)"}},
    )  # fmt: skip
    async def web_call(offer: Offer, request: Request) -> Any:
        """The test phone: answer a browser's WebRTC offer with a call to ``agent``."""
        if offer.agent not in agents:
            raise HTTPException(422, [{"loc": ["body", "agent"], "type": "value_error",
                                       "msg": f"no agent named {offer.agent!r}"}])  # fmt: skip
        client = request.client
        remote = (client.host, client.port) if client is not None else ("", 0)
        try:
            answered = await phone.answer(offer.sdp, offer.agent, remote)
        except CallRefused as exc:
            return refused(exc)
        except WebRtcError as exc:
            raise HTTPException(400, str(exc)) from None
        return Answer(call_id=answered.call_id, sdp=answered.sdp)

    @router.post(
        "/v1/webrtc/calls/{call_id}/hangup", status_code=202, dependencies=[require("calls:write")]
    )
    async def hang_up(call_id: str) -> dict[str, str]:
        """The page hung up: the call ends ``completed``."""
        if not phone.hang_up(call_id):
            raise HTTPException(404, f"no live web call {call_id!r}")
        return {"call_id": call_id, "status": "hanging up"}

    return router
