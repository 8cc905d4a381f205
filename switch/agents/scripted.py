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

import logging
import os
import re
import string
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from yaml.nodes import ScalarNode, SequenceNode

from actors.agent import (
    TOOL_NAMES,
    AgentEvent,
    ChatMessage,
    KnowledgeUsed,
    TextDelta,
    ToolCall,
)
from switch.agents.actions import (
    DECLINED,
    Certainty,
    certainty,
    confirmation_of,
    pending,
    yes_or_no,
)
from switch.knowledge.base import KnowledgeBase
from switch.knowledge.embedder import EmbedderUnavailable, Vectors
from switch.marked_yaml import FieldError, Fields, Value, compose

__all__ = [
    "DEFAULT_THRESHOLD",
    "AgentConfigError",
    "Entry",
    "Match",
    "ScriptedAgent",
    "split_sentences",
]

log = logging.getLogger(__name__)

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
    """The YAML description is invalid; the message names the file (when read from one),
    the line and the field: ``agents/clinic.yaml:12: knowledge[2].answer: missing``."""

    def __init__(self, message: str, *, line: int = 0, field: str = "") -> None:
        super().__init__(message)
        self.line, self.field = line, field

    @classmethod
    def at(cls, exc: FieldError, source: str = "") -> AgentConfigError:
        where = f"{source}:{exc.line}" if source else f"line {exc.line}"
        return cls(f"{where}: {exc.field or 'top level'}: {exc.problem}",
                   line=exc.line, field=exc.field)  # fmt: skip


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
    return frozenset(content_word_list(text))


def content_word_list(text: str) -> list[str]:
    """:func:`content_words` in the order they were said."""
    words = text.lower().replace("’", "'").translate(_PUNCT_TABLE).split()
    out: list[str] = []
    for raw in words:
        if raw in STOPWORDS:
            continue
        word = raw.replace("'", "")
        if not word or word in STOPWORDS:
            continue
        out.append(_stem(word))
    return out


def _deltas(text: str) -> Iterator[TextDelta]:
    return (TextDelta(piece) for piece in split_sentences(text))


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
# The file is read as marked YAML nodes (switch/marked_yaml.py), so every error names
# the line and the field: ``agents/clinic.yaml:12: intents[1].action: expected ...``.


def _dtmf_list(value: Value | None) -> list[str]:
    if value is None or value.is_null:
        return []
    items = value.items() if isinstance(value.node, SequenceNode) else [value]
    out: list[str] = []
    for item in items:
        data = item.data() if isinstance(item.node, ScalarNode) else None
        if isinstance(data, bool) or not isinstance(data, str | int):
            item.expected("keypad digits 0-9 * # A-D")
        digits = item.raw().upper()  # as written: "0123" keeps its zero
        if not _DIGITS_RE.match(digits):
            item.fail(f"{digits!r} is not digits 0-9 * # A-D")
        out.append(digits)
    return out


def _words(fields: Fields, key: str) -> list[str]:
    value = fields.given(key)
    return list(value.strings()) if value is not None else []


def _optional(fields: Fields, key: str) -> str | None:
    value = fields.given(key)
    return value.string() if value is not None else None


def _parse_entry(raw: Value, kind: str, index: int, goodbye: str, seen: dict[str, int]) -> Entry:
    fields = raw.mapping(_KNOWLEDGE_FIELDS if kind == "knowledge" else _INTENT_FIELDS)
    id_value = fields.require("id")
    entry_id = id_value.string()
    if entry_id in seen:
        id_value.fail(f"duplicate {entry_id!r} (first on line {seen[entry_id]})")
    seen[entry_id] = id_value.line
    patterns = _words(fields, "patterns") + _words(fields, "keywords")
    dtmf = _dtmf_list(fields.get("dtmf"))
    for p in patterns:
        digits = _dtmf_digits(p)
        if digits is not None and digits not in dtmf:
            dtmf.append(digits)
    if not patterns and not dtmf:
        hint = "need patterns, keywords or dtmf"
        given = fields.given("patterns") or fields.given("keywords")
        if given is None:
            fields.require("patterns", hint)
        else:
            given.fail(f"no phrases ({hint})")
    if kind == "knowledge":
        answer = fields.require("answer").string()
        return Entry(entry_id, kind, index, tuple(patterns), tuple(dtmf), answer)
    action = fields.require("action").choice(TOOL_NAMES)
    say = _optional(fields, "say")
    args: dict[str, str] = {}
    if action == "hang_up":
        reason = _optional(fields, "reason")
        if reason is not None:
            args["reason"] = reason
        say = say or goodbye
    elif action == "transfer":
        args["target"] = fields.require("target", "a SIP URI or number").string()
        say = say or DEFAULT_TRANSFER_SAY
    else:
        value = fields.require("digits", "keypad digits 0-9 * # A-D")
        digits = value.raw().upper()
        if not _DIGITS_RE.match(digits):
            value.fail(f"{digits!r} is not digits 0-9 * # A-D")
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


