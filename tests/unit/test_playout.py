"""Outgoing playout queue: framing, utterance events, barge-in flush."""

from __future__ import annotations

import numpy as np
import pytest

from media.playout import (
    PlayoutEvent,
    PlayoutQueue,
    UtteranceFinished,
    UtteranceInterrupted,
    UtteranceStarted,
)
from media.speech import Pcm

N = 160


def ramp(n: int, start: int = 1) -> Pcm:
    return np.arange(start, start + n, dtype=np.int16)


def drain(q: PlayoutQueue) -> tuple[list[Pcm], list[PlayoutEvent]]:
    frames: list[Pcm] = []
    events: list[PlayoutEvent] = []
    while True:
        frame, evs = q.next_frame()
        events += evs
        if frame is None:
            return frames, events
        frames.append(frame)


def test_chunking_and_padding() -> None:
    q = PlayoutQueue()
    audio = ramp(400)
    q.push(audio)
    assert q.queued_frames == 3
    assert q.queued_s == pytest.approx(0.06)
    frames, _ = drain(q)
    assert [f.shape for f in frames] == [(N,)] * 3
    assert all(f.dtype == np.int16 for f in frames)
    assert np.array_equal(np.concatenate(frames)[:400], audio)
    assert not frames[2][80:].any()  # padded with silence
    assert q.queued_frames == 0 and q.queued_s == 0.0


def test_exact_multiple_is_not_padded_with_an_extra_frame() -> None:
    q = PlayoutQueue()
    q.push(ramp(2 * N))
    assert q.queued_frames == 2


def test_nothing_to_play_returns_none() -> None:
    q = PlayoutQueue()
    assert q.next_frame() == (None, [])
    assert not q.playing
    q.push(np.zeros(0, dtype=np.int16), "empty")
    assert q.next_frame() == (None, [])


def test_push_copies_the_callers_audio() -> None:
    q = PlayoutQueue()
    audio = ramp(2 * N + 10)
    q.push(audio)
    audio[:] = 0
    frames, _ = drain(q)
    assert np.array_equal(np.concatenate(frames)[: 2 * N + 10], ramp(2 * N + 10))


def test_events_in_order() -> None:
    q = PlayoutQueue()
    q.push(ramp(2 * N), "a")
    q.push(ramp(N), "b")
    q.push(ramp(3 * N), "c")
    got = [q.next_frame()[1] for _ in range(7)]
    assert got == [
        [UtteranceStarted("a")],
        [UtteranceFinished("a")],
        [UtteranceStarted("b"), UtteranceFinished("b")],
        [UtteranceStarted("c")],
        [],
        [UtteranceFinished("c")],
        [],
    ]
    assert not q.playing


def test_playing_while_anything_is_queued() -> None:
    q = PlayoutQueue()
    q.push(ramp(2 * N), "a")
    assert q.playing  # queued and about to start counts: barge-in must flush it
    q.next_frame()
    assert q.playing
    q.next_frame()
    assert not q.playing


def test_flush_mid_utterance() -> None:
    q = PlayoutQueue()
    q.push(ramp(5 * N), "a")
    q.next_frame()
    q.next_frame()
    dropped, events = q.flush()
    assert dropped == 3
    assert events == [UtteranceInterrupted("a", 2)]
    assert q.queued_frames == 0 and not q.playing
    assert q.next_frame() == (None, [])  # and no late Finished for "a"


def test_flush_reports_queued_utterances_that_never_started() -> None:
    q = PlayoutQueue()
    q.push(ramp(3 * N), "a")
    q.push(ramp(2 * N), "b")
    q.next_frame()
    dropped, events = q.flush()
    assert dropped == 4
    assert events == [UtteranceInterrupted("a", 1), UtteranceInterrupted("b", 0)]


def test_flush_between_utterances_interrupts_only_what_is_queued() -> None:
    q = PlayoutQueue()
    q.push(ramp(N), "a")
    q.next_frame()  # "a" finished
    assert q.flush() == (0, [])
    q.push(ramp(N), "b")
    assert q.next_frame()[1] == [UtteranceStarted("b"), UtteranceFinished("b")]


def test_queue_is_usable_after_flush() -> None:
    q = PlayoutQueue()
    q.push(ramp(N + 10), "a")  # padded tail frame
    q.flush()
    q.push(ramp(N, start=100), "a")  # same id, new utterance: must not fill the old tail
    frame, events = q.next_frame()
    assert frame is not None and np.array_equal(frame, ramp(N, start=100))
    assert events == [UtteranceStarted("a"), UtteranceFinished("a")]


def test_streamed_chunks_of_one_utterance_join_without_gaps() -> None:
    # A TTS streaming 100-sample chunks: padding each would put 60 zeros every 20 ms.
    q = PlayoutQueue()
    audio = ramp(1000)
    for start in range(0, 1000, 100):
        q.push(audio[start : start + 100], "a")
    assert q.queued_frames == 7  # ceil(1000 / 160)
    frames, events = drain(q)
    assert np.array_equal(np.concatenate(frames)[:1000], audio)
    assert not np.concatenate(frames)[1000:].any()
    assert events == [UtteranceStarted("a"), UtteranceFinished("a")]


def test_a_different_utterance_does_not_fill_the_previous_tail() -> None:
    q = PlayoutQueue()
    q.push(ramp(100), "a")
    q.push(ramp(100, start=500), "b")
    frames, events = drain(q)
    assert len(frames) == 2
    assert not frames[0][100:].any()
    assert np.array_equal(frames[1][:100], ramp(100, start=500))
    assert events == [
        UtteranceStarted("a"),
        UtteranceFinished("a"),
        UtteranceStarted("b"),
        UtteranceFinished("b"),
    ]


def test_same_id_after_the_queue_ran_dry_is_a_new_utterance() -> None:
    q = PlayoutQueue()
    q.push(ramp(N), "a")
    assert q.next_frame()[1] == [UtteranceStarted("a"), UtteranceFinished("a")]
    q.push(ramp(N), "a")
    assert q.next_frame()[1] == [UtteranceStarted("a"), UtteranceFinished("a")]


def test_audio_without_an_id_plays_silently_between_utterances() -> None:
    q = PlayoutQueue()
    q.push(ramp(N), None)
    q.push(ramp(N), "a")
    q.push(ramp(2 * N), None)
    got = [q.next_frame()[1] for _ in range(4)]
    assert got == [[], [UtteranceStarted("a"), UtteranceFinished("a")], [], []]
    q.push(ramp(N), None)
    assert q.flush() == (1, [])


def test_rejects_non_int16() -> None:
    q = PlayoutQueue()
    with pytest.raises(TypeError):
        q.push(np.zeros(10, dtype=np.float32))


def test_many_short_utterances_stay_consistent() -> None:
    q = PlayoutQueue()
    total = 0
    for k in range(200):
        n = 1 + (k * 97) % 700
        q.push(ramp(n), f"u{k}")
        total += -(-n // N)
    assert q.queued_frames == total
    assert q.queued_s == pytest.approx(total * 0.02)
    frames, events = drain(q)
    assert len(frames) == total
    started = [e.utterance_id for e in events if isinstance(e, UtteranceStarted)]
    finished = [e.utterance_id for e in events if isinstance(e, UtteranceFinished)]
    assert started == finished == [f"u{k}" for k in range(200)]
