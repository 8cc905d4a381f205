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
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loadtest.baresip import RATE, Baresip
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from media.asr import phrase_words
from tests.e2e.api_client import ADMIN, api
from tests.e2e.phone_call import PhoneCall, loud_regions
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
