"""Grading a target that is not our node (a SIPp UAS, another PBX, a hosted agent) from
what the caller heard: each reply cut out of the received audio, transcribed offline,
and turned into the turns of a call record the grader already reads.

What can be told from the audio alone, and how:

- the answer's words: the reply transcribed (Whisper, no prompt: nothing of the suite
  is suggested to the recogniser);
- the entry it came from: the suite's knowledge entry whose text shares the most words
  with the transcript, when it shares at least :data:`ENTRY_OVERLAP` of that text's
  words (none: the answer counts as a fallback);
- a hang-up: the far end's BYE, charged to the turn being said or waited on when it came.

A transfer cannot be seen from the caller's side of a call (the far end bridges or
REFERs on its own leg): a suite expecting one against a foreign target fails, saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from media.speech import SAMPLE_RATE, Pcm
from switch.eval.result import CallResult
from switch.eval.suite import Case, Suite
from switch.eval.timeline import SAY_START
from switch.knowledge.hybrid import terms

ENTRY_OVERLAP = 0.5  # share of an entry's content words the heard answer must hold


AnswerText = tuple[str, str]  # an entry's id and the text the agent says for it


class Transcriber(Protocol):
    async def transcribe(self, pcm: Pcm) -> str: ...


@dataclass(frozen=True)
class HeardReply:
    text: str
    start_s: float | None  # None: no reply was heard to this line
    end_s: float | None


def content_words(text: str) -> set[str]:
    return set(terms(text))


def closest_entry(answer: str, entries: Sequence[AnswerText]) -> str | None:
    """The entry whose text the heard answer repeats most of (None: no entry's)."""
    heard = content_words(answer)
    best: tuple[float, str] | None = None
    for entry_id, text in entries:
        own = content_words(text)
        if not own:
            continue
        share = len(own & heard) / len(own)
        if share >= ENTRY_OVERLAP and (best is None or share > best[0]):
            best = (share, entry_id)
    return best[1] if best else None


def reply_spans(case: Case, result: CallResult) -> list[tuple[float | None, float | None]]:
    """For each turn that says something, in order: where the reply heard after it
    starts and ends (the next line's start, or the call's end)."""
    says = [e.at_s for e in result.events(SAY_START)]
    replies = result.reply_latencies()
    spoken = [t for t in case.turns if t.parts]
    out: list[tuple[float | None, float | None]] = []
    for i, _ in enumerate(spoken):
        reply = replies[i] if i < len(replies) else None
        start = reply.reply_at_s if reply is not None else None
        end = says[i + 1] if i + 1 < len(says) else result.duration_s
        out.append((start, end if start is not None else None))
    return out


def clip(result: CallResult, start_s: float, end_s: float) -> Pcm:
    a, b = round(start_s * SAMPLE_RATE), round(end_s * SAMPLE_RATE)
    return np.ascontiguousarray(result.received[max(0, a) : max(a, b)])


async def heard_replies(case: Case, result: CallResult, ear: Transcriber) -> list[HeardReply]:
    out = []
    for start, end in reply_spans(case, result):
        if start is None or end is None:
            out.append(HeardReply("", None, None))
            continue
        text = await ear.transcribe(clip(result, start, end))
        out.append(HeardReply(text, start, end))
    return out


def record_turns(
    case: Case,
    result: CallResult,
    replies: Sequence[HeardReply],
    entries: Sequence[AnswerText],
) -> list[dict[str, Any]]:
    """The turns a call record would hold, as far as the caller could tell them: one per
    line that expects an answer (a backchannel's reply is the answer it talked over)."""
    hung_up_at = result.duration_s if result.hangup_by == "callee" else None
    spoken = [t for t in case.turns if t.parts]
    starts = [e.at_s for e in result.events(SAY_START)]
    turns: list[dict[str, Any]] = []
    for i, turn in enumerate(spoken):
        if turn.expect.agent_stops is False:
            continue
        reply = replies[i] if i < len(replies) else HeardReply("", None, None)
        started = starts[i] if i < len(starts) else None
        if started is None:  # the call ended before this line was said
            break
        nxt = starts[i + 1] if i + 1 < len(starts) else None
        ended_here = hung_up_at is not None and (nxt is None or hung_up_at < nxt)
        entry = closest_entry(reply.text, entries) if reply.text else None
        turns.append({
            "caller": "", "agent": reply.text,  # what the far end heard: unknown
            "knowledge": [entry] if entry else [],
            "tools": ["hang_up"] if ended_here else [],
        })  # fmt: skip
    return turns


class WhisperEar:
    """Whisper base without a prompt, one decode at a time (the run's calls share it)."""

    def __init__(self) -> None:
        from media.whisper import WhisperModel

        self._recognizer = WhisperModel().recognizer(())

    async def transcribe(self, pcm: Pcm) -> str:
        return (await self._recognizer.transcribe(pcm)).text

    async def aclose(self) -> None:
        await self._recognizer.aclose()


def suite_entries(suite: Suite) -> list[AnswerText]:
    """The answers the suite's agent has in files (its knowledge files, and the
    knowledge in its agent file): what a heard answer is matched against. An agent
    that only lives on the target (``agent: default``) has none here."""
    from switch.agents.scripted import ScriptedAgent
    from switch.knowledge.loaders import files_under, load_file

    agent = suite.agent
    out = [(e.id, e.text) for path in agent.knowledge
           for f in files_under(path) for e in load_file(f)]  # fmt: skip
    agent_file = agent.agents_dir / f"{agent.name}.yaml" if agent.agents_dir else None
    if agent_file is not None and agent_file.is_file():
        scripted = ScriptedAgent.from_file(agent_file)
        out += [(e.id, e.say) for e in scripted.entries if e.kind == "knowledge"]
    return out
