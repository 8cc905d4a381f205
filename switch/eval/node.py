"""A throwaway node for a suite: its own folder, ports on loopback, the suite's agents
and knowledge loaded, every call routed to the agent under test; gone afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from switch.eval.errors import EvalError
from switch.eval.suite import Suite

START_TIMEOUT_S = 90.0  # a node loads its speech models before it answers /health
RTP_PORTS = 400


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP (SIP listens on both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with contextlib.suppress(OSError), socket.socket() as tcp:
            tcp.bind(("127.0.0.1", port))
            return port
    raise EvalError("no free port for SIP on 127.0.0.1")


class ThrowawayNode:
    """``async with ThrowawayNode(suite, folder) as node:`` a node answering the suite's
    agent at ``node.sip_uri``, with its API at ``node.api`` (an admin key)."""

    def __init__(self, suite: Suite, folder: Path, extra_args: Sequence[str] = ()) -> None:
        self.suite = suite
        self.folder = folder
        self.extra_args = list(extra_args)
        self.key = secrets.token_urlsafe(24)
        self.sip_port = free_udp_and_tcp_port()
        self.api_port = free_port()
        base = 20000 + 2 * secrets.randbelow(15000)
        self.rtp_ports = f"{base}-{base + RTP_PORTS - 1}"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def sip_uri(self) -> str:
        return f"sip:eval@127.0.0.1:{self.sip_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "VOXSWITCH_API_KEY": self.key,
                "VOXSWITCH_KB_DIR": str(self.folder / "kb")}  # fmt: skip

    def _settings_args(self) -> list[str]:
        agent = self.suite.agent
        args = ["--api-keys-file", str(self.folder / "keys.json")]
        if agent.agents_dir is not None:
            args += ["--agents-dir", str(agent.agents_dir)]
        return args

    async def __aenter__(self) -> ThrowawayNode:
        self.folder.mkdir(parents=True, exist_ok=True)
        agent = self.suite.agent
        if agent.knowledge:
            await self._kb_load(agent.name, agent.knowledge)
        command = [
            sys.executable, "-m", "switch.cli", "serve", "--sip-host", "127.0.0.1",
            "--sip-port", str(self.sip_port), "--api-host", "127.0.0.1",
            "--api-port", str(self.api_port), "--rtp-ports", self.rtp_ports,
            "--trunks-file", "", *self._settings_args(), *self.extra_args,
        ]  # fmt: skip
        with (self.folder / "node.log").open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command, cwd=self.folder, env=self._env(), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        try:
            await self._wait_ready()
            if agent.name != "default":
                await self._route_to(agent.name)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _kb_load(self, agent: str, files: Sequence[Path]) -> None:
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switch.cli", "kb", "load", *map(str, files), "--agent", agent,
            *self._settings_args(), cwd=self.folder, env=self._env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await done.communicate()
        if done.returncode != 0:
            raise EvalError(f"kb load for {agent} failed: {out.decode(errors='replace')[-500:]}")

    async def _wait_ready(self) -> None:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise EvalError(f"the node exited ({self.process.returncode}): "
                                    f"{self.log_tail()}")  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.api_url}/health")).status_code == 200:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise EvalError(f"the node did not start in {START_TIMEOUT_S:g} s")
                await asyncio.sleep(0.25)

    async def _route_to(self, agent: str) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.put(
                f"{self.api_url}/v1/routes/inbound/eval",
                json={"pattern": ".*", "agent": agent},
                headers={"Authorization": f"Bearer {self.key}"},
            )
        if answer.status_code >= 300:
            raise EvalError(f"routing calls to {agent}: {answer.status_code} {answer.text}")

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return (self.folder / "node.log").read_text(errors="replace")[-chars:]
        return ""

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15.0)
        except TimeoutError:
            process.kill()
            await process.wait()
