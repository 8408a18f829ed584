"""``[[sip.accounts]]``, ``[[sip.trunks]]`` and ``[cluster]`` in the settings file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.sip.lines import trunk_for

LINES = """
[[sip.accounts]]
registrar = "sip:pbx.example.net:5070"
user = "2001"
auth_user = "bridge-2001"
password_env = "PBX_PASSWORD"
dialplan = "front-desk"

[[sip.trunks]]
name = "carrier"
match = ["192.0.2.0/28", "2001:db8::/64"]
srtp = "require"

[[sip.trunks]]
name = "pbx"
match = ["10.0.0.0/8"]
auth_user = "pbx"
password_env = "PBX_TRUNK_PASSWORD"

[cluster]
node_id = "node-a"
heartbeat_s = 1
lost_after_s = 5
"""


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "voicebridge.toml"
    path.write_text(text)
    return load_settings(path, env or {})


def test_accounts_trunks_and_cluster_are_read(tmp_path: Path) -> None:
    path = tmp_path / "voicebridge.toml"
    path.write_text(LINES)
    settings = load_settings(path, {})
    (account,) = settings.sip.accounts
    assert (account.user, account.login, account.password_env) == (
        "2001", "bridge-2001", "PBX_PASSWORD")
    assert account.dialplan == "front-desk" and account.transport == "udp"
    assert [t.name for t in settings.sip.trunks] == ["carrier", "pbx"]
    assert trunk_for(settings.sip.trunks, "192.0.2.9").name == "carrier"  # type: ignore[union-attr]
    assert trunk_for(settings.sip.trunks, "2001:db8::5").name == "carrier"  # type: ignore[union-attr]
    assert trunk_for(settings.sip.trunks, "10.9.9.9").name == "pbx"  # type: ignore[union-attr]
    assert trunk_for(settings.sip.trunks, "198.51.100.1") is None
    assert settings.cluster.node() == "node-a"


def test_node_id_defaults_to_the_host_name(tmp_path: Path) -> None:
    assert load_settings(None, {}).cluster.node() == socket.gethostname()


@pytest.mark.parametrize(("text", "message"), [
    ('[[sip.accounts]]\nregistrar = "pbx.example.net"\nuser = "1"\npassword_env = "P"\n',
     "registrar must be a sip: or sips: URI"),
    ('[[sip.accounts]]\nregistrar = "sip:pbx"\nuser = "1"\n',
     "password_env: name the environment variable"),
    ('[[sip.accounts]]\nregistrar = "sip:pbx"\nuser = "1"\npassword_env = "P"\npassword = "x"\n',
     "unknown key 'password'"),
    ('[[sip.accounts]]\nuser = "1"\npassword_env = "P"\n', "registrar"),
    ('[[sip.accounts]]\nregistrar = "sip:pbx"\nuser = "1"\npassword_env = "P"\nexpires = 5\n',
     "expires: between 60 and 86400"),
    ('[[sip.trunks]]\nname = "t"\nmatch = ["10.0.0.0/33"]\n', "match:"),
    ('[[sip.trunks]]\nname = "t"\nsrtp = "sometimes"\n', "srtp: choose from"),
    ('[[sip.trunks]]\nname = "t"\nauth_user = "pbx"\n', "auth_user and password_env go together"),
    ('[cluster]\nheartbeat_s = 5\nlost_after_s = 6\n', "lost_after_s: at least two heartbeats"),
    ('[records]\nurl = "mysql://secret@db/x"\n', "[records] url: a postgresql:// URL"),
])
def test_bad_lines_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert message in str(info.value)
    assert "secret" not in str(info.value)
