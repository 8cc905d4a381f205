"""The node's network providers end to end: real HTTP clients, a real phone on the call.

A ``voxswitch serve`` node runs with ``agent = asr = tts = openai``, all three pointed at
a fake OpenAI-compatible server on 127.0.0.1 (tests/e2e/fake_openai.py: the real
providers are paid external APIs). baresip calls it; its microphone is silence while
the greeting plays, then an espeak-ng question, then silence. The fake synthesises each
text as a tone whose frequency says which text it is, so what the phone heard
(``dump-*-dec.wav``) shows which replies were played, and when.

- a question gets a streamed two-sentence answer: the fake sees one transcription (the
  caller's audio as an 8 kHz WAV), one chat completion (system prompt first, the
  transcript last) and one speech request per sentence; the record has the turn and
  its latencies; the phone hears the greeting tone, then the two reply tones in order;
- "goodbye": the model says "Goodbye!" and calls ``hang_up`` (streamed in fragments):
  the node plays the goodbye, then sends BYE (disposition ``agent_hangup``);
- the chat endpoint answers HTTP 500: the node does not leave the call hanging, it
  hangs up (disposition ``agent_error``) without a traceback.

Each test has a node and a fake of its own (the greeting is synthesised once per node).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest

from loadtest.baresip import RATE, Baresip, FloatArray
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from media.tts import EspeakSynthesizer
from switch.voice import OPENAI_GREETING, SYSTEM_PROMPT
from tests.e2e.fake_openai import (
    CHAT,
    GOODBYE_REPLY,
    GREETING_HZ,
    HANG_UP_REASON,
    SPEECH,
    TRANSCRIPTIONS,
    WEATHER_REPLY,
    FakeOpenAI,
    tone_hz,
    tone_seconds,
)
from tests.e2e.phone_call import TERMINATED, PhoneCall, describe_audio, loud_regions

pytestmark = pytest.mark.e2e

Pcm = npt.NDArray[np.int16]

KEYS = {CHAT: "sk-llm-e2e", TRANSCRIPTIONS: "sk-asr-e2e", SPEECH: "sk-tts-e2e"}
CHAT_MODEL, ASR_MODEL, TTS_MODEL, TTS_VOICE = "test-model", "test-asr", "test-tts", "test-voice"
QUESTION = "what is the weather on mars"
SENTENCES = [s.strip() for s in WEATHER_REPLY]
MIC_S = 20.0  # the mic file outlasts every call (baresip ends the call at its end)
PREROLL_S = 0.2  # VadConfig.preroll_ms
HANGOVER_S = 0.5  # vad_stop_ms: the utterance goes on until the VAD decides it ended


# ---- the fake and the node ----------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(
        KEYS, chat_model=CHAT_MODEL, asr_model=ASR_MODEL, tts_model=TTS_MODEL, tts_voice=TTS_VOICE
    ).start()
    yield server
    server.stop()


@pytest.fixture
def node(voxswitch_nodes: NodeFactory, fake: FakeOpenAI) -> Iterator[NodeProcess]:
    env = {
        "VOXSWITCH_AGENT": "openai",
        "VOXSWITCH_ASR": "openai",
        "VOXSWITCH_TTS": "openai",
        "VOXSWITCH_LLM_BASE_URL": fake.base_url,
        "VOXSWITCH_ASR_BASE_URL": fake.base_url,
        "VOXSWITCH_TTS_BASE_URL": fake.base_url + "/",  # a trailing slash is accepted
        "VOXSWITCH_LLM_API_KEY": KEYS[CHAT],
        "VOXSWITCH_ASR_API_KEY": KEYS[TRANSCRIPTIONS],
        "VOXSWITCH_TTS_API_KEY": KEYS[SPEECH],
        "VOXSWITCH_LLM_MODEL": CHAT_MODEL,
        "VOXSWITCH_ASR_MODEL": ASR_MODEL,
        "VOXSWITCH_TTS_MODEL": TTS_MODEL,
        "VOXSWITCH_TTS_VOICE": TTS_VOICE,
    }
    options = NodeOptions(max_call_duration_s=60, media_timeout_s=0, env=env)
    started = voxswitch_nodes.start("openai", options)
    yield started
    code = started.stop(timeout_s=15)
    assert code == 0, f"node exited with {code}\n{started.log_tail()}"


# ---- audio --------------------------------------------------------------------------------


def silence(seconds: float) -> Pcm:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def dominant_hz(x: FloatArray, start_s: float, end_s: float) -> float:
    """The strongest frequency of x[start_s:end_s] (Hann window, 8 kHz)."""
    seg = np.asarray(x[round(start_s * RATE) : round(end_s * RATE)], dtype=np.float64)
    assert seg.size >= RATE // 10, f"segment {start_s:.2f}-{end_s:.2f} s too short"
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    return float(np.fft.rfftfreq(seg.size, 1 / RATE)[int(np.argmax(spectrum))])


class Question:
    """The caller's question (espeak-ng, 150 wpm) and where its sound is."""

    def __init__(self, text: str) -> None:
        self.pcm: Pcm = asyncio.run(EspeakSynthesizer(rate_wpm=150).synthesize(text))
        found = loud_regions(self.pcm, merge_gap_s=1.0)
        assert found, f"espeak said nothing for {text!r}"
        self.onset_s, self.end_s = found[0][0], found[-1][1]

    @property
    def seconds(self) -> float:
        return self.end_s - self.onset_s


