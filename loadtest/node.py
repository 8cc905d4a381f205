"""Run a ``voxswitch serve`` node as a child process, for tests and benchmarks.

The node gets its own ports on 127.0.0.1, its logs go to files in a work directory,
and every wait is bounded: start waits for ``GET /health`` to answer 200, stop sends
SIGTERM (the node drains) and kills after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from loadtest.ports import LOOPBACK, free_port, free_port_range, release

ENV_PREFIX = "VOXSWITCH_"


class NodeError(RuntimeError):
    """The node did not start, or did not stop, as it should; the message has its logs."""


def voxswitch_command() -> list[str]:
    """How to start the CLI: the venv's ``voxswitch`` script, else ``python -m switch.cli``."""
    script = Path(sys.executable).with_name("voxswitch")
    if script.exists():
        return [str(script)]
    found = shutil.which("voxswitch")
    if found:
        return [found]
    return [sys.executable, "-m", "switch.cli"]


def taskset_prefix(cpu: int | None) -> list[str]:
    """``taskset -c CPU`` when pinning is asked for and possible, else nothing."""
    if cpu is None or not shutil.which("taskset"):
        return []
    if cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


@dataclass
class NodeOptions:
    """The node's settings that tests vary; anything else goes in `extra`."""

    max_calls: int | None = None
    max_call_duration_s: float | None = None
    media_timeout_s: float | None = None
    ring_ms: int | None = None
    log_level: str = "info"
    rtp_port_count: int = 200
    # Settings outside the CLI contract are passed by environment (VOXSWITCH_<NAME>),
    # so a node that does not know one still starts.
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()


