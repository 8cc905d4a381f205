"""An offline agent described by a YAML file: a bot that works with no key and no network.

The agent matches what the caller said against phrases listed in the file and answers
with canned text; some entries are *intents* that end in an action (hang up, transfer,
send DTMF). It keeps no state, so one instance can serve any number of calls.

YAML schema
-----------

Top level (a mapping; unknown fields are errors, to catch typos)::

    name: Voxswitch Pizza          # required: the bot's name (logs, UI)
    greeting: Hi, ...              # required: said when the call is answered
    fallback: Sorry, ...           # required: said when nothing matches
    goodbye: Thanks, bye!          # required: said by ``hang_up`` intents without ``say``
    threshold: 0.55                # optional: minimum match score, 0 < t <= 1
    knowledge:                     # optional: questions and their answers
      - id: hours                  # required, unique across knowledge and intents
        patterns:                  # phrases a caller might say (list of strings)
          - what time do you open
          - opening hours
        keywords: [hours, open]    # optional: single words, each counts as a pattern
        dtmf: "1"                  # optional: keypad input answered by this entry
        answer: We open at 11.     # required: what the agent says
    intents:                       # optional: entries that end in an action
      - id: bye
        action: hang_up            # hang_up | transfer | send_dtmf
        patterns: [goodbye, bye, that's all]
        say: Bye!                  # optional; hang_up defaults to ``goodbye``
        reason: caller said bye    # optional (hang_up): the tool call's ``reason``
      - id: operator
        action: transfer
        target: sip:operator@127.0.0.1   # required for transfer
        patterns: [operator, human, agent, "DTMF: 0"]
        dtmf: "0"
        say: Connecting you now.   # optional; default "Please hold while I transfer you."
      - id: press
        action: send_dtmf
        digits: "1234#"            # required for send_dtmf: [0-9*#A-D]+
        patterns: [enter the code]
        say: Entering the code.    # optional; default "One moment."

Every entry needs at least one of ``patterns``, ``keywords`` or ``dtmf``. ``dtmf`` may
be a string, a number or a list of them.

Matching
--------

Keypad input arrives as ``DTMF: 5``; it matches only *exactly*: an entry whose ``dtmf``
is ``"5"`` or that lists the pattern ``"DTMF: 5"``. Anything else is speech: it is
lower-cased, punctuation is dropped (``that's`` → ``thats``), a small stopword list
(``the``, ``a``, ``is``, ``you``, ...) is removed and words get a crude stem (``prices``
and ``price`` match). Each pattern scores ``0.6 * containment + 0.4 * dice`` where
containment is the share of the pattern's words that the caller said and dice is
``2·|common| / (|pattern| + |said|)``; an entry scores its best pattern. The best entry
at or above ``threshold`` wins (ties: more words in common, then intents before
knowledge, then file order); otherwise the agent says ``fallback``.

Replies stream as one :class:`TextDelta` per sentence (split after ``.``, ``?``, ``!``
followed by a space) so the actor can speak the first sentence at once; the pieces
concatenate back to the answer text. An intent's action follows as a :class:`ToolCall`.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actors.agent import (
    TOOL_NAMES,
    AgentEvent,
    ChatMessage,
    KnowledgeUsed,
    TextDelta,
    ToolCall,
)
from switch.knowledge.base import KnowledgeBase

__all__ = [
    "DEFAULT_THRESHOLD",
    "AgentConfigError",
    "Entry",
    "Match",
    "ScriptedAgent",
    "split_sentences",
]

DEFAULT_THRESHOLD = 0.55
DEFAULT_TRANSFER_SAY = "Please hold while I transfer you."
DEFAULT_DTMF_SAY = "One moment."

_DTMF_RE = re.compile(r"^\s*dtmf\s*:\s*([0-9*#a-d]+)\s*$", re.IGNORECASE)
_DIGITS_RE = re.compile(r"^[0-9*#A-D]+$")
_SENTENCE_END_RE = re.compile(r"(?<=[.?!])\s+")
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation if c != "'"})

_STOPWORDS_TEXT = """
    a an the is are am was were be been being to of in on at for from by with about
    and or but so if then than that this these those it its it's i i'm me my mine we
    our us you you're your yours he she they them their do does did can could would
    should will shall may might must please just um uh er oh well like okay ok hi hey
    hello yes yeah no not any some there here what which who how want wanna need know
    tell let get got have has had very really also too what's how's who's there's
    here's i'd i'll i've we're they're
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

