"""Jitter buffer: ordering, loss, duplicates, wrap-around, late packets, fill, overflow.

The buffer has no clock: "time" is the sequence of put/pull calls, one pull per 20 ms
tick, exactly as the media loop drives it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media import g711
from media.jitter import JitterBuffer
from media.speech import Pcm

N = 160


def frame(i: int) -> Pcm:
    """A recognisable frame per index: distinct, non-zero, varying within the frame."""
    return ((np.arange(N) * 7 + i * 1013) % 20000 - 10000 + 1).astype(np.int16)


def put_frame(jb: JitterBuffer, i: int, seq0: int = 1000, ts0: int = 50_000) -> None:
    jb.put((seq0 + i) & 0xFFFF, (ts0 + i * N) & 0xFFFFFFFF, frame(i))


def real(jb: JitterBuffer) -> bool:
    # A call, so the type checker does not narrow the flag across pulls.
    return jb.last_pull_real


def is_silence(x: Pcm) -> bool:
    return x.size == N and not np.any(x)


def test_in_order_stream_plays_every_frame_in_order() -> None:
    jb = JitterBuffer()
    out: list[Pcm] = []
    flags: list[bool] = []
    for i in range(20):
        put_frame(jb, i)
        out.append(jb.pull())
        flags.append(jb.last_pull_real)
    # Two ticks of fill (target 3), then frame k-2 on tick k.
    assert all(is_silence(x) for x in out[:2])
    assert flags == [False, False] + [True] * 18
    for k in range(2, 20):
        assert np.array_equal(out[k], frame(k - 2))
    assert jb.stats.received == 20
    assert jb.stats.concealed == 0
    assert jb.stats.depth == 2


def test_initial_fill_waits_for_target_frames() -> None:
    jb = JitterBuffer(target_frames=4)
    put_frame(jb, 0)
    put_frame(jb, 1)
    put_frame(jb, 2)
    for _ in range(10):  # three buffered is not enough, however long we wait
        x = jb.pull()
        assert is_silence(x)
        assert not real(jb)
    assert jb.stats.concealed == 0  # silence before playout is not concealment
    put_frame(jb, 3)
    assert np.array_equal(jb.pull(), frame(0))
    assert real(jb)


def test_reordered_packets_come_out_in_timestamp_order() -> None:
    jb = JitterBuffer()
    for i in [1, 0, 3, 2, 5, 4, 7, 6]:
        put_frame(jb, i)
    for i in range(8):
        assert np.array_equal(jb.pull(), frame(i))
    assert jb.stats.late == 0
    assert jb.stats.concealed == 0


def test_reorder_within_the_buffer_while_playing() -> None:
    jb = JitterBuffer()
    for i in range(3):
        put_frame(jb, i)
    assert np.array_equal(jb.pull(), frame(0))
    put_frame(jb, 4)  # 3 is overtaken by 4 but arrives before it is due
    assert np.array_equal(jb.pull(), frame(1))
    put_frame(jb, 3)
    for i in (2, 3, 4):
        assert np.array_equal(jb.pull(), frame(i))


def test_duplicates_are_dropped_and_counted() -> None:
    jb = JitterBuffer()
    for i in [0, 1, 1, 2, 2, 2]:
        put_frame(jb, i)
    assert jb.stats.duplicates == 3
    assert jb.depth == 3
    for i in range(3):
        assert np.array_equal(jb.pull(), frame(i))
    put_frame(jb, 0)  # a duplicate of a frame already played is a duplicate, not late
    assert jb.stats.duplicates == 4
    assert jb.stats.late == 0


def test_same_timestamp_under_a_new_sequence_number_is_a_duplicate() -> None:
    jb = JitterBuffer()
    put_frame(jb, 0)
    jb.put(1999, 50_000, frame(9))  # same media, another sequence number
    assert jb.stats.duplicates == 1
    put_frame(jb, 1)
    put_frame(jb, 2)
    assert np.array_equal(jb.pull(), frame(0))


def test_lost_packet_is_concealed_by_attenuated_repeat() -> None:
    jb = JitterBuffer()
    for i in [0, 1, 2, 3, 5, 6]:
        put_frame(jb, i)
    for i in range(4):
        assert np.array_equal(jb.pull(), frame(i))
    x = jb.pull()  # frame 4 is missing, 5 and 6 are waiting
    assert not real(jb)
    assert np.array_equal(x, (frame(3) * 0.5).astype(np.int16))
    assert jb.stats.concealed == 1
    assert np.array_equal(jb.pull(), frame(5))
    assert real(jb)
    assert np.array_equal(jb.pull(), frame(6))


def test_long_gap_conceals_three_frames_then_silence() -> None:
    jb = JitterBuffer()
    for i in [0, 1, 2, 10, 11]:
        put_frame(jb, i)
    for i in range(3):
        assert np.array_equal(jb.pull(), frame(i))
    gap = [jb.pull() for _ in range(7)]  # frames 3..9
    for k, gain in enumerate([0.5, 0.25, 0.125]):
        assert np.array_equal(gap[k], (frame(2) * gain).astype(np.int16))
    assert all(is_silence(x) for x in gap[3:])
    assert jb.stats.concealed == 3
    # Playout kept its timing across the gap: frame 10 is next.
    assert np.array_equal(jb.pull(), frame(10))
    assert real(jb)


def test_underrun_refills_and_keeps_the_missing_frame_due() -> None:
    jb = JitterBuffer()
    for i in range(3):
        put_frame(jb, i)
    for i in range(3):
        assert np.array_equal(jb.pull(), frame(i))
    # Nothing buffered: concealment, then silence, and the buffer is filling again.
    dry = [jb.pull() for _ in range(5)]
    assert np.array_equal(dry[0], (frame(2) * 0.5).astype(np.int16))
    assert all(is_silence(x) for x in dry[3:])
    assert jb.stats.concealed == 3
    put_frame(jb, 3)  # the frame that was due when it ran dry: not late
    put_frame(jb, 4)
    assert is_silence(jb.pull())  # two buffered, target three: still filling
    assert not real(jb)
    put_frame(jb, 5)
    assert jb.stats.late == 0
    for i in (3, 4, 5):
        assert np.array_equal(jb.pull(), frame(i))
        assert real(jb)


def test_concealment_restarts_after_real_audio() -> None:
    jb = JitterBuffer(target_frames=1)
    put_frame(jb, 0)
    jb.pull()
    assert jb.pull().any()  # concealed
    put_frame(jb, 1)
    put_frame(jb, 3)
    assert np.array_equal(jb.pull(), frame(1))
    x = jb.pull()  # 2 lost: concealment starts over at half level
    assert np.array_equal(x, (frame(1) * 0.5).astype(np.int16))


@pytest.mark.parametrize(("seq0", "ts0"), [(65530, 2**32 - 5 * N), (65535, 2**32 - 1), (0, 0)])
def test_sequence_and_timestamp_wrap_around(seq0: int, ts0: int) -> None:
    jb = JitterBuffer()
    order = list(range(30))
    order[4], order[6] = order[6], order[4]  # reordered across the wrap
    order[5], order[7] = order[7], order[5]
    out: list[Pcm] = []
    for k, i in enumerate(order):
        put_frame(jb, i, seq0, ts0)
        if k >= 2:
            out.append(jb.pull())
    out += [jb.pull() for _ in range(2)]
    for i, x in enumerate(out):
        assert np.array_equal(x, frame(i)), i
    stats = jb.stats
    assert (stats.late, stats.duplicates, stats.concealed, stats.overflowed) == (0, 0, 0, 0)


def test_late_packet_is_dropped_and_counted() -> None:
    jb = JitterBuffer()
    for i in [0, 1, 2, 4, 5]:
        put_frame(jb, i)
    for i in range(3):
        assert np.array_equal(jb.pull(), frame(i))
    jb.pull()  # frame 3 never came: concealed
    put_frame(jb, 3)  # now it arrives, behind the playout point
    assert jb.stats.late == 1
    assert jb.stats.duplicates == 0
    assert np.array_equal(jb.pull(), frame(4))
    assert np.array_equal(jb.pull(), frame(5))


def test_overflow_drops_the_oldest() -> None:
    jb = JitterBuffer(max_frames=5)
    for i in range(8):
        put_frame(jb, i)
    assert jb.stats.overflowed == 3
    assert jb.depth == 5
    for i in range(3, 8):
        assert np.array_equal(jb.pull(), frame(i))
    assert jb.stats.concealed == 0
    jb.put(900, 50_000 + N, frame(1))  # behind what overflow skipped: late
    assert jb.stats.late == 1


def test_overflow_while_playing_skips_ahead_without_concealing() -> None:
    jb = JitterBuffer(max_frames=4)
    for i in range(3):
        put_frame(jb, i)
    assert np.array_equal(jb.pull(), frame(0))
    for i in range(3, 9):  # a burst: 1..8 is 8 frames, 4 fit
        put_frame(jb, i)
    assert jb.stats.overflowed == 4
    for i in range(5, 9):
        assert np.array_equal(jb.pull(), frame(i))
        assert jb.last_pull_real
    assert jb.stats.concealed == 0


def test_reset_starts_a_new_stream() -> None:
    jb = JitterBuffer()
    for i in range(10):
        put_frame(jb, i)
    for _ in range(5):
        jb.pull()
    jb.reset()
    assert jb.depth == 0
    assert not real(jb)
    # New SSRC: unrelated sequence numbers and timestamps far behind the old ones.
    put_frame(jb, 0, seq0=7, ts0=100)
    assert is_silence(jb.pull())  # filling again, and no concealment of the old stream
    put_frame(jb, 1, seq0=7, ts0=100)
    put_frame(jb, 2, seq0=7, ts0=100)
    for i in range(3):
        assert np.array_equal(jb.pull(), frame(i))
    assert jb.stats.late == 0
    assert jb.stats.concealed == 0
    assert jb.stats.received == 13  # counters describe the call, so survive a reset


def test_packets_of_other_sizes_are_placed_by_timestamp() -> None:
    jb = JitterBuffer()
    audio = np.concatenate([frame(i) for i in range(6)])
    # 40 ms, 10 ms, 10 ms, then 40 ms ahead of the 20 ms that precedes it.
    pieces = [(0, 320), (320, 400), (400, 480), (640, 960), (480, 640)]
    for seq, (a, b) in enumerate(pieces):
        jb.put(seq, 8000 + a, audio[a:b])
    for i in range(6):
        assert np.array_equal(jb.pull(), frame(i)), i
        assert jb.last_pull_real
    assert jb.stats.concealed == 0


def test_packets_off_the_frame_grid_are_spliced() -> None:
    # After a 10 ms packet every 20 ms packet straddles two pulled frames.
    jb = JitterBuffer()
    audio = np.concatenate([frame(i) for i in range(8)])
    jb.put(0, 0, audio[:80])
    for seq, start in enumerate(range(80, 8 * N, N), start=1):
        jb.put(seq, start, audio[start : start + N])
    for i in range(8):
        assert np.array_equal(jb.pull(), frame(i)), i
    assert jb.stats.concealed == 0 and jb.depth == 0


def test_partially_received_frame_is_real_with_silence_in_the_hole() -> None:
    jb = JitterBuffer(target_frames=1)
    half = frame(0)[:80]
    jb.put(1, 0, half)
    jb.put(3, N, frame(1))
    # depth counts whole frames: 80 + 160 samples is one frame, enough to start.
    x = jb.pull()
    assert jb.last_pull_real
    assert np.array_equal(x[:80], half)
    assert not x[80:].any()
    assert np.array_equal(jb.pull(), frame(1))


def test_packet_straddling_the_playout_point_keeps_its_future_part() -> None:
    jb = JitterBuffer(target_frames=1)
    put_frame(jb, 0)
    assert np.array_equal(jb.pull(), frame(0))
    # 320 samples starting one frame before the playout point: half late, half due.
    jb.put(1000 + 5, 50_000, np.concatenate([frame(7), frame(1)]))
    assert jb.stats.late == 0
    assert np.array_equal(jb.pull(), frame(1))


@pytest.mark.parametrize("seq0", [1000, 65533])
def test_timestamp_restart_without_new_ssrc_is_followed(seq0: int) -> None:
    jb = JitterBuffer()
    for i in range(5):
        put_frame(jb, i, seq0=seq0)
    for _ in range(5):
        jb.pull()
    # The next sequence numbers (past the wrap, for 65533), but timestamps restarted.
    for i in range(3):
        jb.put((seq0 + 5 + i) & 0xFFFF, 1000 + i * N, frame(20 + i))
    assert jb.stats.late == 0
    for i in range(3):
        assert np.array_equal(jb.pull(), frame(20 + i))


def test_forward_timestamp_jump_resyncs() -> None:
    jb = JitterBuffer(max_frames=10)
    for i in range(3):
        put_frame(jb, i)
    jb.pull()
    # A jump of 1000 frames ahead while still playing: the buffer cannot wait that out.
    for i in range(1000, 1003):
        put_frame(jb, i)
    assert np.array_equal(jb.pull(), frame(1))
    assert np.array_equal(jb.pull(), frame(2))
    assert np.array_equal(jb.pull(), frame(1000))


def test_pull_always_returns_a_fresh_160_sample_frame() -> None:
    jb = JitterBuffer()
    for i in range(3):
        put_frame(jb, i)
    for _ in range(3):
        x = jb.pull()
        x[:] = 12345  # the caller may scribble on it
    assert np.array_equal(jb.pull(), (frame(2) * 0.5).astype(np.int16))
    for _ in range(8):
        x = jb.pull()
        assert x.dtype == np.int16 and x.shape == (N,)
        x[:] = 12345
    assert is_silence(jb.pull())


def test_put_copies_the_callers_buffer() -> None:
    jb = JitterBuffer(target_frames=1)
    buf = frame(0).copy()
    jb.put(1, 0, buf)
    buf[:] = 0
    assert np.array_equal(jb.pull(), frame(0))


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(target_frames=0)
    with pytest.raises(ValueError):
        JitterBuffer(target_frames=6, max_frames=5)
    with pytest.raises(ValueError):
        JitterBuffer(frame_samples=0)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_round_trip_with_loss(codec: str) -> None:
    rng = np.random.default_rng(42)
    drop = random.Random(7)
    t = np.arange(N * 500) / 8000
    speechlike = 8000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 1500, t.size)
    pcm = np.clip(speechlike, -32768, 32767).astype(np.int16)
    payloads = [g711.encode(codec, pcm[i * N : (i + 1) * N]) for i in range(500)]
    lost = {i for i in range(500) if drop.random() < 0.05}
    assert 10 < len(lost) < 45  # the seed really loses about 5%

    jb = JitterBuffer()
    out: list[Pcm] = []
    real_frames: list[Pcm] = []
    seq0, ts0 = 65500, 2**32 - 100 * N  # both counters wrap during the call
    for i in range(500 + 10):  # ten extra ticks drain the buffer
        if i < 500 and i not in lost:
            decoded = g711.decode(codec, payloads[i])
            jb.put((seq0 + i) & 0xFFFF, (ts0 + i * N) & 0xFFFFFFFF, decoded)
        x = jb.pull()
        assert x.shape == (N,) and x.dtype == np.int16
        out.append(x)
        if jb.last_pull_real:
            real_frames.append(x)

    assert len(out) == 510
    kept = [g711.decode(codec, payloads[i]) for i in range(500) if i not in lost]
    assert len(real_frames) == len(kept)
    for got, want in zip(real_frames, kept, strict=True):
        assert np.array_equal(got, want)
    stats = jb.stats
    assert stats.received == 500 - len(lost)
    assert (stats.late, stats.duplicates, stats.overflowed) == (0, 0, 0)
    assert stats.concealed >= len(lost)  # every loss was at least concealed
    assert stats.depth == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-3, 6), st.sampled_from([160, 160, 160, 80, 320]), st.booleans()),
        min_size=1,
        max_size=120,
    ),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
)
def test_fast_path_for_handed_over_frames_matches_the_general_path(
    steps: list[tuple[int, int, bool]], seq0: int, ts0: int
) -> None:
    """``copy=False`` takes a shortcut for the in-order next frame; whatever arrives
    (reordered, duplicated, odd sizes, jumps, wraps) the output and counters match."""
    general, fast = JitterBuffer(), JitterBuffer()
    seq, ts = seq0, ts0
    rng = np.random.default_rng(seq0)
    for jump, size, pull in steps:
        seq = (seq + jump) & 0xFFFF
        ts = (ts + jump * 160) & 0xFFFFFFFF
        pcm = rng.integers(-3000, 3000, size, dtype=np.int16)
        general.put(seq, ts, pcm)
        fast.put(seq, ts, pcm.copy(), copy=False)
        if pull:
            assert np.array_equal(general.pull(), fast.pull())
    for _ in range(60):
        assert np.array_equal(general.pull(), fast.pull())
    assert general.stats == fast.stats
