"""``voxswitch eval``: a suite's cases as real SIP calls to a node, graded from the
node's call records, N at once; a report as JSON and Markdown.

What is graded from where: the node's record of the call (``GET /v1/calls/{id}``:
what it heard, which knowledge entry it answered from, which tools it used) and what
the caller heard (its latency from the end of each line to the first reply audio, and
whether the agent's voice stopped when the caller cut in).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from media.speech import Pcm, SpeechError
from switch.eval.caller import place_call
from switch.eval.errors import EvalError
from switch.eval.grade import CaseVerdict, grade_case
from switch.eval.plan import script_for, shaped, turn_audio
from switch.eval.result import CallResult
from switch.eval.suite import Case, Suite

RECORD_WAIT_S = 10.0  # the record is final a moment after the call ended

Speak = Callable[[Case, str], Pcm]  # the case's voice saying a text, 8 kHz int16


@dataclass
class Outcome:
    case: Case
    verdict: CaseVerdict
    call: dict[str, Any] = field(default_factory=dict)  # the caller's summary
    error: str = ""


@dataclass
class Api:
    """The node's control API, to read call records."""

    url: str
    key: str

    async def ended_call(self, call_id: str) -> dict[str, Any]:
        """The call's view once it has ended (its turns are final then)."""
        deadline = time.monotonic() + RECORD_WAIT_S
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                headers = {"Authorization": f"Bearer {self.key}"}
                answer = await client.get(f"{self.url}/v1/calls/{call_id}", headers=headers)
                view: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
                if view.get("state") == "ended" or time.monotonic() > deadline:
                    return view
                await asyncio.sleep(0.2)


def _latencies(case: Case, result: CallResult) -> list[float | None]:
    """The caller-ear latency of each turn that expects an answer, in order."""
    replies = result.reply_latencies()
    out: list[float | None] = []
    said = 0
    for turn in case.turns:
        if not turn.parts:
            continue
        reply = replies[said] if said < len(replies) else None
        said += 1
        if turn.expect.agent_stops is not False:
            out.append(reply.latency_s if reply is not None else None)
    return out


def _stopped(case: Case, result: CallResult) -> dict[int, bool]:
    """For each talk-over turn: did the agent's voice stop within a second of it?"""
    spans = [(e.at_s, e.detail) for e in result.timeline if e.kind == "say_start"]
    overs = result.talk_overs()
    out: dict[int, bool] = {}
    said = 0
    for index, turn in enumerate(case.turns):
        if not turn.parts:
            continue
        start = spans[said][0] if said < len(spans) else None
        said += 1
        if turn.over_agent_ms is None or start is None:
            continue
        near = [o for o in overs if abs(o.caller_onset_s - start) < 0.5]
        out[index] = any(o.stopped_after_s is not None and o.stopped_after_s < 1.0 for o in near)
    return out


async def run_case(case: Case, sip_uri: str, api: Api | None, speak: Speak) -> Outcome:
    rng = np.random.default_rng(abs(hash(case.id)) % 2**32)
    audio = [
        shaped(case, await asyncio.to_thread(turn_audio, turn, lambda t: speak(case, t)), rng)
        for turn in case.turns
    ]
    result = await place_call(sip_uri, script_for(case, audio),
                              headers=[("X-Eval-Case", case.id[:64])])  # fmt: skip
    summary = result.summary()
    if not result.answered:
        verdict = CaseVerdict(case.id, False, (), why=(f"not answered: {result.end_reason}",))
        return Outcome(case, verdict, summary, result.error or "")
    view = await api.ended_call(result.call_id) if api is not None else {}
    verdict = grade_case(case, view.get("turns") or [], _latencies(case, result),
                         _stopped(case, result))  # fmt: skip
    return Outcome(case, verdict, summary | {"disposition": view.get("disposition")})


async def run_suite(
    suite: Suite,
    sip_uri: str,
    api: Api | None,
    speak: Speak,
    *,
    calls_at_once: int = 1,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every case as one call, ``calls_at_once`` at a time; outcomes in suite order.
    ``progress`` hears each as it finishes (so a run cut short still has them)."""
    gate = asyncio.Semaphore(max(1, calls_at_once))
    done: dict[str, Outcome] = {}

    async def one(case: Case) -> None:
        async with gate:
            try:
                outcome = await run_case(case, sip_uri, api, speak)
            except (OSError, httpx.HTTPError, ValueError, SpeechError, EvalError) as exc:
                why = (f"{type(exc).__name__}: {exc}",)
                outcome = Outcome(case, CaseVerdict(case.id, False, (), why=why), error=why[0])
            done[case.id] = outcome
            if progress is not None:
                progress(outcome)

    async with asyncio.TaskGroup() as group:  # a bug in one case stops them all
        for case in suite.cases:
            group.create_task(one(case))
    return [done[c.id] for c in suite.cases if c.id in done]


def totals(suite: Suite, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    latencies = [t.latency_s for o in outcomes for t in o.verdict.turns if t.latency_s]
    right = sum(o.verdict.passed for o in outcomes)
    wrong = [w for o in outcomes for w in o.verdict.wrong_actions]
    share = right / len(suite.cases) if suite.cases else 0.0
    passed = share >= suite.pass_mark and (
        suite.max_wrong_actions is None or len(wrong) <= suite.max_wrong_actions
    )
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    return {
        "suite": suite.name, "cases": len(suite.cases), "run": len(outcomes), "right": right,
        "share_right": round(share, 3), "pass_mark": suite.pass_mark,
        "wrong_actions": len(wrong), "passed": passed,
        "turn_latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "turn_latency_p95_s": round(q[18], 3) if q else None,
    }  # fmt: skip


def write_report(folder: Path, suite: Suite, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """report.json and report.md in ``folder``; returns the totals."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = totals(suite, outcomes)
    cases = [o.verdict.to_json() | {"call": o.call, "error": o.error} for o in outcomes]
    (folder / "report.json").write_text(json.dumps({"totals": summary, "cases": cases},
                                                   indent=2, default=str) + "\n")  # fmt: skip
    lines = [
        f"# {suite.name}: {summary['right']}/{summary['cases']} right "
        f"({'PASS' if summary['passed'] else 'FAIL'}, pass mark {suite.pass_mark:.0%})", "",
        f"Turn latency p50 {summary['turn_latency_p50_s']} s, p95 {summary['turn_latency_p95_s']}"
        f" s; wrong actions {summary['wrong_actions']}.", "",
        "| case | verdict | heard | answered from | latency s | why |",
        "| --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for o in outcomes:
        v = o.verdict
        heard = " / ".join(t.heard for t in v.turns if t.heard)[:80]
        entries = " / ".join(",".join(t.entries) or "-" for t in v.turns)
        latency = " / ".join(f"{t.latency_s:.2f}" for t in v.turns if t.latency_s)
        why = "; ".join(v.why)[:160].replace("|", "/")
        lines.append(f"| {v.case_id} | {'right' if v.passed else 'WRONG'} | {heard} | "
                     f"{entries} | {latency} | {why} |")  # fmt: skip
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return summary
