"""Call recording end to end: a real phone (baresip) asks the demo agent a question on a
node that records every call, its media on the node's loop and in a media worker.

The recording must be a stereo WAV with the caller on the left (the question, where
the phone said it, recognisable) and the agent on the right (the greeting, then the
answer after the question); the call record and the ``call.recorded`` event carry its
location, size and SHA-256, which match the file; the API serves the same bytes to a
key with ``recordings:read`` and refuses a key without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loadtest.baresip import RATE, Baresip
from loadtest.call_records import query
from loadtest.node import NodeFactory, NodeOptions, NodeProcess, voxswitch_command
from media.asr import phrase_words
from switch.recording.archive import S3Target
from tests.e2e.api_client import ADMIN, api
from tests.e2e.phone_call import PhoneCall, loud_regions
from tests.e2e.polling import wait_for
from tests.e2e.test_voice_agent import (
    AGENT,
    CALLER_WPM,
    NODE_WPM,
    Speech,
    microphone,
    silence,
    transcribe,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=[0, 1], ids=["in-loop", "media-worker"])
def node(
    voxswitch_nodes: NodeFactory,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> NodeProcess:
    workers = request.param
    keys = tmp_path_factory.mktemp("keys") / "api-keys.json"
    env = {
        "VOXSWITCH_MEDIA_WORKERS": str(workers),
        "VOXSWITCH_RECORD": "all",
        "VOXSWITCH_API_KEY": ADMIN,
        "VOXSWITCH_API_KEYS_FILE": str(keys),
    }
    options = NodeOptions(max_call_duration_s=60, media_timeout_s=0, env=env)
    return voxswitch_nodes.start(f"rec-w{workers}", options)


def read_stereo(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def create_key(node: NodeProcess, *scopes: str) -> str:
    keys_file = node.options.env["VOXSWITCH_API_KEYS_FILE"]
    args = [sys.executable, "-m", "switch.cli", "apikey", "create", "--name", "rec"]
    for scope in scopes:
        args += ["--scope", scope]
    done = subprocess.run(
        [*args, "--api-keys-file", keys_file], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def fetch(node: NodeProcess, path: str, key: str) -> tuple[int, bytes, dict[str, str]]:
    url = node.health_url.replace("/health", path)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers.items())


def test_a_recorded_call_has_both_sides_in_its_channels_and_a_checksum_that_holds(
    node: NodeProcess, phones: Callable[..., Baresip]
) -> None:
    question = Speech.of("what are your opening hours", CALLER_WPM)
    greeting = Speech.of(AGENT.greeting(), NODE_WPM)
    lead = greeting.end_s + 1.0  # the question comes after the greeting
    phone = phones(microphone=microphone(silence(lead), question.pcm))
    call = PhoneCall(node, phone)
    call.dial()
    said = call.wait_log(r"turn 1: agent: ", timeout_s=lead + question.seconds + 8)
    assert said is not None, f"no turn within the wait\n{call.context()}"
    time.sleep(4.0)  # part of the answer
    call.hang_up()
    record = call.record()
    context = f"record: {record}\n{call.context()}"
    recording = record["recording"]
    assert isinstance(recording, dict) and recording, context
    path = Path(str(recording["location"]))
    data = path.read_bytes()
    assert recording["sha256"] == hashlib.sha256(data).hexdigest(), context
    assert recording["bytes"] == len(data) and recording["format"] == "wav", context

    stereo = read_stereo(path)
    duration = stereo.shape[0] / RATE
    assert abs(duration - float(recording["duration_s"])) < 0.01, context
    assert lead + question.seconds < duration < lead + question.seconds + 15, context
    caller, agent = stereo[:, 0], stereo[:, 1]
    # The caller's channel: quiet, then the question where the phone said it.
    spoken = loud_regions(caller, merge_gap_s=0.6)
    assert spoken, f"nothing on the caller's channel\n{context}"
    start, end = spoken[0][0], spoken[-1][1]
    assert lead - 0.5 < start < lead + question.onset_s + 0.8, (spoken, context)
    heard = transcribe(caller[round(start * RATE) : round((end + 0.2) * RATE)].astype(float), [])
    # (pocketsphinx on 8 kHz synthetic speech: most words, not always all)
    got = {"what", "are", "your", "opening", "hours"} & set(phrase_words(heard))
    assert len(got) >= 3 and "opening" in got, (heard, context)
    # The agent's channel: the greeting at once, the answer after the question.
    replies = loud_regions(agent, merge_gap_s=0.6)
    assert replies and replies[0][0] < 1.0, (replies, context)
    assert any(s > start + question.seconds - 0.5 for s, _ in replies), (replies, context)
    # Between the greeting and the answer the agent said nothing.
    assert replies[0][1] < lead, (replies, context)

    # The event stream says so too, after call.ended.
    events_file = node.workdir / "voxswitch-events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    mine = [e["type"] for e in events if e["call_id"] == record["call_id"]]
    assert mine[-2:] == ["call.ended", "call.recorded"], mine
    [event] = [e for e in events if e["call_id"] == record["call_id"] and e["type"] == mine[-1]]
    assert event["sha256"] == recording["sha256"]

    # The API serves the same bytes, to a key allowed to hear calls.
    call_id = str(record["call_id"])
    reader = create_key(node, "recordings:read")
    status, body, headers = fetch(node, f"/v1/calls/{call_id}/recording", reader)
    assert status == 200 and body == data and headers["content-type"] == "audio/wav"
    assert headers["x-recording-sha256"] == recording["sha256"]
    status, body, _ = fetch(node, f"/v1/calls/{call_id}/recording", create_key(node, "calls:read"))
    assert status == 403 and b"recordings:read" in body
    status, view = api(node, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and view["recording"]["sha256"] == recording["sha256"]
    status, _ = api(node, "GET", "/v1/calls/no-such-call/recording")
    assert status == 404


ANNOUNCEMENT = "This call is recorded."


def test_an_announced_recording_is_archived_whole_and_transcribed_from_the_store(
    voxswitch_nodes: NodeFactory, services: dict[str, str], phones: Callable[..., Baresip],
    tmp_path: Path,
) -> None:  # fmt: skip
    """A node with PostgreSQL and the S3 store that announces recording: the phone hears
    the notice, then the greeting; the recording in the bucket has the record's
    SHA-256 and both sides audible; the transcribe job reads it from there."""
    tag = uuid.uuid4().hex[:8]
    env = {**services, "VOXSWITCH_RECORD": "all", "VOXSWITCH_API_KEY": ADMIN,
           "VOXSWITCH_RECORD_ANNOUNCEMENT": ANNOUNCEMENT,
           "VOXSWITCH_RECORDINGS_DIR": str(tmp_path / "recordings"),
           "VOXSWITCH_S3_URL": f"{services['VOXSWITCH_S3_URL']}/rec-{tag}",
           "VOXSWITCH_KAFKA_TOPIC": f"voxswitch.test.rec.{tag}"}  # fmt: skip
    node = voxswitch_nodes.start(
        "announced", NodeOptions(max_call_duration_s=60, media_timeout_s=0, env=env)
    )
    notice, greeting = as_a_fresh_node_says([ANNOUNCEMENT, AGENT.greeting()], tmp_path)
    lead = notice.end_s + greeting.end_s + 1.5
    question = Speech.of("what are your opening hours", CALLER_WPM)
    phone = phones(microphone=microphone(silence(lead), question.pcm))
    call = PhoneCall(node, phone)
    call.dial()
    said = call.wait_log(r"turn 1: agent: ", timeout_s=lead + question.seconds + 8)
    assert said is not None, f"no turn within the wait\n{call.context()}"
    time.sleep(3.0)
    call.hang_up()
    record = call.record()
    call_id = str(record["call_id"])
    recording = record["recording"]
    assert isinstance(recording, dict) and recording, record

    def archived() -> str | None:
        rows = query(services["VOXSWITCH_POSTGRES_DSN"],
                     "SELECT recording FROM calls WHERE call_id = $1", call_id)  # fmt: skip
        stored = json.loads(rows[0]["recording"]) if rows and rows[0]["recording"] else {}
        return stored.get("location") if "archived_at" in stored else None

    location = wait_for("the recording in the archive", archived, timeout_s=30)
    s3 = S3Target.from_url(env["VOXSWITCH_S3_URL"])
    key = location.removeprefix(f"s3://{s3.bucket}/")
    data = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == recording["sha256"]
    assert not Path(str(recording["location"])).exists()  # deleted once the store held it
    (tmp_path / "archived.wav").write_bytes(data)
    stereo = read_stereo(tmp_path / "archived.wav")
    caller, agent = stereo[:, 0], stereo[:, 1]
    asked = loud_regions(caller, merge_gap_s=0.6)
    assert asked and lead - 0.5 < asked[0][0] < lead + question.onset_s + 0.8, asked
    # The agent's side: the notice as the node synthesised it, then the greeting.
    replies = loud_regions(agent, merge_gap_s=0.25)
    assert replies[0][0] < 1.0, replies
    at = similar_at(agent, notice.pcm[: round(notice.end_s * RATE)], 0.0, 1.0)
    assert at is not None, replies
    after = similar_at(agent, greeting.pcm[: round(greeting.end_s * RATE)], at + notice.end_s,
                       at + notice.end_s + 1.0)  # fmt: skip
    assert after is not None, (at, replies)
    # (and the greeting is not what the call starts with)
    assert similar_at(agent, greeting.pcm[: round(greeting.end_s * RATE)], 0.0, 0.5) is None

    done = subprocess.run(
        [*voxswitch_command(), "jobs", "run", "transcribe", "--call-id", call_id],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = query(services["VOXSWITCH_POSTGRES_DSN"],
                  "SELECT * FROM call_transcripts WHERE call_id = $1", call_id)  # fmt: skip
    assert {"opening", "hours"} & set(phrase_words(row["caller_text"])), row


_SAY_IN_ORDER = """
import asyncio, sys, numpy as np
from media.tts import EspeakSynthesizer
async def main():
    tts = EspeakSynthesizer(rate_wpm=int(sys.argv[1]))
    for i, text in enumerate(sys.argv[3:]):
        np.save(f"{sys.argv[2]}/{i}.npy", await tts.synthesize(text))
