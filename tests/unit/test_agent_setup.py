"""Setting an agent up the way users do (issue 25): a bad agent file is one line naming
file, line and field, at node start and in ``kb`` commands; ``kb load --agent`` refuses
an agent the configuration does not have unless ``--create``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from switch.cli import main
from switch.config import ConfigError, Settings, inbound_routes, load_settings
from switch.node import run_node
from switch.trunking.trunks import InboundRoute, TrunkBook

AGENT = """\
name: Northfield Clinic
greeting: Northfield Clinic, how can I help?
fallback: Sorry, I can only help with the clinic's opening hours and appointments.
goodbye: Thank you for calling, goodbye.
intents:
  - id: bye
    action: hang_up
    patterns: [goodbye, that's all]
  - id: desk
    action: transfer
    target: sip:desk@127.0.0.1
    patterns: [talk to a person]
"""

FAQ = """\
# Opening hours
Q: when are you open
Q: what are your opening hours
The clinic is open Monday to Friday from 8 AM to 6 PM.
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder: agents/clinic.yaml, faq.md; no VOXSWITCH_ variables."""
    for name in [k for k in os.environ if k.startswith("VOXSWITCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "clinic.yaml").write_text(AGENT)
    (tmp_path / "faq.md").write_text(FAQ)
    return tmp_path


def _kb(folder: Path, *args: str) -> list[str]:
    return ["kb", *args, "--agents-dir", "agents", "--kb-dir", str(folder / "kb")]


def _break(folder: Path) -> None:
    path = folder / "agents" / "clinic.yaml"
    path.write_text(path.read_text().replace("action: transfer", "action: transfr"))


def _node_settings(**given: str) -> Settings:
    """A node that stops before it listens: loopback, no API, nothing written."""
    base = {"sip_host": "127.0.0.1", "sip_port": "0", "api_port": "0", "trunks_file": "",
            "records_file": "", "kb_dir": ""}  # fmt: skip
    return load_settings({**base, **given}, env={})


BAD_LINE = "agents/clinic.yaml:10: intents[1].action: expected one of hang_up, transfer, "


def test_kb_load_refuses_an_agent_the_configuration_does_not_have(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_kb(folder, "load", "faq.md", "--agent", "clinc")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "no agent named 'clinc'" in err and "default, clinic" in err and "--create" in err
    assert not (folder / "kb").exists() or not any((folder / "kb").iterdir())


def test_kb_load_create_makes_a_knowledge_base_for_a_new_agent(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_kb(folder, "load", "faq.md", "--agent", "intake", "--create")) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 1
    # It exists now: later loads and searches need no --create.
    assert main(_kb(folder, "search", "opening", "hours", "--agent", "intake")) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == "opening-hours"
    assert main(_kb(folder, "load", "faq.md", "--agent", "clinic")) == 0  # a file's agent
    assert main(_kb(folder, "list", "--agent", "nobody")) == 2
    assert "no agent named 'nobody'" in capsys.readouterr().err


def test_kb_load_names_a_bad_agent_file_by_line_and_field(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _break(folder)
    assert main(_kb(folder, "load", "faq.md", "--agent", "clinic")) == 2
    err = capsys.readouterr().err
    assert err.startswith("voxswitch kb load: " + BAD_LINE) and err.count("\n") == 1, err
    assert "got 'transfr'" in err


def test_a_bad_agent_file_stops_the_node_with_one_line(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _break(folder)
    for setting in ({"agents_dir": "agents"}, {"agent": "agents/clinic.yaml"}):
        settings = _node_settings(**setting)
        assert asyncio.run(run_node(settings)) == 2
        err = capsys.readouterr().err
        assert err == f"voxswitch: {BAD_LINE}send_dtmf, got 'transfr'\n", err


# --- kb_dir: one index whatever folder a command starts in ---------------------------


def test_kb_dir_default_is_absolute_beside_the_config_else_under_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    assert load_settings({}, env=env).kb_dir == str(tmp_path / "state/voxswitch/voxswitch-kb")
    assert load_settings({"state_dir": "/srv/vox"}, env=env).kb_dir == "/srv/vox/voxswitch-kb"
    config = tmp_path / "site" / "voxswitch.toml"
    config.parent.mkdir()
    config.write_text("sip_port = 5070\n")
    beside = load_settings({}, env=env, config_file=str(config))
    assert beside.kb_dir == str(tmp_path / "site/voxswitch-kb")
    config.write_text('kb_dir = "knowledge"\n')  # relative in the file: from its folder
    assert load_settings({}, env=env, config_file=str(config)).kb_dir == str(
        tmp_path / "site/knowledge"
    )
    typed = load_settings({"kb_dir": "mine"}, env=env, config_file=str(config))
    assert typed.kb_dir == str(elsewhere / "mine")  # typed in a shell: from where it is
    assert load_settings({"kb_dir": ""}, env=env).kb_dir == ""  # memory


# --- inbound routes in the settings ---------------------------------------------------


def test_inbound_routes_from_the_cli_the_config_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switch.cli import _build_parser, _settings

    for name in [k for k in os.environ if k.startswith("VOXSWITCH_")]:
        monkeypatch.delenv(name)
    args = _build_parser().parse_args(
        ["serve", "--inbound-route", "1000=clinic", "--inbound-route", "2[0-9]{3}=sales"]
    )
    assert inbound_routes(_settings(args)) == [("1000", "clinic"), ("2[0-9]{3}", "sales")]
    config = tmp_path / "voxswitch.toml"
    config.write_text('inbound_routes = ["1000=clinic", "clinic=clinic"]\n')
    from_file = load_settings({}, env={}, config_file=str(config))
    assert inbound_routes(from_file) == [("1000", "clinic"), ("clinic", "clinic")]
    from_env = load_settings({}, env={"VOXSWITCH_INBOUND_ROUTES": "a=b c=d"})
    assert inbound_routes(from_env) == [("a", "b"), ("c", "d")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1000", "inbound_routes: expected PATTERN=AGENT, got '1000'"),
        ("(12=clinic", "inbound_routes: '(12=clinic': not a pattern this node takes: missing )"),
        ("1000=cl!nic", "inbound_routes: '1000=cl!nic': 'cl!nic' is not an agent name"),
        ("1(?=0)=clinic", "inbound_routes: '1(?=0)=clinic': not a pattern this node takes"),
    ],
)
def test_a_bad_inbound_route_is_one_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"inbound_routes": value}, env={})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_api_routes_are_tried_before_the_settings_routes() -> None:
    book = TrunkBook()
    book.configure_inbound([("1.*", "clinic"), ("1000", "sales")])
    assert book.agent_for("1000") == "clinic"  # the settings' own order
    assert book.agent_for("2000") is None
    asyncio.run(book.put_route(InboundRoute(name="vip", pattern="1000", agent="vip")))
    assert book.agent_for("1000") == "vip"
    assert book.agent_for("1001") == "clinic"
    assert set(book.configured) == {"config-1", "config-2"} and set(book.inbound) == {"vip"}


def test_a_route_to_an_agent_the_node_does_not_have_stops_it_with_one_line(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _node_settings(agents_dir="agents", inbound_routes="1000=clinc")
    assert asyncio.run(run_node(settings)) == 2
    err = capsys.readouterr().err
    assert err == (
        "voxswitch: inbound_routes: '1000=clinc': no agent named 'clinc' "
        "(this configuration's agents: default, clinic)\n"
    ), err
