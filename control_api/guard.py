"""Ban endpoints (scope ``admin``): the sources the guard has banned, ban one by hand,
lift one. With Redis the list is the cluster's and a change reaches every node
within a second."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, field_validator

from switch.guard.sources import SourceGuard


class BanBody(BaseModel):
    ip: str = Field(description="the source address to ban (IPv4 or IPv6)")
    duration_s: float = Field(default=600.0, gt=0, le=30 * 86400)

    @field_validator("ip")
    @classmethod
    def an_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError as exc:
            raise ValueError(f"not an IP address: {value!r}") from exc


def guard_router(guard: SourceGuard, require: Callable[[str], Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/bans", dependencies=[require("admin")])
    async def list_bans() -> dict[str, Any]:
        """Sources whose packets are dropped now: why, since and until when (Unix time)."""
        bans = [ban.view() for ban in guard.active_bans()]
        return {"bans": bans, "count": len(bans)}

    @router.post("/v1/bans", status_code=201, dependencies=[require("admin")])
    async def add_ban(body: BanBody) -> dict[str, Any]:
        return guard.ban(body.ip, "api", body.duration_s).view()

    @router.delete("/v1/bans/{ip}", dependencies=[require("admin")])
    async def lift_ban(ip: str) -> dict[str, Any]:
        if not guard.lift(ip):
            raise HTTPException(404, f"{ip!r} is not banned")
        return {"ip": ip, "status": "lifted"}

    return router
