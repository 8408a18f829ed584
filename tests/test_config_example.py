"""The example configuration file shipped at the top of the repository stays loadable and
documents the real defaults, key for key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from bridge.realtime.config import RealtimeSettings
from bridge.sip.settings import file_keys

EXAMPLE = Path(__file__).resolve().parent.parent / "voicebridge.example.toml"


def test_example_loads_to_the_defaults() -> None:
    loaded = load_settings(EXAMPLE, env={})
    defaults = Settings()
    for section in ("http", "sip", "rtp", "dialplans", "records", "webrtc"):
        assert getattr(loaded, section) == getattr(defaults, section), section


def test_example_names_every_setting() -> None:
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for f in dataclasses.fields(Settings):
        if f.name in ("realtime", "source"):
            continue
        section = getattr(Settings(), f.name)
        for key in file_keys(type(section)):
            # Secret keys are documented as comments only.
            # Arrays of tables ([[sip.accounts]]) are documented as commented examples.
            assert (key in data.get(f.name, {}) or f"# {key} =" in text
                    or f"# [[{f.name}.{key}]]" in text), f"[{f.name}] {key}"


def test_every_provider_the_example_documents_is_accepted() -> None:
    line = next(x for x in EXAMPLE.read_text().splitlines() if x.startswith("# provider ="))
    documented = [p.strip() for p in line.split("#", 2)[2].split("|")]
    assert documented == ["azure", "azure-preview", "openai", "emulator"]
    env = {"AZURE_OPENAI_API_KEY": "k" * 32, "OPENAI_API_KEY": "o" * 32}
    azure = {"endpoint": "https://r.openai.azure.com", "deployment": "gpt-realtime"}
    kinds = {}
    for provider in documented:
        section = {"provider": provider, **azure, "emulator_url": "ws://127.0.0.1:8765"}
        if provider == "azure-preview":
            section["api_version"] = "2025-04-01-preview"
        kinds[provider] = RealtimeSettings.from_env(env, section).target()
    assert {p: t.kind for p, t in kinds.items()} == {p: p for p in documented}
    assert kinds["azure-preview"].dialect == "preview"
    assert "api-version=2025-04-01-preview" in kinds["azure-preview"].url
    assert kinds["azure"].dialect == "ga"


def test_azure_preview_without_an_api_version_is_a_clear_error() -> None:
    section = {"provider": "azure-preview", "endpoint": "https://r.openai.azure.com",
               "deployment": "gpt-realtime"}
    with pytest.raises(ConfigError, match="azure-preview needs an API version"):
        RealtimeSettings.from_env({"AZURE_OPENAI_API_KEY": "k" * 32}, section).target()
    with pytest.raises(ConfigError, match="not one of azure, azure-preview"):
        RealtimeSettings.from_env({}, {"provider": "azure-gov"})