def microphone(lead_s: float, question: Question) -> Pcm:
    pcm = np.concatenate([silence(lead_s), question.pcm])
    return np.concatenate([pcm, silence(max(0.0, MIC_S - pcm.size / RATE))])


# ---- a call -------------------------------------------------------------------------------


def speech_inputs(fake: FakeOpenAI) -> list[str]:
    return [r.json["input"] for r in fake.requests_to(SPEECH) if isinstance(r.json, dict)]


def check_greeting(heard: FloatArray, context: str) -> None:
    """The greeting tone, whole, from the start of the call."""
    regions = loud_regions(heard)
    assert regions, f"the phone heard nothing\n{context}"
    start, end = regions[0]
    assert start <= 0.5, f"greeting starts at {start:.2f} s\n{context}"
    assert end - start == pytest.approx(tone_seconds(OPENAI_GREETING), abs=0.1), context
    assert dominant_hz(heard, start, end) == pytest.approx(GREETING_HZ, abs=10), context


def check_transcription(fake: FakeOpenAI, question: Question, context: str) -> None:
    """One transcription request: a WAV of the caller's question (+ pre-roll, hangover)."""
    asked = fake.requests_to(TRANSCRIPTIONS)
    assert len(asked) == 1, context
    wav = asked[0].wav
    assert wav is not None and asked[0].filename == "audio.wav", context
    assert asked[0].form == {"model": ASR_MODEL, "response_format": "json"}, context
    # The utterance: pre-roll + the speech + the VAD's hangover (measured: ~0.1 s less,
    # the VAD ends speech before the last faint frames that LOUD_RMS still counts).
    expected = PREROLL_S + question.seconds + HANGOVER_S
    assert expected - 0.3 <= wav.seconds <= expected + 0.2, (
        f"WAV {wav.seconds:.2f} s, want about {expected:.2f} s\n{context}"
    )
    # And it is the caller's audio: the question, through G.711, lines up with it.
    sent = question.pcm[round(question.onset_s * RATE) : round(question.end_s * RATE)]
    similarity = best_match(wav.pcm, sent)
    assert similarity > 0.9, f"WAV is not the caller's question ({similarity:.3f})\n{context}"


