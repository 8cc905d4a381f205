"""Secrets at rest: secret files, sealing, trunk passwords by reference, *_FILE settings."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from switch.config import ConfigError, load_settings
from switch.secret_box import SecretBox, SecretError, load_key_file, read_secret_file
from switch.trunking.sealing import PROBLEMS, TrunkKeys
from switch.trunking.trunks import Trunk, TrunkBook

KEY = "k" * 40
CARRIER: dict[str, Any] = {"name": "carrier", "host": "198.51.100.7", "username": "vox"}


# ---- secret files --------------------------------------------------------------------------


def test_a_secret_file_is_read_without_its_final_line_break(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret value\n")
    assert read_secret_file(path, "llm_api_key_file") == "s3cret value"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "cannot read"), (b"", "empty"), (b"\n", "empty"), (b"\xff\xfe", "UTF-8"),
     (b"x" * 70_000, "larger than")],
)  # fmt: skip
def test_a_bad_secret_file_is_a_clear_error(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretError, match=f"llm_api_key_file: .*{reason}"):
        read_secret_file(path, "llm_api_key_file")


def test_only_a_regular_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"x: .*(Is a directory|not a regular file)"):
        read_secret_file(tmp_path, "x")
    os.mkfifo(tmp_path / "fifo")  # no writer: an open that blocked would hang here
    with pytest.raises(SecretError, match="not a regular file"):
        read_secret_file(tmp_path / "fifo", "x")


# ---- the box ---------------------------------------------------------------------------------


def test_sealed_secrets_open_only_in_their_context_and_with_their_key() -> None:
    box = SecretBox.from_texts(KEY)
    sealed = box.seal("trunk-secret", "voxswitch trunk a password")
    assert "trunk-secret" not in sealed and sealed.startswith(f"v1:{box.key_id}:")
    assert box.open(sealed, "voxswitch trunk a password") == "trunk-secret"
    assert box.seal("trunk-secret", "c") != box.seal("trunk-secret", "c")  # a nonce each
    with pytest.raises(SecretError, match="moved from another field"):
        box.open(sealed, "voxswitch trunk b password")  # copied to another trunk
    with pytest.raises(SecretError, match="damaged"):
        box.open(sealed[:-4], "voxswitch trunk a password")
    with pytest.raises(SecretError, match="not a sealed secret"):
        box.open("trunk-secret", "c")
    other = SecretBox.from_texts("another key, long enough")
    with pytest.raises(SecretError, match=f"sealed with key {box.key_id}.*{other.key_id}"):
        other.open(sealed, "voxswitch trunk a password")


def test_a_box_seals_with_its_first_key_and_opens_with_older_ones() -> None:
    old = SecretBox.from_texts("the old key, long enough")
    sealed = old.seal("pw", "c")
    rotated = SecretBox.from_texts(KEY, "the old key, long enough")
    assert rotated.open(sealed, "c") == "pw"
    assert rotated.open(rotated.seal("pw", "c"), "c") == "pw"
    assert rotated.key_id != old.key_id


def test_the_key_file_is_made_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "trunks.key"
    assert load_key_file(path, create=False) is None and not path.exists()
    made = load_key_file(path, create=True)
    assert made and (path.stat().st_mode & 0o777) == 0o600
    assert load_key_file(path, create=True) == made  # kept, not replaced


# ---- trunk passwords in the trunks file -----------------------------------------------------


def saved_book(tmp_path: Path, **trunk: Any) -> TrunkBook:
    book = TrunkBook(tmp_path / "trunks.json")
    book.trunks["carrier"] = Trunk(**{**CARRIER, **trunk})
    book.save()
    return book


def test_a_clear_password_is_sealed_in_the_file_and_opens_again(tmp_path: Path) -> None:
    book = saved_book(tmp_path, password="trunk-secret", inbound_password="in-secret")
    text = (tmp_path / "trunks.json").read_text()
    assert "trunk-secret" not in text and "in-secret" not in text
    stored = json.loads(text)["trunks"][0]
    assert "password" not in stored and stored["password_sealed"].startswith("v1:")
    assert stored["inbound_password_sealed"].startswith("v1:")
    assert ((tmp_path / "trunks.key").stat().st_mode & 0o777) == 0o600
    again = TrunkBook.load(tmp_path / "trunks.json")
    assert again.trunks["carrier"].password == "trunk-secret"
    assert again.trunks["carrier"].inbound_password == "in-secret"
    assert again.dump() == book.dump()


def test_a_file_of_clear_passwords_loads_with_a_warning_and_is_sealed_on_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trunks.json"  # as every node before sealing wrote it
    path.write_text(json.dumps({"trunks": [{**CARRIER, "password": "old-clear"}]}))
    with caplog.at_level(logging.WARNING, logger="voxswitch.trunks"):
        book = TrunkBook.load(path)
    assert book.trunks["carrier"].password == "old-clear"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 trunk password(s) in the clear" in warnings[0]
    assert "old-clear" not in warnings[0]
    book.save()
    assert "old-clear" not in path.read_text()
    assert TrunkBook.load(path).trunks["carrier"].password == "old-clear"


def test_with_secrets_key_any_node_of_the_key_opens_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trunks.json"
    book = TrunkBook.load(path, secrets_key=KEY)
    book.trunks["carrier"] = Trunk(**CARRIER, password="pw-1")
    book.save()
    assert not (tmp_path / "trunks.key").exists()  # the configured key, no key file
    assert TrunkBook.load(path, secrets_key=KEY).trunks["carrier"].password == "pw-1"


def test_a_password_sealed_with_another_key_leaves_the_trunk_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trunks.json"
    book = TrunkBook.load(path, secrets_key=KEY)
    book.trunks["carrier"] = Trunk(**CARRIER, password="pw-1")
    book.save()
    with caplog.at_level(logging.WARNING, logger="voxswitch.trunks"):
        other = TrunkBook.load(path, secrets_key="a different key entirely")
    assert other.trunks["carrier"].password == ""
    assert "password not opened: sealed with key" in caplog.text


# ---- passwords by reference -----------------------------------------------------------------


def test_password_env_is_read_from_the_environment_and_stored_as_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARRIER_PASSWORD", "from-env")
    book = saved_book(tmp_path, password_env="CARRIER_PASSWORD")
    assert book.trunks["carrier"].password == "from-env"
    stored = json.loads((tmp_path / "trunks.json").read_text())["trunks"][0]
    assert stored["password_env"] == "CARRIER_PASSWORD"
    assert "password" not in stored and "password_sealed" not in stored
    assert "from-env" not in (tmp_path / "trunks.json").read_text()
    monkeypatch.setenv("CARRIER_PASSWORD", "rotated")
    assert TrunkBook.load(tmp_path / "trunks.json").trunks["carrier"].password == "rotated"
    shown = book.trunks["carrier"].public()
    assert shown["password"] == "********" and shown["password_env"] == "CARRIER_PASSWORD"


def test_password_file_is_read_from_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "carrier-in"
    secret.write_text("from-file\n")
    trunk = Trunk(**CARRIER, inbound_username="c", inbound_password_file=str(secret))
    assert trunk.inbound_password == "from-file"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"password_env": "NOT_SET_ANYWHERE_42"}, "password_env: NOT_SET_ANYWHERE_42 is not set"),
        ({"password_env": "VOXSWITCH_API_KEY"}, "one of the node's own settings"),
        ({"password_env": "voxswitch_llm_api_key_file"}, "one of the node's own settings"),
        ({"password_env": "1BAD NAME"}, "password_env"),
        ({"password_file": "/nonexistent/secret"}, "password_file: cannot read"),
        ({"password_env": "HOME", "password_file": "/x"}, "password_file\n.*not both"),
        ({"password": "clear", "password_env": "HOME"}, "password_env\n.*clear or by"),
        ({"inbound_password_env": "NOT_SET_ANYWHERE_42"}, "inbound_password_env"),
    ],
)
def test_a_reference_that_cannot_be_used_is_refused_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        Trunk(**CARRIER, **fields)
    assert "clear'" not in str(refused.value)  # the error never quotes a password


def test_the_mask_the_api_shows_goes_with_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARRIER_PASSWORD", "from-env")
    trunk = Trunk(**CARRIER, password="********", password_env="CARRIER_PASSWORD")
    assert trunk.password == "from-env"


def test_a_missing_reference_on_load_is_a_warning_not_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    problems: list[str] = []
    trunk = Trunk.model_validate(
        {**CARRIER, "password_env": "NOT_SET_ANYWHERE_42"}, context={PROBLEMS: problems}
    )
    assert trunk.password == "" and "NOT_SET_ANYWHERE_42 is not set" in problems[0]
    path = tmp_path / "trunks.json"
    path.write_text(json.dumps({"trunks": [{**CARRIER, "password_env": "NOT_SET_ANYWHERE_42"}]}))
    with caplog.at_level(logging.WARNING, logger="voxswitch.trunks"):
        book = TrunkBook.load(path)
    assert book.trunks["carrier"].password == "" and "it has no password" in caplog.text


# ---- PostgreSQL: sealed with secrets_key, else clear with one warning -----------------------


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    async def put_trunk(self, name: str, config: dict[str, Any]) -> None:
        self.rows[name] = json.loads(json.dumps(config))

    async def load(self) -> dict[str, Any]:
        return {"trunks": list(self.rows.values())}


async def test_the_shared_store_gets_sealed_passwords_with_secrets_key(tmp_path: Path) -> None:
    store = FakeStore()
    a = TrunkBook.load(tmp_path / "a.json", store, KEY)  # type: ignore[arg-type]
    await a.put_trunk(Trunk(**CARRIER, password="shared-pw"))
    assert "shared-pw" not in json.dumps(store.rows)
    b = TrunkBook.load(tmp_path / "b.json", store, KEY)  # type: ignore[arg-type]
    await b.reload()
    assert b.trunks["carrier"].password == "shared-pw"
    saved = (tmp_path / "b.json").stat().st_mtime_ns
    os.utime(tmp_path / "b.json", ns=(0, 0))
    await b.reload()  # nothing changed: the file is not written again
    assert (tmp_path / "b.json").stat().st_mtime_ns == 0 != saved


async def test_without_secrets_key_the_shared_store_is_clear_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeStore()
    a = TrunkBook.load(tmp_path / "a.json", store)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="voxswitch.trunks"):
        await a.put_trunk(Trunk(**CARRIER, password="pw-1"))
        await a.put_trunk(Trunk(**{**CARRIER, "name": "other"}, password="pw-2"))
    assert store.rows["carrier"]["password"] == "pw-1"  # other nodes have no key of ours
    assert caplog.text.count("in the clear: set secrets_key") == 1
    assert "pw-1" not in (tmp_path / "a.json").read_text()  # the local file is sealed


def test_keys_beside_the_trunks_file() -> None:
    keys = TrunkKeys.beside(Path("/etc/voxswitch/trunks.json"))
    assert keys.key_file == Path("/etc/voxswitch/trunks.key")
    assert TrunkKeys.beside(None).key_file is None


# ---- node settings from files (Docker/Kubernetes secrets) -----------------------------------


def test_a_secret_setting_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "llm"
    secret.write_text("sk-from-file-0123456789\n")
    env = {"VOXSWITCH_LLM_API_KEY_FILE": str(secret), "VOXSWITCH_SECRETS_KEY_FILE": str(secret)}
    settings = load_settings({}, env=env)
    assert settings.llm_api_key == settings.secrets_key == "sk-from-file-0123456789"
    config = tmp_path / "node.toml"
    config.write_text(f'sip_auth_users_file = "{secret}"\n')
    assert load_settings({}, env={}, config_file=str(config)).sip_auth_users == (
        "sk-from-file-0123456789"
    )
    # Only secrets: VOXSWITCH_AGENT_FILE means nothing and is not read.
    assert load_settings({}, env={"VOXSWITCH_AGENT_FILE": "/nonexistent"}).agent == "demo"


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        ({"VOXSWITCH_API_KEY": "a", "VOXSWITCH_API_KEY_FILE": "/x"}, "", "give one of them"),
        ({"VOXSWITCH_API_KEY_FILE": "/nonexistent"}, "", "api_key_file: cannot read"),
        ({}, 'api_key = "a"\napi_key_file = "/x"\n', "give one of them"),
        ({}, 'agent_file = "/x"\n', "unknown setting 'agent_file'"),
        ({"VOXSWITCH_SECRETS_KEY": "short"}, "", "secrets_key: at least 16"),
    ],
)
def test_bad_secret_settings_name_the_setting(
    tmp_path: Path, env: dict[str, str], toml: str, message: str
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env=env, config_file=str(config) if toml else None)
