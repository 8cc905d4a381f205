"""Kamailio (Debian's ``kamailio``) in front of voxswitch nodes, as a child process.

It runs ``deploy/kamailio/kamailio.cfg`` in the foreground on a loopback port of its
own, with a dispatcher list naming the nodes; its log goes to a file in the work
directory. Start waits until it answers an OPTIONS; stop sends SIGTERM, then kills.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from loadtest.ports import LOOPBACK, free_port

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "kamailio" / "kamailio.cfg"
SHM_MB, PKG_MB = 256, 16  # the default 64 MB of shared memory ran out at 450 calls/s


class KamailioError(RuntimeError):
    """Kamailio did not start or check as it should; the message has its log."""


def kamailio_path() -> str:
    path = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )
    if path is None:
        raise KamailioError("kamailio not found: deploy/local/install-test-deps.sh installs it")
    return path


def dispatcher_list(nodes: Sequence[tuple[str, int, str]]) -> str:
    """The dispatcher file: set 1, one line per node (host, SIP port, name)."""
    return "".join(f"1 sip:{host}:{port} 0 0 duid={name}\n" for host, port, name in nodes)


def options_ping(host: str, port: int, timeout_s: float = 1.0) -> int | None:
    """Send one OPTIONS over UDP; the response's status code, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        local = sock.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{local};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{LOOPBACK}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{LOOPBACK}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout_s)
        sock.sendto(request.encode(), (host, port))
        try:
            data = sock.recv(65535)
        except OSError:
            return None
    match = re.match(rb"SIP/2\.0 (\d{3})", data)
    return int(match.group(1)) if match else None


class Kamailio:
    """One Kamailio balancer over ``nodes`` (host, SIP port, name)."""

    def __init__(
        self,
        workdir: Path,
        nodes: Sequence[tuple[str, int, str]],
        *,
        probe_s: int = 1,
        children: int = 2,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.port = free_port(udp=True, tcp=False)
        self.probe_s = probe_s
        self.children = children
        self.list_path = workdir / "dispatcher.list"
        self.list_path.write_text(dispatcher_list(nodes))
        self.log_path = workdir / "kamailio.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def sip_address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self, *extra: str) -> list[str]:
        return [
            kamailio_path(), "-f", str(CONFIG), "-Y", str(self.workdir),
            "-m", str(SHM_MB), "-M", str(PKG_MB),
            "-A", f'DS_LIST="{self.list_path}"',
            "-A", f"LB_LISTEN=udp:{self.host}:{self.port}",
            "-A", f"PROBE_S={self.probe_s}",
            "-A", f"CHILDREN={self.children}",
            "-A", f'CTL_SOCKET="unix:{self.workdir}/ctl"',
            *extra,
        ]  # fmt: skip

    def check(self) -> str:
        """``kamailio -c``: the config parses; its output."""
        done = subprocess.run(
            self.command("-c"), capture_output=True, text=True, timeout=30, check=False
        )
        output = done.stdout + done.stderr
        if done.returncode != 0 or "config file ok" not in output:
            raise KamailioError(f"kamailio -c failed:\n{output[-3000:]}")
        return output

    def start(self, timeout_s: float = 15.0) -> None:
        log = self.log_path.open("ab")
        # -DD: stay in the foreground (and keep the children attached); -E: log to stderr.
        self.process = subprocess.Popen(
            self.command("-DD", "-E"), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise KamailioError(f"kamailio exited ({self.process.returncode}):\n{self.log()}")
            if options_ping(self.host, self.port, 0.3) == 200:
                return
        raise KamailioError(f"kamailio gave no OPTIONS answer in {timeout_s:g} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def routed(self) -> dict[str, int]:
        """How many new calls the log says went to each node (``host:port``)."""
        counts: dict[str, int] = {}
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for target in re.findall(r"new call to sip:([\d.]+:\d+)", text):
            counts[target] = counts.get(target, 0) + 1
        return counts

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)
