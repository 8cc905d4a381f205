"""The outbox: a durable, append-only local log of events, read by each sink at its pace.

Every lifecycle event is appended here first (one ``write`` of one JSON line to a file
the kernel holds, so a SIGKILL a microsecond later loses nothing) and only then
delivered: each sink (Kafka, PostgreSQL, a local file) reads the log from its own
cursor and moves the cursor on (``commit``) after the service has acknowledged a
batch. A service that is down simply leaves its cursor behind; when it returns, the
backlog goes out in order. A node restarted after a crash resumes every sink from its
last committed position: delivery is at least once, and the event id makes it
idempotent for the consumers (PostgreSQL ignores an event id it has applied).

On disk: ``DIR/NNNNNNNNNNNN.jsonl`` segments named by the sequence number of their
first event (a new one every ``segment_bytes``), and ``DIR/cursor.SINK`` holding the
sequence number of the sink's next event (written by rename, so it is never torn).
A segment every sink has passed is deleted. ``full`` says when the undelivered part
exceeds ``max_bytes``: the node then refuses new calls rather than drop events.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip.message import clean_text

log = logging.getLogger("voxswitch.spool")

SEGMENT_BYTES = 16 * 1024 * 1024
PERSIST_EVERY_S = 0.25
SUFFIX = ".jsonl"


@dataclass
class _Segment:
    first: int  # sequence number of its first event
    path: Path
    size: int = 0
    count: int = 0


class SpoolInUse(RuntimeError):
    """Another process holds this spool's lock."""


class Spool:
    """Append events; each named reader takes them in order and commits what it delivered."""

    def __init__(
        self,
        directory: str | Path,
        readers: list[str],
        *,
        max_bytes: int = 1024 * 1024 * 1024,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # One node per spool: a second writer would interleave and corrupt it.
        self._lock = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise SpoolInUse(
                f"spool {self.directory} is in use by another process (another node in this "
                "folder? give each node its own spool_dir)"
            ) from None
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = self._recover()
        self.next_seq = self._segments[-1].first + self._segments[-1].count
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._readers = {name: _Reader(self, name) for name in readers}

    # ---- writing ----------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> int:
        """Write one event durably (against a process crash); returns its sequence number."""
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        try:
            line = text.encode() + b"\n"
        except UnicodeEncodeError:
            # A lone surrogate (a peer's non-UTF-8 byte kept by the SIP parser): no sink
            # downstream (Kafka, PostgreSQL) could take it either. U+FFFD, not a loss.
            line = json.dumps(clean_text(event), separators=(",", ":"),
                              ensure_ascii=False).encode() + b"\n"  # fmt: skip
        segment = self._segments[-1]
        if segment.size and segment.size + len(line) > self.segment_bytes:
            segment = self._rotate()
        os.write(self._fd, line)
        segment.size += len(line)
        segment.count += 1
        self.next_seq += 1
        return self.next_seq - 1

    def _rotate(self) -> _Segment:
        os.close(self._fd)
        segment = _Segment(self.next_seq, self._path(self.next_seq))
        self._segments.append(segment)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return segment

    # ---- reading ----------------------------------------------------------------------

    def reader(self, name: str) -> _Reader:
        return self._readers[name]

    def depth(self, name: str) -> int:
        """Events the reader has not yet committed."""
        return self.next_seq - self._readers[name].committed

    @property
    def pending_bytes(self) -> int:
        """Bytes in segments some reader still needs."""
        low = min((r.committed for r in self._readers.values()), default=self.next_seq)
        return sum(s.size for s in self._segments if s.first + s.count > low)

    @property
    def full(self) -> bool:
        return self.pending_bytes > self.max_bytes

    def _collect(self) -> None:
        """Delete segments every reader has passed (never the one being written)."""
        low = min((r.committed for r in self._readers.values()), default=self.next_seq)
        while len(self._segments) > 1 and self._segments[0].first + self._segments[0].count <= low:
            done = self._segments.pop(0)
            done.path.unlink(missing_ok=True)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        os.close(self._fd)
        os.close(self._lock)  # releases the lock

    # ---- start-up ---------------------------------------------------------------------

    def _path(self, first: int) -> Path:
        return self.directory / f"{first:012d}{SUFFIX}"

    def _recover(self) -> list[_Segment]:
        segments = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # A torn last line (power loss mid-write): it never counted as written.
                data = data[: data.rfind(b"\n") + 1]
                with open(path, "r+b") as f:
                    f.truncate(len(data))
                log.warning("spool %s: dropped a torn last line", path.name)
            segments.append(_Segment(first, path, len(data), data.count(b"\n")))
        if not segments:
            segments.append(_Segment(0, self._path(0)))
        return segments


class _Reader:
    """One sink's position in the log: ``read`` a batch, ``commit`` once delivered."""

    def __init__(self, spool: Spool, name: str) -> None:
        self._spool = spool
        self.name = name
        self._cursor_path = spool.directory / f"cursor.{name}"
        try:
            committed = int(self._cursor_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            committed = spool._segments[0].first  # a new reader starts at what is kept
        self.committed = max(committed, spool._segments[0].first)
        self._position = self.committed  # next sequence number to read
        self._file: Any = None
        self._file_first = -1
        self._file_index = 0  # sequence number of the next line in _file
        self._persisted_at = 0.0

    def read(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` events from the read position on (not yet committed ones
        again after ``rewind``)."""
        events: list[tuple[int, dict[str, Any]]] = []
        spool = self._spool
        while len(events) < limit and self._position < spool.next_seq:
            segment = self._segment_of(self._position)
            if self._file is None or self._file_first != segment.first:
                self._open(segment)
            while self._file_index < self._position:  # skip to the position
                self._file.readline()
                self._file_index += 1
            line = self._file.readline()
            if not line.endswith(b"\n"):
                break  # not fully visible yet
            self._file_index += 1
            try:
                event = json.loads(line)
            except ValueError:
                log.error("spool: unreadable event %d skipped", self._position)
                event = None
            if event is not None:
                events.append((self._position, event))
            self._position += 1
        return events

    def commit(self, through: int) -> None:
        """Events up to and including ``through`` are delivered. The cursor file is
        rewritten at most every ``PERSIST_EVERY_S`` (and at close): after a crash a
        sink may get up to that much again, which its event ids make harmless."""
        committed = through + 1
        if committed <= self.committed:
            return
        self.committed = committed
        now = time.monotonic()
        if now - self._persisted_at >= PERSIST_EVERY_S:
            self._persist(now)
        self._spool._collect()

    def _persist(self, now: float) -> None:
        self._persisted_at = now
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(f"{self.committed}\n")
        os.replace(tmp, self._cursor_path)

    def rewind(self) -> None:
        """Read again from the last commit (a delivery failed)."""
        self._position = self.committed
        self._close_file()

    def _segment_of(self, seq: int) -> _Segment:
        for segment in reversed(self._spool._segments):
            if segment.first <= seq:
                return segment
        return self._spool._segments[0]

    def _open(self, segment: _Segment) -> None:
        self._close_file()
        self._file = open(segment.path, "rb")  # noqa: SIM115
        self._file_first = segment.first
        self._file_index = segment.first

    def close(self) -> None:
        self._close_file()
        self._persist(time.monotonic())

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._file_first = -1
