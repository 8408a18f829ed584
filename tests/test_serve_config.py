"""Settings: file, environment overrides, and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import IceServer, load_settings
from bridge.errors import ConfigError

GOOD = """
[http]
host = "0.0.0.0"
port = 9090
token = "0123456789abcdef0123"
softphone = false

[sip]
port = 5070
transports = ["udp"]
allow_from = ["10.0.0.0/8"]

[rtp]
port_low = 30000
port_high = 30099

[webrtc]
ice_servers = [{urls = ["stun:stun.example.net:3478"]},
               {urls = "turn:turn.example.net", username = "u", credential = "secret-cred"}]

[realtime]
deployment = "gpt-realtime"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voicebridge.toml"
    path.write_text(text)
    return path


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {})
    assert s.source == "defaults"
    assert s.http.port == 8080 and s.http.softphone and s.http.token is None
    assert s.webrtc.codecs[0] == "pcmu"


def test_file_is_read(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD), {})
    assert s.http.port == 9090 and s.http.softphone is False
    assert s.sip.transports == ("udp",)
    assert (s.rtp.port_low, s.rtp.port_high) == (30000, 30099)
    assert s.webrtc.ice_servers[0] == IceServer(urls=("stun:stun.example.net:3478",))
    assert s.webrtc.ice_servers[1].credential == "secret-cred"
    assert s.realtime == {"deployment": "gpt-realtime"}
    # secrets stay out of repr
    assert "secret-cred" not in repr(s) and "0123456789abcdef0123" not in repr(s)


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {"VOICEBRIDGE_CONFIG": str(write(tmp_path, GOOD)),
           "VOICEBRIDGE_HTTP_PORT": "7000", "VOICEBRIDGE_HTTP_SOFTPHONE": "yes",
           "VOICEBRIDGE_SIP_TRANSPORTS": "udp, tcp",
           "VOICEBRIDGE_WEBRTC_ICE_SERVERS": "stun:a.example:3478,turn:b.example",
           "VOICEBRIDGE_WEBRTC_TURN_USERNAME": "alice",
           "VOICEBRIDGE_WEBRTC_TURN_CREDENTIAL": "pw",
           "VOICEBRIDGE_REALTIME_EMULATOR_URL": "ws://emulator:8765"}
    s = load_settings(None, env)
    assert s.http.port == 7000 and s.http.softphone is True
    assert s.sip.transports == ("udp", "tcp")
    assert s.webrtc.ice_servers[0].username is None
    assert s.webrtc.ice_servers[1] == IceServer(("turn:b.example",), "alice", "pw")
    assert s.realtime == {"deployment": "gpt-realtime", "emulator_url": "ws://emulator:8765"}


@pytest.mark.parametrize(("text", "env", "needle"), [
    ("[http]\nport = \"x\"\n", {}, ":2: [http] port: expected an integer"),
    ("[http]\nprot = 1\n", {}, ":2: [http] prot: unknown key"),
    ("[htp]\n", {}, "unknown section [htp]"),
    ("[rtp]\nport_low = 3000\nport_high = 2000\n", {}, "port_low 3000 is above port_high"),
    ("[sip]\nallow_from = [\"10.0.0.300/8\"]\n", {}, "[sip] allow_from"),
    ("[webrtc]\ncodecs = [\"g729\"]\n", {}, "[webrtc] codecs"),
    ("[webrtc]\nice_servers = [{urls = \"http://x\"}]\n", {}, "must start with stun:"),
    ("", {"VOICEBRIDGE_HTTP_PORT": "eighty"}, "VOICEBRIDGE_HTTP_PORT: expected an integer"),
    ("", {"VOICEBRIDGE_HTTP_TOKEN": "short"}, "at least 16 characters"),
    ("[http\n", {}, "not valid TOML"),
])
def test_errors_name_the_place(tmp_path: Path, text: str, env: dict[str, str],
                               needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env)
    assert needle in str(info.value)
    assert "short" not in str(info.value)   # a secret is never echoed


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml", {})
