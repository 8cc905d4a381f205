"""``voxswitch eval``: a suite's cases as real SIP calls to a node, graded from the
node's call records, N at once; a report as JSON and Markdown.

What is graded from where: the node's record of the call (``GET /v1/calls/{id}``:
what it heard, which knowledge entry it answered from, which tools it used) and what
the caller heard (its latency from the end of each line to the first reply audio, and
whether the agent's voice stopped when the caller cut in). A target that is not our
node has no record to read: its replies are transcribed from what the caller heard
(``switch.eval.heard``).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import zlib
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
from switch.eval.heard import AnswerText, Transcriber, heard_replies, record_turns
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
    result: CallResult | None = field(default=None, repr=False)  # the audio, for the report


@dataclass(frozen=True)
class Judge:
    """Where a case's turns are read from: the node's API (our node), or else what the
    caller heard, transcribed by ``ear`` and matched against ``entries``."""

    api: Api | None = None
    ear: Transcriber | None = None
    entries: Sequence[AnswerText] = ()

    async def turns(self, case: Case, result: CallResult) -> list[dict[str, Any]]:
        if self.api is not None:
            view = await self.api.ended_call(result.call_id)
            return list(view.get("turns") or [])
        if self.ear is None:
            raise EvalError("nothing to grade with: neither the node's API nor an ear")
        replies = await heard_replies(case, result, self.ear)
        return record_turns(case, result, replies, self.entries)


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


async def run_case(case: Case, sip_uri: str, judge: Judge, speak: Speak) -> Outcome:
    # The case's own noise, the same in every run (str hash() changes per process).
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    audio = [
        shaped(case, await asyncio.to_thread(turn_audio, turn, lambda t: speak(case, t)), rng)
        for turn in case.turns
    ]
    result = await place_call(sip_uri, script_for(case, audio),
                              headers=[("X-Eval-Case", case.id[:64])])  # fmt: skip
    summary = result.summary()
    if not result.answered:
        verdict = CaseVerdict(case.id, False, (), why=(f"not answered: {result.end_reason}",))
        return Outcome(case, verdict, summary, result.error or "", result)
    turns = await judge.turns(case, result)
    verdict = grade_case(case, turns, _latencies(case, result), _stopped(case, result))
    return Outcome(case, verdict, summary, result=result)


async def run_suite(
    suite: Suite,
    sip_uri: str,
    judge: Judge,
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
                outcome = await run_case(case, sip_uri, judge, speak)
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


def _p(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    if len(values) < 2:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1], 3)


def totals(suite: Suite, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    turns = [t for o in outcomes for t in o.verdict.turns]
    latencies = [t.latency_s for t in turns if t.latency_s]
    recognition = [t.recognition_s for t in turns if t.recognition_s is not None]
    right = sum(o.verdict.passed for o in outcomes)
    wrong = [w for o in outcomes for w in o.verdict.wrong_actions]
    share = right / len(suite.cases) if suite.cases else 0.0
    passed = share >= suite.pass_mark and (
        suite.max_wrong_actions is None or len(wrong) <= suite.max_wrong_actions
    )
    off_topic = [o for o in outcomes if any(t.expect.fallback for t in o.case.turns)]
    return {
        "suite": suite.name, "cases": len(suite.cases), "run": len(outcomes), "right": right,
        "share_right": round(share, 3), "pass_mark": suite.pass_mark,
        "wrong_actions": len(wrong), "passed": passed,
        "turn_latency_p50_s": _p(latencies, 0.5), "turn_latency_p95_s": _p(latencies, 0.95),
        "recognition_p50_s": _p(recognition, 0.5),
        "false_cut_offs": sum(o.verdict.cut_offs for o in outcomes),
        "false_barge_ins": sum(o.verdict.false_barge_ins for o in outcomes),
        "off_topic_right": f"{sum(o.verdict.passed for o in off_topic)}/{len(off_topic)}",
    }  # fmt: skip


def write_report(folder: Path, suite: Suite, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """report.json, report.md, the charts and each call's audio (calls/CASE.wav: the
    caller left, what it heard right) in ``folder``; returns the totals."""
    from switch.eval.charts import draw_charts

    folder.mkdir(parents=True, exist_ok=True)
    summary = totals(suite, outcomes)
    for o in outcomes:
        if o.result is not None and o.result.answered:
            o.result.write_wav(folder / "calls" / f"{o.case.id}.wav")
    charts = draw_charts(folder, outcomes, summary)
    cases = [o.verdict.to_json() | {"call": o.call, "error": o.error} for o in outcomes]
    (folder / "report.json").write_text(json.dumps({"totals": summary, "cases": cases,
                                                    "charts": charts},
                                                   indent=2, default=str) + "\n")  # fmt: skip
    lines = [
        f"# {suite.name}: {summary['right']}/{summary['cases']} right "
        f"({'PASS' if summary['passed'] else 'FAIL'}, pass mark {suite.pass_mark:.0%})", "",
        f"Turn latency p50 {summary['turn_latency_p50_s']} s, p95 {summary['turn_latency_p95_s']}"
        f" s; recognition p50 {summary['recognition_p50_s']} s; wrong actions "
        f"{summary['wrong_actions']}; false cut-offs {summary['false_cut_offs']}; false "
        f"barge-ins {summary['false_barge_ins']}; off-topic right {summary['off_topic_right']}.",
        "",
        *([f"![{c}]({c})" for c in charts] or
          ["(No charts: matplotlib is not installed; `pip install voxswitch[eval]`.)"]), "",
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
