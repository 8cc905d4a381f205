"""Acting on what was heard (switch/agents/actions.py and the scripted agent): a hang-up,
transfer or DTMF happens at once only when the agent is sure; when it is merely likely,
the agent asks first and acts on a yes. A mishearing costs a turn, never the call."""

from __future__ import annotations

from actors.agent import AgentEvent, ChatMessage, TextDelta, ToolCall
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from switch.agents.actions import CONFIRM, DECLINED, certainty, pending, yes_or_no
from switch.knowledge import KnowledgeBase
from switch.knowledge.embedded import EmbeddedStore
from switch.knowledge.entries import phrases_of
from switch.knowledge.loaders import load_file

TRANSFER = ToolCall("transfer", {"target": "sip:operator@127.0.0.1"})


async def _events(agent: ScriptedAgent, text: str, history: list[ChatMessage] | None = None
                  ) -> list[AgentEvent]:  # fmt: skip
    return [e async for e in agent.respond(history or [], text)]


def _said(events: list[AgentEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def _tools(events: list[AgentEvent]) -> list[ToolCall]:
    return [e for e in events if isinstance(e, ToolCall)]


async def _demo_with_knowledge() -> ScriptedAgent:
    kb = KnowledgeBase(EmbeddedStore())
    entries = load_file(DEMO_AGENT_PATH)
    await kb.add("default", entries)
    agent = ScriptedAgent.from_file(DEMO_AGENT_PATH)
    agent.use_knowledge(kb, "default", phrases_of(entries))
    return agent


def test_certainty_from_words_and_meaning() -> None:
    assert certainty(1.0, None, 0.55) == "sure"
    assert certainty(0.7, None, 0.55) == "likely"
    assert certainty(0.3, 0.72, 0.55) == "sure"
    assert certainty(0.3, 0.6, 0.55) == "likely"
    assert certainty(0.3, 0.4, 0.55) is None


def test_short_yes_and_no_answers() -> None:
    assert yes_or_no("Yes please.") is True and yes_or_no("yeah, go on") is True
    assert yes_or_no("no thanks") is False and yes_or_no("nope") is False
    assert yes_or_no("no, yes") is None  # both: not an answer
    assert yes_or_no("what time do you close on Sundays then") is None
    assert yes_or_no("") is None


def test_a_pending_confirmation_is_read_back_from_the_conversation() -> None:
    asked = [ChatMessage("user", "x"), ChatMessage("assistant", CONFIRM["transfer"])]
    intents = {"bye": "hang_up", "operator": "transfer"}
    assert pending(asked, intents) == "operator"
    assert pending([*asked, ChatMessage("user", "y")], intents) is None  # not the last line
    assert pending(asked, {"a": "transfer", "b": "transfer"}) is None  # which one? neither


async def test_a_goodbye_at_the_end_hangs_up_a_bye_inside_noise_only_asks() -> None:
    agent = ScriptedAgent.from_file(DEMO_AGENT_PATH)
    ended = await _events(agent, "okay great, that's all I needed, thanks, bye")
    assert [t.name for t in _tools(ended)] == ["hang_up"]
    salad = await _events(agent, "talk to bye to have a forty")  # a recogniser's word salad
    assert not _tools(salad)
    assert _said(salad) in (CONFIRM["hang_up"], CONFIRM["transfer"]), _said(salad)


async def test_a_likely_action_is_confirmed_then_taken_or_dropped() -> None:
    agent = ScriptedAgent.from_file(DEMO_AGENT_PATH)
    first = await _events(agent, "could I maybe have a word with your manager about it")
    assert not _tools(first) and _said(first) == CONFIRM["transfer"]
    history = [ChatMessage("user", "..."), ChatMessage("assistant", _said(first))]
    assert _tools(await _events(agent, "yes please", history)) == [TRANSFER]
    declined = await _events(agent, "no", history)
    assert not _tools(declined) and _said(declined) == DECLINED
    other = await _events(agent, "what are your opening hours", history)  # a new question
    assert not _tools(other) and "11" in _said(other)


async def test_keypad_and_exact_requests_act_at_once() -> None:
    agent = ScriptedAgent.from_file(DEMO_AGENT_PATH)
    assert _tools(await _events(agent, "DTMF: 0")) == [TRANSFER]
    assert _tools(await _events(agent, "operator")) == [TRANSFER]


async def test_a_paraphrased_request_for_a_person_transfers_by_meaning() -> None:
    agent = await _demo_with_knowledge()
    asked = await _events(agent, "can I talk to somebody who actually works there")
    assert _tools(asked) == [TRANSFER], _said(asked)
    question = await _events(agent, "can you bring food to my home")
    assert not _tools(question) and _said(question).startswith("We deliver")