def best_match(haystack: Pcm, needle: Pcm) -> float:
    """The largest normalised cross-correlation of `needle` against `haystack`'s windows."""
    x = haystack.astype(np.float64)
    y = needle.astype(np.float64)
    if x.size < y.size or not y.any():
        return 0.0
    dots = np.correlate(x, y, mode="valid")
    energy = np.concatenate([[0.0], np.cumsum(x**2)])
    windows = energy[y.size :] - energy[: -y.size]
    scores = np.abs(dots) / np.sqrt(np.maximum(windows, 1.0) * float(np.dot(y, y)))
    return float(np.max(scores))


# ---- tests --------------------------------------------------------------------------------


def test_question_is_answered_through_the_network_providers(
    node: NodeProcess, fake: FakeOpenAI, phones: Callable[..., Baresip]
) -> None:
    question = Question(QUESTION)
    fake.asr_text = QUESTION
    greeting_s = tone_seconds(OPENAI_GREETING)
    reply_s = sum(tone_seconds(s) for s in SENTENCES)
    lead = greeting_s + 1.0
    phone = phones(microphone=microphone(lead, question))
    call = PhoneCall(node, phone, more_context=fake.describe)
    call.dial()
    said = call.wait_log(r"turn 1: agent: ", timeout_s=lead + question.end_s + 8)
    assert said is not None, f"no turn within the wait\n{call.context()}"
    time.sleep(reply_s + 1.0)  # the phone hears the whole answer
    call.hang_up()
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    assert fake.problems == [], context
    # ASR: the caller's audio went out as a WAV.
    check_transcription(fake, question, context)
    # LLM: one streamed completion, system prompt first, greeting, then the transcript.
    chats = fake.requests_to(CHAT)
    assert len(chats) == 1, context
    messages = chats[0].json["messages"]
    assert messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "assistant", "content": OPENAI_GREETING},
        {"role": "user", "content": QUESTION},
    ], context
    # TTS: the greeting, then each sentence as soon as it was complete.
    assert speech_inputs(fake) == [OPENAI_GREETING, *SENTENCES], context
    # ... the first one while the completion was still streaming.
    first_sentence_tts = fake.requests_to(SPEECH)[1].received_at
    finished = chats[0].finished_at
    assert finished is not None and first_sentence_tts < finished, context

    assert record["disposition"] == "completed", context
    assert len(record["turns"]) == 1, context
    turn = record["turns"][0]
    assert turn["source"] == "speech", context
    assert turn["caller"] == QUESTION, context
    assert turn["agent"] == " ".join(SENTENCES), context
    assert turn["tools"] == [] and turn["interrupted"] is False, context
    for key in ("asr_s", "llm_first_token_s", "tts_first_audio_s"):
        assert turn[key] is not None and 0.0 < turn[key] < 1.0, f"{key}\n{context}"
    assert 0.0 < turn["latency_s"] < 2.0, context

    # The phone heard the greeting tone, then after the question the two reply tones.
    check_greeting(heard, context)
    question_end = lead + question.end_s
    after = [(a, b) for a, b in loud_regions(heard) if a >= question_end]
    assert after, f"the phone heard nothing after the question\n{context}"
    start, end = after[0]
    assert end - start == pytest.approx(reply_s, abs=0.15), context
    first_s = tone_seconds(SENTENCES[0])
    assert dominant_hz(heard, start + 0.05, start + first_s - 0.05) == pytest.approx(
        tone_hz(SENTENCES[0]), abs=10
    ), context
    assert dominant_hz(heard, start + first_s + 0.05, end - 0.05) == pytest.approx(
        tone_hz(SENTENCES[1]), abs=10
    ), context
    # The answer came within the reported latency (the phone's clock, roughly).
    assert start - question_end < turn["latency_s"] + 0.3, context


