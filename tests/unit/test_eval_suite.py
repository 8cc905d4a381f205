"""Eval suite files: the shipped suites load and are what the issue asks for; a bad file
gets one SuiteError naming the file, the line and the field; defaults apply."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.paraphrases import PARAPHRASES
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from switch.eval.suite import (
    KNOWN_VOICES,
    AgentUnderTest,
    CallerDefaults,
    Pause,
    Suite,
    SuiteError,
    load_suite,
    parse_suite,
)
from switch.knowledge.loaders import load_file

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "loadtest" / "suites"
SHIPPED = sorted(SUITES.glob("*.yaml"))


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def _said(suite: Suite) -> list[str]:
    return [turn.text for case in suite.cases for turn in case.turns if turn.text]


# --- the shipped suites -------------------------------------------------------------------


def test_every_domain_ships() -> None:
    assert {p.stem for p in SHIPPED} >= {"pizza", "outage", "bank", "airline"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_suite_loads_with_what_the_issue_asks(path: Path) -> None:
    suite = load_suite(path)
    cases = suite.cases
    single_questions = [
        c for c in cases if len(c.turns) == 1 and c.turns[0].expect.entry and c.turns[0].text
    ]
    assert len(single_questions) >= 16
    assert sum(c.turns[0].expect.fallback for c in cases) >= 2
    assert any(isinstance(p, Pause) for c in cases for t in c.turns for p in t.parts)
    backchannels = [t for c in cases for t in c.turns if t.expect.agent_stops is False]
    barge_ins = [t for c in cases for t in c.turns if t.expect.agent_stops is True]
    assert len(backchannels) >= 2 and barge_ins
    actions = {t.expect.action for c in cases for t in c.turns}
    assert {"transfer", "hangup"} <= actions
    piper = sum(c.voice == "piper-joe" for c in cases)
    assert 0.4 <= piper / len(cases) <= 0.6, "half Piper joe, half eSpeak"
    assert any(c.noise_db is not None for c in cases)
    assert all(c.band == "telephone" for c in cases)
    assert 0 < suite.pass_mark <= 1 and suite.max_wrong_actions == 0


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_suite_asks_about_every_entry_in_its_own_words(path: Path) -> None:
    suite = load_suite(path)
    if suite.agent.knowledge:  # a new domain: its FAQ has ~10 entries, two phrasings each
        entries = [e for f in suite.agent.knowledge for e in load_file(f)]
        assert 8 <= len(entries) <= 12
        for entry in entries:
            assert len({entry.title, *entry.questions}) == 2, entry.id
        phrasings = {_words(q) for e in entries for q in (e.title, *e.questions)}
        ids = {e.id for e in entries}
        assert suite.entry_ids == ids
        assert suite.agent.agents_dir is not None
        agent = ScriptedAgent.from_file(suite.agent.agents_dir / f"{suite.agent.name}.yaml")
        assert not [e for e in agent.entries if e.kind == "knowledge"], "answers: the FAQ only"
    else:  # the demo pizza agent
        assert suite.agent == AgentUnderTest("default")
        demo = ScriptedAgent.from_file(DEMO_AGENT_PATH)
        ids = {e.id for e in demo.entries if e.kind == "knowledge"}
        phrasings = {_words(p) for e in demo.entries for p in e.patterns}
        phrasings |= {_words(q) for q, _ in PARAPHRASES}
    expected = {t.expect.entry for c in suite.cases for t in c.turns if t.expect.entry}
    assert expected == ids, "every entry asked about, no unknown entry"
    copied = [s for s in _said(suite) if _words(s) in phrasings]
    assert not copied, "callers' own words, not the FAQ's"


def test_documented_example_is_a_valid_suite() -> None:
    doc = (ROOT / "docs" / "eval-suites.md").read_text()
    example = doc.split("## An annotated example", 1)[1].split("```yaml\n", 1)[1]
    suite = parse_suite(example.split("```", 1)[0], SUITES / "example.yaml")
    assert suite.agent.name == "lakeside-cards" and len(suite.cases) == 7


def test_shipped_case_ids_are_unique_across_a_suite() -> None:
    for path in SHIPPED:
        ids = [c.id for c in load_suite(path).cases]
        assert len(ids) == len(set(ids)), path


# --- errors: file, line, field ------------------------------------------------------------

GOOD = """\
agent: default
cases:
  - id: first
    say: hello there
    expect: {entry: hours}
  - id: second
    turns:
      - say: what time do you open
      - say: okay
        over_agent_ms: 1500
        expect:
          agent_stops: false
