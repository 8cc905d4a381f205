"""The offline scripted agent: YAML loading and validation, matching, streamed replies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.agent import AgentBrain, AgentEvent, KnowledgeUsed, TextDelta, ToolCall
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from switch.agents.scripted import AgentConfigError, content_words, split_sentences

DEMO = ScriptedAgent.from_file(DEMO_AGENT_PATH)
DEMO_DATA = yaml.safe_load(DEMO_AGENT_PATH.read_text())


def _answer(entry_id: str) -> str:
    for entry in DEMO_DATA["knowledge"]:
        if entry["id"] == entry_id:
            return " ".join(str(entry["answer"]).split())
    raise KeyError(entry_id)


async def _events(agent: ScriptedAgent, text: str) -> list[AgentEvent]:
    return [ev async for ev in agent.respond([], text)]


def _text(events: list[AgentEvent]) -> str:
    return "".join(ev.text for ev in events if isinstance(ev, TextDelta))


def _tools(events: list[AgentEvent]) -> list[ToolCall]:
    return [ev for ev in events if isinstance(ev, ToolCall)]


MINIMAL = """
name: t
greeting: Hello.
fallback: Pardon?
goodbye: Bye now.
knowledge:
  - id: one
    patterns: [first thing]
    answer: One. Two! Three?
"""


# --- loading ------------------------------------------------------------------------


def test_demo_loads() -> None:
    assert DEMO.name == "Voxswitch Pizza"
    assert DEMO.greeting().startswith("Thanks for calling Voxswitch Pizza")
    knowledge = [e for e in DEMO.entries if e.kind == "knowledge"]
    intents = {e.id: e for e in DEMO.entries if e.kind == "intents"}
    assert len(knowledge) >= 8
    assert intents["operator"].tool_call() == ToolCall(
        "transfer", {"target": "sip:operator@127.0.0.1"}
    )
    assert intents["goodbye"].action == "hang_up"
    agent: AgentBrain = DEMO  # satisfies the protocol
    assert agent.phrases()


def test_from_yaml_and_from_file_agree(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(MINIMAL)
    a, b = ScriptedAgent.from_yaml(MINIMAL), ScriptedAgent.from_file(path)
    assert a.entries == b.entries
    assert a.greeting() == b.greeting() == "Hello."


def test_phrases_cover_patterns_answers_and_greeting() -> None:
    phrases = DEMO.phrases()
    assert DEMO.greeting() in phrases
    assert "what time do you open" in phrases
    assert "where are you located" in phrases
    assert _answer("hours") in phrases
    assert "DTMF: 0" not in phrases  # keypad input is not speech
    # The caller's side weighs more in the language model than the agent's lines.
    assert phrases.count("where are you located") == 3
    assert phrases.count(DEMO.greeting()) == 1


# --- matching -----------------------------------------------------------------------


async def test_hours() -> None:
    events = await _events(DEMO, "What time do you open?")
    assert _text(events) == _answer("hours")
    assert _tools(events) == []


async def test_address() -> None:
    events = await _events(DEMO, "where are you located")
    assert _text(events) == _answer("address")


@pytest.mark.parametrize(
    ("said", "entry_id"),
    [
        ("when do you close", "hours"),
        ("how much is a large pizza", "prices"),
        ("do you deliver to Elm street", "delivery"),
        ("can I pay with card", "payment"),
        ("where's my pizza", "order_status"),
        ("is there anything vegan", "vegetarian"),
        ("what's your email", "contact"),
        ("DTMF: 1", "hours"),
    ],
)
def test_demo_matches(said: str, entry_id: str) -> None:
    m = DEMO.match(said)
    assert m is not None and m.entry.id == entry_id


@pytest.mark.parametrize("said", ["bye", "Goodbye!", "OK, that's all, thanks."])
async def test_goodbye_says_goodbye_then_hangs_up(said: str) -> None:
    events = await _events(DEMO, said)
    assert isinstance(events[0], TextDelta)
    assert _text(events) == DEMO.goodbye
    assert isinstance(events[-1], ToolCall) and events[-1].name == "hang_up"
    assert len(_tools(events)) == 1


@pytest.mark.parametrize("said", ["I want to talk to a human", "DTMF: 0", "dtmf:0", "Operator!"])
async def test_transfer_to_operator(said: str) -> None:
    events = await _events(DEMO, said)
    assert _text(events)  # says something first
    assert _tools(events) == [ToolCall("transfer", {"target": "sip:operator@127.0.0.1"})]
    assert isinstance(events[-1], ToolCall)


@pytest.mark.parametrize("said", ["blorp zzyzx quux", "", "   ", "the", "DTMF: 7", "hello"])
async def test_no_match_says_fallback(said: str) -> None:
    events = await _events(DEMO, said)
    assert _text(events) == " ".join(DEMO.fallback.split())
    assert _tools(events) == []


def test_weak_overlap_is_not_enough() -> None:
    # One word of a two-word pattern, diluted by other words: below the threshold.
    assert DEMO.match("the pizza was cold") is None
    assert DEMO.match("thanks") is None  # must not hang up on a polite "thanks"


def test_stopwords_and_punctuation_do_not_count() -> None:
    assert content_words("Is the... THE a, is!") == frozenset()
    assert content_words("What's the PRICE?") == content_words("prices")


async def test_dtmf_matches_exactly_by_field() -> None:
    agent = ScriptedAgent.from_yaml(
        MINIMAL
        + """
  - id: menu
    dtmf: "5"
    answer: Menu.
