"""The example configuration file shipped at the top of the repository stays loadable and
documents the real defaults, key for key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from bridge.config import Settings, load_settings
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
            assert key in data.get(f.name, {}) or f"# {key} =" in text, f"[{f.name}] {key}"
