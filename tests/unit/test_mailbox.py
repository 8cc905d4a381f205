import asyncio

import pytest

from actors.runtime import Mailbox, MailboxClosed


async def test_control_lane_first() -> None:
    box: Mailbox[str] = Mailbox()
    box.put("audio1", control=False)
    box.put("audio2", control=False)
    box.put("bye")
    assert await box.get() == "bye"
    assert await box.get() == "audio1"


async def test_flush_media_keeps_control() -> None:
    box: Mailbox[str] = Mailbox()
    box.put("audio", control=False)
    box.put("bye")
    assert box.flush_media() == 1
    assert await box.get() == "bye"
    assert len(box) == 0


async def test_get_wakes_on_put_and_times_out() -> None:
    box: Mailbox[str] = Mailbox()
    loop = asyncio.get_running_loop()
    loop.call_soon(box.put, "hello")
    assert await box.get(timeout=5) == "hello"
    assert await box.get(timeout=0) is None


async def test_closed_mailbox_raises_once_empty() -> None:
    box: Mailbox[str] = Mailbox()
    box.put("last")
    box.close()
    box.put("ignored")
    assert await box.get() == "last"
    with pytest.raises(MailboxClosed):
        await box.get()