"""


def _error(text: str, name: str = "suites/bank.yaml") -> SuiteError:
    with pytest.raises(SuiteError) as info:
        parse_suite(textwrap.dedent(text), name)
    return info.value


def test_good_text_parses() -> None:
    suite = parse_suite(GOOD, "suites/ok.yaml")
    assert [c.id for c in suite.cases] == ["first", "second"]
    assert suite.cases[1].turns[1].expect.agent_stops is False


def test_bad_action_names_file_line_and_field() -> None:
    text = GOOD.replace("{entry: hours}", "{entry: hours, action: transfr}")
    err = _error(text)
    assert str(err) == (
        "suites/bank.yaml:5: cases[0].expect.action: expected one of none, transfer, "
        "hangup, got 'transfr'"
    )
    assert (err.path, err.line, err.field) == ("suites/bank.yaml", 5, "cases[0].expect.action")


def test_unknown_key_is_an_error_at_its_line_with_a_hint() -> None:
    text = GOOD.replace("    say: hello there\n", "    say: hello there\n    voic: piper-joe\n")
    err = _error(text)
    assert (err.line, err.field) == (5, "cases[0].voic")
    assert "unknown field" in err.problem and "did you mean 'voice'?" in err.problem


def test_unknown_top_level_key() -> None:
    err = _error("agent: default\npassmark: 0.9\ncases: [{say: hi}]\n")
    assert (err.line, err.field) == (2, "passmark")
    assert "did you mean 'pass_mark'?" in err.problem


def test_wrong_type_names_the_value_line() -> None:
    err = _error(GOOD.replace("over_agent_ms: 1500", "over_agent_ms: soon"))
    assert (err.line, err.field) == (10, "cases[1].turns[1].over_agent_ms")
    assert err.problem == "expected a whole number, got the text 'soon'"


def test_wrong_container_type() -> None:
    err = _error("agent: default\ncases:\n  say: hi\n")
    assert (err.line, err.field) == (3, "cases")
    assert err.problem == "expected a list, got a mapping"


def test_bad_voice() -> None:
    text = GOOD.replace("    say: hello there\n", "    say: hello there\n    voice: pipr-joe\n")
    err = _error(text)
    assert (err.line, err.field) == (5, "cases[0].voice")
    assert "got 'pipr-joe'" in err.problem and "espeak-<voice>" in err.problem


def test_voices_known_and_espeak_variants() -> None:
    for voice in (*KNOWN_VOICES, "espeak-en-us+f3", "espeak-de"):
        suite = parse_suite(f"agent: x\ncases: [{{say: hi, voice: {voice}}}]\n", "s.yaml")
        assert suite.cases[0].voice == voice
    for voice in ("piper", "espeak", "espeak-", "Espeak-en-us", "espeak-en us"):
        with pytest.raises(SuiteError, match=r"s\.yaml:3: cases\[0\]\.voice"):
            parse_suite(f"agent: x\ncases:\n  - {{say: hi, voice: '{voice}'}}\n", "s.yaml")


def test_missing_say_names_the_case() -> None:
    err = _error(GOOD.replace("    say: hello there\n", ""))
    assert (err.line, err.field) == (3, "cases[0].say")
    assert err.problem.startswith("missing")


def test_missing_say_in_a_turn() -> None:
    err = _error(GOOD.replace("      - say: okay\n        over", "      - over"))
    assert (err.line, err.field) == (9, "cases[1].turns[1].say")


def test_bad_yaml_syntax_names_the_line() -> None:
    err = _error("agent: default\ncases:\n  - say: [unclosed\n  - say: next\n")
    assert err.path == "suites/bank.yaml" and err.line in (3, 4)
    assert "invalid YAML" in str(err)
    err = _error("agent: default\ncases:\n  - say: hi\n   bad: indent\n")
    assert err.line == 4 and "invalid YAML" in err.problem


def test_duplicate_key_and_duplicate_case_id() -> None:
    err = _error("agent: default\ncases:\n  - say: hi\n    say: again\n")
    assert (err.line, err.field) == (4, "cases[0].say")
    assert "given twice (first on line 3)" in err.problem
    err = _error("agent: x\ncases:\n  - {id: a, say: hi}\n  - {id: a, say: ho}\n")
    assert (err.line, err.field) == (4, "cases[1].id")
    assert "duplicate case id 'a' (first on line 3)" in err.problem


@pytest.mark.parametrize(
    ("snippet", "line", "field", "problem"),
    [
        ("  - say: []\n", 3, "cases[0].say", "needs some words"),
        ("  - say: [{pause_ms: 500}]\n", 3, "cases[0].say", "needs some words"),
        ("  - say: [hi, {pause_ms: 0}]\n", 3, "cases[0].say[1].pause_ms", "from 1 to"),
        ("  - say: [hi, {pause: 5}]\n", 3, "cases[0].say[1].pause", "unknown field"),
        ("  - {say: hi, speed: 3}\n", 3, "cases[0].speed", "from 0.5 to 2"),
        ("  - {say: hi, band: wide}\n", 3, "cases[0].band", "telephone, full"),
        ("  - {say: hi, dtmf: '12x'}\n", 3, "cases[0].dtmf", "0-9 * # A-D"),
        ("  - {say: hi, wait_ms: 5, over_agent_ms: 5}\n", 3, "cases[0].wait_ms", "not with"),
        ("  - {say: hi, turns: [{say: ho}]}\n", 3, "cases[0].say", "not with turns"),
        ("  - {say: hi, expect: {agent_stops: true}}\n", 3, "cases[0].expect.agent_stops",
         "over_agent_ms"),
        ("  - {say: hi, over_agent_ms: 9, expect: {agent_stops: false, entry: a}}\n", 3,
         "cases[0].expect.agent_stops", "backchannel"),
        ("  - {say: hi, expect: {entry: a, fallback: true}}\n", 3, "cases[0].expect.fallback",
         "not with entry"),
        ("  - {say: hi, expect: {entry: 'a b'}}\n", 3, "cases[0].expect.entry", "entry ids"),
        ("  - {say: hi, expect: {max_latency_ms: -1}}\n", 3, "cases[0].expect.max_latency_ms",
         "from 1"),
        ("  - {say: hi, expect: {fallback: yes please}}\n", 3, "cases[0].expect.fallback",
         "true or false"),
        ("  - {say: hi, turns: []}\n", 3, "cases[0].say", "not with turns"),
        ("  - {turns: []}\n", 3, "cases[0].turns", "at least one turn"),
    ],
)  # fmt: skip
def test_bad_fields(snippet: str, line: int, field: str, problem: str) -> None:
    err = _error("agent: x\ncases:\n" + snippet)
    assert (err.line, err.field) == (line, field), str(err)
    assert problem in err.problem, str(err)


def test_top_level_problems() -> None:
    assert _error("agent: x\ncases: []\n").problem == "must list at least one case"
    err = _error("cases: [{say: hi}]\n")
    assert (err.line, err.field) == (1, "agent") and err.problem.startswith("missing")
    err = _error("agent: x\npass_mark: 0\ncases: [{say: hi}]\n")
    assert (err.line, err.field) == (2, "pass_mark")
    err = _error("agent: 'no spaces'\ncases: [{say: hi}]\n")
    assert (err.line, err.field) == (1, "agent")
    err = _error("- just\n- a list\n")
    assert (err.line, err.field) == (1, "") and str(err).startswith("suites/bank.yaml:1: ")
    assert _error("").problem == "expected a mapping, got nothing (null)"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abc:-[]{}&*!<>#'\"|\n 0123456789.", max_size=120))
def test_any_text_is_a_suite_or_a_suite_error(text: str) -> None:
    for whole in ("agent: x\ncases:\n" + text, text):
        try:
            parse_suite(whole, "s.yaml")
        except SuiteError as exc:
            assert str(exc).startswith("s.yaml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"nope\.yaml: cannot read"):
        load_suite(tmp_path / "nope.yaml")


# --- defaults -----------------------------------------------------------------------------


def test_defaults_without_a_defaults_section() -> None:
    suite = parse_suite("agent: default\ncases: [{say: hi}]\n", "dir/mini.yaml")
    assert suite.name == "mini" and suite.description == ""
    assert suite.pass_mark == 1.0 and suite.max_wrong_actions == 0
    assert suite.agent == AgentUnderTest("default", None, ())
    assert suite.defaults == CallerDefaults()
    case = suite.cases[0]
    assert case.id == "case-1" and case.tags == ()
    assert (case.voice, case.speed, case.pitch_semitones) == ("piper-joe", 1.0, 0.0)
    assert (case.noise_db, case.band) == (None, "telephone")
    turn = case.turns[0]
    assert turn.parts == ("hi",) and turn.dtmf == "" and turn.over_agent_ms is None
    assert turn.wait_ms == 800
    expect = turn.expect
    assert expect.action == "none" and expect.max_latency_ms is None
    assert expect.entry is None and not expect.fallback and expect.agent_stops is None


def test_defaults_section_applies_and_cases_override() -> None:
    suite = parse_suite(
        textwrap.dedent(
            """\
            agent: {name: default}
            pass_mark: 0.75
            max_wrong_actions: none
            defaults:
              voice: espeak-en-gb
              speed: 1.2
              pitch_semitones: -3
              noise_db: -25
              band: full
              wait_ms: 300
              max_latency_ms: 2500
            cases:
              - say: plain
              - say: quiet line, no limit
                voice: piper-joe
                noise_db: none
                expect: {max_latency_ms: none}
              - turns:
                  - say: [my number is, {pause_ms: 900}, four two]
                    wait_ms: 50
                    expect: {entry: hours, contains: ten, action: hangup}
                  - say: uh-huh
                    over_agent_ms: 1200
                    expect: {agent_stops: false}
                  - dtmf: 12#
            """
        ),
        "s.yaml",
    )
    assert suite.pass_mark == 0.75 and suite.max_wrong_actions is None
    plain, quiet, multi = suite.cases
    assert (plain.voice, plain.speed, plain.pitch_semitones) == ("espeak-en-gb", 1.2, -3.0)
    assert (plain.noise_db, plain.band) == (-25.0, "full")
    assert plain.turns[0].wait_ms == 300 and plain.turns[0].expect.max_latency_ms == 2500
    assert (quiet.voice, quiet.noise_db) == ("piper-joe", None)
    assert quiet.turns[0].expect.max_latency_ms is None
    first, backchannel, keys = multi.turns
    assert first.parts == ("my number is", Pause(900), "four two")
    assert first.text == "my number is four two" and first.wait_ms == 50
    assert first.expect.contains == ("ten",) and first.expect.action == "hangup"
    assert first.expect.max_latency_ms == 2500
    assert backchannel.over_agent_ms == 1200 and backchannel.expect.max_latency_ms is None
    assert keys.parts == () and keys.dtmf == "12#" and keys.wait_ms == 300


def test_numeric_dtmf_keeps_its_leading_zero() -> None:
    suite = parse_suite("agent: x\ncases: [{dtmf: 0123}, {dtmf: 0}]\n", "s.yaml")
    assert [c.turns[0].dtmf for c in suite.cases] == ["0123", "0"]


def test_merge_keys_work() -> None:
    suite = parse_suite(
        "agent: x\ncases:\n  - &base {say: hi, voice: espeak-en-us}\n"
        "  - {<<: *base, id: two, say: ho}\n",
        "s.yaml",
    )
    assert suite.cases[1].voice == "espeak-en-us" and suite.cases[1].turns[0].text == "ho"


# --- an agent in a folder with its knowledge files ------------------------------------------


def _domain(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "desk.yaml").write_text(
        "name: Desk\ngreeting: Hi\nfallback: Sorry\ngoodbye: Bye\n"
        "intents:\n  - {id: bye, action: hang_up, patterns: [bye]}\n"
    )
    (tmp_path / "faq.csv").write_text(
        "id,question,questions,answer\nhours,When are you open?,Opening times,9 to 5.\n"
    )
    return tmp_path / "suite.yaml"


def test_agents_dir_and_knowledge_resolve_next_to_the_suite(tmp_path: Path) -> None:
    path = _domain(tmp_path)
    path.write_text(
        "agent:\n  name: desk\n  agents_dir: agents\n  knowledge: faq.csv\n"
        "cases: [{say: when can I come in, expect: {entry: hours}}]\n"
    )
    suite = load_suite(path)
    assert suite.agent == AgentUnderTest("desk", tmp_path / "agents", (tmp_path / "faq.csv",))
    assert suite.entry_ids == {"hours"}


def test_expected_entry_must_exist_in_the_knowledge(tmp_path: Path) -> None:
    path = _domain(tmp_path)
    path.write_text(
        "agent: {name: desk, agents_dir: agents, knowledge: [faq.csv]}\n"
        "cases:\n  - say: when can I come in\n    expect:\n      entry: hourz\n"
    )
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert (info.value.line, info.value.field) == (5, "cases[0].expect.entry")
    assert "no entry 'hourz'" in info.value.problem and "hours" in info.value.problem


@pytest.mark.parametrize(
    ("agent", "field", "problem"),
    [
        ("{name: nobody, agents_dir: agents}", "agent.name", "no agent file nobody.yaml"),
        ("{name: desk, agents_dir: missing}", "agent.agents_dir", "not a folder"),
        ("{name: desk, knowledge: [gone.md]}", "agent.knowledge[0]", "no such file"),
        ("{name: desk, agent_dir: agents}", "agent.agent_dir", "did you mean 'agents_dir'"),
        ("{name: desk, knowledge: [faq.csv, faq.csv]}", "agent.knowledge[1]", "'hours' is also"),
    ],
)
def test_bad_agent(tmp_path: Path, agent: str, field: str, problem: str) -> None:
    path = _domain(tmp_path)
    path.write_text(f"agent: {agent}\ncases: [{{say: hi}}]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert (info.value.line, info.value.field) == (1, field)
    assert problem in info.value.problem


def test_broken_agent_file_is_reported_at_agents_dir(tmp_path: Path) -> None:
    path = _domain(tmp_path)
    (tmp_path / "agents" / "desk.yaml").write_text("name: Desk\n")
    path.write_text("agent:\n  name: desk\n  agents_dir: agents\ncases: [{say: hi}]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert (info.value.line, info.value.field) == (3, "agent.agents_dir")
    assert "greeting: missing" in info.value.problem
