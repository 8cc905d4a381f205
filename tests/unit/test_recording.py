"""The call recorder: a stereo WAV any reader takes, whole even after a crash."""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import numpy as np

from media.recording import HEADER_BYTES, CallRecorder, summarize
from media.session import MediaSession

FRAME = 160


def frame(value: int) -> np.ndarray:
    return np.full(FRAME, value, dtype=np.int16)


def read(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def test_caller_left_agent_right_silence_where_we_sent_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.wav"  # folders made as needed
    recorder = CallRecorder(path)
    for i in range(120):  # more than two flushes
        recorder.add(frame(i), frame(-i) if i % 2 else None)
    recorder.close()
    stereo = read(path)
    assert stereo.shape == (120 * FRAME, 2)
    assert list(stereo[::FRAME, 0]) == list(range(120))
    assert list(stereo[::FRAME, 1]) == [-i if i % 2 else 0 for i in range(120)]


def test_a_recorder_opened_again_appends_and_a_lost_tail_is_only_the_buffer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "call.wav"
    first = CallRecorder(path)
    for _ in range(60):
        first.add(frame(1), frame(2))
    # The process dies here: 50 frames were written, 10 still buffered, the header's
    # sizes are still 0. The call moves to another worker, which opens it again.
    first._file.close()
    second = CallRecorder(path)
    for _ in range(30):
        second.add(frame(3), frame(4))
    second.close()
    stereo = read(path)
    assert stereo.shape == ((50 + 30) * FRAME, 2)
    assert set(stereo[: 50 * FRAME, 0]) == {1} and set(stereo[50 * FRAME :, 0]) == {3}


def test_the_summary_is_the_files_size_duration_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path)
    for _ in range(100):
        recorder.add(frame(7), None)
    recorder.close()
    summary = summarize(path)
    data = path.read_bytes()
    assert summary.bytes == len(data) == HEADER_BYTES + 100 * FRAME * 4
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert summary.duration_s == 2.0 and summary.format == "wav"
    assert summary.as_dict()["channels"] == "caller-left,agent-right"


def test_the_session_records_what_the_recogniser_hears_and_what_it_sends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "call.wav"
    session = MediaSession(codec="PCMU", payload_type=0, recorder=CallRecorder(path))
    agent = np.full(FRAME * 3, 1000, dtype=np.int16)
    session.say(agent, "t1-0")
    ulaw_silence = b"\xff" * FRAME
    now = 0.0
    for seq in range(10):
        session.receive(0, seq, seq * FRAME, ulaw_silence, now)
        session.tick(now)
        now += 0.02
    session.recorder.close()  # type: ignore[union-attr]
    stereo = read(path)
    assert stereo.shape == (10 * FRAME, 2)
    assert set(stereo[: 3 * FRAME, 1]) == {1000} and set(stereo[3 * FRAME :, 1]) == {0}
    assert np.abs(stereo[:, 0]).max() < 10  # µ-law silence from the caller


def test_a_recording_is_named_by_its_call_id_made_safe_and_unique() -> None:
    from switch.recording import recording_path

    a = recording_path("/rec", "abc@10.0.0.1/../x", now=0.0)
    b = recording_path("/rec", "abc@10.0.0.1/../y", now=0.0)
    assert a.startswith("/rec/1970-01-01/abc_10.0.0.1_.._x-") and a.endswith(".wav")
    assert "/" not in a.removeprefix("/rec/1970-01-01/")  # no way out of its folder
    assert a != b
