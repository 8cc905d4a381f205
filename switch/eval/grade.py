"""Grading one case from what the node recorded and what the caller heard (pure).

The rules are docs/eval-suites.md's: a case passes only if every turn does; a turn's
answer must come from ``expect.entry`` and hold every word of ``expect.contains``;
``fallback`` wants an answer from no entry; an action (transfer, hang-up, DTMF out)
the turn did not expect is a *wrong action*, counted for the suite; a backchannel
(``agent_stops: false``) must get no answer of its own; a talk-over with
``agent_stops: true`` must stop the agent; latency is checked where a limit is set.

Turns are matched in order: the node's record has one turn per utterance it answered,
so the suite's turns that expect an answer (all but backchannels) line up with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from switch.eval.suite import Case, Pause, Turn

# The agent's tools (actors/agent.py) as the suite names the actions.
ACTION_OF_TOOL = {"transfer": "transfer", "hang_up": "hangup", "send_dtmf": "dtmf"}
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class TurnVerdict:
    said: str
    heard: str  # what the node's recogniser heard ('' if the turn got no record)
    answer: str
    entries: tuple[str, ...]
    actions: tuple[str, ...]
    latency_s: float | None
    ok: bool
    why: tuple[str, ...] = ()
    recognition_s: float | None = None  # the node's recogniser's time on it (asr_s)


@dataclass(frozen=True)
class CaseVerdict:
    case_id: str
    passed: bool
    turns: tuple[TurnVerdict, ...]
    wrong_actions: tuple[str, ...] = ()
    why: tuple[str, ...] = field(default=())
    cut_offs: int = 0  # answers to part of a line: the agent took a pause for its end
    false_barge_ins: int = 0  # backchannels the agent stopped talking for

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case_id, "passed": self.passed, "why": list(self.why),
            "wrong_actions": list(self.wrong_actions), "cut_offs": self.cut_offs,
            "false_barge_ins": self.false_barge_ins,
            "turns": [t.__dict__ | {"entries": list(t.entries), "actions": list(t.actions),
                                    "why": list(t.why)} for t in self.turns],
        }  # fmt: skip


def said(turn: Turn) -> str:
    return " ".join(p for p in turn.parts if not isinstance(p, Pause))


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def grade_case(
    case: Case,
    record_turns: Sequence[Mapping[str, Any]],
    latencies_s: Sequence[float | None] = (),
    agent_stopped: Mapping[int, bool] | None = None,
) -> CaseVerdict:
    """``record_turns``: the call record's turns (``/v1/calls/{id}`` ``turns``);
    ``latencies_s``: the caller-ear latency of each answered turn, in order;
    ``agent_stopped``: for each talk-over turn (by its index in the case), whether the
    agent stopped talking when the caller cut in."""
    stopped = agent_stopped or {}
    verdicts: list[TurnVerdict] = []
    wrong: list[str] = []
    false_barge_ins = 0
    answered = iter(enumerate(record_turns))
    latencies = list(latencies_s)
    for index, turn in enumerate(case.turns):
        expect = turn.expect
        why: list[str] = []
        if expect.agent_stops is not None and stopped.get(index, expect.agent_stops) != (
            expect.agent_stops
        ):
            false_barge_ins += not expect.agent_stops
            why.append("the agent stopped for a backchannel" if not expect.agent_stops
                           else "the agent did not stop when the caller cut in")  # fmt: skip
        if expect.agent_stops is False:  # a backchannel: no answer of its own
            verdicts.append(TurnVerdict(said(turn), "", "", (), (), None, not why, tuple(why)))
            continue
        position, record = next(answered, (None, None))
        if record is None or position is None:
            why.append("no answer was recorded for this turn")
            verdicts.append(TurnVerdict(said(turn), "", "", (), (), None, False, tuple(why)))
            continue
        entries = tuple(str(e) for e in record.get("knowledge") or ())
        actions = tuple(ACTION_OF_TOOL.get(str(t), str(t)) for t in record.get("tools") or ())
        answer = str(record.get("agent") or "")
        latency = latencies[position] if position < len(latencies) else record.get("latency_s")
        if expect.entry is not None and expect.entry not in entries[:1]:
            why.append(f"answered from {list(entries) or 'no entry'}, not {expect.entry!r}")
        if expect.fallback and entries:
            why.append(f"off-topic, but answered from {list(entries)}")
        missing = [w for w in expect.contains if not words(w) <= words(answer)]
        if missing:
            why.append(f"the answer lacks {missing}")
        for action in actions:
            if action != expect.action:
                wrong.append(f"{action} after {said(turn)[:40]!r}")
                why.append(f"wrong action: {action}")
        if expect.action != "none" and expect.action not in actions:
            why.append(f"expected {expect.action}, none happened")
        limit = expect.max_latency_ms
        if limit is not None and latency is not None and latency * 1000 > limit:
            why.append(f"answered in {latency:.2f} s, over {limit} ms")
        recognition = record.get("asr_s")
        verdicts.append(TurnVerdict(
            said(turn), str(record.get("caller") or ""), answer, entries, actions,
            None if latency is None else float(latency), not why, tuple(why),
            None if recognition is None else float(recognition),
        ))  # fmt: skip
    extra = list(answered)
    case_why = [f"turn {i + 1}: {w}" for i, v in enumerate(verdicts) for w in v.why]
    if extra:
        case_why.append(f"{len(extra)} more answers than the case expects (a cut-off?)")
    passed = not case_why and all(v.ok for v in verdicts)
    return CaseVerdict(case.id, passed, tuple(verdicts), tuple(wrong), tuple(case_why),
                       cut_offs=len(extra), false_barge_ins=false_barge_ins)  # fmt: skip
