"""Outbound campaigns: a list of numbers dialed at a steady pace, within limits.

A ``Campaign`` is one asyncio task. It starts calls evenly spaced at ``cps`` (the
same ``Pacer`` as a trunk's), never more than ``max_concurrent`` at once, only
inside its time window, and retries an attempt that ended ``no_answer`` or with a
SIP code in ``retry_on`` after ``backoff_s`` (doubling), up to ``max_attempts``:
never on 486/600/603 (the callee said no). The trunk's own limits still hold: its
calls-per-second pace is applied by the call actor, and a trunk at its call limit
(429) or a full node (503) puts the number back for ``Retry-After``. Pause stops new
calls (those in progress go on), resume goes on, cancel stops for good. With a
``CampaignJournal`` every change is journaled, and a restarted node picks its
campaigns up where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as daytime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator

from actors.call import CallRecord
from actors.outbound import BUSY_CODES
from switch.manager import CallRefused
from switch.trunking.campaign_journal import CampaignJournal, to_keep
from switch.trunking.dialer import CallRequest, Dialer, NoRoute, Pacer
from switch.trunking.trunks import AGENT_NAME, E164, E164_OR_EMPTY, MetadataValue

log = logging.getLogger("voxswitch.campaigns")

NEVER_RETRY = BUSY_CODES  # the callee said no


class CampaignNumber(BaseModel):
    to: str = Field(pattern=E164)
    variables: dict[str, MetadataValue] = Field(default_factory=dict, max_length=32)


class RetryPolicy(BaseModel):
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_s: float = Field(default=60.0, ge=0.5, le=86400.0, description="doubles per retry")
    retry_on: list[int] = Field(
        default_factory=lambda: [408, 480], max_length=20,
        description="SIP codes retried (besides no answer); never 486, 600, 603",
    )  # fmt: skip

    @field_validator("retry_on")
    @classmethod
    def _not_a_refusal(cls, codes: list[int]) -> list[int]:
        for code in codes:
            if not 300 <= code <= 699:
                raise ValueError(f"{code} is not a final error code")
            if code in NEVER_RETRY:
                raise ValueError(f"{code}: the callee refused; it is never retried")
        return codes


class Window(BaseModel):
    """Calls start only between ``start`` and ``end`` (local time in ``timezone``)."""

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name

    def open_at(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone)).time()
        start, end = daytime.fromisoformat(self.start), daytime.fromisoformat(self.end)
        if start <= end:
            return start <= local < end
        return local >= start or local < end  # over midnight


class CampaignBody(BaseModel):
    name: str = Field(default="", max_length=100)
    numbers: list[CampaignNumber] = Field(min_length=1, max_length=100_000)
    from_: str = Field(default="", alias="from", pattern=E164_OR_EMPTY)
    trunk: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    agent: str = Field(default="default", pattern=AGENT_NAME)
    cps: float = Field(default=1.0, gt=0.0, le=1000.0, description="calls started per second")
    max_concurrent: int = Field(default=10, ge=1, le=10_000)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    window: Window | None = None
    ring_timeout_s: float = Field(default=30.0, ge=1.0, le=300.0)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s]{1,2000}$")

    model_config = {"populate_by_name": True, "extra": "forbid"}

    @model_validator(mode="after")
    def _distinct_numbers(self) -> CampaignBody:
        seen = [n.to for n in self.numbers]
        if len(set(seen)) != len(seen):
            raise ValueError("numbers: each number once")
        return self


State = Literal["running", "paused", "canceled", "completed"]


@dataclass
class NumberResult:
    to: str
    variables: dict[str, Any]
    attempts: int = 0
    state: str = "pending"  # pending, dialing, done
    disposition: str = ""
    sip_code: int | None = None
    call_ids: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {"to": self.to, "attempts": self.attempts, "state": self.state,
                "disposition": self.disposition or None, "sip_code": self.sip_code,
                "call_ids": list(self.call_ids)}  # fmt: skip

    def saved(self) -> dict[str, Any]:
        """What the journal keeps of it (the number itself is in the request)."""
        return {"attempts": self.attempts, "state": self.state,
                "disposition": self.disposition, "sip_code": self.sip_code,
                "call_ids": list(self.call_ids)}  # fmt: skip


class Campaign:
    def __init__(
        self,
        body: CampaignBody,
        dialer: Dialer,
        clock: Callable[[], float],
        on_call_end: Callable[[str, Callable[[CallRecord], None]], None],
        journal: CampaignJournal | None = None,
        saved: dict[str, Any] | None = None,
    ) -> None:
        self.id = saved["id"] if saved else uuid.uuid4().hex[:16]
        self.journal = journal
        self.body = body
        self.dialer = dialer
        self.clock = clock
        self.on_call_end = on_call_end  # call id, callback: tells us when a call ended
        self.state: State = "running"
        self.created_at = time.time()
        self.finished_at: float | None = None
        self.numbers = [NumberResult(n.to, dict(n.variables)) for n in body.numbers]
        self.active = 0
        self.max_active_seen = 0
        self.started = 0
        if saved is not None:
            self._restore(saved)
        elif journal is not None:
            journal.created(self.id, self.created_at, body.model_dump(mode="json", by_alias=True))
        # (loop time it may be dialed, order, index): the first attempts in list order.
        self._due: list[tuple[float, int, int]] = [
            (0.0, i, i) for i, n in enumerate(self.numbers) if n.state == "pending"
        ]
        self._order = len(self.numbers)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pacer = Pacer(body.cps, clock)

    def _restore(self, saved: dict[str, Any]) -> None:
        """Take up a journaled campaign: a number being dialed when the node stopped
        lost that attempt (its call ended ``node_restart``); retry it if allowed."""
        self.created_at = saved["created_at"]
        self.state, self.finished_at = saved["state"], saved["finished_at"]
        for index, fields in saved["numbers"].items():
            number = self.numbers[index]
            number.attempts, number.state = fields["attempts"], fields["state"]
            number.disposition, number.sip_code = fields["disposition"], fields["sip_code"]
            number.call_ids = list(fields["call_ids"])
            self.started += number.attempts
            if number.state == "dialing":
                number.disposition = "node_restart"
                retry = number.attempts < self.body.retry.max_attempts
                number.state = "pending" if retry and self.state != "canceled" else "done"
                self._note(index)
        if self.state == "canceled":
            for number in self.numbers:
                if number.state == "pending":
                    number.state, number.disposition = "done", "not_dialed"

    def _note(self, index: int) -> None:
        if self.journal is not None:
            self.journal.number(self.id, index, self.numbers[index].saved())

    def _set_state(self, state: State) -> None:
        self.state = state
        if state in ("canceled", "completed"):
            self.finished_at = time.time()
        if self.journal is not None:
            self.journal.state(self.id, state, self.finished_at)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"campaign {self.id}")

    # ---- control -----------------------------------------------------------------------

    def pause(self) -> None:
        if self.state == "running":
            self._set_state("paused")
            self._wake.set()

    def resume(self) -> None:
        if self.state == "paused":
            self._set_state("running")
            self.pacer = Pacer(self.body.cps, self.clock)  # no burst to catch up
            self._wake.set()

    def cancel(self) -> None:
        if self.state in ("running", "paused"):
            self._set_state("canceled")
            for number in self.numbers:  # (journaled by the state line)
                if number.state == "pending":
                    number.state = "done"
                    number.disposition = number.disposition or "not_dialed"
            self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ---- the dialing loop ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.state in ("running", "paused"):
                delay = self._next_delay()
                if delay is None:
                    if self.active == 0 and not self._due:
                        self._set_state("completed")
                        return
                    await self._sleep(None)
                elif delay > 0:
                    await self._sleep(delay)
                else:
                    self._dial_next()
        except Exception:
            log.exception("campaign %s stopped on an error", self.id)
            self._set_state("canceled")

    def _next_delay(self) -> float | None:
        """Seconds until the next call may start; 0: now; None: wait for an event."""
        if self.state != "running" or not self._due or self.active >= self.body.max_concurrent:
            return None
        now = self.clock()
        window = self.body.window
        if window is not None and not window.open_at(time.time()):
            return 30.0  # look again; a window opens on a minute boundary
        due_at = self._due[0][0]
        if due_at > now:
            return due_at - now
        start_at = self.pacer.peek()
        if start_at > now:
            return start_at - now
        self.pacer.reserve()
        return 0.0

    async def _sleep(self, delay: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _dial_next(self) -> None:
        _, _, index = heapq.heappop(self._due)
        number = self.numbers[index]
        body = self.body
        request = CallRequest(
            to=number.to,
            from_number=body.from_,
            trunk=body.trunk or "",
            agent=body.agent,
            ring_timeout_s=body.ring_timeout_s,
            metadata=dict(number.variables),
            webhook_url=body.webhook_url or "",
            campaign_id=self.id,
        )
        try:
            actor = self.dialer.dial(request)
        except CallRefused as exc:  # the node or trunk is full: the number waits
            self._requeue(index, exc.retry_after_s)
            return
        except NoRoute as exc:
            number.state, number.disposition = "done", "no_route"
            log.info("campaign %s: %s: %s", self.id, number.to, exc)
            self._note(index)
            return
        number.attempts += 1
        number.state = "dialing"
        number.call_ids.append(actor.call_id)
        self.started += 1
        self.active += 1
        self.max_active_seen = max(self.max_active_seen, self.active)
        self._note(index)
        self.on_call_end(actor.call_id, lambda record: self._ended(index, record))

    def _requeue(self, index: int, after_s: float) -> None:
        self._order += 1
        heapq.heappush(self._due, (self.clock() + after_s, self._order, index))

    def _ended(self, index: int, record: CallRecord) -> None:
        self.active -= 1
        number = self.numbers[index]
        number.disposition = record.disposition
        number.sip_code = record.sip_code
        if self._retry(number) and self.state in ("running", "paused"):
            number.state = "pending"
            backoff = self.body.retry.backoff_s * 2 ** (number.attempts - 1)
            self._requeue(index, backoff)
        else:
            number.state = "done"
        self._note(index)
        self._wake.set()

    def _retry(self, number: NumberResult) -> bool:
        policy = self.body.retry
        if number.attempts >= policy.max_attempts or number.sip_code in NEVER_RETRY:
            return False
        if number.disposition == "no_answer":
            return True
        return number.disposition == "failed" and number.sip_code in policy.retry_on

    # ---- the API's view ----------------------------------------------------------------------

    def view(self, *, results: bool = False) -> dict[str, Any]:
        states = Counter(n.state for n in self.numbers)
        dispositions = Counter(n.disposition for n in self.numbers if n.state == "done")
        out: dict[str, Any] = {
            "campaign_id": self.id,
            "name": self.body.name,
            "state": self.state,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "cps": self.body.cps,
            "max_concurrent": self.body.max_concurrent,
            "numbers": len(self.numbers),
            "pending": states["pending"],
            "active": self.active,
            "done": states["done"],
            "calls_started": self.started,
            "max_concurrent_seen": self.max_active_seen,
            "dispositions": dict(dispositions),
        }
        if results:
            out["results"] = [n.view() for n in self.numbers]
        return out


class Campaigns:
    """The node's campaigns, journaled when ``journal`` is given."""

    def __init__(
        self,
        dialer: Dialer,
        clock: Callable[[], float],
        on_call_end: Callable[[str, Callable[[CallRecord], None]], None],
        journal: CampaignJournal | None = None,
    ) -> None:
        self.dialer = dialer
        self.clock = clock
        self.on_call_end = on_call_end
        self.journal = journal
        self.all: dict[str, Campaign] = {}

    def restore(self) -> int:
        """Take up the journal's campaigns (the unfinished ones dial on); how many ran."""
        if self.journal is None:
            return 0
        saved = to_keep(self.journal.load())
        self.journal.rewrite(saved)
        running = 0
        for entry in saved:
            body = CampaignBody.model_validate(entry["body"])
            campaign = Campaign(body, self.dialer, self.clock, self.on_call_end,
                                self.journal, saved=entry)  # fmt: skip
            self.all[campaign.id] = campaign
            if campaign.state in ("running", "paused"):
                campaign.start()
                running += 1
        return running

    def create(self, body: CampaignBody) -> Campaign:
        if body.agent not in self.dialer.manager.voices:
            raise NoRoute("agent", f"no agent named {body.agent!r} on this node")
        if body.trunk and body.trunk not in self.dialer.book.trunks:
            raise NoRoute("trunk", f"no trunk named {body.trunk!r}")
        campaign = Campaign(body, self.dialer, self.clock, self.on_call_end, self.journal)
        self.all[campaign.id] = campaign
        campaign.start()
        return campaign

    async def close(self) -> None:
        for campaign in self.all.values():
            await campaign.stop()
        if self.journal is not None:
            self.journal.close()
