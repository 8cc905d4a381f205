"""Campaigns that survive a restart: an append-only journal of JSON lines.

Each campaign's creation (its whole request), each change of a number (dialed,
ended, requeued) and each change of the campaign's state is one line, written
through to the file as it happens (line-buffered: a crashed process loses nothing the
kernel has). At start the node replays the journal: unfinished campaigns go on where
they were — a number that was being dialed when the node died counts that attempt
(its call ended ``node_restart``) and is retried if its policy allows — and the
journal is rewritten with only what is still needed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("voxswitch.campaigns")

KEEP_FINISHED = 100  # finished campaigns kept across a restart (for the API)


class CampaignJournal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def _write(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def created(self, campaign_id: str, created_at: float, body: dict[str, Any]) -> None:
        self._write({"op": "create", "id": campaign_id, "at": created_at, "body": body})

    def number(self, campaign_id: str, index: int, number: dict[str, Any]) -> None:
        self._write({"op": "number", "id": campaign_id, "i": index, **number})

    def state(self, campaign_id: str, state: str, finished_at: float | None) -> None:
        self._write({"op": "state", "id": campaign_id, "state": state, "at": finished_at})

    def load(self) -> list[dict[str, Any]]:
        """The campaigns as last written, oldest first: ``{"id", "created_at", "body",
        "state", "finished_at", "numbers": {index: fields}}``."""
        campaigns: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write
            op, campaign_id = entry.pop("op", None), entry.pop("id", None)
            if op == "create":
                campaigns[campaign_id] = {"id": campaign_id, "created_at": entry["at"],
                                          "body": entry["body"], "state": "running",
                                          "finished_at": None, "numbers": {}}  # fmt: skip
            elif campaign_id in campaigns and op == "number":
                campaigns[campaign_id]["numbers"][entry.pop("i")] = entry
            elif campaign_id in campaigns and op == "state":
                campaigns[campaign_id].update(state=entry["state"], finished_at=entry["at"])
        return list(campaigns.values())

    def rewrite(self, campaigns: list[dict[str, Any]]) -> None:
        """Replace the journal with these campaigns (as ``load`` returns them)."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for c in campaigns:
                lines = [{"op": "create", "id": c["id"], "at": c["created_at"], "body": c["body"]}]
                lines += [{"op": "number", "id": c["id"], "i": i, **n}
                          for i, n in sorted(c["numbers"].items())]  # fmt: skip
                lines.append({"op": "state", "id": c["id"], "state": c["state"],
                              "at": c["finished_at"]})  # fmt: skip
                f.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in lines)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def to_keep(campaigns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unfinished campaigns, and the latest finished ones."""
    finished = [c for c in campaigns if c["state"] in ("completed", "canceled")]
    return [c for c in campaigns if c not in finished] + finished[-KEEP_FINISHED:]
