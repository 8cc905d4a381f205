"""voxswitch doctor: each check fires on a risky configuration, none on a safe one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import pytest

from switch.config import Settings
from switch.doctor import Posture, check, exit_code, observe, report

TRUNK = {"name": "carrier", "host": "198.51.100.7", "inbound_ips": ["198.51.100.0/24"],
         "username": "vox", "password_sealed": "v1:0badc0de:xyz"}  # fmt: skip
SAFE = Settings(
    sip_host="203.0.113.10",
    api_host="127.0.0.1",
    api_key="k" * 32,
    tls_cert="node.crt",
    tls_key="node.key",
    secrets_key="s" * 40,
)
SAFE_POSTURE = Posture(trunks={"trunks": [TRUNK]})


class Later:
    """Settings with fields other changes add (api_public_paths, server_header...):
    the doctor reads them with getattr, so it runs before and after they land."""

    def __init__(self, settings: Settings, **extra: Any) -> None:
        self._settings, self._extra = settings, extra

    def __getattr__(self, name: str) -> Any:
        return self._extra[name] if name in self._extra else getattr(self._settings, name)


def settings(**changes: Any) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    base = dataclasses.replace(SAFE, **{k: v for k, v in changes.items() if k in known})
    extra = {k: v for k, v in changes.items() if k not in known}
    return cast(Settings, Later(base, **extra)) if extra else base


def posture(*trunks: dict[str, Any], **changes: Any) -> Posture:
    return dataclasses.replace(SAFE_POSTURE, trunks={"trunks": list(trunks)}, **changes)


def test_a_safe_configuration_has_no_findings() -> None:
    findings = check(SAFE, SAFE_POSTURE)
    assert findings == [] and exit_code(findings) == 0
    assert report(findings) == ["no risky settings found"]
    # Its later settings at their safe values (defaults of the changes adding them).
    later = settings(api_public_paths="/health", allowed_private_targets="", server_header="",
                     trusted_proxies="10.1.2.3")  # fmt: skip
    assert check(later, SAFE_POSTURE) == []


RISKY: list[tuple[str, Settings, Posture, str]] = [
    ("critical", SAFE, posture(), "sip-open"),  # no trunk, no digest auth, public address
    ("critical", settings(sip_host="0.0.0.0"), posture(), "sip-open"),
    ("warning", settings(sip_host="127.0.0.1"), posture(), "sip-open"),  # only this machine
    ("warning", settings(api_host="0.0.0.0", api_key=""), SAFE_POSTURE, "api-no-key"),
    ("warning", settings(api_key="admin"), SAFE_POSTURE, "api-key-weak"),
    ("critical", settings(trusted_sources="127.0.0.0/8,0.0.0.0/0"), SAFE_POSTURE, "trusted-wide"),
    ("critical", settings(trusted_sources="::/0"), SAFE_POSTURE, "trusted-wide"),
    ("critical", settings(trusted_sources="::ffff:0:0/97"), SAFE_POSTURE, "trusted-wide"),
    ("warning", settings(trusted_sources="10.0.0.0/8"), SAFE_POSTURE, "trusted-wide"),
    ("critical", settings(trusted_proxies="0.0.0.0/0"), SAFE_POSTURE, "trusted-wide"),
    ("critical", SAFE, posture({**TRUNK, "inbound_ips": ["0.0.0.0/0"]}), "trunk-inbound-wide"),
    ("warning", SAFE, posture({**TRUNK, "inbound_ips": ["100.64.0.0/10"]}), "trunk-inbound-wide"),
    ("critical", SAFE, posture({**TRUNK, "password": "clear"}), "trunk-password-clear"),
    ("critical", settings(postgres_dsn="postgresql://db/vox", secrets_key=""), SAFE_POSTURE,
     "trunk-password-shared-clear"),
    ("warning", settings(secrets_key="s" * 20), SAFE_POSTURE, "secrets-key-short"),
    ("critical", SAFE, posture(TRUNK, on_command_line=frozenset({"api_key"})),
     "secret-on-command-line"),
    ("warning", settings(llm_api_key="sk-x"), posture(TRUNK, config_file="node.toml",
     config_mode=0o644, in_config_file=frozenset({"llm_api_key"})), "secret-in-config"),
    ("warning", settings(tls_cert="", tls_key=""), SAFE_POSTURE, "sip-no-tls"),
    ("warning", settings(api_public_paths="/health,/metrics"), SAFE_POSTURE, "api-public-paths"),
    ("critical", settings(api_public_paths="/health,/v1/calls"), SAFE_POSTURE,
     "api-public-paths"),
    ("warning", settings(allowed_private_targets="127.0.0.1/32"), SAFE_POSTURE,
     "private-targets"),
    ("warning", settings(redis_url="redis://r:6379", sip_auth_realm="vox",
                         sip_auth_users="alice:" + "p" * 20), SAFE_POSTURE, "auth-secret-cluster"),
    ("warning", settings(server_header="voxswitch/0.1.0"), SAFE_POSTURE, "server-header"),
    ("warning", settings(sip_auth_realm="vox", sip_auth_users="alice:1234"), SAFE_POSTURE,
     "digest-password-short"),
]  # fmt: skip


@pytest.mark.parametrize(("severity", "config", "seen", "name"), RISKY)
def test_each_risk_is_found_once_with_its_fix(
    severity: str, config: Settings, seen: Posture, name: str
) -> None:
    findings = check(config, seen)
    assert [(f.severity, f.check) for f in findings] == [(severity, name)], report(findings)
    line = report(findings)[0]
    assert line.startswith(severity.upper()) and f" {name}: " in line and ". Fix: " in line
    assert "\n" not in line
    assert exit_code(findings) == (1 if severity == "critical" else 0)


def test_secrets_are_never_printed() -> None:
    config = settings(api_key="admin", sip_auth_realm="vox", sip_auth_users="alice:1234",
                      redis_url="redis://:hunter2@r:6379")  # fmt: skip
    seen = posture({**TRUNK, "password": "carrier-pw"},
                   on_command_line=frozenset({"redis_url", "api_key"}))  # fmt: skip
    text = "\n".join(report(check(config, seen)))
    for secret in ("admin", "1234", "hunter2", "carrier-pw"):
        assert secret not in text.replace("admin key", "")


def test_urls_on_the_command_line_count_only_with_a_password() -> None:
    seen = posture(TRUNK, on_command_line=frozenset({"redis_url", "postgres_dsn"}))
    plain = settings(redis_url="redis://r:6379", postgres_dsn="postgresql://db/vox")
    assert check(plain, seen) == []
    keyed = settings(redis_url="redis://:pw@r:6379", postgres_dsn="host=db password=pw")
    assert {f.check for f in check(keyed, seen)} == {"secret-on-command-line"}


def test_digest_auth_or_a_trunk_closes_inbound() -> None:
    digest = settings(sip_auth_realm="vox", sip_auth_users="alice:" + "p" * 20)
    assert check(digest, posture()) == []


def test_critical_findings_come_first_and_the_summary_counts() -> None:
    findings = check(settings(tls_cert="", tls_key="", sip_host="0.0.0.0"), posture())
    assert [f.severity for f in findings] == ["critical", "warning"]
    assert report(findings)[-1] == "1 critical, 1 warning(s)"


def test_observe_reads_the_files_it_needs(tmp_path: Path) -> None:
    trunks = tmp_path / "trunks.json"
    trunks.write_text(json.dumps({"trunks": [{**TRUNK, "password": "clear"}]}))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"id": "a"}]}))
    config = tmp_path / "node.toml"
    config.write_text('llm_api_key = "sk-x"\nsip_port = 5070\n')
    config.chmod(0o644)
    config_settings = settings(trunks_file=str(trunks), api_keys_file=str(keys))
    seen = observe(config_settings, ["sip_port"], str(config))
    assert seen.trunks is not None and seen.trunks["trunks"][0]["password"] == "clear"
    assert seen.api_keys_stored == 1 and seen.config_mode == 0o644
    assert seen.in_config_file == {"llm_api_key"} and seen.on_command_line == {"sip_port"}
    trunks.write_text("{not json")
    broken = check(config_settings, observe(config_settings))
    assert (broken[0].severity, broken[0].check) == ("critical", "trunks-file")
