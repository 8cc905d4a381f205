"""The agents' knowledge bases: ``/v1/agents/{name}/kb`` (scopes ``kb:read``, ``kb:write``).

``GET …/kb?offset=&limit=`` lists entries, ``GET …/kb/{id}`` shows one, ``POST …/kb``
adds or replaces entries (``{"entries": [...]}`` or one entry; same id → replaced),
``DELETE …/kb/{id}`` removes one, ``GET …/kb/search?q=&k=`` runs the lookup a call
would (hybrid, thresholded), with its latency. An unknown agent is 404; a bad entry
422 naming the field (``entries[2].text``); the store down 503 with Retry-After.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Response
from fastapi.responses import JSONResponse

from switch.knowledge import KnowledgeBase, KnowledgeError, KnowledgeUnavailable
from switch.knowledge.entries import make_entry

MAX_ENTRIES_PER_POST = 1000
RETRY_AFTER_S = "5"


def _field_error(message: str) -> JSONResponse:
    where, _, why = message.partition(": ")
    loc = ["body", *[p for p in re.split(r"[.\[\]]+", where) if p]]
    return JSONResponse(
        {"detail": [{"loc": [int(p) if p.isdigit() else p for p in loc], "msg": why or message,
                     "type": "value_error"}]},
        status_code=422,
    )  # fmt: skip


def knowledge_router(
    knowledge: KnowledgeBase, agents: Sequence[str], require: Callable[[str], Any]
) -> APIRouter:
    router = APIRouter()
    known = set(agents)

    def agent_of(name: str) -> str:
        if name not in known:
            raise HTTPException(404, f"no agent {name!r} here (agents: {', '.join(sorted(known))})")
        return name

    def unavailable(exc: KnowledgeUnavailable) -> HTTPException:
        return HTTPException(503, f"the knowledge base did not answer: {exc}",
                             headers={"Retry-After": RETRY_AFTER_S})  # fmt: skip

    @router.get("/v1/agents/{name}/kb/search", dependencies=[require("kb:read")])
    async def search(
        name: str,
        q: Annotated[str, Query(min_length=1, max_length=1000, description="the question")],
        k: Annotated[int, Query(ge=1, le=50)] = 3,
    ) -> dict[str, Any]:
        """What a call asking ``q`` would find: the entries over the threshold, best first."""
        hits, lookup = await knowledge.lookup(agent_of(name), q)
        if lookup.error is not None:
            raise HTTPException(503, f"the knowledge base did not answer: {lookup.error}",
                                headers={"Retry-After": RETRY_AFTER_S})  # fmt: skip
        return {
            "agent": name,
            "store": knowledge.kind,
            "lookup_s": lookup.lookup_s,
            "hits": [{**h.entry.as_dict(), "score": round(h.score, 4),
                      "similarity": round(h.similarity, 4)} for h in hits[:k]],
        }  # fmt: skip

    @router.get("/v1/agents/{name}/kb", dependencies=[require("kb:read")])
    async def list_entries(
        name: str,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The agent's entries, by id."""
        try:
            entries, total = await knowledge.entries(agent_of(name), offset, limit)
        except KnowledgeUnavailable as exc:
            raise unavailable(exc) from exc
        return {"agent": name, "store": knowledge.kind, "total": total, "offset": offset,
                "entries": [e.as_dict() for e in entries]}  # fmt: skip

    @router.get("/v1/agents/{name}/kb/{entry_id}", dependencies=[require("kb:read")])
    async def get_entry(name: str, entry_id: str) -> dict[str, Any]:
        try:
            entry = await knowledge.get(agent_of(name), entry_id)
        except KnowledgeUnavailable as exc:
            raise unavailable(exc) from exc
        if entry is None:
            raise HTTPException(404, f"no entry {entry_id!r} in agent {name}'s knowledge")
        return entry.as_dict()

    @router.post("/v1/agents/{name}/kb", dependencies=[require("kb:write")], response_model=None)
    async def add_entries(
        name: str, body: Annotated[Any, Body(description="{entries: [...]} or one entry")]
    ) -> dict[str, Any] | JSONResponse:
        """Add or replace entries: ``id``?, ``title``/``question``, ``text``/``answer``,
        ``questions``? (an entry with an id that exists replaces it)."""
        agent = agent_of(name)
        items = body.get("entries") if isinstance(body, dict) and "entries" in body else None
        try:
            if items is None:
                entries = [make_entry(body, "entry")]
            elif not isinstance(items, list) or not items:
                raise KnowledgeError("entries: must be a non-empty list")
            elif len(items) > MAX_ENTRIES_PER_POST:
                raise KnowledgeError(f"entries: at most {MAX_ENTRIES_PER_POST} per request")
            else:
                entries = [make_entry(item, f"entries[{i}]", "api") for i, item in
                           enumerate(items)]  # fmt: skip
        except KnowledgeError as exc:
            return _field_error(str(exc))
        try:
            await knowledge.add(agent, entries)
        except KnowledgeUnavailable as exc:
            raise unavailable(exc) from exc
        return {"agent": name, "upserted": len(entries), "ids": [e.id for e in entries]}

    @router.delete(
        "/v1/agents/{name}/kb/{entry_id}", status_code=204, dependencies=[require("kb:write")]
    )
    async def remove_entry(name: str, entry_id: str) -> Response:
        try:
            removed = await knowledge.remove(agent_of(name), [entry_id])
        except KnowledgeUnavailable as exc:
            raise unavailable(exc) from exc
        if not removed:
            raise HTTPException(404, f"no entry {entry_id!r} in agent {name}'s knowledge")
        return Response(status_code=204)

    return router
