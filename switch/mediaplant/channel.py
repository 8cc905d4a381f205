"""The message channel between the node and a media worker process.

A non-blocking ``SOCK_SEQPACKET`` Unix socket on each side's event loop. A message is
any picklable object, split into chunks below ``CHUNK`` bytes (a captured utterance
or a synthesized reply can be hundreds of KB; a datagram socket's buffer may be
smaller); the first chunk may carry file descriptors (``SCM_RIGHTS``) — that is how
the node hands over the RTP sockets it bound. Messages are rare (commands, speech
events, a stats round a second): RTP itself never crosses the channel.

When the peer is slow the chunks wait in a queue (and the loop's writer drains it),
so nothing is lost or reordered; the peer's end of file closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

CHUNK = 60_000
MORE = b"+"  # another chunk of this message follows
LAST = b"."
RECV_SIZE = CHUNK + 16
MAX_FDS = 4
BUFFER_BYTES = 4 * 1024 * 1024
_FORCED = {socket.SO_SNDBUF: 32, socket.SO_RCVBUF: 33}  # Linux SO_*BUFFORCE

OnMessage = Callable[[Any, list[int]], None]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """The node's end and the worker's end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (ours, theirs):
        for option, forced in _FORCED.items():
            try:  # past the system maximum when we may (root), else up to it
                sock.setsockopt(socket.SOL_SOCKET, forced, BUFFER_BYTES)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
    return ours, theirs


class Channel:
    """Pickled messages both ways over one SEQPACKET socket, on an asyncio loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_message: OnMessage,
        on_close: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._on_message = on_message
        self._on_close = on_close
        self._queue: deque[tuple[bytes, list[int]]] = deque()  # chunks waiting for room
        self._writing = False
        self._partial: list[bytes] = []
        self._partial_fds: list[int] = []
        self.closed = False
        loop.add_reader(self._fd, self._readable)

    def send(self, message: object, fds: Sequence[int] = ()) -> None:
        """Queue a message; ``fds`` are duplicated, the caller keeps its own."""
        if self.closed:
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        owned = [os.dup(fd) for fd in fds]
        for start in range(0, max(len(data), 1), CHUNK):
            flag = MORE if start + CHUNK < len(data) else LAST
            self._queue.append((flag + data[start : start + CHUNK], owned))
            owned = []
        self._write()

    def _write(self) -> None:
        queue = self._queue
        while queue:
            chunk, fds = queue[0]
            try:
                if fds:
                    socket.send_fds(self._sock, [chunk], fds)
                else:
                    self._sock.send(chunk)
            except BlockingIOError:
                if not self._writing:
                    self._loop.add_writer(self._fd, self._write)
                    self._writing = True
                return
            except OSError:
                self.close()
                return
            queue.popleft()
            for fd in fds:
                os.close(fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _readable(self) -> None:
        for _ in range(64):  # bounded: the rest of the loop runs between bursts
            try:
                chunk, fds, _, _ = socket.recv_fds(self._sock, RECV_SIZE, MAX_FDS)
            except BlockingIOError:
                return
            except OSError:
                chunk, fds = b"", []
            if not chunk:
                self.close()
                return
            self._partial.append(chunk[1:])
            self._partial_fds += fds
            if chunk[:1] == LAST:
                data = b"".join(self._partial)
                fds, self._partial_fds = self._partial_fds, []
                self._partial = []
                self._on_message(pickle.loads(data), fds)
                if self.closed:
                    return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        for _, fds in self._queue:
            for fd in fds:
                os.close(fd)
        for fd in self._partial_fds:
            os.close(fd)
        self._queue.clear()
        self._sock.close()
        self._on_close()