def test_goodbye_tool_call_hangs_up(
    node: NodeProcess, fake: FakeOpenAI, phones: Callable[..., Baresip]
) -> None:
    question = Question("goodbye")
    fake.asr_text = "goodbye"
    lead = tone_seconds(OPENAI_GREETING) + 1.0
    farewell_s = tone_seconds(GOODBYE_REPLY)
    phone = phones(microphone=microphone(lead, question))
    call = PhoneCall(node, phone, more_context=fake.describe)
    established = call.dial()
    ended = phone.wait_for(TERMINATED, timeout_s=lead + question.end_s + farewell_s + 8)
    assert ended is not None, f"the node did not hang up\n{call.context()}"
    hung_up_after = ended - established
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    assert fake.problems == [], context
    check_transcription(fake, question, context)
    chats = fake.requests_to(CHAT)
    assert len(chats) == 1, context
    assert chats[0].json["messages"][-1] == {"role": "user", "content": "goodbye"}, context
    assert speech_inputs(fake) == [OPENAI_GREETING, GOODBYE_REPLY], context

    assert record["disposition"] == "agent_hangup", context
    assert record["reason"] == HANG_UP_REASON, context  # the tool's streamed arguments
    assert len(record["turns"]) == 1, context
    turn = record["turns"][0]
    assert turn["caller"] == "goodbye" and turn["agent"] == GOODBYE_REPLY, context
    assert turn["tools"] == ["hang_up"] and turn["interrupted"] is False, context
    # The BYE came from the node, after the goodbye was played in full.
    from_node = [m.method for m in phone.sip_trace() if m.source == node.sip_address]
    assert "BYE" in from_node, f"{from_node}\n{context}"
    assert hung_up_after >= lead + question.end_s + farewell_s, context
    check_greeting(heard, context)
    after = [(a, b) for a, b in loud_regions(heard) if a >= lead + question.end_s]
    assert len(after) == 1, context
    start, end = after[0]
    # The whole goodbye is heard: the node waits a moment after its last frame before
    # the BYE (a phone drops what is still in its jitter buffer when the BYE comes).
    assert end - start == pytest.approx(farewell_s, abs=0.06), context
    assert dominant_hz(heard, start, end) == pytest.approx(tone_hz(GOODBYE_REPLY), abs=10), context


def test_chat_endpoint_error_hangs_up_the_call(
    node: NodeProcess, fake: FakeOpenAI, phones: Callable[..., Baresip]
) -> None:
    question = Question(QUESTION)
    fake.asr_text = QUESTION
    fake.chat_status = 500
    lead = tone_seconds(OPENAI_GREETING) + 1.0
    phone = phones(microphone=microphone(lead, question))
    call = PhoneCall(node, phone, more_context=fake.describe)
    established = call.dial()
    ended = phone.wait_for(TERMINATED, timeout_s=lead + question.end_s + 8)
    assert ended is not None, f"the node left the call up after the error\n{call.context()}"
    hung_up_after = ended - established
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    assert fake.problems == [], context
    check_transcription(fake, question, context)
    chats = fake.requests_to(CHAT)
    assert [c.status for c in chats] == [500], context  # asked once, no retry
    assert speech_inputs(fake) == [OPENAI_GREETING], context  # nothing more was said

    # The conversation task failed with AgentError; the actor hung up at once.
    assert record["disposition"] == "agent_error", context
    assert record["reason"] == "agent error: AgentError", context
    from_node = [m.method for m in phone.sip_trace() if m.source == node.sip_address]
    assert "BYE" in from_node, f"{from_node}\n{context}"
    assert hung_up_after < lead + question.end_s + 2.0, context
    failed = call.wait_log(r"conversation task failed: AgentError\(.*HTTP 500", timeout_s=1)
    assert failed is not None, f"the failure is not logged with its cause\n{context}"
    # The turn is recorded with what the caller said, and no answer.
    assert len(record["turns"]) == 1, context
    turn = record["turns"][0]
    assert turn["caller"] == QUESTION and turn["agent"] == "", context
    assert turn["asr_s"] is not None and turn["latency_s"] is None, context
    # The phone heard the greeting and nothing after it.
    check_greeting(heard, context)
    assert len(loud_regions(heard)) == 1, context
    # The node itself is fine (and wrote no traceback: the autouse fixture checks).
    health = node.health()
    assert health["status"] == "ok" and health["active_calls"] == 0, f"{health}\n{context}"
