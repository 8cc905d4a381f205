"""Files into knowledge entries: Markdown, plain text, CSV and JSON FAQs, agent YAML.

* Markdown: each heading starts an entry (id: the heading's slug, ``-2``... when one
  repeats); lines ``Q: ...`` under it are questions callers ask for it. Text before the
  first heading is an entry titled by the file name.
* Text: each paragraph (blank-line separated) is an entry titled by its first sentence.
* CSV: a header row naming ``question``/``title``, ``answer``/``text`` and optionally
  ``id`` and ``questions`` (``|``-separated).
* JSON: a list of entries, or ``{"entries": [...]}`` (same fields as the API).
* YAML: a scripted agent's file (``knowledge:`` entries; their ``patterns`` become the
  questions) or a list of entries.

Ids are given or derived from the content, so loading a file again replaces its entries.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from switch.knowledge.entries import KnowledgeEntry, KnowledgeError, make_entry, slug

SUFFIXES = (".md", ".markdown", ".txt", ".csv", ".json", ".yaml", ".yml")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_QUESTION_RE = re.compile(r"^\s*(?:[-*]\s*)?Q:\s*(.+)$", re.IGNORECASE)


def files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not path.exists():
        raise KnowledgeError(f"{path}: no such file or directory")
    return [path]


def load_file(path: Path) -> list[KnowledgeEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KnowledgeError(f"{path}: cannot read: {exc}") from exc
    return parse(text, path.name)


def parse(text: str, name: str) -> list[KnowledgeEntry]:
    suffix = Path(name).suffix.lower()
    if suffix in (".md", ".markdown"):
        entries = list(_markdown(text, name))
    elif suffix == ".txt":
        entries = list(_paragraphs(text, name))
    elif suffix == ".csv":
        entries = list(_csv(text, name))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KnowledgeError(f"{name}: invalid JSON: {exc}") from exc
        entries = _records(data, name)
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise KnowledgeError(f"{name}: invalid YAML: {exc}") from exc
        entries = _records(_agent_knowledge(data), name)
    else:
        raise KnowledgeError(f"{name}: unknown format (one of {', '.join(SUFFIXES)})")
    return _unique(entries, name)


def _unique(entries: list[KnowledgeEntry], name: str) -> list[KnowledgeEntry]:
    seen: dict[str, KnowledgeEntry] = {}
    for entry in entries:
        if entry.id in seen and seen[entry.id] != entry:
            raise KnowledgeError(f"{name}: id {entry.id!r} is used by two different entries")
        seen[entry.id] = entry
    return list(seen.values())


def _markdown(text: str, name: str) -> Iterator[KnowledgeEntry]:
    title, body, questions = Path(name).stem.replace("_", " "), [], []  # type: ignore[var-annotated]
    ids: dict[str, int] = {}

    def flush() -> Iterator[KnowledgeEntry]:
        content = " ".join(" ".join(body).split())
        if content:
            base = slug(title, 60)
            ids[base] = ids.get(base, 0) + 1
            entry_id = base if ids[base] == 1 else f"{base}-{ids[base]}"
            yield make_entry({"id": entry_id, "title": title, "text": content,
                              "questions": questions}, f"{name}: {title}", name)  # fmt: skip

    for line in text.splitlines():
        heading = _HEADING_RE.match(line)
        if heading:
            yield from flush()
            title, body, questions = heading.group(2).strip(), [], []
            continue
        question = _QUESTION_RE.match(line)
        if question:
            questions.append(question.group(1).strip())
        else:
            body.append(line.strip())
    yield from flush()


def _paragraphs(text: str, name: str) -> Iterator[KnowledgeEntry]:
    for n, block in enumerate(re.split(r"\n\s*\n", text)):
        content = " ".join(block.split())
        if content:
            title = re.split(r"(?<=[.?!])\s", content, maxsplit=1)[0][:120]
            yield make_entry({"title": title, "text": content}, f"{name}: paragraph {n + 1}", name)


def _csv(text: str, name: str) -> Iterator[KnowledgeEntry]:
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip().lower() for f in reader.fieldnames or []}
    if not fields & {"answer", "text"}:
        raise KnowledgeError(f"{name}: the header needs an 'answer' (or 'text') column")
    for row in reader:
        line = reader.line_num
        data = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        if not any(data.values()):
            continue
        yield make_entry({k: v for k, v in data.items() if v}, f"{name}: line {line}", name)


def _records(data: Any, name: str) -> list[KnowledgeEntry]:
    if isinstance(data, dict) and "entries" in data:
        data = data["entries"]
    if not isinstance(data, list):
        raise KnowledgeError(f"{name}: expected a list of entries (or {{'entries': [...]}})")
    return [make_entry(item, f"{name}: entries[{i}]", name) for i, item in enumerate(data)]


AGENT_KEYS = frozenset({"greeting", "fallback", "goodbye", "intents"})  # an agent file's


def _agent_knowledge(data: Any) -> Any:
    """A scripted agent's ``knowledge:`` list as entries (patterns → questions); an
    agent file without one (its answers loaded with ``kb load``) has none."""
    if isinstance(data, dict) and not {"knowledge", "entries"} & data.keys() and (
        AGENT_KEYS & data.keys()
    ):
        return []
    if not isinstance(data, dict) or "knowledge" not in data:
        return data
    out = []
    for item in data.get("knowledge") or []:
        if not isinstance(item, dict):
            out.append(item)
            continue
        patterns = [p for p in item.get("patterns") or [] if isinstance(p, str)]
        patterns = [p for p in patterns if not p.lower().startswith("dtmf")]
        out.append({"id": item.get("id"), "title": patterns[0] if patterns else None,
                    "text": item.get("answer"), "questions": patterns[1:]})  # fmt: skip
    return out