asyncio.run(main())
"""


def as_a_fresh_node_says(texts: list[str], folder: Path) -> list[Speech]:
    """``texts`` synthesised one after the other by a fresh espeak engine, as a new node
    says them: espeak's rendering depends on what the engine said before, and this test
    process's engine has said whatever the tests before this one made it say."""
    subprocess.run([sys.executable, "-c", _SAY_IN_ORDER, str(NODE_WPM), str(folder), *texts],
                   check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    return [Speech.from_pcm(np.load(folder / f"{i}.npy")) for i in range(len(texts))]


def similar_at(channel: np.ndarray, sound: np.ndarray, earliest_s: float, latest_s: float,
               threshold: float = 0.45) -> float | None:  # fmt: skip
    """Where in ``channel`` (between the two times) ``sound`` starts: the lag, to the
    sample, of the best normalised correlation; None if it is nowhere there. espeak's
    rendering of a text depends a little on what the engine said before (the node's
    and the test's differ), so the same words score 0.6-0.8 and other words under 0.2
    (measured); ``threshold`` sits between."""
    ref = sound.astype(float)
    ref /= np.linalg.norm(ref) or 1.0
    lo = round(earliest_s * RATE)
    window = channel[lo : round(latest_s * RATE) + len(ref)].astype(float)
    if len(window) < len(ref):
        return None
    dots = np.correlate(window, ref, mode="valid")
    energy = np.convolve(window**2, np.ones(len(ref)), mode="valid")
    scores = dots / np.sqrt(np.maximum(energy, 1e-9))
    best = int(np.argmax(scores))
    return (lo + best) / RATE if scores[best] >= threshold else None
