"""The API's outbound side: ``POST /v1/calls`` and the trunks and routes it dials by.

Trunks and routes are the carrier set-up (scope ``admin``); placing a call needs
``calls:write``. A destination no route reaches is a 422 naming ``to`` (or
``trunk``); a call the node or its trunk has no room for is a 429/503 with
``Retry-After``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from switch.backbone.webhooks import check_webhook_url
from switch.guard.targets import system_resolve
from switch.manager import CallRefused
from switch.trunking.dialer import CallRequest, Dialer, NoRoute
from switch.trunking.store import TrunkStoreError
from switch.trunking.trunks import (
    AGENT_NAME,
    E164,
    E164_OR_EMPTY,
    NAME_PATTERN,
    InboundRoute,
    MetadataValue,
    OutboundRoute,
    Trunk,
    TrunkBook,
    trunk_target_refusal,
)

DESTINATION = E164 + r"|^sips?:[^\s<>\"]{3,250}$"  # a number or a SIP URI
HEADER_NAME = re.compile(r"^X-[A-Za-z0-9-]{1,64}$")
T = TypeVar("T")


class CallBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    to: str = Field(pattern=DESTINATION, description="E.164 number (+15551234567) or SIP URI")
    from_: str = Field(
        default="", alias="from", pattern=E164_OR_EMPTY,
        description="caller ID, E.164 (default: the trunk's caller_id)",
    )  # fmt: skip
    trunk: str | None = Field(default=None, pattern=NAME_PATTERN, description="default: routes")
    agent: str = Field(
        default="default", pattern=AGENT_NAME,
        description="default, none (the greeting only), or an agent of agents_dir",
    )  # fmt: skip
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, max_length=32, description="variables for the agent and the record"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, max_length=16, description="X- headers set on the INVITE"
    )
    webhook_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s]{1,2000}$",
        description="this call's lifecycle events are POSTed here too (signed)",
    )  # fmt: skip
    ring_timeout_s: float = Field(default=45.0, ge=1.0, le=300.0)
    record: bool | None = Field(
        default=None, description="record the call (default: the trunk's, else the node's)"
    )

    @field_validator("headers")
    @classmethod
    def _custom_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not HEADER_NAME.match(name):
                raise ValueError(f"{name!r}: only X- headers (X-Name, letters, digits, -)")
            if len(value) > 256 or any(ch in value for ch in "\r\n\0"):
                raise ValueError(f"{name}: at most 256 characters, one line")
        return headers

    @field_validator("metadata")
    @classmethod
    def _small_values(cls, metadata: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        for name, value in metadata.items():
            if not 0 < len(name) <= 64 or (isinstance(value, str) and len(value) > 512):
                raise ValueError(f"{name!r}: names up to 64 characters, values up to 512")
        return metadata

    def request(self) -> CallRequest:
        return CallRequest(
            to=self.to,
            from_number=self.from_,
            trunk=self.trunk or "",
            agent=self.agent,
            ring_timeout_s=self.ring_timeout_s,
            headers=dict(self.headers),
            metadata=dict(self.metadata),
            webhook_url=self.webhook_url or "",
            record=self.record,
        )


class CallPlaced(BaseModel):
    call_id: str
    status: str


def field_error(field: str, message: str, kind: str = "value_error") -> JSONResponse:
    """A 422 shaped like FastAPI's own validation errors, naming the body field."""
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": kind}]}, status_code=422
    )


def refused(exc: CallRefused) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.detail},
        status_code=exc.status,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


async def place_call(dialer: Dialer, body: CallBody, *, can_sign: bool) -> JSONResponse:
    if body.webhook_url and not can_sign:
        return field_error("webhook_url", "the node has no webhook_secret to sign events with")
    if body.webhook_url:  # SSRF: not to the node's own or private addresses, nor metadata
        refusal = await check_webhook_url(body.webhook_url, dialer.book.targets)
        if refusal is not None:
            return field_error("webhook_url", refusal, "target_refused")
    try:
        actor = dialer.dial(body.request())
    except NoRoute as exc:
        return field_error(exc.field, exc.message, "no_route")
    except CallRefused as exc:
        return refused(exc)
    return JSONResponse({"call_id": actor.call_id, "status": "queued"}, status_code=202)


async def stored(change: Awaitable[T]) -> T:
    """A change written through to the trunk store: its outage is a 503, not a 500."""
    try:
        return await change
    except TrunkStoreError as exc:
        raise HTTPException(503, f"trunks not saved: {exc}", headers={"Retry-After": "5"}) from exc