class NodeProcess:
    """One ``voxswitch serve`` child process."""

    def __init__(
        self,
        workdir: Path,
        options: NodeOptions | None = None,
        *,
        name: str = "node",
        cpu: int | None = None,
        used_rtp_ranges: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.options = options or NodeOptions()
        self.name = name
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.sip_port = free_port(udp=True, tcp=True)
        self.api_port = free_port(udp=False, tcp=True)
        self.rtp_ports = free_port_range(self.options.rtp_port_count, exclude=used_rtp_ranges)
        self._ports_released = False
        self.cpu = cpu
        self.node_id = f"{name}-{uuid.uuid4().hex[:6]}"
        self.stdout_path = workdir / f"{name}.stdout.log"
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def sip_address(self) -> str:
        return f"{self.host}:{self.sip_port}"

    @property
    def records_path(self) -> Path:
        """The node's call records (``records_file``, relative to its working directory)."""
        return self.workdir / "voxswitch-calls.jsonl"

    def records(self) -> list[dict[str, object]]:
        """Every call record the node has written so far, oldest first."""
        try:
            text = self.records_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.api_port}/health"

    def command(self) -> list[str]:
        o = self.options
        args = [
            *taskset_prefix(self.cpu),
            *voxswitch_command(),
            "serve",
            "--sip-host", self.host,
            "--sip-port", str(self.sip_port),
            "--rtp-ports", f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "--api-port", str(self.api_port),
        ]  # fmt: skip
        optional: dict[str, object | None] = {
            "--max-calls": o.max_calls,
            "--max-call-duration-s": o.max_call_duration_s,
            "--media-timeout-s": o.media_timeout_s,
            "--ring-ms": o.ring_ms,
        }
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        return [*args, *o.extra_args]

    def environment(self) -> dict[str, str]:
        # A developer's own VOXSWITCH_* settings must not leak into a test node.
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env[ENV_PREFIX + "LOG_LEVEL"] = self.options.log_level
        env[ENV_PREFIX + "API_HOST"] = self.host
        # A node id of its own (not the host name every node here shares): nodes on one
        # Redis must differ, or the second refuses to start (its id is alive elsewhere).
        env[ENV_PREFIX + "NODE_ID"] = self.node_id
        # Test nodes send webhooks and calls to receivers on loopback, which the SSRF
        # policy refuses by default; a test of that policy sets this to "".
        env[ENV_PREFIX + "ALLOWED_PRIVATE_TARGETS"] = "127.0.0.0/8,::1/128"
        # Each node its own state (the knowledge index): never the user's, never shared.
        env[ENV_PREFIX + "STATE_DIR"] = str(self.workdir / "state")
        # Test nodes hear with the light recogniser: dozens of nodes and calls at once
        # share 2 cores here; a test about hearing asks for whisper (the default).
        env[ENV_PREFIX + "ASR"] = "pocketsphinx"
        env.update(self.options.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self, timeout_s: float = 30.0) -> NodeProcess:
        """Start the node and wait until /health answers 200 (or fail with its logs)."""
        if self.process is not None:
            raise NodeError(f"{self.name} already started")
        cmd = self.command()
        (self.workdir / f"{self.name}.command").write_text(" ".join(cmd) + "\n")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.environment(),
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise NodeError(
                    f"{self.name} exited with {code} before it was ready\n"
                    f"command: {' '.join(cmd)}\n{self.log_tail()}"
                )
            try:
                self.health()
                return self
            except (OSError, ValueError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        self.stop(timeout_s=5.0)
        raise NodeError(
            f"{self.name} not healthy after {timeout_s:.0f} s ({last_error})\n"
            f"command: {' '.join(cmd)}\n{self.log_tail()}"
        )

    def health(self, timeout_s: float = 1.0) -> dict[str, object]:
        """GET /health; raises OSError or ValueError unless it answers 200 with JSON."""
        with urllib.request.urlopen(self.health_url, timeout=timeout_s) as response:
            if response.status != 200:
                raise ValueError(f"/health answered {response.status}")
            body = json.loads(response.read() or b"null")
        if not isinstance(body, dict):
            raise ValueError(f"/health body is not a JSON object: {body!r}")
        return body

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to `timeout_s` for the drain, then SIGKILL. Returns the exit code."""
        proc = self.process
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                self._note(f"killed: still running {timeout_s:.0f} s after SIGTERM")
        self.returncode = proc.returncode
        if not self._ports_released:  # once: another node may hold them next
            start, end = self.rtp_ports
            release([self.sip_port, self.api_port, *range(start, end + 1)])
            self._ports_released = True
        return self.returncode

    def _note(self, text: str) -> None:
        with self.stderr_path.open("a") as err:
            err.write(f"\n[{self.name} harness] {text}\n")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tracebacks(self, since: int = 0) -> list[str]:
        """Python tracebacks the node wrote to stderr after character offset `since`."""
        text = self.stderr_text()[since:]
        found: list[str] = []
        for chunk in text.split("Traceback (most recent call last):")[1:]:
            lines = chunk.splitlines()
            # A traceback ends at its first line that does not start with a space.
            end = next(
                (i for i, line in enumerate(lines[1:], 1) if line and not line[0].isspace()),
                len(lines) - 1,
            )
            found.append("Traceback (most recent call last):" + "\n".join(lines[: end + 1]))
        return found

    def log_tail(self, lines: int = 40) -> str:
        text = self.stderr_text().splitlines()[-lines:]
        return f"--- {self.name} stderr ({self.stderr_path}) ---\n" + "\n".join(text)


class NodeFactory:
    """Starts nodes (each with its own ports) and stops them all at the end."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = dict(env or {})
        self.nodes: list[NodeProcess] = []

    def start(self, name: str = "node", options: NodeOptions | None = None) -> NodeProcess:
        """Start a node (settings from `options`) and return it once /health answers."""
        options = options or NodeOptions()
        options = replace(options, env={**self.env, **options.env})
        used = [n.rtp_ports for n in self.nodes]
        node = NodeProcess(
            self.workdir / f"{name}-{len(self.nodes)}", options, name=name, used_rtp_ranges=used
        )
        self.nodes.append(node)
        node.start()
        return node

    def running(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive()]

    def stop_all(self, timeout_s: float = 20.0) -> list[str]:
        """Stop every node; return the problems found (tracebacks, kills, odd exits)."""
        problems: list[str] = []
        for node in self.nodes:
            was_running = node.alive()
            code = node.stop(timeout_s=timeout_s)
            if was_running and code not in (0, None):
                problems.append(f"{node.name} exited with {code} after SIGTERM\n{node.log_tail()}")
            for tb in node.tracebacks():
                problems.append(f"{node.name} wrote a traceback to stderr:\n{tb}")
        return problems
