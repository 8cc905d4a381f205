"""The node's log lines: text for people, or JSON lines for Loki/ELK (``log_format``).

A JSON line is one object: ``ts`` (UTC, ms), ``level``, ``logger``, ``message``,
``node``, ``call_id`` on every line of a call, ``exc`` with the traceback when there
is one. The call id comes from the line's ``extra``, else the context variable the
call's actor sets in its task (inherited by the tasks it starts: conversation,
recogniser), else — for the manager's, archive's and jobs' lines about a call — the
first argument of a ``"call %s: ..."`` message. Messages are escaped, so one record
is always one line, whatever it quotes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from actors.runtime import CURRENT_CALL_ID

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonLines(logging.Formatter):
    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node:
            line["node"] = self.node
        call_id = getattr(record, "call_id", "") or CURRENT_CALL_ID.get() or _named_call(record)
        if call_id:
            line["call_id"] = call_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exc"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def _named_call(record: logging.LogRecord) -> str:
    """The call a line outside the call's task is about: by the house convention such
    lines read ``call %s: ...`` with the Call-ID as the first argument."""
    if isinstance(record.msg, str) and record.msg.startswith("call %s"):
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            return args[0]
    return ""


def configure_logging(level: str, log_format: str = "text", node: str = "") -> None:
    """The root logger on stderr, in ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler()
    json_lines = log_format == "json"
    handler.setFormatter(JsonLines(node) if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
