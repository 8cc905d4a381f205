"""What a knowledge base holds: entries, and the chunks of them that are searched.

An entry is one thing the agent can say: a FAQ answer, a section of a policy. Its id
is stable (given, or derived from its title), so loading the same file twice replaces
entries instead of adding copies. Each entry is searched through its *chunks*: the
title with the text (pieces of ~80 words for long sections), and each of the questions
callers ask for it. A question phrased like the caller's finds the entry even when the
answer uses other words ("do you deliver" → "we bring pizzas within 5 km").
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

ENTRY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ENTRY_ID_RE = re.compile(ENTRY_ID)
_SLUG_RE = re.compile(r"[^a-z0-9]+")
CHUNK_WORDS = 80  # a text chunk: a few sentences, well under the model's 256 tokens
MAX_TEXT_CHARS = 20_000
MAX_QUESTIONS = 50
_NAMESPACE = uuid.UUID("6f1c2b1e-2f7e-4a53-9a43-4b8c1d7e9a10")


class KnowledgeError(ValueError):
    """An entry or a file to load is invalid; the message names the field or line."""


@dataclass(frozen=True)
class KnowledgeEntry:
    id: str
    title: str
    text: str
    questions: tuple[str, ...] = ()
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text,
                "questions": list(self.questions), "source": self.source}  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    """A searchable piece of an entry (``number`` 0.. within it)."""

    entry_id: str
    number: int
    text: str

    def uuid(self, agent: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{agent}/{self.entry_id}/{self.number}"))


@dataclass(frozen=True)
class Hit:
    """A found entry: ``score`` is the fused hybrid score (0..1, relative to the other
    candidates), ``similarity`` the cosine between the query and the entry's best chunk
    (absolute: what the threshold is checked against)."""

    entry: KnowledgeEntry
    score: float
    similarity: float
    chunk: str = ""


@dataclass
class Lookup:
    """What a turn's search found, for the turn record."""

    entries: list[str] = field(default_factory=list)
    lookup_s: float | None = None
    error: str | None = None


def slug(text: str, limit: int = 40) -> str:
    return _SLUG_RE.sub("-", text.lower()).strip("-")[:limit].strip("-") or "entry"


def derived_id(title: str, text: str) -> str:
    """An id for an entry that has none: its title's slug and a digest (stable)."""
    digest = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:8]
    return f"{slug(title)}-{digest}"


def make_entry(data: Any, where: str, source: str = "") -> KnowledgeEntry:
    """An entry from a mapping (JSON, CSV row, API body): ``id``? ``title``/``question``,
    ``text``/``answer``, ``questions``? (a list, or ``|``-separated)."""
    if not isinstance(data, dict):
        raise KnowledgeError(f"{where}: must be an object")
    known = {"id", "title", "question", "text", "answer", "questions", "source"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise KnowledgeError(f"{where}.{unknown[0]}: unknown field")
    title = _text(data.get("title", data.get("question")), f"{where}.title", required=False)
    text = _text(data.get("text", data.get("answer")), f"{where}.text", required=True)
    questions = _questions(data.get("questions"), f"{where}.questions")
    if not title:
        title = questions[0] if questions else text.split(". ")[0][:120]
    raw_id = data.get("id")
    if raw_id is None or raw_id == "":
        entry_id = derived_id(title, text)
    elif not isinstance(raw_id, str | int) or not _ENTRY_ID_RE.match(str(raw_id)):
        raise KnowledgeError(f"{where}.id: letters, digits, _ . - (at most 64), got {raw_id!r}")
    else:
        entry_id = str(raw_id)
    src = data.get("source", source)
    if not isinstance(src, str):
        raise KnowledgeError(f"{where}.source: must be a string")
    return KnowledgeEntry(entry_id, title, text, questions, src[:200])


def _text(value: Any, where: str, *, required: bool) -> str:
    if value is None:
        if required:
            raise KnowledgeError(f"{where}: missing")
        return ""
    if not isinstance(value, str):
        raise KnowledgeError(f"{where}: must be a string")
    text = " ".join(str(value).split())
    if required and not text:
        raise KnowledgeError(f"{where}: must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise KnowledgeError(f"{where}: longer than {MAX_TEXT_CHARS} characters")
    return text


def _questions(value: Any, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list):
        raise KnowledgeError(f"{where}: must be a list of strings")
    out: list[str] = []
    for i, q in enumerate(value):
        if not isinstance(q, str):
            raise KnowledgeError(f"{where}[{i}]: must be a string")
        q = " ".join(q.split())
        if q and q not in out:
            out.append(q)
    if len(out) > MAX_QUESTIONS:
        raise KnowledgeError(f"{where}: more than {MAX_QUESTIONS}")
    return tuple(out)


def chunks_of(entry: KnowledgeEntry) -> list[Chunk]:
    """Chunk 0..: the title with the text, cut every ~80 words; then one per question."""
    words = entry.text.split()
    pieces = [" ".join(words[i : i + CHUNK_WORDS]) for i in range(0, len(words), CHUNK_WORDS)]
    texts = [f"{entry.title}. {piece}" for piece in pieces or [""]]
    texts += [q for q in entry.questions if q != entry.title]
    return [Chunk(entry.id, n, text) for n, text in enumerate(texts)]


def phrases_of(entries: list[KnowledgeEntry]) -> list[str]:
    """What callers may say about these entries (for the recogniser's language model):
    the questions and titles three times, the texts once."""
    asked: dict[str, None] = {}
    said: dict[str, None] = {}
    for entry in entries:
        for q in (entry.title, *entry.questions):
            asked[q] = None
        said[entry.text] = None
    return [*asked, *asked, *asked, *said]
