"""The web phone's media leg without a network: browser audio of any chunk size becomes
20 ms frames for the session (its VAD hears a vowel), and the agent's playout comes
out frame by frame once the call plays; the outbound track paces itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from media.session import FRAME_SAMPLES, MediaEvent
from media.vad import SpeechStarted
from switch.webrtc.leg import WebRtcLeg
from tests.unit.test_vad import silence, vowel


@pytest.fixture
async def leg() -> AsyncIterator[WebRtcLeg]:
    made = WebRtcLeg(RTCPeerConnection())
    yield made
    made.close()
    await made.wait_closed()


async def test_browser_audio_in_odd_chunks_becomes_whole_frames_the_vad_hears(
    leg: WebRtcLeg,
) -> None:
    heard: list[MediaEvent] = []
    leg.start_session(lambda event, _at: heard.append(event))
    audio = np.concatenate([silence(0.2), vowel(0.5)])
    for start in range(0, audio.size, 333):  # 41.6 ms pieces: not a frame's multiple
        leg.feed(audio[start : start + 333], now=start / 8000)
    assert leg.packets_received == audio.size // FRAME_SAMPLES
    assert any(isinstance(e, SpeechStarted) for e in heard)
    assert leg.silence_s(1.0) == 0.0  # not playing yet: no silence counted


async def test_the_agents_audio_comes_out_a_frame_a_tick_once_playing(leg: WebRtcLeg) -> None:
    session = leg.start_session(lambda _event, _at: None)
    tone = (8000 * np.sin(np.arange(FRAME_SAMPLES * 3) / 3)).astype(np.int16)
    session.say(tone, "t1-0")
    assert leg.next_frame(0.0) is None  # not playing: nothing leaves
    leg.play()
    frames = [leg.next_frame(0.02 * i) for i in range(4)]
    assert all(f is not None and f.size == FRAME_SAMPLES for f in frames[:3])
    assert frames[3] is None  # the utterance is over: silence
    first = frames[0]
    assert first is not None and np.corrcoef(first, tone[:FRAME_SAMPLES])[0, 1] > 0.99
    assert leg.packets_sent == 3


async def test_the_outbound_track_sends_20_ms_frames_on_an_absolute_schedule(
    leg: WebRtcLeg,
) -> None:
    leg.start_session(lambda _event, _at: None)
    leg.play()
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = [await leg.outbound.recv() for _ in range(11)]
    elapsed = loop.time() - started
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(11)]
    assert all(f.sample_rate == 8000 and f.samples == FRAME_SAMPLES for f in frames)
    assert 0.19 <= elapsed < 0.3  # ten 20 ms slots after the first frame
