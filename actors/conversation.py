"""The conversation a call actor runs: greeting, turns, barge-in, tools.

A turn: the caller speaks → the VAD decides they stopped → the recogniser gives
text → the brain streams a reply → each sentence is synthesised and queued for
playout as soon as it is complete, so the caller hears the first sentence while
the rest is still being written. Barge-in: caller speech while the agent talks
holds playout at once (the next 20 ms frame is silence); if the caller goes on for
``barge_in_min_s`` the reply is dropped, the turn's work cancelled and the reply
recorded as interrupted; a shorter sound ("uh-huh", a cough) lets playout resume.

The state (turns, transcript, step) lives here, in the actor: it is what a
checkpoint saves. The media session (a ``SessionControl``) is the sans-I/O
``MediaSession`` on the same loop, or the proxy of one in a media worker process; its
events arrive through the actor's mailbox either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.agent import AgentBrain, ChatMessage, KnowledgeUsed, ToolCall
from media.dtmf import DtmfDigit
from media.playout import UtteranceFinished, UtteranceInterrupted, UtteranceStarted
from media.session import MediaEvent, PlayoutHeld, SessionControl, UtteranceCaptured
from media.speech import Pcm, SpeechRecognizer, SpeechSynthesizer

log = logging.getLogger("voxswitch.conversation")

# A sentence ends at . ! ? (or a newline) followed by space; "3.50" does not end one.
PLAYOUT_TAIL_S = 0.3  # after the last frame of a goodbye, before the BYE or REFER
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class Voice:
    """The speech engines and brain a node shares between its calls."""

    recognizer: SpeechRecognizer
    synthesizer: SpeechSynthesizer
    brain: AgentBrain
    barge_in_min_s: float = 0.3
    _cache: dict[str, asyncio.Future[Pcm]] = field(default_factory=dict)

    async def speech(self, text: str, *, cache: bool = False) -> Pcm:
        """Synthesise ``text``; fixed phrases (greeting, goodbye) once per node — also
        when a burst of calls asks for one before its first synthesis is done (at
        900 calls/s, each call's greeting queued on the one espeak thread otherwise)."""
        if not cache:
            return await self.synthesizer.synthesize(text)
        future = self._cache.get(text)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.ensure_future(self.synthesizer.synthesize(text))
            self._cache[text] = future
        # Shielded: a call that hangs up mid-synthesis must not cancel it for the others.
        return await asyncio.shield(future)


@dataclass
class TurnMetrics:
    """Seconds on the loop clock; ``latency_s`` is what the caller hears as the pause."""

    speech_ended_at: float | None = None  # caller's last voiced frame
    decided_at: float | None = None  # VAD end-of-speech decision
    asr_s: float | None = None
    llm_first_token_s: float | None = None
    tts_first_audio_s: float | None = None
    kb_s: float | None = None  # the knowledge lookup (embedding + search)
    first_audio_at: float | None = None  # first frame of the reply sent

    @property
    def latency_s(self) -> float | None:
        if self.first_audio_at is None or self.speech_ended_at is None:
            return None
        return self.first_audio_at - self.speech_ended_at

    @property
    def processing_s(self) -> float | None:
        """From the VAD's decision to the first reply frame: what voxswitch + providers add."""
        if self.first_audio_at is None or self.decided_at is None:
            return None
        return self.first_audio_at - self.decided_at

    def as_dict(self) -> dict[str, float | None]:
        return {
            "latency_s": _round(self.latency_s),
            "processing_s": _round(self.processing_s),
            "asr_s": _round(self.asr_s),
            "llm_first_token_s": _round(self.llm_first_token_s),
            "tts_first_audio_s": _round(self.tts_first_audio_s),
            "kb_s": _round(self.kb_s),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class Turn:
    index: int
    source: str  # "speech" or "dtmf"
    caller_text: str = ""
    agent_text: str = ""
    interrupted: bool = False
    tools: list[str] = field(default_factory=list)
    knowledge: list[str] = field(default_factory=list)  # entry ids the reply came from
    knowledge_error: str | None = None  # the knowledge base was down for this turn
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    # A turn taken on another node (the call was adopted): its measures as recorded there.
    saved_metrics: dict[str, float | None] | None = None

    @classmethod
    def restored(cls, saved: Mapping[str, Any]) -> Turn:
        """A turn from a checkpoint (``as_record``'s form)."""
        return cls(
            index=int(saved["index"]),
            source=str(saved.get("source", "speech")),
            caller_text=str(saved.get("caller", "")),
            agent_text=str(saved.get("agent", "")),
            interrupted=bool(saved.get("interrupted", False)),
            tools=list(saved.get("tools", [])),
            knowledge=list(saved.get("knowledge", [])),
            knowledge_error=saved.get("knowledge_error"),
            saved_metrics={k: saved.get(k) for k in TurnMetrics().as_dict()},
        )

    def as_record(self) -> dict[str, Any]:
        """The turn as the call record and checkpoints keep it."""
        metrics = self.saved_metrics if self.saved_metrics is not None else self.metrics.as_dict()
        out: dict[str, Any] = {
            "index": self.index, "source": self.source, "caller": self.caller_text,
            "agent": self.agent_text, "interrupted": self.interrupted,
            "tools": list(self.tools), "knowledge": list(self.knowledge),
            **metrics,
        }  # fmt: skip
        if self.knowledge_error:
            out["knowledge_error"] = self.knowledge_error
        return out


@dataclass
class ConversationState:
    step: str = "greeting"  # greeting, listening, thinking, speaking, ending
    turns: list[Turn] = field(default_factory=list)
    transcript: list[ChatMessage] = field(default_factory=list)
    dtmf: str = ""  # digits received so far
    barge_ins: list[dict[str, float]] = field(default_factory=list)


class ConversationHost(Protocol):
    """What the conversation asks of its call actor."""

    def hang_up(self, reason: str, *, failed: bool = False) -> None:
        """End the call; ``failed``: the agent broke down rather than chose to end it."""

    def transfer(self, target: str) -> None: ...

    def send_dtmf(self, digits: str) -> None: ...


class _Detached:
    """The host of a conversation whose call has ended: asks of it go nowhere."""

    def hang_up(self, reason: str, *, failed: bool = False) -> None:
        pass

    def transfer(self, target: str) -> None:
        pass

    def send_dtmf(self, digits: str) -> None:
        pass


DETACHED = _Detached()


class Conversation:
    def __init__(
        self,
        *,
        voice: Voice,
        session: SessionControl,
        host: ConversationHost,
        clock: Callable[[], float],
        call_id: str,
        context: Mapping[str, str] | None = None,
        announcement: str = "",
    ) -> None:
        self.voice = voice
        self.announcement = announcement  # said before the greeting ("this call is recorded")
        self.session = session
        self.host = host
        self.clock = clock
        self.call_id = call_id
        self.state = ConversationState()
        if context:
            self.state.transcript.append(self._context_message(context))
        self._turn_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announcements = 0
        self._current: Turn | None = None  # the turn whose reply is queued or playing
        self._barge_timer: asyncio.TimerHandle | None = None
        self._backchannel = False  # the caller's sound during playout was too short
        self._after_playout: Callable[[], None] | None = None

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._greet())

    def snapshot(self) -> dict[str, Any]:
        """The state a checkpoint keeps, for ``resume`` on another node."""
        state = self.state
        return {
            "step": state.step,
            "dtmf": state.dtmf,
            "transcript": [{"role": m.role, "content": m.content} for m in state.transcript],
            "turns": [t.as_record() for t in state.turns],
            "barge_ins": list(state.barge_ins),
        }

    def resume(self, saved: Mapping[str, Any], line: str) -> None:
        """Go on from ``snapshot``'s state after the call moved here from a node that
        died: say ``line`` ("sorry, one moment"), then carry on where the agent was:
        a question it had not answered is answered, a reply it was speaking is said
        again, and otherwise it listens."""
        state = self.state
        state.transcript = [
            ChatMessage(m["role"], m["content"]) for m in saved.get("transcript", [])
        ]
        state.turns = [Turn.restored(t) for t in saved.get("turns", [])]
        state.dtmf = str(saved.get("dtmf", ""))
        state.barge_ins = list(saved.get("barge_ins", []))
        self._spawn(self._resume(str(saved.get("step", "listening")), line))

    async def _resume(self, step: str, line: str) -> None:
        transcript, turns = self.state.transcript, self.state.turns
        if line:
            self.session.say(await self.voice.speech(line, cache=True), "resume")
            self.state.step = "speaking"
        last = transcript[-1] if transcript else None
        if last is not None and last.role == "user":
            # The caller had asked and the reply never came: answer it now.
            transcript.pop()
            if turns and not turns[-1].agent_text and turns[-1].caller_text == last.content:
                turns.pop()
            turn = Turn(index=len(turns) + 1, source="speech", caller_text=last.content)
            turns.append(turn)
            self._current = turn
            self.state.step = "thinking"
            self._turn_task = self._spawn(self._run_turn(turn, None))
        elif step in ("greeting", "speaking") and last is not None and last.role == "assistant":
            # Cut off mid-sentence on the old node: say it again, whole.
            self.session.say(await self.voice.speech(last.content), "resume-repeat")
            self.state.step = "speaking"
        elif not line:
            self.state.step = "listening"

    def _context_message(self, context: Mapping[str, str]) -> ChatMessage:
        """The call's metadata (the INVITE's X- headers) for the brain, first in the
        transcript: an LLM reads it as instructions' context; the scripted agent
        ignores the history."""
        lines = "; ".join(f"{name}: {value}" for name, value in context.items())
        return ChatMessage("system", f"Call context (SIP headers, call metadata): {lines}")

    def announce(self, text: str) -> None:
        """Say ``text`` after what is queued, outside the turn loop (the API's ``say``)."""
        self._announcements += 1
        utterance_id = f"api-{self._announcements}"
        self.state.transcript.append(ChatMessage("assistant", text))
        self._spawn(self._announce(text, utterance_id))

    async def _announce(self, text: str, utterance_id: str) -> None:
        self.session.say(await self.voice.speech(text), utterance_id)
        self.state.step = "speaking"

    async def aclose(self) -> None:
        if self._barge_timer is not None:
            self._barge_timer.cancel()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # The call actor holds us and we held it: let go, so that reference counting
        # frees an ended call at once (a cycle per call made the cycle collector walk
        # hundreds of thousands of objects, stalling the loop for half a second).
        self.host = DETACHED
        self._after_playout = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("call %s: conversation task failed: %r", self.call_id, error)
            self.host.hang_up(f"agent error: {type(error).__name__}", failed=True)

    async def _greet(self) -> None:
        text = self.voice.brain.greeting()
        self.state.transcript.append(ChatMessage("assistant", text))
        if self.announcement:
            # Its own utterance, queued first: the caller hears it before the agent
            # speaks (a caller who talks over it barges in, as over the greeting).
            self.session.say(await self.voice.speech(self.announcement, cache=True),
                             "announcement")  # fmt: skip
        if text:
            self.session.say(await self.voice.speech(text, cache=True), "greeting")
            self.state.step = "speaking"
        elif self.announcement:
            self.state.step = "speaking"
        else:
            self.state.step = "listening"

    # ---- media events ----------------------------------------------------------------

    def handle(self, event: MediaEvent, at: float) -> None:
        if isinstance(event, UtteranceCaptured):
            if self._backchannel:
                self._backchannel = False  # "uh-huh" over the agent: not a turn
                return
            self._new_turn("speech", utterance=event)
        elif isinstance(event, DtmfDigit):
            self.state.dtmf += event.digit
            self._barge_in()
            self._new_turn("dtmf", text=f"DTMF: {event.digit}")
        elif isinstance(event, UtteranceStarted):
            turn = self._current
            if (
                turn is not None
                and turn.metrics.first_audio_at is None
                and event.utterance_id.startswith(f"t{turn.index}-")
            ):
                turn.metrics.first_audio_at = at
                self._log_turn(turn)
        elif isinstance(event, UtteranceInterrupted):
            if self._current is not None and event.utterance_id.startswith(
                f"t{self._current.index}-"
            ):
                self._current.interrupted = True
        elif isinstance(event, UtteranceFinished) and not self.session.playing:
            self._playout_idle()
        elif isinstance(event, PlayoutHeld):
            self._playout_held(event)

    def _playout_held(self, event: PlayoutHeld) -> None:
        """The session held playout on voice; decide at onset + barge_in_min_s."""
        held_ms = 1000 * (event.at - event.onset_at)
        self.state.barge_ins.append({"onset_at": event.onset_at, "held_ms": held_ms})
        log.info(
            "call %s: caller spoke over the agent: playout held %.0f ms after onset",
            self.call_id,
            held_ms,
        )
        if self._barge_timer is not None:
            self._barge_timer.cancel()
        wait = max(0.0, event.onset_at + self.voice.barge_in_min_s - self.clock())
        self._barge_timer = asyncio.get_running_loop().call_later(wait, self._barge_check)

    def _barge_check(self) -> None:
        self._barge_timer = None
        if self.session.caller_speaking:
            log.info("call %s: barge-in: reply dropped", self.call_id)
            self._barge_in()
            return
        # Shorter than barge_in_min_s: a backchannel or a noise; the agent carries on.
        self._backchannel = self.session.capturing
        self.session.resume()
        log.info("call %s: short sound over the agent: playout resumed", self.call_id)

    def _barge_in(self) -> None:
        """The caller takes the floor: drop the reply, cancel its work."""
        if self._barge_timer is not None:
            self._barge_timer.cancel()
            self._barge_timer = None
        for event in self.session.flush():
            self.handle(event, self.clock())
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()
            if self._current is not None:
                self._current.interrupted = True
        if self._after_playout is not None:
            self._after_playout = None  # a goodbye cut short: still hang up
            self.host.hang_up("agent ended the call")
        self.state.step = "listening"

    def _playout_idle(self, *, turn_over: bool = False) -> None:
        """Nothing left to play: listen, or carry out what waited for the end (a hang-up)."""
        if turn_over or self._turn_task is None or self._turn_task.done():
            self.state.step = "listening"
            action, self._after_playout = self._after_playout, None
            if action is not None:
                # The last frame has just left; the phone still holds up to a jitter
                # buffer of it. A BYE now would cut the goodbye's end.
                asyncio.get_running_loop().call_later(PLAYOUT_TAIL_S, action)

    # ---- a turn ----------------------------------------------------------------------

    def _new_turn(
        self, source: str, *, utterance: UtteranceCaptured | None = None, text: str = ""
    ) -> None:
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()  # the caller said more before we answered
            if self._current is not None:
                self._current.interrupted = True
        turn = Turn(index=len(self.state.turns) + 1, source=source, caller_text=text)
        if utterance is not None:
            turn.metrics.speech_ended_at = utterance.ended_at
            turn.metrics.decided_at = utterance.decided_at
        else:
            turn.metrics.speech_ended_at = turn.metrics.decided_at = self.clock()
        self.state.turns.append(turn)
        self._current = turn
        self.state.step = "thinking"
        self._turn_task = self._spawn(self._run_turn(turn, utterance))

    async def _run_turn(self, turn: Turn, utterance: UtteranceCaptured | None) -> None:
        metrics = turn.metrics
        if utterance is not None:
            started = self.clock()
            transcript = await self.voice.recognizer.transcribe(utterance.pcm)
            metrics.asr_s = self.clock() - started
            turn.caller_text = transcript.text.strip()
            if not turn.caller_text:
                log.info("call %s: turn %d: nothing recognised", self.call_id, turn.index)
                self.state.turns.remove(turn)
                self._current = None
                self.state.step = "listening"
                return
        history = list(self.state.transcript)
        self.state.transcript.append(ChatMessage("user", turn.caller_text))
        asked = self.clock()
        pending = ""
        spoken: list[str] = []
        tools: list[ToolCall] = []
        async for event in self.voice.brain.respond(history, turn.caller_text):
            if isinstance(event, KnowledgeUsed):
                turn.knowledge.extend(e for e in event.entries if e not in turn.knowledge)
                if event.lookup_s is not None:
                    metrics.kb_s = (metrics.kb_s or 0.0) + event.lookup_s
                turn.knowledge_error = event.error or turn.knowledge_error
                continue
            if isinstance(event, ToolCall):
                tools.append(event)
                await self._speak(turn, pending, spoken)  # the words before the tool
                pending = ""
                continue
            if metrics.llm_first_token_s is None:  # the lookup is kb_s, not the model's
                metrics.llm_first_token_s = self.clock() - asked - (metrics.kb_s or 0.0)
            pending += event.text
            *sentences, pending = _SENTENCE_END.split(pending)
            for sentence in sentences:
                await self._speak(turn, sentence, spoken)
        await self._speak(turn, pending, spoken)
        turn.agent_text = " ".join(spoken)
        log.info("call %s: turn %d: agent: %r", self.call_id, turn.index, turn.agent_text[:120])
        self.state.transcript.append(ChatMessage("assistant", turn.agent_text))
        for tool in tools:
            self._tool(turn, tool)
        if not self.session.playing and not self.session.queued_frames:
            self._playout_idle(turn_over=True)

    async def _speak(self, turn: Turn, sentence: str, spoken: list[str]) -> None:
        sentence = sentence.strip()
        if not sentence:
            return
        started = self.clock()
        pcm = await self.voice.speech(sentence)
        if turn.metrics.tts_first_audio_s is None:
            turn.metrics.tts_first_audio_s = self.clock() - started
        self.session.say(pcm, f"t{turn.index}-{len(spoken)}")
        spoken.append(sentence)
        self.state.step = "speaking"

    def _tool(self, turn: Turn, tool: ToolCall) -> None:
        turn.tools.append(tool.name)
        log.info(
            "call %s: turn %d: tool %s %s", self.call_id, turn.index, tool.name, tool.arguments
        )
        if tool.name == "hang_up":
            reason = str(tool.arguments.get("reason") or "agent ended the call")
            self.state.step = "ending"
            self._after_playout = lambda: self.host.hang_up(reason)
        elif tool.name == "transfer":
            target = str(tool.arguments.get("target") or "")
            self.state.step = "ending"
            self._after_playout = lambda: self.host.transfer(target)
        elif tool.name == "send_dtmf":
            self.host.send_dtmf(str(tool.arguments.get("digits") or ""))

    def _log_turn(self, turn: Turn) -> None:
        m = turn.metrics
        log.info(
            "call %s: turn %d: %r -> first audio %.0f ms after speech end "
            "(vad hangover %.0f, asr %.0f, kb %.0f, llm ttft %.0f, tts %.0f ms)",
            self.call_id,
            turn.index,
            turn.caller_text[:60],
            1000 * (m.latency_s or 0.0),
            1000 * ((m.decided_at or 0.0) - (m.speech_ended_at or 0.0)),
            1000 * (m.asr_s or 0.0),
            1000 * (m.kb_s or 0.0),
            1000 * (m.llm_first_token_s or 0.0),
            1000 * (m.tts_first_audio_s or 0.0),
        )


__all__ = ["Conversation", "ConversationState", "Turn", "Voice"]
