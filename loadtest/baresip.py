"""baresip (Debian ``baresip-core``, 1.0) as a headless SIP phone for tests.

The ``aufile`` module plays a WAV file as the phone's microphone, ``aubridge``
stands in for a speaker (no sound card needed), and the ``sndfile`` filter records
both directions: ``dump-<time>-dec.wav`` is what the phone heard (the node's RTP,
decoded), ``dump-<time>-enc.wav`` what it sent. Commands (``/dial``, ``/hangup``,
``/quit``) go through the ``stdio`` module on stdin; ``-s`` traces SIP on stdout.

Over TLS (``transport="tls"``) it checks nothing of the peer's certificate (libre
1.1 trusts any), presents ``certificate`` (certificate and key in one PEM) when
given, and listens for TLS on ``sip_port + 1``; ``mediaenc="srtp-mand"`` makes it
offer and answer RTP/SAVP with SDES keys only, ``"srtp"`` best-effort SRTP.
``answer=True`` auto-answers calls to it (``start()`` instead of ``dial()``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from loadtest.ports import LOOPBACK, free_port, free_port_range, release

RATE = 8000  # G.711, and what sndfile records at with auplay/ausrc_srate 8000
PHONE_TONE_HZ = 200.0  # the default microphone: far below anything the node sends
ANSI = re.compile(r"\x1b\[[0-9;]*m")

FloatArray = npt.NDArray[np.float64]


@dataclass
class SipMessage:
    source: str
    destination: str
    start_line: str

    @property
    def method(self) -> str:
        """The request method, or ``SIP/2.0 <code>`` for a response."""
        first = self.start_line.split(" ", 2)
        return " ".join(first[:2]) if first[0] == "SIP/2.0" else first[0]


class Baresip:
    """One baresip process with its own config dir, ports and recordings."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        codec: str = "PCMU",
        microphone: npt.NDArray[np.int16] | None = None,
        transport: str = "udp",
        mediaenc: str = "",
        certificate: Path | None = None,
        answer: bool = False,
        user: str = "baresip",
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config_dir = workdir / "config"
        self.record_dir = workdir / "recordings"
        self.stdout_path = workdir / "baresip.stdout.log"
        self.stderr_path = workdir / "baresip.stderr.log"
        # baresip also listens for SIP over TLS on the port above sip_listen's: both free.
        self.sip_port = free_port(udp=True, tcp=True, span=2)
        self.tls_port = self.sip_port + 1
        rtp_start, rtp_end = free_port_range(20)
        self._ports = [self.sip_port, self.sip_port + 1, *range(rtp_start, rtp_end + 1)]
        self.config_dir.mkdir(parents=True)
        self.record_dir.mkdir()
        source = workdir / "phone-tone.wav"
        if microphone is None:  # a quiet low tone: easy to tell from what the node sends
            microphone = tone(PHONE_TONE_HZ, seconds=20.0, level=0.05)
        write_wav(source, microphone)
        srtp_module = "module\t\t\tsrtp.so" if mediaenc else ""
        certificate_line = f"sip_certificate\t{certificate}" if certificate else ""
        # Only what the tests need: no alsa, no NAT helpers, no video.
        config = f"""\
poll_method\t\tepoll
sip_listen\t\t{LOOPBACK}:{self.sip_port}
net_interface\t\t{LOOPBACK}
net_prefer_ipv6\t\tno
rtp_ports\t\t{rtp_start}-{rtp_end}
call_local_timeout\t20
call_max_calls\t\t1
audio_source\t\taufile,{source}
audio_player\t\taubridge,speaker
audio_alert\t\taubridge,speaker
ausrc_srate\t\t{RATE}
auplay_srate\t\t{RATE}
ausrc_channels\t\t1
auplay_channels\t\t1
audio_level\t\tno
snd_path\t\t{self.record_dir}
module_path\t\t/usr/lib/baresip/modules
{srtp_module}
{certificate_line}
module\t\t\tstdio.so
module\t\t\tg711.so
module\t\t\taufile.so
module\t\t\taubridge.so
module\t\t\tsndfile.so
module_tmp\t\tuuid.so
module_tmp\t\taccount.so
module_app\t\tcontact.so
module_app\t\tmenu.so
"""
        (self.config_dir / "config").write_text(config)
        params = f";regint=0;audio_codecs={codec}/8000/1"
        params += f";mediaenc={mediaenc}" if mediaenc else ""
        params += ";answermode=auto" if answer else ""
        uri_params = f";transport={transport}" if transport != "udp" else ""
        (self.config_dir / "accounts").write_text(
            f"<sip:{user}@{LOOPBACK}{uri_params}>{params}\n"
        )
        (self.config_dir / "contacts").write_text("")
        self.process: subprocess.Popen[bytes] | None = None

    def dial(self, uri: str) -> None:
        self.start(f"/dial {uri}")

    def start(self, command: str | None = None) -> None:
        """Run baresip (waiting for calls, or running ``command`` first)."""
        # -s: SIP trace on stdout. stdbuf: line-buffered stdout, so the log can be
        # followed while the call runs.
        prefix = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        cmd = [*prefix, self.binary, "-s", "-f", str(self.config_dir)]
        cmd += ["-e", command] if command else []
        (self.workdir / "baresip.command").write_text(" ".join(cmd) + "\n")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,
            )

    def command(self, text: str) -> None:
        """Type a command into baresip's stdio UI (``/hangup``, ``/quit``)."""
        proc = self.process
        assert proc is not None and proc.stdin is not None
        if proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(text.encode() + b"\n")
                proc.stdin.flush()

    def log(self) -> str:
        try:
            text = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return ANSI.sub("", text).replace("\r", "\n")

    def wait_for(self, pattern: str, timeout_s: float) -> float | None:
        """Poll the log until `pattern` (a regex) shows up; the time it did, or None."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            if regex.search(self.log()):
                return time.monotonic()
            if time.monotonic() >= deadline or (self.process and self.process.poll() is not None):
                return time.monotonic() if regex.search(self.log()) else None
            time.sleep(0.05)

    def quit(self, timeout_s: float = 5.0) -> int | None:
        """/quit, then SIGTERM, then SIGKILL: every wait bounded."""
        proc = self.process
        if proc is None:
            self._release_ports()
            return None
        self.command("/quit")
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        self._release_ports()
        return proc.returncode

    def _release_ports(self) -> None:
        release(self._ports)
        self._ports = []  # once: another phone may hold them next

    def sip_trace(self) -> list[SipMessage]:
        """The SIP messages of the ``-s`` trace, in order."""
        found = re.finditer(r"^(?:UDP|TCP|TLS) (\S+) -> (\S+)\n(.+)$", self.log(), re.MULTILINE)
        return [SipMessage(m[1], m[2], m[3].strip()) for m in found]

    def recording(self, direction: str) -> Path:
        """sndfile's ``-dec.wav`` (heard) or ``-enc.wav`` (sent) recording."""
        files = sorted(self.record_dir.glob(f"dump-*-{direction}.wav"))
        assert len(files) == 1, f"want one {direction} recording, found {files}\n{self.describe()}"
        return files[0]

    def describe(self) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            err = ""
        # The stdio UI's status line, redrawn on stderr many times a second, hides the rest.
        err = re.sub(r"\[\d+:\d\d:\d\d\] audio=\S+ \(bit/s\) *", "", err.replace("\r", ""))
        return (
            f"--- baresip stdout ({self.stdout_path}) ---\n{self.log()[-6000:]}\n"
            f"--- baresip stderr ({self.stderr_path}) ---\n{err[-2000:]}"
        )


def tone(freq: float, *, seconds: float, level: float) -> npt.NDArray[np.int16]:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def write_wav(path: Path, pcm: npt.NDArray[np.int16], rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> FloatArray:
    with wave.open(str(path), "rb") as wav:
        shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        assert shape == (1, 2, RATE), f"{path}: (channels, width, rate) {shape}"
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64)
