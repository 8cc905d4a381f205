"""A real SIP phone, baresip 1.0 (Debian ``baresip-core``), calls a real node.

baresip runs headless: the ``aufile`` module plays a WAV file we write (a quiet
200 Hz tone) as its microphone, the ``aubridge`` module stands in for a speaker
(nothing needs a sound card), and the ``sndfile`` filter records both directions
to WAV: ``dump-<time>-dec.wav`` is what the phone heard (the node's RTP, decoded),
``dump-<time>-enc.wav`` what it sent. Commands (``/dial``, ``/hangup``, ``/quit``)
go through the ``stdio`` module on baresip's stdin, and ``-s`` puts a SIP trace in
its stdout, so the tests check the messages on the wire as the phone saw them.

What is checked: the call is established; the phone hears the node's greeting
chime (its three notes, by frequency, and sample by sample against
``media.tones.chime()``), then silence frames until the call ends; a hang-up by
the phone ends the call as ``completed``; a call the phone never hangs up is ended
by the node's BYE at ``--max-call-duration-s`` as ``max_duration``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import pytest

from loadtest.baresip import PHONE_TONE_HZ, RATE, Baresip, FloatArray, read_wav
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.ports import LOOPBACK
from media.tones import chime

pytestmark = pytest.mark.e2e

FRAME = RATE // 50  # 20 ms
CHIME_NOTES_HZ = (880.00, 1108.73, 1318.51)  # media/tones.py
CHIME_S = 1.2
HOLD_S = 4.0  # how long the phone stays on the line before /hangup
CHIME_ONLY = {"VOXSWITCH_AGENT": "none"}  # these tests check the media path, not the agent



# ---- baresip ---------------------------------------------------------------------




# ---- audio -----------------------------------------------------------------------


def rms(x: FloatArray) -> float:
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def dominant_hz(x: FloatArray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / RATE)[int(np.argmax(spectrum))])


def best_correlation(x: FloatArray, ref: FloatArray, max_lag: int) -> tuple[float, int]:
    """Highest normalized correlation of `ref` with `x` shifted by 0..max_lag samples."""
    best = (-1.0, 0)
    for lag in range(max_lag + 1):
        seg = x[lag : lag + ref.size]
        if seg.size < ref.size:
            break
        c = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) or 1.0))
        best = max(best, (c, lag))
    return best


def assert_heard_greeting(heard: FloatArray, min_seconds: float, context: str) -> None:
    """The node's greeting chime at the start, then silence frames to the end."""
    assert heard.size >= min_seconds * RATE, (
        f"heard only {heard.size / RATE:.2f} s of audio, want >= {min_seconds} s\n{context}"
    )
    frames = heard[: heard.size // FRAME * FRAME].reshape(-1, FRAME)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 500)
    assert loud.size, f"no audible frame in what the phone heard\n{context}"
    onset = int(loud[0]) * FRAME
    # The recording starts with the first packet decoded: the greeting is right there.
    assert onset <= 0.3 * RATE, f"greeting starts {onset / RATE:.2f} s in\n{context}"
    chime_part = heard[onset : onset + round(CHIME_S * RATE)]
    tail = heard[onset + round(1.5 * RATE) :]
    level, tail_level = rms(chime_part), rms(tail)
    assert level > 1500, f"greeting RMS {level:.0f}: too quiet for a ~30 % chime\n{context}"
    assert tail.size >= 0.25 * RATE, f"no audio after the greeting\n{context}"
    assert tail_level < 50 and level > 30 * max(tail_level, 1.0), (
        f"greeting RMS {level:.0f} vs after-greeting RMS {tail_level:.0f}\n{context}"
    )
    main = dominant_hz(heard[onset : onset + round(1.5 * RATE)])
    assert 300 <= main <= 2000, f"dominant frequency {main:.0f} Hz\n{context}"
    # The three rising notes, each where only it (or mostly it) sounds.
    windows = ((0.02, 0.28), (0.32, 0.58), (0.64, 1.10))
    for (start_s, end_s), want in zip(windows, CHIME_NOTES_HZ, strict=True):
        got = dominant_hz(heard[onset + round(start_s * RATE) : onset + round(end_s * RATE)])
        assert abs(got - want) < 25, (
            f"{start_s}-{end_s} s into the greeting: {got:.0f} Hz, want {want:.0f}\n{context}"
        )
    # Sample by sample: G.711 only adds quantization noise to the node's chime.
    ref = chime().astype(np.float64)
    corr, lag = best_correlation(heard, ref, max_lag=onset + FRAME)
    assert corr > 0.95, f"correlation with chime() {corr:.3f} (lag {lag})\n{context}"


# ---- the node --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start(
        "baresip", NodeOptions(max_call_duration_s=30, env=CHIME_ONLY)
    )


@pytest.fixture(scope="module")
def short_call_node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start(
        "baresip-short", NodeOptions(max_call_duration_s=2, env=CHIME_ONLY)
    )