def trunk_router(
    book: TrunkBook,
    require: Callable[[str], Any],
    status: Callable[[str], Any],
    agents: Collection[str],
) -> APIRouter:
    """CRUD for trunks and routes; each change is saved (write-through) at once."""
    router = APIRouter(dependencies=[require("admin")])
    name_param = Path(pattern=NAME_PATTERN)

    def missing(kind: str, name: str) -> HTTPException:
        return HTTPException(404, f"no {kind} named {name!r}")

    def from_config(name: str) -> HTTPException:
        return HTTPException(409, f"inbound route {name!r} comes from the inbound_routes "
                                  "setting: change it there")  # fmt: skip

    @router.get("/v1/trunks")
    async def list_trunks() -> dict[str, Any]:
        """Every trunk, with its status (up/down, registration)."""
        return {"trunks": [{**t.public(), "status": status(t.name)} for t in book.trunks.values()]}

    @router.get("/v1/trunks/{name}")
    async def get_trunk(name: str = name_param) -> dict[str, Any]:
        trunk = book.trunks.get(name)
        if trunk is None:
            raise missing("trunk", name)
        return {**trunk.public(), "status": status(name)}

    @router.put("/v1/trunks/{name}")
    async def put_trunk(body: Trunk, name: str = name_param) -> dict[str, Any]:
        """Create or replace a trunk (the password is kept when sent as ********)."""
        old = book.trunks.get(name)
        kept = {  # a secret sent back as shown stays what it was (and where it came from)
            field: getattr(old, field)
            for secret in ("password", "inbound_password")
            if old is not None and getattr(body, secret) == "********"
            for field in (secret, secret + "_env", secret + "_file")
        }
        trunk = body.model_copy(update={"name": name, **kept})
        refusal = await trunk_target_refusal(trunk, book.targets, system_resolve)
        if refusal is not None:  # SSRF: the node is not sent to its own or private hosts
            raise HTTPException(422, [{"loc": ["body", refusal[0]], "type": "target_refused",
                                       "msg": refusal[1]}])  # fmt: skip
        await stored(book.put_trunk(trunk))
        return {**trunk.public(), "status": status(name)}

    @router.delete("/v1/trunks/{name}", status_code=204)
    async def delete_trunk(name: str = name_param) -> None:
        if name not in book.trunks:
            raise missing("trunk", name)
        used = [r.name for r in book.outbound.values() if name in r.trunks]
        if used:
            raise HTTPException(409, f"trunk {name!r} is used by routes {used}")
        await stored(book.delete_trunk(name))

    @router.get("/v1/routes/outbound")
    async def list_outbound_routes() -> dict[str, Any]:
        """Outbound routes: destination prefix -> trunks, tried in order."""
        return {"routes": [r.model_dump() for r in book.outbound.values()]}

    @router.put("/v1/routes/outbound/{name}")
    async def put_outbound_route(body: OutboundRoute, name: str = name_param) -> dict[str, Any]:
        unknown = [t for t in body.trunks if t not in book.trunks]
        if unknown:
            raise HTTPException(422, [{"loc": ["body", "trunks"], "type": "value_error",
                                       "msg": f"no trunks named {unknown}"}])  # fmt: skip
        route = body.model_copy(update={"name": name})
        await stored(book.put_route(route))
        return route.model_dump()

    @router.get("/v1/routes/inbound")
    async def list_inbound_routes() -> dict[str, Any]:
        """Inbound routes: dialed-number pattern -> the agent that answers. ``source``:
        ``api`` (changed here), or ``config`` (the inbound_routes setting, tried after)."""
        tables = (("api", book.inbound), ("config", book.configured))
        return {"routes": [{**r.model_dump(), "source": source}
                           for source, routes in tables for r in routes.values()]}  # fmt: skip

    @router.put("/v1/routes/inbound/{name}")
    async def put_inbound_route(body: InboundRoute, name: str = name_param) -> dict[str, Any]:
        if name in book.configured:
            raise from_config(name)
        if body.agent not in agents:
            raise HTTPException(422, [{"loc": ["body", "agent"], "type": "value_error",
                                       "msg": f"no agent named {body.agent!r}"}])  # fmt: skip
        route = body.model_copy(update={"name": name})
        await stored(book.put_route(route))
        return route.model_dump()

    @router.delete("/v1/routes/{kind}/{name}", status_code=204)
    async def delete_route(kind: Literal["outbound", "inbound"], name: str = name_param) -> None:
        if kind == "inbound" and name in book.configured:
            raise from_config(name)
        if not await stored(book.delete_route(kind, name)):
            raise missing(f"{kind} route", name)

    return router
