"""The conversation loop with real engines: the demo agent, espeak-ng, a media session.

The host records what the conversation asks of its call actor (hang up, transfer,
send DTMF); the media session is driven the way the RTP leg drives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from actors.conversation import Conversation, Voice
from media.asr import PocketSphinxRecognizer
from media.dtmf import DtmfDigit
from media.g711 import ulaw_encode
from media.playout import UtteranceStarted
from media.session import MediaEvent, MediaSession, UtteranceCaptured
from media.tts import EspeakSynthesizer
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from tests.unit.test_vad import silence, vowel

FRAME = 160
AGENT = ScriptedAgent.from_file(DEMO_AGENT_PATH)


class Host:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def hang_up(self, reason: str, *, failed: bool = False) -> None:
        self.calls.append(("hang_up_failed" if failed else "hang_up", reason))

    def transfer(self, target: str) -> None:
        self.calls.append(("transfer", target))

    def send_dtmf(self, digits: str) -> None:
        self.calls.append(("send_dtmf", digits))


class Line:
    """A conversation on a media session, with the leg's part played by the test."""

    def __init__(self, conversation: Conversation, session: MediaSession) -> None:
        self.conversation = conversation
        self.session = session
        self.seq = 0
        self.sent: list[bytes | None] = []
        self.events: list[MediaEvent] = []

    async def tick(self, frame: np.ndarray | None = None) -> None:
        """One 20 ms slot: a caller frame arrives, the session ticks, the actor reacts."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        events: list[MediaEvent] = []
        if frame is not None:
            self.seq += 1
            events += self.session.receive(0, self.seq, self.seq * FRAME, ulaw_encode(frame), now)
        out, tick_events = self.session.tick(now)
        self.sent.append(out)
        for event in [*events, *tick_events]:
            self.events.append(event)
            self.conversation.handle(event, now)
        await asyncio.sleep(0.02)

    async def play(self, signal: np.ndarray) -> None:
        for i in range(len(signal) // FRAME):
            await self.tick(signal[i * FRAME : (i + 1) * FRAME])

    async def until(self, condition: object, timeout_s: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():  # type: ignore[operator]
            assert asyncio.get_running_loop().time() < deadline, "condition never came true"
            await self.tick(silence(0.02))


def demo_voice() -> Voice:
    return Voice(
        recognizer=PocketSphinxRecognizer(AGENT.phrases(), pool_size=1),
        synthesizer=EspeakSynthesizer(rate_wpm=300),
        brain=AGENT,
    )


@pytest.fixture
async def line() -> AsyncIterator[tuple[Line, Host]]:
    voice = Voice(
        recognizer=PocketSphinxRecognizer(AGENT.phrases(), pool_size=1),
        synthesizer=EspeakSynthesizer(rate_wpm=300),
        brain=AGENT,
        barge_in_min_s=0.3,
    )
    session = MediaSession(codec="PCMU", payload_type=0, telephone_event_pt=101)
    host = Host()
    loop = asyncio.get_running_loop()
    conversation = Conversation(
        voice=voice, session=session, host=host, clock=loop.time, call_id="unit"
    )
    conversation.start()
    yield Line(conversation, session), host
    await conversation.aclose()
    await voice.recognizer.aclose()


async def test_greeting_is_queued_and_played(line: tuple[Line, Host]) -> None:
    call, _ = line
    await call.until(lambda: call.session.playout.queued_frames > 0)
    assert call.conversation.state.transcript[0].content == AGENT.greeting()
    await call.tick()
    assert call.sent[-1] is not None


async def test_dtmf_digit_is_a_turn_answered_from_the_knowledge_base(
    line: tuple[Line, Host],
) -> None:
    call, _ = line
    await call.until(lambda: call.session.playout.playing)
    call.conversation.handle(DtmfDigit("2", 100, "rfc4733"), asyncio.get_running_loop().time())
    state = call.conversation.state
    await call.until(lambda: bool(state.turns) and state.turns[0].agent_text != "")
    turn = state.turns[0]
    assert (turn.source, turn.caller_text) == ("dtmf", "DTMF: 2")
    match = AGENT.match("DTMF: 2")
    assert match is not None and turn.agent_text == match.entry.say
    assert state.dtmf == "2"
    # The greeting was dropped for the answer, which plays now.
    await call.until(lambda: turn.metrics.first_audio_at is not None)
    assert turn.metrics.latency_s is not None and turn.metrics.latency_s < 1.0


async def test_talking_over_the_agent_interrupts_after_barge_in_min(
    line: tuple[Line, Host],
) -> None:
    call, _ = line
    await call.until(lambda: call.session.playout.playing)
    await call.play(silence(0.2))
    await call.play(vowel(0.6))
    state = call.conversation.state
    assert len(state.barge_ins) == 1 and state.barge_ins[0]["held_ms"] < 100
    assert not call.session.playout.playing  # flushed: the greeting is gone
    assert not call.session.paused


async def test_a_short_sound_holds_the_agent_then_lets_it_go_on(
    line: tuple[Line, Host],
) -> None:
    call, _ = line
    await call.until(lambda: call.session.playout.playing)
    before = call.session.playout.queued_frames
    await call.play(vowel(0.12))
    assert call.session.paused
    assert len(call.conversation.state.barge_ins) == 1
    await call.play(silence(0.4))
    assert not call.session.paused  # resumed at onset + barge_in_min
    assert call.session.playout.playing
    assert call.session.playout.queued_frames < before  # and it went on playing
    await call.play(silence(0.6))
    assert call.conversation.state.turns == []  # the sound was not a turn


async def test_goodbye_is_recognised_played_and_then_the_call_hung_up(
    line: tuple[Line, Host],
) -> None:
    """The whole turn with real engines: speech in, pocketsphinx, the brain's hang_up
    tool, the goodbye synthesised and played out, and only then the hang-up."""
    call, host = line
    await call.until(lambda: call.session.playout.playing)
    speech = await EspeakSynthesizer(rate_wpm=150).synthesize("goodbye")
    pcm = np.concatenate([silence(0.2), speech, silence(0.3)])
    now = asyncio.get_running_loop().time()
    call.conversation.handle(UtteranceCaptured(pcm, now - 1.0, now - 0.5, now), now)
    await call.until(lambda: bool(host.calls), timeout_s=20.0)
    assert [kind for kind, _ in host.calls] == ["hang_up"]
    turn = call.conversation.state.turns[0]
    assert turn.tools == ["hang_up"]
    goodbye = AGENT.match(turn.caller_text)
    assert goodbye is not None and turn.agent_text == goodbye.entry.say
    assert not call.session.playout.playing  # the goodbye had been played out


async def test_a_burst_of_calls_synthesises_a_fixed_phrase_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fifty calls asking for the greeting at once: one synthesis, one shared result;
    a caller cancelled while waiting does not cancel it for the others."""
    synthesizer = EspeakSynthesizer(rate_wpm=300)
    runs = 0
    real = synthesizer.synthesize

    async def counted(text: str) -> np.ndarray:
        nonlocal runs
        runs += 1
        return await real(text)

    monkeypatch.setattr(synthesizer, "synthesize", counted)
    voice = Voice(
        recognizer=PocketSphinxRecognizer(AGENT.phrases(), pool_size=1),
        synthesizer=synthesizer,
        brain=AGENT,
    )
    try:
        impatient = asyncio.ensure_future(voice.speech(AGENT.greeting(), cache=True))
        waiting = [voice.speech(AGENT.greeting(), cache=True) for _ in range(50)]
        await asyncio.sleep(0)
        impatient.cancel()
        results = await asyncio.gather(*waiting)
        assert runs == 1
        assert all(r is results[0] for r in results) and results[0].size > 8000
        await voice.speech(AGENT.greeting(), cache=True)
        await voice.speech("not cached", cache=False)
        await voice.speech("not cached", cache=False)
        assert runs == 3
    finally:
        await voice.recognizer.aclose()
        await synthesizer.aclose()


