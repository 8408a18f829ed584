"""Counting every G.711 conversion, to prove a passthrough path makes none.

Every G.711 encode and decode in ``bridge.codecs.g711`` goes through ``audioop``;
``count_transcodes`` puts a counting stand-in for it in place for one test.
"""

from __future__ import annotations

import types

import pytest

from bridge.codecs import g711


class Transcodes:
    """Counts every G.711 encode and decode (``audioop``'s four conversions)."""

    def __init__(self, real: types.ModuleType) -> None:
        self.real = real
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        target = getattr(self.real, name)
        if name not in ("ulaw2lin", "alaw2lin", "lin2ulaw", "lin2alaw"):
            return target

        def counted(*args: object) -> object:
            self.calls += 1
            return target(*args)
        return counted


def count_transcodes(monkeypatch: pytest.MonkeyPatch) -> Transcodes:
    """Count ``bridge.codecs.g711``'s conversions until the test ends."""
    counter = Transcodes(g711.audioop)
    monkeypatch.setattr(g711, "audioop", counter)
    return counter
