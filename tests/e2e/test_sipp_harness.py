"""The SIPp harness itself, checked without a node: SIPp's uac against SIPp's uas.

When these fail, the fault is in the harness or the SIPp install, not in voxswitch.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.audio.make_tone import tone_ulaw
from loadtest.ports import LOOPBACK, free_port, free_port_range, port_is_free
from loadtest.sipp import SippServer, parse_duration_ms, parse_error_log, run_sipp

pytestmark = pytest.mark.e2e


@pytest.fixture
def sipp_uas(sipp_path: str, tmp_path: Path) -> Iterator[str]:
    """SIPp's built-in uas on a free port; yields its host:port."""
    port = free_port()
    workdir = tmp_path / "uas"
    workdir.mkdir()
    cmd = [
        sipp_path, "-sn", "uas", "-i", LOOPBACK, "-p", str(port),
        "-mp", str(free_port(tcp=False, span=4)), "-cp", str(free_port(tcp=False)),
        "-nostdin", "-timeout", "60s",
    ]  # fmt: skip
    with (workdir / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_uac_against_sipp_uas_reports_every_call(sipp_uas: str, tmp_path: Path) -> None:
    result = run_sipp(sipp_uas, "uac", workdir=tmp_path / "uac", calls=20, rate=40, timeout_s=30)
    assert result.returncode == 0, result.describe()
    assert result.successful_calls == 20, result.describe()
    assert result.failed_calls == 0
    assert result.count("4_200_Recv") == 20, result.counts
    assert result.count("8_200_Recv") == 20, result.counts
    assert result.response_time_ms < 1000
    assert sum(result.repartition().values()) == 20
    assert result.errors == ()


def test_unanswered_calls_are_reported_as_failures(sipp_path: str, tmp_path: Path) -> None:
    nobody = f"{LOOPBACK}:{free_port()}"
    result = run_sipp(
        nobody,
        "uac",
        workdir=tmp_path / "uac",
        calls=2,
        rate=10,
        timeout_s=20,
        extra_args=["-recv_timeout", "1000"],
    )
    assert result.returncode == 1, result.describe()
    assert result.failed_calls == 2, result.describe()
    assert result.successful_calls == 0
    assert result.errors, "SIPp's error log should say why"


def test_global_timeout_is_a_failure_not_a_hang(sipp_path: str, tmp_path: Path) -> None:
    nobody = f"{LOOPBACK}:{free_port()}"
    result = run_sipp(nobody, "no_ack.xml", workdir=tmp_path / "uac", calls=1, timeout_s=2)
    assert result.returncode not in (0, 1), result.describe()
    assert result.elapsed_s < 10
    assert not result.killed
    assert any("timed out" in e for e in result.errors), result.errors


def test_scenarios_load(sipp_path: str, tmp_path: Path) -> None:
    """Each scenario parses: SIPp runs it (to a quick receive timeout), no load error."""
    scenarios = sorted(
        (Path(__file__).resolve().parents[2] / "loadtest" / "scenarios").glob("*.xml")
    )
    assert {p.name for p in scenarios} >= {
        "cancel.xml",
        "no_ack.xml",
        "media_stops.xml",
        "wait_for_bye.xml",
        "reject_503.xml",
    }
    nobody = f"{LOOPBACK}:{free_port()}"
    for scenario in scenarios:
        first = re.search(r"<(send|recv)\b", scenario.read_text())
        if first is not None and first.group(1) == "recv":
            # A UAS (a carrier, a callee, a registrar): it loads, then waits for a call
            # that never comes until its global timeout.
            workdir = tmp_path / scenario.stem
            workdir.mkdir()
            for name in re.findall(r'rtp_stream="([^",]+)', scenario.read_text()):
                (workdir / name).write_bytes(tone_ulaw(0.1))  # the audio it plays, present
            server = SippServer(scenario, workdir=workdir, timeout_s=2)
            result = server.wait(timeout_s=20)
            assert result.returncode == 255 and result.errors, scenario.name
            assert all("timed out" in e for e in result.errors), (scenario.name, result.errors)
            continue
        result = run_sipp(
            nobody,
            scenario,
            workdir=tmp_path / scenario.stem,
            calls=1,
            timeout_s=10,
            files={"tone.ulaw": tone_ulaw(0.1)},
            extra_args=["-recv_timeout", "500", "-max_retrans", "1"],
        )
        # 1: the call failed (nobody answers); anything else: SIPp rejected the file.
        assert result.returncode == 1, f"{scenario.name}\n{result.describe()}"


def test_parse_helpers() -> None:
    assert parse_duration_ms("00:00:32:004000") == 32004.0
    assert parse_duration_ms("01:02:03:000500") == 3723000.5
    with pytest.raises(ValueError):
        parse_duration_ms("12:00")
    log = (
        "The following events occurred:\n"
        "2026-11-24\t12:23:19.653278\t1795522999.653278: Failed regexp match: a"
        "2026-11-24\t12:23:19.654505\t1795522999.654505: Aborting call on UDP retransmission\n"
    )
    assert parse_error_log(log) == ["Failed regexp match: a", "Aborting call on UDP retransmission"]


def test_ulaw_tone() -> None:
    tone = tone_ulaw(seconds=1.0)
    assert len(tone) == 8000
    assert len(set(tone)) > 20  # a tone, not silence


def test_port_helpers() -> None:
    start, end = free_port_range(100)
    assert end - start + 1 == 100 and start % 2 == 0
    assert all(port_is_free(p, tcp=False) for p in range(start, end + 1))
    assert not 32768 <= start <= 60999
    again = free_port_range(100, exclude=[(start, end)])
    assert again[1] < start or again[0] > end


def test_released_ports_can_be_handed_out_again() -> None:
    """A long session starts more nodes than the RTP regions hold blocks: a stopped
    node's block goes back to the pool."""
    from loadtest.ports import RTP_RANGE_REGIONS, release

    size = 1000
    blocks = sum((hi - lo + 1) // size for lo, hi in RTP_RANGE_REGIONS)
    held = []
    for _ in range(blocks * 2):  # twice what the regions hold: only with release
        start, end = free_port_range(size)
        held.append((start, end))
        release(range(start, end + 1))
    assert len(held) == blocks * 2
