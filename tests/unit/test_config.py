from pathlib import Path

import pytest

from switch.config import ConfigError, Settings, auth_algorithms, auth_users, load_settings


def test_defaults() -> None:
    s = load_settings({}, env={})
    assert s.sip_port == 5060
    assert s.rtp_ports == (20000, 29999)
    assert s.api_port == 8080


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('sip_port = 5070\nrtp_ports = "30000-30999"\nmax_calls = 5\n')
    env = {"VOXSWITCH_SIP_PORT": "5080", "VOXSWITCH_RING_MS": "250"}
    s = load_settings({"sip_port": "5090"}, env=env, config_file=str(cfg))
    assert s.sip_port == 5090  # CLI
    assert s.ring_ms == 250  # env
    assert s.rtp_ports == (30000, 30999)  # file
    assert s.max_calls == 5


def test_config_file_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("media_timeout_s = 2.5\n")
    s = load_settings({}, env={"VOXSWITCH_CONFIG": str(cfg)})
    assert s.media_timeout_s == 2.5


@pytest.mark.parametrize(
    ("cli", "field"),
    [
        ({"sip_port": "abc"}, "sip_port"),
        ({"sip_port": "70000"}, "sip_port"),
        ({"rtp_ports": "30000"}, "rtp_ports"),
        ({"rtp_ports": "40000-30000"}, "rtp_ports"),
        ({"max_calls": "0"}, "max_calls"),
        ({"srtp": "always"}, "srtp"),
        ({"record": "yes"}, "record"),
        ({"tls_port": "70000"}, "tls_port"),
        ({"tls_cert": "node.crt"}, "tls_cert and tls_key"),
        ({"tls_key": "node.key"}, "tls_cert and tls_key"),
    ],
)
def test_bad_values_name_the_setting(cli: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(cli, env={})


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("sip_prot = 5070\n")
    with pytest.raises(ConfigError, match="sip_prot"):
        load_settings({}, env={}, config_file=str(cfg))


def test_public_host() -> None:
    assert Settings(sip_host="127.0.0.1").public_host == "127.0.0.1"
    assert Settings(advertise_host="203.0.113.5").public_host == "203.0.113.5"
    assert Settings(sip_host="0.0.0.0").public_host  # some local address


def test_auth_settings() -> None:
    env = {
        "VOXSWITCH_SIP_AUTH_REALM": "voxswitch",
        "VOXSWITCH_SIP_AUTH_USERS": "alice:s3cret, bob:pw:with:colons",
        "VOXSWITCH_SIP_AUTH_ALGORITHMS": "md5",
    }
    s = load_settings({}, env=env)
    assert auth_users(s) == {"alice": "s3cret", "bob": "pw:with:colons"}
    assert auth_algorithms(s) == ["MD5"]


@pytest.mark.parametrize(
    ("users", "algorithms", "named"),
    [
        ("", "MD5", "sip_auth_users"),
        ("alice", "MD5", "sip_auth_users"),
        ("alice:pw", "SHA-1", "sip_auth_algorithms"),
        ("alice:pw", " , ", "sip_auth_algorithms"),
    ],
)
def test_bad_auth_settings_name_the_setting(users: str, algorithms: str, named: str) -> None:
    env = {
        "VOXSWITCH_SIP_AUTH_REALM": "voxswitch",
        "VOXSWITCH_SIP_AUTH_USERS": users,
        "VOXSWITCH_SIP_AUTH_ALGORITHMS": algorithms,
    }
    with pytest.raises(ConfigError, match=named):
        load_settings({}, env=env)


def test_overload_and_guard_settings_are_checked() -> None:
    assert load_settings(env={}).overload_busy == 0.85
    settings = load_settings(env={"VOXSWITCH_MAX_CPS": "150", "VOXSWITCH_TRUSTED_SOURCES": ""})
    assert settings.max_cps == 150 and settings.trusted_sources == ""
    for name, value in (("VOXSWITCH_OVERLOAD_BUSY", "1.5"), ("VOXSWITCH_MAX_CPS", "-1"),
                        ("VOXSWITCH_BAN_S", "0"), ("VOXSWITCH_SOURCE_MAX_RPS", "-3"),
                        ("VOXSWITCH_TRUSTED_SOURCES", "10.0.0.0/33")):  # fmt: skip
        with pytest.raises(ConfigError, match=name.removeprefix("VOXSWITCH_").lower()):
            load_settings(env={name: value})