def _parse_agent(document: Value) -> dict[str, Any]:
    """The keyword arguments of :class:`ScriptedAgent` from a composed agent file."""
    fields = document.mapping(_TOP_FIELDS)
    text = {
        key: fields.require(key).string() for key in ("name", "greeting", "fallback", "goodbye")
    }
    value = fields.given("threshold")
    threshold = value.number(0, 1, above=True) if value is not None else DEFAULT_THRESHOLD
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for kind in ("knowledge", "intents"):
        items = fields.given(kind)
        for i, raw in enumerate(items.items() if items is not None else []):
            entries.append(_parse_entry(raw, kind, i, text["goodbye"], seen))
    if not entries:
        hint = "need knowledge or intents entries"
        given = fields.given("knowledge") or fields.given("intents")
        if given is None:
            fields.require("knowledge", hint)
        else:
            given.fail(f"no entries ({hint})")
    return {**text, "entries": entries, "threshold": threshold}


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
        self._intents = [e for e in self.entries if e.kind == "intents"]
        # The intents' patterns embedded on first use (owners, unit vectors).
        self._intent_vectors: tuple[list[Entry], Vectors] | None = None

    # construction

    @classmethod
    def from_yaml(cls, text: str, source: str = "") -> ScriptedAgent:
        """The agent ``text`` describes; ``source`` (a file name) prefixes errors."""
        try:
            return cls(**_parse_agent(compose(text)))
        except FieldError as exc:
            raise AgentConfigError.at(exc, source) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ScriptedAgent:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentConfigError(f"{os.fspath(path)}: cannot read: {exc}") from None
        return cls.from_yaml(text, os.fspath(path))

    @classmethod
    def from_dict(cls, data: Any) -> ScriptedAgent:
        """The agent from already parsed YAML (errors name the field; lines are the
        dumped document's)."""
        try:
            text = yaml.safe_dump(data, sort_keys=False)
        except yaml.YAMLError as exc:
            raise AgentConfigError(f"top level: not YAML data: {exc}") from None
        return cls.from_yaml(text)

    # matching

    def match(self, caller_input: str, kind: str | None = None) -> Match | None:
        """The entry that answers ``caller_input``, or None (the agent says ``fallback``);
        ``kind``: only ``knowledge`` entries, or only ``intents``."""
        digits = _dtmf_digits(caller_input)
        if digits is not None:
            for entry, _ in self._scored:
                if digits in entry.dtmf and kind in (None, entry.kind):
                    return Match(entry, 1.0)
            return None
        said = content_words(caller_input)
        if not said:
            return None
        best: tuple[float, int] = (0.0, 0)
        best_entry: Entry | None = None
        for entry, pattern_sets in self._scored:
            if kind is not None and entry.kind != kind:
                continue
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
        if _dtmf_digits(caller_input) is not None:  # keypad input: exact, acted on at once
            m = self.match(caller_input)
            if m is not None and m.entry.kind == "knowledge":
                yield KnowledgeUsed((m.entry.id,))
            for event in self._say(m.entry if m else None):
                yield event
            return
        waiting = pending(history, {e.id: e.action for e in self._intents})
        if waiting is not None and (answer := yes_or_no(caller_input)) is not None:
            entry = next(e for e in self._intents if e.id == waiting)
            for event in self._say(entry) if answer else _deltas(DECLINED):
                yield event
            return
        intent, sure = await self._intent(caller_input)
        if intent is not None and sure == "sure":
            for event in self._say(intent):
                yield event
            return
        answered = False
        async for event in self._answer(caller_input, knowing_intent=intent is not None):
            answered = answered or isinstance(event, TextDelta)
            yield event
        if not answered:  # no answer from knowledge: ask about a likely action, or fall back
            line = confirmation_of(intent.action) if intent is not None else self.fallback
            for event in _deltas(line):
                yield event

    async def _answer(
        self, caller_input: str, *, knowing_intent: bool
    ) -> AsyncGenerator[AgentEvent, None]:
        """The answer from knowledge (the base, else the file's patterns); nothing
        spoken when there is none. A base outage is the fallback line, never a guess."""
        m = self.match(caller_input, kind="knowledge")
        if self.knowledge is None:
            if m is not None:
                yield KnowledgeUsed((m.entry.id,))
                for event in _deltas(m.entry.say):
                    yield event
            return
        hits, lookup = await self.knowledge.lookup(self.knowledge_agent, caller_input)
        if lookup.error is not None:
            yield KnowledgeUsed((), lookup.lookup_s, lookup.error)
            if not knowing_intent:
                for event in _deltas(self.fallback):
                    yield event
        elif hits:
            yield KnowledgeUsed((hits[0].entry.id,), lookup.lookup_s)
            for event in _deltas(spoken_answer(hits[0].entry.text)):
                yield event
        else:
            yield KnowledgeUsed((m.entry.id,) if m else (), lookup.lookup_s)
            if m is not None:
                for event in _deltas(m.entry.say):
                    yield event

    async def _intent(self, caller_input: str) -> tuple[Entry | None, Certainty | None]:
        """The intent the caller most likely means, and how sure (actions.py): by its
        patterns' words, and by meaning when the agent has an embedder."""
        by_words = self.match(caller_input, kind="intents")
        if by_words is not None and self._closes(caller_input, by_words.entry):
            by_words = Match(by_words.entry, 1.0)
        meaning: tuple[Entry, float] | None = None
        if self.knowledge is not None and self._intents:
            meaning = await self._intent_by_meaning(caller_input)
        candidates: list[tuple[Certainty, float, Entry]] = []
        if by_words is not None:
            same = meaning[1] if meaning and meaning[0] is by_words.entry else None
            if c := certainty(by_words.score, same, self.threshold):
                candidates.append((c, by_words.score, by_words.entry))
        if meaning is not None and (c := certainty(0.0, meaning[1], self.threshold)):
            candidates.append((c, meaning[1], meaning[0]))
        if not candidates:
            return None, None
        c, _, entry = max(candidates, key=lambda t: (t[0] == "sure", t[1]))
        return entry, c

    def _closes(self, caller_input: str, entry: Entry) -> bool:
        """A hang-up intent's pattern is the last thing said ("that's all, thanks, bye"):
        callers end with their goodbye; a "bye" heard mid-sentence is more likely noise."""
        if entry.action != "hang_up":
            return False
        said = content_word_list(caller_input)
        for words in (content_word_list(p) for p in entry.patterns):
            if words and set(said[-len(words) :]) == set(words):
                return True
        return False

    async def _intent_by_meaning(self, caller_input: str) -> tuple[Entry, float] | None:
        assert self.knowledge is not None
        try:
            if self._intent_vectors is None:
                texts = [(e, p) for e in self._intents for p in e.patterns
                         if _dtmf_digits(p) is None]  # fmt: skip
                vectors = await self.knowledge.embed([p for _, p in texts])
                self._intent_vectors = ([e for e, _ in texts], vectors)
            owners, vectors = self._intent_vectors
            if not owners:
                return None
            spans = await self.knowledge.embed_spans(caller_input)
        except EmbedderUnavailable as exc:  # its wheel missing: words alone decide, for good
            log.warning("scripted agent %s: intents matched by words only: %s", self.name, exc)
            self._intent_vectors = ([], np.zeros((0, 1), dtype=np.float32))
            return None
        except Exception:  # this turn's failure only: words decide it, the next tries again
            log.warning("scripted agent %s: intents by meaning failed", self.name, exc_info=True)
            return None
        # The intent's short phrases against every few-word run of what was said: "put
        # me through to someone" is in a long, angry sentence, not the whole of it.
        scores = (spans @ vectors.T).max(axis=0)
        best = int(scores.argmax())
        return owners[best], float(scores[best])

    def _say(self, entry: Entry | None) -> Iterator[AgentEvent]:
        """An entry's line and its action (the fallback line for no entry)."""
        yield from _deltas(self.fallback if entry is None else entry.say)
        call = entry.tool_call() if entry is not None else None
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
