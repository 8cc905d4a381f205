"""``voxswitch kb load|search|list|remove``: the knowledge base from the command line.

``load`` reads files (a folder: every Markdown, text, CSV, JSON and YAML file in it),
embeds and upserts them in batches with a progress bar on stderr, and prints what it
did. Exit 0 done, 1 the store failed (one line), 2 a bad file or setting (one line).

``--agent`` must be an agent of the configuration (``default``, or a file in
``agents_dir``; its file is checked too) or one whose knowledge base exists: a typo
would otherwise fill a knowledge base no call uses. ``load --create`` makes one for a
new name on purpose.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from switch.agents.catalog import agent_files, unknown_agent
from switch.config import ConfigError, Settings
from switch.knowledge import KnowledgeBase, KnowledgeError, KnowledgeUnavailable, build_knowledge
from switch.knowledge.embedder import EmbedderUnavailable
from switch.knowledge.loaders import files_under, load_file
from switch.trunking.trunks import AGENT_NAME


class _Progress:
    """``[#####.....] 1200/5000 entries 23 s`` redrawn in place."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.started = total, width, time.monotonic()

    def __call__(self, done: int) -> None:
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.started
        end = "\n" if done >= self.total else ""
        print(f"\r[{bar}] {done}/{self.total} entries {elapsed:.0f} s", end=end,
              file=sys.stderr, flush=True)  # fmt: skip


async def _load(kb: KnowledgeBase, agent: str, paths: list[str]) -> dict[str, Any]:
    files = [f for p in paths for f in files_under(Path(p))]
    entries = [e for f in files for e in load_file(f)]
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise KnowledgeError(f"entry id {dup!r} appears in two files")
    started = time.monotonic()
    await kb.add(agent, entries, progress=_Progress(len(entries)) if entries else None)
    _, total = await kb.entries(agent, 0, 1)
    return {"agent": agent, "store": kb.kind, "files": len(files), "upserted": len(entries),
            "total": total, "seconds": round(time.monotonic() - started, 2)}  # fmt: skip


CLI_TIMEOUT_S = 15.0


def _check_agent_file(settings: Settings, agent: str) -> bool:
    """Is ``agent`` one of the configuration's? Its file, if any, must be valid: the
    node would not start with it (the error names the file, line and field)."""
    from switch.agents import AgentConfigError, ScriptedAgent

    files = agent_files(settings)
    path = files.get(agent)
    if path is not None and path.suffix in (".yaml", ".yml"):
        try:
            ScriptedAgent.from_file(path)
        except AgentConfigError as exc:
            raise ConfigError(str(exc)) from None
    return agent in files


async def _run(
    settings: Settings, command: str, agent: str, args: list[str], k: int, create: bool
) -> Any:
    known = _check_agent_file(settings, agent)
    kb = build_knowledge(settings)
    # kb_timeout_ms bounds a caller's turn; someone at a terminal can wait for a busy
    # store (a search right after a big load, while Weaviate still indexes).
    kb.timeout_s = max(kb.timeout_s, CLI_TIMEOUT_S)
    try:
        if not known and not re.match(AGENT_NAME, agent):
            raise ConfigError(f"--agent: {agent!r} is not an agent name (letters, digits, _ -)")
        if not known and not (command == "load" and create):
            _, total = await kb.entries(agent, 0, 1)
            if not total:  # not made with --create before either
                create_hint = "; --create makes a knowledge base for a new one"
                hint = create_hint if command == "load" else ""
                raise ConfigError(unknown_agent(agent, list(agent_files(settings))) + hint)
        if command == "load":
            return await _load(kb, agent, args)
        if command == "search":
            hits, lookup = await kb.lookup(agent, " ".join(args))
            if lookup.error:
                raise KnowledgeUnavailable(lookup.error)
            return {"lookup_s": lookup.lookup_s, "hits": [
                {"id": h.entry.id, "title": h.entry.title, "similarity": round(h.similarity, 3),
                 "score": round(h.score, 3), "text": h.entry.text} for h in hits[:k]]}  # fmt: skip
        if command == "list":
            entries, total = await kb.entries(agent, 0, 10_000)
            return {"total": total, "entries": [e.as_dict() for e in entries]}
        removed = await kb.remove(agent, args)
        return {"removed": removed}
    finally:
        await kb.aclose()


def run_kb_command(
    settings: Settings,
    command: str,
    agent: str,
    args: list[str],
    k: int = 3,
    *,
    create: bool = False,
) -> int:
    what = f"voxswitch kb {command}"
    try:
        result = asyncio.run(_run(settings, command, agent, args, k, create))
    except (KnowledgeError, EmbedderUnavailable, ConfigError) as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return 2
    except KnowledgeUnavailable as exc:
        print(f"{what}: the knowledge base did not answer: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0