def dispositions(node: NodeProcess) -> dict[str, int]:
    found = node.health().get("dispositions")
    assert isinstance(found, dict), f"/health dispositions: {found!r}"
    return {str(k): int(v) for k, v in found.items()}


def wait_disposition(
    node: NodeProcess, before: dict[str, int], timeout_s: float = 3.0
) -> dict[str, int]:
    """The dispositions counted since `before` (waits until at least one shows)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = dispositions(node)
        new = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
        if new or time.monotonic() >= deadline:
            return new
        time.sleep(0.1)


def agent_uri(node: NodeProcess) -> str:
    return f"sip:agent@{node.host}:{node.sip_port}"


ESTABLISHED = r"Call established: sip:agent@"
TERMINATED = r"Call with sip:agent@\S+ terminated"


# ---- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_phone_hears_greeting_then_hangs_up(
    phones: Callable[..., Baresip], node: NodeProcess, codec: str
) -> None:
    phone = phones(codec=codec)
    before = dispositions(node)
    phone.dial(agent_uri(node))
    established = phone.wait_for(ESTABLISHED, timeout_s=5)
    assert established is not None, f"call not established\n{phone.describe()}"
    # The node keeps the call (and the RTP) up until the phone hangs up.
    early_end = phone.wait_for(TERMINATED, timeout_s=HOLD_S)
    assert early_end is None, f"call ended before the phone hung up\n{phone.describe()}"
    phone.command("/hangup")
    ended = phone.wait_for(TERMINATED, timeout_s=5)
    assert ended is not None, f"call not terminated after /hangup\n{phone.describe()}"
    phone.quit()
    log = phone.describe()
    assert f"Set audio decoder: {codec} 8000Hz" in phone.log(), log

    trace = phone.sip_trace()
    node_addr, phone_addr = node.sip_address, f"{LOOPBACK}:{phone.sip_port}"
    from_node = [m.method for m in trace if m.source == node_addr]
    from_phone = [m.method for m in trace if m.source == phone_addr]
    assert from_phone[:3] == ["INVITE", "ACK", "BYE"], f"{from_phone}\n{log}"
    assert "SIP/2.0 200" in from_node[from_node.index("SIP/2.0 180") :], log
    assert from_node[-1] == "SIP/2.0 200", f"the BYE not answered 200: {from_node}\n{log}"
    assert "BYE" not in from_node, f"the node hung up: {from_node}\n{log}"

    heard = read_wav(phone.recording("dec"))
    assert_heard_greeting(heard, min_seconds=HOLD_S - 1.0, context=log)
    # The other file is what the phone sent: its own tone, not the greeting.
    sent = read_wav(phone.recording("enc"))
    assert abs(dominant_hz(sent[: 2 * RATE]) - PHONE_TONE_HZ) < 10, log

    new = wait_disposition(node, before)
    assert new == {"completed": 1}, f"dispositions since the call: {new}\n{node.log_tail()}"
    assert node.health().get("active_calls") == 0
    assert node.alive()


def test_node_ends_call_at_max_duration(
    phones: Callable[..., Baresip], short_call_node: NodeProcess
) -> None:
    node, phone = short_call_node, phones()
    before = dispositions(node)
    phone.dial(agent_uri(node))
    established = phone.wait_for(ESTABLISHED, timeout_s=5)
    assert established is not None, f"call not established\n{phone.describe()}"
    # The phone never hangs up: the node must, with a BYE, about 2 s after answering.
    ended = phone.wait_for(TERMINATED, timeout_s=5)
    assert ended is not None, f"the node did not end the call within 5 s\n{phone.describe()}"
    phone.quit()
    log = phone.describe()
    after = ended - established
    assert 1.5 <= after <= 5.0, f"call ended {after:.2f} s after it was established\n{log}"
    # baresip's words for a BYE from the other side.
    assert re.search(r"session closed", phone.log()), log

    trace = phone.sip_trace()
    node_addr, phone_addr = node.sip_address, f"{LOOPBACK}:{phone.sip_port}"
    from_node = [m.method for m in trace if m.source == node_addr]
    from_phone = [m.method for m in trace if m.source == phone_addr]
    assert from_node.count("BYE") == 1, f"node sent {from_node}\n{log}"
    assert "BYE" not in from_phone, f"the phone hung up: {from_phone}\n{log}"
    assert from_phone[:2] == ["INVITE", "ACK"], f"{from_phone}\n{log}"
    assert from_phone[2:] == ["SIP/2.0 200"], f"the node's BYE not answered: {from_phone}\n{log}"

    heard = read_wav(phone.recording("dec"))
    assert_heard_greeting(heard, min_seconds=1.5, context=log)

    new = wait_disposition(node, before)
    assert new == {"max_duration": 1}, f"dispositions since the call: {new}\n{node.log_tail()}"
    assert node.health().get("active_calls") == 0
