"""The actor runtime: a mailbox with two lanes and an asyncio task that drains it.

Control messages (SIP requests, hang-ups, timeouts) jump ahead of media messages
(audio, speech events), so a BYE is never stuck behind a backlog of audio.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextvars import ContextVar
from typing import Generic, TypeVar

M = TypeVar("M")

# The Call-ID of the call whose actor is running: set by the actor in its own task, so
# everything it logs — and every task it starts (conversation, recogniser) — carries it.
CURRENT_CALL_ID: ContextVar[str] = ContextVar("voxswitch_call_id", default="")


class MailboxClosed(Exception):
    """The actor has stopped; nothing more will be read from its mailbox."""


class Mailbox(Generic[M]):
    __slots__ = ("_closed", "_control", "_media", "_waiter")

    def __init__(self) -> None:
        self._control: deque[M] = deque()
        self._media: deque[M] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def put(self, message: M, *, control: bool = True) -> None:
        if self._closed:
            return
        (self._control if control else self._media).append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def flush_media(self) -> int:
        """Drop queued media messages (barge-in): returns how many were dropped."""
        n = len(self._media)
        self._media.clear()
        return n

    def get_nowait(self) -> M | None:
        if self._control:
            return self._control.popleft()
        if self._media:
            return self._media.popleft()
        return None

    async def get(self, timeout: float | None = None) -> M | None:
        """Next message, control lane first; None when ``timeout`` passes first."""
        message = self.get_nowait()
        if message is not None:
            return message
        if self._closed:
            raise MailboxClosed
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self._closed_while_waiting():
            raise MailboxClosed
        return self.get_nowait()

    def _closed_while_waiting(self) -> bool:
        # A method, not an inline test: the await above may have closed the mailbox.
        return self._closed and not len(self)

    def close(self) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._control) + len(self._media)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
