"""JSON log lines: one object a line, the call id on a call's lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from actors.runtime import CURRENT_CALL_ID
from switch.config import ConfigError, load_settings
from switch.logs import JsonLines


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines(node="node-a"))
    logger = logging.getLogger("voxswitch.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_time_level_logger_node(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.warning("trunk %s down:\n%s", "carrier-1", 'said "no" ü')
    (line,) = lines(out)  # the newline in the message stays inside the one line
    assert line["message"] == 'trunk carrier-1 down:\nsaid "no" ü'
    assert line["level"] == "warning" and line["logger"] == "voxswitch.test-logs"
    assert line["node"] == "node-a" and "call_id" not in line
    assert str(line["ts"]).endswith("Z") and len(str(line["ts"])) == len("2026-12-04T10:00:00.000Z")


def test_lines_logged_in_a_calls_task_and_its_child_tasks_carry_its_call_id(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured

    async def actor(call_id: str) -> None:
        CURRENT_CALL_ID.set(call_id)
        logger.info("answered")
        await asyncio.create_task(conversation())

    async def conversation() -> None:
        logger.info("turn 1")

    async def main() -> None:
        await asyncio.gather(actor("abc@host"), actor("def@host"))
        logger.info("outside")

    asyncio.run(main())
    got = [(line["message"], line.get("call_id")) for line in lines(out)]
    assert sorted(got[:4]) == [
        ("answered", "abc@host"), ("answered", "def@host"),
        ("turn 1", "abc@host"), ("turn 1", "def@host"),
    ]  # fmt: skip
    assert got[4] == ("outside", None)


def test_a_line_about_a_call_from_outside_it_names_the_call_and_keeps_the_traceback(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("call %s crashed", "xyz@host")
    logger.info("call %s: extra wins", "ignored", extra={"call_id": "given@host"})
    first, second = lines(out)
    assert first["call_id"] == "xyz@host"
    assert "RuntimeError: boom" in str(first["exc"])
    assert second["call_id"] == "given@host"


def test_log_format_is_text_or_json() -> None:
    assert load_settings(env={}).log_format == "text"
    assert load_settings(env={"VOXSWITCH_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format: expected text or json"):
        load_settings(env={"VOXSWITCH_LOG_FORMAT": "xml"})