async def test_the_invites_x_headers_reach_the_brain_as_call_context() -> None:
    """The context leads the transcript, so an LLM's request carries it after its own
    system prompt (the scripted agent does not read the history)."""
    from switch.agents.openai_chat import OpenAIChatAgent

    voice = demo_voice()
    session = MediaSession(codec="PCMU", payload_type=0)
    loop = asyncio.get_running_loop()
    conversation = Conversation(
        voice=voice, session=session, host=Host(), clock=loop.time, call_id="ctx",
        context={"X-Campaign": "spring-2026", "X-Customer-Id": "42"},
    )  # fmt: skip
    try:
        first = conversation.state.transcript[0]
        assert first.role == "system"
        assert "X-Campaign: spring-2026" in first.content and "X-Customer-Id: 42" in first.content
        llm = OpenAIChatAgent("http://127.0.0.1:9", None, "m", "You are a pizza shop.", "Hi")
        messages = llm.request_body(conversation.state.transcript, "hello")["messages"]
        assert [m["role"] for m in messages] == ["system", "system", "user"]
        assert messages[1]["content"] == first.content
        plain = Conversation(
            voice=voice, session=session, host=Host(), clock=loop.time, call_id="plain"
        )
        assert plain.state.transcript == []  # no headers: nothing added
    finally:
        await conversation.aclose()
        await voice.recognizer.aclose()