_TOP_FIELDS = frozenset(
    {"name", "greeting", "fallback", "goodbye", "threshold", "knowledge", "intents"}
)
_KNOWLEDGE_FIELDS = frozenset({"id", "patterns", "keywords", "dtmf", "answer"})
_INTENT_FIELDS = frozenset(
    {"id", "action", "patterns", "keywords", "dtmf", "say", "target", "digits", "reason"}
)


class AgentConfigError(ValueError):
    """The YAML description is invalid; the message names the field (``knowledge[2].answer``)."""


@dataclass(frozen=True)
class Entry:
    """A knowledge entry (``action`` is None) or an intent (``action`` in TOOL_NAMES)."""

    id: str
    kind: str  # "knowledge" | "intents"
    index: int
    patterns: tuple[str, ...]
    dtmf: tuple[str, ...]
    say: str
    action: str | None = None
    arguments: tuple[tuple[str, str], ...] = ()

    def tool_call(self) -> ToolCall | None:
        if self.action is None:
            return None
        return ToolCall(self.action, dict(self.arguments))


@dataclass(frozen=True)
class Match:
    entry: Entry
    score: float


# --- text helpers -------------------------------------------------------------------


def _stem(word: str) -> str:
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith(("ed", "es")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def content_words(text: str) -> frozenset[str]:
    """The stemmed words of ``text`` that carry meaning (stopwords removed)."""
    words = text.lower().replace("’", "'").translate(_PUNCT_TABLE).split()
    out: set[str] = set()
    for raw in words:
        if raw in STOPWORDS:
            continue
        word = raw.replace("'", "")
        if not word or word in STOPWORDS:
            continue
        out.add(_stem(word))
    return frozenset(out)


def split_sentences(text: str) -> list[str]:
    """``text`` cut after each ``.``/``?``/``!`` followed by whitespace.

    Every piece but the last keeps one trailing space, so ``"".join`` gives back the
    text with its whitespace collapsed. Never empty for non-blank text.
    """
    text = " ".join(text.split())
    if not text:
        return []
    parts = [p for p in _SENTENCE_END_RE.split(text) if p]
    return [p + " " for p in parts[:-1]] + [parts[-1]]


def spoken_answer(text: str, sentences: int = 3) -> str:
    """The first few sentences of an entry's text: what a phone answer can hold."""
    return "".join(split_sentences(text)[:sentences]).strip()


def _dtmf_digits(text: str) -> str | None:
    m = _DTMF_RE.match(text)
    return m.group(1).upper() if m else None


# --- validation ---------------------------------------------------------------------


def _req_str(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj or obj[key] is None:
        raise AgentConfigError(f"{where}{key}: missing")
    value = obj[key]
    if not isinstance(value, str):
        raise AgentConfigError(f"{where}{key}: must be a string, got {type(value).__name__}")
    if not value.strip():
        raise AgentConfigError(f"{where}{key}: must not be empty")
    return value.strip()


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    if obj.get(key) is None:
        return None
    return _req_str(obj, key, where)


def _str_list(obj: dict[str, Any], key: str, where: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise AgentConfigError(f"{where}{key}: must be a list of strings")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise AgentConfigError(f"{where}{key}[{i}]: must be a non-empty string")
        out.append(item.strip())
    return out


def _dtmf_list(obj: dict[str, Any], where: str) -> list[str]:
    value = obj.get("dtmf")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise AgentConfigError(f"{where}dtmf: must be digits 0-9 * # A-D")
        digits = str(item).strip().upper()
        if not _DIGITS_RE.match(digits):
            raise AgentConfigError(f"{where}dtmf: {item!r} is not digits 0-9 * # A-D")
        out.append(digits)
    return out


def _check_fields(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        label = where.rstrip(".") or "top level"
        raise AgentConfigError(f"{label}: unknown field {unknown[0]!r}")


def _parse_entry(raw: Any, kind: str, index: int, goodbye: str) -> Entry:
    where = f"{kind}[{index}]."
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{kind}[{index}]: must be a mapping")
    _check_fields(raw, _KNOWLEDGE_FIELDS if kind == "knowledge" else _INTENT_FIELDS, where)
    entry_id = _req_str(raw, "id", where)
    patterns = _str_list(raw, "patterns", where) + _str_list(raw, "keywords", where)
    dtmf = _dtmf_list(raw, where)
    for p in patterns:
        digits = _dtmf_digits(p)
        if digits is not None and digits not in dtmf:
            dtmf.append(digits)
    if not patterns and not dtmf:
        raise AgentConfigError(f"{where}patterns: missing (need patterns, keywords or dtmf)")
    if kind == "knowledge":
        answer = _req_str(raw, "answer", where)
        return Entry(entry_id, kind, index, tuple(patterns), tuple(dtmf), answer)
    if raw.get("action") is None:
        raise AgentConfigError(f"{where}action: missing")
    action = raw["action"]
    if action not in TOOL_NAMES:
        raise AgentConfigError(f"{where}action: must be one of {', '.join(TOOL_NAMES)}")
    say = _opt_str(raw, "say", where)
    args: dict[str, str] = {}
    if action == "hang_up":
        reason = _opt_str(raw, "reason", where)
        if reason is not None:
            args["reason"] = reason
        say = say or goodbye
    elif action == "transfer":
        args["target"] = _req_str(raw, "target", where)
        say = say or DEFAULT_TRANSFER_SAY
    else:
        digits = _req_str(raw, "digits", where).upper()
        if not _DIGITS_RE.match(digits):
            raise AgentConfigError(f"{where}digits: {digits!r} is not digits 0-9 * # A-D")
        args["digits"] = digits
        say = say or DEFAULT_DTMF_SAY
    return Entry(
        entry_id,
        kind,
        index,
        tuple(patterns),
        tuple(dtmf),
        say,
        action=str(action),
        arguments=tuple(args.items()),
    )


# --- the agent ----------------------------------------------------------------------


class ScriptedAgent:
    """An :class:`~actors.agent.AgentBrain` that answers from a YAML script."""

    def __init__(
        self,
        *,
        name: str,
        greeting: str,
        fallback: str,
        goodbye: str,
        entries: Sequence[Entry],
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self.knowledge: KnowledgeBase | None = None
        self.knowledge_agent = "default"
        self.knowledge_phrases: list[str] = []
        self.name = name
        self._greeting = greeting
        self.fallback = fallback
        self.goodbye = goodbye
        self.entries = tuple(entries)
        self.threshold = threshold
        # Intents first so they win ties; speech patterns pre-tokenized.
        ordered = sorted(self.entries, key=lambda e: (e.kind != "intents", e.index))
        self._scored: list[tuple[Entry, list[frozenset[str]]]] = []
        for entry in ordered:
            sets = [content_words(p) for p in entry.patterns if _dtmf_digits(p) is None]
            self._scored.append((entry, [s for s in sets if s]))

    # construction

    @classmethod
    def from_yaml(cls, text: str) -> ScriptedAgent:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AgentConfigError(f"invalid YAML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ScriptedAgent:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentConfigError(f"{os.fspath(path)}: cannot read: {exc}") from exc
        try:
            return cls.from_yaml(text)
        except AgentConfigError as exc:
            raise AgentConfigError(f"{os.fspath(path)}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any) -> ScriptedAgent:
        if not isinstance(data, dict):
            raise AgentConfigError("top level: must be a mapping")
        _check_fields(data, _TOP_FIELDS, "")
        name = _req_str(data, "name", "")
        greeting = _req_str(data, "greeting", "")
        fallback = _req_str(data, "fallback", "")
        goodbye = _req_str(data, "goodbye", "")
        threshold = data.get("threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise AgentConfigError("threshold: must be a number")
        if not 0 < threshold <= 1:
            raise AgentConfigError("threshold: must be in (0, 1]")
        entries: list[Entry] = []
        seen: set[str] = set()
        for kind in ("knowledge", "intents"):
            items = data.get(kind)
            if items is None:
                continue
            if not isinstance(items, list):
                raise AgentConfigError(f"{kind}: must be a list")
            for i, raw in enumerate(items):
                entry = _parse_entry(raw, kind, i, goodbye)
                if entry.id in seen:
                    raise AgentConfigError(f"{kind}[{i}].id: duplicate {entry.id!r}")
                seen.add(entry.id)
                entries.append(entry)
        if not entries:
            raise AgentConfigError("knowledge: missing (need knowledge or intents entries)")
        return cls(
            name=name,
            greeting=greeting,
            fallback=fallback,
            goodbye=goodbye,
            entries=entries,
            threshold=float(threshold),
        )

    # matching

    def match(self, caller_input: str) -> Match | None:
        """The entry that answers ``caller_input``, or None (the agent says ``fallback``)."""
        digits = _dtmf_digits(caller_input)
        if digits is not None:
            for entry, _ in self._scored:
                if digits in entry.dtmf:
                    return Match(entry, 1.0)
            return None
        said = content_words(caller_input)
        if not said:
            return None
        best: tuple[float, int] = (0.0, 0)
        best_entry: Entry | None = None
        for entry, pattern_sets in self._scored:
            for pat in pattern_sets:
                common = len(pat & said)
                if not common:
                    continue
                score = 0.6 * common / len(pat) + 0.4 * 2 * common / (len(pat) + len(said))
                if (score, common) > best:
                    best, best_entry = (score, common), entry
        if best_entry is None or best[0] < self.threshold - 1e-9:
            return None
        return Match(best_entry, best[0])

    # AgentBrain

    def greeting(self) -> str:
        return self._greeting

    def use_knowledge(self, knowledge: KnowledgeBase, agent: str, phrases: list[str]) -> None:
        """Answer questions from ``knowledge`` (the entries of ``agent``); ``phrases``
        are what callers say about them, for the recogniser's language model."""
        self.knowledge, self.knowledge_agent, self.knowledge_phrases = knowledge, agent, phrases

    async def respond(
        self, history: Sequence[ChatMessage], caller_input: str
    ) -> AsyncGenerator[AgentEvent, None]:
        m = self.match(caller_input)
        say = self.fallback if m is None else m.entry.say
        asked = m is None or m.entry.kind == "knowledge"
        if self.knowledge is not None and asked and _dtmf_digits(caller_input) is None:
            # A question: the knowledge base answers it (an intent's patterns win first).
            hits, lookup = await self.knowledge.lookup(self.knowledge_agent, caller_input)
            if lookup.error is not None:
                yield KnowledgeUsed((), lookup.lookup_s, lookup.error)
                m, say = None, self.fallback  # an outage: never a stale or keyword guess
            elif hits:
                yield KnowledgeUsed((hits[0].entry.id,), lookup.lookup_s)
                m, say = None, spoken_answer(hits[0].entry.text)
            else:
                yield KnowledgeUsed((m.entry.id,) if m else (), lookup.lookup_s)
        for piece in split_sentences(say):
            yield TextDelta(piece)
        if m is not None:
            call = m.entry.tool_call()
            if call is not None:
                yield call

    def phrases(self) -> list[str]:
        """What callers are expected to say, for the recogniser's language model.

        The patterns (the caller's side) count three times; the agent's own lines
        once, since callers pick up its words ("hours", "address") but less often.
        """
        patterns: dict[str, None] = {}
        lines: dict[str, None] = {}
        for text in (self._greeting, self.fallback, self.goodbye):
            lines[text] = None
        for entry in self.entries:
            for p in entry.patterns:
                if _dtmf_digits(p) is None:
                    patterns[p] = None
            if entry.say:
                lines[entry.say] = None
        return [*patterns, *patterns, *patterns, *lines, *self.knowledge_phrases]
