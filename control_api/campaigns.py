"""Campaign endpoints: create, follow, pause, resume, cancel (scope ``calls:write``
to change, ``calls:read`` to look)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from control_api.outbound import field_error
from switch.backbone.webhooks import check_webhook_url
from switch.trunking.campaigns import Campaign, CampaignBody, Campaigns
from switch.trunking.dialer import NoRoute


def campaign_router(
    campaigns: Campaigns, require: Callable[[str], Any], *, can_sign: bool
) -> APIRouter:
    router = APIRouter()

    def find(campaign_id: str) -> Campaign:
        campaign = campaigns.all.get(campaign_id)
        if campaign is None:
            raise HTTPException(404, f"no campaign {campaign_id!r}")
        return campaign

    @router.post("/v1/campaigns", status_code=201, dependencies=[require("calls:write")])
    async def create_campaign(body: CampaignBody) -> JSONResponse:
        """Start dialing ``numbers`` at ``cps``, at most ``max_concurrent`` at once."""
        if body.webhook_url and not can_sign:
            return field_error("webhook_url", "the node has no webhook_secret to sign events with")
        if body.webhook_url:  # SSRF: not to the node's own or private addresses, nor metadata
            refusal = await check_webhook_url(body.webhook_url, campaigns.dialer.book.targets)
            if refusal is not None:
                return field_error("webhook_url", refusal, "target_refused")
        try:
            campaign = campaigns.create(body)
        except NoRoute as exc:
            return field_error(exc.field, exc.message, "no_route")
        return JSONResponse(campaign.view(), status_code=201)

    @router.get("/v1/campaigns", dependencies=[require("calls:read")])
    async def list_campaigns() -> dict[str, Any]:
        views = [c.view() for c in campaigns.all.values()]
        return {"campaigns": views, "count": len(views)}

    @router.get("/v1/campaigns/{campaign_id}", dependencies=[require("calls:read")])
    async def get_campaign(
        campaign_id: str, results: bool = Query(default=False, description="per-number results")
    ) -> dict[str, Any]:
        """Progress: numbers pending, active, done; dispositions; per number on request."""
        return find(campaign_id).view(results=results)

    def action(name: str, apply: Callable[[Campaign], None]) -> None:
        @router.post(
            f"/v1/campaigns/{{campaign_id}}/{name}",
            dependencies=[require("calls:write")],
            name=f"{name}_campaign",
        )
        async def act(campaign_id: str) -> dict[str, Any]:
            campaign = find(campaign_id)
            if campaign.state in ("canceled", "completed"):
                raise HTTPException(409, f"campaign {campaign_id} is {campaign.state}")
            apply(campaign)
            return campaign.view()

    action("pause", Campaign.pause)
    action("resume", Campaign.resume)
    action("cancel", Campaign.cancel)
    return router