"""
    )
    assert _text(await _events(agent, "DTMF: 5")) == "Menu."
    assert _text(await _events(agent, "DTMF: 55")) == "Pardon?"
    assert _text(await _events(agent, "five")) == "Pardon?"


async def test_send_dtmf_intent() -> None:
    agent = ScriptedAgent.from_yaml(
        MINIMAL
        + """
intents:
  - id: code
    action: send_dtmf
    digits: "12#"
    patterns: [enter the code]
"""
    )
    events = await _events(agent, "please enter the code")
    assert _tools(events) == [ToolCall("send_dtmf", {"digits": "12#"})]


# --- streaming ----------------------------------------------------------------------


async def test_sentences_stream_as_separate_deltas() -> None:
    agent = ScriptedAgent.from_yaml(MINIMAL)
    events = await _events(agent, "the first thing")
    assert events == [KnowledgeUsed(("one",)), TextDelta("One. "), TextDelta("Two! "),
                      TextDelta("Three?")]  # fmt: skip


async def test_an_answer_by_keypad_names_its_entry() -> None:
    """The call record cites the entry a keypad answer came from, as for speech."""
    agent = ScriptedAgent.from_yaml(MINIMAL.replace("[first thing]", "[first thing]\n    dtmf: 1"))
    events = await _events(agent, "DTMF: 1")
    assert events[0] == KnowledgeUsed(("one",)) and _text(events) == "One. Two! Three?"
    assert not [e for e in await _events(agent, "DTMF: 2") if isinstance(e, KnowledgeUsed)]


async def test_demo_multi_sentence_answer_streams_in_pieces() -> None:
    events = await _events(DEMO, "do you deliver")
    assert events[0] == KnowledgeUsed(("delivery",))
    assert len([e for e in events if isinstance(e, TextDelta)]) == 2
    assert _text(events) == _answer("delivery")


def test_split_sentences() -> None:
    assert split_sentences("A pizza is $12.50. Yes!  Really?") == [
        "A pizza is $12.50. ",
        "Yes! ",
        "Really?",
    ]
    assert split_sentences("no end") == ["no end"]
    assert split_sentences("  ") == []


async def test_respond_is_lazy_and_stateless() -> None:
    gen = DEMO.respond([], "bye")
    first = await anext(gen)
    assert isinstance(first, TextDelta)
    await gen.aclose()
    # A second call is unaffected.
    assert _tools(await _events(DEMO, "bye"))[0].name == "hang_up"


# --- validation ---------------------------------------------------------------------


def _with(doc: str, old: str, new: str) -> str:
    assert old in doc
    return doc.replace(old, new)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with(MINIMAL, "    answer: One. Two! Three?\n", ""), "knowledge[0].answer: missing"),
        (_with(MINIMAL, "greeting: Hello.\n", ""), "greeting: missing"),
        (_with(MINIMAL, "fallback: Pardon?", "fallback: 3"), "line 4: fallback: expected text"),
        (_with(MINIMAL, "    patterns: [first thing]\n", ""), "knowledge[0].patterns: missing"),
        (_with(MINIMAL, "patterns: [first thing]", "patterns: 7"), "knowledge[0].patterns"),
        (_with(MINIMAL, "    answer:", "    anwser:"), "line 9: knowledge[0].anwser: unknown"),
        (_with(MINIMAL, "name: t", "nam: t"), "line 2: nam: unknown field"),
        (MINIMAL + "  - 42\n", "line 10: knowledge[1]: expected a mapping, got the number 42"),
        (
            MINIMAL + "  - id: one\n    patterns: [x]\n    answer: y\n",
            "knowledge[1].id: duplicate 'one'",
        ),
        (
            MINIMAL + "intents:\n  - id: t\n    action: transfer\n    patterns: [op]\n",
            "intents[0].target: missing",
        ),
        (
            MINIMAL + "intents:\n  - id: t\n    action: dance\n    patterns: [op]\n",
            "line 12: intents[0].action: expected one of hang_up, transfer, send_dtmf, got 'dance'",
        ),
        (
            MINIMAL + "intents:\n  - id: t\n    patterns: [op]\n",
            "intents[0].action: missing",
        ),
        (
            MINIMAL + '  - id: k\n    dtmf: "5x"\n    answer: y\n',
            "knowledge[1].dtmf:",
        ),
        (MINIMAL + "threshold: 2\n", "line 10: threshold: must be from 0 to 1, got 2"),
        ("- just a list\n", "line 1: top level: expected a mapping, got a list"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_validation_errors_name_the_field(doc: str, message: str) -> None:
    with pytest.raises(AgentConfigError) as info:
        ScriptedAgent.from_yaml(doc)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_from_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="cannot read"):
        ScriptedAgent.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(_with(MINIMAL, "    answer: One. Two! Three?\n", ""))
    with pytest.raises(AgentConfigError, match=r"bad\.yaml:7: knowledge\[0\]\.answer: missing"):
        ScriptedAgent.from_file(bad)


# --- properties ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.from_regex(r"DTMF: [0-9*#A-D]{1,3}", fullmatch=True)))
def test_any_input_gets_a_spoken_reply(said: str) -> None:
    events = asyncio.run(_events(DEMO, said))
    spoken = [e for e in events if not isinstance(e, KnowledgeUsed)]
    assert spoken and isinstance(spoken[0], TextDelta)
    assert all(ev.text for ev in events if isinstance(ev, TextDelta))
    assert len(_tools(events)) <= 1
    if _tools(events):
        assert isinstance(events[-1], ToolCall)