async def test_a_recorded_calls_announcement_plays_before_the_greeting() -> None:
    voice = demo_voice()
    session = MediaSession(codec="PCMU", payload_type=0)
    loop = asyncio.get_running_loop()
    conversation = Conversation(
        voice=voice, session=session, host=Host(), clock=loop.time, call_id="rec",
        announcement="This call is recorded.",
    )  # fmt: skip
    conversation.start()
    call = Line(conversation, session)
    try:
        await call.until(lambda: sum(isinstance(e, UtteranceStarted) for e in call.events) >= 2,
                         timeout_s=15)  # fmt: skip
        started = [e.utterance_id for e in call.events if isinstance(e, UtteranceStarted)]
        assert started[:2] == ["announcement", "greeting"]
        # The transcript (what an LLM sees) holds the greeting, not the notice.
        assert [m.content for m in conversation.state.transcript] == [AGENT.greeting()]
    finally:
        await conversation.aclose()
        await voice.recognizer.aclose()


# ---- a conversation adopted from a node that died (live-call takeover) -----------------


def _adopted(saved: dict[str, object]) -> tuple[Conversation, MediaSession, Host]:
    session = MediaSession(codec="PCMU", payload_type=0, telephone_event_pt=101)
    host = Host()
    conversation = Conversation(
        voice=demo_voice(), session=session, host=host,
        clock=asyncio.get_running_loop().time, call_id="adopted",
    )  # fmt: skip
    conversation.resume(saved, "Sorry, one moment.")
    return conversation, session, host


def _started(line: Line) -> list[str]:
    return [e.utterance_id for e in line.events if isinstance(e, UtteranceStarted)]


async def test_a_snapshot_resumes_to_the_same_state(line: tuple[Line, Host]) -> None:
    call, _ = line
    await call.until(lambda: call.session.playout.playing)
    call.conversation.handle(DtmfDigit("2", 100, "rfc4733"), asyncio.get_running_loop().time())
    state = call.conversation.state
    await call.until(lambda: bool(state.turns) and state.turns[0].agent_text != "")
    await call.until(lambda: state.step == "listening", timeout_s=15)
    saved = call.conversation.snapshot()
    conversation, session, _ = _adopted(saved)
    try:
        assert conversation.snapshot() == saved | {"step": "greeting"}
        assert [t.as_record() for t in conversation.state.turns] == saved["turns"]
        adopted = Line(conversation, session)
        await adopted.until(lambda: "resume" in _started(adopted))
        # Listening when it died: the line, and nothing more.
        await adopted.until(lambda: conversation.state.step == "listening", timeout_s=10)
        assert _started(adopted) == ["resume"] and len(conversation.state.turns) == 1
    finally:
        await conversation.aclose()
        await conversation.voice.recognizer.aclose()


async def test_a_question_the_dead_node_never_answered_is_answered_after_the_line() -> None:
    question = "do you deliver"
    saved = {
        "step": "thinking",
        "dtmf": "",
        "transcript": [
            {"role": "assistant", "content": AGENT.greeting()},
            {"role": "user", "content": "what are your opening hours"},
            {"role": "assistant", "content": "We are open every day."},
            {"role": "user", "content": question},
        ],
        "turns": [
            {"index": 1, "source": "speech", "caller": "what are your opening hours",
             "agent": "We are open every day.", "interrupted": False, "tools": [],
             "knowledge": ["hours"], "latency_s": 0.6, "processing_s": 0.3, "asr_s": 0.1,
             "llm_first_token_s": 0.01, "tts_first_audio_s": 0.05, "kb_s": 0.01},
            {"index": 2, "source": "speech", "caller": question, "agent": "",
             "interrupted": False, "tools": [], "knowledge": [], "latency_s": None,
             "processing_s": None, "asr_s": 0.1, "llm_first_token_s": None,
             "tts_first_audio_s": None, "kb_s": None},
        ],
        "barge_ins": [],
    }  # fmt: skip
    conversation, session, _ = _adopted(saved)
    line = Line(conversation, session)
    try:
        state = conversation.state
        await line.until(lambda: len(state.turns) == 2 and state.turns[1].agent_text != "")
        first, second = state.turns
        assert first.as_record() == saved["turns"][0]  # kept as the dead node recorded it
        match = AGENT.match(question)
        assert match is not None
        assert (second.index, second.caller_text) == (2, question)
        assert second.agent_text == match.entry.say
        assert [m.role for m in state.transcript] == ["assistant", "user", "assistant", "user",
                                                      "assistant"]  # fmt: skip
        await line.until(lambda: len(_started(line)) >= 2, timeout_s=10)
        assert _started(line)[:2] == ["resume", "t2-0"]  # the line, then the answer
    finally:
        await conversation.aclose()
        await conversation.voice.recognizer.aclose()


async def test_a_reply_cut_off_by_the_dead_node_is_said_again_whole() -> None:
    saved = {
        "step": "speaking",
        "transcript": [{"role": "assistant", "content": AGENT.greeting()}],
        "turns": [],
    }
    conversation, session, _ = _adopted(saved)
    line = Line(conversation, session)
    try:
        await line.until(lambda: len(_started(line)) == 2, timeout_s=10)
        assert _started(line) == ["resume", "resume-repeat"]
        assert conversation.state.turns == [] and len(conversation.state.transcript) == 1
    finally:
        await conversation.aclose()
        await conversation.voice.recognizer.aclose()
