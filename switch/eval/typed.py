"""``voxswitch eval --typed``: a suite's lines typed to the agent instead of spoken
(``POST /v1/agents/{name}/reply``): the meaning layer — lookup, intents, fallback —
measured without a recogniser, graded by the same rules as a call.

Each case is one conversation: its lines in order, each with the replies before it as
history. A backchannel (``agent_stops: false``) is not typed: typing cannot talk over
an answer. A line with DTMF is typed as the keypad input a call delivers (``DTMF: 5``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from switch.eval.grade import CaseVerdict, grade_case, said
from switch.eval.runner import Api, Outcome
from switch.eval.suite import Case, Suite


async def typed_case(client: httpx.AsyncClient, api: Api, agent: str, case: Case) -> Outcome:
    history: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    for turn in case.turns:
        if turn.expect.agent_stops is False:
            continue
        text = said(turn) or (f"DTMF: {turn.dtmf}" if turn.dtmf else "")
        if not text:
            continue
        answer = await client.post(
            f"{api.url}/v1/agents/{agent}/reply",
            json={"text": text, "history": history},
            headers={"Authorization": f"Bearer {api.key}"},
        )
        if answer.status_code != 200:
            why = f"the reply API answered {answer.status_code}: {answer.text[:200]}"
            return Outcome(case, CaseVerdict(case.id, False, (), why=(why,)), error=why)
        reply = answer.json()
        tools = [str(a["name"]) for a in reply["actions"]]  # as a call record names them
        turns.append({"caller": text, "agent": reply["text"], "knowledge": reply["knowledge"],
                      "tools": tools})  # fmt: skip
        history += [{"role": "user", "content": text},
                    {"role": "assistant", "content": reply["text"]}]  # fmt: skip
        if tools and tools[-1] in ("hang_up", "transfer"):
            break  # the call would be over (or gone to a person) here
    return Outcome(case, grade_case(case, turns))


async def run_typed(
    suite: Suite,
    api: Api,
    *,
    calls_at_once: int = 1,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    gate = asyncio.Semaphore(max(1, calls_at_once))
    done: dict[str, Outcome] = {}

    async with httpx.AsyncClient(timeout=60.0) as client:

        async def one(case: Case) -> None:
            async with gate:
                try:
                    outcome = await typed_case(client, api, suite.agent.name, case)
                except httpx.HTTPError as exc:
                    why = (f"{type(exc).__name__}: {exc}",)
                    outcome = Outcome(case, CaseVerdict(case.id, False, (), why=why), error=why[0])
                done[case.id] = outcome
                if progress is not None:
                    progress(outcome)

        async with asyncio.TaskGroup() as group:
            for case in suite.cases:
                group.create_task(one(case))
    return [done[c.id] for c in suite.cases if c.id in done]
