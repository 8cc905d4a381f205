"""Run SIPp (3.6) as a bounded child process and read back what it measured.

Every run gets its own work directory, which is also SIPp's working directory:
SIPp writes ``<scenario>_<pid>_counts.csv`` there, and ``rtp_stream`` files named in
a scenario are looked up there. The run writes

- ``stat.csv`` (``-trace_stat -stf``): the statistics, ``;``-separated, one row per
  dump; the last row holds the totals. Columns ending in ``(C)`` are cumulative.
- ``*_counts.csv`` (``-trace_counts``): per scenario message, how many were
  sent/received, retransmitted, timed out or unexpected (``3_200_Retrans`` ...).
- ``errors.log`` (``-trace_err``): why calls failed.
- ``screen.log`` (``-trace_screen``): the final screens, for humans.
- ``messages.log`` (``-trace_msg``) when asked for.

SIPp exits 0 when every call succeeded, 1 when at least one failed, and 255 (-1)
on a fatal error, including its global ``-timeout`` with ``-timeout_error``.
SIPp always runs with ``-nostdin`` and ``-timeout``, and Python kills it if it
outlives that by more than a margin, so no run can hang.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from loadtest.node import taskset_prefix
from loadtest.ports import LOOPBACK, free_port

BUILTIN_SCENARIOS = frozenset(
    {
        "uac",
        "uas",
        "uac_pcap",
        "regexp",
        "branchc",
        "branchs",
        "3pcc-C-A",
        "3pcc-C-B",
        "3pcc-A",
        "3pcc-B",
    }
)
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
KILL_MARGIN_S = 15.0

_ERROR_ENTRY = re.compile(r"(?=\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: )")
_ERROR_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: ")


class SippNotFound(RuntimeError):
    """The ``sipp`` binary is missing: run deploy/local/install-test-deps.sh."""


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if not found:
        raise SippNotFound(
            "sipp not found on PATH: install it with deploy/local/install-test-deps.sh "
            "(Debian package sip-tester)"
        )
    return found


def sipp_version() -> str:
    """SIPp's version line, e.g. ``SIPp v3.6.1-SCTP-PCAP-RTPSTREAM.``."""
    out = subprocess.run(
        [sipp_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    for line in (out.stdout + out.stderr).splitlines():
        if "SIPp v" in line:
            return line.strip()
    return "unknown"


def parse_duration_ms(text: str) -> float:
    """SIPp's ``HH:MM:SS:uuuuuu`` (as in ``ResponseTime1(C)``) in milliseconds."""
    parts = text.strip().split(":")
    if len(parts) != 4:
        raise ValueError(f"not a SIPp duration: {text!r}")
    hours, minutes, seconds, micros = (int(p) for p in parts)
    return ((hours * 60 + minutes) * 60 + seconds) * 1000.0 + micros / 1000.0


def read_last_row(path: Path) -> dict[str, str]:
    """The header and the last data row of a SIPp ``;``-separated CSV, as a dict."""
    with path.open(newline="", errors="replace") as fh:
        rows = [row for row in csv.reader(fh, delimiter=";") if row]
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name: value for name, value in zip(header, last, strict=False) if name}


def parse_error_log(text: str) -> list[str]:
    """SIPp's error log as one string per event (SIPp runs them together on one line)."""
    body = text.replace("The following events occurred:", "")
    entries = []
    for chunk in _ERROR_ENTRY.split(body):
        entry = _ERROR_PREFIX.sub("", chunk.strip()).strip()
        if entry:
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class SippResult:
    command: tuple[str, ...]
    returncode: int
    elapsed_s: float
    workdir: Path
    stats: dict[str, str] = field(default_factory=dict)
    counts: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    killed: bool = False

    def stat(self, name: str) -> int:
        """An integer statistic, e.g. ``stat("SuccessfulCall(C)")``; -1 when absent."""
        value = self.stats.get(name, "")
        try:
            return int(float(value))
        except ValueError:
            return -1

    def count(self, name: str) -> int:
        """A per-message counter from -trace_counts, e.g. ``count("3_200_Retrans")``."""
        try:
            return int(self.counts.get(name, ""))
        except ValueError:
            return -1

    @property
    def successful_calls(self) -> int:
        return self.stat("SuccessfulCall(C)")

    @property
    def failed_calls(self) -> int:
        return self.stat("FailedCall(C)")

    @property
    def created_calls(self) -> int:
        return self.stat("TotalCallCreated")

    @property
    def retransmissions(self) -> int:
        return self.stat("Retransmissions(C)")

    @property
    def call_rate(self) -> float:
        try:
            return float(self.stats.get("CallRate(C)", "nan"))
        except ValueError:
            return float("nan")

    def duration_ms(self, name: str) -> float:
        """A duration statistic in ms, e.g. ``duration_ms("ResponseTime1(C)")``; NaN if absent."""
        try:
            return parse_duration_ms(self.stats[name])
        except (KeyError, ValueError):
            return float("nan")

    @property
    def response_time_ms(self) -> float:
        """Mean of response time 1 (by default: first message to the ``rtd`` recv)."""
        return self.duration_ms("ResponseTime1(C)")

    def repartition(self, prefix: str = "ResponseTimeRepartition1_") -> dict[str, int]:
        """Histogram buckets, e.g. ``{"<10": 180, "<20": 20, ...}``."""
        out: dict[str, int] = {}
        for name, value in self.stats.items():
            if name.startswith(prefix) and value.strip():
                out[name[len(prefix) :]] = int(value)
        return out

    def screen(self) -> str:
        path = self.workdir / "screen.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def describe(self, max_errors: int = 15) -> str:
        """A summary for assertion messages: command, totals, and SIPp's error lines."""
        lines = [
            f"sipp exit {self.returncode}{' (killed)' if self.killed else ''} "
            f"after {self.elapsed_s:.1f} s; work dir {self.workdir}",
            "command: " + " ".join(self.command),
            f"calls: created={self.created_calls} successful={self.successful_calls} "
            f"failed={self.failed_calls} retransmissions={self.retransmissions}",
        ]
        failed = {
            k: v for k, v in self.stats.items() if k.startswith("Failed") and k.endswith("(C)")
        }
        nonzero = {k: v for k, v in failed.items() if v not in ("0", "")}
        if nonzero:
            lines.append(f"failure causes: {nonzero}")
        if self.errors:
            lines.append(f"SIPp errors ({len(self.errors)}, first {max_errors}):")
            lines += [f"  {e}" for e in self.errors[:max_errors]]
        return "\n".join(lines)


def run_sipp(
    remote: str,
    scenario: str | Path,
    *,
    workdir: Path,
    transport: str = "u1",
    calls: int = 1,
    rate: float = 10.0,
    rate_period_ms: int = 1000,
    call_limit: int | None = None,
    pause_ms: int | None = None,
    timeout_s: float = 60.0,
    trace_msg: bool = False,
    stat_period_s: int | None = None,
    cpu: int | None = None,
    files: Mapping[str, bytes] | None = None,
    extra_args: Sequence[str] = (),
) -> SippResult:
    """Run one SIPp client against `remote` (``host:port``) and collect its results.

    `scenario` is a built-in name (``"uac"``), a file name in loadtest/scenarios
    (``"cancel.xml"``), or a path. `timeout_s` becomes SIPp's ``-timeout`` (with
    ``-timeout_error``, so hitting it is a failure); Python kills SIPp 15 s later.
    `files` are written into the work directory first (e.g. ``tone.ulaw`` for a
    scenario's ``rtp_stream``).
    """
    cmd = sipp_command(
        [remote], scenario, workdir=workdir, transport=transport, calls=calls,
        port=free_port(udp=True, tcp=True), timeout_s=timeout_s, trace_msg=trace_msg,
        cpu=cpu, files=files,
        extra_args=["-r", f"{rate:g}", "-rp", str(rate_period_ms), *_optional(
            stat_period_s=stat_period_s, call_limit=call_limit, pause_ms=pause_ms
        ), *extra_args],
    )  # fmt: skip
    started = time.monotonic()
    killed = False
    with (workdir / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            returncode = proc.wait(timeout=timeout_s + KILL_MARGIN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait(timeout=10)
            killed = True
    elapsed_s = time.monotonic() - started
    return collect_result(cmd, returncode, elapsed_s, workdir, killed=killed)


def _optional(
    *, stat_period_s: int | None, call_limit: int | None, pause_ms: int | None
) -> list[str]:
    args: list[str] = []
    if stat_period_s is not None:
        args += ["-fd", str(stat_period_s)]
    if call_limit is not None:
        args += ["-l", str(call_limit)]
    if pause_ms is not None:
        args += ["-d", str(pause_ms)]
    return args


def sipp_command(
    remote: Sequence[str],
    scenario: str | Path,
    *,
    workdir: Path,
    transport: str,
    calls: int,
    port: int,
    timeout_s: float,
    trace_msg: bool = False,
    cpu: int | None = None,
    files: Mapping[str, bytes] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """SIPp's command line (client: ``remote`` is ``[host:port]``; server: ``[]``), with
    the work directory made and the scenario's files written into it."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (workdir / name).write_bytes(data)
    if isinstance(scenario, str) and scenario in BUILTIN_SCENARIOS:
        scenario_args = ["-sn", scenario]
    else:
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIO_DIR / path
        if not path.exists():
            raise FileNotFoundError(f"SIPp scenario not found: {scenario}")
        scenario_args = ["-sf", str(path.resolve())]
    stat_file = workdir / "stat.csv"
    cmd = [
        *taskset_prefix(cpu),
        sipp_binary(),
        *remote,
        *scenario_args,
        "-t", transport,
        "-i", LOOPBACK,
        "-mi", LOOPBACK,
        "-p", str(port),
        "-mp", str(free_port(udp=True, tcp=False, span=4)),
        "-cp", str(free_port(udp=True, tcp=False)),
        "-m", str(calls),
        "-nostdin",
        "-timeout", f"{max(1, round(timeout_s))}s",
        "-timeout_error",
        "-trace_stat", "-stf", str(stat_file),
        "-trace_counts",
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        "-trace_screen", "-screen_file", str(workdir / "screen.log"),
    ]  # fmt: skip
    if trace_msg:
        cmd += ["-trace_msg", "-message_file", str(workdir / "messages.log")]
    cmd += list(extra_args)
    (workdir / "command").write_text(" ".join(cmd) + "\n")
    return cmd


_MESSAGE_HEAD = re.compile(
    r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n\w+ message received \[\d+\] bytes :\n\n(\S+)",
    re.MULTILINE,
)


def received_times(messages_log: Path, method: str) -> list[float]:
    """When SIPp received each ``method`` request (epoch seconds), from its -trace_msg
    log: the times a load generator's peer actually saw, for pacing measurements."""
    times = []
    for stamp, first in _MESSAGE_HEAD.findall(messages_log.read_text(errors="replace")):
        if first == method:
            times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return times


class SippServer:
    """SIPp as a UAS (a carrier, a callee) in the background: the node dials it.

    It exits after ``calls`` calls (or its ``-timeout``); ``wait`` collects its result,
    ``stop`` ends it early (SIGTERM, then SIGKILL) and collects what it has.
    """

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path,
        calls: int = 1,
        timeout_s: float = 60.0,
        transport: str = "u1",
        trace_msg: bool = False,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        cpu: int | None = None,
    ) -> None:
        self.port = port or free_port(udp=True, tcp=True)
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.command = sipp_command(
            [], scenario, workdir=workdir, transport=transport, calls=calls, port=self.port,
            timeout_s=timeout_s, trace_msg=trace_msg, cpu=cpu, extra_args=extra_args,
        )  # fmt: skip
        self._out = (workdir / "stdout.log").open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def messages_log(self) -> Path:
        """SIPp's -trace_msg log (with ``trace_msg=True``)."""
        return self.workdir / "messages.log"

    def wait(self, timeout_s: float | None = None) -> SippResult:
        killed = False
        try:
            returncode = self.process.wait(timeout=timeout_s or self.timeout_s + KILL_MARGIN_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            returncode = self.process.wait(timeout=10)
            killed = True
        return self._result(returncode, killed)

    def stop(self) -> SippResult:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self._result(self.process.wait(timeout=10), False)

    def _result(self, returncode: int, killed: bool) -> SippResult:
        self._out.close()
        elapsed = time.monotonic() - self.started
        return collect_result(self.command, returncode, elapsed, self.workdir, killed=killed)


def collect_result(
    cmd: Sequence[str], returncode: int, elapsed_s: float, workdir: Path, *, killed: bool = False
) -> SippResult:
    stat_file = workdir / "stat.csv"
    stats = read_last_row(stat_file) if stat_file.exists() else {}
    counts: dict[str, str] = {}
    for counts_file in sorted(workdir.glob("*_counts.csv")):
        counts.update(read_last_row(counts_file))
    error_file = workdir / "errors.log"
    errors = parse_error_log(error_file.read_text(errors="replace")) if error_file.exists() else []
    if killed:
        errors.append(f"killed by the harness after {elapsed_s:.0f} s")
    return SippResult(
        command=tuple(cmd),
        returncode=returncode,
        elapsed_s=elapsed_s,
        workdir=workdir,
        stats=stats,
        counts=counts,
        errors=tuple(errors),
        killed=killed,
    )


# What the tests' ``sipp`` fixture is: ``sipp(node, scenario, **run_sipp_options)``.
SippRunner = Callable[..., "SippResult"]
