"""The ``[sip]`` settings reach the SIP service and its user agent as loaded: one value, no
field copied by hand on the way (a field left out of a copy would silently take its
default)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bridge.bench.sip import free_udp_port
from bridge.config import settings_from_mapping
from bridge.errors import ConfigError
from bridge.serve import Bridge
from bridge.sip.settings import SipSettings, file_keys

#: The ``[sip]`` keys README.md and voicebridge.example.toml document, in their order.
DOCUMENTED = ("enabled", "host", "port", "transports", "public_address", "max_calls",
              "allow_from", "latch_any", "ring_ms", "answer_wait_ms", "tcp_max_connections",
              "tcp_max_per_source", "tcp_message_timeout_s", "tcp_idle_timeout_s",
              "max_unacked", "max_unacked_per_source", "invite_rate_per_source",
              "invite_burst_per_source", "drain_s", "tls_port", "tls_cert", "tls_key",
              "tls_ca", "tls_verify_client", "tls_handshake_timeout_s", "trusted_proxies",
              "accounts", "trunks", "srtp", "sdes_over_plain", "session_expires_s",
              "min_se_s", "codecs")


async def test_loaded_sip_settings_reach_the_service_and_the_user_agent(
        tmp_path: Path) -> None:
    low = free_udp_port() & ~1
    settings = settings_from_mapping({
        "sip": {"host": "127.0.0.1", "port": 0, "transports": ["udp"],
                "public_address": "198.51.100.7", "max_calls": 7,
                "allow_from": ["127.0.0.0/8"], "latch_any": True, "ring_ms": 15},
        "rtp": {"port_low": low, "port_high": low + 19},
        "http": {"port": 0},
        "records": {"path": ""},
    }, env={})
    async with Bridge(settings, env={}) as bridge:
        sip = bridge.sip
        assert sip is not None and sip.ua is not None
        assert sip.settings is settings.sip
        assert sip.ua.settings is settings.sip
        assert sip.settings == SipSettings(
            host="127.0.0.1", port=0, transports=("udp",), public_address="198.51.100.7",
            max_calls=7, allow_from=("127.0.0.0/8",), latch_any=True, ring_ms=15)
        assert sip.rtp_ports == (low, low + 19)
        assert sip.ua.host == "198.51.100.7" and sip.ua.port == sip.port != 0
        assert bridge.manager is not None and bridge.manager.max_calls == 7


def test_the_file_offers_the_documented_sip_keys_only() -> None:
    assert file_keys(SipSettings) == DOCUMENTED
    internal = {f.name for f in dataclasses.fields(SipSettings)} - set(DOCUMENTED)
    assert internal == {"user_agent", "timers", "symmetric_requests"}
    for key in sorted(internal):
        with pytest.raises(ConfigError, match=rf"\[sip\] {key}: unknown key; \[sip\] takes "
                                              + ", ".join(DOCUMENTED)):
            settings_from_mapping({"sip": {key: "x"}}, env={})


def test_the_environment_overrides_documented_sip_keys_only() -> None:
    settings = settings_from_mapping({}, env={"VOICEBRIDGE_SIP_RING_MS": "250",
                                              "VOICEBRIDGE_SIP_USER_AGENT": "x"})
    assert settings.sip == SipSettings(ring_ms=250)
